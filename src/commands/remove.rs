//! `remove <fingerprint-prefix>`: take an image out of the index.

use super::{CommandError, Context};

/// Remove an image (its files stay downloadable for the grace period)
#[derive(Debug, clap::Args)]
pub struct Remove {
    /// The image's fingerprint, or enough of its first digits to name one image
    pub fingerprint: String,
}

impl Remove {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let removed = ctx.catalog.remove(&self.fingerprint)?;
        writeln!(
            ctx.out,
            "removed {} ({}, {} version {}); {}",
            removed.fingerprint,
            removed.image_type,
            removed.product_id,
            removed.serial,
            grace_note(ctx.catalog.settings().grace_period_secs)
        )?;
        Ok(())
    }
}

/// Says how long files of removed images stay downloadable.
pub fn grace_note(grace_secs: i64) -> String {
    if grace_secs <= 0 {
        "its files are deleted now".to_string()
    } else if grace_secs % 3600 == 0 {
        format!(
            "its files stay downloadable for {} h for clients with a cached index",
            grace_secs / 3600
        )
    } else {
        format!(
            "its files stay downloadable for {} min for clients with a cached index",
            (grace_secs + 59) / 60
        )
    }
}

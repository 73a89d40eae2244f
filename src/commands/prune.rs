//! `prune --keep N [--dry-run]`: keep the newest N versions of every product.

use super::output::{TextFormat, write_json};
use super::{CommandError, Context};

/// Remove all but the newest N versions of every product
#[derive(Debug, clap::Args)]
pub struct Prune {
    /// How many versions of each product to keep (at least 1)
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Only show what would be removed
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
}

impl Prune {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let removed = ctx.catalog.prune(self.keep, self.dry_run)?;
        if self.format == TextFormat::Json {
            write_json(ctx.out, &removed)?;
            return Ok(());
        }
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for image in &removed {
            writeln!(
                ctx.out,
                "{verb} {} ({}, {} version {})",
                image.fingerprint, image.image_type, image.product_id, image.serial
            )?;
        }
        if removed.is_empty() {
            writeln!(
                ctx.out,
                "nothing to prune: no product has more than {} versions",
                self.keep
            )?;
        } else if !self.dry_run {
            writeln!(
                ctx.out,
                "{}",
                super::remove::grace_note(ctx.catalog.settings().grace_period_secs)
                    .replacen("its", "their", 1)
            )?;
        }
        Ok(())
    }
}

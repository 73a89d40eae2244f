//! `rebuild`: regenerate the stream JSON from the record (never re-reads image files).

use super::{CommandError, Context};

/// Regenerate streams/v1/index.json and images.json from the catalog record
#[derive(Debug, clap::Args)]
pub struct Rebuild {}

impl Rebuild {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        ctx.catalog.rebuild()?;
        let state = ctx.catalog.load()?;
        writeln!(
            ctx.out,
            "rebuilt streams/v1/images.json and index.json: {} products, {} images",
            state.products.len(),
            state.images().count()
        )?;
        Ok(())
    }
}

//! `version`: the server's version.

use super::{CommandError, Context};

/// Show the server's version
#[derive(Debug, clap::Args)]
pub struct Version {}

impl Version {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        writeln!(ctx.out, "simplestream-server {}", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}

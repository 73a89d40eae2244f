//! `whoami`: the identity and role the server gave the caller's key.

use super::{CommandError, Context};
use crate::access::Caller;

/// Show who the server thinks you are, and your role
#[derive(Debug, clap::Args)]
pub struct Whoami {}

impl Whoami {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        match ctx.caller {
            Caller::Local => writeln!(ctx.out, "{} (local, role admin)", ctx.caller.name())?,
            Caller::Remote {
                identity,
                upload_area,
            } => {
                writeln!(ctx.out, "user: {}", identity.name)?;
                writeln!(ctx.out, "role: {}", identity.role)?;
                writeln!(ctx.out, "key: {}", identity.key_fingerprint)?;
                if identity.role.allows(crate::access::Role::Publisher) {
                    let name = upload_area
                        .root()
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default();
                    writeln!(ctx.out, "upload area: incoming/{name}")?;
                }
            }
        }
        Ok(())
    }
}

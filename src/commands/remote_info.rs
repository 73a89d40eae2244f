//! `remote-info`: how to add this server as an LXD or Incus remote. The text is
//! [`crate::remote::render`]'s, which `serve` also prints when it starts.

use super::{CommandError, Context};
use crate::http::tls::{self, TlsError};
use crate::remote::{
    RemoteInfoText, SshAccess, check_remote_name, normalize_base_path, public_url, render,
};

/// Show how to add this server as an LXD or Incus remote, with its TLS certificate
#[derive(Debug, clap::Args)]
pub struct RemoteInfo {
    /// The remote's name in the printed commands [default: http.remote_name, "private"]
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
}

impl RemoteInfo {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let remote = self
            .remote
            .unwrap_or_else(|| ctx.config.http.remote_name.clone());
        check_remote_name(&remote).map_err(CommandError::Usage)?;
        let cert = tls::read_for_display(ctx.config, ctx.catalog.dirs()).map_err(|e| match e {
            TlsError::Missing(message) | TlsError::Invalid(message) => {
                CommandError::Failed(message)
            }
        })?;
        let base_path =
            normalize_base_path(&ctx.config.http.base_path).map_err(CommandError::Failed)?;
        let url = public_url(&ctx.config.http, &base_path, ctx.config.http.listen);
        let host_key = crate::host_keys::host_key_fingerprint(ctx.catalog.dirs())
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        write!(
            ctx.out,
            "{}",
            render(&RemoteInfoText {
                remote: &remote,
                url: &url,
                certificate_pem: &cert.pem,
                fingerprint: &cert.fingerprint,
                ssh: host_key.as_deref().map(|host_key| SshAccess {
                    port: ctx.config.ssh.listen.port(),
                    host_key,
                }),
            })
        )?;
        Ok(())
    }
}

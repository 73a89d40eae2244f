//! `remote-info`: how to add this server as an LXD or Incus remote. `serve` prints the same
//! text (through [`render`]) when it starts.
//!
//! LXD and Incus trust a simplestreams server's certificate only when it is stored as
//! `servercerts/<remote>.crt` in the client's config folder (`$LXD_CONF` or `~/.config/lxc`,
//! `$INCUS_CONF` or `~/.config/incus`): `--accept-certificate` does nothing for them. So the
//! text is a block a user can paste as is: it writes the PEM, installs it for both clients
//! and adds the remote.

use super::{CommandError, Context};
use crate::http::tls::{self, TlsError};

/// Show how to add this server as an LXD or Incus remote, with its TLS certificate
#[derive(Debug, clap::Args)]
pub struct RemoteInfo {
    /// The remote's name in the printed commands [default: http.remote_name, "private"]
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
}

/// What the text is made of.
#[derive(Debug, Clone, Copy)]
pub struct RemoteInfoText<'a> {
    pub remote: &'a str,
    pub url: &'a str,
    /// The end-entity certificate in PEM form, ending with a newline.
    pub certificate_pem: &'a str,
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub fingerprint: &'a str,
    /// How publishers reach the SSH gateway, when its host key exists.
    pub ssh: Option<SshAccess<'a>>,
}

/// The SSH side of the server, for the uploads hint.
#[derive(Debug, Clone, Copy)]
pub struct SshAccess<'a> {
    pub port: u16,
    /// `SHA256:…` of the host key.
    pub host_key: &'a str,
}

/// The text `remote-info` prints and `serve` shows at start.
pub fn render(info: &RemoteInfoText<'_>) -> String {
    let RemoteInfoText {
        remote,
        url,
        certificate_pem,
        fingerprint,
        ssh,
    } = *info;
    let pem = certificate_pem.trim_end();
    let ssh_text = ssh.map_or_else(String::new, |ssh| {
        let host = crate::http::url_host(url).unwrap_or("<host>");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!(
            "\nPublishers upload and run commands over SSH (their key decides what they may do):\n\
             scp -P {port} lxd.tar.xz rootfs.squashfs upload@{host}:\n\
             ssh -p {port} upload@{host} help\n\
             SSH host key fingerprint: {key}\n",
            port = ssh.port,
            key = ssh.host_key
        )
    });
    format!(
        "\
To use this server from LXD or Incus, run this on each client machine. The first lines store
the server's TLS certificate where the clients look for it (servercerts/{remote}.crt); the
last lines add the remote.

cat > {remote}.crt <<'EOF'
{pem}
EOF
install -D -m 0644 {remote}.crt \"${{LXD_CONF:-$HOME/.config/lxc}}/servercerts/{remote}.crt\"
install -D -m 0644 {remote}.crt \"${{INCUS_CONF:-$HOME/.config/incus}}/servercerts/{remote}.crt\"
lxc remote add {remote} {url} --protocol=simplestreams
incus remote add {remote} {url} --protocol=simplestreams

TLS certificate SHA-256 fingerprint: {fingerprint}
{ssh_text}"
    )
}

/// Remote names are shell words and file names: letters, digits, `-`, `_`, `.`.
pub fn check_remote_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "remote name {name:?} must be letters, digits, '-', '_' or '.' (e.g. private)"
        ))
    }
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
        let base_path = crate::http::normalize_base_path(&ctx.config.http.base_path)
            .map_err(CommandError::Failed)?;
        let url = crate::http::public_url(&ctx.config.http, &base_path, ctx.config.http.listen);
        let host_key = crate::ssh::host_key_fingerprint(ctx.catalog.dirs())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_holds_the_commands_the_pem_and_the_fingerprint() {
        let text = render(&RemoteInfoText {
            remote: "lab",
            url: "https://h:8443/lxd",
            certificate_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            fingerprint: "ab12",
            ssh: Some(SshAccess {
                port: 2200,
                host_key: "SHA256:xyz",
            }),
        });
        assert!(text.contains("lxc remote add lab https://h:8443/lxd --protocol=simplestreams\n"));
        assert!(
            text.contains("incus remote add lab https://h:8443/lxd --protocol=simplestreams\n")
        );
        assert!(text.contains(
            "cat > lab.crt <<'EOF'\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\nEOF\n"
        ));
        assert!(text.contains("\"${LXD_CONF:-$HOME/.config/lxc}/servercerts/lab.crt\"\n"));
        assert!(text.contains("\"${INCUS_CONF:-$HOME/.config/incus}/servercerts/lab.crt\"\n"));
        assert!(text.contains("SHA-256 fingerprint: ab12\n"));
        assert!(text.contains("ssh -p 2200 upload@h help\n"));
        assert!(text.contains("SSH host key fingerprint: SHA256:xyz\n"));
    }

    #[test]
    fn remote_names_are_checked() {
        assert!(check_remote_name("private").is_ok());
        assert!(check_remote_name("my-images.2").is_ok());
        for bad in ["", "-x", "a b", "a/b", "a:b", "$(x)"] {
            assert!(check_remote_name(bad).is_err(), "{bad}");
        }
    }
}

//! How clients reach this server: the remote URL (public URL, base path, host), the remote's
//! name, and the text that sets a client up (`remote-info`, and `serve` at start): TLS trust
//! for LXD and Incus, and the SSH access publishers use. The HTTPS side and the commands both
//! read it; it reads neither.
//!
//! LXD and Incus trust a simplestreams server's certificate only when it is stored as
//! `servercerts/<remote>.crt` in the client's config folder (`$LXD_CONF` or `~/.config/lxc`,
//! `$INCUS_CONF` or `~/.config/incus`): `--accept-certificate` does nothing for them. So the
//! text is a block a user can paste as is: it writes the PEM, installs it for both clients
//! and adds the remote.

use std::net::SocketAddr;

use crate::config::HttpConfig;

/// `lxd`, `/lxd/` and `/lxd` all mean `/lxd`; `/` and `` mean no prefix.
pub fn normalize_base_path(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let valid = trimmed.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    });
    if !valid {
        return Err(format!(
            "base path {raw:?} is not a plain URL path; use letters, digits, '-', '_', '.' and '/' (e.g. /lxd)"
        ));
    }
    Ok(format!("/{trimmed}"))
}

/// The remote URL: `http.public_url` as given, else `https://<host>:<port><base path>` where
/// host is the machine's hostname when listening on every address, else the listen address.
pub fn public_url(http: &HttpConfig, base_path: &str, listen: SocketAddr) -> String {
    if let Some(url) = &http.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = if listen.ip().is_unspecified() {
        machine_hostname().unwrap_or_else(|| "localhost".into())
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    format!("https://{host}:{}{base_path}", listen.port())
}

/// The scheme and authority of a URL, without its path (`https://h:1/x` → `https://h:1`).
pub fn url_origin(url: &str) -> &str {
    let path_start = url.find("://").map_or(0, |scheme_end| scheme_end + 3);
    match url[path_start..].find(['/', '?', '#']) {
        Some(end) => &url[..path_start + end],
        None => url,
    }
}

/// The host part of a URL (`https://h:1/x` → `h`, `https://[::1]:1` → `::1`).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// The machine's hostname, as `hostname` prints it.
pub fn machine_hostname() -> Option<String> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_str().ok()?.trim().to_string();
    (!name.is_empty()).then_some(name)
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
        let host = url_host(url).unwrap_or("<host>");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!(
            "#\n\
             # Publishers upload and run commands over SSH (their key decides what they may do):\n\
             #   scp -P {port} lxd.tar.xz rootfs.squashfs upload@{host}:\n\
             #   ssh -p {port} upload@{host} help\n\
             # SSH host key fingerprint: {key}\n",
            port = ssh.port,
            key = ssh.host_key
        )
    });
    let url = shell_word(url);
    format!(
        "\
# To use this server from LXD or Incus, run this on each client machine, or pipe it to sh
# (`simplestream-server remote-info | sh`, `ssh host remote-info | sh`). The first lines store
# the server's TLS certificate where the clients look for it (servercerts/{remote}.crt); the
# last lines add the remote to each client that is installed.

cat > {remote}.crt <<'EOF'
{pem}
EOF
install -D -m 0644 {remote}.crt \"${{LXD_CONF:-$HOME/.config/lxc}}/servercerts/{remote}.crt\"
install -D -m 0644 {remote}.crt \"${{INCUS_CONF:-$HOME/.config/incus}}/servercerts/{remote}.crt\"
if command -v lxc >/dev/null; then
    lxc remote add {remote} {url} --protocol=simplestreams
fi
if command -v incus >/dev/null; then
    incus remote add {remote} {url} --protocol=simplestreams
fi

# TLS certificate SHA-256 fingerprint: {fingerprint}
{ssh_text}"
    )
}

/// `text` as one shell word: as is when it holds nothing the shell would read, else quoted.
fn shell_word(text: &str) -> String {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~:/%@+=,".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_paths_are_normalized() {
        assert_eq!(normalize_base_path("").unwrap(), "");
        assert_eq!(normalize_base_path("/").unwrap(), "");
        assert_eq!(normalize_base_path("lxd").unwrap(), "/lxd");
        assert_eq!(
            normalize_base_path("/lxd/images-v2/").unwrap(),
            "/lxd/images-v2"
        );
        for bad in ["/a b", "/../x", "/a//b", "/x?y", "/%2e"] {
            assert!(normalize_base_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_come_from_the_listen_address_or_the_configured_url() {
        let mut http = HttpConfig::default();
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            public_url(&http, "/lxd", listen),
            "https://127.0.0.1:8443/lxd"
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(public_url(&http, "", v6), "https://[::1]:9");
        http.public_url = Some("https://images.example.com/".into());
        assert_eq!(public_url(&http, "", listen), "https://images.example.com");
    }

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
        // Prose is comments: the text is shell.
        for line in text.lines() {
            let first = line.split_whitespace().next().unwrap_or("#");
            assert!(
                first.starts_with('#')
                    || ["cat", "install", "if", "lxc", "incus", "fi", "EOF"].contains(&first)
                    || line.starts_with("-----")
                    || line.chars().all(|c| c.is_ascii_alphanumeric()),
                "{line:?}"
            );
        }
        assert_eq!(shell_word("https://h:1/lxd"), "https://h:1/lxd");
        assert_eq!(shell_word("https://h/a?b&c"), "'https://h/a?b&c'");
        assert_eq!(shell_word("x'y"), "'x'\\''y'");
    }

    #[test]
    fn remote_names_are_checked() {
        assert!(check_remote_name("private").is_ok());
        assert!(check_remote_name("my-images.2").is_ok());
        for bad in ["", "-x", "a b", "a/b", "a:b", "$(x)"] {
            assert!(check_remote_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://h.example:8443/x"), Some("h.example"));
        assert_eq!(url_host("https://[::1]:8443"), Some("::1"));
        assert_eq!(url_host("https://user@h/x"), Some("h"));
        assert_eq!(url_host("https://"), None);
        assert_eq!(
            url_origin("https://h.example:8443/lxd"),
            "https://h.example:8443"
        );
        assert_eq!(url_origin("https://[::1]:8443"), "https://[::1]:8443");
        assert_eq!(url_origin("https://h?x"), "https://h");
    }
}

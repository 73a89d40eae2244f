//! Settings: every key has a default; `data/config.toml` (or `--config`) overrides them, and
//! flags override the file. Unknown keys are an error that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::CatalogSettings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub catalog: CatalogConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub ssh: SshConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Seconds a removed image's files stay downloadable (daemons cache an index for 1 h).
    pub grace_period_secs: i64,
    /// Largest accepted split metadata tarball, in bytes.
    pub max_metadata_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTPS listener (which also answers LXD's plain-HTTP first try).
    pub listen: SocketAddr,
    /// URL path prefix when behind a reverse proxy, e.g. `/lxd`; empty for none.
    pub base_path: String,
    /// Serve files under `images/` over plain HTTP on the TLS port (LXD tries that first).
    pub plain_http_images: bool,
    /// The URL clients use (`https://images.example.com:8443`); default from hostname and port.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A real certificate chain (PEM); reloaded when the file changes. Default: generated.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra names and addresses for the generated certificate.
    pub san: Vec<String>,
}

/// The SSH gateway. Limits are enforced before the handshake (connections), before
/// authentication (grace time, attempts, throttling) and while writing (quota, file size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    pub listen: SocketAddr,
    /// Seconds a connection may take from TCP accept to a successful authentication.
    pub login_grace_secs: u64,
    /// Authentication attempts allowed on one connection.
    pub max_auth_attempts: usize,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_connections_per_address: usize,
    /// Seconds without traffic after which a connection is closed.
    pub idle_timeout_secs: u64,
    /// Failed logins from one address within `failed_auth_window_secs` after which that
    /// address is refused until the window has passed. 0 disables throttling.
    pub failed_auth_limit: u32,
    pub failed_auth_window_secs: u64,
    /// Bytes one user's upload area may hold (finished and in-progress uploads). 0: no limit.
    pub quota_bytes: u64,
    /// Largest single uploaded file, in bytes. 0: no limit.
    pub max_file_bytes: u64,
    /// Where the audit log goes: a path (relative to the data directory), `-` for standard
    /// output, or an empty string for nowhere.
    pub audit_log: String,
    /// Write uploads with O_DIRECT (past the page cache) where the filesystem allows it.
    pub direct_io: bool,
    /// Also generate and offer an RSA host key, for clients that cannot use Ed25519.
    pub rsa_host_key: bool,
    /// Ciphers offered, most preferred first. The client's preference decides among them.
    pub ciphers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        let settings = CatalogSettings::default();
        CatalogConfig {
            grace_period_secs: settings.grace_period_secs,
            max_metadata_bytes: settings.max_metadata_bytes,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            base_path: String::new(),
            plain_http_images: true,
            public_url: None,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
            login_grace_secs: 30,
            max_auth_attempts: 6,
            max_connections: 256,
            max_connections_per_address: 16,
            idle_timeout_secs: 600,
            failed_auth_limit: 10,
            failed_auth_window_secs: 300,
            quota_bytes: 64 << 30,
            max_file_bytes: 32 << 30,
            audit_log: "audit.log".into(),
            direct_io: true,
            rsa_host_key: false,
            ciphers: vec![
                "aes128-gcm@openssh.com".into(),
                "aes256-gcm@openssh.com".into(),
                "chacha20-poly1305@openssh.com".into(),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    message: crate::fsutil::plain_message(&e),
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })
    }

    pub fn catalog_settings(&self) -> CatalogSettings {
        CatalogSettings {
            grace_period_secs: self.catalog.grace_period_secs,
            max_metadata_bytes: self.catalog.max_metadata_bytes,
            ..CatalogSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err =
            toml::from_str::<Config>("[http]\nlisten = \"127.0.0.1:1\"\nlistne = 2\n").unwrap_err();
        assert!(err.message().contains("listne"), "{}", err.message());
    }

    #[test]
    fn partial_files_keep_defaults() {
        let config: Config = toml::from_str("[ssh]\nlisten = \"127.0.0.1:2200\"\n").unwrap();
        assert_eq!(config.ssh.listen.port(), 2200);
        assert_eq!(config.http, HttpConfig::default());
    }
}

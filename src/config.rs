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
    /// The remote name shown in the `lxc remote add` / `incus remote add` lines.
    pub remote_name: String,
    /// Seconds a new connection may take to send its first byte and finish the TLS handshake
    /// (or, in plain HTTP, its request head) before it is closed quietly.
    pub handshake_timeout_secs: u64,
    /// Seconds a response may wait for a client that reads nothing before the connection is
    /// closed (like nginx's `send_timeout`).
    pub send_timeout_secs: u64,
    /// Seconds in-flight downloads may take to finish after SIGTERM/SIGINT.
    pub shutdown_timeout_secs: u64,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A real certificate chain (PEM); reloaded when the file changes. Default: generated.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra names and addresses for the generated certificate.
    pub san: Vec<String>,
    /// Seconds between checks of the certificate and key files for changes (certbot renewals
    /// are picked up without a restart).
    pub reload_interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    pub listen: SocketAddr,
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
            remote_name: "private".to_string(),
            handshake_timeout_secs: 10,
            send_timeout_secs: 60,
            shutdown_timeout_secs: 30,
            max_connections: 4096,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            san: Vec::new(),
            reload_interval_secs: 10,
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
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
    fn http_and_tls_settings_parse() {
        let config: Config = toml::from_str(
            "[http]\nbase_path = \"/lxd\"\nplain_http_images = false\nremote_name = \"lab\"\n\
             handshake_timeout_secs = 3\nshutdown_timeout_secs = 4\nmax_connections = 5\n\
             [tls]\nsan = [\"images.test\"]\nreload_interval_secs = 6\n",
        )
        .unwrap();
        assert_eq!(config.http.base_path, "/lxd");
        assert!(!config.http.plain_http_images);
        assert_eq!(config.http.remote_name, "lab");
        assert_eq!(config.http.handshake_timeout_secs, 3);
        assert_eq!(config.http.shutdown_timeout_secs, 4);
        assert_eq!(config.http.max_connections, 5);
        assert_eq!(config.tls.san, ["images.test"]);
        assert_eq!(config.tls.reload_interval_secs, 6);
        assert_eq!(config.tls.cert, None);
    }

    #[test]
    fn partial_files_keep_defaults() {
        let config: Config = toml::from_str("[ssh]\nlisten = \"127.0.0.1:2200\"\n").unwrap();
        assert_eq!(config.ssh.listen.port(), 2200);
        assert_eq!(config.http, HttpConfig::default());
    }
}

//! SIGHUP (`systemctl reload`): the keys, the configuration and the certificate are read
//! again without a restart and without dropping a connection.
//!
//! Each part reloads on its own, so a typo in config.toml does not stop a new key from
//! working. The configuration is all or nothing: a file that does not load, or that a restart
//! could not start with, is reported and the running configuration kept whole. A loaded one
//! applies its [`LIVE_KEYS`](crate::config::LIVE_KEYS) at once and names the changed keys that
//! wait for a restart.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::{self, Config, ConfigError, LiveConfig};
use crate::http::tls::{CertPaths, Reload};
use crate::http::{HttpSettings, HttpState};
use crate::ssh::Gateway;

/// Reads the configuration the way the server was started: the same file, environment and
/// flags.
pub type ReadConfig = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

/// What a reload touches, held by `serve`.
pub struct Reloader {
    pub read_config: ReadConfig,
    /// The configuration as read (live keys as last applied): a new read is compared with
    /// this, not with what runs, whose listen addresses carry the bound ports.
    pub baseline: Config,
    pub live: Arc<LiveConfig>,
    pub catalog: Arc<Catalog>,
    pub http: Arc<HttpState>,
    pub gateway: Arc<Gateway>,
    /// Wakes `serve`'s mirror schedule when the `[[mirror]]` tables changed.
    pub mirrors_changed: Arc<tokio::sync::Notify>,
}

/// The result of one reload, one clause per part.
pub struct Outcome {
    pub summary: String,
    /// A part could not be reloaded (and kept what it had).
    pub failed: bool,
}

impl Reloader {
    /// Reloads everything; blocking (file reads).
    pub fn reload(&mut self) -> Outcome {
        let keys = self.gateway.keys.reload();
        let mut keys_part = format!("authorized_keys: {}", count(keys.keys.len(), "key"));
        if !keys.problems.is_empty() {
            let skipped = count(keys.problems.len(), "line");
            keys_part.push_str(&format!(", {skipped} skipped"));
        }
        let (certificate_part, certificate_failed) = match self.http.certs.reload_if_changed() {
            Reload::Reloaded => (
                format!(
                    "certificate: loaded the new one ({})",
                    self.http.certs.current().fingerprint
                ),
                false,
            ),
            Reload::Unchanged => ("certificate: unchanged".to_string(), false),
            Reload::Failed => (
                "certificate: the changed files do not load, still serving the previous one"
                    .to_string(),
                true,
            ),
        };
        let (config_part, config_failed) = match self.reload_config() {
            Ok(part) => (part, false),
            Err(e) => (
                format!(
                    "configuration: {}; still running the previous one",
                    crate::fsutil::one_line(&format!("{e:#}"))
                ),
                true,
            ),
        };
        Outcome {
            summary: format!("{keys_part}; {certificate_part}; {config_part}"),
            failed: certificate_failed || config_failed,
        }
    }

    fn reload_config(&mut self) -> anyhow::Result<String> {
        let read = (self.read_config)()?;
        let running = self.live.current();
        // Checked whole, as a restart would read it: a key that waits for a restart must not
        // be one the server cannot start with.
        HttpSettings::from_config(&read, running.http.listen)?;
        CertPaths::from_config(&read, self.catalog.dirs())?;
        let changes = config::changes(&self.baseline, &running, &read)?;
        if !changes.applied.is_empty() {
            let settings = HttpSettings::from_config(&changes.config, running.http.listen)?;
            self.http.set_settings(settings);
            self.catalog.set_settings(changes.config.catalog_settings());
            self.live.replace(changes.config);
            if changes.applied.iter().any(|key| key == config::MIRRORS_KEY) {
                self.mirrors_changed.notify_one();
            }
            self.baseline = config::changes(&self.baseline, &self.baseline, &read)?.config;
        }
        Ok(describe(&changes.applied, &changes.need_restart))
    }
}

fn describe(applied: &[String], need_restart: &[String]) -> String {
    match (applied.is_empty(), need_restart.is_empty()) {
        (true, true) => "configuration: unchanged".into(),
        (false, true) => format!("configuration: applied {}", applied.join(", ")),
        (true, false) => format!(
            "configuration: {} changed, which takes a restart",
            need_restart.join(", ")
        ),
        (false, false) => format!(
            "configuration: applied {}; {} changed, which takes a restart",
            applied.join(", "),
            need_restart.join(", ")
        ),
    }
}

/// `1 key`, `2 keys`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

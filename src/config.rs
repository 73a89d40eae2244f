//! Settings: every key has a default; `data/config.toml` (or `--config`) overrides the
//! defaults, an environment variable overrides the file, a flag overrides all. Each key
//! `section.key` has the variable `SIMPLESTREAM_SECTION_KEY` and the flag `--section-key`.
//! Unknown keys are an error that names the key, wherever they come from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::CatalogSettings;
use crate::image::ScanLimits;
use crate::mirror::{Filter, MirrorSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub catalog: CatalogConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub ssh: SshConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    /// `[[mirror]]` tables: upstreams `serve` mirrors on a schedule. Only the file sets them
    /// (no environment variable or flag), and a reload applies them.
    #[serde(rename = "mirror", skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Seconds a removed image's files stay downloadable (daemons cache an index for 1 h).
    pub grace_period_secs: i64,
    /// Largest accepted split metadata tarball, in bytes.
    pub max_metadata_bytes: u64,
    /// Most bytes a metadata tarball (or a unified tarball besides its root filesystem) may
    /// unpack to: every LXD host that uses the image unpacks it.
    pub max_metadata_unpacked_bytes: u64,
    /// Most entries a metadata tarball (or a unified tarball besides its root filesystem)
    /// may hold.
    pub max_metadata_entries: u64,
    /// Publish a delta (`squashfs.vcdiff`) from the previous version with each new squashfs
    /// root, so daemons refresh by the difference.
    pub deltas: bool,
    /// A delta larger than this share of its full root is not published (it saves too little).
    #[serde(deserialize_with = "share")]
    pub delta_max_ratio: f64,
}

/// A share: a number above 0 and at most 1.
fn share<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is not a share: give a number above 0 and at most 1, e.g. 0.5"
        )))
    }
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
    /// Connections open at once from one address; more are closed at once. Keep it well
    /// below `max_connections`, so that one client cannot take every slot. Behind a reverse
    /// proxy every client has the proxy's address: raise it to `max_connections` there.
    pub max_connections_per_address: usize,
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
    /// The oldest TLS version offered. LXD and Incus require 1.3; 1.2 only for other clients.
    pub min_version: TlsVersion,
}

/// A TLS protocol version, as `tls.min_version` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
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
    /// Seconds a command's output (or an scp reply) may wait for a client that takes none
    /// before the command's channel is closed, so that a client that never reads cannot hold
    /// the server's threads.
    pub send_timeout_secs: u64,
    /// Connections from one address that ended without logging in (a refused key, a key
    /// exchange alone, a timeout) within `failed_auth_window_secs`, after which that address
    /// is refused until the window has passed. 0 disables throttling.
    pub failed_auth_limit: u32,
    pub failed_auth_window_secs: u64,
    /// Bytes one user's upload area may hold (finished and in-progress uploads). 0: no limit.
    pub quota_bytes: u64,
    /// Largest single uploaded file, in bytes. 0: no limit.
    pub max_file_bytes: u64,
    /// Files and directories one user's upload area may hold. 0: no limit.
    pub max_entries: u64,
    /// Deepest path in an upload area, in path parts (`a/b/c` is 3). 0: no limit.
    pub max_depth: u64,
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

/// Where the published tree and the catalog record live: the data directory (`local`) or an
/// S3-compatible bucket (`s3`). Credentials are never here: they come from
/// `credentials_file` or the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The store's S3 URL, e.g. `http://127.0.0.1:3900`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Put before every key, e.g. `lxd/`; empty for none.
    pub prefix: String,
    /// Address the bucket in the path (`endpoint/bucket/key`), not the host name.
    pub path_style: bool,
    /// A file with `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` lines; default: the
    /// environment.
    pub credentials_file: Option<PathBuf>,
    /// Require the store to honour conditional writes (checked at start), which the single-
    /// writer lease relies on. false: the store cannot enforce one writer (Garage); running
    /// one is then the operator's rule.
    pub conditional_writes: bool,
    /// Replicas redirect image downloads here (a CDN or the store's web endpoint) + the key.
    pub public_base_url: Option<String>,
    /// Seconds between a replica's checks of index.json for a new publication.
    pub poll_interval_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Local,
    S3,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Local,
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: true,
            credentials_file: None,
            conditional_writes: true,
            public_base_url: None,
            poll_interval_secs: 5,
        }
    }
}

impl StorageConfig {
    /// The settings an `s3` backend connects with, the credentials read now (from
    /// `credentials_file`, else the environment). One line when they are missing.
    pub fn s3_settings(&self) -> Result<crate::storage::s3::S3Settings, String> {
        let (access_key_id, secret_access_key) =
            crate::storage::s3::load_credentials(self.credentials_file.as_deref(), |name| {
                std::env::var(name).ok()
            })?;
        Ok(crate::storage::s3::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            path_style: self.path_style,
            access_key_id,
            secret_access_key,
            conditional_writes: self.conditional_writes,
            poll_interval: std::time::Duration::from_secs(self.poll_interval_secs.max(1)),
        })
    }

    /// Where a replica redirects image downloads: `public_base_url` and the key prefix,
    /// ending in `/`; `None` when it streams them itself.
    pub fn redirect_base(&self) -> Option<String> {
        if self.backend != StorageBackend::S3 {
            return None;
        }
        let base = self.public_base_url.as_deref()?.trim_end_matches('/');
        Some(format!(
            "{base}/{}",
            crate::storage::s3::key_prefix(&self.prefix)
        ))
    }

    /// What is wrong with an `s3` configuration, one line per problem (none for `local`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.backend != StorageBackend::S3 {
            return problems;
        }
        let is_http_url = |url: &str| {
            url.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            })
        };
        if self.endpoint.is_empty() {
            problems.push(
                "storage.endpoint is empty; set it to the store's S3 URL, e.g. http://127.0.0.1:3900"
                    .into(),
            );
        } else if !is_http_url(&self.endpoint) {
            problems.push(format!(
                "storage.endpoint {:?} is not an http:// or https:// URL with a host, e.g. http://127.0.0.1:3900",
                self.endpoint
            ));
        }
        if self.bucket.is_empty() {
            problems.push("storage.bucket is empty; name the bucket to publish into".into());
        }
        if self.region.is_empty() {
            problems.push(
                "storage.region is empty; give the store's region (Garage: its s3_region, often \"garage\")"
                    .into(),
            );
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") || self.prefix.contains("..")
        {
            problems.push(format!(
                "storage.prefix {:?} must be a relative key prefix such as \"lxd/\" (no leading '/', no '..')",
                self.prefix
            ));
        }
        if self.poll_interval_secs == 0 {
            problems.push("storage.poll_interval_secs is 0; give at least 1 (e.g. 5)".into());
        }
        if let Some(url) = &self.public_base_url
            && !is_http_url(url)
        {
            problems.push(format!(
                "storage.public_base_url {url:?} is not an http:// or https:// URL with a host"
            ));
        }
        problems
    }
}

/// One `[[mirror]]` table: an upstream simplestreams server that `serve` mirrors every
/// `interval` and `mirror sync --name NAME` runs at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Names the mirror in commands, status, logs and metrics, and marks the images it brings.
    pub name: String,
    /// The upstream's base URL (`https://images.linuxcontainers.org`).
    pub url: String,
    /// `key=value`, `key!=value`, `key~regex`, `key!~regex`; all must hold.
    #[serde(default)]
    pub filters: Vec<String>,
    /// The newest N versions of each product; unset keeps every version upstream has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
    /// Time from the start of one run to the start of the next: `6h`, `30m`, `1d`, or seconds.
    #[serde(default = "MirrorInterval::default_interval")]
    pub interval: MirrorInterval,
    /// A PEM file of CA certificates that this upstream's certificate must chain to instead of
    /// the system's (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// False keeps the table but `serve` does not run it (`mirror sync --name` still does).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Put before every upstream alias: `mirror/` makes `debian/12` into `mirror/debian/12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_prefix: Option<String>,
    /// Files downloaded at once.
    #[serde(default = "default_mirror_concurrency")]
    pub concurrency: usize,
    /// Bytes per second over all of this mirror's downloads: `20MiB`, `500KiB`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<ByteRate>,
}

fn enabled_by_default() -> bool {
    true
}

fn default_mirror_concurrency() -> usize {
    MirrorSpec::DEFAULT_CONCURRENCY
}

/// Most files one mirror downloads at once.
pub const MAX_MIRROR_CONCURRENCY: usize = 64;

/// A mirror's schedule: seconds between the starts of two runs. Written as `6h`, `30m`,
/// `90s`, `1d` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorInterval(pub u64);

impl MirrorInterval {
    fn default_interval() -> MirrorInterval {
        MirrorInterval(6 * 3600)
    }

    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

/// `<number><unit>` with the unit among `units` (factor for each), or a bare number.
fn number_with_unit(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit = unit.trim();
    if unit.is_empty() {
        return Some(number);
    }
    let (_, factor) = units.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*factor)
}

impl std::str::FromStr for MirrorInterval {
    type Err = String;

    fn from_str(text: &str) -> Result<MirrorInterval, String> {
        number_with_unit(text, &[("s", 1), ("m", 60), ("h", 3600), ("d", 86400)])
            .map(MirrorInterval)
            .ok_or_else(|| {
                format!("{text:?} is not an interval: write 6h, 30m, 90s, 1d or seconds")
            })
    }
}

impl std::fmt::Display for MirrorInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0;
        match secs {
            0 => write!(f, "0s"),
            _ if secs.is_multiple_of(86400) => write!(f, "{}d", secs / 86400),
            _ if secs.is_multiple_of(3600) => write!(f, "{}h", secs / 3600),
            _ if secs.is_multiple_of(60) => write!(f, "{}m", secs / 60),
            _ => write!(f, "{secs}s"),
        }
    }
}

/// A bandwidth in bytes per second, written `20MiB`, `500KiB`, `1GiB` or a number of bytes
/// (`/s` may follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate(pub u64);

impl std::str::FromStr for ByteRate {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteRate, String> {
        let units = [
            ("B", 1),
            ("K", 1 << 10),
            ("KiB", 1 << 10),
            ("M", 1 << 20),
            ("MiB", 1 << 20),
            ("G", 1 << 30),
            ("GiB", 1 << 30),
        ];
        let trimmed = text.trim();
        number_with_unit(trimmed.strip_suffix("/s").unwrap_or(trimmed), &units)
            .map(ByteRate)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a bandwidth: write 20MiB, 500KiB, 1GiB or bytes per second"
                )
            })
    }
}

impl std::fmt::Display for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0;
        match bytes {
            0 => write!(f, "0B"),
            _ if bytes.is_multiple_of(1 << 30) => write!(f, "{}GiB", bytes >> 30),
            _ if bytes.is_multiple_of(1 << 20) => write!(f, "{}MiB", bytes >> 20),
            _ if bytes.is_multiple_of(1 << 10) => write!(f, "{}KiB", bytes >> 10),
            _ => write!(f, "{bytes}B"),
        }
    }
}

/// Both take a string with a unit or a bare number, and write the string.
macro_rules! text_or_number_serde {
    ($type:ty, $expecting:literal) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = $type;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<$type, E> {
                        n.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<$type, E> {
                        u64::try_from(n)
                            .map_err(|_| E::custom(format!("{n} is negative")))
                            .and_then(|n| self.visit_u64(n))
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$type, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_any(Visit)
            }
        }
    };
}

text_or_number_serde!(
    MirrorInterval,
    "an interval such as \"6h\", \"30m\" or seconds"
);
text_or_number_serde!(
    ByteRate,
    "a bandwidth such as \"20MiB\" or bytes per second"
);

impl MirrorConfig {
    /// The run this table asks for, or one line per problem: what is wrong and what to write.
    pub fn spec(&self) -> Result<MirrorSpec, Vec<String>> {
        let mut problems = Vec::new();
        if let Err(why) = check_mirror_name(&self.name) {
            problems.push(why);
        }
        if let Err(why) = check_upstream_url(&self.url) {
            problems.push(why);
        }
        let mut filters = Vec::new();
        for text in &self.filters {
            match text.parse::<Filter>() {
                Ok(filter) => filters.push(filter),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if self.keep == Some(0) {
            problems.push(
                "keep = 0 would keep nothing; give 1 or more, or leave keep out to keep every version"
                    .into(),
            );
        }
        if self.interval.0 == 0 {
            problems.push("interval is zero; give one such as \"6h\"".into());
        }
        if let Some(path) = &self.ca_cert
            && !path.is_absolute()
        {
            problems.push(format!(
                "ca_cert {:?} is relative; give an absolute path",
                path.display().to_string()
            ));
        }
        if let Some(prefix) = &self.alias_prefix {
            // The prefix goes before an alias such as `debian/12`: it must make a valid alias.
            if let Err(e) = crate::catalog::alias::validate(&format!("{prefix}debian/12")) {
                problems.push(format!(
                    "alias_prefix {prefix:?} does not make valid aliases: {e}"
                ));
            }
        }
        if !(1..=MAX_MIRROR_CONCURRENCY).contains(&self.concurrency) {
            problems.push(format!(
                "concurrency = {} is out of range; give 1 to {MAX_MIRROR_CONCURRENCY}",
                self.concurrency
            ));
        }
        if self.bandwidth_limit == Some(ByteRate(0)) {
            problems.push(
                "bandwidth_limit is zero, which would download nothing; leave it out for no limit"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(MirrorSpec {
            name: Some(self.name.clone()),
            url: self.url.trim_end_matches('/').to_string(),
            ca_cert: self.ca_cert.clone(),
            filters,
            keep: self.keep,
            alias_prefix: self.alias_prefix.clone(),
            dry_run: false,
            concurrency: self.concurrency,
            bandwidth_limit: self.bandwidth_limit.map(|rate| rate.0),
        })
    }
}

/// A mirror's name is part of file names (its lock) and metric labels: letters, digits, `.`,
/// `_`, `-`, starting with a letter or digit, at most 64 characters.
pub fn check_mirror_name(name: &str) -> Result<(), String> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} is not a mirror name: use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"
        ))
    }
}

/// An upstream URL must be `https://host[:port][/path]`: clients only take HTTPS remotes, and
/// the mirror verifies what it reads against the upstream's TLS certificate.
fn check_upstream_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("url {url:?} {why}"));
    let Some(rest) = url.strip_prefix("https://") else {
        return bad("must start with https://");
    };
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
        _ => return bad("is not a URL (https://host[:port][/path])"),
    }
    if rest.contains(['?', '#']) || rest.contains('@') {
        return bad("may not hold a query, a fragment or user information");
    }
    Ok(())
}

/// Every configured mirror's spec, or one line per bad table, naming it:
/// `[[mirror]] "lxc": filter "os" has no operator: …`.
pub fn mirror_specs(mirrors: &[MirrorConfig]) -> Result<Vec<MirrorSpec>, Vec<String>> {
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for (index, mirror) in mirrors.iter().enumerate() {
        let label = if mirror.name.is_empty() {
            format!("[[mirror]] number {}", index + 1)
        } else {
            format!("[[mirror]] {:?}", mirror.name)
        };
        if mirrors[..index]
            .iter()
            .any(|other| other.name == mirror.name)
        {
            problems.push(format!(
                "{label}: the name is used by an earlier [[mirror]] table; give each mirror its own name"
            ));
        }
        match mirror.spec() {
            Ok(spec) => specs.push(spec),
            Err(lines) => problems.extend(lines.into_iter().map(|line| format!("{label}: {line}"))),
        }
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        let settings = CatalogSettings::default();
        CatalogConfig {
            grace_period_secs: settings.grace_period_secs,
            max_metadata_bytes: settings.max_metadata_bytes,
            max_metadata_unpacked_bytes: settings.scan_limits.unpacked_bytes,
            max_metadata_entries: settings.scan_limits.entries,
            deltas: settings.deltas,
            delta_max_ratio: settings.delta_max_ratio,
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
            max_connections_per_address: 256,
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
            min_version: TlsVersion::default(),
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
            send_timeout_secs: 60,
            failed_auth_limit: 10,
            failed_auth_window_secs: 300,
            quota_bytes: 64 << 30,
            max_file_bytes: 32 << 30,
            max_entries: 10_000,
            max_depth: 16,
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
    /// A value from the environment or a flag that does not fit its key.
    #[error("{origin} ({key}): {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{0} is not a setting; `simplestream-server config` lists them")]
    UnknownKey(String),
    /// `[[mirror]]` tables that cannot run: one line per problem, each naming its table.
    #[error("{path}: {}", .problems.join("; "))]
    Mirrors { path: String, problems: Vec<String> },
    /// A `[storage]` section that cannot be used: one line per problem, each naming its key.
    #[error("{}", .0.join("; "))]
    Storage(Vec<String>),
}

impl ConfigError {
    /// The error as lines for people: one per bad `[[mirror]]` entry, else the one message.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Mirrors { path, problems } => problems
                .iter()
                .map(|problem| format!("{path}: {problem}"))
                .collect(),
            ConfigError::Storage(problems) => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env(String),
    Flag(String),
}

/// What the layers are read from.
pub struct Layers<'a> {
    pub file: &'a Path,
    /// True when the user named the file (`--config`): then it must exist.
    pub file_named: bool,
    /// The process environment (only `SIMPLESTREAM_<SECTION>_<KEY>` names are read).
    pub env: Vec<(String, String)>,
    /// Command-line overrides: (key, flag as typed, value), in order.
    pub flags: Vec<(String, String, String)>,
}

/// The configuration in force, with the origin of every value.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: Config,
    /// The file that was read, if it existed.
    pub file: Option<PathBuf>,
    /// Every key with its value (JSON) and source, in key order.
    pub values: BTreeMap<String, (Value, Source)>,
    /// For each `[[mirror]]` table, the keys the file gave (the others are defaults).
    pub mirror_keys_given: Vec<Vec<String>>,
}

/// Prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "SIMPLESTREAM_";

/// Short flag names kept beside the generic ones.
pub const FLAG_ALIASES: &[(&str, &str)] = &[
    ("http.listen", "https-listen"),
    ("http.base_path", "base-path"),
    ("http.public_url", "public-url"),
    ("catalog.grace_period_secs", "grace-period"),
];

/// Every key (`section.key`) with its default value, read from the defaults themselves so
/// that a new field is a new key everywhere at once.
pub fn keys() -> Vec<(String, Value)> {
    let Ok(Value::Object(sections)) = serde_json::to_value(Config::default()) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (section, table) in sections {
        if let Value::Object(table) = table {
            for (key, value) in table {
                keys.push((format!("{section}.{key}"), value));
            }
        }
    }
    keys
}

pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

pub fn flag_name(key: &str) -> String {
    key.replace(['.', '_'], "-")
}

/// Turns text from the environment or a flag into the JSON type of the key's default.
fn typed_value(default: &Value, text: &str) -> Result<Value, String> {
    match default {
        Value::Bool(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Ok(Value::Bool(true)),
            "false" | "no" | "0" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        Value::Number(n) if n.is_u64() => text
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not a whole number")),
        Value::Number(n) if n.is_f64() => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{text:?} is not a number")),
        Value::Number(_) => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{text:?} is not a whole number")),
        Value::Array(_) => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        Value::Null if text.is_empty() => Ok(Value::Null),
        _ => Ok(Value::String(text.to_string())),
    }
}

/// The file's text as a [`Config`]; a problem names its line and key, on one line:
/// `config.toml line 2 (ssh.max_file_bytes): invalid type: string "lots", expected u64`.
fn parse_file(text: &str, path: &str) -> Result<Config, ConfigError> {
    let error = |e: &toml::de::Error, key: Option<String>| {
        let mut path = path.to_string();
        if let Some(span) = e.span() {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            path.push_str(&format!(" line {line}"));
        }
        if let Some(key) = key.filter(|k| !k.is_empty() && k != ".") {
            path.push_str(&format!(" ({key})"));
        }
        ConfigError::Parse {
            path,
            message: crate::fsutil::one_line(e.message()),
        }
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| error(&e, None))?;
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| error(e.inner(), Some(e.path().to_string())))
}

impl Config {
    /// Reads the file, then the environment, then the flags, each overriding the one before.
    pub fn layered(layers: &Layers<'_>) -> Result<Effective, ConfigError> {
        let defaults = keys();
        let mut values: BTreeMap<String, (Value, Source)> = defaults
            .iter()
            .map(|(key, value)| (key.clone(), (value.clone(), Source::Default)))
            .collect();
        let path_text = layers.file.display().to_string();
        let mut mirrors = Vec::new();
        let mut mirror_keys_given = Vec::new();
        let file = match std::fs::read_to_string(layers.file) {
            Ok(text) => {
                // Typed first: unknown keys and wrong types are named with their line.
                mirrors = parse_file(&text, &path_text)?.mirrors;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path_text.clone(),
                    message: e.message().to_string(),
                })?;
                if let Some(toml::Value::Array(tables)) = table.get("mirror") {
                    mirror_keys_given = tables
                        .iter()
                        .map(|t| {
                            t.as_table()
                                .map_or_else(Vec::new, |t| t.keys().cloned().collect())
                        })
                        .collect();
                }
                for (section, entries) in table {
                    let toml::Value::Table(entries) = entries else {
                        continue;
                    };
                    for (key, value) in entries {
                        let json = serde_json::to_value(value).map_err(|e| ConfigError::Parse {
                            path: path_text.clone(),
                            message: e.to_string(),
                        })?;
                        values.insert(format!("{section}.{key}"), (json, Source::File));
                    }
                }
                Some(layers.file.to_path_buf())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !layers.file_named => None,
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path_text,
                    message: crate::fsutil::plain_message(&e),
                });
            }
        };

        let sections: Vec<String> = defaults
            .iter()
            .filter_map(|(key, _)| {
                key.split('.')
                    .next()
                    .map(|s| format!("{ENV_PREFIX}{}_", s.to_ascii_uppercase()))
            })
            .collect();
        for (name, text) in &layers.env {
            if !sections.iter().any(|prefix| name.starts_with(prefix)) {
                continue;
            }
            let Some((key, default)) = defaults.iter().find(|(key, _)| env_name(key) == *name)
            else {
                return Err(ConfigError::UnknownKey(name.clone()));
            };
            let value = typed_value(default, text).map_err(|message| ConfigError::Value {
                origin: name.clone(),
                key: key.clone(),
                message,
            })?;
            values.insert(key.clone(), (value, Source::Env(name.clone())));
        }
        for (key, flag, text) in &layers.flags {
            let Some((_, default)) = defaults.iter().find(|(k, _)| k == key) else {
                return Err(ConfigError::UnknownKey(flag.clone()));
            };
            let value = typed_value(default, text).map_err(|message| ConfigError::Value {
                origin: flag.clone(),
                key: key.clone(),
                message,
            })?;
            // Repeated flags for a list add up: `--tls-san a --tls-san b`.
            let value = match (&value, values.get(key)) {
                (Value::Array(new), Some((Value::Array(old), Source::Flag(_)))) => {
                    Value::Array(old.iter().chain(new).cloned().collect())
                }
                _ => value,
            };
            values.insert(key.clone(), (value, Source::Flag(flag.clone())));
        }

        let mut tree = serde_json::Map::new();
        for (key, (value, _)) in &values {
            let (section, name) = key.split_once('.').unwrap_or((key, ""));
            if let Value::Object(table) = tree
                .entry(section.to_string())
                .or_insert_with(|| Value::Object(Default::default()))
            {
                table.insert(name.to_string(), value.clone());
            }
        }
        let mut config: Config =
            serde_path_to_error::deserialize(Value::Object(tree)).map_err(|e| {
                let key = e.path().to_string();
                let origin = match values.get(&key).map(|(_, source)| source) {
                    Some(Source::Env(name)) => name.clone(),
                    Some(Source::Flag(flag)) => flag.clone(),
                    Some(Source::File) => path_text.clone(),
                    _ => "the defaults".to_string(),
                };
                ConfigError::Value {
                    origin,
                    key,
                    message: e.inner().to_string(),
                }
            })?;
        // Mirrors come from the file alone; each table is checked whole, so that every bad
        // entry is named at once.
        mirror_specs(&mirrors).map_err(|problems| ConfigError::Mirrors {
            path: path_text.clone(),
            problems,
        })?;
        config.mirrors = mirrors;
        let storage_problems = config.storage.problems();
        if !storage_problems.is_empty() {
            return Err(ConfigError::Storage(storage_problems));
        }
        Ok(Effective {
            config,
            file,
            values,
            mirror_keys_given,
        })
    }

    pub fn catalog_settings(&self) -> CatalogSettings {
        CatalogSettings {
            grace_period_secs: self.catalog.grace_period_secs,
            max_metadata_bytes: self.catalog.max_metadata_bytes,
            deltas: self.catalog.deltas,
            delta_max_ratio: self.catalog.delta_max_ratio,
            scan_limits: ScanLimits {
                unpacked_bytes: self.catalog.max_metadata_unpacked_bytes,
                entries: self.catalog.max_metadata_entries,
                ..ScanLimits::default()
            },
        }
    }
}

/// The keys a reload (SIGHUP) applies to the running server. The others are read once at
/// start (listeners, caps, timeouts of the accept loops, certificate paths, host keys, log
/// format): a change to them is reported and waits for a restart.
pub const LIVE_KEYS: &[&str] = &[
    "catalog.grace_period_secs",
    "catalog.max_metadata_bytes",
    "catalog.max_metadata_unpacked_bytes",
    "catalog.max_metadata_entries",
    "catalog.deltas",
    "catalog.delta_max_ratio",
    "http.plain_http_images",
    "http.public_url",
    "http.remote_name",
    "http.send_timeout_secs",
    "ssh.direct_io",
    "ssh.max_depth",
    "ssh.max_entries",
    "ssh.max_file_bytes",
    "ssh.quota_bytes",
    "ssh.send_timeout_secs",
];

/// How a reload names a change to the `[[mirror]]` tables, which applies at once.
pub const MIRRORS_KEY: &str = "[[mirror]]";

/// The configuration a running server uses; a reload replaces it whole, and readers take
/// the one in force at that moment.
#[derive(Debug)]
pub struct LiveConfig {
    current: std::sync::RwLock<std::sync::Arc<Config>>,
}

impl LiveConfig {
    pub fn new(config: Config) -> LiveConfig {
        LiveConfig {
            current: std::sync::RwLock::new(std::sync::Arc::new(config)),
        }
    }

    pub fn current(&self) -> std::sync::Arc<Config> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, config: Config) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = std::sync::Arc::new(config);
    }
}

/// What a reload found in a newly read configuration, against the one read at start.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChanges {
    /// The running configuration with the changed live keys taken from the new one.
    pub config: Config,
    /// Changed keys in [`LIVE_KEYS`], applied now.
    pub applied: Vec<String>,
    /// Changed keys that apply at the next restart.
    pub need_restart: Vec<String>,
}

/// Compares `read` (just read) with `baseline` (as read before) and takes the changed live
/// keys into `running`. A key is compared with what was read, not what runs, so that a
/// listen address with port 0 (running on the bound port) is not a change.
pub fn changes(
    baseline: &Config,
    running: &Config,
    read: &Config,
) -> Result<ConfigChanges, ConfigError> {
    let as_json = |config: &Config| serde_json::to_value(config).unwrap_or(Value::Null);
    let baseline_mirrors = &baseline.mirrors;
    let (baseline, read_json) = (as_json(baseline), as_json(read));
    let mut merged = as_json(running);
    let mut applied = Vec::new();
    let mut need_restart = Vec::new();
    for (key, _) in keys() {
        let pointer = format!("/{}", key.replace('.', "/"));
        let new = read_json.pointer(&pointer);
        if baseline.pointer(&pointer) == new {
            continue;
        }
        if !LIVE_KEYS.contains(&key.as_str()) {
            need_restart.push(key);
            continue;
        }
        if let (Some(slot), Some(new)) = (merged.pointer_mut(&pointer), new) {
            *slot = new.clone();
        }
        applied.push(key);
    }
    let mut config: Config = serde_json::from_value(merged).map_err(|e| ConfigError::Value {
        origin: "the reloaded configuration".into(),
        key: applied.join(", "),
        message: e.to_string(),
    })?;
    // Mirrors are live: `serve`'s schedule reads them at each turn.
    if baseline_mirrors != &read.mirrors {
        applied.push(MIRRORS_KEY.to_string());
    }
    config.mirrors = read.mirrors.clone();
    Ok(ConfigChanges {
        config,
        applied,
        need_restart,
    })
}

/// The effective configuration as TOML, each value followed by where it came from: what
/// `simplestream-server config` prints, and a valid config.toml once the comments are read.
pub fn render(effective: &Effective) -> String {
    let mut out = String::new();
    match &effective.file {
        Some(file) => out.push_str(&format!(
            "# Effective configuration; file: {}\n",
            file.display()
        )),
        None => out.push_str("# Effective configuration; no config file (defaults apply)\n"),
    }
    out.push_str("# Override a key in the file, with SIMPLESTREAM_<SECTION>_<KEY>, or with --<section>-<key>.\n");
    let rows: Vec<(&str, String, String)> = effective
        .values
        .iter()
        .map(|(key, (value, source))| {
            let (section, name) = key.split_once('.').unwrap_or(("", key));
            let line = match toml::Value::try_from(value) {
                Ok(value) => format!("{name} = {value}"),
                Err(_) => format!("# {name} is unset"),
            };
            let origin = match source {
                Source::Default => "default".to_string(),
                Source::File => "config file".to_string(),
                Source::Env(name) => format!("environment {name}"),
                Source::Flag(flag) => format!("flag {flag}"),
            };
            (section, line, origin)
        })
        .collect();
    let width = rows
        .iter()
        .map(|(_, line, _)| line.len())
        .max()
        .unwrap_or(0);
    let mut current_section = "";
    for (section, line, origin) in rows {
        if section != current_section {
            out.push_str(&format!("\n[{section}]\n"));
            current_section = section;
        }
        out.push_str(&format!("{line:<width$}  # {origin}\n"));
    }
    render_mirrors(effective, &mut out);
    out
}

/// The `[[mirror]]` tables, every field shown, those the file did not give marked as defaults.
fn render_mirrors(effective: &Effective, out: &mut String) {
    if effective.config.mirrors.is_empty() {
        out.push_str("\n# No [[mirror]] tables: mirrors are configured in the file only.\n");
        return;
    }
    for (index, mirror) in effective.config.mirrors.iter().enumerate() {
        let given = effective.mirror_keys_given.get(index);
        let Ok(toml::Value::Table(table)) = toml::Value::try_from(mirror) else {
            continue;
        };
        let mut rows: Vec<(String, &str)> = table
            .iter()
            .map(|(key, value)| {
                let origin = if given.is_some_and(|keys| keys.contains(key)) {
                    "config file"
                } else {
                    "default"
                };
                (format!("{key} = {value}"), origin)
            })
            .collect();
        for unset in ["keep", "ca_cert", "alias_prefix", "bandwidth_limit"] {
            if !table.contains_key(unset) {
                rows.push((format!("# {unset} is unset"), "default"));
            }
        }
        let width = rows.iter().map(|(line, _)| line.len()).max().unwrap_or(0);
        out.push_str("\n[[mirror]]\n");
        for (line, origin) in rows {
            out.push_str(&format!("{line:<width$}  # {origin}\n"));
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

    #[test]
    fn a_reload_applies_live_keys_and_names_the_others() {
        let baseline: Config = toml::from_str("[http]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        let mut running = baseline.clone();
        running.http.listen = "127.0.0.1:8443".parse().unwrap();
        let read: Config = toml::from_str(
            "[http]\nlisten = \"127.0.0.1:0\"\nremote_name = \"lab\"\n\
             [ssh]\nlisten = \"127.0.0.1:2200\"\nmax_file_bytes = 5\n",
        )
        .unwrap();
        let changes = changes(&baseline, &running, &read).unwrap();
        assert_eq!(changes.applied, ["http.remote_name", "ssh.max_file_bytes"]);
        assert_eq!(changes.need_restart, ["ssh.listen"]);
        assert_eq!(changes.config.http.remote_name, "lab");
        assert_eq!(changes.config.ssh.max_file_bytes, 5);
        // What runs stays: the bound port, the old SSH address.
        assert_eq!(changes.config.http.listen.port(), 8443);
        assert_eq!(changes.config.ssh.listen, SshConfig::default().listen);
        // Nothing changed: nothing to report.
        let same = super::changes(&baseline, &running, &baseline).unwrap();
        assert!(same.applied.is_empty() && same.need_restart.is_empty());
        assert_eq!(same.config, running);
        // Every live key is a key.
        let all: Vec<String> = keys().into_iter().map(|(key, _)| key).collect();
        for key in LIVE_KEYS {
            assert!(all.iter().any(|k| k == key), "{key}");
        }
    }

    #[test]
    fn delta_settings_read_as_a_switch_and_a_share() {
        let defaults = Config::default().catalog_settings();
        assert!(defaults.deltas);
        assert_eq!(defaults.delta_max_ratio, 0.5);
        let config: Config =
            toml::from_str("[catalog]\ndeltas = false\ndelta_max_ratio = 0.25\n").unwrap();
        let settings = config.catalog_settings();
        assert!(!settings.deltas);
        assert_eq!(settings.delta_max_ratio, 0.25);
        for bad in ["0", "1.5", "-0.1"] {
            let text = format!("[catalog]\ndelta_max_ratio = {bad}\n");
            let Err(e) = toml::from_str::<Config>(&text) else {
                panic!("{bad} was accepted");
            };
            assert!(e.to_string().contains("is not a share"), "{e}");
        }
        let (_, default) = keys()
            .into_iter()
            .find(|(key, _)| key == "catalog.delta_max_ratio")
            .unwrap();
        assert_eq!(typed_value(&default, "0.3"), Ok(Value::from(0.3)));
        assert!(typed_value(&default, "half").is_err());
    }

    #[test]
    fn refusals_name_real_settings() {
        let all: Vec<String> = keys().into_iter().map(|(key, _)| key).collect();
        for key in [
            crate::image::tarball::UNPACKED_BYTES_SETTING,
            crate::image::tarball::ENTRIES_SETTING,
        ] {
            assert!(all.iter().any(|k| k == key), "{key}");
        }
        let config: Config = toml::from_str(
            "[catalog]\nmax_metadata_unpacked_bytes = 5\nmax_metadata_entries = 6\n",
        )
        .unwrap();
        let limits = config.catalog_settings().scan_limits;
        assert_eq!((limits.unpacked_bytes, limits.entries), (5, 6));
    }

    fn layered_from(text: &str) -> Result<Effective, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).unwrap();
        Config::layered(&Layers {
            file: &file,
            file_named: true,
            env: Vec::new(),
            flags: Vec::new(),
        })
    }

    #[test]
    fn each_bad_storage_entry_is_one_line() {
        let err = layered_from(
            "[storage]\nbackend = \"s3\"\nendpoint = \"ftp://x\"\npoll_interval_secs = 0\npublic_base_url = \"cdn\"\n",
        )
        .unwrap_err();
        let lines = err.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        for (line, wanted) in lines.iter().zip([
            "storage.endpoint \"ftp://x\" is not an http:// or https:// URL",
            "storage.bucket is empty",
            "storage.poll_interval_secs is 0",
            "storage.public_base_url \"cdn\" is not",
        ]) {
            assert!(line.starts_with(wanted), "{line}");
        }
        // A local backend ignores the S3 keys; a whole S3 section is accepted.
        assert!(layered_from("[storage]\nendpoint = \"ftp://x\"\n").is_ok());
        let effective = layered_from(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"b\"\nprefix = \"lxd\"\npublic_base_url = \"https://cdn.example/\"\n",
        )
        .unwrap();
        assert_eq!(
            effective.config.storage.redirect_base().as_deref(),
            Some("https://cdn.example/lxd/")
        );
    }

    #[test]
    fn mirror_tables_become_specs() {
        let effective = layered_from(
            "[[mirror]]\nname = \"lxc\"\nurl = \"https://images.linuxcontainers.org/\"\n\
             filters = [\"os=debian\", \"type=container\"]\nkeep = 2\ninterval = \"90m\"\n\
             alias_prefix = \"mirror/\"\nbandwidth_limit = \"20MiB\"\n\
             [[mirror]]\nname = \"ubuntu\"\nurl = \"https://cloud-images.ubuntu.com/releases\"\n\
             enabled = false\ninterval = 3600\n",
        )
        .unwrap();
        let mirrors = &effective.config.mirrors;
        assert_eq!(mirrors.len(), 2);
        assert_eq!(mirrors[0].interval, MirrorInterval(5400));
        assert_eq!(mirrors[1].interval, MirrorInterval(3600));
        assert!(mirrors[0].enabled && !mirrors[1].enabled);
        let specs = mirror_specs(mirrors).unwrap();
        assert_eq!(specs[0].origin(), "lxc");
        assert_eq!(specs[0].url, "https://images.linuxcontainers.org");
        assert_eq!(specs[0].filters.len(), 2);
        assert_eq!(specs[0].keep, Some(2));
        assert_eq!(specs[0].bandwidth_limit, Some(20 << 20));
        assert_eq!(specs[0].concurrency, MirrorSpec::DEFAULT_CONCURRENCY);
        assert_eq!(specs[1].keep, None);
        // Shown by `config`, each field with its origin, and readable again.
        let text = render(&effective);
        assert!(text.contains("[[mirror]]"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("interval = \"90m\"") && l.ends_with("# config file")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("concurrency = 4") && l.ends_with("# default")),
            "{text}"
        );
        let reparsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(&reparsed.mirrors, mirrors);
    }

    #[test]
    fn each_bad_mirror_entry_is_one_line() {
        let error = layered_from(
            "[[mirror]]\nname = \"lxc\"\nurl = \"http://images.linuxcontainers.org\"\n\
             filters = [\"os\"]\nkeep = 0\ninterval = 0\n\
             [[mirror]]\nname = \"lxc\"\nurl = \"https://a.example\"\nconcurrency = 0\n\
             [[mirror]]\nname = \"../x\"\nurl = \"https://b.example\"\nca_cert = \"ca.pem\"\n",
        )
        .unwrap_err();
        let lines = error.lines();
        for expected in [
            "[[mirror]] \"lxc\": url \"http://images.linuxcontainers.org\" must start with https://",
            "[[mirror]] \"lxc\": filter \"os\" has no operator",
            "[[mirror]] \"lxc\": keep = 0 would keep nothing",
            "[[mirror]] \"lxc\": interval is zero",
            "[[mirror]] \"lxc\": the name is used by an earlier [[mirror]] table",
            "[[mirror]] \"lxc\": concurrency = 0 is out of range",
            "[[mirror]] \"../x\": name \"../x\" is not a mirror name",
            "[[mirror]] \"../x\": ca_cert \"ca.pem\" is relative",
        ] {
            assert!(
                lines.iter().any(|line| line.contains(expected)),
                "{expected} missing in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert!(lines.iter().all(|line| !line.contains('\n')));
        // A bad interval or an unknown key is named with its line, as for any other table.
        let error = layered_from(
            "[[mirror]]\nname = \"a\"\nurl = \"https://a.example\"\ninterval = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("line 4") && error.contains("\"soon\" is not an interval"),
            "{error}"
        );
        let error =
            layered_from("[[mirror]]\nname = \"a\"\nurl = \"https://a.example\"\nschedule = 5\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("schedule"), "{error}");
    }

    #[test]
    fn a_reload_applies_changed_mirrors() {
        let baseline: Config = toml::from_str("").unwrap();
        let read: Config =
            toml::from_str("[[mirror]]\nname = \"a\"\nurl = \"https://a.example\"\n").unwrap();
        let changes = changes(&baseline, &baseline, &read).unwrap();
        assert_eq!(changes.applied, [MIRRORS_KEY]);
        assert_eq!(changes.config.mirrors, read.mirrors);
        let same = super::changes(&read, &read, &read).unwrap();
        assert!(same.applied.is_empty());
    }

    #[test]
    fn intervals_and_rates() {
        assert_eq!("6h".parse::<MirrorInterval>(), Ok(MirrorInterval(21600)));
        assert_eq!("1d".parse::<MirrorInterval>(), Ok(MirrorInterval(86400)));
        assert_eq!("45".parse::<MirrorInterval>(), Ok(MirrorInterval(45)));
        assert!("6 hours".parse::<MirrorInterval>().is_err());
        assert!("h".parse::<MirrorInterval>().is_err());
        assert_eq!(MirrorInterval(5400).to_string(), "90m");
        assert_eq!(MirrorInterval(61).to_string(), "61s");
        assert_eq!("500KiB/s".parse::<ByteRate>(), Ok(ByteRate(500 << 10)));
        assert_eq!("2M".parse::<ByteRate>(), Ok(ByteRate(2 << 20)));
        assert_eq!(ByteRate(3 << 30).to_string(), "3GiB");
        assert!("fast".parse::<ByteRate>().is_err());
    }
}

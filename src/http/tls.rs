//! TLS: the server certificate and the rustls configuration.
//!
//! - With no configured certificate, `data/tls/server.crt` + `server.key` are generated once
//!   (self-signed ECDSA P-256, EKU serverAuth, SANs for every name and address the server is
//!   reached by) and never regenerated: clients pin this exact certificate.
//! - A configured certificate (`--tls-cert/--tls-key`, e.g. from certbot) is used as is.
//! - Either way the files are watched ([`watch`]): a changed pair is loaded without a restart,
//!   and a pair that does not load (half-written, key and certificate not matching) is
//!   reported once and the previous one kept.
//! - rustls offers TLS 1.3 (LXD requires it) and 1.2, and ALPN `h2` then `http/1.1`, and
//!   resumes sessions from stateless tickets.

use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsVersion};
use crate::data_dir::DataDir;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate does not exist yet (no `serve` has generated it).
    #[error("{0}")]
    Missing(String),
    /// The configuration or a file is not usable; the message says which and what to do.
    #[error("{0}")]
    Invalid(String),
}

/// Where the certificate and key live, and whether the server made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generated: bool,
}

impl CertPaths {
    /// The configured pair, or `data/tls/server.{crt,key}`.
    pub fn from_config(config: &Config, dirs: &DataDir) -> Result<CertPaths, TlsError> {
        match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Ok(CertPaths {
                cert: cert.clone(),
                key: key.clone(),
                generated: false,
            }),
            (None, None) => Ok(CertPaths {
                cert: dirs.tls().join("server.crt"),
                key: dirs.tls().join("server.key"),
                generated: true,
            }),
            _ => Err(TlsError::Invalid(
                "tls.cert and tls.key go together: set both (or neither, to use a generated certificate)"
                    .into(),
            )),
        }
    }
}

/// The names and addresses a generated certificate carries, in order, without duplicates.
///
/// LXD and Incus check the certificate against its FIRST DNS name (and send it as SNI), so the
/// operator's own names come first: the public URL's host, then `--tls-san` values. The
/// machine's hostname, `localhost` and the loopback and listening addresses follow.
pub fn subject_alt_names(
    public_host: Option<&str>,
    configured: &[String],
    hostname: Option<&str>,
    listen_ip: IpAddr,
) -> Result<Vec<String>, TlsError> {
    for name in configured {
        if !is_san(name) {
            return Err(TlsError::Invalid(format!(
                "--tls-san {name:?} is not a DNS name or an IP address; give one like images.example.com or 192.0.2.10"
            )));
        }
    }
    let mut names: Vec<String> = Vec::new();
    let candidates = public_host
        .into_iter()
        .map(str::to_string)
        .chain(configured.iter().cloned())
        .chain(hostname.map(str::to_string))
        .chain(["localhost".into(), "127.0.0.1".into(), "::1".into()])
        .chain((!listen_ip.is_unspecified()).then(|| listen_ip.to_string()));
    for name in candidates {
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if is_san(&name) && !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    Ok(names)
}

/// A DNS name (letters, digits, `-`, `_`, `.`, a leading `*.`) or an IP address.
fn is_san(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Generates the certificate and key when they are the server's own and do not exist yet.
/// Never replaces an existing certificate: clients have pinned it.
pub fn ensure_certificate(paths: &CertPaths, names: &[String]) -> Result<(), TlsError> {
    if !paths.generated {
        for path in [&paths.cert, &paths.key] {
            if !path.is_file() {
                return Err(TlsError::Invalid(format!(
                    "the TLS file {} does not exist; fix tls.cert/tls.key (or --tls-cert/--tls-key)",
                    path.display()
                )));
            }
        }
        return Ok(());
    }
    if paths.cert.exists() {
        if !paths.key.exists() {
            return Err(TlsError::Invalid(format!(
                "{} exists but its key {} does not; restore the key, or delete the certificate to generate a new pair (clients will have to trust the new one)",
                paths.cert.display(),
                paths.key.display()
            )));
        }
        return Ok(());
    }
    generate(paths, names)
}

/// Years a generated certificate stays valid.
const GENERATED_VALIDITY_YEARS: i16 = 10;

fn generate(paths: &CertPaths, names: &[String]) -> Result<(), TlsError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        TlsError::Invalid(format!("cannot generate the TLS certificate ({what}: {e})"))
    };
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| invalid("names", &e))?;
    let common_name = names
        .first()
        .map_or("simplestream-server", String::as_str)
        .to_string();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "simplestream-server");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    // Valid from yesterday (clients with a slightly slow clock) for ten years.
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let start = today.yesterday().map_err(|e| invalid("date", &e))?;
    let end = today
        .checked_add(jiff::Span::new().years(GENERATED_VALIDITY_YEARS))
        .map_err(|e| invalid("date", &e))?;
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(start);
    params.not_after = ymd(end);

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| invalid("key", &e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| invalid("signing", &e))?;

    let dir = paths.cert.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_invalid(&fsutil::with_path(e, "cannot create", dir)))?;
    // Key first: a crash in between leaves a key without a certificate, which the next start
    // simply replaces; the reverse would leave a certificate nobody can serve.
    write_file_atomically(&paths.key, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|e| io_invalid(&e))?;
    write_file_atomically(&paths.cert, cert.pem().as_bytes(), 0o644).map_err(|e| io_invalid(&e))?;
    tracing::info!(
        cert = %paths.cert.display(),
        names = %names.join(", "),
        "generated a self-signed TLS certificate"
    );
    Ok(())
}

fn io_invalid(e: &io::Error) -> TlsError {
    TlsError::Invalid(fsutil::plain_message(e))
}

/// Writes `bytes` to `dest` with `mode` through a temp file in the same folder, so that the
/// file never exists with wider permissions or half its content.
fn write_file_atomically(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = fsutil::temp_path(dir, &format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| fsutil::with_path(e, "cannot create", &tmp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| fsutil::with_path(e, "cannot write", &tmp))?;
        fsutil::rename_durably(&tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What identifies a file's content cheaply: a certbot renewal changes the symlink target
/// (inode), an editor rewrites (mtime), a copy over it changes size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// A loaded certificate: what rustls serves, and what people are shown.
#[derive(Debug)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    /// The end-entity certificate as PEM: served at `/server.crt`, pinned by clients.
    pub pem: String,
    /// Lowercase hex SHA-256 of the end-entity certificate (DER).
    pub fingerprint: String,
    stamps: (FileStamp, FileStamp),
}

/// Reads a certificate chain and its key, checking that they belong together.
pub fn load(paths: &CertPaths) -> Result<LoadedCert, TlsError> {
    let stamp = |path: &Path| {
        FileStamp::of(path).map_err(|e| io_invalid(&fsutil::with_path(e, "cannot read", path)))
    };
    let stamps = (stamp(&paths.cert)?, stamp(&paths.key)?);
    let cert_pem = std::fs::read(&paths.cert)
        .map_err(|e| io_invalid(&fsutil::with_path(e, "cannot read", &paths.cert)))?;
    let key_pem = std::fs::read(&paths.key)
        .map_err(|e| io_invalid(&fsutil::with_path(e, "cannot read", &paths.key)))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError::Invalid(format!(
                "{} is not a PEM certificate ({e}); give the certificate chain in PEM form",
                paths.cert.display()
            ))
        })?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(TlsError::Invalid(format!(
            "{} holds no certificate; give the certificate chain in PEM form",
            paths.cert.display()
        )));
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsError::Invalid(format!(
            "{} is not a PEM private key ({e}); give the key of the certificate in PEM form",
            paths.key.display()
        ))
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        TlsError::Invalid(format!(
            "{} and {} do not go together ({e}); give the key that belongs to the certificate",
            paths.cert.display(),
            paths.key.display()
        ))
    })?;
    Ok(LoadedCert {
        certified: Arc::new(certified),
        pem: pem::encode_config(
            &pem::Pem::new("CERTIFICATE", leaf.as_ref()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ),
        fingerprint: hex::encode(sha2::Sha256::digest(leaf.as_ref())),
        stamps,
    })
}

/// The certificate in use, swapped whole when its files change. rustls asks it for the
/// certificate on every handshake.
#[derive(Debug)]
pub struct CertStore {
    paths: CertPaths,
    current: RwLock<Arc<LoadedCert>>,
    /// The stamps of a pair that failed to load, so the failure is reported once.
    rejected: Mutex<Option<(FileStamp, FileStamp)>>,
}

/// What a check of the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    Failed,
}

impl CertStore {
    pub fn open(paths: CertPaths) -> Result<CertStore, TlsError> {
        let loaded = load(&paths)?;
        Ok(CertStore {
            paths,
            current: RwLock::new(Arc::new(loaded)),
            rejected: Mutex::new(None),
        })
    }

    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    pub fn current(&self) -> Arc<LoadedCert> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the files again when they changed since the last load. Blocking (file reads).
    pub fn reload_if_changed(&self) -> Reload {
        let (Ok(cert), Ok(key)) = (
            FileStamp::of(&self.paths.cert),
            FileStamp::of(&self.paths.key),
        ) else {
            // Mid-renewal (a file briefly missing) or deleted: keep serving the loaded pair.
            return Reload::Unchanged;
        };
        let stamps = (cert, key);
        if stamps == self.current().stamps {
            return Reload::Unchanged;
        }
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if *rejected == Some(stamps) {
            return Reload::Failed;
        }
        match load(&self.paths) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %self.paths.cert.display(),
                    fingerprint = %loaded.fingerprint,
                    "loaded the changed TLS certificate"
                );
                *rejected = None;
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                *current = Arc::new(loaded);
                Reload::Reloaded
            }
            Err(e) => {
                tracing::warn!(error = %e, "the TLS certificate files changed but do not load; still serving the previous certificate");
                *rejected = Some(stamps);
                Reload::Failed
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

/// Checks the certificate files every `interval` until shutdown.
pub async fn watch(store: Arc<CertStore>, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
    }
}

/// TLS 1.3 (and 1.2 when `tls.min_version` is 1.2) with the aws-lc-rs provider; ALPN h2 (when
/// a client asks) and http/1.1.
pub fn server_config(
    store: Arc<CertStore>,
    min_version: TlsVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Invalid(format!("cannot set up TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets (random keys, rotated every 6 hours; nginx resumes from tickets
    // by default too): a client that comes back skips the certificate and its signature,
    // however many others connected in between; the default in-memory cache holds only the
    // last 128 clients' sessions.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Invalid(format!("cannot set up TLS session tickets: {e}")))?;
    Ok(Arc::new(config))
}

/// Reads the certificate for display (`remote-info`) without generating one.
pub fn read_for_display(config: &Config, dirs: &DataDir) -> Result<LoadedCert, TlsError> {
    let paths = CertPaths::from_config(config, dirs)?;
    if paths.generated && !paths.cert.exists() {
        return Err(TlsError::Missing(format!(
            "there is no TLS certificate yet ({} is generated on the first `serve`); start the server once, or set tls.cert and tls.key",
            paths.cert.display()
        )));
    }
    load(&paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names_come_first_without_duplicates() {
        let names = subject_alt_names(
            Some("images.example.com"),
            &["Images.example.com".into(), "192.0.2.7".into()],
            Some("builder"),
            "0.0.0.0".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            names,
            [
                "images.example.com",
                "192.0.2.7",
                "builder",
                "localhost",
                "127.0.0.1",
                "::1"
            ]
        );
    }

    #[test]
    fn a_specific_listen_address_is_named() {
        let names = subject_alt_names(None, &[], None, "198.51.100.4".parse().unwrap()).unwrap();
        assert_eq!(names, ["localhost", "127.0.0.1", "::1", "198.51.100.4"]);
    }

    #[test]
    fn bad_configured_names_are_refused() {
        for bad in ["", "two words", "a..b", "-x", "ümlaut.de"] {
            let err = subject_alt_names(None, &[bad.into()], None, "0.0.0.0".parse().unwrap())
                .unwrap_err();
            assert!(err.to_string().contains("--tls-san"), "{err}");
        }
    }

    #[test]
    fn generated_pair_loads_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths {
            cert: dir.path().join("tls/server.crt"),
            key: dir.path().join("tls/server.key"),
            generated: true,
        };
        ensure_certificate(&paths, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let first = load(&paths).unwrap();
        let mode = std::fs::metadata(&paths.key).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        ensure_certificate(&paths, &["other".into()]).unwrap();
        assert_eq!(load(&paths).unwrap().fingerprint, first.fingerprint);
        assert!(first.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    }

    #[test]
    fn a_mismatched_key_is_refused_and_the_old_pair_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths {
            cert: dir.path().join("a.crt"),
            key: dir.path().join("a.key"),
            generated: true,
        };
        ensure_certificate(&paths, &["localhost".into()]).unwrap();
        let store = CertStore::open(paths.clone()).unwrap();
        let before = store.current().fingerprint.clone();
        let other = CertPaths {
            cert: dir.path().join("b.crt"),
            key: dir.path().join("b.key"),
            generated: true,
        };
        ensure_certificate(&other, &["localhost".into()]).unwrap();
        std::fs::copy(&other.cert, &paths.cert).unwrap();
        assert_eq!(store.reload_if_changed(), Reload::Failed);
        assert_eq!(store.reload_if_changed(), Reload::Failed);
        assert_eq!(store.current().fingerprint, before);
        std::fs::copy(&other.key, &paths.key).unwrap();
        assert_eq!(store.reload_if_changed(), Reload::Reloaded);
        assert_ne!(store.current().fingerprint, before);
        assert_eq!(store.reload_if_changed(), Reload::Unchanged);
    }
}

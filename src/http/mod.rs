//! The HTTPS side: serves `data/www` (the simplestreams tree) to LXD and Incus.
//!
//! # Layout
//! - [`server`]: the accept loop. Takes a bound listener and a shutdown token; sniffs each
//!   connection's first byte (0x16 = TLS) and hands it to rustls + hyper or to [`plain`].
//! - [`connection_threads`]: the threads connections run on, one per core.
//! - [`tls`]: the certificate (generated once or the operator's, reloaded when it changes)
//!   and the rustls configuration.
//! - [`plain`]: LXD's plain-HTTP first try on the TLS port: image files, else a redirect.
//! - [`app`]: the request pipeline for HTTPS, read top to bottom: access log, the pages
//!   (`/`, `/server.crt`, `/healthz`, `/metrics`), then static files.
//! - [`files`]: static files: path cleaning, resolving through the published tree, ETag,
//!   ranges, the answer; [`body`] streams an object's bytes as the HTTPS body.
//! - [`preconditions`]: `If-*` and `Range` evaluation (pure functions).
//! - [`json_cache`]: the stream's JSON held in memory per file version, with its gzip form.
//! - [`published_state`]: the image summaries `/` and `/healthz` answer from, read once per
//!   version of the stream.
//! - [`cache_policy`]: `Cache-Control` by path, and the content types.
//! - [`catalog_page`], [`metrics`], [`access_log`]: the HTML catalog, Prometheus text, and
//!   the one log line per request.
//! - [`send_timeout`]: closes connections whose client stopped reading.

pub mod access_log;
pub mod app;
pub mod body;
pub mod cache_policy;
pub mod catalog_page;
pub mod connection_threads;
pub mod files;
pub mod json_cache;
pub mod metrics;
pub mod plain;
pub mod preconditions;
pub mod published_state;
pub mod send_timeout;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::remote::{
    self, RemoteInfoText, SshAccess, check_remote_name, machine_hostname, normalize_base_path,
    public_url, url_host,
};
use crate::storage::PublishedTree;
use tls::{CertPaths, CertStore};

/// The HTTP settings, checked and in the units the code uses.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `""` or a prefix like `/lxd` (leading slash, no trailing slash).
    pub base_path: String,
    pub plain_http_images: bool,
    pub handshake_timeout: Duration,
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub reload_interval: Duration,
    /// The URL clients add as the remote, and the remote's name.
    pub public_url: String,
    pub remote_name: String,
    /// Image downloads are redirected here (+ the key) instead of streamed:
    /// `storage.public_base_url` on an object-storage backend.
    pub redirect_base: Option<String>,
}

impl HttpSettings {
    /// `listen` is the bound address (with port 0 configured, the real port).
    pub fn from_config(config: &Config, listen: SocketAddr) -> anyhow::Result<HttpSettings> {
        let http = &config.http;
        let base_path = normalize_base_path(&http.base_path).map_err(anyhow::Error::msg)?;
        check_remote_name(&http.remote_name).map_err(anyhow::Error::msg)?;
        if let Some(url) = &http.public_url
            && (!url.starts_with("https://") || url_host(url).is_none())
        {
            anyhow::bail!(
                "http.public_url {url:?} must be an https:// URL with a host (LXD and Incus refuse anything else), e.g. https://images.example.com:8443"
            );
        }
        if http.max_connections == 0 {
            anyhow::bail!("http.max_connections is 0; set it to at least 1");
        }
        if http.max_connections_per_address == 0 {
            anyhow::bail!("http.max_connections_per_address is 0; set it to at least 1 (e.g. 256)");
        }
        Ok(HttpSettings {
            public_url: public_url(http, &base_path, listen),
            base_path,
            plain_http_images: http.plain_http_images,
            handshake_timeout: Duration::from_secs(http.handshake_timeout_secs.max(1)),
            send_timeout: Duration::from_secs(http.send_timeout_secs.max(1)),
            shutdown_timeout: Duration::from_secs(http.shutdown_timeout_secs),
            max_connections: http.max_connections,
            max_connections_per_address: http.max_connections_per_address,
            reload_interval: Duration::from_secs(config.tls.reload_interval_secs.max(1)),
            remote_name: http.remote_name.clone(),
            redirect_base: config.storage.redirect_base(),
        })
    }
}

/// Everything a request handler needs, shared by all connections.
pub struct HttpState {
    pub catalog: Arc<Catalog>,
    /// What is served: the catalog's published tree.
    pub tree: Arc<dyn PublishedTree>,
    /// Replaced by a reload; read with [`HttpState::settings`].
    settings: std::sync::RwLock<Arc<HttpSettings>>,
    pub certs: Arc<CertStore>,
    pub tls: tokio_rustls::TlsAcceptor,
    pub json: json_cache::JsonCache,
    /// What `/` and `/healthz` show, read once per published stream.
    pub published: published_state::PublishedState,
}

impl HttpState {
    /// The settings in force now. The accept loop reads its own (caps, handshake and
    /// shutdown timeouts, base path) once at start; requests read the rest each time.
    pub fn settings(&self) -> Arc<HttpSettings> {
        match self.settings.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_settings(&self, settings: HttpSettings) {
        let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(settings);
    }
}

/// The HTTPS listener, bound and ready to run.
pub struct Https {
    listener: TcpListener,
    threads: connection_threads::ConnectionThreads,
    state: Arc<HttpState>,
}

impl Https {
    /// Binds `http.listen`, makes sure a certificate exists (generating one on first start)
    /// and loads it.
    pub async fn bind(config: &Config, catalog: Arc<Catalog>) -> anyhow::Result<Https> {
        let listen = config.http.listen;
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen} for HTTPS; free the port or pass --https-listen with another address")
        })?;
        let local = listener
            .local_addr()
            .context("cannot read the HTTPS listener's address")?;
        let settings = HttpSettings::from_config(config, local)?;
        let paths = CertPaths::from_config(config, catalog.dirs())?;
        let names = tls::subject_alt_names(
            config.http.public_url.as_deref().and_then(url_host),
            &config.tls.san,
            machine_hostname().as_deref(),
            local.ip(),
        )?;
        tls::ensure_certificate(&paths, &names)?;
        let certs = Arc::new(CertStore::open(paths)?);
        let tls = tokio_rustls::TlsAcceptor::from(tls::server_config(
            certs.clone(),
            config.tls.min_version,
        )?);
        let threads = connection_threads::ConnectionThreads::start()
            .context("cannot start the HTTPS connection threads")?;
        Ok(Https {
            listener,
            threads,
            state: Arc::new(HttpState {
                tree: catalog.tree().clone(),
                catalog,
                settings: std::sync::RwLock::new(Arc::new(settings)),
                certs,
                tls,
                json: json_cache::JsonCache::default(),
                published: published_state::PublishedState::default(),
            }),
        })
    }

    /// What requests share; a reload updates it while [`Https::run`] serves.
    pub fn state(&self) -> Arc<HttpState> {
        self.state.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// How to add this server as a remote and trust its certificate (`remote-info`'s text).
    pub fn remote_info(&self, ssh: Option<SshAccess<'_>>) -> String {
        let cert = self.state.certs.current();
        let settings = self.state.settings();
        remote::render(&RemoteInfoText {
            remote: &settings.remote_name,
            url: &settings.public_url,
            certificate_pem: &cert.pem,
            fingerprint: &cert.fingerprint,
            ssh,
        })
    }

    /// Serves until `shutdown`, then lets in-flight downloads finish (within the bound).
    pub async fn run(self, shutdown: CancellationToken) {
        let watcher = tokio::spawn(tls::watch(
            self.state.certs.clone(),
            self.state.settings().reload_interval,
            shutdown.clone(),
        ));
        server::run(self.listener, self.threads, self.state, shutdown).await;
        let _ = watcher.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_what_clients_cannot_use() {
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let mut config = Config::default();
        config.http.public_url = Some("http://images.example.com".into());
        let err = HttpSettings::from_config(&config, listen).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        config.http.public_url = None;
        config.http.remote_name = "a b".into();
        assert!(HttpSettings::from_config(&config, listen).is_err());
        config.http.remote_name = "lab".into();
        config.http.base_path = "lxd/".into();
        let settings = HttpSettings::from_config(&config, listen).unwrap();
        assert_eq!(settings.base_path, "/lxd");
        assert_eq!(settings.public_url, "https://127.0.0.1:8443/lxd");
    }
}

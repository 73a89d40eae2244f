//! `serve`: the one long-running command. HTTPS and SSH run side by side in one process on
//! one catalog, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Config, LogFormat};

/// Run the HTTPS server (and the SSH gateway) until SIGTERM or SIGINT
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTPS listener [default: 0.0.0.0:8443]
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<SocketAddr>,
    /// Address of the SSH listener [default: 0.0.0.0:2222]
    #[arg(long, value_name = "ADDR")]
    pub ssh_listen: Option<SocketAddr>,
    /// A TLS certificate chain (PEM) to use instead of the generated one
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// An extra DNS name or IP address for the generated certificate (repeatable)
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// URL path prefix when behind a reverse proxy, e.g. /lxd
    #[arg(long, value_name = "PATH")]
    pub base_path: Option<String>,
    /// The URL clients use, e.g. https://images.example.com:8443
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Log format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// Flags override the configuration file.
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.https_listen {
            config.http.listen = listen;
        }
        if let Some(listen) = self.ssh_listen {
            config.ssh.listen = listen;
        }
        if self.tls_cert.is_some() {
            config.tls.cert.clone_from(&self.tls_cert);
            config.tls.key.clone_from(&self.tls_key);
        }
        config.tls.san.extend(self.tls_san.iter().cloned());
        if let Some(base_path) = &self.base_path {
            config.http.base_path.clone_from(base_path);
        }
        if self.public_url.is_some() {
            config.http.public_url.clone_from(&self.public_url);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
    }
}

/// How often retired files are checked for the end of their grace period.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

pub fn run(config: Config, catalog: Catalog) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, Arc::new(catalog)))
}

async fn serve(config: Config, catalog: Arc<Catalog>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let sweeper = tokio::spawn(sweep_retired_files(catalog.clone(), shutdown.clone()));
    let config = Arc::new(config);

    // SSH gateway: host keys, audit log and caps are set up and the port bound before
    // `ready`, so a start-up problem (port taken, unreadable key) fails `serve` at once.
    let ssh_task = {
        let gateway = Arc::new(crate::ssh::Gateway::open(config.clone(), catalog.clone())?);
        crate::ssh::server::russh_config(&gateway)?;
        let listener = crate::ssh::server::bind(config.ssh.listen).await?;
        let address = listener
            .local_addr()
            .context("cannot read the SSH listener's address")?;
        announce(&format!("listening ssh {address}"));
        announce(&format!(
            "ssh host key {} (clients see this fingerprint on first connection)",
            gateway.host_key_fingerprint()
        ));
        crate::ssh::server::spawn(listener, gateway, shutdown.clone())?
    };

    // Each listener prints `listening <https|ssh> <address>` once bound; `ready` follows the
    // last one. Scripts and tests read these lines (with port 0, they carry the real port).
    announce("ready");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    if let Err(e) = ssh_task.await {
        tracing::warn!(error = %e, "the SSH gateway stopped with an error");
    }
    let _ = sweeper.await;
    Ok(())
}

/// Deletes files of removed images once their grace period is over.
async fn sweep_retired_files(catalog: Arc<Catalog>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let catalog = catalog.clone();
        match tokio::task::spawn_blocking(move || catalog.sweep()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(
                deleted,
                "deleted files of removed images after their grace period"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete files of removed images"),
            Err(e) => tracing::warn!(error = %e, "the sweeper task failed"),
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Prints one line of the startup protocol on stdout, flushed at once.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

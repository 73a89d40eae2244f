//! `serve`: the one long-running command. HTTPS and SSH run side by side in one process on
//! one catalog, until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;

/// How often retired files are checked for the end of their grace period.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

pub fn run(config: Config, catalog: Catalog) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, Arc::new(catalog)))
}

async fn serve(mut config: Config, catalog: Arc<Catalog>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let sweeper = tokio::spawn(sweep_retired_files(catalog.clone(), shutdown.clone()));

    // Each listener prints `listening <https|ssh> <address>` once bound; `ready` follows the
    // last one. Scripts and tests read these lines (with port 0, they carry the real port).

    // HTTPS: bind, show once how to add the remote, then serve until shutdown. The config
    // keeps the real address (port 0 becomes the bound port) so that `remote-info` run in
    // this process (over SSH) prints a URL that works.
    let https = crate::http::Https::bind(&config, catalog.clone()).await?;
    config.http.listen = https.local_addr();
    for line in https.remote_info().lines() {
        announce(line);
    }
    announce(&format!("listening https {}", https.local_addr()));
    let https_task = tokio::spawn(https.run(shutdown.clone()));

    announce("ready");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = https_task.await;
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

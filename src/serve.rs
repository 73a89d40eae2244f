//! `serve`: the one long-running command. HTTPS and SSH run side by side in one process on
//! one catalog, until SIGTERM or SIGINT; SIGHUP reloads keys, configuration and certificate
//! ([`reload`](crate::reload)).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::catalog::delta::DeltaJob;
use crate::catalog::make_delta::DeltaOutcome;
use crate::config::{Config, LiveConfig};
use crate::reload::{ReadConfig, Reloader};

/// How often retired files are checked for the end of their grace period.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Serves until SIGTERM or SIGINT. `read_config` reads the configuration again on SIGHUP.
/// `read_only`: a replica of a bucket, HTTPS only ([`serve_replica`]).
pub fn run(
    config: Config,
    catalog: Catalog,
    read_config: ReadConfig,
    read_only: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if read_only {
        runtime.block_on(serve_replica(config, Arc::new(catalog)))
    } else {
        runtime.block_on(serve(config, Arc::new(catalog), read_config))
    }
}

/// A read replica: HTTPS from the bucket and nothing else (no SSH gateway, no catalog
/// changes, no mirrors, no deltas). The tree polls the bucket for new publications by
/// itself. SIGHUP reloads the certificate only.
async fn serve_replica(config: Config, catalog: Arc<Catalog>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let https = crate::http::Https::bind(&config, catalog).await?;
    for line in https.remote_info(None).lines() {
        announce(line);
    }
    announce(&format!("listening https {}", https.local_addr()));
    let http = https.state();
    let https_task = tokio::spawn(https.run(shutdown.clone()));
    let mut signals = Signals::watch()?;
    announce("ready");
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.interrupt.recv() => break,
            _ = signals.hangup.recv() => {
                let certs = http.certs.clone();
                let reloaded = tokio::task::spawn_blocking(move || certs.reload_if_changed()).await;
                tracing::info!(?reloaded, "reloaded (SIGHUP) the certificate; a read-only replica reloads nothing else");
            }
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = https_task.await;
    Ok(())
}

async fn serve(
    mut config: Config,
    catalog: Arc<Catalog>,
    read_config: ReadConfig,
) -> anyhow::Result<()> {
    // The configuration as read, before bound ports replace port 0: what a reload compares with.
    let baseline = config.clone();
    let shutdown = CancellationToken::new();
    let sweeper = tokio::spawn(sweep_retired_files(catalog.clone(), shutdown.clone()));
    let delta_maker = {
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("deltas".into())
            .spawn(move || make_deltas(&catalog, &shutdown))
            .context("cannot start the delta maker")?
    };

    // Each listener prints `listening <https|ssh> <address>` once bound; `ready` follows the
    // last one. Scripts and tests read these lines (with port 0, they carry the real port).

    // HTTPS: bind, show once how to add the remote, then serve until shutdown. The config
    // keeps the real address (port 0 becomes the bound port) so that `remote-info` run in
    // this process (over SSH) prints a URL that works.
    let https = crate::http::Https::bind(&config, catalog.clone()).await?;
    config.http.listen = https.local_addr();
    let live = Arc::new(LiveConfig::new(config));

    // SSH gateway: host keys, audit log and caps are set up and the port bound before
    // `ready`, so a start-up problem (port taken, unreadable key) fails `serve` at once.
    let gateway = Arc::new(crate::ssh::Gateway::open(live.clone(), catalog.clone())?);
    crate::ssh::server::russh_config(&gateway)?;
    let ssh_listener = crate::ssh::server::bind(baseline.ssh.listen).await?;
    let ssh_address = ssh_listener
        .local_addr()
        .context("cannot read the SSH listener's address")?;

    let host_key = gateway.host_key_fingerprint();
    let ssh_access = crate::remote::SshAccess {
        port: ssh_address.port(),
        host_key: &host_key,
    };
    for line in https.remote_info(Some(ssh_access)).lines() {
        announce(line);
    }
    announce(&format!("listening https {}", https.local_addr()));
    announce(&format!("listening ssh {ssh_address}"));
    announce(&format!(
        "ssh host key {host_key} (clients see this fingerprint on first connection)"
    ));
    let mirrors_changed = Arc::new(tokio::sync::Notify::new());
    let mirrors = tokio::spawn(crate::mirror_schedule::run(
        catalog.clone(),
        live.clone(),
        Arc::new(run_configured_mirror),
        mirrors_changed.clone(),
        shutdown.clone(),
    ));
    let reloader = Reloader {
        read_config,
        baseline,
        live,
        catalog: catalog.clone(),
        http: https.state(),
        gateway: gateway.clone(),
        mirrors_changed,
    };
    let https_task = tokio::spawn(https.run(shutdown.clone()));
    let ssh_task = crate::ssh::server::spawn(ssh_listener, gateway, shutdown.clone())?;
    // Watched before `ready`: SIGHUP's default action would end the process.
    let signals = Signals::watch()?;
    announce("ready");

    reload_until_stopped(signals, reloader).await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = https_task.await;
    if let Err(e) = ssh_task.await {
        tracing::warn!(error = %e, "the SSH gateway stopped with an error");
    }
    let _ = sweeper.await;
    let _ = tokio::task::spawn_blocking(move || delta_maker.join()).await;
    let _ = mirrors.await;
    Ok(())
}

/// One scheduled run of a configured mirror, recorded and locked as `mirror sync --name` is.
fn run_configured_mirror(
    catalog: &Catalog,
    mirror: &crate::config::MirrorConfig,
) -> Result<crate::mirror::SyncReport, String> {
    let spec = mirror.spec().map_err(|problems| problems.join("; "))?;
    crate::mirror::run::run_recorded(
        catalog,
        &spec,
        Some(mirror.interval.0),
        &crate::mirror::NoProgress,
        crate::mirror::sync,
    )
    .map_err(|e| e.to_string())
}

/// Makes pending deltas ([`Catalog::make_pending_deltas`]), one at a time at a lower CPU
/// priority, at start (resuming what a crash or restart left), after every change this
/// process commits, and every minute (for imports by other processes), until shutdown. A
/// delta that failed is not tried again until the next start.
fn make_deltas(catalog: &Catalog, shutdown: &CancellationToken) {
    // This thread only: setpriority on a thread id.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "cannot lower the delta maker's priority");
    }
    let stop = || shutdown.is_cancelled();
    let mut failed: Vec<DeltaJob> = Vec::new();
    let mut seen = 0;
    while !stop() {
        let wanted = |job: &DeltaJob| !failed.contains(job);
        let mut newly_failed = Vec::new();
        let made = catalog.make_pending_deltas(&wanted, &stop, &mut |job, outcome| {
            log_delta(job, outcome);
            if outcome.is_err() {
                newly_failed.push(job.clone());
            }
        });
        if let Err(e) = made {
            tracing::warn!(error = %e, "cannot read the catalog to make deltas");
        }
        failed.extend(newly_failed);
        for _ in 0..DELTA_RECHECK_SECS {
            if stop() {
                return;
            }
            let now = catalog.wait_for_change(seen, Duration::from_secs(1));
            if now != seen {
                seen = now;
                break;
            }
        }
    }
}

/// Seconds between looks for deltas to make when this process changed nothing.
const DELTA_RECHECK_SECS: u32 = 60;

fn log_delta(job: &DeltaJob, outcome: &crate::catalog::Result<DeltaOutcome>) {
    let (product, serial, base) = (&job.product_id, &job.serial, &job.base_serial);
    match outcome {
        Ok(DeltaOutcome::Published(file)) => tracing::info!(
            product,
            serial,
            base,
            size = file.size,
            path = file.path,
            "published a delta"
        ),
        Ok(DeltaOutcome::AlreadyThere(_)) | Ok(DeltaOutcome::Stopped) => {}
        Ok(DeltaOutcome::Declined(reason)) => {
            tracing::info!(product, serial, base, reason, "no delta published")
        }
        Err(e) => tracing::warn!(product, serial, base, error = %e, "cannot make a delta"),
    }
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

/// The signals `serve` acts on: SIGTERM and SIGINT stop it, SIGHUP reloads.
struct Signals {
    term: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }
}

/// Reloads on each SIGHUP until SIGTERM or SIGINT.
async fn reload_until_stopped(mut signals: Signals, reloader: Reloader) -> anyhow::Result<()> {
    let reloader = Arc::new(std::sync::Mutex::new(reloader));
    loop {
        tokio::select! {
            _ = signals.term.recv() => return Ok(()),
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.hangup.recv() => {}
        }
        let reloader = reloader.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            reloader.lock().unwrap_or_else(|p| p.into_inner()).reload()
        })
        .await;
        match reloaded {
            Ok(outcome) if outcome.failed => {
                tracing::warn!("reloaded (SIGHUP) in part: {}", outcome.summary)
            }
            Ok(outcome) => tracing::info!("reloaded (SIGHUP): {}", outcome.summary),
            Err(e) => tracing::warn!(error = %e, "the reload task failed"),
        }
    }
}

/// Prints one line of the startup protocol on stdout, flushed at once.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

//! `serve`'s schedule of the configured mirrors: each enabled `[[mirror]]` runs every
//! `interval`, counted from the start of its last run as `state/mirrors.json` records it, so
//! that a restart neither repeats a fresh run nor forgets an old one. A mirror that never ran,
//! or whose last run was cut off, runs right after start.
//!
//! Each run has its own thread (a sync blocks for as long as its downloads take). One mirror
//! never runs twice at once: the schedule starts a mirror only when its last run here ended,
//! and the run takes the mirror's lock, so a `mirror sync --name` from the command line or
//! SSH at the same time is refused rather than doubled. The configuration is read at every
//! turn, so a reload (SIGHUP) that adds, changes or disables a mirror takes effect at once.
//! On shutdown nothing new starts and a run still going is left to the process's end: a sync
//! is crash-safe and its next run resumes the downloads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{LiveConfig, MirrorConfig};
use crate::mirror::SyncReport;
use crate::mirror::status::StatusBook;
use crate::{fsutil, metrics};

/// The longest the schedule sleeps between looks at the status file: a run from the command
/// line is seen within this time (a reload wakes it at once).
const LOOK_INTERVAL: Duration = Duration::from_secs(30);

/// The least time between the end of a mirror's run and the start of its next here, whatever
/// the status file says: a run that cannot even record itself must not be retried in a loop.
const MIN_GAP: Duration = Duration::from_secs(10);

/// Runs one configured mirror to its end, recorded (blocking). Given by `serve`, so that the
/// schedule does not depend on how a run is made.
pub type RunMirror =
    Arc<dyn Fn(&Catalog, &MirrorConfig) -> Result<SyncReport, String> + Send + Sync>;

/// Runs the enabled mirrors on their schedule until `shutdown`.
pub async fn run(
    catalog: Arc<Catalog>,
    live: Arc<LiveConfig>,
    run_mirror: RunMirror,
    mirrors_changed: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let book = StatusBook::new(catalog.dirs());
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<String>();
    // Mirrors with a run going on in this process, and when each mirror's last run here ended.
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut ended_at: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    loop {
        let config = live.current();
        let now = jiff::Timestamp::now().as_second();
        let recorded = match book.read() {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mirrors' status; no mirror runs until it can be read");
                BTreeMap::new()
            }
        };
        let mut next_look = LOOK_INTERVAL;
        for mirror in config.mirrors.iter().filter(|m| m.enabled) {
            metrics::register_mirror(&mirror.name);
            if running.contains(&mirror.name) {
                continue;
            }
            let due = recorded
                .get(&mirror.name)
                .map_or(now, |status| status.due_at(mirror.interval.0, now));
            let gap_left = ended_at
                .get(&mirror.name)
                .map_or(Duration::ZERO, |at| MIN_GAP.saturating_sub(at.elapsed()));
            let wait = Duration::from_secs(u64::try_from(due - now).unwrap_or(0)).max(gap_left);
            if !wait.is_zero() {
                next_look = next_look.min(wait);
                continue;
            }
            if book.is_running(&mirror.name) {
                // A run from the command line or SSH holds it; look again later.
                continue;
            }
            running.insert(mirror.name.clone());
            start(
                &catalog,
                mirror.clone(),
                run_mirror.clone(),
                ended_tx.clone(),
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            ended = ended_rx.recv() => {
                if let Some(name) = ended {
                    running.remove(&name);
                    ended_at.insert(name, std::time::Instant::now());
                }
            }
            () = mirrors_changed.notified() => {}
            () = tokio::time::sleep(next_look) => {}
        }
    }
    if !running.is_empty() {
        let names: Vec<&str> = running.iter().map(String::as_str).collect();
        tracing::info!(
            mirrors = names.join(", "),
            "stopping with mirror runs going on; their next runs resume the downloads"
        );
    }
}

/// Starts one run on its own thread; its name comes back on `ended` when it is over.
fn start(
    catalog: &Arc<Catalog>,
    mirror: MirrorConfig,
    run_mirror: RunMirror,
    ended: mpsc::UnboundedSender<String>,
) {
    let catalog = catalog.clone();
    let name = mirror.name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("mirror {}", mirror.name))
        .spawn(move || {
            let started = std::time::Instant::now();
            let outcome = run_mirror(&catalog, &mirror);
            log_run(&mirror.name, &outcome, started.elapsed());
            let _ = ended.send(mirror.name);
        });
    if let Err(e) = spawned {
        tracing::warn!(mirror = name, error = %e, "cannot start a thread for the mirror's run");
    }
}

/// One line per run: what it brought, or why it failed.
fn log_run(name: &str, outcome: &Result<SyncReport, String>, took: Duration) {
    let secs = format!("{:.1}", took.as_secs_f64());
    match outcome {
        Ok(report) if report.succeeded() => tracing::info!(
            mirror = name,
            new_versions = report.new_versions,
            bytes_downloaded = report.bytes_downloaded,
            files_reused = report.files_reused,
            removed_versions = report.removed_versions,
            secs,
            "mirror run ended"
        ),
        Ok(report) => tracing::warn!(
            mirror = name,
            new_versions = report.new_versions,
            bytes_downloaded = report.bytes_downloaded,
            removed_versions = report.removed_versions,
            refused_versions = report.refused.len(),
            first_refused = report.refused.first().map(|line| fsutil::one_line(line)),
            secs,
            "mirror run ended with refused versions; `mirror status` lists them"
        ),
        Err(e) => {
            tracing::warn!(mirror = name, error = %fsutil::one_line(e), secs, "mirror run failed")
        }
    }
}

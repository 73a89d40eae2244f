//! One recorded run of a mirror, whoever starts it (`serve`'s schedule, `mirror sync` on the
//! command line or over SSH): take the mirror's lock (a run already going on is refused by
//! name), record the start, sync, record the end and the next due time, count it for
//! `/metrics`.

use super::status::{StatusBook, StatusError};
use super::{MirrorSpec, Progress, SyncReport};
use crate::catalog::Catalog;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    /// Another run of the same mirror holds its lock.
    #[error(transparent)]
    Busy(StatusError),
    /// The status file could not be written: nothing was synced.
    #[error("cannot record the mirror's run: {0}")]
    Status(StatusError),
    /// The sync itself failed (recorded as failed).
    #[error(transparent)]
    Sync(E),
}

/// Runs `sync` for `spec` under the mirror's lock, recording it in the status file (a dry run
/// is not recorded). `interval_secs` is the schedule `serve` keeps for this mirror, if it runs
/// it: the next run is then due one interval after this one started.
pub fn run_recorded<E: std::error::Error + 'static>(
    catalog: &Catalog,
    spec: &MirrorSpec,
    interval_secs: Option<u64>,
    progress: &dyn Progress,
    sync: impl FnOnce(&Catalog, &MirrorSpec, &dyn Progress) -> Result<SyncReport, E>,
) -> Result<SyncReport, RunError<E>> {
    let book = StatusBook::new(catalog.dirs());
    let origin = spec.origin();
    let _lock = book.lock_run(origin).map_err(|e| match e {
        StatusError::Busy { .. } => RunError::Busy(e),
        other => RunError::Status(other),
    })?;
    if spec.dry_run {
        return sync(catalog, spec, progress).map_err(RunError::Sync);
    }
    let started = unix_now();
    book.record_start(origin, &spec.url, started)
        .map_err(|e| RunError::Status(e.into()))?;
    metrics::record_mirror_start(origin);
    let outcome = sync(catalog, spec, progress);
    let ended = unix_now();
    let next_run =
        interval_secs.map(|secs| started.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)));
    let recorded = outcome
        .as_ref()
        .map(Clone::clone)
        .map_err(|e| format!("{e:#}"));
    let run = match &recorded {
        Ok(report) => metrics::MirrorRun {
            failed: !report.succeeded(),
            bytes_downloaded: report.bytes_downloaded,
            versions_published: report.new_versions,
            versions_removed: report.removed_versions,
            versions_refused: report.refused.len() as u64,
            ended,
        },
        Err(_) => metrics::MirrorRun {
            failed: true,
            ended,
            ..metrics::MirrorRun::default()
        },
    };
    metrics::record_mirror_run(origin, run);
    if let Err(e) = book.record_end(origin, &recorded, ended, next_run) {
        // The run itself happened: say so, and report it as it went.
        tracing::warn!(mirror = origin, error = %e, "cannot record the end of the mirror's run");
    }
    outcome.map_err(RunError::Sync)
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

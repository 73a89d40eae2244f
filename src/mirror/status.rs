//! What each mirror did last, in `state/mirrors.json`, and the lock that keeps two runs of one
//! mirror apart (`state/mirror-locks/<name>.lock`).
//!
//! Runs of a mirror come from `serve`'s schedule, from `mirror sync --name` on the command
//! line and over SSH: several processes. The lock is an OS file lock (released when its holder
//! ends, even by SIGKILL), so it never goes stale; whether a mirror is running is read from the
//! lock, never from the file. The file is rewritten whole (temp, fsync, rename) under its own
//! short lock, so two processes finishing at once both land.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SyncReport;
use crate::data_dir::DataDir;
use crate::fsutil;

/// Layout version of `state/mirrors.json`.
const FORMAT: u32 = 1;

/// Refused-version lines kept per mirror: the run's report has them all.
const REFUSED_KEPT: usize = 20;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every version planned was published or already held.
    Ok,
    /// The run went through but refused some versions (a hash or size mismatch).
    Refused,
    /// The run stopped: upstream unreachable or broken, a local error.
    Failed,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Refused => "refused",
            RunResult::Failed => "failed",
        }
    }
}

/// One mirror's last run, as `mirror status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub url: String,
    /// Unix seconds the last run started.
    pub last_start: Option<i64>,
    /// Unix seconds the last run ended; before `last_start` (or absent) while one runs, or
    /// when the last one was interrupted.
    pub last_end: Option<i64>,
    pub result: Option<RunResult>,
    /// Why the last run failed, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_downloaded: u64,
    pub files_reused: u64,
    pub new_versions: u64,
    pub removed_versions: u64,
    pub refused_versions: u64,
    /// The first refused versions of the last run, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Unix seconds of the next scheduled run, when `serve` runs this mirror.
    pub next_run: Option<i64>,
    /// Notes of the last run that finished (VM images that carry one client's agent).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Unix seconds of the last run that ended without refusing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
}

impl MirrorStatus {
    /// True when the last run started has not recorded its end: it runs now, or it was
    /// interrupted (the lock tells which).
    pub fn unfinished(&self) -> bool {
        match (self.last_start, self.last_end) {
            (Some(start), Some(end)) => end < start,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// When a mirror run every `interval_secs` is due: at once if it never ran or its last
    /// run did not finish, else one interval after the last start.
    pub fn due_at(&self, interval_secs: u64, now: i64) -> i64 {
        match self.last_start {
            Some(start) if !self.unfinished() => {
                start.saturating_add(i64::try_from(interval_secs).unwrap_or(i64::MAX))
            }
            _ => now,
        }
    }

    fn started(&mut self, url: &str, now: i64) {
        self.url = url.to_string();
        self.last_start = Some(now);
    }

    fn finished(&mut self, outcome: &Result<SyncReport, String>, now: i64, next_run: Option<i64>) {
        self.last_end = Some(now);
        self.next_run = next_run;
        match outcome {
            Ok(report) => {
                self.result = Some(if report.succeeded() {
                    RunResult::Ok
                } else {
                    RunResult::Refused
                });
                self.error = None;
                self.bytes_downloaded = report.bytes_downloaded;
                self.files_reused = report.files_reused;
                self.new_versions = report.new_versions;
                self.removed_versions = report.removed_versions;
                self.refused_versions = report.refused.len() as u64;
                self.refused = report.refused.iter().take(REFUSED_KEPT).cloned().collect();
                self.notes = report.notes.clone();
                if report.succeeded() {
                    self.last_success = Some(now);
                }
            }
            Err(message) => {
                self.result = Some(RunResult::Failed);
                self.error = Some(fsutil::one_line(message));
                self.bytes_downloaded = 0;
                self.files_reused = 0;
                self.new_versions = 0;
                self.removed_versions = 0;
                self.refused_versions = 0;
                self.refused.clear();
                // The notes of the last finished run still describe what is published.
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StatusFile {
    format: u32,
    /// Mirror name (or upstream URL for a one-off run) → its status.
    mirrors: BTreeMap<String, MirrorStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "mirror {origin} is already running (started {since}); wait for it to finish, `mirror status` shows it"
    )]
    Busy { origin: String, since: String },
    #[error("{}", fsutil::plain_message(.0))]
    Io(#[from] io::Error),
}

/// The mirrors' status file and locks of one data directory.
#[derive(Debug, Clone)]
pub struct StatusBook {
    state: PathBuf,
    tmp: PathBuf,
}

impl StatusBook {
    pub fn new(dirs: &DataDir) -> StatusBook {
        StatusBook {
            state: dirs.state(),
            tmp: dirs.tmp(),
        }
    }

    fn path(&self) -> PathBuf {
        self.state.join("mirrors.json")
    }

    /// Every recorded mirror's status; none when no mirror ever ran.
    pub fn read(&self) -> io::Result<BTreeMap<String, MirrorStatus>> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StatusFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is unreadable ({e}); delete it, the next runs write it again",
                            path.display()
                        ),
                    )
                })?;
                Ok(file.mirrors)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(fsutil::with_path(e, "cannot read", &path)),
        }
    }

    /// Changes one mirror's status under the file's lock.
    fn update(&self, origin: &str, change: impl FnOnce(&mut MirrorStatus)) -> io::Result<()> {
        let _lock = lock_file(&self.state.join("mirrors.lock"), true)?;
        let mut mirrors = self.read()?;
        change(mirrors.entry(origin.to_string()).or_default());
        let file = StatusFile {
            format: FORMAT,
            mirrors,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.tmp, &self.path(), &bytes)
    }

    /// Takes the mirror's run lock, or says who holds it.
    pub fn lock_run(&self, origin: &str) -> Result<RunLock, StatusError> {
        match lock_file(&self.lock_path(origin), false) {
            Ok(file) => Ok(RunLock { _file: file }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = self
                    .read()
                    .ok()
                    .and_then(|mirrors| mirrors.get(origin).and_then(|s| s.last_start))
                    .map_or_else(|| "just now".to_string(), crate::format::rfc3339);
                Err(StatusError::Busy {
                    origin: origin.to_string(),
                    since,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// True when a run of the mirror holds its lock now (in any process).
    pub fn is_running(&self, origin: &str) -> bool {
        let path = self.lock_path(origin);
        if !path.exists() {
            return false;
        }
        matches!(lock_file(&path, false), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn lock_path(&self, origin: &str) -> PathBuf {
        self.state
            .join("mirror-locks")
            .join(format!("{}.lock", lock_name(origin)))
    }

    /// Records the start of a run (the caller holds its lock).
    pub fn record_start(&self, origin: &str, url: &str, now: i64) -> io::Result<()> {
        self.update(origin, |status| status.started(url, now))
    }

    /// Records how a run ended and when the next is due.
    pub fn record_end(
        &self,
        origin: &str,
        outcome: &Result<SyncReport, String>,
        now: i64,
        next_run: Option<i64>,
    ) -> io::Result<()> {
        self.update(origin, |status| status.finished(outcome, now, next_run))
    }

    /// Sets when the next scheduled run is due (`serve`, when a schedule changes).
    pub fn record_next_run(&self, origin: &str, next_run: Option<i64>) -> io::Result<()> {
        self.update(origin, |status| status.next_run = next_run)
    }
}

/// A mirror's run lock, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The lock file's name for an origin: a configured mirror's name as it is (names are checked
/// to be file-name safe), a one-off run's URL by its hash.
fn lock_name(origin: &str) -> String {
    let safe = !origin.is_empty()
        && origin.len() <= 64
        && origin.starts_with(|c: char| c.is_ascii_alphanumeric())
        && origin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if safe {
        origin.to_string()
    } else {
        use sha2::Digest;
        format!(
            "url-{}",
            &hex::encode(sha2::Sha256::digest(origin.as_bytes()))[..16]
        )
    }
}

/// Opens (creating) and locks `path`; `wait` blocks for the lock, else WouldBlock when held.
fn lock_file(path: &std::path::Path, wait: bool) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fsutil::with_path(e, "cannot create", parent))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| fsutil::with_path(e, "cannot open the lock file", path))?;
    if wait {
        file.lock()
            .map_err(|e| fsutil::with_path(e, "cannot lock", path))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(e)) => return Err(fsutil::with_path(e, "cannot lock", path)),
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path());
        dirs.create_layout().unwrap();
        let book = StatusBook::new(&dirs);
        let held = book.lock_run("lxc").unwrap();
        assert!(book.is_running("lxc"));
        assert!(matches!(
            book.lock_run("lxc"),
            Err(StatusError::Busy { .. })
        ));
        // Another mirror runs on its own.
        let other = book.lock_run("https://a.example/x").unwrap();
        drop(held);
        assert!(!book.is_running("lxc"));
        assert!(book.lock_run("lxc").is_ok());
        drop(other);
    }

    #[test]
    fn status_records_a_run_and_when_the_next_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path());
        dirs.create_layout().unwrap();
        let book = StatusBook::new(&dirs);
        assert!(book.read().unwrap().is_empty());
        book.record_start("lxc", "https://a.example", 100).unwrap();
        let status = &book.read().unwrap()["lxc"];
        assert!(status.unfinished());
        assert_eq!(
            status.due_at(60, 500),
            500,
            "an interrupted run is due at once"
        );
        let report = SyncReport {
            new_versions: 2,
            bytes_downloaded: 10,
            refused: vec!["a b c".into()],
            notes: vec!["note".into()],
            ..SyncReport::default()
        };
        book.record_end("lxc", &Ok(report), 110, Some(160)).unwrap();
        let status = &book.read().unwrap()["lxc"];
        assert!(!status.unfinished());
        assert_eq!(status.result, Some(RunResult::Refused));
        assert_eq!((status.new_versions, status.refused_versions), (2, 1));
        assert_eq!(status.next_run, Some(160));
        assert_eq!(status.due_at(60, 500), 160);
        assert_eq!(status.last_success, None);
        book.record_start("lxc", "https://a.example", 200).unwrap();
        book.record_end("lxc", &Err("upstream\nunreachable".into()), 201, None)
            .unwrap();
        let status = &book.read().unwrap()["lxc"];
        assert_eq!(status.result, Some(RunResult::Failed));
        assert_eq!(status.error.as_deref(), Some("upstream unreachable"));
        assert_eq!(status.notes, ["note"], "a failed run keeps the notes");
    }
}

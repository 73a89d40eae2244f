//! What one upload area holds, kept incrementally: bytes of finished files, bytes of uploads
//! in progress, and entries (files and directories). Built by one scan of the area, on a
//! blocking thread, when the area is first used; every change made through
//! [`UserArea`](super::UserArea) updates it, so no upload rescans the area.
//!
//! Changes made behind the server's back (a local `uploads --remove` in another process, an
//! admin deleting files) make the account overestimate, never underestimate; it is scanned
//! again when a session starts and it is older than [`RESCAN_AFTER`] with no upload running.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::jail::UPLOAD_TEMP_PREFIX;

/// Age after which a session's start scans the area again (when no upload is running).
pub const RESCAN_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of finished files.
    pub finished: u64,
    /// Bytes counted for uploads in progress (their temp files).
    pub in_flight: u64,
    /// Files and directories (temp files excluded).
    pub entries: u64,
}

impl Usage {
    pub fn bytes(&self) -> u64 {
        self.finished.saturating_add(self.in_flight)
    }
}

pub struct Account {
    usage: Mutex<(Usage, Instant)>,
}

impl Account {
    pub fn new(usage: Usage) -> Account {
        Account {
            usage: Mutex::new((usage, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Usage, Instant)> {
        match self.usage.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn usage(&self) -> Usage {
        self.lock().0
    }

    /// Applies `change` to the usage when `allowed` accepts the result; returns the refused
    /// usage otherwise.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Usage),
        allowed: impl FnOnce(&Usage) -> bool,
    ) -> Result<(), Usage> {
        let mut guard = self.lock();
        let mut next = guard.0;
        change(&mut next);
        if !allowed(&next) {
            return Err(next);
        }
        guard.0 = next;
        Ok(())
    }

    /// Applies `change` unconditionally (releases).
    pub fn apply(&self, change: impl FnOnce(&mut Usage)) {
        change(&mut self.lock().0);
    }

    /// True when a scan now would be worth it: old, and nothing in flight to lose track of.
    pub fn wants_rescan(&self) -> bool {
        let guard = self.lock();
        guard.0.in_flight == 0 && guard.1.elapsed() > RESCAN_AFTER
    }

    /// Takes a fresh scan's figures for the finished files (in-flight bytes stay).
    pub fn rescanned(&self, scanned: Usage) {
        let mut guard = self.lock();
        guard.0.finished = scanned.finished;
        guard.0.entries = scanned.entries;
        guard.1 = Instant::now();
    }
}

/// Bytes and entries of finished uploads in an area (temp files and their directory excluded).
pub fn scan(root: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    walk(root, |_, meta| {
        usage.entries += 1;
        if meta.is_file() {
            usage.finished += meta.len();
        }
    })?;
    Ok(usage)
}

/// Visits every entry under `root` (symlinks not followed; temp files skipped), directories
/// before what they hold. A directory that cannot be read is skipped and the walk goes on;
/// the first such error (other than one gone meanwhile) is returned at the end.
pub fn walk(root: &Path, mut visit: impl FnMut(&Path, &fs::Metadata)) -> io::Result<()> {
    let mut first_error = None;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    first_error.get_or_insert(e);
                }
                continue;
            }
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_TEMP_PREFIX)
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            visit(&path, &meta);
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

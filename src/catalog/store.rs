//! The published tree (`www/`) behind a small interface. The local filesystem is the embedded
//! default; an S3-compatible backend (many stateless HTTP front ends serving one bucket, the
//! JSON published with conditional writes) would implement the same four operations: a staged
//! file becomes an object upload and `publish_file` a conditional copy into place.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;

pub trait Store: Send + Sync {
    /// Makes the fully written and synced local file `staged` visible at `path` (relative to
    /// the tree's root) in one atomic step.
    fn publish_file(&self, staged: &Path, path: &str) -> io::Result<()>;
    /// Deletes `path`; a file that is already gone is not an error.
    fn delete(&self, path: &str) -> io::Result<()>;
    /// Opens `path` for reading.
    fn open(&self, path: &str) -> io::Result<File>;
    /// Every file under `prefix`, as paths relative to the root.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
}

/// `www/` on the local filesystem; staged files come from `tmp/` on the same filesystem.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    pub fn full_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

impl Store for LocalStore {
    fn publish_file(&self, staged: &Path, path: &str) -> io::Result<()> {
        fsutil::rename_durably(staged, &self.full_path(path))
    }

    fn delete(&self, path: &str) -> io::Result<()> {
        let full = self.full_path(path);
        match fs::remove_file(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fsutil::with_path(e, "cannot delete", &full)),
        }
        if let Some(parent) = full.parent() {
            fsutil::remove_empty_dirs(parent, &self.root.join("images"));
        }
        Ok(())
    }

    fn open(&self, path: &str) -> io::Result<File> {
        let full = self.full_path(path);
        File::open(&full).map_err(|e| fsutil::with_path(e, "cannot open", &full))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        let start = self.full_path(prefix);
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fsutil::with_path(e, "cannot list", &dir)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| fsutil::with_path(e, "cannot list", &dir))?;
                let path = entry.path();
                let file_type = entry
                    .file_type()
                    .map_err(|e| fsutil::with_path(e, "cannot stat", &path))?;
                if file_type.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&self.root) {
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

//! The image store: import, remove, aliases, retention, verify, and publishing the stream.
//!
//! # How a change is made
//! Every change runs as a [`Transaction`]:
//! 1. Heavy work (reading, hashing and copying image files) happens *before* the transaction,
//!    into staged files under `tmp/`, so a 1 GiB import does not block other writers.
//! 2. `begin` takes the lock `state/lock` (one writer at a time across processes, so the CLI is
//!    safe while a server runs), finishes any crashed transaction (see below) and loads the
//!    record `state/catalog.json`.
//! 3. The change is checked against the record (duplicate fingerprint, conflicting serial,
//!    alias collisions) and staged files are renamed into `www/images/…`. Each placed path is
//!    first written to the journal `state/journal.json`.
//! 4. `commit` writes the journal (if nothing was placed), the record, then `images.json`, then
//!    `index.json` (each a temp file, fsync, rename, directory fsync), then deletes the journal.
//!
//! The record is the commit point. A crash before it leaves placed files that no record names:
//! the next `begin` finds the journal, deletes them and republishes the stream from the record.
//! A crash after it leaves a stale stream: the same recovery republishes it. Opening the
//! catalog runs that recovery when a journal is found, so every command starts from a whole
//! tree. Readers (the HTTP side, `list`) never lock: every file they read is replaced by
//! rename, whole. A transaction that fails after its commit point leaves its journal for the
//! next `begin` too, rather than guessing what to undo.
//!
//! Regenerating the stream never re-reads an image file: sizes and hashes live in the record.
//! Removed images leave the index at once, but their files stay downloadable for a grace
//! period (daemons cache an index for an hour). A transaction that finds a file's grace period
//! over deletes it only after its commit point, once the stream no longer names it (with a
//! grace period of 0 that is the removing transaction itself); the journal lists the file
//! first, so a crash in between cannot leave it behind.

pub mod alias;
pub mod delta;
pub mod hashing;
pub mod import;
pub mod make_delta;
pub mod mirrored;
pub mod ownership;
pub mod record;
pub mod remove;
mod staging;
pub mod stream_files;
pub mod summary;
pub mod tree;
pub mod verify;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data_dir::DataDir;
use crate::fsutil;
use crate::image::{ImageError, ScanLimits};
use crate::storage::PublishedTree;
use crate::storage::local::LocalTree;
use crate::streams;
use record::{CatalogState, LocatedImage, STATE_FORMAT};

pub use import::{ImportOutcome, ImportRequest, ImportSource, KnownDigest, Transfer};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The input is not a usable image; the message starts with the file's name.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The request contradicts what is published: a serial, fingerprint or alias conflict.
    #[error("{0}")]
    Conflict(String),
    /// Nothing matches the fingerprint, alias or product that was given.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed: a bad alias, serial or option value.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed; the message names the file.
    #[error("{}", describe_io(.0))]
    Io(#[from] io::Error),
    #[error("the catalog record {path} is unreadable ({message}); restore it from a backup")]
    CorruptState { path: String, message: String },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Tunables of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Seconds a removed image's files stay downloadable.
    pub grace_period_secs: i64,
    pub scan_limits: ScanLimits,
    /// Largest accepted split metadata tarball.
    pub max_metadata_bytes: u64,
    /// Make deltas for new squashfs roots ([`delta`]).
    pub deltas: bool,
    /// Deltas larger than this share of their root are not published.
    pub delta_max_ratio: f64,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            grace_period_secs: 3600,
            scan_limits: ScanLimits::default(),
            max_metadata_bytes: 64 << 20,
            deltas: true,
            delta_max_ratio: 0.5,
        }
    }
}

pub struct Catalog {
    dirs: DataDir,
    tree: Arc<dyn PublishedTree>,
    /// Replaced by a reload (SIGHUP); each operation reads the value in force.
    settings: std::sync::RwLock<CatalogSettings>,
    /// Counts the changes this process committed, for those waiting on one (the delta maker).
    changes: (std::sync::Mutex<u64>, std::sync::Condvar),
}

impl Catalog {
    /// Opens the catalog in `dirs`, creating its folders, and publishes an empty stream when
    /// there is none yet (so a new server answers clients at once).
    pub fn open(dirs: DataDir, settings: CatalogSettings) -> Result<Catalog> {
        dirs.create_layout()?;
        let tree = Arc::new(LocalTree::new(
            &dirs.www(),
            dirs.state().join("catalog.json"),
        )?);
        Self::open_with_tree(dirs, settings, tree)
    }

    /// A catalog that only reads `tree` (a read-only replica): nothing is recovered or
    /// published at opening, and nothing may be changed through it.
    pub fn open_read_only(
        dirs: DataDir,
        settings: CatalogSettings,
        tree: Arc<dyn PublishedTree>,
    ) -> Result<Catalog> {
        dirs.create_layout()?;
        Ok(Catalog {
            dirs,
            tree,
            settings: std::sync::RwLock::new(settings),
            changes: Default::default(),
        })
    }

    /// [`Catalog::open`] publishing through `tree` (an object store's, or a test's).
    pub fn open_with_tree(
        dirs: DataDir,
        settings: CatalogSettings,
        tree: Arc<dyn PublishedTree>,
    ) -> Result<Catalog> {
        dirs.create_layout()?;
        let catalog = Catalog {
            dirs,
            tree,
            settings: std::sync::RwLock::new(settings),
            changes: Default::default(),
        };
        // A journal left by a crashed writer is finished now, so that even read-only commands
        // (verify, list) see a consistent tree.
        if catalog.tree.read_record()?.is_none()
            || catalog.tree.stat(streams::INDEX_PATH)?.is_none()
            || catalog.journal_path().exists()
        {
            let mut txn = catalog.begin()?;
            txn.force_publish = true;
            txn.commit()?;
        }
        Ok(catalog)
    }

    pub fn dirs(&self) -> &DataDir {
        &self.dirs
    }

    pub fn settings(&self) -> CatalogSettings {
        match self.settings.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// New tunables (a reload); operations already running keep the ones they read.
    pub fn set_settings(&self, settings: CatalogSettings) {
        let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
        *current = settings;
    }

    /// Waits until this process commits a change after the `seen`th (or `timeout` passes);
    /// returns how many it has committed. Changes by other processes are not counted.
    pub fn wait_for_change(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let (count, signal) = &self.changes;
        let count = count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, _) = signal
            .wait_timeout_while(count, timeout, |count| *count == seen)
            .unwrap_or_else(|p| p.into_inner());
        *count
    }

    /// Wakes whoever waits for a change ([`Catalog::wait_for_change`]).
    fn changed(&self) {
        let (count, signal) = &self.changes;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        signal.notify_all();
    }

    /// The published tree and the record, which readers (the HTTP side) share.
    pub fn tree(&self) -> &Arc<dyn PublishedTree> {
        &self.tree
    }

    fn journal_path(&self) -> PathBuf {
        self.dirs.state().join("journal.json")
    }

    /// The committed record. Never locks: the file is only ever replaced whole.
    pub fn load(&self) -> Result<CatalogState> {
        let Some(bytes) = self.tree.read_record()? else {
            return Ok(CatalogState::default());
        };
        let path = self.dirs.state().join("catalog.json");
        let state: CatalogState =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::CorruptState {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        if state.format != STATE_FORMAT {
            return Err(CatalogError::CorruptState {
                path: path.display().to_string(),
                message: format!(
                    "format {} is not {STATE_FORMAT}; this binary is older than the data",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// Regenerates `images.json` and `index.json` from the record.
    pub fn rebuild(&self) -> Result<()> {
        let mut txn = self.begin()?;
        txn.force_publish = true;
        txn.commit()
    }

    /// Deletes retired files whose grace period is over. Returns how many were deleted.
    pub fn sweep(&self) -> Result<usize> {
        let now = unix_now();
        if !self
            .load()?
            .retired
            .iter()
            .any(|retired| retired.delete_after <= now)
        {
            return Ok(0);
        }
        let txn = self.begin()?;
        let before = txn.state.retired.len();
        let after = txn.commit_returning_retired()?;
        Ok(before.saturating_sub(after))
    }

    /// Takes the writer lock, recovers from a crashed transaction and loads the record.
    pub(crate) fn begin(&self) -> Result<Transaction<'_>> {
        let lock_path = self.dirs.state().join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fsutil::with_path(e, "cannot open the lock file", &lock_path))?;
        lock.lock()
            .map_err(|e| fsutil::with_path(e, "cannot lock", &lock_path))?;
        fsutil::remove_orphaned_temp_files(&self.dirs.tmp())?;
        let state = self.load()?;
        let mut txn = Transaction {
            catalog: self,
            _lock: lock,
            original: state.clone(),
            state,
            placed: Vec::new(),
            deleting: Vec::new(),
            force_publish: false,
            wrote_journal: false,
            past_commit_point: false,
            now: unix_now(),
        };
        txn.recover()?;
        Ok(txn)
    }
}

/// What a crashed transaction may have left behind. Recovery deletes every path listed here
/// that the committed record does not name.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// Paths under `www/` this transaction placed; those the record does not name are undone.
    placed: Vec<String>,
    /// Paths under `www/` whose grace period is over, deleted after the commit point.
    #[serde(default)]
    deleting: Vec<String>,
}

/// Both stream files written to temp files, and the products they list.
struct PreparedStream {
    images: fsutil::TempFile,
    index: fsutil::TempFile,
    products: BTreeSet<String>,
}

/// One change to the catalog, holding the writer lock. Dropped without `commit`, it deletes
/// the files it placed.
pub(crate) struct Transaction<'a> {
    catalog: &'a Catalog,
    _lock: File,
    original: CatalogState,
    pub state: CatalogState,
    placed: Vec<String>,
    /// Expired files to delete once the record no longer names them.
    deleting: Vec<String>,
    force_publish: bool,
    /// This transaction wrote the journal: undone on drop, it removes it again.
    wrote_journal: bool,
    /// The record may be committed: whatever happens next, the journal stays for the next
    /// `begin` to finish (dropping the transaction undoes nothing).
    past_commit_point: bool,
    pub now: i64,
}

impl Transaction<'_> {
    fn recover(&mut self) -> Result<()> {
        let journal_path = self.catalog.journal_path();
        let journal: Journal = match fs::read(&journal_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fsutil::with_path(e, "cannot read", &journal_path).into()),
        };
        for path in &journal.placed {
            if !self.state.path_in_use(path) {
                tracing::warn!(path, "removing a file placed by an interrupted change");
                self.catalog.tree.delete(path)?;
            }
        }
        for path in &journal.deleting {
            if !self.state.path_in_use(path) {
                self.catalog.tree.delete(path)?;
            }
        }
        self.publish_stream()?;
        remove_if_exists(&journal_path)?;
        Ok(())
    }

    /// Places the staged file `staged` (in `tmp/`) at `path` under `www/`, recording it in the
    /// journal first.
    pub fn place(&mut self, staged: &std::path::Path, path: &str) -> Result<()> {
        self.placed.push(path.to_string());
        self.write_journal()?;
        self.catalog.tree.place(staged, path)?;
        Ok(())
    }

    fn write_journal(&mut self) -> Result<()> {
        // Set first: a failed write may still have replaced an earlier journal of ours.
        self.wrote_journal = true;
        let journal = Journal {
            placed: self.placed.clone(),
            deleting: self.deleting.clone(),
        };
        let bytes = serde_json::to_vec(&journal).map_err(io::Error::other)?;
        fsutil::write_atomic(
            &self.catalog.dirs.tmp(),
            &self.catalog.journal_path(),
            &bytes,
        )?;
        Ok(())
    }

    /// Writes the record and the stream (when anything changed) and ends the transaction.
    pub fn commit(self) -> Result<()> {
        self.commit_returning_retired().map(|_| ())
    }

    fn commit_returning_retired(mut self) -> Result<usize> {
        // A delta leaves with its base, whatever took the base out.
        for file in delta::drop_deltas_without_base(&mut self.state) {
            self.retire(&file);
        }
        self.take_expired();
        let changed = self.state != self.original;
        if changed || self.force_publish {
            // A new catalog's first stream is dated too, not 1970.
            if changed || self.state.updated == 0 {
                self.state.updated = self.now.max(self.original.updated);
            }
            if self.placed.is_empty() || !self.deleting.is_empty() {
                // A crash between the record and the stream, or before the expired files are
                // deleted, must leave a journal behind.
                self.write_journal()?;
            }
            // Everything that needs disk space is written before the commit point (the record's
            // rename); after it come only renames and deletions. A full disk stops a change
            // before it shows.
            let record = serde_json::to_vec(&self.state).map_err(io::Error::other)?;
            let record =
                fsutil::TempFile::write(&self.catalog.dirs.tmp(), "the catalog record", &record)?;
            let stream = self.prepare_stream()?;
            self.past_commit_point = true;
            self.catalog.tree.commit_record(record.path())?;
            self.publish_prepared(stream)?;
            for path in &self.deleting {
                self.catalog.tree.delete(path)?;
            }
            if changed {
                self.catalog.changed();
            }
        }
        remove_if_exists(&self.catalog.journal_path())?;
        self.placed.clear();
        Ok(self.state.retired.len())
    }

    /// Regenerates and publishes both stream files.
    fn publish_stream(&self) -> Result<()> {
        let prepared = self.prepare_stream()?;
        self.publish_prepared(prepared)
    }

    /// Writes both stream files to temp files, ready to be renamed into place.
    fn prepare_stream(&self) -> Result<PreparedStream> {
        let stream = stream_files::generate(&self.state);
        let tmp = self.catalog.dirs.tmp();
        Ok(PreparedStream {
            images: fsutil::TempFile::write(&tmp, "images.json", &stream.images_json)?,
            index: fsutil::TempFile::write(&tmp, "index.json", &stream.index_json)?,
            products: stream_files::product_ids(&self.state),
        })
    }

    /// Renames both stream files into place, in the order that keeps index.json from ever
    /// naming a product images.json lacks (a crash between the two renames included): when
    /// products are added, images.json goes first; when some leave, index.json does. A
    /// change never does both: every transaction starts from a published stream.
    fn publish_prepared(&self, stream: PreparedStream) -> Result<()> {
        let tree = &self.catalog.tree;
        let images = (stream.images.path(), streams::IMAGES_PATH);
        let index = (stream.index.path(), streams::INDEX_PATH);
        let order = if self.published_products().is_subset(&stream.products) {
            [images, index]
        } else {
            [index, images]
        };
        for (staged, path) in order {
            tree.replace(staged, path)?;
        }
        Ok(())
    }

    /// The products the published index.json lists (none when there is none to read).
    fn published_products(&self) -> BTreeSet<String> {
        self.catalog
            .tree
            .read_to_vec(streams::INDEX_PATH, u64::MAX)
            .ok()
            .flatten()
            .and_then(|bytes| streams::index_products(&bytes))
            .unwrap_or_default()
    }

    /// Takes retired files whose grace period is over off the list; they are deleted after
    /// the commit point, when the stream no longer names them.
    fn take_expired(&mut self) {
        let now = self.now;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.retired)
            .into_iter()
            .partition(|r| r.delete_after <= now);
        self.state.retired = kept;
        for retired in expired {
            if self.state.live_path(&retired.path).is_none() {
                self.deleting.push(retired.path);
            }
        }
    }

    /// Moves a file that no live item uses any more to the retired list.
    pub fn retire(&mut self, file: &record::StoredFile) {
        let path = file.path.as_str();
        if self.state.live_path(path).is_none()
            && !self.state.retired.iter().any(|r| r.path == path)
        {
            let delete_after = self.now + self.catalog.settings().grace_period_secs;
            self.state.retired.push(record::RetiredFile {
                path: path.to_string(),
                sha256: file.sha256.clone(),
                delete_after,
            });
        }
    }

    pub fn catalog(&self) -> &Catalog {
        self.catalog
    }
}

impl Drop for Transaction<'_> {
    /// A transaction that failed before its commit point undoes what it placed. Past that
    /// point, or when the journal is not its own (a recovery that failed), the journal stays
    /// for the next `begin`.
    fn drop(&mut self) {
        if self.past_commit_point || !self.wrote_journal {
            return;
        }
        let mut undone = true;
        for path in self.placed.drain(..) {
            if let Err(e) = self.catalog.tree.delete(&path) {
                tracing::warn!(path, error = %e, "cannot undo a placed file");
                undone = false;
            }
        }
        if undone {
            let _ = fs::remove_file(self.catalog.journal_path());
        }
    }
}

fn remove_if_exists(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(fsutil::with_path(e, "cannot remove", path))
        }
        _ => Ok(()),
    }
}

/// An I/O failure as a sentence; a full disk says so first, with what to do.
fn describe_io(e: &io::Error) -> String {
    let message = fsutil::plain_message(e);
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        let detail = message
            .trim_end_matches(": No space left on device")
            .trim_end_matches(": Disk quota exceeded");
        format!(
            "the disk holding the data directory is full ({detail}); nothing changed: free some space and try again"
        )
    } else {
        message
    }
}

pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Finds the one live image whose fingerprint starts with `prefix`.
pub fn find_by_fingerprint<'a>(state: &'a CatalogState, prefix: &str) -> Result<LocatedImage<'a>> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CatalogError::Invalid(format!(
            "{prefix:?} is not a fingerprint; give the first hex digits of one (`list` shows them)"
        )));
    }
    let matches: Vec<LocatedImage<'_>> = state
        .images()
        .filter(|located| located.image.fingerprint.starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(CatalogError::NotFound(format!(
            "no image has a fingerprint starting with {prefix}; `list` shows the fingerprints"
        ))),
        many => Err(CatalogError::Invalid(format!(
            "{prefix} matches {} images ({}); give more digits",
            many.len(),
            many.iter()
                .map(|m| short(m.image.fingerprint))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The first 12 hex digits of a fingerprint, as `lxc image list` shows them.
pub fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::catalog::hashing::Silent;
    use crate::storage::{ObjectMeta, Opened};

    /// Publishes to the local tree, but refuses the second stream file of a publication once
    /// armed: what is on disk then is what a crash between the two renames leaves.
    struct CrashBetweenStreamFiles {
        inner: LocalTree,
        /// Armed: stream files published since.
        armed: Arc<Mutex<Option<usize>>>,
    }

    impl PublishedTree for CrashBetweenStreamFiles {
        fn place(&self, staged: &Path, key: &str) -> io::Result<()> {
            self.inner.place(staged, key)
        }
        fn replace(&self, staged: &Path, key: &str) -> io::Result<()> {
            let mut armed = self.armed.lock().unwrap();
            if let Some(published) = armed.as_mut() {
                *published += 1;
                if *published == 2 {
                    return Err(io::Error::other("simulated crash"));
                }
            }
            self.inner.replace(staged, key)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.inner.delete(key)
        }
        fn open(&self, key: &str) -> io::Result<Option<Opened>> {
            self.inner.open(key)
        }
        fn stat(&self, key: &str) -> io::Result<Option<ObjectMeta>> {
            self.inner.stat(key)
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn read_record(&self) -> io::Result<Option<Vec<u8>>> {
            self.inner.read_record()
        }
        fn commit_record(&self, staged: &Path) -> io::Result<()> {
            self.inner.commit_record(staged)
        }
    }

    /// A unified container tarball (metadata.yaml and rootfs/) for release `release`.
    fn unified(dir: &Path, release: &str) -> PathBuf {
        let yaml = format!(
            "architecture: x86_64\ncreation_date: 1764244800\nproperties:\n  os: testos\n  release: \"{release}\"\n  variant: default\n  description: test\n"
        );
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("metadata.yaml", yaml.as_bytes()),
            ("rootfs/", b"".as_slice()),
            ("rootfs/hostname", release.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if name.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
            }
            tar.append_data(&mut header, name, data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        let path = dir.join(format!("{release}.tar.gz"));
        fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    fn import(catalog: &Catalog, source: PathBuf) -> Result<ImportOutcome> {
        let request = ImportRequest {
            sources: vec![ImportSource::file(source)],
            aliases: Vec::new(),
            default_aliases: true,
            serial: None,
            requirements: Default::default(),
            transfer: Transfer::Copy,
            imported_by: "test".into(),
            may_publish_anywhere: true,
            expected_fingerprint: None,
        };
        catalog.import(request, &mut Silent)
    }

    /// (products index.json lists, products images.json has), as published.
    fn published(dirs: &DataDir) -> (BTreeSet<String>, BTreeSet<String>) {
        let index = fs::read(dirs.www().join(streams::INDEX_PATH)).unwrap();
        let images: serde_json::Value =
            serde_json::from_slice(&fs::read(dirs.www().join(streams::IMAGES_PATH)).unwrap())
                .unwrap();
        (
            streams::index_products(&index).unwrap(),
            images["products"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect(),
        )
    }

    /// Regression: images.json was always renamed first, so a crash after it while an image
    /// was being removed left index.json naming a product images.json no longer had.
    #[test]
    fn a_crash_between_the_stream_files_never_leaves_the_index_naming_a_missing_product() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path().join("data"));
        let armed = Arc::new(Mutex::new(None));
        dirs.create_layout().unwrap();
        let tree = Arc::new(CrashBetweenStreamFiles {
            inner: LocalTree::new(&dirs.www(), dirs.state().join("catalog.json")).unwrap(),
            armed: armed.clone(),
        });
        let settings = CatalogSettings {
            grace_period_secs: 0,
            ..CatalogSettings::default()
        };
        let catalog = Catalog::open_with_tree(dirs.clone(), settings.clone(), tree).unwrap();
        let one = import(&catalog, unified(dir.path(), "one")).unwrap();
        import(&catalog, unified(dir.path(), "two")).unwrap();

        // A product leaves.
        *armed.lock().unwrap() = Some(0);
        assert!(catalog.remove(&one.image().fingerprint).is_err());
        let (index, images) = published(&dirs);
        assert!(index.is_subset(&images), "{index:?} ⊄ {images:?}");
        assert_eq!(index.len(), 1, "the index went first");

        // The next transaction finishes the removal first; then a product arrives.
        *armed.lock().unwrap() = None;
        catalog.rebuild().unwrap();
        assert_eq!(published(&dirs).1.len(), 1);
        *armed.lock().unwrap() = Some(0);
        assert!(import(&catalog, unified(dir.path(), "three")).is_err());
        let (index, images) = published(&dirs);
        assert!(index.is_subset(&images), "{index:?} ⊄ {images:?}");

        // The next opening finishes both: the record, the stream and the files agree.
        *armed.lock().unwrap() = None;
        drop(catalog);
        let catalog = Catalog::open(dirs.clone(), settings).unwrap();
        let (index, images) = published(&dirs);
        assert_eq!(index, images);
        assert_eq!(index.len(), 2);
        let report = catalog.verify(&mut Silent).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

//! Downloading files into the data directory's `tmp/`, each streamed to disk once with its
//! sha256 (and the combined fingerprints it takes part in) computed on the way.
//!
//! A file goes to `tmp/mirror/<origin key>/<sha256>.part`. A fresh download is hashed and
//! written with `O_DIRECT` by a [`DiskWriter`] thread: the disk works while the download goes
//! on, and the file's sync at the end has nothing left to wait for. What is there from an
//! interrupted run is hashed first and the rest asked for with a Range request; a file the
//! catalog already holds (same sha256 and size) is copied from the published tree instead of
//! fetched. Sizes are enforced as the bytes arrive: a server that sends more than the item
//! says is cut off. A file that does not match is deleted; one that broke off is kept for the
//! next run.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::{Semaphore, mpsc};

use super::plan::UpstreamFile;
use super::upstream::{Upstream, content_length, next_chunk};
use super::{MirrorError, Progress};
use crate::disk_writer::{DiskWriter, Written};
use crate::sha256::{Sha256State, update_all};
use crate::storage::{ObjectRead, PublishedTree};

/// Bytes read at once from a local file.
const CHUNK: usize = 1 << 20;
/// Bytes of a download copied into one buffer before it goes to the writer thread. The
/// network's pieces are slices of the HTTP client's read buffer: handed on as they are, each
/// would keep that buffer from being reused until written, and the client would allocate
/// (and the allocator keep around) a new one every few hundred KiB.
const BATCH: usize = 64 << 10;
/// Batches queued for a download's writer thread: about a millisecond of a fast download,
/// what a 1 MiB write takes.
const WRITER_QUEUE: usize = 4;

/// One file to bring into `tmp/`.
#[derive(Debug, Clone)]
pub struct FileJob {
    pub file: UpstreamFile,
    /// Hashers that have consumed a metadata tarball, by its sha256: this file (a root)
    /// continues each, giving the combined fingerprints.
    pub seeds: Vec<(String, Sha256State)>,
    /// A published file with the same sha256 and size, copied instead of fetched.
    pub held: Option<String>,
}

/// A file in `tmp/`, whole and checked.
#[derive(Debug, Clone)]
pub struct FileDone {
    pub path: PathBuf,
    /// The hasher's state before finishing, for the roots that pair with this metadata.
    pub state: Sha256State,
    /// (metadata sha256, sha256(metadata ‖ this file)).
    pub combined: Vec<(String, String)>,
    /// Bytes fetched from upstream for it in this run.
    pub fetched: u64,
    pub reused: bool,
}

/// Why one file could not be had: one line, without the product and version.
pub type FileFailure = String;

/// Everything downloads share.
pub struct Downloader {
    pub upstream: Arc<Upstream>,
    pub tree: Arc<dyn PublishedTree>,
    pub dir: PathBuf,
    pub concurrency: usize,
    pub pace: Option<Arc<Pace>>,
    /// One per download that may run at once: a fresh download's writer thread holds one.
    pub writer_slots: Arc<Semaphore>,
}

/// A bandwidth limit over every download of a run.
pub struct Pace {
    bytes_per_sec: u64,
    start: Instant,
    sent: AtomicU64,
}

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            bytes_per_sec: bytes_per_sec.max(1),
            start: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }

    /// Waits until `bytes` more fit under the limit.
    async fn take(&self, bytes: u64) {
        let sent = self.sent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = self.start + Duration::from_secs_f64(sent as f64 / self.bytes_per_sec as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
}

enum Event {
    Bytes(u64),
    Done,
}

impl Downloader {
    /// The path a file with this sha256 is downloaded to.
    pub fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// Bytes already in `tmp/` for this file (from an interrupted run).
    pub fn already_here(&self, file: &UpstreamFile) -> u64 {
        fs::metadata(self.part_path(&file.sha256))
            .map(|m| m.len().min(file.size))
            .unwrap_or(0)
    }

    /// Runs `jobs`, at most `concurrency` at once; results by sha256.
    pub async fn run(
        self: &Arc<Self>,
        jobs: Vec<FileJob>,
        progress: &dyn Progress,
    ) -> BTreeMap<String, Result<FileDone, FileFailure>> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut pending = jobs.into_iter();
        let mut running = tokio::task::JoinSet::new();
        let mut results = BTreeMap::new();
        let start = |running: &mut tokio::task::JoinSet<_>, job: FileJob| {
            let this = Arc::clone(self);
            let events = events_tx.clone();
            running.spawn(async move {
                let sha256 = job.file.sha256.clone();
                let result = this.fetch(&job, &events).await;
                // A copy of a held file was never part of what the run planned to fetch.
                if !matches!(&result, Ok(done) if done.reused) {
                    let _ = events.send(Event::Done);
                }
                (sha256, result)
            });
        };
        for job in pending.by_ref().take(self.concurrency.max(1)) {
            start(&mut running, job);
        }
        loop {
            tokio::select! {
                Some(event) = events.recv() => match event {
                    Event::Bytes(n) => progress.transferred(n),
                    Event::Done => progress.file_done(),
                },
                joined = running.join_next() => {
                    let Some(joined) = joined else { break };
                    match joined {
                        Ok((sha256, result)) => {
                            results.insert(sha256, result);
                        }
                        Err(e) => tracing::error!(error = %e, "a download task failed"),
                    }
                    if let Some(job) = pending.next() {
                        start(&mut running, job);
                    }
                }
            }
        }
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Bytes(n) => progress.transferred(n),
                Event::Done => progress.file_done(),
            }
        }
        results
    }

    async fn fetch(
        &self,
        job: &FileJob,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<FileDone, FileFailure> {
        let file = &job.file;
        let path = self.part_path(&file.sha256);
        let mut part = PartFile::open(&path, &job.seeds)
            .map_err(|e| format!("cannot write {}: {}", path.display(), plain(&e)))?;
        if part.written < file.size
            && let Some(key) = &job.held
        {
            // Copied from what we publish already: never fetched again.
            part.reset().map_err(|e| write_failure(&path, &e))?;
            if tokio::task::block_in_place(|| self.copy_held(key, &mut part, file.size)).is_ok()
                && part.written == file.size
            {
                return part.finish(file, 0, true).await;
            }
            part.reset().map_err(|e| write_failure(&path, &e))?;
        }
        if part.written == file.size {
            match part.clone_finish(file) {
                Ok(done) => return Ok(done),
                // Whole but wrong (an older upstream's file of that name): fetch it again.
                Err(_) => part.reset().map_err(|e| write_failure(&path, &e))?,
            }
        }
        let mut fetched = 0u64;
        let mut retried_range = false;
        loop {
            let from = part.written;
            let (url, response) = self
                .upstream
                .get(&file.path, from, false)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            match status {
                StatusCode::PARTIAL_CONTENT if from > 0 => {
                    if content_range_start(&response) != Some(from) {
                        return Err(format!(
                            "{url} answered a Range request for bytes {from}- with other bytes"
                        ));
                    }
                }
                StatusCode::OK => {
                    if from > 0 {
                        part.reset().map_err(|e| write_failure(&path, &e))?;
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE if from > 0 && !retried_range => {
                    retried_range = true;
                    part.reset().map_err(|e| write_failure(&path, &e))?;
                    continue;
                }
                _ => return Err(format!("{url} answered {status}")),
            }
            let remaining = file.size - part.written;
            if let Some(length) = content_length(&response)
                && length != remaining
            {
                part.discard();
                return Err(format!(
                    "{url} announces {length} bytes where its item gives {} (size {}): its size lies",
                    remaining, file.size
                ));
            }
            if part.written == 0 {
                let slot = Arc::clone(&self.writer_slots)
                    .acquire_owned()
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                part.start_writer(slot)
                    .await
                    .map_err(|e| write_failure(&path, &e))?;
            }
            let mut body = response.into_body();
            loop {
                let chunk = match next_chunk(&mut body, &url).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        part.keep().await;
                        return Err(format!(
                            "{e}; {} of {} bytes are kept for the next run",
                            part.written, file.size
                        ));
                    }
                };
                if part.written + chunk.len() as u64 > file.size {
                    part.discard();
                    return Err(format!(
                        "{url} sends more than the {} bytes its item gives: its size lies",
                        file.size
                    ));
                }
                if let Some(pace) = &self.pace {
                    pace.take(chunk.len() as u64).await;
                }
                let len = chunk.len() as u64;
                part.receive(chunk)
                    .await
                    .map_err(|e| write_failure(&path, &e))?;
                fetched += len;
                let _ = events.send(Event::Bytes(len));
            }
            if part.written < file.size {
                part.keep().await;
                return Err(format!(
                    "{url} ended after {} of {} bytes (kept for the next run)",
                    part.written, file.size
                ));
            }
            return part.finish(file, fetched, false).await;
        }
    }

    /// Copies the published file `key` into `part`, hashing it on the way.
    fn copy_held(&self, key: &str, part: &mut PartFile, size: u64) -> io::Result<()> {
        let Some(opened) = self.tree.open(key)? else {
            return Err(io::Error::new(io::ErrorKind::NotFound, key.to_string()));
        };
        let mut reader = ObjectRead::new(opened.reader).take(size + 1);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            part.push(&buf[..n])?;
        }
    }
}

fn plain(e: &io::Error) -> String {
    crate::fsutil::plain_message(e)
}

fn write_failure(path: &Path, e: &io::Error) -> FileFailure {
    format!("cannot write {}: {}", path.display(), plain(e))
}

fn content_range_start<B>(response: &http::Response<B>) -> Option<u64> {
    let value = response
        .headers()
        .get(http::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// A `.part` file being written, and the hashes of everything in it so far.
struct PartFile {
    file: File,
    path: PathBuf,
    own: Sha256State,
    seeds: Vec<(String, Sha256State)>,
    fresh_seeds: Vec<(String, Sha256State)>,
    /// Bytes hashed, or handed to `writer` (which hashes them).
    written: u64,
    /// The thread writing a fresh download; `None` while bytes go through [`PartFile::push`]
    /// (a resumed file, a copy of a held one).
    writer: Option<DiskWriter>,
    /// Bytes received for `writer` and not yet sent (up to [`BATCH`]).
    batch: Vec<u8>,
}

impl PartFile {
    /// Opens (or creates) the file, locked against another run writing it, and hashes what
    /// an interrupted run left in it.
    fn open(path: &Path, seeds: &[(String, Sha256State)]) -> io::Result<PartFile> {
        if let Ok(meta) = fs::metadata(path)
            && meta.nlink() > 1
        {
            // Linked into the published tree by a run that stopped before cleaning up:
            // never write through it.
            fs::remove_file(path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if let Err(e) = file.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "another mirror run is downloading it",
                ),
                fs::TryLockError::Error(e) => e,
            });
        }
        let mut part = PartFile {
            file,
            path: path.to_path_buf(),
            own: Sha256State::new(),
            seeds: seeds.to_vec(),
            fresh_seeds: seeds.to_vec(),
            written: 0,
            writer: None,
            batch: Vec::new(),
        };
        let mut buf = vec![0u8; CHUNK];
        let reader = part.file.try_clone()?;
        loop {
            let n = (&reader).read(&mut buf)?;
            if n == 0 {
                break;
            }
            part.hash(&buf[..n]);
        }
        Ok(part)
    }

    fn hash(&mut self, data: &[u8]) {
        let mut states: Vec<&mut Sha256State> = std::iter::once(&mut self.own)
            .chain(self.seeds.iter_mut().map(|(_, state)| state))
            .collect();
        update_all(&mut states, data);
        self.written += data.len() as u64;
    }

    /// Hands what follows to a writer thread, which hashes it as it writes. Only for an empty
    /// file: the thread writes from offset 0.
    async fn start_writer(&mut self, slot: tokio::sync::OwnedSemaphorePermit) -> io::Result<()> {
        debug_assert_eq!(self.written, 0, "a writer thread starts an empty file");
        let mut writer = DiskWriter::start(&self.path, true, slot, WRITER_QUEUE)?;
        writer.seeds(self.seeds.clone()).await?;
        self.writer = Some(writer);
        Ok(())
    }

    /// The next bytes of a download: to the writer thread when there is one.
    async fn receive(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(writer) = &mut self.writer else {
            return self.push(&chunk);
        };
        self.written += chunk.len() as u64;
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.batch.capacity() == 0 {
                self.batch.reserve_exact(BATCH);
            }
            let n = rest.len().min(BATCH - self.batch.len());
            self.batch.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.batch.len() == BATCH {
                writer
                    .write(vec![Bytes::from(std::mem::take(&mut self.batch))])
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends the writer thread, if any: everything received is in the file (at its exact
    /// length) and the hashes are back here.
    async fn settle(&mut self) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        if !self.batch.is_empty() {
            writer
                .write(vec![Bytes::from(std::mem::take(&mut self.batch))])
                .await?;
        }
        let Written { len, own, combined } = writer.finish().await?;
        if len != self.written {
            return Err(io::Error::other(format!(
                "its writer thread wrote {len} of {} bytes",
                self.written
            )));
        }
        self.own = own;
        self.seeds = combined;
        Ok(())
    }

    fn push(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hash(data);
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        debug_assert!(
            self.writer.is_none(),
            "a file being written by its thread is not reset"
        );
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.own = Sha256State::new();
        self.seeds = self.fresh_seeds.clone();
        self.written = 0;
        Ok(())
    }

    /// Keeps what arrived for the next run: written and on disk, as far as it goes.
    async fn keep(&mut self) {
        if self.settle().await.is_err() {
            // The file may hold less than was received; the next run hashes what it holds.
            return;
        }
        let _ = self.file.sync_data();
    }

    /// Deletes a file whose upstream lied about it.
    fn discard(&self) {
        let _ = fs::remove_file(&self.path);
    }

    /// Checks the whole file against its item without consuming the hashes.
    fn clone_finish(&self, file: &UpstreamFile) -> Result<FileDone, FileFailure> {
        let sha256 = self.own.clone().finalize_hex();
        if sha256 != file.sha256 {
            return Err(format!("expected sha256 {}, got {sha256}", file.sha256));
        }
        Ok(FileDone {
            path: self.path.clone(),
            state: self.own.clone(),
            combined: self
                .seeds
                .iter()
                .map(|(meta, state)| (meta.clone(), state.clone().finalize_hex()))
                .collect(),
            fetched: 0,
            reused: false,
        })
    }

    async fn finish(
        mut self,
        file: &UpstreamFile,
        fetched: u64,
        reused: bool,
    ) -> Result<FileDone, FileFailure> {
        self.settle()
            .await
            .map_err(|e| write_failure(&self.path, &e))?;
        match self.clone_finish(file) {
            Ok(mut done) => {
                self.file
                    .sync_all()
                    .map_err(|e| write_failure(&self.path, &e))?;
                done.fetched = fetched;
                done.reused = reused;
                Ok(done)
            }
            Err(problem) => {
                self.discard();
                Err(problem)
            }
        }
    }
}

/// Deletes everything in `dir` but the files named in `keep` (by sha256), skipping files
/// another run holds locked.
pub fn clean(dir: &Path, keep: &std::collections::BTreeSet<String>) -> Result<(), MirrorError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::fsutil::with_path(e, "cannot list", dir).into()),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sha256 = name.strip_suffix(".part").unwrap_or(&name);
        if keep.contains(sha256) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(())
}

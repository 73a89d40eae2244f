//! One file being uploaded, whichever door it came through (SFTP or `scp -t`).
//!
//! - Bytes go to a hidden temp file next to the target (same directory, so the final rename
//!   is atomic); [`Upload::commit`] renames it into place. Dropped without a commit (the
//!   client went away, the quota ran out, the disk filled), the temp file is deleted: an
//!   interrupted upload leaves nothing visible.
//! - The user's quota and the per-file size limit are checked on every write that grows the
//!   file, so a client learns at once, not after sending 30 GiB.
//! - While writes are sequential, their bytes are hashed as they arrive (sha256, and for a
//!   root following a metadata tarball, the combined fingerprint too); the digests are handed
//!   to [`UploadDigests`](super::digests::UploadDigests) on commit, so that `import` reads
//!   nothing again. A write out of order drops the hashing: `import` will read the file.
//! - Bytes that arrive in order (nearly always) go to a writer thread ([`DiskWriter`],
//!   started at the first write) that hashes them and writes them with `O_DIRECT` in 1 MiB
//!   blocks; the connection's task only decrypts and queues. Out-of-order writes fall back to
//!   positional writes on the connection's task. Nothing is fsynced per request; after the
//!   commit the file is fsynced in the background (cheap: the bytes are already on the
//!   device), so an import has nothing left to flush.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde_json::json;

use super::UserArea;
use super::account::Account;
use crate::access::jail::UPLOAD_TEMP_PREFIX;
use crate::access::{JailError, JailedPath};
use crate::catalog::import::KnownDigest;
use crate::disk_writer::DiskWriter;
use crate::format::human_size;
use crate::image::{Compression, RootKind};

/// Bytes kept from the start of an upload to tell a root from a metadata tarball.
const HEAD_LEN: usize = 512;
/// Writes (each up to 255 KiB of channel data) queued for an upload's writer thread: enough
/// to ride out a slow disk write, small enough to bound memory.
const WRITER_QUEUE: usize = 16;

/// Why an upload (or a file operation in an upload area) failed. Each message is one sentence
/// that names the file as the client sees it and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Jail(#[from] JailError),
    #[error(
        "upload refused: {file} would bring your upload area to {needed}, over your quota of {limit}; import or remove uploads first (`uploads` lists them)"
    )]
    Quota {
        file: String,
        needed: String,
        limit: String,
    },
    #[error("upload refused: {file} is larger than {limit}, the largest file this server accepts")]
    TooLarge { file: String, limit: String },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} is a directory, not a file")]
    IsDirectory(String),
    /// A rule of the upload area forbids it (its root, its depth or entry limits).
    #[error("{0}")]
    Refused(String),
    /// It cannot be done as asked; the message says why and what to do.
    #[error("{0}")]
    Failed(String),
    /// No room left on the disk holding the upload areas (ENOSPC or a filesystem quota).
    #[error(
        "upload failed: {0}: the server's disk is full; nothing was kept, try again once space is freed"
    )]
    DiskFull(String),
    #[error("{0}")]
    Io(String),
}

impl UploadError {
    /// An I/O error, named after the client's view of the file (never the server's path).
    pub fn io(action: &str, file: &str, e: &io::Error) -> UploadError {
        match e.kind() {
            io::ErrorKind::NotFound => UploadError::NotFound(file.to_string()),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                UploadError::DiskFull(file.to_string())
            }
            _ => UploadError::Io(format!(
                "cannot {action} {file}: {}",
                crate::fsutil::plain_message(e)
            )),
        }
    }
}

/// The file an upload replaces when it was opened without truncation: its bytes stay where
/// the upload does not write (SFTP semantics), copied in only when that matters.
struct Base {
    path: PathBuf,
    len: u64,
}

/// Where the bytes go.
enum Sink {
    /// Nothing written yet: the writer thread starts with the first write at offset 0.
    NotStarted,
    /// Every write so far continued the last: bytes are queued to a writer thread that
    /// hashes them and writes them to disk.
    Streaming { writer: DiskWriter, next: u64 },
    /// After an out-of-order write (or without a thread): positional writes here, no hashes.
    Positional,
}

/// What a finished upload reports.
#[derive(Debug, Clone)]
pub struct Committed {
    pub file: String,
    pub bytes: u64,
    pub sha256: Option<String>,
}

pub struct Upload {
    area: UserArea,
    target: JailedPath,
    temp: PathBuf,
    file: File,
    /// The temp file's length.
    len: u64,
    base: Option<Base>,
    sink: Sink,
    /// The first bytes, to tell a root (hashed with the metadata before it) from the rest.
    head: Vec<u8>,
    account: Arc<Account>,
    /// Bytes of this upload counted in the account (in flight).
    counted: u64,
    /// Every write goes to the end of the file (SFTP APPEND).
    append: bool,
    mtime: Option<SystemTime>,
    started: Instant,
    protocol: &'static str,
    finished: bool,
}

impl Upload {
    /// Starts an upload to `target`. With `keep_existing` (an SFTP open without TRUNC), the
    /// bytes of a file already there stay where the client does not overwrite them.
    /// Called by [`UserArea::upload`], which has checked the jail and the area's limits;
    /// the temp file goes in `temp_dir` (the area's hidden temp directory).
    pub(super) fn create(
        area: UserArea,
        account: Arc<Account>,
        target: JailedPath,
        temp_dir: &Path,
        keep_existing: bool,
        append: bool,
        protocol: &'static str,
    ) -> Result<Upload, UploadError> {
        let view = target.client_view();
        if let Some(parent) = target.parent() {
            match fs::symlink_metadata(parent.full()) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(UploadError::NotFound(parent.client_view())),
                Err(e) => return Err(UploadError::io("open", &parent.client_view(), &e)),
            }
        }
        let base = match fs::symlink_metadata(target.full()) {
            Ok(meta) if meta.is_dir() => return Err(UploadError::IsDirectory(view)),
            Ok(meta) => (keep_existing || append).then(|| Base {
                path: target.full().to_path_buf(),
                len: meta.len(),
            }),
            Err(_) => None,
        };
        let limit = area.areas().config().ssh.quota_bytes;
        let usage = account.usage();
        if limit > 0 && usage.bytes() >= limit {
            return Err(UploadError::Quota {
                file: view,
                needed: human_size(usage.bytes()),
                limit: human_size(limit),
            });
        }
        let temp = temp_dir.join(format!("{UPLOAD_TEMP_PREFIX}{}", unique_suffix()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| UploadError::io("create", &view, &e))?;
        Ok(Upload {
            area,
            target,
            temp,
            file,
            len: 0,
            base,
            sink: Sink::NotStarted,
            head: Vec::new(),
            account,
            counted: 0,
            append,
            mtime: None,
            started: Instant::now(),
            protocol,
            finished: false,
        })
    }

    /// The target as the client sees it.
    pub fn client_view(&self) -> String {
        self.target.client_view()
    }

    pub fn target(&self) -> &JailedPath {
        &self.target
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn io_error(&self, action: &str, e: &io::Error) -> UploadError {
        UploadError::io(action, &self.target.client_view(), e)
    }

    /// Writes `chunks` (consecutive) at `offset`.
    pub async fn write_at(&mut self, offset: u64, chunks: Vec<Bytes>) -> Result<(), UploadError> {
        // APPEND: the offset is ignored, every write lands at the end of the file.
        let offset = if self.append {
            self.len.max(self.base.as_ref().map_or(0, |base| base.len))
        } else {
            offset
        };
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let end = offset.saturating_add(total);
        self.check_size(end)?;
        if self.base.is_some() && offset != self.len {
            self.materialize_base().await?;
        }
        if end > self.counted {
            self.grow_account(end)?;
        }
        if matches!(self.sink, Sink::NotStarted) {
            self.sink = if offset == 0 {
                self.start_writer()
            } else {
                Sink::Positional
            };
        }
        let in_order = matches!(&self.sink, Sink::Streaming { next, .. } if *next == offset);
        if in_order {
            if offset == 0 && self.head.is_empty() {
                self.start_hashing(&chunks).await?;
            }
            if let Sink::Streaming { writer, next } = &mut self.sink {
                let sent = writer.write(chunks).await;
                *next = end;
                sent.map_err(|e| UploadError::io("write", &self.target.client_view(), &e))?;
            }
        } else {
            self.stop_streaming().await?;
            let mut position = offset;
            for chunk in &chunks {
                self.file
                    .write_all_at(chunk, position)
                    .map_err(|e| self.io_error("write", &e))?;
                position += chunk.len() as u64;
            }
        }
        self.len = self.len.max(end);
        Ok(())
    }

    /// A writer thread for this upload, when one of the gateway's slots is free; otherwise
    /// (many uploads at once) positional writes without hashes.
    fn start_writer(&self) -> Sink {
        let Ok(slot) = self.area.areas().writer_slots.clone().try_acquire_owned() else {
            tracing::info!(file = %self.target.client_view(), "all upload writer threads are busy; this upload is not hashed on the way in");
            return Sink::Positional;
        };
        let direct = self.area.areas().config().ssh.direct_io;
        match DiskWriter::start(&self.temp, direct, slot, WRITER_QUEUE) {
            Ok(writer) => Sink::Streaming { writer, next: 0 },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start an upload writer thread; writing without hashing");
                Sink::Positional
            }
        }
    }

    /// At the first bytes: a root (by its magic) also continues the hash states of the
    /// metadata tarballs uploaded before it, giving the combined fingerprints.
    async fn start_hashing(&mut self, chunks: &[Bytes]) -> Result<(), UploadError> {
        for chunk in chunks {
            let room = HEAD_LEN - self.head.len();
            self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if self.head.len() == HEAD_LEN {
                break;
            }
        }
        if RootKind::detect(&self.head).is_none() {
            return Ok(());
        }
        let seeds = self.area.areas().digests.metadata_seeds(self.area.root());
        if let (Sink::Streaming { writer, .. }, false) = (&mut self.sink, seeds.is_empty()) {
            let sent = writer.seeds(seeds).await;
            sent.map_err(|e| self.io_error("write", &e))?;
        }
        Ok(())
    }

    /// Switches to positional writes: the thread writes what it has, hashes are dropped.
    async fn stop_streaming(&mut self) -> Result<(), UploadError> {
        if let Sink::Streaming { writer, .. } = std::mem::replace(&mut self.sink, Sink::Positional)
        {
            writer
                .finish()
                .await
                .map_err(|e| self.io_error("write", &e))?;
        }
        Ok(())
    }

    /// Checks before any byte arrives that a file of `size` fits (`scp -t` announces sizes),
    /// and counts it against the quota at once.
    pub fn expect_size(&mut self, size: u64) -> Result<(), UploadError> {
        self.check_size(size)?;
        self.grow_account(size)
    }

    /// Forces the bytes written so far to disk (`fsync@openssh.com`).
    pub async fn sync(&mut self) -> Result<(), UploadError> {
        let synced = match &mut self.sink {
            Sink::Streaming { writer, .. } => writer.sync().await,
            Sink::NotStarted | Sink::Positional => self.file.sync_data(),
        };
        synced.map_err(|e| self.io_error("sync", &e))
    }

    /// Sets the file's length (SFTP FSETSTAT size, which OpenSSH's scp always sends).
    pub async fn set_len(&mut self, size: u64) -> Result<(), UploadError> {
        self.check_size(size)?;
        if let Some(base) = &self.base {
            if size > self.len && base.len > self.len {
                self.materialize_base().await?;
            }
            self.base = None;
        }
        let unchanged = match &self.sink {
            Sink::Streaming { next, .. } => *next == size,
            Sink::NotStarted => size == 0,
            Sink::Positional => false,
        };
        if unchanged {
            // What scp sends after its last write: the length is already right.
            return Ok(());
        }
        self.stop_streaming().await?;
        if size > self.counted {
            self.grow_account(size)?;
        }
        self.file
            .set_len(size)
            .map_err(|e| self.io_error("resize", &e))?;
        if size < self.counted {
            let freed = self.counted - size;
            self.account
                .apply(|usage| usage.in_flight = usage.in_flight.saturating_sub(freed));
            self.counted = size;
        }
        self.len = size;
        Ok(())
    }

    /// The modification time the file gets on commit (`scp -p`, SFTP setstat).
    pub fn set_mtime(&mut self, mtime: SystemTime) {
        self.mtime = Some(mtime);
    }

    fn check_size(&self, size: u64) -> Result<(), UploadError> {
        let limit = self.area.areas().config().ssh.max_file_bytes;
        if limit > 0 && size > limit {
            return Err(UploadError::TooLarge {
                file: self.target.client_view(),
                limit: human_size(limit),
            });
        }
        Ok(())
    }

    fn grow_account(&mut self, to: u64) -> Result<(), UploadError> {
        if to > self.counted {
            let more = to - self.counted;
            let limit = self.area.areas().config().ssh.quota_bytes;
            self.account
                .update(
                    |usage| usage.in_flight = usage.in_flight.saturating_add(more),
                    |usage| limit == 0 || usage.bytes() <= limit,
                )
                .map_err(|refused| UploadError::Quota {
                    file: self.target.client_view(),
                    needed: human_size(refused.bytes()),
                    limit: human_size(limit),
                })?;
            self.counted = to;
        }
        Ok(())
    }

    /// Copies the bytes of the replaced file beyond what was written in order, then forgets
    /// it.
    async fn materialize_base(&mut self) -> Result<(), UploadError> {
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        if base.len <= self.len {
            return Ok(());
        }
        self.stop_streaming().await?;
        self.check_size(base.len)?;
        self.grow_account(base.len)?;
        // Up to the whole old file: off the connection's thread.
        let from = self.len;
        let copied = self.file.try_clone().map(|dest| {
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let mut source = File::open(&base.path)?;
                source.seek(SeekFrom::Start(from))?;
                let mut dest = dest;
                dest.seek(SeekFrom::Start(from))?;
                io::copy(&mut io::Read::take(source, base.len - from), &mut dest)?;
                Ok(())
            })
        });
        let result = match copied {
            Ok(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.io_error("keep the existing content of", &e))?;
        self.len = base.len;
        Ok(())
    }

    /// Renames the file into place, records its digests and writes the audit line.
    pub async fn commit(mut self) -> Result<Committed, UploadError> {
        if self.base.is_some() {
            self.materialize_base().await?;
        }
        let written = match std::mem::replace(&mut self.sink, Sink::Positional) {
            Sink::Streaming { writer, .. } => Some(
                writer
                    .finish()
                    .await
                    .map_err(|e| self.io_error("write", &e))?,
            ),
            Sink::NotStarted | Sink::Positional => None,
        };
        let view = self.target.client_view();
        if let Some(mtime) = self.mtime {
            let _ = self.file.set_modified(mtime);
        }
        let replaced = match fs::symlink_metadata(self.target.full()) {
            Ok(meta) if meta.is_dir() => return Err(UploadError::IsDirectory(view)),
            Ok(meta) => Some(meta.len()),
            Err(_) => None,
        };
        fs::rename(&self.temp, self.target.full()).map_err(|e| self.io_error("store", &e))?;
        self.finished = true;
        let (counted, len) = (self.counted, self.len);
        self.account.apply(|usage| {
            usage.in_flight = usage.in_flight.saturating_sub(counted);
            usage.finished = usage.finished.saturating_add(len);
            match replaced {
                Some(old) => usage.finished = usage.finished.saturating_sub(old),
                None => usage.entries += 1,
            }
        });

        let digests = &self.area.areas().digests;
        let mut combined_with = Vec::new();
        // The identity of the file this upload wrote, as it is now in place.
        let identity = crate::fsutil::FileIdentity::of_file(&self.file).ok();
        let sha256 = match (written, identity) {
            (Some(written), Some(identity)) if written.len == self.len => {
                let sha256 = written.own.clone().finalize_hex();
                let combined: Vec<(String, String)> = written
                    .combined
                    .into_iter()
                    .map(|(meta, state)| (meta, state.finalize_hex()))
                    .collect();
                combined_with = combined.iter().map(|(meta, _)| meta.clone()).collect();
                digests.record(
                    self.target.full(),
                    KnownDigest {
                        identity,
                        size: self.len,
                        sha256: sha256.clone(),
                        combined,
                    },
                );
                if self.is_metadata_candidate() {
                    digests.record_metadata_seed(
                        self.area.root(),
                        self.target.full(),
                        sha256.clone(),
                        written.own,
                    );
                }
                Some(sha256)
            }
            _ => {
                digests.forget(self.target.full());
                None
            }
        };
        self.sync_in_background();
        let committed = Committed {
            file: view,
            bytes: self.len,
            sha256,
        };
        self.area.areas().audit.record(
            "upload",
            json!({
                "user": self.area.user(),
                "file": committed.file,
                "bytes": committed.bytes,
                "sha256": committed.sha256,
                // Metadata tarballs this root was hashed together with (combined fingerprints).
                "combined_with": combined_with,
                "ms": self.started.elapsed().as_millis() as u64,
                "protocol": self.protocol,
            }),
        );
        Ok(committed)
    }

    /// A small tarball that may be a split image's metadata: its hash state is worth keeping.
    fn is_metadata_candidate(&self) -> bool {
        let limit = self.area.areas().config().catalog.max_metadata_bytes;
        self.len <= limit
            && !matches!(
                RootKind::detect(&self.head),
                Some(RootKind::Squashfs | RootKind::Qcow2)
            )
            && Compression::detect(&self.head).is_some()
    }

    /// Makes the committed file durable without holding up the client's reply.
    fn sync_in_background(&self) {
        let Ok(file) = self.file.try_clone() else {
            return;
        };
        let dir = self
            .target
            .full()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let sync = move || {
            if let Err(e) = file.sync_all() {
                tracing::warn!(error = %e, "cannot sync an uploaded file");
            }
            let _ = crate::fsutil::fsync_dir(&dir);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(sync);
            }
            Err(_) => sync(),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Bytes are released only once the temp file is really gone.
        match fs::remove_file(&self.temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, temp = %self.temp.display(), "cannot remove an unfinished upload's temp file");
            }
            _ => {
                let counted = self.counted;
                self.account
                    .apply(|usage| usage.in_flight = usage.in_flight.saturating_sub(counted));
            }
        }
        self.area.areas().audit.record(
            "upload_incomplete",
            json!({
                "user": self.area.user(),
                "file": self.target.client_view(),
                "bytes": self.len,
                "ms": self.started.elapsed().as_millis() as u64,
                "protocol": self.protocol,
            }),
        );
    }
}

/// A temp file name no other upload of this process (or a previous one) uses.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

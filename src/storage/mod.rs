//! The published tree (what `www/` holds: image files and `streams/v1/*.json`) and the catalog
//! record, behind one interface: [`PublishedTree`]. The catalog writes through it, and `verify`
//! and the HTTP side read through it. [`local`] is the local filesystem, the embedded default;
//! [`s3`] an S3-compatible bucket (`storage.backend = "s3"`).
//!
//! # What a reader may rely on
//! Readers (the HTTP side, replicas, `verify`) never take the writer's lock. They rely on this:
//! - An image key, once placed, names the same bytes until it is deleted: the catalog places a
//!   new file only under a key that does not exist (it checks under the writer lock), and
//!   never rewrites one. So an object opened for a download stays whole while it is sent.
//! - A stream file is replaced whole: a reader sees the old bytes or the new, never a mix.
//! - Every write is durable and visible before the call returns, so writes become visible in
//!   the order they were made. The catalog uses that order: image files first, then the
//!   record (its commit point), then `images.json` and `index.json` (images.json first when
//!   products arrive, index.json first when some leave), then deletions of files whose grace
//!   period is over. So index.json never names a product images.json lacks, and no stream
//!   file names an image file that is not there yet or already gone.
//! - An opened object keeps the version it was opened at ([`Opened::meta`]); a new version of
//!   the key always has another [`ObjectVersion`], so a cache keyed by it is never stale.
//!
//! # Blocking
//! Every method blocks: the local tree is filesystem calls (tokio has no asynchronous file
//! I/O either; it runs them on its blocking pool), and the catalog that writes through it is
//! synchronous code running on blocking threads. The HTTP side calls them on the blocking
//! pool, with two exceptions made for speed: [`ObjectReader::poll_read`] never blocks, and
//! [`PublishedTree::stat`] of a stream file is called on the async threads, so a backend must
//! answer it without waiting on the network (the local one stats an inode that is in memory).

pub mod local;
pub mod s3;

use std::fs::File;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// The published tree and the catalog record. Keys are `/`-separated paths relative to the
/// tree's root (`images/…`, `streams/v1/index.json`), already clean: no `.`, `..` or empty parts.
pub trait PublishedTree: Send + Sync {
    /// Makes the fully written and synced local file `staged` visible under `key`, durably.
    /// `key` does not exist (the caller checked under the writer lock).
    fn place(&self, staged: &Path, key: &str) -> io::Result<()>;

    /// Replaces the stream file `key` with the local file `staged`, whole and durably: readers
    /// see the old bytes or the new ones.
    fn replace(&self, staged: &Path, key: &str) -> io::Result<()>;

    /// Deletes `key`; one already gone is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;

    /// Opens `key` for reading; `None` when no object is there.
    fn open(&self, key: &str) -> io::Result<Option<Opened>>;

    /// The metadata of `key`; `None` when no object is there.
    fn stat(&self, key: &str) -> io::Result<Option<ObjectMeta>>;

    /// Every key under `prefix` (a directory-like key without the trailing `/`), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// The committed catalog record; `None` before the first commit.
    fn read_record(&self) -> io::Result<Option<Vec<u8>>>;

    /// Makes the fully written and synced local file `staged` the catalog record, whole and
    /// durably: the catalog's commit point.
    fn commit_record(&self, staged: &Path) -> io::Result<()>;

    /// The first `limit` bytes of `key` (all of a smaller object); `None` when it is missing.
    fn read_to_vec(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(opened) = self.open(key)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(
            &mut io::Read::take(ObjectRead::new(opened.reader), limit),
            &mut bytes,
        )?;
        Ok(Some(bytes))
    }
}

/// An object opened for reading: its metadata as of the opening, and its bytes.
pub struct Opened {
    pub meta: ObjectMeta,
    pub reader: Arc<dyn ObjectReader>,
}

/// What a reader knows of an object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: SystemTime,
    pub version: ObjectVersion,
}

/// What tells two versions of a key apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectVersion {
    /// A local file: every publication renames a new inode into place, so device, inode,
    /// nanosecond mtime and size name one version even when two are written within a second.
    Inode {
        dev: u64,
        ino: u64,
        mtime_ns: i128,
        size: u64,
    },
    /// An object in a store: its entity tag (hashed, so that a version stays `Copy`) and size.
    Stored { tag: u64, size: u64 },
}

impl ObjectVersion {
    /// A strong HTTP entity tag for this version, quotes included.
    pub fn etag(&self) -> String {
        match self {
            ObjectVersion::Inode {
                ino,
                mtime_ns,
                size,
                ..
            } => format!("\"{ino:x}-{mtime_ns:x}-{size:x}\""),
            ObjectVersion::Stored { tag, size } => format!("\"{tag:x}-{size:x}\""),
        }
    }
}

/// The bytes of an opened object, read by offset. Shared between the request that opened it
/// and the body streaming it.
pub trait ObjectReader: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at the end. Blocking.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` from `offset`; an object that ends sooner is an error. Blocking.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(shrank()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Up to `len` bytes at `offset` when they can be had without blocking a thread: at once
    /// (the local page cache), or later, `cx` being woken when they come (a bucket's ranges
    /// in flight). `None` when this reader cannot: the caller then reads with
    /// [`ObjectReader::read_at`] on the blocking pool. Never blocks: called on the async
    /// threads.
    fn poll_read(
        &self,
        _cx: &mut Context<'_>,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Ready(Ok(None))
    }

    /// The local file behind the object, for zero-copy sends (`sendfile`); `None` when the
    /// bytes are not in a local file.
    fn local_file(&self) -> Option<&File> {
        None
    }

    /// Sends `len` bytes at `offset` into `socket` (a plain-HTTP body) without the bytes
    /// passing through this process, when the reader can: a future giving the bytes sent, the
    /// socket waited on for at most `limit` at a time. `None` when it cannot; the caller then
    /// streams with [`ObjectReader::poll_read`].
    fn splice_to<'a>(
        &'a self,
        _socket: &'a tokio::net::TcpStream,
        _offset: u64,
        _len: u64,
        _limit: Duration,
    ) -> Option<SpliceFuture<'a>> {
        None
    }
}

/// What [`ObjectReader::splice_to`] returns.
pub type SpliceFuture<'a> = Pin<Box<dyn Future<Output = io::Result<u64>> + Send + 'a>>;

/// An object read front to back as [`io::Read`] (verify, small JSON files).
pub struct ObjectRead {
    reader: Arc<dyn ObjectReader>,
    offset: u64,
}

impl ObjectRead {
    pub fn new(reader: Arc<dyn ObjectReader>) -> Self {
        ObjectRead { reader, offset: 0 }
    }
}

impl io::Read for ObjectRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The error for an object that ended before the size it had when it was opened.
pub fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while it was being sent",
    )
}

/// The error for a send to a client that took nothing for its time limit (the HTTP side's
/// send timeout, and [`ObjectReader::splice_to`]'s `limit`).
pub fn client_stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing for the send timeout",
    )
}

/// A vector holding `pad` zero bytes, with room for `len` more, such that the data appended
/// after them starts 32 bytes into a 64-byte cache line. Hand out `bytes.slice(pad..)`.
///
/// Why: rustls copies each TLS record's plaintext to 5 bytes past the start of a fresh buffer
/// before encrypting it in place. glibc 2.36 (Debian 12) makes copies of that size with
/// `rep movsb`, which on AMD Zen CPUs runs at a fifteenth of its speed when the source sits
/// earlier in its cache line than the destination: always the case for data at the start of
/// an aligned buffer. Measured here: 2.4 GB/s against 38 GB/s, a third of the CPU time of a
/// TLS download. Data that starts mid-line is copied fast. Later glibc releases avoid
/// `rep movsb` on these CPUs; until then this costs nothing and saves that third. Every
/// buffer of object bytes headed for TLS is made here: the readers' and the JSON cache's.
pub fn mid_line_vec(len: usize) -> (Vec<u8>, usize) {
    let mut buf = Vec::with_capacity(len + 64);
    let pad = (32 + 64 - buf.as_ptr() as usize % 64) % 64;
    buf.resize(pad, 0);
    (buf, pad)
}

/// `bytes` in a buffer whose data starts mid cache line (see [`mid_line_vec`]): itself when it
/// does, else a copy.
pub fn mid_line(bytes: Bytes) -> Bytes {
    if bytes.as_ptr() as usize % 64 >= 32 {
        return bytes;
    }
    let (mut buf, pad) = mid_line_vec(bytes.len());
    buf.extend_from_slice(&bytes);
    Bytes::from(buf).slice(pad..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mid_line_buffers_start_data_32_bytes_into_a_cache_line() {
        for len in [0, 1, 5000, 256 * 1024] {
            let (mut buf, pad) = mid_line_vec(len);
            assert_eq!(buf.len(), pad);
            assert!(buf.capacity() >= pad + len);
            buf.extend_from_slice(&vec![7u8; len]);
            let bytes = Bytes::from(buf).slice(pad..);
            assert_eq!(bytes.len(), len);
            if len > 0 {
                assert_eq!(bytes.as_ptr() as usize % 64, 32);
            }
        }
    }
}

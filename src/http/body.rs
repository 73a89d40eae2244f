//! Streaming a region of a published object as an HTTP body (over TLS; the plain-HTTP path
//! sends a local file with `sendfile(2)` instead).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::storage::{ObjectReader, mid_line, mid_line_vec};

/// Bytes read per frame of a download, while few downloads run.
pub const CHUNK: usize = 256 * 1024;

/// Bytes read per frame while more than [`FEW_DOWNLOADS`] downloads run. A frame lives until
/// the client has taken most of it, so a fleet of slow readers holds one each: 200 clients
/// held 170 MiB at 256 KiB (and hyper's queue of two frames), 60 MiB at 64 KiB.
pub const SMALL_CHUNK: usize = 64 * 1024;
pub const FEW_DOWNLOADS: usize = 8;

/// Object bodies alive now, across all connections.
static DOWNLOADS: AtomicUsize = AtomicUsize::new(0);

/// The frame size for the downloads running now: large frames (fewer reads) for a few
/// clients, small ones under load, so memory stays bounded as clients are added.
fn chunk_size() -> usize {
    if DOWNLOADS.load(Ordering::Relaxed) > FEW_DOWNLOADS {
        SMALL_CHUNK
    } else {
        CHUNK
    }
}

/// An object region as an HTTP body, [`chunk_size`] bytes per frame.
///
/// Each chunk is first asked of [`ObjectReader::poll_read`] on the async thread (for a local
/// file a `RWF_NOWAIT` read, which succeeds only when the data is in the page cache and never
/// blocks; for a bucket the ranges in flight, which wake the body when a piece comes): the
/// common case costs no thread hop, and the bytes are still in this core's cache when rustls
/// encrypts them. Data that must come from the disk is read on the blocking pool instead, so
/// a slow disk never stalls the runtime (nginx's `aio threads` fallback, in effect).
pub struct ObjectStream {
    reader: Arc<dyn ObjectReader>,
    /// Frames go to rustls: their data must start mid cache line (see [`mid_line_vec`]).
    for_tls: bool,
    /// The next byte to read, and how many are left to read.
    offset: u64,
    remaining: u64,
    /// A read from the disk in progress on the blocking pool.
    pending: Option<(u64, JoinHandle<io::Result<Bytes>>)>,
}

impl ObjectStream {
    /// The region `start..start + len` of `reader`, for a TLS connection.
    pub fn new(reader: Arc<dyn ObjectReader>, start: u64, len: u64) -> ObjectStream {
        Self::with_frames(reader, start, len, true)
    }

    /// The same for a plain socket, which takes frames wherever their data starts.
    pub fn for_plain_socket(reader: Arc<dyn ObjectReader>, start: u64, len: u64) -> ObjectStream {
        Self::with_frames(reader, start, len, false)
    }

    fn with_frames(
        reader: Arc<dyn ObjectReader>,
        start: u64,
        len: u64,
        for_tls: bool,
    ) -> ObjectStream {
        DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        ObjectStream {
            reader,
            for_tls,
            offset: start,
            remaining: len,
            pending: None,
        }
    }

    /// Takes `len` bytes from the region and reads them on the blocking pool.
    fn read_blocking(&mut self, len: u64) -> JoinHandle<io::Result<Bytes>> {
        let reader = self.reader.clone();
        let offset = self.offset;
        self.offset += len;
        self.remaining -= len;
        tokio::task::spawn_blocking(move || {
            let (mut buf, pad) = mid_line_vec(len as usize);
            buf.resize(pad + len as usize, 0);
            reader.read_exact_at(&mut buf[pad..], offset)?;
            Ok(Bytes::from(buf).slice(pad..))
        })
    }
}

impl Body for ObjectStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.pending.is_none() {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let len = self.remaining.min(chunk_size() as u64);
            match ready!(self.reader.poll_read(cx, self.offset, len as usize)) {
                Ok(Some(chunk)) => {
                    self.offset += chunk.len() as u64;
                    self.remaining -= chunk.len() as u64;
                    let chunk = if self.for_tls { mid_line(chunk) } else { chunk };
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Ok(None) => {
                    let job = self.read_blocking(len);
                    self.pending = Some((len, job));
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        let Some((_, job)) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(job).poll(cx));
        self.pending = None;
        let chunk = result.map_err(io::Error::other).and_then(|r| r);
        Poll::Ready(Some(chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        // A pending read's bytes were taken from `remaining` and are not yet sent.
        SizeHint::with_exact(self.remaining + self.pending.as_ref().map_or(0, |(len, _)| *len))
    }
}

impl Drop for ObjectStream {
    fn drop(&mut self) {
        DOWNLOADS.fetch_sub(1, Ordering::Relaxed);
        if let Some((_, job)) = self.pending.take() {
            job.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PublishedTree;
    use crate::storage::local::LocalTree;

    /// A tree holding one file `images/f` with `len` bytes of a pattern.
    fn pattern_tree(len: usize) -> (tempfile::TempDir, LocalTree, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(dir.path().join("www/images")).unwrap();
        std::fs::write(dir.path().join("www/images/f"), &content).unwrap();
        let tree = LocalTree::new(&dir.path().join("www"), dir.path().join("record")).unwrap();
        (dir, tree, content)
    }

    #[tokio::test]
    async fn a_file_region_streams_whole_from_the_cache_or_the_disk() {
        use http_body_util::BodyExt;
        let (_dir, tree, content) = pattern_tree(3 * CHUNK + 1234);
        let reader = tree.open("images/f").unwrap().unwrap().reader;
        let body = ObjectStream::new(reader.clone(), 1000, 2 * CHUNK as u64 + 17);
        assert_eq!(body.size_hint().exact(), Some(2 * CHUNK as u64 + 17));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], &content[1000..1000 + 2 * CHUNK + 17]);

        // The blocking-pool path, as taken when the page cache does not hold the data.
        let mut stream = ObjectStream::new(reader, 5, 100);
        let chunk = stream.read_blocking(100).await.unwrap().unwrap();
        assert_eq!(&chunk[..], &content[5..105]);
        assert_eq!(chunk.as_ptr() as usize % 64, 32);
        assert_eq!(stream.remaining, 0);
    }

    #[tokio::test]
    async fn a_file_that_shrinks_mid_download_is_an_error() {
        use http_body_util::BodyExt;
        let (dir, tree, _) = pattern_tree(1000);
        let reader = tree.open("images/f").unwrap().unwrap().reader;
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("www/images/f"))
            .unwrap()
            .set_len(10)
            .unwrap();
        let result = ObjectStream::new(reader, 0, 1000).collect().await;
        assert!(result.is_err());
    }
}

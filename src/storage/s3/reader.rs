//! Reading objects of the bucket. A download reads an object front to back; one GET per read
//! would cost a request (and the store's first-byte latency) each, and one GET for the whole
//! object runs at the speed of one request inside the store (Garage reads and checks one block
//! after another: 1.3 of 2 cores busy). So [`S3Object`] asks for the object in ranges of
//! [`RANGE_BYTES`], several at a time: while one range is read, the next ones already stream
//! into small queues of their own, fed by tasks on the client's runtime, and the store works on
//! them at once (what multi-part downloaders such as rclone and the AWS CLI do). A read that
//! does not continue where the last ended (a seek) starts over from there.
//!
//! Plain-HTTP downloads from a store reached over `http` skip these queues: [`super::splice`]
//! moves the same ranges from socket to socket.
//!
//! Read-ahead is for a few downloads: with many at once the store is kept busy by them all, and
//! each download then holds one range and a short queue, so memory stays bounded.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::client::Client;
use super::{range_get, splice};
use crate::storage::{ObjectReader, SpliceFuture, shrank};

/// Bytes asked for per GET. Measured on a 3-node Garage (plain HTTP through a replica,
/// alternating, 6 tries): 32 MiB ranges went 443-484 MiB/s against 417-488 MiB/s with 16 MiB
/// ones, with less of Garage's CPU (fewer requests); 64 MiB ones were slower.
pub(super) const RANGE_BYTES: u64 = 32 << 20;

/// How far a download reads ahead.
#[derive(Clone, Copy)]
pub(super) struct ReadAhead {
    /// GETs in flight: the one being read and those after it.
    pub(super) ranges: usize,
    /// Bytes per piece a range's body is read in (one wake-up of the reader each).
    piece: usize,
    /// Pieces queued per range.
    pieces: usize,
}

/// While at most [`FEW_READS`] reads run: 3 ranges with 2 MiB queued each. Measured on a
/// 3-node Garage (plain HTTP through a replica against one straight GET, alternating): 2
/// ranges gave 0.66-0.91x, 3 gave 0.81-1.18x, 4 the same as 3; 1 MiB pieces cost more CPU
/// than 128-256 KiB ones.
const FEW_READS_AHEAD: ReadAhead = ReadAhead {
    ranges: 3,
    piece: 256 << 10,
    pieces: 8,
};
/// With more reads: one range, 256 KiB queued and 128 KiB being filled (for 200 downloads,
/// 75 MiB at most).
const MANY_READS_AHEAD: ReadAhead = ReadAhead {
    ranges: 1,
    piece: 128 << 10,
    pieces: 2,
};
/// Reads in progress up to which each gets [`FEW_READS_AHEAD`].
const FEW_READS: usize = 8;

/// Reads of bucket objects in progress, across all downloads.
static READS: AtomicUsize = AtomicUsize::new(0);

/// One read of a bucket object in progress, counted in [`READS`] while it lives.
pub(super) struct ReadCount {
    /// Whether at most [`FEW_READS`] reads ran when it started: it may read ahead.
    pub(super) few: bool,
}

impl ReadCount {
    pub(super) fn start() -> ReadCount {
        let reads = READS.fetch_add(1, Ordering::Relaxed) + 1;
        ReadCount {
            few: reads <= FEW_READS,
        }
    }

    /// How far this read may read ahead.
    pub(super) fn ahead(&self) -> ReadAhead {
        if self.few {
            FEW_READS_AHEAD
        } else {
            MANY_READS_AHEAD
        }
    }
}

impl Drop for ReadCount {
    fn drop(&mut self) {
        READS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An object of the bucket, fetched as it is read.
pub struct S3Object {
    pub(super) client: Arc<Client>,
    pub(super) key: String,
    pub(super) etag: String,
    size: u64,
    flow: Mutex<Option<Flow>>,
}

impl std::fmt::Debug for S3Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Object")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A front-to-back read in progress: the bytes from `offset` on are `pending`, then what the
/// ranges in flight bring, in order; the next range to ask for starts at `asked_to`.
struct Flow {
    offset: u64,
    pending: Bytes,
    ranges: VecDeque<RangeFetch>,
    asked_to: u64,
    ahead: ReadAhead,
    _count: ReadCount,
}

/// One ranged GET streaming its body into a queue; the range ends at `end`.
struct RangeFetch {
    end: u64,
    pieces: mpsc::Receiver<io::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RangeFetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flow {
    /// Asks for ranges until as many as read-ahead allows are in flight, or the object is
    /// covered.
    fn ask_ahead(&mut self, object: &S3Object) {
        while self.ranges.len() < self.ahead.ranges && self.asked_to < object.size {
            let end = object.size.min(self.asked_to + RANGE_BYTES);
            self.ranges
                .push_back(object.fetch(self.asked_to, end, self.ahead));
            self.asked_to = end;
        }
    }

    /// Makes the next piece `pending`, or says when it has come (through `cx`).
    fn poll_next_piece(&mut self, cx: &mut Context<'_>, object: &S3Object) -> Poll<io::Result<()>> {
        loop {
            let Some(range) = self.ranges.front_mut() else {
                return Poll::Ready(Err(shrank()));
            };
            match ready!(range.pieces.poll_recv(cx)) {
                Some(Ok(piece)) => {
                    self.pending = piece;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // The queue ends after the whole range, unless its task died.
                None if self.offset + self.pending.len() as u64 != range.end => {
                    return Poll::Ready(Err(shrank()));
                }
                None => {
                    self.ranges.pop_front();
                    self.ask_ahead(object);
                }
            }
        }
    }

    /// Up to `len` bytes of the piece at hand, taken from it.
    fn take(&mut self, len: usize) -> Bytes {
        let n = len.min(self.pending.len());
        let taken = self.pending.split_to(n);
        self.offset += n as u64;
        taken
    }
}

impl S3Object {
    pub fn new(client: Arc<Client>, key: String, etag: String, size: u64) -> S3Object {
        S3Object {
            client,
            key,
            etag,
            size,
            flow: Mutex::new(None),
        }
    }

    /// A read from `offset` on, its first ranges asked for.
    fn flow_from(&self, offset: u64) -> Flow {
        let count = ReadCount::start();
        let mut flow = Flow {
            offset,
            pending: Bytes::new(),
            ranges: VecDeque::new(),
            asked_to: offset,
            ahead: count.ahead(),
            _count: count,
        };
        flow.ask_ahead(self);
        flow
    }

    /// Starts a GET of the bytes `start..end`, its body fed into a queue by a task (pieces and
    /// queue as `ahead` says). The queue ends after exactly `end - start` bytes, or with an
    /// error.
    fn fetch(&self, start: u64, end: u64, ahead: ReadAhead) -> RangeFetch {
        let (sender, pieces) = mpsc::channel(ahead.pieces);
        let client = self.client.clone();
        let key = self.key.clone();
        let etag = self.etag.clone();
        let task = self.client.spawn(async move {
            let range = start..end;
            if let Err(e) = stream_range(&client, &key, &etag, range, ahead.piece, &sender).await {
                let _ = sender.send(Err(e)).await;
            }
        });
        RangeFetch { end, pieces, task }
    }

    /// The read continuing at `offset`: the one in progress when it ends there, else a new one.
    fn flow_at<'a>(&self, flow: &'a mut Option<Flow>, offset: u64) -> &'a mut Flow {
        if flow.as_ref().is_none_or(|flow| flow.offset != offset) {
            *flow = None;
        }
        flow.get_or_insert_with(|| self.flow_from(offset))
    }
}

/// Sends the bytes `range` of `key` into `sender`, in pieces of `piece` bytes; an error when the
/// store sends fewer.
async fn stream_range(
    client: &Client,
    key: &str,
    etag: &str,
    range: std::ops::Range<u64>,
    piece: usize,
    sender: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let mut body = range_get::get_range(client, key, range.start, range.end, etag)
        .await?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{key} left the bucket while it was being read"),
            )
        })?;
    while let Some(bytes) = body.next_piece(piece).await? {
        if sender.send(Ok(bytes)).await.is_err() {
            // The reader went away: the connection, mid-body, is dropped with the task.
            return Ok(());
        }
    }
    Ok(())
}

impl ObjectReader for S3Object {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let mut guard = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        let flow = self.flow_at(&mut guard, offset);
        if flow.pending.is_empty() {
            let waited = self
                .client
                .block_on(std::future::poll_fn(|cx| flow.poll_next_piece(cx, self)));
            if let Err(e) = waited {
                *guard = None;
                return Err(e);
            }
        }
        let piece = flow.take(buf.len());
        buf[..piece.len()].copy_from_slice(&piece);
        Ok(piece.len())
    }

    /// The next piece the ranges in flight bring, when the read continues the one in
    /// progress (else a new one starts here); `cx` is woken when it comes.
    fn poll_read(
        &self,
        cx: &mut Context<'_>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if offset >= self.size || len == 0 {
            return Poll::Ready(Ok(None));
        }
        // Another reader of this object (a blocking read_at) has it: read on the blocking pool.
        let Ok(mut guard) = self.flow.try_lock() else {
            return Poll::Ready(Ok(None));
        };
        let flow = self.flow_at(&mut guard, offset);
        if flow.pending.is_empty()
            && let Err(e) = ready!(flow.poll_next_piece(cx, self))
        {
            *guard = None;
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(Some(flow.take(len))))
    }

    /// Through a pipe ([`splice::send`]) when the store is reached over plain TCP.
    fn splice_to<'a>(
        &'a self,
        socket: &'a TcpStream,
        offset: u64,
        len: u64,
        limit: Duration,
    ) -> Option<SpliceFuture<'a>> {
        if !self.client.is_plain() {
            return None;
        }
        Some(Box::pin(splice::send(self, socket, offset, len, limit)))
    }
}

/// An object held in memory (a stream file).
#[derive(Debug)]
pub struct InMemory {
    bytes: Bytes,
}

impl InMemory {
    pub fn new(bytes: Bytes) -> InMemory {
        InMemory { bytes }
    }
}

impl ObjectReader for InMemory {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.bytes.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }

    fn poll_read(
        &self,
        _cx: &mut Context<'_>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= self.bytes.len() {
            return Poll::Ready(Ok(None));
        }
        let end = start + len.min(self.bytes.len() - start);
        Poll::Ready(Ok(Some(self.bytes.slice(start..end))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_objects_read_by_offset() {
        let object = InMemory::new(Bytes::from_static(b"hello"));
        let mut buf = [0u8; 3];
        assert_eq!(object.read_at(&mut buf, 3).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(object.read_at(&mut buf, 5).unwrap(), 0);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(Some(bytes))) = object.poll_read(&mut cx, 1, 2) else {
            panic!("an object in memory is always ready");
        };
        assert_eq!(&bytes[..], b"el");
    }
}

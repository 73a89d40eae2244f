//! Reading objects of the bucket. A download reads an object front to back in chunks; one GET
//! per chunk would cost a request (and the store's first-byte latency) each, so
//! [`S3Object`] keeps one ranged GET streaming into a small queue, fed by a task on the
//! client's runtime while the chunks before are sent on, and starts another GET only when a
//! read does not continue where the last ended (a seek).

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::client::{Client, RESPONSE_TIMEOUT};
use crate::storage::{ObjectReader, mid_line_vec, shrank};

/// Pieces of a body queued ahead of the reader (hyper's pieces are at most a few hundred
/// KiB: this bounds a download's memory to a few MiB).
const QUEUED_PIECES: usize = 8;

/// An object of the bucket, fetched as it is read.
pub struct S3Object {
    client: Arc<Client>,
    key: String,
    etag: String,
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

/// One GET in progress: the bytes from `offset` on are `pending`, then what `pieces` brings.
struct Flow {
    offset: u64,
    pending: Bytes,
    pieces: mpsc::Receiver<io::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flow {
    /// Copies what is at hand into `buf` without waiting; how many bytes.
    fn take_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut copied = 0;
        while copied < buf.len() {
            if self.pending.is_empty() {
                match self.pieces.try_recv() {
                    Ok(piece) => self.pending = piece?,
                    Err(_) => break,
                }
            }
            let n = self.pending.len().min(buf.len() - copied);
            buf[copied..copied + n].copy_from_slice(&self.pending[..n]);
            self.pending = self.pending.slice(n..);
            copied += n;
        }
        self.offset += copied as u64;
        Ok(copied)
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

    /// Starts a GET from `offset`, its body fed into a queue by a task.
    fn start(&self, offset: u64) -> io::Result<Flow> {
        let response = self
            .client
            .block_on(self.client.get_from(&self.key, offset, &self.etag))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} left the bucket while it was being read", self.key),
                )
            })?;
        let (sender, pieces) = mpsc::channel(QUEUED_PIECES);
        let mut body = response.into_body();
        let task = self.client.spawn(async move {
            loop {
                let frame = match tokio::time::timeout(RESPONSE_TIMEOUT, body.frame()).await {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(None) => return,
                    Ok(Some(Err(e))) => {
                        let _ = sender
                            .send(Err(io::Error::other(format!(
                                "reading from the object store: {e}"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => {
                        let _ = sender
                            .send(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the object store stopped sending",
                            )))
                            .await;
                        return;
                    }
                };
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                    && sender.send(Ok(data)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Flow {
            offset,
            pending: Bytes::new(),
            pieces,
            task,
        })
    }
}

impl ObjectReader for S3Object {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let buf = &mut buf[..want];
        let mut flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
        if flow.as_ref().is_none_or(|flow| flow.offset != offset) {
            *flow = None;
            *flow = Some(self.start(offset)?);
        }
        let Some(current) = flow.as_mut() else {
            return Ok(0);
        };
        loop {
            match current.take_ready(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(e) => {
                    *flow = None;
                    return Err(e);
                }
            }
            // Nothing at hand: wait for the next piece.
            match current.pieces.blocking_recv() {
                Some(Ok(piece)) => current.pending = piece,
                Some(Err(e)) => {
                    *flow = None;
                    return Err(e);
                }
                None => {
                    *flow = None;
                    return Err(shrank());
                }
            }
        }
    }

    /// What the running GET has already brought, when the read continues it: the rest of
    /// one piece, in a buffer of its size.
    fn read_ready(&self, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
        let Ok(mut flow) = self.flow.try_lock() else {
            return Ok(None);
        };
        let Some(current) = flow.as_mut().filter(|flow| flow.offset == offset) else {
            return Ok(None);
        };
        if current.pending.is_empty() {
            match current.pieces.try_recv() {
                Ok(Ok(piece)) => current.pending = piece,
                Ok(Err(e)) => {
                    *flow = None;
                    return Err(e);
                }
                Err(_) => return Ok(None),
            }
        }
        let n = len.min(current.pending.len());
        let (mut buf, pad) = mid_line_vec(n);
        buf.extend_from_slice(&current.pending[..n]);
        current.pending = current.pending.slice(n..);
        current.offset += n as u64;
        Ok(Some(Bytes::from(buf).slice(pad..)))
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

    fn read_ready(&self, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= self.bytes.len() {
            return Ok(None);
        }
        let end = start + len.min(self.bytes.len() - start);
        Ok(Some(self.bytes.slice(start..end)))
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
        assert_eq!(&object.read_ready(1, 2).unwrap().unwrap()[..], b"el");
    }
}

//! Plain-HTTP downloads from the bucket with `splice(2)`: sendfile's counterpart for bytes
//! that come from the network. The store's answer goes from its socket into a pipe and from
//! the pipe into the client's socket, inside the kernel; this process never copies it (the
//! copying path cost a replica 0.58-0.70 CPU s per GiB, most of it the kernel's two copies;
//! this one 0.40-0.50).
//!
//! Ranges are asked for ahead as [`super::reader`] does, each GET on its own connection. A
//! range whose turn has not come waits in its socket's receive buffer, raised through the
//! socket's receive low mark (`SO_RCVLOWAT`; the kernel would grow the buffer only as it is
//! read) to hold the range, or half of `net.ipv4.tcp_rmem`'s maximum where that is less (3 MiB
//! with Linux's default of 6 MiB), so the store works on all of them at once. Measured on the
//! bench's Garage (tcp_rmem maximum 32 MiB): without that the ranges ahead stalled at 128 KiB
//! and a download ran at 0.81-0.94x a straight GET; with 4 MiB 0.81-1.07x, with 16 MiB
//! 0.94-1.15x. The low mark of the range being sent is
//! 256 KiB: fewer wake-ups. Only for a plain `http` endpoint: a TLS connection to the store
//! must be decrypted here.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::pipe::{SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::client::{Client, RESPONSE_TIMEOUT};
use super::range_get::{self, RawBody};
use super::reader::{RANGE_BYTES, ReadCount, S3Object};
use crate::storage::{client_stalled, shrank};

/// The pipe's size while few reads run: bytes moved per pair of calls.
const FEW_READS_PIPE: usize = 1 << 20;
/// The pipe's size with many reads at once (kernel memory each holds while it is full).
const MANY_READS_PIPE: usize = 256 << 10;

/// Sends the bytes `offset..offset + len` of `object` into `socket`; the bytes sent.
pub(super) async fn send(
    object: &S3Object,
    socket: &TcpStream,
    offset: u64,
    len: u64,
    limit: Duration,
) -> io::Result<u64> {
    let count = ReadCount::start();
    let ranges_ahead = count.ahead().ranges;
    let pipe = Pipe::new(if count.few {
        FEW_READS_PIPE
    } else {
        MANY_READS_PIPE
    })?;
    let end = offset + len;
    let mut asked_to = offset;
    let mut ranges = VecDeque::new();
    let mut sent = 0u64;
    loop {
        while ranges.len() < ranges_ahead && asked_to < end {
            let range_end = end.min(asked_to + RANGE_BYTES);
            ranges.push_back(HeadFetch::start(object, asked_to, range_end));
            asked_to = range_end;
        }
        let Some(mut next) = ranges.pop_front() else {
            return Ok(sent);
        };
        let body = (&mut next.task)
            .await
            .map_err(|e| io::Error::other(format!("reading from the object store: {e}")))??
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} left the bucket while it was being read", object.key),
                )
            })?;
        sent += pipe.relay(&object.client, body, socket, limit).await?;
    }
}

/// A ranged GET sent and its answer's head being read, by a task on the client's runtime.
struct HeadFetch {
    task: tokio::task::JoinHandle<io::Result<Option<RawBody>>>,
}

impl HeadFetch {
    fn start(object: &S3Object, start: u64, end: u64) -> HeadFetch {
        let client = object.client.clone();
        let key = object.key.clone();
        let etag = object.etag.clone();
        let task = object.client.spawn(async move {
            let body = range_get::get_range(&client, &key, start, end, &etag).await?;
            let Some(body) = body else { return Ok(None) };
            let body = body.into_raw().ok_or_else(shrank)?;
            // A socket that is not read keeps its first, small receive buffer (the kernel
            // grows it as the reader takes bytes): a high low mark grows it to hold the range.
            if let Some(tcp) = body.stream.plain_tcp() {
                set_receive_low_mark(tcp, (end - start) as usize)?;
            }
            Ok(Some(body))
        });
        HeadFetch { task }
    }
}

impl Drop for HeadFetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pipe between the store's socket and the client's, both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let (read, write) = pipe_with(flags)?;
        // Beyond /proc/sys/fs/pipe-max-size the kernel refuses: the default (64 KiB) stays.
        let size = fcntl_setpipe_size(&write, size)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Pipe { read, write, size })
    }

    /// Moves one range's body from `body`'s connection to `socket` through the pipe: the bytes
    /// read with the head first, then the rest. The connection goes back to `client` for
    /// another GET when it carried exactly the body.
    async fn relay(
        &self,
        client: &Client,
        body: RawBody,
        socket: &TcpStream,
        limit: Duration,
    ) -> io::Result<u64> {
        let RawBody {
            stream,
            early,
            left,
        } = body;
        let Some(from) = stream.plain_tcp() else {
            return Err(io::Error::other("the store's connection is not plain TCP"));
        };
        // Into the empty pipe (never refused), and out before more goes in.
        let early_len = early.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut pending = &early[..early_len];
        while !pending.is_empty() {
            let filled = rustix::io::write(&self.write, pending)?;
            pending = &pending[filled..];
            self.drain(socket, filled, limit).await?;
        }
        let mut rest = left - early_len as u64;
        let mut low_mark = 0;
        while rest > 0 {
            let filled = self.fill(from, rest, &mut low_mark).await?;
            rest -= filled as u64;
            self.drain(socket, filled, limit).await?;
        }
        // Bytes past the body would be read as the next answer's: such a connection goes.
        // The next answer's head is short: the connection is readable again from one byte.
        if early.len() as u64 <= left && set_receive_low_mark(from, 1).is_ok() {
            client.keep_idle_stream(stream);
        }
        Ok(left)
    }

    /// Moves what the store has sent, up to `rest` bytes and the pipe's size, into the
    /// (empty) pipe, waiting for it as long as a store's answer may take. `low_mark` is the
    /// socket's, set here when it must change.
    async fn fill(&self, from: &TcpStream, rest: u64, low_mark: &mut usize) -> io::Result<usize> {
        let want = rest.min(self.size as u64) as usize;
        if *low_mark != want.min(LOW_MARK) {
            *low_mark = want.min(LOW_MARK);
            set_receive_low_mark(from, *low_mark)?;
        }
        loop {
            tokio::time::timeout(RESPONSE_TIMEOUT, from.readable())
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the object store stopped sending")
                })??;
            let moved = from.try_io(Interest::READABLE, || {
                splice(from, None, &self.write, None, want, SpliceFlags::NONBLOCK)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Err(shrank()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "reading from the object store: {e}"
                    )));
                }
            }
        }
    }

    /// Moves the `filled` bytes in the pipe into `socket`.
    async fn drain(
        &self,
        socket: &TcpStream,
        mut filled: usize,
        limit: Duration,
    ) -> io::Result<()> {
        while filled > 0 {
            tokio::time::timeout(limit, socket.writable())
                .await
                .map_err(|_| client_stalled())??;
            let moved = socket.try_io(Interest::WRITABLE, || {
                splice(
                    &self.read,
                    None,
                    socket,
                    None,
                    filled,
                    SpliceFlags::NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => filled -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Bytes the store's socket holds before it is reported readable (fewer wake-ups).
const LOW_MARK: usize = 256 << 10;

/// Sets `SO_RCVLOWAT`: `socket` is readable once it holds `bytes` (or the peer closed).
fn set_receive_low_mark(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes)
        .unwrap_or(libc::c_int::MAX)
        .max(1);
    // SAFETY: a plain setsockopt on an open socket, with a pointer to a c_int and its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

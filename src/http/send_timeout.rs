//! A bound on how long a write may wait for the client, like nginx's `send_timeout`.
//!
//! hyper waits as long as a client takes to read: a client that requests a large file and
//! then stops reading would hold its connection (and its slot under the connection cap)
//! forever. [`SendTimeout`] fails a write that has made no progress for the bound, which
//! ends the connection. Reads pass through untouched: hyper's header-read timeout covers them.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::storage::client_stalled;

/// Wraps a stream so that a write stalled for `limit` fails with `TimedOut`.
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// The deadline of the current stall; one timer, reset rather than reallocated.
    deadline: Pin<Box<Sleep>>,
    /// Whether a write is stalled (the deadline is running).
    stalled: bool,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            stalled: false,
        }
    }

    /// After a write attempt: progress disarms the deadline; the first Pending arms it, and
    /// a Pending past it fails.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = false;
            return poll;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.limit;
            self.deadline.as_mut().reset(deadline);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(client_stalled())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_limit_and_progress_resets_it() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = SendTimeout::new(server, Duration::from_secs(5));
        writer.write_all(&[0u8; 1024]).await.unwrap();
        // The pipe is full and nobody reads: the next write stalls, then fails.
        let started = Instant::now();
        let err = writer.write_all(&[0u8; 10]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(64);
        let mut writer = SendTimeout::new(server, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                match client.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        writer.write_all(&[1u8; 640]).await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        assert_eq!(reader.await.unwrap(), 640);
    }
}

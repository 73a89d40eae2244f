//! Writes to a session channel that cannot hang. russh makes a write wait until the client's
//! window has room, and nothing wakes that wait when the connection ends; a client that opens
//! channels with a window of 0 (or never reads) and leaves would hold each waiting command's
//! thread forever. So every write here ends: when it is sent, when the client has taken
//! nothing for the send timeout (the channel is then given up: later writes fail at once), or
//! when the connection has ended.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelWriteHalf;
use russh::server::Msg;
use tokio_util::sync::CancellationToken;

/// Why a write did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the client went away")]
    Gone,
    #[error("the client took no output for {0} s")]
    Stalled(u64),
}

/// The write half of a session channel, every write bounded in time.
#[derive(Clone)]
pub struct ChannelWriter {
    half: Arc<ChannelWriteHalf<Msg>>,
    /// Cancelled when the connection ends.
    connection_ended: CancellationToken,
    send_timeout: Duration,
    /// Set once a write timed out: the client is not reading, later writes fail at once.
    stalled: Arc<AtomicBool>,
}

impl ChannelWriter {
    pub fn new(
        half: ChannelWriteHalf<Msg>,
        connection_ended: CancellationToken,
        send_timeout: Duration,
    ) -> Self {
        ChannelWriter {
            half: Arc::new(half),
            connection_ended,
            send_timeout,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn bounded(
        &self,
        send: impl Future<Output = Result<(), russh::Error>>,
    ) -> Result<(), SendError> {
        tokio::select! {
            () = self.connection_ended.cancelled() => Err(SendError::Gone),
            sent = tokio::time::timeout(self.send_timeout, send) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(SendError::Gone),
                Err(_) => Err(SendError::Stalled(self.send_timeout.as_secs())),
            },
        }
    }

    /// Sends `data` on stdout (`ext` None) or an extended stream (1: stderr).
    pub async fn send(&self, ext: Option<u32>, data: impl Into<Bytes>) -> Result<(), SendError> {
        if self.stalled.load(Ordering::Acquire) {
            return Err(SendError::Stalled(self.send_timeout.as_secs()));
        }
        let data = data.into();
        let sent = match ext {
            None => self.bounded(self.half.data_bytes(data)).await,
            Some(ext) => self.bounded(self.half.extended_data_bytes(ext, data)).await,
        };
        if let Err(SendError::Stalled(secs)) = sent {
            self.stalled.store(true, Ordering::Release);
            tracing::info!(
                channel = %self.half.id(),
                "gave up a channel whose client took no output for {secs} s"
            );
        }
        sent
    }

    /// Sends on stdout.
    pub async fn data(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.send(None, data).await
    }

    /// Exit status, EOF, close: how a command ends for the client. None of these waits for
    /// the window, so they are sent even after the client stopped reading.
    pub async fn finish(&self, code: u32) {
        let _ = self.bounded(self.half.exit_status(code)).await;
        let _ = self.bounded(self.half.eof()).await;
        let _ = self.bounded(self.half.close()).await;
    }

    /// A blocking [`io::Write`] on stdout (`ext` None) or stderr (`Some(1)`), for a command
    /// running on a blocking thread of `runtime`.
    pub fn blocking(&self, runtime: tokio::runtime::Handle, ext: Option<u32>) -> BlockingOutput {
        BlockingOutput {
            writer: self.clone(),
            runtime,
            ext,
        }
    }
}

/// A command's stdout or stderr: each write waits for the client, within the bounds of
/// [`ChannelWriter`]; a write that cannot go out fails as a broken pipe.
pub struct BlockingOutput {
    writer: ChannelWriter,
    runtime: tokio::runtime::Handle,
    ext: Option<u32>,
}

impl io::Write for BlockingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let data = Bytes::copy_from_slice(buf);
        self.runtime
            .block_on(self.writer.send(self.ext, data))
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

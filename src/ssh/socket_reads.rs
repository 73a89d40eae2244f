//! Reads from a connection's socket straight into the buffer russh reads a packet into.
//!
//! russh reads each packet in two exact reads: its first bytes (the length), then the rest.
//! Unbuffered, that is two recv(2) per packet; through a large buffer, one recv per many
//! packets but every byte copied once more on its way (2% of the server's CPU in an upload's
//! profile). Here a read is one readv(2) into what the caller asked for, then a spill buffer:
//! the kernel writes a packet straight into russh's buffer, and the spill catches the start
//! of the next packet, so its length read needs no recv of its own. After a large request
//! (bulk data) the spill is small, so little is copied out of it; after small ones (a stream
//! of small packets) it is large, so many of them come in one recv.

use std::io::{self, IoSliceMut};
use std::task::{Context, Poll, ready};

use tokio::io::ReadBuf;
use tokio::net::TcpStream;

/// Requests this large or larger are a packet's body, not its length.
const LENGTH_READ: usize = 64;
/// A body this large marks bulk data: the spill shrinks to [`SMALL_SPILL`].
const BULK_REQUEST: usize = 4096;
/// Spill after a bulk request: room for the next packet's first bytes.
const SMALL_SPILL: usize = 512;
/// Spill after small requests.
const LARGE_SPILL: usize = 32 << 10;

pub(super) struct SpillReads {
    spill: Box<[u8]>,
    /// Unread bytes of the spill: `spill[start..end]`.
    start: usize,
    end: usize,
    /// The last body requested was bulk data.
    bulk: bool,
}

impl Default for SpillReads {
    fn default() -> Self {
        SpillReads {
            spill: vec![0; LARGE_SPILL].into_boxed_slice(),
            start: 0,
            end: 0,
            bulk: false,
        }
    }
}

impl SpillReads {
    /// `AsyncRead::poll_read` on `socket`, which nothing else reads from.
    pub(super) fn poll_read(
        &mut self,
        socket: &TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let wanted = buf.remaining();
        if wanted == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.start < self.end {
            let n = wanted.min(self.end - self.start);
            buf.put_slice(&self.spill[self.start..self.start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        if wanted >= LENGTH_READ {
            self.bulk = wanted >= BULK_REQUEST;
        }
        let spill_len = if self.bulk { SMALL_SPILL } else { LARGE_SPILL };
        loop {
            ready!(socket.poll_read_ready(cx))?;
            let target = buf.initialize_unfilled();
            let mut slices = [
                IoSliceMut::new(target),
                IoSliceMut::new(&mut self.spill[..spill_len]),
            ];
            match socket.try_read_vectored(&mut slices) {
                Ok(n) => {
                    let to_caller = n.min(wanted);
                    buf.advance(to_caller);
                    self.start = 0;
                    self.end = n - to_caller;
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; it is cleared, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    struct Reader {
        socket: TcpStream,
        reads: SpillReads,
    }

    impl AsyncRead for Reader {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads.poll_read(&this.socket, cx, buf)
        }
    }

    /// Packets as russh frames them (a 4-byte length, then that many bytes), of sizes that
    /// move the spill between small and large, read the way russh reads them.
    #[tokio::test]
    async fn packets_arrive_whole_and_in_order_whatever_their_sizes() {
        let sizes: Vec<usize> = [5, 70_000, 3, 32_768, 100, 1, 40, 4095, 4096, 9, 200_000]
            .into_iter()
            .cycle()
            .take(200)
            .collect();
        let packets: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sent = packets.clone();
        let sender = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            // Written in pieces that split packets anywhere.
            let mut wire = Vec::new();
            for packet in &sent {
                wire.extend_from_slice(&(packet.len() as u32).to_be_bytes());
                wire.extend_from_slice(packet);
            }
            for piece in wire.chunks(12_345) {
                stream.write_all(piece).await.unwrap();
            }
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut reader = Reader {
            socket,
            reads: SpillReads::default(),
        };
        for expected in &packets {
            let mut length = [0u8; 4];
            reader.read_exact(&mut length).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
            reader.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, expected);
        }
        sender.await.unwrap();
        // Then the end of the stream.
        assert_eq!(reader.read(&mut [0u8; 16]).await.unwrap(), 0);
    }
}

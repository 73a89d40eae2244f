//! The accept loop: one task per connection, a cap on connections, and graceful shutdown.
//!
//! Like mini-redis's `server::run`, [`run`] neither binds nor watches signals: the caller
//! passes a bound listener and a shutdown token (tests bind 127.0.0.1:0).
//!
//! Each connection, in order:
//! 1. A permit from the connection cap is taken before `accept`, so at the cap new clients
//!    wait in the kernel's queue instead of costing memory here. Then the cap per address
//!    ([`ConnectionGate`]): a connection over it is closed before a byte is read, so that
//!    one address cannot take every slot and leave everyone else waiting in that queue.
//!    The connection then moves to one of the [`ConnectionThreads`] (one per core) and
//!    stays on that thread until it closes.
//! 2. Its first byte is peeked. No byte at all is normal: LXD opens and closes a connection on
//!    purpose, and a silent client is dropped at the handshake timeout. Neither is an error,
//!    so both are logged at debug level only.
//! 3. 0x16 (a TLS handshake record) goes to rustls, then hyper (h2 when ALPN chose it, else
//!    HTTP/1.1) with the [`app`](super::app) pipeline. Anything else is plain HTTP: LXD's
//!    first try for an image file, answered by [`plain`](super::plain).
//!
//! The handshake timeout is one deadline from the accept: the first byte and the TLS
//! handshake (or, in plain HTTP, the whole request head) must all arrive before it, however
//! the client spreads its bytes.
//!
//! On shutdown the listener is dropped (no new connections), idle connections close, and
//! responses in progress get `shutdown_timeout` to finish before the tasks are abandoned.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection_threads::ConnectionThreads;
use super::send_timeout::SendTimeout;
use super::{HttpState, app, plain};
use crate::limits::{ConnectionGate, GateLimits};
use crate::metrics;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// h2 connections stay open between requests; pings find the peers that vanished.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a failing `accept` (e.g. out of file descriptors) waits before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub async fn run(
    listener: TcpListener,
    threads: ConnectionThreads,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(state.settings().max_connections));
    let gate = ConnectionGate::new(GateLimits {
        // The semaphore caps the total; the gate only counts per address.
        max_connections: usize::MAX,
        max_per_address: state.settings().max_connections_per_address,
        failure_limit: 0,
        failure_window: Duration::ZERO,
    });
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an HTTPS connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let deadline = Instant::now() + state.settings().handshake_timeout;
        let slot = match gate.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Closed here, unread. Not worth a warning each: a flood would flood the log.
                metrics::record_connection_refused();
                tracing::debug!(%remote, "refused an HTTPS connection: {refusal}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let shutdown = shutdown.clone();
        threads.spawn(&connections, stream, move |stream| async move {
            handle_connection(stream, remote, deadline, state, shutdown).await;
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "waiting for open HTTPS connections to finish");
    }
    let bound = state.settings().shutdown_timeout;
    if tokio::time::timeout(bound, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            seconds = bound.as_secs(),
            "closing HTTPS connections still busy after the shutdown timeout"
        );
    }
}

/// Serves one connection; `deadline` ends the handshake (see the module's documentation).
async fn handle_connection(
    stream: TcpStream,
    remote: SocketAddr,
    deadline: Instant,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) {
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        first = tokio::time::timeout_at(deadline, first_byte(&stream)) => first,
    };
    match first {
        Err(_) => tracing::debug!(%remote, "closed a connection that sent nothing in time"),
        Ok(Ok(None)) => {
            tracing::debug!(%remote, "a client closed its connection without sending anything")
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "a connection failed before its first byte")
        }
        Ok(Ok(Some(TLS_HANDSHAKE_RECORD))) => {
            serve_tls(stream, remote, deadline, state, shutdown).await;
        }
        Ok(Ok(Some(_))) => plain::serve(stream, remote, deadline, state).await,
    }
}

/// The first byte, left in the socket; None when the client closed without sending one.
async fn first_byte(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await? {
        0 => Ok(None),
        _ => Ok(Some(byte[0])),
    }
}

async fn serve_tls(
    stream: TcpStream,
    remote: SocketAddr,
    deadline: Instant,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) {
    let handshake = tokio::time::timeout_at(deadline, state.tls.accept(stream));
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics::record_tls_handshake(false);
                // A client that does not trust the certificate says so here: worth a line,
                // but it is the client's problem, not the server's.
                tracing::info!(%remote, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics::record_tls_handshake(false);
                tracing::debug!(%remote, "closed a connection whose TLS handshake took too long");
                return;
            }
        },
    };
    metrics::record_tls_handshake(true);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request| {
        let state = service_state.clone();
        async move { Ok::<_, Infallible>(app::handle(&state, remote, request).await) }
    });
    let io = TokioIo::new(SendTimeout::new(tls, state.settings().send_timeout));
    let result = if h2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_header_list_size(plain::MAX_HEAD as u32)
            .serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.settings().handshake_timeout)
            // hyper's default is its whole read buffer (~400 KiB): a head without its end
            // would cost that much per connection and get no answer.
            .max_header_size(plain::MAX_HEAD)
            // Also the bound on response bytes queued before hyper writes them out: at its
            // default (~400 KiB) a download holds two body frames per connection at once.
            .max_buf_size(2 * plain::MAX_HEAD)
            .serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    if let Err(e) = result {
        // Clients that hang up mid-download, reset connections, time out: all theirs.
        tracing::debug!(%remote, error = %e, "HTTPS connection ended with an error");
    }
}

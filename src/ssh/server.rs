//! The accept loop. It takes a bound listener and a shutdown token from the caller (tests
//! bind 127.0.0.1:0), and for each connection, in order:
//! 1. asks the [`ConnectionGate`] (caps in all and per address, throttled addresses) before
//!    a single byte is exchanged;
//! 2. sets TCP_NODELAY and runs russh over a stream the loop can cut at any moment;
//! 3. cuts the connection when it has not authenticated within the login grace time;
//! 4. on shutdown, says goodbye (SSH disconnect) and cuts what is still open shortly after;
//! 5. when it ends without authenticating, counts a failure for its address: a failed key,
//!    but also a key exchange that led nowhere (each one costs the server CPU);
//! 6. when it ends, cancels what its channels still run ([`SshSession`]'s tasks).
//!
//! Only key exchanges that cost the server little are offered ([`KEX_ALGORITHMS`]), and only
//! SHA-2 signatures ([`KEY_ALGORITHMS`]).
//!
//! A connection's errors stay in its own task; they never reach this loop. Refused
//! connections are audited, but a flood of them is not a flood of audit lines: an address's
//! first refusal gets its line at once, the ones after it are counted and written as one line
//! a minute ([`RefusalTally`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::server::Handle;
use russh::{Disconnect, MethodKind, MethodSet, Preferred, SshId, cipher, kex};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::Gateway;
use super::session::{ConnectionState, SshSession};
use super::socket_reads::SpillReads;
use crate::limits::{ConnectionGate, ConnectionPermit, GateLimits};

/// How long a connection has to leave after the server said goodbye.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);
/// How long `serve` waits for connections to end at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Constant time every rejected authentication takes (russh pads to it).
const AUTH_REJECTION_TIME: Duration = Duration::from_millis(250);
/// How often counted connection refusals are written to the audit log.
const REFUSAL_TALLY_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses tallied one by one; refusals from more addresses within one interval share a line.
const REFUSAL_TALLY_ADDRESSES: usize = 4096;

/// Key exchanges offered: the two that cost well under a millisecond of CPU (the classic
/// Diffie-Hellman groups cost up to a second each, and one client looping on them stalled
/// every login), then the markers for RFC 8308 extensions and strict key exchange (Terrapin).
pub const KEX_ALGORITHMS: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Host key and user signature algorithms: `ssh-rsa` (SHA-1) is left out, so RSA keys sign
/// with rsa-sha2-512 or rsa-sha2-256 (OpenSSH 7.2 and later). The user side is enforced in
/// [`SshSession`]; this list is also what `server-sig-algs` advertises.
pub const KEY_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// The russh settings from our configuration: public keys only, AES-GCM offered first, cheap
/// key exchanges and SHA-2 signatures only, no wait for OpenSSH's initial "none" probe,
/// TCP_NODELAY.
pub fn russh_config(gateway: &Gateway) -> anyhow::Result<russh::server::Config> {
    let config = gateway.config();
    let ssh = &config.ssh;
    let mut ciphers = Vec::new();
    for name in &ssh.ciphers {
        let cipher = cipher::Name::try_from(name.as_str())
            .ok()
            .filter(|c| !matches!(c.as_ref(), "none" | "clear"));
        match cipher {
            Some(cipher) => ciphers.push(cipher),
            None => bail!(
                "ssh.ciphers: {name:?} is not a cipher this server offers; use aes128-gcm@openssh.com, aes256-gcm@openssh.com, chacha20-poly1305@openssh.com or aes128-ctr/aes192-ctr/aes256-ctr"
            ),
        }
    }
    if ciphers.is_empty() {
        bail!("ssh.ciphers is empty; list at least one, e.g. aes128-gcm@openssh.com");
    }
    Ok(russh::server::Config {
        server_id: SshId::Standard(Cow::Owned(format!(
            "SSH-2.0-simplestream-server_{}",
            env!("CARGO_PKG_VERSION")
        ))),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: AUTH_REJECTION_TIME,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: gateway.host_keys.clone(),
        max_auth_attempts: ssh.max_auth_attempts,
        inactivity_timeout: Some(Duration::from_secs(ssh.idle_timeout_secs.max(1))),
        nodelay: true,
        preferred: Preferred {
            kex: Cow::Borrowed(KEX_ALGORITHMS),
            key: Cow::Borrowed(KEY_ALGORITHMS),
            cipher: Cow::Owned(ciphers),
            ..Preferred::default()
        },
        ..russh::server::Config::default()
    })
}

/// Runs [`run`] on a thread of its own, with a single-threaded runtime: a connection's
/// session loop and its SFTP or scp task then trade packets without crossing threads
/// (measured: 11% less CPU per GiB uploaded than on the shared multi-threaded runtime).
/// The heavy work leaves that thread anyway: hashing and disk writes go to the upload
/// writer threads, commands to the blocking pool. The returned future ends with the server.
pub fn spawn(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>>> {
    let listener = listener
        .into_std()
        .context("cannot hand the SSH listener to its thread")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ssh".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the SSH runtime")
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)
                            .context("cannot register the SSH listener")?;
                        run(listener, gateway, shutdown).await
                    })
                });
            let _ = done_tx.send(result);
        })
        .context("cannot start the SSH thread")?;
    Ok(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the SSH thread ended unexpectedly")))
    })
}

/// Serves SSH on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(russh_config(&gateway)?);
    let settings = gateway.config();
    let ssh = &settings.ssh;
    let gate = ConnectionGate::new(GateLimits {
        max_connections: ssh.max_connections,
        max_per_address: ssh.max_connections_per_address,
        failure_limit: ssh.failed_auth_limit,
        failure_window: Duration::from_secs(ssh.failed_auth_window_secs),
    });
    let grace = Duration::from_secs(ssh.login_grace_secs.max(1));
    let mut connections = JoinSet::new();
    let mut refusals = RefusalTally::default();
    let mut tally_tick = tokio::time::interval_at(
        Instant::now() + REFUSAL_TALLY_INTERVAL,
        REFUSAL_TALLY_INTERVAL,
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = tally_tick.tick() => refusals.flush(&gateway),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "cannot accept an SSH connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let permit = match gate.admit(peer.ip()) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        refusals.refused(&gateway, peer.ip(), refusal.to_string());
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(Connection {
                    stream,
                    peer,
                    gateway: gateway.clone(),
                    config: config.clone(),
                    gate: gate.clone(),
                    permit,
                    grace,
                    shutdown: shutdown.clone(),
                }));
            }
        }
    }
    drop(listener);
    refusals.flush(&gateway);
    if tokio::time::timeout(SHUTDOWN_WAIT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
    Ok(())
}

/// Connection refusals not yet written to the audit log, by address.
#[derive(Default)]
struct RefusalTally {
    /// Addresses refused since the last flush: the refusals after their first, and the
    /// latest reason.
    pending: HashMap<IpAddr, (u64, String)>,
    /// Refusals of addresses past [`REFUSAL_TALLY_ADDRESSES`].
    others: u64,
}

impl RefusalTally {
    /// A refused connection: audited at once when it is its address's first since the last
    /// flush, else counted.
    fn refused(&mut self, gateway: &Gateway, address: IpAddr, reason: String) {
        let address = address.to_canonical();
        if let Some((count, latest)) = self.pending.get_mut(&address) {
            *count += 1;
            *latest = reason;
            return;
        }
        if self.pending.len() >= REFUSAL_TALLY_ADDRESSES {
            self.others += 1;
            return;
        }
        tracing::warn!(%address, "refused an SSH connection: {reason}");
        gateway.audit.record(
            "connection_refused",
            json!({"address": address.to_string(), "reason": reason, "connections": 1}),
        );
        self.pending.insert(address, (0, String::new()));
    }

    /// Writes one line per address for the refusals counted since its first.
    fn flush(&mut self, gateway: &Gateway) {
        for (address, (count, reason)) in self.pending.drain() {
            if count > 0 {
                tracing::warn!(%address, count, "refused more SSH connections: {reason}");
                gateway.audit.record(
                    "connection_refused",
                    json!({"address": address.to_string(), "reason": reason, "connections": count}),
                );
            }
        }
        if self.others > 0 {
            gateway.audit.record(
                "connection_refused",
                json!({
                    "address": "*",
                    "reason": format!("refused from more than {REFUSAL_TALLY_ADDRESSES} addresses within a minute"),
                    "connections": std::mem::take(&mut self.others),
                }),
            );
        }
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    config: Arc<russh::server::Config>,
    gate: Arc<ConnectionGate>,
    permit: ConnectionPermit,
    grace: Duration,
    shutdown: CancellationToken,
}

async fn serve_connection(connection: Connection) {
    let Connection {
        stream,
        peer,
        gateway,
        config,
        gate,
        permit,
        grace,
        shutdown,
    } = connection;
    let cut = CancellationToken::new();
    // Whatever way this function ends (even aborted at shutdown), the channels' tasks learn it.
    let connection_ended = CancellationToken::new();
    let _end_channel_tasks = connection_ended.clone().drop_guard();
    let stream = CuttableStream::new(stream, cut.clone());
    let state = Arc::new(ConnectionState::default());
    let handler = SshSession::new(gateway.clone(), peer, state.clone(), connection_ended);
    let login_deadline = Instant::now() + grace;

    let started = tokio::time::timeout_at(
        login_deadline,
        russh::server::run_stream(config, stream, handler),
    )
    .await;
    let session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "SSH handshake failed");
            gate.record_failure(peer.ip());
            return;
        }
        Err(_) => {
            cut.cancel();
            login_timed_out(&gateway, &gate, peer);
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let mut awaiting_login = true;
    let mut timed_out = false;
    let mut cut_at: Option<Instant> = None;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "SSH connection ended with an error");
                    audit_negotiation_failure(&gateway, peer, &e);
                }
                break;
            }
            () = tokio::time::sleep_until(login_deadline), if awaiting_login => {
                awaiting_login = false;
                if !state.authenticated() {
                    timed_out = true;
                    login_timed_out(&gateway, &gate, peer);
                    say_goodbye(&handle, "login grace time exceeded").await;
                    cut.cancel();
                }
            }
            () = shutdown.cancelled(), if cut_at.is_none() => {
                say_goodbye(&handle, "the server is shutting down").await;
                cut_at = Some(Instant::now() + GOODBYE_GRACE);
            }
            () = sleep_until_option(cut_at) => {
                cut.cancel();
            }
        }
    }
    // Timed-out logins were counted when cut.
    if !state.authenticated() && !timed_out {
        gate.record_failure(peer.ip());
    }
    drop(permit);
}

/// A client that shares no algorithm with the server (say, an old one that offers only the
/// Diffie-Hellman groups): its client prints what the server offers; the audit log says who.
fn audit_negotiation_failure(gateway: &Gateway, peer: SocketAddr, error: &anyhow::Error) {
    if let Some(russh::Error::NoCommonAlgo { kind, ours, theirs }) = error.downcast_ref() {
        let kind = match kind {
            russh::AlgorithmKind::Kex => "key exchange",
            russh::AlgorithmKind::Key => "host key algorithm",
            russh::AlgorithmKind::Cipher => "cipher",
            russh::AlgorithmKind::Compression => "compression",
            russh::AlgorithmKind::Mac => "MAC",
        };
        gateway.audit.refused(
            "-",
            peer.ip(),
            &format!("{kind}: {}", theirs.join(",")),
            &format!(
                "the client offers no {kind} this server takes; it takes {}",
                ours.join(",")
            ),
        );
    }
}

fn login_timed_out(gateway: &Gateway, gate: &ConnectionGate, peer: SocketAddr) {
    tracing::info!(peer = %peer, "closed a connection that did not log in within the grace time");
    gateway
        .audit
        .record("login_timeout", json!({"address": peer.ip().to_string()}));
    gate.record_failure(peer.ip());
}

async fn say_goodbye(handle: &Handle, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        handle.disconnect(Disconnect::ByApplication, reason.into(), "en".into()),
    )
    .await;
}

async fn sleep_until_option(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A TCP stream that fails every read and write once its token is cancelled: how the accept
/// loop ends a connection russh is still running, whatever state the client left it in.
struct CuttableStream {
    inner: TcpStream,
    /// Reads go through here: one recv per packet, straight into russh's buffer.
    reads: SpillReads,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    is_cut: bool,
}

impl CuttableStream {
    fn new(inner: TcpStream, token: CancellationToken) -> Self {
        CuttableStream {
            inner,
            reads: SpillReads::default(),
            cut: Box::pin(token.cancelled_owned()),
            is_cut: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        self.is_cut
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the server closed the connection",
    )
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        this.reads.poll_read(&this.inner, cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.check(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Binds the configured address; a clear message when it is taken.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen for SSH on {address}; is another server using it? (--ssh-listen changes it)")
    })
}

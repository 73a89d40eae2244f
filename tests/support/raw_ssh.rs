//! A scripted SSH client (russh's) for what OpenSSH's clients never send: password and
//! keyboard-interactive requests that reach the server, SFTP requests with any name (NUL,
//! backslash, 2,000 bytes), agent and X11 requests without an agent or a display, and
//! connections from a chosen loopback address. Every step runs under a deadline.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate, load_secret_key};
use russh::{ChannelMsg, client::Msg};
use russh_sftp::client::RawSftpSession;

use super::net::connect_from;
use super::ssh::Key;

/// How long one step may take.
pub const STEP: Duration = Duration::from_secs(20);

/// Accepts any host key: the server is the one the test started.
pub struct AcceptAnyHost;

impl client::Handler for AcceptAnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

pub type Session = Handle<AcceptAnyHost>;

/// Runs `future` under [`STEP`]; a hung server fails the test.
pub async fn step<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// Connects from `from` and exchanges keys; no authentication yet.
pub async fn connect(server: SocketAddr, from: IpAddr) -> Result<Session, russh::Error> {
    connect_with(server, from, client::Config::default()).await
}

/// [`connect`] with client settings of the test's choosing (a window of 0, say).
pub async fn connect_with(
    server: SocketAddr,
    from: IpAddr,
    config: client::Config,
) -> Result<Session, russh::Error> {
    let stream = connect_from(from, server).await?;
    let _ = stream.set_nodelay(true);
    client::connect_stream(Arc::new(config), stream, AcceptAnyHost).await
}

/// Connects from `from` and logs in with `key`.
pub async fn login(server: SocketAddr, from: IpAddr, key: &Key) -> Session {
    login_with(server, from, key, client::Config::default()).await
}

/// [`login`] with client settings of the test's choosing.
pub async fn login_with(
    server: SocketAddr,
    from: IpAddr,
    key: &Key,
    config: client::Config,
) -> Session {
    let mut session = step("connect", connect_with(server, from, config))
        .await
        .expect("connect");
    let private = load_secret_key(&key.private, None).expect("load the private key");
    let result = step(
        "public-key authentication",
        session.authenticate_publickey(
            "upload",
            PrivateKeyWithHashAlg::new(Arc::new(private), None),
        ),
    )
    .await
    .expect("authenticate");
    assert!(
        matches!(result, AuthResult::Success),
        "{} was not let in: {result:?}",
        key.comment
    );
    session
}

/// What a command sent back.
#[derive(Debug, Default)]
pub struct Finished {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads a channel to its end.
pub async fn finish(channel: &mut russh::Channel<Msg>) -> Finished {
    let mut finished = Finished::default();
    step("the end of the channel", async {
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => finished.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => finished.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => finished.status = Some(exit_status),
                _ => {}
            }
        }
    })
    .await;
    finished
}

/// Runs `command` (exactly these bytes) and, when given, feeds `input` then EOF.
pub async fn exec(session: &Session, command: &[u8], input: Option<&[u8]>) -> Finished {
    let mut channel = step("open a session channel", session.channel_open_session())
        .await
        .expect("session channel");
    step("exec", channel.exec(true, command.to_vec()))
        .await
        .expect("exec");
    if let Some(input) = input {
        step("send stdin", channel.data_bytes(input.to_vec()))
            .await
            .expect("stdin");
        step("send EOF", channel.eof()).await.expect("eof");
    }
    finish(&mut channel).await
}

/// An SFTP session on a new channel, initialised.
pub async fn sftp(session: &Session) -> RawSftpSession {
    let channel = step("open a session channel", session.channel_open_session())
        .await
        .expect("session channel");
    step(
        "the sftp subsystem",
        channel.request_subsystem(true, "sftp"),
    )
    .await
    .expect("subsystem");
    let sftp = RawSftpSession::new(channel.into_stream());
    sftp.set_timeout(STEP.as_secs());
    step("SFTP init", sftp.init()).await.expect("SFTP init");
    sftp
}

//! One connection's russh handler: who the client is, and what it may ask for.
//!
//! Authentication is public key only. [`Handler::auth_publickey_offered`] only says whether a
//! key *would* be accepted (so the client bothers to sign); the identity is bound in
//! [`Handler::auth_publickey`], which russh calls after verifying the signature. Binding it at
//! the offer would let a client offer the admin's public key and then sign with its own
//! (soft-serve GHSA-pchf-49fh-w34r).
//!
//! Everything but `exec` and the `sftp` subsystem is refused with a message the OpenSSH
//! client shows, and each refusal is audited ([`Audit::refused`], one by one up to a budget).
//! Accepted requests run in tasks of their own, never on the connection task; each holds one
//! of the connection's [`MAX_CHANNELS`] channel slots until it ends, and learns when the
//! connection ends, so that its writes stop waiting for a client that is gone.
//!
//! A connection that never authenticates gets one audit line (`auth`, `failure`) listing its
//! attempts, the "none" probe of a client with no usable method included; keys it offered
//! but never signed for (probing which keys the server knows) are listed with it, and in
//! the success line of a connection that then logged in with another key.
//!
//! [`Audit::refused`]: super::audit::Audit::refused

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::keys::{Algorithm, HashAlg, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::audit::{RefusalBudget, clip};
use crate::access::authorized_keys::Refusal;
use crate::access::{Caller, Identity, Role};

/// Session channels one connection may have at once: opened and waiting for a request, or
/// running one (a command, scp, SFTP) until it ends.
pub const MAX_CHANNELS: usize = 8;

/// What the accept loop learns about a connection: whether it authenticated (a connection
/// that ends without counts as a failure, for throttling).
#[derive(Debug, Default)]
pub struct ConnectionState {
    authenticated: AtomicBool,
}

impl ConnectionState {
    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }
}

/// The russh handler of one connection.
pub struct SshSession {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    state: Arc<ConnectionState>,
    caller: Option<Caller>,
    /// Opened channels not yet running a request, each with its slot.
    channels: HashMap<ChannelId, (Channel<Msg>, OwnedSemaphorePermit)>,
    /// [`MAX_CHANNELS`] slots, held by open channels and the tasks running their requests.
    channel_slots: Arc<Semaphore>,
    /// Cancelled when the connection ends: the channel tasks stop waiting for the client.
    connection_ended: CancellationToken,
    refusals: RefusalBudget,
    /// Failed attempts, for the one audit line a failed connection gets.
    attempts: Vec<serde_json::Value>,
    /// Fingerprints of keys the server said it would accept, not yet signed for.
    offered: Vec<String>,
}

/// Attempts and offered keys kept for the audit line of one connection.
const MAX_ATTEMPTS_KEPT: usize = 16;

fn publickey_only() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey][..])
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(publickey_only()),
        partial_success: false,
    }
}

impl SshSession {
    /// `connection_ended` is cancelled by the accept loop when the connection ends.
    pub fn new(
        gateway: Arc<Gateway>,
        peer: SocketAddr,
        state: Arc<ConnectionState>,
        connection_ended: CancellationToken,
    ) -> Self {
        SshSession {
            gateway,
            peer,
            state,
            caller: None,
            channels: HashMap::new(),
            channel_slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
            connection_ended,
            refusals: RefusalBudget::new("ssh"),
            attempts: Vec::new(),
            offered: Vec::new(),
        }
    }

    /// A refused authentication attempt, kept for the audit line.
    fn failed(&mut self, method: &str, login: &str, key: Option<&PublicKey>, reason: &str) {
        tracing::debug!(peer = %self.peer, method, reason, "authentication attempt refused");
        self.note_attempt(method, login, key, reason);
    }

    fn note_attempt(&mut self, method: &str, login: &str, key: Option<&PublicKey>, reason: &str) {
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            return;
        }
        // A key listed in authorized_keys (expired, or from the wrong address) names its user.
        let user = key.and_then(|key| self.gateway.keys.current().name_of(key).map(str::to_string));
        self.attempts.push(json!({
            "method": method,
            "login": clip(login),
            "key": key.map(|k| k.fingerprint(HashAlg::Sha256).to_string()),
            "user": user,
            "reason": reason,
        }));
    }

    fn user_name(&self) -> String {
        self.caller
            .as_ref()
            .map(Caller::name)
            .unwrap_or_else(|| "-".into())
    }

    fn audit_refusal(&mut self, what: &str, reason: &str) {
        let user = self.user_name();
        self.refusals
            .refused(&self.gateway.audit, &user, self.peer.ip(), what, reason);
    }

    /// Runs a channel's request in a task of its own, which holds the channel's slot until
    /// it ends.
    fn spawn_channel_task(
        &self,
        slot: OwnedSemaphorePermit,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        tokio::spawn(async move {
            task.await;
            drop(slot);
        });
    }

    /// Answers a request on a session channel with a message on stderr and exit status 1,
    /// then closes the channel: what the client prints is the message.
    fn refuse_on_channel(&mut self, channel: ChannelId, session: &mut Session, message: &str) {
        self.channels.remove(&channel);
        let line = format!("simplestream-server: {message}\n");
        let _ = session.channel_success(channel);
        let _ = session.extended_data(channel, 1, line.into_bytes());
        let _ = session.exit_status_request(channel, 1);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        let user = self.user_name();
        self.refusals
            .close(&self.gateway.audit, &user, self.peer.ip());
        if self.caller.is_none() && (!self.attempts.is_empty() || !self.offered.is_empty()) {
            self.gateway.audit.record(
                "auth",
                json!({
                    "result": "failure",
                    "address": self.peer.ip().to_canonical().to_string(),
                    "attempts": self.attempts,
                    "offered_unsigned": self.offered,
                }),
            );
        }
    }
}

impl Handler for SshSession {
    type Error = anyhow::Error;

    /// Every client's first probe. Not a failure (it does not count for throttling), but
    /// a connection that gets no further is audited with it.
    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.note_attempt(
            "none",
            user,
            None,
            "this server takes public keys only; use a key listed in authorized_keys",
        );
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.failed(
            "password",
            user,
            None,
            "password authentication is disabled; use a key listed in authorized_keys",
        );
        Ok(reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.failed(
            "keyboard-interactive",
            user,
            None,
            "keyboard-interactive authentication is disabled; use a key listed in authorized_keys",
        );
        Ok(reject())
    }

    /// Only says whether the key would do; binds nothing.
    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Err(reason) = check_signature_algorithm(offer.algorithm) {
            self.failed("publickey", user, Some(offer.public_key), reason);
            return Ok(reject());
        }
        let keys = self.gateway.keys.current();
        match keys.find(offer.public_key, self.peer.ip(), crate::catalog::unix_now()) {
            Ok(entry) => {
                if self.offered.len() < MAX_ATTEMPTS_KEPT
                    && !self.offered.contains(&entry.fingerprint)
                {
                    self.offered.push(entry.fingerprint.clone());
                }
                Ok(Auth::Accept)
            }
            Err(refusal) => {
                self.failed(
                    "publickey",
                    user,
                    Some(offer.public_key),
                    &refusal.to_string(),
                );
                Ok(reject())
            }
        }
    }

    /// The signature is verified: this is who the client is.
    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Err(reason) = check_signature_algorithm(key.algorithm) {
            self.failed("publickey", user, Some(key.public_key), reason);
            return Ok(reject());
        }
        let keys = self.gateway.keys.current();
        let entry = match keys.find(key.public_key, self.peer.ip(), crate::catalog::unix_now()) {
            Ok(entry) => entry,
            Err(refusal) => {
                // The file changed between offer and signature.
                let reason = match refusal {
                    Refusal::Unknown => "the key was removed from authorized_keys".to_string(),
                    other => other.to_string(),
                };
                self.failed("publickey", user, Some(key.public_key), &reason);
                return Ok(reject());
            }
        };
        let identity = Identity {
            name: entry.name.clone(),
            role: entry.role,
            key_fingerprint: entry.fingerprint.clone(),
        };
        self.offered
            .retain(|offered| *offered != identity.key_fingerprint);
        let upload_area = self.gateway.upload_area(&identity.name);
        if identity.role.allows(Role::Publisher)
            && let Err(e) = upload_area.ensure_exists()
        {
            tracing::warn!(user = identity.name, error = %e, "cannot create the upload area");
        }
        self.gateway.audit.record(
            "auth",
            json!({
                "result": "success",
                "user": identity.name,
                "role": identity.role.as_str(),
                "key": identity.key_fingerprint,
                "address": self.peer.ip().to_canonical().to_string(),
                "login": clip(user),
                "line": entry.line,
                // Keys offered on this connection and accepted, but never signed for.
                "offered_unsigned": self.offered,
            }),
        );
        tracing::info!(user = identity.name, role = %identity.role, peer = %self.peer, "logged in");
        self.caller = Some(Caller::Remote {
            identity,
            upload_area,
        });
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.state.authenticated.store(true, Ordering::Release);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.caller.is_none() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let Ok(slot) = self.channel_slots.clone().try_acquire_owned() else {
            self.audit_refusal(
                "session channel",
                &format!(
                    "at most {MAX_CHANNELS} session channels may be open at once on one connection"
                ),
            );
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        self.channels.insert(channel.id(), (channel, slot));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Opened but never used for a request: forget it.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "X11 forwarding is not available on this server";
        self.audit_refusal("x11 channel", reason);
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "port forwarding is not available on this server";
        self.audit_refusal(
            &format!("port forwarding to {host_to_connect}:{port_to_connect}"),
            reason,
        );
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "socket forwarding is not available on this server";
        self.audit_refusal(&format!("socket forwarding to {socket_path}"), reason);
        reply.reject(prohibited(reason)).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            &format!("remote port forwarding from {address}:{port}"),
            "port forwarding is not available on this server",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            &format!("remote socket forwarding from {socket_path}"),
            "socket forwarding is not available on this server",
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.audit_refusal(
            "agent forwarding",
            "agent forwarding is not available on this server",
        );
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.audit_refusal(
            "x11 forwarding",
            "X11 forwarding is not available on this server",
        );
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The client says "PTY allocation request failed" and goes on without one.
        self.audit_refusal(
            "pty",
            "this server gives no terminal; it runs commands only",
        );
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // OpenSSH sends these without asking for a reply (SendEnv LANG LC_* is common), so
        // the refusal is silent to the client; commands run with no environment from it.
        self.audit_refusal(
            &format!("environment variable {variable_name}"),
            "commands run with the server's environment only",
        );
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "this server runs commands only, not a shell: try `ssh <host> help`";
        self.audit_refusal("shell", reason);
        self.refuse_on_channel(channel, session, reason);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(caller), Some((open, slot))) =
            (self.caller.clone(), self.channels.remove(&channel))
        else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        self.spawn_channel_task(
            slot,
            super::exec::run(
                self.gateway.clone(),
                caller,
                open,
                data.to_vec(),
                self.peer,
                self.connection_ended.clone(),
            ),
        );
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(caller) = self.caller.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if name != "sftp" {
            let reason =
                format!("there is no subsystem {name:?} here; use sftp, scp or `ssh <host> help`");
            self.audit_refusal(&format!("subsystem {name}"), &reason);
            self.refuse_on_channel(channel, session, &reason);
            return Ok(());
        }
        if let Err(denied) = caller.check("upload", Role::Publisher) {
            self.audit_refusal("subsystem sftp", &denied);
            self.refuse_on_channel(channel, session, &denied);
            return Ok(());
        }
        let Some((open, slot)) = self.channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        self.spawn_channel_task(
            slot,
            super::sftp::run(
                self.gateway.clone(),
                caller,
                open,
                self.peer.ip(),
                self.connection_ended.clone(),
            ),
        );
        Ok(())
    }
}

/// Refuses SHA-1 RSA signatures (`ssh-rsa`): RSA keys must sign with rsa-sha2-256/512.
fn check_signature_algorithm(algorithm: &Algorithm) -> Result<(), &'static str> {
    match algorithm {
        Algorithm::Rsa { hash: None } => Err(
            "ssh-rsa (SHA-1) signatures are refused; use an OpenSSH 7.2 or later client, which signs RSA keys with rsa-sha2-512, or an ed25519 key",
        ),
        _ => Ok(()),
    }
}

fn prohibited(reason: &str) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: 1,
        reason: reason.to_string(),
    }
}

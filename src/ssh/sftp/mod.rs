//! The SFTP subsystem, jailed to the caller's upload area.
//!
//! Requests are answered by [`SftpSession`], a `russh_sftp::server::Handler`. The loop that
//! feeds it is ours rather than `russh_sftp::server::run`, for three reasons: it knows when
//! the session ends (to send exit-status, EOF and close, and to drop unfinished uploads),
//! it can put a one-line reason on stderr where OpenSSH's client only prints a status code,
//! and WRITE requests skip the generic decoder: their data goes from the channel's buffers
//! straight into `pwrite` and the hasher, with no zeroed buffer and no copy per request
//! (russh-sftp's path costs about a fifth of the server's CPU in an upload).
//!
//! What OpenSSH's clients send is answered: STAT "." as a directory, OPEN/WRITE/FSETSTAT/
//! CLOSE (scp), REALPATH, OPENDIR/READDIR, REMOVE, RENAME and `posix-rename@openssh.com`,
//! MKDIR/RMDIR, `fsync@openssh.com`, `expand-path@openssh.com` (`~` is the area's root), and
//! `limits@openssh.com`, whose large write size makes scp send 255 KiB writes instead of
//! 32 KiB ones. Symbolic and hard links are refused.
//!
//! Refusals (a path out of the jail, a link, the quota, …) are audited with the request as the
//! client sent it; past `MAX_REFUSALS_AUDITED` in one session the rest are counted and
//! audited as one line when it ends, so a client cannot turn a loop of bad requests into a
//! flood of audit lines.
//!
//! # Layout
//! - [`framing`]: packets cut from channel data; WRITE headers read in place.
//! - [`handler`]: [`SftpSession`], one user's session, answering each request through their
//!   upload area.
//! - [`error`]: how a failure is answered (status, message, stderr, audit).
//! - here: the loop that feeds requests to the session and sends the replies.

mod error;
mod framing;
mod handler;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use russh_sftp::protocol::{Packet, StatusCode};
use russh_sftp::server::Handler;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::channel_writer::ChannelWriter;
use crate::access::Caller;
use error::{SftpError, ok};
use framing::{Inbox, SSH_FXP_WRITE, concat, parse_write_header, skip};
pub use handler::SftpSession;

/// Answers one request.
async fn answer(session: &mut SftpSession, mut pieces: Vec<Bytes>) -> Packet {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    if pieces.first().and_then(|p| p.first()) == Some(&SSH_FXP_WRITE) {
        let Some((id, handle, offset, data_len, header_len)) = parse_write_header(&pieces) else {
            return SftpError::from(StatusCode::BadMessage).status(0);
        };
        if header_len + data_len != total {
            return SftpError::from(StatusCode::BadMessage).status(id);
        }
        skip(&mut pieces, header_len);
        return match session.write_chunks(&handle, offset, pieces).await {
            Ok(()) => Packet::Status(ok(id)),
            Err(e) => e.status(id),
        };
    }
    let mut bytes = concat(pieces);
    let packet = match Packet::try_from(&mut bytes) {
        Ok(packet) => packet,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable SFTP request");
            return SftpError::from(StatusCode::BadMessage).status(0);
        }
    };
    let id = packet.get_request_id();
    let request = describe(&packet);
    let result: Result<Packet, SftpError> = match packet {
        Packet::Init(p) => session
            .init(p.version, p.extensions)
            .await
            .map(Packet::from),
        Packet::Open(p) => session
            .open(p.id, p.filename, p.pflags, p.attrs)
            .await
            .map(Packet::from),
        Packet::Close(p) => session.close(p.id, p.handle).await.map(Packet::from),
        Packet::Read(p) => session
            .read(p.id, p.handle, p.offset, p.len)
            .await
            .map(Packet::from),
        Packet::Write(p) => session
            .write(p.id, p.handle, p.offset, p.data)
            .await
            .map(Packet::from),
        Packet::Lstat(p) => session.lstat(p.id, p.path).await.map(Packet::from),
        Packet::Fstat(p) => session.fstat(p.id, p.handle).await.map(Packet::from),
        Packet::SetStat(p) => session
            .setstat(p.id, p.path, p.attrs)
            .await
            .map(Packet::from),
        Packet::FSetStat(p) => session
            .fsetstat(p.id, p.handle, p.attrs)
            .await
            .map(Packet::from),
        Packet::OpenDir(p) => session.opendir(p.id, p.path).await.map(Packet::from),
        Packet::ReadDir(p) => session.readdir(p.id, p.handle).await.map(Packet::from),
        Packet::Remove(p) => session.remove(p.id, p.filename).await.map(Packet::from),
        Packet::MkDir(p) => session.mkdir(p.id, p.path, p.attrs).await.map(Packet::from),
        Packet::RmDir(p) => session.rmdir(p.id, p.path).await.map(Packet::from),
        Packet::RealPath(p) => session.realpath(p.id, p.path).await.map(Packet::from),
        Packet::Stat(p) => session.stat(p.id, p.path).await.map(Packet::from),
        Packet::Rename(p) => session
            .rename(p.id, p.oldpath, p.newpath)
            .await
            .map(Packet::from),
        Packet::ReadLink(p) => session.readlink(p.id, p.path).await.map(Packet::from),
        Packet::Symlink(p) => session
            .symlink(p.id, p.linkpath, p.targetpath)
            .await
            .map(Packet::from),
        Packet::Extended(p) => session.extended(p.id, p.request, p.data).await,
        _ => Err(SftpError::new(
            StatusCode::BadMessage,
            "this is not a request",
        )),
    };
    result.unwrap_or_else(|e| {
        if e.refused {
            session.audit_refusal(&request, &e.message);
        }
        e.status(id)
    })
}

/// A request as the audit log shows it: `sftp <operation> <path(s) as sent>`.
fn describe(packet: &Packet) -> String {
    let (operation, paths): (&str, Vec<&str>) = match packet {
        Packet::Open(p) => ("open", vec![&p.filename]),
        Packet::Lstat(p) => ("lstat", vec![&p.path]),
        Packet::Stat(p) => ("stat", vec![&p.path]),
        Packet::SetStat(p) => ("setstat", vec![&p.path]),
        Packet::OpenDir(p) => ("opendir", vec![&p.path]),
        Packet::Remove(p) => ("remove", vec![&p.filename]),
        Packet::MkDir(p) => ("mkdir", vec![&p.path]),
        Packet::RmDir(p) => ("rmdir", vec![&p.path]),
        Packet::RealPath(p) => ("realpath", vec![&p.path]),
        Packet::Rename(p) => ("rename", vec![&p.oldpath, &p.newpath]),
        Packet::ReadLink(p) => ("readlink", vec![&p.path]),
        Packet::Symlink(p) => ("symlink", vec![&p.linkpath, &p.targetpath]),
        Packet::Extended(p) => (p.request.as_str(), Vec::new()),
        Packet::Close(_) => ("close", Vec::new()),
        Packet::Read(_) => ("read", Vec::new()),
        Packet::Write(_) => ("write", Vec::new()),
        Packet::Fstat(_) => ("fstat", Vec::new()),
        Packet::FSetStat(_) => ("fsetstat", Vec::new()),
        Packet::ReadDir(_) => ("readdir", Vec::new()),
        _ => ("request", Vec::new()),
    };
    let mut text = format!("sftp {operation}");
    for path in paths {
        text.push(' ');
        text.push_str(&format!("{path:?}"));
    }
    text
}

/// Serves one SFTP channel of a client at `address` until the client ends it, or its
/// connection ends (`connection_ended`).
pub async fn run(
    gateway: Arc<Gateway>,
    caller: Caller,
    channel: Channel<Msg>,
    address: IpAddr,
    connection_ended: CancellationToken,
) {
    let Caller::Remote {
        identity,
        upload_area,
    } = caller
    else {
        return;
    };
    let (mut reader, half) = channel.split();
    let writer = ChannelWriter::new(half, connection_ended, gateway.send_timeout());
    let area = gateway.user_area(&identity.name, &upload_area);
    let _session_slot = match area.take_session() {
        Ok(slot) => slot,
        Err(e) => {
            gateway
                .audit
                .refused(&identity.name, address, "subsystem sftp", &e.to_string());
            tell(&writer, &e.to_string()).await;
            writer.finish(1).await;
            return;
        }
    };
    if let Err(e) = area.prepare().await {
        tracing::warn!(user = identity.name, error = %e, "cannot measure an upload area");
    }
    let mut session = SftpSession::new(gateway, identity.name, address, area);
    let mut inbox = Inbox::default();
    let mut status = 0;
    'session: loop {
        loop {
            let pieces = match inbox.next_packet() {
                Ok(Some(pieces)) => pieces,
                Ok(None) => break,
                Err(message) => {
                    tell(&writer, &message).await;
                    status = 1;
                    break 'session;
                }
            };
            let reply = answer(&mut session, pieces).await;
            let bytes = match Bytes::try_from(reply) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode an SFTP reply");
                    status = 1;
                    break 'session;
                }
            };
            if writer.data(bytes).await.is_err() {
                break 'session;
            }
            for notice in std::mem::take(&mut session.notices) {
                tell(&writer, &notice).await;
            }
        }
        match reader.wait().await {
            Some(ChannelMsg::Data { data }) => inbox.push(data),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    session.audit_counted_refusals();
    // Unfinished uploads are dropped here: their temp files go, nothing becomes visible.
    drop(session);
    writer.finish(status).await;
}

async fn tell(writer: &ChannelWriter, message: &str) {
    super::exec::send_error_line(writer, message).await;
}

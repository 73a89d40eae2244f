//! Plain HTTP on the TLS port: LXD's first try.
//!
//! For each image file LXD and Incus first ask `http://<same host:port>/<path>` in plain text
//! and use HTTPS only when that fails, so the TLS port must answer plain HTTP at once, never
//! hang. Files under `images/` are served here when `http.plain_http_images` is on (their
//! integrity comes from the sha256 in the index, which only travels over HTTPS); every other
//! request is redirected to the same path on the remote URL (`http.public_url`, else the URL
//! built from the listen address). The `Host` header is never echoed: a redirect to whatever
//! host a request names would let anyone who can put a link in front of a client send it
//! elsewhere.
//!
//! One request per connection (`Connection: close`, which is what the clients send), read
//! before the connection's handshake deadline and at most [`MAX_HEAD`] bytes. Bodies from a
//! local file go out with `sendfile(2)`: page cache to socket, no copy through this process, the
//! head corked in front of them (one segment for a small file, not a head segment and a body one).
//! A bucket's objects are spliced from the store's socket when the reader can
//! ([`crate::storage::ObjectReader::splice_to`]), else streamed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::HttpState;
use super::access_log::AccessRecord;
use super::body::ObjectStream;
use super::files::{self, Reply, ReplyBody};
use crate::metrics::Scheme;
use crate::storage::{client_stalled, shrank};

/// Largest request head accepted, in every protocol (431 beyond it).
pub(super) const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// How long the unread rest of a request is drained after the answer, so that closing does
/// not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
/// Largest count passed to one sendfile call (the kernel's own limit is just under 2 GiB).
const MAX_SENDFILE: u64 = 1 << 30;

/// A parsed request head.
struct RequestHead {
    method: Method,
    target: String,
    headers: HeaderMap,
}

enum HeadError {
    /// The client went away or sent nothing more in time: close quietly.
    Gone,
    /// Not HTTP we can answer: 400 / 431.
    Bad(StatusCode, &'static str),
}

/// Answers the one request of a connection whose head must arrive before `deadline`.
pub async fn serve(
    mut stream: TcpStream,
    remote: SocketAddr,
    deadline: tokio::time::Instant,
    state: Arc<HttpState>,
) {
    let head = match tokio::time::timeout_at(deadline, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Gone)) | Err(_) => {
            tracing::debug!(%remote, "closed a plain-HTTP connection without a complete request");
            return;
        }
        Ok(Err(HeadError::Bad(status, text))) => {
            let record = AccessRecord::new(Scheme::Http, remote, "-", "-", None);
            let reply = Reply::text(status, text);
            let sent = send(&mut stream, reply, false, state.settings().send_timeout).await;
            record.finish(status.as_u16(), *sent.as_ref().unwrap_or(&0), sent.is_ok());
            // The rest of the head is still coming: closing on it would reset the connection
            // and could destroy the answer before the client reads it.
            linger(&mut stream).await;
            return;
        }
    };
    let path = head.target.split(['?', '#']).next().unwrap_or("");
    let record = AccessRecord::new(
        Scheme::Http,
        remote,
        head.method.as_str(),
        path,
        head.headers.get(USER_AGENT).and_then(|v| v.to_str().ok()),
    );
    let reply = answer(&state, &head, path).await;
    let status = reply.status.as_u16();
    let head_only = head.method == Method::HEAD;
    let sent = send(&mut stream, reply, head_only, state.settings().send_timeout).await;
    if let Err(e) = &sent {
        tracing::debug!(%remote, error = %e, "a plain-HTTP client went away during the answer");
    }
    record.finish(status, sent.as_ref().map_or(0, |n| *n), sent.is_ok());
    linger(&mut stream).await;
}

/// Image files are served (when allowed); anything else is sent to https.
async fn answer(state: &Arc<HttpState>, head: &RequestHead, path: &str) -> Reply {
    if !path.starts_with('/') {
        return Reply::text(StatusCode::BAD_REQUEST, "send a path that starts with /\n");
    }
    let below = files::strip_base(&state.settings().base_path, path);
    let is_image = below
        .and_then(files::clean_path)
        .is_some_and(|relative| relative.starts_with("images/"));
    if state.settings().plain_http_images && is_image {
        if head.method != Method::GET && head.method != Method::HEAD {
            return Reply::method_not_allowed();
        }
        let below = below.unwrap_or(path);
        return files::respond(state, &head.method, below, &head.headers).await;
    }
    redirect_to_https(head, &state.settings().public_url)
}

/// A redirect to `target` on the remote URL's origin (the target already holds the base path).
fn redirect_to_https(head: &RequestHead, public_url: &str) -> Reply {
    let origin = crate::remote::url_origin(public_url);
    let Ok(location) = HeaderValue::from_str(&format!("{origin}{}", head.target)) else {
        return Reply::text(
            StatusCode::BAD_REQUEST,
            "the request target is not a URL path\n",
        );
    };
    let mut reply = Reply::text(
        StatusCode::MOVED_PERMANENTLY,
        "this port speaks HTTPS; use the https:// URL in Location\n",
    );
    reply.headers.insert(LOCATION, location);
    reply
}

/// Reads up to the end of the request head.
async fn read_head(stream: &mut TcpStream) -> Result<RequestHead, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut slots);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return to_head(&request),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HeadError::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the request head is too large\n",
                ));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the request has too many headers\n",
                ));
            }
            Err(_) => {
                return Err(HeadError::Bad(
                    StatusCode::BAD_REQUEST,
                    "this port speaks HTTPS (and plain HTTP/1.1 for image files)\n",
                ));
            }
        }
    }
}

fn to_head(request: &httparse::Request<'_, '_>) -> Result<RequestHead, HeadError> {
    let bad = || {
        HeadError::Bad(
            StatusCode::BAD_REQUEST,
            "the request is not valid HTTP/1.1\n",
        )
    };
    let method = request
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(bad)?;
    let target = request.path.ok_or_else(bad)?.to_string();
    let mut headers = HeaderMap::new();
    for header in request.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(RequestHead {
        method,
        target,
        headers,
    })
}

/// Writes the status line, headers and (unless `head_only`) the body, failing when the
/// client reads nothing for `limit`. Returns the body bytes sent.
async fn send(
    stream: &mut TcpStream,
    reply: Reply,
    head_only: bool,
    limit: Duration,
) -> std::io::Result<u64> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        reply.status.as_str(),
        reply.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &reply.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    let body = if head_only {
        ReplyBody::Empty
    } else {
        reply.body
    };
    match body {
        ReplyBody::Empty => {
            write_all(stream, &head, limit).await?;
            Ok(0)
        }
        ReplyBody::Bytes(bytes) => {
            head.extend_from_slice(&bytes);
            write_all(stream, &head, limit).await?;
            Ok(bytes.len() as u64)
        }
        ReplyBody::Object { reader, start, len } => {
            write_head_corked(stream, &head, limit).await?;
            if let Some(file) = reader.local_file() {
                return send_file(stream, file, start, len, limit).await;
            }
            if let Some(sending) = reader.splice_to(stream, start, len, limit) {
                return sending.await;
            }
            let body = ObjectStream::for_plain_socket(reader, start, len);
            send_stream(stream, body, limit).await
        }
    }
}

/// Writes `bytes` whole, failing when the socket accepts nothing for `limit`.
async fn write_all(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = tokio::time::timeout(limit, stream.write(bytes))
            .await
            .map_err(|_| client_stalled())??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Writes a response head with `MSG_MORE`: the kernel holds a partial segment until the body
/// that follows fills it (or is sent without `MSG_MORE`), instead of sending the head alone.
async fn write_head_corked(
    stream: &TcpStream,
    mut head: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    while !head.is_empty() {
        tokio::time::timeout(limit, stream.writable())
            .await
            .map_err(|_| client_stalled())??;
        let result = stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(stream, head, rustix::net::SendFlags::MORE)
                .map_err(std::io::Error::from)
        });
        match result {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => head = &head[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `sendfile(2)` from `file` at `start`, `len` bytes, waiting for the socket as needed.
///
/// The page cache feeds the socket directly. A file not in the page cache is read by the
/// kernel inside the call (as nginx's `sendfile on` does).
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    start: u64,
    len: u64,
    limit: Duration,
) -> std::io::Result<u64> {
    let mut offset = start;
    let mut sent = 0u64;
    while sent < len {
        tokio::time::timeout(limit, stream.writable())
            .await
            .map_err(|_| client_stalled())??;
        let count = (len - sent).min(MAX_SENDFILE) as usize;
        let result = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), count)
                .map(|n| n as u64)
                .map_err(std::io::Error::from)
        });
        match result {
            Ok(0) => return Err(shrank()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Writes a body that is not a local file (an object store's bytes) frame by frame.
async fn send_stream(
    stream: &mut TcpStream,
    mut body: ObjectStream,
    limit: Duration,
) -> std::io::Result<u64> {
    use http_body_util::BodyExt;
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            write_all(stream, &data, limit).await?;
            sent += data.len() as u64;
        }
    }
    Ok(sent)
}

/// Half-closes and drains what the client still sends, briefly, before the socket closes.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 20 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

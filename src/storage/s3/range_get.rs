//! Ranged GETs of object bytes, read from the connection into buffers of our own, without
//! hyper. hyper hands a body out as slices of its read buffer; queued ahead of the reader
//! (which [`super::reader`] does to keep several ranges in flight), each slice keeps a whole
//! buffer of up to ~400 KiB alive, and a replica's peak RSS rose to 63-75 MiB. Here each piece
//! is one buffer of the size the caller asks for, filled whole before it is handed on (fewer
//! wake-ups of the reader), its data starting mid cache line so that rustls copies it fast
//! (see [`mid_line_vec`]).

use std::io;

use bytes::{BufMut, Bytes};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{Client, RESPONSE_TIMEOUT, Stream};
use crate::storage::{mid_line_vec, shrank};

/// Largest response head accepted, and largest error body read.
const HEAD_MAX: usize = 64 * 1024;

/// The body of a ranged GET being read.
pub struct RangeBody<'a> {
    client: &'a Client,
    stream: Option<Box<dyn Stream>>,
    /// Body bytes read with the head.
    early: Bytes,
    /// Body bytes not yet handed out.
    left: u64,
}

/// Starts a GET of the bytes `start..end` of `key` (a key of the tree), when its entity tag is
/// still `etag`. `None` when the object is gone or another version.
pub async fn get_range<'a>(
    client: &'a Client,
    key: &str,
    start: u64,
    end: u64,
    etag: &str,
) -> io::Result<Option<RangeBody<'a>>> {
    let (target, host) = client.signed_get(key);
    let request = format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nuser-agent: simplestream-server\r\n\
         range: bytes={start}-{}\r\nif-match: {etag}\r\n\r\n",
        end - 1
    );
    let what = || format!("GET {} bytes {start}-{}", client.full_key(key), end - 1);
    // A kept connection the store has closed since fails here: once more on a new one.
    let answer = match client.idle_stream() {
        Some(stream) => match exchange(stream, &request).await {
            Ok(answer) => Ok(answer),
            Err(_) => exchange(client.connect_stream().await?, &request).await,
        },
        None => exchange(client.connect_stream().await?, &request).await,
    };
    let (stream, head) = answer
        .and_then(|answer| answer)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", what())))?;
    let mut body = RangeBody {
        client,
        stream: Some(stream),
        early: head.early,
        left: head.content_length.unwrap_or(0),
    };
    let sent_whole_object = start == 0 && head.content_length == Some(end);
    match head.status {
        StatusCode::PARTIAL_CONTENT if head.content_length == Some(end - start) => Ok(Some(body)),
        // A store that ignores Range sends it all: right only when that was asked for.
        StatusCode::OK if sent_whole_object => Ok(Some(body)),
        StatusCode::PARTIAL_CONTENT | StatusCode::OK => Err(io::Error::other(format!(
            "{}: the object store at {} answered {} with {}; a store that serves ranges with \
             a Content-Length (every S3 API does) is needed",
            what(),
            client.endpoint(),
            head.status,
            match head.content_length {
                Some(length) => format!("{length} bytes"),
                None => "a body of unknown length".to_string(),
            }
        ))),
        StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED => Ok(None),
        status => {
            let text = body.read_error_text(head.content_length).await;
            Err(client.refusal(&what(), status, &text))
        }
    }
}

/// A response head: its status, body length (`None`: chunked or not given) and the body bytes
/// read with it.
struct Head {
    status: StatusCode,
    content_length: Option<u64>,
    early: Bytes,
}

/// Sends `request` on `stream` and reads the response's head. The outer error is the
/// connection's (worth a try on a new one), the inner one the answer's.
async fn exchange(
    mut stream: Box<dyn Stream>,
    request: &str,
) -> io::Result<io::Result<(Box<dyn Stream>, Head)>> {
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        read_head(&mut stream).await
    })
    .await
    .unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}s", RESPONSE_TIMEOUT.as_secs()),
        ))
    });
    Ok(sent?.map(|head| (stream, head)))
}

/// Reads a response head; the outer error is the connection's, the inner one the answer's.
async fn read_head(stream: &mut Box<dyn Stream>) -> io::Result<io::Result<Head>> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                return Ok(head_of(&response, &buf[head_len..]));
            }
            Ok(httparse::Status::Partial) if buf.len() < HEAD_MAX => {}
            Ok(httparse::Status::Partial) => {
                return Ok(Err(io::Error::other(
                    "the store's answer has no end of head",
                )));
            }
            Err(e) => {
                return Ok(Err(io::Error::other(format!(
                    "the store's answer is not HTTP ({e})"
                ))));
            }
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn head_of(response: &httparse::Response<'_, '_>, early: &[u8]) -> io::Result<Head> {
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| io::Error::other("the store's answer has no status"))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let content_length = match header("transfer-encoding") {
        Some(_) => None,
        None => header("content-length").and_then(|v| v.trim().parse().ok()),
    };
    Ok(Head {
        status,
        content_length,
        early: Bytes::copy_from_slice(early),
    })
}

/// A ranged GET's connection with its head read, for a caller that reads the body itself.
pub struct RawBody {
    pub stream: Box<dyn Stream>,
    /// Body bytes read with the head (past `left` when the store sent more than the body).
    pub early: Bytes,
    /// The body's length, `early` included.
    pub left: u64,
}

impl RangeBody<'_> {
    /// The connection and what is left of the body; `None` when the connection is gone.
    pub fn into_raw(self) -> Option<RawBody> {
        Some(RawBody {
            stream: self.stream?,
            early: self.early,
            left: self.left,
        })
    }

    /// The next piece of the body (`piece` bytes, fewer at its end); `None` after it, where the
    /// connection goes back to the client for the next GET.
    pub async fn next_piece(&mut self, piece: usize) -> io::Result<Option<Bytes>> {
        if self.left == 0 {
            // Bytes past the body would be read as the next answer's: such a connection goes.
            if let Some(stream) = self.stream.take()
                && self.early.is_empty()
            {
                self.client.keep_idle_stream(stream);
            }
            return Ok(None);
        }
        let len = self.left.min(piece as u64) as usize;
        let (mut buf, pad) = mid_line_vec(len);
        let early = self.early.split_to(self.early.len().min(len));
        buf.extend_from_slice(&early);
        let Some(stream) = self.stream.as_mut() else {
            return Err(shrank());
        };
        while buf.len() < pad + len {
            let want = pad + len - buf.len();
            let mut room = (&mut buf).limit(want);
            let read = tokio::time::timeout(RESPONSE_TIMEOUT, stream.read_buf(&mut room)).await;
            match read {
                Ok(Ok(0)) => {
                    self.stream = None;
                    return Err(shrank());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(io::Error::other(format!(
                        "reading from the object store: {e}"
                    )));
                }
                Err(_) => {
                    self.stream = None;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the object store stopped sending",
                    ));
                }
            }
        }
        self.left -= len as u64;
        Ok(Some(Bytes::from(buf).slice(pad..)))
    }

    /// The text of an error answer (bounded; empty when it cannot be read, and then the
    /// connection is not kept).
    async fn read_error_text(&mut self, content_length: Option<u64>) -> Vec<u8> {
        let mut text = Vec::new();
        if content_length.is_none_or(|length| length > HEAD_MAX as u64) {
            self.stream = None;
            return text;
        }
        while let Ok(Some(piece)) = self.next_piece(HEAD_MAX).await {
            text.extend_from_slice(&piece);
        }
        text
    }
}

//! Static files from `data/www`, for HTTPS and for the plain-HTTP first try alike.
//!
//! A request path becomes a file in three checks, in this order:
//! 1. [`clean_path`] decodes the path once and refuses what no published file can be named:
//!    `..` and `.` parts, empty parts, hidden names, NUL, control characters, backslashes and
//!    a `%` left after decoding (a double-encoded path). Refused paths are simply not found.
//! 2. [`open_under`] resolves the real path and requires it to lie below the canonical
//!    `www/`, so a symbolic link that leaves the tree is not found either.
//! 3. The opened handle must be a regular file: directories are never listed.
//!
//! The answer (status, headers, body source) is a [`Reply`]; each front door sends it its own
//! way: hyper streams a [`FileStream`] over TLS, the plain path uses `sendfile(2)`.

use std::fs::File;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::HttpState;
use super::cache_policy;
use super::json_cache::{self, CachedJson};
use super::preconditions::{self, Decision, Validators};

/// Bytes read per frame of a download.
const CHUNK: usize = 256 * 1024;

/// A vector holding `pad` zero bytes, with room for `len` more, such that the data appended
/// after them starts 32 bytes into a 64-byte cache line. Hand out `bytes.slice(pad..)`.
///
/// Why: rustls copies each TLS record's plaintext to 5 bytes past the start of a fresh buffer
/// before encrypting it in place. glibc 2.36 (Debian 12) makes copies of that size with
/// `rep movsb`, which on AMD Zen CPUs runs at a fifteenth of its speed when the source sits
/// earlier in its cache line than the destination: always the case for data at the start of
/// an aligned buffer. Measured here: 2.4 GB/s against 38 GB/s, a third of the CPU time of a
/// TLS download. Data that starts mid-line is copied fast. Later glibc releases avoid
/// `rep movsb` on these CPUs; until then this costs nothing and saves that third.
pub(super) fn mid_line_vec(len: usize) -> (Vec<u8>, usize) {
    let mut buf = Vec::with_capacity(len + 64);
    let pad = (32 + 64 - buf.as_ptr() as usize % 64) % 64;
    buf.resize(pad, 0);
    (buf, pad)
}

/// Where a reply's body comes from.
#[derive(Debug)]
pub enum ReplyBody {
    Empty,
    Bytes(Bytes),
    File {
        file: Arc<File>,
        start: u64,
        len: u64,
    },
}

/// A response, before a front door sends it. `headers` includes `Content-Length`.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

impl Reply {
    /// A short plain-text answer (errors, refusals).
    pub fn text(status: StatusCode, text: &'static str) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
        Reply {
            status,
            headers,
            body: ReplyBody::Bytes(Bytes::from_static(text.as_bytes())),
        }
    }

    pub fn not_found() -> Reply {
        Reply::text(StatusCode::NOT_FOUND, "not found\n")
    }

    pub fn method_not_allowed() -> Reply {
        let mut reply = Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n",
        );
        reply
            .headers
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        reply
    }

    fn internal_error() -> Reply {
        Reply::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server log says more\n",
        )
    }

    /// Drops the body, keeping the headers (a HEAD request).
    pub fn without_body(mut self) -> Reply {
        self.body = ReplyBody::Empty;
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = match self.body {
            ReplyBody::Empty => axum::body::Body::empty(),
            ReplyBody::Bytes(bytes) => axum::body::Body::from(bytes),
            ReplyBody::File { file, start, len } => {
                axum::body::Body::new(FileStream::new(file, start, len))
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// The fallback of the HTTPS pipeline: every path that is not a page is a file.
pub async fn handle(
    State(state): State<Arc<HttpState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return Reply::method_not_allowed().into_response();
    }
    match strip_base(&state.settings().base_path, uri.path()) {
        Some(path) => respond(&state, &method, path, &headers)
            .await
            .into_response(),
        None => Reply::not_found().into_response(),
    }
}

/// The part of `path` below the base path (`/lxd`), or None when it is not below it.
pub fn strip_base<'a>(base_path: &str, path: &'a str) -> Option<&'a str> {
    if base_path.is_empty() {
        return Some(path);
    }
    path.strip_prefix(base_path)
        .filter(|rest| rest.starts_with('/'))
}

/// Decodes a request path (below the base path) into a clean path relative to www/, or None
/// when no published file can have that name.
pub fn clean_path(encoded: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    let relative = decoded.strip_prefix('/')?;
    if relative.is_empty()
        || relative
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == '%' || c == '\u{fffd}')
    {
        return None;
    }
    if relative
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return None;
    }
    Some(relative.to_string())
}

/// Opens `full` for reading when its real path lies below `www` (canonical) and it is a
/// regular file. Not found, not a directory, a symlink loop or a path leaving www are all
/// `None`. Blocking.
pub fn open_under(www: &Path, full: &Path) -> io::Result<Option<File>> {
    let missing = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename
        ) || e.raw_os_error() == Some(libc::ELOOP)
    };
    let real = match std::fs::canonicalize(full) {
        Ok(real) => real,
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !real.starts_with(www) {
        return Ok(None);
    }
    // O_NONBLOCK: opening a FIFO someone left in www/ must not hang; it is refused below.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&real)
    {
        Ok(file) => file,
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Whether the client takes gzip (`gzip` or `*` with a non-zero quality).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|param| {
                let param = param.trim();
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && (name.eq_ignore_ascii_case("gzip") || name == "*")
        })
}

/// Answers GET or HEAD for the file at `encoded_path` (below the base path).
pub async fn respond(
    state: &Arc<HttpState>,
    method: &Method,
    encoded_path: &str,
    headers: &HeaderMap,
) -> Reply {
    let Some(relative) = clean_path(encoded_path) else {
        return Reply::not_found();
    };
    let reply = if json_cache::is_cacheable(&relative) {
        match cached_json(state, &relative).await {
            Ok(Some(entry)) => json_reply(&entry, &relative, method, headers).await,
            Ok(None) => file_reply(state, &relative, method, headers).await,
            Err(e) => Err(e),
        }
    } else {
        file_reply(state, &relative, method, headers).await
    };
    match reply {
        Ok(reply) if method == Method::HEAD => reply.without_body(),
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(path = %relative, error = %e, "cannot serve a file");
            Reply::internal_error()
        }
    }
}

async fn cached_json(
    state: &Arc<HttpState>,
    relative: &str,
) -> io::Result<Option<Arc<CachedJson>>> {
    if let Some(entry) = state.json.lookup(relative, &state.www.join(relative)) {
        return Ok(Some(entry));
    }
    let state = state.clone();
    let relative = relative.to_string();
    tokio::task::spawn_blocking(move || {
        let full = state.www.join(&relative);
        state
            .json
            .get(&relative, &full, || open_under(&state.www, &full))
    })
    .await
    .map_err(io::Error::other)?
}

async fn json_reply(
    entry: &Arc<CachedJson>,
    relative: &str,
    method: &Method,
    headers: &HeaderMap,
) -> io::Result<Reply> {
    // A Range applies to the stored bytes: ranged requests get them uncompressed.
    let gzip = accepts_gzip(headers) && !headers.contains_key(RANGE);
    let (validators, bytes) = if gzip {
        let compressed = entry.gzip().await?;
        (
            entry.validators.variant("gz", compressed.len() as u64),
            compressed,
        )
    } else {
        (entry.validators.clone(), entry.bytes.clone())
    };
    let mut reply = build(method, headers, relative, &validators, Source::Bytes(bytes));
    reply
        .headers
        .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip && reply.status.is_success() {
        reply
            .headers
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(reply)
}

async fn file_reply(
    state: &Arc<HttpState>,
    relative: &str,
    method: &Method,
    headers: &HeaderMap,
) -> io::Result<Reply> {
    let full = state.www.join(relative);
    let www = state.www.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let Some(file) = open_under(&www, &full)? else {
            return Ok(None);
        };
        let meta = file.metadata()?;
        Ok::<_, io::Error>(Some((file, meta)))
    })
    .await
    .map_err(io::Error::other)??;
    let Some((file, meta)) = opened else {
        return Ok(Reply::not_found());
    };
    let validators = Validators::of(&meta);
    Ok(build(
        method,
        headers,
        relative,
        &validators,
        Source::File(Arc::new(file)),
    ))
}

enum Source {
    Bytes(Bytes),
    File(Arc<File>),
}

/// Applies the preconditions and the range to one representation of a file.
fn build(
    method: &Method,
    request: &HeaderMap,
    relative: &str,
    validators: &Validators,
    source: Source,
) -> Reply {
    let mut headers = HeaderMap::new();
    let etag = HeaderValue::from_str(&validators.etag).ok();
    let last_modified = HeaderValue::from_str(&validators.last_modified_header()).ok();
    headers.insert(CACHE_CONTROL, cache_policy::cache_control(relative));
    headers.extend(etag.map(|v| (ETAG, v)));
    headers.extend(last_modified.map(|v| (LAST_MODIFIED, v)));
    let size = validators.size;
    let (status, range) = match preconditions::evaluate(method, request, validators) {
        Decision::NotModified => {
            return Reply {
                status: StatusCode::NOT_MODIFIED,
                headers,
                body: ReplyBody::Empty,
            };
        }
        Decision::PreconditionFailed => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            return Reply {
                status: StatusCode::PRECONDITION_FAILED,
                headers,
                body: ReplyBody::Empty,
            };
        }
        Decision::RangeNotSatisfiable => {
            let mut reply = Reply::text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "the requested range is not inside the file\n",
            );
            reply.headers.extend(
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .ok()
                    .map(|v| (CONTENT_RANGE, v)),
            );
            return reply;
        }
        Decision::Full => (StatusCode::OK, (0, size)),
        Decision::Partial { start, len } => {
            headers.extend(
                HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
                    .ok()
                    .map(|v| (CONTENT_RANGE, v)),
            );
            (StatusCode::PARTIAL_CONTENT, (start, len))
        }
    };
    headers.insert(CONTENT_TYPE, cache_policy::content_type(relative));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(range.1));
    let (start, len) = range;
    let body = match source {
        Source::Bytes(bytes) => {
            ReplyBody::Bytes(bytes.slice(start as usize..(start + len) as usize))
        }
        Source::File(file) => ReplyBody::File { file, start, len },
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A file region as an HTTP body, [`CHUNK`] bytes per frame.
///
/// Each chunk is first read on the async thread with `RWF_NOWAIT`, which succeeds only when
/// the data is in the page cache and never blocks: the common case costs no thread hop, and
/// the bytes are still in this core's cache when rustls encrypts them. Data that must come
/// from the disk is read on the blocking pool instead, so a slow disk never stalls the
/// runtime (nginx's `aio threads` fallback, in effect).
pub struct FileStream {
    file: Arc<File>,
    /// The next byte to read, and how many are left to read.
    offset: u64,
    remaining: u64,
    /// A read from the disk in progress on the blocking pool.
    pending: Option<(u64, JoinHandle<io::Result<Bytes>>)>,
}

impl FileStream {
    pub fn new(file: Arc<File>, start: u64, len: u64) -> FileStream {
        FileStream {
            file,
            offset: start,
            remaining: len,
            pending: None,
        }
    }

    /// Takes `len` bytes from the region and reads them on the blocking pool.
    fn read_from_disk(&mut self, len: u64) -> JoinHandle<io::Result<Bytes>> {
        let file = self.file.clone();
        let offset = self.offset;
        self.offset += len;
        self.remaining -= len;
        tokio::task::spawn_blocking(move || {
            let (mut buf, pad) = mid_line_vec(len as usize);
            buf.resize(pad + len as usize, 0);
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf[pad..], offset).map_err(
                |e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        shrank()
                    } else {
                        e
                    }
                },
            )?;
            Ok(Bytes::from(buf).slice(pad..))
        })
    }
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while it was being sent",
    )
}

/// Reads up to `len` bytes at `offset` only if they are in the page cache; None when the
/// read would have to wait for the disk (or the kernel cannot tell).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let (mut buf, pad) = mid_line_vec(len);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len.min(spare.len()),
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: the iovec points into `buf`'s spare capacity, which outlives the call; the
    // kernel writes at most `iov_len` bytes there.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Err(shrank());
    }
    // SAFETY: the kernel initialised the `n` bytes after the padding.
    unsafe { buf.set_len(pad + n as usize) };
    Ok(Some(Bytes::from(buf).slice(pad..)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_file: &File, _offset: u64, _len: usize) -> io::Result<Option<Bytes>> {
    Ok(None)
}

impl Body for FileStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.pending.is_none() {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let len = self.remaining.min(CHUNK as u64);
            match read_cached(&self.file, self.offset, len as usize) {
                Ok(Some(chunk)) => {
                    self.offset += chunk.len() as u64;
                    self.remaining -= chunk.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Ok(None) => {
                    let job = self.read_from_disk(len);
                    self.pending = Some((len, job));
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        let Some((_, job)) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(job).poll(cx));
        self.pending = None;
        let chunk = result.map_err(io::Error::other).and_then(|r| r);
        Poll::Ready(Some(chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        // A pending read's bytes were taken from `remaining` and are not yet sent.
        SizeHint::with_exact(self.remaining + self.pending.as_ref().map_or(0, |(len, _)| *len))
    }
}

impl Drop for FileStream {
    fn drop(&mut self) {
        if let Some((_, job)) = self.pending.take() {
            job.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean_path("/streams/v1/index.json").as_deref(),
            Some("streams/v1/index.json")
        );
        assert_eq!(
            clean_path("/images/a%20b/x").as_deref(),
            Some("images/a b/x")
        );
        for refused in [
            "/",
            "",
            "relative",
            "/../state/catalog.json",
            "/streams/../../x",
            "/streams/./v1/index.json",
            "/%2e%2e/state",
            "/streams/%2e%2e/%2e%2e/x",
            "/%252e%252e/state",
            "/streams%2f..%2f..%2fx",
            "/streams//v1",
            "/streams/v1/",
            "/.hidden",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "/a%00b",
            "/a%0ab",
            "/%ff",
        ] {
            assert_eq!(clean_path(refused), None, "{refused}");
        }
    }

    #[test]
    fn mid_line_buffers_start_data_32_bytes_into_a_cache_line() {
        for len in [0, 1, 5000, CHUNK] {
            let (mut buf, pad) = mid_line_vec(len);
            assert_eq!(buf.len(), pad);
            assert!(buf.capacity() >= pad + len);
            buf.extend_from_slice(&vec![7u8; len]);
            let bytes = Bytes::from(buf).slice(pad..);
            assert_eq!(bytes.len(), len);
            if len > 0 {
                assert_eq!(bytes.as_ptr() as usize % 64, 32);
            }
        }
    }

    fn pattern_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &content).unwrap();
        (file, content)
    }

    #[tokio::test]
    async fn a_file_region_streams_whole_from_the_cache_or_the_disk() {
        use http_body_util::BodyExt;
        let (file, content) = pattern_file(3 * CHUNK + 1234);
        let file = Arc::new(file.reopen().unwrap());
        let body = FileStream::new(file.clone(), 1000, 2 * CHUNK as u64 + 17);
        assert_eq!(body.size_hint().exact(), Some(2 * CHUNK as u64 + 17));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], &content[1000..1000 + 2 * CHUNK + 17]);

        // The blocking-pool path, as taken when the page cache does not hold the data.
        let mut stream = FileStream::new(file, 5, 100);
        let chunk = stream.read_from_disk(100).await.unwrap().unwrap();
        assert_eq!(&chunk[..], &content[5..105]);
        assert_eq!(chunk.as_ptr() as usize % 64, 32);
        assert_eq!(stream.remaining, 0);
    }

    #[tokio::test]
    async fn a_file_that_shrinks_mid_download_is_an_error() {
        use http_body_util::BodyExt;
        let (file, _) = pattern_file(1000);
        let handle = Arc::new(file.reopen().unwrap());
        file.as_file().set_len(10).unwrap();
        let result = FileStream::new(handle, 0, 1000).collect().await;
        assert!(result.is_err());
    }

    #[test]
    fn base_paths_are_stripped_at_a_part_boundary() {
        assert_eq!(strip_base("", "/x"), Some("/x"));
        assert_eq!(strip_base("/lxd", "/lxd/x"), Some("/x"));
        assert_eq!(strip_base("/lxd", "/lxdx/y"), None);
        assert_eq!(strip_base("/lxd", "/x"), None);
    }

    #[test]
    fn gzip_acceptance() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip"));
        assert!(accepts("br, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn symlinks_out_of_www_and_directories_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir_all(www.join("images/d")).unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::fs::write(www.join("images/f"), b"f").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), www.join("images/out")).unwrap();
        std::os::unix::fs::symlink(dir.path(), www.join("images/outdir")).unwrap();
        std::os::unix::fs::symlink(www.join("images/f"), www.join("images/in")).unwrap();
        let www = std::fs::canonicalize(&www).unwrap();
        let open = |rel: &str| open_under(&www, &www.join(rel)).unwrap().is_some();
        assert!(open("images/f"));
        assert!(open("images/in"));
        assert!(!open("images/out"));
        assert!(!open("images/outdir/secret"));
        assert!(!open("images/d"));
        assert!(!open("images/missing"));
        assert!(!open("images/f/below-a-file"));
    }
}

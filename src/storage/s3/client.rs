//! A small S3 client. rusty-s3 signs each request as a presigned URL (so no payload is hashed
//! and file bodies stream from disk) and hyper sends it over HTTP/1.1, plain or TLS, reusing
//! idle connections; the ranged GETs of downloads go on connections of their own, read
//! without hyper ([`super::range_get`]). Every method is async and runs on the client's own
//! runtime; the tree calls them with [`Client::block_on`] from blocking threads.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use super::S3Settings;

/// How long a signature stays valid: far longer than any one request waits to be sent.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a response's head, and for each piece of a body that is read whole.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Files up to this size go in one PUT; larger ones in parts of [`PART_SIZE`].
const SINGLE_PUT_MAX: u64 = 64 << 20;
const PART_SIZE: u64 = 32 << 20;
/// Bytes read from a file per body frame of an upload.
const UPLOAD_FRAME: usize = 256 * 1024;

type RequestBody = BoxBody<Bytes, io::Error>;

/// A connection to the store, plain or TLS.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The socket, when the connection is plain TCP (its bytes can then be spliced).
    fn plain_tcp(&self) -> Option<&TcpStream>;
}

impl Stream for TcpStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Stream for tokio_rustls::client::TlsStream<TcpStream> {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// A request body that can be made again (a retry on a fresh connection).
#[derive(Debug, Clone)]
pub enum Payload {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of the file at `path` from `start`.
    File {
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

impl Payload {
    fn len(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Bytes(bytes) => bytes.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }

    async fn body(&self) -> io::Result<RequestBody> {
        Ok(match self {
            Payload::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            Payload::Bytes(bytes) => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed(),
            Payload::File { path, start, len } => {
                let mut file = tokio::fs::File::open(path).await?;
                file.seek(io::SeekFrom::Start(*start)).await?;
                FileBody {
                    file: file.take(*len),
                    remaining: *len,
                    buf: bytes::BytesMut::new(),
                }
                .boxed()
            }
        })
    }
}

/// A region of a file as a request body, read a frame at a time.
struct FileBody {
    file: tokio::io::Take<tokio::fs::File>,
    remaining: u64,
    buf: bytes::BytesMut,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let this = &mut *self;
        if this.buf.capacity() < UPLOAD_FRAME {
            this.buf.reserve(UPLOAD_FRAME);
        }
        let read = std::task::ready!(tokio_util::io::poll_read_buf(
            std::pin::Pin::new(&mut this.file),
            cx,
            &mut this.buf
        ));
        std::task::Poll::Ready(Some(match read {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file shrank while it was being uploaded",
            )),
            Ok(n) => {
                this.remaining = this.remaining.saturating_sub(n as u64);
                Ok(Frame::data(this.buf.split().freeze()))
            }
            Err(e) => Err(e),
        }))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// What a store tells of an object without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// The entity tag as the store sent it, quotes included.
    pub etag: String,
    pub modified: SystemTime,
    /// The `sha256` metadata this server stores with the files it copies (`storage push`).
    pub sha256: Option<String>,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Relative to the prefix.
    pub key: String,
    pub size: u64,
}

/// A PUT's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    None,
    /// `If-None-Match: *`: only when no object is there.
    Absent,
    /// `If-Match`: only when the object there has this entity tag.
    Matches(&'a str),
}

/// What a conditional PUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Written; the new object's entity tag.
    Done(String),
    /// Refused: the condition did not hold.
    Refused,
}

pub struct Client {
    bucket: Bucket,
    credentials: Credentials,
    /// `""` or ending in `/`.
    prefix: String,
    endpoint: String,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
    /// Idle connections of ranged GETs, which are read without hyper.
    idle_streams: Mutex<Vec<Box<dyn Stream>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket.name())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The last holder may be an async task: a runtime is not dropped there by blocking.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Client {
    pub fn new(settings: &S3Settings) -> io::Result<Client> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let endpoint = Url::parse(&settings.endpoint).map_err(|e| {
            invalid(format!(
                "storage.endpoint {:?} is not a URL ({e})",
                settings.endpoint
            ))
        })?;
        let host = endpoint
            .host_str()
            .ok_or_else(|| invalid(format!("storage.endpoint {} names no host", endpoint)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = endpoint.port_or_known_default().unwrap_or(80);
        let tls = match endpoint.scheme() {
            "https" => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| invalid(format!("TLS setup failed: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            _ => None,
        };
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint.clone(),
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| {
            invalid(format!(
                "storage.bucket {:?} at {}: {e}",
                settings.bucket, settings.endpoint
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-client")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Client {
            bucket,
            credentials: Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.clone(),
            ),
            prefix: settings.key_prefix(),
            endpoint: settings.endpoint.clone(),
            host,
            port,
            tls,
            runtime: Some(runtime),
            handle,
            idle: Mutex::new(Vec::new()),
            idle_streams: Mutex::new(Vec::new()),
        })
    }

    /// Runs `future` on the client's runtime, blocking this thread (never an async one).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// Starts `future` on the client's runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    pub fn bucket_name(&self) -> &str {
        self.bucket.name()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether connections to the store are plain TCP (an `http` endpoint).
    pub(super) fn is_plain(&self) -> bool {
        self.tls.is_none()
    }

    /// The store's key for a key of the tree.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// A new connection to the store: TCP, and TLS over it for an `https` endpoint.
    pub(super) async fn connect_stream(&self) -> io::Result<Box<dyn Stream>> {
        let unreachable = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot reach the object store at {}: {e}", self.endpoint),
            )
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| unreachable(io::Error::other(e)))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| unreachable(io::ErrorKind::TimedOut.into()))?
            .map_err(unreachable)?;
        Ok(Box::new(stream))
    }

    async fn connect(&self) -> io::Result<SendRequest<RequestBody>> {
        let stream = self.connect_stream().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                io::Error::other(format!(
                    "cannot reach the object store at {}: {e}",
                    self.endpoint
                ))
            })?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// An idle connection that is still open, if there is one.
    async fn idle_connection(&self) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut sender = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(200), sender.ready()).await
            {
                return Some(sender);
            }
        }
    }

    fn keep_idle(&self, sender: SendRequest<RequestBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 16 {
            idle.push(sender);
        }
    }

    /// Sends a signed request; its response head. A request on a reused connection that the
    /// store had closed is sent again on a new one.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        payload: &Payload,
    ) -> io::Result<(Response<Incoming>, SendRequest<RequestBody>)> {
        let reused = self.idle_connection().await;
        let was_reused = reused.is_some();
        let sender = match reused {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        match self
            .send_on(sender, method.clone(), url, headers, payload)
            .await
        {
            Ok(sent) => Ok(sent),
            Err(_) if was_reused => {
                let sender = self.connect().await?;
                self.send_on(sender, method, url, headers, payload).await
            }
            Err(e) => Err(e),
        }
    }

    async fn send_on(
        &self,
        mut sender: SendRequest<RequestBody>,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        payload: &Payload,
    ) -> io::Result<(Response<Incoming>, SendRequest<RequestBody>)> {
        let (target, host) = target_and_host(url);
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "simplestream-server");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if payload.len() > 0 || matches!(payload, Payload::Bytes(_) | Payload::File { .. }) {
            request = request.header(http::header::CONTENT_LENGTH, payload.len());
        }
        let request = request
            .body(payload.body().await?)
            .map_err(io::Error::other)?;
        let store = self.endpoint.clone();
        let failed = move |e: hyper::Error| {
            io::Error::other(format!("the object store at {store} did not answer: {e}"))
        };
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the object store at {} did not answer within {}s",
                        self.endpoint,
                        RESPONSE_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(failed)?;
        Ok((response, sender))
    }

    /// Sends a request and reads the whole answer (bounded), keeping the connection.
    async fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        payload: &Payload,
    ) -> io::Result<(StatusCode, HeaderMap, Bytes)> {
        let (response, sender) = self.send(method, url, headers, payload).await?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            http_body_util::Limited::new(body, 64 << 20).collect(),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the object store stalled"))?
        .map_err(|e| io::Error::other(format!("reading the object store's answer: {e}")))?
        .to_bytes();
        self.keep_idle(sender);
        Ok((parts.status, parts.headers, body))
    }

    fn signed<'a>(&self, mut action: impl S3Action<'a>, headers: &[(String, String)]) -> Url {
        for (name, value) in headers {
            action
                .headers_mut()
                .insert(name.to_ascii_lowercase(), value.clone());
        }
        action.sign(SIGNED_FOR)
    }

    /// What the store said, as an error naming the request.
    pub(super) fn refusal(&self, what: &str, status: StatusCode, body: &[u8]) -> io::Error {
        let text = String::from_utf8_lossy(body);
        let code = xml_field(&text, "Code").unwrap_or_default();
        let message = xml_field(&text, "Message").unwrap_or_default();
        let kind = match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => io::ErrorKind::PermissionDenied,
            StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!(" ({code})"),
            (true, false) => format!(" ({message})"),
            (false, false) => format!(" ({code}: {message})"),
        };
        io::Error::new(
            kind,
            format!(
                "{what} in bucket {} at {}: the store answered {status}{detail}",
                self.bucket.name(),
                self.endpoint
            ),
        )
    }

    /// The object's metadata; `None` when there is none.
    pub async fn head(&self, key: &str) -> io::Result<Option<Head>> {
        let full = self.full_key(key);
        let url = self.signed(self.bucket.head_object(Some(&self.credentials), &full), &[]);
        let (status, headers, body) = self
            .exchange(Method::HEAD, &url, &[], &Payload::Empty)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(head_of(&headers, None))),
            status => Err(self.refusal(&format!("HEAD {full}"), status, &body)),
        }
    }

    /// The whole object (at most `limit` bytes are accepted) with its metadata.
    pub async fn get(&self, key: &str, limit: u64) -> io::Result<Option<(Head, Bytes)>> {
        let full = self.full_key(key);
        let url = self.signed(self.bucket.get_object(Some(&self.credentials), &full), &[]);
        let (response, sender) = self.send(Method::GET, &url, &[], &Payload::Empty).await?;
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let bytes = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            http_body_util::Limited::new(body, limit).collect(),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the object store stalled"))?
        .map_err(|e| io::Error::other(format!("reading {full} from the object store: {e}")))?
        .to_bytes();
        self.keep_idle(sender);
        match parts.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some((
                head_of(&parts.headers, Some(bytes.len() as u64)),
                bytes,
            ))),
            status => Err(self.refusal(&format!("GET {full}"), status, &bytes)),
        }
    }

    /// The request target and `Host` header of a signed GET of `key` (a key of the tree).
    pub(super) fn signed_get(&self, key: &str) -> (String, String) {
        let url = self.signed(
            self.bucket
                .get_object(Some(&self.credentials), &self.full_key(key)),
            &[],
        );
        target_and_host(&url)
    }

    /// An idle connection for a ranged GET ([`super::range_get`]), if one is kept.
    pub(super) fn idle_stream(&self) -> Option<Box<dyn Stream>> {
        self.idle_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
    }

    /// Keeps a connection whose last ranged GET was read to its end, for the next one.
    pub(super) fn keep_idle_stream(&self, stream: Box<dyn Stream>) {
        let mut idle = self.idle_streams.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 16 {
            idle.push(stream);
        }
    }

    /// Writes `payload` as the object `key`, under `condition`.
    pub async fn put(
        &self,
        key: &str,
        payload: &Payload,
        condition: Condition<'_>,
        sha256: Option<&str>,
    ) -> io::Result<Put> {
        let full = self.full_key(key);
        let mut headers = Vec::new();
        match condition {
            Condition::None => {}
            Condition::Absent => headers.push(("if-none-match".to_string(), "*".to_string())),
            Condition::Matches(etag) => headers.push(("if-match".to_string(), etag.to_string())),
        }
        if let Some(sha256) = sha256 {
            headers.push(("x-amz-meta-sha256".to_string(), sha256.to_string()));
        }
        let url = self.signed(
            self.bucket.put_object(Some(&self.credentials), &full),
            &headers,
        );
        let (status, response_headers, body) =
            self.exchange(Method::PUT, &url, &headers, payload).await?;
        match status {
            // 409: a conditional write that raced another (AWS's ConditionalRequestConflict).
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT
                if condition != Condition::None =>
            {
                Ok(Put::Refused)
            }
            status if status.is_success() => Ok(Put::Done(header_text(
                &response_headers,
                http::header::ETAG,
            ))),
            status => Err(self.refusal(&format!("PUT {full}"), status, &body)),
        }
    }

    /// Uploads the local file `path` as `key`: one PUT, or a multipart upload for a large
    /// file (parts streamed from the file, so memory stays bounded). `create_only`: a single
    /// PUT carries `If-None-Match: *` and an object already there is an error (for stores
    /// that honour it).
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        sha256: Option<&str>,
        create_only: bool,
    ) -> io::Result<()> {
        let len = tokio::fs::metadata(path).await?.len();
        if len <= SINGLE_PUT_MAX {
            let payload = Payload::File {
                path: path.to_path_buf(),
                start: 0,
                len,
            };
            let condition = if create_only {
                Condition::Absent
            } else {
                Condition::None
            };
            if self.put(key, &payload, condition, sha256).await? == Put::Refused {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is already in bucket {}; image keys are never overwritten",
                        self.full_key(key),
                        self.bucket.name()
                    ),
                ));
            }
            return Ok(());
        }
        let full = self.full_key(key);
        let mut headers = Vec::new();
        if let Some(sha256) = sha256 {
            headers.push(("x-amz-meta-sha256".to_string(), sha256.to_string()));
        }
        let url = self.signed(
            self.bucket
                .create_multipart_upload(Some(&self.credentials), &full),
            &headers,
        );
        let (status, _, body) = self
            .exchange(Method::POST, &url, &headers, &Payload::Empty)
            .await?;
        if !status.is_success() {
            return Err(self.refusal(&format!("starting an upload of {full}"), status, &body));
        }
        let created = rusty_s3::actions::CreateMultipartUpload::parse_response(
            &String::from_utf8_lossy(&body),
        )
        .map_err(|e| io::Error::other(format!("the store's answer to an upload start: {e}")))?;
        let upload_id = created.upload_id().to_string();
        match self.upload_parts(&full, &upload_id, path, len).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let url = self.signed(
                    self.bucket
                        .abort_multipart_upload(Some(&self.credentials), &full, &upload_id),
                    &[],
                );
                let _ = self
                    .exchange(Method::DELETE, &url, &[], &Payload::Empty)
                    .await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        full: &str,
        upload_id: &str,
        path: &Path,
        len: u64,
    ) -> io::Result<()> {
        let mut etags = Vec::new();
        let mut start = 0;
        let mut number: u16 = 1;
        while start < len {
            let part_len = PART_SIZE.min(len - start);
            let url = self.signed(
                rusty_s3::actions::UploadPart::new(
                    &self.bucket,
                    Some(&self.credentials),
                    full,
                    number,
                    upload_id,
                ),
                &[],
            );
            let payload = Payload::File {
                path: path.to_path_buf(),
                start,
                len: part_len,
            };
            let (status, headers, body) = self.exchange(Method::PUT, &url, &[], &payload).await?;
            if !status.is_success() {
                return Err(self.refusal(
                    &format!("uploading part {number} of {full}"),
                    status,
                    &body,
                ));
            }
            etags.push(header_text(&headers, http::header::ETAG));
            start += part_len;
            number = number
                .checked_add(1)
                .ok_or_else(|| io::Error::other(format!("{full} needs more than 65535 parts")))?;
        }
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            full,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let (status, _, answer) = self
            .exchange(Method::POST, &url, &[], &Payload::Bytes(Bytes::from(body)))
            .await?;
        let text = String::from_utf8_lossy(&answer);
        if !status.is_success() || text.contains("<Error>") {
            return Err(self.refusal(&format!("completing the upload of {full}"), status, &answer));
        }
        Ok(())
    }

    /// Deletes `key`; one already gone is not an error.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        let full = self.full_key(key);
        let url = self.signed(
            self.bucket.delete_object(Some(&self.credentials), &full),
            &[],
        );
        let (status, _, body) = self
            .exchange(Method::DELETE, &url, &[], &Payload::Empty)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.refusal(&format!("DELETE {full}"), status, &body))
        }
    }

    /// Every object whose key starts with `prefix` (relative to the configured prefix).
    pub async fn list(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        let full_prefix = self.full_key(prefix);
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(full_prefix.clone());
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let (status, _, body) = self
                .exchange(Method::GET, &url, &[], &Payload::Empty)
                .await?;
            if !status.is_success() {
                return Err(self.refusal(&format!("listing {full_prefix}"), status, &body));
            }
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&String::from_utf8_lossy(
                &body,
            ))
            .map_err(|e| io::Error::other(format!("the store's listing is unreadable: {e}")))?;
            for object in page.contents {
                if let Some(key) = object.key.strip_prefix(&self.prefix) {
                    found.push(Listed {
                        key: key.to_string(),
                        size: object.size.unwrap_or(0),
                    });
                }
            }
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Checks that the bucket answers with these credentials: one line saying what is wrong.
    pub async fn check_access(&self) -> Result<(), String> {
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        action.with_max_keys(1);
        action.with_prefix(self.prefix.clone());
        let url = action.sign(SIGNED_FOR);
        let (status, _, body) = self
            .exchange(Method::GET, &url, &[], &Payload::Empty)
            .await
            .map_err(|e| format!("{e}; check storage.endpoint and that the store runs"))?;
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body);
        let code = xml_field(&text, "Code").unwrap_or_default();
        let (bucket, endpoint) = (self.bucket.name(), &self.endpoint);
        Err(match (status, code.as_str()) {
            (StatusCode::NOT_FOUND, _) | (_, "NoSuchBucket") => format!(
                "the bucket {bucket} does not exist at {endpoint}; create it or fix storage.bucket"
            ),
            (StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED, _)
            | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => format!(
                "the object store at {endpoint} refused the credentials for bucket {bucket} ({status}{}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or storage.credentials_file) and the key's access to the bucket",
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" {code}")
                }
            ),
            _ => self.refusal("listing", status, &body).to_string(),
        })
    }
}

/// A signed URL's request target (path and query) and `Host` header.
fn target_and_host(url: &Url) -> (String, String) {
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    (target, host)
}

fn header_text(headers: &HeaderMap, name: http::header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn head_of(headers: &HeaderMap, size: Option<u64>) -> Head {
    let size = size.unwrap_or_else(|| {
        headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    Head {
        size,
        etag: header_text(headers, http::header::ETAG),
        modified: headers
            .get(http::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        sha256: headers
            .get("x-amz-meta-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// The text of the first `<name>` element of an S3 error body.
fn xml_field(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(text[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_code() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>Bucket not found: x</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(
            xml_field(body, "Message").as_deref(),
            Some("Bucket not found: x")
        );
        assert_eq!(xml_field(body, "Resource"), None);
    }
}

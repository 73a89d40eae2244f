//! HTTP clients for the tests: a Rust client over rustls (hyper's connection-level client, so
//! request targets go out exactly as written, `..` and `%2e` included), raw sockets for the
//! plain-HTTP first try, and `curl`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// One answer, whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: ::http::Version,
    pub headers: ::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a TLS connection negotiated.
#[derive(Debug)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
    /// The server's end-entity certificate (DER).
    pub certificate: Vec<u8>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

/// A client that trusts one certificate (PEM) and talks to one address.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    server_name: ServerName<'static>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    /// One configuration for every connection, with a session cache, when resuming (rustls
    /// resumes only sessions made under the same configuration).
    resuming: Option<Arc<rustls::ClientConfig>>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl Client {
    /// Trusts the PEM file `cert` and connects to `addr` with the server name 127.0.0.1.
    pub fn new(addr: SocketAddr, cert: &Path) -> Client {
        let pem = std::fs::read(cert).expect("read certificate");
        Self::with_pem(addr, &pem)
    }

    pub fn with_pem(addr: SocketAddr, pem: &[u8]) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.expect("PEM certificate")).expect("add root");
        }
        Client {
            addr,
            roots: Arc::new(roots),
            server_name: ServerName::try_from("127.0.0.1").expect("name"),
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![b"http/1.1".to_vec()],
            resuming: None,
        }
    }

    pub fn server_name(mut self, name: &str) -> Client {
        self.server_name = ServerName::try_from(name.to_string()).expect("server name");
        self
    }

    pub fn only(mut self, version: &'static rustls::SupportedProtocolVersion) -> Client {
        self.versions = vec![version];
        self
    }

    /// Offers h2 first (as browsers and curl do).
    pub fn h2(mut self) -> Client {
        self.alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self
    }

    /// Keeps sessions (tickets) across this client's connections, to resume them.
    pub fn resuming(mut self) -> Client {
        let mut config = Arc::unwrap_or_clone(self.config());
        config.resumption = rustls::client::Resumption::in_memory_sessions(16);
        self.resuming = Some(Arc::new(config));
        self
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        if let Some(config) = &self.resuming {
            return config.clone();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.clone();
        Arc::new(config)
    }

    pub async fn connect(
        &self,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        self.handshake_over(tcp).await
    }

    /// Connects from the loopback address `from` (see [`super::net`]).
    pub async fn connect_from(
        &self,
        from: std::net::IpAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = super::net::connect_from(from, self.addr).await?;
        self.handshake_over(tcp).await
    }

    async fn handshake_over(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        tokio_rustls::TlsConnector::from(self.config())
            .connect(self.server_name.clone(), tcp)
            .await
    }

    /// Connects, finishes the handshake, and reports what was negotiated.
    pub fn handshake(&self) -> std::io::Result<Negotiated> {
        runtime().block_on(async {
            let tls = self.connect().await?;
            let (_, connection) = tls.get_ref();
            Ok(Negotiated {
                version: connection.protocol_version().expect("version"),
                alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                certificate: connection
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .expect("peer certificate"),
                resumed: connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            })
        })
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[])
    }

    /// One request on a new connection; `target` is sent exactly as written.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, target, headers)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
        runtime().block_on(async {
            let tls = self.connect().await?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let uri = if h2 {
                format!("https://{}{target}", self.addr)
            } else {
                target.to_string()
            };
            let mut builder = ::http::Request::builder().method(method).uri(uri);
            if !h2 {
                builder = builder.header("host", self.addr.to_string());
            }
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let request = builder.body(http_body_util::Empty::<bytes::Bytes>::new())?;
            let io = TokioIo::new(tls);
            let response = if h2 {
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(connection);
                sender.send_request(request).await?
            } else {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(connection);
                sender.send_request(request).await?
            };
            let status = response.status().as_u16();
            let version = response.version();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes().to_vec();
            Ok(Response {
                status,
                version,
                headers,
                body,
            })
        })
    }

    /// Writes `request` over TLS as is and reads until the server closes.
    pub fn raw(&self, request: &[u8]) -> Vec<u8> {
        runtime().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tls = self.connect().await.expect("connect");
            tls.write_all(request).await.expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
            out
        })
    }
}

/// Parses a whole HTTP/1.1 answer read from a socket (`Content-Length` bodies).
pub fn parse_response(raw: &[u8]) -> Response {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(head_len) = response.parse(raw).expect("HTTP response") else {
        panic!(
            "incomplete HTTP response: {:?}",
            String::from_utf8_lossy(raw)
        );
    };
    let mut headers = ::http::HeaderMap::new();
    for header in response.headers.iter() {
        headers.append(
            ::http::HeaderName::from_bytes(header.name.as_bytes()).expect("name"),
            ::http::HeaderValue::from_bytes(header.value).expect("value"),
        );
    }
    Response {
        status: response.code.expect("status"),
        version: ::http::Version::HTTP_11,
        headers,
        body: raw[head_len..].to_vec(),
    }
}

/// Sends `request` over a plain TCP connection and reads until the server closes it (or
/// `limit` passes). Returns what came back and how long it took.
pub fn plain(addr: SocketAddr, request: &[u8], limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(limit)).expect("timeout");
    if !request.is_empty() {
        stream.write_all(request).expect("write");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "reading from the server failed after {:?} ({e}); got {} bytes",
                started.elapsed(),
                out.len()
            ),
        }
    }
    (out, started.elapsed())
}

/// Runs `curl -sS` with `args`; returns the output (not asserted).
pub fn curl(args: &[&str]) -> Output {
    let curl = super::require_tool("curl", "curl");
    Command::new(curl)
        .arg("-sS")
        .arg("--max-time")
        .arg("30")
        .args(args)
        .output()
        .expect("run curl")
}

/// Runs curl and asserts it succeeded; returns stdout.
pub fn curl_ok(args: &[&str]) -> Vec<u8> {
    let output = curl(args);
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A plain HTTP/1.1 request to 127.0.0.1 (for chromedriver's local API). Reads exactly
/// one answer (`Content-Length` or chunked), since such servers may keep the connection open.
pub fn local_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let answer = loop {
        let n = stream.read(&mut buf).expect("read the answer");
        raw.extend_from_slice(&buf[..n]);
        if let Some(answer) = complete_body(&raw) {
            break answer;
        }
        assert!(
            n > 0,
            "the connection closed mid-answer: {}",
            String::from_utf8_lossy(&raw)
        );
    };
    serde_json::from_slice(&answer).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&answer)
        )
    })
}

/// The body of a whole answer in `raw`, or None while it is incomplete.
fn complete_body(raw: &[u8]) -> Option<Vec<u8>> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(head_len) = response.parse(raw).ok()? else {
        return None;
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let body = &raw[head_len..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body);
    }
    let length: usize = header("content-length")?.trim().parse().ok()?;
    (body.len() >= length).then(|| body[..length].to_vec())
}

/// Decodes a chunked body, or None while the last chunk has not arrived.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let start = line_end + 2;
        if raw.len() < start + size + 2 {
            return None;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

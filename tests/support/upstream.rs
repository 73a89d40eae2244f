//! A small static HTTPS server standing in for an upstream image server (as
//! images.linuxcontainers.org or cloud-images.ubuntu.com serve their trees): files from a
//! directory with Range support, a certificate from a test CA (`--ca-cert`), a log of every
//! request, and per-path behaviours a hostile or broken upstream shows (redirects, lying
//! sizes, compressed bombs, slow or cut-off bodies). Stopped when dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// A CA for the tests, and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA certificate, PEM: what `--ca-cert` is given.
    pub pem: PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mirror test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca).expect("server cert");
        let pem = dir.join("upstream-ca.pem");
        std::fs::write(&pem, ca.pem()).expect("write CA PEM");
        TestCa {
            pem,
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// The server's certificate as PEM (for clients that pin the server, not the CA).
    pub fn server_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("upstream-server.pem");
        let text = pem::encode(&pem::Pem::new("CERTIFICATE", self.server_chain[0].to_vec()));
        std::fs::write(&path, text).expect("write server PEM");
        path
    }
}

/// What the server does for one path instead of serving the file.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 302 to this Location.
    Redirect(String),
    /// This status and an empty body.
    Status(u16),
    /// These bytes, with these extra headers.
    Body(Vec<(String, String)>, Vec<u8>),
    /// The file, at most this many bytes per second.
    Slow(u64),
    /// The file's first N bytes, then the connection closes (Content-Length says all).
    CutAfter(u64),
    /// The file followed by these extra bytes, Content-Length covering them all.
    Extra(Vec<u8>),
}

/// One request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

pub struct StaticUpstream {
    pub root: PathBuf,
    pub addr: SocketAddr,
    rules: Arc<Mutex<HashMap<String, Behaviour>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// File bodies being sent now, and the most at once.
    sending: Arc<(AtomicUsize, AtomicUsize)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticUpstream {
    pub fn start(root: &Path, ca: &TestCa) -> StaticUpstream {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(
                ca.server_chain.clone(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(ca.server_key.clone().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let rules = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let root = root.to_path_buf();
        let sending = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let state = (root.clone(), rules.clone(), seen.clone(), sending.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => return,
                    };
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(answer(&state, request).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        StaticUpstream {
            root,
            addr,
            rules,
            seen,
            sending,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Makes the server answer `path` (starting with `/`) with `behaviour`.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.rules
            .lock()
            .expect("rules")
            .insert(path.to_string(), behaviour);
    }

    pub fn clear(&self, path: &str) {
        self.rules.lock().expect("rules").remove(path);
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn forget_seen(&self) {
        self.seen.lock().expect("seen").clear();
    }

    /// The most file bodies the server was sending at once.
    pub fn most_at_once(&self) -> usize {
        self.sending.1.load(Ordering::SeqCst)
    }

    /// Requests for anything but the JSON stream files: image file downloads.
    pub fn file_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| !seen.path.starts_with("/streams/"))
            .collect()
    }
}

impl Drop for StaticUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Shared = (
    PathBuf,
    Arc<Mutex<HashMap<String, Behaviour>>>,
    Arc<Mutex<Vec<Seen>>>,
    Arc<(AtomicUsize, AtomicUsize)>,
);
type AnyBody = BoxBody<Bytes, std::io::Error>;

fn empty(status: u16) -> Response<AnyBody> {
    let mut response = Response::new(full(Vec::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
}

fn full(bytes: Vec<u8>) -> AnyBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

async fn answer(
    (root, rules, seen, sending): &Shared,
    request: Request<Incoming>,
) -> Response<AnyBody> {
    let path = percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let range = request
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().expect("seen").push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let behaviour = rules.lock().expect("rules").get(&path).cloned();
    match &behaviour {
        Some(Behaviour::Redirect(location)) => {
            let mut response = empty(302);
            response.headers_mut().insert(
                hyper::header::LOCATION,
                location.parse().expect("location header"),
            );
            return response;
        }
        Some(Behaviour::Status(status)) => return empty(*status),
        Some(Behaviour::Body(headers, body)) => {
            let mut response = Response::new(full(body.clone()));
            for (name, value) in headers {
                response.headers_mut().insert(
                    hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    value.parse().expect("value"),
                );
            }
            return response;
        }
        _ => {}
    }
    let relative = path.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return empty(400);
    }
    let file_path = root.join(relative);
    let Ok(mut file) = tokio::fs::File::open(&file_path).await else {
        return empty(404);
    };
    let Ok(meta) = file.metadata().await else {
        return empty(404);
    };
    if !meta.is_file() {
        return empty(404);
    }
    let size = meta.len();
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<u64>().ok());
    let (status, start) = match from {
        Some(from) if from >= size => return empty(416),
        Some(from) => (206, from),
        None => (200, 0),
    };
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return empty(500);
        }
    }
    let (extra, cut, rate) = match behaviour {
        Some(Behaviour::Extra(extra)) => (extra, None, None),
        Some(Behaviour::CutAfter(n)) => (Vec::new(), Some(n), None),
        Some(Behaviour::Slow(rate)) => (Vec::new(), None, Some(rate)),
        _ => (Vec::new(), None, None),
    };
    let length = size - start + extra.len() as u64;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let sending = sending.clone();
    let now = sending.0.fetch_add(1, Ordering::SeqCst) + 1;
    sending.1.fetch_max(now, Ordering::SeqCst);
    tokio::spawn(async move {
        let _done = SendingGuard(sending);
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let began = tokio::time::Instant::now();
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut n = n;
            if let Some(cut) = cut {
                if sent >= cut {
                    return;
                }
                n = n.min((cut - sent) as usize);
            }
            if let Some(rate) = rate {
                let due = began + Duration::from_secs_f64((sent + n as u64) as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return;
            }
            sent += n as u64;
        }
        if !extra.is_empty() {
            let _ = tx.send(Bytes::from(extra)).await;
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_LENGTH, length.into());
    if status == 206 {
        headers.insert(
            hyper::header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size - 1)
                .parse()
                .expect("range"),
        );
    }
    response
}

/// Counts a body as sent when its task ends, however it ends.
struct SendingGuard(Arc<(AtomicUsize, AtomicUsize)>);

impl Drop for SendingGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body fed by a task through a channel; ends when the task drops its sender.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

//! The HTTPS client that reads an upstream: hyper's HTTP/1.1 client over tokio-rustls, one
//! connection per request, trusting the system's roots plus an optional `--ca-cert`.
//!
//! Everything an upstream says is checked before it is used: item paths must stay under the
//! base URL (no `..`, nothing absolute), redirects must stay on https and end within
//! [`MAX_REDIRECTS`] hops, JSON bodies are capped (after gzip decoding too: a compressed bomb
//! stops at the cap), and every wait has a deadline so a silent server cannot hold a run.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::MirrorError;
use crate::format::human_size;
use crate::streams;

/// Redirect hops followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// Deadline for TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for the response headers, and for each piece of a body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An `https://` URL, split the way a request needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    host: String,
    port: u16,
    /// Starts with `/`; may hold a query.
    path: String,
}

impl HttpsUrl {
    pub fn parse(text: &str) -> Result<HttpsUrl, String> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => {
                return Err(format!(
                    "{text} is {other}://, not https://; upstreams are read over https only"
                ));
            }
            None => return Err(format!("{text:?} is not an https:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text} holds credentials; they would be sent in the clear to redirects, leave them out"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(HttpsUrl {
            host,
            port: authority.port_u16().unwrap_or(443),
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Where a redirect's `Location` points, relative to this URL.
    fn resolve(&self, location: &str) -> Result<HttpsUrl, String> {
        if location.contains("://") {
            return HttpsUrl::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return HttpsUrl::parse(&format!("https://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Ok(HttpsUrl {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }
}

impl std::fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

/// A relative path an upstream gave (an index entry's or an item's), checked to stay under
/// the base URL: no empty, `.` or `..` parts, not absolute, no scheme, query or backslash.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.starts_with('/') {
        return Err("is absolute".into());
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err("holds a backslash or a control character".into());
    }
    if path.contains("://") || path.contains('?') || path.contains('#') {
        return Err("is a URL, not a path under the upstream".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("has an empty part".into()),
            "." | ".." => return Err("has a '.' or '..' part".into()),
            _ => {}
        }
    }
    Ok(())
}

/// One upstream server.
pub struct Upstream {
    base: HttpsUrl,
    tls: TlsConnector,
    user_agent: String,
}

impl Upstream {
    /// Checks the URL and loads the roots to trust: the system's, plus the PEM file `ca_cert`.
    pub fn new(url: &str, ca_cert: Option<&Path>) -> Result<Upstream, MirrorError> {
        let mut base = HttpsUrl::parse(url.trim()).map_err(MirrorError::Invalid)?;
        if base.path.contains('?') {
            return Err(MirrorError::Invalid(format!(
                "{url} has a query; give the upstream's base URL"
            )));
        }
        if !base.path.ends_with('/') {
            base.path.push('/');
        }
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are not fatal: --ca-cert may be all we need.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                MirrorError::Invalid(format!(
                    "cannot read the CA certificate {}: {}",
                    path.display(),
                    crate::fsutil::plain_message(&e)
                ))
            })?;
            let certs: Vec<_> = pem::parse_many(&pem)
                .map_err(|e| MirrorError::Invalid(format!("{} is not PEM ({e})", path.display())))?
                .into_iter()
                .filter(|block| block.tag() == "CERTIFICATE")
                .map(|block| rustls::pki_types::CertificateDer::from(block.into_contents()))
                .collect();
            if certs.is_empty() {
                return Err(MirrorError::Invalid(format!(
                    "{} holds no PEM CERTIFICATE",
                    path.display()
                )));
            }
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(MirrorError::Invalid(format!(
                    "{} holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MirrorError::Invalid(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Upstream {
            base,
            tls: TlsConnector::from(Arc::new(config)),
            user_agent: format!("simplestream-server/{} mirror", env!("CARGO_PKG_VERSION")),
        })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> String {
        self.base.to_string()
    }

    /// The URL of `relative` (checked with [`check_relative_path`]) under the base.
    pub fn url_of(&self, relative: &str) -> HttpsUrl {
        HttpsUrl {
            host: self.base.host.clone(),
            port: self.base.port,
            path: format!("{}{}", self.base.path, streams::url_path(relative)),
        }
    }

    /// GETs `relative`, following redirects; `range_from` > 0 asks for the rest of a file.
    /// Any status is returned; transport failures and bad redirects are errors.
    pub async fn get(
        &self,
        relative: &str,
        range_from: u64,
        accept_gzip: bool,
    ) -> Result<(HttpsUrl, Response<Incoming>), MirrorError> {
        let mut url = self.url_of(relative);
        let mut seen = vec![url.clone()];
        loop {
            let response = self.request_once(&url, range_from, accept_gzip).await?;
            let status = response.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok((url, response));
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    MirrorError::Upstream(format!("{url} redirects ({status}) without a Location"))
                })?;
            let next = url.resolve(location).map_err(|problem| {
                MirrorError::Upstream(format!(
                    "{url} redirects to {}: {problem}",
                    crate::fsutil::escape_controls(location)
                ))
            })?;
            if seen.contains(&next) {
                return Err(MirrorError::Upstream(format!(
                    "{url} redirects in a loop (back to {next})"
                )));
            }
            if seen.len() > MAX_REDIRECTS {
                return Err(MirrorError::Upstream(format!(
                    "{} redirects more than {MAX_REDIRECTS} times",
                    seen[0]
                )));
            }
            seen.push(next.clone());
            url = next;
        }
    }

    async fn request_once(
        &self,
        url: &HttpsUrl,
        range_from: u64,
        accept_gzip: bool,
    ) -> Result<Response<Incoming>, MirrorError> {
        let unreachable = |problem: String| {
            MirrorError::Upstream(format!(
                "cannot reach {}: {problem}; check the URL and the network",
                url.authority()
            ))
        };
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|_| MirrorError::Invalid(format!("{:?} is not a host name", url.host)))?;
        let connect = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|e| unreachable(crate::fsutil::plain_message(&e)))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(server_name, tcp)
                .await
                .map_err(|e| tls_error(url, &e))
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .uri(url.path.as_str())
            .header(header::HOST, url.authority())
            .header(header::USER_AGENT, &self.user_agent);
        if range_from > 0 {
            request = request.header(header::RANGE, format!("bytes={range_from}-"));
        }
        request = request.header(
            header::ACCEPT_ENCODING,
            if accept_gzip { "gzip" } else { "identity" },
        );
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| MirrorError::Invalid(format!("cannot request {url}: {e}")))?;
        tokio::time::timeout(READ_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| {
                MirrorError::Upstream(format!("{url} sent no answer within {READ_TIMEOUT:?}"))
            })?
            .map_err(|e| MirrorError::Upstream(format!("{url}: {e}")))
    }

    /// GETs a JSON file whole: at most `cap` bytes, after gzip decoding too.
    pub async fn get_json(&self, relative: &str, cap: u64) -> Result<Vec<u8>, MirrorError> {
        let (url, response) = self.get(relative, 0, true).await?;
        if response.status() != StatusCode::OK {
            return Err(MirrorError::Upstream(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let too_large = || {
            MirrorError::Upstream(format!(
                "{url} is larger than {}, the most an index or products file may be",
                human_size(cap)
            ))
        };
        if content_length(&response).is_some_and(|length| length > cap) {
            return Err(too_large());
        }
        let gzip = match response
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => false,
            Some(encoding) if encoding == "identity" => false,
            Some(encoding) if encoding == "gzip" => true,
            Some(encoding) => {
                return Err(MirrorError::Upstream(format!(
                    "{url} is sent with the content encoding {encoding:?}, which is neither gzip nor identity"
                )));
            }
        };
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = next_chunk(&mut body, &url).await? {
            if bytes.len() as u64 + chunk.len() as u64 > cap {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if !gzip {
            return Ok(bytes);
        }
        let mut decoded = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .take(cap + 1)
            .read_to_end(&mut decoded)
            .map_err(|e| MirrorError::Upstream(format!("{url} is not valid gzip ({e})")))?;
        if decoded.len() as u64 > cap {
            return Err(too_large());
        }
        Ok(decoded)
    }
}

/// The next data of a body, within [`READ_TIMEOUT`]; `None` at its end.
pub async fn next_chunk(body: &mut Incoming, url: &HttpsUrl) -> Result<Option<Bytes>, MirrorError> {
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                MirrorError::Upstream(format!("{url} stopped sending for {READ_TIMEOUT:?}"))
            })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(MirrorError::Upstream(format!(
                    "{url}: the download broke off ({e})"
                )));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The Content-Length header, when there is a valid one.
pub fn content_length<B>(response: &Response<B>) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A failed TLS handshake, saying what failed and what to do about it.
fn tls_error(url: &HttpsUrl, e: &std::io::Error) -> MirrorError {
    let cause = e.get_ref().map_or_else(
        || crate::fsutil::plain_message(e),
        |inner| inner.to_string(),
    );
    MirrorError::Upstream(format!(
        "TLS with {} failed: {cause}; if the upstream's certificate comes from a private CA, pass that CA with --ca-cert PEM",
        url.authority()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_under_the_base() {
        for fine in [
            "streams/v1/index.json",
            "images/debian/bookworm/amd64/default/20261127_07:42/rootfs.squashfs",
            "server/releases/noble/release-20261127/ubuntu-24.04-server-cloudimg-amd64-lxd.tar.xz",
        ] {
            assert_eq!(check_relative_path(fine), Ok(()), "{fine}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "images/../../x",
            "a//b",
            "a/./b",
            "https://evil/x",
            "a\\b",
            "a?b",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_join_and_redirects_resolve() {
        let base = HttpsUrl::parse("https://images.example.com:8443/prefix/").unwrap();
        assert_eq!(base.to_string(), "https://images.example.com:8443/prefix/");
        let file = HttpsUrl {
            path: "/prefix/images/a b/20261127_07:42/x".into(),
            ..base.clone()
        };
        assert_eq!(
            file.resolve("y").unwrap().to_string(),
            "https://images.example.com:8443/prefix/images/a b/20261127_07:42/y"
        );
        assert_eq!(
            file.resolve("/z").unwrap().to_string(),
            "https://images.example.com:8443/z"
        );
        assert_eq!(
            file.resolve("//cdn.example.com/z").unwrap().to_string(),
            "https://cdn.example.com/z"
        );
        assert!(file.resolve("http://cdn.example.com/z").is_err());
        assert!(file.resolve("ftp://cdn.example.com/z").is_err());
        assert!(HttpsUrl::parse("http://x/").is_err());
        assert!(HttpsUrl::parse("https://user:pw@x/").is_err());
        let v6 = HttpsUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "https://[::1]:8443/");
    }
}

//! Static files from the published tree, for HTTPS and for the plain-HTTP first try alike:
//! resolving a request path to an object and answering it (preconditions, ranges, the JSON
//! cache). The bytes go out through [`super::body`] or, on plain HTTP, `sendfile(2)` (a local
//! file) or `splice(2)` (a bucket's object, [`crate::storage::ObjectReader::splice_to`]).
//!
//! A request path becomes an object in three checks, in this order:
//! 1. [`clean_path`] decodes the path once and refuses what no published file can be named:
//!    `..` and `.` parts, empty parts, hidden names, NUL, control characters, backslashes and
//!    a `%` left after decoding (a double-encoded path). Refused paths are simply not found.
//! 2. The tree ([`crate::storage::PublishedTree::open`]) keeps the object inside it: the
//!    local one resolves the real path and requires it to lie below the canonical `www/`, so
//!    a symbolic link that leaves the tree is not found either.
//! 3. Only regular files are objects: directories are never listed.
//!
//! The answer (status, headers, body source) is a [`Reply`]; each front door sends it its own
//! way: hyper streams an [`ObjectStream`] over TLS, the plain path sends without a copy.

use std::io;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::HttpState;
use super::body::ObjectStream;
use super::cache_policy;
use super::json_cache::{self, CachedJson};
use super::preconditions::{self, Decision, Validators};
use crate::storage::ObjectReader;

/// Where a reply's body comes from.
#[derive(Debug)]
pub enum ReplyBody {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of an object from `start`.
    Object {
        reader: Arc<dyn ObjectReader>,
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
            ReplyBody::Object { reader, start, len } => {
                axum::body::Body::new(ObjectStream::new(reader, start, len))
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
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
    if let Some(entry) = state.json.lookup(state.tree.as_ref(), relative) {
        return Ok(Some(entry));
    }
    let state = state.clone();
    let relative = relative.to_string();
    tokio::task::spawn_blocking(move || state.json.get(state.tree.as_ref(), &relative))
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
        (&compressed.validators, &compressed.bytes)
    } else {
        (&entry.validators, &entry.bytes)
    };
    let source = Source::Bytes(bytes.clone());
    let mut reply = build(method, headers, relative, validators, source);
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
    if let Some(base) = &state.settings().redirect_base
        && relative.starts_with("images/")
    {
        return Ok(redirect(base, relative));
    }
    let tree = state.tree.clone();
    let key = relative.to_string();
    let opened = tokio::task::spawn_blocking(move || tree.open(&key))
        .await
        .map_err(io::Error::other)??;
    let Some(opened) = opened else {
        return Ok(Reply::not_found());
    };
    let validators = Validators::of(&opened.meta);
    Ok(build(
        method,
        headers,
        relative,
        &validators,
        Source::Object(opened.reader),
    ))
}

/// A 302 to `base` + `relative` (the object in the store's web endpoint or a CDN).
fn redirect(base: &str, relative: &str) -> Reply {
    let location = format!("{base}{}", crate::streams::url_path(relative));
    let mut headers = HeaderMap::new();
    headers.insert(CACHE_CONTROL, cache_policy::cache_control(relative));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            headers.insert(http::header::LOCATION, value);
            Reply {
                status: StatusCode::FOUND,
                headers,
                body: ReplyBody::Empty,
            }
        }
        Err(_) => Reply::not_found(),
    }
}

enum Source {
    Bytes(Bytes),
    Object(Arc<dyn ObjectReader>),
}

/// Applies the preconditions and the range to one representation of a file.
fn build(
    method: &Method,
    request: &HeaderMap,
    relative: &str,
    validators: &Validators,
    source: Source,
) -> Reply {
    // Room for every header of a JSON reply without growing.
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(CACHE_CONTROL, cache_policy::cache_control(relative));
    headers.extend(validators.etag_header.clone().map(|v| (ETAG, v)));
    headers.insert(LAST_MODIFIED, validators.last_modified_header.clone());
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
        Source::Object(reader) => ReplyBody::Object { reader, start, len },
    };
    Reply {
        status,
        headers,
        body,
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
}

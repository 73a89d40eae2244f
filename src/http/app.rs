//! The HTTPS request pipeline, read top to bottom ([`handle`]):
//! 1. [`AccessRecord`]: note the request; its line is logged and counted when the body has
//!    been sent ([`AccessRecord::log_when_sent`]).
//! 2. GET and HEAD only: anything else gets 405 with `Allow`, whatever the path.
//! 3. The pages below the base path: `/` (catalog), `/server.crt`, `/healthz`, `/metrics`.
//! 4. [`files::respond`]: everything else is a file under www/.
//!
//! Routed by hand, not by an axum `Router`: four fixed paths and a fallback do not need a
//! route table, and every polling client asks for `index.json`, where the router's layers
//! and boxed middleware were a fixed cost on each small request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body::Body as _;

use super::access_log::{AccessRecord, LoggedBody};
use super::files::{self, Reply};
use super::{HttpState, cache_policy, catalog_page, metrics};
use crate::metrics::Scheme;

/// Answers one HTTPS request (any body type: the request body is never read).
pub async fn handle<B>(
    state: &Arc<HttpState>,
    remote: SocketAddr,
    request: Request<B>,
) -> http::Response<LoggedBody> {
    let record = AccessRecord::of_request(Scheme::Https, remote, &request);
    let method = request.method();
    let head_only = method == Method::HEAD;
    let response = if method != Method::GET && !head_only {
        Reply::method_not_allowed().into_response()
    } else {
        let settings = state.settings();
        match route(&settings.base_path, request.uri().path()) {
            Route::Page(page) => {
                let response = page.answer(state).await;
                if head_only {
                    without_body(response)
                } else {
                    response
                }
            }
            Route::File(path) => files::respond(state, method, path, request.headers())
                .await
                .into_response(),
            Route::Outside => Reply::not_found().into_response(),
        }
    };
    record.log_when_sent(response, head_only)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Catalog,
    ServerCrt,
    Healthz,
    Metrics,
}

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Page(Page),
    /// A file: the request path below the base path (still percent-encoded).
    File(&'a str),
    /// Not below the base path.
    Outside,
}

/// Where `path` goes. With a base path, both `/lxd` and `/lxd/` show the catalog page.
fn route<'a>(base_path: &str, path: &'a str) -> Route<'a> {
    if !base_path.is_empty() && path == base_path {
        return Route::Page(Page::Catalog);
    }
    match files::strip_base(base_path, path) {
        None => Route::Outside,
        Some("/") => Route::Page(Page::Catalog),
        Some("/server.crt") => Route::Page(Page::ServerCrt),
        Some("/healthz") => Route::Page(Page::Healthz),
        Some("/metrics") => Route::Page(Page::Metrics),
        Some(below) => Route::File(below),
    }
}

impl Page {
    async fn answer(self, state: &Arc<HttpState>) -> Response {
        match self {
            Page::Catalog => catalog_page::handle(state).await,
            Page::ServerCrt => server_crt(state),
            Page::Healthz => healthz(state).await,
            Page::Metrics => metrics::handle(state).await,
        }
    }
}

/// A HEAD answer: the headers of the GET answer (its length included), no body.
fn without_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact() {
        parts
            .headers
            .entry(CONTENT_LENGTH)
            .or_insert(HeaderValue::from(length));
    }
    Response::from_parts(parts, axum::body::Body::empty())
}

/// The certificate in use, as PEM: what clients store as `servercerts/<remote>.crt`.
fn server_crt(state: &HttpState) -> Response {
    let mut response = state.certs.current().pem.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    headers.insert(CACHE_CONTROL, cache_policy::for_pages());
    response
}

/// 200 when the catalog record behind the published stream could be read, else 503 with the
/// reason. Answered from what was read for the stream's current version.
async fn healthz(state: &HttpState) -> Response {
    let mut response = match state.published.get(&state.catalog, &*state.tree).await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, cache_policy::for_pages());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("", "/"), Route::Page(Page::Catalog));
        assert_eq!(route("", "/healthz"), Route::Page(Page::Healthz));
        assert_eq!(route("", "/metrics"), Route::Page(Page::Metrics));
        assert_eq!(route("", "/server.crt"), Route::Page(Page::ServerCrt));
        assert_eq!(route("", "/healthz/"), Route::File("/healthz/"));
        assert_eq!(
            route("", "/streams/v1/index.json"),
            Route::File("/streams/v1/index.json")
        );
        assert_eq!(route("/lxd", "/lxd"), Route::Page(Page::Catalog));
        assert_eq!(route("/lxd", "/lxd/"), Route::Page(Page::Catalog));
        assert_eq!(route("/lxd", "/lxd/metrics"), Route::Page(Page::Metrics));
        assert_eq!(route("/lxd", "/metrics"), Route::Outside);
        assert_eq!(route("/lxd", "/lxdx"), Route::Outside);
        assert_eq!(route("/lxd", "/lxd/x.json"), Route::File("/x.json"));
    }
}

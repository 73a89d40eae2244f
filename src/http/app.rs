//! The HTTPS request pipeline, read top to bottom:
//! 1. [`access_log::layer`]: note the request; log it and count it when the body is sent.
//! 2. The pages below the base path: `/` (catalog), `/server.crt`, `/healthz`, `/metrics`.
//!    GET and HEAD only (the router answers 405 with `Allow` otherwise).
//! 3. [`files::handle`]: everything else is a file under www/ (GET and HEAD, else 405).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

use super::{HttpState, access_log, cache_policy, catalog_page, files, metrics};

pub fn router(state: Arc<HttpState>) -> Router {
    let base = state.settings().base_path.clone();
    let mut router = Router::new();
    // With a base path, both `/lxd` and `/lxd/` show the page.
    let page_paths = if base.is_empty() {
        vec!["/".to_string()]
    } else {
        vec![base.clone(), format!("{base}/")]
    };
    for path in page_paths {
        router = router.route(&path, get(catalog_page::handle));
    }
    router
        .route(&format!("{base}/server.crt"), get(server_crt))
        .route(&format!("{base}/healthz"), get(healthz))
        .route(&format!("{base}/metrics"), get(metrics::handle))
        .fallback(files::handle)
        .layer(axum::middleware::from_fn(access_log::layer))
        .with_state(state)
}

/// The certificate in use, as PEM: what clients store as `servercerts/<remote>.crt`.
async fn server_crt(State(state): State<Arc<HttpState>>) -> Response {
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
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let mut response = match state.published.get(&state.catalog, &*state.tree).await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, cache_policy::for_pages());
    response
}

//! `/metrics`: the process-wide counters of [`crate::metrics`] and the catalog's size, in
//! Prometheus text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

use super::{HttpState, cache_policy};
use crate::metrics::{self, Snapshot};

pub async fn handle(State(state): State<Arc<HttpState>>) -> Response {
    let catalog = state.catalog.clone();
    let images = tokio::task::spawn_blocking(move || catalog.load().map(|s| s.images().count()))
        .await
        .ok()
        .and_then(Result::ok);
    let mut response = render(&metrics::snapshot(), images).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, cache_policy::for_pages());
    response
}

/// `images` is the number of published images, or None when the catalog is unreadable.
pub fn render(snapshot: &Snapshot, images: Option<usize>) -> String {
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let requests: Vec<(String, u64)> = snapshot
        .requests
        .iter()
        .map(|(scheme, status, count)| {
            (
                format!("{{scheme=\"{}\",status=\"{status}\"}}", scheme.as_str()),
                *count,
            )
        })
        .collect();
    family(
        "simplestream_http_requests_total",
        "counter",
        "Responses sent, by scheme (https, or http for the plain first try) and status.",
        &requests,
    );
    let bytes: Vec<(String, u64)> = snapshot
        .bytes_sent
        .iter()
        .map(|(scheme, bytes)| (format!("{{scheme=\"{}\"}}", scheme.as_str()), *bytes))
        .collect();
    family(
        "simplestream_http_response_bytes_total",
        "counter",
        "Response body bytes sent, by scheme.",
        &bytes,
    );
    family(
        "simplestream_tls_handshakes_total",
        "counter",
        "TLS handshakes, by result.",
        &[
            ("{result=\"ok\"}".into(), snapshot.tls_handshakes_ok),
            ("{result=\"failed\"}".into(), snapshot.tls_handshakes_failed),
        ],
    );
    family(
        "simplestream_https_connections_refused_total",
        "counter",
        "Connections closed unread because their address had http.max_connections_per_address open.",
        &[(String::new(), snapshot.connections_refused)],
    );
    family(
        "simplestream_imports_total",
        "counter",
        "Imports that published an image in this process (over SSH, or any in-process caller).",
        &[(String::new(), snapshot.imports)],
    );
    family(
        "simplestream_catalog_readable",
        "gauge",
        "1 when the catalog record can be read.",
        &[(String::new(), u64::from(images.is_some()))],
    );
    if let Some(images) = images {
        family(
            "simplestream_images_published",
            "gauge",
            "Images in the published stream.",
            &[(String::new(), images as u64)],
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Scheme;

    #[test]
    fn prometheus_text() {
        let snapshot = Snapshot {
            requests: vec![(Scheme::Https, 200, 3), (Scheme::Http, 301, 1)],
            bytes_sent: vec![(Scheme::Https, 10), (Scheme::Http, 0)],
            tls_handshakes_ok: 4,
            tls_handshakes_failed: 1,
            imports: 2,
            connections_refused: 6,
        };
        let text = render(&snapshot, Some(5));
        for line in [
            "# TYPE simplestream_http_requests_total counter",
            "simplestream_http_requests_total{scheme=\"https\",status=\"200\"} 3",
            "simplestream_http_requests_total{scheme=\"http\",status=\"301\"} 1",
            "simplestream_http_response_bytes_total{scheme=\"https\"} 10",
            "simplestream_tls_handshakes_total{result=\"failed\"} 1",
            "simplestream_imports_total 2",
            "simplestream_https_connections_refused_total 6",
            "simplestream_images_published 5",
            "simplestream_catalog_readable 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!render(&snapshot, None).contains("simplestream_images_published"));
    }
}

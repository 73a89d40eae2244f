//! `/metrics`: the process-wide counters of [`crate::metrics`] and the catalog's size, in
//! Prometheus text format (version 0.0.4).

use std::fmt::Write as _;

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

use super::{HttpState, cache_policy};
use crate::metrics::{self, MirrorCounters, Snapshot};

pub async fn handle(state: &HttpState) -> Response {
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
    render_mirrors(&snapshot.mirrors, &mut family);
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

/// The mirror counters, one sample per mirror (`mirror="name"`).
fn render_mirrors(
    mirrors: &[(String, MirrorCounters)],
    family: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
) {
    type Field = fn(&MirrorCounters) -> u64;
    let families: [(&str, &str, &str, Field); 8] = [
        (
            "simplestream_mirror_runs_total",
            "counter",
            "Mirror runs that ended, by mirror.",
            |c| c.runs,
        ),
        (
            "simplestream_mirror_failures_total",
            "counter",
            "Mirror runs that stopped with an error or refused a version.",
            |c| c.failures,
        ),
        (
            "simplestream_mirror_downloaded_bytes_total",
            "counter",
            "Image-file bytes mirrors fetched from upstream.",
            |c| c.bytes_downloaded,
        ),
        (
            "simplestream_mirror_versions_published_total",
            "counter",
            "Versions mirrors published.",
            |c| c.versions_published,
        ),
        (
            "simplestream_mirror_versions_removed_total",
            "counter",
            "Versions mirrors took out (gone upstream or past keep).",
            |c| c.versions_removed,
        ),
        (
            "simplestream_mirror_versions_refused_total",
            "counter",
            "Versions mirrors refused (a size or hash that did not match).",
            |c| c.versions_refused,
        ),
        (
            "simplestream_mirror_running",
            "gauge",
            "1 while a run of the mirror is going on in this process.",
            |c| c.running,
        ),
        (
            "simplestream_mirror_last_success_timestamp_seconds",
            "gauge",
            "When the mirror's last run without a failure ended (0: none yet).",
            |c| c.last_success.max(0) as u64,
        ),
    ];
    if mirrors.is_empty() {
        return;
    }
    for (name, kind, help, field) in families {
        let samples: Vec<(String, u64)> = mirrors
            .iter()
            .map(|(mirror, counters)| {
                (
                    format!("{{mirror=\"{}\"}}", label_value(mirror)),
                    field(counters),
                )
            })
            .collect();
        family(name, kind, help, &samples);
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
            mirrors: vec![(
                "lxc".into(),
                MirrorCounters {
                    runs: 3,
                    failures: 1,
                    bytes_downloaded: 1000,
                    ..MirrorCounters::default()
                },
            )],
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
            "simplestream_mirror_runs_total{mirror=\"lxc\"} 3",
            "simplestream_mirror_failures_total{mirror=\"lxc\"} 1",
            "simplestream_mirror_downloaded_bytes_total{mirror=\"lxc\"} 1000",
            "simplestream_mirror_versions_published_total{mirror=\"lxc\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!render(&snapshot, None).contains("simplestream_images_published"));
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

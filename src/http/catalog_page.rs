//! `/`: a small HTML page (no JavaScript) listing the published images, with the
//! `lxc/incus remote add` lines and a link to the certificate. Rendered from the catalog
//! record as read for the published stream's current version ([`super::published_state`]):
//! never staler than `images.json`, and never a read of the record per request.

use std::fmt::Write as _;

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, StatusCode};

use super::{HttpState, cache_policy};
use crate::catalog::summary::ImageSummary;
use crate::format::human_size;

/// Inline styles only; the data: icon stops browsers asking for /favicon.ico.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn handle(state: &HttpState) -> Response {
    let images = match state.published.get(&state.catalog, &*state.tree).await {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the catalog for the page");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog cannot be read; the server log says why\n",
            )
                .into_response();
        }
    };
    let cert = state.certs.current();
    let settings = state.settings();
    let html = render(&Page {
        url: &settings.public_url,
        remote: &settings.remote_name,
        base_path: &settings.base_path,
        fingerprint: &cert.fingerprint,
        images: &images,
    });
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, cache_policy::for_pages());
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

pub struct Page<'a> {
    pub url: &'a str,
    pub remote: &'a str,
    pub base_path: &'a str,
    pub fingerprint: &'a str,
    pub images: &'a [ImageSummary],
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn render(page: &Page<'_>) -> String {
    let url = escape(page.url);
    let remote = escape(page.remote);
    let mut html = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Images at {url}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
pre, code {{ font-family: ui-monospace, monospace; font-size: 0.9rem; }}
pre {{ background: #f4f4f4; padding: 0.75rem; overflow-x: auto; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; vertical-align: top; }}
td.size {{ text-align: right; white-space: nowrap; }}
td.fingerprint code {{ word-break: break-all; }}
</style>
</head>
<body>
<h1>LXD and Incus images</h1>
<p>Store the server's certificate, <a href="{base}/server.crt">server.crt</a>, as
<code>servercerts/{remote}.crt</code> in the client's configuration folder
(<code>$LXD_CONF</code> or <code>~/.config/lxc</code>; <code>$INCUS_CONF</code> or
<code>~/.config/incus</code>), then add the remote:</p>
<pre id="remote-add">lxc remote add {remote} {url} --protocol=simplestreams
incus remote add {remote} {url} --protocol=simplestreams</pre>
<p>Certificate SHA-256 fingerprint: <code id="fingerprint">{fingerprint}</code></p>
"#,
        base = escape(page.base_path),
        fingerprint = escape(page.fingerprint),
    );
    if page.images.is_empty() {
        html.push_str("<p id=\"no-images\">No images are published yet.</p>\n");
    } else {
        let _ = writeln!(
            html,
            "<h2>{} image{}</h2>",
            page.images.len(),
            if page.images.len() == 1 { "" } else { "s" }
        );
        html.push_str(
            "<table id=\"images\">\n<thead><tr><th>Alias</th><th>OS</th><th>Release</th><th>Variant</th>\
             <th>Arch</th><th>Type</th><th>Serial</th><th>Size</th><th>Mirrored from</th><th>Fingerprint</th></tr></thead>\n<tbody>\n",
        );
        for image in page.images {
            let _ = writeln!(
                html,
                "<tr class=\"image\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td class=\"size\">{}</td><td class=\"origin\">{}</td><td class=\"fingerprint\"><code>{}</code></td></tr>",
                escape(&image.aliases.join(", ")),
                escape(&image.os),
                escape(&image.release),
                escape(&image.variant),
                escape(&image.arch),
                escape(&image.image_type),
                escape(&image.serial),
                escape(&human_size(image.size)),
                // The mirror that brought the image; empty for an upload.
                escape(image.origin.as_deref().unwrap_or("")),
                escape(&image.fingerprint),
            );
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(alias: &str) -> ImageSummary {
        ImageSummary {
            fingerprint: "ab".repeat(32),
            image_type: "container".into(),
            arch: "amd64".into(),
            os: "debian".into(),
            release: "12".into(),
            variant: "default".into(),
            serial: "20261127_0524".into(),
            aliases: vec![alias.into()],
            size: 2048,
            created: String::new(),
            product: String::new(),
            description: String::new(),
            origin: None,
        }
    }

    #[test]
    fn rows_and_remote_lines_are_escaped() {
        let mut mirrored = image("<script>");
        mirrored.origin = Some("lxc".into());
        let images = [image("debian/12"), mirrored];
        let html = render(&Page {
            url: "https://h:8443",
            remote: "private",
            base_path: "/lxd",
            fingerprint: "ff",
            images: &images,
        });
        assert_eq!(html.matches("<tr class=\"image\">").count(), 2);
        assert!(html.contains("lxc remote add private https://h:8443 --protocol=simplestreams"));
        assert!(html.contains("href=\"/lxd/server.crt\""));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("2.0 KiB") || html.contains("2 KiB"), "{html}");
        assert!(html.contains("<td class=\"origin\">lxc</td>"), "{html}");
        assert!(html.contains("<td class=\"origin\"></td>"), "{html}");
    }
}

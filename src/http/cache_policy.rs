//! Response header policy by path: how long caches may keep a file, and what type it is.
//!
//! - `images/…`: a path never changes content (the catalog gives new content a new path), so
//!   caches and CDNs may keep it for a year without asking again: `immutable`.
//! - the stream's JSON and everything else: `no-cache` (keep it, but revalidate with the ETag
//!   each time), so an import is visible at once while unchanged files cost a 304.
//!
//! LXD and Incus ignore these headers; they matter to proxies and CDNs in front of the server.

use http::HeaderValue;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// `Cache-Control` for a file at `relative` (a clean path under www/).
pub fn cache_control(relative: &str) -> HeaderValue {
    if relative.starts_with("images/") {
        HeaderValue::from_static(IMMUTABLE)
    } else {
        HeaderValue::from_static(REVALIDATE)
    }
}

/// `Cache-Control` for the generated pages (`/`, `/healthz`, `/metrics`, `/server.crt`).
pub fn for_pages() -> HeaderValue {
    HeaderValue::from_static("no-store")
}

/// The media type by file name. Compressed files keep their own type and are never sent
/// with `Content-Encoding`: clients must store them byte for byte (the sha256 is of them).
pub fn content_type(relative: &str) -> HeaderValue {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    let extension = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    HeaderValue::from_static(match extension.to_ascii_lowercase().as_str() {
        "json" => "application/json",
        "xz" => "application/x-xz",
        "gz" | "tgz" => "application/gzip",
        "bz2" => "application/x-bzip2",
        "zst" => "application/zstd",
        "tar" => "application/x-tar",
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "crt" | "pem" => "application/x-pem-file",
        // squashfs, qcow2 and anything unknown.
        _ => "application/octet-stream",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_immutable_and_json_revalidates() {
        assert_eq!(
            cache_control("images/debian/12/amd64/default/20261127_0524/root.squashfs"),
            IMMUTABLE
        );
        assert_eq!(cache_control("streams/v1/images.json"), REVALIDATE);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("streams/v1/index.json"), "application/json");
        assert_eq!(content_type("images/a/metadata.tar.xz"), "application/x-xz");
        assert_eq!(content_type("images/a/image.tar.gz"), "application/gzip");
        assert_eq!(
            content_type("images/a/root.squashfs"),
            "application/octet-stream"
        );
        assert_eq!(
            content_type("images/a/disk.qcow2"),
            "application/octet-stream"
        );
        assert_eq!(
            content_type("images/a/noextension"),
            "application/octet-stream"
        );
    }
}

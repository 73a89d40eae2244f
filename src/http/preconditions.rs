//! Conditional requests and byte ranges (RFC 9110 §13, §14) as pure functions over a file's
//! validators, so HTTPS and the plain-HTTP first try answer alike.
//!
//! Order of evaluation is the RFC's: If-Match, else If-Unmodified-Since (412); If-None-Match,
//! else If-Modified-Since (304); then Range, honoured only when If-Range (if any) matches.
//! One range gives 206; several are answered with the whole file (allowed, and no client of
//! ours asks for them); a syntactically invalid Range header is ignored, as the RFC says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method};

use crate::storage::ObjectMeta;

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// A strong entity tag, quotes included.
    pub etag: String,
    /// The modification time, whole seconds (HTTP dates have no fractions).
    pub last_modified: SystemTime,
    pub size: u64,
    /// `ETag` and `Last-Modified` as header values, made once: a cached JSON file's serve
    /// every request for it. None when the tag is not a valid header value.
    pub etag_header: Option<HeaderValue>,
    pub last_modified_header: HeaderValue,
}

impl Validators {
    /// The tag names the object's version (a new version always has another, even when
    /// written within one second); the date is whole seconds.
    pub fn of(meta: &ObjectMeta) -> Validators {
        let seconds = meta
            .modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Validators::new(
            meta.version.etag(),
            UNIX_EPOCH + Duration::from_secs(seconds),
            meta.size,
        )
    }

    pub fn new(etag: String, last_modified: SystemTime, size: u64) -> Validators {
        let date = httpdate::fmt_http_date(last_modified);
        Validators {
            etag_header: HeaderValue::from_str(&etag).ok(),
            last_modified_header: HeaderValue::from_str(&date)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            etag,
            last_modified,
            size,
        }
    }

    /// The validators of another representation of the same file (its gzip form).
    pub fn variant(&self, suffix: &str, size: u64) -> Validators {
        let bare = self.etag.trim_end_matches('"');
        let etag = format!("{bare}-{suffix}\"");
        Validators {
            etag_header: HeaderValue::from_str(&etag).ok(),
            etag,
            last_modified: self.last_modified,
            last_modified_header: self.last_modified_header.clone(),
            size,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 200 with the whole file.
    Full,
    /// 206 with `len` bytes from `start`.
    Partial { start: u64, len: u64 },
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416.
    RangeNotSatisfiable,
}

pub fn evaluate(method: &Method, headers: &HeaderMap, file: &Validators) -> Decision {
    let safe = method == Method::GET || method == Method::HEAD;
    if let Some(value) = headers.get(IF_MATCH) {
        if !etag_matches(value, &file.etag, Comparison::Strong) {
            return Decision::PreconditionFailed;
        }
    } else if let Some(since) = date(headers.get(IF_UNMODIFIED_SINCE))
        && file.last_modified > since
    {
        return Decision::PreconditionFailed;
    }
    if let Some(value) = headers.get(IF_NONE_MATCH) {
        if etag_matches(value, &file.etag, Comparison::Weak) {
            return if safe {
                Decision::NotModified
            } else {
                Decision::PreconditionFailed
            };
        }
    } else if safe
        && let Some(since) = date(headers.get(IF_MODIFIED_SINCE))
        && file.last_modified <= since
    {
        return Decision::NotModified;
    }
    let Some(range) = headers.get(RANGE) else {
        return Decision::Full;
    };
    if !safe || !if_range_allows(headers.get(IF_RANGE), file) {
        return Decision::Full;
    }
    match parse_range(range.as_bytes(), file.size) {
        RangeRequest::Ignored | RangeRequest::Several => Decision::Full,
        RangeRequest::One { start, len } => Decision::Partial { start, len },
        RangeRequest::Unsatisfiable => Decision::RangeNotSatisfiable,
    }
}

fn date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether a list of entity tags (or `*`) names `etag`.
fn etag_matches(value: &HeaderValue, etag: &str, comparison: Comparison) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if text.trim() == "*" {
        return true;
    }
    text.split(',').map(str::trim).any(|candidate| {
        match (candidate.strip_prefix("W/"), comparison) {
            (Some(weak), Comparison::Weak) => weak == etag,
            (Some(_), Comparison::Strong) => false,
            (None, _) => candidate == etag,
        }
    })
}

/// A Range is used only when If-Range is absent or names the current version exactly.
fn if_range_allows(value: Option<&HeaderValue>, file: &Validators) -> bool {
    let Some(value) = value else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    if text.starts_with('"') {
        text == file.etag
    } else if text.starts_with("W/") {
        false
    } else {
        httpdate::parse_http_date(text).is_ok_and(|since| since == file.last_modified)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// Not a byte range we understand: serve the whole file.
    Ignored,
    One {
        start: u64,
        len: u64,
    },
    /// More than one range, at least one satisfiable.
    Several,
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` and lists of them against a file of `size`.
fn parse_range(value: &[u8], size: u64) -> RangeRequest {
    let Ok(text) = std::str::from_utf8(value) else {
        return RangeRequest::Ignored;
    };
    let Some((unit, specs)) = text.split_once('=') else {
        return RangeRequest::Ignored;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Ignored;
    }
    let mut satisfiable = Vec::new();
    let mut count = 0;
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        count += 1;
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Ignored;
        };
        // Digits only; past u64 it is just "very large" (a first byte past the end, a last
        // byte meaning the end), not malformed.
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().unwrap_or(u64::MAX))
        };
        let range = match (first.trim(), last.trim()) {
            ("", suffix) => {
                let Some(n) = number(suffix) else {
                    return RangeRequest::Ignored;
                };
                (n > 0 && size > 0).then(|| {
                    let len = n.min(size);
                    (size - len, len)
                })
            }
            (start, "") => {
                let Some(start) = number(start) else {
                    return RangeRequest::Ignored;
                };
                (start < size).then(|| (start, size - start))
            }
            (start, end) => {
                let (Some(start), Some(end)) = (number(start), number(end)) else {
                    return RangeRequest::Ignored;
                };
                if end < start {
                    return RangeRequest::Ignored;
                }
                (start < size).then(|| (start, end.min(size - 1) - start + 1))
            }
        };
        satisfiable.extend(range);
    }
    match (count, satisfiable.as_slice()) {
        (0, _) => RangeRequest::Ignored,
        (_, []) => RangeRequest::Unsatisfiable,
        (1, [(start, len)]) => RangeRequest::One {
            start: *start,
            len: *len,
        },
        _ => RangeRequest::Several,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Validators {
        Validators::new(
            "\"a-b-64\"".into(),
            UNIX_EPOCH + Duration::from_secs(1_764_244_800),
            100,
        )
    }

    fn decide(method: Method, pairs: &[(&str, &str)]) -> Decision {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        evaluate(&method, &headers, &file())
    }

    fn get(pairs: &[(&str, &str)]) -> Decision {
        decide(Method::GET, pairs)
    }

    const LAST_MODIFIED: &str = "Thu, 27 Nov 2025 12:00:00 GMT";

    #[test]
    fn last_modified_is_formatted_as_an_http_date() {
        assert_eq!(file().last_modified_header, LAST_MODIFIED);
    }

    #[test]
    fn ranges() {
        assert_eq!(
            get(&[("range", "bytes=0-9")]),
            Decision::Partial { start: 0, len: 10 }
        );
        assert_eq!(
            get(&[("range", "bytes=90-")]),
            Decision::Partial { start: 90, len: 10 }
        );
        assert_eq!(
            get(&[("range", "bytes=-5")]),
            Decision::Partial { start: 95, len: 5 }
        );
        assert_eq!(
            get(&[("range", "bytes=-500")]),
            Decision::Partial { start: 0, len: 100 }
        );
        assert_eq!(
            get(&[("range", "bytes=50-5000")]),
            Decision::Partial { start: 50, len: 50 }
        );
        assert_eq!(
            get(&[("range", "bytes=100-")]),
            Decision::RangeNotSatisfiable
        );
        assert_eq!(get(&[("range", "bytes=-0")]), Decision::RangeNotSatisfiable);
        assert_eq!(
            get(&[("range", "bytes=200-300, 400-500")]),
            Decision::RangeNotSatisfiable
        );
        assert_eq!(get(&[("range", "bytes=0-1,5-6")]), Decision::Full);
        let huge = "99999999999999999999999";
        assert_eq!(
            get(&[("range", &format!("bytes={huge}-"))]),
            Decision::RangeNotSatisfiable
        );
        assert_eq!(
            get(&[("range", &format!("bytes=90-{huge}"))]),
            Decision::Partial { start: 90, len: 10 }
        );
        assert_eq!(
            get(&[("range", &format!("bytes=-{huge}"))]),
            Decision::Partial { start: 0, len: 100 }
        );
        for ignored in [
            "bytes=5-1",
            "bytes=x-",
            "lines=1-2",
            "bytes=",
            "bytes 1-2",
            "bytes=--1",
        ] {
            assert_eq!(get(&[("range", ignored)]), Decision::Full, "{ignored}");
        }
        assert_eq!(
            decide(Method::POST, &[("range", "bytes=0-1")]),
            Decision::Full
        );
    }

    #[test]
    fn if_none_match_and_if_modified_since() {
        assert_eq!(
            get(&[("if-none-match", "\"a-b-64\"")]),
            Decision::NotModified
        );
        assert_eq!(
            get(&[("if-none-match", "W/\"a-b-64\"")]),
            Decision::NotModified
        );
        assert_eq!(
            get(&[("if-none-match", "\"x\", \"a-b-64\"")]),
            Decision::NotModified
        );
        assert_eq!(get(&[("if-none-match", "*")]), Decision::NotModified);
        assert_eq!(get(&[("if-none-match", "\"x\"")]), Decision::Full);
        assert_eq!(
            get(&[("if-modified-since", LAST_MODIFIED)]),
            Decision::NotModified
        );
        assert_eq!(
            get(&[("if-modified-since", "Wed, 26 Nov 2025 12:00:00 GMT")]),
            Decision::Full
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            get(&[
                ("if-none-match", "\"x\""),
                ("if-modified-since", LAST_MODIFIED)
            ]),
            Decision::Full
        );
        assert_eq!(
            decide(Method::POST, &[("if-none-match", "*")]),
            Decision::PreconditionFailed
        );
    }

    #[test]
    fn if_match_and_if_unmodified_since() {
        assert_eq!(get(&[("if-match", "\"x\"")]), Decision::PreconditionFailed);
        assert_eq!(
            get(&[("if-match", "W/\"a-b-64\"")]),
            Decision::PreconditionFailed
        );
        assert_eq!(get(&[("if-match", "\"a-b-64\"")]), Decision::Full);
        assert_eq!(
            get(&[("if-unmodified-since", "Wed, 26 Nov 2025 12:00:00 GMT")]),
            Decision::PreconditionFailed
        );
        assert_eq!(
            get(&[("if-unmodified-since", LAST_MODIFIED)]),
            Decision::Full
        );
    }

    #[test]
    fn if_range_must_name_the_current_version() {
        let range = ("range", "bytes=0-0");
        assert_eq!(
            get(&[range, ("if-range", "\"a-b-64\"")]),
            Decision::Partial { start: 0, len: 1 }
        );
        assert_eq!(
            get(&[range, ("if-range", LAST_MODIFIED)]),
            Decision::Partial { start: 0, len: 1 }
        );
        assert_eq!(get(&[range, ("if-range", "\"old\"")]), Decision::Full);
        assert_eq!(get(&[range, ("if-range", "W/\"a-b-64\"")]), Decision::Full);
        assert_eq!(
            get(&[range, ("if-range", "Wed, 26 Nov 2025 12:00:00 GMT")]),
            Decision::Full
        );
    }

    #[test]
    fn variants_get_their_own_tag() {
        let gz = file().variant("gz", 10);
        assert_eq!(gz.etag, "\"a-b-64-gz\"");
        assert_eq!(gz.size, 10);
    }
}

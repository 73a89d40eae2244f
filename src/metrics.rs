//! Process-wide counters for `/metrics`. Any part of the server counts here (the HTTP side
//! its requests and handshakes, the command layer its imports) and `http::metrics` renders
//! them in Prometheus text format.
//!
//! Plain atomics in statics rather than a registry object: the counters live as long as the
//! process, every front door reaches them without plumbing, and a scrape is a few loads.
//! A one-shot CLI process counts too, but nobody scrapes it: only the `serve` process's
//! numbers are ever seen.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    /// LXD's plain-HTTP first try on the TLS port.
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    const ALL: [Scheme; 2] = [Scheme::Https, Scheme::Http];

    fn index(self) -> usize {
        match self {
            Scheme::Https => 0,
            Scheme::Http => 1,
        }
    }
}

/// Status codes 100..=599, one counter each per scheme.
const FIRST_STATUS: u16 = 100;
const STATUS_COUNT: usize = 500;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const STATUS_ROW: [AtomicU64; STATUS_COUNT] = [ZERO; STATUS_COUNT];

static REQUESTS: [[AtomicU64; STATUS_COUNT]; 2] = [STATUS_ROW; 2];
static BYTES_SENT: [AtomicU64; 2] = [ZERO; 2];
static TLS_HANDSHAKES_OK: AtomicU64 = AtomicU64::new(0);
static TLS_HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);
static IMPORTS: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Counts one finished response and the body bytes it sent.
pub fn record_request(scheme: Scheme, status: u16, bytes: u64) {
    if let Some(slot) = status
        .checked_sub(FIRST_STATUS)
        .and_then(|i| REQUESTS[scheme.index()].get(usize::from(i)))
    {
        slot.fetch_add(1, Ordering::Relaxed);
    }
    BYTES_SENT[scheme.index()].fetch_add(bytes, Ordering::Relaxed);
}

/// Counts one TLS handshake, finished or failed (one that times out counts as failed).
/// Connections that never send a TLS record (LXD's zero-byte probes) are not handshakes.
pub fn record_tls_handshake(ok: bool) {
    if ok {
        TLS_HANDSHAKES_OK.fetch_add(1, Ordering::Relaxed);
    } else {
        TLS_HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one import that published an image. Called by the `import` command, so imports over
/// SSH (which run in the server's process) are counted without help from the SSH side.
pub fn record_import() {
    IMPORTS.fetch_add(1, Ordering::Relaxed);
}

/// Counts one HTTPS connection closed unread because its address had too many open.
pub fn record_connection_refused() {
    CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
}

/// A consistent-enough copy of every counter, for rendering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (scheme, status, count) for every status seen at least once.
    pub requests: Vec<(Scheme, u16, u64)>,
    /// (scheme, bytes).
    pub bytes_sent: Vec<(Scheme, u64)>,
    pub tls_handshakes_ok: u64,
    pub tls_handshakes_failed: u64,
    pub imports: u64,
    pub connections_refused: u64,
}

pub fn snapshot() -> Snapshot {
    let mut requests = Vec::new();
    let mut bytes_sent = Vec::new();
    for scheme in Scheme::ALL {
        for (offset, counter) in REQUESTS[scheme.index()].iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let status = FIRST_STATUS + offset as u16;
                requests.push((scheme, status, count));
            }
        }
        bytes_sent.push((scheme, BYTES_SENT[scheme.index()].load(Ordering::Relaxed)));
    }
    Snapshot {
        requests,
        bytes_sent,
        tls_handshakes_ok: TLS_HANDSHAKES_OK.load(Ordering::Relaxed),
        tls_handshakes_failed: TLS_HANDSHAKES_FAILED.load(Ordering::Relaxed),
        imports: IMPORTS.load(Ordering::Relaxed),
        connections_refused: CONNECTIONS_REFUSED.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_scheme_and_status() {
        let before = snapshot();
        record_request(Scheme::Http, 599, 10);
        record_request(Scheme::Http, 42, 5);
        let after = snapshot();
        let count = |s: &Snapshot| {
            s.requests
                .iter()
                .find(|(scheme, status, _)| *scheme == Scheme::Http && *status == 599)
                .map_or(0, |r| r.2)
        };
        assert_eq!(count(&after), count(&before) + 1);
        let bytes = |s: &Snapshot| s.bytes_sent[Scheme::Http.index()].1;
        assert_eq!(bytes(&after), bytes(&before) + 15);
    }
}

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

/// One mirror's counters since the process started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorCounters {
    pub runs: u64,
    /// Runs that stopped with an error or refused a version.
    pub failures: u64,
    pub bytes_downloaded: u64,
    pub versions_published: u64,
    pub versions_removed: u64,
    pub versions_refused: u64,
    /// Unix seconds the last run without a failure ended; 0 before one.
    pub last_success: i64,
    /// 1 while a run of the mirror is going on in this process.
    pub running: u64,
}

/// What one finished mirror run adds to its mirror's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct MirrorRun {
    pub failed: bool,
    pub bytes_downloaded: u64,
    pub versions_published: u64,
    pub versions_removed: u64,
    pub versions_refused: u64,
    pub ended: i64,
}

/// Mirror name (or a one-off run's URL) → counters. A map behind a mutex: mirrors are few,
/// named by the configuration, and counted once per run.
static MIRRORS: std::sync::Mutex<std::collections::BTreeMap<String, MirrorCounters>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn with_mirror(name: &str, change: impl FnOnce(&mut MirrorCounters)) {
    let mut mirrors = MIRRORS.lock().unwrap_or_else(|p| p.into_inner());
    change(mirrors.entry(name.to_string()).or_default());
}

/// A run of the mirror `name` started in this process.
pub fn record_mirror_start(name: &str) {
    with_mirror(name, |counters| counters.running = 1);
}

/// A run of the mirror `name` ended.
pub fn record_mirror_run(name: &str, run: MirrorRun) {
    with_mirror(name, |counters| {
        counters.running = 0;
        counters.runs += 1;
        counters.failures += u64::from(run.failed);
        counters.bytes_downloaded += run.bytes_downloaded;
        counters.versions_published += run.versions_published;
        counters.versions_removed += run.versions_removed;
        counters.versions_refused += run.versions_refused;
        if !run.failed {
            counters.last_success = run.ended;
        }
    });
}

/// Makes a configured mirror show in `/metrics` (with zeros) before its first run.
pub fn register_mirror(name: &str) {
    with_mirror(name, |_| {});
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
    /// (mirror name, counters), by name.
    pub mirrors: Vec<(String, MirrorCounters)>,
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
        mirrors: MIRRORS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect(),
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

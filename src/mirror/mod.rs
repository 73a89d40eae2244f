//! Pull-mirror: keeps a verified copy of an upstream simplestreams server's images in the
//! catalog, for LXD and Incus alike.
//!
//! One run (`sync`) reads the upstream index, picks the versions the filters and `keep` allow,
//! downloads each file once into the data directory's tmp/, checks its size and sha256 against
//! the upstream item, and publishes each whole version through the catalog's transaction.
//! Versions the mirror brought that left upstream or fell outside `keep` are removed as
//! `remove` does. A mirror never touches images it did not bring.
//!
//! The types below are the seam between the sync engine and its callers (the CLI, SSH exec,
//! `serve`'s schedule, `mirror status`).

use std::path::PathBuf;

use serde::Serialize;

mod download;
pub mod filter;
mod plan;
pub mod run;
pub mod status;
mod sync;
pub mod upstream;

pub use filter::Filter;
pub use sync::sync;

use crate::catalog::CatalogError;

/// Why a run failed as a whole. Each is one line that says what went wrong; nothing was
/// published by a run that ends in one (versions published before a catalog error stay).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The spec itself is wrong: the URL, the CA certificate file.
    #[error("{0}")]
    Invalid(String),
    /// The upstream cannot be read, or what it sent is not a simplestreams tree we accept.
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{}", crate::fsutil::plain_message(.0))]
    Io(#[from] std::io::Error),
}

/// What one run mirrors and how.
#[derive(Debug, Clone)]
pub struct MirrorSpec {
    /// The configured mirror's name; `None` for a one-off `mirror sync URL`.
    pub name: Option<String>,
    /// The upstream's base URL (`https://images.linuxcontainers.org`): `streams/v1/index.json`
    /// is read under it.
    pub url: String,
    /// A PEM file of CA certificates to trust for this upstream instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// All must hold for a product's image type to be mirrored.
    pub filters: Vec<Filter>,
    /// The newest N versions of each matching product; `None` keeps all upstream has.
    pub keep: Option<usize>,
    /// Put before every upstream alias (`mirror/` makes `debian/12` into `mirror/debian/12`).
    pub alias_prefix: Option<String>,
    /// Plan and report only: download nothing, publish nothing.
    pub dry_run: bool,
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Bytes per second over all downloads; `None` is unlimited.
    pub bandwidth_limit: Option<u64>,
}

impl MirrorSpec {
    /// Default number of files downloaded at once.
    pub const DEFAULT_CONCURRENCY: usize = 4;

    /// What the catalog records as the origin of the images this mirror brings: the mirror's
    /// name when configured, else its URL. A mirror only ever removes images of its own origin.
    pub fn origin(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.url)
    }
}

/// The outcome of one run, printed as one summary line or as JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SyncReport {
    /// Versions published by this run.
    pub new_versions: u64,
    /// Image-file bytes fetched from upstream by this run (resumed parts count once).
    pub bytes_downloaded: u64,
    /// Files not fetched because a file of the same sha256 was already held.
    pub files_reused: u64,
    /// Versions this mirror had brought that left our index in this run.
    pub removed_versions: u64,
    /// One line per refused version: product, version, file, expected and actual.
    pub refused: Vec<String>,
    /// Notes for people, e.g. VM images that carry only one client's in-guest agent.
    pub notes: Vec<String>,
}

impl SyncReport {
    /// A run succeeds when no version was refused.
    pub fn succeeded(&self) -> bool {
        self.refused.is_empty()
    }
}

/// Progress of the downloads of one run, for a terminal display or counters.
pub trait Progress: Send + Sync {
    /// The run will fetch `files` files, `bytes` bytes in all (after reuse and resumption).
    fn planned(&self, files: u64, bytes: u64);
    /// `bytes` more arrived.
    fn transferred(&self, bytes: u64);
    /// One file finished (verified or refused).
    fn file_done(&self);
}

/// For callers that show nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn planned(&self, _files: u64, _bytes: u64) {}
    fn transferred(&self, _bytes: u64) {}
    fn file_done(&self) {}
}

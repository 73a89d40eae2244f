//! The catalog as the published stream shows it, read once per version of `images.json`:
//! the catalog page (`/`) and `/healthz` answer from it instead of reading the record on
//! every request. Every commit that changes the record republishes `images.json` (a new
//! version), so a version seen again means the same record; the record is committed before
//! the stream, so what is read after seeing a version is never older than that version.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::catalog::summary::{ImageSummary, summaries};
use crate::storage::{ObjectVersion, PublishedTree};
use crate::streams::IMAGES_PATH;

/// The published images, or why the record behind the stream cannot be read.
pub type Loaded = Result<Arc<Vec<ImageSummary>>, String>;

#[derive(Default)]
pub struct PublishedState {
    /// The version of `images.json` it was read at (`None`: no stream yet), and what was read.
    /// An async lock: one request reads a new version while the others wait for it.
    cached: tokio::sync::Mutex<Option<(Option<ObjectVersion>, Loaded)>>,
}

impl PublishedState {
    pub async fn get(&self, catalog: &Arc<Catalog>, tree: &dyn PublishedTree) -> Loaded {
        // A stat of a stream file is allowed on the async threads (see `storage`).
        let version = match tree.stat(IMAGES_PATH) {
            Ok(meta) => meta.map(|meta| meta.version),
            Err(e) => return Err(format!("cannot read {IMAGES_PATH}: {e}")),
        };
        let mut cached = self.cached.lock().await;
        if let Some((read_at, loaded)) = cached.as_ref()
            && *read_at == version
        {
            return loaded.clone();
        }
        let catalog = catalog.clone();
        let loaded = match tokio::task::spawn_blocking(move || catalog.load()).await {
            Ok(Ok(record)) => Ok(Arc::new(summaries(&record))),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reading the catalog record failed: {e}")),
        };
        *cached = Some((version, loaded.clone()));
        loaded
    }
}

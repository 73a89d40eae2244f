//! The stream's JSON files (`streams/v1/*.json`) held in memory, one copy per file version,
//! with their gzip form made once, on first demand.
//!
//! Every client asks for `index.json` and `images.json` before anything else, and a 1,000
//! product `images.json` is megabytes: reading it (and gzipping it) for every request would
//! cost more than sending it. A version is identified by its [`ObjectVersion`] (device, inode,
//! size and mtime for a local file); the catalog publishes by rename, so a new version is a
//! new inode and one `stat` per request tells whether the copy is current: the next request after an import sees the new file.
//!
//! Only JSON under `streams/` up to [`MAX_CACHED_BYTES`] is held, in at most
//! [`MAX_ENTRIES`] entries; anything else is streamed from disk like an image file.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::preconditions::Validators;
use crate::storage::{ObjectVersion, PublishedTree, mid_line_vec};

pub const MAX_CACHED_BYTES: u64 = 32 << 20;
const MAX_ENTRIES: usize = 32;

/// One version of a JSON file.
#[derive(Debug)]
pub struct CachedJson {
    version: ObjectVersion,
    pub validators: Validators,
    pub bytes: Bytes,
    gzip: tokio::sync::OnceCell<Gzipped>,
}

/// The gzip form of a [`CachedJson`], with its own validators.
#[derive(Debug)]
pub struct Gzipped {
    pub validators: Validators,
    pub bytes: Bytes,
}

impl CachedJson {
    /// The gzip form, compressed on the first call (off the async threads) and kept.
    pub async fn gzip(self: &Arc<Self>) -> io::Result<&Gzipped> {
        let this = self.clone();
        self.gzip
            .get_or_try_init(|| async move {
                let plain = this.bytes.clone();
                let bytes = tokio::task::spawn_blocking(move || gzip(&plain))
                    .await
                    .map_err(io::Error::other)??;
                Ok(Gzipped {
                    validators: this.validators.variant("gz", bytes.len() as u64),
                    bytes,
                })
            })
            .await
    }
}

fn gzip(plain: &[u8]) -> io::Result<Bytes> {
    let (buf, pad) = mid_line_vec(plain.len() / 8);
    let mut encoder = flate2::write::GzEncoder::new(buf, flate2::Compression::default());
    encoder.write_all(plain)?;
    Ok(Bytes::from(encoder.finish()?).slice(pad..))
}

/// Whether `relative` (a clean path under www/) is a file this cache holds.
pub fn is_cacheable(relative: &str) -> bool {
    relative.starts_with("streams/") && relative.ends_with(".json")
}

#[derive(Debug, Default)]
pub struct JsonCache {
    entries: Mutex<HashMap<String, Arc<CachedJson>>>,
}

impl JsonCache {
    /// The held copy of `key` when the object there is still the very version it was read
    /// from. One `stat` of a file served moments ago, whose inode is in memory: cheap enough
    /// for the async threads.
    pub fn lookup(&self, tree: &dyn PublishedTree, key: &str) -> Option<Arc<CachedJson>> {
        let version = tree.stat(key).ok()??.version;
        let entry = self.lock().get(key).cloned()?;
        (entry.version == version).then_some(entry)
    }

    /// The current version of `key`, from memory or read again; None when it does not exist
    /// or is too large to hold. Blocking: stats and reads.
    ///
    /// On a miss the bytes are read from the object as opened, with its metadata from that
    /// same opening, so the bytes and the version always agree.
    pub fn get(&self, tree: &dyn PublishedTree, key: &str) -> io::Result<Option<Arc<CachedJson>>> {
        if let Some(entry) = self.lookup(tree, key) {
            return Ok(Some(entry));
        }
        let Some(opened) = tree.open(key)? else {
            self.lock().remove(key);
            return Ok(None);
        };
        let size = opened.meta.size;
        if size > MAX_CACHED_BYTES {
            return Ok(None);
        }
        let (mut content, pad) = mid_line_vec(size as usize);
        content.resize(pad + size as usize, 0);
        opened.reader.read_exact_at(&mut content[pad..], 0)?;
        let entry = Arc::new(CachedJson {
            version: opened.meta.version,
            validators: Validators::of(&opened.meta),
            bytes: Bytes::from(content).slice(pad..),
            gzip: tokio::sync::OnceCell::new(),
        });
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        entries.insert(key.to_string(), entry.clone());
        Ok(Some(entry))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CachedJson>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalTree;

    #[tokio::test]
    async fn a_renamed_file_is_a_new_version_and_gzip_round_trips() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir_all(www.join("streams/v1")).unwrap();
        let path = www.join("streams/v1/index.json");
        std::fs::write(&path, b"{\"a\":1}").unwrap();
        let tree = LocalTree::new(&www, dir.path().join("record")).unwrap();
        let key = "streams/v1/index.json";
        let cache = JsonCache::default();
        let first = cache.get(&tree, key).unwrap().unwrap();
        let again = cache.get(&tree, key).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        let tmp = dir.path().join("tmp.json");
        std::fs::write(&tmp, b"{\"a\":2}").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let second = cache.get(&tree, key).unwrap().unwrap();
        assert_eq!(&second.bytes[..], b"{\"a\":2}");
        assert_ne!(first.validators.etag, second.validators.etag);

        let gz = second.gzip().await.unwrap();
        let mut plain = Vec::new();
        assert!(gz.validators.etag.ends_with("-gz\""));
        flate2::read::GzDecoder::new(&gz.bytes[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"{\"a\":2}");

        std::fs::remove_file(&path).unwrap();
        assert!(cache.get(&tree, key).unwrap().is_none());
    }

    #[test]
    fn only_stream_json_is_cached() {
        assert!(is_cacheable("streams/v1/images.json"));
        assert!(!is_cacheable("images/x/y.json"));
        assert!(!is_cacheable("streams/v1/images.json.gz"));
    }
}

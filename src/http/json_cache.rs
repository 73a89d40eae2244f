//! The stream's JSON files (`streams/v1/*.json`) held in memory, one copy per file version,
//! with their gzip form made once, on first demand.
//!
//! Every client asks for `index.json` and `images.json` before anything else, and a 1,000
//! product `images.json` is megabytes: reading it (and gzipping it) for every request would
//! cost more than sending it. A version is identified by device, inode, size and mtime; the
//! catalog publishes by rename, so a new version is a new inode and one `stat` per request
//! tells whether the copy is current: the next request after an import sees the new file.
//!
//! Only JSON under `streams/` up to [`MAX_CACHED_BYTES`] is held, in at most
//! [`MAX_ENTRIES`] entries; anything else is streamed from disk like an image file.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::files::mid_line_vec;
use super::preconditions::Validators;

pub const MAX_CACHED_BYTES: u64 = 32 << 20;
const MAX_ENTRIES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// One version of a JSON file.
#[derive(Debug)]
pub struct CachedJson {
    identity: FileIdentity,
    pub validators: Validators,
    pub bytes: Bytes,
    gzip: tokio::sync::OnceCell<Bytes>,
}

impl CachedJson {
    /// The gzip form, compressed on the first call (off the async threads) and kept.
    pub async fn gzip(self: &Arc<Self>) -> io::Result<Bytes> {
        let this = self.clone();
        self.gzip
            .get_or_try_init(|| async move {
                let plain = this.bytes.clone();
                tokio::task::spawn_blocking(move || gzip(&plain))
                    .await
                    .map_err(io::Error::other)?
            })
            .await
            .cloned()
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
    /// The held copy of `relative` (a clean path; `full` is it joined to www/) when the file
    /// at `full` is still the very one it was read from. One `stat` of a file served moments
    /// ago, whose inode is in memory: cheap enough for the async threads.
    pub fn lookup(&self, relative: &str, full: &Path) -> Option<Arc<CachedJson>> {
        let identity = FileIdentity::of(&std::fs::metadata(full).ok()?);
        let entry = self.lock().get(relative).cloned()?;
        (entry.identity == identity).then_some(entry)
    }

    /// The current version of `relative`, from memory or read again; None when it does not
    /// exist or is too large to hold. Blocking: stats and reads.
    ///
    /// On a miss `open` opens the file with the containment checks (a symlink swapped in
    /// changes the identity, so it always comes through here) and the bytes are read from
    /// that handle, so the bytes and the identity always agree.
    pub fn get(
        &self,
        relative: &str,
        full: &Path,
        open: impl FnOnce() -> io::Result<Option<std::fs::File>>,
    ) -> io::Result<Option<Arc<CachedJson>>> {
        if let Some(entry) = self.lookup(relative, full) {
            return Ok(Some(entry));
        }
        let Some(mut file) = open()? else {
            self.lock().remove(relative);
            return Ok(None);
        };
        let meta = file.metadata()?;
        if meta.size() > MAX_CACHED_BYTES {
            return Ok(None);
        }
        let (mut content, pad) = mid_line_vec(meta.size() as usize);
        (&mut file).take(meta.size()).read_to_end(&mut content)?;
        let entry = Arc::new(CachedJson {
            identity: FileIdentity::of(&meta),
            validators: Validators::of(&meta),
            bytes: Bytes::from(content).slice(pad..),
            gzip: tokio::sync::OnceCell::new(),
        });
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(relative) {
            entries.clear();
        }
        entries.insert(relative.to_string(), entry.clone());
        Ok(Some(entry))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CachedJson>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> impl FnOnce() -> io::Result<Option<std::fs::File>> + '_ {
        move || match std::fs::File::open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[tokio::test]
    async fn a_renamed_file_is_a_new_version_and_gzip_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        std::fs::write(&path, b"{\"a\":1}").unwrap();
        let cache = JsonCache::default();
        let first = cache
            .get("streams/v1/index.json", &path, open(&path))
            .unwrap()
            .unwrap();
        let again = cache
            .get("streams/v1/index.json", &path, open(&path))
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        let tmp = dir.path().join("tmp.json");
        std::fs::write(&tmp, b"{\"a\":2}").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let second = cache
            .get("streams/v1/index.json", &path, open(&path))
            .unwrap()
            .unwrap();
        assert_eq!(&second.bytes[..], b"{\"a\":2}");
        assert_ne!(first.validators.etag, second.validators.etag);

        let gz = second.gzip().await.unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"{\"a\":2}");

        std::fs::remove_file(&path).unwrap();
        assert!(
            cache
                .get("streams/v1/index.json", &path, open(&path))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn only_stream_json_is_cached() {
        assert!(is_cacheable("streams/v1/images.json"));
        assert!(!is_cacheable("images/x/y.json"));
        assert!(!is_cacheable("streams/v1/images.json.gz"));
    }
}

//! Hashes taken while files were uploaded, so that `import` of a just-uploaded image reads
//! nothing again (the catalog asks through [`DigestCache`]).
//!
//! An entry is keyed by the file's real path and remembers the file's identity at upload
//! (device, inode, size, mtime and ctime: [`FileIdentity`]): any later change (another upload
//! over it, an edit, a removal, a freed inode reused with a forged mtime) makes the entry stale
//! and the catalog falls back to reading the file. The catalog checks the identity again on
//! the file it opened, so a file renamed over the path after the lookup is not taken for it.
//!
//! Small tarballs (metadata candidates) also leave their unfinished sha256 state here. When a
//! root upload starts in the same area, it continues a clone of that state with its own bytes,
//! which yields sha256(metadata ‖ root), the combined fingerprint, without reading either file
//! again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sha256::Sha256State;

use crate::catalog::import::{DigestCache, KnownDigest};
use crate::fsutil::FileIdentity;

/// How long a metadata tarball's hash state is offered to root uploads that follow it.
const METADATA_SEED_LIFETIME: Duration = Duration::from_secs(3600);
/// How many recent metadata tarballs per area a root upload continues (each costs one more
/// sha256 over the root).
const METADATA_SEEDS_PER_AREA: usize = 2;
/// Entries kept before stale ones are swept.
const SWEEP_ABOVE: usize = 256;

struct RecordedFile {
    digest: KnownDigest,
}

struct MetadataSeed {
    path: PathBuf,
    identity: FileIdentity,
    sha256: String,
    state: Sha256State,
    recorded: Instant,
}

#[derive(Default)]
struct Inner {
    files: HashMap<PathBuf, RecordedFile>,
    /// Per upload area root: recent small tarballs, newest last.
    seeds: HashMap<PathBuf, Vec<MetadataSeed>>,
}

/// The gateway's [`DigestCache`].
#[derive(Default)]
pub struct UploadDigests {
    inner: Mutex<Inner>,
}

impl UploadDigests {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Remembers the digests of the file now at `path` (just renamed into place), when
    /// `digest.identity` is still what the path names.
    pub fn record(&self, path: &Path, digest: KnownDigest) {
        if FileIdentity::of_path(path) != Some(digest.identity)
            || digest.identity.size() != digest.size
        {
            return;
        }
        let mut inner = self.lock();
        if inner.files.len() >= SWEEP_ABOVE {
            inner
                .files
                .retain(|path, file| FileIdentity::of_path(path) == Some(file.digest.identity));
        }
        inner
            .files
            .insert(path.to_path_buf(), RecordedFile { digest });
    }

    /// Offers the finished-but-unfinalised sha256 state of a small tarball at `path` (in the
    /// area rooted at `area`) to root uploads that follow.
    pub fn record_metadata_seed(
        &self,
        area: &Path,
        path: &Path,
        sha256: String,
        state: Sha256State,
    ) {
        let Some(identity) = FileIdentity::of_path(path) else {
            return;
        };
        let mut inner = self.lock();
        let seeds = inner.seeds.entry(area.to_path_buf()).or_default();
        seeds.retain(|seed| seed.path != path && seed.recorded.elapsed() < METADATA_SEED_LIFETIME);
        seeds.push(MetadataSeed {
            path: path.to_path_buf(),
            identity,
            sha256,
            state,
            recorded: Instant::now(),
        });
        let excess = seeds.len().saturating_sub(METADATA_SEEDS_PER_AREA);
        seeds.drain(..excess);
    }

    /// The hash states a root upload starting now in `area` should continue: (sha256 of the
    /// metadata tarball, its sha256 state). Newest first; only files still unchanged.
    pub fn metadata_seeds(&self, area: &Path) -> Vec<(String, Sha256State)> {
        let mut inner = self.lock();
        let Some(seeds) = inner.seeds.get_mut(area) else {
            return Vec::new();
        };
        seeds.retain(|seed| {
            seed.recorded.elapsed() < METADATA_SEED_LIFETIME
                && FileIdentity::of_path(&seed.path) == Some(seed.identity)
        });
        seeds
            .iter()
            .rev()
            .map(|seed| (seed.sha256.clone(), seed.state.clone()))
            .collect()
    }

    /// Carries what is known about the file `from` over to `to` after a rename. `moved` is
    /// the renamed file's identity (from its open descriptor) before and after: a rename
    /// changes the ctime, and the digests follow only the very file they were taken of.
    pub fn renamed_file(
        &self,
        from: &Path,
        to: &Path,
        moved: Option<(FileIdentity, FileIdentity)>,
    ) {
        let mut inner = self.lock();
        inner.files.remove(to);
        let carried = inner.files.remove(from);
        if let (Some(mut file), Some((before, after))) = (carried, moved)
            && file.digest.identity == before
        {
            file.digest.identity = after;
            inner.files.insert(to.to_path_buf(), file);
        }
        for seeds in inner.seeds.values_mut() {
            seeds.retain(|seed| seed.path != to);
            seeds.retain_mut(|seed| match moved {
                Some((before, after)) if seed.path == from && seed.identity == before => {
                    seed.path = to.to_path_buf();
                    seed.identity = after;
                    true
                }
                _ => seed.path != from,
            });
        }
    }

    /// Drops everything known under the directory `dir` (renamed or removed): the files in it
    /// may be replaced while it is elsewhere.
    pub fn forget_under(&self, dir: &Path) {
        let mut inner = self.lock();
        inner.files.retain(|path, _| !path.starts_with(dir));
        for seeds in inner.seeds.values_mut() {
            seeds.retain(|seed| !seed.path.starts_with(dir));
        }
    }

    /// Drops what is known about `path` (it was removed or renamed).
    pub fn forget(&self, path: &Path) {
        let mut inner = self.lock();
        inner.files.remove(path);
        for seeds in inner.seeds.values_mut() {
            seeds.retain(|seed| seed.path != path);
        }
    }
}

impl DigestCache for UploadDigests {
    fn lookup(&self, path: &Path) -> Option<KnownDigest> {
        let identity = FileIdentity::of_path(path)?;
        let inner = self.lock();
        let file = inner.files.get(path)?;
        (file.digest.identity == identity).then(|| file.digest.clone())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn entries_go_stale_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        std::fs::write(&path, b"hsqs-data").unwrap();
        let digests = UploadDigests::new();
        let known = KnownDigest {
            identity: FileIdentity::of_path(&path).unwrap(),
            size: 9,
            sha256: "abc".into(),
            combined: vec![("meta".into(), "both".into())],
        };
        digests.record(&path, known.clone());
        assert_eq!(digests.lookup(&path).unwrap().sha256, "abc");
        // Replaced by rename (a new inode), as an upload over it would.
        let other = dir.path().join("other");
        std::fs::write(&other, b"hsqs-data").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(digests.lookup(&path).is_none());
        // A record whose size disagrees with the file is not kept.
        digests.record(&path, KnownDigest { size: 3, ..known });
        assert!(digests.lookup(&path).is_none());
    }

    #[test]
    fn metadata_seeds_continue_into_the_combined_hash() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("lxd.tar.xz");
        std::fs::write(&meta, b"metadata").unwrap();
        let mut state = Sha256State::new();
        state.update(b"metadata");
        let digests = UploadDigests::new();
        digests.record_metadata_seed(dir.path(), &meta, "m".into(), state);
        let seeds = digests.metadata_seeds(dir.path());
        assert_eq!(seeds.len(), 1);
        let mut combined = seeds[0].1.clone();
        combined.update(b"root");
        assert_eq!(combined.finalize()[..], Sha256::digest(b"metadataroot")[..]);
        std::fs::remove_file(&meta).unwrap();
        assert!(digests.metadata_seeds(dir.path()).is_empty());
    }
}

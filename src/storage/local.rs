//! The published tree on the local filesystem: `www/`, with the record at
//! `state/catalog.json`. Staged files come from `tmp/` on the same filesystem, so placing one
//! is a rename (then a directory fsync); a reader holds an open file, so a rename or a
//! deletion never cuts a download short. Readers get the file itself: the HTTP side reads it
//! with `preadv2(RWF_NOWAIT)` from the page cache on the async threads and sends it with
//! `sendfile(2)` over plain HTTP.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::{ObjectMeta, ObjectReader, ObjectVersion, Opened, PublishedTree, mid_line_vec, shrank};
use crate::fsutil;

pub struct LocalTree {
    /// `www/`, canonical: an opened file must lie below it.
    root: PathBuf,
    /// `www/` held open, so that a `stat` (one per JSON request) walks only the key's own
    /// path, not the root's.
    root_dir: std::os::fd::OwnedFd,
    record: PathBuf,
}

impl LocalTree {
    /// The tree at `www` (which must exist), with the record at `record`.
    pub fn new(www: &Path, record: PathBuf) -> io::Result<LocalTree> {
        let root = fs::canonicalize(www).map_err(|e| fsutil::with_path(e, "cannot open", www))?;
        let root_dir = rustix::fs::open(
            &root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| fsutil::with_path(e.into(), "cannot open", &root))?;
        Ok(LocalTree {
            root,
            root_dir,
            record,
        })
    }

    fn full_path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// Errors that mean "no such object": not found, not a directory, a symlink loop.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidFilename
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

fn meta_of(meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        size: meta.size(),
        modified: UNIX_EPOCH
            + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec().max(0) as u32),
        version: ObjectVersion::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.size(),
        },
    }
}

/// [`meta_of`] from a raw `stat`.
fn meta_of_stat(stat: &rustix::fs::Stat) -> ObjectMeta {
    let (seconds, nanos) = (stat.st_mtime, stat.st_mtime_nsec);
    ObjectMeta {
        size: stat.st_size as u64,
        modified: UNIX_EPOCH + Duration::new(seconds.max(0) as u64, nanos as u32),
        version: ObjectVersion::Inode {
            dev: stat.st_dev,
            ino: stat.st_ino,
            mtime_ns: i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
            size: stat.st_size as u64,
        },
    }
}

impl PublishedTree for LocalTree {
    fn place(&self, staged: &Path, key: &str) -> io::Result<()> {
        fsutil::rename_durably(staged, &self.full_path(key))
    }

    fn replace(&self, staged: &Path, key: &str) -> io::Result<()> {
        fsutil::rename_durably(staged, &self.full_path(key))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let full = self.full_path(key);
        match fs::remove_file(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fsutil::with_path(e, "cannot delete", &full)),
        }
        if let Some(parent) = full.parent() {
            fsutil::remove_empty_dirs(parent, &self.root.join("images"));
        }
        Ok(())
    }

    /// Opens `key` when its real path lies below `www/` and it is a regular file: a symbolic
    /// link that leaves the tree, a directory, a FIFO or a symlink loop are all `None`.
    fn open(&self, key: &str) -> io::Result<Option<Opened>> {
        let full = self.full_path(key);
        let real = match fs::canonicalize(&full) {
            Ok(real) => real,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(fsutil::with_path(e, "cannot open", &full)),
        };
        if !real.starts_with(&self.root) {
            return Ok(None);
        }
        // O_NONBLOCK: opening a FIFO someone left in www/ must not hang; it is refused below.
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&real)
        {
            Ok(file) => file,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(fsutil::with_path(e, "cannot open", &real)),
        };
        let meta = file
            .metadata()
            .map_err(|e| fsutil::with_path(e, "cannot stat", &real))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(Opened {
            meta: meta_of(&meta),
            reader: Arc::new(LocalObject { file }),
        }))
    }

    /// One `stat` of the path below the held `www/` (symbolic links followed, as a path
    /// would be); only regular files are objects.
    fn stat(&self, key: &str) -> io::Result<Option<ObjectMeta>> {
        match rustix::fs::statat(&self.root_dir, key, rustix::fs::AtFlags::empty()) {
            Ok(stat) if rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file() => {
                Ok(Some(meta_of_stat(&stat)))
            }
            Ok(_) => Ok(None),
            Err(e) => {
                let e = io::Error::from(e);
                if is_missing(&e) {
                    Ok(None)
                } else {
                    Err(fsutil::with_path(e, "cannot stat", &self.full_path(key)))
                }
            }
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        let mut pending = vec![self.full_path(prefix)];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fsutil::with_path(e, "cannot list", &dir)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| fsutil::with_path(e, "cannot list", &dir))?;
                let path = entry.path();
                let file_type = entry
                    .file_type()
                    .map_err(|e| fsutil::with_path(e, "cannot stat", &path))?;
                if file_type.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&self.root) {
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        Ok(found)
    }

    fn read_record(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.record) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fsutil::with_path(e, "cannot read", &self.record)),
        }
    }

    fn commit_record(&self, staged: &Path) -> io::Result<()> {
        fsutil::rename_durably(staged, &self.record)
    }
}

/// An open file of the tree.
#[derive(Debug)]
struct LocalObject {
    file: File,
}

impl ObjectReader for LocalObject {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                shrank()
            } else {
                e
            }
        })
    }

    fn poll_read(
        &self,
        _cx: &mut Context<'_>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Ready(read_cached(&self.file, offset, len))
    }

    fn local_file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Reads up to `len` bytes at `offset` only if they are in the page cache; None when the
/// read would have to wait for the disk (or the kernel cannot tell).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let (mut buf, pad) = mid_line_vec(len);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len.min(spare.len()),
    };
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: the iovec points into `buf`'s spare capacity, which outlives the call; the
    // kernel writes at most `iov_len` bytes there.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Err(shrank());
    }
    // SAFETY: the kernel initialised the `n` bytes after the padding.
    unsafe { buf.set_len(pad + n as usize) };
    Ok(Some(Bytes::from(buf).slice(pad..)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_cached(_file: &File, _offset: u64, _len: usize) -> io::Result<Option<Bytes>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_www_and_directories_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        fs::create_dir_all(www.join("images/d")).unwrap();
        fs::write(dir.path().join("secret"), b"s").unwrap();
        fs::write(www.join("images/f"), b"f").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), www.join("images/out")).unwrap();
        std::os::unix::fs::symlink(dir.path(), www.join("images/outdir")).unwrap();
        std::os::unix::fs::symlink(www.join("images/f"), www.join("images/in")).unwrap();
        let tree = LocalTree::new(&www, dir.path().join("catalog.json")).unwrap();
        let open = |key: &str| tree.open(key).unwrap().is_some();
        assert!(open("images/f"));
        assert!(open("images/in"));
        assert!(!open("images/out"));
        assert!(!open("images/outdir/secret"));
        assert!(!open("images/d"));
        assert!(!open("images/missing"));
        assert!(!open("images/f/below-a-file"));
    }

    #[test]
    fn a_replaced_file_is_a_new_version_and_an_open_one_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        fs::create_dir_all(&www).unwrap();
        let tree = LocalTree::new(&www, dir.path().join("catalog.json")).unwrap();
        let staged = dir.path().join("staged");
        fs::write(&staged, b"one").unwrap();
        tree.replace(&staged, "streams/v1/index.json").unwrap();
        let first = tree.open("streams/v1/index.json").unwrap().unwrap();
        fs::write(&staged, b"two!").unwrap();
        tree.replace(&staged, "streams/v1/index.json").unwrap();
        let second = tree.stat("streams/v1/index.json").unwrap().unwrap();
        assert_ne!(first.meta.version, second.version);
        assert_eq!(second.size, 4);
        let mut buf = [0u8; 3];
        first.reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"one");
        assert_eq!(
            tree.read_to_vec("streams/v1/index.json", 100).unwrap(),
            Some(b"two!".to_vec())
        );
        assert!(tree.read_record().unwrap().is_none());
        assert!(tree.stat("streams").unwrap().is_none());
    }
}

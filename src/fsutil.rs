//! Durable file operations. A file is published by writing a temp file, fsyncing it, renaming
//! it over the target and fsyncing the directory: after a crash a reader sees the old file or
//! the new one, never a mix, and a rename that was reported done stays done.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Adds the path to an I/O error, so that "No such file" says which file.
pub fn with_path(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{action} {}: {}", path.display(), plain_message(&e)),
    )
}

/// Characters a terminal acts on or hides: control characters (escape sequences, a newline
/// that forges a second line) and invisible direction marks (which can make `gpj.exe` read
/// as `exe.jpg`).
fn is_tricky(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `text` with every tricky character written as its escape (`\u{1b}`), so that text an
/// image or a client chose can be printed for people: it shows, it never acts.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if is_tricky(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A file name fit for a one-line message: a name with tricky characters is shown quoted
/// and escaped.
pub fn printable_name(name: &str) -> String {
    if name.chars().any(is_tricky) {
        format!("\"{}\"", escape_controls(name))
    } else {
        name.to_string()
    }
}

/// `text` cut to `max_bytes` (at a character boundary) with `…` when longer: a field of a
/// log line that a client chose (a path, a user agent, a login) stays bounded.
pub fn clip(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `text` on one line: control characters (from a corrupt header, a file name) become spaces,
/// runs of blanks one space, so a message can never forge or split log and error lines.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// An io::Error's message without the "(os error N)" suffix.
pub fn plain_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, "cannot sync directory", dir))
}

/// What identifies one version of a file: device, inode, size, mtime and ctime. A user can
/// set a file's mtime and may get a freed inode back, but cannot set its ctime, so a file
/// replaced or changed since has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The identity of the open file.
    pub fn of_file(file: &File) -> io::Result<FileIdentity> {
        file.metadata().map(|meta| FileIdentity::of(&meta))
    }

    /// The identity of the regular file at `path` (not following a final symlink).
    pub fn of_path(path: &Path) -> Option<FileIdentity> {
        let meta = fs::symlink_metadata(path).ok()?;
        meta.is_file().then(|| FileIdentity::of(&meta))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Same inode on the same device (whatever happened to its content since).
    pub fn same_inode(&self, other: &FileIdentity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Hard-links the open `file` to `dest`: the file that was opened, whatever its path names
/// now. `Ok(false)` when linking is impossible here (another filesystem, no links, no
/// `/proc`, or the file was deleted): the caller copies from `file` instead.
pub fn link_open_file(file: &File, dest: &Path) -> io::Result<bool> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::unix::io::AsRawFd;
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    match linkat(CWD, source.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(true),
        Err(errno) => {
            let e = io::Error::from(errno);
            match e.raw_os_error() {
                Some(libc::EXDEV | libc::EPERM | libc::EOPNOTSUPP | libc::ENOENT) => Ok(false),
                _ => Err(with_path(e, "cannot link", dest)),
            }
        }
    }
}

/// A fresh temp path in `tmp_dir`: `<prefix>-<pid>-<counter>`. The pid lets a later process
/// tell a crashed writer's leftovers from a live one's.
pub fn temp_path(tmp_dir: &Path, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{prefix}-{}-{n}", std::process::id()))
}

/// A fully written and synced file in the staging folder, deleted on drop unless it was
/// renamed away. Writing first and renaming later lets a change allocate all its space before
/// its commit point, so a full disk can only stop it before anything is visible.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Writes `bytes` for the file `what` (named in errors: "journal.json", "images.json").
    pub fn write(tmp_dir: &Path, what: &str, bytes: &[u8]) -> io::Result<TempFile> {
        let temp = TempFile {
            path: temp_path(tmp_dir, "write"),
        };
        let fail = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot write {what}: {}", plain_message(&e)),
            )
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)
            .map_err(fail)?;
        file.write_all(bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        Ok(temp)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Renamed away on success: NotFound is the normal case.
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes `bytes` to `dest` atomically and durably, staging in `tmp_dir` (same filesystem).
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let what = dest.file_name().map_or_else(
        || dest.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = TempFile::write(tmp_dir, &what, bytes)?;
    rename_durably(temp.path(), dest)
}

/// Renames `from` to `to` (creating `to`'s parents) and fsyncs the target directory.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    let parent = to.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| with_path(e, "cannot create", parent))?;
    fs::rename(from, to).map_err(|e| with_path(e, "cannot rename into", to))?;
    fsync_dir(parent)
}

/// A file being filled with a large copy that will be fsynced at the end. It asks the kernel
/// to start writing each block back as soon as it is written, so the final fsync finds little
/// left to do and the copy runs at the disk's speed instead of waiting for it at the end.
pub struct WritebackFile {
    file: File,
    written: u64,
    kicked: u64,
}

/// Bytes between writeback requests.
const WRITEBACK_STEP: u64 = 16 << 20;

impl WritebackFile {
    pub fn new(file: File) -> Self {
        WritebackFile {
            file,
            written: 0,
            kicked: 0,
        }
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.kicked >= WRITEBACK_STEP {
            // DONTNEED starts writeback of the dirty range (and drops it from the cache once
            // clean). Advice only: a failure changes nothing but speed.
            let len = std::num::NonZeroU64::new(self.written - self.kicked);
            let _ = rustix::fs::fadvise(&self.file, self.kicked, len, rustix::fs::Advice::DontNeed);
            self.kicked = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Makes `dest` a copy-on-write clone of `source` (btrfs, XFS, ZFS 2.2 block cloning): a copy
/// that costs no data writes. `Ok(false)` when the filesystem cannot clone.
pub fn try_reflink(source: &File, dest: &File) -> io::Result<bool> {
    use rustix::io::Errno;
    match rustix::fs::ioctl_ficlone(dest, source) {
        Ok(()) => Ok(true),
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::BADF) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the temp files in `tmp_dir` whose writer process is gone.
pub fn remove_orphaned_temp_files(tmp_dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(tmp_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(with_path(e, "cannot list", tmp_dir)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(writer_pid) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            let result = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if result.is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn writer_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let _counter = parts.next()?;
    parts.next()?.parse().ok()
}

/// Removes `dir` and its now-empty parents up to (not including) `stop`.
pub fn remove_empty_dirs(mut dir: &Path, stop: &Path) {
    while dir.starts_with(stop) && dir != stop {
        if fs::remove_dir(dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_show_what_a_terminal_would_act_on() {
        assert_eq!(
            escape_controls("a\x1b[2Jb\u{202e}c"),
            "a\\u{1b}[2Jb\\u{202e}c"
        );
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(printable_name("x\ny"), "\"x\\u{a}y\"");
    }

    #[test]
    fn one_line_removes_control_characters() {
        assert_eq!(one_line("a\n\n\tb\0c \r\n"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn temp_names_carry_the_pid() {
        let path = temp_path(Path::new("/x"), "stage");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(writer_pid(name), Some(std::process::id()));
        assert_eq!(writer_pid("README"), None);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b.json");
        write_atomic(dir.path(), &dest, b"one").unwrap();
        write_atomic(dir.path(), &dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }
}

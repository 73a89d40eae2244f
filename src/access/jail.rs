//! The upload-area jail. A client path (SFTP, `scp -t`, exec arguments) is normalised once,
//! here, into a [`JailedPath`]; nothing else turns client text into a filesystem path.
//!
//! Checks, in order: refuse NUL, backslash, control characters and U+FFFD (names that mean
//! different things to different layers); read a leading `~` as the area's root; split on
//! `/`, dropping empty and `.` parts; refuse
//! `..` (no climbing, even when it would stay inside); refuse names of the server's own
//! temp files. The result is the area root joined with clean parts, so containment holds
//! component by component, never by string prefix. Symlinks are refused at use by
//! [`JailedPath::check_no_symlinks`]: the server never creates any and never follows one.

use std::io;
use std::path::{Path, PathBuf};

/// Prefix of in-progress upload files: hidden from listings and not addressable by clients.
pub const UPLOAD_TEMP_PREFIX: &str = ".upload-";

/// Longest accepted client path and path part, in bytes.
const MAX_PATH: usize = 1024;
const MAX_PART: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JailError {
    #[error("{} is not an allowed file name: {}", shown(.0), .1)]
    BadName(String, &'static str),
    #[error("{} leaves your upload area", shown(.0))]
    Escape(String),
    #[error("{} goes through a symbolic link, which uploads may not use", shown(.0))]
    Symlink(String),
}

/// Characters of a client path repeated in a message: enough to recognise it, and a
/// 2,000-byte name does not bury the reason after it.
const SHOWN_CHARS: usize = 80;

/// The path quoted and escaped as Rust does (`"a\0b"`), cut to [`SHOWN_CHARS`] with `…`.
fn shown(path: &str) -> String {
    let quoted = format!("{path:?}");
    if quoted.chars().count() <= SHOWN_CHARS {
        return quoted;
    }
    let start: String = quoted.chars().take(SHOWN_CHARS).collect();
    format!("{start}…\"")
}

/// One user's private upload area, `data/incoming/<user>/`.
#[derive(Debug, Clone)]
pub struct UploadArea {
    root: PathBuf,
}

/// A path inside an upload area: `parts` are clean names, `full` is root joined with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailedPath {
    full: PathBuf,
    parts: Vec<String>,
}

impl UploadArea {
    pub fn new(root: PathBuf) -> Self {
        UploadArea { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the area (0700) when it does not exist yet.
    pub fn ensure_exists(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
    }

    /// Resolves a client path. Absolute paths are taken from the area's root (`/x` is the
    /// area's `x`); relative ones from the root too, which is every session's directory.
    pub fn resolve(&self, client_path: &str) -> Result<JailedPath, JailError> {
        let bad = |why: &'static str| JailError::BadName(client_path.to_string(), why);
        if client_path.len() > MAX_PATH {
            return Err(bad("it is too long"));
        }
        if client_path.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        if client_path.contains('\\') {
            return Err(bad("it contains a backslash"));
        }
        if client_path
            .chars()
            .any(|c| c.is_control() || c == '\u{fffd}')
        {
            return Err(bad("it contains control or replacement characters"));
        }
        // `~` first means the area's root: it is every user's home (`scp f host:~/`,
        // `scp -t ~/x`, `sftp cd ~`), so a shell-less server gives it that meaning too.
        let client_path = match client_path.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => client_path,
        };
        let mut parts = Vec::new();
        for part in client_path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(JailError::Escape(client_path.to_string())),
                name if name.len() > MAX_PART => {
                    return Err(bad("a part of it is longer than 255 bytes"));
                }
                name if name.starts_with(UPLOAD_TEMP_PREFIX) => {
                    return Err(bad("it is reserved for uploads in progress"));
                }
                name => parts.push(name.to_string()),
            }
        }
        let mut full = self.root.clone();
        full.extend(&parts);
        Ok(JailedPath { full, parts })
    }
}

impl JailedPath {
    /// The real path on disk.
    pub fn full(&self) -> &Path {
        &self.full
    }

    /// True for the area's root itself.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path as the client sees it: `/` for the root, `/a/b` below it.
    pub fn client_view(&self) -> String {
        format!("/{}", self.parts.join("/"))
    }

    /// The last part, for a file.
    pub fn file_name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The clean parts below the area's root.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The directory that holds this path; `None` for the area's root.
    pub fn parent(&self) -> Option<JailedPath> {
        let (_, parent_parts) = self.parts.split_last()?;
        let mut full = self.full.clone();
        full.pop();
        Some(JailedPath {
            full,
            parts: parent_parts.to_vec(),
        })
    }

    /// A path below this one, one name at a time (a name given by `scp -t` or a directory
    /// walk): the name passes the same checks as in [`UploadArea::resolve`] and may not hold `/`.
    pub fn child(&self, name: &str) -> Result<JailedPath, JailError> {
        if name.contains('/') {
            return Err(JailError::BadName(name.to_string(), "it contains a slash"));
        }
        if name.is_empty() || name == "." {
            return Err(JailError::BadName(
                name.to_string(),
                "it is not a file name",
            ));
        }
        let probe = UploadArea::new(PathBuf::new()).resolve(name)?;
        let mut parts = self.parts.clone();
        parts.extend(probe.parts);
        let mut full = self.full.clone();
        full.push(name);
        Ok(JailedPath { full, parts })
    }

    /// A hidden temp path next to this one, where an upload is written before it is renamed
    /// into place: same directory, so the rename is atomic; hidden and unaddressable, so an
    /// interrupted upload never shows.
    pub fn temp_sibling(&self, unique: &str) -> PathBuf {
        let mut temp = self.full.clone();
        temp.pop();
        temp.push(format!("{UPLOAD_TEMP_PREFIX}{unique}"));
        temp
    }

    /// Refuses when any existing part of the path (inside the area) is a symbolic link.
    pub fn check_no_symlinks(&self, area: &UploadArea) -> Result<(), JailError> {
        let mut current = area.root.clone();
        for part in &self.parts {
            current.push(part);
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(JailError::Symlink(self.client_view()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> UploadArea {
        UploadArea::new(PathBuf::from("/data/incoming/alice"))
    }

    #[test]
    fn normalises_inside_the_area() {
        let area = area();
        for (client, full, view) in [
            (
                "img.tar.xz",
                "/data/incoming/alice/img.tar.xz",
                "/img.tar.xz",
            ),
            (
                "./img.tar.xz",
                "/data/incoming/alice/img.tar.xz",
                "/img.tar.xz",
            ),
            (
                "/img.tar.xz",
                "/data/incoming/alice/img.tar.xz",
                "/img.tar.xz",
            ),
            ("a//b/./c", "/data/incoming/alice/a/b/c", "/a/b/c"),
            ("~", "/data/incoming/alice", "/"),
            ("~/x", "/data/incoming/alice/x", "/x"),
            ("~x", "/data/incoming/alice/~x", "/~x"),
            ("a/~", "/data/incoming/alice/a/~", "/a/~"),
            (".", "/data/incoming/alice", "/"),
            ("/", "/data/incoming/alice", "/"),
            ("", "/data/incoming/alice", "/"),
        ] {
            let jailed = area.resolve(client).unwrap();
            assert_eq!(jailed.full(), Path::new(full), "{client}");
            assert_eq!(jailed.client_view(), view, "{client}");
        }
    }

    #[test]
    fn refuses_escapes_and_odd_names() {
        let area = area();
        for client in ["..", "../bob/x", "a/../../x", "/../../etc/passwd", "a/.."] {
            assert_eq!(
                area.resolve(client),
                Err(JailError::Escape(client.to_string())),
                "{client}"
            );
        }
        for client in [
            "a\0b",
            "a\\b",
            "a\nb",
            "bad\u{fffd}",
            ".upload-123",
            &"x".repeat(300),
            &"a/".repeat(600),
        ] {
            assert!(
                matches!(area.resolve(client), Err(JailError::BadName(..))),
                "{client:?}"
            );
        }
    }

    #[test]
    fn messages_quote_a_long_path_in_part_and_keep_the_reason() {
        let message = area().resolve(&"a/".repeat(600)).unwrap_err().to_string();
        assert!(
            message.ends_with("is not an allowed file name: it is too long"),
            "{message}"
        );
        assert!(message.len() < 150, "{message}");
        assert_eq!(
            JailError::Escape("../x".into()).to_string(),
            "\"../x\" leaves your upload area"
        );
    }

    #[test]
    fn children_parents_and_temp_siblings_stay_inside() {
        let area = area();
        let dir = area.resolve("sub").unwrap();
        let file = dir.child("img.tar.xz").unwrap();
        assert_eq!(
            file.full(),
            Path::new("/data/incoming/alice/sub/img.tar.xz")
        );
        assert_eq!(file.client_view(), "/sub/img.tar.xz");
        assert_eq!(file.parent().unwrap(), dir);
        assert!(area.resolve("/").unwrap().parent().is_none());
        let temp = file.temp_sibling("42");
        assert_eq!(temp, Path::new("/data/incoming/alice/sub/.upload-42"));
        for bad in ["..", "a/b", "", ".", ".upload-1", "x\0y", "x\\y"] {
            assert!(dir.child(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_inside_the_area_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let area = UploadArea::new(dir.path().to_path_buf());
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let jailed = area.resolve("link/passwd").unwrap();
        assert_eq!(
            jailed.check_no_symlinks(&area),
            Err(JailError::Symlink("/link/passwd".into()))
        );
        assert!(
            area.resolve("plain")
                .unwrap()
                .check_no_symlinks(&area)
                .is_ok()
        );
    }
}

//! A user's upload area and everything done to it, whichever door asks: SFTP, the `scp -t`
//! sink, `import` and `uploads`. One owner, so that every door writes, renames, removes and
//! lists the same way, and the quota, the entry counts, the upload-time digests and the audit
//! lines stay true whatever door was used.
//!
//! # Layout
//! - [`UploadAreas`]: shared by the whole process: the accounts ([`account`]), the digests
//!   ([`digests`]), the audit log and the limits (read from the live configuration, so a
//!   reload applies at once).
//! - [`UserArea`]: one user's area, the type every door calls: [`UserArea::upload`] (temp
//!   file, then rename on commit: [`upload`], written by a [`disk_writer`](crate::disk_writer) thread),
//!   [`UserArea::rename`], [`UserArea::remove_file`], [`UserArea::make_dir`],
//!   [`UserArea::remove_dir`], [`UserArea::list`] and [`UserArea::imported`].
//!
//! Temp files of uploads in progress live in one directory per user outside every area,
//! `incoming/.upload-tmp/<user>/` ([`TEMP_DIR`]), not next to their target: whatever the
//! client renames meanwhile, an unfinished upload's temp file is found and deleted, and its
//! bytes are released. Same filesystem as the areas, so the commit is still one rename.

mod account;
pub mod digests;
pub mod upload;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde_json::json;

use crate::access::jail::UPLOAD_TEMP_PREFIX;
use crate::access::{JailError, JailedPath, UploadArea};
use crate::audit::Audit;
use crate::catalog::import::DigestCache;
use crate::config::{Config, LiveConfig};
use crate::format::human_size;
use crate::fsutil::FileIdentity;
use crate::limits::{SlotPermit, Slots, SlotsFull};

pub use account::Usage;
use account::{Account, scan};
pub use digests::UploadDigests;
pub use upload::{Committed, Upload, UploadError};

/// The hidden directory under `incoming/` that holds, per user, the temp files of uploads in
/// progress (no user name starts with a dot, and no area reaches outside itself).
pub const TEMP_DIR: &str = ".upload-tmp";

/// Writer threads at once, across all areas.
const WRITER_THREADS: usize = 32;
/// SFTP sessions one user may have open at once, over all their connections (each
/// connection holds at most `ssh::session::MAX_CHANNELS` channels anyway).
pub const MAX_SESSIONS_PER_USER: usize = 16;
/// SFTP sessions open at once, in all.
const MAX_SESSIONS: usize = 1024;
/// Open files and directories (SFTP handles) one user may hold, over all their sessions.
pub const MAX_HANDLES_PER_USER: usize = 256;
/// File descriptors kept out of the handles' budget, for HTTPS and SSH accepts, TLS, the
/// catalog and upload writers: handles can never starve them.
const FD_RESERVE: u64 = 1024;

/// What the process shares across every upload area.
pub struct UploadAreas {
    incoming: PathBuf,
    live: Arc<LiveConfig>,
    accounts: Mutex<HashMap<PathBuf, Arc<Account>>>,
    /// What was hashed while files arrived, for `import` and `uploads`.
    pub digests: UploadDigests,
    pub audit: Arc<Audit>,
    /// Upload writer threads that may run at once ([`disk_writer`](crate::disk_writer)); uploads beyond that are
    /// written without a thread and not hashed on the way in.
    writer_slots: Arc<tokio::sync::Semaphore>,
    /// SFTP sessions, in all and per user.
    sessions: Arc<Slots<String>>,
    /// Open handles (each one file descriptor), in all (the descriptor budget) and per user.
    handles: Arc<Slots<String>>,
}

/// The file descriptors the process may open: the soft limit, raised to the hard one first.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(hard), Some(soft)) = (limit.maximum, limit.current)
        && soft < hard
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

impl UploadAreas {
    /// The areas under `incoming` (`data/incoming/`).
    pub fn new(incoming: PathBuf, live: Arc<LiveConfig>, audit: Arc<Audit>) -> UploadAreas {
        UploadAreas {
            incoming,
            live,
            accounts: Mutex::new(HashMap::new()),
            digests: UploadDigests::new(),
            audit,
            writer_slots: Arc::new(tokio::sync::Semaphore::new(WRITER_THREADS)),
            sessions: Slots::new(MAX_SESSIONS, MAX_SESSIONS_PER_USER),
            handles: Slots::new(handle_budget(), MAX_HANDLES_PER_USER),
        }
    }

    /// The configuration in force now (limits apply from the next request after a reload).
    pub fn config(&self) -> Arc<Config> {
        self.live.current()
    }

    /// `data/incoming/`.
    pub fn incoming(&self) -> &Path {
        &self.incoming
    }

    /// `user`'s area, through the jail `area` (as the caller's identity gives it).
    pub fn user(self: &Arc<Self>, user: &str, area: &UploadArea) -> UserArea {
        UserArea {
            areas: self.clone(),
            user: user.to_string(),
            jail: area.clone(),
        }
    }

    /// The digests of uploads, as `import` asks for them.
    pub fn digest_cache(&self) -> &dyn DigestCache {
        &self.digests
    }

    fn loaded_account(&self, root: &Path) -> Option<Arc<Account>> {
        let accounts = match self.accounts.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        accounts.get(root).cloned()
    }

    /// The account of the area at `root`; scanned here only if no door prepared it.
    fn account(&self, root: &Path) -> io::Result<Arc<Account>> {
        match self.loaded_account(root) {
            Some(account) => Ok(account),
            None => Ok(self.store_scan(root, scan(root)?)),
        }
    }

    /// Scans the area at `root` on a blocking thread, the first time or again when its
    /// account is stale and idle, so that the session's task never walks a directory tree.
    async fn prepare(&self, root: &Path) -> io::Result<()> {
        if self
            .loaded_account(root)
            .is_some_and(|account| !account.wants_rescan())
        {
            return Ok(());
        }
        let owned = root.to_path_buf();
        let scanned = tokio::task::spawn_blocking(move || scan(&owned))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        self.store_scan(root, scanned);
        Ok(())
    }

    fn store_scan(&self, root: &Path, scanned: Usage) -> Arc<Account> {
        let mut accounts = match self.accounts.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let account = accounts
            .entry(root.to_path_buf())
            .or_insert_with(|| Arc::new(Account::new(scanned)))
            .clone();
        account.rescanned(scanned);
        account
    }

    /// Deletes temp files left by uploads of a previous run (only this process writes them,
    /// and it has just started): each area's [`TEMP_DIR`], and temp files next to their
    /// targets as earlier versions wrote them.
    pub fn remove_stale_temp_files(&self) -> usize {
        let mut removed = 0;
        let mut pending = vec![self.incoming.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let temp = entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(UPLOAD_TEMP_PREFIX);
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() && temp && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// One user's upload area: every door's way in.
#[derive(Clone)]
pub struct UserArea {
    areas: Arc<UploadAreas>,
    user: String,
    jail: UploadArea,
}

/// One finished upload, as `uploads` lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The path inside the area, as scp/sftp/import name it (no leading `/`).
    pub name: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: i64,
    /// Known when the file was hashed while it arrived.
    pub sha256: Option<String>,
}

impl UserArea {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn jail(&self) -> &UploadArea {
        &self.jail
    }

    pub fn root(&self) -> &Path {
        self.jail.root()
    }

    pub fn areas(&self) -> &Arc<UploadAreas> {
        &self.areas
    }

    /// A client path made real through the jail, with no symbolic link on the way.
    pub fn resolve(&self, client_path: &str) -> Result<JailedPath, JailError> {
        let path = self.jail.resolve(client_path)?;
        path.check_no_symlinks(&self.jail)?;
        Ok(path)
    }

    fn audit(&self, event: &str, mut fields: serde_json::Value) {
        if let Some(object) = fields.as_object_mut() {
            object.insert("user".into(), self.user.clone().into());
        }
        self.areas.audit.record(event, fields);
    }

    fn account(&self) -> Result<Arc<Account>, UploadError> {
        self.areas
            .account(self.root())
            .map_err(|e| UploadError::io("measure", "your upload area", &e))
    }

    /// Measures the area off the caller's task when due (the first use, or a stale and idle
    /// account): the doors call it as a session starts.
    pub async fn prepare(&self) -> Result<(), UploadError> {
        self.areas
            .prepare(self.root())
            .await
            .map_err(|e| UploadError::io("measure", "your upload area", &e))
    }

    /// A slot for one more SFTP session of this user, held while it runs.
    pub fn take_session(&self) -> Result<SlotPermit<String>, UploadError> {
        self.areas.sessions.take(self.user.clone()).map_err(|full| {
            UploadError::Refused(match full {
                SlotsFull::Key(held) => format!(
                    "you have {held} SFTP sessions open, the most one user may; close one first"
                ),
                SlotsFull::Total(_) => {
                    "the server has all the SFTP sessions it can take open; try again shortly"
                        .into()
                }
            })
        })
    }

    /// A slot for one more open file or directory of this user, held while it is open.
    pub fn take_handle(&self) -> Result<SlotPermit<String>, UploadError> {
        self.areas.handles.take(self.user.clone()).map_err(|full| {
            UploadError::Refused(match full {
                SlotsFull::Key(held) => format!(
                    "you have {held} files open over SFTP, the most one user may; close some first"
                ),
                SlotsFull::Total(_) => {
                    "the server has as many files open as it allows; close some and try again"
                        .into()
                }
            })
        })
    }

    /// The directory of this user's temp files, created when missing.
    fn temp_dir(&self) -> io::Result<PathBuf> {
        let name = self.root().file_name().unwrap_or_default();
        let dir = self.areas.incoming.join(TEMP_DIR).join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        Ok(dir)
    }

    /// Refuses a new entry at `path` beyond the depth or entry limits.
    fn check_new_entry(&self, path: &JailedPath, account: &Account) -> Result<(), UploadError> {
        let config = self.areas.config();
        let depth = path.parts().len() as u64;
        if config.ssh.max_depth > 0 && depth > config.ssh.max_depth {
            return Err(UploadError::Refused(format!(
                "{} is {depth} levels deep; upload areas allow at most {} (ssh.max_depth)",
                path.client_view(),
                config.ssh.max_depth
            )));
        }
        let limit = config.ssh.max_entries;
        if limit > 0 && account.usage().entries >= limit {
            return Err(UploadError::Refused(format!(
                "cannot create {}: your upload area holds {limit} files and directories, the most allowed (ssh.max_entries); import or remove some first",
                path.client_view()
            )));
        }
        Ok(())
    }

    /// Starts an upload to `path`. `keep_existing`: a file already there keeps its bytes
    /// where the upload does not write (SFTP without TRUNC); `append`: every write goes to
    /// the end (SFTP APPEND).
    pub fn upload(
        &self,
        path: JailedPath,
        keep_existing: bool,
        append: bool,
        protocol: &'static str,
    ) -> Result<Upload, UploadError> {
        if path.is_root() {
            return Err(UploadError::IsDirectory(path.client_view()));
        }
        path.check_no_symlinks(&self.jail)?;
        let account = self.account()?;
        let exists = fs::symlink_metadata(path.full()).is_ok();
        if !exists {
            self.check_new_entry(&path, &account)?;
        }
        let temp_dir = self
            .temp_dir()
            .map_err(|e| UploadError::io("create", &path.client_view(), &e))?;
        Upload::create(
            self.clone(),
            account,
            path,
            &temp_dir,
            keep_existing,
            append,
            protocol,
        )
    }

    /// Removes one finished upload: frees its bytes, forgets its digests, audits it.
    pub fn remove_file(&self, path: &JailedPath, via: &str) -> Result<u64, UploadError> {
        let view = path.client_view();
        let meta =
            fs::symlink_metadata(path.full()).map_err(|e| UploadError::io("remove", &view, &e))?;
        if meta.is_dir() {
            return Err(UploadError::Failed(format!(
                "{view} is a directory; use rmdir"
            )));
        }
        if !meta.is_file() {
            return Err(UploadError::Failed(format!(
                "{view} is not a file; only uploaded files can be removed"
            )));
        }
        let account = self.account()?;
        fs::remove_file(path.full()).map_err(|e| UploadError::io("remove", &view, &e))?;
        account.apply(|usage| {
            usage.finished = usage.finished.saturating_sub(meta.len());
            usage.entries = usage.entries.saturating_sub(1);
        });
        self.areas.digests.forget(path.full());
        self.audit(
            "upload_removed",
            json!({"file": view, "bytes": meta.len(), "via": via}),
        );
        Ok(meta.len())
    }

    /// Renames a file or directory inside the area; `overwrite` replaces a file at `to`.
    pub fn rename(
        &self,
        from: &JailedPath,
        to: &JailedPath,
        overwrite: bool,
    ) -> Result<(), UploadError> {
        if from.is_root() || to.is_root() {
            return Err(UploadError::Refused(
                "the upload area itself cannot be renamed".into(),
            ));
        }
        let from_meta = fs::symlink_metadata(from.full())
            .map_err(|e| UploadError::io("rename", &from.client_view(), &e))?;
        let account = self.account()?;
        let replaced = match fs::symlink_metadata(to.full()) {
            Ok(_) if !overwrite => {
                return Err(UploadError::Failed(format!(
                    "{} already exists; remove it first",
                    to.client_view()
                )));
            }
            Ok(meta) => Some(meta),
            Err(_) => {
                if from_meta.is_dir() {
                    let depth = self.areas.config().ssh.max_depth;
                    if depth > 0 && to.parts().len() as u64 > depth {
                        return Err(UploadError::Refused(format!(
                            "{} would be deeper than {depth} levels (ssh.max_depth)",
                            to.client_view()
                        )));
                    }
                }
                None
            }
        };
        // A file is held open across the rename, so that its digests follow that very file.
        let held = from_meta
            .is_file()
            .then(|| open_no_follow(from.full()).ok())
            .flatten()
            .and_then(|file| Some((FileIdentity::of_file(&file).ok()?, file)));
        fs::rename(from.full(), to.full())
            .map_err(|e| UploadError::io("rename", &from.client_view(), &e))?;
        if let Some(meta) = replaced.filter(|meta| meta.is_file()) {
            account.apply(|usage| {
                usage.finished = usage.finished.saturating_sub(meta.len());
                usage.entries = usage.entries.saturating_sub(1);
            });
        }
        let digests = &self.areas.digests;
        if from_meta.is_dir() {
            digests.forget_under(from.full());
            digests.forget_under(to.full());
        } else {
            let moved = held.and_then(|(before, file)| {
                let after = FileIdentity::of_file(&file).ok()?;
                Some((before, after))
            });
            digests.renamed_file(from.full(), to.full(), moved);
        }
        Ok(())
    }

    /// Creates a directory, within the depth and entry limits.
    pub fn make_dir(&self, path: &JailedPath) -> Result<(), UploadError> {
        let account = self.account()?;
        self.check_new_entry(path, &account)?;
        fs::create_dir(path.full())
            .map_err(|e| UploadError::io("create", &path.client_view(), &e))?;
        account.apply(|usage| usage.entries += 1);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, path: &JailedPath) -> Result<(), UploadError> {
        if path.is_root() {
            return Err(UploadError::Refused(
                "the upload area itself cannot be removed".into(),
            ));
        }
        let account = self.account()?;
        fs::remove_dir(path.full())
            .map_err(|e| UploadError::io("remove", &path.client_view(), &e))?;
        account.apply(|usage| usage.entries = usage.entries.saturating_sub(1));
        self.areas.digests.forget_under(path.full());
        Ok(())
    }

    /// Standard input of `import -`, held to the limit an upload of the same bytes has
    /// (`ssh.max_file_bytes`), so a stream cannot stage more than the user may upload.
    pub fn import_stream(&self, reader: Box<dyn io::Read + Send>) -> Box<dyn io::Read + Send> {
        let limit = self.areas.config().ssh.max_file_bytes;
        if limit == 0 {
            return reader;
        }
        Box::new(SizeLimited {
            inner: reader,
            left: limit,
            limit,
        })
    }

    /// After an import moved the file at `path` (of `bytes`) out of the area: its bytes and
    /// its entry are free, its digests forgotten. Nothing when the file is still there.
    pub fn imported(&self, path: &Path, bytes: u64) {
        if fs::symlink_metadata(path).is_ok() {
            return;
        }
        if let Some(account) = self.areas.loaded_account(self.root()) {
            account.apply(|usage| {
                usage.finished = usage.finished.saturating_sub(bytes);
                usage.entries = usage.entries.saturating_sub(1);
            });
        }
        self.areas.digests.forget(path);
    }

    /// What the area holds now (temp files, symlinks and directories skipped).
    pub fn list(&self) -> Vec<Listed> {
        let mut rows = Vec::new();
        // A directory that cannot be read lists as empty, as before; the rest still lists.
        let _ = account::walk(self.root(), |path, meta| {
            if !meta.is_file() {
                return;
            }
            let name = path
                .strip_prefix(self.root())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            rows.push(Listed {
                name,
                size: meta.len(),
                modified: meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64),
                sha256: self.areas.digests.lookup(path).map(|known| known.sha256),
            });
        });
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// Usage now, if the account is loaded.
    pub fn usage(&self) -> Option<Usage> {
        self.areas
            .loaded_account(self.root())
            .map(|account| account.usage())
    }
}

/// Handles the whole process may hold: the descriptor limit less [`FD_RESERVE`] (at least
/// half the limit, and at least 64).
fn handle_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let budget = limit.saturating_sub(FD_RESERVE).max(limit / 2);
    usize::try_from(budget).unwrap_or(usize::MAX).max(64)
}

/// Opens a file for reading without following a final symbolic link.
pub fn open_no_follow(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// A stream that fails, rather than ends, once it has given `limit` bytes and has more.
struct SizeLimited {
    inner: Box<dyn io::Read + Send>,
    left: u64,
    limit: u64,
}

impl io::Read for SizeLimited {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte tells a stream of exactly `limit` bytes from a longer one.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            return Err(io::Error::other(format!(
                "the stream is larger than {}, the most one file may be (ssh.max_file_bytes)",
                human_size(self.limit)
            )));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.left -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::SizeLimited;

    fn limited(bytes: usize, limit: u64) -> SizeLimited {
        SizeLimited {
            inner: Box::new(std::io::Cursor::new(vec![7u8; bytes])),
            left: limit,
            limit,
        }
    }

    #[test]
    fn a_stream_up_to_the_limit_reads_whole_and_a_longer_one_fails() {
        let mut out = Vec::new();
        limited(1000, 1000).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 1000);
        let e = limited(1001, 1000).read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("ssh.max_file_bytes"), "{e}");
    }
}

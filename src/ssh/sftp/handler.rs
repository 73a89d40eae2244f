//! The request handler: one user's SFTP session, answering each request through their
//! upload area.

use std::collections::HashMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as DirEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::Handler;

use super::error::{SftpError, io_error, ok};
use super::framing::take_string;
use crate::access::JailedPath;
use crate::access::jail::UPLOAD_TEMP_PREFIX;
use crate::limits::SlotPermit;
use crate::ssh::Gateway;
use crate::upload_area::{Upload, UploadError, UserArea};

/// What `limits@openssh.com` announces (OpenSSH's own sftp-server values).
const LIMIT_PACKET: u64 = 256 * 1024;
const LIMIT_READ_WRITE: u64 = 261_120;
const LIMIT_HANDLES: u64 = 64;
/// Directory entries per READDIR reply.
const DIR_BATCH: usize = 128;

/// Refusals audited one by one in a session; the rest are counted.
pub(super) const MAX_REFUSALS_AUDITED: usize = 32;

enum OpenHandle {
    Upload(Box<Upload>),
    Read {
        file: File,
        path: JailedPath,
    },
    /// A directory listed in batches as READDIR asks, from the open directory: memory
    /// stays one batch whatever its size.
    Dir {
        path: JailedPath,
        listing: fs::ReadDir,
        /// `.` and `..` come first, once.
        specials_sent: bool,
    },
}

/// One SFTP session of one user.
pub struct SftpSession {
    gateway: Arc<Gateway>,
    user: String,
    address: IpAddr,
    area: UserArea,
    handles: HashMap<String, OpenHandle>,
    /// The user's handle slot for each open handle (same keys as `handles`).
    slots: HashMap<String, SlotPermit<String>>,
    next_handle: u64,
    /// Lines for the client's stderr, sent after the current reply.
    pub(super) notices: Vec<String>,
    /// Refusals audited, and those only counted past [`MAX_REFUSALS_AUDITED`].
    refusals_audited: usize,
    refusals_counted: usize,
}

impl SftpSession {
    pub fn new(gateway: Arc<Gateway>, user: String, address: IpAddr, area: UserArea) -> Self {
        SftpSession {
            gateway,
            user,
            address,
            area,
            handles: HashMap::new(),
            slots: HashMap::new(),
            next_handle: 0,
            notices: Vec::new(),
            refusals_audited: 0,
            refusals_counted: 0,
        }
    }

    /// Audits a refused request (`what`, as the client sent it), up to the session's budget.
    pub(super) fn audit_refusal(&mut self, what: &str, reason: &str) {
        if self.refusals_audited < MAX_REFUSALS_AUDITED {
            self.refusals_audited += 1;
            self.gateway
                .audit
                .refused(&self.user, self.address, what, reason);
        } else {
            self.refusals_counted += 1;
        }
    }

    /// At the end of the session: one line for the refusals that were only counted.
    pub(super) fn audit_counted_refusals(&mut self) {
        if self.refusals_counted > 0 {
            let count = std::mem::take(&mut self.refusals_counted);
            self.gateway.audit.refused(
                &self.user,
                self.address,
                &format!("sftp: {count} more requests"),
                &format!(
                    "refused like the {MAX_REFUSALS_AUDITED} before them in this session (not audited one by one)"
                ),
            );
        }
    }

    /// A client path made real through the jail, with no symbolic link on the way.
    fn resolve(&self, client_path: &str) -> Result<JailedPath, SftpError> {
        Ok(self.area.resolve(client_path)?)
    }

    fn add_handle(&mut self, handle: OpenHandle) -> Result<String, SftpError> {
        if self.handles.len() as u64 >= LIMIT_HANDLES {
            return Err(SftpError::new(
                StatusCode::Failure,
                format!("too many open files (at most {LIMIT_HANDLES}); close some first"),
            ));
        }
        // Slots of handles closed since go back now.
        let handles = &self.handles;
        self.slots.retain(|name, _| handles.contains_key(name));
        let slot = self
            .area
            .take_handle()
            .map_err(|e| self.told(SftpError::from(e)))?;
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), handle);
        self.slots.insert(name.clone(), slot);
        Ok(name)
    }

    fn upload_mut(&mut self, handle: &str) -> Result<&mut Upload, SftpError> {
        match self.handles.get_mut(handle) {
            Some(OpenHandle::Upload(upload)) => Ok(upload),
            Some(_) => Err(SftpError::new(
                StatusCode::PermissionDenied,
                "the file was not opened for writing",
            )),
            None => Err(SftpError::bad_handle()),
        }
    }

    /// The WRITE fast path: `data` is the request's payload as russh delivered it.
    pub(super) async fn write_chunks(
        &mut self,
        handle: &str,
        offset: u64,
        data: Vec<Bytes>,
    ) -> Result<(), SftpError> {
        let result = self.upload_mut(handle)?.write_at(offset, data).await;
        result.map_err(|e| self.fail_upload("write", handle, e))
    }

    /// `error`, also queued for the client's stderr when OpenSSH would not show its message.
    fn told(&mut self, error: SftpError) -> SftpError {
        if error.tell {
            self.notices.push(error.message.clone());
        }
        error
    }

    /// An upload that cannot go on: say why (once) and drop it, so the temp file goes and
    /// the quota is released at once rather than at CLOSE.
    fn fail_upload(&mut self, request: &str, handle: &str, e: UploadError) -> SftpError {
        let error = self.told(SftpError::from(e));
        if matches!(self.handles.get(handle), Some(OpenHandle::Upload(_)))
            && let Some(OpenHandle::Upload(upload)) = self.handles.remove(handle)
            && error.refused
        {
            let what = format!("sftp {request} {}", upload.client_view());
            self.audit_refusal(&what, &error.message);
        }
        error
    }

    fn rename_path(&mut self, from: &str, to: &str, overwrite: bool) -> Result<(), SftpError> {
        let from = self.resolve(from)?;
        let to = self.resolve(to)?;
        self.area
            .rename(&from, &to, overwrite)
            .map_err(|e| self.told(SftpError::from(e)))
    }
}

/// SFTP attributes of a file or directory (type bits included: scp checks S_IFDIR on ".").
fn attrs_of(meta: &Metadata) -> FileAttributes {
    let seconds = |time: std::io::Result<SystemTime>| {
        time.ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
            .unwrap_or(0)
    };
    FileAttributes {
        size: Some(meta.len()),
        uid: Some(meta.uid()),
        user: None,
        gid: Some(meta.gid()),
        group: None,
        permissions: Some(meta.mode()),
        atime: Some(seconds(meta.accessed())),
        mtime: Some(seconds(meta.modified())),
    }
}

fn mtime_of(attrs: &FileAttributes) -> Option<SystemTime> {
    attrs
        .mtime
        .map(|secs| UNIX_EPOCH + Duration::from_secs(u64::from(secs)))
}

impl Handler for SftpSession {
    type Error = SftpError;

    fn unimplemented(&self) -> Self::Error {
        SftpError::new(
            StatusCode::OpUnsupported,
            "this request is not supported here",
        )
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for name in [
            "limits@openssh.com",
            "posix-rename@openssh.com",
            "fsync@openssh.com",
            "expand-path@openssh.com",
        ] {
            version.extensions.insert(name.into(), "1".into());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.resolve(&filename)?;
        let handle = if pflags.contains(OpenFlags::WRITE) {
            if pflags.contains(OpenFlags::READ) {
                return Err(SftpError::new(
                    StatusCode::OpUnsupported,
                    "open a file either to read or to write, not both",
                ));
            }
            let exists = fs::symlink_metadata(path.full()).is_ok();
            if exists && pflags.contains(OpenFlags::EXCLUDE) {
                return Err(SftpError::new(
                    StatusCode::Failure,
                    format!("{} already exists", path.client_view()),
                ));
            }
            if !exists && !pflags.contains(OpenFlags::CREATE) {
                return Err(SftpError::new(
                    StatusCode::NoSuchFile,
                    format!("{} does not exist", path.client_view()),
                ));
            }
            let keep = !pflags.contains(OpenFlags::TRUNCATE);
            let append = pflags.contains(OpenFlags::APPEND);
            let mut upload = self
                .area
                .upload(path, keep, append, "sftp")
                .map_err(|e| self.told(SftpError::from(e)))?;
            if let Some(mtime) = mtime_of(&attrs) {
                upload.set_mtime(mtime);
            }
            OpenHandle::Upload(Box::new(upload))
        } else {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path.full())
                .map_err(|e| io_error("open", &path, &e))?;
            let meta = file.metadata().map_err(|e| io_error("open", &path, &e))?;
            if !meta.is_file() {
                return Err(SftpError::new(
                    StatusCode::Failure,
                    format!("{} is not a file", path.client_view()),
                ));
            }
            OpenHandle::Read { file, path }
        };
        let handle = self.add_handle(handle)?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(OpenHandle::Upload(upload)) => {
                // The handle is gone already: a failed commit drops the upload and its temp file.
                upload
                    .commit()
                    .await
                    .map_err(|e| self.told(SftpError::from(e)))?;
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(SftpError::bad_handle()),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(OpenHandle::Read { file, path }) = self.handles.get(&handle) else {
            return Err(SftpError::bad_handle());
        };
        let mut data = vec![0u8; (len as u64).min(LIMIT_READ_WRITE) as usize];
        let n = file
            .read_at(&mut data, offset)
            .map_err(|e| io_error("read", path, &e))?;
        if n == 0 && !data.is_empty() {
            return Err(SftpError::eof());
        }
        data.truncate(n);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.write_chunks(&handle, offset, vec![Bytes::from(data)])
            .await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.resolve(&path)?;
        let meta = fs::symlink_metadata(path.full()).map_err(|e| io_error("stat", &path, &e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let attrs = match self.handles.get(&handle) {
            Some(OpenHandle::Upload(upload)) => FileAttributes {
                size: Some(upload.len()),
                permissions: Some(0o100644),
                ..FileAttributes::default()
            },
            Some(OpenHandle::Read { file, path }) => {
                attrs_of(&file.metadata().map_err(|e| io_error("stat", path, &e))?)
            }
            Some(OpenHandle::Dir { .. }) | None => return Err(SftpError::bad_handle()),
        };
        Ok(Attrs { id, attrs })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.resolve(&path)?;
        let meta = fs::symlink_metadata(path.full()).map_err(|e| io_error("change", &path, &e))?;
        if let Some(size) = attrs.size
            && meta.is_file()
            && size != meta.len()
        {
            // Changing a finished upload's length would bypass the quota and the hashes.
            return Err(SftpError {
                refused: true,
                ..SftpError::new(
                    StatusCode::OpUnsupported,
                    format!(
                        "{} is a finished upload; upload it again instead of resizing it",
                        path.client_view()
                    ),
                )
            });
        }
        if let Some(mtime) = mtime_of(&attrs)
            && meta.is_file()
        {
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path.full())
                .map_err(|e| io_error("change", &path, &e))?;
            file.set_modified(mtime)
                .map_err(|e| io_error("change", &path, &e))?;
            self.area.areas().digests.forget(path.full());
        }
        // Permissions and owners are the server's business: accepted and left alone.
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let result = match self.handles.get_mut(&handle) {
            Some(OpenHandle::Upload(upload)) => {
                if let Some(mtime) = mtime_of(&attrs) {
                    upload.set_mtime(mtime);
                }
                match attrs.size {
                    Some(size) => upload.set_len(size).await,
                    None => Ok(()),
                }
            }
            Some(_) => Ok(()),
            None => return Err(SftpError::bad_handle()),
        };
        result.map_err(|e| self.fail_upload("fsetstat", &handle, e))?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.resolve(&path)?;
        let listing = fs::read_dir(path.full()).map_err(|e| io_error("list", &path, &e))?;
        let handle = self.add_handle(OpenHandle::Dir {
            path,
            listing,
            specials_sent: false,
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(OpenHandle::Dir {
            path,
            listing,
            specials_sent,
        }) = self.handles.get_mut(&handle)
        else {
            return Err(SftpError::bad_handle());
        };
        let mut files = Vec::with_capacity(DIR_BATCH);
        if !*specials_sent {
            *specials_sent = true;
            if let Ok(meta) = fs::metadata(path.full()) {
                for special in [".", ".."] {
                    files.push(DirEntry::new(special, attrs_of(&meta)));
                }
            }
        }
        for dir_entry in listing.by_ref() {
            let Ok(dir_entry) = dir_entry else { continue };
            let name = dir_entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(UPLOAD_TEMP_PREFIX) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(dir_entry.path()) else {
                continue;
            };
            files.push(DirEntry::new(name, attrs_of(&meta)));
            if files.len() >= DIR_BATCH {
                break;
            }
        }
        if files.is_empty() {
            return Err(SftpError::eof());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.resolve(&filename)?;
        self.area
            .remove_file(&path, "sftp")
            .map_err(|e| self.told(SftpError::from(e)))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.resolve(&path)?;
        self.area
            .make_dir(&path)
            .map_err(|e| self.told(SftpError::from(e)))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.resolve(&path)?;
        self.area.remove_dir(&path)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.area.jail().resolve(&path)?;
        Ok(Name {
            id,
            files: vec![DirEntry::dummy(path.client_view())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.rename_path(&oldpath, &newpath, false)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, _id: u32, _path: String) -> Result<Name, Self::Error> {
        Err(SftpError::new(
            StatusCode::OpUnsupported,
            "there are no symbolic links in an upload area",
        ))
    }

    async fn symlink(
        &mut self,
        _id: u32,
        _linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        Err(SftpError::refused(
            "symbolic links cannot be created in an upload area",
        ))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        match request.as_str() {
            "limits@openssh.com" => {
                let mut reply = Vec::with_capacity(32);
                for value in [
                    LIMIT_PACKET,
                    LIMIT_READ_WRITE,
                    LIMIT_READ_WRITE,
                    LIMIT_HANDLES,
                ] {
                    reply.extend_from_slice(&value.to_be_bytes());
                }
                Ok(Packet::ExtendedReply(ExtendedReply { id, data: reply }))
            }
            "posix-rename@openssh.com" => {
                let mut at = 0;
                let (Some(from), Some(to)) =
                    (take_string(&data, &mut at), take_string(&data, &mut at))
                else {
                    return Err(SftpError::from(StatusCode::BadMessage));
                };
                self.rename_path(&from, &to, true)?;
                Ok(Packet::Status(ok(id)))
            }
            "fsync@openssh.com" => {
                let mut at = 0;
                let handle = take_string(&data, &mut at)
                    .ok_or_else(|| SftpError::from(StatusCode::BadMessage))?;
                let synced = match self.handles.get_mut(&handle) {
                    Some(OpenHandle::Upload(upload)) => upload.sync().await,
                    Some(_) => Ok(()),
                    None => return Err(SftpError::bad_handle()),
                };
                synced.map_err(|e| self.fail_upload("fsync", &handle, e))?;
                Ok(Packet::Status(ok(id)))
            }
            "expand-path@openssh.com" => {
                // `scp file host:~/dir/`: the home directory is the upload area's root.
                let mut at = 0;
                let path = take_string(&data, &mut at)
                    .ok_or_else(|| SftpError::from(StatusCode::BadMessage))?;
                let path = self.area.jail().resolve(&path)?;
                Ok(Packet::Name(Name {
                    id,
                    files: vec![DirEntry::dummy(path.client_view())],
                }))
            }
            "hardlink@openssh.com" => Err(SftpError::refused(
                "links cannot be created in an upload area",
            )),
            other => Err(SftpError::new(
                StatusCode::OpUnsupported,
                format!("the extension {other} is not supported here"),
            )),
        }
    }
}

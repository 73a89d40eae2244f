//! The SFTP subsystem, jailed to the caller's upload area.
//!
//! Requests are answered by [`SftpSession`], a `russh_sftp::server::Handler`. The loop that
//! feeds it is ours rather than `russh_sftp::server::run`, for three reasons: it knows when
//! the session ends (to send exit-status, EOF and close, and to drop unfinished uploads),
//! it can put a one-line reason on stderr where OpenSSH's client only prints a status code,
//! and WRITE requests skip the generic decoder: their data goes from the channel's buffers
//! straight into `pwrite` and the hasher, with no zeroed buffer and no copy per request
//! (russh-sftp's path costs about a fifth of the server's CPU in an upload).
//!
//! What OpenSSH's clients send is answered: STAT "." as a directory, OPEN/WRITE/FSETSTAT/
//! CLOSE (scp), REALPATH, OPENDIR/READDIR, REMOVE, RENAME and `posix-rename@openssh.com`,
//! MKDIR/RMDIR, `fsync@openssh.com`, `expand-path@openssh.com` (`~` is the area's root), and
//! `limits@openssh.com`, whose large write size makes scp send 255 KiB writes instead of
//! 32 KiB ones. Symbolic and hard links are refused.
//!
//! Refusals (a path out of the jail, a link, the quota, …) are audited with the request as the
//! client sent it; past [`MAX_REFUSALS_AUDITED`] in one session the rest are counted and
//! audited as one line when it ends, so a client cannot turn a loop of bad requests into a
//! flood of audit lines.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, Metadata, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as DirEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::channel_writer::ChannelWriter;
use crate::access::jail::UPLOAD_TEMP_PREFIX;
use crate::access::{Caller, JailError, JailedPath};
use crate::limits::SlotPermit;
use crate::upload_area::{Upload, UploadError, UserArea};

/// Largest request accepted: the 255 KiB writes `limits@openssh.com` invites, plus headers.
const MAX_PACKET: usize = 256 * 1024 + 1024;
/// What `limits@openssh.com` announces (OpenSSH's own sftp-server values).
const LIMIT_PACKET: u64 = 256 * 1024;
const LIMIT_READ_WRITE: u64 = 261_120;
const LIMIT_HANDLES: u64 = 64;
/// Directory entries per READDIR reply.
const DIR_BATCH: usize = 128;

const SSH_FXP_WRITE: u8 = 6;

/// Refusals audited one by one in a session; the rest are counted.
const MAX_REFUSALS_AUDITED: usize = 32;

/// A failed request: the status the client gets, and its message.
#[derive(Debug)]
pub struct SftpError {
    code: StatusCode,
    message: String,
    /// Also say it on stderr (OpenSSH prints only the status code for failed writes).
    tell: bool,
    /// Refused by a rule (jail, links, quota), not a plain failure: audited.
    refused: bool,
}

impl SftpError {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        SftpError {
            code,
            message: message.into(),
            tell: false,
            refused: false,
        }
    }

    /// A request a rule forbids: permission denied, and audited.
    fn refused(message: impl Into<String>) -> Self {
        SftpError {
            refused: true,
            ..SftpError::new(StatusCode::PermissionDenied, message)
        }
    }

    fn eof() -> Self {
        SftpError::new(StatusCode::Eof, "end of file")
    }

    fn bad_handle() -> Self {
        SftpError::new(StatusCode::Failure, "the handle is not open")
    }

    fn status(&self, id: u32) -> Packet {
        Packet::Status(Status {
            id,
            status_code: self.code,
            error_message: self.message.clone(),
            language_tag: "en-US".into(),
        })
    }
}

impl From<StatusCode> for SftpError {
    fn from(code: StatusCode) -> Self {
        SftpError::new(code, code.to_string())
    }
}

impl From<JailError> for SftpError {
    fn from(e: JailError) -> Self {
        SftpError::refused(e.to_string())
    }
}

impl From<UploadError> for SftpError {
    fn from(e: UploadError) -> Self {
        let code = match &e {
            UploadError::Jail(_) | UploadError::Refused(_) => StatusCode::PermissionDenied,
            UploadError::NotFound(_) => StatusCode::NoSuchFile,
            _ => StatusCode::Failure,
        };
        let tell = matches!(
            e,
            UploadError::Quota { .. }
                | UploadError::TooLarge { .. }
                | UploadError::DiskFull(_)
                | UploadError::Refused(_)
        );
        let refused = matches!(
            e,
            UploadError::Jail(_)
                | UploadError::Quota { .. }
                | UploadError::TooLarge { .. }
                | UploadError::Refused(_)
        );
        SftpError {
            code,
            message: e.to_string(),
            tell,
            refused,
        }
    }
}

impl From<SftpError> for StatusReply {
    fn from(e: SftpError) -> Self {
        e.code.with_message(e.message)
    }
}

fn io_error(action: &str, path: &JailedPath, e: &std::io::Error) -> SftpError {
    UploadError::io(action, &path.client_view(), e).into()
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

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
    notices: Vec<String>,
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
    fn audit_refusal(&mut self, what: &str, reason: &str) {
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
    fn audit_counted_refusals(&mut self) {
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
    async fn write_chunks(
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

/// Reads an SFTP string (u32 length + bytes) from `data` at `*at`.
fn take_string(data: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let text = data.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(String::from_utf8_lossy(text).into_owned())
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

/// Requests waiting to be answered: channel data as russh delivered it, framed into packets
/// without copying.
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Inbox {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Copies the first `n` bytes (`n <= len`).
    fn peek(&self, n: usize) -> Vec<u8> {
        copy_front(self.chunks.iter(), n)
    }

    /// Takes the first `n` bytes (`n <= len`) as pieces.
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        let mut pieces = Vec::new();
        while n > 0 {
            let Some(mut front) = self.chunks.pop_front() else {
                break;
            };
            if front.len() > n {
                let rest = front.split_off(n);
                self.chunks.push_front(rest);
            }
            n -= front.len();
            self.len -= front.len();
            pieces.push(front);
        }
        pieces
    }

    /// The next whole packet without its length prefix, `Ok(None)` until one is complete.
    fn next_packet(&mut self) -> Result<Option<Vec<Bytes>>, String> {
        if self.len < 4 {
            return Ok(None);
        }
        let head = self.peek(4);
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if length == 0 || length > MAX_PACKET {
            return Err(format!(
                "an SFTP request of {length} bytes is outside the accepted size (at most {MAX_PACKET})"
            ));
        }
        if self.len < 4 + length {
            return Ok(None);
        }
        let mut pieces = self.take(4 + length);
        skip(&mut pieces, 4);
        Ok(Some(pieces))
    }
}

fn copy_front<'a>(pieces: impl Iterator<Item = &'a Bytes>, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for piece in pieces {
        let room = n - out.len();
        if room == 0 {
            break;
        }
        out.extend_from_slice(&piece[..piece.len().min(room)]);
    }
    out
}

/// Drops the first `n` bytes of `pieces`.
fn skip(pieces: &mut Vec<Bytes>, mut n: usize) {
    let mut drop_whole = 0;
    for piece in pieces.iter_mut() {
        if n == 0 {
            break;
        }
        if piece.len() <= n {
            n -= piece.len();
            drop_whole += 1;
        } else {
            *piece = piece.slice(n..);
            n = 0;
        }
    }
    pieces.drain(..drop_whole);
}

fn concat(pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() == 1 {
        return pieces.into_iter().next().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces {
        joined.extend_from_slice(&piece);
    }
    joined.freeze()
}

/// A WRITE request's header, read from its first bytes: (id, handle, offset, data length,
/// header length).
fn parse_write_header(pieces: &[Bytes]) -> Option<(u32, String, u64, usize, usize)> {
    const MAX_HANDLE: usize = 256;
    let head = copy_front(pieces.iter(), 1 + 4 + 4 + MAX_HANDLE + 8 + 4);
    let id = u32::from_be_bytes(head.get(1..5)?.try_into().ok()?);
    let handle_len = u32::from_be_bytes(head.get(5..9)?.try_into().ok()?) as usize;
    if handle_len > MAX_HANDLE {
        return None;
    }
    let handle = String::from_utf8_lossy(head.get(9..9 + handle_len)?).into_owned();
    let at = 9 + handle_len;
    let offset = u64::from_be_bytes(head.get(at..at + 8)?.try_into().ok()?);
    let data_len = u32::from_be_bytes(head.get(at + 8..at + 12)?.try_into().ok()?) as usize;
    Some((id, handle, offset, data_len, at + 12))
}

/// Answers one request.
async fn answer(session: &mut SftpSession, mut pieces: Vec<Bytes>) -> Packet {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    if pieces.first().and_then(|p| p.first()) == Some(&SSH_FXP_WRITE) {
        let Some((id, handle, offset, data_len, header_len)) = parse_write_header(&pieces) else {
            return SftpError::from(StatusCode::BadMessage).status(0);
        };
        if header_len + data_len != total {
            return SftpError::from(StatusCode::BadMessage).status(id);
        }
        skip(&mut pieces, header_len);
        return match session.write_chunks(&handle, offset, pieces).await {
            Ok(()) => Packet::Status(ok(id)),
            Err(e) => e.status(id),
        };
    }
    let mut bytes = concat(pieces);
    let packet = match Packet::try_from(&mut bytes) {
        Ok(packet) => packet,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable SFTP request");
            return SftpError::from(StatusCode::BadMessage).status(0);
        }
    };
    let id = packet.get_request_id();
    let request = describe(&packet);
    let result: Result<Packet, SftpError> = match packet {
        Packet::Init(p) => session
            .init(p.version, p.extensions)
            .await
            .map(Packet::from),
        Packet::Open(p) => session
            .open(p.id, p.filename, p.pflags, p.attrs)
            .await
            .map(Packet::from),
        Packet::Close(p) => session.close(p.id, p.handle).await.map(Packet::from),
        Packet::Read(p) => session
            .read(p.id, p.handle, p.offset, p.len)
            .await
            .map(Packet::from),
        Packet::Write(p) => session
            .write(p.id, p.handle, p.offset, p.data)
            .await
            .map(Packet::from),
        Packet::Lstat(p) => session.lstat(p.id, p.path).await.map(Packet::from),
        Packet::Fstat(p) => session.fstat(p.id, p.handle).await.map(Packet::from),
        Packet::SetStat(p) => session
            .setstat(p.id, p.path, p.attrs)
            .await
            .map(Packet::from),
        Packet::FSetStat(p) => session
            .fsetstat(p.id, p.handle, p.attrs)
            .await
            .map(Packet::from),
        Packet::OpenDir(p) => session.opendir(p.id, p.path).await.map(Packet::from),
        Packet::ReadDir(p) => session.readdir(p.id, p.handle).await.map(Packet::from),
        Packet::Remove(p) => session.remove(p.id, p.filename).await.map(Packet::from),
        Packet::MkDir(p) => session.mkdir(p.id, p.path, p.attrs).await.map(Packet::from),
        Packet::RmDir(p) => session.rmdir(p.id, p.path).await.map(Packet::from),
        Packet::RealPath(p) => session.realpath(p.id, p.path).await.map(Packet::from),
        Packet::Stat(p) => session.stat(p.id, p.path).await.map(Packet::from),
        Packet::Rename(p) => session
            .rename(p.id, p.oldpath, p.newpath)
            .await
            .map(Packet::from),
        Packet::ReadLink(p) => session.readlink(p.id, p.path).await.map(Packet::from),
        Packet::Symlink(p) => session
            .symlink(p.id, p.linkpath, p.targetpath)
            .await
            .map(Packet::from),
        Packet::Extended(p) => session.extended(p.id, p.request, p.data).await,
        _ => Err(SftpError::new(
            StatusCode::BadMessage,
            "this is not a request",
        )),
    };
    result.unwrap_or_else(|e| {
        if e.refused {
            session.audit_refusal(&request, &e.message);
        }
        e.status(id)
    })
}

/// A request as the audit log shows it: `sftp <operation> <path(s) as sent>`.
fn describe(packet: &Packet) -> String {
    let (operation, paths): (&str, Vec<&str>) = match packet {
        Packet::Open(p) => ("open", vec![&p.filename]),
        Packet::Lstat(p) => ("lstat", vec![&p.path]),
        Packet::Stat(p) => ("stat", vec![&p.path]),
        Packet::SetStat(p) => ("setstat", vec![&p.path]),
        Packet::OpenDir(p) => ("opendir", vec![&p.path]),
        Packet::Remove(p) => ("remove", vec![&p.filename]),
        Packet::MkDir(p) => ("mkdir", vec![&p.path]),
        Packet::RmDir(p) => ("rmdir", vec![&p.path]),
        Packet::RealPath(p) => ("realpath", vec![&p.path]),
        Packet::Rename(p) => ("rename", vec![&p.oldpath, &p.newpath]),
        Packet::ReadLink(p) => ("readlink", vec![&p.path]),
        Packet::Symlink(p) => ("symlink", vec![&p.linkpath, &p.targetpath]),
        Packet::Extended(p) => (p.request.as_str(), Vec::new()),
        Packet::Close(_) => ("close", Vec::new()),
        Packet::Read(_) => ("read", Vec::new()),
        Packet::Write(_) => ("write", Vec::new()),
        Packet::Fstat(_) => ("fstat", Vec::new()),
        Packet::FSetStat(_) => ("fsetstat", Vec::new()),
        Packet::ReadDir(_) => ("readdir", Vec::new()),
        _ => ("request", Vec::new()),
    };
    let mut text = format!("sftp {operation}");
    for path in paths {
        text.push(' ');
        text.push_str(&format!("{path:?}"));
    }
    text
}

/// Serves one SFTP channel of a client at `address` until the client ends it, or its
/// connection ends (`connection_ended`).
pub async fn run(
    gateway: Arc<Gateway>,
    caller: Caller,
    channel: Channel<Msg>,
    address: IpAddr,
    connection_ended: CancellationToken,
) {
    let Caller::Remote {
        identity,
        upload_area,
    } = caller
    else {
        return;
    };
    let (mut reader, half) = channel.split();
    let writer = ChannelWriter::new(half, connection_ended, gateway.send_timeout());
    let area = gateway.user_area(&identity.name, &upload_area);
    let _session_slot = match area.take_session() {
        Ok(slot) => slot,
        Err(e) => {
            gateway
                .audit
                .refused(&identity.name, address, "subsystem sftp", &e.to_string());
            tell(&writer, &e.to_string()).await;
            writer.finish(1).await;
            return;
        }
    };
    if let Err(e) = area.prepare().await {
        tracing::warn!(user = identity.name, error = %e, "cannot measure an upload area");
    }
    let mut session = SftpSession::new(gateway, identity.name, address, area);
    let mut inbox = Inbox::default();
    let mut status = 0;
    'session: loop {
        loop {
            let pieces = match inbox.next_packet() {
                Ok(Some(pieces)) => pieces,
                Ok(None) => break,
                Err(message) => {
                    tell(&writer, &message).await;
                    status = 1;
                    break 'session;
                }
            };
            let reply = answer(&mut session, pieces).await;
            let bytes = match Bytes::try_from(reply) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode an SFTP reply");
                    status = 1;
                    break 'session;
                }
            };
            if writer.data(bytes).await.is_err() {
                break 'session;
            }
            for notice in std::mem::take(&mut session.notices) {
                tell(&writer, &notice).await;
            }
        }
        match reader.wait().await {
            Some(ChannelMsg::Data { data }) => inbox.push(data),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    session.audit_counted_refusals();
    // Unfinished uploads are dropped here: their temp files go, nothing becomes visible.
    drop(session);
    writer.finish(status).await;
}

async fn tell(writer: &ChannelWriter, message: &str) {
    super::exec::send_error_line(writer, message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_packet(id: u32, handle: &str, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![SSH_FXP_WRITE];
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&(handle.len() as u32).to_be_bytes());
        body.extend_from_slice(handle.as_bytes());
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(data);
        let mut packet = (body.len() as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    #[test]
    fn frames_packets_split_anywhere_without_losing_bytes() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = write_packet(7, "12", 1 << 33, &data);
        stream.extend(write_packet(8, "12", 5, b"tail"));
        for split in [1usize, 3, 32_768, 50_000] {
            let mut inbox = Inbox::default();
            for piece in stream.chunks(split) {
                inbox.push(Bytes::copy_from_slice(piece));
            }
            let mut first = inbox.next_packet().unwrap().unwrap();
            let (id, handle, offset, len, header) = parse_write_header(&first).unwrap();
            assert_eq!(
                (id, handle.as_str(), offset, len),
                (7, "12", 1 << 33, data.len())
            );
            skip(&mut first, header);
            assert_eq!(concat(first), Bytes::from(data.clone()), "split {split}");
            let second = inbox.next_packet().unwrap().unwrap();
            let (id, _, offset, len, header) = parse_write_header(&second).unwrap();
            assert_eq!((id, offset, len), (8, 5, 4));
            assert_eq!(&concat(second)[header..], b"tail");
            assert!(inbox.next_packet().unwrap().is_none());
            assert_eq!(inbox.len, 0);
        }
    }

    #[test]
    fn refuses_oversized_and_empty_packets() {
        let mut inbox = Inbox::default();
        inbox.push(Bytes::from(
            ((MAX_PACKET + 1) as u32).to_be_bytes().to_vec(),
        ));
        assert!(inbox.next_packet().is_err());
        let mut inbox = Inbox::default();
        inbox.push(Bytes::from(vec![0, 0, 0, 0]));
        assert!(inbox.next_packet().is_err());
        let mut inbox = Inbox::default();
        inbox.push(Bytes::from(vec![0, 0, 0, 9, 1]));
        assert!(inbox.next_packet().unwrap().is_none());
    }

    #[test]
    fn extension_strings() {
        let mut data = Vec::new();
        for s in ["/a", "/b c"] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        let mut at = 0;
        assert_eq!(take_string(&data, &mut at).as_deref(), Some("/a"));
        assert_eq!(take_string(&data, &mut at).as_deref(), Some("/b c"));
        assert_eq!(take_string(&data, &mut at), None);
    }
}

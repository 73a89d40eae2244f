//! How a failed SFTP request is answered: a status code, one line that says what to do, and
//! whether it is also told on stderr and audited as a refusal.

use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::StatusReply;

use crate::access::{JailError, JailedPath};
use crate::upload_area::UploadError;

/// A failed request: the status the client gets, and its message.
#[derive(Debug)]
pub struct SftpError {
    pub(super) code: StatusCode,
    pub(super) message: String,
    /// Also say it on stderr (OpenSSH prints only the status code for failed writes).
    pub(super) tell: bool,
    /// Refused by a rule (jail, links, quota), not a plain failure: audited.
    pub(super) refused: bool,
}

impl SftpError {
    pub(super) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        SftpError {
            code,
            message: message.into(),
            tell: false,
            refused: false,
        }
    }

    /// A request a rule forbids: permission denied, and audited.
    pub(super) fn refused(message: impl Into<String>) -> Self {
        SftpError {
            refused: true,
            ..SftpError::new(StatusCode::PermissionDenied, message)
        }
    }

    pub(super) fn eof() -> Self {
        SftpError::new(StatusCode::Eof, "end of file")
    }

    pub(super) fn bad_handle() -> Self {
        SftpError::new(StatusCode::Failure, "the handle is not open")
    }

    pub(super) fn status(&self, id: u32) -> Packet {
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

pub(super) fn io_error(action: &str, path: &JailedPath, e: &std::io::Error) -> SftpError {
    UploadError::io(action, &path.client_view(), e).into()
}

pub(super) fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

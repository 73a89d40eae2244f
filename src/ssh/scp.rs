//! The legacy `scp -t` sink, what `scp -O` (and OpenSSH before 9.0) runs on the server.
//!
//! The protocol: the sink sends `\0` when ready; the source sends `T<mtime> 0 <atime> 0`
//! (with `-p`), `C<mode> <size> <name>`, `D<mode> 0 <name>` / `E` (with `-r`), each answered
//! by `\0`, or by `\x01message` (this file failed, go on) or `\x02message` (give up). After a
//! `C` line come `<size>` bytes and a `\0`; the sink answers once the file is stored.
//!
//! Every name goes through the same jail as SFTP ([`JailedPath::child`]), every file through
//! the same [`Upload`] (temp file, quota, size limit, hashing, rename). Control lines are
//! parsed with every number checked (no overflow, no time past the year 9999); a bad line
//! ends the run with a `\x02` line. Refusals (the role, a name out of the jail, the quota, a
//! bad line) are audited, one by one up to a budget ([`RefusalBudget`]) and then counted.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};

use super::Gateway;
use super::audit::RefusalBudget;
use super::channel_writer::ChannelWriter;
use crate::access::{Caller, JailedPath, Role};
use crate::upload_area::{Upload, UploadError};

/// Longest control line accepted.
const MAX_LINE: usize = 4096;
/// Deepest directory nesting accepted from `scp -r`.
const MAX_DEPTH: usize = 32;
/// Most bytes handed to the upload at once.
const BATCH: u64 = 256 << 10;
/// The latest time a `T` line may give, 9999-12-31T23:59:59Z: what a file time can hold
/// everywhere, and far past any real upload.
const MAX_TIME: u64 = 253_402_300_799;

/// How the remote scp was started.
#[derive(Debug, Default, PartialEq, Eq)]
struct SinkArgs {
    recursive: bool,
    target_is_dir: bool,
    target: String,
}

fn parse_args(words: &[String]) -> Result<SinkArgs, String> {
    let mut args = SinkArgs::default();
    let mut sink = false;
    let mut rest = words.iter().skip(1);
    let mut target = None;
    while let Some(word) = rest.next() {
        if word == "--" {
            target = rest.next().cloned();
            break;
        }
        let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            target = Some(word.clone());
            break;
        };
        for flag in flags.chars() {
            match flag {
                't' => sink = true,
                'f' => {
                    return Err(
                        "this server takes uploads only: `scp host:file .` is not available; use sftp to fetch your own uploads".into(),
                    );
                }
                'r' => args.recursive = true,
                'd' => args.target_is_dir = true,
                // Times are always honoured when sent; verbosity changes nothing here.
                'p' | 'v' | 'q' => {}
                other => return Err(format!("scp option -{other} is not supported here")),
            }
        }
    }
    if !sink {
        return Err("this server runs scp only as an upload sink (scp -t)".into());
    }
    if rest.next().is_some() {
        return Err("scp -t takes one target".into());
    }
    args.target = target.ok_or("scp -t needs a target, e.g. `scp -t .`")?;
    Ok(args)
}

/// Channel data as a byte stream, without copying the chunks russh hands over.
struct ChannelBytes<'a> {
    reader: &'a mut ChannelReadHalf,
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl<'a> ChannelBytes<'a> {
    fn new(reader: &'a mut ChannelReadHalf) -> Self {
        ChannelBytes {
            reader,
            pending: VecDeque::new(),
            ended: false,
        }
    }

    /// Waits for more data; false at EOF or when the channel closed.
    async fn fill(&mut self) -> bool {
        while !self.ended {
            match self.reader.wait().await {
                Some(ChannelMsg::Data { data }) if !data.is_empty() => {
                    self.pending.push_back(data);
                    return true;
                }
                Some(ChannelMsg::Data { .. }) => {}
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => self.ended = true,
                Some(_) => {}
            }
        }
        false
    }

    /// One byte, or `None` at the end.
    async fn byte(&mut self) -> Option<u8> {
        loop {
            if let Some(front) = self.pending.front_mut() {
                let byte = front[0];
                if front.len() == 1 {
                    self.pending.pop_front();
                } else {
                    *front = front.slice(1..);
                }
                return Some(byte);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// A line without its `\n`; `Ok(None)` at a clean end before any byte.
    async fn line(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut line = Vec::new();
        loop {
            match self.byte().await {
                Some(b'\n') => return Ok(Some(line)),
                Some(byte) => {
                    if line.len() >= MAX_LINE {
                        return Err("a control line is too long".into());
                    }
                    line.push(byte);
                }
                None if line.is_empty() => return Ok(None),
                None => return Err("the connection ended in the middle of a control line".into()),
            }
        }
    }

    /// Exactly `want` bytes as pieces (fewer only when the stream ends first): the writer
    /// gets batches of up to 256 KiB, not one 32 KiB channel packet at a time (each batch
    /// wakes its thread). `None` when the stream ended before any byte.
    async fn chunks(&mut self, want: usize) -> Option<Vec<Bytes>> {
        let mut pieces = Vec::new();
        let mut total = 0;
        while total < want {
            let Some(mut front) = self.pending.pop_front() else {
                if self.fill().await {
                    continue;
                }
                break;
            };
            if total + front.len() > want {
                let rest = front.split_off(want - total);
                self.pending.push_front(rest);
            }
            total += front.len();
            pieces.push(front);
        }
        (!pieces.is_empty()).then_some(pieces)
    }
}

/// Runs the sink for a client at `address`; returns the exit status.
pub async fn run(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    address: IpAddr,
    reader: &mut ChannelReadHalf,
    writer: &ChannelWriter,
    words: &[String],
) -> u32 {
    // `scp -r` of a tree of bad names stops being news after a while.
    let mut refusals = RefusalBudget::new("scp");
    let code = sink(
        gateway,
        caller,
        address,
        reader,
        writer,
        words,
        &mut refusals,
    )
    .await;
    refusals.close(&gateway.audit, &caller.name(), address);
    code
}

async fn sink(
    gateway: &Arc<Gateway>,
    caller: &Caller,
    address: IpAddr,
    reader: &mut ChannelReadHalf,
    writer: &ChannelWriter,
    words: &[String],
    refusals: &mut RefusalBudget,
) -> u32 {
    let reply = |bytes: Vec<u8>| async move { writer.data(bytes).await.is_ok() };
    let fatal = |message: String| async move {
        let _ = writer
            .data(format!("\x02simplestream-server: {message}\n").into_bytes())
            .await;
        1
    };
    let Caller::Remote {
        identity,
        upload_area,
    } = caller
    else {
        return fatal("scp needs an SSH user".into()).await;
    };
    let command_line = words.join(" ");
    let mut audit_refusal = |what: &str, reason: &str| {
        refusals.refused(&gateway.audit, &identity.name, address, what, reason);
    };
    if let Err(denied) = caller.check("upload", Role::Publisher) {
        audit_refusal(&command_line, &denied);
        return fatal(denied).await;
    }
    let args = match parse_args(words) {
        Ok(args) => args,
        Err(message) => {
            audit_refusal(&command_line, &message);
            return fatal(message).await;
        }
    };
    let area = gateway.user_area(&identity.name, upload_area);
    if let Err(e) = area.prepare().await {
        tracing::warn!(user = identity.name, error = %e, "cannot measure an upload area");
    }
    let target = match area.resolve(&args.target) {
        Ok(target) => target,
        Err(e) => {
            audit_refusal(&command_line, &e.to_string());
            return fatal(e.to_string()).await;
        }
    };
    let target_is_dir = std::fs::metadata(target.full()).is_ok_and(|m| m.is_dir());
    if args.target_is_dir && !target_is_dir {
        return fatal(format!("{} is not a directory", target.client_view())).await;
    }

    let mut input = ChannelBytes::new(reader);
    if !reply(vec![0]).await {
        return 1;
    }
    // Where entries go: into the directory on top of the stack; with an empty stack (the
    // target is not a directory) the first entry is the target itself, as with OpenSSH
    // (`scp file host:new-name`, `scp -r dir host:new-dir`).
    let mut dirs: Vec<JailedPath> = Vec::new();
    if target_is_dir {
        dirs.push(target.clone());
    }
    let mut mtime: Option<SystemTime> = None;
    let mut failed = false;
    loop {
        let line = match input.line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(message) => return fatal(message).await,
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        match line.first().copied() {
            Some(b'T') => match parse_times(&text[1..]) {
                Ok(time) => {
                    mtime = Some(time);
                    if !reply(vec![0]).await {
                        return 1;
                    }
                }
                Err(why) => {
                    let message = format!("bad time line {text:?}: {why}");
                    audit_refusal(&format!("scp {text:?}"), &message);
                    return fatal(message).await;
                }
            },
            Some(b'C') => {
                let (size, name) = match parse_entry(&text[1..]) {
                    Ok(entry) => entry,
                    Err(why) => {
                        let message = format!("bad file line {text:?}: {why}");
                        audit_refusal(&format!("scp {text:?}"), &message);
                        return fatal(message).await;
                    }
                };
                let destination = match dirs.last() {
                    Some(dir) => dir.child(&name).map_err(UploadError::from),
                    None => Ok(target.clone()),
                };
                let upload = destination.and_then(|path| {
                    let mut upload = area.upload(path, false, false, "scp")?;
                    upload.expect_size(size)?;
                    Ok(upload)
                });
                let upload = match upload {
                    Ok(upload) => upload,
                    Err(e) => {
                        if is_refusal(&e) {
                            audit_refusal(&format!("scp {text:?}"), &e.to_string());
                        }
                        // The source skips this file's data after an error reply.
                        failed = true;
                        if !reply(error_line(&e)).await {
                            return 1;
                        }
                        mtime = None;
                        continue;
                    }
                };
                if !reply(vec![0]).await {
                    return 1;
                }
                // An error replaces the upload at once: its temp file, and the room it took,
                // go while the client still sends the rest (the protocol wants every byte).
                let view = upload.client_view();
                let mut upload: Result<Upload, UploadError> = Ok(upload);
                let mut received = 0u64;
                while received < size {
                    let want = (size - received).min(BATCH) as usize;
                    let Some(pieces) = input.chunks(want).await else {
                        // Cut off mid-file: the upload is dropped, its temp file deleted.
                        return 1;
                    };
                    let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
                    if let Ok(current) = &mut upload
                        && let Err(e) = current.write_at(received, pieces).await
                    {
                        upload = Err(e);
                    }
                    received += len;
                }
                match input.byte().await {
                    Some(0) => {}
                    Some(_) => {
                        // The source reports a read error on its side; its line follows.
                        let _ = input.line().await;
                        if upload.is_ok() {
                            upload = Err(UploadError::Io(format!(
                                "{view} was not sent whole by the client"
                            )));
                        }
                    }
                    None => return 1,
                }
                let time = mtime.take();
                let stored = match upload {
                    Ok(mut upload) => {
                        if let Some(time) = time {
                            upload.set_mtime(time);
                        }
                        upload.commit().await.map(|_| ())
                    }
                    Err(e) => Err(e),
                };
                let answer = match stored {
                    Ok(()) => vec![0],
                    Err(e) => {
                        if is_refusal(&e) {
                            audit_refusal(&format!("scp {text:?}"), &e.to_string());
                        }
                        failed = true;
                        error_line(&e)
                    }
                };
                if !reply(answer).await {
                    return 1;
                }
            }
            Some(b'D') => {
                if !args.recursive {
                    return fatal("directories need scp -r".into()).await;
                }
                let name = match parse_entry(&text[1..]) {
                    Ok((_, name)) => name,
                    Err(why) => {
                        let message = format!("bad directory line {text:?}: {why}");
                        audit_refusal(&format!("scp {text:?}"), &message);
                        return fatal(message).await;
                    }
                };
                if dirs.len() > MAX_DEPTH {
                    return fatal(format!("directories nest deeper than {MAX_DEPTH} levels")).await;
                }
                let dir = match dirs.last().map(|parent| parent.child(&name)) {
                    Some(Ok(dir)) => dir,
                    Some(Err(e)) => {
                        audit_refusal(&format!("scp {text:?}"), &e.to_string());
                        return fatal(e.to_string()).await;
                    }
                    None => target.clone(),
                };
                match std::fs::symlink_metadata(dir.full()) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return fatal(format!(
                            "{} exists and is not a directory",
                            dir.client_view()
                        ))
                        .await;
                    }
                    Err(_) => {
                        if let Err(e) = area.make_dir(&dir) {
                            if is_refusal(&e) {
                                audit_refusal(&format!("scp {text:?}"), &e.to_string());
                            }
                            return fatal(e.to_string()).await;
                        }
                    }
                }
                dirs.push(dir);
                mtime = None;
                if !reply(vec![0]).await {
                    return 1;
                }
            }
            Some(b'E') => {
                if dirs.is_empty() || (target_is_dir && dirs.len() == 1) {
                    return fatal("unbalanced end of directory".into()).await;
                }
                dirs.pop();
                if !reply(vec![0]).await {
                    return 1;
                }
            }
            Some(1) => {
                // A warning from the source (a file it could not read): it goes on.
                failed = true;
                tracing::info!(user = identity.name, message = %text[1..].trim(), "scp source warning");
            }
            Some(2) => {
                tracing::info!(user = identity.name, message = %text[1..].trim(), "scp source gave up");
                return 1;
            }
            _ => {
                let message =
                    format!("unexpected control line {text:?}; scp sends T, C, D and E lines");
                audit_refusal(&format!("scp {text:?}"), &message);
                return fatal(message).await;
            }
        }
    }
    u32::from(failed)
}

/// Refused by a rule (the jail, the quota, the size limit), not a plain failure: audited.
fn is_refusal(e: &UploadError) -> bool {
    matches!(
        e,
        UploadError::Jail(_)
            | UploadError::Quota { .. }
            | UploadError::TooLarge { .. }
            | UploadError::Refused(_)
    )
}

fn error_line(e: &UploadError) -> Vec<u8> {
    format!("\x01simplestream-server: {e}\n").into_bytes()
}

/// `<mtime> <usec> <atime> <usec>` → the modification time; each number checked.
fn parse_times(text: &str) -> Result<SystemTime, String> {
    const SHAPE: &str = "a time line is T<mtime> 0 <atime> 0, in seconds since 1970";
    let fields: Vec<&str> = text.split(' ').collect();
    let [mtime, mtime_usec, atime, atime_usec] = fields[..] else {
        return Err(SHAPE.into());
    };
    let number = |field: &str| -> Result<u64, String> {
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SHAPE.into());
        }
        field
            .parse()
            .map_err(|_| format!("{field} is out of range"))
    };
    for (field, what) in [(mtime, "modification"), (atime, "access")] {
        if number(field)? > MAX_TIME {
            return Err(format!("the {what} time {field} is past the year 9999"));
        }
    }
    for usec in [mtime_usec, atime_usec] {
        if number(usec)? > 999_999 {
            return Err(format!("{usec} microseconds is more than a second"));
        }
    }
    let seconds = number(mtime)?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// `<mode> <size> <name>` → (size, name). The mode is checked, then ignored: uploads are 0644.
fn parse_entry(text: &str) -> Result<(u64, String), String> {
    const SHAPE: &str = "a file line is C<4 octal digits> <size> <name>";
    let mut parts = text.splitn(3, ' ');
    let (Some(mode), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SHAPE.into());
    };
    if mode.len() != 4 || !mode.chars().all(|c| c.is_digit(8)) {
        return Err(format!("the mode {mode:?} is not 4 octal digits"));
    }
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the size {size:?} is not a number of bytes"));
    }
    // A file offset is signed 64-bit: no larger size can be written.
    let size = size
        .parse::<u64>()
        .ok()
        .filter(|size| i64::try_from(*size).is_ok())
        .ok_or_else(|| format!("the size {size} is out of range"))?;
    Ok((size, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn parses_what_openssh_sends() {
        assert_eq!(
            parse_args(&words("scp -t .")).unwrap(),
            SinkArgs {
                target: ".".into(),
                ..SinkArgs::default()
            }
        );
        let args = parse_args(&words("scp -v -r -p -d -t -- -odd")).unwrap();
        assert!(args.recursive && args.target_is_dir);
        assert_eq!(args.target, "-odd");
        assert_eq!(parse_args(&words("scp -pt x")).unwrap().target, "x");
        assert!(
            parse_args(&words("scp -f x"))
                .unwrap_err()
                .contains("uploads only")
        );
        assert!(parse_args(&words("scp x")).unwrap_err().contains("sink"));
        assert!(parse_args(&words("scp -t")).is_err());
        assert!(parse_args(&words("scp -t a b")).is_err());
        assert!(parse_args(&words("scp -z -t a")).is_err());
    }

    #[test]
    fn parses_control_lines() {
        assert_eq!(
            parse_entry("0644 12 my file.tar.xz"),
            Ok((12, "my file.tar.xz".into()))
        );
        assert!(parse_entry("0644 x name").unwrap_err().contains("number"));
        assert!(parse_entry("0644 -1 name").unwrap_err().contains("number"));
        assert!(parse_entry("644 1 name").unwrap_err().contains("mode"));
        assert!(
            parse_entry("07777777777 1 name")
                .unwrap_err()
                .contains("mode")
        );
        assert!(parse_entry("0644 1").is_err());
        assert!(
            parse_entry("0644 18446744073709551616 name")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_entry("0644 9223372036854775808 name")
                .unwrap_err()
                .contains("out of range")
        );
        assert_eq!(
            parse_entry("0644 9223372036854775807 n"),
            Ok((i64::MAX as u64, "n".into()))
        );
        assert_eq!(
            parse_times("1700000000 0 1700000001 0"),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(parse_times("1 0 2").is_err());
        assert!(parse_times("1 0 2 0 ").is_err());
        assert!(parse_times("+1 0 2 0").is_err());
        for overflowing in [
            "18446744073709551615 0 0 0",
            "18446744073709551616 0 0 0",
            "253402300800 0 0 0",
            "0 0 18446744073709551615 0",
        ] {
            assert!(parse_times(overflowing).is_err(), "{overflowing}");
        }
        assert!(
            parse_times("1 1000000 2 0")
                .unwrap_err()
                .contains("microseconds")
        );
        assert!(parse_times("253402300799 999999 0 0").is_ok());
    }
}

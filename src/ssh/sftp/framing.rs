//! SFTP framing: channel data as russh delivered it, cut into packets without copying, and
//! the header of a WRITE read from its first bytes so that its data is never copied.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Largest request accepted: the 255 KiB writes `limits@openssh.com` invites, plus headers.
pub(super) const MAX_PACKET: usize = 256 * 1024 + 1024;

pub(super) const SSH_FXP_WRITE: u8 = 6;

/// Reads an SFTP string (u32 length + bytes) from `data` at `*at`.
pub(super) fn take_string(data: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let text = data.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// Requests waiting to be answered: channel data as russh delivered it, framed into packets
/// without copying.
#[derive(Default)]
pub(super) struct Inbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Inbox {
    pub(super) fn push(&mut self, data: Bytes) {
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
    pub(super) fn next_packet(&mut self) -> Result<Option<Vec<Bytes>>, String> {
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

pub(super) fn copy_front<'a>(pieces: impl Iterator<Item = &'a Bytes>, n: usize) -> Vec<u8> {
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
pub(super) fn skip(pieces: &mut Vec<Bytes>, mut n: usize) {
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

pub(super) fn concat(pieces: Vec<Bytes>) -> Bytes {
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
pub(super) fn parse_write_header(pieces: &[Bytes]) -> Option<(u32, String, u64, usize, usize)> {
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

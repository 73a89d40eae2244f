//! A new file written front to back in 1 MiB blocks aligned in memory and on disk, with
//! `O_DIRECT` where the filesystem takes it: the bytes skip the page cache, so there is no
//! copy into it and no writeback to pay for later (measured for uploads: 0.13 instead of
//! 0.39 CPU s/GiB), and once the last block is written nothing is left to flush. A filesystem
//! that refuses `O_DIRECT` (tmpfs, some network filesystems) gets the same blocks through the
//! page cache. The last partial block is written padded and the file cut to its real length.
//!
//! Used by uploads and mirror downloads (through their writer thread, `disk_writer`) and by
//! imports that copy a file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Bytes per disk write.
pub const BLOCK: usize = 1 << 20;
/// Alignment `O_DIRECT` wants of buffers, offsets and lengths (covers 512 and 4096-byte
/// sectors).
pub const ALIGN: usize = 4096;

/// A buffer whose usable part starts at an `ALIGN`-aligned address.
struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    fn new() -> Self {
        let storage = vec![0u8; BLOCK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBlock { storage, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + BLOCK]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BLOCK]
    }
}

pub struct DirectFile {
    file: File,
    direct: Option<File>,
    block: AlignedBlock,
    /// File offset of the block's first byte (a multiple of `BLOCK`).
    block_offset: u64,
    filled: usize,
    total: u64,
}

impl DirectFile {
    /// Writes the (new, empty) file at `path` from offset 0; `direct` asks for `O_DIRECT`.
    /// Symbolic links are not followed.
    pub fn create(path: &Path, direct: bool) -> io::Result<DirectFile> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let direct = if direct {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok(DirectFile {
            file,
            direct,
            block: AlignedBlock::new(),
            block_offset: 0,
            filled: 0,
            total: 0,
        })
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append_with(bytes, |from, to| to.copy_from_slice(from))
    }

    /// [`DirectFile::append`], with `copy(from, to)` putting each piece of `bytes` into the
    /// block: it must fill `to` with `from` (and may hash on the way, for next to nothing).
    pub fn append_with(
        &mut self,
        mut bytes: &[u8],
        mut copy: impl FnMut(&[u8], &mut [u8]),
    ) -> io::Result<()> {
        self.total += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (BLOCK - self.filled).min(bytes.len());
            copy(
                &bytes[..take],
                &mut self.block.bytes_mut()[self.filled..self.filled + take],
            );
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BLOCK {
                self.write_block(BLOCK)?;
                self.block_offset += BLOCK as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes the partial block and cuts the file to its real length. Appending may go on:
    /// the partial block stays in memory and is written again, whole, once it fills.
    pub fn write_tail(&mut self) -> io::Result<()> {
        if self.filled > 0 {
            self.write_block(self.filled)?;
        }
        self.file.set_len(self.total)
    }

    /// [`DirectFile::write_tail`], then the data to the device.
    pub fn sync_data(&mut self) -> io::Result<()> {
        self.write_tail()?;
        self.file.sync_data()
    }

    /// Writes the first `len` bytes of the block at its offset: directly when possible
    /// (`len` rounded up to the alignment), else through the page cache.
    fn write_block(&mut self, len: usize) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            let padded = len.div_ceil(ALIGN) * ALIGN;
            if padded > len {
                self.block.bytes_mut()[len..padded].fill(0);
            }
            match direct.write_all_at(&self.block.bytes()[..padded], self.block_offset) {
                Ok(()) => return Ok(()),
                // The filesystem takes O_DIRECT opens but not these writes: use the cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file
            .write_all_at(&self.block.bytes()[..len], self.block_offset)
    }
}

/// `write` appends; `flush` writes the tail ([`DirectFile::write_tail`]).
impl io::Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_tail()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// `n` bytes that repeat no short pattern.
    pub(crate) fn data(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn writes_exactly_what_was_appended_with_flushes_between() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        for (direct, len) in [
            (true, 3 * BLOCK + 12_345),
            (false, BLOCK + 1),
            (true, 100),
            (true, 0),
        ] {
            std::fs::write(&path, b"").unwrap();
            let body = data(len);
            let mut file = DirectFile::create(&path, direct).unwrap();
            for (i, piece) in body.chunks(261_120).enumerate() {
                file.write_all(piece).unwrap();
                if i == 2 {
                    file.flush().unwrap();
                }
            }
            file.sync_data().unwrap();
            assert_eq!(file.len(), len as u64);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                body,
                "direct {direct} len {len}"
            );
        }
    }
}

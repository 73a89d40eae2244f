//! Random reads of the base file through a small cache of blocks: matches and copies jump
//! around the base, but mostly move forward through it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 64 << 10;
const BLOCKS: usize = 64;

pub(super) struct Source<'a> {
    file: &'a File,
    len: u64,
    /// (block number, bytes), most recently used last.
    cache: Vec<(u64, Vec<u8>)>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a File, len: u64) -> Source<'a> {
        Source {
            file,
            len,
            cache: Vec::with_capacity(BLOCKS),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The cached bytes of the block holding `pos` (which is below `len`), from `pos` on.
    fn at(&mut self, pos: u64) -> io::Result<&[u8]> {
        let number = pos / BLOCK;
        let start = number * BLOCK;
        if let Some(found) = self.cache.iter().position(|(n, _)| *n == number) {
            let entry = self.cache.remove(found);
            self.cache.push(entry);
        } else {
            let size = (self.len - start).min(BLOCK) as usize;
            let mut bytes = if self.cache.len() == BLOCKS {
                self.cache.remove(0).1
            } else {
                Vec::new()
            };
            bytes.resize(size, 0);
            self.file.read_exact_at(&mut bytes, start)?;
            self.cache.push((number, bytes));
        }
        let block = self.cache.last().map_or(&[][..], |(_, bytes)| bytes);
        Ok(&block[(pos - start) as usize..])
    }

    /// Copies `out.len()` bytes from `pos`; the range must lie within the file.
    pub fn read_at(&mut self, mut pos: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let block = self.at(pos)?;
            let n = block.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[..n]);
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// How many bytes from `pos` on equal `target`'s first ones.
    pub fn common_prefix(&mut self, mut pos: u64, target: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < target.len() && pos < self.len {
            let block = self.at(pos)?;
            let n = block.len().min(target.len() - done);
            let same = same_prefix(&block[..n], &target[done..done + n]);
            done += same;
            if same < n {
                break;
            }
            pos += n as u64;
        }
        Ok(done)
    }

    /// How many bytes before `end` equal `target`'s last ones.
    pub fn common_suffix(&mut self, end: u64, target: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        let mut end = end;
        while done < target.len() && end > 0 {
            let block_start = (end - 1) / BLOCK * BLOCK;
            let n = ((end - block_start) as usize).min(target.len() - done);
            let start = end - n as u64;
            let block = &self.at(start)?[..n];
            let want = &target[target.len() - done - n..target.len() - done];
            let same = block
                .iter()
                .rev()
                .zip(want.iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            done += same;
            if same < n {
                break;
            }
            end = start;
        }
        Ok(done)
    }
}

/// Reads a file front to back by position, whatever its cursor says: a file handed in may
/// have been read before.
pub(super) struct FromStart<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> FromStart<'a> {
    pub fn new(file: &'a File) -> FromStart<'a> {
        FromStart { file, pos: 0 }
    }
}

impl io::Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The length of the common prefix of two slices, eight bytes at a time.
pub(super) fn same_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_suffixes_cross_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base");
        let data: Vec<u8> = (0..(3 * BLOCK + 100))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut source = Source::new(&file, data.len() as u64);

        let start = BLOCK - 10;
        let mut target = data[start as usize..(start + BLOCK + 50) as usize].to_vec();
        assert_eq!(source.common_prefix(start, &target).unwrap(), target.len());
        target[BLOCK as usize] ^= 1;
        assert_eq!(
            source.common_prefix(start, &target).unwrap(),
            BLOCK as usize
        );
        // Running off the end of the file stops the prefix there.
        let tail = &data[data.len() - 20..];
        let mut longer = tail.to_vec();
        longer.extend_from_slice(b"more");
        assert_eq!(
            source
                .common_prefix(data.len() as u64 - 20, &longer)
                .unwrap(),
            20
        );

        let end = 2 * BLOCK + 5;
        let mut target = data[(end - BLOCK - 30) as usize..end as usize].to_vec();
        assert_eq!(source.common_suffix(end, &target).unwrap(), target.len());
        target[3] ^= 1;
        assert_eq!(
            source.common_suffix(end, &target).unwrap(),
            target.len() - 4
        );
        // The start of the file stops the suffix.
        let head = data[..10].to_vec();
        let mut longer = b"xx".to_vec();
        longer.extend_from_slice(&head);
        assert_eq!(source.common_suffix(10, &longer).unwrap(), 10);

        let mut out = vec![0u8; (BLOCK + 3) as usize];
        source.read_at(BLOCK - 1, &mut out).unwrap();
        assert_eq!(out, data[(BLOCK - 1) as usize..(2 * BLOCK + 2) as usize]);
    }

    #[test]
    fn same_prefix_finds_the_first_difference() {
        let a = b"0123456789abcdefXYZ";
        for i in 0..a.len() {
            let mut b = *a;
            b[i] = b'!';
            assert_eq!(same_prefix(a, &b), i);
        }
        assert_eq!(same_prefix(a, a), a.len());
        assert_eq!(same_prefix(a, &a[..5]), 5);
    }
}

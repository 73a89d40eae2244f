//! Applying a delta, as `xdelta3 -d -s <base>` does, to check one before it is published
//! (`verify --deep` too): the whole default code table and address cache, xdelta3's Adler-32
//! window checksums; not secondary compression, custom code tables or target-sourced windows,
//! which are refused by name. Memory: one target window (at most 16 MiB) and its sections.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};

use super::source::Source;
use super::{
    DeltaError, HDR_APP_HEADER, HDR_CODE_TABLE, HDR_SECONDARY, Kind, MAGIC, MAX_WINDOW, NEAR, SAME,
    WIN_ADLER32, WIN_SOURCE, WIN_TARGET, adler32,
};
use crate::sha256::Sha256State;

/// The most a window's sections may hold together.
const MAX_ENCODING: u64 = 64 << 20;

/// What applying a delta produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub size: u64,
    pub sha256: String,
}

/// Applies `delta` to `source`, hashing the result and writing it to `out` when given. Fails
/// once the result passes `max_size` bytes, and when `stop` says so (once a window).
pub fn decode(
    source: &File,
    delta: &mut dyn Read,
    mut out: Option<&mut dyn Write>,
    max_size: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Decoded, DeltaError> {
    let mut delta = BufReader::with_capacity(1 << 20, delta);
    let mut magic = [0u8; 4];
    read_exact(&mut delta, &mut magic)?;
    if magic != MAGIC {
        return Err(invalid("it does not start with the VCDIFF magic"));
    }
    let header = read_byte(&mut delta)?;
    if header & HDR_SECONDARY != 0 {
        return Err(DeltaError::Unsupported("secondary compression"));
    }
    if header & HDR_CODE_TABLE != 0 {
        return Err(DeltaError::Unsupported("an application-defined code table"));
    }
    if header & !(HDR_SECONDARY | HDR_CODE_TABLE | HDR_APP_HEADER) != 0 {
        return Err(invalid("unknown header indicator bits"));
    }
    if header & HDR_APP_HEADER != 0 {
        let len = read_varint(&mut delta)?;
        io::copy(&mut (&mut delta).take(len), &mut io::sink())?;
    }

    let mut base = Source::new(source, source.metadata()?.len());
    let table = code_table();
    let mut sha256 = Sha256State::new();
    let mut size = 0u64;
    let mut target = Vec::new();
    let mut sections = Vec::new();
    loop {
        if stop() {
            return Err(DeltaError::Stopped);
        }
        let mut first = [0u8; 1];
        if delta.read(&mut first)? == 0 {
            break;
        }
        let indicator = first[0];
        if indicator & WIN_TARGET != 0 {
            return Err(DeltaError::Unsupported("windows that copy from the target"));
        }
        if indicator & !(WIN_SOURCE | WIN_ADLER32) != 0 {
            return Err(invalid("unknown window indicator bits"));
        }
        let (segment_len, segment_pos) = if indicator & WIN_SOURCE != 0 {
            let len = read_varint(&mut delta)?;
            let pos = read_varint(&mut delta)?;
            if pos.checked_add(len).is_none_or(|end| end > base.len()) {
                return Err(invalid("a window copies from beyond the end of the base"));
            }
            (len, pos)
        } else {
            (0, 0)
        };
        let encoding_len = read_varint(&mut delta)?;
        if encoding_len > MAX_ENCODING {
            return Err(invalid("a window is larger than 64 MiB"));
        }
        let target_len = read_varint(&mut delta)?;
        if target_len > MAX_WINDOW {
            return Err(invalid("a target window is larger than 16 MiB"));
        }
        if read_byte(&mut delta)? != 0 {
            return Err(DeltaError::Unsupported("secondary compression"));
        }
        let data_len = read_varint(&mut delta)?;
        let inst_len = read_varint(&mut delta)?;
        let addr_len = read_varint(&mut delta)?;
        let checksum = if indicator & WIN_ADLER32 != 0 {
            let mut bytes = [0u8; 4];
            read_exact(&mut delta, &mut bytes)?;
            Some(u32::from_be_bytes(bytes))
        } else {
            None
        };
        let total = data_len
            .checked_add(inst_len)
            .and_then(|n| n.checked_add(addr_len))
            .filter(|&n| n <= MAX_ENCODING)
            .ok_or_else(|| invalid("a window's sections are too large"))?;
        sections.clear();
        sections.resize(total as usize, 0);
        read_exact(&mut delta, &mut sections)?;
        let (data, rest) = sections.split_at(data_len as usize);
        let (inst, addr) = rest.split_at(inst_len as usize);

        target.clear();
        let mut window = Window {
            base: &mut base,
            segment_len,
            segment_pos,
            target: &mut target,
            target_len: target_len as usize,
            near: [0; NEAR],
            next_near: 0,
            same: [0; SAME * 256],
        };
        window.run(&table, Bytes::new(data), Bytes::new(inst), Bytes::new(addr))?;
        if target.len() as u64 != target_len {
            return Err(invalid("a window builds fewer bytes than it announces"));
        }
        if let Some(expected) = checksum
            && adler32(1, &target) != expected
        {
            return Err(invalid("a window's Adler-32 checksum does not match"));
        }
        size += target_len;
        if size > max_size {
            return Err(DeltaError::TooLarge { limit: max_size });
        }
        sha256.update(&target);
        if let Some(out) = out.as_mut() {
            out.write_all(&target)?;
        }
    }
    Ok(Decoded {
        size,
        sha256: sha256.finalize_hex(),
    })
}

fn invalid(why: &str) -> DeltaError {
    DeltaError::Invalid(why.to_string())
}

fn read_exact(reader: &mut dyn Read, buf: &mut [u8]) -> Result<(), DeltaError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid("it ends in the middle of a window")
        } else {
            DeltaError::Io(e)
        }
    })
}

fn read_byte(reader: &mut dyn Read) -> Result<u8, DeltaError> {
    let mut byte = [0u8; 1];
    read_exact(reader, &mut byte)?;
    Ok(byte[0])
}

fn read_varint(reader: &mut dyn Read) -> Result<u64, DeltaError> {
    varint(|| read_byte(reader))
}

/// A VCDIFF integer from the bytes `next` gives: base 128, high bit set on all but the last.
fn varint(mut next: impl FnMut() -> Result<u8, DeltaError>) -> Result<u64, DeltaError> {
    let mut value = 0u64;
    for _ in 0..10 {
        let byte = next()?;
        value = value
            .checked_mul(128)
            .ok_or_else(|| invalid("an integer overflows 64 bits"))?
            | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("an integer is longer than 10 bytes"))
}

/// A section of a window, read front to back.
pub(super) struct Bytes<'a> {
    bytes: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(bytes: &'a [u8]) -> Bytes<'a> {
        Bytes { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn byte(&mut self) -> Result<u8, DeltaError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| invalid("a section ends early"))?;
        self.bytes = rest;
        Ok(first)
    }

    pub fn varint(&mut self) -> Result<u64, DeltaError> {
        varint(|| self.byte())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DeltaError> {
        if n > self.bytes.len() {
            return Err(invalid("the data section ends early"));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }
}

/// One half of a code table entry: kind, size (0: the size follows in the instruction
/// section) and address mode.
#[derive(Debug, Clone, Copy)]
pub(super) struct Half {
    pub kind: Kind,
    pub size: u8,
    pub mode: u8,
}

const NOOP: Half = Half {
    kind: Kind::Noop,
    size: 0,
    mode: 0,
};

/// RFC 3284's default code table, built as section 5.6 (and xdelta3) lay it out.
pub(super) fn code_table() -> Vec<[Half; 2]> {
    let single = |kind, size, mode| [Half { kind, size, mode }, NOOP];
    let modes = 2 + NEAR as u8 + SAME as u8;
    let mut table = vec![single(Kind::Run, 0, 0), single(Kind::Add, 0, 0)];
    table.extend((1..=17).map(|size| single(Kind::Add, size, 0)));
    for mode in 0..modes {
        table.push(single(Kind::Copy, 0, mode));
        table.extend((4..=18).map(|size| single(Kind::Copy, size, mode)));
    }
    for mode in 0..modes {
        let copy_max = if mode < 2 + NEAR as u8 { 6 } else { 4 };
        for add in 1..=4 {
            for copy in 4..=copy_max {
                table.push([
                    Half {
                        kind: Kind::Add,
                        size: add,
                        mode: 0,
                    },
                    Half {
                        kind: Kind::Copy,
                        size: copy,
                        mode,
                    },
                ]);
            }
        }
    }
    for mode in 0..modes {
        table.push([
            Half {
                kind: Kind::Copy,
                size: 4,
                mode,
            },
            Half {
                kind: Kind::Add,
                size: 1,
                mode: 0,
            },
        ]);
    }
    table
}

/// The state of one window being built.
struct Window<'a, 'b> {
    base: &'a mut Source<'b>,
    segment_len: u64,
    segment_pos: u64,
    target: &'a mut Vec<u8>,
    target_len: usize,
    near: [u64; NEAR],
    next_near: usize,
    same: [u64; SAME * 256],
}

impl Window<'_, '_> {
    fn run(
        &mut self,
        table: &[[Half; 2]],
        mut data: Bytes<'_>,
        mut inst: Bytes<'_>,
        mut addr: Bytes<'_>,
    ) -> Result<(), DeltaError> {
        while !inst.is_empty() {
            let entry = table[usize::from(inst.byte()?)];
            for half in entry {
                if half.kind == Kind::Noop {
                    continue;
                }
                let size = match half.size {
                    0 => inst.varint()?,
                    size => u64::from(size),
                };
                if size > (self.target_len - self.target.len()) as u64 {
                    return Err(invalid("an instruction builds past the end of its window"));
                }
                let size = size as usize;
                match half.kind {
                    Kind::Add => self.target.extend_from_slice(data.take(size)?),
                    Kind::Run => {
                        let byte = data.take(1)?[0];
                        self.target.resize(self.target.len() + size, byte);
                    }
                    Kind::Copy => {
                        let here = self.segment_len + self.target.len() as u64;
                        let address = self.address(half.mode, here, &mut addr)?;
                        self.copy(address, size)?;
                    }
                    Kind::Noop => {}
                }
            }
        }
        if !data.is_empty() || !addr.is_empty() {
            return Err(invalid(
                "a window's sections hold bytes no instruction uses",
            ));
        }
        Ok(())
    }

    /// Decodes a COPY address (RFC 3284 section 5.3) and updates the caches.
    fn address(&mut self, mode: u8, here: u64, addr: &mut Bytes<'_>) -> Result<u64, DeltaError> {
        let mode = usize::from(mode);
        let address = match mode {
            0 => addr.varint()?,
            1 => here
                .checked_sub(addr.varint()?)
                .ok_or_else(|| invalid("a COPY address lies before the segment"))?,
            m if m < 2 + NEAR => self.near[m - 2]
                .checked_add(addr.varint()?)
                .ok_or_else(|| invalid("a COPY address overflows"))?,
            m => self.same[(m - 2 - NEAR) * 256 + usize::from(addr.byte()?)],
        };
        if address >= here {
            return Err(invalid("a COPY reads bytes not yet built"));
        }
        self.near[self.next_near] = address;
        self.next_near = (self.next_near + 1) % NEAR;
        self.same[(address % (SAME as u64 * 256)) as usize] = address;
        Ok(address)
    }

    /// Copies `size` bytes from `address`: the base segment, then the window itself (which
    /// may overlap what the copy writes, repeating a pattern).
    fn copy(&mut self, address: u64, size: usize) -> Result<(), DeltaError> {
        let mut done = 0;
        if address < self.segment_len {
            let n = ((self.segment_len - address) as usize).min(size);
            let start = self.target.len();
            self.target.resize(start + n, 0);
            self.base
                .read_at(self.segment_pos + address, &mut self.target[start..])?;
            done = n;
        }
        if done == size {
            return Ok(());
        }
        let mut from = (address + done as u64 - self.segment_len) as usize;
        while done < size {
            let byte = self.target[from];
            self.target.push(byte);
            from += 1;
            done += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_code_table_has_rfc_3284s_layout() {
        let table = code_table();
        assert_eq!(table.len(), 256);
        let (run, add0, add17) = (table[0][0], table[1][0], table[18][0]);
        assert!(run.kind == Kind::Run && add0.kind == Kind::Add && add0.size == 0);
        assert_eq!((add17.kind, add17.size), (Kind::Add, 17));
        let copy = table[19 + 16 * 8 + 15][0];
        assert_eq!((copy.kind, copy.size, copy.mode), (Kind::Copy, 18, 8));
        let [add, copy] = table[163];
        assert_eq!((add.size, copy.size, copy.mode), (1, 4, 0));
        let [add, copy] = table[234];
        assert_eq!((add.size, copy.size, copy.mode), (4, 6, 5));
        let [add, copy] = table[246];
        assert_eq!((add.size, copy.size, copy.mode), (4, 4, 8));
        let [copy, add] = table[255];
        assert_eq!(
            (copy.kind, copy.mode, add.kind, add.size),
            (Kind::Copy, 8, Kind::Add, 1)
        );
    }
}

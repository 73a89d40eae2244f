//! Making a delta: index the base sparsely, then walk the target window by window, copying
//! what the base holds and adding the rest.
//!
//! The index is a fixed-size table: for base positions every `step` bytes, a hash of the 32
//! bytes there maps to the position (and 32 bits of the hash, so that a miss costs no read).
//! `step` grows with the base so the table never passes [`INDEX_SLOTS`] entries; every run of
//! the target that the base also holds and that is longer than `step + 32` bytes covers an
//! indexed position, is found by a rolling hash of the target, and is then extended both ways
//! byte by byte to its exact ends. A match that runs to the end of a window is tried again at
//! the start of the next, where the base continues. Runs of one byte (padding) become RUNs.

use std::fs::File;
use std::io::{self, Read, Write};

use super::source::{FromStart, Source};
use super::{
    DeltaError, MAGIC, MAX_SEGMENT, WIN_ADLER32, WIN_SOURCE, WINDOW_SIZE, adler32, put_varint,
    varint_len,
};
use crate::sha256::Sha256State;

/// Bytes hashed at each indexed base position, and the shortest copy made.
const BLOCK: usize = 32;
/// The densest index: one position every this many bytes.
const MIN_STEP: u64 = 16;
/// Most entries in the index (8 bytes each: 64 MiB).
pub const INDEX_SLOTS: usize = 1 << 23;
/// About what encoding holds in memory, whatever the files' sizes: the index, a target
/// window, its encoded sections and the base's block cache (113 MiB peak RSS was measured for
/// a whole import with its delta by bench/delta.sh).
pub const MEMORY_BOUND: u64 = 112 << 20;

/// Odd multiplier of the rolling hash.
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// What encoding read and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes of the delta.
    pub size: u64,
    /// sha256 of the base and of the target, as read while encoding.
    pub source_sha256: String,
    pub target_sha256: String,
    pub target_size: u64,
}

/// Writes a delta that turns `source` into `target` to `out`. Fails with
/// [`DeltaError::TooLarge`] as soon as the delta passes `max_size` bytes, and with
/// [`DeltaError::Stopped`] when `stop` says so (checked once a window).
pub fn encode(
    source: &File,
    target: &File,
    out: &mut dyn Write,
    max_size: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Encoded, DeltaError> {
    let source_len = source.metadata()?.len();
    let mut source_sha256 = Sha256State::new();
    let index = Index::build(source, source_len, &mut source_sha256, stop)?;
    let mut base = Source::new(source, source_len);
    let mut target_sha256 = Sha256State::new();

    out.write_all(&MAGIC)?;
    out.write_all(&[0])?;
    let mut size = MAGIC.len() as u64 + 1;
    let mut window = vec![0u8; WINDOW_SIZE];
    let mut encoded = Vec::new();
    let mut target_size = 0u64;
    let mut reader = FromStart::new(target);
    // Where the base continues after a match that ran to the end of the previous window.
    let mut continue_at = None;
    loop {
        if stop() {
            return Err(DeltaError::Stopped);
        }
        let filled = fill(&mut reader, &mut window)?;
        if filled == 0 {
            break;
        }
        let window = &window[..filled];
        target_sha256.update(window);
        target_size += filled as u64;
        let ops = match_window(&index, &mut base, window, continue_at)?;
        continue_at = match ops.last() {
            Some(Op::Copy { src, len, .. }) => Some(src + *len as u64),
            _ => None,
        };
        encoded.clear();
        write_window(&mut encoded, window, &ops);
        size += encoded.len() as u64;
        if size > max_size {
            return Err(DeltaError::TooLarge { limit: max_size });
        }
        out.write_all(&encoded)?;
    }
    out.flush()?;
    Ok(Encoded {
        size,
        source_sha256: source_sha256.finalize_hex(),
        target_sha256: target_sha256.finalize_hex(),
        target_size,
    })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The sparse index of the base.
struct Index {
    /// 0 for empty; else (32 hash bits, nonzero) << 32 | position / step.
    slots: Vec<u64>,
    bits: u32,
    step: u64,
    /// PRIME^(BLOCK - 1), to roll the first byte out.
    out_factor: u64,
}

impl Index {
    /// Reads the whole base once, hashing it into `sha256` as it goes.
    fn build(
        file: &File,
        len: u64,
        sha256: &mut Sha256State,
        stop: &dyn Fn() -> bool,
    ) -> Result<Index, DeltaError> {
        let wanted = (len / MIN_STEP).saturating_mul(2).max(1024);
        let slots = usize::try_from(wanted)
            .unwrap_or(INDEX_SLOTS)
            .next_power_of_two()
            .min(INDEX_SLOTS);
        let step = len.div_ceil(slots as u64 / 2).max(MIN_STEP);
        let mut index = Index {
            slots: vec![0; slots],
            bits: slots.trailing_zeros(),
            step,
            out_factor: (1..BLOCK).fold(1u64, |f, _| f.wrapping_mul(PRIME)),
        };
        let mut reader = FromStart::new(file);
        let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
        let mut chunk = vec![0u8; 1 << 20];
        // `buf` holds the base from offset `buf_start`; `next` is the next position to index.
        let (mut buf_start, mut next) = (0u64, 0u64);
        loop {
            if stop() {
                return Err(DeltaError::Stopped);
            }
            let n = fill(&mut reader, &mut chunk)?;
            sha256.update(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
            let buf_end = buf_start + buf.len() as u64;
            while next + BLOCK as u64 <= buf_end {
                let at = (next - buf_start) as usize;
                index.insert(hash_block(&buf[at..at + BLOCK]), next);
                next += step;
            }
            if n == 0 {
                break;
            }
            let keep_from = next.min(buf_end);
            buf.drain(..(keep_from - buf_start) as usize);
            buf_start = keep_from;
        }
        Ok(index)
    }

    fn slot(&self, hash: u64) -> (usize, u64) {
        let mixed = mix(hash);
        let slot = (mixed >> (64 - self.bits)) as usize;
        let check = u64::from(mixed as u32 | 1) << 32;
        (slot, check)
    }

    fn insert(&mut self, hash: u64, pos: u64) {
        let (slot, check) = self.slot(hash);
        if self.slots[slot] == 0 {
            self.slots[slot] = check | (pos / self.step);
        }
    }

    /// The base position indexed under `hash`, if any.
    fn lookup(&self, hash: u64) -> Option<u64> {
        let (slot, check) = self.slot(hash);
        let entry = self.slots[slot];
        (entry != 0 && entry & !0xffff_ffff == check).then(|| (entry & 0xffff_ffff) * self.step)
    }

    /// The hash of the block one byte on: `out` leaves, `into` enters.
    fn roll(&self, hash: u64, out: u8, into: u8) -> u64 {
        hash.wrapping_sub(byte_value(out).wrapping_mul(self.out_factor))
            .wrapping_mul(PRIME)
            .wrapping_add(byte_value(into))
    }
}

fn byte_value(byte: u8) -> u64 {
    u64::from(byte) + 1
}

/// The polynomial hash of one block, as [`Index::roll`] continues it.
fn hash_block(block: &[u8]) -> u64 {
    block.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(PRIME).wrapping_add(byte_value(b))
    })
}

/// Spreads the hash's bits (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One instruction of a window, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Window bytes `start..start + len`, sent as they are.
    Add { start: usize, len: usize },
    /// `len` bytes of the base from `src`.
    Copy { src: u64, len: usize },
    /// `len` times `byte`.
    Run { byte: u8, len: usize },
}

/// The instructions that build `window`, copying every match the index finds.
fn match_window(
    index: &Index,
    base: &mut Source<'_>,
    window: &[u8],
    continue_at: Option<u64>,
) -> io::Result<Vec<Op>> {
    let mut ops = Vec::new();
    // The base segment the copies span, which must stay under MAX_SEGMENT.
    let mut segment: Option<(u64, u64)> = None;
    let fits = |segment: Option<(u64, u64)>, src: u64, end: u64| match segment {
        None => end - src <= MAX_SEGMENT,
        Some((low, high)) => high.max(end) - low.min(src) <= MAX_SEGMENT,
    };
    let mut covered = 0;
    if let Some(src) = continue_at.filter(|&src| src < base.len()) {
        let len = base.common_prefix(src, window)?;
        if len >= BLOCK {
            ops.push(Op::Copy { src, len });
            segment = Some((src, src + len as u64));
            covered = len;
        }
    }
    let mut i = covered;
    let mut hash = None;
    while i + BLOCK <= window.len() {
        let current = match hash {
            Some(hash) => hash,
            None => hash_block(&window[i..i + BLOCK]),
        };
        let byte = window[i];
        if window[i + BLOCK - 1] == byte && window[i..i + BLOCK].iter().all(|&b| b == byte) {
            let len = window[i..].iter().take_while(|&&b| b == byte).count();
            if i > covered {
                ops.push(Op::Add {
                    start: covered,
                    len: i - covered,
                });
            }
            ops.push(Op::Run { byte, len });
            covered = i + len;
            i = covered;
            hash = None;
            continue;
        }
        if let Some(candidate) = index.lookup(current) {
            let forward = base.common_prefix(candidate, &window[i..])?;
            if forward >= BLOCK {
                let back = base.common_suffix(candidate, &window[covered..i])?;
                let (src, start, len) = (candidate - back as u64, i - back, back + forward);
                if fits(segment, src, src + len as u64) {
                    if start > covered {
                        ops.push(Op::Add {
                            start: covered,
                            len: start - covered,
                        });
                    }
                    ops.push(Op::Copy { src, len });
                    let end = src + len as u64;
                    segment = Some(
                        segment.map_or((src, end), |(low, high)| (low.min(src), high.max(end))),
                    );
                    covered = start + len;
                    i = covered;
                    hash = None;
                    continue;
                }
            }
        }
        hash = window
            .get(i + BLOCK)
            .map(|&into| index.roll(current, window[i], into));
        i += 1;
    }
    if covered < window.len() {
        ops.push(Op::Add {
            start: covered,
            len: window.len() - covered,
        });
    }
    Ok(ops)
}

/// Appends one window: header, then the data, instruction and address sections. Only single
/// instructions of the default code table are used: ADD (sizes 1-17 in the opcode), RUN, COPY
/// in address mode SELF or HERE, whichever is shorter.
fn write_window(out: &mut Vec<u8>, window: &[u8], ops: &[Op]) {
    let (segment_start, segment_len) = ops
        .iter()
        .filter_map(|op| match op {
            Op::Copy { src, len } => Some((*src, src + *len as u64)),
            Op::Add { .. } | Op::Run { .. } => None,
        })
        .reduce(|(low, high), (src, end)| (low.min(src), high.max(end)))
        .map_or((0, 0), |(low, high)| (low, high - low));
    let (mut data, mut inst, mut addr) = (Vec::new(), Vec::new(), Vec::new());
    let mut here = segment_len;
    for op in ops {
        match *op {
            Op::Add { start, len } => {
                data.extend_from_slice(&window[start..start + len]);
                if (1..=17).contains(&len) {
                    inst.push(1 + len as u8);
                } else {
                    inst.push(1);
                    put_varint(&mut inst, len as u64);
                }
                here += len as u64;
            }
            Op::Run { byte, len } => {
                data.push(byte);
                inst.push(0);
                put_varint(&mut inst, len as u64);
                here += len as u64;
            }
            Op::Copy { src, len } => {
                let address = src - segment_start;
                let (mode, value) = if varint_len(here - address) < varint_len(address) {
                    (1, here - address)
                } else {
                    (0, address)
                };
                inst.push(19 + 16 * mode);
                put_varint(&mut inst, len as u64);
                put_varint(&mut addr, value);
                here += len as u64;
            }
        }
    }
    let has_source = ops.iter().any(|op| matches!(op, Op::Copy { .. }));
    out.push(WIN_ADLER32 | if has_source { WIN_SOURCE } else { 0 });
    if has_source {
        put_varint(out, segment_len);
        put_varint(out, segment_start);
    }
    let target_len = window.len() as u64;
    let sections = [data.len() as u64, inst.len() as u64, addr.len() as u64];
    let encoding_len =
        1 + varint_len(target_len) + sections.iter().map(|&n| varint_len(n) + n).sum::<u64>() + 4;
    put_varint(out, encoding_len);
    put_varint(out, target_len);
    out.push(0);
    for n in sections {
        put_varint(out, n);
    }
    out.extend_from_slice(&adler32(1, window).to_be_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&inst);
    out.extend_from_slice(&addr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_the_hash_equals_hashing_the_block() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 31 % 256) as u8).collect();
        let index = Index {
            slots: Vec::new(),
            bits: 1,
            step: 16,
            out_factor: (1..BLOCK).fold(1u64, |f, _| f.wrapping_mul(PRIME)),
        };
        let mut hash = hash_block(&data[..BLOCK]);
        for i in 1..data.len() - BLOCK {
            hash = index.roll(hash, data[i - 1], data[i + BLOCK - 1]);
            assert_eq!(hash, hash_block(&data[i..i + BLOCK]), "{i}");
        }
    }
}

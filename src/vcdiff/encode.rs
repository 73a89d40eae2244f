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
//! New data the window already holds (the same change made twice) is found the same way in a
//! second, smaller table of the window's own bytes, and copied from the window; a match that
//! reaches back over the copy before it takes that copy's place.
//!
//! What is left between those copies (the changed data) is searched for short matches, of 4
//! bytes and more: in the window before it (records that repeat a structure), and in the base
//! between the copies either side (what these bytes replaced, edited in small places). One is
//! taken only where its instruction costs less than the bytes it saves; the code table's
//! ADD+COPY pairs and the address caches (NEAR, SAME) keep those instructions short.

use std::fs::File;
use std::io::{self, Read, Write};

use super::source::{FromStart, Source};
use super::{
    DeltaError, Kind, MAGIC, MAX_SEGMENT, NEAR, SAME, WIN_ADLER32, WIN_SOURCE, WINDOW_SIZE,
    adler32, put_varint, varint_len,
};
use crate::sha256::Sha256State;

/// Bytes hashed at each indexed base position, and the shortest copy made.
const BLOCK: usize = 32;
/// The densest index: one position every this many bytes.
const MIN_STEP: u64 = 16;
/// Most entries in the index (8 bytes each: 64 MiB).
pub const INDEX_SLOTS: usize = 1 << 23;
/// What encoding holds in memory at most, whatever the files' sizes: the index (64 MiB), a
/// target window (8 MiB), its sections and their encoding (up to 16 MiB when nothing in the
/// window matches), the base's block cache (4 MiB) and the match tables of the window (5 MiB).
/// Measured: 83-87 MiB on bench/delta.sh's pairs, 91 MiB for a target of random bytes. A whole
/// `import` that makes its delta peaked at 125-127 MiB RSS there: the process itself (about
/// 29 MiB with `--no-delta`), and what the allocator keeps of the encoder's freed memory while
/// the delta is checked.
pub const MEMORY_BOUND: u64 = 100 << 20;

/// The index of the window's own bytes: a block every OWN_STEP bytes of what was not copied,
/// in 2^OWN_BITS slots of 4 bytes (2 MiB), the latest kept.
const OWN_STEP: usize = 16;
const OWN_BITS: u32 = 19;

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
    let mut own = vec![0u32; 1 << OWN_BITS];
    let mut encoded = Vec::new();
    let opcodes = Opcodes::new();
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
        let ops = match_window(&index, &mut base, window, continue_at, &mut own)?;
        continue_at = match ops.last() {
            Some(Op::Copy { src, len, .. }) => Some(src + *len as u64),
            _ => None,
        };
        encoded.clear();
        write_window(&mut encoded, window, &ops, &opcodes);
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
    /// `len` bytes of the window itself from `from`, which may run into what it builds.
    CopyWindow { from: usize, len: usize },
    /// `len` times `byte`.
    Run { byte: u8, len: usize },
}

/// The instructions that build `window`, copying every match the index finds.
fn match_window(
    index: &Index,
    base: &mut Source<'_>,
    window: &[u8],
    continue_at: Option<u64>,
    own: &mut [u32],
) -> io::Result<Vec<Op>> {
    own.fill(0);
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
        // The longest of the base's match and the window's own, each extended both ways.
        let mut found: Option<(Op, usize)> = None;
        if let Some(candidate) = index.lookup(current) {
            let forward = base.common_prefix(candidate, &window[i..])?;
            if forward >= BLOCK {
                let back = base.common_suffix(candidate, &window[covered..i])?;
                let (src, len) = (candidate - back as u64, back + forward);
                if fits(segment, src, src + len as u64) {
                    found = Some((Op::Copy { src, len }, i - back));
                }
            }
        }
        // New data the window already holds (a change made twice): copied from the window.
        let slot = (mix(current) >> (64 - OWN_BITS)) as usize;
        if let Some(from) = (own[slot] as usize).checked_sub(1) {
            let forward = super::source::same_prefix(&window[from..], &window[i..]);
            if forward >= BLOCK {
                let back = same_suffix(&window[..from], &window[covered..i]);
                let len = back + forward;
                if found.is_none_or(|(op, _)| len > op.len()) {
                    found = Some((
                        Op::CopyWindow {
                            from: from - back,
                            len,
                        },
                        i - back,
                    ));
                }
            }
        }
        if let Some((mut op, mut start)) = found {
            // A match that reaches back to the copy before may take that copy's place too.
            while start == covered {
                let Some(&last) = ops.last() else { break };
                let (Op::Copy { len: plen, .. } | Op::CopyWindow { len: plen, .. }) = last else {
                    break;
                };
                let before = &window[start - plen..start];
                let absorbed = match op {
                    Op::Copy { src, len } if src >= plen as u64 => {
                        (base.common_suffix(src, before)? == plen
                            && fits(segment, src - plen as u64, src + len as u64))
                        .then(|| Op::Copy {
                            src: src - plen as u64,
                            len: len + plen,
                        })
                    }
                    Op::CopyWindow { from, len } if from >= plen => {
                        (window[from - plen..from] == *before).then(|| Op::CopyWindow {
                            from: from - plen,
                            len: len + plen,
                        })
                    }
                    _ => None,
                };
                let Some(absorbed) = absorbed else { break };
                ops.pop();
                op = absorbed;
                start -= plen;
                covered = start;
            }
            if start > covered {
                ops.push(Op::Add {
                    start: covered,
                    len: start - covered,
                });
            }
            if let Op::Copy { src, len } = op {
                let end = src + len as u64;
                segment =
                    Some(segment.map_or((src, end), |(low, high)| (low.min(src), high.max(end))));
            }
            ops.push(op);
            covered = start + op.len();
            i = covered;
            hash = None;
            continue;
        }
        if i % OWN_STEP == 0 {
            own[slot] = i as u32 + 1;
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
    let mut gaps = GapMatcher::new();
    let mut refined = Vec::with_capacity(ops.len());
    for (k, op) in ops.iter().enumerate() {
        let Op::Add { start, len } = *op else {
            refined.push(*op);
            continue;
        };
        // The base between the copies either side is what these bytes replaced: its
        // pieces, and pieces of the window before, are found with short matches.
        let before = ops[..k].iter().rev().find_map(|op| match op {
            Op::Copy { src, len } => Some(src + *len as u64),
            _ => None,
        });
        let after = ops[k + 1..].iter().find_map(|op| match op {
            Op::Copy { src, .. } => Some(*src),
            _ => None,
        });
        let region = local_region(before, after, len, base.len());
        gaps.refine(
            base,
            window,
            start..start + len,
            region,
            &mut segment,
            &mut refined,
        )?;
    }
    Ok(refined)
}

/// How many of `a`'s last bytes equal `b`'s last ones.
fn same_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// The base bytes a gap of `len` target bytes between copies ending at `before` and starting
/// at `after` most likely replaced.
fn local_region(
    before: Option<u64>,
    after: Option<u64>,
    len: usize,
    base_len: u64,
) -> Option<(u64, u64)> {
    let slack = (len as u64 + LOCAL_SLACK).min(LOCAL_MAX);
    let (from, to) = match (before, after) {
        (Some(from), Some(to)) if from < to && to - from <= LOCAL_MAX => (from, to),
        (Some(from), _) => (from, from + slack),
        (None, Some(to)) => (to.saturating_sub(slack), to),
        (None, None) => return None,
    };
    let to = to.min(base_len);
    (to > from + SHORT as u64).then_some((from, to))
}

/// Shortest match looked for inside a gap.
const SHORT: usize = 4;
/// Most base bytes searched for one gap's short matches.
const LOCAL_MAX: u64 = 512 << 10;
/// Base bytes past a gap's length searched when only one side has a copy.
const LOCAL_SLACK: u64 = 64 << 10;
/// Candidates tried at one position.
const CHAIN: usize = 128;
/// How far back in the window a short match may start (the ring of `GapMatcher::prev`).
const RING: usize = 1 << 16;
const HEAD_BITS: u32 = 16;

/// Finds short matches in the bytes the index left to ADD: in the window before them
/// (repeated structures) and in the nearby base (small edits inside changed data), the way
/// xdelta3's small-match search does, taking one only where its instruction costs less than
/// the bytes it saves.
struct GapMatcher {
    /// Window positions + 1 by hash of their first SHORT bytes; chained through `prev`.
    head: Vec<u32>,
    prev: Vec<u32>,
    /// The same for the local base region in `local`.
    local_head: Vec<u32>,
    local_prev: Vec<u32>,
    local: Vec<u8>,
}

fn short_hash(bytes: &[u8]) -> usize {
    let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (word.wrapping_mul(0x9E37_79B1) >> (32 - HEAD_BITS)) as usize
}

impl GapMatcher {
    fn new() -> GapMatcher {
        GapMatcher {
            head: vec![0; 1 << HEAD_BITS],
            prev: vec![0; RING],
            local_head: vec![0; 1 << HEAD_BITS],
            local_prev: Vec::new(),
            local: Vec::new(),
        }
    }

    fn insert(&mut self, window: &[u8], pos: usize) {
        if pos + SHORT <= window.len() {
            let h = short_hash(&window[pos..]);
            self.prev[pos % RING] = self.head[h];
            self.head[h] = pos as u32 + 1;
        }
    }

    /// Appends the instructions for window bytes `range`: ADDs, and copies of the short
    /// matches worth their cost. `segment` is the span of the base the window copies from,
    /// which a copy from `region` may widen only up to [`MAX_SEGMENT`].
    fn refine(
        &mut self,
        base: &mut Source<'_>,
        window: &[u8],
        range: std::ops::Range<usize>,
        region: Option<(u64, u64)>,
        segment: &mut Option<(u64, u64)>,
        ops: &mut Vec<Op>,
    ) -> io::Result<()> {
        let (start, end) = (range.start, range.end);
        let region_start = match region {
            Some((from, to)) => {
                self.local.resize((to - from) as usize, 0);
                base.read_at(from, &mut self.local)?;
                self.local_head.fill(0);
                self.local_prev.clear();
                self.local_prev.resize(self.local.len(), 0);
                for pos in 0..self.local.len().saturating_sub(SHORT - 1) {
                    let h = short_hash(&self.local[pos..]);
                    self.local_prev[pos] = self.local_head[h];
                    self.local_head[h] = pos as u32 + 1;
                }
                from
            }
            None => {
                self.local.clear();
                0
            }
        };
        // Where the last short base copy ended: the next one is likely near it.
        let mut last_local = None::<usize>;
        let mut literal = start;
        let mut pos = start;
        while pos + SHORT <= end {
            let want = &window[pos..end];
            let h = short_hash(want);
            let mut best: Option<(usize, Op)> = None;
            let mut consider = |len: usize, cost: usize, op: Op| {
                if len > cost && best.is_none_or(|(gain, _)| len - cost > gain) {
                    best = Some((len - cost, op));
                }
            };
            // Each copy costs its opcode, its address, its size past 18 and the ADD it splits.
            let size_cost = |len: usize| {
                if len > 18 {
                    varint_len(len as u64) as usize
                } else {
                    0
                }
            };
            let mut candidate = self.head[h] as usize;
            for _ in 0..CHAIN {
                let Some(from) = candidate.checked_sub(1) else {
                    break;
                };
                if from >= pos || pos - from >= RING {
                    break;
                }
                let len = super::source::same_prefix(&window[from..end], want);
                if len >= SHORT {
                    let cost = 2 + varint_len((pos - from) as u64) as usize + size_cost(len);
                    consider(len, cost, Op::CopyWindow { from, len });
                }
                let next = self.prev[from % RING] as usize;
                if next >= candidate {
                    break;
                }
                candidate = next;
            }
            if !self.local.is_empty() {
                let mut candidate = self.local_head[h] as usize;
                for _ in 0..CHAIN {
                    let Some(from) = candidate.checked_sub(1) else {
                        break;
                    };
                    let len = super::source::same_prefix(&self.local[from..], want);
                    if len >= SHORT {
                        let address = match last_local {
                            Some(last) if from >= last => varint_len((from - last) as u64),
                            _ => 4,
                        } as usize;
                        let src = region_start + from as u64;
                        let fits = segment.is_none_or(|(low, high)| {
                            high.max(src + len as u64) - low.min(src) <= MAX_SEGMENT
                        });
                        if fits {
                            consider(len, 2 + address + size_cost(len), Op::Copy { src, len });
                        }
                    }
                    candidate = self.local_prev[from] as usize;
                }
            }
            let Some((_, op)) = best else {
                self.insert(window, pos);
                pos += 1;
                continue;
            };
            if pos > literal {
                ops.push(Op::Add {
                    start: literal,
                    len: pos - literal,
                });
            }
            let len = match op {
                Op::Copy { src, len } => {
                    last_local = Some((src - region_start) as usize);
                    let end = src + len as u64;
                    *segment = Some(
                        segment.map_or((src, end), |(low, high)| (low.min(src), high.max(end))),
                    );
                    len
                }
                Op::CopyWindow { len, .. } | Op::Add { len, .. } | Op::Run { len, .. } => len,
            };
            ops.push(op);
            for at in pos..pos + len {
                self.insert(window, at);
            }
            pos += len;
            literal = pos;
        }
        for at in pos..end {
            self.insert(window, at);
        }
        if end > literal {
            ops.push(Op::Add {
                start: literal,
                len: end - literal,
            });
        }
        Ok(())
    }
}

/// The address caches of RFC 3284 section 5.1 as the encoder keeps them, in step with the
/// decoder's: the last [`NEAR`] addresses copied from, and [`SAME`] × 256 addresses by their
/// value modulo that. A copy that starts near where a recent one did (the next unchanged
/// run of the base, after a changed file) costs a byte or two instead of a full address.
struct AddressCache {
    near: [u64; NEAR],
    next_near: usize,
    same: Vec<u64>,
}

impl AddressCache {
    fn new() -> AddressCache {
        AddressCache {
            near: [0; NEAR],
            next_near: 0,
            same: vec![0; SAME * 256],
        }
    }

    /// Appends `address` (of a copy made at `here`) in its shortest mode to `addr`, updates
    /// the caches as the decoder will, and returns the mode.
    fn encode(&mut self, address: u64, here: u64, addr: &mut Vec<u8>) -> u8 {
        let same_slot = (address % (SAME as u64 * 256)) as usize;
        let mode = if self.same[same_slot] == address {
            addr.push((same_slot % 256) as u8);
            (2 + NEAR + same_slot / 256) as u8
        } else {
            let mut best = (0u8, address);
            let mut consider = |mode: u8, value: u64| {
                if varint_len(value) < varint_len(best.1) {
                    best = (mode, value);
                }
            };
            consider(1, here - address);
            for (i, &near) in self.near.iter().enumerate() {
                if let Some(offset) = address.checked_sub(near) {
                    consider(2 + i as u8, offset);
                }
            }
            put_varint(addr, best.1);
            best.0
        };
        self.near[self.next_near] = address;
        self.next_near = (self.next_near + 1) % NEAR;
        self.same[same_slot] = address;
        mode
    }
}

impl Op {
    /// Target bytes it builds.
    fn len(&self) -> usize {
        match *self {
            Op::Add { len, .. }
            | Op::Copy { len, .. }
            | Op::CopyWindow { len, .. }
            | Op::Run { len, .. } => len,
        }
    }
}

/// An ADD on its own: sizes 1-17 in the opcode.
fn push_add(inst: &mut Vec<u8>, len: usize) {
    if (1..=17).contains(&len) {
        inst.push(1 + len as u8);
    } else {
        inst.push(1);
        put_varint(inst, len as u64);
    }
}

/// A COPY on its own: sizes 4-18 in the opcode.
fn push_copy(inst: &mut Vec<u8>, len: usize, mode: u8) {
    if (4..=18).contains(&len) {
        inst.push(19 + 16 * mode + (len - 3) as u8);
    } else {
        inst.push(19 + 16 * mode);
        put_varint(inst, len as u64);
    }
}

/// The default code table's double instructions, by what they do.
struct Opcodes {
    pairs: std::collections::HashMap<[(Kind, u8, u8); 2], u8>,
}

impl Opcodes {
    fn new() -> Opcodes {
        let pairs = super::decode::code_table()
            .iter()
            .enumerate()
            .filter(|(_, [_, second])| second.kind != Kind::Noop)
            .map(|(code, [a, b])| {
                (
                    [(a.kind, a.size, a.mode), (b.kind, b.size, b.mode)],
                    code as u8,
                )
            })
            .collect();
        Opcodes { pairs }
    }

    fn pair(&self, first: (Kind, usize, u8), second: (Kind, usize, u8)) -> Option<u8> {
        let size = |n: usize| u8::try_from(n).ok();
        let key = [
            (first.0, size(first.1)?, first.2),
            (second.0, size(second.1)?, second.2),
        ];
        self.pairs.get(&key).copied()
    }
}

/// Appends one window: header, then the data, instruction and address sections. The default
/// code table's single instructions (ADD and COPY with sizes in the opcode when they fit) and
/// its ADD+COPY and COPY+ADD pairs; each COPY's address in the shortest of the table's modes
/// (SELF, HERE, NEAR or SAME).
fn write_window(out: &mut Vec<u8>, window: &[u8], ops: &[Op], table: &Opcodes) {
    let (segment_start, segment_len) = ops
        .iter()
        .filter_map(|op| match op {
            Op::Copy { src, len } => Some((*src, src + *len as u64)),
            Op::CopyWindow { .. } | Op::Add { .. } | Op::Run { .. } => None,
        })
        .reduce(|(low, high), (src, end)| (low.min(src), high.max(end)))
        .map_or((0, 0), |(low, high)| (low, high - low));
    let (mut data, mut inst, mut addr) = (Vec::new(), Vec::new(), Vec::new());
    let mut here = segment_len;
    let mut cache = AddressCache::new();
    // A copy's address in the window's address space: the segment, then the window.
    let address = |op: &Op| match *op {
        Op::Copy { src, .. } => Some(src - segment_start),
        Op::CopyWindow { from, .. } => Some(segment_len + from as u64),
        Op::Add { .. } | Op::Run { .. } => None,
    };
    let mut k = 0;
    while k < ops.len() {
        let op = ops[k];
        let next = ops.get(k + 1);
        match op {
            Op::Add { start, len } => {
                data.extend_from_slice(&window[start..start + len]);
                here += len as u64;
                // A short ADD and the copy after it share one opcode when the table has it.
                if let Some(next) = next
                    && let Some(at) = address(next)
                    && len <= 4
                {
                    let size = next.len();
                    let mode = cache.encode(at, here, &mut addr);
                    if let Some(code) = table.pair((Kind::Add, len, 0), (Kind::Copy, size, mode)) {
                        inst.push(code);
                    } else {
                        push_add(&mut inst, len);
                        push_copy(&mut inst, size, mode);
                    }
                    here += size as u64;
                    k += 2;
                    continue;
                }
                push_add(&mut inst, len);
            }
            Op::Run { byte, len } => {
                data.push(byte);
                inst.push(0);
                put_varint(&mut inst, len as u64);
                here += len as u64;
            }
            Op::Copy { len, .. } | Op::CopyWindow { len, .. } => {
                let at = address(&op).unwrap_or_default();
                let mode = cache.encode(at, here, &mut addr);
                here += len as u64;
                // A 4-byte copy and a 1-byte ADD after it share one opcode.
                if let Some(Op::Add { start, len: 1 }) = next
                    && let Some(code) = table.pair((Kind::Copy, len, mode), (Kind::Add, 1, 0))
                {
                    inst.push(code);
                    data.push(window[*start]);
                    here += 1;
                    k += 2;
                    continue;
                }
                push_copy(&mut inst, len, mode);
            }
        }
        k += 1;
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

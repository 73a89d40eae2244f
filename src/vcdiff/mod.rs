//! VCDIFF (RFC 3284), the delta format LXD and Incus daemons apply with `xdelta3 -d -s <base>`:
//! an encoder that makes a delta from one file to another in bounded memory, and a decoder
//! that applies one (ours or xdelta3's, without secondary compression) to check it.
//!
//! Why our own encoder rather than the reference C library: the `xdelta3` crate only wraps
//! whole-buffer encoding with 32-bit lengths, and a pure-Rust port that indexes the whole
//! source needs memory in proportion to it (gigabytes for a 4 GiB root). Roots here are
//! compressed squashfs images, where what matches between two builds is whole compressed
//! blocks, often shifted: a sparse index of the base (a fixed-size table of hashes of 32-byte
//! blocks, [`encode::INDEX_SLOTS`]) finds every match longer than its step, and extending each
//! match byte by byte recovers its exact ends; short matches (from 4 bytes) are then looked
//! for in what is left, in the nearby base and in the window itself. Memory stays under
//! [`encode::MEMORY_BOUND`] whatever the sizes of the files.
//!
//! What the encoder writes is plain VCDIFF that Debian's xdelta3 3.0 decodes: no secondary
//! compression, the default code table, target windows of [`WINDOW_SIZE`] (xdelta3 refuses
//! windows over 16 MiB), each copying from one segment of the base under 2 GiB (its decoder
//! holds a segment's length in 32 bits), and xdelta3's Adler-32 of each window so that the
//! daemon's decoder checks what it builds.

pub mod decode;
pub mod encode;
mod source;

use std::io;

/// `0xD6 0xC3 0xC4` ("VCD" with the high bits set), then version 0.
pub const MAGIC: [u8; 4] = [0xD6, 0xC3, 0xC4, 0x00];

/// Header indicator bits.
const HDR_SECONDARY: u8 = 0x01;
const HDR_CODE_TABLE: u8 = 0x02;
const HDR_APP_HEADER: u8 = 0x04;

/// Window indicator bits; `WIN_ADLER32` is xdelta3's extension.
const WIN_SOURCE: u8 = 0x01;
const WIN_TARGET: u8 = 0x02;
const WIN_ADLER32: u8 = 0x04;

/// Target bytes per window: xdelta3's default, half the most its decoder accepts.
pub const WINDOW_SIZE: usize = 8 << 20;
/// The most target bytes in a window a decoder here accepts (xdelta3's hard limit).
const MAX_WINDOW: u64 = 16 << 20;
/// The longest base segment one window copies from: xdelta3 3.0 adds the segment's length and
/// the window's in 32 bits.
const MAX_SEGMENT: u64 = 1 << 31;

/// Sizes of the address caches of the default code table: NEAR addresses, SAME × 256.
const NEAR: usize = 4;
const SAME: usize = 3;

/// The default code table's instruction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Noop,
    Add,
    Run,
    Copy,
}

/// What can go wrong making or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The delta would be larger than the limit it was given.
    #[error("the delta is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The caller asked it to stop.
    #[error("stopped")]
    Stopped,
    /// The delta is not one this decoder can apply, or is damaged.
    #[error("the delta is not valid VCDIFF: {0}")]
    Invalid(String),
    /// The delta uses a VCDIFF feature this decoder does not implement.
    #[error("the delta uses {0}, which this server does not decode")]
    Unsupported(&'static str),
}

/// Appends `value` as a VCDIFF integer: base 128, most significant group first, every byte but
/// the last with its high bit set.
fn put_varint(out: &mut Vec<u8>, value: u64) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    let mut rest = value;
    loop {
        groups[n] = (rest & 0x7f) as u8;
        n += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(if i == 0 { groups[i] } else { groups[i] | 0x80 });
    }
}

fn varint_len(value: u64) -> u64 {
    let mut n = 1;
    let mut rest = value >> 7;
    while rest != 0 {
        n += 1;
        rest >>= 7;
    }
    n
}

/// Adler-32 as zlib defines it, continued from `adler` (1 for a new one).
fn adler32(adler: u32, data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    // The largest n with 255 n (n + 1) / 2 + (n + 1) (MOD - 1) < 2^32.
    const NMAX: usize = 5552;
    let (mut a, mut b) = (adler & 0xffff, adler >> 16);
    for chunk in data.chunks(NMAX) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn varints_are_base_128_most_significant_first() {
        // RFC 3284 section 2: 123456789 is the digits 58 111 26 21.
        let mut out = Vec::new();
        put_varint(&mut out, 123_456_789);
        assert_eq!(out, [0xBA, 0xEF, 0x9A, 0x15]);
        assert_eq!(varint_len(123_456_789), 4);
        for value in [0, 1, 127, 128, 16383, 16384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len() as u64, varint_len(value), "{value}");
            let mut reader = decode::Bytes::new(&out);
            assert_eq!(reader.varint().unwrap(), value);
        }
    }

    /// Incompressible bytes from an xorshift generator started at `state`, `n` at a call.
    fn noise_from(mut state: u64) -> impl FnMut(usize) -> Vec<u8> {
        move |n| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        }
    }

    /// Decodes `delta` against `base` and checks that it rebuilds `expected`.
    fn assert_rebuilds(base: &File, delta: &[u8], expected: &[u8]) -> decode::Decoded {
        let mut rebuilt = Vec::new();
        let decoded = decode::decode(base, &mut &delta[..], Some(&mut rebuilt), u64::MAX, &|| {
            false
        })
        .unwrap();
        assert!(rebuilt == expected, "the rebuilt target differs");
        decoded
    }

    /// Writes `base` and `target` into `dir` and opens them; the target's bytes come back too.
    fn write_pair(dir: &std::path::Path, base: &[u8], target: Vec<u8>) -> (File, File, Vec<u8>) {
        let (base_path, target_path) = (dir.join("base"), dir.join("target"));
        std::fs::write(&base_path, base).unwrap();
        std::fs::write(&target_path, &target).unwrap();
        (
            File::open(base_path).unwrap(),
            File::open(target_path).unwrap(),
            target,
        )
    }

    /// A base and a target that shares most of it, shifted, with changes and new data.
    fn pair(dir: &std::path::Path) -> (File, File, Vec<u8>) {
        let mut noise = noise_from(0x1234_5678_9abc_def0u64);
        let base = noise(3 * WINDOW_SIZE + 12_345);
        let mut target = Vec::new();
        target.extend_from_slice(&noise(100));
        target.extend_from_slice(&base[..WINDOW_SIZE]);
        target.extend_from_slice(&noise(5000));
        target.extend_from_slice(&base[WINDOW_SIZE + 4000..2 * WINDOW_SIZE]);
        target.extend_from_slice(&[0u8; 70_000]);
        target.extend_from_slice(&base[2 * WINDOW_SIZE + 7..]);
        target.extend_from_slice(&base[1000..200_000]);
        write_pair(dir, &base, target)
    }

    #[test]
    fn a_delta_rebuilds_its_target_and_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let (base, target, expected) = pair(dir.path());
        let mut delta = Vec::new();
        let encoded = encode::encode(&base, &target, &mut delta, u64::MAX, &|| false).unwrap();
        assert_eq!(encoded.size, delta.len() as u64);
        assert_eq!(encoded.target_size, expected.len() as u64);
        let target_sha256 = crate::catalog::hashing::sha256_hex(&expected);
        assert_eq!(encoded.target_sha256, target_sha256);
        // The new bytes (100 + 5000, and a run of 70000 zeros) and little else.
        assert!(delta.len() < 5500, "{} bytes", delta.len());

        let decoded = assert_rebuilds(&base, &delta, &expected);
        assert_eq!(decoded.sha256, target_sha256);

        // Too large, or stopped: said so, not a short delta.
        let mut sink = Vec::new();
        let too_large = encode::encode(&base, &target, &mut sink, 1000, &|| false);
        assert!(
            matches!(too_large, Err(DeltaError::TooLarge { limit: 1000 })),
            "{too_large:?} {}",
            delta.len()
        );
        assert!(matches!(
            encode::encode(&base, &target, &mut Vec::new(), u64::MAX, &|| true),
            Err(DeltaError::Stopped)
        ));

        // Damage is caught (a window's checksum, a cut, a wrong base) or harmless: a damaged
        // address may point at a copy of the same bytes (zeros), but never builds others.
        let mut caught = 0;
        for back in 1..=64 {
            let mut damaged = delta.clone();
            let at = damaged.len() - back;
            damaged[at] ^= 0x40;
            let mut rebuilt = Vec::new();
            match decode::decode(
                &base,
                &mut &damaged[..],
                Some(&mut rebuilt),
                u64::MAX,
                &|| false,
            ) {
                Err(_) => caught += 1,
                Ok(_) => assert!(rebuilt == expected, "damage at {at} built other bytes"),
            }
        }
        assert!(caught > 32, "{caught} of 64 damaged bytes caught");
        let cut = &delta[..delta.len() / 2];
        assert!(decode::decode(&base, &mut &cut[..], None, u64::MAX, &|| false).is_err());
        assert!(decode::decode(&target, &mut &delta[..], None, u64::MAX, &|| false).is_err());
    }

    /// A base and a target whose differences are small: records that repeat a structure
    /// (copies from the window itself) and one byte changed every 40 (short copies of the
    /// nearby base), both shorter than what the sparse index finds.
    pub(super) fn short_pair(dir: &std::path::Path) -> (File, File, Vec<u8>) {
        let mut noise = noise_from(0x0bad_cafe_dead_beefu64);
        let base = noise(300_000);
        let mut target = base[..100_000].to_vec();
        for i in 0..300u32 {
            target.extend_from_slice(b"record-header-fields");
            target.extend_from_slice(&i.to_le_bytes());
            target.extend_from_slice(&noise(12));
        }
        let mut edited = base[100_000..110_000].to_vec();
        for byte in edited.iter_mut().step_by(40) {
            *byte ^= 0x5a;
        }
        target.extend_from_slice(&edited);
        target.extend_from_slice(&base[110_000..]);
        write_pair(dir, &base, target)
    }

    #[test]
    fn short_matches_copy_from_the_window_and_the_nearby_base() {
        let dir = tempfile::tempdir().unwrap();
        let (base, target, expected) = short_pair(dir.path());
        let mut delta = Vec::new();
        encode::encode(&base, &target, &mut delta, u64::MAX, &|| false).unwrap();
        assert_rebuilds(&base, &delta, &expected);
        // ADDed whole, the records (10800 bytes) and the edited 10000 would take over 20000
        // bytes; their noise (3600 bytes) and the 250 changed bytes are what must be sent.
        assert!(delta.len() < 9000, "{} bytes", delta.len());
    }

    #[test]
    fn adler32_matches_zlib() {
        assert_eq!(adler32(1, b""), 1);
        assert_eq!(adler32(1, b"Wikipedia"), 0x11E6_0398);
        let long = vec![0xffu8; 100_000];
        let split = adler32(adler32(1, &long[..7000]), &long[7000..]);
        assert_eq!(split, adler32(1, &long));
    }
}

//! The qcow2 header of a VM disk, checked before it is published as squashfs superblocks are:
//! LXD and Incus hand the disk to QEMU on every host that launches it, so a disk that names a
//! file on another machine (a backing file, an external data file), that needs a key
//! (encryption) or that QEMU cannot read is refused here, once, with the reason.
//!
//! Field offsets are those of QEMU's `docs/interop/qcow2.txt` (all big-endian).

/// How many leading bytes [`check`] wants: the header, its extensions and the backing file
/// name all live in the first cluster, and the check reads no further than this.
pub const HEADER_READ_LEN: usize = 64 << 10;

const MAGIC: &[u8] = &[b'Q', b'F', b'I', 0xfb];
/// QEMU's MIN_CLUSTER_BITS and MAX_CLUSTER_BITS: 512 B to 2 MiB clusters.
const CLUSTER_BITS: std::ops::RangeInclusive<u32> = 9..=21;
/// QEMU's QCOW_MAX_L1_SIZE: the largest active L1 table it opens, in bytes.
const MAX_L1_BYTES: u64 = 32 << 20;
/// The largest virtual disk accepted: far beyond any image, well inside what QEMU handles.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Incompatible feature bits QEMU knows: dirty, corrupt, external data file, compression
/// type, extended L2 entries.
const KNOWN_INCOMPATIBLE: u64 = 0b1_1111;
const INCOMPATIBLE_CORRUPT: u64 = 1 << 1;
const INCOMPATIBLE_DATA_FILE: u64 = 1 << 2;
const INCOMPATIBLE_EXTENDED_L2: u64 = 1 << 4;
/// `qemu-img convert` writes a standalone, unencrypted copy: what those refusals suggest.
const CONVERT_HINT: &str =
    "publish the standalone, unencrypted copy `qemu-img convert -O qcow2 <disk> <new disk>` writes";

/// What the header says, for the caller's messages and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub virtual_size: u64,
    pub cluster_bits: u32,
}

fn be_u32(head: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&head[at..at + 4]);
    u32::from_be_bytes(bytes)
}

fn be_u64(head: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&head[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// Checks a qcow2 header. `head` is the file's first bytes (up to [`HEADER_READ_LEN`]) and
/// `file_size` its whole size. The error is a sentence about the disk, to be prefixed with
/// the file's name by the caller.
pub fn check(head: &[u8], file_size: u64) -> Result<Qcow2Header, String> {
    if !head.starts_with(MAGIC) {
        return Err("is not a qcow2 disk".into());
    }
    let truncated = |needed: usize| {
        format!("is truncated: its qcow2 header needs {needed} bytes, the file has {file_size}")
    };
    if head.len() < 8 {
        return Err(truncated(72));
    }
    let version = be_u32(head, 4);
    if version != 2 && version != 3 {
        return Err(format!(
            "is qcow2 version {version}; QEMU reads only versions 2 and 3 (its header may be damaged)"
        ));
    }
    let fixed_len = if version == 2 { 72 } else { 104 };
    if head.len() < fixed_len {
        return Err(truncated(fixed_len));
    }
    let backing_file_offset = be_u64(head, 8);
    let backing_file_size = be_u32(head, 16) as usize;
    let cluster_bits = be_u32(head, 20);
    let virtual_size = be_u64(head, 24);
    let crypt_method = be_u32(head, 32);
    let l1_size = u64::from(be_u32(head, 36));
    let l1_table_offset = be_u64(head, 40);
    let (incompatible, header_length) = if version == 3 {
        (be_u64(head, 72), be_u32(head, 100))
    } else {
        (0, 72)
    };

    if !CLUSTER_BITS.contains(&cluster_bits) {
        return Err(format!(
            "has a damaged qcow2 header: cluster_bits is {cluster_bits}, QEMU accepts {} to {}",
            CLUSTER_BITS.start(),
            CLUSTER_BITS.end()
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    if u64::from(header_length) < fixed_len as u64 || u64::from(header_length) > cluster_size {
        return Err(format!(
            "has a damaged qcow2 header: its length is {header_length} bytes, expected {fixed_len} to {cluster_size}"
        ));
    }
    if u64::from(header_length) > file_size {
        return Err(truncated(header_length as usize));
    }

    // What makes the disk depend on something outside it, or unreadable without a key.
    if backing_file_offset != 0 {
        let name = usize::try_from(backing_file_offset)
            .ok()
            .and_then(|start| head.get(start..start.checked_add(backing_file_size)?))
            .map(|bytes| format!(" {:?}", String::from_utf8_lossy(bytes)))
            .unwrap_or_default();
        return Err(format!(
            "depends on a backing file{name} that hosts do not have; {CONVERT_HINT}"
        ));
    }
    if incompatible & INCOMPATIBLE_DATA_FILE != 0 {
        return Err(format!(
            "keeps its data in an external data file that hosts do not have; {CONVERT_HINT}"
        ));
    }
    if crypt_method != 0 {
        let method = match crypt_method {
            1 => "AES",
            2 => "LUKS",
            _ => "an unknown method",
        };
        return Err(format!(
            "is encrypted ({method}); hosts cannot start a VM from a disk they have no key for; {CONVERT_HINT}"
        ));
    }
    let unknown = incompatible & !KNOWN_INCOMPATIBLE;
    if unknown != 0 {
        return Err(format!(
            "uses qcow2 features QEMU does not know (incompatible feature bits {unknown:#x}); it cannot be opened"
        ));
    }
    if incompatible & INCOMPATIBLE_CORRUPT != 0 {
        return Err(
            "is marked corrupt in its qcow2 header; repair it with `qemu-img check -r all` first"
                .into(),
        );
    }

    // The disk itself: a sane size, and an L1 table inside the file that covers it.
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
        return Err(format!(
            "has a damaged qcow2 header: its virtual size is {virtual_size} bytes, expected 1 byte to {} TiB",
            MAX_VIRTUAL_SIZE >> 40
        ));
    }
    let l2_entry_bytes = if incompatible & INCOMPATIBLE_EXTENDED_L2 != 0 {
        16
    } else {
        8
    };
    let bytes_per_l1_entry = cluster_size * (cluster_size / l2_entry_bytes);
    let l1_needed = virtual_size.div_ceil(bytes_per_l1_entry);
    let l1_bytes = l1_size * 8;
    if l1_size < l1_needed || l1_bytes > MAX_L1_BYTES {
        return Err(format!(
            "has a damaged qcow2 header: its L1 table has {l1_size} entries, a {virtual_size}-byte disk needs {l1_needed}"
        ));
    }
    let l1_end = l1_table_offset.checked_add(l1_bytes);
    if !l1_table_offset.is_multiple_of(cluster_size)
        || l1_table_offset == 0
        || l1_end.is_none_or(|end| end > file_size)
    {
        return Err(format!(
            "is truncated or damaged: its L1 table ({l1_bytes} bytes at offset {l1_table_offset}) is not inside the file ({file_size} bytes)"
        ));
    }
    Ok(Qcow2Header {
        version,
        virtual_size,
        cluster_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header `qemu-img create -f qcow2 x 1G` writes, up to the end of the fixed part.
    fn header(version: u32) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    const FILE_SIZE: u64 = 0x30010;

    #[test]
    fn a_plain_disk_passes() {
        for version in [2, 3] {
            let found = check(&header(version), FILE_SIZE).unwrap();
            assert_eq!(found.virtual_size, 1 << 30);
            assert_eq!(found.version, version);
        }
    }

    #[test]
    fn each_problem_has_its_own_sentence() {
        let set = |at: usize, bytes: &[u8]| {
            let mut h = header(3);
            h[at..at + bytes.len()].copy_from_slice(bytes);
            check(&h, FILE_SIZE).unwrap_err()
        };
        assert!(set(4, &4u32.to_be_bytes()).contains("version 4"));
        assert!(set(20, &30u32.to_be_bytes()).contains("cluster_bits is 30"));
        assert!(set(100, &8u32.to_be_bytes()).contains("its length is 8 bytes"));
        assert!(set(24, &0u64.to_be_bytes()).contains("virtual size is 0"));
        assert!(set(24, &(1u64 << 60).to_be_bytes()).contains("virtual size"));
        assert!(set(36, &1u32.to_be_bytes()).contains("L1 table has 1 entries"));
        assert!(set(40, &0x40000u64.to_be_bytes()).contains("not inside the file"));
        assert!(set(40, &0x30001u64.to_be_bytes()).contains("not inside the file"));
        assert!(set(32, &2u32.to_be_bytes()).contains("encrypted (LUKS)"));
        assert!(set(72, &4u64.to_be_bytes()).contains("external data file"));
        assert!(set(72, &2u64.to_be_bytes()).contains("marked corrupt"));
        assert!(set(72, &(1u64 << 40).to_be_bytes()).contains("bits 0x10000000000"));
        let mut backed = header(3);
        backed.resize(0x300, 0);
        backed[8..16].copy_from_slice(&0x210u64.to_be_bytes());
        backed[16..20].copy_from_slice(&8u32.to_be_bytes());
        backed[0x210..0x218].copy_from_slice(b"/host/me");
        assert!(
            check(&backed, FILE_SIZE)
                .unwrap_err()
                .contains("backing file \"/host/me\" that hosts")
        );
        assert!(
            check(&header(3)[..100], 100)
                .unwrap_err()
                .contains("is truncated")
        );
        assert!(
            check(&header(3)[..6], 6)
                .unwrap_err()
                .contains("is truncated")
        );
    }
}

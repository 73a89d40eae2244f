//! A root file's header, read to tell a whole, usable root from a damaged or misplaced one:
//! a squashfs superblock, and the first block of an xz-compressed tarball.

use std::io::Read;

/// Checks a squashfs superblock (`head` is the file's first bytes, `size` its length): a
/// version 4.0 image whose recorded length fits in the file.
pub fn check_squashfs(head: &[u8], size: u64) -> Result<(), String> {
    // Superblock: bytes_used (u64 LE) at offset 40, major version (u16 LE) at 28.
    let major = head.get(28..30).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let used = head
        .get(40..48)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    if major != Some(4) {
        return Err("is not a squashfs 4.0 image (its superblock is damaged)".into());
    }
    if let Some(used) = used
        && used > size
    {
        return Err(format!(
            "is truncated: its superblock says {used} bytes, the file has {size}"
        ));
    }
    Ok(())
}

/// Checks that the xz stream `file` holds a tarball, and not a metadata tarball.
pub fn check_tar_xz(file: impl Read) -> Result<(), String> {
    let mut first = Vec::with_capacity(512);
    let decoded = liblzma::read::XzDecoder::new(file)
        .take(512)
        .read_to_end(&mut first);
    if decoded.is_err() || first.get(257..262) != Some(b"ustar") {
        return Err("is an xz stream but not an xz-compressed tarball".into());
    }
    if first.starts_with(b"metadata.yaml\0") || first.starts_with(b"./metadata.yaml\0") {
        return Err(
            "is a metadata tarball, not a root; pass the metadata tarball first, then the root"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squashfs_superblocks_must_be_version_4_and_fit_the_file() {
        let mut head = vec![0u8; 96];
        head[28] = 4;
        head[40..48].copy_from_slice(&1000u64.to_le_bytes());
        assert!(check_squashfs(&head, 1000).is_ok());
        assert!(
            check_squashfs(&head, 999)
                .unwrap_err()
                .contains("truncated")
        );
        head[28] = 3;
        assert!(check_squashfs(&head, 1000).unwrap_err().contains("4.0"));
    }

    #[test]
    fn an_xz_stream_must_hold_a_root_tarball() {
        let xz = |data: &[u8]| {
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(data, 1)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let tar = |name: &str| {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            builder.append_data(&mut header, name, &b"x"[..]).unwrap();
            builder.into_inner().unwrap()
        };
        assert!(check_tar_xz(&xz(&tar("rootfs/x"))[..]).is_ok());
        assert!(check_tar_xz(&xz(b"not a tarball")[..]).is_err());
        assert!(
            check_tar_xz(&xz(&tar("metadata.yaml"))[..])
                .unwrap_err()
                .contains("metadata tarball")
        );
    }
}

//! File type detection by magic bytes. Names lie (`lxc image export` names files after their
//! fingerprint), so every decision about what a file is comes from its first bytes.

use std::io::Read;

/// How a tarball is compressed, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Xz,
    Gzip,
    Bzip2,
    Zstd,
    /// An uncompressed tar.
    None,
}

impl Compression {
    /// Detects a compression format, or a plain tar (`ustar` at offset 257).
    pub fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(XZ_MAGIC) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(b"BZh") {
            Some(Compression::Bzip2)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if is_plain_tar(head) {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// The file extension used when the catalog names a file of this compression.
    pub fn tar_extension(self) -> &'static str {
        match self {
            Compression::Xz => "tar.xz",
            Compression::Gzip => "tar.gz",
            Compression::Bzip2 => "tar.bz2",
            Compression::Zstd => "tar.zst",
            Compression::None => "tar",
        }
    }

    /// Wraps `reader` in the matching decompressor.
    pub fn decoder<'a, R: Read + 'a>(self, reader: R) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
            Compression::None => Box::new(reader),
        })
    }
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const SQUASHFS_MAGIC: &[u8] = b"hsqs";
const QCOW2_MAGIC: &[u8] = &[b'Q', b'F', b'I', 0xfb];

/// How many leading bytes [`RootKind::detect`] and [`Compression::detect`] want to see.
pub const SNIFF_LEN: usize = 512;

fn is_plain_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar")
}

/// The root filesystem formats a simplestreams version can carry next to its metadata.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum RootKind {
    /// A squashfs container root (ftype `squashfs`).
    #[serde(rename = "squashfs")]
    Squashfs,
    /// An xz-compressed tarball container root (ftype `root.tar.xz`).
    #[serde(rename = "root.tar.xz")]
    TarXz,
    /// A qcow2 virtual-machine disk (ftype `disk-kvm.img`).
    #[serde(rename = "disk-kvm.img")]
    Qcow2,
}

impl RootKind {
    /// Detects a root from its first bytes; `None` when it is none of the three.
    pub fn detect(head: &[u8]) -> Option<RootKind> {
        if head.starts_with(SQUASHFS_MAGIC) {
            Some(RootKind::Squashfs)
        } else if head.starts_with(QCOW2_MAGIC) {
            Some(RootKind::Qcow2)
        } else if head.starts_with(XZ_MAGIC) {
            Some(RootKind::TarXz)
        } else {
            None
        }
    }

    /// The simplestreams `ftype` of the root item.
    pub fn ftype(self) -> &'static str {
        match self {
            RootKind::Squashfs => "squashfs",
            RootKind::TarXz => "root.tar.xz",
            RootKind::Qcow2 => "disk-kvm.img",
        }
    }

    /// The name the file gets inside a version directory.
    pub fn file_name(self) -> &'static str {
        match self {
            RootKind::Squashfs => "root.squashfs",
            RootKind::TarXz => "root.tar.xz",
            RootKind::Qcow2 => "disk.qcow2",
        }
    }

    pub fn image_type(self) -> ImageType {
        match self {
            RootKind::Qcow2 => ImageType::VirtualMachine,
            RootKind::Squashfs | RootKind::TarXz => ImageType::Container,
        }
    }
}

/// What LXD and Incus call an image's type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ImageType {
    Container,
    VirtualMachine,
}

impl ImageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Container => "container",
            ImageType::VirtualMachine => "virtual-machine",
        }
    }
}

impl std::fmt::Display for ImageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human name for what the first bytes look like, used in error messages.
pub fn describe(head: &[u8]) -> &'static str {
    if head.is_empty() {
        return "an empty file";
    }
    if let Some(root) = RootKind::detect(head) {
        return match root {
            RootKind::Squashfs => "a squashfs image",
            RootKind::Qcow2 => "a qcow2 disk",
            RootKind::TarXz => "an xz stream",
        };
    }
    match Compression::detect(head) {
        Some(Compression::Gzip) => "a gzip stream",
        Some(Compression::Bzip2) => "a bzip2 stream",
        Some(Compression::Zstd) => "a zstd stream",
        Some(Compression::None) => "a plain tar",
        Some(Compression::Xz) => "an xz stream",
        None if head.starts_with(b"\x7fELF") => "an ELF binary",
        None if head.iter().all(|b| *b == 0) => "nothing but zero bytes at its start (a raw disk?)",
        None if head
            .iter()
            .take(64)
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            "a text file"
        }
        None => "data of an unknown format",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_roots_by_magic_not_name() {
        assert_eq!(RootKind::detect(b"hsqs\x01\x00"), Some(RootKind::Squashfs));
        assert_eq!(
            RootKind::detect(b"QFI\xfb\x00\x00\x00\x03"),
            Some(RootKind::Qcow2)
        );
        assert_eq!(RootKind::detect(XZ_MAGIC), Some(RootKind::TarXz));
        assert_eq!(RootKind::detect(&[0u8; 512]), None);
        assert_eq!(RootKind::detect(b""), None);
    }

    #[test]
    fn detects_compressions_and_plain_tar() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(Compression::detect(&tar), Some(Compression::None));
        assert_eq!(Compression::detect(b"hello"), None);
    }

    #[test]
    fn describes_unknown_input() {
        assert_eq!(describe(b""), "an empty file");
        assert_eq!(describe(b"just some words"), "a text file");
        assert_eq!(describe(b"\x7fELF\x02"), "an ELF binary");
    }
}

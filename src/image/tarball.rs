//! Walks a (compressed) image tarball once: finds `metadata.yaml`, tells a metadata-only tarball
//! from a unified one, and refuses entries that would escape the directory LXD unpacks into.

use std::cell::Cell;
use std::io::Read;
use std::path::{Component, Path};
use std::rc::Rc;

use super::qcow2;
use super::sniff::{Compression, RootKind};

/// What a tarball holds besides `metadata.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Metadata and templates only: the first half of a split image.
    MetadataOnly,
    /// A unified container image: `rootfs/`.
    UnifiedContainer,
    /// A unified virtual-machine image: `rootfs.img` (qcow2).
    UnifiedVm,
}

/// The result of walking a tarball.
#[derive(Debug)]
pub struct TarballScan {
    pub metadata_yaml: Vec<u8>,
    pub layout: Layout,
}

/// Bounds that keep a hostile tarball from costing unbounded time or memory.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Decompressed bytes read before `metadata.yaml` must have been found.
    pub metadata_search_bytes: u64,
    /// Largest accepted `metadata.yaml`.
    pub metadata_yaml_bytes: u64,
    /// Decompressed bytes of everything but the root filesystem (`rootfs/`, `rootfs.img`):
    /// metadata, templates, their tar headers and whatever follows the archive's end. LXD
    /// unpacks all of it on every host, so a bomb is refused here instead.
    pub unpacked_bytes: u64,
    /// Entries besides the root filesystem's.
    pub entries: u64,
}

/// The settings that hold [`ScanLimits::unpacked_bytes`] and [`ScanLimits::entries`], named
/// in refusals.
pub const UNPACKED_BYTES_SETTING: &str = "catalog.max_metadata_unpacked_bytes";
pub const ENTRIES_SETTING: &str = "catalog.max_metadata_entries";

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            metadata_search_bytes: 256 << 20,
            metadata_yaml_bytes: 1 << 20,
            unpacked_bytes: 64 << 20,
            entries: 10_000,
        }
    }
}

/// Decompressed bytes read so far, against what may be read: the limit plus every byte that
/// belongs to the root filesystem (credited when its entry is seen, before its data is read).
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    read: u64,
    allowed: u64,
    exceeded: bool,
}

/// Reads no further than the budget allows, however well the input compresses.
struct BudgetReader<R> {
    inner: R,
    budget: Rc<Cell<Budget>>,
}

impl<R: Read> Read for BudgetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut budget = self.budget.get();
        let remaining = budget.allowed.saturating_sub(budget.read);
        if remaining == 0 {
            // At the limit: only the end of the input is still welcome.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            budget.exceeded = true;
            self.budget.set(budget);
            return Err(std::io::Error::other("the unpacked size limit is reached"));
        }
        let wanted = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..wanted])?;
        budget.read += n as u64;
        self.budget.set(budget);
        Ok(n)
    }
}

/// The end of an entry's data, padded to tar's 512-byte blocks.
fn padded_end(start: u64, size: u64) -> u64 {
    start.saturating_add(size.div_ceil(512).saturating_mul(512))
}

/// Walks every entry of a tarball read from `reader`. The error is a sentence about the
/// content, to be prefixed with the file's name by the caller.
pub fn scan<R: Read>(
    reader: R,
    compression: Compression,
    limits: ScanLimits,
) -> Result<TarballScan, String> {
    let decoder = compression
        .decoder(reader)
        .map_err(|e| format!("cannot be decompressed ({e})"))?;
    let budget = Rc::new(Cell::new(Budget {
        allowed: limits.unpacked_bytes,
        ..Budget::default()
    }));
    let too_large = || {
        format!(
            "unpacks to more than {} bytes besides its root filesystem (metadata, templates); \
             the limit is {UNPACKED_BYTES_SETTING}",
            limits.unpacked_bytes
        )
    };
    // A read that stopped at the budget is the size limit, not a corrupt input.
    let stream_error = |e: &std::io::Error| {
        if budget.get().exceeded {
            too_large()
        } else {
            read_error(e)
        }
    };
    let mut archive = tar::Archive::new(BudgetReader {
        inner: decoder,
        budget: budget.clone(),
    });
    let mut metadata_yaml: Option<Vec<u8>> = None;
    let mut has_rootfs_dir = false;
    let mut has_rootfs_img = false;
    let mut entries_seen = 0u64;
    let mut other_entries = 0u64;
    // The end of the previous entry's data, and the bytes credited to the root filesystem.
    let mut previous_end = 0u64;
    let mut root_bytes = 0u64;

    let entries = archive.entries().map_err(|e| stream_error(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(&e))?;
        entries_seen += 1;
        let raw_path = entry
            .path()
            .map_err(|e| format!("has an entry with an unreadable name ({e})"))?
            .into_owned();
        let path = check_entry_path(&raw_path)?;
        let kind = entry.header().entry_type();
        let in_rootfs = path == "rootfs" || path.starts_with("rootfs/");

        // Checked before the entry's data is read or skipped, so a bomb never inflates.
        let data_end = padded_end(entry.raw_file_position(), entry.size());
        if in_rootfs || path == "rootfs.img" {
            // This entry's headers and data, from where the previous entry ended.
            let credit = data_end.saturating_sub(previous_end);
            root_bytes = root_bytes.saturating_add(credit);
            let mut current = budget.get();
            current.allowed = current.allowed.saturating_add(credit);
            budget.set(current);
        } else {
            other_entries += 1;
            if other_entries > limits.entries {
                return Err(format!(
                    "has more than {} entries besides its root filesystem; the limit is {ENTRIES_SETTING}",
                    limits.entries
                ));
            }
            if data_end.saturating_sub(root_bytes) > limits.unpacked_bytes {
                return Err(too_large());
            }
        }
        previous_end = data_end;

        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| format!("has a hard link with an unreadable target ({e})"))?
                .ok_or_else(|| format!("has a hard link {path:?} without a target"))?;
            check_entry_path(&target).map_err(|_| {
                format!(
                    "has a hard link {path:?} to {:?} outside the archive",
                    target.display()
                )
            })?;
        } else if kind.is_symlink() && !in_rootfs {
            return Err(format!("has a symbolic link {path:?} outside rootfs/"));
        } else if !(in_rootfs || kind.is_file() || kind.is_dir() || kind.is_pax_global_extensions())
        {
            return Err(format!("has a special file {path:?} outside rootfs/"));
        }

        if path == "metadata.yaml" {
            if !kind.is_file() {
                return Err("has a metadata.yaml that is not a regular file".into());
            }
            if metadata_yaml.is_some() {
                return Err("has two metadata.yaml entries".into());
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > limits.metadata_yaml_bytes {
                return Err(format!(
                    "has a metadata.yaml of {size} bytes; the limit is {} bytes",
                    limits.metadata_yaml_bytes
                ));
            }
            let mut yaml = Vec::with_capacity(size as usize);
            entry
                .by_ref()
                .take(limits.metadata_yaml_bytes)
                .read_to_end(&mut yaml)
                .map_err(|e| stream_error(&e))?;
            metadata_yaml = Some(yaml);
        } else if in_rootfs {
            has_rootfs_dir = true;
        } else if path == "rootfs.img" {
            if !kind.is_file() {
                return Err("has a rootfs.img that is not a regular file".into());
            }
            let mut head = Vec::with_capacity(qcow2::HEADER_READ_LEN);
            entry
                .by_ref()
                .take(qcow2::HEADER_READ_LEN as u64)
                .read_to_end(&mut head)
                .map_err(|e| stream_error(&e))?;
            if RootKind::detect(&head) != Some(RootKind::Qcow2) {
                return Err(format!(
                    "has a rootfs.img that is {}, not a qcow2 disk (LXD and Incus run only qcow2 VM disks)",
                    super::sniff::describe(&head)
                ));
            }
            let size = entry.header().size().unwrap_or(0);
            qcow2::check(&head, size)
                .map_err(|problem| format!("has a rootfs.img that {problem}"))?;
            has_rootfs_img = true;
        }

        // Checked before the entry's data is skipped, so a bomb is refused before it inflates.
        let entry_end = entry.raw_header_position() + entry.header().size().unwrap_or(u64::MAX);
        if metadata_yaml.is_none() && entry_end > limits.metadata_search_bytes {
            return Err(format!(
                "has no metadata.yaml in its first {} MiB",
                limits.metadata_search_bytes >> 20
            ));
        }
    }

    if entries_seen == 0 {
        return Err("is an empty archive".into());
    }
    let metadata_yaml = metadata_yaml.ok_or_else(|| "has no metadata.yaml".to_string())?;
    let layout = match (has_rootfs_dir, has_rootfs_img) {
        (false, false) => Layout::MetadataOnly,
        (true, false) => Layout::UnifiedContainer,
        (false, true) => Layout::UnifiedVm,
        (true, true) => {
            return Err(
                "has both rootfs/ and rootfs.img; a unified image holds one of them".into(),
            );
        }
    };
    // Read to the real end so that trailing garbage or truncation is noticed (within the
    // budget: what follows the archive is not root filesystem either).
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| stream_error(&e))?;
    Ok(TarballScan {
        metadata_yaml,
        layout,
    })
}

/// Normalises an entry path (`./a/b` → `a/b`) and refuses absolute paths and `..`.
fn check_entry_path(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| {
                    format!("has an entry name that is not UTF-8: {:?}", path.display())
                })?;
                parts.push(part);
            }
            Component::ParentDir => {
                return Err(format!(
                    "has an entry {:?} that climbs out with '..'",
                    path.display()
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "has an entry with an absolute path {:?}",
                    path.display()
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

/// The tar crate's messages can quote raw header bytes: keep them on one line.
fn read_error(e: &std::io::Error) -> String {
    format!(
        "is truncated or corrupt ({})",
        crate::fsutil::one_line(&e.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn raw_tar_entry(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        // Built by hand: tar::Builder refuses the very names a hostile tarball carries.
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_size(0);
        header.set_mode(0o777);
        header.set_entry_type(kind);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn finds_metadata_and_layout() {
        let meta = tar_with(&[("metadata.yaml", b"a: 1"), ("templates/hostname.tpl", b"x")]);
        let found = scan(&meta[..], Compression::None, ScanLimits::default()).unwrap();
        assert_eq!(found.layout, Layout::MetadataOnly);
        assert_eq!(found.metadata_yaml, b"a: 1");

        let unified = tar_with(&[("./metadata.yaml", b"a: 1"), ("rootfs/etc/hostname", b"x")]);
        assert_eq!(
            scan(&unified[..], Compression::None, ScanLimits::default())
                .unwrap()
                .layout,
            Layout::UnifiedContainer
        );
    }

    #[test]
    fn refuses_escaping_entries() {
        for (name, kind, link, expected) in [
            ("../evil", tar::EntryType::Regular, None, "climbs out"),
            (
                "/etc/passwd",
                tar::EntryType::Regular,
                None,
                "absolute path",
            ),
            (
                "templates/x",
                tar::EntryType::Symlink,
                Some("/etc/shadow"),
                "symbolic link",
            ),
            (
                "rootfs/x",
                tar::EntryType::Link,
                Some("../../etc/shadow"),
                "outside the archive",
            ),
        ] {
            let data = raw_tar_entry(name, kind, link);
            let err = scan(&data[..], Compression::None, ScanLimits::default()).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn refuses_missing_metadata_and_raw_vm_disks() {
        let no_meta = tar_with(&[("rootfs/etc/hostname", b"x")]);
        assert_eq!(
            scan(&no_meta[..], Compression::None, ScanLimits::default()).unwrap_err(),
            "has no metadata.yaml"
        );
        let raw_vm = tar_with(&[("metadata.yaml", b"a: 1"), ("rootfs.img", &[0u8; 1024])]);
        let err = scan(&raw_vm[..], Compression::None, ScanLimits::default()).unwrap_err();
        assert!(err.contains("not a qcow2 disk"), "{err}");
    }

    #[test]
    fn bounds_the_search_for_metadata() {
        let big = vec![0u8; 64 << 10];
        let data = tar_with(&[
            ("rootfs/big", &big),
            ("rootfs/big2", &big),
            ("metadata.yaml", b"a: 1"),
        ]);
        let limits = ScanLimits {
            metadata_search_bytes: 32 << 10,
            ..ScanLimits::default()
        };
        assert!(
            scan(&data[..], Compression::None, limits)
                .unwrap_err()
                .contains("no metadata.yaml in its first")
        );
    }

    #[test]
    fn bounds_what_unpacks_besides_the_root_filesystem() {
        let limits = ScanLimits {
            unpacked_bytes: 64 << 10,
            entries: 3,
            ..ScanLimits::default()
        };
        let big = vec![0u8; 128 << 10];
        let refused = |data: &[u8]| scan(data, Compression::None, limits).unwrap_err();

        let template = tar_with(&[("metadata.yaml", b"a: 1"), ("templates/big.tpl", &big)]);
        let err = refused(&template);
        assert!(err.starts_with("unpacks to more than 65536 bytes"), "{err}");
        assert!(err.contains(UNPACKED_BYTES_SETTING), "{err}");

        let mut trailing = tar_with(&[("metadata.yaml", b"a: 1")]);
        trailing.extend_from_slice(&big);
        assert!(refused(&trailing).starts_with("unpacks to more than"));

        let many: Vec<(String, &[u8])> = (0..4)
            .map(|i| (format!("templates/{i}"), &b""[..]))
            .collect();
        let mut entries: Vec<(&str, &[u8])> = vec![("metadata.yaml", b"a: 1")];
        entries.extend(many.iter().map(|(name, data)| (name.as_str(), *data)));
        let err = refused(&tar_with(&entries));
        assert!(
            err.contains("more than 3 entries") && err.contains(ENTRIES_SETTING),
            "{err}"
        );

        // The root filesystem itself is not bounded here.
        let unified = tar_with(&[
            ("metadata.yaml", b"a: 1"),
            ("rootfs/a", &big),
            ("rootfs/b", &big),
            ("templates/x.tpl", b"x"),
        ]);
        assert_eq!(
            scan(&unified[..], Compression::None, limits)
                .unwrap()
                .layout,
            Layout::UnifiedContainer
        );
    }

    /// Found by the metadata_tarball fuzz target: a header whose checksum field holds raw
    /// bytes, which the tar crate quotes in its error message.
    #[test]
    fn garbage_in_a_header_gives_a_one_line_error() {
        let data = include_bytes!("testdata/fuzz-tar-header-garbage.tar.gz");
        let err = scan(&data[..], Compression::Gzip, ScanLimits::default()).unwrap_err();
        assert!(err.starts_with("is truncated or corrupt ("), "{err}");
        assert!(!err.chars().any(char::is_control), "{err:?}");
    }

    #[test]
    fn truncation_is_reported() {
        let data = tar_with(&[("metadata.yaml", b"a: 1")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        let err = scan(
            &gz[..gz.len() / 2],
            Compression::Gzip,
            ScanLimits::default(),
        )
        .unwrap_err();
        assert!(err.contains("truncated or corrupt"), "{err}");
    }
}

//! Staging an import, with no lock held: open each source once, sniff it by its magic bytes,
//! validate it, and hash it exactly once while copying it into `tmp/` (or hard-linking it
//! there for a move, or cloning it on a copy-on-write filesystem). The root's sha256 and the
//! combined fingerprint come from the same read. The result, a [`StagedImage`], is what
//! publishing ([`super::import`]) checks against the record and places under the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::hashing::{self, HashingReader, Progress, StreamDigest};
use super::import::{ImportSource, KnownDigest, Transfer};
use super::{Catalog, Result};
use crate::direct_file::DirectFile;
use crate::format::human_size;
use crate::fsutil::{self, FileIdentity};
use crate::image::{
    self, Compression, ImageError, ImageMetadata, ImageType, Layout, RootKind, sniff,
};
use crate::sha256::Sha256State;

/// A file in `tmp/` on its way into `www/`; deleted on drop unless it was placed.
pub(crate) struct StagedFile {
    path: PathBuf,
}

impl StagedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // After a successful placement the file is gone from here: NotFound is expected.
        let _ = fs::remove_file(&self.path);
    }
}

fn stage_new(tmp: &Path) -> Result<(StagedFile, File)> {
    let path = fsutil::temp_path(tmp, "stage");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| fsutil::with_path(e, "cannot create", &path))?;
    Ok((StagedFile { path }, file))
}

/// Hard-links the open `source` into `tmp/`: the file that was opened and read, not whatever
/// its path names by now. `None` when linking is impossible (another filesystem, a
/// filesystem without links): the caller copies from `source` instead.
fn stage_link(tmp: &Path, source: &File) -> Result<Option<StagedFile>> {
    let path = fsutil::temp_path(tmp, "stage");
    Ok(fsutil::link_open_file(source, &path)?.then_some(StagedFile { path }))
}

/// A source file, opened once: everything the import reads, hashes or links comes from this
/// open file, so renaming another file over its path meanwhile changes nothing.
pub(super) struct OpenedSource {
    file: File,
    path: PathBuf,
    label: String,
    identity: FileIdentity,
    /// The upload-time digests, kept only when they name this very file.
    known: Option<KnownDigest>,
}

impl OpenedSource {
    fn open(path: PathBuf, label: String, known: Option<KnownDigest>) -> Result<OpenedSource> {
        let file = File::open(&path).map_err(|e| fsutil::with_path(e, "cannot open", &path))?;
        let identity =
            FileIdentity::of_file(&file).map_err(|e| fsutil::with_path(e, "cannot stat", &path))?;
        let known =
            known.filter(|known| known.identity == identity && known.size == identity.size());
        Ok(OpenedSource {
            file,
            path,
            label,
            identity,
            known,
        })
    }

    /// After a move: deletes the source path if it still names the file that was imported.
    pub(super) fn remove_moved(&self) {
        if !FileIdentity::of_path(&self.path).is_some_and(|now| now.same_inode(&self.identity)) {
            tracing::info!(path = %self.path.display(), "imported, but the source path now names another file; left in place");
            return;
        }
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "imported, but cannot remove the source");
        }
    }
}

/// An import's input once opened.
pub(super) enum Input {
    File(Box<OpenedSource>),
    Stream {
        label: String,
        reader: Box<dyn Read + Send>,
    },
}

impl Input {
    pub(super) fn open(source: ImportSource) -> Result<Input> {
        Ok(match source {
            ImportSource::File { path, label, known } => {
                Input::File(Box::new(OpenedSource::open(path, label, known)?))
            }
            ImportSource::Stream { label, reader } => Input::Stream { label, reader },
        })
    }
}

/// A failed copy into the catalog, naming the source as the user gave it.
fn copy_error(e: io::Error, label: &str) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot copy {} into the data directory: {}",
            fsutil::printable_name(label),
            fsutil::plain_message(&e)
        ),
    )
}

fn sync_staged(staged: &StagedFile) -> Result<()> {
    File::open(&staged.path)
        .and_then(|f| f.sync_all())
        .map_err(|e| fsutil::with_path(e, "cannot sync", &staged.path).into())
}

/// A file read and validated, ready to be placed.
pub(super) struct StagedPart {
    pub staged: StagedFile,
    pub digest: StreamDigest,
    /// Name inside the version directory.
    pub file_name: String,
}

pub(super) enum StagedContent {
    Split {
        metadata: StagedPart,
        root: StagedPart,
        kind: RootKind,
        combined: String,
    },
    Unified {
        tarball: StagedPart,
        image_type: ImageType,
    },
}

pub(super) struct StagedImage {
    pub metadata: ImageMetadata,
    pub content: StagedContent,
}

impl StagedImage {
    pub(super) fn fingerprint(&self) -> &str {
        match &self.content {
            StagedContent::Split { combined, .. } => combined,
            StagedContent::Unified { tarball, .. } => &tarball.digest.sha256,
        }
    }

    pub(super) fn image_type(&self) -> ImageType {
        match &self.content {
            StagedContent::Split { kind, .. } => kind.image_type(),
            StagedContent::Unified { image_type, .. } => *image_type,
        }
    }

    pub(super) fn size(&self) -> u64 {
        match &self.content {
            StagedContent::Split { metadata, root, .. } => metadata.digest.size + root.digest.size,
            StagedContent::Unified { tarball, .. } => tarball.digest.size,
        }
    }
}

impl Catalog {
    pub(super) fn stage_split(
        &self,
        metadata: &OpenedSource,
        root: &OpenedSource,
        transfer: Transfer,
        now: i64,
        progress: &mut dyn Progress,
    ) -> Result<StagedImage> {
        let meta_label = metadata.label.as_str();
        let (root_path, root_label) = (&root.path, root.label.as_str());

        // The metadata tarball is small: read it whole, once, and hash it from memory.
        let meta_bytes = read_metadata_file(metadata, self.settings().max_metadata_bytes)?;
        let inspected = image::inspect_tarball(
            &meta_bytes,
            &meta_bytes[..],
            meta_label,
            self.settings().scan_limits,
            now,
        )
        .map_err(add_order_hint)?;
        match inspected.layout {
            Layout::MetadataOnly => {}
            Layout::UnifiedContainer | Layout::UnifiedVm => {
                return Err(ImageError::new(
                    meta_label,
                    "is a unified image (it holds its root filesystem); import it alone",
                )
                .into());
            }
        }
        let mut meta_hasher = Sha256State::new();
        meta_hasher.update(&meta_bytes);
        let meta_digest = StreamDigest {
            size: meta_bytes.len() as u64,
            sha256: meta_hasher.clone().finalize_hex(),
            combined: None,
        };
        let meta_staged = match transfer {
            Transfer::Move => stage_link(&self.dirs.tmp(), &metadata.file)?,
            Transfer::Copy => None,
        };
        let meta_staged = match meta_staged {
            Some(staged) => staged,
            None => {
                let (staged, mut file) = stage_new(&self.dirs.tmp())?;
                file.write_all(&meta_bytes)
                    .map_err(|e| copy_error(e, meta_label))?;
                staged
            }
        };
        sync_staged(&meta_staged)?;

        // The root: sniffed by its magic bytes, then hashed (and copied) in one read.
        let mut root_file = &root.file;
        let root_size = root.identity.size();
        let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
        (&mut root_file)
            .take(sniff::SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(|e| fsutil::with_path(e, "cannot read", root_path))?;
        let kind = check_root(&head, root_size, root_path, root_label)?;
        root_file
            .rewind()
            .map_err(|e| fsutil::with_path(e, "cannot read", root_path))?;

        let root_linked = match transfer {
            Transfer::Move => stage_link(&self.dirs.tmp(), &root.file)?,
            Transfer::Copy => None,
        };
        let known_combined = root.known.as_ref().and_then(|known| {
            let combined = known
                .combined
                .iter()
                .find(|(meta, _)| *meta == meta_digest.sha256)?;
            (known.size == root_size).then(|| (known.sha256.clone(), combined.1.clone()))
        });
        let (root_staged, root_digest, combined) = match (root_linked, known_combined) {
            (Some(staged), Some((sha256, combined))) => {
                // Hashed while it was uploaded: nothing to read.
                (
                    staged,
                    StreamDigest {
                        size: root_size,
                        sha256,
                        combined: None,
                    },
                    combined,
                )
            }
            (Some(staged), None) => {
                progress.start(root_label, Some(root_size));
                let digest =
                    hashing::digest_stream(&mut root_file, Some(meta_hasher), None, progress)
                        .map_err(|e| fsutil::with_path(e, "cannot read", root_path))?;
                progress.finish();
                let combined = digest.combined.clone().unwrap_or_default();
                (staged, digest, combined)
            }
            (None, _) => {
                let (staged, copy) = stage_new(&self.dirs.tmp())?;
                let cloned =
                    fsutil::try_reflink(root_file, &copy).map_err(|e| copy_error(e, root_label))?;
                let mut sink = if cloned {
                    None
                } else {
                    Some(
                        DirectFile::create(&staged.path, true)
                            .map_err(|e| fsutil::with_path(e, "cannot open", &staged.path))?,
                    )
                };
                progress.start(root_label, Some(root_size));
                let digest = hashing::digest_stream(
                    &mut root_file,
                    Some(meta_hasher),
                    sink.as_mut().map(|s| s as &mut (dyn Write + Send)),
                    progress,
                )
                .map_err(|e| copy_error(e, root_label))?;
                progress.finish();
                let combined = digest.combined.clone().unwrap_or_default();
                (staged, digest, combined)
            }
        };
        sync_staged(&root_staged)?;

        Ok(StagedImage {
            metadata: inspected.metadata,
            content: StagedContent::Split {
                metadata: StagedPart {
                    staged: meta_staged,
                    digest: meta_digest,
                    file_name: format!("metadata.{}", inspected.compression.tar_extension()),
                },
                root: StagedPart {
                    staged: root_staged,
                    digest: root_digest,
                    file_name: kind.file_name().to_string(),
                },
                kind,
                combined,
            },
        })
    }

    /// `moved` receives the source file, for its removal after a move.
    pub(super) fn stage_unified(
        &self,
        source: Input,
        transfer: Transfer,
        now: i64,
        progress: &mut dyn Progress,
        moved: &mut Vec<OpenedSource>,
    ) -> Result<StagedImage> {
        // `prestaged`: the source already linked (move) or cloned (copy on a CoW filesystem)
        // into tmp/, so the pass below only reads.
        let (label, mut reader, total, prestaged): (
            String,
            Box<dyn Read + Send>,
            Option<u64>,
            Option<StagedFile>,
        ) = match source {
            Input::File(source) => {
                let prestaged = match transfer {
                    Transfer::Move => stage_link(&self.dirs.tmp(), &source.file)?,
                    Transfer::Copy => {
                        let (staged, copy) = stage_new(&self.dirs.tmp())?;
                        let cloned = fsutil::try_reflink(&source.file, &copy)
                            .map_err(|e| copy_error(e, &source.label))?;
                        cloned.then_some(staged)
                    }
                };
                let file = source
                    .file
                    .try_clone()
                    .map_err(|e| fsutil::with_path(e, "cannot open", &source.path))?;
                let (label, size) = (source.label.clone(), source.identity.size());
                moved.push(*source);
                (label, Box::new(file), Some(size), prestaged)
            }
            Input::Stream { label, reader } => (label, reader, None, None),
        };

        let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
        (&mut reader)
            .take(sniff::SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(|e| {
                ImageError::new(
                    &label,
                    format!("cannot be read ({})", fsutil::plain_message(&e)),
                )
            })?;
        if let Some(kind) = RootKind::detect(&head)
            && kind != RootKind::TarXz
        {
            return Err(ImageError::new(
                &label,
                format!(
                    "is {}; pass the metadata tarball first, then the root",
                    sniff::describe(&head)
                ),
            )
            .into());
        }

        let (staged, mut copy) = match prestaged {
            Some(staged) => (staged, None),
            None => {
                let (staged, _) = stage_new(&self.dirs.tmp())?;
                let copy = DirectFile::create(&staged.path, true)
                    .map_err(|e| fsutil::with_path(e, "cannot open", &staged.path))?;
                (staged, Some(copy))
            }
        };
        progress.start(&label, total);
        let whole = io::Cursor::new(head.clone()).chain(reader);
        let mut hashing =
            HashingReader::new(whole, copy.as_mut().map(|w| w as &mut dyn Write), progress);
        let read = (|| -> Result<_> {
            let inspected = image::inspect_tarball(
                &head,
                &mut hashing,
                &label,
                self.settings().scan_limits,
                now,
            )
            .map_err(add_order_hint)?;
            let digest = hashing.finish().map_err(|e| {
                ImageError::new(
                    &label,
                    format!("cannot be read to its end ({})", fsutil::plain_message(&e)),
                )
            })?;
            Ok((inspected, digest))
        })();
        // A copy that ran out of room is the data directory's trouble, not a corrupt input.
        if let Some(e) = hashing.take_copy_error() {
            return Err(copy_error(e, &label).into());
        }
        let (inspected, digest) = read?;
        if let Some(copy) = copy.as_mut() {
            copy.write_tail().map_err(|e| copy_error(e, &label))?;
        }
        progress.finish();
        sync_staged(&staged)?;

        let image_type = match inspected.layout {
            Layout::UnifiedContainer => ImageType::Container,
            Layout::UnifiedVm => ImageType::VirtualMachine,
            Layout::MetadataOnly => {
                return Err(ImageError::new(
                    &label,
                    "holds only metadata; pass the root file (squashfs, qcow2 disk or root.tar.xz) after it",
                )
                .into());
            }
        };
        Ok(StagedImage {
            metadata: inspected.metadata,
            content: StagedContent::Unified {
                tarball: StagedPart {
                    staged,
                    digest,
                    file_name: format!("image.{}", inspected.compression.tar_extension()),
                },
                image_type,
            },
        })
    }
}

/// Reads a split metadata tarball whole, refusing anything larger than a metadata tarball
/// can sensibly be (usually the root passed first).
fn read_metadata_file(source: &OpenedSource, limit: u64) -> Result<Vec<u8>> {
    let (file, path, label) = (&source.file, source.path.as_path(), source.label.as_str());
    let size = source.identity.size();
    let mut head = Vec::new();
    file.take(sniff::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| fsutil::with_path(e, "cannot read", path))?;
    if let Some(kind @ (RootKind::Squashfs | RootKind::Qcow2)) = RootKind::detect(&head) {
        let what = if kind == RootKind::Squashfs {
            "a squashfs image"
        } else {
            "a qcow2 disk"
        };
        return Err(ImageError::new(
            label,
            format!("is {what}; pass the metadata tarball first, then the root"),
        )
        .into());
    }
    if size > limit {
        return Err(ImageError::new(
            label,
            format!(
                "is {}, too large for a metadata tarball (the limit is {}); pass the metadata tarball first, then the root",
                human_size(size),
                human_size(limit)
            ),
        )
        .into());
    }
    let mut bytes = head;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| fsutil::with_path(e, "cannot read", path))?;
    Ok(bytes)
}

/// Validates a root by its first bytes: the kind, and for a squashfs that it is whole.
fn check_root(head: &[u8], size: u64, path: &Path, label: &str) -> Result<RootKind> {
    let kind = RootKind::detect(head).ok_or_else(|| {
        let hint = if Compression::detect(head).is_some() {
            " (a root tarball must be xz-compressed: root.tar.xz)"
        } else {
            ""
        };
        ImageError::new(
            label,
            format!(
                "is {}, not an image root: give a squashfs, a qcow2 disk or a root.tar.xz{hint}",
                sniff::describe(head)
            ),
        )
    })?;
    match kind {
        RootKind::Squashfs => image::root::check_squashfs(head, size)
            .map_err(|problem| ImageError::new(label, problem))?,
        RootKind::TarXz => {
            let file = File::open(path).map_err(|e| fsutil::with_path(e, "cannot open", path))?;
            image::root::check_tar_xz(file).map_err(|problem| ImageError::new(label, problem))?;
        }
        RootKind::Qcow2 => {
            let file = File::open(path).map_err(|e| fsutil::with_path(e, "cannot open", path))?;
            let mut header = Vec::with_capacity(image::qcow2::HEADER_READ_LEN);
            file.take(image::qcow2::HEADER_READ_LEN as u64)
                .read_to_end(&mut header)
                .map_err(|e| fsutil::with_path(e, "cannot read", path))?;
            image::qcow2::check(&header, size)
                .map_err(|problem| ImageError::new(label, problem))?;
        }
    }
    Ok(kind)
}

fn add_order_hint(mut e: ImageError) -> ImageError {
    if e.problem == "has no metadata.yaml" {
        e.problem.push_str("; pass the metadata tarball first");
    }
    e
}

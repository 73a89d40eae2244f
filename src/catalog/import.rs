//! Import: validate an image, hash it in one pass, place it and publish.
//!
//! Steps, in order:
//! 1. Stage (no lock held): read the metadata (or unified) tarball, validate `metadata.yaml`,
//!    sniff the root by its magic bytes, and hash each file exactly once while copying it into
//!    `tmp/` (or hard-linking it there for a move). The root's sha256 and the combined
//!    fingerprint come from the same read.
//! 2. Under the writer lock: refuse a duplicate fingerprint, a conflicting serial or an alias
//!    collision; place the staged files under `www/images/<os>/<release>/<arch>/<variant>/<serial>/`;
//!    commit the record and the stream.
//! 3. Only then, for a move, delete the sources. A failed import leaves them untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::hashing::{self, HashingReader, Progress, StreamDigest};
use super::record::{Product, Provenance, Root, StoredFile, Version, VersionFiles};
use super::{Catalog, CatalogError, Result, Transaction, alias, short};
use crate::direct_file::DirectFile;
use crate::format::human_size;
use crate::fsutil::{self, FileIdentity};
use crate::image::{
    self, Compression, ImageError, ImageMetadata, ImageType, Layout, RootKind, sniff,
};
use crate::sha256::Sha256State;

/// Whether the sources are copied into the catalog or moved (hard link, then unlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Copy,
    Move,
}

/// Hashes already known for a file, taken while it was uploaded, so that importing it does
/// not read it again. They hold only for the file whose identity they name: the import
/// checks it against the file it opened.
#[derive(Debug, Clone)]
pub struct KnownDigest {
    pub identity: FileIdentity,
    pub size: u64,
    pub sha256: String,
    /// (sha256 of a metadata tarball, sha256(that metadata ‖ this file)).
    pub combined: Vec<(String, String)>,
}

/// Where the SSH side keeps the digests it took while files were uploaded.
pub trait DigestCache: Send + Sync {
    /// The digests of the file at `path`, if it was uploaded whole and unchanged since.
    fn lookup(&self, path: &Path) -> Option<KnownDigest>;
}

pub enum ImportSource {
    File {
        path: PathBuf,
        /// How the user named the file; used in messages and provenance.
        label: String,
        known: Option<KnownDigest>,
    },
    /// A unified tarball read from a stream (`import -`).
    Stream {
        label: String,
        reader: Box<dyn Read + Send>,
    },
}

impl ImportSource {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let label = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        ImportSource::File {
            path,
            label,
            known: None,
        }
    }

    fn label(&self) -> &str {
        match self {
            ImportSource::File { label, .. } | ImportSource::Stream { label, .. } => label,
        }
    }
}

pub struct ImportRequest {
    /// One unified tarball, or a metadata tarball and its root.
    pub sources: Vec<ImportSource>,
    pub aliases: Vec<String>,
    /// Add `os/release[/variant]` when the product is created.
    pub default_aliases: bool,
    pub serial: Option<String>,
    pub requirements: BTreeMap<String, String>,
    pub transfer: Transfer,
    /// The user importing: a new product becomes theirs.
    pub imported_by: String,
    /// The caller is an admin: may publish into any product and claim any alias. Anyone
    /// else may publish only into products they own or that are shared with them.
    pub may_publish_anywhere: bool,
    /// The fingerprint another tree published for these files: refused when they give another.
    pub expected_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub fingerprint: String,
    pub product_id: String,
    pub serial: String,
    pub image_type: ImageType,
    pub aliases: Vec<String>,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Published(ImportedImage),
    /// The same files were already published there; nothing changed but requested aliases.
    AlreadyPublished(ImportedImage),
}

impl ImportOutcome {
    pub fn image(&self) -> &ImportedImage {
        match self {
            ImportOutcome::Published(image) | ImportOutcome::AlreadyPublished(image) => image,
        }
    }
}

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
struct OpenedSource {
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
    fn remove_moved(&self) {
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
enum Input {
    File(Box<OpenedSource>),
    Stream {
        label: String,
        reader: Box<dyn Read + Send>,
    },
}

impl Input {
    fn open(source: ImportSource) -> Result<Input> {
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
struct StagedPart {
    staged: StagedFile,
    digest: StreamDigest,
    /// Name inside the version directory.
    file_name: String,
}

enum StagedContent {
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

struct StagedImage {
    metadata: ImageMetadata,
    content: StagedContent,
}

impl StagedImage {
    fn fingerprint(&self) -> &str {
        match &self.content {
            StagedContent::Split { combined, .. } => combined,
            StagedContent::Unified { tarball, .. } => &tarball.digest.sha256,
        }
    }

    fn image_type(&self) -> ImageType {
        match &self.content {
            StagedContent::Split { kind, .. } => kind.image_type(),
            StagedContent::Unified { image_type, .. } => *image_type,
        }
    }

    fn size(&self) -> u64 {
        match &self.content {
            StagedContent::Split { metadata, root, .. } => metadata.digest.size + root.digest.size,
            StagedContent::Unified { tarball, .. } => tarball.digest.size,
        }
    }
}

impl Catalog {
    /// Imports one image; see the module documentation for the steps.
    pub fn import(
        &self,
        mut request: ImportRequest,
        progress: &mut dyn Progress,
    ) -> Result<ImportOutcome> {
        for name in &request.aliases {
            alias::validate(name)?;
        }
        if let Some(serial) = &request.serial {
            validate_serial(serial)?;
            refuse_future_serial(serial, super::unix_now())?;
        }
        for key in request.requirements.keys() {
            validate_requirement_key(key)?;
        }
        let sources = std::mem::take(&mut request.sources);
        let labels: Vec<String> = sources.iter().map(|s| s.label().to_string()).collect();
        let wrong_count = || {
            CatalogError::Invalid(
                "import takes a unified tarball, or a metadata tarball and its root".into(),
            )
        };
        if !(1..=2).contains(&sources.len()) {
            return Err(wrong_count());
        }
        let mut inputs = sources
            .into_iter()
            .map(Input::open)
            .collect::<Result<Vec<Input>>>()?
            .into_iter();
        let now = super::unix_now();
        let mut moved = Vec::new();
        let staged = match (inputs.next(), inputs.next()) {
            (Some(Input::File(metadata)), Some(Input::File(root))) => {
                let staged = self.stage_split(&metadata, &root, request.transfer, now, progress)?;
                moved.extend([*metadata, *root]);
                staged
            }
            (Some(_), Some(_)) => {
                return Err(CatalogError::Invalid(
                    "a split image is read from two files, not from standard input".into(),
                ));
            }
            (Some(unified), None) => {
                self.stage_unified(unified, request.transfer, now, progress, &mut moved)?
            }
            (None, _) => return Err(wrong_count()),
        };
        let outcome = self.publish_staged(staged, &request, labels)?;
        if request.transfer == Transfer::Move {
            for source in &moved {
                source.remove_moved();
            }
        }
        Ok(outcome)
    }

    fn stage_split(
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
    fn stage_unified(
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

    /// Step 2: checks against the record, places the files and commits.
    fn publish_staged(
        &self,
        staged: StagedImage,
        request: &ImportRequest,
        sources: Vec<String>,
    ) -> Result<ImportOutcome> {
        let meta = &staged.metadata;
        let product_id = Product::id(&meta.os, &meta.release, meta.arch, &meta.variant);
        let serial = match &request.serial {
            Some(serial) => serial.clone(),
            None => serial_from_unix(meta.creation_date),
        };
        let fingerprint = staged.fingerprint().to_string();
        if let Some(expected) = &request.expected_fingerprint
            && expected != &fingerprint
        {
            return Err(CatalogError::Conflict(format!(
                "the source tree gives fingerprint {expected}, but the files hash to {fingerprint}: \
                 its combined hash is wrong; check the files, then import them with `import`"
            )));
        }
        let image_type = staged.image_type();
        let mut txn = self.begin()?;

        let already = txn
            .state
            .images()
            .find(|located| located.image.fingerprint == fingerprint)
            .map(|located| (located.product_id.to_string(), located.serial.to_string()));
        if let Some((owner, owner_serial)) = &already
            && (owner != &product_id || owner_serial != &serial)
        {
            return Err(CatalogError::Conflict(format!(
                "image {} is already published as {owner} version {owner_serial}",
                short(&fingerprint)
            )));
        }

        // The product after this import, checked for ownership and alias collisions before
        // anything moves.
        let existing = txn.state.products.get(&product_id);
        if !request.may_publish_anywhere
            && let Some(existing) = existing
            && !existing.may_publish(&request.imported_by)
        {
            return Err(CatalogError::Conflict(format!(
                "product {product_id} belongs to {}; only its owner, the users it is shared with and admins may publish into it (an admin can run `product share {product_id} {}`)",
                existing.owner().unwrap_or("an admin"),
                request.imported_by
            )));
        }
        let aliases_before = existing.map(|p| p.aliases.clone()).unwrap_or_default();
        let mut product = existing.cloned().unwrap_or_else(|| Product {
            os: meta.os.clone(),
            release: meta.release.clone(),
            arch: meta.arch.to_string(),
            variant: meta.variant.clone(),
            aliases: if request.default_aliases {
                alias::defaults(meta).into_iter().collect()
            } else {
                BTreeSet::new()
            },
            requirements: BTreeMap::new(),
            versions: BTreeMap::new(),
            owner: Some(request.imported_by.clone()),
            shared_with: BTreeSet::new(),
        });
        // A product recorded before owners existed gets the owner it was deduced to have.
        if product.owner.is_none() {
            product.owner = Some(
                product
                    .owner()
                    .map_or_else(|| request.imported_by.clone(), str::to_string),
            );
        }
        product.aliases.extend(request.aliases.iter().cloned());
        product.requirements.extend(request.requirements.clone());
        if !request.may_publish_anywhere {
            let added: BTreeSet<String> = product
                .aliases
                .difference(&aliases_before)
                .cloned()
                .collect();
            alias::check_claims(&txn.state, &product_id, &added, &request.imported_by)?;
        }
        let mut types = product.image_types();
        types.insert(image_type);
        alias::check_collisions(&txn.state, &product_id, &product, &types)?;

        let size = staged.size();
        let outcome_image = |aliases: &BTreeSet<String>| ImportedImage {
            fingerprint: fingerprint.clone(),
            product_id: product_id.clone(),
            serial: serial.clone(),
            image_type,
            aliases: aliases.iter().cloned().collect(),
            size,
        };
        if already.is_some() {
            let image = outcome_image(&product.aliases);
            txn.state.products.insert(product_id.clone(), product);
            txn.commit()?;
            return Ok(ImportOutcome::AlreadyPublished(image));
        }

        let provenance = Provenance {
            by: request.imported_by.clone(),
            at: txn.now,
            sources,
        };
        let dir = format!(
            "images/{}/{}/{}/{}/{serial}",
            meta.os, meta.release, meta.arch, meta.variant
        );
        let files = match staged.content {
            StagedContent::Split {
                metadata,
                root,
                kind,
                combined,
            } => {
                let existing_roots = match product.versions.get(&serial).map(|v| &v.files) {
                    None => BTreeMap::new(),
                    Some(VersionFiles::Split {
                        metadata: existing_meta,
                        roots,
                    }) => {
                        if existing_meta.sha256 != metadata.digest.sha256 {
                            return Err(CatalogError::Conflict(format!(
                                "version {serial} of {product_id} already exists with a different metadata tarball; \
                                 pass --serial to publish this one as a new version"
                            )));
                        }
                        if let Some(existing) = roots.get(&image_type) {
                            return Err(CatalogError::Conflict(format!(
                                "version {serial} of {product_id} already holds a {image_type} image ({}); \
                                 remove it first or pass --serial",
                                short(&existing.combined_sha256)
                            )));
                        }
                        roots.clone()
                    }
                    Some(VersionFiles::Unified { .. }) => {
                        return Err(unified_conflict(&serial, &product_id));
                    }
                };
                let metadata_file = place(&mut txn, &dir, metadata)?;
                let root_file = place(&mut txn, &dir, root)?;
                let mut roots = existing_roots;
                roots.insert(
                    image_type,
                    Root {
                        kind,
                        file: root_file,
                        combined_sha256: combined,
                        imported: provenance,
                    },
                );
                VersionFiles::Split {
                    metadata: metadata_file,
                    roots,
                }
            }
            StagedContent::Unified {
                tarball,
                image_type,
            } => {
                if product.versions.contains_key(&serial) {
                    return Err(unified_conflict(&serial, &product_id));
                }
                VersionFiles::Unified {
                    tarball: place(&mut txn, &dir, tarball)?,
                    image_type,
                    imported: provenance,
                }
            }
        };
        product.versions.insert(
            serial.clone(),
            Version {
                description: meta.description.clone(),
                created: meta.creation_date,
                expires: meta.expiry_date,
                files,
            },
        );
        let image = outcome_image(&product.aliases);
        txn.state.products.insert(product_id, product);
        txn.commit()?;
        Ok(ImportOutcome::Published(image))
    }
}

/// Places a staged part in `dir`, reusing an identical file already there (the metadata a
/// container and a VM share, or a retired file imported again), and never giving an existing
/// path different content: files under `images/` are served as immutable.
fn place(txn: &mut Transaction<'_>, dir: &str, part: StagedPart) -> Result<StoredFile> {
    let sha256 = part.digest.sha256.clone();
    let stored = |path: String| StoredFile {
        path,
        size: part.digest.size,
        sha256: sha256.clone(),
    };
    let (stem, extension) = part
        .file_name
        .split_once('.')
        .unwrap_or((&part.file_name, ""));
    let candidates = [
        format!("{dir}/{}", part.file_name),
        format!("{dir}/{stem}-{}.{extension}", &sha256[..12]),
    ];
    for path in candidates {
        if let Some(live) = txn.state.live_path(&path) {
            if live.sha256 == sha256 {
                return Ok(stored(path));
            }
            continue;
        }
        if let Some(index) = txn.state.retired.iter().position(|r| r.path == path) {
            if txn.state.retired[index].sha256 == sha256 {
                txn.state.retired.remove(index);
                return Ok(stored(path));
            }
            continue;
        }
        if txn.catalog().tree().stat(&path)?.is_some() {
            continue;
        }
        txn.place(&part.staged, &path)?;
        return Ok(stored(path));
    }
    Err(CatalogError::Conflict(format!(
        "cannot find a free file name for {} in {dir}",
        part.file_name
    )))
}

fn unified_conflict(serial: &str, product_id: &str) -> CatalogError {
    CatalogError::Conflict(format!(
        "version {serial} of {product_id} already exists; a unified image cannot share a version, pass --serial"
    ))
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
        RootKind::Squashfs => {
            // Superblock: bytes_used (u64 LE) at offset 40, major version (u16 LE) at 28.
            let major = head.get(28..30).map(|b| u16::from_le_bytes([b[0], b[1]]));
            let used = head
                .get(40..48)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if major != Some(4) {
                return Err(ImageError::new(
                    label,
                    "is not a squashfs 4.0 image (its superblock is damaged)",
                )
                .into());
            }
            if let Some(used) = used
                && used > size
            {
                return Err(ImageError::new(
                    label,
                    format!("is truncated: its superblock says {used} bytes, the file has {size}"),
                )
                .into());
            }
        }
        RootKind::TarXz => {
            let file = File::open(path).map_err(|e| fsutil::with_path(e, "cannot open", path))?;
            let mut first = Vec::with_capacity(512);
            let decoded = liblzma::read::XzDecoder::new(file)
                .take(512)
                .read_to_end(&mut first);
            if decoded.is_err() || first.get(257..262) != Some(b"ustar") {
                return Err(ImageError::new(
                    label,
                    "is an xz stream but not an xz-compressed tarball",
                )
                .into());
            }
            if first.starts_with(b"metadata.yaml\0") || first.starts_with(b"./metadata.yaml\0") {
                return Err(ImageError::new(label, "is a metadata tarball, not a root; pass the metadata tarball first, then the root").into());
            }
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

/// The default serial: `creation_date` in UTC as `YYYYMMDD_hhmm`.
pub fn serial_from_unix(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y%m%d_%H%M")
        .to_string()
}

/// A serial must start with a valid `YYYYMMDD` (clients skip the version otherwise) and be
/// path-safe.
pub fn validate_serial(serial: &str) -> Result<()> {
    let invalid = |why: &str| {
        CatalogError::Invalid(format!(
            "serial {serial:?} {why}; use the form YYYYMMDD_hhmm"
        ))
    };
    if serial.len() < 8 || serial.len() > 32 {
        return Err(invalid("must be 8 to 32 characters long"));
    }
    if !serial
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
    {
        return Err(invalid(
            "may hold only letters, digits, '_', '.', ':' and '-'",
        ));
    }
    let date = &serial[..8];
    let valid_date = date.chars().all(|c| c.is_ascii_digit())
        && jiff::civil::Date::strptime("%Y%m%d", date).is_ok();
    if !valid_date {
        return Err(invalid("must start with a date YYYYMMDD"));
    }
    Ok(())
}

/// Refuses a serial dated more than a day after `now_unix` (the slack `creation_date` has):
/// serials order a product's versions, and a far-future one would stay the newest forever.
fn refuse_future_serial(serial: &str, now_unix: i64) -> Result<()> {
    // `YYYYMMDD_hhmm` strings sort in time order: compare the serial's moment as one.
    let hhmm = serial
        .get(8..13)
        .and_then(|rest| rest.strip_prefix('_'))
        .filter(|hhmm| hhmm.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("0000");
    let moment = format!("{}_{hhmm}", &serial[..serial.len().min(8)]);
    let latest = serial_from_unix(now_unix + crate::image::metadata::FUTURE_SLACK_SECONDS);
    if moment > latest {
        return Err(CatalogError::Invalid(format!(
            "serial {serial:?} is more than a day in the future; give the build time as YYYYMMDD_hhmm in UTC (now it is {})",
            serial_from_unix(now_unix)
        )));
    }
    Ok(())
}

fn validate_requirement_key(key: &str) -> Result<()> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(CatalogError::Invalid(format!(
            "requirement key {key:?} may hold only letters, digits, '_', '-' and '.' (e.g. secureboot=false)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_utc_minutes() {
        assert_eq!(serial_from_unix(1_764_244_800), "20251127_1200");
    }

    #[test]
    fn serials_must_start_with_a_date() {
        assert!(validate_serial("20261127_0524").is_ok());
        assert!(validate_serial("20261127").is_ok());
        for bad in [
            "2026112",
            "20261327_0000",
            "abcdefgh",
            "20261127/x",
            "20261127 1",
        ] {
            assert!(validate_serial(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serials_more_than_a_day_ahead_are_refused() {
        let now = 1_764_244_800; // 2025-11-27 12:00 UTC
        for fine in [
            "20251127_1200",
            "20251128_1200",
            "20251128",
            "20200101.1",
            "20251128-x",
        ] {
            assert!(refuse_future_serial(fine, now).is_ok(), "{fine}");
        }
        for ahead in ["20251128_1201", "20251129", "99991231_2359"] {
            let Err(err) = refuse_future_serial(ahead, now) else {
                panic!("{ahead} was accepted");
            };
            let err = err.to_string();
            assert!(err.contains("more than a day in the future"), "{err}");
            assert!(err.contains("20251127_1200"), "{err}");
        }
    }
}

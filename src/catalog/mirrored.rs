//! Publishing what a pull-mirror brought: one whole upstream version per transaction, and
//! taking out the versions a mirror brought that upstream no longer offers.
//!
//! The mirror downloads and checks every file (size, sha256, the combined fingerprint) before
//! it calls here; publishing then works as an import does: the metadata tarball is inspected
//! (its unpacked size bounded, metadata.yaml read), each root is sniffed by its magic bytes,
//! the downloaded files are hard-linked from `tmp/` into place, and the record and stream are
//! committed. The upstream's serial, fingerprints and aliases are kept, and every image
//! records the mirror it came from ([`Provenance::origin`]): a mirror never touches a product
//! holding anything it did not bring.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::delta::{Attached, VerifiedDelta};
use super::hashing::Silent;
use super::import::{ImportSource, ImportedImage, KnownDigest, Transfer, place, validate_serial};
use super::record::{CatalogState, Product, Provenance, Root, Version, VersionFiles};
use super::remove::{RemovedImage, remove_image};
use super::staging::{Input, StagedContent, StagedImage};
use super::{Catalog, CatalogError, Result, alias, short};
use crate::fsutil::{self, FileIdentity};
use crate::image::ImageType;
use crate::vcdiff::{DeltaError, decode};

/// The upstream product a version belongs to, as the mirror publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredProduct {
    /// The upstream's product id, kept as ours.
    pub id: String,
    pub os: String,
    pub release: String,
    /// Debian architecture name.
    pub arch: String,
    pub variant: String,
    /// Already prefixed and validated.
    pub aliases: BTreeSet<String>,
    pub requirements: BTreeMap<String, String>,
}

/// A file the mirror downloaded into `tmp/` and checked against the upstream item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    pub path: PathBuf,
    /// The upstream item's path, for messages and provenance.
    pub label: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredRoot {
    pub file: DownloadedFile,
    /// sha256(metadata ‖ root), computed while downloading and checked against upstream.
    pub combined_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirroredFiles {
    Split {
        metadata: DownloadedFile,
        roots: Vec<MirroredRoot>,
    },
    Unified {
        tarball: DownloadedFile,
    },
}

/// One upstream version, every file downloaded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredVersion {
    pub product: MirroredProduct,
    pub serial: String,
    pub files: MirroredFiles,
}

/// An upstream delta (`squashfs.vcdiff`), downloaded and checked against its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredDelta {
    pub product_id: String,
    /// The version whose squashfs root the delta produces.
    pub serial: String,
    /// The version it applies to (`delta_base`).
    pub base_serial: String,
    pub file: DownloadedFile,
}

/// What became of an upstream delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirroredDeltaOutcome {
    /// Checked and published.
    Published,
    /// The root has a delta from that base already (ours, or an earlier run's).
    AlreadyThere,
    /// Applied to the base it does not rebuild the root: declined for that base, for good.
    Declined(String),
}

/// Who a mirror's images are recorded as imported by.
pub fn mirror_user(origin: &str) -> String {
    format!("mirror:{origin}")
}

/// True when every image of `product` came from `origin` (and it has at least one).
pub fn product_is_from(product: &Product, origin: &str) -> bool {
    let mut images = product
        .versions
        .values()
        .flat_map(|version| version.images())
        .peekable();
    images.peek().is_some() && images.all(|image| image.imported.origin.as_deref() == Some(origin))
}

/// The (product id, serial) of every version `origin` brought.
pub fn versions_from(state: &CatalogState, origin: &str) -> BTreeSet<(String, String)> {
    state
        .products
        .iter()
        .filter(|(_, product)| product_is_from(product, origin))
        .flat_map(|(id, product)| {
            product
                .versions
                .keys()
                .map(move |serial| (id.clone(), serial.clone()))
        })
        .collect()
}

impl Catalog {
    /// Publishes one mirrored version whole: every image of it, or none.
    pub fn publish_mirrored(
        &self,
        origin: &str,
        version: &MirroredVersion,
    ) -> Result<Vec<ImportedImage>> {
        validate_serial(&version.serial)?;
        let now = super::unix_now();
        let staged = self.stage_mirrored(version, now)?;
        let Some(first) = staged.first() else {
            return Err(CatalogError::Invalid(format!(
                "{} version {} has no image to publish",
                version.product.id, version.serial
            )));
        };
        let meta = first.metadata.clone();
        let product_id = version.product.id.clone();
        let serial = version.serial.clone();

        let mut txn = self.begin()?;
        let mut product = match txn.state.products.get(&product_id) {
            Some(existing) if !product_is_from(existing, origin) => {
                return Err(CatalogError::Conflict(format!(
                    "product {product_id} holds images this mirror did not bring (owner {}); \
                     remove them, or leave the product out with --filter",
                    existing.owner().unwrap_or("unknown")
                )));
            }
            Some(existing) => existing.clone(),
            None => Product {
                os: version.product.os.clone(),
                release: version.product.release.clone(),
                arch: version.product.arch.clone(),
                variant: version.product.variant.clone(),
                aliases: BTreeSet::new(),
                requirements: BTreeMap::new(),
                versions: BTreeMap::new(),
                owner: Some(mirror_user(origin)),
                shared_with: BTreeSet::new(),
            },
        };
        if product.versions.contains_key(&serial) {
            return Err(CatalogError::Conflict(format!(
                "version {serial} of {product_id} is already published"
            )));
        }
        for image in &staged {
            let fingerprint = image.fingerprint();
            if let Some(other) = txn
                .state
                .images()
                .find(|located| located.image.fingerprint == fingerprint)
            {
                return Err(CatalogError::Conflict(format!(
                    "image {} is already published as {} version {}",
                    short(fingerprint),
                    other.product_id,
                    other.serial
                )));
            }
        }
        // Upstream's aliases and requirements are the truth for the product.
        product.aliases = version.product.aliases.clone();
        product.requirements = version.product.requirements.clone();
        let mut types = product.image_types();
        types.extend(staged.iter().map(StagedImage::image_type));
        alias::check_collisions(&txn.state, &product_id, &product, &types)?;

        let provenance = |sources: Vec<String>| Provenance {
            by: mirror_user(origin),
            at: now,
            sources,
            origin: Some(origin.to_string()),
        };
        let dir = format!(
            "images/{}/{}/{}/{}/{serial}",
            meta.os, meta.release, meta.arch, meta.variant
        );
        let mut published = Vec::new();
        let files = match &version.files {
            MirroredFiles::Split { metadata, roots } => {
                let mut metadata_file = None;
                let mut placed_roots = BTreeMap::new();
                for (image, root) in staged.into_iter().zip(roots) {
                    let image_type = image.image_type();
                    let StagedContent::Split {
                        metadata: staged_meta,
                        root: staged_root,
                        kind,
                        combined,
                    } = image.content
                    else {
                        continue;
                    };
                    if metadata_file.is_none() {
                        metadata_file = Some(place(&mut txn, &dir, staged_meta)?);
                    }
                    let size = metadata.size + root.file.size;
                    published.push(ImportedImage {
                        fingerprint: combined.clone(),
                        product_id: product_id.clone(),
                        serial: serial.clone(),
                        image_type,
                        aliases: product.aliases.iter().cloned().collect(),
                        size,
                    });
                    placed_roots.insert(
                        image_type,
                        Root::new(
                            kind,
                            place(&mut txn, &dir, staged_root)?,
                            combined,
                            provenance(vec![metadata.label.clone(), root.file.label.clone()]),
                        ),
                    );
                }
                let Some(metadata) = metadata_file else {
                    return Err(CatalogError::Invalid(format!(
                        "{product_id} version {serial} has no image to publish"
                    )));
                };
                VersionFiles::Split {
                    metadata,
                    roots: placed_roots,
                }
            }
            MirroredFiles::Unified { tarball } => {
                let image = staged
                    .into_iter()
                    .next()
                    .ok_or_else(|| CatalogError::Invalid("no unified tarball".into()))?;
                let image_type = image.image_type();
                let StagedContent::Unified { tarball: part, .. } = image.content else {
                    return Err(CatalogError::Invalid(format!(
                        "{} is not a unified tarball",
                        tarball.label
                    )));
                };
                published.push(ImportedImage {
                    fingerprint: part.digest.sha256.clone(),
                    product_id: product_id.clone(),
                    serial: serial.clone(),
                    image_type,
                    aliases: product.aliases.iter().cloned().collect(),
                    size: part.digest.size,
                });
                VersionFiles::Unified {
                    tarball: place(&mut txn, &dir, part)?,
                    image_type,
                    imported: provenance(vec![tarball.label.clone()]),
                }
            }
        };
        product.versions.insert(
            serial,
            Version {
                description: meta.description.clone(),
                created: meta.creation_date,
                expires: meta.expiry_date,
                files,
            },
        );
        txn.state.products.insert(product_id, product);
        txn.commit()?;
        Ok(published)
    }

    /// Stages every image of `version` with no lock held: the metadata inspected, each root
    /// sniffed and checked, the files linked into `tmp/` (never re-hashed: the mirror hashed
    /// them on the way in), unified tarballs read once to check their content.
    fn stage_mirrored(&self, version: &MirroredVersion, now: i64) -> Result<Vec<StagedImage>> {
        let source = |file: &DownloadedFile, known: Option<KnownDigest>| ImportSource::File {
            path: file.path.clone(),
            label: file.label.clone(),
            known,
        };
        let mut staged = Vec::new();
        match &version.files {
            MirroredFiles::Split { metadata, roots } => {
                for root in roots {
                    let identity = FileIdentity::of_path(&root.file.path).ok_or_else(|| {
                        CatalogError::NotFound(format!(
                            "the download of {} is gone from {}",
                            root.file.label,
                            root.file.path.display()
                        ))
                    })?;
                    let known = KnownDigest {
                        identity,
                        size: root.file.size,
                        sha256: root.file.sha256.clone(),
                        combined: vec![(metadata.sha256.clone(), root.combined_sha256.clone())],
                    };
                    let (Input::File(meta_source), Input::File(root_source)) = (
                        Input::open(source(metadata, None))?,
                        Input::open(source(&root.file, Some(known)))?,
                    ) else {
                        continue;
                    };
                    let image = self.stage_split(
                        &meta_source,
                        &root_source,
                        Transfer::Move,
                        now,
                        &mut Silent,
                    )?;
                    if image.fingerprint() != root.combined_sha256 {
                        return Err(CatalogError::Conflict(format!(
                            "{}: the fingerprint is {}, upstream gives {}",
                            root.file.label,
                            image.fingerprint(),
                            root.combined_sha256
                        )));
                    }
                    staged.push(image);
                }
            }
            MirroredFiles::Unified { tarball } => {
                let mut moved = Vec::new();
                let image = self.stage_unified(
                    Input::open(source(tarball, None))?,
                    Transfer::Move,
                    now,
                    &mut Silent,
                    &mut moved,
                )?;
                if image.fingerprint() != tarball.sha256 {
                    return Err(CatalogError::Conflict(format!(
                        "{}: sha256 is {}, upstream gives {}",
                        tarball.label,
                        image.fingerprint(),
                        tarball.sha256
                    )));
                }
                staged.push(image);
            }
        }
        Ok(staged)
    }

    /// Publishes an upstream delta once it is checked as a delta we made is: applied to the
    /// base version's squashfs root, it must give the target's root, byte for byte (clients
    /// do not fall back to the full file when a delta fails). One that does not is declined
    /// for that base, so it is not fetched again.
    pub fn attach_mirrored_delta(
        &self,
        origin: &str,
        delta: &MirroredDelta,
    ) -> Result<MirroredDeltaOutcome> {
        let where_ = format!("{} version {}", delta.product_id, delta.serial);
        let state = self.load()?;
        let product = state
            .products
            .get(&delta.product_id)
            .filter(|product| product_is_from(product, origin))
            .ok_or_else(|| CatalogError::NotFound(format!("{where_} is not from this mirror")))?;
        let root = |serial: &str| {
            product
                .versions
                .get(serial)
                .and_then(|version| version.squashfs_root())
                .ok_or_else(|| {
                    CatalogError::NotFound(format!(
                        "{} version {serial} has no squashfs root",
                        delta.product_id
                    ))
                })
        };
        let target = root(&delta.serial)?;
        if target.deltas.contains_key(&delta.base_serial) {
            return Ok(MirroredDeltaOutcome::AlreadyThere);
        }
        let base = root(&delta.base_serial)?;
        let (base_file, _copy) = self.local_file(&base.file)?;
        let mut delta_file = std::fs::File::open(&delta.file.path)
            .map_err(|e| fsutil::with_path(e, "cannot open", &delta.file.path))?;
        let problem =
            match decode::decode(&base_file, &mut delta_file, None, target.file.size, &|| {
                false
            }) {
                Ok(decoded)
                    if decoded.size == target.file.size && decoded.sha256 == target.file.sha256 =>
                {
                    None
                }
                Ok(_) => Some("upstream's delta does not rebuild the root".to_string()),
                Err(DeltaError::Io(e)) => {
                    return Err(fsutil::with_path(e, "cannot check", &delta.file.path).into());
                }
                Err(e) => Some(format!("upstream's delta failed its check ({e})")),
            };
        if let Some(reason) = problem {
            self.decline_delta(
                &delta.product_id,
                &delta.serial,
                &delta.base_serial,
                &reason,
            )?;
            return Ok(MirroredDeltaOutcome::Declined(reason));
        }
        let verified = VerifiedDelta {
            product_id: delta.product_id.clone(),
            serial: delta.serial.clone(),
            base_serial: delta.base_serial.clone(),
            staged: delta.file.path.clone(),
            size: delta.file.size,
            sha256: delta.file.sha256.clone(),
        };
        Ok(match self.attach_delta(&verified)? {
            Attached::Published(_) => MirroredDeltaOutcome::Published,
            Attached::AlreadyThere(_) => MirroredDeltaOutcome::AlreadyThere,
        })
    }

    /// Gives a product `origin` brought the aliases and requirements upstream gives it now
    /// (a new alias that another product holds is refused by name). Returns whether anything
    /// changed.
    pub fn refresh_mirrored_product(
        &self,
        origin: &str,
        described: &MirroredProduct,
    ) -> Result<bool> {
        let mut txn = self.begin()?;
        let Some(mut product) = txn
            .state
            .products
            .get(&described.id)
            .filter(|product| product_is_from(product, origin))
            .cloned()
        else {
            return Ok(false);
        };
        if product.aliases == described.aliases && product.requirements == described.requirements {
            return Ok(false);
        }
        product.aliases = described.aliases.clone();
        product.requirements = described.requirements.clone();
        alias::check_collisions(&txn.state, &described.id, &product, &product.image_types())?;
        txn.state.products.insert(described.id.clone(), product);
        txn.commit()?;
        Ok(true)
    }

    /// Takes out every version `origin` brought for which `wanted` is false, as `remove` does
    /// (files stay downloadable for the grace period). With `dry_run`, only says which.
    pub fn remove_mirrored(
        &self,
        origin: &str,
        wanted: impl Fn(&str, &str) -> bool,
        dry_run: bool,
    ) -> Result<Vec<RemovedImage>> {
        let mut txn = self.begin()?;
        let doomed: Vec<RemovedImage> = versions_from(&txn.state, origin)
            .into_iter()
            .filter(|(product_id, serial)| !wanted(product_id, serial))
            .flat_map(|(product_id, serial)| {
                let images: Vec<(String, ImageType)> = txn.state.products[&product_id].versions
                    [&serial]
                    .images()
                    .map(|image| (image.fingerprint.to_string(), image.image_type))
                    .collect();
                images
                    .into_iter()
                    .map(move |(fingerprint, image_type)| RemovedImage {
                        fingerprint,
                        product_id: product_id.clone(),
                        serial: serial.clone(),
                        image_type,
                    })
            })
            .collect();
        if !dry_run && !doomed.is_empty() {
            for image in &doomed {
                remove_image(&mut txn, image)?;
            }
            txn.commit()?;
        }
        Ok(doomed)
    }
}

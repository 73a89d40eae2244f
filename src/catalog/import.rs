//! Import: the request, and publishing what was staged.
//!
//! Steps, in order:
//! 1. Stage, no lock held ([`super::staging`]): open the sources once, validate, sniff, and
//!    hash each file exactly once while copying (or linking) it into `tmp/`.
//! 2. Publish, under the writer lock (here): refuse a duplicate fingerprint, a conflicting
//!    serial or an alias collision; place the staged files under
//!    `images/<os>/<release>/<arch>/<variant>/<serial>/`; commit the record and the stream.
//! 3. Only then, for a move, delete the sources. A failed import leaves them untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::hashing::Progress;
use super::record::{Product, Provenance, Root, StoredFile, Version, VersionFiles};
use super::staging::{Input, StagedContent, StagedImage, StagedPart};
use super::{Catalog, CatalogError, Result, Transaction, alias, short};
use crate::fsutil::FileIdentity;
use crate::image::ImageType;

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
            origin: None,
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
                roots.insert(image_type, Root::new(kind, root_file, combined, provenance));
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

/// Places a staged part in `dir`; see [`place_file`].
pub(super) fn place(txn: &mut Transaction<'_>, dir: &str, part: StagedPart) -> Result<StoredFile> {
    place_file(
        txn,
        dir,
        &part.file_name,
        part.staged.path(),
        part.digest.size,
        &part.digest.sha256,
    )
}

/// Places the staged file `staged` in `dir` as `file_name`, reusing an identical file already
/// there (the metadata a container and a VM share, or a retired file imported again), and
/// never giving an existing path different content: files under `images/` are served as
/// immutable.
pub(super) fn place_file(
    txn: &mut Transaction<'_>,
    dir: &str,
    file_name: &str,
    staged: &Path,
    size: u64,
    sha256: &str,
) -> Result<StoredFile> {
    let stored = |path: String| StoredFile {
        path,
        size,
        sha256: sha256.to_string(),
    };
    let (stem, extension) = file_name.split_once('.').unwrap_or((file_name, ""));
    let candidates = [
        format!("{dir}/{file_name}"),
        format!(
            "{dir}/{stem}-{}.{extension}",
            &sha256[..sha256.len().min(12)]
        ),
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
        txn.place(staged, &path)?;
        return Ok(stored(path));
    }
    Err(CatalogError::Conflict(format!(
        "cannot find a free file name for {file_name} in {dir}"
    )))
}

fn unified_conflict(serial: &str, product_id: &str) -> CatalogError {
    CatalogError::Conflict(format!(
        "version {serial} of {product_id} already exists; a unified image cannot share a version, pass --serial"
    ))
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

//! From what upstream lists to what one run takes: every product of every `image-downloads`
//! products file, each version's items sorted into metadata, roots, unified tarballs and
//! deltas (other ftypes skipped), the filters and `keep` applied, then the versions this
//! mirror already holds left out.
//!
//! Everything a taken version names is checked here, before anything is downloaded: item
//! paths stay under the upstream, sizes and sha256 are present and well formed, a root is
//! paired with its metadata by a combined hash. A broken field fails the whole run with one
//! line, so a hostile upstream gets nothing published.

use std::collections::{BTreeMap, BTreeSet};

use super::upstream::check_relative_path;
use super::{Filter, MirrorError, MirrorSpec};
use crate::catalog::alias;
use crate::catalog::import::validate_serial;
use crate::catalog::mirrored::{MirroredProduct, product_is_from, versions_from};
use crate::catalog::record::CatalogState;
use crate::image::metadata::is_arch_name;
use crate::image::{ImageType, RootKind};
use crate::streams;

/// The delta ftype: a vcdiff of a squashfs against the version named by `delta_base`.
pub const DELTA_FTYPE: &str = "squashfs.vcdiff";

/// An upstream file, its fields checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFile {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoot {
    pub kind: RootKind,
    pub file: UpstreamFile,
    /// The upstream's fingerprint of this root with the version's metadata.
    pub combined: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedFiles {
    Split {
        metadata: UpstreamFile,
        roots: Vec<PlannedRoot>,
    },
    Unified {
        tarball: UpstreamFile,
        image_type: ImageType,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelta {
    /// The serial the delta applies to.
    pub base: String,
    pub file: UpstreamFile,
}

/// One upstream version this run downloads and publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVersion {
    pub product: MirroredProduct,
    pub serial: String,
    pub files: PlannedFiles,
    pub deltas: Vec<PlannedDelta>,
}

impl PlannedVersion {
    /// Every file, metadata first.
    pub fn files(&self) -> Vec<&UpstreamFile> {
        match &self.files {
            PlannedFiles::Split { metadata, roots } => std::iter::once(metadata)
                .chain(roots.iter().map(|root| &root.file))
                .collect(),
            PlannedFiles::Unified { tarball, .. } => vec![tarball],
        }
    }

    pub fn image_types(&self) -> BTreeSet<ImageType> {
        match &self.files {
            PlannedFiles::Split { roots, .. } => {
                roots.iter().map(|root| root.kind.image_type()).collect()
            }
            PlannedFiles::Unified { image_type, .. } => BTreeSet::from([*image_type]),
        }
    }
}

/// What one run does.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per product, every upstream serial the filters allow (sorted, newest last): what
    /// `keep` and removal are judged against once the new versions are published.
    pub listed: BTreeMap<String, Vec<String>>,
    /// Versions to download and publish.
    pub to_fetch: Vec<PlannedVersion>,
    /// Every version the filters and `keep` take (held or to fetch), by (product id, serial).
    pub kept: BTreeSet<(String, String)>,
    /// Every product with a kept version, as upstream describes it now (aliases prefixed).
    pub products: BTreeMap<String, MirroredProduct>,
    /// The upstream deltas of those versions: (product id, serial, delta).
    pub deltas: Vec<(String, String, PlannedDelta)>,
    /// One line per version refused before any download.
    pub refused: Vec<String>,
    pub notes: Vec<String>,
}

/// A products file read from upstream, with the path it came from.
pub struct UpstreamProducts {
    pub path: String,
    pub products: streams::Products,
}

pub fn plan(
    upstream: &[UpstreamProducts],
    spec: &MirrorSpec,
    state: &CatalogState,
) -> Result<Plan, MirrorError> {
    let origin = spec.origin();
    let held = versions_from(state, origin);
    let mut plan = Plan::default();
    let mut one_client_vms = BTreeMap::<&'static str, usize>::new();
    let mut dropped_aliases = BTreeSet::new();
    let mut odd_serials = 0usize;
    let mut no_arch = 0usize;
    for source in upstream {
        for (product_id, product) in &source.products.products {
            if product_id.is_empty() || product_id.chars().any(char::is_control) {
                continue;
            }
            // Clients drop a product without an architecture.
            if product.arch.is_empty() {
                no_arch += 1;
                continue;
            }
            let mut taken = Vec::new();
            for (serial, version) in &product.versions {
                if validate_serial(serial).is_err() {
                    odd_serials += 1;
                    continue;
                }
                if let Some(planned) =
                    classify(&source.path, product_id, product, serial, version, spec)?
                {
                    taken.push((planned, one_client(version)));
                }
            }
            if taken.is_empty() {
                continue;
            }
            plan.listed.insert(
                product_id.clone(),
                taken.iter().map(|(v, _)| v.serial.clone()).collect(),
            );
            let newest_first = taken.into_iter().rev();
            let kept: Vec<_> = match spec.keep {
                Some(keep) => newest_first.take(keep).collect(),
                None => newest_first.collect(),
            };
            if let Some(existing) = state.products.get(product_id)
                && !product_is_from(existing, origin)
            {
                plan.refused.push(format!(
                    "refused {product_id}: the catalog holds it already with images this mirror did not bring (owner {}); remove them or leave the product out with --filter",
                    existing.owner().unwrap_or("unknown")
                ));
                continue;
            }
            for (planned, client) in kept {
                check_files(&source.path, &planned)?;
                if let Some(client) = client
                    && planned.image_types().contains(&ImageType::VirtualMachine)
                {
                    *one_client_vms.entry(client).or_default() += 1;
                }
                let key = (product_id.clone(), planned.serial.clone());
                for delta in &planned.deltas {
                    plan.deltas
                        .push((key.0.clone(), key.1.clone(), delta.clone()));
                }
                plan.kept.insert(key.clone());
                if !held.contains(&key) {
                    plan.to_fetch.push(planned);
                }
            }
            let mut product_aliases = aliases(product, spec.alias_prefix.as_deref());
            product_aliases.retain(|name| {
                let valid = alias::validate(name).is_ok();
                if !valid {
                    dropped_aliases.insert(name.clone());
                }
                valid
            });
            for planned in plan
                .to_fetch
                .iter_mut()
                .filter(|v| &v.product.id == product_id)
            {
                planned.product.aliases = product_aliases.clone();
            }

            let mut described = describe(product_id, product);
            described.aliases = product_aliases;
            plan.products.insert(product_id.clone(), described);
        }
    }
    for (client, count) in one_client_vms {
        plan.notes.push(format!(
            "{count} virtual-machine image version(s) come from an upstream that publishes for {client} only: they carry the {client} agent, so the other client's VMs lack theirs; --filter type=container leaves them out"
        ));
    }
    if !dropped_aliases.is_empty() {
        plan.notes.push(format!(
            "upstream aliases left out (not valid alias names): {}",
            dropped_aliases.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if odd_serials > 0 {
        plan.notes.push(format!(
            "{odd_serials} upstream version(s) skipped: their keys do not start with a date YYYYMMDD, so clients would skip them too"
        ));
    }
    if no_arch > 0 {
        plan.notes.push(format!(
            "{no_arch} upstream product(s) skipped: they name no architecture, so clients would drop them"
        ));
    }
    Ok(plan)
}

/// The product as upstream describes it, aliases aside (they are set once checked).
fn describe(product_id: &str, product: &streams::Product) -> MirroredProduct {
    MirroredProduct {
        id: product_id.to_string(),
        os: product.os.clone(),
        release: product.release.clone(),
        arch: product.arch.clone(),
        variant: product.variant.clone(),
        aliases: BTreeSet::new(),
        requirements: if product.requirements.is_empty() {
            product.lxd_requirements.clone()
        } else {
            product.requirements.clone()
        },
    }
}

/// The upstream product's aliases, without the `/<arch>` forms clients derive, prefixed.
fn aliases(product: &streams::Product, prefix: Option<&str>) -> BTreeSet<String> {
    product
        .aliases
        .split(',')
        .map(str::trim)
        .filter(|name| {
            !name.is_empty()
                && !name
                    .rsplit_once('/')
                    .is_some_and(|(_, last)| is_arch_name(last))
        })
        .map(|name| format!("{}{name}", prefix.unwrap_or("")))
        .collect()
}

/// Which client alone the upstream's metadata serves, when only one.
fn one_client(version: &streams::Version) -> Option<&'static str> {
    let has = |ftypes: &[&str]| {
        version
            .items
            .values()
            .any(|item| ftypes.contains(&item.ftype.as_str()))
    };
    match (
        has(&["lxd.tar.xz", "lxd_combined.tar.gz"]),
        has(&["incus.tar.xz", "incus_combined.tar.gz"]),
    ) {
        (true, false) => Some("LXD"),
        (false, true) => Some("Incus"),
        _ => None,
    }
}

/// Sorts a version's items into what we publish, keeping only the image types the filters
/// allow; `None` when nothing of it is wanted.
fn classify(
    source: &str,
    product_id: &str,
    product: &streams::Product,
    serial: &str,
    version: &streams::Version,
    spec: &MirrorSpec,
) -> Result<Option<PlannedVersion>, MirrorError> {
    let wanted = |image_type: ImageType| {
        Filter::all_hold(&spec.filters, |key| match key {
            "os" => Some(product.os.as_str()),
            "release" => Some(product.release.as_str()),
            "arch" => Some(product.arch.as_str()),
            "variant" => Some(product.variant.as_str()),
            "type" => Some(image_type.as_str()),
            _ => None,
        })
    };
    // Item keys are arbitrary: find by ftype, first key first.
    let by_ftype = |ftype: &str| version.items.values().find(|item| item.ftype == ftype);
    let file = |item: &streams::Item| UpstreamFile {
        path: item.path.clone(),
        size: item.size,
        sha256: item.sha256.to_ascii_lowercase(),
    };
    let mirrored_product = describe(product_id, product);
    let metadata = by_ftype("lxd.tar.xz").or_else(|| by_ftype("incus.tar.xz"));
    let files = if let Some(metadata) = metadata {
        let mut roots = Vec::new();
        let squashfs = by_ftype("squashfs");
        for (ftype, kind) in [
            ("squashfs", RootKind::Squashfs),
            ("root.tar.xz", RootKind::TarXz),
            ("disk-kvm.img", RootKind::Qcow2),
        ] {
            let Some(root) = by_ftype(ftype) else {
                continue;
            };
            // One root per image type: a squashfs wins over a root.tar.xz.
            if kind == RootKind::TarXz && squashfs.is_some() {
                continue;
            }
            if !wanted(kind.image_type()) {
                continue;
            }
            let combined = match kind {
                RootKind::Squashfs => metadata.combined_squashfs_sha256.as_ref(),
                RootKind::Qcow2 => metadata.combined_disk_kvm_img_sha256.as_ref(),
                RootKind::TarXz => metadata
                    .combined_rootxz_sha256
                    .as_ref()
                    .or(metadata.combined_sha256.as_ref()),
            };
            // Clients drop a pair with no combined hash: so do we.
            let Some(combined) = combined.filter(|c| !c.is_empty()) else {
                continue;
            };
            roots.push(PlannedRoot {
                kind,
                file: file(root),
                combined: combined.to_ascii_lowercase(),
            });
        }
        if roots.is_empty() {
            return Ok(None);
        }
        PlannedFiles::Split {
            metadata: file(metadata),
            roots,
        }
    } else if let Some(unified) =
        by_ftype("lxd_combined.tar.gz").or_else(|| by_ftype("incus_combined.tar.gz"))
    {
        let image_type = match unified.combined_type.as_deref() {
            Some("virtual-machine") => ImageType::VirtualMachine,
            _ => ImageType::Container,
        };
        if !wanted(image_type) {
            return Ok(None);
        }
        PlannedFiles::Unified {
            tarball: file(unified),
            image_type,
        }
    } else {
        return Ok(None);
    };
    let has_squashfs = matches!(&files, PlannedFiles::Split { roots, .. }
        if roots.iter().any(|root| root.kind == RootKind::Squashfs));
    let mut deltas = Vec::new();
    if has_squashfs {
        for item in version.items.values().filter(|i| i.ftype == DELTA_FTYPE) {
            let Some(base) = item.delta_base.as_ref().filter(|b| !b.is_empty()) else {
                return Err(shape(
                    source,
                    product_id,
                    serial,
                    &item.path,
                    "is a delta without delta_base",
                ));
            };
            deltas.push(PlannedDelta {
                base: base.clone(),
                file: file(item),
            });
        }
    }
    Ok(Some(PlannedVersion {
        product: mirrored_product,
        serial: serial.to_string(),
        files,
        deltas,
    }))
}

/// Checks every file a taken version names.
fn check_files(source: &str, version: &PlannedVersion) -> Result<(), MirrorError> {
    let product_id = &version.product.id;
    let serial = &version.serial;
    let all = version
        .files()
        .into_iter()
        .chain(version.deltas.iter().map(|delta| &delta.file));
    for file in all {
        if let Err(problem) = check_relative_path(&file.path) {
            return Err(shape(
                source,
                product_id,
                serial,
                &file.path,
                &format!("has a path that {problem}"),
            ));
        }
        if !is_sha256(&file.sha256) {
            return Err(shape(
                source,
                product_id,
                serial,
                &file.path,
                "has no valid sha256",
            ));
        }
        if file.size == 0 {
            return Err(shape(source, product_id, serial, &file.path, "has no size"));
        }
    }
    if let PlannedFiles::Split { roots, .. } = &version.files {
        for root in roots {
            if !is_sha256(&root.combined) {
                return Err(shape(
                    source,
                    product_id,
                    serial,
                    &root.file.path,
                    "is paired with a combined hash that is not a sha256",
                ));
            }
        }
    }
    Ok(())
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn shape(source: &str, product_id: &str, serial: &str, path: &str, problem: &str) -> MirrorError {
    MirrorError::Upstream(format!(
        "upstream {source}: {product_id} version {serial}: item {} {problem}; nothing was mirrored",
        crate::fsutil::escape_controls(path)
    ))
}

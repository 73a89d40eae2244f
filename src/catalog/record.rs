//! The catalog's own record (`state/catalog.json`): everything the stream is generated from,
//! so that publishing never re-reads an image file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::image::{ImageType, RootKind};

/// Version of the state file's layout; bumped only with a migration.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogState {
    pub format: u32,
    /// Unix seconds of the last change; the stream's `updated` fields come from it, so that
    /// `rebuild` of an unchanged catalog writes identical bytes.
    pub updated: i64,
    /// Product id (`os:release:arch:variant`) → product.
    pub products: BTreeMap<String, Product>,
    /// Files that left the index and stay downloadable until their deadline.
    #[serde(default)]
    pub retired: Vec<RetiredFile>,
}

impl Default for CatalogState {
    fn default() -> Self {
        CatalogState {
            format: STATE_FORMAT,
            updated: 0,
            products: BTreeMap::new(),
            retired: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub os: String,
    pub release: String,
    /// Debian architecture name.
    pub arch: String,
    pub variant: String,
    pub aliases: BTreeSet<String>,
    /// Written as both `requirements` and `lxd_requirements`.
    #[serde(default)]
    pub requirements: BTreeMap<String, String>,
    /// Serial → version; serials sort as strings in time order.
    pub versions: BTreeMap<String, Version>,
    /// The user who created the product and may publish into it (admins always may). Absent
    /// in records written before products had owners: see [`Product::owner`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Other users an admin lets publish into the product.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub shared_with: BTreeSet<String>,
}

impl Product {
    pub fn id(os: &str, release: &str, arch: &str, variant: &str) -> String {
        format!("{os}:{release}:{arch}:{variant}")
    }

    /// Who owns the product: the recorded owner, or for a product recorded before owners
    /// existed, whoever imported its earliest image (by import time, not serial, so that a
    /// far-future serial cannot make anyone the owner).
    pub fn owner(&self) -> Option<&str> {
        if let Some(owner) = &self.owner {
            return Some(owner);
        }
        self.versions
            .values()
            .flat_map(|version| version.images())
            .min_by_key(|image| image.imported.at)
            .map(|image| image.imported.by.as_str())
    }

    /// True when `user` may publish into the product without being an admin.
    pub fn may_publish(&self, user: &str) -> bool {
        self.owner().is_none_or(|owner| owner == user) || self.shared_with.contains(user)
    }

    /// The image types any version of this product holds.
    pub fn image_types(&self) -> BTreeSet<ImageType> {
        self.versions
            .values()
            .flat_map(|version| version.images().map(|image| image.image_type))
            .collect()
    }

    /// The newest version holding an image of `image_type`: the one that owns the aliases.
    pub fn newest_of_type(&self, image_type: ImageType) -> Option<&str> {
        self.versions
            .iter()
            .rev()
            .find(|(_, version)| version.images().any(|image| image.image_type == image_type))
            .map(|(serial, _)| serial.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    pub description: String,
    /// `creation_date` from metadata.yaml, unix seconds.
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    pub files: VersionFiles,
}

/// The files of one version: a metadata tarball with up to one root per image type, or one
/// unified tarball.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "layout", rename_all = "snake_case")]
pub enum VersionFiles {
    Split {
        metadata: StoredFile,
        roots: BTreeMap<ImageType, Root>,
    },
    Unified {
        tarball: StoredFile,
        image_type: ImageType,
        imported: Provenance,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Root {
    pub kind: RootKind,
    pub file: StoredFile,
    /// sha256(metadata ‖ root): the image's fingerprint.
    pub combined_sha256: String,
    pub imported: Provenance,
    /// Deltas (VCDIFF, ftype `squashfs.vcdiff`) that turn an earlier version's squashfs root
    /// into this one, by that version's serial (`delta_base`). Only squashfs roots have them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deltas: BTreeMap<String, StoredFile>,
    /// Bases a delta was made from and not published, with the reason (larger than
    /// `catalog.delta_max_ratio` of the root, or it failed its check): not tried again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deltas_declined: BTreeMap<String, String>,
}

impl Root {
    /// A root as imported: no deltas yet.
    pub fn new(
        kind: RootKind,
        file: StoredFile,
        combined_sha256: String,
        imported: Provenance,
    ) -> Root {
        Root {
            kind,
            file,
            combined_sha256,
            imported,
            deltas: BTreeMap::new(),
            deltas_declined: BTreeMap::new(),
        }
    }
}

/// A published file: its path under `www/`, exact size and lowercase sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Who imported an image, when, and from which files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Provenance {
    pub by: String,
    pub at: i64,
    pub sources: Vec<String>,
    /// The mirror that brought the image (its name, or its upstream URL for a one-off sync);
    /// `None` for an import. A mirror only ever removes images of its own origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetiredFile {
    pub path: String,
    /// Lets an import of identical content take the file back instead of renaming around it.
    pub sha256: String,
    /// Unix seconds after which the file is deleted.
    pub delete_after: i64,
}

/// One image: a (metadata, root) pair or a unified tarball, as clients see it.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    pub image_type: ImageType,
    pub fingerprint: &'a str,
    /// The metadata tarball (split) or the unified tarball.
    pub metadata: &'a StoredFile,
    /// The root file of a split image.
    pub root: Option<&'a Root>,
    pub imported: &'a Provenance,
}

impl ImageRef<'_> {
    pub fn size(&self) -> u64 {
        self.metadata.size + self.root.map_or(0, |root| root.file.size)
    }
}

impl Version {
    pub fn images(&self) -> impl Iterator<Item = ImageRef<'_>> {
        let (split, unified) = match &self.files {
            VersionFiles::Split { metadata, roots } => (
                Some(roots.iter().map(move |(image_type, root)| ImageRef {
                    image_type: *image_type,
                    fingerprint: &root.combined_sha256,
                    metadata,
                    root: Some(root),
                    imported: &root.imported,
                })),
                None,
            ),
            VersionFiles::Unified {
                tarball,
                image_type,
                imported,
            } => (
                None,
                Some(ImageRef {
                    image_type: *image_type,
                    fingerprint: &tarball.sha256,
                    metadata: tarball,
                    root: None,
                    imported,
                }),
            ),
        };
        split.into_iter().flatten().chain(unified)
    }

    /// Every file the version publishes, deltas included.
    pub fn stored_files(&self) -> Vec<&StoredFile> {
        match &self.files {
            VersionFiles::Split { metadata, roots } => std::iter::once(metadata)
                .chain(
                    roots
                        .values()
                        .flat_map(|root| std::iter::once(&root.file).chain(root.deltas.values())),
                )
                .collect(),
            VersionFiles::Unified { tarball, .. } => vec![tarball],
        }
    }
}

impl Version {
    /// The container's squashfs root, the only root that gets deltas.
    pub fn squashfs_root(&self) -> Option<&Root> {
        match &self.files {
            VersionFiles::Split { roots, .. } => roots
                .get(&ImageType::Container)
                .filter(|root| root.kind == RootKind::Squashfs),
            VersionFiles::Unified { .. } => None,
        }
    }

    pub fn squashfs_root_mut(&mut self) -> Option<&mut Root> {
        match &mut self.files {
            VersionFiles::Split { roots, .. } => roots
                .get_mut(&ImageType::Container)
                .filter(|root| root.kind == RootKind::Squashfs),
            VersionFiles::Unified { .. } => None,
        }
    }
}

/// An image located in the catalog.
#[derive(Debug, Clone, Copy)]
pub struct LocatedImage<'a> {
    pub product_id: &'a str,
    pub product: &'a Product,
    pub serial: &'a str,
    pub version: &'a Version,
    pub image: ImageRef<'a>,
}

impl LocatedImage<'_> {
    /// The product aliases this image carries: those of the newest version of its type.
    pub fn owned_aliases(&self) -> Vec<&str> {
        if self.product.newest_of_type(self.image.image_type) == Some(self.serial) {
            self.product.aliases.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        }
    }
}

impl CatalogState {
    /// Every image, in product id and serial order (newest serial last).
    pub fn images(&self) -> impl Iterator<Item = LocatedImage<'_>> {
        self.products.iter().flat_map(|(product_id, product)| {
            product.versions.iter().flat_map(move |(serial, version)| {
                version.images().map(move |image| LocatedImage {
                    product_id,
                    product,
                    serial,
                    version,
                    image,
                })
            })
        })
    }

    /// True when a live item or a retired file uses `path`.
    pub fn path_in_use(&self, path: &str) -> bool {
        self.retired.iter().any(|retired| retired.path == path) || self.live_path(path).is_some()
    }

    /// The sha256 of the live file at `path`, if any.
    pub fn live_path(&self, path: &str) -> Option<&StoredFile> {
        self.products
            .values()
            .flat_map(|product| product.versions.values())
            .flat_map(|version| version.stored_files())
            .find(|file| file.path == path)
    }
}

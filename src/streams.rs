//! The simplestreams JSON that LXD and Incus read, generated from the catalog record.
//! `../shared/docs/simplestreams-contract.md` is the reference; the notes below tie each choice
//! to it. Go decodes these files strictly: one field of the wrong JSON type anywhere makes the
//! client list nothing, so every field here has exactly the type the clients declare.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::record::{CatalogState, Product, Version, VersionFiles};
use crate::image::{ImageType, RootKind};

pub const INDEX_PATH: &str = "streams/v1/index.json";
pub const IMAGES_PATH: &str = "streams/v1/images.json";

#[derive(Serialize)]
struct Index<'a> {
    format: &'static str,
    updated: &'a str,
    index: BTreeMap<&'static str, IndexEntry<'a>>,
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    /// Clients use an entry only when this is exactly `image-downloads`.
    datatype: &'static str,
    /// Relative to the remote URL, so a URL path prefix works.
    path: &'static str,
    format: &'static str,
    updated: &'a str,
    products: Vec<&'a str>,
}

#[derive(Serialize)]
struct Products<'a> {
    content_id: &'static str,
    datatype: &'static str,
    format: &'static str,
    updated: &'a str,
    products: BTreeMap<&'a str, ProductJson<'a>>,
}

#[derive(Serialize)]
struct ProductJson<'a> {
    arch: &'a str,
    os: &'a str,
    release: &'a str,
    release_title: &'a str,
    variant: &'a str,
    /// ONE comma-separated string: an array breaks the clients' decoding.
    aliases: String,
    supported: bool,
    /// Incus reads `requirements`, LXD 5.0.2 only `lxd_requirements`: both or neither.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    requirements: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    lxd_requirements: &'a BTreeMap<String, String>,
    versions: BTreeMap<&'a str, VersionJson<'a>>,
}

#[derive(Serialize)]
struct VersionJson<'a> {
    items: BTreeMap<&'static str, Item<'a>>,
}

#[derive(Serialize, Clone, Copy)]
struct Item<'a> {
    ftype: &'static str,
    path: &'a str,
    /// An exact JSON integer.
    size: u64,
    /// Lowercase hex; clients check it on every download.
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    combined_squashfs_sha256: Option<&'a str>,
    #[serde(
        rename = "combined_disk-kvm-img_sha256",
        skip_serializing_if = "Option::is_none"
    )]
    combined_disk_kvm_img_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    combined_rootxz_sha256: Option<&'a str>,
    /// The legacy name of `combined_rootxz_sha256`.
    #[serde(skip_serializing_if = "Option::is_none")]
    combined_sha256: Option<&'a str>,
    /// Read by Incus ≥ 7.1 on unified tarballs.
    #[serde(skip_serializing_if = "Option::is_none")]
    combined_type: Option<&'static str>,
}

impl<'a> Item<'a> {
    fn plain(ftype: &'static str, path: &'a str, size: u64, sha256: &'a str) -> Self {
        Item {
            ftype,
            path,
            size,
            sha256,
            combined_squashfs_sha256: None,
            combined_disk_kvm_img_sha256: None,
            combined_rootxz_sha256: None,
            combined_sha256: None,
            combined_type: None,
        }
    }

    fn with_ftype(&self, ftype: &'static str) -> Self {
        Item { ftype, ..*self }
    }
}

/// The two stream files, ready to publish (images.json first, then index.json).
pub struct Stream {
    pub images_json: Vec<u8>,
    pub index_json: Vec<u8>,
}

/// Generates both files. Deterministic: the same state gives the same bytes.
pub fn generate(state: &CatalogState) -> Stream {
    let updated = rfc2822(state.updated);
    let products: BTreeMap<&str, ProductJson<'_>> = state
        .products
        .iter()
        .filter(|(_, product)| !product.versions.is_empty())
        .map(|(id, product)| (id.as_str(), product_json(product)))
        .collect();
    let product_ids: Vec<&str> = products.keys().copied().collect();
    let images = Products {
        content_id: "images",
        datatype: "image-downloads",
        format: "products:1.0",
        updated: &updated,
        products,
    };
    let index = Index {
        format: "index:1.0",
        updated: &updated,
        index: BTreeMap::from([(
            "images",
            IndexEntry {
                datatype: "image-downloads",
                path: IMAGES_PATH,
                format: "products:1.0",
                updated: &updated,
                products: product_ids,
            },
        )]),
    };
    Stream {
        images_json: to_json(&images),
        index_json: to_json(&index),
    }
}

/// The product ids a stream generated from `state` lists: those with a version.
pub fn product_ids(state: &CatalogState) -> BTreeSet<String> {
    state
        .products
        .iter()
        .filter(|(_, product)| !product.versions.is_empty())
        .map(|(id, _)| id.clone())
        .collect()
}

/// The product ids a published index.json lists; `None` when the bytes are not one.
pub fn index_products(index_json: &[u8]) -> Option<BTreeSet<String>> {
    #[derive(Deserialize)]
    struct Index {
        index: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        products: Vec<String>,
    }
    let index: Index = serde_json::from_slice(index_json).ok()?;
    Some(
        index
            .index
            .into_values()
            .flat_map(|entry| entry.products)
            .collect(),
    )
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: every map key is a string.
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn product_json(product: &Product) -> ProductJson<'_> {
    ProductJson {
        arch: &product.arch,
        os: &product.os,
        release: &product.release,
        release_title: &product.release,
        variant: &product.variant,
        aliases: product
            .aliases
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(","),
        supported: true,
        requirements: &product.requirements,
        lxd_requirements: &product.requirements,
        versions: product
            .versions
            .iter()
            .map(|(serial, version)| (serial.as_str(), version_json(version)))
            .collect(),
    }
}

/// Every version publishes twin metadata items, `lxd.*` for LXD and `incus.*` for Incus, on the
/// same file with the same hashes: each client family reads only its own ftype.
fn version_json(version: &Version) -> VersionJson<'_> {
    let mut items = BTreeMap::new();
    match &version.files {
        VersionFiles::Split { metadata, roots } => {
            let mut meta = Item::plain(
                "lxd.tar.xz",
                &metadata.path,
                metadata.size,
                &metadata.sha256,
            );
            for root in roots.values() {
                let combined = Some(root.combined_sha256.as_str());
                let (item_key, ftype) = match root.kind {
                    RootKind::Squashfs => {
                        meta.combined_squashfs_sha256 = combined;
                        ("root.squashfs", "squashfs")
                    }
                    RootKind::Qcow2 => {
                        meta.combined_disk_kvm_img_sha256 = combined;
                        ("disk.qcow2", "disk-kvm.img")
                    }
                    RootKind::TarXz => {
                        meta.combined_rootxz_sha256 = combined;
                        meta.combined_sha256 = combined;
                        ("root.tar.xz", "root.tar.xz")
                    }
                };
                debug_assert_eq!(ftype, root.kind.ftype());
                items.insert(
                    item_key,
                    Item::plain(ftype, &root.file.path, root.file.size, &root.file.sha256),
                );
            }
            items.insert("incus.tar.xz", meta.with_ftype("incus.tar.xz"));
            items.insert("lxd.tar.xz", meta);
        }
        VersionFiles::Unified {
            tarball,
            image_type,
            ..
        } => {
            let mut unified = Item::plain(
                "lxd_combined.tar.gz",
                &tarball.path,
                tarball.size,
                &tarball.sha256,
            );
            unified.combined_type = Some(match image_type {
                ImageType::Container => "container",
                ImageType::VirtualMachine => "virtual-machine",
            });
            items.insert(
                "incus_combined.tar.gz",
                unified.with_ftype("incus_combined.tar.gz"),
            );
            items.insert("lxd_combined.tar.gz", unified);
        }
    }
    VersionJson { items }
}

/// RFC 2822 date in UTC, the format of the stream's `updated` fields.
pub fn rfc2822(unix: i64) -> String {
    let timestamp = jiff::Timestamp::from_second(unix).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    timestamp
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2822_is_utc() {
        assert_eq!(rfc2822(1_764_244_800), "Thu, 27 Nov 2025 12:00:00 +0000");
    }

    #[test]
    fn index_products_reads_what_generate_writes() {
        let stream = generate(&CatalogState::default());
        assert_eq!(index_products(&stream.index_json), Some(BTreeSet::new()));
        assert_eq!(index_products(b"{\"index\": 1}"), None);
        assert_eq!(index_products(b"not json"), None);
    }

    #[test]
    fn empty_catalog_still_gives_valid_files() {
        let stream = generate(&CatalogState::default());
        let index: serde_json::Value = serde_json::from_slice(&stream.index_json).unwrap();
        assert_eq!(index["index"]["images"]["products"], serde_json::json!([]));
        let images: serde_json::Value = serde_json::from_slice(&stream.images_json).unwrap();
        assert_eq!(images["products"], serde_json::json!({}));
    }
}

//! The record → simplestreams mapping: the two stream files generated from the catalog
//! record, in the model of [`crate::streams`]. Each product with a version becomes a product;
//! each version publishes its metadata twice (see [`version`]).

use std::collections::{BTreeMap, BTreeSet};

use super::record::{CatalogState, Product, Version, VersionFiles};
use crate::image::{ImageType, RootKind};
use crate::streams::{self, IMAGE_DOWNLOADS, INDEX_FORMAT, PRODUCTS_FORMAT};

/// The ftype of a delta between two squashfs roots.
pub const DELTA_FTYPE: &str = "squashfs.vcdiff";

/// The two stream files, ready to publish (images.json first, then index.json).
pub struct Stream {
    pub images_json: Vec<u8>,
    pub index_json: Vec<u8>,
}

/// Generates both files. Deterministic: the same state gives the same bytes.
pub fn generate(state: &CatalogState) -> Stream {
    let updated = streams::rfc2822(state.updated);
    let products: BTreeMap<String, streams::Product> = state
        .products
        .iter()
        .filter(|(_, product)| !product.versions.is_empty())
        .map(|(id, product)| (id.clone(), stream_product(product)))
        .collect();
    let product_ids: Vec<String> = products.keys().cloned().collect();
    let images = streams::Products {
        content_id: "images".into(),
        datatype: IMAGE_DOWNLOADS.into(),
        format: PRODUCTS_FORMAT.into(),
        updated: Some(updated.clone()),
        products,
    };
    let index = streams::Index {
        format: INDEX_FORMAT.into(),
        updated: Some(updated.clone()),
        index: BTreeMap::from([(
            "images".to_string(),
            streams::IndexEntry {
                datatype: IMAGE_DOWNLOADS.into(),
                path: streams::IMAGES_PATH.into(),
                format: Some(PRODUCTS_FORMAT.into()),
                updated: Some(updated),
                products: product_ids,
            },
        )]),
    };
    Stream {
        images_json: images.to_json(),
        index_json: index.to_json(),
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

fn stream_product(product: &Product) -> streams::Product {
    streams::Product {
        arch: product.arch.clone(),
        os: product.os.clone(),
        release: product.release.clone(),
        release_title: product.release.clone(),
        variant: product.variant.clone(),
        aliases: product
            .aliases
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(","),
        supported: Some(true),
        requirements: product.requirements.clone(),
        lxd_requirements: product.requirements.clone(),
        versions: product
            .versions
            .iter()
            .map(|(serial, version)| (serial.clone(), stream_version(product, version)))
            .collect(),
        ..streams::Product::default()
    }
}

/// Every version publishes twin metadata items, `lxd.*` for LXD and `incus.*` for Incus, on the
/// same file with the same hashes: each client family reads only its own ftype. A squashfs
/// root's deltas follow as `squashfs.vcdiff` items naming their base (`delta_base`).
fn stream_version(product: &Product, version: &Version) -> streams::Version {
    let mut items = BTreeMap::new();
    match &version.files {
        VersionFiles::Split { metadata, roots } => {
            let mut meta = streams::Item::plain(
                "lxd.tar.xz",
                &metadata.path,
                metadata.size,
                &metadata.sha256,
            );
            for root in roots.values() {
                let combined = Some(root.combined_sha256.clone());
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
                        meta.combined_rootxz_sha256 = combined.clone();
                        meta.combined_sha256 = combined;
                        ("root.tar.xz", "root.tar.xz")
                    }
                };
                debug_assert_eq!(ftype, root.kind.ftype());
                items.insert(
                    item_key.to_string(),
                    streams::Item::plain(ftype, &root.file.path, root.file.size, &root.file.sha256),
                );
            }
            if let Some(root) = version.squashfs_root() {
                for (base, delta) in &root.deltas {
                    // The record drops a delta with its base; a stream never names a missing one.
                    if product.versions.contains_key(base) {
                        let mut item = streams::Item::plain(
                            DELTA_FTYPE,
                            &delta.path,
                            delta.size,
                            &delta.sha256,
                        );
                        item.delta_base = Some(base.clone());
                        items.insert(format!("delta-{base}"), item);
                    }
                }
            }
            items.insert("incus.tar.xz".into(), twin(&meta, "incus.tar.xz"));
            items.insert("lxd.tar.xz".into(), meta);
        }
        VersionFiles::Unified {
            tarball,
            image_type,
            ..
        } => {
            let mut unified = streams::Item::plain(
                "lxd_combined.tar.gz",
                &tarball.path,
                tarball.size,
                &tarball.sha256,
            );
            unified.combined_type = Some(
                match image_type {
                    ImageType::Container => "container",
                    ImageType::VirtualMachine => "virtual-machine",
                }
                .into(),
            );
            items.insert(
                "incus_combined.tar.gz".into(),
                twin(&unified, "incus_combined.tar.gz"),
            );
            items.insert("lxd_combined.tar.gz".into(), unified);
        }
    }
    streams::Version {
        items,
        ..streams::Version::default()
    }
}

/// The same item under the other client family's ftype.
fn twin(item: &streams::Item, ftype: &str) -> streams::Item {
    streams::Item {
        ftype: ftype.to_string(),
        ..item.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_catalog_still_gives_valid_files() {
        let stream = generate(&CatalogState::default());
        let index: serde_json::Value = serde_json::from_slice(&stream.index_json).unwrap();
        assert_eq!(index["index"]["images"]["products"], serde_json::json!([]));
        let images: serde_json::Value = serde_json::from_slice(&stream.images_json).unwrap();
        assert_eq!(images["products"], serde_json::json!({}));
        assert_eq!(
            streams::index_products(&stream.index_json),
            Some(BTreeSet::new())
        );
    }
}

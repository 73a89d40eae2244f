//! Removing images: `remove` takes one out, `prune` keeps the newest N versions per product.
//! Both drop images from the index at once and retire their files for the grace period.

use serde::Serialize;

use super::record::{CatalogState, VersionFiles};
use super::{Catalog, CatalogError, Result, Transaction, find_by_fingerprint};
use crate::image::ImageType;

/// An image that left the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedImage {
    pub fingerprint: String,
    pub product_id: String,
    pub serial: String,
    #[serde(rename = "type")]
    pub image_type: ImageType,
}

impl Catalog {
    /// Removes the one image whose fingerprint starts with `prefix`.
    pub fn remove(&self, prefix: &str) -> Result<RemovedImage> {
        let mut txn = self.begin()?;
        let located = find_by_fingerprint(&txn.state, prefix)?;
        let removed = RemovedImage {
            fingerprint: located.image.fingerprint.to_string(),
            product_id: located.product_id.to_string(),
            serial: located.serial.to_string(),
            image_type: located.image.image_type,
        };
        remove_image(&mut txn, &removed)?;
        txn.commit()?;
        Ok(removed)
    }

    /// Removes every version but the newest `keep` of each product. With `dry_run`, only
    /// reports what would go.
    pub fn prune(&self, keep: usize, dry_run: bool) -> Result<Vec<RemovedImage>> {
        if keep == 0 {
            return Err(CatalogError::Invalid(
                "--keep must be at least 1; to drop a product entirely, remove its images".into(),
            ));
        }
        let mut txn = self.begin()?;
        let doomed = versions_beyond(&txn.state, keep);
        if !dry_run {
            for image in &doomed {
                remove_image(&mut txn, image)?;
            }
            txn.commit()?;
        }
        Ok(doomed)
    }
}

/// Images of every version older than the newest `keep` of its product.
fn versions_beyond(state: &CatalogState, keep: usize) -> Vec<RemovedImage> {
    let mut doomed = Vec::new();
    for (product_id, product) in &state.products {
        for (serial, version) in product.versions.iter().rev().skip(keep) {
            for image in version.images() {
                doomed.push(RemovedImage {
                    fingerprint: image.fingerprint.to_string(),
                    product_id: product_id.clone(),
                    serial: serial.clone(),
                    image_type: image.image_type,
                });
            }
        }
    }
    doomed
}

/// Takes one image out of the record; a version with no image left goes, and a product with
/// no version left goes with its aliases. Files no live item uses are retired, the image's
/// deltas with it (deltas based on it leave at commit).
pub(super) fn remove_image(txn: &mut Transaction<'_>, image: &RemovedImage) -> Result<()> {
    let not_found =
        || CatalogError::NotFound(format!("image {} is not in the catalog", image.fingerprint));
    let product = txn
        .state
        .products
        .get_mut(&image.product_id)
        .ok_or_else(not_found)?;
    let version = product
        .versions
        .get_mut(&image.serial)
        .ok_or_else(not_found)?;
    let mut dropped_files = Vec::new();
    let version_empty = match &mut version.files {
        VersionFiles::Split { metadata, roots } => {
            let root = roots.remove(&image.image_type).ok_or_else(not_found)?;
            dropped_files.push(root.file);
            dropped_files.extend(root.deltas.into_values());
            if roots.is_empty() {
                dropped_files.push(metadata.clone());
                true
            } else {
                false
            }
        }
        VersionFiles::Unified { tarball, .. } => {
            dropped_files.push(tarball.clone());
            true
        }
    };
    if version_empty {
        product.versions.remove(&image.serial);
    }
    if product.versions.is_empty() {
        txn.state.products.remove(&image.product_id);
    }
    for file in &dropped_files {
        txn.retire(file);
    }
    Ok(())
}

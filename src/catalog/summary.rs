//! One line per published image, as people and scripts see it: `list` prints these and the
//! catalog page shows them.

use serde::Serialize;

use super::record::{CatalogState, LocatedImage};
use crate::format::rfc3339;

/// One image as `list --format json` prints it. Field names are a stable interface.
#[derive(Debug, Serialize)]
pub struct ImageSummary {
    pub fingerprint: String,
    #[serde(rename = "type")]
    pub image_type: String,
    pub arch: String,
    pub os: String,
    pub release: String,
    pub variant: String,
    pub serial: String,
    pub aliases: Vec<String>,
    pub size: u64,
    pub created: String,
    pub product: String,
    pub description: String,
    /// The mirror the image came from (its name, or its upstream URL); absent for imports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl ImageSummary {
    pub fn of(located: &LocatedImage<'_>) -> Self {
        ImageSummary {
            fingerprint: located.image.fingerprint.to_string(),
            image_type: located.image.image_type.as_str().to_string(),
            arch: located.product.arch.clone(),
            os: located.product.os.clone(),
            release: located.product.release.clone(),
            variant: located.product.variant.clone(),
            serial: located.serial.to_string(),
            aliases: located
                .owned_aliases()
                .into_iter()
                .map(str::to_string)
                .collect(),
            size: located.image.size(),
            created: rfc3339(located.version.created),
            product: located.product_id.to_string(),
            description: located.version.description.clone(),
            origin: located.image.imported.origin.clone(),
        }
    }
}

/// Images sorted by product, then newest serial first.
pub fn summaries(state: &CatalogState) -> Vec<ImageSummary> {
    let mut images: Vec<ImageSummary> = state
        .images()
        .map(|located| ImageSummary::of(&located))
        .collect();
    images.sort_by(|a, b| {
        a.product
            .cmp(&b.product)
            .then(b.serial.cmp(&a.serial))
            .then(a.image_type.cmp(&b.image_type))
    });
    images
}

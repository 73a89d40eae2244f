//! `list`: every published image, newest first within a product.

use serde::Serialize;

use super::output::{Format, rfc3339, write_csv, write_json, write_table};
use super::{CommandError, Context};
use crate::catalog::import::human_size;
use crate::catalog::record::{CatalogState, LocatedImage};
use crate::catalog::short;

/// List the published images
#[derive(Debug, clap::Args)]
pub struct List {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

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

impl List {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let state = ctx.catalog.load()?;
        let images = summaries(&state);
        match self.format {
            Format::Json => write_json(ctx.out, &images)?,
            Format::Table => {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.aliases.join(", "),
                            short(&i.fingerprint).to_string(),
                            i.os.clone(),
                            i.release.clone(),
                            i.variant.clone(),
                            i.arch.clone(),
                            i.image_type.clone(),
                            i.serial.clone(),
                            human_size(i.size),
                        ]
                    })
                    .collect();
                write_table(
                    ctx.out,
                    &[
                        "ALIASES",
                        "FINGERPRINT",
                        "OS",
                        "RELEASE",
                        "VARIANT",
                        "ARCH",
                        "TYPE",
                        "SERIAL",
                        "SIZE",
                    ],
                    &rows,
                )?;
            }
            Format::Csv => {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.fingerprint.clone(),
                            i.image_type.clone(),
                            i.arch.clone(),
                            i.os.clone(),
                            i.release.clone(),
                            i.variant.clone(),
                            i.serial.clone(),
                            i.aliases.join(","),
                            i.size.to_string(),
                            i.created.clone(),
                            i.product.clone(),
                        ]
                    })
                    .collect();
                write_csv(
                    ctx.out,
                    &[
                        "fingerprint",
                        "type",
                        "arch",
                        "os",
                        "release",
                        "variant",
                        "serial",
                        "aliases",
                        "size",
                        "created",
                        "product",
                    ],
                    &rows,
                )?;
            }
        }
        Ok(())
    }
}

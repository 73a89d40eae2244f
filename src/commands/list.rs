//! `list`: every published image, newest first within a product.

use super::output::{Format, write_csv, write_json, write_table};
use super::{CommandError, Context};
use crate::catalog::short;
use crate::catalog::summary::summaries;
use crate::format::human_size;

/// List the published images
#[derive(Debug, clap::Args)]
pub struct List {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
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

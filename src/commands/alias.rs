//! `alias add|remove|list`: manage the names products answer to.

use serde::Serialize;

use super::output::{Format, write_csv, write_json, write_table};
use super::{CommandError, Context};

/// Add, remove or list aliases
#[derive(Debug, clap::Subcommand)]
pub enum Alias {
    /// Give a product another alias
    Add {
        /// The alias, e.g. debian/stable
        alias: String,
        /// The product: a product id, a fingerprint prefix or one of its aliases
        target: String,
    },
    /// Take an alias away
    Remove {
        alias: String,
        /// The product to take it from, when several products carry it
        #[arg(long, value_name = "PRODUCT")]
        product: Option<String>,
    },
    /// List every alias and the product it names
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Serialize)]
struct AliasRow<'a> {
    alias: &'a str,
    product: &'a str,
    arch: &'a str,
    types: Vec<&'static str>,
}

impl Alias {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        match self {
            Alias::Add { alias, target } => {
                let product = ctx.catalog.alias_add(&alias, &target)?;
                writeln!(ctx.out, "added alias {alias} to {product}")?;
            }
            Alias::Remove { alias, product } => {
                let product = ctx.catalog.alias_remove(&alias, product.as_deref())?;
                writeln!(ctx.out, "removed alias {alias} from {product}")?;
            }
            Alias::List { format } => {
                let state = ctx.catalog.load()?;
                let mut rows: Vec<AliasRow<'_>> = Vec::new();
                for (id, product) in &state.products {
                    let types: Vec<&'static str> = product
                        .image_types()
                        .into_iter()
                        .map(|t| t.as_str())
                        .collect();
                    for alias in &product.aliases {
                        rows.push(AliasRow {
                            alias,
                            product: id,
                            arch: &product.arch,
                            types: types.clone(),
                        });
                    }
                }
                rows.sort_by(|a, b| a.alias.cmp(b.alias).then(a.product.cmp(b.product)));
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.alias.to_string(),
                            r.product.to_string(),
                            r.arch.to_string(),
                            r.types.join(","),
                        ]
                    })
                    .collect();
                match format {
                    Format::Json => write_json(ctx.out, &rows)?,
                    Format::Table => {
                        write_table(ctx.out, &["ALIAS", "PRODUCT", "ARCH", "TYPES"], &cells)?
                    }
                    Format::Csv => {
                        write_csv(ctx.out, &["alias", "product", "arch", "types"], &cells)?
                    }
                }
            }
        }
        Ok(())
    }
}

//! `product list|owner|share|unshare`: who may publish into a product. A product belongs to
//! the user who created it; other publishers are refused unless an admin shares it with them
//! or hands it over.

use serde::Serialize;

use super::output::{Format, write_csv, write_json, write_table};
use super::{CommandError, Context};
use crate::access::authorized_keys::AuthorizedKeys;
use crate::access::sanitize_user_name;
use crate::catalog::ownership::ProductAccess;

/// Show or change who may publish into a product
#[derive(Debug, clap::Subcommand)]
pub enum Product {
    /// List every product with its owner and the users it is shared with
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Hand a product over to another user
    Owner {
        /// The product: a product id, a fingerprint prefix or one of its aliases
        product: String,
        /// The new owner, as `whoami` names them (the key's user name)
        user: String,
    },
    /// Let another user publish into a product too
    Share { product: String, user: String },
    /// Take a share back
    Unshare { product: String, user: String },
}

#[derive(Serialize)]
struct ProductRow<'a> {
    product: &'a str,
    owner: Option<&'a str>,
    shared_with: &'a [String],
}

impl Product {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        match self {
            Product::List { format } => {
                let products = ctx.catalog.product_access()?;
                let rows: Vec<ProductRow<'_>> = products
                    .iter()
                    .map(|p| ProductRow {
                        product: &p.product_id,
                        owner: p.owner.as_deref(),
                        shared_with: &p.shared_with,
                    })
                    .collect();
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.product.to_string(),
                            r.owner.unwrap_or("-").to_string(),
                            r.shared_with.join(","),
                        ]
                    })
                    .collect();
                match format {
                    Format::Json => write_json(ctx.out, &rows)?,
                    Format::Table => {
                        write_table(ctx.out, &["PRODUCT", "OWNER", "SHARED WITH"], &cells)?
                    }
                    Format::Csv => {
                        write_csv(ctx.out, &["product", "owner", "shared_with"], &cells)?
                    }
                }
            }
            Product::Owner { product, user } => {
                check_user_name(&user)?;
                let (access, previous) = ctx.catalog.product_set_owner(&product, &user)?;
                writeln!(
                    ctx.out,
                    "{} now belongs to {user} (before: {})",
                    access.product_id,
                    previous.as_deref().unwrap_or("nobody")
                )?;
                note_unknown_user(ctx, &user)?;
            }
            Product::Share { product, user } => {
                check_user_name(&user)?;
                let access = ctx.catalog.product_share(&product, &user)?;
                writeln!(ctx.out, "{user} may now publish into {}", describe(&access))?;
                note_unknown_user(ctx, &user)?;
            }
            Product::Unshare { product, user } => {
                let access = ctx.catalog.product_unshare(&product, &user)?;
                writeln!(
                    ctx.out,
                    "{user} may no longer publish into {}",
                    describe(&access)
                )?;
            }
        }
        Ok(())
    }
}

/// `debian:12:amd64:default (owner alice, shared with bob)`.
fn describe(access: &ProductAccess) -> String {
    let owner = access.owner.as_deref().unwrap_or("nobody");
    if access.shared_with.is_empty() {
        format!("{} (owner {owner})", access.product_id)
    } else {
        format!(
            "{} (owner {owner}, shared with {})",
            access.product_id,
            access.shared_with.join(", ")
        )
    }
}

/// User names are what `authorized_keys` makes of a key: anything else can never match.
fn check_user_name(user: &str) -> Result<(), CommandError> {
    if user.is_empty() || sanitize_user_name(user, "") != user {
        return Err(CommandError::Usage(format!(
            "{user:?} is not a user name (letters, digits, '.', '_', '-', '@'); `whoami` shows a key's user name"
        )));
    }
    Ok(())
}

/// A user no key is named after yet is allowed (the key may come later), but said.
fn note_unknown_user(ctx: &mut Context<'_>, user: &str) -> Result<(), CommandError> {
    let path = ctx.catalog.dirs().authorized_keys();
    let known = std::fs::read_to_string(&path)
        .map(|text| {
            AuthorizedKeys::parse(&text)
                .keys
                .iter()
                .any(|k| k.name == user)
        })
        .unwrap_or(false);
    if !known {
        writeln!(
            ctx.err,
            "note: no key in {} is named {user} yet",
            path.display()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_must_be_what_keys_become() {
        assert!(check_user_name("alice@laptop").is_ok());
        assert!(check_user_name("alice laptop").is_err());
        assert!(check_user_name("").is_err());
        assert!(check_user_name("../x").is_err());
    }
}

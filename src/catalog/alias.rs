//! Aliases: names a product's newest image answers to (`lxc launch remote:debian/12`).
//!
//! Clients give an alias to the first image, in their own sort order (os, release, variant,
//! serial, arch), that claims it for a given (architecture, image type). Two products of one
//! architecture and type claiming one name would be resolved by that sort, not by recency, so
//! the catalog refuses such a collision and names the owner. Clients derive the `/<arch>`
//! forms themselves; the catalog never writes them.

use std::collections::BTreeSet;

use super::record::{CatalogState, Product};
use super::{Catalog, CatalogError, Result, find_by_fingerprint};
use crate::image::{ImageMetadata, ImageType, metadata::is_arch_name};

/// `os/release` and `os/release/variant` for the `default` variant, `os/release/variant`
/// otherwise, as images.linuxcontainers.org names them.
pub fn defaults(meta: &ImageMetadata) -> Vec<String> {
    let base = format!("{}/{}", meta.os, meta.release);
    let with_variant = format!("{base}/{}", meta.variant);
    if meta.variant == "default" {
        vec![base, with_variant]
    } else {
        vec![with_variant]
    }
}

/// Checks an alias name: path-like words of letters, digits, `.`, `_`, `+`, `-`, joined by `/`.
pub fn validate(name: &str) -> Result<()> {
    let invalid = |why: &str| CatalogError::Invalid(format!("alias {name:?} {why}"));
    if name.is_empty() || name.len() > 128 {
        return Err(invalid("must be 1 to 128 characters long"));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err(invalid(
                "has an empty part (a leading, trailing or doubled '/')",
            ));
        }
        if part == "." || part == ".." {
            return Err(invalid("has a '.' or '..' part"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
        {
            return Err(invalid(
                "may hold only letters, digits, '.', '_', '+', '-' and '/'",
            ));
        }
    }
    if let Some((_, last)) = name.rsplit_once('/')
        && is_arch_name(last)
    {
        return Err(invalid(
            "ends in an architecture; clients add the /<arch> form themselves, give the alias without it",
        ));
    }
    Ok(())
}

/// Refuses when another product of the same architecture claims one of `product`'s aliases
/// for an image type `product` also holds (`types`).
pub fn check_collisions(
    state: &CatalogState,
    product_id: &str,
    product: &Product,
    types: &BTreeSet<ImageType>,
) -> Result<()> {
    for (other_id, other) in &state.products {
        if other_id == product_id || other.arch != product.arch {
            continue;
        }
        let shared_types: Vec<ImageType> =
            other.image_types().intersection(types).copied().collect();
        let Some(shared_type) = shared_types.first() else {
            continue;
        };
        if let Some(name) = product.aliases.intersection(&other.aliases).next() {
            return Err(CatalogError::Conflict(format!(
                "alias {name:?} already belongs to {other_id} for {} {shared_type} images; \
                 remove it there first (`alias remove {name} --product {other_id}`){}",
                product.arch,
                if product.versions.is_empty() {
                    " or import with --no-default-alias"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// Refuses when `user` (not an admin) gives `product_id` an alias in `added` that a product
/// they may not publish into carries: an alias is the name hosts launch, so claiming it for
/// another architecture or image type would take that product's users over too.
pub fn check_claims(
    state: &CatalogState,
    product_id: &str,
    added: &BTreeSet<String>,
    user: &str,
) -> Result<()> {
    for (other_id, other) in &state.products {
        if other_id == product_id || other.may_publish(user) {
            continue;
        }
        if let Some(name) = added.intersection(&other.aliases).next() {
            return Err(CatalogError::Conflict(format!(
                "alias {name:?} belongs to {other_id}, a product of {}; choose other aliases \
                 (--alias, --no-default-alias) or ask an admin to share {other_id} with you",
                other.owner().unwrap_or("an admin")
            )));
        }
    }
    Ok(())
}

/// The product an `alias add` target names: a product id, a fingerprint prefix or an alias.
pub(super) fn resolve_product(state: &CatalogState, target: &str) -> Result<String> {
    if state.products.contains_key(target) {
        return Ok(target.to_string());
    }
    let by_alias: Vec<&String> = state
        .products
        .iter()
        .filter(|(_, product)| product.aliases.contains(target))
        .map(|(id, _)| id)
        .collect();
    match by_alias.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        many => {
            return Err(CatalogError::Invalid(format!(
                "alias {target:?} names {} products ({}); give a product id or a fingerprint",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if target.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(find_by_fingerprint(state, target)?.product_id.to_string());
    }
    Err(CatalogError::NotFound(format!(
        "no product, alias or fingerprint matches {target:?}; `list` shows them"
    )))
}

impl Catalog {
    /// Adds `name` to the product `target` names. Returns the product id.
    pub fn alias_add(&self, name: &str, target: &str) -> Result<String> {
        validate(name)?;
        let mut txn = self.begin()?;
        let product_id = resolve_product(&txn.state, target)?;
        let Some(mut product) = txn.state.products.get(&product_id).cloned() else {
            return Err(CatalogError::NotFound(format!("no product {product_id}")));
        };
        if !product.aliases.insert(name.to_string()) {
            return Err(CatalogError::Conflict(format!(
                "{product_id} already has the alias {name:?}"
            )));
        }
        check_collisions(&txn.state, &product_id, &product, &product.image_types())?;
        txn.state.products.insert(product_id.clone(), product);
        txn.commit()?;
        Ok(product_id)
    }

    /// Removes `name` from the product that has it (`product` chooses when several do).
    /// Returns the product id.
    pub fn alias_remove(&self, name: &str, product: Option<&str>) -> Result<String> {
        let mut txn = self.begin()?;
        let owners: Vec<String> = txn
            .state
            .products
            .iter()
            .filter(|(id, p)| {
                p.aliases.contains(name) && product.is_none_or(|wanted| wanted == id.as_str())
            })
            .map(|(id, _)| id.clone())
            .collect();
        let product_id = match owners.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(CatalogError::NotFound(match product {
                    Some(product) => {
                        format!("{product} has no alias {name:?}; `alias list` shows the aliases")
                    }
                    None => {
                        format!("no product has the alias {name:?}; `alias list` shows the aliases")
                    }
                }));
            }
            many => {
                return Err(CatalogError::Invalid(format!(
                    "alias {name:?} belongs to {} products ({}); choose one with --product",
                    many.len(),
                    many.join(", ")
                )));
            }
        };
        if let Some(p) = txn.state.products.get_mut(&product_id) {
            p.aliases.remove(name);
        }
        txn.commit()?;
        Ok(product_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names() {
        for good in ["debian/12", "debian/bookworm/cloud", "mine", "a.b_c+d-e/1"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/x",
            "x/",
            "a//b",
            "a/../b",
            "a b",
            "a,b",
            "debian/12/amd64",
            "x/aarch64",
            "é",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_aliases_follow_linuxcontainers() {
        let mut meta = ImageMetadata {
            arch: "amd64",
            creation_date: 0,
            expiry_date: None,
            os: "debian".into(),
            release: "12".into(),
            variant: "default".into(),
            description: String::new(),
        };
        assert_eq!(defaults(&meta), ["debian/12", "debian/12/default"]);
        meta.variant = "cloud".into();
        assert_eq!(defaults(&meta), ["debian/12/cloud"]);
    }
}

//! Who may publish into a product: the user who created it (its owner), the users an admin
//! shared it with, and admins. A product recorded before products had owners belongs to
//! whoever imported its earliest image ([`Product::owner`]). Imports check this
//! (`import.rs`); admins hand products over and share them here.

use super::alias::resolve_product;
use super::record::Product;
use super::{Catalog, CatalogError, Result};

/// A product's id and who may publish into it, as `product list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductAccess {
    pub product_id: String,
    pub owner: Option<String>,
    pub shared_with: Vec<String>,
}

impl ProductAccess {
    fn of(product_id: &str, product: &Product) -> ProductAccess {
        ProductAccess {
            product_id: product_id.to_string(),
            owner: product.owner().map(str::to_string),
            shared_with: product.shared_with.iter().cloned().collect(),
        }
    }
}

impl Catalog {
    /// Every product with its owner and the users it is shared with.
    pub fn product_access(&self) -> Result<Vec<ProductAccess>> {
        let state = self.load()?;
        Ok(state
            .products
            .iter()
            .map(|(id, product)| ProductAccess::of(id, product))
            .collect())
    }

    /// Hands the product `target` names (an id, alias or fingerprint) over to `user`.
    /// Returns the product as it is now and its previous owner.
    pub fn product_set_owner(
        &self,
        target: &str,
        user: &str,
    ) -> Result<(ProductAccess, Option<String>)> {
        self.change_product(target, |product_id, product| {
            let previous = product.owner().map(str::to_string);
            if previous.as_deref() == Some(user) {
                return Err(CatalogError::Conflict(format!(
                    "{product_id} already belongs to {user}"
                )));
            }
            product.owner = Some(user.to_string());
            // The owner needs no share.
            product.shared_with.remove(user);
            Ok(previous)
        })
    }

    /// Lets `user` publish into the product `target` names, besides its owner.
    pub fn product_share(&self, target: &str, user: &str) -> Result<ProductAccess> {
        self.change_product(target, |product_id, product| {
            if product.owner() == Some(user) {
                return Err(CatalogError::Conflict(format!(
                    "{product_id} belongs to {user} already; nothing to share"
                )));
            }
            if !product.shared_with.insert(user.to_string()) {
                return Err(CatalogError::Conflict(format!(
                    "{product_id} is already shared with {user}"
                )));
            }
            Ok(())
        })
        .map(|(access, ())| access)
    }

    /// Takes back what [`Catalog::product_share`] gave.
    pub fn product_unshare(&self, target: &str, user: &str) -> Result<ProductAccess> {
        self.change_product(target, |product_id, product| {
            if !product.shared_with.remove(user) {
                return Err(CatalogError::NotFound(format!(
                    "{product_id} is not shared with {user}; `product list` shows who may publish into it"
                )));
            }
            Ok(())
        })
        .map(|(access, ())| access)
    }

    /// Applies `change` to one product in a transaction and commits it.
    fn change_product<T>(
        &self,
        target: &str,
        change: impl FnOnce(&str, &mut Product) -> Result<T>,
    ) -> Result<(ProductAccess, T)> {
        let mut txn = self.begin()?;
        let product_id = resolve_product(&txn.state, target)?;
        let Some(mut product) = txn.state.products.get(&product_id).cloned() else {
            return Err(CatalogError::NotFound(format!("no product {product_id}")));
        };
        // Deduced owners become recorded ones with the first change.
        if product.owner.is_none() {
            product.owner = product.owner().map(str::to_string);
        }
        let result = change(&product_id, &mut product)?;
        let access = ProductAccess::of(&product_id, &product);
        txn.state.products.insert(product_id, product);
        txn.commit()?;
        Ok((access, result))
    }
}

//! Every MUST of `shared/docs/simplestreams-contract.md`, checked on a published tree: the JSON
//! types the Go clients decode strictly, the twin metadata items, the combined fingerprints
//! recomputed from the files, unique fingerprints, and files that match their items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// One image as a client pairs it: (fingerprint, product id, serial, type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedImage {
    pub fingerprint: String,
    pub product: String,
    pub serial: String,
    pub image_type: String,
}

const KNOWN_ARCHES: &[&str] = &[
    "amd64", "arm64", "armhf", "i386", "ppc64el", "s390x", "riscv64",
];
const METADATA_FTYPES: &[&str] = &["lxd.tar.xz", "incus.tar.xz"];
const UNIFIED_FTYPES: &[&str] = &["lxd_combined.tar.gz", "incus_combined.tar.gz"];

fn is_lower_hex64(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn string<'a>(value: &'a Value, field: &str, place: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_else(|| {
        panic!(
            "{place}: `{field}` must be a JSON string, got {:?}",
            value.get(field)
        )
    })
}

/// When the tree is looked at, which decides how index.json's products relate to images.json's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Every publication finished: the index lists exactly the products of images.json.
    AtRest,
    /// A publication may have been cut between its two renames (the writer was killed and no
    /// one has recovered yet). The index never names a product images.json lacks, but may not
    /// yet name one that just arrived: LXD and Incus read every product of images.json and
    /// need only the entry's list to be non-empty, so clients still see a whole stream.
    Interrupted,
}

/// Checks the tree under `www`, with every publication finished, and returns the images
/// clients will see.
pub fn assert_contract(www: &Path) -> Vec<PublishedImage> {
    assert_contract_at(www, Moment::AtRest)
}

/// [`assert_contract`] at the given [`Moment`].
pub fn assert_contract_at(www: &Path, moment: Moment) -> Vec<PublishedImage> {
    let index: Value = serde_json::from_slice(
        &std::fs::read(www.join("streams/v1/index.json")).expect("index.json"),
    )
    .expect("index.json parses");
    assert_eq!(index["format"], "index:1.0");
    string(&index, "updated", "index");
    let entry = &index["index"]["images"];
    assert_eq!(
        entry["datatype"], "image-downloads",
        "the index entry is used only with this datatype"
    );
    assert_eq!(entry["format"], "products:1.0");
    let products_path = string(entry, "path", "index entry");
    assert!(
        !products_path.starts_with('/'),
        "path must be relative to the remote URL"
    );
    let listed: BTreeSet<String> = entry["products"]
        .as_array()
        .expect("products is a list")
        .iter()
        .map(|p| p.as_str().expect("product id string").to_string())
        .collect();

    let images: Value =
        serde_json::from_slice(&std::fs::read(www.join(products_path)).expect("products file"))
            .expect("images.json parses");
    assert_eq!(images["content_id"], "images");
    assert_eq!(images["datatype"], "image-downloads");
    assert_eq!(images["format"], "products:1.0");
    string(&images, "updated", "images");
    let products = images["products"]
        .as_object()
        .expect("products is an object");
    let in_images: BTreeSet<String> = products.keys().cloned().collect();
    match moment {
        Moment::AtRest => assert_eq!(
            listed, in_images,
            "index lists exactly the products of images.json"
        ),
        Moment::Interrupted => assert!(
            listed.is_subset(&in_images),
            "index names products images.json lacks: {:?}",
            listed.difference(&in_images).collect::<Vec<_>>()
        ),
    }

    let mut published = Vec::new();
    for (product_id, product) in products {
        let place = format!("product {product_id}");
        let arch = string(product, "arch", &place);
        assert!(
            KNOWN_ARCHES.contains(&arch),
            "{place}: arch {arch} is unknown to LXD 5.0.2"
        );
        for field in ["os", "release", "release_title", "variant"] {
            string(product, field, &place);
        }
        // Ours are os:release:arch:variant; a mirror keeps upstream ids, such as Ubuntu's
        // com.ubuntu.cloud:server:24.04:amd64: either way one part is the arch.
        assert!(
            product_id.split(':').any(|part| part == arch),
            "{place}: product id carries the arch {arch}"
        );
        let aliases = string(product, "aliases", &place);
        assert!(
            !aliases.contains(' '),
            "{place}: aliases are comma-separated without spaces"
        );
        for alias in aliases.split(',').filter(|a| !a.is_empty()) {
            assert!(
                !alias.ends_with(&format!("/{arch}")),
                "{place}: the /arch alias form is for clients to derive: {alias}"
            );
        }
        if let Some(supported) = product.get("supported") {
            assert!(supported.is_boolean(), "{place}: supported must be a bool");
        }
        match (product.get("requirements"), product.get("lxd_requirements")) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert_eq!(
                    a, b,
                    "{place}: requirements and lxd_requirements must be identical"
                );
                for value in a.as_object().expect("requirements map").values() {
                    assert!(value.is_string(), "{place}: requirement values are strings");
                }
            }
            _ => panic!("{place}: emit both requirements and lxd_requirements or neither"),
        }
        let versions = product["versions"].as_object().expect("versions object");
        let serials: Vec<&String> = versions.keys().collect();
        for serial in &serials {
            assert!(
                serial.len() >= 8 && jiff::civil::Date::strptime("%Y%m%d", &serial[..8]).is_ok(),
                "{place}: serial {serial} must start with YYYYMMDD"
            );
        }
        for (serial, version) in versions {
            published.extend(check_version(www, product_id, serial, version));
        }
    }
    let mut fingerprints = BTreeMap::new();
    for image in &published {
        if let Some(previous) = fingerprints.insert(image.fingerprint.clone(), image.clone()) {
            panic!(
                "fingerprint {} is published twice: {previous:?} and {image:?}",
                image.fingerprint
            );
        }
    }
    published.sort();
    published
}

fn check_version(
    www: &Path,
    product_id: &str,
    serial: &str,
    version: &Value,
) -> Vec<PublishedImage> {
    let place = format!("{product_id} {serial}");
    let items = version["items"].as_object().expect("items object");
    let mut by_ftype: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for (key, item) in items {
        let item_place = format!("{place} item {key}");
        let ftype = string(item, "ftype", &item_place);
        let path = string(item, "path", &item_place);
        assert!(
            !path.starts_with('/') && !path.contains(".."),
            "{item_place}: path must be relative and clean"
        );
        let size = item["size"]
            .as_u64()
            .unwrap_or_else(|| panic!("{item_place}: size must be a JSON integer"));
        let sha256 = string(item, "sha256", &item_place);
        assert!(
            is_lower_hex64(sha256),
            "{item_place}: sha256 must be lowercase hex"
        );
        let bytes =
            std::fs::read(www.join(path)).unwrap_or_else(|e| panic!("{item_place}: {path}: {e}"));
        assert_eq!(bytes.len() as u64, size, "{item_place}: size");
        assert_eq!(
            super::sha256_of(&[&www.join(path)]),
            sha256,
            "{item_place}: sha256"
        );
        by_ftype.entry(ftype).or_default().push(item);
    }

    let mut images = Vec::new();
    let image = |fingerprint: &str, image_type: &str| PublishedImage {
        fingerprint: fingerprint.to_string(),
        product: product_id.to_string(),
        serial: serial.to_string(),
        image_type: image_type.to_string(),
    };
    // Twins: the lxd.* and incus.* items are the same file with the same hashes.
    for twins in [METADATA_FTYPES, UNIFIED_FTYPES] {
        let lxd = by_ftype.get(twins[0]);
        let incus = by_ftype.get(twins[1]);
        assert_eq!(
            lxd.is_some(),
            incus.is_some(),
            "{place}: {} and {} come as twins",
            twins[0],
            twins[1]
        );
        let (Some(lxd), Some(incus)) = (lxd, incus) else {
            continue;
        };
        assert_eq!(lxd.len(), 1, "{place}: one {} item", twins[0]);
        let mut a = lxd[0].clone();
        let mut b = incus[0].clone();
        a.as_object_mut().expect("item").remove("ftype");
        b.as_object_mut().expect("item").remove("ftype");
        assert_eq!(a, b, "{place}: twin items differ beyond their ftype");
    }
    if let Some(unified) = by_ftype.get("lxd_combined.tar.gz") {
        let item = unified[0];
        let image_type = item
            .get("combined_type")
            .and_then(Value::as_str)
            .unwrap_or("container");
        images.push(image(string(item, "sha256", &place), image_type));
    }
    if let Some(meta) = by_ftype.get("lxd.tar.xz") {
        let meta = meta[0];
        let meta_path = www.join(string(meta, "path", &place));
        let roots = [
            ("squashfs", "combined_squashfs_sha256", "container"),
            (
                "disk-kvm.img",
                "combined_disk-kvm-img_sha256",
                "virtual-machine",
            ),
            ("root.tar.xz", "combined_rootxz_sha256", "container"),
        ];
        let mut any_root = false;
        for (ftype, field, image_type) in roots {
            let Some(root_items) = by_ftype.get(ftype) else {
                assert!(
                    meta.get(field).is_none(),
                    "{place}: {field} without a {ftype} item"
                );
                continue;
            };
            any_root = true;
            for root in root_items {
                let root_path = www.join(string(root, "path", &place));
                let combined = super::sha256_of(&[&meta_path, &root_path]);
                assert_eq!(
                    string(meta, field, &place),
                    combined,
                    "{place}: {field} must be sha256(metadata ‖ root)"
                );
                if ftype == "root.tar.xz" {
                    assert_eq!(
                        string(meta, "combined_sha256", &place),
                        combined,
                        "{place}: the legacy combined_sha256"
                    );
                }
                images.push(image(&combined, image_type));
            }
        }
        assert!(any_root, "{place}: metadata without a root");
    }
    images
}

//! The simplestreams model: `streams/v1/index.json` and the products files it names, as typed
//! values that serialise to exactly what LXD and Incus read and deserialise what upstream
//! servers publish. It knows nothing of the catalog: `catalog::stream_files` maps the record
//! onto it, and a mirror reads an upstream tree with it.
//!
//! `../shared/docs/simplestreams-contract.md` is the reference; the notes below tie each field
//! to it. Go decodes these files strictly: one field of the wrong JSON type anywhere makes the
//! client list nothing, so every field here has exactly the type the clients declare.
//!
//! Reading is tolerant as the clients are: unknown fields are ignored, and fields upstream
//! servers leave out (`variant` on Ubuntu's products, `updated` on an index entry) read as
//! empty. Field order is the order written, and the bytes we publish must not change between
//! releases (`verify` compares them), so new optional fields are skipped when empty.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::{Deserialize, Serialize};

pub const INDEX_PATH: &str = "streams/v1/index.json";
pub const IMAGES_PATH: &str = "streams/v1/images.json";

/// Characters escaped when a tree path goes into a URL.
const URL_PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A tree path (an item's `path`, a key of the tree) as it goes into a URL: each segment
/// percent-encoded, the `/` between them kept.
pub fn url_path(path: &str) -> String {
    utf8_percent_encode(path, URL_PATH_ESCAPES).to_string()
}

pub const INDEX_FORMAT: &str = "index:1.0";
pub const PRODUCTS_FORMAT: &str = "products:1.0";
/// Clients use an index entry only when its datatype is exactly this.
pub const IMAGE_DOWNLOADS: &str = "image-downloads";

/// `streams/v1/index.json`: which products files exist and what each lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    /// Keyed by content id (ours: `images`; Ubuntu's: `com.ubuntu.cloud:released:download`).
    pub index: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Clients use an entry only when this is exactly [`IMAGE_DOWNLOADS`].
    #[serde(default)]
    pub datatype: String,
    /// Relative to the remote URL, so a URL path prefix works.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    #[serde(default)]
    pub products: Vec<String>,
}

/// A products file (ours: `streams/v1/images.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Products {
    #[serde(default)]
    pub content_id: String,
    #[serde(default)]
    pub datatype: String,
    #[serde(default)]
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
    #[serde(default)]
    pub products: BTreeMap<String, Product>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Debian names (amd64, arm64, …): clients silently drop a product with an unknown one.
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub release_title: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// ONE comma-separated string: an array breaks the clients' decoding.
    #[serde(default)]
    pub aliases: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported: Option<bool>,
    /// `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_eol: Option<String>,
    /// Incus reads `requirements`, LXD 5.0.2 only `lxd_requirements`: write both or neither.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requirements: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lxd_requirements: BTreeMap<String, String>,
    /// Keyed by serial; the first 8 characters must read as `YYYYMMDD` or clients skip it.
    #[serde(default)]
    pub versions: BTreeMap<String, Version>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Item keys mean nothing to clients; they read each item's `ftype`.
    #[serde(default)]
    pub items: BTreeMap<String, Item>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// What the file is to a client: `lxd.tar.xz`, `incus.tar.xz`, `squashfs`,
    /// `disk-kvm.img`, `root.tar.xz`, `lxd_combined.tar.gz`, … (others are not images).
    #[serde(default)]
    pub ftype: String,
    /// Relative to the remote URL.
    pub path: String,
    /// An exact JSON integer.
    #[serde(default)]
    pub size: u64,
    /// Lowercase hex; clients check it on every download.
    #[serde(default)]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// On a metadata item: the fingerprint of it with the version's squashfs root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_squashfs_sha256: Option<String>,
    /// On a metadata item: the fingerprint of it with the version's qcow2 disk (a VM).
    #[serde(
        default,
        rename = "combined_disk-kvm-img_sha256",
        skip_serializing_if = "Option::is_none"
    )]
    pub combined_disk_kvm_img_sha256: Option<String>,
    /// On a metadata item: the fingerprint of it with the version's root.tar.xz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_rootxz_sha256: Option<String>,
    /// The legacy name of `combined_rootxz_sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_sha256: Option<String>,
    /// `container` or `virtual-machine`; read by Incus ≥ 7.1 on unified tarballs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_type: Option<String>,
    /// On a delta (`squashfs.vcdiff`): the serial of the version it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_base: Option<String>,
}

impl Item {
    /// An item with no combined hashes.
    pub fn plain(ftype: &str, path: &str, size: u64, sha256: &str) -> Item {
        Item {
            ftype: ftype.to_string(),
            path: path.to_string(),
            size,
            sha256: sha256.to_string(),
            ..Item::default()
        }
    }
}

impl Index {
    /// Reads an index.json.
    pub fn from_json(bytes: &[u8]) -> Result<Index, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The entries clients use: datatype `image-downloads`, by content id.
    pub fn image_downloads(&self) -> impl Iterator<Item = (&str, &IndexEntry)> {
        self.index
            .iter()
            .filter(|(_, entry)| entry.datatype == IMAGE_DOWNLOADS)
            .map(|(id, entry)| (id.as_str(), entry))
    }

    /// Every product id the index lists, across its entries.
    pub fn product_ids(&self) -> BTreeSet<String> {
        self.index
            .values()
            .flat_map(|entry| entry.products.iter().cloned())
            .collect()
    }

    /// The bytes to publish: compact JSON and a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

impl Products {
    /// Reads a products file.
    pub fn from_json(bytes: &[u8]) -> Result<Products, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The bytes to publish: compact JSON and a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The product ids a published index.json lists; `None` when the bytes are not one.
pub fn index_products(index_json: &[u8]) -> Option<BTreeSet<String>> {
    Index::from_json(index_json)
        .ok()
        .map(|index| index.product_ids())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: every map key is a string.
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// RFC 2822 date in UTC, the format of the stream's `updated` fields.
pub fn rfc2822(unix: i64) -> String {
    let timestamp = jiff::Timestamp::from_second(unix).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    timestamp
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_escape_each_segment_and_keep_the_slashes() {
        assert_eq!(
            url_path("images/a b/20251127_07:42/x#y?%.squashfs"),
            "images/a%20b/20251127_07:42/x%23y%3F%25.squashfs"
        );
    }

    #[test]
    fn rfc2822_is_utc() {
        assert_eq!(rfc2822(1_764_244_800), "Thu, 27 Nov 2025 12:00:00 +0000");
    }

    #[test]
    fn index_products_reads_every_entry() {
        let index = br#"{"format":"index:1.0","index":{
            "a":{"datatype":"image-downloads","path":"streams/v1/a.json","products":["p1","p2"]},
            "b":{"datatype":"image-ids","path":"streams/v1/b.json","products":["p3"]}}}"#;
        let ids: Vec<String> = index_products(index).unwrap().into_iter().collect();
        assert_eq!(ids, ["p1", "p2", "p3"]);
        assert_eq!(index_products(b"{\"index\": 1}"), None);
        assert_eq!(index_products(b"not json"), None);
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let mut item = Item::plain("lxd.tar.xz", "images/a/lxd.tar.xz", 12, "ab");
        item.combined_squashfs_sha256 = Some("cd".into());
        let products = Products {
            content_id: "images".into(),
            datatype: IMAGE_DOWNLOADS.into(),
            format: PRODUCTS_FORMAT.into(),
            updated: Some(rfc2822(0)),
            products: BTreeMap::from([(
                "debian:12:amd64:default".into(),
                Product {
                    arch: "amd64".into(),
                    aliases: "debian/12,debian/bookworm".into(),
                    supported: Some(true),
                    versions: BTreeMap::from([(
                        "20261127_0000".into(),
                        Version {
                            items: BTreeMap::from([("lxd.tar.xz".into(), item)]),
                            ..Version::default()
                        },
                    )]),
                    ..Product::default()
                },
            )]),
        };
        let bytes = products.to_json();
        assert!(bytes.ends_with(b"}\n"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""aliases":"debian/12,debian/bookworm""#),
            "{text}"
        );
        assert!(!text.contains("md5") && !text.contains("label"), "{text}");
        assert_eq!(Products::from_json(&bytes).unwrap(), products);
    }

    /// An index as Ubuntu's cloud-images publishes it: another content id and path, another
    /// datatype beside it, fields we do not model.
    #[test]
    fn an_upstream_index_reads() {
        let index = br#"{"index": {
            "com.ubuntu.cloud:released:download": {"datatype": "image-downloads",
                "path": "streams/v1/com.ubuntu.cloud:released:download.json",
                "updated": "Thu, 26 Nov 2026 08:00:00 +0000", "format": "products:1.0",
                "products": ["com.ubuntu.cloud:server:24.04:amd64"],
                "clouds": [{"region": "x"}], "content_id": "com.ubuntu.cloud:released:download"},
            "com.ubuntu.cloud:released:aws": {"datatype": "image-ids", "path": "streams/v1/aws.json",
                "products": ["com.ubuntu.cloud:server:24.04:amd64"]}},
            "updated": "Thu, 26 Nov 2026 08:00:00 +0000", "format": "index:1.0"}"#;
        let index = Index::from_json(index).unwrap();
        let downloads: Vec<(&str, &str)> = index
            .image_downloads()
            .map(|(id, entry)| (id, entry.path.as_str()))
            .collect();
        assert_eq!(
            downloads,
            [(
                "com.ubuntu.cloud:released:download",
                "streams/v1/com.ubuntu.cloud:released:download.json"
            )]
        );
    }

    /// Products as images.linuxcontainers.org (incus.tar.xz metadata, a delta, colons in
    /// serials) and Ubuntu (lxd.tar.xz, md5, items that are not images, no variant) write them.
    #[test]
    fn upstream_products_read() {
        let lxc_ci = br#"{"content_id": "images", "datatype": "image-downloads",
            "format": "products:1.0", "updated": "x",
            "products": {"debian:bookworm:amd64:default": {"aliases": "debian/bookworm/default,debian/12",
                "arch": "amd64", "os": "Debian", "release": "bookworm", "release_title": "bookworm",
                "variant": "default", "requirements": {"secureboot": "false"},
                "versions": {"20261127_05:24": {"items": {
                    "incus.tar.xz": {"ftype": "incus.tar.xz", "path": "images/debian/bookworm/amd64/default/20261127_05:24/incus.tar.xz",
                        "size": 880, "sha256": "aa", "combined_squashfs_sha256": "bb",
                        "combined_disk-kvm-img_sha256": "cc"},
                    "root.squashfs": {"ftype": "squashfs", "path": "p/rootfs.squashfs", "size": 9, "sha256": "dd"},
                    "delta-20261126_05:24": {"ftype": "squashfs.vcdiff", "path": "p/delta-20261126_05:24.vcdiff",
                        "size": 3, "sha256": "ee", "delta_base": "20261126_05:24"}}}}}}}"#;
        let products = Products::from_json(lxc_ci).unwrap();
        let product = &products.products["debian:bookworm:amd64:default"];
        assert_eq!(product.requirements["secureboot"], "false");
        let items = &product.versions["20261127_05:24"].items;
        assert_eq!(
            items["incus.tar.xz"]
                .combined_disk_kvm_img_sha256
                .as_deref(),
            Some("cc")
        );
        assert_eq!(
            items["delta-20261126_05:24"].delta_base.as_deref(),
            Some("20261126_05:24")
        );

        let ubuntu = br#"{"content_id": "com.ubuntu.cloud:released:download",
            "datatype": "image-downloads", "format": "products:1.0", "license": "x",
            "products": {"com.ubuntu.cloud:server:24.04:amd64": {"aliases": "24.04,noble,lts",
                "arch": "amd64", "os": "ubuntu", "release": "noble", "release_codename": "Noble Numbat",
                "release_title": "24.04 LTS", "support_eol": "2029-05-31", "supported": true,
                "version": "24.04", "versions": {"20261127": {"label": "release",
                    "pubname": "ubuntu-noble-24.04-amd64-server-20261127", "items": {
                    "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "server/releases/noble/release-20261127/ubuntu-24.04-server-cloudimg-amd64-lxd.tar.xz",
                        "size": 432, "sha256": "ff", "md5": "00", "combined_rootxz_sha256": "11",
                        "combined_sha256": "11", "combined_squashfs_sha256": "22"},
                    "manifest": {"ftype": "manifest", "path": "m.manifest", "size": 1, "sha256": "33", "md5": "44"}}}}}}}"#;
        let products = Products::from_json(ubuntu).unwrap();
        let product = &products.products["com.ubuntu.cloud:server:24.04:amd64"];
        assert_eq!(product.variant, "");
        assert_eq!(product.supported, Some(true));
        assert_eq!(product.version.as_deref(), Some("24.04"));
        let version = &product.versions["20261127"];
        assert_eq!(version.label.as_deref(), Some("release"));
        assert_eq!(version.items["lxd.tar.xz"].md5.as_deref(), Some("00"));
        assert_eq!(version.items["manifest"].ftype, "manifest");
    }
}

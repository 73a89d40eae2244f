//! `import-tree`: migrating from an old layout (lxd-image-server, simplestream-maintainer) and
//! from any simplestreams tree on disk, keeping serials and aliases, refusing wrong hashes.

use std::path::Path;

use crate::support;
use crate::support::contract::assert_contract;
use crate::support::{Meta, TestDir};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// An lxd-image-server / simplestream-maintainer style tree: no JSON, files named by role.
fn old_layout(root: &Path) {
    let v1 = root.join("images/iats/xenial/amd64/default/20180716_12:00");
    let v2 = root.join("images/iats/xenial/amd64/default/20180801_09:30");
    for dir in [&v1, &v2] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let meta1 = Meta {
        os: "iats",
        release: "xenial",
        created: 1_531_742_400,
        ..Meta::default()
    };
    support::metadata_tarball(&v1.join("lxd.tar.xz"), &meta1);
    support::squashfs(&v1.join("rootfs.squashfs"), "v1");
    let meta2 = Meta {
        os: "iats",
        release: "xenial",
        created: 1_533_115_800,
        ..Meta::default()
    };
    support::metadata_tarball(&v2.join("lxd.tar.xz"), &meta2);
    support::squashfs(&v2.join("rootfs.squashfs"), "v2");
    support::qcow2(&v2.join("disk.qcow2"), "v2-vm");
    std::fs::write(v2.join("rootfs.20180716_12:00.vcdiff"), b"delta").unwrap();
    std::fs::write(v2.join("notes.txt"), b"left by an admin").unwrap();
}

#[test]
fn old_layouts_keep_their_serials() {
    let source = TestDir::new();
    old_layout(source.path());
    let t = TestDir::new();
    let dry = t.ok(&["import-tree", p(source.path()), "--dry-run"]);
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would import"))
            .count(),
        3,
        "{dry}"
    );
    assert!(list(&t).is_empty(), "a dry run imports nothing");

    let out = t.ok(&["import-tree", p(source.path())]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("imported")).count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("skipped amd64") || out.contains("notes.txt: it is a text file"),
        "{out}"
    );
    let images = assert_contract(&t.www());
    let serials: Vec<&str> = images.iter().map(|i| i.serial.as_str()).collect();
    assert!(
        serials.contains(&"20180716_12:00") && serials.contains(&"20180801_09:30"),
        "{serials:?}"
    );
    let listed = list(&t);
    let newest_container = listed
        .iter()
        .find(|i| i["serial"] == "20180801_09:30" && i["type"] == "container")
        .unwrap();
    assert_eq!(
        newest_container["aliases"],
        serde_json::json!(["iats/xenial", "iats/xenial/default"])
    );
    // The tree is copied, not moved.
    assert!(
        source
            .path()
            .join("images/iats/xenial/amd64/default/20180716_12:00/rootfs.squashfs")
            .exists()
    );
    // Running it again changes nothing.
    let again = t.ok(&["import-tree", p(source.path())]);
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("already published"))
            .count(),
        3,
        "{again}"
    );
}

fn list(t: &TestDir) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&t.ok(&["list", "--format", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn simplestreams_trees_keep_serials_aliases_and_requirements() {
    // The source: a tree another server published (here, one of ours).
    let source = TestDir::new();
    let meta = source.file("m.tar.xz");
    support::metadata_tarball(&meta, &Meta::default());
    let root = source.file("r.squashfs");
    support::squashfs(&root, "src");
    source.ok(&[
        "import",
        p(&meta),
        p(&root),
        "--serial",
        "20250101_0101",
        "--alias",
        "custom/name",
        "--requirement",
        "secureboot=false",
    ]);
    let unified = source.file("u.tar.gz");
    support::unified_tarball(
        &unified,
        &Meta {
            release: "u",
            ..Meta::default()
        },
        false,
        "u",
    );
    source.ok(&[
        "import",
        p(&unified),
        "--no-default-alias",
        "--alias",
        "uni",
    ]);
    let published = assert_contract(&source.www());

    let t = TestDir::new();
    t.ok(&["import-tree", p(&source.www())]);
    assert_eq!(assert_contract(&t.www()), published);
    let product = &t.read_json("streams/v1/images.json")["products"]["testos:1:amd64:default"];
    assert_eq!(product["aliases"], "custom/name,testos/1,testos/1/default");
    assert_eq!(
        product["requirements"],
        serde_json::json!({"secureboot": "false"})
    );
    assert!(product["versions"].get("20250101_0101").is_some());
    assert_eq!(
        t.read_json("streams/v1/images.json")["products"]["testos:u:amd64:default"]["aliases"],
        "uni"
    );
}

#[test]
fn wrong_combined_hashes_are_refused_image_by_image() {
    let source = TestDir::new();
    let meta = source.file("m.tar.xz");
    support::metadata_tarball(&meta, &Meta::default());
    let root = source.file("r.squashfs");
    support::squashfs(&root, "good");
    source.ok(&["import", p(&meta), p(&root)]);
    let meta2 = source.file("m2.tar.xz");
    support::metadata_tarball(
        &meta2,
        &Meta {
            release: "2",
            ..Meta::default()
        },
    );
    let root2 = source.file("r2.squashfs");
    support::squashfs(&root2, "bad");
    source.ok(&["import", p(&meta2), p(&root2)]);
    // Break product 2's fingerprint the way lxd-image-server did: hash of the wrong bytes.
    let images_path = source.www().join("streams/v1/images.json");
    let mut images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&images_path).unwrap()).unwrap();
    let wrong = "0".repeat(64);
    for twin in ["lxd.tar.xz", "incus.tar.xz"] {
        let versions = images["products"]["testos:2:amd64:default"]["versions"]
            .as_object_mut()
            .unwrap();
        let version = versions.values_mut().next().unwrap();
        version["items"][twin]["combined_squashfs_sha256"] =
            serde_json::Value::String(wrong.clone());
    }
    std::fs::write(&images_path, serde_json::to_vec(&images).unwrap()).unwrap();

    let t = TestDir::new();
    let output = t.run(&["import-tree", p(&source.www())]);
    assert_eq!(output.status.code(), Some(1));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains(&format!("refused testos:2:amd64:default 20251127_1200: the source tree gives fingerprint {wrong}")), "{out}");
    assert!(out.contains("imported "), "{out}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 images of the tree were refused"));
    assert_eq!(assert_contract(&t.www()).len(), 1);
    // Walking the files instead of trusting the JSON recomputes the fingerprints.
    t.ok(&["import-tree", p(&source.www()), "--layout-only"]);
    assert_eq!(assert_contract(&t.www()).len(), 2);
}

#[test]
fn import_tree_needs_a_directory() {
    let t = TestDir::new();
    let err = t.fails(&["import-tree", p(&t.file("nowhere"))], 1);
    assert!(err.contains("is not a directory"), "{err}");
}

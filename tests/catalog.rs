//! The catalog through the local CLI: import, list, info, alias, remove, prune, verify and
//! rebuild; every published tree is checked against the client contract.

use std::path::{Path, PathBuf};

use crate::support;
use crate::support::contract::{PublishedImage, assert_contract};
use crate::support::{Meta, TestDir};

const PRODUCT: &str = "testos:1:amd64:default";
const SERIAL: &str = "20251127_1200";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A metadata tarball plus a squashfs root in `t`, returning their paths.
fn split_container(t: &TestDir, name: &str, meta: &Meta) -> (PathBuf, PathBuf) {
    let metadata = t.file(&format!("{name}.tar.xz"));
    let root = t.file(&format!("{name}.squashfs"));
    support::metadata_tarball(&metadata, meta);
    support::squashfs(&root, name);
    (metadata, root)
}

fn images_json(t: &TestDir) -> serde_json::Value {
    t.read_json("streams/v1/images.json")
}

fn items(t: &TestDir, product: &str, serial: &str) -> serde_json::Value {
    images_json(t)["products"][product]["versions"][serial]["items"].clone()
}

fn list_json(t: &TestDir) -> Vec<serde_json::Value> {
    let text = t.ok(&["list", "--format", "json"]);
    serde_json::from_str::<serde_json::Value>(&text)
        .expect("list json")
        .as_array()
        .expect("array")
        .clone()
}

fn image(fingerprint: &str, product: &str, serial: &str, image_type: &str) -> PublishedImage {
    PublishedImage {
        fingerprint: fingerprint.into(),
        product: product.into(),
        serial: serial.into(),
        image_type: image_type.into(),
    }
}

#[test]
fn split_container_import_publishes_twin_metadata_items() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "one", &Meta::default());
    let out = t.ok(&["import", p(&metadata), p(&root)]);
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    assert!(
        out.starts_with(&format!(
            "published {fingerprint} (container, {PRODUCT} version {SERIAL}"
        )),
        "{out}"
    );
    assert!(out.contains("aliases: testos/1, testos/1/default"), "{out}");

    assert_eq!(
        assert_contract(&t.www()),
        [image(&fingerprint, PRODUCT, SERIAL, "container")]
    );
    let product = &images_json(&t)["products"][PRODUCT];
    assert_eq!(product["aliases"], "testos/1,testos/1/default");
    let items = &product["versions"][SERIAL]["items"];
    for twin in ["lxd.tar.xz", "incus.tar.xz"] {
        assert_eq!(
            items[twin]["combined_squashfs_sha256"],
            fingerprint.as_str()
        );
    }
    assert!(items["lxd.tar.xz"].get("combined_sha256").is_none());
    // The local CLI copies by default: the sources stay.
    assert!(metadata.exists() && root.exists());
}

#[test]
fn one_version_holds_a_container_and_a_vm_with_the_same_metadata() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "c", &Meta::default());
    let disk = t.file("disk.img");
    support::qcow2(&disk, "vm");
    t.ok(&["import", p(&metadata), p(&root)]);
    let out = t.ok(&["import", p(&metadata), p(&disk)]);
    assert!(
        out.contains(&format!("(virtual-machine, {PRODUCT} version {SERIAL}")),
        "{out}"
    );

    let container = support::sha256_of(&[&metadata, &root]);
    let vm = support::sha256_of(&[&metadata, &disk]);
    let mut expected = vec![
        image(&container, PRODUCT, SERIAL, "container"),
        image(&vm, PRODUCT, SERIAL, "virtual-machine"),
    ];
    expected.sort();
    assert_eq!(assert_contract(&t.www()), expected);
    let items = items(&t, PRODUCT, SERIAL);
    assert_eq!(items["disk.qcow2"]["ftype"], "disk-kvm.img");
    assert_eq!(
        items["lxd.tar.xz"]["combined_disk-kvm-img_sha256"],
        vm.as_str()
    );
    assert_eq!(
        items["lxd.tar.xz"]["combined_squashfs_sha256"],
        container.as_str()
    );
    // One metadata file serves both images.
    let version_dir = t
        .www()
        .join(format!("images/testos/1/amd64/default/{SERIAL}"));
    assert_eq!(std::fs::read_dir(version_dir).unwrap().count(), 3);
}

#[test]
fn root_tar_xz_writes_both_combined_field_names() {
    let t = TestDir::new();
    let metadata = t.file("meta.tar.xz");
    let root = t.file("rootfs.tar.xz");
    support::metadata_tarball(&metadata, &Meta::default());
    support::root_tar_xz(&root, "xz");
    t.ok(&["import", p(&metadata), p(&root)]);
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    assert_eq!(
        assert_contract(&t.www()),
        [image(&fingerprint, PRODUCT, SERIAL, "container")]
    );
    let items = items(&t, PRODUCT, SERIAL);
    assert_eq!(items["root.tar.xz"]["ftype"], "root.tar.xz");
    assert_eq!(
        items["lxd.tar.xz"]["combined_rootxz_sha256"],
        fingerprint.as_str()
    );
    assert_eq!(items["lxd.tar.xz"]["combined_sha256"], fingerprint.as_str());
}

#[test]
fn unified_tarballs_publish_combined_twins() {
    let t = TestDir::new();
    let container = t.file("c.tar.gz");
    let vm = t.file("v.tar.gz");
    support::unified_tarball(&container, &Meta::default(), false, "c");
    support::unified_tarball(
        &vm,
        &Meta {
            release: "2",
            ..Meta::default()
        },
        true,
        "v",
    );
    t.ok(&["import", p(&container)]);
    t.ok(&["import", p(&vm)]);
    let c_fp = support::sha256_of(&[&container]);
    let v_fp = support::sha256_of(&[&vm]);
    let mut expected = vec![
        image(&c_fp, PRODUCT, SERIAL, "container"),
        image(&v_fp, "testos:2:amd64:default", SERIAL, "virtual-machine"),
    ];
    expected.sort();
    assert_eq!(assert_contract(&t.www()), expected);
    let items = items(&t, "testos:2:amd64:default", SERIAL);
    assert_eq!(
        items["lxd_combined.tar.gz"]["combined_type"],
        "virtual-machine"
    );
    assert_eq!(items["incus_combined.tar.gz"]["sha256"], v_fp.as_str());
}

#[test]
fn unified_tarball_streams_from_stdin() {
    let t = TestDir::new();
    let unified = t.file("u.tar.gz");
    support::unified_tarball(&unified, &Meta::default(), false, "stdin");
    let output = t.run_with_stdin(
        &["import", "-", "--format", "json"],
        &std::fs::read(&unified).unwrap(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "published");
    assert_eq!(
        report["fingerprint"],
        support::sha256_of(&[&unified]).as_str()
    );
    assert_contract(&t.www());

    // A stream cut short publishes nothing.
    let t2 = TestDir::new();
    let bytes = std::fs::read(&unified).unwrap();
    let output = t2.run_with_stdin(&["import", "-"], &bytes[..bytes.len() / 2]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("standard input is truncated or corrupt"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(list_json(&t2).is_empty());
}

#[test]
fn metadata_tarballs_in_every_compression_are_accepted() {
    for compression in ["xz", "gz", "bz2", "zst", ""] {
        let t = TestDir::new();
        let metadata = t.file("meta");
        let meta = Meta::default();
        support::tarball(
            &metadata,
            &[("metadata.yaml", meta.yaml().as_bytes())],
            compression,
        );
        let root = t.file("root");
        support::squashfs(&root, compression);
        t.ok(&["import", p(&metadata), p(&root)]);
        assert_eq!(
            assert_contract(&t.www()).len(),
            1,
            "compression {compression:?}"
        );
    }
}

#[test]
fn roots_are_typed_by_magic_not_by_name() {
    // `lxc image export` names files after the fingerprint; names can also simply lie.
    let t = TestDir::new();
    let metadata = t.file("0123abcd.tar.xz");
    support::metadata_tarball(&metadata, &Meta::default());
    let squashfs_named_qcow2 = t.file("disk.qcow2");
    support::squashfs(&squashfs_named_qcow2, "liar");
    t.ok(&["import", p(&metadata), p(&squashfs_named_qcow2)]);
    let images = list_json(&t);
    assert_eq!(images[0]["type"], "container");
    assert!(items(&t, PRODUCT, SERIAL).get("root.squashfs").is_some());
}

#[test]
fn list_formats_are_stable() {
    let t = TestDir::new();
    let (metadata, root) = split_container(
        &t,
        "l",
        &Meta {
            arch: "aarch64",
            variant: Some("cloud"),
            ..Meta::default()
        },
    );
    t.ok(&["import", p(&metadata), p(&root), "--alias", "mine/latest"]);
    let images = list_json(&t);
    assert_eq!(images.len(), 1);
    let image = &images[0];
    for (field, expected) in [
        ("type", "container"),
        ("arch", "arm64"),
        ("os", "testos"),
        ("release", "1"),
        ("variant", "cloud"),
        ("serial", SERIAL),
    ] {
        assert_eq!(image[field], expected, "{field}");
    }
    assert_eq!(
        image["aliases"],
        serde_json::json!(["mine/latest", "testos/1/cloud"])
    );
    assert_eq!(
        image["size"],
        std::fs::metadata(&metadata).unwrap().len() + std::fs::metadata(&root).unwrap().len()
    );
    assert_eq!(image["created"], "2025-11-27T12:00:00Z");
    assert_eq!(
        image["fingerprint"],
        support::sha256_of(&[&metadata, &root]).as_str()
    );

    let csv = t.ok(&["list", "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("fingerprint,type,arch,os,release,variant,serial,aliases,size,created,product")
    );
    assert!(
        lines.next().unwrap().contains(
            ",container,arm64,testos,1,cloud,20251127_1200,\"mine/latest,testos/1/cloud\","
        )
    );

    let table = t.ok(&["list"]);
    assert!(table.starts_with("ALIASES"), "{table}");
    assert!(
        table.contains("arm64") && table.contains(&image["fingerprint"].as_str().unwrap()[..12]),
        "{table}"
    );
}

#[test]
fn info_finds_images_by_alias_and_fingerprint_prefix() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "i", &Meta::default());
    t.ok(&[
        "import",
        p(&metadata),
        p(&root),
        "--requirement",
        "secureboot=false",
    ]);
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    let by_alias = t.ok(&["info", "testos/1"]);
    assert!(
        by_alias.contains(&format!("Fingerprint: {fingerprint}")),
        "{by_alias}"
    );
    assert!(
        by_alias.contains("Requirements: secureboot=false"),
        "{by_alias}"
    );
    assert!(by_alias.contains("root.squashfs (squashfs"), "{by_alias}");
    let by_prefix: serde_json::Value =
        serde_json::from_str(&t.ok(&["info", &fingerprint[..6], "--format", "json"])).unwrap();
    assert_eq!(by_prefix[0]["fingerprint"], fingerprint.as_str());
    assert_eq!(
        by_prefix[0]["imported_by"]
            .as_str()
            .map(|s| s.starts_with("local:")),
        Some(true)
    );
    let err = t.fails(&["info", "nope/none"], 1);
    assert!(
        err.contains("no image has the alias or fingerprint \"nope/none\""),
        "{err}"
    );
}

#[test]
fn requirements_are_written_for_both_client_families() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "r", &Meta::default());
    t.ok(&[
        "import",
        p(&metadata),
        p(&root),
        "--requirement",
        "secureboot=false",
        "--requirement",
        "cgroup=v2",
    ]);
    assert_contract(&t.www());
    let product = &images_json(&t)["products"][PRODUCT];
    let expected = serde_json::json!({"cgroup": "v2", "secureboot": "false"});
    assert_eq!(product["requirements"], expected);
    assert_eq!(product["lxd_requirements"], expected);
}

#[test]
fn aliases_defaults_extras_and_collisions() {
    let t = TestDir::new();
    let (meta_a, root_a) = split_container(&t, "a", &Meta::default());
    t.ok(&["import", p(&meta_a), p(&root_a), "--alias", "stable"]);
    // Another product of the same arch and type may not take "stable"...
    let (meta_b, root_b) = split_container(
        &t,
        "b",
        &Meta {
            release: "2",
            ..Meta::default()
        },
    );
    let before = t.snapshot_www();
    let err = t.fails(&["import", p(&meta_b), p(&root_b), "--alias", "stable"], 1);
    assert!(
        err.contains(&format!(
            "alias \"stable\" already belongs to {PRODUCT} for amd64 container images"
        )),
        "{err}"
    );
    assert_eq!(t.snapshot_www(), before, "a refused import changes nothing");
    // ...but a product of another architecture may.
    let (meta_c, root_c) = split_container(
        &t,
        "c",
        &Meta {
            arch: "aarch64",
            ..Meta::default()
        },
    );
    t.ok(&["import", p(&meta_c), p(&root_c), "--alias", "stable"]);
    // --no-default-alias.
    t.ok(&[
        "import",
        p(&meta_b),
        p(&root_b),
        "--no-default-alias",
        "--alias",
        "two",
    ]);
    assert_eq!(
        images_json(&t)["products"]["testos:2:amd64:default"]["aliases"],
        "two"
    );

    // alias add / remove / list.
    let err = t.fails(&["alias", "add", "two", PRODUCT], 1);
    assert!(
        err.contains("already belongs to testos:2:amd64:default"),
        "{err}"
    );
    t.ok(&["alias", "add", "newest", "two"]);
    assert_eq!(
        images_json(&t)["products"]["testos:2:amd64:default"]["aliases"],
        "newest,two"
    );
    let err = t.fails(&["alias", "remove", "stable"], 1);
    assert!(
        err.contains("belongs to 2 products") && err.contains("--product"),
        "{err}"
    );
    t.ok(&[
        "alias",
        "remove",
        "stable",
        "--product",
        "testos:1:arm64:default",
    ]);
    let listed = t.ok(&["alias", "list", "--format", "csv"]);
    assert!(
        listed.contains(&format!("stable,{PRODUCT},amd64,container")),
        "{listed}"
    );
    assert!(
        !listed.contains("stable,testos:1:arm64:default"),
        "{listed}"
    );
    let err = t.fails(&["alias", "add", "x/amd64", PRODUCT], 1);
    assert!(err.contains("ends in an architecture"), "{err}");
    assert_contract(&t.www());
}

#[test]
fn a_container_and_a_vm_may_share_an_alias_across_products() {
    let t = TestDir::new();
    let (meta_a, root_a) = split_container(&t, "a", &Meta::default());
    t.ok(&["import", p(&meta_a), p(&root_a), "--alias", "shared"]);
    let meta_b = t.file("b.tar.xz");
    support::metadata_tarball(
        &meta_b,
        &Meta {
            release: "2",
            ..Meta::default()
        },
    );
    let disk = t.file("b.qcow2");
    support::qcow2(&disk, "b");
    t.ok(&["import", p(&meta_b), p(&disk), "--alias", "shared"]);
    // ...but then product 2 may not add a container claiming it.
    let root_b = t.file("b.squashfs");
    support::squashfs(&root_b, "b-container");
    let err = t.fails(&["import", p(&meta_b), p(&root_b)], 1);
    assert!(
        err.contains("alias \"shared\" already belongs to testos:1:amd64:default"),
        "{err}"
    );
}

#[test]
fn serials_conflicts_and_duplicates() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "s", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    // The same files again: a no-op.
    let again = t.ok(&["import", p(&metadata), p(&root)]);
    assert!(again.starts_with("already published"), "{again}");
    // Different metadata with the same creation minute: refused.
    let other_meta = t.file("other.tar.xz");
    support::tarball(
        &other_meta,
        &[
            ("metadata.yaml", Meta::default().yaml().as_bytes()),
            ("templates/x.tpl", b"different"),
        ],
        "xz",
    );
    let other_root = t.file("other.squashfs");
    support::squashfs(&other_root, "other");
    let before = t.snapshot_www();
    let err = t.fails(&["import", p(&other_meta), p(&other_root)], 1);
    assert_eq!(
        err,
        format!(
            "simplestream-server: version {SERIAL} of {PRODUCT} already exists with a different metadata tarball; pass --serial to publish this one as a new version"
        )
    );
    assert_eq!(t.snapshot_www(), before);
    // A second container root in the same version: refused.
    let err = t.fails(&["import", p(&metadata), p(&other_root)], 1);
    assert!(err.contains("already holds a container image"), "{err}");
    // The same image under another serial: a duplicate fingerprint.
    let err = t.fails(
        &[
            "import",
            p(&metadata),
            p(&root),
            "--serial",
            "20251128_0000",
        ],
        1,
    );
    assert!(
        err.contains("is already published as testos:1:amd64:default version 20251127_1200"),
        "{err}"
    );
    // --serial publishes a new version; serials must start with a date.
    t.ok(&[
        "import",
        p(&other_meta),
        p(&other_root),
        "--serial",
        "20251128_0000",
    ]);
    let err = t.fails(
        &[
            "import",
            p(&other_meta),
            p(&other_root),
            "--serial",
            "latest",
        ],
        1,
    );
    assert!(err.contains("serial \"latest\""), "{err}");
    let versions: Vec<String> = images_json(&t)["products"][PRODUCT]["versions"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(versions, ["20251127_1200", "20251128_0000"]);
    assert_contract(&t.www());
}

#[test]
fn remove_keeps_files_for_the_grace_period() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "rm", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    let file = t.www().join(format!(
        "images/testos/1/amd64/default/{SERIAL}/root.squashfs"
    ));
    let out = t.ok(&["remove", &fingerprint[..8]]);
    assert!(
        out.contains(&format!("removed {fingerprint}")) && out.contains("1 h"),
        "{out}"
    );
    assert!(images_json(&t)["products"].as_object().unwrap().is_empty());
    assert!(
        file.exists(),
        "files stay downloadable during the grace period"
    );
    assert_contract(&t.www());
    t.ok(&["verify"]);
    // With the grace period over, the next change deletes them.
    t.ok(&["--grace-period", "0", "rebuild"]);
    assert!(
        file.exists(),
        "a transaction deletes only files whose deadline has passed"
    );
    let (m2, r2) = split_container(
        &t,
        "rm2",
        &Meta {
            release: "9",
            ..Meta::default()
        },
    );
    let out = t
        .command(&["import", p(&m2), p(&r2)])
        .env("SIMPLESTREAM_CATALOG_GRACE_PERIOD_SECS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    // The deadline recorded at removal was one hour: still there.
    assert!(file.exists());
    // Removing with a zero grace period deletes on the next change.
    let fp2 = support::sha256_of(&[&m2, &r2]);
    t.ok(&["--grace-period", "0", "remove", &fp2]);
    t.ok(&["rebuild"]);
    assert!(
        !t.www()
            .join(format!("images/testos/9/amd64/default/{SERIAL}"))
            .exists()
    );
    let err = t.fails(&["remove", "abc"], 1);
    assert!(
        err.contains("no image has a fingerprint starting with abc"),
        "{err}"
    );
}

#[test]
fn prune_keeps_the_newest_versions() {
    let t = TestDir::new();
    let mut fingerprints = Vec::new();
    for (i, day) in ["20250101_0000", "20250201_0000", "20250301_0000"]
        .iter()
        .enumerate()
    {
        let (metadata, root) = split_container(&t, &format!("v{i}"), &Meta::default());
        t.ok(&["import", p(&metadata), p(&root), "--serial", day]);
        fingerprints.push(support::sha256_of(&[&metadata, &root]));
    }
    let dry = t.ok(&["prune", "--keep", "1", "--dry-run"]);
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would remove"))
            .count(),
        2,
        "{dry}"
    );
    assert_eq!(list_json(&t).len(), 3);
    let out = t.ok(&["prune", "--keep", "1"]);
    assert!(
        out.contains(&fingerprints[0])
            && out.contains(&fingerprints[1])
            && !out.contains(&fingerprints[2]),
        "{out}"
    );
    let left = list_json(&t);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["serial"], "20250301_0000");
    assert_eq!(
        left[0]["aliases"],
        serde_json::json!(["testos/1", "testos/1/default"])
    );
    assert!(
        t.fails(&["prune", "--keep", "0"], 1)
            .contains("--keep must be at least 1")
    );
}

#[test]
fn verify_reports_every_drift() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "v", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    let out = t.ok(&["verify"]);
    assert!(
        out.contains("checked 1 images in 2 files") && out.contains("0 problems"),
        "{out}"
    );

    let dir = t
        .www()
        .join(format!("images/testos/1/amd64/default/{SERIAL}"));
    let mut bytes = std::fs::read(dir.join("root.squashfs")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(dir.join("root.squashfs"), &bytes).unwrap();
    std::fs::write(dir.join("stray.bin"), b"orphan").unwrap();
    std::fs::write(t.www().join("streams/v1/images.json"), b"{}").unwrap();
    let output = t.run(&["verify"]);
    assert_eq!(output.status.code(), Some(1));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("root.squashfs has sha256"), "{out}");
    assert!(out.contains("the combined fingerprint of"), "{out}");
    assert!(out.contains("stray.bin belongs to no image"), "{out}");
    assert!(
        out.contains("streams/v1/images.json does not match the catalog record; run `rebuild`"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("verify found 4 problems"));
}

#[test]
fn rebuild_regenerates_identical_json_without_reading_images() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "rb", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    let images = std::fs::read(t.www().join("streams/v1/images.json")).unwrap();
    let index = std::fs::read(t.www().join("streams/v1/index.json")).unwrap();
    std::fs::remove_file(t.www().join("streams/v1/images.json")).unwrap();
    std::fs::write(t.www().join("streams/v1/index.json"), b"garbage").unwrap();
    // Image files unreadable: rebuild must not need them.
    let root_file = t.www().join(format!(
        "images/testos/1/amd64/default/{SERIAL}/root.squashfs"
    ));
    std::fs::rename(&root_file, t.file("aside")).unwrap();
    let out = t.ok(&["rebuild"]);
    assert!(out.contains("1 products, 1 images"), "{out}");
    assert_eq!(
        std::fs::read(t.www().join("streams/v1/images.json")).unwrap(),
        images
    );
    assert_eq!(
        std::fs::read(t.www().join("streams/v1/index.json")).unwrap(),
        index
    );
    std::fs::rename(t.file("aside"), &root_file).unwrap();
    t.ok(&["verify"]);
}

#[test]
fn move_transfers_files_and_keeps_them_on_failure() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "mv", &Meta::default());
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    t.ok(&["import", "--move", p(&metadata), p(&root)]);
    assert!(
        !metadata.exists() && !root.exists(),
        "--move removes the sources"
    );
    assert_eq!(list_json(&t)[0]["fingerprint"], fingerprint.as_str());
    t.ok(&["verify"]);

    let bad_meta = t.file("bad.tar.xz");
    support::tarball(
        &bad_meta,
        &[("metadata.yaml", b"architecture: loong64\n")],
        "xz",
    );
    let root2 = t.file("r2.squashfs");
    support::squashfs(&root2, "r2");
    t.fails(&["import", "--move", p(&bad_meta), p(&root2)], 1);
    assert!(
        bad_meta.exists() && root2.exists(),
        "a failed import leaves its sources"
    );
    assert!(
        std::fs::read_dir(t.data().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no staged file is left behind"
    );
}

/// Bad input: one line, exit status 1, nothing published, nothing moved.
#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let t = TestDir::new();
    let (good_meta, good_root) = split_container(&t, "good", &Meta::default());
    t.ok(&["import", p(&good_meta), p(&good_root)]);

    let write = |name: &str, bytes: &[u8]| {
        let path = t.file(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let meta_with = |name: &str, yaml: &str| {
        let path = t.file(name);
        support::tarball(&path, &[("metadata.yaml", yaml.as_bytes())], "xz");
        path
    };
    let good_yaml = Meta {
        release: "7",
        ..Meta::default()
    }
    .yaml();
    let fresh_root = t.file("fresh.squashfs");
    support::squashfs(&fresh_root, "fresh");
    let xz_full = std::fs::read(meta_with("full.tar.xz", &good_yaml)).unwrap();
    let no_metadata = t.file("nometa.tar.xz");
    support::tarball(&no_metadata, &[("templates/x.tpl", b"x")], "xz");
    let raw_disk = write("raw.qcow2", &vec![0u8; 65536]);
    let unified_without_rootfs = t.file("u.tar.gz");
    support::tarball(
        &unified_without_rootfs,
        &[("metadata.yaml", good_yaml.as_bytes())],
        "gz",
    );
    let other_root = t.file("other.squashfs");
    support::squashfs(&other_root, "other");
    let conflicting_meta = t.file("conflict.tar.xz");
    let default_yaml = Meta::default().yaml();
    support::tarball(
        &conflicting_meta,
        &[
            ("metadata.yaml", default_yaml.as_bytes()),
            ("templates/y.tpl", b"different"),
        ],
        "xz",
    );

    let cases: Vec<(Vec<PathBuf>, &str)> = vec![
        (
            vec![
                write("notatar.tar.xz", b"hello, this is text"),
                fresh_root.clone(),
            ],
            "notatar.tar.xz is not a tarball (it is a text file)",
        ),
        (
            vec![
                write("trunc.tar.xz", &xz_full[..xz_full.len() / 2]),
                fresh_root.clone(),
            ],
            "trunc.tar.xz is truncated or corrupt",
        ),
        (
            vec![no_metadata, fresh_root.clone()],
            "nometa.tar.xz has no metadata.yaml; pass the metadata tarball first",
        ),
        (
            vec![
                meta_with("badyaml.tar.xz", "architecture: [unclosed\n"),
                fresh_root.clone(),
            ],
            "badyaml.tar.xz is not valid YAML (line 1 column 15",
        ),
        (
            vec![meta_with("empty.tar.xz", ""), fresh_root.clone()],
            "empty.tar.xz is empty",
        ),
        (
            vec![
                meta_with("arch.tar.xz", &good_yaml.replace("x86_64", "loong64")),
                fresh_root.clone(),
            ],
            "has unknown architecture \"loong64\"",
        ),
        (
            vec![
                meta_with(
                    "noprops.tar.xz",
                    "architecture: x86_64\ncreation_date: 1764244800\n",
                ),
                fresh_root.clone(),
            ],
            "has no `properties`",
        ),
        (
            vec![
                meta_with("noos.tar.xz", &good_yaml.replace("  os: testos\n", "")),
                fresh_root.clone(),
            ],
            "has no `properties.os`",
        ),
        (
            vec![
                meta_with("zero.tar.xz", &good_yaml.replace("1764244800", "0")),
                fresh_root.clone(),
            ],
            "before the year 2000",
        ),
        (
            vec![
                meta_with(
                    "future.tar.xz",
                    &good_yaml.replace("1764244800", "4102444800"),
                ),
                fresh_root.clone(),
            ],
            "more than a day in the future",
        ),
        (
            vec![
                meta_with(
                    "types.tar.xz",
                    &good_yaml.replace("creation_date: 1764244800", "creation_date: [1]"),
                ),
                fresh_root.clone(),
            ],
            "`creation_date` of type list",
        ),
        (
            vec![
                meta_with("ok.tar.xz", &good_yaml),
                write("text.squashfs", b"not a filesystem"),
            ],
            "text.squashfs is a text file, not an image root",
        ),
        (
            vec![
                meta_with("ok2.tar.xz", &good_yaml),
                write("zero.squashfs", b""),
            ],
            "zero.squashfs is an empty file, not an image root",
        ),
        (
            vec![meta_with("ok3.tar.xz", &good_yaml), raw_disk],
            "raw.qcow2 is nothing but zero bytes at its start (a raw disk?), not an image root",
        ),
        (
            vec![fresh_root.clone(), meta_with("ok4.tar.xz", &good_yaml)],
            "fresh.squashfs is a squashfs image; pass the metadata tarball first, then the root",
        ),
        (
            vec![unified_without_rootfs],
            "u.tar.gz holds only metadata; pass the root file",
        ),
        (
            vec![conflicting_meta, other_root.clone()],
            "already exists with a different metadata tarball",
        ),
        (
            vec![good_meta.clone(), other_root],
            "already holds a container image",
        ),
        (
            vec![t.file("missing.tar.xz"), fresh_root.clone()],
            "cannot open",
        ),
    ];
    let before = t.snapshot_www();
    for (files, expected) in cases {
        let args: Vec<&str> = std::iter::once("import")
            .chain(files.iter().map(|f| p(f)))
            .collect();
        let sources_before: Vec<Option<Vec<u8>>> =
            files.iter().map(|f| std::fs::read(f).ok()).collect();
        let err = t.fails(&args, 1);
        assert!(
            err.starts_with("simplestream-server: ") && err.contains(expected),
            "{args:?}: got {err:?}, expected {expected:?}"
        );
        assert_eq!(
            t.snapshot_www(),
            before,
            "{args:?} changed the published tree"
        );
        let sources_after: Vec<Option<Vec<u8>>> =
            files.iter().map(|f| std::fs::read(f).ok()).collect();
        assert_eq!(
            sources_before, sources_after,
            "{args:?} touched its sources"
        );
    }
    // Usage errors exit with 2.
    assert!(t.fails(&["import"], 2).contains("required"));
    assert!(
        t.fails(&["import", "a", "b", "c"], 2)
            .contains("unexpected argument")
    );
    t.ok(&["verify"]);
}

#[test]
fn data_dir_comes_before_or_after_the_command_or_from_the_environment() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "dd", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    let data = p(&t.data()).to_string();
    let after = std::process::Command::new(support::bin())
        .args(["list", "--format", "json", "--data-dir", &data])
        .output()
        .unwrap();
    let env = std::process::Command::new(support::bin())
        .args(["list", "--format", "json"])
        .env("SIMPLESTREAM_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(after.status.success() && env.status.success());
    assert_eq!(after.stdout, env.stdout);
    assert!(String::from_utf8_lossy(&env.stdout).contains("\"testos\""));
}

#[test]
fn concurrent_imports_serialise_through_the_lock() {
    let t = TestDir::new();
    let pairs: Vec<(PathBuf, PathBuf)> = (0..4)
        .map(|i| {
            split_container(
                &t,
                &format!("c{i}"),
                &Meta {
                    release: ["1", "2", "3", "4"][i],
                    ..Meta::default()
                },
            )
        })
        .collect();
    let children: Vec<_> = pairs
        .iter()
        .map(|(m, r)| {
            t.command(&["import", p(m), p(r)])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(assert_contract(&t.www()).len(), 4);
    t.ok(&["verify"]);
}

#[test]
fn an_interrupted_change_is_rolled_back_by_the_next_one() {
    let t = TestDir::new();
    let (metadata, root) = split_container(&t, "j", &Meta::default());
    t.ok(&["import", p(&metadata), p(&root)]);
    // What a writer killed after placing a file but before committing leaves behind.
    let stray = t
        .www()
        .join("images/testos/1/amd64/default/20990101_0000/root.squashfs");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"half an import").unwrap();
    std::fs::write(
        t.data().join("state/journal.json"),
        br#"{"placed":["images/testos/1/amd64/default/20990101_0000/root.squashfs"]}"#,
    )
    .unwrap();
    std::fs::write(t.www().join("streams/v1/index.json"), b"stale").unwrap();
    t.ok(&["alias", "add", "recovered", PRODUCT]);
    assert!(!stray.exists() && !stray.parent().unwrap().exists());
    assert!(!t.data().join("state/journal.json").exists());
    assert_contract(&t.www());
    t.ok(&["verify"]);
}

/// Regression (issue 10, item 12): terminal escapes in a description or a requirement value
/// were printed raw by `info`. Text output shows them escaped; JSON keeps the exact text.
#[test]
fn text_output_shows_image_provided_control_characters_escaped() {
    let t = TestDir::new();
    let description = "Evil \u{1b}[2J\u{1b}]0;owned\u{7} image";
    let yaml = "architecture: x86_64\ncreation_date: 1764244800\nproperties:\n  os: testos\n  release: \"1\"\n  description: \"Evil \\e[2J\\e]0;owned\\a image\"\n";
    let metadata = t.file("esc.tar.xz");
    support::tarball(&metadata, &[("metadata.yaml", yaml.as_bytes())], "xz");
    let root = t.file("esc.squashfs");
    support::squashfs(&root, "esc");
    let requirement = "note=\u{1b}[31mred\u{1b}[0m";
    t.ok(&[
        "import",
        p(&metadata),
        p(&root),
        "--requirement",
        requirement,
    ]);

    let text = t.ok(&["info", "testos/1"]);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(
        text.contains("Description: Evil \\u{1b}[2J\\u{1b}]0;owned\\u{7} image"),
        "{text}"
    );
    assert!(
        text.contains("Requirements: note=\\u{1b}[31mred\\u{1b}[0m"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.ok(&["info", "testos/1", "--format", "json"])).unwrap();
    assert_eq!(json[0]["description"], description);
    assert_eq!(json[0]["requirements"]["note"], "\u{1b}[31mred\u{1b}[0m");
    for table in [
        t.ok(&["list"]),
        t.ok(&["alias", "list"]),
        t.ok(&["product", "list"]),
    ] {
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
    }
}

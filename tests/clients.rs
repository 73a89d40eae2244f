//! The published tree as the real clients see it: Debian 12's `lxc` 5.0.2 and Incus 6.0.4
//! list, inspect and export every image (fingerprints checked) when a plain static HTTPS
//! server (openssl s_server) serves `data/www`.

use std::path::Path;

use crate::support;
use crate::support::clients::{Client, Family, StaticHttps, self_signed_cert};
use crate::support::contract::assert_contract;
use crate::support::{Meta, TestDir};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A catalog with a container and a VM in one version, a root.tar.xz container and a unified
/// container, each with its own alias.
fn publish_mixed_catalog(t: &TestDir) {
    let meta = t.file("meta.tar.xz");
    support::metadata_tarball(&meta, &Meta::default());
    let squashfs = t.file("root.squashfs");
    support::squashfs(&squashfs, "c");
    let disk = t.file("disk.qcow2");
    support::qcow2(&disk, "vm");
    t.ok(&["import", p(&meta), p(&squashfs), "--alias", "split/c"]);
    t.ok(&["import", p(&meta), p(&disk), "--alias", "split/vm"]);

    let xz_meta = t.file("xz-meta.tar.xz");
    support::metadata_tarball(
        &xz_meta,
        &Meta {
            release: "xz",
            ..Meta::default()
        },
    );
    let root_xz = t.file("root.tar.xz");
    support::root_tar_xz(&root_xz, "xz");
    t.ok(&["import", p(&xz_meta), p(&root_xz), "--alias", "tarxz"]);

    let unified = t.file("unified.tar.gz");
    support::unified_tarball(
        &unified,
        &Meta {
            release: "u",
            ..Meta::default()
        },
        false,
        "u",
    );
    t.ok(&["import", p(&unified), "--alias", "unified"]);
}

fn check_client(family: Family) {
    let t = TestDir::new();
    publish_mixed_catalog(&t);
    let published = assert_contract(&t.www());
    let (cert, key) = self_signed_cert(t.path());
    let server = StaticHttps::serve(&t.www(), &cert, &key);
    let client = Client::new(family, t.path());
    client.add_remote("t", &server.url(), &cert);

    let listed = client.list("t");
    let mut expected: Vec<(String, String)> = published
        .iter()
        .map(|i| (i.fingerprint.clone(), i.image_type.clone()))
        .collect();
    expected.sort();
    let seen: Vec<(String, String)> = listed
        .iter()
        .map(|(fp, ty, _)| (fp.clone(), ty.clone()))
        .collect();
    assert_eq!(seen, expected, "{family:?} lists every image with its type");

    // Aliases resolve, and so do the /arch forms the client derives.
    let fingerprint_of = |product: &str, image_type: &str| {
        published
            .iter()
            .find(|i| i.product == product && i.image_type == image_type)
            .map(|i| i.fingerprint.clone())
            .expect("published image")
    };
    for (alias, product, vm) in [
        ("split/c", "testos:1:amd64:default", false),
        ("split/vm", "testos:1:amd64:default", true),
        ("tarxz", "testos:xz:amd64:default", false),
        ("unified", "testos:u:amd64:default", false),
    ] {
        let expected = fingerprint_of(product, if vm { "virtual-machine" } else { "container" });
        for name in [alias.to_string(), format!("{alias}/amd64")] {
            let target = format!("t:{name}");
            let mut args = vec!["image", "info", target.as_str()];
            if vm {
                args.push("--vm");
            }
            let info = client.ok(&args);
            assert!(
                info.contains(&format!("Fingerprint: {expected}")),
                "{family:?} {args:?}: {info}"
            );
        }
    }
    // Export every image and check the fingerprint from the downloaded bytes.
    for (i, image) in published.iter().enumerate() {
        let exported = client.export_fingerprint(
            "t",
            &image.fingerprint,
            &t.path().join(format!("export-{family:?}-{i}")),
        );
        assert_eq!(
            exported, image.fingerprint,
            "{family:?} export of {image:?}"
        );
    }
}

#[test]
fn lxc_5_0_2_lists_inspects_and_exports_every_image() {
    check_client(Family::Lxd);
}

#[test]
fn incus_6_0_4_lists_inspects_and_exports_every_image() {
    check_client(Family::Incus);
}

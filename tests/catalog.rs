//! The catalog through the local CLI: import, list, info, alias, remove, prune, verify,
//! rebuild, and the stream's JSON checked against every MUST of the client contract.

mod support;

use support::{Meta, TestDir};

#[test]
fn split_container_import_publishes_twin_metadata_items() {
    let t = TestDir::new();
    support::metadata_tarball(&t.file("lxd.tar.xz"), &Meta::default());
    support::squashfs(&t.file("root.squashfs"), "one");
    let out = t.ok(&[
        "import",
        t.file("lxd.tar.xz").to_str().unwrap(),
        t.file("root.squashfs").to_str().unwrap(),
    ]);
    let fingerprint = support::sha256_of(&[&t.file("lxd.tar.xz"), &t.file("root.squashfs")]);
    assert!(out.contains(&fingerprint), "{out}");
}

#[test]
fn serve_announces_ready() {
    let t = TestDir::new();
    let server = support::server::Server::start(&t, &[]);
    assert!(server.terminate().success());
}

//! The whole path in one process: images uploaded with OpenSSH's scp (SFTP and legacy modes),
//! imported with `ssh host import`, then listed, inspected and exported by the real LXD 5.0.2
//! and Incus 6.0.4 clients from the same server's HTTPS side.

use crate::support;
use crate::support::clients::{Client as ImageClient, Family};
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, write_authorized_keys};
use crate::support::{Meta, TestDir};

#[test]
fn scp_then_ssh_import_then_lxc_and_incus_see_the_images() {
    let t = TestDir::new();
    let key = Key::new(&t, "publisher");
    write_authorized_keys(&t, &[key.line("")]);
    let server = Server::start(&t, &[]);
    let ssh = Client::new(server.ssh(), &key);

    // A split container image over scp's SFTP mode, a unified VM over `scp -O`.
    let meta = t.file("lxd.tar.xz");
    support::metadata_tarball(&meta, &Meta::default());
    let root = t.file("rootfs.squashfs");
    support::squashfs(&root, "e2e");
    let unified = t.file("vm.tar.gz");
    support::unified_tarball(
        &unified,
        &Meta {
            release: "vm",
            ..Meta::default()
        },
        true,
        "e2e-vm",
    );
    let split_fp = support::sha256_of(&[&meta, &root]);
    let unified_fp = support::sha256_of(&[&unified]);

    let sent = ssh.scp(&[], &[&meta, &root], "");
    assert!(
        sent.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let sent = ssh.scp_legacy(&[&unified], "");
    assert!(
        sent.status.success(),
        "scp -O: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let out = ssh.ok("import lxd.tar.xz rootfs.squashfs --alias e2e/container");
    assert!(out.contains(&format!("published {split_fp}")), "{out}");
    let out = ssh.ok("import vm.tar.gz --alias e2e/vm");
    assert!(out.contains(&format!("published {unified_fp}")), "{out}");
    let listed = ssh.ok("list --format json");
    assert!(
        listed.contains(&split_fp) && listed.contains(&unified_fp),
        "{listed}"
    );

    let url = format!("https://127.0.0.1:{}", server.https().port());
    let cert = t.data().join("tls/server.crt");
    for family in [Family::Lxd, Family::Incus] {
        let client = ImageClient::new(family, t.path());
        client.add_remote("ours", &url, &cert);
        let images = client.list("ours");
        let fingerprints: Vec<&str> = images.iter().map(|(fp, _, _)| fp.as_str()).collect();
        assert!(
            fingerprints.contains(&split_fp.as_str()),
            "{family:?}: {images:?}"
        );
        // LXD 5.0.2 and Incus 6.0.4 predate `combined_type` (Incus reads it from 7.1): to
        // both, a unified image is a container.
        assert!(
            fingerprints.contains(&unified_fp.as_str()),
            "{family:?}: {images:?}"
        );
        let info = client.ok(&["image", "info", "ours:e2e/container"]);
        assert!(
            info.contains(&format!("Fingerprint: {split_fp}")),
            "{family:?}: {info}"
        );
        let exported = client.export_fingerprint(
            "ours",
            &split_fp,
            &t.path().join(format!("export-{family:?}")),
        );
        assert_eq!(exported, split_fp, "{family:?}");
    }
}

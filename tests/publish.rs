//! `publish`, end to end with the real LXD 5.0.2 daemon as the source and the destination: a
//! busybox image imported into the daemon is published to a running server (export, scp,
//! ssh import), removed from the daemon, then launched back from the server over HTTPS (the
//! daemon downloads it, trying plain HTTP first) and answers `lxc exec`.

use std::process::Command;

use crate::support;
use crate::support::TestDir;
use crate::support::lxd_daemon::{LxdDaemon, busybox_image, split_busybox_image};
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, write_authorized_keys};

/// `simplestream-server publish` as a publisher runs it, against this daemon's image store.
fn publish(
    daemon: &LxdDaemon,
    image: &str,
    server: &Server,
    key: &Key,
    alias: &str,
) -> std::process::Output {
    let destination = format!("upload@127.0.0.1:{}", server.ssh().port());
    Command::new(support::bin())
        .args([
            "publish",
            image,
            &destination,
            "--alias",
            alias,
            "--remote",
            "lxc",
        ])
        // The options the tests' own ssh and scp use: this key only, no host key prompts.
        .args(Client::new(server.ssh(), key).options())
        .env("LXD_DIR", daemon.root.join("lxd"))
        .env("LXD_CONF", daemon.conf())
        .env("HOME", daemon.root.join("home"))
        .env_remove("SIMPLESTREAM_DATA_DIR")
        .output()
        .expect("run publish")
}

fn fingerprint_in_daemon(daemon: &LxdDaemon, alias: &str) -> String {
    let info = daemon.ok(&["image", "info", alias]);
    info.lines()
        .find_map(|l| l.strip_prefix("Fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {info}"))
        .trim()
        .to_string()
}

#[test]
fn publish_from_lxd_then_launch_back_from_the_server() {
    let t = TestDir::new();
    let daemon = LxdDaemon::start(&t.path().join("lxd"));
    let unified = busybox_image(t.path(), "unified", 1_764_244_800);
    daemon.ok(&[
        "image",
        "import",
        unified.to_str().unwrap(),
        "--alias",
        "bb-unified",
    ]);
    let (meta, root) = split_busybox_image(t.path(), &unified, "split");
    daemon.ok(&[
        "image",
        "import",
        meta.to_str().unwrap(),
        root.to_str().unwrap(),
        "--alias",
        "bb-split",
    ]);

    let key = Key::new(&t, "publisher");
    write_authorized_keys(&t, &[key.line("")]);
    let server = Server::start(&t, &[]);

    // Publish both: a unified export (<fp>.tar.gz) and a split one (meta-<fp>.tar.xz + <fp>.squashfs).
    for (local, alias) in [
        ("bb-unified", "busybox/unified"),
        ("bb-split", "busybox/split"),
    ] {
        let fingerprint = fingerprint_in_daemon(&daemon, local);
        let output = publish(&daemon, local, &server, &key, alias);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "publish {local}: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("published {fingerprint}")),
            "{stdout}"
        );
        // Nothing of the upload is left behind in the publisher's area: import moved it.
        let uploads = Client::new(server.ssh(), &key).ok("uploads --format json");
        assert_eq!(uploads.trim(), "[]", "{uploads}");
        daemon.ok(&["image", "delete", local]);
    }
    support::contract::assert_contract(&t.www());

    // Launch both back from the server: the daemon downloads them.
    let cert = t.data().join("tls/server.crt");
    std::fs::create_dir_all(daemon.conf().join("servercerts")).unwrap();
    std::fs::copy(&cert, daemon.conf().join("servercerts/ours.crt")).unwrap();
    daemon.ok(&[
        "remote",
        "add",
        "ours",
        &format!("https://127.0.0.1:{}", server.https().port()),
        "--protocol=simplestreams",
    ]);
    for (alias, name) in [
        ("busybox/unified", "c-unified"),
        ("busybox/split", "c-split"),
    ] {
        daemon.ok(&["launch", &format!("ours:{alias}"), name]);
        let state = daemon.ok(&["list", name, "--format", "csv", "-c", "s"]);
        assert_eq!(state.trim(), "RUNNING", "{name}");
        assert_eq!(
            daemon.ok(&["exec", name, "--", "echo", "launched"]).trim(),
            "launched"
        );
    }
    // The daemon fetched the image files from us (plain HTTP first, as LXD does).
    let log = server.output();
    assert!(
        log.lines()
            .any(|l| l.contains("path=/images/busybox/") && l.contains("status=200")),
        "{log}"
    );
}

#[test]
fn publish_explains_what_went_wrong() {
    let t = TestDir::new();
    let daemon = LxdDaemon::start(&t.path().join("lxd"));
    let key = Key::new(&t, "publisher");
    write_authorized_keys(&t, &[key.line("")]);
    let server = Server::start(&t, &[]);
    let output = publish(&daemon, "no-such-image", &server, &key, "x");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.lines().last().unwrap_or("").contains(
            "`lxc image export no-such-image` failed; check the image name with `lxc image list`"
        ),
        "{stderr}"
    );
}

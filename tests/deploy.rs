//! deploy/ and the scripts: the systemd unit passes `systemd-analyze verify`, the container
//! builder's dry run prints the full plan, and every shell script is shellcheck-clean.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::TestDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_systemd_unit_verifies() {
    let analyze = support::require_tool("systemd-analyze", "systemd");
    let t = TestDir::new();
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/simplestream-server.service")).unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload goes through SIGHUP"
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening:?}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let local = unit.replace(
        "/usr/local/bin/simplestream-server",
        support::bin().to_str().unwrap(),
    );
    let path = t.file("simplestream-server.service");
    std::fs::write(&path, local).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("simplestream-server.service"),
        "systemd-analyze verify: {stderr}"
    );
}

fn dry_run(t: &TestDir, extra: &[&str]) -> std::process::Output {
    let fake_binary = t.file("simplestream-server");
    std::fs::write(&fake_binary, b"#!/bin/sh\n").unwrap();
    Command::new(repo().join("deploy/lxd/create-container.sh"))
        .args(["--dry-run", "--binary", fake_binary.to_str().unwrap()])
        .args(extra)
        // No daemon answers here, so the plan is the one for a new container.
        .env("LXD_DIR", t.file("no-lxd"))
        .env("INCUS_DIR", t.file("no-incus"))
        .output()
        .unwrap()
}

#[test]
fn create_container_dry_run_prints_every_step() {
    support::require_tool("lxc", "lxd-client");
    let t = TestDir::new();
    let key = t.file("admin.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq5R3b6kL8n9p0q1r2s3t4u5v6w7x8y9z0A1 alice@laptop\n").unwrap();
    let output = dry_run(
        &t,
        &[
            "--name",
            "imgsrv",
            "--https-port",
            "9443",
            "--ssh-port",
            "2200",
            "--listen",
            "192.0.2.10",
            "--admin-key",
            key.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let commands: Vec<&str> = stdout.lines().filter(|l| l.starts_with("+ ")).collect();
    let expected = [
        "+ lxc launch images:debian/12 imgsrv",
        "+ lxc file push",
        "imgsrv/usr/local/bin/simplestream-server --mode 0755",
        "imgsrv/etc/systemd/system/simplestream-server.service --mode 0644",
        "+ lxc exec imgsrv -- systemctl enable simplestream-server",
        "+ lxc exec imgsrv -- systemctl restart simplestream-server",
        "role=\\\"admin\\\"\\ ssh-ed25519",
        "+ lxc config device add imgsrv https proxy listen=tcp:192.0.2.10:9443 connect=tcp:127.0.0.1:8443",
        "+ lxc config device add imgsrv ssh proxy listen=tcp:192.0.2.10:2200 connect=tcp:127.0.0.1:2222",
        "remote-info",
    ];
    for fragment in expected {
        assert!(
            commands.iter().any(|c| c.contains(fragment)),
            "missing {fragment:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("lxc remote add imgsrv https://192.0.2.10:9443 --protocol=simplestreams"),
        "{stdout}"
    );
    // A dry run changes nothing: every step is printed, none run (no daemon would answer).
    assert!(!stdout.contains("Error"), "{stdout}");
}

#[test]
fn create_container_refuses_bad_options_with_one_line() {
    let t = TestDir::new();
    for (args, message) in [
        (vec!["--https-port", "70000"], "70000 is not a port number"),
        (vec!["--client", "docker"], "--client must be lxc or incus"),
        (
            vec!["--admin-key", "/nonexistent.pub"],
            "no key file at /nonexistent.pub",
        ),
        (vec!["--frobnicate"], "unknown option --frobnicate"),
    ] {
        let output = dry_run(&t, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    let shellcheck = support::require_tool("shellcheck", "shellcheck");
    let mut scripts = vec![repo().join(".ci/run")];
    for dir in ["deploy/lxd", "bench"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() >= 3, "{scripts:?}");
    let output = Command::new(shellcheck)
        .args(scripts.iter().map(|p| p.as_path()).collect::<Vec<&Path>>())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

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
    let mut scripts = vec![repo().join(".ci/run"), repo().join("tests/run")];
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

/// Issue 10 item 20: README's test command is the one `.ci/run` runs, and it is the script
/// that installs what is missing before `cargo test`.
#[test]
fn readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let opening: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with("```sh"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .collect();
    // The second opening command: the first runs the server.
    let command = opening.get(1).and_then(|line| line.split('#').next());
    assert_eq!(
        command.map(str::trim),
        Some("tests/run"),
        "README's opening commands: {opening:?}"
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let last = ci
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap();
    assert_eq!(last, "exec tests/run", "{ci}");
    let script = std::fs::read_to_string(repo().join("tests/run")).unwrap();
    assert!(script.contains("apt-get install") && script.trim_end().ends_with("cargo test \"$@\""));
}

/// Issue 10 item 22: bookworm-backports comes from the archive apt already uses, read from
/// one-line sources and from deb822 `.sources` files, never a fixed host name.
#[test]
fn backports_come_from_the_archive_apt_already_uses() {
    let t = TestDir::new();
    let source_for = |apt: &Path| {
        Command::new(repo().join("tests/run"))
            .arg("--print-backports-source")
            .env("APT_DIR", apt)
            .output()
            .unwrap()
    };
    let one_line = t.path().join("one-line");
    std::fs::create_dir_all(one_line.join("sources.list.d")).unwrap();
    std::fs::write(
        one_line.join("sources.list"),
        "# a comment\ndeb http://security.debian.org/debian-security bookworm-security main\n\
         deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n",
    )
    .unwrap();
    let deb822 = t.path().join("deb822");
    std::fs::create_dir_all(deb822.join("sources.list.d")).unwrap();
    std::fs::write(
        deb822.join("sources.list.d/debian.sources"),
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n\
         Types: deb\nURIs: http://proxy.example:3142/debian\nSuites: bookworm bookworm-updates\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\
         Components: main\n",
    )
    .unwrap();
    for (apt, archive) in [
        (&one_line, "http://mirror.example/debian"),
        (&deb822, "http://proxy.example:3142/debian"),
    ] {
        let output = source_for(apt);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains(&format!("URIs: {archive}\n")), "{text}");
        assert!(text.contains("Suites: bookworm-backports\n"), "{text}");
    }
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = source_for(&empty);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no apt source for bookworm"), "{stderr}");
}

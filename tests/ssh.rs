//! The SSH gateway driven by the real OpenSSH clients (`ssh`, `scp`, `scp -O`, `sftp -b`)
//! and, for the offer/sign bypass, by russh's client: uploads, imports, every role boundary,
//! every refusal, the jail, quotas and limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support;
use crate::support::server::Server;
use crate::support::ssh::{
    Client, Key, area, audit_events, names_in, random_file, refusal, refusal_reason, run,
    write_authorized_keys, write_config,
};
use crate::support::{Meta, TestDir, wait_until};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A server with one key per role: admin, publisher and reader.
struct Setup {
    t: TestDir,
    server: Server,
    admin: Client,
    publisher: Client,
    reader: Client,
}

fn setup_with_config(config: &str) -> Setup {
    let t = TestDir::new();
    let admin = Key::new(&t, "root-admin");
    let publisher = Key::new(&t, "alice@laptop");
    let reader = Key::new(&t, "ci-reader");
    write_authorized_keys(
        &t,
        &[
            admin.line(r#"role="admin""#),
            publisher.line(""),
            reader.line(r#"role="reader""#),
        ],
    );
    if !config.is_empty() {
        write_config(&t, config);
    }
    let server = Server::start(&t, &[]);
    let address = server.ssh();
    Setup {
        admin: Client::new(address, &admin),
        publisher: Client::new(address, &publisher),
        reader: Client::new(address, &reader),
        server,
        t,
    }
}

fn setup() -> Setup {
    setup_with_config("")
}

/// A split image (metadata tarball + squashfs) in the test directory.
fn split_image(t: &TestDir, seed: &str, meta: &Meta) -> (std::path::PathBuf, std::path::PathBuf) {
    let metadata = t.file(&format!("{seed}.tar.xz"));
    let root = t.file(&format!("{seed}.squashfs"));
    support::metadata_tarball(&metadata, meta);
    support::squashfs(&root, seed);
    (metadata, root)
}

#[test]
fn upload_import_and_list_end_to_end() {
    let s = setup();
    let (metadata, root) = split_image(&s.t, "e2e", &Meta::default());
    let output = s.publisher.scp(&[], &[&metadata, &root], "");
    assert!(output.status.success(), "scp: {}", stderr(&output));

    // Both arrived whole, and were hashed on the way in.
    let uploads = json(&s.publisher.ok("uploads --format json"));
    let listed: Vec<(&str, &str)> = uploads
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap(),
                u["sha256"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let meta_sha = support::sha256_of(&[&metadata]);
    let root_sha = support::sha256_of(&[&root]);
    assert_eq!(
        listed,
        [
            ("e2e.squashfs", root_sha.as_str()),
            ("e2e.tar.xz", meta_sha.as_str())
        ]
    );
    // The root was hashed together with the metadata uploaded before it.
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    let root_upload = audit_events(&s.t, "upload")
        .into_iter()
        .find(|e| e["file"] == "/e2e.squashfs")
        .expect("audit line of the root upload");
    assert_eq!(root_upload["combined_with"], serde_json::json!([meta_sha]));
    assert_eq!(root_upload["user"], "alice@laptop");

    let out = s
        .publisher
        .ok("import e2e.tar.xz e2e.squashfs --alias 'debian/12'");
    assert!(out.contains(&fingerprint), "{out}");
    let list = json(&s.reader.ok("list --format json"));
    let image = &list[0];
    assert_eq!(image["fingerprint"], fingerprint.as_str());
    assert!(
        image["aliases"]
            .as_array()
            .unwrap()
            .contains(&Value::from("debian/12")),
        "{image}"
    );
    // Imported over SSH means moved: the upload area is empty again.
    assert!(names_in(&area(&s.t, "alice@laptop")).is_empty());
    assert!(s.publisher.ok("uploads").starts_with("no uploads"));
    // The published files are the uploaded bytes.
    let published: Vec<_> =
        s.t.snapshot_www()
            .into_iter()
            .filter(|(path, _)| path.to_string_lossy().contains("/images/"))
            .map(|(_, content)| content)
            .collect();
    assert!(published.contains(&std::fs::read(&root).unwrap()));
    let commands = audit_events(&s.t, "command");
    assert!(
        commands
            .iter()
            .any(|e| e["name"] == "import" && e["exit"] == 0),
        "{commands:?}"
    );
}

#[test]
fn legacy_scp_and_sftp_put_store_the_same_bytes() {
    let s = setup();
    let file = s.t.file("blob.bin");
    random_file(&file, 3 << 20, 1);
    let output = s.publisher.scp_legacy(&[&file], "legacy.bin");
    assert!(output.status.success(), "scp -O: {}", stderr(&output));
    let output = s.publisher.scp(&["-p"], &[&file], "modern.bin");
    assert!(output.status.success(), "scp: {}", stderr(&output));
    // `~` is the upload area, in both protocols.
    for extra in [&[][..], &["-O"][..]] {
        let output = s.publisher.scp(extra, &[&file], "~/home.bin");
        assert!(
            output.status.success(),
            "scp {extra:?} to ~/: {}",
            stderr(&output)
        );
    }
    let output = s.publisher.sftp_batch(
        s.t.path(),
        "mkdir sub\nput blob.bin sub/put.bin\nrename sub/put.bin sub/renamed.bin\nls -l sub\n",
    );
    assert!(output.status.success(), "sftp: {}", stderr(&output));
    assert!(
        stdout(&output).contains("renamed.bin"),
        "{}",
        stdout(&output)
    );
    let dir = area(&s.t, "alice@laptop");
    let original = std::fs::read(&file).unwrap();
    for stored in ["legacy.bin", "modern.bin", "sub/renamed.bin"] {
        assert_eq!(
            std::fs::read(dir.join(stored)).unwrap(),
            original,
            "{stored}"
        );
    }
    // scp -p carried the modification time (SFTP has whole seconds).
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert_eq!(mtime(&dir.join("modern.bin")), mtime(&file));
    // A renamed upload keeps its known hash; uploads lists every file, hashed.
    let uploads = json(&s.publisher.ok("uploads --format json"));
    let names: Vec<&str> = uploads
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["home.bin", "legacy.bin", "modern.bin", "sub/renamed.bin"]
    );
    assert!(
        uploads
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["sha256"] == support::sha256_of(&[&file]).as_str()),
        "{uploads}"
    );
}

#[test]
fn overwrites_and_resumed_uploads_keep_the_right_bytes() {
    let s = setup();
    let dir = area(&s.t, "alice@laptop");
    let big = s.t.file("big.bin");
    let small = s.t.file("small.bin");
    random_file(&big, 3_000_000, 21);
    random_file(&small, 1_000_000, 22);
    // scp (no TRUNC since OpenSSH 9.1, then FSETSTAT size) over a larger file.
    assert!(s.publisher.scp(&[], &[&big], "same.bin").status.success());
    assert!(s.publisher.scp(&[], &[&small], "same.bin").status.success());
    assert_eq!(
        std::fs::read(dir.join("same.bin")).unwrap(),
        std::fs::read(&small).unwrap()
    );
    let uploads = json(&s.publisher.ok("uploads --format json"));
    assert_eq!(uploads[0]["sha256"], support::sha256_of(&[&small]).as_str());

    // A resumed upload (sftp reput): the first half is there, the rest is appended.
    let half = s.t.file("half.bin");
    std::fs::write(&half, &std::fs::read(&big).unwrap()[..1_234_567]).unwrap();
    assert!(
        s.publisher
            .scp(&[], &[&half], "resumed.bin")
            .status
            .success()
    );
    let output = s
        .publisher
        .sftp_batch(s.t.path(), "reput big.bin resumed.bin\n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(dir.join("resumed.bin")).unwrap(),
        std::fs::read(&big).unwrap()
    );
    // Written out of order, so not hashed on the way in: import will read it instead.
    let uploads = json(&s.publisher.ok("uploads --format json"));
    let resumed = uploads
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "resumed.bin")
        .unwrap();
    assert_eq!(resumed["sha256"], Value::Null);
}

#[test]
fn recursive_uploads_make_directories_in_both_protocols() {
    let s = setup();
    let tree = s.t.file("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    random_file(&tree.join("a.bin"), 70_000, 11);
    random_file(&tree.join("sub/b.bin"), 1_500_000, 12);
    let dir = area(&s.t, "alice@laptop");
    for (extra, dest) in [(&["-r"][..], "modern"), (&["-O", "-r"][..], "legacy")] {
        let output = s.publisher.scp(extra, &[&tree], dest);
        assert!(output.status.success(), "{extra:?}: {}", stderr(&output));
        for file in ["a.bin", "sub/b.bin"] {
            assert_eq!(
                std::fs::read(dir.join(dest).join(file)).unwrap(),
                std::fs::read(tree.join(file)).unwrap(),
                "{extra:?} {file}"
            );
        }
    }
    // Into an existing directory, the tree keeps its own name.
    let output = s.publisher.scp(&["-O", "-r"], &[&tree], "legacy");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(dir.join("legacy/tree/sub/b.bin").is_file());
}

#[test]
fn import_from_standard_input() {
    let s = setup();
    let tarball = s.t.file("unified.tar.gz");
    support::unified_tarball(&tarball, &Meta::default(), false, "stdin");
    let bytes = std::fs::read(&tarball).unwrap();
    let output = s.publisher.ssh_with_stdin("import - --format json", &bytes);
    assert!(output.status.success(), "import -: {}", stderr(&output));
    let report = json(&stdout(&output));
    assert_eq!(report["status"], "published");
    assert_eq!(
        report["fingerprint"],
        support::sha256_of(&[&tarball]).as_str()
    );
    assert!(
        s.reader
            .ok("list")
            .contains(&support::sha256_of(&[&tarball])[..12])
    );
    // A reader may not import, from stdin either.
    let output = s.reader.ssh_with_stdin("import -", &bytes);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("needs the publisher role"),
        "{}",
        stderr(&output)
    );
}

/// Regression (issue 11, one owner for the upload area): `import -` staged any amount from
/// standard input, past the size an upload of the same bytes may have.
#[test]
fn import_from_standard_input_is_held_to_the_upload_file_size_limit() {
    let s = setup_with_config("[ssh]\nmax_file_bytes = 100\n");
    let tarball = s.t.file("unified.tar.gz");
    support::unified_tarball(&tarball, &Meta::default(), false, "stdin-limit");
    let bytes = std::fs::read(&tarball).unwrap();
    assert!(bytes.len() > 100, "the fixture must be over the limit");
    let output = s.publisher.ssh_with_stdin("import -", &bytes);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ssh.max_file_bytes"),
        "{}",
        stderr(&output)
    );
    assert!(names_in(&s.t.data().join("tmp")).is_empty());
    assert_eq!(s.reader.ok("list --format json").trim(), "[]");
}

#[test]
fn import_from_a_stream_cut_off_publishes_nothing() {
    let s = setup();
    let tarball = s.t.file("unified.tar.gz");
    support::unified_tarball(&tarball, &Meta::default(), true, "cut");
    let bytes = std::fs::read(&tarball).unwrap();
    // The whole tarball, but the client dies before it says EOF: not a complete stream.
    let mut child = s
        .publisher
        .ssh_command(&[], Some("import -"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes).unwrap();
    stdin.flush().unwrap();
    // The import is reading: its staging file exists; the server now waits for more input.
    wait_until(Duration::from_secs(30), "the import to start", || {
        names_in(&s.t.data().join("tmp"))
            .iter()
            .any(|name| name.starts_with("stage-"))
            .then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let ended = wait_until(
        Duration::from_secs(30),
        "the server to end the import",
        || {
            audit_events(&s.t, "command")
                .into_iter()
                .find(|e| e["command"] == "import -")
        },
    );
    assert_eq!(ended["exit"], 1, "{ended}");
    assert_eq!(s.reader.ok("list --format json").trim(), "[]");
}

#[test]
fn every_role_boundary() {
    let s = setup();
    let file = s.t.file("data.bin");
    random_file(&file, 1000, 2);

    // Reader: reads the catalog, never uploads or changes anything.
    for command in ["list", "whoami", "help", "version"] {
        s.reader.ok(command);
    }
    assert!(s.reader.fails("info nothing", 1).contains("no image"));
    for command in [
        "import a.tar.xz",
        "uploads",
        "alias list",
        "remove abc",
        "prune --keep 1",
        "verify",
        "rebuild",
    ] {
        let line = s.reader.fails(command, 1);
        assert!(line.contains("has the reader role"), "{command}: {line}");
        // Audited: who, from where, what, and the reason the client saw.
        let reason = refusal_reason(&s.t, "ci-reader", command);
        assert!(line.ends_with(&reason), "{command}: {reason}");
    }
    let output = s.reader.scp(&[], &[&file], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("needs the publisher role"),
        "{}",
        stderr(&output)
    );
    let output = s.reader.scp_legacy(&[&file], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("needs the publisher role"),
        "{}",
        stderr(&output)
    );
    let output = s.reader.sftp_batch(s.t.path(), "ls\n");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("needs the publisher role"),
        "{}",
        stderr(&output)
    );
    assert!(!area(&s.t, "ci-reader").exists());
    for request in ["subsystem sftp", "scp -t"] {
        assert!(refusal_reason(&s.t, "ci-reader", request).contains("needs the publisher role"));
    }

    // Publisher: uploads and imports, nothing of the admin's.
    assert!(s.publisher.scp(&[], &[&file], "").status.success());
    assert!(s.publisher.ok("uploads").contains("data.bin"));
    for command in [
        "alias list",
        "remove abc",
        "prune --keep 1",
        "verify",
        "rebuild",
    ] {
        let line = s.publisher.fails(command, 1);
        assert!(
            line.contains("needs the admin role and your key has the publisher role"),
            "{command}: {line}"
        );
        let reason = refusal_reason(&s.t, "alice@laptop", command);
        assert!(line.ends_with(&reason), "{command}: {reason}");
    }
    // Someone else's uploads, and a path out of the area, are refusals too.
    s.publisher.fails("uploads --user ci-reader", 1);
    refusal(&s.t, "alice@laptop", "uploads --user ci-reader");
    s.publisher.fails("import ../ci-reader/x.tar.xz", 1);
    assert!(
        refusal_reason(&s.t, "alice@laptop", "import ../ci-reader/x.tar.xz")
            .contains("leaves your upload area")
    );
    // Removing their own upload is theirs to do.
    assert_eq!(
        s.publisher.ok("uploads --remove data.bin"),
        "removed data.bin\n"
    );
    assert!(!area(&s.t, "alice@laptop").join("data.bin").exists());

    // Admin: everything.
    let (metadata, root) = split_image(&s.t, "adm", &Meta::default());
    assert!(s.admin.scp(&[], &[&metadata, &root], "").status.success());
    s.admin.ok("import adm.tar.xz adm.squashfs");
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    s.admin
        .ok(&format!("alias add mine/one {}", &fingerprint[..12]));
    assert!(s.admin.ok("alias list").contains("mine/one"));
    s.admin.ok("verify");
    s.admin.ok("rebuild");
    s.admin.ok("prune --keep 1 --dry-run");
    s.admin.ok(&format!("remove {}", &fingerprint[..12]));
    assert_eq!(s.admin.ok("list --format json").trim(), "[]");
}

#[test]
fn help_lists_exactly_what_the_role_may_run() {
    let s = setup();
    let commands = |client: &Client| -> Vec<String> {
        client
            .ok("help")
            .lines()
            .filter(|line| line.starts_with("  "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let reader = commands(&s.reader);
    let publisher = commands(&s.publisher);
    let admin = commands(&s.admin);
    for command in ["list", "info", "whoami", "help", "version"] {
        assert!(reader.iter().any(|c| c == command), "{reader:?}");
    }
    for command in [
        "import", "uploads", "remove", "alias", "prune", "verify", "rebuild",
    ] {
        assert!(
            !reader.iter().any(|c| c == command),
            "reader sees {command}"
        );
    }
    for command in ["import", "uploads"] {
        assert!(publisher.iter().any(|c| c == command), "{publisher:?}");
    }
    for command in ["remove", "alias", "prune", "verify", "rebuild"] {
        assert!(
            !publisher.iter().any(|c| c == command),
            "publisher sees {command}"
        );
        assert!(admin.iter().any(|c| c == command), "{admin:?}");
    }
    assert!(s.reader.ok("help").contains("role (reader)"));
    assert!(s.reader.ok("help list").contains("--format"));
}

#[test]
fn exit_statuses_and_one_line_errors() {
    let s = setup();
    assert_eq!(s.reader.ssh("list").status.code(), Some(0));
    assert!(
        s.reader
            .fails("info 0123abcd", 1)
            .starts_with("simplestream-server: ")
    );
    assert!(s.reader.fails("list --bogus", 2).contains("--bogus"));
    assert!(s.reader.fails("frobnicate", 2).contains("frobnicate"));
    assert!(s.reader.fails("list | head", 2).contains("runs no shell"));
    assert!(s.reader.fails("info 'unterminated", 2).contains("quote"));
    // Quoted arguments arrive whole.
    assert!(s.reader.fails("info 'two words'", 1).contains("two words"));
    let whoami = s.reader.ok("whoami");
    assert!(
        whoami.contains("user: ci-reader") && whoami.contains("role: reader"),
        "{whoami}"
    );
}

#[test]
fn refusals_say_what_is_wrong() {
    let s = setup();
    let client = &s.publisher;

    // Password and keyboard-interactive: only public keys are offered.
    for method in ["password", "keyboard-interactive"] {
        let output = run(
            client.ssh_command(
                &[
                    "-o",
                    &format!("PreferredAuthentications={method}"),
                    "-o",
                    "PubkeyAuthentication=no",
                ],
                Some("whoami"),
            ),
            None,
        );
        assert_eq!(output.status.code(), Some(255), "{method}");
        assert!(
            stderr(&output).contains("Permission denied (publickey)"),
            "{method}: {}",
            stderr(&output)
        );
    }
    // OpenSSH never sends a password to a server that offers only keys: it probes with
    // "none" and gives up. Those connections are audited all the same (tests/attacks.rs has
    // passwords that reach the server).
    let probes = wait_until(Duration::from_secs(10), "two failed logins", || {
        let failures: Vec<Value> = audit_events(&s.t, "auth")
            .into_iter()
            .filter(|e| e["result"] == "failure")
            .collect();
        (failures.len() == 2).then_some(failures)
    });
    for probe in &probes {
        assert_eq!(probe["address"], "127.0.0.1", "{probe}");
        assert_eq!(probe["attempts"][0]["method"], "none", "{probe}");
        assert_eq!(probe["attempts"][0]["login"], "upload", "{probe}");
    }

    // A shell: one line saying this is not a shell, status 1.
    let output = run(client.ssh_command(&[], None), None);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("runs commands only"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains(&refusal_reason(&s.t, "alice@laptop", "shell")));
    // A pty is refused; OpenSSH's client gives up when one was asked for with -t.
    let output = run(client.ssh_command(&["-tt"], Some("whoami")), None);
    assert_eq!(output.status.code(), Some(255), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("PTY allocation request failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(refusal(&s.t, "alice@laptop", "pty")["request"], "pty");

    // Environment variables are refused (silently for the client, as OpenSSH asks for no
    // reply) and noted in the audit log; the command runs.
    let output = run(
        client.ssh_command(&["-o", "SetEnv=SNEAKY=1"], Some("whoami")),
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    refusal(&s.t, "alice@laptop", "environment variable SNEAKY");

    // Forwarding: stdio (-W), remote (-R) and local (-L).
    let output = run(client.ssh_command(&["-W", "127.0.0.1:9"], None), None);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("stdio forwarding failed"),
        "{}",
        stderr(&output)
    );
    refusal(&s.t, "alice@laptop", "port forwarding to 127.0.0.1:9");
    let output = run(
        client.ssh_command(
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "0:127.0.0.1:9",
            ],
            None,
        ),
        None,
    );
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("remote port forwarding failed"),
        "{}",
        stderr(&output)
    );
    refusal(
        &s.t,
        "alice@laptop",
        "remote port forwarding from localhost:0",
    );

    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    drop(local);
    // At LogLevel INFO the client shows the server's reason for refusing the channel.
    let mut verbose = Client::new(client.address, &client.key);
    verbose.log_level = "INFO";
    let mut forwarder = verbose
        .ssh_command(
            &["-N", "-L", &format!("127.0.0.1:{port}:127.0.0.1:9")],
            None,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut connection = wait_until(Duration::from_secs(30), "the -L listener", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // The forwarded connection is closed at once: the server refused the channel.
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(connection.read(&mut buf).unwrap_or(0), 0);
    wait_until(
        Duration::from_secs(30),
        "the refusal in the audit log",
        || {
            audit_events(&s.t, "refused")
                .iter()
                .any(|e| e["request"] == "port forwarding to 127.0.0.1:9")
                .then_some(())
        },
    );
    forwarder.kill().unwrap();
    let output = forwarder.wait_with_output().unwrap();
    assert!(
        stderr(&output).contains("administratively prohibited: port forwarding is not available"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn expired_keys_and_wrong_addresses_are_refused() {
    let t = TestDir::new();
    let expired = Key::new(&t, "expired");
    let elsewhere = Key::new(&t, "elsewhere");
    let here = Key::new(&t, "here");
    let future = Key::new(&t, "future");
    write_authorized_keys(
        &t,
        &[
            expired.line(r#"expiry-time="20200101""#),
            elsewhere.line(r#"from="10.0.0.0/8,192.168.*""#),
            here.line(r#"from="!10.0.0.1,127.0.0.0/8",role="reader""#),
            future.line(r#"expiry-time="29990101Z""#),
        ],
    );
    let server = Server::start(&t, &[]);
    for key in [&expired, &elsewhere] {
        let output = Client::new(server.ssh(), key).ssh("whoami");
        assert_eq!(output.status.code(), Some(255), "{}", key.comment);
        assert!(
            stderr(&output).contains("Permission denied"),
            "{}",
            stderr(&output)
        );
    }
    assert!(
        Client::new(server.ssh(), &here)
            .ok("whoami")
            .contains("role: reader")
    );
    assert!(
        Client::new(server.ssh(), &future)
            .ok("whoami")
            .contains("user: future")
    );
    let failures = audit_events(&t, "auth");
    let reasons = serde_json::to_string(&failures).unwrap();
    assert!(
        reasons.contains("the key expired (authorized_keys line 1)"),
        "{reasons}"
    );
    assert!(
        reasons.contains("may not connect from 127.0.0.1"),
        "{reasons}"
    );
    // Each failure names the key's user and the address it came from.
    for (user, reason) in [
        ("expired", "the key expired"),
        ("elsewhere", "may not connect from 127.0.0.1"),
    ] {
        let failure = failures
            .iter()
            .find(|e| {
                e["attempts"]
                    .to_string()
                    .contains(&format!("\"user\":\"{user}\""))
            })
            .unwrap_or_else(|| panic!("no failure naming {user}: {reasons}"));
        assert_eq!(failure["result"], "failure");
        assert_eq!(failure["address"], "127.0.0.1");
        let attempt = failure["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["method"] == "publickey")
            .unwrap();
        assert_eq!(attempt["user"], user);
        assert!(
            attempt["reason"].as_str().unwrap().contains(reason),
            "{attempt}"
        );
        assert!(attempt["key"].as_str().unwrap().starts_with("SHA256:"));
    }
}

#[test]
fn malformed_lines_are_skipped_and_edits_apply_without_restart() {
    let t = TestDir::new();
    let good = Key::new(&t, "good");
    let later = Key::new(&t, "later");
    write_authorized_keys(
        &t,
        &[
            "# a comment".into(),
            "this is not a key".into(),
            good.line(r#"role="wizard""#),
            good.line(r#"command="rm -rf /""#),
            good.line(r#"role="publisher""#),
        ],
    );
    let server = Server::start(&t, &[]);
    let good_client = Client::new(server.ssh(), &good);
    let later_client = Client::new(server.ssh(), &later);
    assert!(good_client.ok("whoami").contains("role: publisher"));
    let log = server.output();
    for line in ["line 2:", "line 3:", "line 4:"] {
        assert!(log.contains(line), "{line} not reported in:\n{log}");
    }
    assert!(log.contains("unknown role"), "{log}");
    assert_eq!(later_client.ssh("whoami").status.code(), Some(255));

    // Added: works at once. Changed role: applies at the next login. Removed: refused.
    write_authorized_keys(&t, &[good.line(r#"role="admin""#), later.line("")]);
    assert!(later_client.ok("whoami").contains("user: later"));
    assert!(good_client.ok("whoami").contains("role: admin"));
    write_authorized_keys(&t, &[later.line("")]);
    assert_eq!(good_client.ssh("whoami").status.code(), Some(255));
}

/// Offer key A without signing (the server says it would accept it), then authenticate with
/// key B: the session must be B's, never A's (soft-serve GHSA-pchf-49fh-w34r).
#[tokio::test(flavor = "multi_thread")]
async fn offering_one_key_and_signing_with_another_makes_you_the_signer() {
    use std::sync::Arc;

    use russh::client::{self, AuthResult};
    use russh::keys::{PrivateKeyWithHashAlg, load_secret_key};

    /// Offers a key and then declines to sign with it. russh only asks for a signature
    /// after the server answered the unsigned offer with PK_OK ("this key would do").
    struct Decline {
        asked: bool,
    }
    impl russh::Signer for Decline {
        type Error = russh::SendError;
        async fn auth_sign(
            &mut self,
            _key: &russh::keys::agent::AgentIdentity,
            _hash_alg: Option<russh::keys::HashAlg>,
            _to_sign: Vec<u8>,
        ) -> Result<Vec<u8>, Self::Error> {
            self.asked = true;
            Err(russh::SendError {})
        }
    }

    let t = TestDir::new();
    let admin = Key::new(&t, "the-admin");
    let reader = Key::new(&t, "the-reader");
    write_authorized_keys(
        &t,
        &[
            admin.line(r#"role="admin""#),
            reader.line(r#"role="reader""#),
        ],
    );
    let server = Server::start(&t, &[]);

    let config = Arc::new(client::Config::default());
    let mut session = client::connect(config, server.ssh(), support::raw_ssh::AcceptAnyHost)
        .await
        .expect("connect");
    let admin_key = load_secret_key(&admin.private, None).unwrap();
    let mut decline = Decline { asked: false };
    let offered = session
        .authenticate_publickey_with("root", admin_key.public_key().clone(), None, &mut decline)
        .await;
    assert!(
        decline.asked,
        "the server should have accepted the offer of the admin key"
    );
    assert!(
        offered.is_err(),
        "the signer declined, so the offer must not succeed"
    );
    let reader_key = load_secret_key(&reader.private, None).unwrap();
    let result = session
        .authenticate_publickey(
            "root",
            PrivateKeyWithHashAlg::new(Arc::new(reader_key), None),
        )
        .await
        .expect("authenticate");
    assert!(matches!(result, AuthResult::Success), "{result:?}");

    let mut channel = session.channel_open_session().await.unwrap();
    channel.exec(true, "whoami").await.unwrap();
    let mut out = Vec::new();
    let mut status = None;
    while let Some(message) = channel.wait().await {
        match message {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    let out = String::from_utf8(out).unwrap();
    assert_eq!(status, Some(0));
    assert!(
        out.contains("user: the-reader") && out.contains("role: reader"),
        "{out}"
    );
    assert!(!out.contains("the-admin"), "{out}");
    let successes = audit_events(&t, "auth");
    assert!(
        successes.iter().all(|e| e["user"] != "the-admin"),
        "{successes:?}"
    );
    // The probe of the admin's key is on the record of the session it preceded.
    let admin_fingerprint = admin_key
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let success = successes
        .iter()
        .find(|e| e["result"] == "success")
        .expect("the success line");
    assert_eq!(success["user"], "the-reader");
    assert_eq!(success["address"], "127.0.0.1");
    assert_eq!(
        success["offered_unsigned"],
        serde_json::json!([admin_fingerprint])
    );
}

#[test]
fn paths_cannot_leave_the_upload_area() {
    let s = setup();
    let file = s.t.file("payload.bin");
    random_file(&file, 2000, 3);
    let dir = area(&s.t, "alice@laptop");
    // An admin-planted symlink must not be followed either.
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(s.t.data(), dir.join("link")).unwrap();

    let output = s.publisher.sftp_batch(
        s.t.path(),
        "-put payload.bin ../escaped.bin\n\
         -put payload.bin /../../escaped.bin\n\
         -put payload.bin link/escaped.bin\n\
         -get ../ci-reader/x got.bin\n\
         -get link/authorized_keys got.bin\n\
         -ls ..\n\
         -ln -s /etc/passwd pw\n\
         -symlink /etc/passwd pw2\n\
         -put payload.bin .upload-sneaky\n\
         put payload.bin fine.bin\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let errors = stderr(&output);
    assert!(errors.contains("Permission denied"), "{errors}");

    for dest in [
        "../escaped.bin",
        "/../escaped.bin",
        "a/../../escaped.bin",
        "link/escaped.bin",
    ] {
        let output = s.publisher.scp_legacy(&[&file], dest);
        assert!(!output.status.success(), "scp -O to {dest}");
        assert!(
            stderr(&output).contains("simplestream-server:"),
            "{dest}: {}",
            stderr(&output)
        );
        let output = s.publisher.scp(&[], &[&file], dest);
        assert!(!output.status.success(), "scp to {dest}");
    }

    assert!(!s.t.data().join("escaped.bin").exists());
    assert!(!s.t.data().join("incoming/escaped.bin").exists());
    assert!(!s.t.file("got.bin").exists());
    assert_eq!(names_in(&dir), ["fine.bin", "link"]);
    assert_eq!(
        names_in(&s.t.data().join("incoming")),
        [".upload-tmp", "alice@laptop"]
    );

    // Every refusal is audited: the request as the client sent it, and why.
    let user = "alice@laptop";
    for (request, reason) in [
        ("sftp open \"/../escaped.bin\"", "leaves your upload area"),
        ("sftp open \"/link/escaped.bin\"", "symbolic link"),
        ("sftp lstat \"/link/authorized_keys\"", "symbolic link"),
        ("sftp lstat \"/../ci-reader/x\"", "leaves your upload area"),
        ("sftp stat \"/..\"", "leaves your upload area"),
        ("sftp symlink", "symbolic links cannot be created"),
        (
            "sftp open \"/.upload-sneaky\"",
            "reserved for uploads in progress",
        ),
        ("scp -t ../escaped.bin", "leaves your upload area"),
        ("scp -t /../escaped.bin", "leaves your upload area"),
        ("scp -t a/../../escaped.bin", "leaves your upload area"),
        ("scp -t link/escaped.bin", "symbolic link"),
    ] {
        let found = refusal_reason(&s.t, user, request);
        assert!(found.contains(reason), "{request}: {found}");
    }
    // scp's SFTP mode resolves the name itself before opening it.
    let opened: Vec<Value> = audit_events(&s.t, "refused")
        .into_iter()
        .filter(|e| e["request"].as_str().unwrap().contains("escaped.bin"))
        .collect();
    assert!(opened.len() >= 12, "{opened:?}");
    assert!(
        opened
            .iter()
            .all(|e| e["user"] == user && e["address"] == "127.0.0.1")
    );
}

#[test]
fn quota_and_file_size_limits_hold_while_writing() {
    let s = setup_with_config("[ssh]\nquota_bytes = 1000000\nmax_file_bytes = 700000\n");
    let dir = area(&s.t, "alice@laptop");
    let small = s.t.file("small.bin");
    let big = s.t.file("big.bin");
    let second = s.t.file("second.bin");
    random_file(&small, 600_000, 4);
    random_file(&second, 600_000, 5);
    random_file(&big, 800_000, 6);

    // Over the per-file limit: refused in both protocols, nothing left behind.
    let output = s.publisher.scp(&[], &[&big], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("larger than"),
        "{}",
        stderr(&output)
    );
    let output = s.publisher.scp_legacy(&[&big], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("larger than"),
        "{}",
        stderr(&output)
    );
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));

    // Under the quota, then over it.
    assert!(s.publisher.scp(&[], &[&small], "").status.success());
    let output = s.publisher.scp(&[], &[&second], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("over your quota"),
        "{}",
        stderr(&output)
    );
    let output = s.publisher.scp_legacy(&[&second], "");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("over your quota"),
        "{}",
        stderr(&output)
    );
    assert_eq!(names_in(&dir), ["small.bin"]);

    // Each refusal is audited with the file and the limit.
    for (request, reason) in [
        ("sftp write /big.bin", "larger than"),
        ("scp \"C0644 800000 big.bin\"", "larger than"),
        ("sftp write /second.bin", "over your quota"),
        ("scp \"C0644 600000 second.bin\"", "over your quota"),
    ] {
        let found = refusal_reason(&s.t, "alice@laptop", request);
        assert!(found.contains(reason), "{request}: {found}");
    }

    // Removing an upload frees its room.
    s.publisher.ok("uploads --remove small.bin");
    assert!(s.publisher.scp(&[], &[&second], "").status.success());
    assert_eq!(names_in(&dir), ["second.bin"]);
}

#[test]
fn an_interrupted_upload_leaves_nothing_visible() {
    let s = setup();
    let dir = area(&s.t, "alice@laptop");
    // Uploads in progress are written outside the area, in the server's own directory.
    let temps = s.t.data().join("incoming/.upload-tmp/alice@laptop");
    let file = s.t.file("large.bin");
    random_file(&file, 16 << 20, 7);
    for legacy in [false, true] {
        // 4000 Kbit/s: the upload takes half a minute unless it is cut.
        let extra: &[&str] = if legacy {
            &["-O", "-l", "4000"]
        } else {
            &["-l", "4000"]
        };
        let mut child = s
            .publisher
            .scp_command(extra, &[&file], "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until bytes are being written to the hidden temp file, then cut the client.
        wait_until(Duration::from_secs(30), "the upload to start", || {
            std::fs::read_dir(&temps).ok()?.flatten().find(|e| {
                e.file_name().to_string_lossy().starts_with(".upload-")
                    && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
        });
        assert!(
            !dir.join("large.bin").exists(),
            "visible before it is complete"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        wait_until(Duration::from_secs(30), "the temp file to go", || {
            (names_in(&dir).is_empty() && names_in(&temps).is_empty()).then_some(())
        });
        // Written just after the temp file goes.
        let protocol = if legacy { "scp" } else { "sftp" };
        wait_until(
            Duration::from_secs(10),
            "the upload_incomplete line",
            || {
                audit_events(&s.t, "upload_incomplete")
                    .iter()
                    .any(|e| e["protocol"] == protocol)
                    .then_some(())
            },
        );
    }
}

#[test]
fn two_users_upload_at_the_same_time() {
    let t = TestDir::new();
    let alice = Key::new(&t, "alice");
    let bob = Key::new(&t, "bob");
    write_authorized_keys(&t, &[alice.line(""), bob.line("")]);
    let server = Server::start(&t, &[]);
    let a = t.file("a.bin");
    let b = t.file("b.bin");
    random_file(&a, 24 << 20, 8);
    random_file(&b, 24 << 20, 9);
    let alice_client = Client::new(server.ssh(), &alice);
    let bob_client = Client::new(server.ssh(), &bob);
    let first = alice_client
        .scp_command(&[], &[&a], "same-name.bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second = bob_client
        .scp_command(&["-O"], &[&b], "same-name.bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for child in [first, second] {
        let output = support::ssh::wait_with_deadline(child, support::ssh::COMMAND_DEADLINE);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    assert_eq!(
        std::fs::read(area(&t, "alice").join("same-name.bin")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    assert_eq!(
        std::fs::read(area(&t, "bob").join("same-name.bin")).unwrap(),
        std::fs::read(&b).unwrap()
    );
}

fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

#[test]
fn a_client_that_never_logs_in_is_cut_after_the_grace_time() {
    let s = setup_with_config("[ssh]\nlogin_grace_secs = 1\n");
    let mut idle = TcpStream::connect(s.server.ssh()).unwrap();
    let started = std::time::Instant::now();
    let seen = read_until_closed(&mut idle);
    assert!(seen.starts_with(b"SSH-2.0-simplestream-server"), "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    wait_until(Duration::from_secs(10), "the audit line", || {
        audit_events(&s.t, "login_timeout").first().cloned()
    });
}

#[test]
fn connections_per_address_are_capped_before_the_handshake() {
    let s = setup_with_config("[ssh]\nmax_connections_per_address = 2\n");
    let address = s.server.ssh();
    let mut one = TcpStream::connect(address).unwrap();
    let mut two = TcpStream::connect(address).unwrap();
    // Both got the banner: they hold their slots.
    for stream in [&mut one, &mut two] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 8];
        assert!(stream.read(&mut buf).unwrap() > 0);
    }
    let mut third = TcpStream::connect(address).unwrap();
    assert!(
        read_until_closed(&mut third).is_empty(),
        "the third got a banner"
    );
    let refused = audit_events(&s.t, "connection_refused");
    assert!(
        refused
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("limit per address")),
        "{refused:?}"
    );
    // A slot frees when a connection ends.
    drop(one);
    wait_until(Duration::from_secs(10), "a free slot", || {
        s.publisher.ssh("whoami").status.success().then_some(())
    });
}

#[test]
fn repeated_failed_logins_get_an_address_refused() {
    let s = setup_with_config("[ssh]\nfailed_auth_limit = 2\nfailed_auth_window_secs = 600\n");
    let stranger = Key::new(&s.t, "stranger");
    let stranger_client = Client::new(s.server.ssh(), &stranger);
    for _ in 0..2 {
        assert_eq!(stranger_client.ssh("whoami").status.code(), Some(255));
    }
    wait_until(
        Duration::from_secs(10),
        "the address to be throttled",
        || {
            audit_events(&s.t, "auth")
                .iter()
                .filter(|e| e["result"] == "failure")
                .nth(1)
                .map(|_| ())
        },
    );
    // Now even a good key is refused from this address, before the handshake.
    let output = s.publisher.ssh("whoami");
    assert_eq!(output.status.code(), Some(255));
    let refused = audit_events(&s.t, "connection_refused");
    assert!(
        refused
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("failed to log in")),
        "{refused:?}"
    );
}

#[test]
fn the_host_key_is_generated_once_and_kept() {
    let t = TestDir::new();
    let key = Key::new(&t, "k");
    write_authorized_keys(&t, &[key.line("")]);
    let fingerprint_line = |server: &Server| {
        server
            .output()
            .lines()
            .find(|l| l.starts_with("ssh host key SHA256:"))
            .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
            .expect("fingerprint line")
    };
    let first = Server::start(&t, &[]);
    let fingerprint = fingerprint_line(&first);
    assert!(first.terminate().success());
    let second = Server::start(&t, &[]);
    assert_eq!(fingerprint_line(&second), fingerprint);
    let key_file = t.data().join("host-keys/ssh_host_ed25519_key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The client sees the same key.
    let keygen = support::require_tool("ssh-keygen", "openssh-client");
    let shown = std::process::Command::new(keygen)
        .arg("-lf")
        .arg(t.data().join("host-keys/ssh_host_ed25519_key.pub"))
        .output()
        .unwrap();
    assert!(stdout(&shown).contains(&fingerprint), "{}", stdout(&shown));
    assert_eq!(
        simplestream_server::host_keys::host_key_fingerprint(
            &simplestream_server::data_dir::DataDir::new(t.data())
        )
        .unwrap(),
        Some(fingerprint)
    );
}

/// Every file images.json names, fetched over HTTPS, hashes to the sha256 the index gives it,
/// and each metadata item's combined hashes are those of the served metadata and root.
fn assert_served_bytes_match_the_index(s: &Setup) {
    use sha2::Digest;
    let client = support::http::Client::new(s.server.https(), &s.t.data().join("tls/server.crt"));
    let fetch = |path: &str| {
        let response = client.get(&format!("/{path}"));
        assert_eq!(response.status, 200, "GET /{path}");
        response.body
    };
    let hex = |parts: &[&[u8]]| {
        let mut hasher = sha2::Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        hex::encode(hasher.finalize())
    };
    let images: Value = serde_json::from_slice(&fetch("streams/v1/images.json")).unwrap();
    let mut checked = 0;
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            let items = version["items"].as_object().unwrap();
            let served: Vec<(&Value, Vec<u8>)> = items
                .values()
                .map(|item| (item, fetch(item["path"].as_str().unwrap())))
                .collect();
            for (item, bytes) in &served {
                assert_eq!(item["sha256"].as_str().unwrap(), hex(&[bytes]), "{item}");
                checked += 1;
                let Some(item_fields) = item.as_object() else {
                    continue;
                };
                for (field, combined) in item_fields {
                    let Some(root_kind) = field
                        .strip_prefix("combined_")
                        .and_then(|f| f.strip_suffix("_sha256"))
                    else {
                        continue;
                    };
                    let root = served.iter().find(|(other, _)| other["ftype"] == root_kind);
                    if let Some((_, root_bytes)) = root {
                        assert_eq!(
                            combined.as_str().unwrap(),
                            hex(&[bytes, root_bytes]),
                            "{field} of {item}"
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 0, "nothing published: {images}");
}

/// Two squashfs roots of the same size, with the same mtime.
fn twin_roots(t: &TestDir, first: &str, second: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (t.file(first), t.file(second));
    support::squashfs(&a, first);
    support::squashfs(&b, second);
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(len(&a), len(&b));
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for path in [&a, &b] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    (a, b)
}

/// Issue 10 item 4 (b): upload A, rename its directory away, replace A by B of the same size
/// and mtime (the freed inode comes back), rename the directory back and import: the index
/// names B's hash, which is what HTTPS serves.
#[test]
fn a_root_replaced_while_its_directory_was_renamed_is_published_with_its_own_hash() {
    let s = setup();
    let metadata = s.t.file("meta.tar.xz");
    support::metadata_tarball(&metadata, &Meta::default());
    twin_roots(&s.t, "a.squashfs", "b.squashfs");
    let upload = "mkdir d\nput -p meta.tar.xz d/meta.tar.xz\nput -p a.squashfs d/root.squashfs\n";
    let output = s.publisher.sftp_batch(s.t.path(), upload);
    assert!(output.status.success(), "{}", stderr(&output));
    let uploads = json(&s.publisher.ok("uploads --format json"));
    let root = uploads
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "d/root.squashfs")
        .unwrap();
    assert_eq!(
        root["sha256"],
        support::sha256_of(&[&s.t.file("a.squashfs")]).as_str(),
        "hashed on the way in"
    );
    let first_inode = std::fs::metadata(area(&s.t, "alice@laptop").join("d/root.squashfs"))
        .unwrap()
        .ino();
    let output = s
        .publisher
        .sftp_batch(s.t.path(), "rename d e\nrm e/root.squashfs\n");
    assert!(output.status.success(), "{}", stderr(&output));
    // A journaling filesystem hands a freed inode out again once its deletion is committed.
    assert!(
        std::process::Command::new("sync")
            .status()
            .unwrap()
            .success()
    );
    let output = s.publisher.sftp_batch(
        s.t.path(),
        "put -p b.squashfs e/root.squashfs\nrename e d\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let second_inode = std::fs::metadata(area(&s.t, "alice@laptop").join("d/root.squashfs"))
        .unwrap()
        .ino();
    eprintln!("inode reused: {}", first_inode == second_inode);
    s.publisher.ok("import d/meta.tar.xz d/root.squashfs");
    assert_served_bytes_match_the_index(&s);
    let fingerprint = support::sha256_of(&[&metadata, &s.t.file("b.squashfs")]);
    let list = json(&s.reader.ok("list --format json"));
    assert_eq!(list[0]["fingerprint"], fingerprint.as_str());
}

/// Issue 10 item 4 (a): a root of the same size renamed over the one being imported, again
/// and again while the import runs: whichever file is published, the index gives its hash.
#[test]
fn a_root_renamed_over_during_an_import_is_published_with_its_own_hash() {
    let s = setup();
    let metadata = s.t.file("meta.tar.xz");
    support::metadata_tarball(&metadata, &Meta::default());
    twin_roots(&s.t, "a.squashfs", "b.squashfs");
    let mut published = 0;
    for round in 0..4 {
        let (a, b) = twin_roots(
            &s.t,
            &format!("a{round}.squashfs"),
            &format!("b{round}.squashfs"),
        );
        // Copies of A and B, taking the root's place one after another while the import runs.
        let swap = s.t.file(&format!("swap{round}"));
        std::fs::create_dir(&swap).unwrap();
        let mut swaps = String::new();
        for n in 0..60 {
            let copy = swap.join(format!("{n:02}.squashfs"));
            std::fs::copy(if n % 2 == 0 { &b } else { &a }, &copy).unwrap();
            swaps.push_str(&format!(
                "-rename swap{round}/{n:02}.squashfs root.squashfs\n"
            ));
        }
        let output = s.publisher.scp(&["-r"], &[&swap, &metadata], "");
        assert!(output.status.success(), "{}", stderr(&output));
        let output = s.publisher.scp(&[], &[&a], "root.squashfs");
        assert!(output.status.success(), "{}", stderr(&output));
        let import = s.publisher.ssh_command(
            &[],
            Some(&format!(
                "import meta.tar.xz root.squashfs --serial 20260101_00{round:02}"
            )),
        );
        let import = std::thread::spawn(move || run(import, None));
        s.publisher.sftp_batch(s.t.path(), &swaps);
        // Published, or refused because the root was renamed away at the wrong moment.
        if import.join().unwrap().status.success() {
            published += 1;
            assert_served_bytes_match_the_index(&s);
        }
        s.publisher.sftp_batch(
            s.t.path(),
            &format!("-rm swap{round}/*\n-rmdir swap{round}\n-rm *.squashfs\n-rm meta.tar.xz\n"),
        );
    }
    assert!(published > 0, "no import went through");
}

/// Issue 11 part 3: `uploads --remove` goes through the upload area like an SFTP remove: the
/// room is free at once (even while another session of the user keeps the area's account
/// alive), the digest is forgotten and the removal is audited.
#[test]
fn uploads_remove_frees_the_room_forgets_the_digest_and_is_audited() {
    let s = setup_with_config("[ssh]\nquota_bytes = 1000000\n");
    let first = s.t.file("first.bin");
    let second = s.t.file("second.bin");
    random_file(&first, 600_000, 31);
    random_file(&second, 600_000, 32);
    assert!(s.publisher.scp(&[], &[&first], "").status.success());
    s.publisher.ok("uploads --remove first.bin");
    let removed = audit_events(&s.t, "upload_removed");
    assert!(
        removed.iter().any(|e| e["file"] == "/first.bin"
            && e["via"] == "uploads"
            && e["user"] == "alice@laptop"),
        "{removed:?}"
    );
    // The same name uploaded again is hashed anew, not taken for the removed file.
    assert!(
        s.publisher
            .scp(&[], &[&second], "first.bin")
            .status
            .success()
    );
    let uploads = json(&s.publisher.ok("uploads --format json"));
    assert_eq!(
        uploads[0]["sha256"],
        support::sha256_of(&[&second]).as_str()
    );
}

/// Uploads `files` with scp and asserts it worked.
fn upload(client: &Client, files: &[&Path]) {
    let output = client.scp(&[], files, "");
    assert!(output.status.success(), "scp: {}", stderr(&output));
}

/// Regression (issue 10, item 10): a publisher importing with `--serial 99991231_2359` made
/// another publisher's product's newest version and moved its aliases. Now the far-future
/// serial is refused, the product belongs to its creator, and only an admin shares it or
/// hands it over.
#[test]
fn a_publisher_cannot_take_over_another_publishers_product() {
    let t = TestDir::new();
    let keys = [
        Key::new(&t, "the-admin"),
        Key::new(&t, "alice"),
        Key::new(&t, "mallory"),
    ];
    write_authorized_keys(
        &t,
        &[
            keys[0].line(r#"role="admin""#),
            keys[1].line(""),
            keys[2].line(""),
        ],
    );
    let server = Server::start(&t, &[]);
    let [admin, alice, mallory] = keys.map(|key| Client::new(server.ssh(), &key));
    let product = "testos:1:amd64:default";

    let (meta, root) = split_image(&t, "alice-1", &Meta::default());
    upload(&alice, &[&meta, &root]);
    alice.ok("import alice-1.tar.xz alice-1.squashfs");
    let published = t.read_json("streams/v1/images.json");

    // The attack from the issue, then the same with a plausible serial, then alice's alias
    // claimed for another architecture: each refused with one line, nothing published.
    let (meta, root) = split_image(&t, "mallory-1", &Meta::default());
    let arm = Meta {
        arch: "aarch64",
        ..Meta::default()
    };
    let (arm_meta, arm_root) = split_image(&t, "mallory-arm", &arm);
    upload(&mallory, &[&meta, &root, &arm_meta, &arm_root]);
    let err = mallory.fails(
        "import mallory-1.tar.xz mallory-1.squashfs --serial 99991231_2359",
        1,
    );
    assert!(
        err.contains("serial \"99991231_2359\" is more than a day in the future"),
        "{err}"
    );
    let err = mallory.fails(
        "import mallory-1.tar.xz mallory-1.squashfs --serial 20251128_0000",
        1,
    );
    assert!(
        err.contains(&format!(
            "product {product} belongs to alice; only its owner, the users it is shared with and admins may publish into it"
        )),
        "{err}"
    );
    let err = mallory.fails("import mallory-arm.tar.xz mallory-arm.squashfs", 1);
    assert!(
        err.contains(&format!(
            "alias \"testos/1\" belongs to {product}, a product of alice"
        )),
        "{err}"
    );
    assert_eq!(t.read_json("streams/v1/images.json"), published);
    assert_eq!(
        names_in(&area(&t, "mallory")),
        [
            "mallory-1.squashfs",
            "mallory-1.tar.xz",
            "mallory-arm.squashfs",
            "mallory-arm.tar.xz"
        ]
    );
    // Publishers cannot change who owns what.
    assert_eq!(
        mallory
            .ssh(&format!("product share {product} mallory"))
            .status
            .code(),
        Some(1)
    );

    // Shared by an admin: mallory publishes a new version (still not a far-future one).
    admin.ok(&format!("product share {product} mallory"));
    mallory.fails(
        "import mallory-1.tar.xz mallory-1.squashfs --serial 99991231_2359",
        1,
    );
    mallory.ok("import mallory-1.tar.xz mallory-1.squashfs --serial 20251128_0000");
    let versions = t.read_json("streams/v1/images.json")["products"][product]["versions"].clone();
    let serials: Vec<&String> = versions.as_object().unwrap().keys().collect();
    assert_eq!(serials, ["20251127_1200", "20251128_0000"]);

    // Unshared: refused again.
    admin.ok(&format!("product unshare {product} mallory"));
    let (meta, root) = split_image(&t, "mallory-2", &Meta::default());
    upload(&mallory, &[&meta, &root]);
    let err = mallory.fails(
        "import mallory-2.tar.xz mallory-2.squashfs --serial 20251128_0100",
        1,
    );
    assert!(err.contains("belongs to alice"), "{err}");

    // Handed over: mallory owns it now, and alice is the one refused.
    admin.ok("product owner testos/1 mallory");
    mallory.ok("import mallory-2.tar.xz mallory-2.squashfs --serial 20251128_0100");
    let (meta, root) = split_image(&t, "alice-2", &Meta::default());
    upload(&alice, &[&meta, &root]);
    let err = alice.fails(
        "import alice-2.tar.xz alice-2.squashfs --serial 20251128_0200",
        1,
    );
    assert!(
        err.contains(&format!("product {product} belongs to mallory")),
        "{err}"
    );
    let owners = json(&admin.ok("product list --format json"));
    assert_eq!(
        owners,
        serde_json::json!([{"product": product, "owner": "mallory", "shared_with": []}])
    );
    assert!(alice.ok("info testos/1").contains("Owner: mallory"));
}

/// Regression (issue 10, item 11): comments `alice@laptop (CI)` and `alice@laptop_ CI_` both
/// became `alice@laptop__CI_`, so key B listed and removed key A's uploads. The second line is
/// refused at load, naming both lines; `user=` on both shares a name on purpose.
#[test]
fn keys_whose_names_collide_are_refused_unless_shared_explicitly() {
    let t = TestDir::new();
    let a = Key::new(&t, "alice@laptop (CI)");
    let b = Key::new(&t, "alice@laptop_ CI_");
    write_authorized_keys(&t, &[a.line(""), "# the second key".into(), b.line("")]);
    let server = Server::start(&t, &[]);
    let (a_client, b_client) = (Client::new(server.ssh(), &a), Client::new(server.ssh(), &b));
    assert!(a_client.ok("whoami").contains("user: alice@laptop__CI_"));
    let file = t.file("a-upload.bin");
    random_file(&file, 4096, 11);
    upload(&a_client, &[&file]);
    let refused = b_client.ssh("uploads");
    assert_eq!(refused.status.code(), Some(255), "{}", stderr(&refused));
    assert!(!stdout(&refused).contains("a-upload.bin"));
    wait_until(
        Duration::from_secs(10),
        "the load-time refusal in the log",
        || {
            let log = server.output();
            log.contains("line 3: user name \"alice@laptop__CI_\" (from the comment \"alice@laptop_ CI_\") is already line 1's (from the comment \"alice@laptop (CI)\")")
            .then_some(())
        },
    );

    // Said explicitly, the two keys share one name and one upload area.
    write_authorized_keys(
        &t,
        &[a.line(r#"user="alice-ci""#), b.line(r#"user="alice-ci""#)],
    );
    assert!(b_client.ok("whoami").contains("user: alice-ci"));
    upload(&a_client, &[&file]);
    assert!(b_client.ok("uploads").contains("a-upload.bin"));
}

/// Regression (issue 10, item 17): `from=` host name patterns never matched (host names are
/// never looked up), so `!localhost` was silently ignored and the key logged in. Such a line
/// is now refused at load with a clear line; address patterns keep working.
#[test]
fn host_name_patterns_in_from_are_refused_at_load() {
    let t = TestDir::new();
    let named = Key::new(&t, "by-name");
    let numeric = Key::new(&t, "by-address");
    write_authorized_keys(
        &t,
        &[
            named.line(r#"from="127.0.0.1,!localhost""#),
            numeric.line(r#"from="127.0.0.*,!10.0.0.0/8""#),
        ],
    );
    let server = Server::start(&t, &[]);
    let refused = Client::new(server.ssh(), &named).ssh("whoami");
    assert_eq!(refused.status.code(), Some(255), "{}", stdout(&refused));
    wait_until(
        Duration::from_secs(10),
        "the load-time refusal in the log",
        || {
            server
            .output()
            .contains("line 1: from= pattern \"localhost\" is a host name; host names are never looked up")
            .then_some(())
        },
    );
    assert!(
        Client::new(server.ssh(), &numeric)
            .ok("whoami")
            .contains("user: by-address")
    );
}

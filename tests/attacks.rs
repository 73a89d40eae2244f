//! Attacks on the SSH and HTTPS sides, each refused, and on the SSH side each refusal found
//! in the audit log with who, from where, and what. What OpenSSH's clients can send is in
//! tests/ssh.rs; here are the requests they never send (driven by russh's client), the
//! authorized_keys corpus, and the HTTP attacks. Every server listens on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use russh_sftp::client::error::Error as SftpClientError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use serde_json::Value;

use crate::support;
use crate::support::net::USER;
use crate::support::raw_ssh::{self, step};
use crate::support::server::Server;
use crate::support::ssh::{
    Client, Key, area, audit_events, names_in, refusal, run, write_authorized_keys,
};
use crate::support::{TestDir, wait_until};

// ---------------------------------------------------------------------------------------
// SSH

/// A server with a publisher (alice), a reader (carol) and an admin (root).
struct Gateway {
    t: TestDir,
    server: Server,
    alice: Key,
    carol: Key,
}

fn gateway() -> Gateway {
    let t = TestDir::new();
    let alice = Key::new(&t, "alice");
    let carol = Key::new(&t, "carol");
    let root = Key::new(&t, "root");
    write_authorized_keys(
        &t,
        &[
            alice.line(""),
            carol.line(r#"role="reader""#),
            root.line(r#"role="admin""#),
        ],
    );
    let server = Server::start(&t, &[]);
    Gateway {
        t,
        server,
        alice,
        carol,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The status code of a refused SFTP request (fails the test when it succeeded).
fn status_of<T: std::fmt::Debug>(what: &str, result: Result<T, SftpClientError>) -> StatusCode {
    match result {
        Err(SftpClientError::Status(status)) => status.status_code,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// An SFTP string (u32 length, bytes), for extension payloads.
fn sftp_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// SFTP requests with names OpenSSH's clients never send (NUL, backslash, control
/// characters, U+FFFD, 300-byte parts, 2,000-byte paths), escapes by every request that takes
/// a path, a symlink planted in the area by someone else, link requests and a resize of a
/// finished upload: each refused, each audited with the request as sent, and nothing outside
/// the area touched.
#[test]
fn sftp_requests_no_openssh_client_sends_are_refused_and_audited() {
    let g = gateway();
    let dir = area(&g.t, "alice");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.bin"), b"kept").unwrap();
    // Planted by someone else (an admin's mistake, another process): never followed.
    std::os::unix::fs::symlink(g.t.data(), dir.join("planted")).unwrap();
    let long_part = "x".repeat(300);
    let long_path = format!("{}x", "a/".repeat(1000));
    let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;

    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.alice).await;
        let sftp = raw_ssh::sftp(&session).await;
        // (request in the audit log, reason, status code)
        let mut expected: Vec<(String, &str, StatusCode)> = Vec::new();
        for (name, reason) in [
            ("a\0b", "NUL"),
            ("a\\b", "backslash"),
            ("a\nb", "control"),
            ("bad\u{fffd}", "control or replacement"),
            ("\u{1b}[2J", "control"),
            (long_part.as_str(), "longer than 255"),
            (long_path.as_str(), "too long"),
            ("../escaped.bin", "leaves your upload area"),
            ("/../../escaped.bin", "leaves your upload area"),
            ("ok/../../escaped.bin", "leaves your upload area"),
            ("planted/authorized_keys", "symbolic link"),
            (".upload-1-2-3", "reserved for uploads in progress"),
        ] {
            let code = status_of(
                name,
                step("open", sftp.open(name, write, FileAttributes::default())).await,
            );
            expected.push((format!("sftp open {name:?}"), reason, code));
        }
        let read_passwd = step(
            "open",
            sftp.open(
                "/../../../../etc/passwd",
                OpenFlags::READ,
                FileAttributes::default(),
            ),
        )
        .await;
        expected.push((
            "sftp open \"/../../../../etc/passwd\"".into(),
            "leaves your upload area",
            status_of("read /etc/passwd", read_passwd),
        ));
        for (request, result) in [
            (
                "sftp stat \"..\"",
                step("stat", sftp.stat("..")).await.map(|_| ()),
            ),
            (
                "sftp lstat \"planted\"",
                step("lstat", sftp.lstat("planted")).await.map(|_| ()),
            ),
            (
                "sftp opendir \"planted\"",
                step("opendir", sftp.opendir("planted")).await.map(|_| ()),
            ),
            (
                "sftp opendir \"/..\"",
                step("opendir", sftp.opendir("/..")).await.map(|_| ()),
            ),
            (
                "sftp mkdir \"../evil\"",
                step("mkdir", sftp.mkdir("../evil", FileAttributes::default()))
                    .await
                    .map(|_| ()),
            ),
            (
                "sftp remove \"planted\"",
                step("remove", sftp.remove("planted")).await.map(|_| ()),
            ),
            (
                "sftp remove \"../carol/x\"",
                step("remove", sftp.remove("../carol/x")).await.map(|_| ()),
            ),
            (
                "sftp rmdir \"/\"",
                step("rmdir", sftp.rmdir("/")).await.map(|_| ()),
            ),
            (
                "sftp rename \"keep.bin\" \"../keep.bin\"",
                step("rename", sftp.rename("keep.bin", "../keep.bin"))
                    .await
                    .map(|_| ()),
            ),
            (
                "sftp rename \"/\" \"moved\"",
                step("rename", sftp.rename("/", "moved")).await.map(|_| ()),
            ),
            (
                "sftp realpath \"../..\"",
                step("realpath", sftp.realpath("../..")).await.map(|_| ()),
            ),
            (
                "sftp symlink \"/etc/passwd\" \"pw\"",
                step("symlink", sftp.symlink("/etc/passwd", "pw"))
                    .await
                    .map(|_| ()),
            ),
            (
                "sftp hardlink@openssh.com",
                step("hardlink", sftp.hardlink("keep.bin", "hard"))
                    .await
                    .map(|_| ()),
            ),
        ] {
            let code = status_of(request, result);
            expected.push((request.to_string(), "", code));
        }
        let mut payload = Vec::new();
        sftp_string(&mut payload, "keep.bin");
        sftp_string(&mut payload, "../../keep.bin");
        let renamed = step(
            "posix-rename",
            sftp.extended("posix-rename@openssh.com", payload),
        )
        .await;
        match renamed {
            Ok(russh_sftp::protocol::Packet::Status(status)) => {
                assert_eq!(status.status_code, StatusCode::PermissionDenied);
            }
            other => panic!("posix-rename: {other:?}"),
        }
        expected.push((
            "sftp posix-rename@openssh.com".into(),
            "leaves your upload area",
            StatusCode::PermissionDenied,
        ));
        let resize = FileAttributes {
            size: Some(1 << 40),
            ..FileAttributes::default()
        };
        let code = status_of(
            "resize",
            step("setstat", sftp.setstat("keep.bin", resize)).await,
        );
        expected.push(("sftp setstat \"keep.bin\"".into(), "upload it again", code));

        for (request, reason, code) in &expected {
            let wanted = if request.starts_with("sftp setstat") {
                StatusCode::OpUnsupported
            } else {
                StatusCode::PermissionDenied
            };
            assert_eq!(*code, wanted, "{request}");
            // Long requests are clipped in the log: look for their start.
            let start: String = request.chars().take(100).collect();
            let line = refusal(&g.t, "alice", &start);
            assert!(
                line["reason"].as_str().unwrap().contains(reason),
                "{request}: {line}"
            );
        }
        // The escaped NUL is kept as sent, and the 2,000-byte path is clipped.
        let clipped = refusal(&g.t, "alice", "sftp open \"a/a/a/a");
        assert!(
            clipped["request"].as_str().unwrap().len() < 600,
            "{clipped}"
        );
    });

    assert_eq!(names_in(&dir), ["keep.bin", "planted"]);
    assert_eq!(std::fs::read(dir.join("keep.bin")).unwrap(), b"kept");
    assert_eq!(names_in(&g.t.data().join("incoming")), ["alice"]);
    for escaped in ["escaped.bin", "evil", "keep.bin", "pw", "hard"] {
        assert!(!g.t.data().join(escaped).exists(), "{escaped}");
        assert!(
            !g.t.data().join("incoming").join(escaped).exists(),
            "{escaped}"
        );
    }
}

/// The `scp -t` sink fed control lines OpenSSH never writes: names with a slash, `..`, NUL,
/// backslash, 300 bytes, a reserved name, a directory named `..`; and targets out of the
/// area, and a download. Each is refused and audited; a good file after them still lands.
#[test]
fn scp_sink_lines_no_openssh_client_sends_are_refused_and_audited() {
    let g = gateway();
    let dir = area(&g.t, "alice");
    let long = "y".repeat(300);
    let names = [
        ("../x", "slash"),
        ("..", "leaves your upload area"),
        ("a\0b", "NUL"),
        ("a\\b", "backslash"),
        (long.as_str(), "longer than 255"),
        (".upload-9", "reserved"),
    ];
    let mut input = Vec::new();
    for (name, _) in &names {
        input.extend_from_slice(format!("C0644 3 {name}\n").as_bytes());
    }
    input.extend_from_slice(b"C0644 3 fine.bin\nabc\0");

    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.alice).await;
        let sink = raw_ssh::exec(&session, b"scp -t .", Some(&input)).await;
        assert_eq!(sink.status, Some(1), "{}", sink.stderr());
        let replies = String::from_utf8_lossy(&sink.stdout).into_owned();
        assert_eq!(
            replies.matches("\x01simplestream-server: ").count(),
            names.len(),
            "{replies:?}"
        );
        for (name, reason) in &names {
            let line = refusal(
                &g.t,
                "alice",
                &format!("scp {:?}", format!("C0644 3 {name}")),
            );
            assert!(
                line["reason"].as_str().unwrap().contains(reason),
                "{name}: {line}"
            );
        }

        let recursive = raw_ssh::exec(&session, b"scp -r -t .", Some(b"D0755 0 ..\n")).await;
        assert_eq!(recursive.status, Some(1));
        assert!(
            refusal(&g.t, "alice", "scp \"D0755 0 ..\"")["reason"]
                .as_str()
                .unwrap()
                .contains("leaves your upload area")
        );

        // (command line, as the audit log shows it after splitting, reason)
        for (command, logged, reason) in [
            (
                "scp -t ../../x",
                "scp -t ../../x",
                "leaves your upload area",
            ),
            ("scp -t /../x", "scp -t /../x", "leaves your upload area"),
            ("scp -f /etc/passwd", "scp -f /etc/passwd", "uploads only"),
            ("scp -t 'a\\b'", "scp -t a\\b", "backslash"),
        ] {
            let refused = raw_ssh::exec(&session, command.as_bytes(), None).await;
            assert_eq!(refused.status, Some(1), "{command}");
            assert!(
                String::from_utf8_lossy(&refused.stdout).starts_with("\x02simplestream-server: "),
                "{command}: {:?}",
                refused.stdout
            );
            let line = refusal(&g.t, "alice", logged);
            assert_eq!(line["request"], logged);
            assert!(
                line["reason"].as_str().unwrap().contains(reason),
                "{command}: {line}"
            );
        }
    });
    assert_eq!(names_in(&dir), ["fine.bin"]);
    assert_eq!(std::fs::read(dir.join("fine.bin")).unwrap(), b"abc");
    assert_eq!(
        names_in(&g.t.data().join("incoming")),
        [".upload-tmp", "alice"]
    );
}

/// Password and keyboard-interactive requests that reach the server (OpenSSH never sends
/// them to a key-only server; russh's client does), and a key that is not listed: refused,
/// and audited with the method, the login name and the address, never the password.
#[test]
fn password_keyboard_interactive_and_unknown_keys_are_refused_and_audited() {
    use russh::client::{AuthResult, KeyboardInteractiveAuthResponse};
    let g = gateway();
    let stranger = Key::new(&g.t, "stranger");
    runtime().block_on(async {
        let mut session = step("connect", raw_ssh::connect(g.server.ssh(), USER))
            .await
            .unwrap();
        let password = step(
            "password",
            session.authenticate_password("root", "hunter2-secret"),
        )
        .await
        .unwrap();
        assert!(
            matches!(password, AuthResult::Failure { .. }),
            "{password:?}"
        );
        let interactive = step(
            "keyboard-interactive",
            session.authenticate_keyboard_interactive_start("admin", None),
        )
        .await
        .unwrap();
        assert!(
            matches!(interactive, KeyboardInteractiveAuthResponse::Failure { .. }),
            "{interactive:?}"
        );
        let key = russh::keys::load_secret_key(&stranger.private, None).unwrap();
        let unknown = step(
            "an unknown key",
            session.authenticate_publickey(
                "alice",
                russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
            ),
        )
        .await
        .unwrap();
        assert!(matches!(unknown, AuthResult::Failure { .. }), "{unknown:?}");
        // Still refused once the client has tried everything: nothing let it in.
        assert!(session.channel_open_session().await.is_err());
        let _ = session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    });
    let failure = wait_until(Duration::from_secs(10), "the failure line", || {
        audit_events(&g.t, "auth")
            .into_iter()
            .find(|e| e["result"] == "failure")
    });
    assert_eq!(failure["address"], "127.0.0.1");
    let attempts = failure["attempts"].as_array().unwrap();
    let methods: Vec<&str> = attempts
        .iter()
        .map(|a| a["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["password", "keyboard-interactive", "publickey"],
        "{failure}"
    );
    assert_eq!(attempts[0]["login"], "root");
    assert_eq!(attempts[1]["login"], "admin");
    assert!(
        attempts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("password authentication is disabled")
    );
    assert!(
        attempts[2]["reason"]
            .as_str()
            .unwrap()
            .contains("not in authorized_keys")
    );
    assert!(attempts[2]["key"].as_str().unwrap().starts_with("SHA256:"));
    assert!(
        !failure.to_string().contains("hunter2"),
        "the password is in the audit log"
    );
    assert!(
        audit_events(&g.t, "auth")
            .iter()
            .all(|e| e["result"] != "success")
    );
}

/// Channel and global requests OpenSSH sends only when asked to (agent and X11 forwarding,
/// a pty, environment variables, other subsystems, socket forwarding, X11 channels, more
/// channels than allowed): each refused and audited with the user and address.
#[test]
fn forwarding_pty_env_and_other_requests_are_refused_and_audited() {
    let g = gateway();
    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.alice).await;
        let mut channel = step("a session channel", session.channel_open_session())
            .await
            .unwrap();
        // Each asks for a reply: the server must say no.
        channel.agent_forward(true).await.unwrap();
        channel
            .request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00ff", 0)
            .await
            .unwrap();
        channel
            .request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        channel
            .set_env(true, "LD_PRELOAD", "/tmp/evil.so")
            .await
            .unwrap();
        let mut failures = 0;
        while failures < 4 {
            match step("the replies", channel.wait()).await {
                Some(ChannelMsg::Failure) => failures += 1,
                Some(ChannelMsg::Success) => panic!("a request was granted"),
                Some(_) => {}
                None => panic!("the channel closed"),
            }
        }
        // The channel still runs a command afterwards, without the refused environment.
        channel.exec(true, "whoami").await.unwrap();
        let finished = raw_ssh::finish(&mut channel).await;
        assert_eq!(finished.status, Some(0), "{}", finished.stderr());

        let other = step("another channel", session.channel_open_session())
            .await
            .unwrap();
        other.request_subsystem(true, "netconf").await.unwrap();
        let mut other = other;
        let refused = raw_ssh::finish(&mut other).await;
        assert_eq!(refused.status, Some(1));
        assert!(
            refused.stderr().contains("no subsystem \"netconf\""),
            "{}",
            refused.stderr()
        );

        assert!(
            session
                .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 5000)
                .await
                .is_err()
        );
        assert!(
            session
                .channel_open_direct_streamlocal("/var/run/docker.sock")
                .await
                .is_err()
        );
        assert!(session.channel_open_x11("127.0.0.1", 6000).await.is_err());
        assert!(session.tcpip_forward("127.0.0.1", 0).await.is_err());
        assert!(
            session
                .streamlocal_forward("/tmp/listen.sock")
                .await
                .is_err()
        );

        // Eight session channels at most.
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(session.channel_open_session().await.unwrap());
        }
        assert!(session.channel_open_session().await.is_err());
    });
    for request in [
        "agent forwarding",
        "x11 forwarding",
        "pty",
        "environment variable LD_PRELOAD",
        "subsystem netconf",
        "port forwarding to 127.0.0.1:22",
        "socket forwarding to /var/run/docker.sock",
        "x11 channel",
        "remote port forwarding from 127.0.0.1:0",
        "remote socket forwarding from /tmp/listen.sock",
        "session channel",
    ] {
        let line = refusal(&g.t, "alice", request);
        assert_eq!(line["request"], request, "{line}");
    }
}

/// A client that sends one refused request after another gets every answer, but the audit
/// log gets 32 lines and one that counts the rest: it cannot be made to fill the disk.
#[test]
fn a_loop_of_refused_requests_writes_a_bounded_number_of_audit_lines() {
    let g = gateway();
    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.alice).await;
        let sftp = raw_ssh::sftp(&session).await;
        for i in 0..500 {
            let code = status_of("stat", step("stat", sftp.stat(format!("../{i}"))).await);
            assert_eq!(code, StatusCode::PermissionDenied);
        }
        sftp.close_session().unwrap();
        let _ = session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    });
    let summary = refusal(&g.t, "alice", "sftp: 468 more requests");
    assert!(
        summary["reason"]
            .as_str()
            .unwrap()
            .contains("not audited one by one")
    );
    let lines: Vec<Value> = audit_events(&g.t, "refused");
    assert_eq!(lines.len(), 33, "{lines:?}");
}

/// The reader cannot upload by any door, nor the publisher run admin commands: covered with
/// OpenSSH in tests/ssh.rs (every_role_boundary); here the doors OpenSSH does not use: SFTP
/// for a reader, and a command line that is not UTF-8.
#[test]
fn a_reader_opening_sftp_directly_is_refused_and_audited() {
    let g = gateway();
    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.carol).await;
        let channel = step("a session channel", session.channel_open_session())
            .await
            .unwrap();
        channel.request_subsystem(true, "sftp").await.unwrap();
        let mut channel = channel;
        let refused = raw_ssh::finish(&mut channel).await;
        assert_eq!(refused.status, Some(1));
        assert!(
            refused.stderr().contains("needs the publisher role"),
            "{}",
            refused.stderr()
        );
        let garbage = raw_ssh::exec(&session, b"remove \xff\xfe", None).await;
        assert_eq!(garbage.status, Some(2));
    });
    assert!(
        refusal(&g.t, "carol", "subsystem sftp")["reason"]
            .as_str()
            .unwrap()
            .contains("has the reader role")
    );
    assert!(!area(&g.t, "carol").exists());
}

/// `scp -t` fed numbers no scp sends: times past the year 9999 or past 2^64, microseconds
/// past a second, sizes past 2^63 or 2^64, modes of 20 digits, negative sizes. Each ends the
/// run with one `\x02` line saying what is wrong, exit status 1 and an audit line (the first
/// one used to panic the task: no exit status, no audit line); a good file still lands after.
#[test]
fn scp_sink_numbers_out_of_range_are_refused_and_audited() {
    let g = gateway();
    let dir = area(&g.t, "alice");
    // (command, control line, what the reason says)
    let cases = [
        (
            "scp -t .",
            "T18446744073709551615 0 0 0",
            "past the year 9999",
        ),
        ("scp -t .", "T18446744073709551616 0 0 0", "out of range"),
        ("scp -t .", "T253402300800 0 0 0", "past the year 9999"),
        (
            "scp -t .",
            "T1700000000 0 18446744073709551615 0",
            "past the year 9999",
        ),
        (
            "scp -t .",
            "T1700000000 1000000 1700000000 0",
            "more than a second",
        ),
        ("scp -t .", "T-1 0 0 0", "a time line is"),
        ("scp -t .", "C0644 18446744073709551615 big", "out of range"),
        ("scp -t .", "C0644 18446744073709551616 big", "out of range"),
        ("scp -t .", "C0644 9223372036854775808 big", "out of range"),
        ("scp -t .", "C0644 -5 negative", "not a number"),
        ("scp -t .", "C07777777777777777777 1 mode", "4 octal digits"),
        (
            "scp -r -t .",
            "D0755 18446744073709551616 dir",
            "out of range",
        ),
    ];
    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.alice).await;
        for (command, line, reason) in cases {
            let input = format!("{line}\nC0644 3 after\nabc\0");
            let sink = raw_ssh::exec(&session, command.as_bytes(), Some(input.as_bytes())).await;
            assert_eq!(sink.status, Some(1), "{line}: {}", sink.stderr());
            let replies = String::from_utf8_lossy(&sink.stdout).into_owned();
            assert!(
                replies.starts_with("\0\x02simplestream-server: bad ") && replies.contains(reason),
                "{line}: {replies:?}"
            );
            assert_eq!(replies.lines().count(), 1, "{line}: {replies:?}");
            let refused = refusal(&g.t, "alice", &format!("scp {line:?}"));
            assert!(
                refused["reason"].as_str().unwrap().contains(reason),
                "{line}: {refused}"
            );
        }
        let good = raw_ssh::exec(
            &session,
            b"scp -t .",
            Some(b"T1700000000 0 1700000000 0\nC0644 3 fine.bin\nabc\0"),
        )
        .await;
        assert_eq!(good.status, Some(0), "{}", good.stderr());
    });
    assert_eq!(names_in(&dir), ["fine.bin"]);
    let commands = audit_events(&g.t, "command");
    assert_eq!(commands.len(), cases.len() + 1, "{commands:?}");
    assert!(
        commands[..cases.len()].iter().all(|e| e["exit"] == 1),
        "{commands:?}"
    );
}

/// A command line of 200 KB (a reader's `info <argument>`) gives an audit line of bounded
/// length: the `command` field is clipped as refusals are.
#[test]
fn a_long_command_line_gives_a_bounded_audit_line() {
    let g = gateway();
    let argument = "a".repeat(200_000);
    runtime().block_on(async {
        let session = raw_ssh::login(g.server.ssh(), USER, &g.carol).await;
        let info = raw_ssh::exec(&session, format!("info {argument}").as_bytes(), None).await;
        assert_eq!(info.status, Some(1), "{}", info.stderr());
    });
    let line = wait_until(Duration::from_secs(10), "the command's audit line", || {
        audit_events(&g.t, "command")
            .into_iter()
            .find(|e| e["name"] == "info")
    });
    let command = line["command"].as_str().unwrap();
    assert!(command.starts_with("info aaaa"), "{command}");
    assert!(command.len() < 600, "{} bytes", command.len());
    let longest = std::fs::read_to_string(g.t.data().join("audit.log"))
        .unwrap()
        .lines()
        .map(str::len)
        .max()
        .unwrap();
    assert!(longest < 2048, "an audit line of {longest} bytes");
}

/// Key exchanges other than mlkem768x25519-sha256 and curve25519-sha256 are not offered: the
/// Diffie-Hellman groups cost the server up to a second of CPU each. OpenSSH says which ones
/// the server takes; the audit log says who tried.
#[test]
fn classic_diffie_hellman_key_exchanges_are_refused_with_a_clear_message() {
    let g = gateway();
    // What a user sees: OpenSSH's own log level.
    let client = Client {
        log_level: "INFO",
        ..Client::new(g.server.ssh(), &g.alice)
    };
    for kex in [
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group14-sha256",
        "diffie-hellman-group-exchange-sha256",
        "ecdh-sha2-nistp256",
    ] {
        let option = format!("KexAlgorithms={kex}");
        let output = run(client.ssh_command(&["-o", &option], Some("whoami")), None);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(255), "{kex}: {stderr}");
        assert!(
            stderr.contains("no matching key exchange method found")
                && stderr.contains("Their offer: mlkem768x25519-sha256,curve25519-sha256"),
            "{kex}: {stderr}"
        );
        let line = wait_until(Duration::from_secs(10), "the refusal's audit line", || {
            audit_events(&g.t, "refused").into_iter().find(|e| {
                e["request"]
                    == format!("key exchange: {kex},ext-info-c,kex-strict-c-v00@openssh.com")
            })
        });
        assert_eq!(line["user"], "-");
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("takes mlkem768x25519-sha256,curve25519-sha256"),
            "{line}"
        );
    }
    let curve25519 = run(
        client.ssh_command(&["-o", "KexAlgorithms=curve25519-sha256"], Some("whoami")),
        None,
    );
    assert!(curve25519.status.success(), "{curve25519:?}");
    // OpenSSH 9.2 does not know ML-KEM yet; russh's client does.
    runtime().block_on(async {
        let config = russh::client::Config {
            preferred: russh::Preferred {
                kex: std::borrow::Cow::Borrowed(&[russh::kex::MLKEM768X25519_SHA256]),
                ..Default::default()
            },
            ..Default::default()
        };
        let session = raw_ssh::login_with(g.server.ssh(), USER, &g.alice, config).await;
        let whoami = raw_ssh::exec(&session, b"whoami", None).await;
        assert_eq!(whoami.status, Some(0), "{}", whoami.stderr());
    });
}

/// RSA keys sign with rsa-sha2-512 or rsa-sha2-256; SHA-1 `ssh-rsa` signatures are neither
/// advertised (server-sig-algs, host key algorithms) nor accepted, from OpenSSH or from a
/// client that sends one anyway.
#[test]
fn sha1_rsa_signatures_are_refused_and_rsa_sha2_is_accepted() {
    let t = TestDir::new();
    let dave = Key::of_type(&t, "dave", "rsa");
    write_authorized_keys(&t, &[dave.line("")]);
    write_config(&t, "[ssh]\nrsa_host_key = true\n");
    let server = Server::start(&t, &[]);
    let client = Client {
        log_level: "INFO",
        ..Client::new(server.ssh(), &dave)
    };
    for algorithm in ["rsa-sha2-512", "rsa-sha2-256"] {
        let option = format!("PubkeyAcceptedAlgorithms={algorithm}");
        let output = run(client.ssh_command(&["-o", &option], Some("whoami")), None);
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("dave"),
            "{algorithm}: {output:?}"
        );
    }
    let sha1 = run(
        client.ssh_command(&["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"], Some("whoami")),
        None,
    );
    assert_eq!(sha1.status.code(), Some(255), "{sha1:?}");
    assert!(
        String::from_utf8_lossy(&sha1.stderr).contains("Permission denied (publickey)"),
        "{sha1:?}"
    );
    let host_key = run(
        client.ssh_command(&["-o", "HostKeyAlgorithms=ssh-rsa"], Some("whoami")),
        None,
    );
    assert!(
        String::from_utf8_lossy(&host_key.stderr).contains("no matching host key type found"),
        "{host_key:?}"
    );
    // A client that signs with SHA-1 whatever the server advertises.
    runtime().block_on(async {
        let mut session = step("connect", raw_ssh::connect(server.ssh(), USER))
            .await
            .unwrap();
        let key = russh::keys::load_secret_key(&dave.private, None).unwrap();
        let signed = step(
            "an ssh-rsa signature",
            session.authenticate_publickey(
                "dave",
                russh::keys::PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None),
            ),
        )
        .await
        .unwrap();
        assert!(
            matches!(signed, russh::client::AuthResult::Failure { .. }),
            "{signed:?}"
        );
        let _ = session
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    });
    let failure = wait_until(Duration::from_secs(10), "the failure line", || {
        audit_events(&t, "auth").into_iter().find(|e| {
            e["result"] == "failure"
                && e.to_string()
                    .contains("ssh-rsa (SHA-1) signatures are refused")
        })
    });
    assert_eq!(failure["attempts"][0]["user"], "dave", "{failure}");
}

// ---------------------------------------------------------------------------------------
// HTTP

fn write_config(t: &TestDir, toml: &str) {
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(t.data().join("config.toml"), toml).unwrap();
}

/// Sends `opening` after `delay`, then `trickle` a byte every 200 ms, until the server closes
/// the connection; returns how long after connecting it did.
fn time_until_closed(server: &Server, delay: Duration, trickle: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.https()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let closed = |stream: &mut TcpStream, buf: &mut [u8]| match stream.read(buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    while started.elapsed() < delay {
        if closed(&mut stream, &mut buf) {
            return started.elapsed();
        }
    }
    for byte in trickle.iter().cycle() {
        if stream.write_all(&[*byte]).is_err() || closed(&mut stream, &mut buf) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never closed");
    }
    unreachable!()
}

/// The handshake timeout was counted twice: once for the first byte, then again from the
/// first byte for the TLS handshake or the plain request head. A client that sent its first
/// byte just before the timeout and then dribbled held its slot for twice the timeout.
#[test]
fn the_handshake_timeout_counts_from_the_connection_not_from_its_first_byte() {
    let t = TestDir::new();
    write_config(&t, "[http]\nhandshake_timeout_secs = 2\n");
    let server = Server::start(&t, &[]);
    let delay = Duration::from_millis(1500);
    let plain = time_until_closed(&server, delay, b"GET /images/x HTTP/1.1\r\nX: ");
    // A TLS record header announcing a long ClientHello, then a byte at a time.
    let tls = time_until_closed(&server, delay, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    for (what, took) in [("plain HTTP", plain), ("TLS", tls)] {
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2900),
            "{what}: closed after {took:?}, not at the 2 s timeout"
        );
    }
    // Still serving.
    wait_until(Duration::from_secs(10), "an answer", || {
        let (raw, _) = support::http::plain(
            server.https(),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        );
        (!raw.is_empty()).then_some(())
    });
}

fn https_client(t: &TestDir, server: &Server) -> support::http::Client {
    support::http::Client::new(server.https(), &t.data().join("tls/server.crt"))
}

/// Writes `request` over TLS (ignoring a write the server cut short) and reads the answer
/// until the server closes; returns it and how long that took.
async fn send_over_tls(client: &support::http::Client, request: &[u8]) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let tls = client.connect().await.expect("TLS handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
    writing.abort();
    (answer, started.elapsed())
}

/// HTTP/1.1 over TLS read up to hyper's default of ~400 KiB of request head before saying 431
/// (plain HTTP and h2 stop at 16 KiB): a client sending a head without its end made the server
/// buffer 400 KiB, and never got an answer before the header timeout.
#[test]
fn request_heads_over_16_kib_get_431_at_once_in_every_protocol() {
    let t = TestDir::new();
    let server = Server::start(&t, &[]);
    let client = https_client(&t, &server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let unterminated = |size: usize| {
        let mut head = b"GET /streams/v1/index.json HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.resize(head.len() + size, b'a');
        head
    };
    let complete = |size: usize| {
        let mut head = unterminated(size);
        head.extend_from_slice(b"\r\n\r\n");
        head
    };
    let many_headers = {
        let mut head = b"GET /streams/v1/index.json HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..200 {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    };
    for (what, request) in [
        ("a 20 KiB head without its end", unterminated(20 << 10)),
        ("a 1 MiB header", complete(1 << 20)),
        ("200 headers", many_headers.clone()),
    ] {
        let (answer, took) = runtime.block_on(send_over_tls(&client, &request));
        let status = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
        assert_eq!(status, "HTTP/1.1 431", "TLS, {what}: {answer:?}");
        assert!(took < Duration::from_secs(3), "TLS, {what}: {took:?}");

        let (answer, took) =
            support::http::plain(server.https(), &request, Duration::from_secs(20));
        let response = support::http::parse_response(&answer);
        assert_eq!(response.status, 431, "plain, {what}");
        assert!(took < Duration::from_secs(3), "plain, {what}: {took:?}");
    }
    // h2: the header list is capped at 16 KiB too.
    let h2 = https_client(&t, &server).h2();
    let big = "a".repeat(20 << 10);
    let refused = match h2.try_request("GET", "/streams/v1/index.json", &[("x-big", &big)]) {
        Ok(response) => response.status == 431,
        Err(_) => true,
    };
    assert!(refused, "h2 took a 20 KiB header");

    // A hundred connections each stalled on 300 KiB of head cost the server little.
    let before = support::net::memory(server.child.id());
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        for _ in 0..100 {
            let mut tls = client.connect().await.expect("TLS handshake");
            let _ = tls.write_all(&unterminated(300 << 10)).await;
            held.push(tls);
        }
    });
    let after = support::net::memory(server.child.id());
    let grown = after.peak_kib.saturating_sub(before.rss_kib);
    println!("100 stalled 300 KiB heads: peak RSS grew by {} KiB", grown);
    assert!(grown < 16 << 10, "the server grew by {grown} KiB");
    assert_eq!(client.get("/healthz").status, 200);
}

/// Bytes that differ at every offset (so a wrong range shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Puts a file with known content straight into www/.
fn put(t: &TestDir, relative: &str, content: &[u8]) {
    let path = t.www().join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
}

/// Bad Range values: malformed ones are ignored (the whole file, 200), as RFC 9110 says;
/// numbers past 2^64 are read as "very large" (a first byte past the end is 416, a last byte
/// past the end means the end), and many ranges get the whole file, over TLS and plain HTTP.
#[test]
fn bad_range_values_get_the_whole_file_or_416() {
    let t = TestDir::new();
    let content = pattern(10_000);
    put(&t, "images/test/blob.bin", &content);
    let server = Server::start(&t, &[]);
    let client = https_client(&t, &server);
    let huge = "99999999999999999999999999";
    let many: String = (0..1000)
        .map(|i| format!("{i}-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let cases: Vec<(String, u16, std::ops::Range<usize>)> = vec![
        // Malformed: ignored.
        ("bytes=abc".into(), 200, 0..10_000),
        ("bytes=1-2-3".into(), 200, 0..10_000),
        ("bytes".into(), 200, 0..10_000),
        ("bytes=".into(), 200, 0..10_000),
        ("bytes=,".into(), 200, 0..10_000),
        ("bytes=-".into(), 200, 0..10_000),
        ("bytes=0x10-0x20".into(), 200, 0..10_000),
        ("bytes=+1-2".into(), 200, 0..10_000),
        ("bytes=-1-2".into(), 200, 0..10_000),
        ("bytes=1.5-2".into(), 200, 0..10_000),
        ("bytes=１-２".into(), 200, 0..10_000),
        ("chars=0-1".into(), 200, 0..10_000),
        // Reversed: ignored.
        ("bytes=9-1".into(), 200, 0..10_000),
        // Overflowing numbers.
        (format!("bytes={huge}-"), 416, 0..0),
        (format!("bytes={huge}-{huge}"), 416, 0..0),
        (format!("bytes=9990-{huge}"), 206, 9990..10_000),
        (format!("bytes=-{huge}"), 206, 0..10_000),
        ("bytes=18446744073709551615-".into(), 416, 0..0),
        ("bytes=0-18446744073709551615".into(), 206, 0..10_000),
        // Many ranges: the whole file, never a multipart answer.
        (format!("bytes={many}"), 200, 0..10_000),
        ("bytes=0-0,0-0,0-0,0-0".into(), 200, 0..10_000),
        // Sound ones still work.
        ("bytes=10-19".into(), 206, 10..20),
        ("bytes=-5".into(), 206, 9995..10_000),
    ];
    for (range, status, expected) in &cases {
        let response = client.request("GET", "/images/test/blob.bin", &[("range", range)]);
        let shown = &range[..range.len().min(60)];
        assert_eq!(response.status, *status, "HTTPS {shown}");
        if *status == 416 {
            assert_eq!(response.header("content-range"), Some("bytes */10000"));
        } else {
            assert_eq!(response.body, &content[expected.clone()], "HTTPS {shown}");
        }
        let (raw, _) = support::http::plain(
            server.https(),
            format!("GET /images/test/blob.bin HTTP/1.1\r\nHost: x\r\nRange: {range}\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(10),
        );
        let response = support::http::parse_response(&raw);
        assert_eq!(response.status, *status, "plain {shown}");
        if *status != 416 {
            assert_eq!(response.body, &content[expected.clone()], "plain {shown}");
        }
    }
}

/// Every regular file under `dir`, as paths relative to it.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// HEAD and GET on every file of a published tree (split and unified images, container and
/// VM, the stream JSON): 200, the file's size as Content-Length, and the file's bytes, over
/// HTTP/1.1, h2 and, for image files, plain HTTP.
#[test]
fn every_file_under_www_is_served_whole_by_get_and_head() {
    let t = TestDir::new();
    let metadata = t.file("split.tar.xz");
    let root = t.file("split.squashfs");
    support::metadata_tarball(&metadata, &support::Meta::default());
    support::squashfs(&root, "split");
    t.ok(&[
        "import",
        metadata.to_str().unwrap(),
        root.to_str().unwrap(),
        "--alias",
        "split/one",
    ]);
    let unified = t.file("vm.tar.gz");
    let vm = support::Meta {
        release: "2",
        ..support::Meta::default()
    };
    support::unified_tarball(&unified, &vm, true, "vm");
    t.ok(&["import", unified.to_str().unwrap()]);
    let server = Server::start(&t, &[]);
    let h1 = https_client(&t, &server);
    let h2 = https_client(&t, &server).h2();

    let files = files_under(&t.www());
    for expected in ["streams/v1/index.json", "streams/v1/images.json"] {
        assert!(files.iter().any(|f| f == expected), "{files:?}");
    }
    let images = files.iter().filter(|f| f.starts_with("images/")).count();
    assert!(images >= 3, "{files:?}");
    for relative in &files {
        let content = std::fs::read(t.www().join(relative)).unwrap();
        let length = content.len().to_string();
        let target = format!("/{relative}");
        for (protocol, client) in [("HTTP/1.1", &h1), ("h2", &h2)] {
            let get = client.get(&target);
            assert_eq!(get.status, 200, "{protocol} GET {target}");
            assert_eq!(
                get.header("content-length"),
                Some(length.as_str()),
                "{protocol} GET {target}"
            );
            assert!(get.body == content, "{protocol} GET {target}: other bytes");
            let head = client.request("HEAD", &target, &[]);
            assert_eq!(head.status, 200, "{protocol} HEAD {target}");
            assert_eq!(
                head.header("content-length"),
                Some(length.as_str()),
                "{protocol} HEAD {target}"
            );
            assert!(head.body.is_empty(), "{protocol} HEAD {target}");
        }
        if relative.starts_with("images/") {
            for method in ["GET", "HEAD"] {
                let (raw, _) = support::http::plain(
                    server.https(),
                    format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                    Duration::from_secs(20),
                );
                let response = support::http::parse_response(&raw);
                assert_eq!(response.status, 200, "plain {method} {target}");
                assert_eq!(
                    response.header("content-length"),
                    Some(length.as_str()),
                    "plain {method} {target}"
                );
                let body: &[u8] = if method == "GET" { &content } else { &[] };
                assert!(
                    response.body == body,
                    "plain {method} {target}: other bytes"
                );
            }
        }
    }
}

/// Methods other than GET and HEAD are refused with 405 and an `Allow` of GET and HEAD on every kind
/// of path: pages, stream JSON, image files, missing files, directories, traversal attempts,
/// over HTTP/1.1, h2 and plain HTTP; and nothing changes on disk.
#[test]
fn methods_other_than_get_and_head_get_405_on_every_kind_of_path() {
    let t = TestDir::new();
    put(&t, "images/test/blob.bin", b"blob");
    let server = Server::start(&t, &[]);
    let before = t.snapshot_www();
    let h1 = https_client(&t, &server);
    let h2 = https_client(&t, &server).h2();
    let paths = [
        "/",
        "/server.crt",
        "/healthz",
        "/metrics",
        "/streams/v1/index.json",
        "/streams/v1/images.json",
        "/images/test/blob.bin",
        "/images/test/missing.bin",
        "/images/test/",
        "/images/%2e%2e/%2e%2e/state/catalog.json",
        "/no/such/place",
    ];
    let methods = [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "MKCOL", "BREW",
    ];
    for path in paths {
        for method in methods {
            for (protocol, client) in [("HTTP/1.1", &h1), ("h2", &h2)] {
                let response = client.request(method, path, &[]);
                assert_eq!(response.status, 405, "{protocol} {method} {path}");
                let mut allow: Vec<&str> = response
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .collect();
                allow.sort();
                assert_eq!(allow, ["GET", "HEAD"], "{protocol} {method} {path}");
            }
            // Plain HTTP serves image files only; the rest is redirected to https whatever
            // the method, and never acted on.
            let (raw, _) = support::http::plain(
                server.https(),
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
                    .as_bytes(),
                Duration::from_secs(10),
            );
            let response = support::http::parse_response(&raw);
            let is_image_file = path.starts_with("/images/test/") && !path.ends_with('/');
            let expected = if is_image_file { 405 } else { 301 };
            assert_eq!(response.status, expected, "plain {method} {path}");
        }
    }
    assert_eq!(t.snapshot_www(), before, "a refused request changed www/");
}

// ---------------------------------------------------------------------------------------
// Upload areas: quota, counts, APPEND

/// A server whose only key is alice's (a publisher), with `config`.
fn area_gateway(config: &str) -> (TestDir, Server, Key) {
    let t = TestDir::new();
    let alice = Key::new(&t, "alice");
    write_authorized_keys(&t, &[alice.line("")]);
    write_config(&t, config);
    let server = Server::start(&t, &[]);
    (t, server, alice)
}

/// Bytes in every file under `dir`, temp files included.
fn bytes_under(dir: &std::path::Path) -> u64 {
    support::invariants::files_under(dir)
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

/// Issue 10 item 5: open `dir/blob`, write, rename `dir` away, close. The commit fails; the
/// temp file is found and deleted, and only then is its room given back: on disk the area
/// never holds more than its quota, and nothing is left behind.
#[test]
fn renaming_the_directory_of_an_open_upload_leaves_nothing_over_the_quota() {
    let (t, server, alice) = area_gateway("[ssh]\nquota_bytes = 1000000\n");
    let incoming = t.data().join("incoming");
    let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    runtime().block_on(async {
        let session = raw_ssh::login(server.ssh(), USER, &alice).await;
        let sftp = raw_ssh::sftp(&session).await;
        for round in 0..6 {
            let dir = format!("dir{round}");
            step("mkdir", sftp.mkdir(dir.clone(), FileAttributes::default()))
                .await
                .unwrap();
            let handle = step(
                "open",
                sftp.open(format!("{dir}/blob"), write, FileAttributes::default()),
            )
            .await
            .unwrap()
            .handle;
            for part in 0..3u64 {
                step(
                    "write",
                    sftp.write(handle.clone(), part * 200_000, vec![7u8; 200_000]),
                )
                .await
                .unwrap();
            }
            step("rename", sftp.rename(dir.clone(), format!("moved{round}")))
                .await
                .unwrap();
            let closed = step("close", sftp.close(handle)).await;
            assert!(
                closed.is_err(),
                "round {round}: the commit has nowhere to go"
            );
            let on_disk = bytes_under(&incoming);
            assert!(
                on_disk <= 1_000_000,
                "round {round}: {on_disk} bytes on disk"
            );
        }
        // The room of every failed upload is free again.
        let handle = step("open", sftp.open("last", write, FileAttributes::default()))
            .await
            .unwrap()
            .handle;
        for part in 0..4u64 {
            step(
                "write",
                sftp.write(handle.clone(), part * 200_000, vec![9u8; 200_000]),
            )
            .await
            .unwrap();
        }
        step("close", sftp.close(handle)).await.unwrap();
    });
    let leftovers: Vec<_> = support::invariants::files_under(&incoming)
        .into_iter()
        .filter(|path| !path.ends_with("alice/last"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(server);
}

/// Issue 10 item 15: a file opened with APPEND gets every write at its end, whatever offset
/// the request names; without APPEND the offset is honoured.
#[test]
fn the_sftp_append_flag_writes_at_the_end() {
    let (t, server, alice) = area_gateway("");
    let dir = area(&t, "alice");
    runtime().block_on(async {
        let session = raw_ssh::login(server.ssh(), USER, &alice).await;
        let sftp = raw_ssh::sftp(&session).await;
        let create = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let handle = step("open", sftp.open("log", create, FileAttributes::default()))
            .await
            .unwrap()
            .handle;
        step("write", sftp.write(handle.clone(), 0, b"hello ".to_vec()))
            .await
            .unwrap();
        step("close", sftp.close(handle)).await.unwrap();
        let append = OpenFlags::WRITE | OpenFlags::APPEND;
        let handle = step("open", sftp.open("log", append, FileAttributes::default()))
            .await
            .unwrap()
            .handle;
        for word in [&b"world"[..], b"!"] {
            step("write", sftp.write(handle.clone(), 0, word.to_vec()))
                .await
                .unwrap();
        }
        step("close", sftp.close(handle)).await.unwrap();
    });
    assert_eq!(std::fs::read(dir.join("log")).unwrap(), b"hello world!");
    // `sftp put -a` (append to an existing file) agrees.
    let client = support::ssh::Client::new(server.ssh(), &alice);
    std::fs::write(t.file("more.txt"), b"hello world! and more").unwrap();
    let output = client.sftp_batch(t.path(), "put -a more.txt log\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("log")).unwrap(),
        b"hello world! and more"
    );
}

/// Issue 10 item 6: entries and depth are bounded, each refusal one clear line; the area
/// keeps what it had.
#[test]
fn an_upload_area_holds_a_bounded_number_of_entries_and_levels() {
    let (t, server, alice) = area_gateway("[ssh]\nmax_entries = 40\nmax_depth = 4\n");
    let dir = area(&t, "alice");
    runtime().block_on(async {
        let session = raw_ssh::login(server.ssh(), USER, &alice).await;
        let sftp = raw_ssh::sftp(&session).await;
        for n in 0..40 {
            step(
                "mkdir",
                sftp.mkdir(format!("d{n}"), FileAttributes::default()),
            )
            .await
            .unwrap();
        }
        let refused = step("mkdir", sftp.mkdir("one-more", FileAttributes::default())).await;
        let Err(SftpClientError::Status(status)) = refused else {
            panic!("the 41st entry was not refused: {refused:?}");
        };
        assert_eq!(status.status_code, StatusCode::PermissionDenied);
        assert!(
            status.error_message.contains("ssh.max_entries"),
            "{}",
            status.error_message
        );
        let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let refused = step("open", sftp.open("file", write, FileAttributes::default())).await;
        assert!(refused.is_err(), "a new file past the limit");
        // Removing makes room again; depth is bounded as well.
        for n in 0..10 {
            step("rmdir", sftp.rmdir(format!("d{n}"))).await.unwrap();
        }
        for path in ["d10/a", "d10/a/b", "d10/a/b/c"] {
            step("mkdir", sftp.mkdir(path, FileAttributes::default()))
                .await
                .unwrap();
        }
        let refused = step(
            "mkdir",
            sftp.mkdir("d10/a/b/c/d", FileAttributes::default()),
        )
        .await;
        let Err(SftpClientError::Status(status)) = refused else {
            panic!("a fifth level was not refused: {refused:?}");
        };
        assert!(
            status.error_message.contains("ssh.max_depth"),
            "{}",
            status.error_message
        );
    });
    assert!(!dir.join("one-more").exists() && !dir.join("d10/a/b/c/d").exists());
    refusal(&t, "alice", "sftp mkdir \"one-more\"");
}

/// Issue 10 item 6: OPENDIR on a directory of 20,000 entries, 240 times over, reads it in
/// batches as READDIR asks: the server's memory stays bounded.
#[test]
fn many_listings_of_a_big_directory_keep_memory_bounded() {
    let (t, server, alice) = area_gateway("[ssh]\nmax_entries = 0\n");
    let big = area(&t, "alice").join("big");
    std::fs::create_dir_all(&big).unwrap();
    for n in 0..20_000 {
        std::fs::write(big.join(format!("entry-with-a-long-name-{n:06}")), b"").unwrap();
    }
    let pid = server.child.id();
    let before = support::net::memory(pid);
    runtime().block_on(async {
        let session = raw_ssh::login(server.ssh(), USER, &alice).await;
        let mut sessions = Vec::new();
        for _ in 0..4 {
            let sftp = raw_ssh::sftp(&session).await;
            for _ in 0..60 {
                let handle = step("opendir", sftp.opendir("big")).await.unwrap().handle;
                let first = step("readdir", sftp.readdir(handle)).await.unwrap();
                assert!(!first.files.is_empty());
            }
            sessions.push(sftp);
        }
        let after = support::net::memory(pid);
        let grown_mib = after.rss_kib.saturating_sub(before.rss_kib) / 1024;
        eprintln!(
            "RSS {} MiB -> {} MiB with 240 listings open",
            before.rss_kib / 1024,
            after.rss_kib / 1024
        );
        assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");
    });
}

/// Issue 10 item 2: one key opens SFTP sessions on one connection and files in each until
/// refused. Sessions and handles are capped, HTTPS and `ssh whoami` keep working meanwhile,
/// and once the client is gone the server holds as many descriptors as before.
#[test]
fn an_sftp_handle_flood_is_capped_and_released_when_the_connection_ends() {
    use russh_sftp::client::RawSftpSession;
    let (t, server, alice) = area_gateway("");
    let client = support::ssh::Client::new(server.ssh(), &alice);
    client.ok("whoami");
    std::fs::write(area(&t, "alice").join("f"), b"x").unwrap();
    let pid = server.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let https = https_client(&t, &server);
    assert_eq!(https.get("/healthz").status, 200);
    let baseline = fds();
    let runtime = runtime();
    let (session, sessions, opened) = runtime.block_on(async {
        let session = raw_ssh::login(server.ssh(), USER, &alice).await;
        let mut sessions = Vec::new();
        let mut opened = 0;
        for _ in 0..16 {
            let Ok(channel) = step("channel", session.channel_open_session()).await else {
                continue;
            };
            if step("subsystem", channel.request_subsystem(true, "sftp"))
                .await
                .is_err()
            {
                continue;
            }
            let sftp = RawSftpSession::new(channel.into_stream());
            sftp.set_timeout(5);
            if step("init", sftp.init()).await.is_err() {
                continue;
            }
            for _ in 0..80 {
                match step(
                    "open",
                    sftp.open("f", OpenFlags::READ, FileAttributes::default()),
                )
                .await
                {
                    Ok(_) => opened += 1,
                    Err(_) => break,
                }
            }
            sessions.push(sftp);
        }
        (session, sessions, opened)
    });
    let during = fds();
    eprintln!(
        "{} sessions, {opened} handles; descriptors {baseline} before, {during} during",
        sessions.len()
    );
    assert!(
        sessions.len() <= 8,
        "{} sessions on one connection",
        sessions.len()
    );
    assert!((64..=256).contains(&opened), "{opened} handles open");
    // The others are served meanwhile.
    assert_eq!(https.get("/healthz").status, 200);
    assert!(client.ok("whoami").contains("alice"));
    drop(sessions);
    drop(session);
    drop(runtime);
    wait_until(
        Duration::from_secs(30),
        "the descriptors to be released",
        || (fds() <= baseline + 2).then_some(()),
    );
}

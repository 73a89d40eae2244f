//! SIGHUP (what the systemd unit's ExecReload sends): the keys, the configuration and the
//! certificate are read again, connections open across the reload keep working, keys that
//! wait for a restart are named, and a configuration that does not load changes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;
use crate::support::net::USER;
use crate::support::raw_ssh;
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, random_file, write_authorized_keys, write_config};
use crate::support::{TestDir, wait_until};

/// A self-signed certificate for 127.0.0.1 made by openssl, as an operator's CA would
/// hand over: `<name>.crt` and `<name>.key`.
fn certificate(t: &TestDir, name: &str) -> (PathBuf, PathBuf) {
    let openssl = support::require_tool("openssl", "openssl");
    let (cert, key) = (
        t.file(&format!("{name}.crt")),
        t.file(&format!("{name}.key")),
    );
    let status = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

fn der(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Sends SIGHUP and waits for the reload's log line (the `n`th one); returns it.
pub(crate) fn reload(server: &Server, n: usize) -> String {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(10), "the reload's log line", || {
        let output = server.output();
        let lines: Vec<&str> = output
            .lines()
            .filter(|line| line.contains("reloaded (SIGHUP)"))
            .collect();
        lines.get(n - 1).map(|line| line.to_string())
    })
}

/// One request on an open keep-alive connection; the response's status line and body.
async fn request_on<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    path: &str,
) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed");
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        if buffer.len() >= end + 4 + length {
            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
            let status = head.lines().next().unwrap().to_string();
            return (status, body);
        }
    }
}

#[test]
fn sighup_reloads_keys_configuration_and_certificate_without_dropping_connections() {
    let t = TestDir::new();
    let alice = Key::new(&t, "alice");
    let carol = Key::new(&t, "carol");
    write_authorized_keys(&t, &[alice.line("")]);
    let (first_cert, first_key) = certificate(&t, "first");
    let (second_cert, second_key) = certificate(&t, "second");
    let config = |extra: &str| {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n# Only SIGHUP may notice a new certificate here.\nreload_interval_secs = 3600\n{extra}",
            t.path().join("live.crt"),
            t.path().join("live.key"),
        )
    };
    std::fs::copy(&first_cert, t.path().join("live.crt")).unwrap();
    std::fs::copy(&first_key, t.path().join("live.key")).unwrap();
    write_config(&t, &config("[ssh]\nmax_file_bytes = 1000000\n"));
    let server = Server::start(&t, &[]);
    let both = [
        std::fs::read(&first_cert).unwrap(),
        std::fs::read(&second_cert).unwrap(),
    ]
    .concat();
    let https = support::http::Client::with_pem(server.https(), &both);
    assert_eq!(
        https.handshake().unwrap().certificate,
        der(&first_cert),
        "the configured certificate is served"
    );
    let small = t.file("small.bin");
    random_file(&small, 2_000, 1);
    let alice_ssh = Client::new(server.ssh(), &alice);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Open before the reload, used after it.
        let mut kept_tls = https.connect().await.unwrap();
        let (status, _) = request_on(&mut kept_tls, "/healthz").await;
        assert!(status.contains(" 200 "), "{status}");
        let kept_ssh = raw_ssh::login(server.ssh(), USER, &alice).await;

        // A live key, a key that waits for a restart, a new key, a new certificate.
        write_config(
            &t,
            &config("[ssh]\nmax_file_bytes = 1000\nlogin_grace_secs = 5\n[http]\nremote_name = \"reloaded\"\n"),
        );
        write_authorized_keys(&t, &[alice.line(""), carol.line("")]);
        std::fs::copy(&second_key, t.path().join("live.key")).unwrap();
        std::fs::copy(&second_cert, t.path().join("live.crt")).unwrap();
        let line = reload(&server, 1);
        assert!(line.contains("authorized_keys: 2 keys"), "{line}");
        assert!(line.contains("certificate: loaded the new one"), "{line}");
        assert!(
            line.contains("configuration: applied http.remote_name, ssh.max_file_bytes; ssh.login_grace_secs changed, which takes a restart"),
            "{line}"
        );

        // The connections opened before still work.
        let (status, _) = request_on(&mut kept_tls, "/healthz").await;
        assert!(status.contains(" 200 "), "{status}");
        let whoami = raw_ssh::exec(&kept_ssh, b"whoami", None).await;
        assert_eq!(whoami.status, Some(0), "{}", whoami.stderr());
    });

    // Each part took effect.
    assert_eq!(https.handshake().unwrap().certificate, der(&second_cert));
    let page = https.get("/").text();
    assert!(
        page.contains("reloaded"),
        "the catalog page names the remote"
    );
    let carol_ssh = Client::new(server.ssh(), &carol);
    assert!(carol_ssh.ok("whoami").contains("carol"));
    let refused = alice_ssh.scp(&[], &[&small], "upload@127.0.0.1:");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("larger than"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A configuration that does not load changes nothing, and says so; the keys are still read.
    write_config(&t, "[ssh]\nmax_file_bytes = \"lots\"\n");
    write_authorized_keys(&t, &[alice.line("")]);
    let line = reload(&server, 2);
    assert!(line.contains("reloaded (SIGHUP) in part"), "{line}");
    assert!(line.contains("authorized_keys: 1 key;"), "{line}");
    assert!(
        line.contains("config.toml line 2 (ssh.max_file_bytes): invalid type"),
        "{line}"
    );
    assert!(line.contains("still running the previous one"), "{line}");
    assert!(
        !carol_ssh.ssh("whoami").status.success(),
        "carol's key is gone"
    );
    assert!(
        !alice_ssh
            .scp(&[], &[&small], "upload@127.0.0.1:")
            .status
            .success(),
        "the limit from the last good configuration holds"
    );
    let tiny = t.file("tiny.bin");
    random_file(&tiny, 500, 2);
    let sent = alice_ssh.scp(&[], &[&tiny], "upload@127.0.0.1:");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    assert!(server.terminate().success());
}

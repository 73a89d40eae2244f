//! The HTTPS side through real clients: a Rust client over rustls, raw sockets for the
//! plain-HTTP first try and for malformed requests, and curl. Every server listens on
//! 127.0.0.1 with an ephemeral port.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::support;
use crate::support::clients::{Client as ImageClient, Family};
use crate::support::http::{Client, curl, curl_ok, parse_response, plain};
use crate::support::server::Server;
use crate::support::ssh::{Client as SshClient, Key, write_authorized_keys};
use crate::support::{Meta, TestDir, wait_until};

// ---------------------------------------------------------------------------------------
// Helpers

fn cert_path(t: &TestDir) -> PathBuf {
    t.data().join("tls/server.crt")
}

fn start(t: &TestDir, extra: &[&str]) -> (Server, Client) {
    let server = Server::start(t, extra);
    let client = Client::new(server.https(), &cert_path(t));
    (server, client)
}

/// Writes `data/config.toml` (before the server starts).
fn write_config(t: &TestDir, toml: &str) {
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(t.data().join("config.toml"), toml).unwrap();
}

/// Imports a split container image (metadata tarball + squashfs); returns its fingerprint.
fn import_container(t: &TestDir, meta: &Meta, seed: &str) -> String {
    let dir = t.path().join(format!("src-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let metadata = dir.join("lxd.tar.xz");
    let root = dir.join("root.squashfs");
    support::metadata_tarball(&metadata, meta);
    support::squashfs(&root, seed);
    let out = t.ok(&[
        "import",
        metadata.to_str().unwrap(),
        root.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    report["fingerprint"].as_str().unwrap().to_string()
}

/// Every item of images.json: (path, size, sha256), without duplicates.
fn items(t: &TestDir) -> Vec<(String, u64, String)> {
    let images = t.read_json("streams/v1/images.json");
    let mut found = Vec::new();
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                let entry = (
                    item["path"].as_str().unwrap().to_string(),
                    item["size"].as_u64().unwrap(),
                    item["sha256"].as_str().unwrap().to_string(),
                );
                if !found.contains(&entry) {
                    found.push(entry);
                }
            }
        }
    }
    found.sort();
    found
}

/// The path of the first squashfs item.
fn squashfs_item(t: &TestDir) -> (String, u64, String) {
    items(t)
        .into_iter()
        .find(|(path, _, _)| path.ends_with(".squashfs"))
        .expect("a squashfs item")
}

/// Puts a file with known content straight into www/ (the server serves the tree as is).
fn put(t: &TestDir, relative: &str, content: &[u8]) -> PathBuf {
    let path = t.www().join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}

/// Bytes that differ at every offset (so a wrong range shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Log lines at WARN or ERROR level.
/// Warnings and errors in the server's log, but for the SSH side's notice that no
/// authorized_keys file exists yet (these tests give it none).
fn problems(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|level| level == "WARN" || level == "ERROR")
                && !line.contains("there is no authorized_keys file")
        })
        .map(str::to_string)
        .collect()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

// ---------------------------------------------------------------------------------------
// Files: status, headers, ranges, conditional requests, compression

#[test]
fn stream_json_is_served_with_json_headers() {
    let t = TestDir::new();
    let (_server, client) = start(&t, &[]);
    for path in ["streams/v1/index.json", "streams/v1/images.json"] {
        let response = client.get(&format!("/{path}"));
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert!(response.header("etag").is_some_and(|e| e.starts_with('"')));
        assert!(response.header("last-modified").is_some());
        assert_eq!(response.header("content-encoding"), None);
        assert_eq!(
            response.body,
            std::fs::read(t.www().join(path)).unwrap(),
            "{path}"
        );
    }
}

#[test]
fn image_files_are_exact_and_immutable() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "files");
    let (_server, client) = start(&t, &[]);
    let all = items(&t);
    assert_eq!(all.len(), 2, "{all:?}");
    for (path, size, sha256) in all {
        let response = client.get(&format!("/{path}"));
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body.len() as u64, size, "{path}");
        assert_eq!(sha256_hex(&response.body), sha256, "{path}");
        assert_eq!(
            response.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(response.header("accept-ranges"), Some("bytes"));
        let expected_type = if path.ends_with(".tar.xz") {
            "application/x-xz"
        } else {
            "application/octet-stream"
        };
        assert_eq!(
            response.header("content-type"),
            Some(expected_type),
            "{path}"
        );
    }
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let t = TestDir::new();
    let content = pattern(300_000);
    put(&t, "images/test/blob.bin", &content);
    let (_server, client) = start(&t, &[]);
    let get = client.get("/images/test/blob.bin");
    let head = client.request("HEAD", "/images/test/blob.bin", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("300000"));
    for name in ["etag", "last-modified", "content-type", "cache-control"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(get.body, content);
}

#[test]
fn ranges_give_206_and_unsatisfiable_ones_416() {
    let t = TestDir::new();
    let content = pattern(1_000_000);
    put(&t, "images/test/blob.bin", &content);
    let (_server, client) = start(&t, &[]);
    let get = |range: &str| client.request("GET", "/images/test/blob.bin", &[("range", range)]);

    let first = get("bytes=0-99");
    assert_eq!(first.status, 206);
    assert_eq!(first.body, &content[..100]);
    assert_eq!(first.header("content-range"), Some("bytes 0-99/1000000"));
    assert_eq!(first.header("content-length"), Some("100"));

    let middle = get("bytes=500000-765431");
    assert_eq!(middle.status, 206);
    assert_eq!(middle.body, &content[500_000..=765_431]);

    let open_ended = get("bytes=999990-");
    assert_eq!(open_ended.status, 206);
    assert_eq!(open_ended.body, &content[999_990..]);

    let suffix = get("bytes=-10");
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body, &content[999_990..]);
    assert_eq!(
        suffix.header("content-range"),
        Some("bytes 999990-999999/1000000")
    );

    let beyond = get("bytes=1000000-");
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */1000000"));

    // Several ranges: the whole file (multipart is optional). Nonsense: ignored.
    for whole in ["bytes=0-1,10-11", "bytes=9-1", "pages=1-2"] {
        let response = get(whole);
        assert_eq!(response.status, 200, "{whole}");
        assert_eq!(response.body.len(), content.len(), "{whole}");
    }
}

#[test]
fn conditional_requests_give_304_and_412() {
    let t = TestDir::new();
    put(&t, "images/test/blob.bin", &pattern(5000));
    let (_server, client) = start(&t, &[]);
    for path in ["/images/test/blob.bin", "/streams/v1/index.json"] {
        let first = client.get(path);
        let etag = first.header("etag").unwrap().to_string();
        let last_modified = first.header("last-modified").unwrap().to_string();

        let revalidated = client.request("GET", path, &[("if-none-match", &etag)]);
        assert_eq!(revalidated.status, 304, "{path}");
        assert!(revalidated.body.is_empty());
        assert_eq!(revalidated.header("etag"), Some(etag.as_str()));

        let since = client.request("GET", path, &[("if-modified-since", &last_modified)]);
        assert_eq!(since.status, 304, "{path}");

        let changed = client.request("GET", path, &[("if-none-match", "\"other\"")]);
        assert_eq!(changed.status, 200, "{path}");
        assert_eq!(changed.body, first.body);

        let older = client.request(
            "GET",
            path,
            &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")],
        );
        assert_eq!(older.status, 200, "{path}");

        let wrong_version = client.request("GET", path, &[("if-match", "\"other\"")]);
        assert_eq!(wrong_version.status, 412, "{path}");

        let stale_range = client.request(
            "GET",
            path,
            &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
        );
        assert_eq!(stale_range.status, 200, "{path}");
        let fresh_range =
            client.request("GET", path, &[("range", "bytes=0-9"), ("if-range", &etag)]);
        assert_eq!(fresh_range.status, 206, "{path}");
        assert_eq!(fresh_range.body, &first.body[..10]);
    }
}

#[test]
fn gzip_is_used_for_json_only() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "gzip");
    put(&t, "images/test/data.json", b"{\"not\":\"stream json\"}");
    let (_server, client) = start(&t, &[]);
    let gzip = [("accept-encoding", "gzip")];

    let identity = client.get("/streams/v1/images.json");
    let compressed = client.request("GET", "/streams/v1/images.json", &gzip);
    assert_eq!(compressed.status, 200);
    assert_eq!(compressed.header("content-encoding"), Some("gzip"));
    assert_eq!(compressed.header("vary"), Some("Accept-Encoding"));
    assert_ne!(compressed.header("etag"), identity.header("etag"));
    assert!(compressed.body.len() < identity.body.len());
    assert_eq!(gunzip(&compressed.body), identity.body);
    // The gzip form revalidates with its own tag.
    let etag = compressed.header("etag").unwrap().to_string();
    let again = client.request(
        "GET",
        "/streams/v1/images.json",
        &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
    );
    assert_eq!(again.status, 304);
    // A range is of the stored bytes: no compression.
    let ranged = client.request(
        "GET",
        "/streams/v1/images.json",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-9")],
    );
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-encoding"), None);
    assert_eq!(ranged.body, &identity.body[..10]);

    for (path, _, sha256) in items(&t) {
        let response = client.request("GET", &format!("/{path}"), &gzip);
        assert_eq!(response.header("content-encoding"), None, "{path}");
        assert_eq!(sha256_hex(&response.body), sha256, "{path}");
    }
    let other = client.request("GET", "/images/test/data.json", &gzip);
    assert_eq!(other.header("content-encoding"), None);
}

#[test]
fn traversal_and_symlinks_out_of_www_are_not_found() {
    let t = TestDir::new();
    let secret = t.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-CONTENT").unwrap();
    put(&t, "images/test/inside.txt", b"inside");
    std::os::unix::fs::symlink(&secret, t.www().join("images/test/link-out")).unwrap();
    std::os::unix::fs::symlink(t.path(), t.www().join("images/test/dir-out")).unwrap();
    let (_server, client) = start(&t, &[]);
    assert_eq!(client.get("/images/test/inside.txt").status, 200);

    let attempts = [
        "/../secret.txt",
        "/images/../../secret.txt",
        "/streams/v1/../../../state/catalog.json",
        "/%2e%2e/state/catalog.json",
        "/images/%2e%2e/%2e%2e/state/catalog.json",
        "/images/..%2f..%2fstate%2fcatalog.json",
        "/%252e%252e/state/catalog.json",
        "/images/%252e%252e%252f%252e%252e%252fsecret.txt",
        "/images/test/link-out",
        "/images/test/dir-out/secret.txt",
        "/images/test/dir-out/data/state/catalog.json",
        "/images/",
        "/images",
        "/streams/v1",
        "/streams/v1/",
        "/images/test/inside.txt/",
        "/images//test/inside.txt",
        "/images/./test/inside.txt",
        // Upper case, mixed and partial encodings of `.`, `/` and `\`.
        "/%2E%2E/state/catalog.json",
        "/images/.%2e/.%2E/state/catalog.json",
        "/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/images/%2E%2E%2F%2E%2E%2Fsecret.txt",
        "/images/%5c..%5c..%5csecret.txt",
        "/images/test/%2e/inside.txt",
        "/images/test/%2finside.txt",
        // Double and triple encodings.
        "/%25%32%65%25%32%65/state/catalog.json",
        "/images/%25252e%25252e/%25252e%25252e/secret.txt",
        // Overlong UTF-8 dots and slash, and a NUL before an extension.
        "/images/%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt",
        "/images/%c0%afsecret.txt",
        "/images/test/inside.txt%00.json",
        // Hidden names, and Tomcat-style `..;`.
        "/images/test/.hidden",
        "/images/..;/..;/secret.txt",
        "//secret.txt",
    ];
    put(&t, "images/test/.hidden", b"TOP-SECRET-hidden");
    for target in attempts {
        let response = client.get(target);
        assert_eq!(response.status, 404, "{target}");
        let text = response.text();
        assert!(
            !text.contains("TOP-SECRET") && !text.contains("products"),
            "{target}"
        );
    }
    // Targets no URL parser accepts, written raw.
    for target in [
        "/images\\..\\..\\secret.txt",
        "/images/test/../../../secret.txt",
        "/images/%zz/../../secret.txt",
        "http://x/../secret.txt",
        "http://x/images/%2e%2e/%2e%2e/secret.txt",
        "*",
    ] {
        let raw = client.raw(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let response = parse_response(&raw);
        assert!(
            response.status == 404 || response.status == 400,
            "{target}: {}",
            response.status
        );
        assert!(!response.text().contains("TOP-SECRET"), "{target}");
    }
    // The same over plain HTTP.
    for target in attempts.iter().chain(&[
        "/images\\..\\..\\secret.txt",
        "/images/test/../../../secret.txt",
        "/images/%zz/../../secret.txt",
    ]) {
        let (raw, _) = plain(
            client.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        );
        let response = parse_response(&raw);
        assert!(!response.text().contains("TOP-SECRET"), "{target}");
        assert!(response.status == 404 || response.status == 301, "{target}");
    }
}

#[test]
fn only_get_and_head_are_served() {
    let t = TestDir::new();
    put(&t, "images/test/blob.bin", b"blob");
    let (server, client) = start(&t, &[]);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in [
            "/streams/v1/index.json",
            "/images/test/blob.bin",
            "/",
            "/server.crt",
            "/metrics",
        ] {
            let response = client.request(method, path, &[]);
            assert_eq!(response.status, 405, "{method} {path}");
            let allow = response.header("allow").unwrap_or_default().to_string();
            assert!(
                allow.contains("GET") && allow.contains("HEAD"),
                "{method} {path}: {allow}"
            );
        }
    }
    let (raw, _) = plain(
        server.https(),
        b"DELETE /images/test/blob.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(parse_response(&raw).status, 405);
    assert!(t.www().join("images/test/blob.bin").exists());
}

#[test]
fn an_import_is_visible_on_the_next_request() {
    let t = TestDir::new();
    let (_server, client) = start(&t, &[]);
    let before = client.get("/streams/v1/images.json");
    let etag = before.header("etag").unwrap().to_string();
    assert!(!before.text().contains("testos"));
    let fingerprint = import_container(&t, &Meta::default(), "visible");
    let after = client.request(
        "GET",
        "/streams/v1/images.json",
        &[("if-none-match", &etag)],
    );
    assert_eq!(after.status, 200);
    assert!(after.text().contains(&fingerprint), "{}", after.text());
    let index = client.get("/streams/v1/index.json");
    assert!(
        index.text().contains("testos:1:amd64:default"),
        "{}",
        index.text()
    );
    let gz = client.request(
        "GET",
        "/streams/v1/images.json",
        &[("accept-encoding", "gzip")],
    );
    assert!(
        String::from_utf8(gunzip(&gz.body))
            .unwrap()
            .contains(&fingerprint)
    );
}

// ---------------------------------------------------------------------------------------
// TLS and the certificate

#[test]
fn tls13_http11_and_h2_by_alpn() {
    let t = TestDir::new();
    let (_server, client) = start(&t, &[]);
    let tls13 = client
        .clone()
        .only(&rustls::version::TLS13)
        .handshake()
        .unwrap();
    assert_eq!(tls13.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(tls13.alpn.as_deref(), Some(&b"http/1.1"[..]));

    let h1 = client.get("/streams/v1/index.json");
    assert_eq!(h1.version, http::Version::HTTP_11);
    let h2 = client.clone().h2();
    assert_eq!(h2.handshake().unwrap().alpn.as_deref(), Some(&b"h2"[..]));
    let response = h2.get("/streams/v1/index.json");
    assert_eq!(response.status, 200);
    assert_eq!(response.version, http::Version::HTTP_2);
    assert_eq!(response.body, h1.body);
    // The name LXD checks (the first DNS name) and localhost both verify.
    let localhost = client.clone().server_name("localhost");
    assert_eq!(localhost.get("/healthz").status, 200);
}

#[test]
fn the_generated_certificate_has_the_names_and_is_reused() {
    let t = TestDir::new();
    let (server, client) = start(&t, &["--tls-san", "images.test", "--tls-san", "192.0.2.9"]);
    let pem_bytes = std::fs::read(cert_path(&t)).unwrap();
    let served = client.handshake().unwrap().certificate;

    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes).unwrap();
    assert_eq!(pem.contents, served, "the file is the served certificate");
    let cert = pem.parse_x509().unwrap();
    let names = cert.subject_alternative_name().unwrap().unwrap();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &names.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            _ => {}
        }
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        dns.first().map(String::as_str),
        Some("images.test"),
        "{dns:?}"
    );
    assert!(dns.contains(&hostname.trim().to_string()), "{dns:?}");
    assert!(dns.contains(&"localhost".to_string()), "{dns:?}");
    assert!(ips.contains(&vec![127, 0, 0, 1]), "{ips:?}");
    assert!(ips.contains(&vec![192, 0, 2, 9]), "{ips:?}");
    let mut loopback6 = vec![0u8; 16];
    loopback6[15] = 1;
    assert!(ips.contains(&loopback6), "{ips:?}");
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth);
    let curve = cert
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    assert_eq!(curve.as_deref(), Some("1.2.840.10045.3.1.7"), "ECDSA P-256");
    assert!(cert.validity().is_valid());
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(t.data().join("tls/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(server.terminate().success());

    // A restart (with other names asked for) keeps the pinned certificate.
    let (_server, client) = start(&t, &["--tls-san", "other.test"]);
    assert_eq!(std::fs::read(cert_path(&t)).unwrap(), pem_bytes);
    assert_eq!(client.handshake().unwrap().certificate, served);
}

#[test]
fn a_returning_client_resumes_its_tls_session_after_many_others() {
    let t = TestDir::new();
    let (server, client) = start(&t, &[]);
    let returning = client.clone().resuming();
    // A request, so that the client reads the session tickets sent after the handshake.
    assert_eq!(returning.get("/healthz").status, 200);
    // More clients than an in-memory session cache of the default size remembers.
    for _ in 0..200 {
        assert!(!client.handshake().unwrap().resumed);
    }
    assert!(returning.handshake().unwrap().resumed);
    assert!(problems(&server.output()).is_empty(), "{}", server.output());
}

#[test]
fn startup_text_installs_the_certificate_and_matches_remote_info() {
    let t = TestDir::new();
    assert!(
        t.fails(&["remote-info"], 1)
            .contains("start the server once"),
        "remote-info before the first start"
    );
    write_config(
        &t,
        "[http]\npublic_url = \"https://images.test:8443\"\nremote_name = \"lab\"\n",
    );
    let (server, client) = start(&t, &[]);
    let output = server.stdout();
    let served = client.handshake().unwrap().certificate;

    assert!(
        output.contains("lxc remote add lab https://images.test:8443 --protocol=simplestreams\n")
    );
    assert!(
        output.contains("incus remote add lab https://images.test:8443 --protocol=simplestreams\n")
    );
    assert!(output.contains(&format!(
        "TLS certificate SHA-256 fingerprint: {}\n",
        sha256_hex(&served)
    )));
    // Printed once, before the startup protocol's last line.
    assert_eq!(output.matches("lxc remote add").count(), 1);
    let ready = output.find("\nready\n").unwrap();
    assert!(output.find("listening https").unwrap() < ready);
    assert!(output.find("lxc remote add").unwrap() < ready);

    // The install lines, run as printed, store the served certificate for both clients.
    let block: String = output
        .lines()
        .skip_while(|line| !line.starts_with("cat > lab.crt"))
        .take_while(|line| !line.starts_with("if command -v lxc"))
        .map(|line| format!("{line}\n"))
        .collect();
    let client_home = t.path().join("client");
    std::fs::create_dir_all(&client_home).unwrap();
    let status = std::process::Command::new("bash")
        .arg("-ec")
        .arg(&block)
        .current_dir(&client_home)
        .env("HOME", &client_home)
        .env("LXD_CONF", client_home.join("lxd"))
        .env_remove("INCUS_CONF")
        .status()
        .unwrap();
    assert!(status.success(), "{block}");
    let expected = pem_of(&served);
    for stored in [
        client_home.join("lxd/servercerts/lab.crt"),
        client_home.join(".config/incus/servercerts/lab.crt"),
    ] {
        assert_eq!(
            std::fs::read_to_string(&stored).unwrap(),
            expected,
            "{stored:?}"
        );
    }
    assert_eq!(client.get("/server.crt").text(), expected);

    // `remote-info` prints the same text (given the port the SSH side really bound).
    let ssh_listen = server.ssh().to_string();
    let info = t.ok(&["remote-info", "--ssh-listen", &ssh_listen]);
    let start = output.find("# To use this server").unwrap();
    let end = output.find("listening https").unwrap();
    assert_eq!(info, &output[start..end]);
    assert!(
        t.ok(&["remote-info", "--remote", "other"])
            .contains("lxc remote add other ")
    );
}

/// Issue 10 item 21: `remote-info | sh` sets a client up. The whole text is shell (prose as
/// comments); piped to `sh` with private client directories, `lxc image list` and
/// `incus image list` then list the server's image.
#[test]
fn remote_info_piped_to_sh_sets_up_lxc_and_incus() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "piped");
    let key = Key::new(&t, "reader");
    write_authorized_keys(&t, &[key.line("")]);
    let (server, _client) = start(&t, &[]);
    let https = server.https().to_string();
    let ssh = server.ssh().to_string();
    let local = t.ok(&[
        "remote-info",
        "--https-listen",
        &https,
        "--ssh-listen",
        &ssh,
    ]);
    let over_ssh = SshClient::new(server.ssh(), &key).ok("remote-info");
    for (door, text) in [("local", local), ("ssh", over_ssh)] {
        let clients = t.path().join(door);
        std::fs::create_dir_all(&clients).unwrap();
        let lxc = ImageClient::new(Family::Lxd, &clients);
        let incus = ImageClient::new(Family::Incus, &clients);
        let mut sh = std::process::Command::new("sh")
            .current_dir(&clients)
            .env("HOME", &clients)
            .env("LXD_CONF", &lxc.conf)
            .env("INCUS_CONF", &incus.conf)
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut sh.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let ran = sh.wait_with_output().unwrap();
        // (lxc's first run prints its welcome on stderr.)
        assert!(
            ran.status.success(),
            "{door}: {}\n{text}",
            String::from_utf8_lossy(&ran.stderr)
        );
        for client in [&lxc, &incus] {
            let listed = client.ok(&["image", "list", "private:", "--format", "csv"]);
            assert!(
                listed.contains("testos/1"),
                "{door} {:?}: {listed}",
                client.family
            );
        }
    }
}

/// A self-signed pair for 127.0.0.1, written key first, each by rename.
fn write_pair(dir: &Path, name: &str) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    for (file, content) in [("live.key", key.serialize_pem()), ("live.crt", cert.pem())] {
        let tmp = dir.join(format!("{name}.{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
}

#[test]
fn configured_certificates_are_reloaded_when_they_change() {
    let t = TestDir::new();
    let certs = t.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    write_pair(&certs, "first");
    write_config(&t, "[tls]\nreload_interval_secs = 1\n");
    let cert = certs.join("live.crt");
    let key = certs.join("live.key");
    let server = Server::start(
        &t,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!cert_path(&t).exists(), "no certificate is generated");
    let first = Client::new(server.https(), &certs.join("first.crt"));
    assert_eq!(first.get("/healthz").status, 200);

    write_pair(&certs, "second");
    let second = Client::new(server.https(), &certs.join("second.crt"));
    wait_until(Duration::from_secs(15), "the new certificate", || {
        second.try_request("GET", "/healthz", &[]).ok()
    });
    assert!(first.try_request("GET", "/healthz", &[]).is_err());
    assert_eq!(
        second.get("/server.crt").text(),
        std::fs::read_to_string(certs.join("second.crt")).unwrap()
    );
    assert!(
        server
            .output()
            .contains("loaded the changed TLS certificate")
    );

    // A key that does not match is refused; the served pair stays.
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    wait_until(Duration::from_secs(15), "the refusal", || {
        server
            .output()
            .contains("do not load; still serving the previous certificate")
            .then_some(())
    });
    assert_eq!(second.get("/healthz").status, 200);
}

// ---------------------------------------------------------------------------------------
// The plain-HTTP first try and quiet connections

#[test]
fn plain_http_gets_image_files_at_once() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "plain");
    let (server, _client) = start(&t, &[]);
    for (path, size, sha256) in items(&t) {
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: LXD 5.0.2\r\nConnection: close\r\n\r\n"
        );
        let (raw, took) = plain(server.https(), request.as_bytes(), Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let response = parse_response(&raw);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(
            response.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(sha256_hex(&response.body), sha256, "{path}");
    }
    let (path, size, _) = squashfs_item(&t);
    let (raw, _) = plain(
        server.https(),
        format!("GET /{path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    let ranged = parse_response(&raw);
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body.len(), 10);
    let expected_range = format!("bytes 0-9/{size}");
    assert_eq!(
        ranged.header("content-range"),
        Some(expected_range.as_str())
    );
    let (raw, _) = plain(
        server.https(),
        format!("HEAD /{path} HTTP/1.0\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    let head = parse_response(&raw);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let (raw, _) = plain(
        server.https(),
        b"GET /images/testos/missing HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(parse_response(&raw).status, 404);
    assert!(problems(&server.output()).is_empty(), "{}", server.output());
}

#[test]
fn plain_http_sends_a_small_file_with_its_head_in_one_segment() {
    use std::io::Write;
    let t = TestDir::new();
    put(&t, "images/small/f", &pattern(1000));
    let (server, _client) = start(&t, &[]);
    let mut stream = std::net::TcpStream::connect(server.https()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /images/small/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let response = parse_response(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, pattern(1000));
    // Head and body corked together: one data segment, not a head segment, then the body.
    assert_eq!(support::net::data_segments_received(&stream), 1);
}

#[test]
fn plain_http_for_anything_else_is_redirected_to_https() {
    let t = TestDir::new();
    let (server, client) = start(&t, &[]);
    let port = server.https().port();
    for target in ["/streams/v1/index.json", "/", "/metrics?x=1"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let (raw, took) = plain(server.https(), request.as_bytes(), Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let response = parse_response(&raw);
        assert_eq!(response.status, 301, "{target}");
        let location = format!("https://127.0.0.1:{port}{target}");
        assert_eq!(response.header("location"), Some(location.as_str()));
    }
    // Garbage gets a fast 400, not a hang.
    let (raw, took) = plain(server.https(), b"HELLO\r\n\r\n", Duration::from_secs(10));
    assert!(took < Duration::from_secs(5));
    assert_eq!(parse_response(&raw).status, 400);
    // curl follows the redirect to the JSON over TLS.
    let cert = cert_path(&t);
    let body = curl_ok(&[
        "-L",
        "--cacert",
        cert.to_str().unwrap(),
        &format!("http://127.0.0.1:{port}/streams/v1/index.json"),
    ]);
    assert_eq!(body, client.get("/streams/v1/index.json").body);
}

/// Issue 10 item 16: the redirect goes to the remote URL, whatever `Host` the request names.
#[test]
fn plain_http_redirects_never_echo_the_host_header() {
    let t = TestDir::new();
    let (server, _client) = start(&t, &[]);
    let port = server.https().port();
    let redirect = |server: &Server, head: &str| {
        let request = format!("GET /streams/v1/index.json HTTP/1.1\r\n{head}\r\n");
        let (raw, _) = plain(server.https(), request.as_bytes(), Duration::from_secs(10));
        let response = parse_response(&raw);
        assert_eq!(response.status, 301, "{head:?}");
        response.header("location").map(str::to_string)
    };
    let own = format!("https://127.0.0.1:{port}/streams/v1/index.json");
    for head in ["Host: evil.example\r\n", "Host: 127.0.0.1:1\r\n", ""] {
        assert_eq!(
            redirect(&server, head).as_deref(),
            Some(own.as_str()),
            "{head:?}"
        );
    }
    drop(server);

    let t = TestDir::new();
    let (server, _client) = start(&t, &["--public-url", "https://images.test:9443/"]);
    assert_eq!(
        redirect(&server, "Host: evil.example\r\n").as_deref(),
        Some("https://images.test:9443/streams/v1/index.json")
    );
}

#[test]
fn plain_http_image_files_can_be_switched_off() {
    let t = TestDir::new();
    write_config(&t, "[http]\nplain_http_images = false\n");
    put(&t, "images/test/blob.bin", b"blob");
    let (server, client) = start(&t, &[]);
    let port = server.https().port();
    let (raw, _) = plain(
        server.https(),
        format!("GET /images/test/blob.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    let response = parse_response(&raw);
    assert_eq!(response.status, 301);
    assert_eq!(client.get("/images/test/blob.bin").body, b"blob");
}

#[test]
fn silent_and_zero_byte_connections_are_closed_quietly() {
    let t = TestDir::new();
    write_config(&t, "[http]\nhandshake_timeout_secs = 1\n");
    let (server, client) = start(&t, &[]);
    // LXD's probe: connect, send nothing, close.
    for _ in 0..5 {
        drop(std::net::TcpStream::connect(server.https()).unwrap());
    }
    // A client that connects and says nothing is closed at the timeout.
    let (out, took) = plain(server.https(), b"", Duration::from_secs(10));
    assert!(out.is_empty());
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "not closed in time: {took:?}"
    );
    // Half a request head, then silence: closed too.
    let (out, took) = plain(
        server.https(),
        b"GET /images/x HTTP/1.1\r\nHost",
        Duration::from_secs(10),
    );
    assert!(out.is_empty());
    assert!(
        took < Duration::from_secs(5),
        "not closed in time: {took:?}"
    );
    // Half a TLS handshake, then silence.
    let (_, took) = plain(server.https(), &[0x16, 0x03, 0x01], Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "not closed in time: {took:?}"
    );
    // The server still serves, and said nothing about any of it.
    assert_eq!(client.get("/healthz").status, 200);
    let output = wait_until(Duration::from_secs(10), "the access line", || {
        let output = server.output();
        output.contains("path=/healthz").then_some(output)
    });
    assert!(problems(&output).is_empty(), "{output}");
    assert_eq!(output.matches(" access: ").count(), 1, "{output}");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let t = TestDir::new();
    write_config(&t, "[http]\nsend_timeout_secs = 1\n");
    let big = put(&t, "images/test/big.bin", b"");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (server, client) = start(&t, &[]);
    let request = b"GET /images/test/big.bin HTTP/1.1\r\nHost: x\r\nUser-Agent: stalled\r\n\r\n";
    // Over TLS and over plain HTTP: ask, then never read.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _tls = runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut tls = client.connect().await.unwrap();
        tls.write_all(request).await.unwrap();
        tls
    });
    let mut tcp = std::net::TcpStream::connect(server.https()).unwrap();
    std::io::Write::write_all(&mut tcp, request).unwrap();

    let output = wait_until(Duration::from_secs(20), "both downloads cut off", || {
        let output = server.output();
        let cut = |scheme: &str| {
            output.lines().any(|l| {
                l.contains("request aborted")
                    && l.contains(&format!("scheme=\"{scheme}\""))
                    && l.contains("user_agent=stalled")
            })
        };
        (cut("https") && cut("http")).then_some(output)
    });
    assert!(problems(&output).is_empty(), "{output}");
    assert_eq!(client.get("/healthz").status, 200);
}

#[test]
fn start_up_errors_say_what_to_do() {
    let t = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--ssh-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let output = t.run(&args);
        assert_eq!(output.status.code(), Some(1), "{extra:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        stderr.lines().last().unwrap_or_default().to_string()
    };
    let line = serve(&["--https-listen", &taken]);
    assert!(
        line.contains(&taken) && line.contains("--https-listen"),
        "{line}"
    );
    let free = ["--https-listen", "127.0.0.1:0"];
    let line = serve(&[&free[..], &["--base-path", "/a b"]].concat());
    assert!(
        line.contains("base path") && line.contains("/lxd"),
        "{line}"
    );
    let line = serve(&[&free[..], &["--tls-san", "not a name"]].concat());
    assert!(line.contains("--tls-san"), "{line}");
    let line = serve(&[&free[..], &["--public-url", "http://plain.test"]].concat());
    assert!(line.contains("https://"), "{line}");
    let missing = t.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let line = serve(&[&free[..], &["--tls-cert", missing, "--tls-key", missing]].concat());
    assert!(
        line.contains("missing.pem") && line.contains("--tls-cert"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// Pages, base path, logs, shutdown, curl

/// Issue 10 item 18: `/` and `/healthz` answer from what was read for the published stream,
/// not from a read of the record per request; a new stream is read again.
#[test]
fn the_page_and_healthz_answer_from_the_published_stream() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "first");
    let (_server, client) = start(&t, &[]);
    assert_eq!(client.get("/healthz").status, 200);
    let page = client.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("testos/1"), "{}", page.text());
    // Unreadable record, same stream: still answered (old code read the record: 503).
    let record = t.data().join("state/catalog.json");
    let kept = std::fs::read(&record).unwrap();
    std::fs::write(&record, b"not json").unwrap();
    for _ in 0..3 {
        assert_eq!(client.get("/healthz").status, 200);
        assert_eq!(client.get("/").status, 200);
    }
    // A new stream is read again.
    std::fs::write(&record, &kept).unwrap();
    let meta = Meta {
        release: "2",
        ..Meta::default()
    };
    import_container(&t, &meta, "second");
    assert!(client.get("/").text().contains("testos/2"));
    assert_eq!(client.get("/healthz").status, 200);
}

/// Issue 10 item 19: TLS 1.3 only by default (LXD and Incus require it); 1.2 when set.
#[test]
fn tls_1_2_is_offered_only_when_min_version_says_so() {
    let t = TestDir::new();
    let (server, client) = start(&t, &[]);
    let tls12 = client.clone().only(&rustls::version::TLS12);
    assert!(tls12.handshake().is_err(), "TLS 1.2 offered by default");
    drop(server);
    let shown = t.ok(&["config"]);
    assert!(shown.contains("min_version = \"1.3\""), "{shown}");

    let (_server, client) = start(&t, &["--tls-min-version", "1.2"]);
    let tls12 = client.clone().only(&rustls::version::TLS12).handshake();
    assert_eq!(tls12.unwrap().version, rustls::ProtocolVersion::TLSv1_2);
    let tls13 = client.only(&rustls::version::TLS13).handshake();
    assert_eq!(tls13.unwrap().version, rustls::ProtocolVersion::TLSv1_3);
    let bad = t.run(&["config", "--tls-min-version", "1.1"]);
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && said.contains("1.3"), "{said}");
}

#[test]
fn healthz_metrics_and_server_crt() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "pages");
    let (_server, client) = start(&t, &[]);
    let health = client.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    let crt = client.get("/server.crt");
    assert_eq!(crt.header("content-type"), Some("application/x-pem-file"));
    assert_eq!(crt.text(), pem_of(&client.handshake().unwrap().certificate));
    client.get("/streams/v1/index.json");
    client.get("/missing");

    let metrics = client.get("/metrics").text();
    let value = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line_start} missing in\n{metrics}"))
    };
    assert!(value("simplestream_http_requests_total{scheme=\"https\",status=\"200\"}") >= 3);
    assert!(value("simplestream_http_requests_total{scheme=\"https\",status=\"404\"}") >= 1);
    assert!(value("simplestream_http_response_bytes_total{scheme=\"https\"}") > 0);
    assert!(value("simplestream_tls_handshakes_total{result=\"ok\"}") >= 5);
    assert_eq!(value("simplestream_images_published"), 1);
    assert_eq!(value("simplestream_catalog_readable"), 1);
    assert_eq!(
        value("simplestream_imports_total"),
        0,
        "CLI imports run in another process"
    );

    // An unreadable catalog behind a newly published stream makes the server unhealthy, and
    // says so. (Health is read once per version of the stream: see the test above.)
    std::fs::write(t.data().join("state/catalog.json"), "not json").unwrap();
    let images = t.www().join("streams/v1/images.json");
    let republished = t.www().join("streams/v1/images.json.new");
    std::fs::copy(&images, &republished).unwrap();
    std::fs::rename(&republished, &images).unwrap();
    let sick = client.get("/healthz");
    assert_eq!(sick.status, 503);
    assert!(sick.text().contains("catalog"), "{}", sick.text());
    assert!(
        client
            .get("/metrics")
            .text()
            .contains("simplestream_catalog_readable 0")
    );
}

#[test]
fn the_base_path_prefixes_every_url() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "base");
    let (server, client) = start(&t, &["--base-path", "/lxd/"]);
    let port = server.https().port();
    assert!(server.output().contains(&format!(
        "lxc remote add private https://127.0.0.1:{port}/lxd --protocol=simplestreams"
    )));
    assert_eq!(client.get("/lxd/streams/v1/index.json").status, 200);
    assert_eq!(client.get("/streams/v1/index.json").status, 404);
    assert_eq!(client.get("/lxdx/streams/v1/index.json").status, 404);
    assert_eq!(client.get("/lxd").status, 200);
    assert!(
        client
            .get("/lxd/")
            .text()
            .contains("href=\"/lxd/server.crt\"")
    );
    assert_eq!(client.get("/").status, 404);
    assert_eq!(client.get("/lxd/healthz").status, 200);
    assert_eq!(client.get("/lxd/server.crt").status, 200);
    let (path, _, sha256) = squashfs_item(&t);
    assert_eq!(
        sha256_hex(&client.get(&format!("/lxd/{path}")).body),
        sha256
    );
    let (raw, _) = plain(
        server.https(),
        format!("GET /lxd/{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    assert_eq!(sha256_hex(&parse_response(&raw).body), sha256);
}

#[test]
fn each_request_is_logged_once() {
    let t = TestDir::new();
    let (server, client) = start(&t, &[]);
    client.request(
        "GET",
        "/streams/v1/index.json",
        &[("user-agent", "sss-test/1")],
    );
    let size = std::fs::metadata(t.www().join("streams/v1/index.json"))
        .unwrap()
        .len();
    let line = wait_until(Duration::from_secs(10), "the access line", || {
        server
            .output()
            .lines()
            .find(|l| l.contains("user_agent=sss-test/1"))
            .map(str::to_string)
    });
    for field in [
        "access: request",
        "remote=127.0.0.1:",
        "method=GET",
        "path=/streams/v1/index.json",
        "status=200",
        &format!("bytes={size}"),
        "ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }

    let t = TestDir::new();
    let (server, client) = start(&t, &["--log-format", "json"]);
    client.request("GET", "/nothing-here", &[("user-agent", "sss-test/2")]);
    let record: serde_json::Value = wait_until(Duration::from_secs(10), "the JSON line", || {
        server
            .output()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["user_agent"] == "sss-test/2")
    });
    assert_eq!(record["target"], "access");
    assert_eq!(record["fields"]["status"], 404);
    assert_eq!(record["fields"]["path"], "/nothing-here");
    assert_eq!(record["fields"]["method"], "GET");
}

#[test]
fn sigterm_lets_an_in_flight_download_finish_then_exits() {
    let t = TestDir::new();
    let size: u64 = 64 << 20;
    let big = put(&t, "images/test/big.bin", b"");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(size)
        .unwrap();
    let (mut server, client) = start(&t, &[]);
    let addr = server.https();
    let pid = server.child.id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let received = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = client.connect().await.unwrap();
        tls.write_all(b"GET /images/test/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0u64;
        while received < 1 << 20 {
            received += tls.read(&mut buf).await.unwrap() as u64;
        }
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.output().contains("shutting down") {
            assert!(Instant::now() < deadline, "no shutdown line");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No new connections once shutdown began.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => received += n as u64,
                Err(e) => panic!("download cut at {received} bytes: {e}"),
            }
        }
        received
    });
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        received > size,
        "got {received} of {size} body bytes (plus the head)"
    );
    assert!(received < size + 4096);
    assert!(problems(&server.output()).is_empty(), "{}", server.output());
}

#[test]
fn curl_gets_what_it_asks_for() {
    let t = TestDir::new();
    import_container(&t, &Meta::default(), "curl");
    let (server, client) = start(&t, &[]);
    let cert = cert_path(&t);
    let cert = cert.to_str().unwrap();
    let base = format!("https://127.0.0.1:{}", server.https().port());
    let index = format!("{base}/streams/v1/index.json");

    let summary = curl_ok(&[
        "--cacert",
        cert,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type} %{http_version}",
        &index,
    ]);
    assert_eq!(
        String::from_utf8(summary).unwrap(),
        "200 application/json 2"
    );
    for version in ["--tlsv1.3", "--http1.1"] {
        let status = curl_ok(&[
            "--cacert",
            cert,
            version,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &index,
        ]);
        assert_eq!(status, b"200", "{version}");
    }
    let json = std::fs::read(t.www().join("streams/v1/images.json")).unwrap();
    let decoded = curl_ok(&[
        "--cacert",
        cert,
        "--compressed",
        &format!("{base}/streams/v1/images.json"),
    ]);
    assert_eq!(decoded, json);
    let headers = curl_ok(&[
        "--cacert",
        cert,
        "--compressed",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("{base}/streams/v1/images.json"),
    ]);
    assert!(
        String::from_utf8(headers)
            .unwrap()
            .contains("content-encoding: gzip")
    );

    let (path, size, sha256) = squashfs_item(&t);
    let whole = curl_ok(&["--cacert", cert, &format!("{base}/{path}")]);
    assert_eq!(sha256_hex(&whole), sha256);
    let part = curl_ok(&["--cacert", cert, "-r", "0-99", &format!("{base}/{path}")]);
    assert_eq!(part, &whole[..100]);
    let plain_body = curl_ok(&[&format!(
        "http://127.0.0.1:{}/{path}",
        server.https().port()
    )]);
    assert_eq!(plain_body.len() as u64, size);
    assert_eq!(plain_body, whole);

    let etag = client
        .get("/streams/v1/index.json")
        .header("etag")
        .unwrap()
        .to_string();
    let not_modified = curl_ok(&[
        "--cacert",
        cert,
        "-H",
        &format!("If-None-Match: {etag}"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &index,
    ]);
    assert_eq!(not_modified, b"304");
    let escaped = curl_ok(&[
        "--cacert",
        cert,
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/images/../../state/catalog.json"),
    ]);
    assert_eq!(escaped, b"404");
    // A client that does not trust the certificate fails the handshake, and the server notes it.
    let untrusted = curl(&["-o", "/dev/null", &index]);
    assert!(!untrusted.status.success());
}

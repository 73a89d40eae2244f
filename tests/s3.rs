//! Object storage on a real engine: a 3-node Garage cluster on 127.0.0.1 (tests/support/garage.rs).
//! First that the cluster the other tests stand on behaves as a store should: it keeps and
//! returns objects through any node, refuses unsigned and wrongly signed requests, and goes on
//! serving with one node killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::clients::{Client as ImageClient, Family};
use crate::support::garage::GarageCluster;
use crate::support::http::Client as HttpsClient;
use crate::support::lxd_daemon::{LxdDaemon, busybox_image, split_busybox_image};
use crate::support::net::CountingRelay;
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, write_authorized_keys, write_config};
use crate::support::{self, Meta, TestDir, invariants, wait_until};

/// Incompressible bytes, different per `seed`, so a wrong or truncated copy is seen.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn garage_cluster_stores_and_returns_an_object_through_every_node() {
    let t = TestDir::new();
    let cluster = GarageCluster::start(&t.path().join("garage"));
    // Bigger than Garage's 1 MiB block: the object is split and reassembled.
    let object = noise(1, 3 << 20);
    cluster.put_via(0, "images/a.squashfs", &object).unwrap();
    for node in 0..3 {
        assert_eq!(
            cluster.get_via(node, "images/a.squashfs").unwrap(),
            object,
            "node {node} returns another content"
        );
    }
    assert_eq!(cluster.list("images/"), vec!["images/a.squashfs"]);
    assert_eq!(cluster.get("images/absent"), None);

    // Unsigned, or signed with a wrong secret: refused, and nothing is written.
    let unsigned = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "{}/{}/images/a.squashfs",
            cluster.endpoint(),
            cluster.bucket
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unsigned.stdout), "403");
    let (status, _) = cluster
        .request_as(
            1,
            "PUT",
            "images/forged",
            Some(b"forged"),
            &cluster.access_key,
            &"0".repeat(64),
        )
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(cluster.get("images/forged"), None);
}

#[test]
fn garage_cluster_serves_and_stores_with_one_node_killed() {
    let t = TestDir::new();
    let mut cluster = GarageCluster::start(&t.path().join("garage"));
    let before = noise(2, 2 << 20);
    cluster.put("before", &before);

    cluster.kill_node(2);
    assert!(!cluster.is_up(2));
    // Two of three replicas are a quorum: reads and writes go on through the nodes left.
    for node in 0..2 {
        assert_eq!(cluster.get_via(node, "before").unwrap(), before);
    }
    let during = noise(3, 2 << 20);
    cluster.put_via(1, "during", &during).unwrap();
    assert_eq!(cluster.get_via(0, "during").unwrap(), during);
    assert!(
        cluster.request(2, "GET", "during", None).is_err(),
        "the killed node still answers"
    );

    // Back with its data and ports: it serves what was written while it was down.
    cluster.start_node(2);
    assert_eq!(cluster.get_via(2, "during").unwrap(), during);
    assert_eq!(cluster.get_via(2, "before").unwrap(), before);
}

// The S3 backend end to end: a writer (`serve`, SSH + HTTPS) publishing into the bucket,
// read replicas (`serve --read-only`) serving it, real clients and the LXD daemon reading
// through the replicas, and Garage or the writer failing underneath.

/// `serve` for a data directory whose config.toml points at the cluster: the writer (SSH and
/// HTTPS) or, `read_only`, a replica (HTTPS).
fn serve(t: &TestDir, cluster: &GarageCluster, read_only: bool) -> Server {
    let mut args = vec!["serve", "--https-listen", "127.0.0.1:0"];
    if read_only {
        args.push("--read-only");
    } else {
        args.extend(["--ssh-listen", "127.0.0.1:0"]);
    }
    let mut command = t.command(&args);
    cluster.credentials(&mut command);
    Server::start_with(command)
}

/// A data directory configured for the bucket under `prefix` (plus `extra` config lines).
fn s3_dir(cluster: &GarageCluster, prefix: &str, extra: &str) -> TestDir {
    let t = TestDir::new();
    write_config(&t, &format!("{}{extra}", cluster.storage_toml(prefix)));
    t
}

/// A writer's data directory with `key` allowed to publish.
fn writer_dir(cluster: &GarageCluster, prefix: &str, key_name: &str) -> (TestDir, Key) {
    let t = s3_dir(cluster, prefix, "");
    let key = Key::new(&t, key_name);
    write_authorized_keys(&t, &[key.line("")]);
    (t, key)
}

/// A writer (`serve` with SSH and HTTPS) on the bucket under `prefix`: its data directory,
/// server and an SSH client allowed to publish.
fn start_writer(cluster: &GarageCluster, prefix: &str) -> (TestDir, Server, Client) {
    let (t, key) = writer_dir(cluster, prefix, "publisher");
    let writer = serve(&t, cluster, false);
    let ssh = Client::new(writer.ssh(), &key);
    (t, writer, ssh)
}

/// A replica of the bucket under `prefix` (plus `extra` config lines), once it serves
/// `fingerprint`: its data directory, server and HTTPS client.
fn start_replica(
    cluster: &GarageCluster,
    prefix: &str,
    extra: &str,
    fingerprint: &str,
) -> (TestDir, Server, HttpsClient) {
    let r = s3_dir(cluster, prefix, extra);
    let replica = serve(&r, cluster, true);
    let client = https(&r, &replica);
    wait_serving(&client, fingerprint);
    (r, replica, client)
}

/// Uploads `files` with scp and imports them with `ssh import`; returns the import's output.
fn publish(ssh: &Client, files: &[&Path], alias: &str) -> String {
    let sent = ssh.scp(&[], files, "");
    assert!(
        sent.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    ssh.ok(&format!("import {} --alias {alias}", names.join(" ")))
}

/// An HTTPS client for a server whose certificate is in `t`'s data directory.
fn https(t: &TestDir, server: &Server) -> HttpsClient {
    HttpsClient::new(server.https(), &t.data().join("tls/server.crt"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Polls `server` until its images.json names `fingerprint` (a replica refreshes on its
/// own), for at most 60 s.
fn wait_serving(client: &HttpsClient, fingerprint: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{fingerprint} served"),
        || {
            let response = client
                .try_request("GET", "/streams/v1/images.json", &[])
                .ok()?;
            (response.status == 200 && response.text().contains(fingerprint)).then_some(())
        },
    );
}

/// Every file images.json names, fetched from `client`, has the size and sha256 it gives:
/// the tree served is whole. Returns the fingerprints (combined hashes) it names.
fn assert_whole_tree(client: &HttpsClient, when: &str) -> Vec<String> {
    let index = client.get("/streams/v1/index.json");
    assert_eq!(index.status, 200, "{when}: index.json");
    let images = client.get("/streams/v1/images.json");
    assert_eq!(images.status, 200, "{when}: images.json");
    let images: serde_json::Value = serde_json::from_slice(&images.body).unwrap();
    let mut fingerprints = Vec::new();
    let mut checked = 0;
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                let path = item["path"].as_str().unwrap();
                let file = client.get(&format!("/{path}"));
                assert_eq!(file.status, 200, "{when}: {path} is named but not served");
                assert_eq!(
                    Some(file.body.len() as u64),
                    item["size"].as_u64(),
                    "{when}: {path}"
                );
                assert_eq!(
                    Some(sha256_hex(&file.body).as_str()),
                    item["sha256"].as_str(),
                    "{when}: {path}"
                );
                checked += 1;
                for key in ["combined_squashfs_sha256", "combined_sha256"] {
                    if let Some(fp) = item[key].as_str() {
                        fingerprints.push(fp.to_string());
                    }
                }
            }
        }
    }
    assert!(checked > 0, "{when}: images.json names no file");
    fingerprints.sort();
    fingerprints.dedup();
    fingerprints
}

/// A split image (xz metadata, squashfs root with `noise` incompressible bytes): its files and
/// fingerprint.
fn split_image(t: &TestDir, release: &'static str, noise: usize) -> (PathBuf, PathBuf, String) {
    let meta = t.file(&format!("{release}.tar.xz"));
    support::metadata_tarball(
        &meta,
        &Meta {
            release,
            ..Meta::default()
        },
    );
    let root = t.file(&format!("{release}.squashfs"));
    support::squashfs_with_noise(&root, release, noise);
    let fingerprint = support::sha256_of(&[&meta, &root]);
    (meta, root, fingerprint)
}

#[test]
fn published_over_ssh_then_lxc_incus_and_the_lxd_daemon_read_through_two_replicas() {
    let work = TestDir::new();
    let cluster = GarageCluster::start(&work.path().join("garage"));
    let (t, _writer, ssh) = start_writer(&cluster, "fleet/");

    // A busybox container the daemon can run, split as LXD wants it.
    let unified = busybox_image(work.path(), "bb", 1_764_244_800);
    let (meta, root) = split_busybox_image(work.path(), &unified, "replicated");
    let fingerprint = support::sha256_of(&[&meta, &root]);
    let out = publish(&ssh, &[&meta, &root], "busybox/replicated");
    assert!(out.contains(&format!("published {fingerprint}")), "{out}");

    // The published tree is in the bucket, under the prefix; the writer keeps none of it.
    let keys = cluster.list("fleet/");
    assert!(
        keys.iter().any(|k| k == "fleet/streams/v1/index.json"),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("fleet/images/") && k.ends_with(".squashfs")),
        "{keys:?}"
    );
    let local_images: Vec<_> = invariants::files_under(&t.www().join("images"));
    assert!(local_images.is_empty(), "{local_images:?}");

    let replicas: Vec<(TestDir, Server)> = (0..2)
        .map(|_| {
            let r = s3_dir(&cluster, "fleet/", "");
            let server = serve(&r, &cluster, true);
            (r, server)
        })
        .collect();
    for (r, replica) in &replicas {
        let client = https(r, replica);
        wait_serving(&client, &fingerprint);
        assert_eq!(
            assert_whole_tree(&client, "replica"),
            vec![fingerprint.clone()]
        );
        // No SSH on a replica.
        assert!(
            !replica.addresses.contains_key("ssh"),
            "{:?}",
            replica.addresses
        );
    }

    // lxc through one replica, incus through the other: list, inspect, export.
    for ((r, replica), family) in replicas.iter().zip([Family::Lxd, Family::Incus]) {
        let client = ImageClient::new(family, work.path());
        let url = format!("https://127.0.0.1:{}", replica.https().port());
        client.add_remote("replica", &url, &r.data().join("tls/server.crt"));
        let images = client.list("replica");
        assert!(
            images.iter().any(|(fp, _, _)| fp == &fingerprint),
            "{family:?}: {images:?}"
        );
        let info = client.ok(&["image", "info", "replica:busybox/replicated"]);
        assert!(
            info.contains(&format!("Fingerprint: {fingerprint}")),
            "{info}"
        );
        let exported = client.export_fingerprint(
            "replica",
            &fingerprint,
            &work.path().join(format!("export-{family:?}")),
        );
        assert_eq!(exported, fingerprint, "{family:?}");
    }

    // The LXD daemon launches a container from the second replica.
    let (r, replica) = &replicas[1];
    let daemon = LxdDaemon::start(&work.path().join("lxd"));
    std::fs::create_dir_all(daemon.conf().join("servercerts")).unwrap();
    std::fs::copy(
        r.data().join("tls/server.crt"),
        daemon.conf().join("servercerts/replica.crt"),
    )
    .unwrap();
    daemon.ok(&[
        "remote",
        "add",
        "replica",
        &format!("https://127.0.0.1:{}", replica.https().port()),
        "--protocol=simplestreams",
    ]);
    daemon.ok(&["launch", "replica:busybox/replicated", "c1"]);
    let state = daemon.ok(&["list", "c1", "--format", "csv", "-c", "s"]);
    assert_eq!(state.trim(), "RUNNING");
    assert_eq!(
        daemon
            .ok(&["exec", "c1", "--", "echo", "replicated"])
            .trim(),
        "replicated"
    );
    let held = daemon.ok(&["image", "list", "--format", "csv", "-c", "F"]);
    assert!(held.contains(&fingerprint), "{held}");
}

#[test]
fn with_one_garage_node_killed_downloads_and_a_new_publication_still_work() {
    let work = TestDir::new();
    let mut cluster = GarageCluster::start(&work.path().join("garage"));
    let (_t, _writer, ssh) = start_writer(&cluster, "");
    let (meta1, root1, v1) = split_image(&work, "one", 3 << 20);
    publish(&ssh, &[&meta1, &root1], "testos/one");
    let (r, replica, client) = start_replica(&cluster, "", "", &v1);

    // Node 1 goes (node 0 is the endpoint both servers use; Garage forwards to the others).
    cluster.kill_node(1);
    assert_eq!(assert_whole_tree(&client, "node 1 down"), vec![v1.clone()]);
    let (meta2, root2, v2) = split_image(&work, "two", 3 << 20);
    let out = publish(&ssh, &[&meta2, &root2], "testos/two");
    assert!(out.contains(&format!("published {v2}")), "{out}");
    wait_serving(&client, &v2);
    let mut both = vec![v1.clone(), v2.clone()];
    both.sort();
    assert_eq!(
        assert_whole_tree(&client, "published with node 1 down"),
        both
    );
    // And lxc reads it all through the replica.
    let lxc = ImageClient::new(Family::Lxd, work.path());
    lxc.add_remote(
        "replica",
        &format!("https://127.0.0.1:{}", replica.https().port()),
        &r.data().join("tls/server.crt"),
    );
    let exported = lxc.export_fingerprint("replica", &v2, &work.path().join("export"));
    assert_eq!(exported, v2);

    // Node 1 back: it catches up, and the tree reads the same with another node down.
    cluster.start_node(1);
    cluster.kill_node(2);
    assert_eq!(assert_whole_tree(&client, "node 2 down"), both);
}

/// The (first) squashfs item the server's images.json names.
fn squashfs_item(client: &HttpsClient) -> serde_json::Value {
    let images: serde_json::Value =
        serde_json::from_slice(&client.get("/streams/v1/images.json").body).unwrap();
    images["products"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["versions"].as_object().unwrap().values())
        .flat_map(|v| v["items"].as_object().unwrap().values())
        .find(|item| item["ftype"] == "squashfs")
        .expect("a squashfs is named")
        .clone()
}

#[test]
fn a_replica_sends_a_large_file_whole_from_any_offset_and_twelve_at_once() {
    let work = TestDir::new();
    let cluster = GarageCluster::start(&work.path().join("garage"));
    let (_t, _writer, ssh) = start_writer(&cluster, "");
    // 40 MiB: the replica asks for 32 MiB ranges, several at a time.
    let (meta, root, fingerprint) = split_image(&work, "large", 40 << 20);
    publish(&ssh, &[&meta, &root], "testos/large");
    let (_r, replica, client) = start_replica(&cluster, "", "", &fingerprint);

    // Whole, over TLS (every file's size and sha256) and over plain HTTP (spliced).
    assert_eq!(
        assert_whole_tree(&client, "replica"),
        vec![fingerprint.clone()]
    );
    let expected = std::fs::read(&root).unwrap();
    let item = squashfs_item(&client);
    let path = item["path"].as_str().unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: replica\r\n\r\n");
    let (raw, _) =
        support::http::plain(replica.https(), request.as_bytes(), Duration::from_secs(60));
    let plain = support::http::parse_response(&raw);
    assert_eq!(plain.status, 200);
    assert!(plain.body == expected, "plain HTTP: other bytes");

    // From offsets inside and across the ranges, as a resumed download asks.
    let size = expected.len();
    for (start, end) in [
        (1, 100),
        ((16 << 20) - 7, (32 << 20) + 9),
        (size - 5000, size - 1),
    ] {
        let range = format!("bytes={start}-{end}");
        let part = client.request("GET", &format!("/{path}"), &[("range", &range)]);
        assert_eq!(part.status, 206, "{range}");
        assert!(part.body == expected[start..=end], "{range}: other bytes");
        // Over plain HTTP the bytes take another path (spliced from the store's socket).
        let request = format!("GET /{path} HTTP/1.1\r\nHost: replica\r\nRange: {range}\r\n\r\n");
        let (raw, _) =
            support::http::plain(replica.https(), request.as_bytes(), Duration::from_secs(60));
        let part = support::http::parse_response(&raw);
        assert_eq!(part.status, 206, "plain HTTP {range}");
        assert!(
            part.body == expected[start..=end],
            "plain HTTP {range}: other bytes"
        );
    }

    // Twelve plain downloads at once: past eight, each reads one range at a time through a
    // smaller pipe, and they share the pool of connections to the store.
    let addr = replica.https();
    let downloads: Vec<_> = (0..12)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                support::http::plain(addr, request.as_bytes(), Duration::from_secs(120)).0
            })
        })
        .collect();
    for download in downloads {
        let response = support::http::parse_response(&download.join().unwrap());
        assert_eq!(response.status, 200);
        assert!(
            response.body == expected,
            "one of twelve plain downloads: other bytes"
        );
    }

    // A replica reading the store through a relay that hands answers on in 16 KiB batches:
    // each answer's head comes with body bytes, read together with it, which go first.
    let endpoint = cluster.endpoint();
    let relay =
        CountingRelay::start_coalescing(endpoint.trim_start_matches("http://").parse().unwrap());
    let r = TestDir::new();
    write_config(
        &r,
        &cluster.storage_toml_at(&format!("http://{}", relay.addr), ""),
    );
    let batched = serve(&r, &cluster, true);
    wait_serving(&https(&r, &batched), &fingerprint);
    let (raw, _) =
        support::http::plain(batched.https(), request.as_bytes(), Duration::from_secs(60));
    let whole = support::http::parse_response(&raw);
    assert_eq!(whole.status, 200);
    assert!(whole.body == expected, "through batches: other bytes");
}

#[test]
fn a_writer_killed_mid_publication_leaves_replicas_the_previous_whole_tree() {
    let work = TestDir::new();
    let cluster = GarageCluster::start(&work.path().join("garage"));
    let (t, key) = writer_dir(&cluster, "", "publisher");
    // The writer talks to Garage through a relay that counts what it uploads.
    let relay = CountingRelay::start(
        cluster
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    );
    write_config(
        &t,
        &cluster.storage_toml_at(&format!("http://{}", relay.addr), ""),
    );
    let writer = serve(&t, &cluster, false);
    let ssh = Client::new(writer.ssh(), &key);
    let (meta1, root1, v1) = split_image(&work, "one", 1 << 20);
    publish(&ssh, &[&meta1, &root1], "testos/one");
    let (_r, _replica, client) = start_replica(&cluster, "", "", &v1);
    let before = client.get("/streams/v1/images.json").body;

    // Version two has a 48 MiB root: the writer is SIGKILLed once 16 MiB of it went up.
    let (meta2, root2, v2) = split_image(&work, "two", 48 << 20);
    let sent = ssh.scp(&[], &[&meta2, &root2], "");
    assert!(sent.status.success());
    let uploaded = relay.sent();
    let import = ssh
        .ssh_command(
            &[],
            Some("import two.tar.xz two.squashfs --alias testos/two"),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "16 MiB of version two uploaded",
        || (relay.sent() > uploaded + (16 << 20)).then_some(()),
    );
    let mut writer = writer;
    writer.child.kill().unwrap();
    writer.child.wait().unwrap();
    drop(writer);
    let _ = support::ssh::wait_with_deadline(import, Duration::from_secs(30));

    // The replica serves version one, whole, as before; never a tree naming version two.
    for _ in 0..3 {
        assert_eq!(
            assert_whole_tree(&client, "writer killed"),
            vec![v1.clone()]
        );
    }
    assert_eq!(client.get("/streams/v1/images.json").body, before);

    // The writer restarted finds the publication unfinished (killed before its commit point,
    // the record) and rolls it back: no key of it is left in the bucket. The upload is still
    // in the publisher's area, and the same import then completes it.
    let writer = serve(&t, &cluster, false);
    let ssh = Client::new(writer.ssh(), &key);
    let listed = ssh.ok("list --format json");
    assert!(listed.contains(&v1) && !listed.contains(&v2), "{listed}");
    let images: serde_json::Value =
        serde_json::from_slice(&cluster.get("streams/v1/images.json").unwrap()).unwrap();
    let mut named: Vec<String> = images["products"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["versions"].as_object().unwrap().values())
        .flat_map(|v| v["items"].as_object().unwrap().values())
        .map(|item| item["path"].as_str().unwrap().to_string())
        .collect();
    named.sort();
    named.dedup();
    let mut stored = cluster.list("images/");
    stored.sort();
    assert_eq!(stored, named, "the bucket holds files no index names");
    let out = ssh.ok("import two.tar.xz two.squashfs --alias testos/two");
    assert!(out.contains(&format!("published {v2}")), "{out}");
    wait_serving(&client, &v2);
    let mut both = vec![v1, v2];
    both.sort();
    assert_eq!(assert_whole_tree(&client, "after the restart"), both);
}

/// Runs `serve` (writer or replica) expecting it to refuse to start: its stderr, asserted to
/// be one line, within 60 s.
fn refused_at_start(t: &TestDir, credentials: (&str, &str), read_only: bool) -> String {
    let mut args = vec!["serve", "--https-listen", "127.0.0.1:0"];
    if read_only {
        args.push("--read-only");
    } else {
        args.extend(["--ssh-listen", "127.0.0.1:0"]);
    }
    let mut command = t.command(&args);
    command
        .env("AWS_ACCESS_KEY_ID", credentials.0)
        .env("AWS_SECRET_ACCESS_KEY", credentials.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output =
        support::ssh::wait_with_deadline(command.spawn().unwrap(), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "serve started: {stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l == "ready"),
        "serve said ready"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr.trim_end().to_string()
}

#[test]
fn wrong_credentials_or_an_unreachable_endpoint_is_one_clear_line_at_start() {
    let work = TestDir::new();
    let cluster = GarageCluster::start(&work.path().join("garage"));
    let t = s3_dir(&cluster, "", "");
    let wrong_secret = "0".repeat(64);
    for read_only in [false, true] {
        let line = refused_at_start(&t, (&cluster.access_key, &wrong_secret), read_only);
        assert!(
            line.to_lowercase().contains("credential") || line.contains("403"),
            "{line}"
        );
        assert!(
            !line.contains(&wrong_secret),
            "the secret is printed: {line}"
        );
        let line = refused_at_start(&t, ("GK000000000000000000000000", &wrong_secret), read_only);
        assert!(
            line.to_lowercase().contains("credential") || line.contains("403"),
            "{line}"
        );
    }

    // Nothing listens where the endpoint points.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let u = TestDir::new();
    write_config(&u, &cluster.storage_toml_at(&endpoint, ""));
    for read_only in [false, true] {
        let line = refused_at_start(&u, (&cluster.access_key, &cluster.secret_key), read_only);
        assert!(
            line.contains(&endpoint) || line.contains(&port.to_string()),
            "{line}"
        );
    }

    // And the right credentials start it: what was refused was the credentials.
    let writer = serve(&t, &cluster, false);
    drop(writer);
}

#[test]
fn a_replica_with_public_base_url_redirects_downloads_to_garages_web_endpoint() {
    let work = TestDir::new();
    let cluster = GarageCluster::start(&work.path().join("garage"));
    let web = cluster.serve_website(0);
    let (_t, _writer, ssh) = start_writer(&cluster, "site/");
    let (meta, root, fingerprint) = split_image(&work, "web", 2 << 20);
    publish(&ssh, &[&meta, &root], "testos/web");

    let base_url = format!("public_base_url = \"{web}\"\n");
    let (r, replica, client) = start_replica(&cluster, "site/", &base_url, &fingerprint);
    let item = squashfs_item(&client);
    let path = item["path"].as_str().unwrap();

    // The replica answers image files with a redirect into the website endpoint (JSON it
    // still serves itself), and what is there is the file.
    let answer = client.get(&format!("/{path}"));
    assert_eq!(answer.status, 302, "{}", answer.text());
    let location = answer.header("location").unwrap().to_string();
    assert_eq!(location, format!("{web}/site/{path}"));
    assert_eq!(client.get("/streams/v1/index.json").status, 200);
    let fetched = support::http::curl_ok(&[&location]);
    assert_eq!(Some(sha256_hex(&fetched).as_str()), item["sha256"].as_str());

    // lxc follows it: the export through the replica has the fingerprint.
    let lxc = ImageClient::new(Family::Lxd, work.path());
    lxc.add_remote(
        "replica",
        &format!("https://127.0.0.1:{}", replica.https().port()),
        &r.data().join("tls/server.crt"),
    );
    let exported = lxc.export_fingerprint("replica", &fingerprint, &work.path().join("export"));
    assert_eq!(exported, fingerprint);
}

//! The S3 backend of the published tree (`[storage] backend = "s3"`) on a real 3-node Garage
//! cluster: a writer publishing into the bucket over the CLI, `storage push` and `pull`,
//! a read replica (`serve --read-only`) serving over real TLS, and the one-line refusals at
//! start (a store that ignores conditional writes, wrong credentials, an unreachable
//! endpoint, a missing bucket). The end-to-end runs with LXD and Incus are in `s3`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::garage::GarageCluster;
use crate::support::http::{curl, curl_ok};
use crate::support::server::Server;
use crate::support::{Meta, TestDir, unified_tarball, wait_until};

/// Writes `data/config.toml` with `table` (a `[storage]` section).
fn configure(t: &TestDir, table: &str) {
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(t.data().join("config.toml"), table).unwrap();
}

/// The binary on `t`'s data directory with the cluster's credentials in its environment.
fn command(t: &TestDir, cluster: &GarageCluster, args: &[&str]) -> Command {
    let mut command = t.command(args);
    cluster.credentials(&mut command);
    command
}

fn ok(t: &TestDir, cluster: &GarageCluster, args: &[&str]) -> String {
    let output = command(t, cluster, args).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs, expects exit status 1 and one line on stderr; returns it.
fn fails(t: &TestDir, cluster: &GarageCluster, args: &[&str]) -> String {
    let output = command(t, cluster, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr:?}"
    );
    stderr.trim_end().to_string()
}

/// A container image for `release` in `dir`.
fn image(dir: &Path, release: &'static str) -> std::path::PathBuf {
    let path = dir.join(format!("{release}.tar.gz"));
    let meta = Meta {
        release,
        ..Meta::default()
    };
    unified_tarball(&path, &meta, false, release);
    path
}

/// Every file images.json names (items may share one).
fn item_paths(images: &serde_json::Value) -> Vec<String> {
    let mut paths = Vec::new();
    for product in images["products"].as_object().unwrap().values() {
        for version in product["versions"].as_object().unwrap().values() {
            for item in version["items"].as_object().unwrap().values() {
                paths.push(item["path"].as_str().unwrap().to_string());
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn a_writer_publishes_into_garage_over_the_cli_and_verify_is_clean() {
    let t = TestDir::new();
    let cluster = GarageCluster::start(&t.path().join("garage"));
    configure(&t, &cluster.storage_toml("lab"));
    ok(
        &t,
        &cluster,
        &["import", image(t.path(), "one").to_str().unwrap()],
    );
    ok(
        &t,
        &cluster,
        &["import", image(t.path(), "two").to_str().unwrap()],
    );
    let list = ok(&t, &cluster, &["list"]);
    assert!(
        list.contains("testos/one") && list.contains("testos/two"),
        "{list}"
    );
    let verify = ok(&t, &cluster, &["verify"]);
    assert!(
        verify.contains("checked 2 images") && verify.ends_with("0 problems\n"),
        "{verify}"
    );

    // Everything published is in the bucket under the prefix; locally only working state.
    let keys = cluster.list("lab/");
    for key in [
        "lab/state/catalog.json",
        "lab/streams/v1/images.json",
        "lab/streams/v1/index.json",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} missing: {keys:?}");
    }
    let images: serde_json::Value =
        serde_json::from_slice(&cluster.get("lab/streams/v1/images.json").unwrap()).unwrap();
    let paths = item_paths(&images);
    assert_eq!(paths.len(), 2);
    for path in &paths {
        assert!(keys.contains(&format!("lab/{path}")), "{path}: {keys:?}");
    }
    assert!(!t.data().join("state/catalog.json").exists());
    let local_images: Vec<_> = walk(&t.www().join("images"));
    assert!(local_images.is_empty(), "{local_images:?}");
    assert!(walk(&t.data().join("tmp")).is_empty());

    // A removal takes the product out of the bucket's stream (grace period 0: the file too).
    let removed = paths[0].clone();
    let fingerprint = list
        .lines()
        .find(|line| line.contains("testos/one,"))
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap()
        .to_string();
    ok(
        &t,
        &cluster,
        &["--grace-period", "0", "remove", &fingerprint],
    );
    let index = String::from_utf8(cluster.get("lab/streams/v1/index.json").unwrap()).unwrap();
    assert!(!index.contains(":one:"), "{index}");
    assert_eq!(cluster.get(&format!("lab/{removed}")), None);
    let verify = ok(&t, &cluster, &["verify"]);
    assert!(verify.ends_with("0 problems\n"), "{verify}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            found.extend(walk(&entry.path()));
        } else {
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn push_resumes_a_replica_serves_it_over_tls_and_pull_restores_it() {
    let t = TestDir::new();
    let cluster = GarageCluster::start(&t.path().join("garage"));

    // A local writer with two images.
    let writer = TestDir::new();
    writer.ok(&["import", image(t.path(), "one").to_str().unwrap()]);
    writer.ok(&["import", image(t.path(), "two").to_str().unwrap()]);
    configure(&writer, &cluster.storage_toml("mirror/"));
    let images = writer.read_json("streams/v1/images.json");
    let paths = item_paths(&images);
    assert_eq!(paths.len(), 2);

    // Push copies both files, then the record and the stream.
    let pushed = ok(&writer, &cluster, &["storage", "push"]);
    assert!(
        pushed.contains("2 files copied") && pushed.contains("0 already there"),
        "{pushed}"
    );
    for path in &paths {
        assert_eq!(
            cluster.get(&format!("mirror/{path}")).unwrap(),
            std::fs::read(writer.www().join(path)).unwrap()
        );
    }
    // Resumed: a file lost from the bucket is copied again, the other kept.
    let (status, _) = cluster
        .request(0, "DELETE", &format!("mirror/{}", paths[1]), None)
        .unwrap();
    assert_eq!(status, 204);
    let pushed = ok(&writer, &cluster, &["storage", "push"]);
    assert!(
        pushed.contains("1 files copied") && pushed.contains("1 already there"),
        "{pushed}"
    );
    // A file in the bucket with other bytes of the same size is not taken for a copy.
    let original = std::fs::read(writer.www().join(&paths[0])).unwrap();
    let mut forged = original.clone();
    forged[0] ^= 0xff;
    cluster.put(&format!("mirror/{}", paths[0]), &forged);
    let pushed = ok(&writer, &cluster, &["storage", "push"]);
    assert!(pushed.contains("1 files copied"), "{pushed}");
    assert_eq!(
        cluster.get(&format!("mirror/{}", paths[0])).unwrap(),
        original
    );

    // A replica serves what was pushed, over real TLS.
    let replica = TestDir::new();
    configure(&replica, &cluster.storage_toml("mirror/"));
    let mut serve = replica.command(&["serve", "--read-only", "--https-listen", "127.0.0.1:0"]);
    cluster.credentials(&mut serve);
    let server = Server::start_with(serve);
    assert!(
        !server.stdout().contains("listening ssh"),
        "{}",
        server.stdout()
    );
    let base = format!("https://127.0.0.1:{}", server.https().port());
    let cert = replica.data().join("tls/server.crt");
    let cert = cert.to_str().unwrap();
    let get = |path: &str| curl_ok(&["--cacert", cert, &format!("{base}/{path}")]);
    assert_eq!(
        get("streams/v1/index.json"),
        std::fs::read(writer.www().join("streams/v1/index.json")).unwrap()
    );
    assert_eq!(
        get("streams/v1/images.json"),
        std::fs::read(writer.www().join("streams/v1/images.json")).unwrap()
    );
    for path in &paths {
        let body = get(path);
        let local = writer.www().join(path);
        assert_eq!(body, std::fs::read(&local).unwrap(), "{path}");
    }
    // Ranges, and nothing outside the published tree.
    let ranged = curl_ok(&[
        "--cacert",
        cert,
        "-r",
        "5-14",
        &format!("{base}/{}", paths[0]),
    ]);
    assert_eq!(ranged, original[5..15]);
    let record = curl(&[
        "--cacert",
        cert,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/state/catalog.json"),
    ]);
    assert_eq!(String::from_utf8_lossy(&record.stdout), "404");

    // A new pair naming a file not in the bucket is not served; the previous one stays.
    let mut bad: serde_json::Value = images.clone();
    let product = bad["products"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    let version = product["versions"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    let item = version["items"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    item["path"] = serde_json::Value::from("images/not/uploaded.tar.gz");
    let served_index = get("streams/v1/index.json");
    cluster.put(
        "mirror/streams/v1/images.json",
        &serde_json::to_vec(&bad).unwrap(),
    );
    let mut new_index = served_index.clone();
    new_index.extend_from_slice(b" ");
    cluster.put("mirror/streams/v1/index.json", &new_index);
    wait_until(
        Duration::from_secs(30),
        "the replica to look at the new pair",
        || {
            server
                .output()
                .contains("images/not/uploaded.tar.gz is not in the bucket")
                .then_some(())
        },
    );
    assert_eq!(get("streams/v1/index.json"), served_index);
    assert!(!String::from_utf8_lossy(&get("streams/v1/images.json")).contains("not/uploaded"));
    server.terminate();

    // Pull restores a fresh data directory; a local verify is clean.
    let pushed = ok(&writer, &cluster, &["storage", "push"]);
    assert!(pushed.contains("2 already there"), "{pushed}");
    let restored = TestDir::new();
    configure(&restored, &cluster.storage_toml("mirror/"));
    let pulled = ok(&restored, &cluster, &["storage", "pull"]);
    assert!(
        pulled.contains("2 files copied") && pulled.contains("2 images"),
        "{pulled}"
    );
    for path in &paths {
        assert_eq!(
            std::fs::read(restored.www().join(path)).unwrap(),
            std::fs::read(writer.www().join(path)).unwrap()
        );
    }
    let verify = restored.ok(&["--storage-backend", "local", "verify"]);
    assert!(verify.ends_with("0 problems\n"), "{verify}");
    assert_eq!(
        restored.read_json("streams/v1/images.json"),
        writer.read_json("streams/v1/images.json")
    );
    // Into a catalog that already holds images, pull refuses.
    let refused = fails(&restored, &cluster, &["storage", "pull"]);
    assert!(refused.contains("holds 2 images"), "{refused}");
}

#[test]
fn garage_is_refused_at_start_unless_told_and_bad_access_is_one_line() {
    let t = TestDir::new();
    let cluster = GarageCluster::start(&t.path().join("garage"));
    let table = cluster.storage_toml("");

    // Garage ignores If-None-Match: a writer refuses to start, saying what to do.
    configure(
        &t,
        &table.replace("conditional_writes = false", "conditional_writes = true"),
    );
    let line = fails(&t, &cluster, &["list"]);
    assert!(
        line.contains("ignores conditional writes")
            && line.contains("storage.conditional_writes = false"),
        "{line}"
    );
    // Nothing was published, and the probe left nothing behind.
    assert_eq!(cluster.list(""), Vec::<String>::new());
    // Told, it runs.
    configure(&t, &table);
    ok(&t, &cluster, &["list"]);
    assert!(
        cluster
            .list("")
            .contains(&"streams/v1/index.json".to_string())
    );

    // Wrong credentials.
    let mut wrong = t.command(&["list"]);
    wrong
        .env("AWS_ACCESS_KEY_ID", &cluster.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    let output = wrong.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    // No credentials at all.
    let output = t
        .command(&["list"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("no S3 credentials"), "{stderr}");

    // An endpoint where nothing listens, and a bucket that does not exist.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    configure(
        &t,
        &cluster.storage_toml_at(&format!("http://127.0.0.1:{port}"), ""),
    );
    let line = fails(&t, &cluster, &["list"]);
    assert!(line.contains("cannot reach the object store"), "{line}");
    let mut replica = command(
        &t,
        &cluster,
        &["serve", "--read-only", "--https-listen", "127.0.0.1:0"],
    );
    let output = replica.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the object store"), "{stderr}");
    configure(
        &t,
        &table.replace(
            &format!("bucket = \"{}\"", cluster.bucket),
            "bucket = \"no-such-bucket\"",
        ),
    );
    let line = fails(&t, &cluster, &["list"]);
    assert!(line.contains("no-such-bucket does not exist"), "{line}");
}

/// A store that honours conditional writes (as AWS S3, MinIO and Ceph RGW do), in this
/// process: enough of the S3 API for a writer (GET with `list-type=2`, HEAD, GET, PUT with
/// `If-None-Match: *` / `If-Match`, DELETE), signatures not checked. Garage cannot show the
/// lease at work, because it ignores those headers.
mod conditional_store {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    type Objects = Arc<Mutex<BTreeMap<String, (Vec<u8>, u64)>>>;

    pub struct Store {
        pub endpoint: String,
    }

    pub fn start(bucket: &'static str) -> Store {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let objects: Objects = Arc::default();
        let tags = Arc::new(Mutex::new(0u64));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (objects, tags) = (objects.clone(), tags.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, bucket, &objects, &tags);
                });
            }
        });
        Store { endpoint }
    }

    fn serve(
        stream: TcpStream,
        bucket: &str,
        objects: &Objects,
        tags: &Mutex<u64>,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let mut words = head[0].split_whitespace();
            let method = words.next().unwrap_or("").to_string();
            let target = words.next().unwrap_or("").to_string();
            let header = |name: &str| {
                head[1..].iter().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_string())
                })
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let key = path
                .strip_prefix(&format!("/{bucket}"))
                .unwrap_or("")
                .trim_start_matches('/')
                .to_string();
            let mut objects = objects.lock().unwrap();
            let (status, etag, answer): (u16, Option<u64>, Vec<u8>) = match method.as_str() {
                "GET" if key.is_empty() && query.contains("list-type=2") => {
                    let prefix = query
                        .split('&')
                        .find_map(|pair| pair.strip_prefix("prefix="))
                        .map(percent_decode)
                        .unwrap_or_default();
                    let mut xml = String::from(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><IsTruncated>false</IsTruncated>",
                    );
                    for (name, (bytes, _)) in objects.range(prefix.clone()..) {
                        if !name.starts_with(&prefix) {
                            break;
                        }
                        xml.push_str(&format!(
                            "<Contents><Key>{name}</Key><Size>{}</Size></Contents>",
                            bytes.len()
                        ));
                    }
                    xml.push_str("</ListBucketResult>");
                    (200, None, xml.into_bytes())
                }
                "GET" | "HEAD" => match objects.get(&key) {
                    Some((bytes, tag)) => (200, Some(*tag), bytes.clone()),
                    None => (404, None, b"<Error><Code>NoSuchKey</Code></Error>".to_vec()),
                },
                "PUT" => {
                    let current = objects.get(&key).map(|(_, tag)| format!("\"{tag}\""));
                    let refused = (header("if-none-match").as_deref() == Some("*")
                        && current.is_some())
                        || header("if-match").is_some_and(|wanted| Some(wanted) != current);
                    if refused {
                        (
                            412,
                            None,
                            b"<Error><Code>PreconditionFailed</Code></Error>".to_vec(),
                        )
                    } else {
                        let mut next = tags.lock().unwrap();
                        *next += 1;
                        objects.insert(key, (body, *next));
                        (200, Some(*next), Vec::new())
                    }
                }
                "DELETE" => {
                    objects.remove(&key);
                    (204, None, Vec::new())
                }
                _ => (400, None, Vec::new()),
            };
            drop(objects);
            let mut response = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n",
                answer.len()
            );
            if let Some(tag) = etag {
                response.push_str(&format!("etag: \"{tag}\"\r\n"));
            }
            response.push_str("\r\n");
            writer.write_all(response.as_bytes())?;
            if method != "HEAD" {
                writer.write_all(&answer)?;
            }
        }
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// On a store whose conditional writes hold, the probe passes, the writer takes the lease,
/// and a second writer (another data directory) is refused with one line while the first
/// serves; the same data directory's commands run beside its server.
#[test]
fn a_store_with_conditional_writes_takes_one_writer_through_the_lease() {
    let store = conditional_store::start("leased");
    let table = format!(
        "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"leased\"\nconditional_writes = true\n",
        store.endpoint
    );
    let first = TestDir::new();
    configure(&first, &table);
    let credentials = |command: &mut Command| {
        command
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret");
    };
    let mut serve = first.command(&[
        "serve",
        "--https-listen",
        "127.0.0.1:0",
        "--ssh-listen",
        "127.0.0.1:0",
    ]);
    credentials(&mut serve);
    let server = Server::start_with(serve);

    // The same writer's command, beside its server: the same holder.
    let mut import = first.command(&["import", image(first.path(), "one").to_str().unwrap()]);
    credentials(&mut import);
    let output = import.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Another data directory is another writer: refused, in one line.
    let second = TestDir::new();
    configure(&second, &table);
    let mut list = second.command(&["list"]);
    credentials(&mut list);
    let output = list.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("another writer") && stderr.contains("writer lease"),
        "{stderr}"
    );
    server.terminate();
}

//! `mirror sync`: pulling upstream simplestreams servers into the catalog, for LXD and Incus
//! alike. Upstreams are trees shaped like images.linuxcontainers.org (Incus-only metadata,
//! squashfs + qcow2 in one version, deltas) and cloud-images.ubuntu.com (its index path,
//! LXD-only metadata, items that are not images), served over HTTPS by a small static server
//! with a certificate from a test CA, or by our own `serve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::clients::{Client, Family};
use crate::support::invariants::assert_whole;
use crate::support::lxd_daemon::{LxdDaemon, busybox_image, split_busybox_image};
use crate::support::server::Server;
use crate::support::upstream::{Behaviour, StaticUpstream, TestCa};
use crate::support::{self, Meta, TestDir};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// An upstream tree being written: files under `root`, then index.json and products files.
struct Tree {
    root: PathBuf,
    /// products file path → (content id, products).
    files: BTreeMap<String, (String, serde_json::Map<String, Value>)>,
    /// Extra index entries (other datatypes).
    other_entries: serde_json::Map<String, Value>,
}

/// A file placed in a tree, as an item names it.
#[derive(Clone, Debug)]
struct Placed {
    path: String,
    size: u64,
    sha256: String,
    local: PathBuf,
}

impl Placed {
    fn item(&self, ftype: &str) -> Value {
        json!({"ftype": ftype, "path": self.path, "size": self.size, "sha256": self.sha256})
    }
}

impl Tree {
    fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            other_entries: serde_json::Map::new(),
        }
    }

    /// Moves `source` into the tree at `path`.
    fn place(&self, source: &Path, path: &str) -> Placed {
        let local = self.root.join(path);
        std::fs::create_dir_all(local.parent().expect("parent")).expect("tree dirs");
        std::fs::rename(source, &local).expect("place file");
        Placed {
            path: path.to_string(),
            size: std::fs::metadata(&local).expect("stat").len(),
            sha256: support::sha256_of(&[&local]),
            local,
        }
    }

    /// Adds a version; `product` holds the product's fields (versions are added here).
    fn version(
        &mut self,
        products_path: &str,
        content_id: &str,
        product_id: &str,
        product: Value,
        serial: &str,
        items: Value,
    ) {
        let (_, products) = self
            .files
            .entry(products_path.to_string())
            .or_insert_with(|| (content_id.to_string(), serde_json::Map::new()));
        let entry = products.entry(product_id.to_string()).or_insert_with(|| {
            let mut product = product.clone();
            product["versions"] = json!({});
            product
        });
        entry["versions"][serial] = json!({ "items": items });
    }

    fn write(&self) {
        let mut index = self.other_entries.clone();
        for (path, (content_id, products)) in &self.files {
            let json = json!({
                "content_id": content_id,
                "datatype": "image-downloads",
                "format": "products:1.0",
                "updated": "Thu, 27 Nov 2025 08:00:00 +0000",
                "products": products,
            });
            let file = self.root.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("streams dir");
            std::fs::write(&file, serde_json::to_vec_pretty(&json).expect("json"))
                .expect("products file");
            index.insert(
                content_id.clone(),
                json!({
                    "datatype": "image-downloads",
                    "path": path,
                    "format": "products:1.0",
                    "updated": "Thu, 27 Nov 2025 08:00:00 +0000",
                    "products": products.keys().collect::<Vec<_>>(),
                }),
            );
        }
        let index = json!({"format": "index:1.0", "updated": "Thu, 27 Nov 2025 08:00:00 +0000", "index": index});
        std::fs::create_dir_all(self.root.join("streams/v1")).expect("streams dir");
        std::fs::write(
            self.root.join("streams/v1/index.json"),
            serde_json::to_vec_pretty(&index).expect("json"),
        )
        .expect("index.json");
    }
}

/// What a version of an images.linuxcontainers.org-shaped tree holds.
struct LxcVersion {
    serial: &'static str,
    metadata: Placed,
    squashfs: Placed,
    qcow2: Option<Placed>,
    container_fingerprint: String,
    vm_fingerprint: Option<String>,
    /// A delta from the version before, when there is one.
    delta: Option<Placed>,
}

/// `xdelta3 -e`, as lxc-ci makes its deltas (no secondary compression).
fn xdelta3_encode(base: &Path, target: &Path, out: &Path) {
    let xdelta3 = support::require_tool("xdelta3", "xdelta3");
    let output = std::process::Command::new(xdelta3)
        .args(["-e", "-f", "-S", "none", "-s"])
        .args([base, target, out])
        .output()
        .expect("xdelta3");
    assert!(
        output.status.success(),
        "xdelta3 -e: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const LXC_PRODUCT: &str = "debian:bookworm:amd64:default";

/// An images.linuxcontainers.org-shaped tree: product `debian:bookworm:amd64:default`, metadata
/// only as `incus.tar.xz`, serials with a colon, the newer version with a VM disk too.
fn lxc_ci_tree(root: &Path, scratch: &Path) -> (Tree, Vec<LxcVersion>) {
    let mut tree = Tree::new(root);
    let mut versions = Vec::new();
    for (serial, created, vm) in [
        ("20251126_07:42", 1_764_142_920, false),
        ("20251127_07:42", 1_764_229_320, true),
    ] {
        let dir = format!("images/debian/bookworm/amd64/default/{serial}");
        let meta = Meta {
            os: "debian",
            release: "bookworm",
            created,
            ..Meta::default()
        };
        let source = scratch.join(format!("{serial}-incus.tar.xz"));
        support::metadata_tarball(&source, &meta);
        let metadata = tree.place(&source, &format!("{dir}/incus.tar.xz"));
        let source = scratch.join(format!("{serial}.squashfs"));
        support::squashfs(&source, &format!("debian {serial}"));
        let squashfs = tree.place(&source, &format!("{dir}/rootfs.squashfs"));
        let qcow2 = vm.then(|| {
            let source = scratch.join(format!("{serial}.qcow2"));
            support::qcow2(&source, &format!("debian vm {serial}"));
            tree.place(&source, &format!("{dir}/disk.qcow2"))
        });
        let container_fingerprint = support::sha256_of(&[&metadata.local, &squashfs.local]);
        let vm_fingerprint = qcow2
            .as_ref()
            .map(|disk| support::sha256_of(&[&metadata.local, &disk.local]));
        let mut meta_item = metadata.item("incus.tar.xz");
        meta_item["combined_squashfs_sha256"] = json!(container_fingerprint);
        let mut items = json!({
            "incus.tar.xz": meta_item,
            "root.squashfs": squashfs.item("squashfs"),
        });
        if let (Some(disk), Some(fingerprint)) = (&qcow2, &vm_fingerprint) {
            items["incus.tar.xz"]["combined_disk-kvm-img_sha256"] = json!(fingerprint);
            items["disk.qcow2"] = disk.item("disk-kvm.img");
        }
        // As lxc-ci does: a squashfs delta against the previous build, made by xdelta3.
        let delta = versions.last().map(|previous: &LxcVersion| {
            let source = scratch.join(format!("{serial}.vcdiff"));
            xdelta3_encode(&previous.squashfs.local, &squashfs.local, &source);
            let delta = tree.place(&source, &format!("{dir}/delta-{}.vcdiff", previous.serial));
            let mut item = delta.item("squashfs.vcdiff");
            item["delta_base"] = json!(previous.serial);
            items[format!("delta-{}", previous.serial)] = item;
            delta
        });
        tree.version(
            "streams/v1/images.json",
            "images",
            LXC_PRODUCT,
            json!({
                "aliases": "debian/bookworm/default,debian/bookworm,debian/12/default,debian/12",
                "arch": "amd64", "os": "Debian", "release": "bookworm",
                "release_title": "bookworm", "variant": "default",
                "requirements": {}
            }),
            serial,
            items,
        );
        versions.push(LxcVersion {
            serial,
            metadata,
            squashfs,
            qcow2,
            container_fingerprint,
            vm_fingerprint,
            delta,
        });
    }
    tree.write();
    (tree, versions)
}

/// `list --format json` of a data directory, as (fingerprint, type, aliases, origin).
fn listed(t: &TestDir) -> Vec<(String, String, Vec<String>)> {
    let out = t.ok(&["list", "--format", "json"]);
    let rows: Value = serde_json::from_str(&out).expect("list json");
    let mut images: Vec<(String, String, Vec<String>)> = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|row| {
            (
                row["fingerprint"].as_str().expect("fp").to_string(),
                row["type"].as_str().expect("type").to_string(),
                row["aliases"]
                    .as_array()
                    .expect("aliases")
                    .iter()
                    .map(|a| a.as_str().expect("alias").to_string())
                    .collect(),
            )
        })
        .collect();
    images.sort();
    images
}

fn sync_args<'a>(url: &'a str, ca: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["mirror", "sync", url, "--ca-cert", p(ca)];
    args.extend_from_slice(extra);
    args
}

/// The one summary line of a run's output.
fn summary(out: &str) -> &str {
    out.lines()
        .find(|line| line.starts_with("mirrored ") || line.starts_with("would mirror "))
        .unwrap_or_else(|| panic!("no summary line in {out:?}"))
}

#[test]
fn an_incus_only_upstream_is_mirrored_for_lxd_and_incus() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();

    let t = TestDir::new();
    let dry = t.ok(&sync_args(&url, &ca.pem, &["--dry-run"]));
    assert!(summary(&dry).contains("2 to fetch version(s)"), "{dry}");
    assert!(listed(&t).is_empty(), "a dry run publishes nothing");
    assert!(
        upstream.file_requests().is_empty(),
        "a dry run downloads nothing"
    );

    let out = t.ok(&sync_args(&url, &ca.pem, &[]));
    let line = summary(&out);
    assert!(line.contains("2 new version(s)"), "{out}");
    assert!(line.contains("0 refused"), "{out}");
    assert!(
        out.contains("publishes for Incus only"),
        "a note about the VM's agent: {out}"
    );

    // Fingerprints are upstream's; the newest version owns the aliases.
    let images = listed(&t);
    let newest = &versions[1];
    let mut expected = vec![
        (
            versions[0].container_fingerprint.clone(),
            "container".to_string(),
        ),
        (
            newest.container_fingerprint.clone(),
            "container".to_string(),
        ),
        (
            newest.vm_fingerprint.clone().expect("vm"),
            "virtual-machine".to_string(),
        ),
    ];
    expected.sort();
    let got: Vec<(String, String)> = images
        .iter()
        .map(|(f, ty, _)| (f.clone(), ty.clone()))
        .collect();
    assert_eq!(got, expected);
    let published = assert_whole(&t.data(), "after the first sync");
    assert_eq!(published.len(), 3);
    assert!(published.iter().all(|image| image.product == LXC_PRODUCT));
    assert!(
        published
            .iter()
            .any(|image| image.serial == "20251127_07:42"),
        "the upstream serial is kept: {published:?}"
    );

    // Both twins are there: LXD reads lxd.tar.xz, which upstream never had.
    let images_json = t.read_json("streams/v1/images.json");
    let items = &images_json["products"][LXC_PRODUCT]["versions"]["20251127_07:42"]["items"];
    assert_eq!(items["lxd.tar.xz"]["sha256"], json!(newest.metadata.sha256));
    assert_eq!(
        items["incus.tar.xz"]["sha256"],
        json!(newest.metadata.sha256)
    );
    assert_eq!(
        images_json["products"][LXC_PRODUCT]["aliases"],
        json!("debian/12,debian/12/default,debian/bookworm,debian/bookworm/default")
    );

    // Upstream's delta came too, its base being held: the same file, checked by decoding.
    let delta = newest.delta.as_ref().expect("a delta upstream");
    let delta_item = &items["delta-20251126_07:42"];
    assert_eq!(delta_item["ftype"], json!("squashfs.vcdiff"), "{items}");
    assert_eq!(delta_item["delta_base"], json!("20251126_07:42"));
    assert_eq!(delta_item["sha256"], json!(delta.sha256));
    assert!(out.contains("1 upstream delta(s) mirrored"), "{out}");

    // The origin is on the record, for `info` and the catalog page.
    let info = t.ok(&["info", &newest.container_fingerprint, "--format", "json"]);
    assert!(info.contains(&format!("\"origin\": \"{url}\"")), "{info}");

    // A second run with nothing new downloads no image file.
    upstream.forget_seen();
    let again = t.ok(&sync_args(&url, &ca.pem, &[]));
    assert!(
        summary(&again).contains("0 new version(s), 0 B downloaded"),
        "{again}"
    );
    assert_eq!(upstream.file_requests(), Vec::new(), "{again}");

    // The real clients list and export the images, LXD included.
    let server = Server::start(&t, &[]);
    let cert = t.data().join("tls/server.crt");
    for family in [Family::Lxd, Family::Incus] {
        let client_dir = work.file(&format!("{family:?}"));
        let client = Client::new(family, &client_dir);
        client.add_remote("m", &format!("https://{}", server.https()), &cert);
        let seen: Vec<(String, String)> = client
            .list("m")
            .into_iter()
            .map(|(fingerprint, image_type, _)| (fingerprint, image_type))
            .collect();
        let mut seen_types: Vec<(String, String)> = seen
            .into_iter()
            .map(|(f, ty)| {
                (
                    f,
                    ty.replace("CONTAINER", "container")
                        .replace("VIRTUAL-MACHINE", "virtual-machine"),
                )
            })
            .collect();
        seen_types.sort();
        assert_eq!(
            seen_types
                .iter()
                .map(|(f, _)| f.clone())
                .collect::<Vec<_>>(),
            expected.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
            "{family:?} lists every mirrored image"
        );
        let exported = client.export_fingerprint("m", "debian/12", &client_dir.join("export"));
        assert_eq!(exported, newest.container_fingerprint, "{family:?} export");
    }
    drop(server);
    let _ = &newest.squashfs;
    let _ = &newest.qcow2;
}

/// Runs a sync expected to fail as a whole: exit 1, one line on stderr holding `expected`,
/// nothing published.
fn fails_whole(t: &TestDir, args: &[&str], expected: &str) -> String {
    let line = t.fails(args, 1);
    assert!(line.contains(expected), "{args:?}: {line}");
    assert!(listed(t).is_empty(), "{args:?}: nothing is published");
    let images = t.www().join("images");
    assert!(
        !images.exists() || support::invariants::files_under(&images).is_empty(),
        "{args:?}: no image file is written outside tmp/"
    );
    line
}

/// The upstream's products file as JSON, to be changed and served instead.
fn products_json(tree_root: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(tree_root.join("streams/v1/images.json")).expect("read"))
        .expect("json")
}

fn json_body(value: &Value) -> Behaviour {
    Behaviour::Body(
        vec![("content-type".into(), "application/json".into())],
        serde_json::to_vec(value).expect("json"),
    )
}

#[test]
fn hostile_or_broken_upstreams_get_one_line_and_nothing_published() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();
    let t = TestDir::new();
    const IMAGES: &str = "/streams/v1/images.json";
    const INDEX: &str = "/streams/v1/index.json";
    let item = |version: usize, key: &str| -> String {
        format!(
            "/products/{LXC_PRODUCT}/versions/{}/items/{key}",
            ["20251126_07:42", "20251127_07:42"][version]
        )
    };
    let with_item = |version: usize, key: &str, field: &str, value: Value| {
        let mut json = products_json(&tree_root);
        let pointer = item(version, key);
        let item = json.pointer_mut(&pointer).expect("item");
        if value.is_null() {
            item.as_object_mut().expect("object").remove(field);
        } else {
            item[field] = value;
        }
        json_body(&json)
    };

    // Unreachable: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!(
        "https://127.0.0.1:{}",
        closed.local_addr().expect("addr").port()
    );
    drop(closed);
    fails_whole(
        &t,
        &sync_args(&closed_url, &ca.pem, &[]),
        "cannot reach 127.0.0.1:",
    );

    // A certificate no root vouches for: say what failed and how to trust it.
    let line = fails_whole(&t, &["mirror", "sync", &url], "TLS with 127.0.0.1:");
    assert!(line.contains("--ca-cert"), "{line}");
    assert!(
        line.contains("UnknownIssuer") || line.contains("certificate"),
        "{line}"
    );

    // http:// is refused before anything is fetched.
    fails_whole(
        &t,
        &["mirror", "sync", &url.replace("https://", "http://")],
        "not https://",
    );

    let cases: Vec<(&str, Behaviour, &str)> = vec![
        (INDEX, Behaviour::Status(404), "answered 404"),
        (
            INDEX,
            Behaviour::Body(Vec::new(), b"<html>mirror maintenance</html>".to_vec()),
            "is not JSON",
        ),
        (
            INDEX,
            json_body(&json!({"index": 5})),
            "is not a simplestreams index",
        ),
        (
            INDEX,
            json_body(&json!({"index": {}})),
            "lists no image-downloads products file",
        ),
        (
            INDEX,
            json_body(
                &json!({"index": {"images": {"datatype": "image-downloads", "path": "../../etc/passwd", "products": ["x"]}}}),
            ),
            "has a path that has a '.' or '..' part",
        ),
        (
            IMAGES,
            json_body(&json!({"products": []})),
            "is not a simplestreams products file",
        ),
        (
            IMAGES,
            with_item(1, "root.squashfs", "path", Value::Null),
            "missing field `path`",
        ),
        (
            IMAGES,
            with_item(1, "root.squashfs", "sha256", Value::Null),
            "has no valid sha256",
        ),
        (
            IMAGES,
            with_item(1, "root.squashfs", "size", json!("big")),
            "invalid type",
        ),
        (
            IMAGES,
            with_item(1, "root.squashfs", "path", json!("../../../../etc/shadow")),
            "'.' or '..' part",
        ),
        (
            IMAGES,
            with_item(1, "root.squashfs", "path", json!("/etc/shadow")),
            "is absolute",
        ),
        (
            IMAGES,
            Behaviour::Redirect("http://127.0.0.1:9/images.json".into()),
            "not https",
        ),
        (
            IMAGES,
            Behaviour::Redirect("/streams/v1/loop.json".into()),
            "in a loop",
        ),
        (
            IMAGES,
            // A compressed bomb: 80 MiB of zeros in well under a MiB of gzip.
            Behaviour::Body(
                vec![("content-encoding".into(), "gzip".into())],
                support::compress(&vec![b' '; 80 << 20], "gz"),
            ),
            "larger than 64 MiB",
        ),
    ];
    upstream.set("/streams/v1/loop.json", Behaviour::Redirect(IMAGES.into()));
    for (path, behaviour, expected) in cases {
        upstream.set(path, behaviour);
        fails_whole(&t, &sync_args(&url, &ca.pem, &[]), expected);
        upstream.clear(path);
    }

    // An index larger than the cap is refused from its Content-Length, unread.
    let big = work.file("big-index.json");
    std::fs::write(&big, vec![b' '; (64 << 20) + 1]).expect("big index");
    std::fs::rename(&big, tree_root.join("streams/v1/big.json")).expect("place");
    upstream.set(INDEX, Behaviour::Redirect("/streams/v1/big.json".into()));
    fails_whole(&t, &sync_args(&url, &ca.pem, &[]), "larger than 64 MiB");
    upstream.clear(INDEX);
    let _ = versions;
}

#[test]
fn a_file_that_does_not_match_refuses_its_version_alone() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();

    // The older version's squashfs is not what its item says.
    let mut json = products_json(&tree_root);
    let wrong = "0".repeat(64);
    json["products"][LXC_PRODUCT]["versions"]["20251126_07:42"]["items"]["root.squashfs"]["sha256"] =
        json!(wrong);
    upstream.set("/streams/v1/images.json", json_body(&json));
    // The newer version's disk comes with more bytes than its size.
    let disk_path = format!("/{}", versions[1].qcow2.as_ref().expect("disk").path);
    upstream.set(&disk_path, Behaviour::Extra(b"trailing".to_vec()));

    let t = TestDir::new();
    let output = t.run(&sync_args(&url, &ca.pem, &[]));
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    let refused: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{stdout}");
    let sha_line = refused
        .iter()
        .find(|l| l.contains("20251126_07:42"))
        .expect("the older version is refused");
    for part in [
        LXC_PRODUCT,
        "rootfs.squashfs",
        &format!("expected sha256 {wrong}"),
        &format!("got {}", versions[0].squashfs.sha256),
    ] {
        assert!(sha_line.contains(part), "{part} in {sha_line}");
    }
    let size_line = refused
        .iter()
        .find(|l| l.contains("20251127_07:42"))
        .expect("the newer version is refused");
    assert!(
        size_line.contains("disk.qcow2") && size_line.contains("size lies"),
        "{size_line}"
    );
    assert!(summary(&stdout).contains("0 new version(s)"), "{stdout}");
    assert!(listed(&t).is_empty());

    // Fixed upstream: the next run publishes both, fetching only what it lacked.
    upstream.clear("/streams/v1/images.json");
    upstream.clear(&disk_path);
    upstream.forget_seen();
    let out = t.ok(&sync_args(&url, &ca.pem, &[]));
    assert!(summary(&out).contains("2 new version(s)"), "{out}");
    let fetched: Vec<String> = upstream
        .file_requests()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(
        fetched.len(),
        2,
        "only the refused files are fetched again (the rest stayed in tmp/): {fetched:?}"
    );
    assert!(out.contains("1 upstream delta(s) mirrored"), "{out}");
    assert_eq!(listed(&t).len(), 3);
    assert_whole(&t.data(), "after the fixed run");
}

const UBUNTU_PRODUCTS: &str = "streams/v1/com.ubuntu.cloud:released:download.json";
const UBUNTU_PRODUCT: &str = "com.ubuntu.cloud:server:24.04:amd64";

#[test]
fn an_lxd_only_upstream_shaped_like_ubuntu_is_mirrored_for_incus_too() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let mut tree = Tree::new(&tree_root);
    let dir = "server/releases/noble/release-20251127";
    let meta = Meta {
        os: "ubuntu",
        release: "noble",
        variant: None,
        created: 1_764_201_600,
        ..Meta::default()
    };
    let source = work.file("lxd.tar.xz");
    support::metadata_tarball(&source, &meta);
    let metadata = tree.place(
        &source,
        &format!("{dir}/ubuntu-24.04-server-cloudimg-amd64-lxd.tar.xz"),
    );
    let source = work.file("root.squashfs");
    support::squashfs(&source, "noble");
    let squashfs = tree.place(
        &source,
        &format!("{dir}/ubuntu-24.04-server-cloudimg-amd64.squashfs"),
    );
    let source = work.file("root.tar.xz");
    support::root_tar_xz(&source, "noble");
    let root_tar = tree.place(
        &source,
        &format!("{dir}/ubuntu-24.04-server-cloudimg-amd64-root.tar.xz"),
    );
    let source = work.file("manifest");
    std::fs::write(&source, b"adduser 3.137ubuntu1\n").expect("manifest");
    let manifest = tree.place(
        &source,
        &format!("{dir}/ubuntu-24.04-server-cloudimg-amd64.manifest"),
    );
    let source = work.file("disk1.img");
    std::fs::write(&source, vec![7u8; 4096]).expect("disk1");
    let disk1 = tree.place(
        &source,
        &format!("{dir}/ubuntu-24.04-server-cloudimg-amd64.img"),
    );
    let fingerprint = support::sha256_of(&[&metadata.local, &squashfs.local]);
    let rootxz_fingerprint = support::sha256_of(&[&metadata.local, &root_tar.local]);
    let mut meta_item = metadata.item("lxd.tar.xz");
    meta_item["md5"] = json!("0123456789abcdef0123456789abcdef");
    meta_item["combined_squashfs_sha256"] = json!(fingerprint);
    meta_item["combined_rootxz_sha256"] = json!(rootxz_fingerprint);
    meta_item["combined_sha256"] = json!(rootxz_fingerprint);
    tree.version(
        UBUNTU_PRODUCTS,
        "com.ubuntu.cloud:released:download",
        UBUNTU_PRODUCT,
        json!({
            "aliases": "24.04,default,lts,n,noble,ubuntu",
            "arch": "amd64", "os": "ubuntu", "release": "noble",
            "release_codename": "Noble Numbat", "release_title": "24.04 LTS",
            "support_eol": "2029-05-31", "supported": true, "version": "24.04"
        }),
        "20251127",
        json!({
            "lxd.tar.xz": meta_item,
            "squashfs": squashfs.item("squashfs"),
            "root.tar.xz": root_tar.item("root.tar.xz"),
            "manifest": manifest.item("manifest"),
            "disk1.img": disk1.item("disk1.img"),
        }),
    );
    // An index entry of another datatype, whose file does not even exist.
    tree.other_entries.insert(
        "com.ubuntu.cloud:released:aws".into(),
        json!({"datatype": "image-ids", "path": "streams/v1/com.ubuntu.cloud:released:aws.json",
               "format": "products:1.0", "products": [UBUNTU_PRODUCT]}),
    );
    tree.write();
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();

    let t = TestDir::new();
    let out = t.ok(&sync_args(
        &url,
        &ca.pem,
        &[
            "--alias-prefix",
            "ubuntu/",
            "--filter",
            "release=noble",
            "--format",
            "json",
        ],
    ));
    let report: Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["new_versions"], json!(1), "{out}");
    assert_eq!(report["refused"], json!([]), "{out}");
    let total = metadata.size + squashfs.size;
    assert_eq!(report["bytes_downloaded"], json!(total), "{out}");

    // The squashfs wins over root.tar.xz (one root per type); what is not an image is skipped.
    let requested: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    for skipped in [&manifest.path, &disk1.path, &root_tar.path] {
        assert!(
            !requested.contains(&format!("/{skipped}")),
            "{skipped} fetched: {requested:?}"
        );
    }
    assert!(
        !requested.iter().any(|r| r.contains("aws")),
        "only image-downloads entries are followed: {requested:?}"
    );

    let images_json = t.read_json("streams/v1/images.json");
    let product = &images_json["products"][UBUNTU_PRODUCT];
    assert_eq!(
        product["aliases"],
        json!("ubuntu/24.04,ubuntu/default,ubuntu/lts,ubuntu/n,ubuntu/noble,ubuntu/ubuntu")
    );
    let items = &product["versions"]["20251127"]["items"];
    assert_eq!(
        items["incus.tar.xz"]["combined_squashfs_sha256"],
        json!(fingerprint)
    );
    assert_whole(&t.data(), "after the sync");

    // Incus, which reads only incus.tar.xz, sees the image upstream published for LXD alone.
    let server = Server::start(&t, &[]);
    let cert = t.data().join("tls/server.crt");
    let client_dir = work.file("incus");
    let incus = Client::new(Family::Incus, &client_dir);
    incus.add_remote("m", &format!("https://{}", server.https()), &cert);
    let images = incus.list("m");
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].0, fingerprint);
    assert!(
        images[0].2.contains(&"ubuntu/noble".to_string()),
        "{images:?}"
    );
    let exported = incus.export_fingerprint("m", "ubuntu/noble", &client_dir.join("export"));
    assert_eq!(exported, fingerprint);
}

/// Our own `serve` as the upstream: what it publishes is mirrored whole; an image removed
/// there leaves the mirror; --keep keeps the newest; an alias a local product holds is refused
/// by name, and --alias-prefix gets around it.
#[test]
fn our_own_server_as_upstream() {
    let a = TestDir::new();
    let mut fingerprints = Vec::new();
    for (release_created, seed) in [(1_764_100_000, "one"), (1_764_200_000, "two")] {
        let meta_path = a.file(&format!("{seed}.tar.xz"));
        support::metadata_tarball(
            &meta_path,
            &Meta {
                created: release_created,
                ..Meta::default()
            },
        );
        let root = a.file(&format!("{seed}.squashfs"));
        support::squashfs(&root, seed);
        a.ok(&["import", p(&meta_path), p(&root)]);
        fingerprints.push(support::sha256_of(&[&meta_path, &root]));
    }
    let upstream = Server::start(&a, &[]);
    let url = format!("https://{}", upstream.https());
    let upstream_cert = a.data().join("tls/server.crt");

    let b = TestDir::new();
    // A local product that already answers to testos/1.
    let local_meta = b.file("local.tar.xz");
    support::metadata_tarball(
        &local_meta,
        &Meta {
            release: "local",
            ..Meta::default()
        },
    );
    let local_root = b.file("local.squashfs");
    support::squashfs(&local_root, "local");
    b.ok(&[
        "import",
        p(&local_meta),
        p(&local_root),
        "--alias",
        "testos/1",
    ]);
    let local_fingerprint = support::sha256_of(&[&local_meta, &local_root]);

    let output = b.run(&sync_args(&url, &upstream_cert, &[]));
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("refused testos:1:amd64:default") && stdout.contains("\"testos/1\""),
        "the colliding alias is named: {stdout}"
    );

    let out = b.ok(&sync_args(
        &url,
        &upstream_cert,
        &["--alias-prefix", "up/", "--keep", "1"],
    ));
    assert!(summary(&out).contains("1 new version(s)"), "{out}");
    let images = listed(&b);
    let fps: Vec<&String> = images.iter().map(|(f, _, _)| f).collect();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        fps.contains(&&fingerprints[1]) && fps.contains(&&local_fingerprint),
        "{images:?}"
    );
    assert!(
        images
            .iter()
            .any(|(f, _, aliases)| f == &fingerprints[1]
                && aliases.contains(&"up/testos/1".to_string())),
        "{images:?}"
    );

    // Without --keep, the older version comes too; then its removal upstream takes it out.
    let out = b.ok(&sync_args(&url, &upstream_cert, &["--alias-prefix", "up/"]));
    assert!(summary(&out).contains("1 new version(s)"), "{out}");
    assert_eq!(listed(&b).len(), 3);
    // An alias added upstream reaches the held product with the next run.
    a.ok(&["alias", "add", "testos/extra", "testos:1:amd64:default"]);
    let out = b.ok(&sync_args(&url, &upstream_cert, &["--alias-prefix", "up/"]));
    assert!(summary(&out).contains("0 new version(s)"), "{out}");
    assert!(
        listed(&b)
            .iter()
            .any(|(_, _, aliases)| aliases.contains(&"up/testos/extra".to_string())),
        "{:?}",
        listed(&b)
    );
    a.ok(&["remove", &fingerprints[0]]);
    let out = b.ok(&sync_args(&url, &upstream_cert, &["--alias-prefix", "up/"]));
    assert!(
        summary(&out).contains("0 new version(s)") && summary(&out).contains("1 removed"),
        "{out}"
    );
    let images = listed(&b);
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        images.iter().any(|(f, _, _)| f == &local_fingerprint),
        "the local image is never touched: {images:?}"
    );
    assert_whole(&b.data(), "after the removal");
    drop(upstream);
}

/// The `.part` files a data directory's mirror downloads sit in, with their sizes.
fn partial_downloads(t: &TestDir) -> Vec<(PathBuf, u64)> {
    let mirror = t.data().join("tmp/mirror");
    if !mirror.exists() {
        return Vec::new();
    }
    support::invariants::files_under(&mirror)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "part"))
        .map(|path| {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (path, size)
        })
        .collect()
}

/// A sync killed with SIGKILL in the middle of a download: the next run resumes the file with
/// a Range request, publishes, and the catalog verifies clean.
#[test]
fn a_killed_sync_resumes_with_a_range_request_and_ends_whole() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let mut tree = Tree::new(&tree_root);
    let dir = "images/testos/big/amd64/default/20251127_07:42";
    let source = work.file("meta.tar.xz");
    support::metadata_tarball(
        &source,
        &Meta {
            release: "big",
            ..Meta::default()
        },
    );
    let metadata = tree.place(&source, &format!("{dir}/incus.tar.xz"));
    let source = work.file("big.squashfs");
    support::squashfs_with_noise(&source, "big", 8 << 20);
    let squashfs = tree.place(&source, &format!("{dir}/rootfs.squashfs"));
    let fingerprint = support::sha256_of(&[&metadata.local, &squashfs.local]);
    let mut meta_item = metadata.item("incus.tar.xz");
    meta_item["combined_squashfs_sha256"] = json!(fingerprint);
    tree.version(
        "streams/v1/images.json",
        "images",
        "testos:big:amd64:default",
        json!({"aliases": "testos/big", "arch": "amd64", "os": "testos", "release": "big", "variant": "default"}),
        "20251127_07:42",
        json!({"incus.tar.xz": meta_item, "root.squashfs": squashfs.item("squashfs")}),
    );
    tree.write();
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();
    let root_path = format!("/{}", squashfs.path);
    upstream.set(&root_path, Behaviour::Slow(2 << 20));

    let t = TestDir::new();
    let mut child = t
        .command(&sync_args(&url, &ca.pem, &[]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sync");
    let kept = support::wait_until(
        std::time::Duration::from_secs(60),
        "a partial download of 2 MiB",
        || {
            partial_downloads(&t)
                .into_iter()
                .find(|(path, size)| {
                    path.to_string_lossy().contains(&squashfs.sha256) && *size >= 2 << 20
                })
                .map(|(_, size)| size)
        },
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(kept < squashfs.size, "killed before the end");
    assert!(listed(&t).is_empty(), "nothing was published");

    upstream.clear(&root_path);
    upstream.forget_seen();
    let out = t.ok(&sync_args(&url, &ca.pem, &["--format", "json"]));
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["new_versions"], json!(1), "{out}");
    let downloaded = report["bytes_downloaded"].as_u64().expect("bytes");
    assert!(
        downloaded < squashfs.size,
        "the rest only: {downloaded} of {}",
        squashfs.size
    );
    let resumed = upstream
        .file_requests()
        .into_iter()
        .find(|seen| seen.path == root_path)
        .expect("the root was asked for");
    let from: u64 = resumed
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("a Range request: {resumed:?}"));
    assert!(from >= kept, "resumed from {from}, {kept} were kept");
    let images = listed(&t);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].0, fingerprint);
    assert_whole(&t.data(), "after the resumed run");
    assert!(partial_downloads(&t).is_empty(), "tmp/ is cleaned up");
}

/// The LXD 5.0.2 daemon launches a container mirrored from an upstream that publishes for
/// Incus alone: it reads the lxd.tar.xz twin the mirror added.
#[test]
fn the_lxd_daemon_launches_a_container_mirrored_from_an_incus_only_upstream() {
    let work = TestDir::new();
    let daemon = LxdDaemon::start(&work.path().join("lxd"));
    let ca = TestCa::new(work.path());
    let unified = busybox_image(work.path(), "bb", 1_764_244_800);
    let (meta, root) = split_busybox_image(work.path(), &unified, "mirrored");
    let tree_root = work.file("upstream");
    let mut tree = Tree::new(&tree_root);
    let dir = "images/busybox/mirrored/amd64/default/20251127_12:00";
    let metadata = tree.place(&meta, &format!("{dir}/incus.tar.xz"));
    let squashfs = tree.place(&root, &format!("{dir}/rootfs.squashfs"));
    let fingerprint = support::sha256_of(&[&metadata.local, &squashfs.local]);
    let mut meta_item = metadata.item("incus.tar.xz");
    meta_item["combined_squashfs_sha256"] = json!(fingerprint);
    tree.version(
        "streams/v1/images.json",
        "images",
        "busybox:mirrored:amd64:default",
        json!({"aliases": "busybox/mirrored", "arch": "amd64", "os": "busybox", "release": "mirrored", "variant": "default"}),
        "20251127_12:00",
        json!({"incus.tar.xz": meta_item, "root.squashfs": squashfs.item("squashfs")}),
    );
    tree.write();
    let upstream = StaticUpstream::start(&tree_root, &ca);

    let t = TestDir::new();
    let out = t.ok(&sync_args(&upstream.url(), &ca.pem, &[]));
    assert!(summary(&out).contains("1 new version(s)"), "{out}");
    let server = Server::start(&t, &[]);
    let cert = t.data().join("tls/server.crt");
    std::fs::create_dir_all(daemon.conf().join("servercerts")).expect("servercerts");
    std::fs::copy(&cert, daemon.conf().join("servercerts/ours.crt")).expect("pin");
    daemon.ok(&[
        "remote",
        "add",
        "ours",
        &format!("https://127.0.0.1:{}", server.https().port()),
        "--protocol=simplestreams",
    ]);
    daemon.ok(&["launch", "ours:busybox/mirrored", "c1"]);
    let state = daemon.ok(&["list", "c1", "--format", "csv", "-c", "s"]);
    assert_eq!(state.trim(), "RUNNING");
    assert_eq!(
        daemon.ok(&["exec", "c1", "--", "echo", "mirrored"]).trim(),
        "mirrored"
    );
    let info = daemon.ok(&["image", "list", "--format", "csv", "-c", "F"]);
    assert!(
        info.contains(&fingerprint),
        "the daemon holds upstream's fingerprint: {info}"
    );
}

// Configured mirrors: `[[mirror]]` tables, `mirror sync --name`, `mirror status`, the run lock,
// `serve`'s schedule and its counters.

/// The path of the older version's squashfs in [`lxc_ci_tree`]: slowed down to keep a run going.
const OLDER_SQUASHFS: &str = "/images/debian/bookworm/amd64/default/20251126_07:42/rootfs.squashfs";

/// Writes `config.toml` with one `[[mirror]] "lxc"` table for `url`, plus `extra` lines in it.
fn configure_mirror(t: &TestDir, url: &str, ca: &Path, extra: &str) {
    support::ssh::write_config(
        t,
        &format!(
            "[[mirror]]\nname = \"lxc\"\nurl = \"{url}\"\nca_cert = \"{}\"\n{extra}",
            p(ca)
        ),
    );
}

/// `mirror status --format json`'s row for `name`.
fn status_of(t: &TestDir, name: &str) -> Value {
    let out = t.ok(&["mirror", "status", "--format", "json"]);
    let rows: Value = serde_json::from_str(&out).expect("status json");
    rows.as_array()
        .expect("array")
        .iter()
        .find(|row| row["name"] == json!(name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn a_configured_mirror_runs_by_name_and_shows_in_status_and_on_the_catalog_page() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let t = TestDir::new();
    configure_mirror(&t, &upstream.url(), &ca.pem, "interval = \"2h\"\n");

    let before = status_of(&t, "lxc");
    assert_eq!(before["result"], Value::Null);
    assert_eq!(before["configured"], json!(true));
    assert_eq!(before["scheduled"], json!(true));
    assert_eq!(before["interval_secs"], json!(7200));

    let unknown = t.fails(&["mirror", "sync", "--name", "nope"], 1);
    assert!(
        unknown.contains("no mirror is named \"nope\"; the configured ones are lxc"),
        "{unknown}"
    );
    let both = t.fails(&["mirror", "sync", "--name", "lxc", "--keep", "1"], 2);
    assert!(both.contains("--keep"), "{both}");

    let out = t.ok(&["mirror", "sync", "--name", "lxc"]);
    assert!(
        summary(&out).starts_with("mirrored lxc: 2 new version(s)"),
        "{out}"
    );
    let status = status_of(&t, "lxc");
    assert_eq!(status["result"], json!("ok"), "{status}");
    assert_eq!(status["running"], json!(false));
    assert_eq!(status["new_versions"], json!(2));
    assert_eq!(status["refused_versions"], json!(0));
    let downloaded = status["bytes_downloaded"].as_u64().expect("bytes");
    assert!(downloaded > 0, "{status}");
    let start = status["last_start"]
        .as_str()
        .expect("start")
        .parse::<jiff::Timestamp>()
        .expect("rfc3339");
    let next = status["next_run"]
        .as_str()
        .expect("next")
        .parse::<jiff::Timestamp>()
        .expect("rfc3339");
    assert_eq!(next.as_second() - start.as_second(), 7200, "{status}");
    assert!(
        status["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|note| note.as_str().is_some_and(|n| n.contains("Incus only"))),
        "the VM agent note: {status}"
    );
    // For people: a row, and the note on its own line.
    let text = t.ok(&["mirror", "status"]);
    let row = text
        .lines()
        .find(|line| line.starts_with("lxc "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(" ok ") && row.contains(&upstream.url()),
        "{row}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("lxc: note: ") && line.contains("Incus only")),
        "{text}"
    );

    // The images carry the mirror's name, and the catalog page shows it.
    let info = t.ok(&[
        "info",
        &versions[1].container_fingerprint,
        "--format",
        "json",
    ]);
    assert!(info.contains("\"origin\": \"lxc\""), "{info}");
    let server = Server::start(&t, &[]);
    let page = support::http::Client::new(server.https(), &t.data().join("tls/server.crt"))
        .get("/")
        .text();
    assert!(page.contains("<th>Mirrored from</th>"), "{page}");
    assert_eq!(
        page.matches("<td class=\"origin\">lxc</td>").count(),
        3,
        "{page}"
    );

    // A second run brings nothing and says so in status; the notes stay.
    server.terminate();
    t.ok(&["mirror", "sync", "--name", "lxc"]);
    let again = status_of(&t, "lxc");
    assert_eq!(
        (
            again["new_versions"].clone(),
            again["bytes_downloaded"].clone()
        ),
        (json!(0), json!(0)),
        "{again}"
    );
    // The agent note stays (the first run's note of the deltas it mirrored does not).
    let agent_note = |status: &Value| {
        status["notes"].as_array().and_then(|notes| {
            notes
                .iter()
                .find(|n| n.to_string().contains("agent"))
                .cloned()
        })
    };
    assert!(agent_note(&status).is_some(), "{status}");
    assert_eq!(agent_note(&again), agent_note(&status));
}

#[test]
fn two_runs_of_one_mirror_never_overlap() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, _versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    // About 4 s for this one file: the first run is still going when the others start.
    upstream.set(OLDER_SQUASHFS, Behaviour::Slow(1024));
    let t = TestDir::new();
    configure_mirror(
        &t,
        &upstream.url(),
        &ca.pem,
        "filters = [\"type=container\"]\n",
    );

    let first = t
        .command(&["mirror", "sync", "--name", "lxc"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the first run");
    support::wait_until(
        Duration::from_secs(20),
        "the first run to hold its lock",
        || (status_of(&t, "lxc")["running"] == json!(true)).then_some(()),
    );
    // The same mirror from the command line is refused by name...
    let second = t.fails(&["mirror", "sync", "--name", "lxc"], 1);
    assert!(
        second.contains("mirror lxc is already running (started 20"),
        "{second}"
    );
    // ...and `serve`'s schedule leaves it alone (it would run a never-finished mirror at once).
    let server = Server::start(&t, &[]);
    let cert = t.data().join("tls/server.crt");
    let first = support::ssh::wait_with_deadline(first, Duration::from_secs(60));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(status_of(&t, "lxc")["result"], json!("ok"));
    // The run from the command line counts as the last one: the schedule waits an interval.
    let metrics = support::http::Client::new(server.https(), &cert)
        .get("/metrics")
        .text();
    assert!(
        metrics.contains("simplestream_mirror_runs_total{mirror=\"lxc\"} 0"),
        "{metrics}"
    );
    assert!(
        !server.output().contains("mirror run ended"),
        "{}",
        server.output()
    );
    let files = upstream.file_requests();
    assert_eq!(
        files
            .iter()
            .filter(|seen| seen.path == OLDER_SQUASHFS)
            .count(),
        1,
        "one download of the slowed file: {files:?}"
    );
}

#[test]
fn serve_runs_enabled_mirrors_on_their_schedule_and_counts_them() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let t = TestDir::new();
    configure_mirror(
        &t,
        &upstream.url(),
        &ca.pem,
        &format!(
            "filters = [\"type=container\"]\ninterval = \"1h\"\n\
             [[mirror]]\nname = \"off\"\nurl = \"{}\"\nca_cert = \"{}\"\nenabled = false\n",
            upstream.url(),
            p(&ca.pem)
        ),
    );
    let server = Server::start(&t, &[]);
    let cert = t.data().join("tls/server.crt");
    let status = support::wait_until(Duration::from_secs(60), "the scheduled run", || {
        let status = status_of(&t, "lxc");
        (status["result"] == json!("ok")).then_some(status)
    });
    assert_eq!(status["new_versions"], json!(2), "{status}");
    let metrics = support::http::Client::new(server.https(), &cert)
        .get("/metrics")
        .text();
    for line in [
        "simplestream_mirror_runs_total{mirror=\"lxc\"} 1",
        "simplestream_mirror_failures_total{mirror=\"lxc\"} 0",
        "simplestream_mirror_versions_published_total{mirror=\"lxc\"} 2",
        "simplestream_mirror_running{mirror=\"lxc\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    let downloaded = format!(
        "simplestream_mirror_downloaded_bytes_total{{mirror=\"lxc\"}} {}",
        status["bytes_downloaded"]
    );
    assert!(
        metrics.contains(&downloaded),
        "{downloaded} missing in\n{metrics}"
    );
    assert!(
        !metrics.contains("mirror=\"off\""),
        "a disabled mirror never runs: {metrics}"
    );
    // One log line for the run.
    let log = server.output();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("mirror run ended"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("mirror=\"lxc\"") || lines[0].contains("mirror=lxc"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("new_versions=2"), "{}", lines[0]);
    let off = status_of(&t, "off");
    assert_eq!(
        (off["result"].clone(), off["scheduled"].clone()),
        (Value::Null, json!(false))
    );
    assert_eq!(off["next_run"], Value::Null);
    // Published through the catalog: the images are served.
    let images = support::http::Client::new(server.https(), &cert)
        .get("/streams/v1/images.json")
        .text();
    assert!(
        images.contains(&versions[1].container_fingerprint),
        "{images}"
    );
    let (exit, took) = server.terminate_within(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?} after {took:?}");
}

#[test]
fn sigterm_stops_serve_during_a_scheduled_run_and_the_next_run_finishes_it() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, _versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    upstream.set(OLDER_SQUASHFS, Behaviour::Slow(256));
    let t = TestDir::new();
    configure_mirror(
        &t,
        &upstream.url(),
        &ca.pem,
        "filters = [\"type=container\"]\n",
    );
    let server = Server::start(&t, &[]);
    support::wait_until(
        Duration::from_secs(30),
        "the scheduled run to start",
        || (status_of(&t, "lxc")["running"] == json!(true)).then_some(()),
    );
    let (exit, took) = server.terminate_within(Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(3), "serve took {took:?} to stop");
    let cut = status_of(&t, "lxc");
    assert_eq!(cut["running"], json!(false));
    assert_eq!(cut["last_end"], Value::Null, "{cut}");
    let text = t.ok(&["mirror", "status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("lxc ") && l.contains("interrupted")),
        "{text}"
    );
    // The next run ends whole.
    upstream.clear(OLDER_SQUASHFS);
    t.ok(&["mirror", "sync", "--name", "lxc"]);
    assert_eq!(status_of(&t, "lxc")["result"], json!("ok"));
    assert_whole(&t.data(), "after the interrupted run was rerun");
}

#[test]
fn a_reload_schedules_a_mirror_and_admins_see_its_status_over_ssh() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, _versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let t = TestDir::new();
    let admin = support::ssh::Key::new(&t, "admin");
    let reader = support::ssh::Key::new(&t, "reader");
    support::ssh::write_authorized_keys(
        &t,
        &[admin.line("role=\"admin\""), reader.line("role=\"reader\"")],
    );
    configure_mirror(&t, &upstream.url(), &ca.pem, "enabled = false\n");
    let server = Server::start(&t, &[]);
    let ssh = support::ssh::Client::new(server.ssh(), &admin);
    let rows: Value =
        serde_json::from_str(&ssh.ok("mirror status --format json")).expect("status json");
    assert_eq!(rows[0]["scheduled"], json!(false), "{rows}");
    assert!(upstream.seen().is_empty(), "a disabled mirror is not read");

    configure_mirror(
        &t,
        &upstream.url(),
        &ca.pem,
        "filters = [\"type=container\"]\n",
    );
    let line = crate::reload::reload(&server, 1);
    assert!(line.contains("configuration: applied [[mirror]]"), "{line}");
    support::wait_until(
        Duration::from_secs(60),
        "the run the reload scheduled",
        || {
            let rows: Value =
                serde_json::from_str(&ssh.ok("mirror status --format json")).expect("status json");
            (rows[0]["result"] == json!("ok")).then_some(())
        },
    );
    let text = ssh.ok("mirror status");
    assert!(
        text.lines()
            .any(|l| l.starts_with("lxc ") && l.contains(" ok ")),
        "{text}"
    );
    // Mirrors are an admin's business.
    let refused = support::ssh::Client::new(server.ssh(), &reader).fails("mirror status", 1);
    assert!(refused.contains("admin"), "{refused}");
}

/// Upstream deltas come only with their base, and only once they rebuild their root.
#[test]
fn upstream_deltas_come_with_their_base_and_only_checked() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let url = upstream.url();
    let delta = versions[1].delta.clone().expect("delta");
    let delta_request = format!("/{}", delta.path);

    // With --keep 1 the base is not held: the delta is not even fetched.
    let t = TestDir::new();
    let out = t.ok(&sync_args(&url, &ca.pem, &["--keep", "1"]));
    assert!(summary(&out).contains("1 new version(s)"), "{out}");
    let asked: Vec<String> = upstream
        .file_requests()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert!(!asked.contains(&delta_request), "{asked:?}");
    let images = t.read_json("streams/v1/images.json").to_string();
    assert!(!images.contains("squashfs.vcdiff"), "{images}");

    // Once the base is held too, the delta of the version held already follows.
    let out = t.ok(&sync_args(&url, &ca.pem, &[]));
    assert!(out.contains("1 upstream delta(s) mirrored"), "{out}");
    let images = t.read_json("streams/v1/images.json");
    let item = &images["products"][LXC_PRODUCT]["versions"][versions[1].serial]["items"]["delta-20251126_07:42"];
    assert_eq!(item["sha256"], json!(delta.sha256), "{images}");
    assert_whole(&t.data(), "with the delta");

    // A delta that does not rebuild its root is never published, and not fetched again.
    let garbage = work.file("garbage.vcdiff");
    std::fs::write(&garbage, b"\xd6\xc3\xc4\x00\x00not a delta").expect("garbage");
    let bad = tree.place(&garbage, "images/bad.vcdiff");
    let mut json = products_json(&tree_root);
    let items = &mut json["products"][LXC_PRODUCT]["versions"][versions[1].serial]["items"];
    items["delta-20251126_07:42"]["path"] = json!(bad.path);
    items["delta-20251126_07:42"]["size"] = json!(bad.size);
    items["delta-20251126_07:42"]["sha256"] = json!(bad.sha256);
    upstream.set("/streams/v1/images.json", json_body(&json));
    let fresh = TestDir::new();
    let out = fresh.ok(&sync_args(&url, &ca.pem, &[]));
    assert!(
        out.contains("not mirrored") && out.contains("failed its check"),
        "{out}"
    );
    let images = fresh.read_json("streams/v1/images.json").to_string();
    assert!(!images.contains("squashfs.vcdiff"), "{images}");
    upstream.forget_seen();
    let again = fresh.ok(&sync_args(&url, &ca.pem, &[]));
    assert_eq!(upstream.file_requests(), Vec::new(), "{again}");
    assert_whole(&fresh.data(), "with the delta declined");
}

/// A file the catalog already holds (same sha256 and size) is copied from it, never fetched.
#[test]
fn files_the_catalog_holds_are_copied_not_fetched() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);

    // A local image whose root is the very file upstream's older version has.
    let t = TestDir::new();
    let local_meta = work.file("local.tar.xz");
    support::metadata_tarball(
        &local_meta,
        &Meta {
            release: "local",
            ..Meta::default()
        },
    );
    t.ok(&["import", p(&local_meta), p(&versions[0].squashfs.local)]);

    let out = t.ok(&sync_args(&upstream.url(), &ca.pem, &["--format", "json"]));
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["new_versions"], json!(2), "{out}");
    assert_eq!(report["files_reused"], json!(1), "{out}");
    let fetched: Vec<String> = upstream
        .file_requests()
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert!(
        !fetched.contains(&format!("/{}", versions[0].squashfs.path)),
        "{fetched:?}"
    );
    assert_eq!(listed(&t).len(), 4);
    assert_whole(&t.data(), "after a sync that reused a file");
}

/// A tree of `count` products, one version each, whose squashfs holds `noise` random bytes.
fn many_products_tree(root: &Path, scratch: &Path, count: usize, noise: usize) -> Vec<Placed> {
    let mut tree = Tree::new(root);
    let mut roots = Vec::new();
    for n in 0..count {
        let release: &'static str = Box::leak(format!("r{n}").into_boxed_str());
        let dir = format!("images/testos/{release}/amd64/default/20251127_07:42");
        let source = scratch.join(format!("{release}.tar.xz"));
        support::metadata_tarball(
            &source,
            &Meta {
                release,
                ..Meta::default()
            },
        );
        let metadata = tree.place(&source, &format!("{dir}/incus.tar.xz"));
        let source = scratch.join(format!("{release}.squashfs"));
        support::squashfs_with_noise(&source, release, noise);
        let squashfs = tree.place(&source, &format!("{dir}/rootfs.squashfs"));
        let mut meta_item = metadata.item("incus.tar.xz");
        meta_item["combined_squashfs_sha256"] =
            json!(support::sha256_of(&[&metadata.local, &squashfs.local]));
        tree.version(
            "streams/v1/images.json",
            "images",
            &format!("testos:{release}:amd64:default"),
            json!({"aliases": format!("testos/{release}"), "arch": "amd64", "os": "testos",
                   "release": release, "variant": "default"}),
            "20251127_07:42",
            json!({"incus.tar.xz": meta_item, "root.squashfs": squashfs.item("squashfs")}),
        );
        roots.push(squashfs);
    }
    tree.write();
    roots
}

/// `--concurrency` bounds the files in flight; `--bandwidth-limit` bounds the rate over all.
#[test]
fn downloads_are_bounded_in_number_and_rate() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let roots = many_products_tree(&tree_root, work.path(), 4, 256 << 10);
    let upstream = StaticUpstream::start(&tree_root, &ca);
    for root in &roots {
        upstream.set(&format!("/{}", root.path), Behaviour::Slow(512 << 10));
    }
    let t = TestDir::new();
    let out = t.ok(&sync_args(
        &upstream.url(),
        &ca.pem,
        &["--concurrency", "2"],
    ));
    assert!(summary(&out).contains("4 new version(s)"), "{out}");
    assert_eq!(
        upstream.most_at_once(),
        2,
        "two files at once, not more, not fewer"
    );

    for root in &roots {
        upstream.clear(&format!("/{}", root.path));
    }
    let total: u64 = roots.iter().map(|root| root.size).sum();
    let limited = TestDir::new();
    let started = std::time::Instant::now();
    let out = limited.ok(&sync_args(
        &upstream.url(),
        &ca.pem,
        &["--bandwidth-limit", "256K"],
    ));
    let took = started.elapsed().as_secs_f64();
    assert!(summary(&out).contains("4 new version(s)"), "{out}");
    let floor = total as f64 / f64::from(256u32 << 10) * 0.8;
    assert!(
        took >= floor,
        "{total} bytes at 256 KiB/s took {took:.1} s, less than {floor:.1} s"
    );
}

/// A metadata tarball that would unpack to more than the catalog allows (a compressed bomb)
/// refuses its version alone, as an import would.
#[test]
fn a_metadata_bomb_refuses_its_version_alone() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let roots = many_products_tree(&tree_root, work.path(), 2, 0);
    // Product r1's metadata: metadata.yaml, then 65 MiB of zeros in a few KiB of xz.
    let bomb = work.file("bomb.tar.xz");
    let yaml = Meta {
        release: "r1",
        ..Meta::default()
    }
    .yaml();
    support::tarball(
        &bomb,
        &[
            ("metadata.yaml", yaml.as_bytes()),
            ("templates/zeros", &vec![0u8; 65 << 20]),
        ],
        "xz",
    );
    let mut json = products_json(&tree_root);
    let items =
        &mut json["products"]["testos:r1:amd64:default"]["versions"]["20251127_07:42"]["items"];
    let placed = Tree::new(&tree_root).place(&bomb, "images/bomb.tar.xz");
    items["incus.tar.xz"]["path"] = json!(placed.path);
    items["incus.tar.xz"]["size"] = json!(placed.size);
    items["incus.tar.xz"]["sha256"] = json!(placed.sha256);
    let squashfs = roots[1].local.clone();
    items["incus.tar.xz"]["combined_squashfs_sha256"] =
        json!(support::sha256_of(&[&placed.local, &squashfs]));
    let upstream = StaticUpstream::start(&tree_root, &ca);
    upstream.set("/streams/v1/images.json", json_body(&json));

    let t = TestDir::new();
    let output = t.run(&sync_args(&upstream.url(), &ca.pem, &[]));
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let refused: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{stdout}");
    assert!(
        refused[0].contains("testos:r1:amd64:default")
            && refused[0].contains("images/bomb.tar.xz")
            && refused[0].contains("catalog.max_metadata_unpacked_bytes"),
        "{stdout}"
    );
    assert!(summary(&stdout).contains("1 new version(s)"), "{stdout}");
    assert_eq!(listed(&t).len(), 1);
    assert_whole(&t.data(), "after the bomb");
}

/// The progress line is drawn for a person at a terminal (here a pseudo-terminal from
/// `script`), and never with `--format json` or when stderr is not a terminal.
#[test]
fn the_progress_line_shows_on_a_terminal_only() {
    let work = TestDir::new();
    let ca = TestCa::new(work.path());
    let tree_root = work.file("upstream");
    let (_tree, _versions) = lxc_ci_tree(&tree_root, work.path());
    let upstream = StaticUpstream::start(&tree_root, &ca);
    let script = support::require_tool("script", "bsdutils");
    let on_terminal = |t: &TestDir, extra: &str| {
        let line = format!(
            "{} --data-dir {} mirror sync {} --ca-cert {} {extra}",
            support::bin().display(),
            t.data().display(),
            upstream.url(),
            p(&ca.pem)
        );
        let output = std::process::Command::new(&script)
            .args(["-qefc", &line, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let t = TestDir::new();
    let shown = on_terminal(&t, "");
    assert!(
        shown.contains(&format!("\rmirror {}: ", upstream.url())) && shown.contains(" files, "),
        "{shown:?}"
    );
    assert!(
        shown.contains("mirrored "),
        "the summary follows: {shown:?}"
    );
    let t = TestDir::new();
    let json = on_terminal(&t, "--format json");
    assert!(!json.contains("\rmirror "), "{json:?}");
    assert!(json.contains("\"new_versions\": 2"), "{json:?}");
    // Not a terminal: nothing on stderr but what went wrong (nothing).
    let t = TestDir::new();
    let output = t
        .command(&["mirror", "sync", &upstream.url(), "--ca-cert", p(&ca.pem)])
        .output()
        .expect("run");
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

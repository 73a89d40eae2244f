//! Deltas (issue 13): a new version of a product gets a `squashfs.vcdiff` item against the
//! previous one; Debian's xdelta3 applies it; the real LXD and Incus daemons refresh an image
//! by it, downloading the delta and not the full root; a damaged base gets none; a delta
//! leaves with its base.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::lxd_daemon::Daemon;
use crate::support::server::Server;
use crate::support::{Meta, TestDir};

const PRODUCT: &str = "testos:1:amd64:default";
const V1: &str = "20251127_1200";
const V2: &str = "20251128_1200";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Bytes that do not compress, the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A squashfs of 40 files of 48 KiB (`build` changes files 7 and 23 from the first build) and
/// a metadata tarball for `serial`'s creation date.
fn build(t: &TestDir, name: &str, build: u64, created: i64) -> (PathBuf, PathBuf) {
    let tree = t.path().join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    for i in 0..40u64 {
        let seed = if build > 1 && (i == 7 || i == 23) {
            1000 * build + i
        } else {
            i
        };
        std::fs::write(
            tree.join(format!("usr/lib/file{i:02}")),
            noise(seed, 48 << 10),
        )
        .unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), format!("{name}\n")).unwrap();
    let root = t.file(&format!("{name}.squashfs"));
    support::squashfs_of(&tree, &root);
    let metadata = t.file(&format!("{name}.tar.xz"));
    support::metadata_tarball(
        &metadata,
        &Meta {
            created,
            ..Meta::default()
        },
    );
    (metadata, root)
}

/// 2025-11-27 and 2025-11-28, 12:00 UTC: the serials V1 and V2.
const CREATED: [i64; 2] = [1_764_244_800, 1_764_331_200];

fn delta_items(t: &TestDir, serial: &str) -> Vec<serde_json::Value> {
    let images = t.read_json("streams/v1/images.json");
    images["products"][PRODUCT]["versions"][serial]["items"]
        .as_object()
        .map(|items| {
            items
                .values()
                .filter(|item| item["ftype"] == "squashfs.vcdiff")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn sha256_file(path: &Path) -> String {
    support::sha256_of(&[path])
}

/// Debian's `xdelta3 -f -d -s`, as the daemons run it: rebuilds `out` from `base` and `delta`.
fn xdelta3_apply(base: &Path, delta: &Path, out: &Path) {
    let output = Command::new(support::require_tool("xdelta3", "xdelta3"))
        .args(["-f", "-d", "-s"])
        .args([base, delta, out])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "xdelta3 -d: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every instruction the encoder makes (short copies from the window and from the nearby
/// base, ADD+COPY pairs, cached addresses) as Debian's xdelta3 decodes it.
#[test]
fn xdelta3_applies_short_copies_and_cached_addresses() {
    let t = TestDir::new();
    let base = noise(1, 300_000);
    let mut target = base[..100_000].to_vec();
    for i in 0..300u32 {
        target.extend_from_slice(b"record-header-fields");
        target.extend_from_slice(&i.to_le_bytes());
        target.extend_from_slice(&noise(u64::from(i) + 10, 12));
    }
    let mut edited = base[100_000..110_000].to_vec();
    for byte in edited.iter_mut().step_by(40) {
        *byte ^= 0x5a;
    }
    target.extend_from_slice(&edited);
    target.extend_from_slice(&base[110_000..]);
    target.extend_from_slice(&base[5_000..60_000]);
    let (base_path, target_path) = (t.file("base"), t.file("target"));
    std::fs::write(&base_path, &base).unwrap();
    std::fs::write(&target_path, &target).unwrap();

    let delta_path = t.file("delta.vcdiff");
    let mut delta = std::fs::File::create(&delta_path).unwrap();
    simplestream_server::vcdiff::encode::encode(
        &std::fs::File::open(&base_path).unwrap(),
        &std::fs::File::open(&target_path).unwrap(),
        &mut delta,
        u64::MAX,
        &|| false,
    )
    .unwrap();
    drop(delta);
    let size = std::fs::metadata(&delta_path).unwrap().len();
    assert!(size < 9000, "{size} bytes");

    let rebuilt = t.file("rebuilt");
    xdelta3_apply(&base_path, &delta_path, &rebuilt);
    assert!(
        std::fs::read(&rebuilt).unwrap() == target,
        "xdelta3 rebuilt other bytes"
    );
}

#[test]
fn a_new_version_gets_a_delta_that_xdelta3_applies_and_that_leaves_with_its_base() {
    let t = TestDir::new();
    let (meta1, root1) = build(&t, "one", 1, CREATED[0]);
    let (meta2, root2) = build(&t, "two", 2, CREATED[1]);
    let out = t.ok(&["import", p(&meta1), p(&root1)]);
    assert!(!out.contains("delta"), "{out}");
    let out = t.ok(&["import", p(&meta2), p(&root2)]);
    assert!(out.contains(&format!("delta from {V1}: ")), "{out}");

    let items = delta_items(&t, V2);
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["delta_base"], V1);
    let path = t.www().join(item["path"].as_str().unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(item["size"], size);
    assert_eq!(item["sha256"], sha256_file(&path));
    let full = std::fs::metadata(&root2).unwrap().len();
    assert!(size * 10 < full, "delta {size} bytes, root {full}");
    support::contract::assert_contract(&t.www());

    // Debian's xdelta3, as the daemons run it, rebuilds the new root from the old one.
    let rebuilt = t.file("rebuilt.squashfs");
    xdelta3_apply(&root1, &path, &rebuilt);
    assert_eq!(sha256_file(&rebuilt), sha256_file(&root2));

    // info shows it; verify checks it, and --deep applies it.
    let info = t.ok(&["info", "testos/1"]);
    assert!(
        info.contains(&format!("(squashfs.vcdiff from {V1}, {size} bytes")),
        "{info}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&t.ok(&["info", "testos/1", "--format", "json"])).unwrap();
    let files = info[0]["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["delta_base"] == V1 && f["size"] == size),
        "{files:?}"
    );
    let verified = t.ok(&["verify", "--deep"]);
    assert!(verified.contains("in 5 files"), "{verified}");
    assert!(verified.ends_with(": 0 problems\n"), "{verified}");

    // A delta that does not rebuild its root is a problem for verify --deep (not for verify,
    // whose hashes match the record it is given here).
    let record_path = t.data().join("state/catalog.json");
    let record = std::fs::read_to_string(&record_path).unwrap();
    let mut damaged: serde_json::Value = serde_json::from_str(&record).unwrap();
    let root = &mut damaged["products"][PRODUCT]["versions"][V2]["files"]["roots"]["container"];
    let delta = root["deltas"][V1].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let copy = t
        .www()
        .join(format!("{}.damaged", delta["path"].as_str().unwrap()));
    std::fs::write(&copy, &bytes).unwrap();
    root["deltas"][V1]["path"] = format!("{}.damaged", delta["path"].as_str().unwrap()).into();
    root["deltas"][V1]["sha256"] = support::sha256_of(&[&copy]).into();
    std::fs::write(&record_path, serde_json::to_vec(&damaged).unwrap()).unwrap();
    let output = t.run(&["verify", "--deep"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("does not apply to its base") || stdout.contains("applied to its base"),
        "{stdout}"
    );
    std::fs::write(&record_path, record).unwrap();
    std::fs::remove_file(&copy).unwrap();

    // Prune of the base: the delta leaves the stream with it.
    t.ok(&["prune", "--keep", "1"]);
    assert!(delta_items(&t, V2).is_empty());
    let info = t.ok(&["info", "testos/1"]);
    assert!(!info.contains("squashfs.vcdiff"), "{info}");
    assert!(path.exists(), "the file stays for the grace period");
    let verified = t.ok(&["verify"]);
    assert!(verified.ends_with(": 0 problems\n"), "{verified}");
}

#[test]
fn no_delta_when_the_base_is_damaged_too_large_or_turned_off() {
    let t = TestDir::new();
    let (meta1, root1) = build(&t, "one", 1, CREATED[0]);
    let (meta2, root2) = build(&t, "two", 2, CREATED[1]);
    t.ok(&["import", p(&meta1), p(&root1)]);

    // Turned off: nothing, and nothing pending either.
    let off = t.ok(&[
        "--catalog-deltas",
        "false",
        "import",
        p(&meta2),
        p(&root2),
        "--serial",
        "20251128_0000",
    ]);
    assert!(!off.contains("delta"), "{off}");
    assert!(delta_items(&t, "20251128_0000").is_empty());

    // Larger than the share allowed: declined, said so, never tried again.
    let (meta3, root3) = build(&t, "three", 3, CREATED[1]);
    let small = t.ok(&[
        "--catalog-delta-max-ratio",
        "0.01",
        "import",
        p(&meta3),
        p(&root3),
        "--serial",
        "20251128_0600",
    ]);
    assert!(
        small.contains("no delta from 20251128_0000: larger than 0.01 of the root"),
        "{small}"
    );
    assert!(delta_items(&t, "20251128_0600").is_empty());

    // A base whose bytes on disk are not what the record says: no delta is made from it.
    let base = t
        .www()
        .join("images/testos/1/amd64/default/20251128_0600/root.squashfs");
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[70_000] ^= 1;
    std::fs::write(&base, &bytes).unwrap();
    let (meta4, root4) = build(&t, "four", 4, CREATED[1]);
    let output = t.run(&["import", p(&meta4), p(&root4)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not match its recorded sha256"),
        "{stderr}"
    );
    assert!(delta_items(&t, V2).is_empty());
    let images = std::fs::read_to_string(t.www().join("streams/v1/images.json")).unwrap();
    assert!(!images.contains("vcdiff"), "{images}");
}

/// Points `client`'s daemon at our server; `conf` is its client configuration directory.
fn add_remote(run: &dyn Fn(&[&str]) -> String, conf: &Path, t: &TestDir, server: &Server) {
    std::fs::create_dir_all(conf.join("servercerts")).unwrap();
    std::fs::copy(
        t.data().join("tls/server.crt"),
        conf.join("servercerts/ours.crt"),
    )
    .unwrap();
    run(&[
        "remote",
        "add",
        "ours",
        &format!("https://127.0.0.1:{}", server.https().port()),
        "--protocol=simplestreams",
    ]);
}

/// The daemon caches a remote's index for an hour: age its copies as if the hour had passed.
fn expire_index_cache(cache: &Path) {
    let touched = Command::new("find")
        .arg(cache)
        .args([
            "-type",
            "f",
            "-exec",
            "touch",
            "-d",
            "2 hours ago",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(touched.success());
}

/// What the server's access log says was fetched under `images/`.
fn fetched(server: &Server) -> Vec<String> {
    server
        .output()
        .lines()
        .filter(|l| l.contains("status=200"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("path=")))
        .map(str::to_string)
        .collect()
}

/// Copies version 1 into `daemon` with auto-update, imports version 2 (with its delta), and
/// refreshes: the daemon reaches version 2 having fetched the delta, not the full root.
fn refreshes_by_the_delta(t: &TestDir, daemon: &Daemon) {
    support::require_tool("xdelta3", "xdelta3");
    let server = Server::start(t, &[]);
    let (meta1, root1) = build(t, "one", 1, CREATED[0]);
    let (meta2, root2) = build(t, "two", 2, CREATED[1]);
    t.ok(&["import", p(&meta1), p(&root1)]);
    let v1 = support::sha256_of(&[&meta1, &root1]);
    let v2 = support::sha256_of(&[&meta2, &root2]);

    add_remote(&|args| daemon.ok(args), &daemon.conf(), t, &server);
    daemon.ok(&["image", "copy", "ours:testos/1", "local:", "--auto-update"]);
    let images = daemon.ok(&["image", "list", "--format", "csv", "-c", "F"]);
    assert_eq!(images.trim(), v1, "{images}");

    let out = t.ok(&["import", p(&meta2), p(&root2)]);
    assert!(out.contains("delta from"), "{out}");
    let delta = delta_items(t, V2)[0]["path"].as_str().unwrap().to_string();
    expire_index_cache(&daemon.state_dir().join("cache"));
    daemon.ok(&["image", "refresh", &v1]);

    let images = daemon.ok(&["image", "list", "--format", "csv", "-c", "F"]);
    assert!(images.lines().any(|fp| fp == v2), "{images}");
    let fetched = fetched(&server);
    assert!(
        fetched.iter().any(|path| path.ends_with(&delta)),
        "{fetched:?}"
    );
    let full = format!("images/testos/1/amd64/default/{V2}/root.squashfs");
    assert!(
        !fetched.iter().any(|path| path.ends_with(&full)),
        "{fetched:?}"
    );
}

#[test]
fn lxd_refreshes_an_image_by_its_delta() {
    let t = TestDir::new();
    let daemon = Daemon::start(&t.path().join("lxd"));
    refreshes_by_the_delta(&t, &daemon);
}

#[test]
fn incus_refreshes_an_image_by_its_delta() {
    let t = TestDir::new();
    let daemon = Daemon::start_incus(&t.path().join("incus"));
    refreshes_by_the_delta(&t, &daemon);
}

/// `serve` makes deltas in the background: at start for what was left pending (an import with
/// `--no-delta`, or one a crash or restart interrupted), and after an import over SSH.
#[test]
fn serve_makes_pending_deltas_at_start_and_after_ssh_imports() {
    use crate::support::ssh::{Client, Key, write_authorized_keys};
    let t = TestDir::new();
    let (meta1, root1) = build(&t, "one", 1, CREATED[0]);
    let (meta2, root2) = build(&t, "two", 2, CREATED[1]);
    t.ok(&["import", p(&meta1), p(&root1)]);
    let out = t.ok(&["import", p(&meta2), p(&root2), "--no-delta"]);
    assert!(!out.contains("delta"), "{out}");
    assert!(delta_items(&t, V2).is_empty());

    // An admin: the product belongs to the local importer.
    let key = Key::new(&t, "admin");
    write_authorized_keys(&t, &[key.line("role=\"admin\"")]);
    let server = Server::start(&t, &[]);
    let delta = support::wait_until(
        std::time::Duration::from_secs(60),
        "the pending delta to be made at start",
        || delta_items(&t, V2).pop(),
    );
    assert_eq!(delta["delta_base"], V1);

    // An import over SSH returns at once; the server makes its delta afterwards.
    let (meta3, root3) = build(&t, "three", 3, CREATED[1]);
    let client = Client::new(server.ssh(), &key);
    let uploaded = client.scp(&[], &[&meta3, &root3], "");
    assert!(uploaded.status.success(), "{uploaded:?}");
    let out = client.ok("import three.tar.xz three.squashfs --serial 20251128_1300");
    assert!(!out.contains("delta"), "{out}");
    let delta = support::wait_until(
        std::time::Duration::from_secs(60),
        "the delta of the SSH import",
        || delta_items(&t, "20251128_1300").pop(),
    );
    assert_eq!(delta["delta_base"], V2);
    let log = server.output();
    assert!(log.contains("published a delta"), "{log}");
    let verified = t.ok(&["verify", "--deep"]);
    assert!(verified.ends_with(": 0 problems\n"), "{verified}");
}

/// `import-tree` run locally makes the deltas of what it imported.
#[test]
fn import_tree_makes_the_deltas_of_what_it_imports() {
    let source = TestDir::new();
    let (meta1, root1) = build(&source, "one", 1, CREATED[0]);
    let (meta2, root2) = build(&source, "two", 2, CREATED[1]);
    for (meta, root) in [(&meta1, &root1), (&meta2, &root2)] {
        source.ok(&["--catalog-deltas", "false", "import", p(meta), p(root)]);
    }
    assert!(delta_items(&source, V2).is_empty());

    let t = TestDir::new();
    let out = t.ok(&["import-tree", p(&source.www())]);
    assert!(
        out.contains(&format!("delta for {PRODUCT} version {V2} from {V1}: ")),
        "{out}"
    );
    let items = delta_items(&t, V2);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["delta_base"], V1);
}

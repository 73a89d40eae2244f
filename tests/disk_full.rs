//! A real full disk (a small tmpfs as the data directory): an import that runs out of space
//! fails with one clear line at whatever step the space ran out (staging the files, the
//! journal, the record, or the stream JSON), the published tree stays whole, and once space
//! returns the next import works. The same holds for a running server: uploads over SFTP,
//! `scp` and `scp -O` and imports over `ssh` that run out of space fail with a clear message,
//! leave nothing behind, keep serving the previous tree over HTTPS, and the same process
//! works again once space returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support;
use crate::support::contract::assert_contract;
use crate::support::server::Server;
use crate::support::ssh::{
    Client, Key, area, names_in, random_file, write_authorized_keys, write_config,
};
use crate::support::{Meta, TestDir, Tmpfs, invariants, wait_until};

#[test]
fn an_import_that_runs_out_of_space_changes_nothing() {
    let t = TestDir::new();
    let mount = Tmpfs::mount(&t.path().join("mnt"), "24m");
    let data = mount.path.join("data");
    let run = |args: &[&str]| {
        std::process::Command::new(support::bin())
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };

    let first_meta = t.file("first.tar.xz");
    support::metadata_tarball(&first_meta, &Meta::default());
    let first_root = t.file("first.squashfs");
    support::squashfs(&first_root, "first");
    assert!(
        run(&[
            "import",
            first_meta.to_str().unwrap(),
            first_root.to_str().unwrap()
        ])
        .status
        .success()
    );
    let published = assert_contract(&data.join("www"));

    let meta = t.file("big.tar.xz");
    support::metadata_tarball(
        &meta,
        &Meta {
            release: "big",
            ..Meta::default()
        },
    );
    let root = t.file("big.tar.xz.root");
    support::root_tar_xz(&root, "big");
    // A larger root: incompressible bytes in an xz container, so its size is what it stores.
    let mut blob = vec![0u8; 6 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    support::tarball(&root, &[("blob", &blob)], "xz");
    let needed = std::fs::metadata(&root).unwrap().len() + std::fs::metadata(&meta).unwrap().len();

    // Leave less and less room, a page at a time, from plenty to too little.
    let ballast = mount.path.join("ballast");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let page = 4096u64;
    for step in 0..48u64 {
        let _ = std::fs::remove_file(&ballast);
        let room = needed + 24 * page - step * page;
        let fill = mount.available().saturating_sub(room);
        std::fs::write(&ballast, vec![0u8; fill as usize]).unwrap();
        let output = run(&[
            "--grace-period",
            "0",
            "import",
            meta.to_str().unwrap(),
            root.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.success() {
            *outcomes.entry("published".into()).or_default() += 1;
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            let fingerprint = text.split_whitespace().nth(1).unwrap().to_string();
            assert!(
                run(&["--grace-period", "0", "remove", &fingerprint])
                    .status
                    .success()
            );
        } else {
            assert_eq!(output.status.code(), Some(1), "step {step}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "step {step}: one line: {stderr}");
            assert!(
                stderr.contains("the disk holding the data directory is full")
                    && stderr.contains("nothing changed: free some space and try again"),
                "step {step}: {stderr}"
            );
            // Which write ran out of room: the staged root, or one of the small files after it.
            // Which write ran out of room.
            let what = [
                "big.tar.xz.root into the data directory",
                "journal.json",
                "images.json",
                "index.json",
            ]
            .into_iter()
            .find(|what| stderr.contains(what))
            .unwrap_or_else(|| panic!("step {step}: an unexpected failure: {stderr}"));
            *outcomes.entry(what.into()).or_default() += 1;
        }
        // Whatever happened, the tree is whole and what was published before is still there.
        let _ = std::fs::remove_file(&ballast);
        let verify = run(&["verify"]);
        assert!(
            verify.status.success(),
            "step {step}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        assert_eq!(assert_contract(&data.join("www")), published, "step {step}");
        assert!(
            std::fs::read_dir(data.join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "step {step}: staged files left behind"
        );
        assert!(
            !data.join("state/journal.json").exists(),
            "step {step}: a journal left behind"
        );
    }
    eprintln!("outcomes: {outcomes:?}");
    assert!(
        outcomes.get("published").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    // The sweep ran out of space in every phase of an import: the staged copy, the journal
    // and both stream files (the JSON publication). The record's temp file reuses the page the
    // journal's second version freed, so it never fails alone.
    for phase in [
        "big.tar.xz.root into the data directory",
        "journal.json",
        "images.json",
        "index.json",
        "published",
    ] {
        assert!(
            outcomes.contains_key(phase),
            "no step ran out of space at {phase}: {outcomes:?}"
        );
    }
    // Space is back: the import works.
    let output = run(&["import", meta.to_str().unwrap(), root.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(assert_contract(&data.join("www")).len(), 2);
}

/// Fills the tmpfs to the last byte with `ballast`.
fn fill(mount: &Tmpfs, ballast: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(ballast).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => {
                if chunk.len() == 1 {
                    break;
                }
                chunk.truncate(chunk.len() / 2);
            }
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    assert_eq!(mount.available(), 0, "the disk is full");
}

/// A split image in `dir`; returns (metadata, root).
fn split_image(dir: &Path, release: &'static str) -> (PathBuf, PathBuf) {
    let meta = dir.join(format!("{release}.tar.xz"));
    support::metadata_tarball(
        &meta,
        &Meta {
            release,
            ..Meta::default()
        },
    );
    let root = dir.join(format!("{release}.squashfs"));
    support::squashfs(&root, release);
    (meta, root)
}

fn assert_full_disk_line(output: &std::process::Output, context: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{context}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{context}: one line: {stderr}");
    assert!(
        stderr.contains("the disk holding the data directory is full")
            && stderr.contains("free some space and try again"),
        "{context}: {stderr}"
    );
}

/// Regression: a transaction deleted the files of expired retired images (with a grace period
/// of 0, the image it was removing) before writing its journal and record. When the disk was
/// full (or the process died) right after, the record and the stream still named files that
/// were gone.
#[test]
fn a_removal_on_a_full_disk_deletes_nothing_the_stream_names() {
    let t = TestDir::new();
    let mount = Tmpfs::mount(&t.path().join("mnt"), "8m");
    let data = mount.path.join("data");
    let (meta, root) = split_image(t.path(), "kept");
    let imported = invariants::run(
        &data,
        &["import", meta.to_str().unwrap(), root.to_str().unwrap()],
    );
    assert!(imported.status.success());
    let fingerprint = support::sha256_of(&[&meta, &root]);
    let published = invariants::assert_whole(&data, "after the import");
    // A backup that hard-links the published files: deleting them frees no space.
    let backup = mount.path.join("backup");
    std::fs::create_dir(&backup).unwrap();
    for (i, file) in invariants::files_under(&data.join("www/images"))
        .iter()
        .enumerate()
    {
        std::fs::hard_link(file, backup.join(i.to_string())).unwrap();
    }
    let ballast = mount.path.join("ballast");
    fill(&mount, &ballast);

    let output = invariants::run(&data, &["--grace-period", "0", "remove", &fingerprint]);
    assert_full_disk_line(&output, "remove on a full disk");
    assert_eq!(
        invariants::assert_served_whole(&data, "still full"),
        published
    );

    std::fs::remove_file(&ballast).unwrap();
    assert_eq!(invariants::assert_whole(&data, "space is back"), published);
    let output = invariants::run(&data, &["--grace-period", "0", "remove", &fingerprint]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(invariants::assert_whole(&data, "removed").is_empty());
    assert!(
        invariants::files_under(&data.join("www/images")).is_empty(),
        "a grace period of 0 deletes the files at once"
    );
}

/// Regression: a recovery (finishing a crashed transaction) that failed, on a full disk,
/// deleted the journal on its way out; the stale stream then stayed published for good.
#[test]
fn a_recovery_that_runs_out_of_space_keeps_its_journal() {
    let t = TestDir::new();
    let mount = Tmpfs::mount(&t.path().join("mnt"), "8m");
    let data = mount.path.join("data");
    for release in ["one", "two"] {
        let (meta, root) = split_image(t.path(), release);
        let output = invariants::run(
            &data,
            &["import", meta.to_str().unwrap(), root.to_str().unwrap()],
        );
        assert!(output.status.success());
        if release == "one" {
            for name in ["index.json", "images.json"] {
                std::fs::copy(data.join("www/streams/v1").join(name), t.path().join(name)).unwrap();
            }
        }
    }
    // What a crash between the record and the stream leaves: the second import is in the
    // record, the stream still shows only the first, and a journal says to finish.
    for name in ["index.json", "images.json"] {
        std::fs::copy(t.path().join(name), data.join("www/streams/v1").join(name)).unwrap();
    }
    std::fs::write(data.join("state/journal.json"), r#"{"placed":[]}"#).unwrap();
    assert_eq!(invariants::assert_served_whole(&data, "crashed").len(), 1);

    let ballast = mount.path.join("ballast");
    fill(&mount, &ballast);
    let output = invariants::run(&data, &["list"]);
    assert_full_disk_line(&output, "recovery on a full disk");
    assert!(
        data.join("state/journal.json").exists(),
        "the failed recovery kept its journal"
    );
    assert_eq!(
        invariants::assert_served_whole(&data, "still full").len(),
        1
    );

    std::fs::remove_file(&ballast).unwrap();
    assert_eq!(invariants::assert_whole(&data, "space is back").len(), 2);
}

/// A running `serve` whose data directory is a tmpfs, with a publisher and an admin.
/// Fields drop in order: the server stops, then the tmpfs is unmounted, then the directory goes.
struct ServerOnTmpfs {
    server: Server,
    mount: Tmpfs,
    t: TestDir,
    publisher: Client,
    admin: Client,
    https: support::http::Client,
}

impl ServerOnTmpfs {
    /// `config` goes to config.toml (may be empty).
    fn start(size: &str, config: impl FnOnce(&TestDir) -> String) -> ServerOnTmpfs {
        let t = TestDir::new();
        let mount = Tmpfs::mount(&t.data(), size);
        let publisher = Key::new(&t, "alice");
        let admin = Key::new(&t, "root-admin");
        write_authorized_keys(&t, &[publisher.line(""), admin.line(r#"role="admin""#)]);
        let config = config(&t);
        if !config.is_empty() {
            write_config(&t, &config);
        }
        let server = Server::start(&t, &[]);
        let https = support::http::Client::new(server.https(), &t.data().join("tls/server.crt"));
        ServerOnTmpfs {
            publisher: Client::new(server.ssh(), &publisher),
            admin: Client::new(server.ssh(), &admin),
            https,
            server,
            mount,
            t,
        }
    }

    /// The ballast that fills the disk; it lives in the data directory, outside what is served.
    fn ballast(&self) -> PathBuf {
        self.t.data().join("ballast")
    }

    /// Leaves `room` bytes free (a multiple of the page size, as tmpfs counts).
    fn leave_room(&self, room: u64) {
        let ballast = self.ballast();
        let _ = std::fs::remove_file(&ballast);
        let fill = self.mount.available().saturating_sub(room);
        std::fs::write(&ballast, vec![0u8; fill as usize]).unwrap();
        assert!(self.mount.available() <= room, "the disk is filled");
    }

    fn free_space(&self) {
        std::fs::remove_file(self.ballast()).unwrap();
    }

    /// The server that ran out of space is still the one running: never restarted.
    fn assert_same_server_running(&mut self) {
        assert!(
            self.server.child.try_wait().unwrap().is_none(),
            "the server exited: {}",
            self.server.output()
        );
    }

    /// What HTTPS clients are served: both stream files and every file they name.
    fn served(&self) -> Served {
        let get = |target: &str| {
            let response = self.https.get(target);
            assert_eq!(response.status, 200, "GET {target}: {}", response.text());
            response.body
        };
        let index = get("/streams/v1/index.json");
        let images = get("/streams/v1/images.json");
        let json: serde_json::Value = serde_json::from_slice(&images).unwrap();
        let mut files = BTreeMap::new();
        for product in json["products"].as_object().unwrap().values() {
            for version in product["versions"].as_object().unwrap().values() {
                for item in version["items"].as_object().unwrap().values() {
                    let path = item["path"].as_str().unwrap();
                    files.insert(path.to_string(), get(&format!("/{path}")));
                }
            }
        }
        Served {
            index,
            images,
            files,
        }
    }

    /// The published tree is served as it was, and `verify` (over SSH) finds no drift.
    fn assert_still_served(&self, before: &Served, context: &str) {
        let now = self.served();
        assert!(
            now == *before,
            "{context}: what is served changed: files {:?}, now {:?}",
            before.files.keys().collect::<Vec<_>>(),
            now.files.keys().collect::<Vec<_>>()
        );
        invariants::assert_served_whole(&self.t.data(), context);
        let verify = self.admin.ssh("verify");
        assert!(
            verify.status.success(),
            "{context}: verify: {}{}",
            text(&verify.stdout),
            text(&verify.stderr)
        );
    }
}

/// What an HTTPS client sees of the stream.
#[derive(PartialEq)]
struct Served {
    index: Vec<u8>,
    images: Vec<u8>,
    /// Published path → bytes.
    files: BTreeMap<String, Vec<u8>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The lines of stderr that say the disk is full.
fn disk_full_lines(output: &Output) -> Vec<String> {
    text(&output.stderr)
        .lines()
        .filter(|line| line.contains("disk is full") || line.contains("disk holding"))
        .map(str::to_string)
        .collect()
}

/// An `ssh host import` that failed for want of room: exit status 1 and exactly one error
/// line, the catalog's, naming the step that ran out. Returns that step.
///
/// A retried import may also print its progress line ("reading …"): its first try linked the
/// root, which changed the root's ctime, so the upload-time digest no longer vouches for the
/// file and the retry hashes it again (issue 10 item 4: a digest is trusted only for the very
/// file it was taken of).
fn import_failed_for_room(output: &Output, context: &str) -> &'static str {
    let all = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{context}: {all}");
    let stderr: String = all
        .lines()
        .filter(|line| !line.starts_with("reading "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(stderr.lines().count(), 1, "{context}: one line: {all:?}");
    assert!(
        stderr.starts_with("simplestream-server: the disk holding the data directory is full (")
            && stderr
                .trim_end()
                .ends_with("); nothing changed: free some space and try again"),
        "{context}: {stderr}"
    );
    [
        "standard input into the data directory",
        "journal.json",
        "the catalog record",
        "images.json",
        "index.json",
    ]
    .into_iter()
    .find(|step| stderr.contains(step))
    .unwrap_or_else(|| panic!("{context}: an unexpected step: {stderr}"))
}

/// Regression: an upload that ran out of space reached SFTP clients as a bare `Failure`
/// (OpenSSH prints only the status code), and only at CLOSE, once the whole file was sent.
#[test]
fn uploads_to_a_running_server_that_run_out_of_space_fail_clearly_and_leave_nothing() {
    let mut s = ServerOnTmpfs::start("16m", |_| String::new());
    let dir = area(&s.t, "alice");
    let earlier = s.t.file("earlier.bin");
    random_file(&earlier, 300_000, 1);
    let output = s.publisher.scp(&[], &[&earlier], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let big = s.t.file("big.bin");
    random_file(&big, 4 << 20, 2);

    // Room for a quarter of the file: each upload starts, then runs out of space.
    let room = 1 << 20;
    let uploads: [(&str, &dyn Fn() -> Output); 3] = [
        ("scp (SFTP)", &|| s.publisher.scp(&[], &[&big], "")),
        ("sftp put", &|| {
            s.publisher.sftp_batch(s.t.path(), "put big.bin\n")
        }),
        ("scp -O", &|| s.publisher.scp_legacy(&[&big], "")),
    ];
    for (how, upload) in uploads {
        s.leave_room(room);
        let output = upload();
        assert!(!output.status.success(), "{how}: it cannot have fit");
        // One line from the server says what happened, whatever the client adds around it.
        assert_eq!(
            disk_full_lines(&output),
            [
                "simplestream-server: upload failed: /big.bin: the server's disk is full; nothing was kept, try again once space is freed"
            ],
            "{how}: {}",
            text(&output.stderr)
        );
        // The partial upload goes (with the room it took); the earlier upload is untouched.
        wait_until(Duration::from_secs(10), "the partial upload to go", || {
            (names_in(&dir) == ["earlier.bin"] && s.mount.available() + 16384 >= room).then_some(())
        });
        assert_eq!(
            std::fs::read(dir.join("earlier.bin")).unwrap(),
            std::fs::read(&earlier).unwrap(),
            "{how}"
        );
        let listed = s.publisher.ok("uploads");
        assert!(
            listed.contains("earlier.bin") && !listed.contains("big.bin"),
            "{how}: {listed}"
        );
    }

    // Space is back: the same server takes the upload by each door, and an import.
    s.free_space();
    for (how, upload) in uploads {
        let output = upload();
        assert!(output.status.success(), "{how}: {}", text(&output.stderr));
        assert_eq!(
            std::fs::read(dir.join("big.bin")).unwrap(),
            std::fs::read(&big).unwrap()
        );
    }
    let (meta, root) = split_image(s.t.path(), "after");
    let output = s.publisher.scp(&[], &[&meta, &root], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    s.publisher.ok("import after.tar.xz after.squashfs");
    let served = s.served();
    assert!(
        served
            .files
            .values()
            .any(|bytes| *bytes == std::fs::read(&root).unwrap()),
        "the new image is served"
    );
    invariants::assert_whole(&s.t.data(), "after the uploads");
    s.assert_same_server_running();
}

/// Regression: `import -` whose staging copy ran out of space said that standard input was
/// "truncated or corrupt".
#[test]
fn imports_on_a_running_server_that_run_out_of_space_keep_the_tree_served() {
    // The audit log lives off the tmpfs, so that the room left is exactly what a test leaves.
    let mut s = ServerOnTmpfs::start("24m", |t| {
        format!(
            "[ssh]\naudit_log = \"{}\"\n",
            t.path().join("audit.log").display()
        )
    });
    let dir = area(&s.t, "alice");
    let (meta, root) = split_image(s.t.path(), "first");
    let output = s.publisher.scp(&[], &[&meta, &root], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    s.publisher.ok("import first.tar.xz first.squashfs");
    let before = s.served();
    assert_eq!(before.files.len(), 2);

    // The staging copy runs out: a unified tarball from standard input, larger than the room.
    let unified = s.t.file("big.tar.gz");
    let mut blob = vec![0u8; 3 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let yaml = Meta {
        release: "big",
        ..Meta::default()
    }
    .yaml();
    support::tarball(
        &unified,
        &[
            ("metadata.yaml", yaml.as_bytes()),
            ("rootfs/", b""),
            ("rootfs/blob", &blob),
        ],
        "gz",
    );
    let bytes = std::fs::read(&unified).unwrap();
    s.leave_room(1 << 20);
    let output = s.publisher.ssh_with_stdin("import -", &bytes);
    assert_eq!(
        import_failed_for_room(&output, "import -"),
        "standard input into the data directory"
    );
    assert!(
        names_in(&s.t.data().join("tmp")).is_empty(),
        "staged files left behind"
    );
    s.assert_still_served(&before, "staging ran out");

    // The JSON publication runs out: the files of a split image take no room to stage (they
    // are moved from the upload area), so leaving less and less room, a page at a time, makes
    // the small writes after them fail one by one: the journal, the record, the stream files.
    s.free_space();
    let (meta, root) = split_image(s.t.path(), "second");
    let output = s.publisher.scp(&[], &[&meta, &root], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let page = 4096;
    let mut steps = Vec::new();
    for pages in 0..16u64 {
        s.leave_room(pages * page);
        let output = s.publisher.ssh("import second.tar.xz second.squashfs");
        if output.status.success() {
            steps.push("published");
            break;
        }
        let context = format!("{pages} pages free");
        steps.push(import_failed_for_room(&output, &context));
        assert_eq!(
            names_in(&dir),
            ["second.squashfs", "second.tar.xz"],
            "{context}: a failed import keeps the uploads"
        );
        assert!(
            names_in(&s.t.data().join("tmp")).is_empty(),
            "{context}: staged files left behind"
        );
        assert!(
            !s.t.data().join("state/journal.json").exists(),
            "{context}: a journal left behind"
        );
        s.assert_still_served(&before, &context);
    }
    eprintln!("steps: {steps:?}");
    for step in ["journal.json", "images.json", "index.json", "published"] {
        assert!(
            steps.contains(&step),
            "no import stopped at {step}: {steps:?}"
        );
    }
    assert_eq!(s.served().files.len(), 4);

    // Space is back: the same server takes an upload and an import, and serves the image.
    s.free_space();
    let (meta, root) = split_image(s.t.path(), "third");
    let output = s.publisher.scp(&[], &[&meta, &root], "");
    assert!(output.status.success(), "{}", text(&output.stderr));
    s.publisher.ok("import third.tar.xz third.squashfs");
    let output = s.publisher.ssh_with_stdin("import -", &bytes);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let served = s.served();
    assert_eq!(served.files.len(), 7);
    assert!(
        served
            .files
            .values()
            .any(|b| *b == std::fs::read(&root).unwrap())
    );
    assert!(served.files.values().any(|b| *b == bytes));
    assert_eq!(
        invariants::assert_whole(&s.t.data(), "space is back").len(),
        4
    );
    s.assert_same_server_running();
}

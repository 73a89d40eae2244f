//! A real full disk (a small tmpfs as the data directory): an import that runs out of space
//! fails with one clear line at whatever step the space ran out (staging the files, the
//! journal, the record, or the stream JSON), the published tree stays whole, and once space
//! returns the next import works.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::contract::assert_contract;
use support::{Meta, TestDir, Tmpfs, invariants};

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

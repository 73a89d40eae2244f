//! Crash torture: writers are SIGKILLed at random moments and after every kill the published
//! tree must be whole: both JSON files parse and meet the contract, every referenced file
//! matches its size and hashes, nothing partial is visible under www/, the record and the JSON
//! agree (`verify` exits 0), and every change that reported success before the kill stands.
//! The seed is printed; `TORTURE_SEED=<n>` replays a run, `TORTURE_KILLS=<n>` sets its length.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::contract::assert_contract;
use support::{Meta, TestDir};

/// A small xorshift generator: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("TORTURE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        eprintln!("torture seed: {seed} (replay with TORTURE_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn kills() -> usize {
    std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// A split image with a root big enough that an import takes a while to read.
struct Candidate {
    metadata: PathBuf,
    root: PathBuf,
    serial: String,
    fingerprint: String,
}

fn candidates(t: &TestDir, count: usize) -> Vec<Candidate> {
    let mksquashfs = support::require_tool("mksquashfs", "squashfs-tools");
    (0..count)
        .map(|i| {
            let tree = t.path().join(format!("tree{i}"));
            std::fs::create_dir_all(&tree).unwrap();
            // Incompressible content so the squashfs is as large as the data.
            let mut data = vec![0u8; 12 << 20];
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
            for chunk in data.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(tree.join("blob"), &data).unwrap();
            let root = t.file(&format!("root{i}.squashfs"));
            let status = std::process::Command::new(&mksquashfs)
                .arg(&tree)
                .arg(&root)
                .args([
                    "-noappend",
                    "-quiet",
                    "-no-progress",
                    "-noI",
                    "-noD",
                    "-noF",
                    "-noX",
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            std::fs::remove_dir_all(&tree).unwrap();
            let metadata = t.file(&format!("meta{i}.tar.xz"));
            support::metadata_tarball(
                &metadata,
                &Meta {
                    release: if i % 2 == 0 { "1" } else { "2" },
                    ..Meta::default()
                },
            );
            let fingerprint = support::sha256_of(&[&metadata, &root]);
            Candidate {
                metadata,
                root,
                serial: format!("2025010{}_0000", 1 + i % 9),
                fingerprint,
            }
        })
        .collect()
}

fn published(t: &TestDir) -> BTreeSet<String> {
    let text = t.ok(&["list", "--format", "json"]);
    let images: serde_json::Value = serde_json::from_str(&text).unwrap();
    images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap().to_string())
        .collect()
}

/// The invariants that must hold after any kill.
fn assert_whole(
    t: &TestDir,
    must_exist: &BTreeSet<String>,
    must_be_gone: &BTreeSet<String>,
    context: &str,
) {
    // `verify` opens the catalog, which first finishes whatever the killed writer left.
    let verify = t.run(&["verify"]);
    assert!(
        verify.status.success(),
        "{context}: verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let images = assert_contract(&t.www());
    let now: BTreeSet<String> = images.iter().map(|i| i.fingerprint.clone()).collect();
    assert_eq!(
        now,
        published(t),
        "{context}: the JSON and the record agree"
    );
    for fingerprint in must_exist {
        assert!(
            now.contains(fingerprint),
            "{context}: {fingerprint} reported published but is gone"
        );
    }
    for fingerprint in must_be_gone {
        assert!(
            !now.contains(fingerprint),
            "{context}: {fingerprint} reported removed but is back"
        );
    }
    assert!(
        !t.data().join("state/journal.json").exists(),
        "{context}: the journal was not finished"
    );
    for (path, _) in t.snapshot_www() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.starts_with('.') && !name.contains("stage-") && !name.contains("write-"),
            "{context}: a temp file is visible: {}",
            path.display()
        );
    }
}

#[test]
fn the_cli_killed_at_random_moments_never_breaks_the_tree() {
    let t = TestDir::new();
    let mut rng = Rng::from_env();
    let pool = candidates(&t, 8);
    let mut must_exist = BTreeSet::new();
    // Two images to start with, so removals and prunes have something to work on.
    for c in &pool[..2] {
        t.ok(&[
            "import",
            c.metadata.to_str().unwrap(),
            c.root.to_str().unwrap(),
            "--serial",
            &c.serial,
        ]);
        must_exist.insert(c.fingerprint.clone());
    }
    let mut kills_landed = 0;
    let started = Instant::now();
    for round in 0..kills() {
        let current = published(&t);
        let op = rng.below(10);
        let (args, effect): (Vec<String>, Option<(bool, String)>) = if op < 6 || current.is_empty()
        {
            let c = &pool[rng.below(pool.len() as u64) as usize];
            let args = vec![
                "import".into(),
                c.metadata.display().to_string(),
                c.root.display().to_string(),
                "--serial".into(),
                c.serial.clone(),
            ];
            (args, Some((true, c.fingerprint.clone())))
        } else if op < 8 {
            let victim = current
                .iter()
                .nth(rng.below(current.len() as u64) as usize)
                .unwrap()
                .clone();
            (vec!["remove".into(), victim.clone()], Some((false, victim)))
        } else if op < 9 {
            (vec!["prune".into(), "--keep".into(), "2".into()], None)
        } else {
            (
                vec![
                    "alias".into(),
                    "add".into(),
                    format!("a{round}"),
                    "testos:1:amd64:default".into(),
                ],
                None,
            )
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = t
            .command(&refs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(200_000)));
        let killed = child.kill().is_ok();
        let reported_success = child.wait().unwrap().success();
        if killed && !reported_success {
            kills_landed += 1;
        }
        // What this command may have removed, whether or not it got to report it.
        let mut check_exist = must_exist.clone();
        let mut must_be_gone = BTreeSet::new();
        match (args[0].as_str(), effect) {
            ("import", Some((_, fingerprint))) if reported_success => {
                must_exist.insert(fingerprint.clone());
                check_exist.insert(fingerprint);
            }
            ("remove", Some((_, fingerprint))) => {
                check_exist.remove(&fingerprint);
                if reported_success {
                    must_be_gone.insert(fingerprint);
                }
            }
            ("prune", _) => check_exist.clear(),
            _ => {}
        }
        assert_whole(
            &t,
            &check_exist,
            &must_be_gone,
            &format!("round {round} ({args:?}, killed: {killed})"),
        );
        let now = published(&t);
        must_exist.retain(|fingerprint| now.contains(fingerprint));
    }
    eprintln!(
        "{} rounds, {kills_landed} kills landed mid-command, {:?}",
        kills(),
        started.elapsed()
    );
    assert!(
        kills_landed > 0,
        "no kill landed while a command ran: the test would prove nothing"
    );
}

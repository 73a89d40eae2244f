//! Crash torture: writers are SIGKILLed at random moments and after every kill the published
//! tree must be whole: both JSON files parse and meet the contract, every referenced file
//! matches its size and hashes, nothing partial is visible under www/, the record and the JSON
//! agree (`verify` exits 0), and every change that reported success before the kill stands.
//! The seed is printed; `TORTURE_SEED=<n>` replays a run, `TORTURE_KILLS=<n>` sets its length.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, write_authorized_keys};
use crate::support::{Meta, TestDir, invariants};

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
    (0..count)
        .map(|i| {
            let meta = Meta {
                release: if i % 2 == 0 { "1" } else { "2" },
                ..Meta::default()
            };
            let serial = format!("2025010{}_0000", 1 + i % 9);
            split_image(t, &format!("c{i}"), &meta, 12 << 20, i as u64, serial)
        })
        .collect()
}

/// `<name>.tar.xz` and `<name>.squashfs` in the test directory: a squashfs of `root_bytes`
/// incompressible bytes (as large as its data, so reading it takes a while).
fn split_image(
    t: &TestDir,
    name: &str,
    meta: &Meta,
    root_bytes: usize,
    seed: u64,
    serial: String,
) -> Candidate {
    let mksquashfs = support::require_tool("mksquashfs", "squashfs-tools");
    let tree = t.path().join(format!("tree-{name}"));
    std::fs::create_dir_all(&tree).unwrap();
    let mut data = vec![0u8; root_bytes];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(tree.join("blob"), &data).unwrap();
    let root = t.file(&format!("{name}.squashfs"));
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
    let metadata = t.file(&format!("{name}.tar.xz"));
    support::metadata_tarball(&metadata, meta);
    let fingerprint = support::sha256_of(&[&metadata, &root]);
    Candidate {
        metadata,
        root,
        serial,
        fingerprint,
    }
}

fn published(t: &TestDir) -> BTreeSet<String> {
    invariants::listed(&t.data())
}

/// The invariants that must hold after any kill, plus what reported success before it.
fn assert_whole(
    t: &TestDir,
    must_exist: &BTreeSet<String>,
    must_be_gone: &BTreeSet<String>,
    context: &str,
) {
    // `verify` opens the catalog, which first finishes whatever the killed writer left.
    let images = invariants::assert_whole(&t.data(), context);
    let now: BTreeSet<String> = images.iter().map(|i| i.fingerprint.clone()).collect();
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
}

#[test]
fn the_cli_killed_at_random_moments_never_breaks_the_tree() {
    let _exclusive = support::exclusive();
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

// ---------------------------------------------------------------------------------------
// The running server, killed while SSH clients upload, import, remove and change aliases.

/// What the test knows of a candidate image (or an alias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// A change that reported success left it published (or the alias present).
    Present,
    /// Never published, or a removal that reported success took it out.
    Absent,
    /// A worker is changing it.
    Busy,
    /// A change was cut off by a kill: either outcome is right; the next check finds out.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Workers wait: the server is being killed, checked or restarted.
    Paused,
    Running {
        generation: u64,
        ssh: SocketAddr,
        https: SocketAddr,
    },
    Done,
}

/// An image an uploader publishes again and again.
struct Slot {
    candidate: Candidate,
    uploader: usize,
    known: Known,
    /// Both files were uploaded whole (scp said so) and no import has taken them since: they
    /// must still be in the upload area, whatever was killed.
    uploaded: bool,
}

/// What the kills cut off, by kind of command.
#[derive(Debug, Default)]
struct Cuts {
    uploads: usize,
    imports: usize,
    /// Imports cut off whose image turned out published: the kill came after the commit
    /// point, before the answer reached the client.
    imports_committed: usize,
    removes: usize,
    aliases: usize,
}

#[derive(Debug, Default)]
struct Tally {
    imports: usize,
    removes: usize,
    alias_changes: usize,
    uploads: usize,
    json_reads: usize,
    cut: Cuts,
}

struct Shared {
    phase: Phase,
    /// Workers in the middle of an operation.
    busy: usize,
    /// The last generation killed (set before the SIGKILL).
    killed: u64,
    slots: Vec<Slot>,
    aliases: BTreeMap<String, Known>,
    /// Operations cut off by the current kill (slot indexes of imports, for the tally).
    cut_imports: Vec<usize>,
    cut_this_kill: usize,
    tally: Tally,
    /// Failures while the server was up: bugs.
    failures: Vec<String>,
}

struct Torture {
    shared: Mutex<Shared>,
    wake: Condvar,
}

/// What a worker got to do.
struct Turn {
    generation: u64,
    ssh: SocketAddr,
    https: SocketAddr,
}

impl Torture {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the workers home.
    fn end(&self) {
        self.lock().phase = Phase::Done;
        self.wake.notify_all();
    }

    /// Waits for a running server, then lets `choose` pick the work under the lock. `None`
    /// when the torture is over.
    fn next<T>(&self, mut choose: impl FnMut(&mut Shared) -> T) -> Option<(Turn, T)> {
        let mut shared = self.lock();
        loop {
            match shared.phase {
                Phase::Done => return None,
                Phase::Paused => {
                    shared = self
                        .wake
                        .wait(shared)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Phase::Running {
                    generation,
                    ssh,
                    https,
                } => {
                    shared.busy += 1;
                    let work = choose(&mut shared);
                    return Some((
                        Turn {
                            generation,
                            ssh,
                            https,
                        },
                        work,
                    ));
                }
            }
        }
    }

    /// Ends a turn: `record` sees whether the server was killed since it began.
    fn finish(&self, turn: &Turn, record: impl FnOnce(&mut Shared, bool)) {
        let mut shared = self.lock();
        let killed = shared.killed >= turn.generation;
        record(&mut shared, killed);
        shared.busy -= 1;
        self.wake.notify_all();
    }
}

/// A failed client command: while the server was up that is a bug, after the kill it is
/// what the kill does.
fn failed(shared: &mut Shared, killed: bool, what: &str, output: &std::process::Output) -> bool {
    if !killed {
        shared.failures.push(format!(
            "{what} failed while the server was up: exit {:?}, stdout {:?}, stderr {:?}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    } else {
        shared.cut_this_kill += 1;
    }
    killed
}

const BASE_PRODUCT: &str = "testos:base:amd64:default";
const ALIASES: [&str; 4] = ["t0", "t1", "t2", "t3"];

/// One publisher: uploads an image it has not published (`scp`, or `scp -O`), then imports
/// it over ssh.
fn uploader(torture: &Torture, index: usize, key: &Key, mut rng: Rng) {
    loop {
        let Some((turn, slot)) = torture.next(|shared| {
            let mine: Vec<usize> = (0..shared.slots.len())
                .filter(|&i| {
                    shared.slots[i].uploader == index && shared.slots[i].known == Known::Absent
                })
                .collect();
            let slot = (!mine.is_empty()).then(|| mine[rng.below(mine.len() as u64) as usize]);
            if let Some(slot) = slot {
                shared.slots[slot].known = Known::Busy;
            }
            slot
        }) else {
            return;
        };
        let client = Client::new(turn.ssh, key);
        let Some(slot) = slot else {
            // Everything of ours is published: read something instead, until the admin
            // removes one.
            let output = client.ssh("uploads");
            torture.finish(&turn, |shared, killed| {
                if !output.status.success() {
                    failed(shared, killed, "uploads", &output);
                }
            });
            continue;
        };
        let (metadata, root, serial, fingerprint) = {
            let shared = torture.lock();
            let c = &shared.slots[slot].candidate;
            (
                c.metadata.clone(),
                c.root.clone(),
                c.serial.clone(),
                c.fingerprint.clone(),
            )
        };
        let legacy = rng.below(2) == 0;
        let extra: &[&str] = if legacy { &["-O"] } else { &[] };
        let upload = client.scp(extra, &[&metadata, &root], "");
        let mut cut = false;
        {
            let mut shared = torture.lock();
            let killed = shared.killed >= turn.generation;
            if upload.status.success() {
                shared.tally.uploads += 1;
                shared.slots[slot].uploaded = true;
            } else {
                let what = if legacy { "scp -O" } else { "scp" };
                if failed(&mut shared, killed, what, &upload) {
                    shared.tally.cut.uploads += 1;
                }
                cut = true;
            }
            if !cut {
                // From here the import may move the files out of the upload area.
                shared.slots[slot].uploaded = false;
            }
        }
        if cut {
            torture.finish(&turn, |shared, _| shared.slots[slot].known = Known::Absent);
            continue;
        }
        let name = |path: &PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
        let output = client.ssh(&format!(
            "import {} {} --serial {serial}",
            name(&metadata),
            name(&root)
        ));
        torture.finish(&turn, |shared, killed| {
            let stdout = String::from_utf8_lossy(&output.stdout);
            if output.status.success() {
                let reported = stdout
                    .trim_start_matches("already ")
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default();
                if reported != fingerprint {
                    shared.failures.push(format!(
                        "import reported {stdout:?}, expected {fingerprint}"
                    ));
                }
                shared.tally.imports += 1;
                shared.slots[slot].known = Known::Present;
            } else if failed(shared, killed, "import", &output) {
                shared.tally.cut.imports += 1;
                shared.cut_imports.push(slot);
                shared.slots[slot].known = Known::Unknown;
            } else {
                shared.slots[slot].known = Known::Unknown;
            }
        });
    }
}

/// The admin: removes published images and adds and removes aliases of the base product.
fn admin(torture: &Torture, key: &Key, mut rng: Rng) {
    enum Work {
        Remove(usize),
        Alias(&'static str, bool),
    }
    loop {
        let Some((turn, work)) = torture.next(|shared| {
            let published: Vec<usize> = (0..shared.slots.len())
                .filter(|&i| shared.slots[i].known == Known::Present)
                .collect();
            if !published.is_empty() && rng.below(2) == 0 {
                let slot = published[rng.below(published.len() as u64) as usize];
                shared.slots[slot].known = Known::Busy;
                return Work::Remove(slot);
            }
            let name = ALIASES[rng.below(ALIASES.len() as u64) as usize];
            let add = shared.aliases[name] == Known::Absent;
            shared.aliases.insert(name.to_string(), Known::Busy);
            Work::Alias(name, add)
        }) else {
            return;
        };
        let client = Client::new(turn.ssh, key);
        match work {
            Work::Remove(slot) => {
                let fingerprint = torture.lock().slots[slot].candidate.fingerprint.clone();
                let output = client.ssh(&format!("remove {fingerprint}"));
                torture.finish(&turn, |shared, killed| {
                    shared.slots[slot].known = if output.status.success() {
                        shared.tally.removes += 1;
                        Known::Absent
                    } else {
                        if failed(shared, killed, "remove", &output) {
                            shared.tally.cut.removes += 1;
                        }
                        Known::Unknown
                    };
                });
            }
            Work::Alias(name, add) => {
                let command = if add {
                    format!("alias add {name} {BASE_PRODUCT}")
                } else {
                    format!("alias remove {name}")
                };
                let output = client.ssh(&command);
                torture.finish(&turn, |shared, killed| {
                    let known = if output.status.success() {
                        shared.tally.alias_changes += 1;
                        if add { Known::Present } else { Known::Absent }
                    } else {
                        if failed(shared, killed, &command, &output) {
                            shared.tally.cut.aliases += 1;
                        }
                        Known::Unknown
                    };
                    shared.aliases.insert(name.to_string(), known);
                });
            }
        }
    }
}

/// A reader over HTTPS: every answer for the stream files is whole JSON.
fn reader(torture: &Torture, cert: &Path) {
    loop {
        let Some((turn, ())) = torture.next(|_| ()) else {
            return;
        };
        let client = support::http::Client::new(turn.https, cert);
        let mut problems = Vec::new();
        for path in ["/streams/v1/index.json", "/streams/v1/images.json"] {
            match client.try_request("GET", path, &[]) {
                Ok(response) if response.status == 200 => {
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&response.body) {
                        problems.push(format!("GET {path}: not whole JSON ({e})"));
                    }
                }
                Ok(response) => problems.push(format!("GET {path}: status {}", response.status)),
                // Refused or cut: only the kill may do that.
                Err(e) => problems.push(format!("GET {path}: {e}")),
            }
        }
        torture.finish(&turn, |shared, killed| {
            shared.tally.json_reads += 1;
            if !killed {
                shared.failures.extend(problems);
            }
        });
        // The reader paces itself; the publishers do the heavy work.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The grace period of a server generation: 0 deletes a removed image's files in the
/// removing transaction, an hour keeps them (and lets an import take them back).
fn start_generation(t: &TestDir, rng: &mut Rng) -> Server {
    let grace = if rng.below(2) == 0 { "0" } else { "3600" };
    Server::start(t, &["--grace-period", grace])
}

/// The name an alias has in the served stream, for the base product.
fn served_aliases(t: &TestDir) -> BTreeSet<String> {
    let images = t.read_json("streams/v1/images.json");
    images["products"][BASE_PRODUCT]["aliases"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter(|a| ALIASES.contains(a))
        .map(str::to_string)
        .collect()
}

/// Checks everything after a kill, once the next server is up (it recovered the tree when it
/// opened the catalog), and settles what the kill left unknown.
fn check_after_restart(t: &TestDir, shared: &mut Shared, context: &str) {
    assert!(
        shared.failures.is_empty(),
        "{context}: {}",
        shared.failures.join("\n")
    );
    assert!(
        invariants::journal_finished(&t.data()),
        "{context}: the restarted server did not finish the journal"
    );
    // The restarted server removed the temp files of cut uploads; every file still in an
    // upload area is one the client sent whole.
    let incoming = t.data().join("incoming");
    for path in invariants::files_under(&incoming) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.'),
            "{context}: a temp file of a cut upload is left: {}",
            path.display()
        );
        let source = t.file(&name);
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(&source).unwrap(),
            "{context}: {} is not the file that was uploaded",
            path.display()
        );
    }
    for slot in &shared.slots {
        if slot.uploaded {
            let user = if slot.uploader == 0 { "alice" } else { "bob" };
            for file in [&slot.candidate.metadata, &slot.candidate.root] {
                let name = file.file_name().unwrap();
                assert!(
                    incoming.join(user).join(name).exists(),
                    "{context}: {name:?} was uploaded, never imported, and is gone"
                );
            }
        }
    }

    let images = invariants::assert_whole(&t.data(), context);
    let now: BTreeSet<String> = images.iter().map(|i| i.fingerprint.clone()).collect();
    for (index, slot) in shared.slots.iter_mut().enumerate() {
        let published = now.contains(&slot.candidate.fingerprint);
        match slot.known {
            Known::Present => assert!(
                published,
                "{context}: {} reported published but is gone",
                slot.candidate.fingerprint
            ),
            Known::Absent => assert!(
                !published,
                "{context}: {} reported removed (or never published) but is there",
                slot.candidate.fingerprint
            ),
            Known::Unknown => {
                if published && shared.cut_imports.contains(&index) {
                    shared.tally.cut.imports_committed += 1;
                }
                slot.known = if published {
                    Known::Present
                } else {
                    Known::Absent
                };
            }
            Known::Busy => panic!("{context}: a worker still holds a slot"),
        }
    }
    shared.cut_imports.clear();

    let aliases_output = t.ok(&["alias", "list", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&aliases_output).unwrap();
    let recorded: BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["product"] == BASE_PRODUCT)
        .filter_map(|row| row["alias"].as_str())
        .filter(|alias| ALIASES.contains(alias))
        .map(str::to_string)
        .collect();
    assert_eq!(
        recorded,
        served_aliases(t),
        "{context}: the record and the stream give the base product the same aliases"
    );
    for (name, known) in shared.aliases.iter_mut() {
        let present = recorded.contains(name);
        match known {
            Known::Present => assert!(present, "{context}: alias {name} was added but is gone"),
            Known::Absent => assert!(!present, "{context}: alias {name} was removed but is back"),
            Known::Unknown => {
                *known = if present {
                    Known::Present
                } else {
                    Known::Absent
                }
            }
            Known::Busy => panic!("{context}: a worker still holds alias {name}"),
        }
    }
}

#[test]
fn the_server_killed_at_random_moments_never_breaks_the_tree() {
    let _exclusive = support::exclusive();
    let t = TestDir::new();
    let mut rng = Rng::from_env();
    let alice = Key::new(&t, "alice");
    let bob = Key::new(&t, "bob");
    let root = Key::new(&t, "root");
    write_authorized_keys(
        &t,
        &[alice.line(""), bob.line(""), root.line(r#"role="admin""#)],
    );
    // The base product carries the aliases the admin changes; it is never removed.
    let base = split_image(
        &t,
        "base",
        &Meta {
            release: "base",
            ..Meta::default()
        },
        64 << 10,
        99,
        "20250101_0000".into(),
    );
    t.ok(&[
        "import",
        base.metadata.to_str().unwrap(),
        base.root.to_str().unwrap(),
    ]);
    // Three versions of one product per uploader, 4 MiB roots: an upload and an import each
    // take long enough for kills to land in them.
    let mut slots = Vec::new();
    for (uploader, release) in ["u0", "u1"].into_iter().enumerate() {
        for version in 0..3 {
            let candidate = split_image(
                &t,
                &format!("{release}-v{version}"),
                &Meta {
                    release,
                    ..Meta::default()
                },
                1 << 20,
                (uploader * 10 + version) as u64,
                format!("2025020{}_0000", version + 1),
            );
            slots.push(Slot {
                candidate,
                uploader,
                known: Known::Absent,
                uploaded: false,
            });
        }
    }
    let torture = Torture {
        shared: Mutex::new(Shared {
            phase: Phase::Paused,
            busy: 0,
            killed: 0,
            slots,
            aliases: ALIASES
                .iter()
                .map(|a| (a.to_string(), Known::Absent))
                .collect(),
            cut_imports: Vec::new(),
            cut_this_kill: 0,
            tally: Tally::default(),
            failures: Vec::new(),
        }),
        wake: Condvar::new(),
    };
    let cert = t.data().join("tls/server.crt");
    let seeds: Vec<u64> = (0..3).map(|_| rng.next()).collect();
    let started = Instant::now();
    let mut kills_landed = 0;
    std::thread::scope(|scope| {
        scope.spawn(|| uploader(&torture, 0, &alice, Rng(seeds[0] | 1)));
        scope.spawn(|| uploader(&torture, 1, &bob, Rng(seeds[1] | 1)));
        scope.spawn(|| admin(&torture, &root, Rng(seeds[2] | 1)));
        scope.spawn(|| reader(&torture, &cert));

        // However the checks below end (a failed assertion included), the workers go home,
        // or the scope would wait for them forever.
        struct EndOnDrop<'a>(&'a Torture);
        impl Drop for EndOnDrop<'_> {
            fn drop(&mut self) {
                self.0.end();
            }
        }
        let _end = EndOnDrop(&torture);
        let mut server = start_generation(&t, &mut rng);
        for (round, generation) in (0..kills()).zip(1u64..) {
            {
                let mut shared = torture.lock();
                shared.phase = Phase::Running {
                    generation,
                    ssh: server.ssh(),
                    https: server.https(),
                };
                torture.wake.notify_all();
            }
            std::thread::sleep(Duration::from_millis(rng.below(1500)));
            {
                let mut shared = torture.lock();
                shared.killed = generation;
                shared.phase = Phase::Paused;
            }
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            let context = format!("round {round} (generation {generation})");
            {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut shared = torture.lock();
                while shared.busy > 0 {
                    assert!(
                        Instant::now() < deadline,
                        "{context}: workers still busy after the kill"
                    );
                    shared = torture
                        .wake
                        .wait_timeout(shared, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if shared.cut_this_kill > 0 {
                    kills_landed += 1;
                }
                shared.cut_this_kill = 0;
            }
            // What a web server shows right after the kill, before anyone recovers anything.
            invariants::assert_served_whole(&t.data(), &format!("{context}, before recovery"));
            server = start_generation(&t, &mut rng);
            check_after_restart(&t, &mut torture.lock(), &context);
        }
        torture.end();
        let status = server.terminate();
        assert!(status.success(), "serve ended with {status}");
    });
    let tally = &torture.lock().tally;
    eprintln!(
        "{} kills of the server, {kills_landed} landed while a client command ran, {:?}; \
         completed: {} uploads, {} imports, {} removes, {} alias changes, {} JSON reads; \
         cut: {:?}",
        kills(),
        started.elapsed(),
        tally.uploads,
        tally.imports,
        tally.removes,
        tally.alias_changes,
        tally.json_reads,
        tally.cut
    );
    assert!(
        kills_landed > kills() / 2,
        "only {kills_landed} kills landed while a command ran: the test proves too little"
    );
    assert!(
        tally.imports > 0 && tally.removes > 0 && tally.cut.imports > 0,
        "the workload did too little: {tally:?}"
    );
}

//! What must hold of a data directory whatever happened to its writers (a SIGKILL, a full
//! disk): the published tree is whole, nothing half-written shows under `www/`, and the record
//! and the stream agree. Shared by the crash torture and the disk-full tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::contract::{Moment, PublishedImage, assert_contract_at};

/// Runs the binary on the data directory `data`.
pub fn run(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(super::bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("SIMPLESTREAM_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run simplestream-server")
}

/// Fingerprints the record holds, as `list --format json` prints them.
pub fn listed(data: &Path) -> BTreeSet<String> {
    let output = run(data, &["list", "--format", "json"]);
    assert!(
        output.status.success(),
        "list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let images: serde_json::Value = serde_json::from_slice(&output.stdout).expect("list JSON");
    images
        .as_array()
        .expect("a list")
        .iter()
        .map(|image| {
            image["fingerprint"]
                .as_str()
                .expect("a fingerprint")
                .to_string()
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// No temp or partial file shows under `www/`: catalog temps (`stage-…`, `write-…`) live in
/// `tmp/`, upload temps (`.upload-…`) in `incoming/`, and nothing hidden is ever published.
pub fn assert_no_temp_in_www(www: &Path, context: &str) {
    for path in files_under(www) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            !name.starts_with('.') && !name.contains("stage-") && !name.contains("write-"),
            "{context}: a temp file is visible: {}",
            path.display()
        );
    }
}

/// The tree in `data` right after a writer died, before anyone recovered it: what an HTTP
/// server shows at that moment. Both JSON files are whole and meet the contract (the index
/// may not yet list a product that was arriving: [`Moment::Interrupted`]), every file they
/// name is there with its size and hashes, and no temp file shows.
pub fn assert_served_whole(data: &Path, context: &str) -> Vec<PublishedImage> {
    assert_www(data, context, Moment::Interrupted)
}

/// No temp file under `data/www` and the contract holds there at `moment`.
fn assert_www(data: &Path, context: &str, moment: Moment) -> Vec<PublishedImage> {
    let www = data.join("www");
    assert_no_temp_in_www(&www, context);
    assert_contract_at(&www, moment)
}

/// No journal is left in `data`, looked at under the writer lock: a running server's own
/// change (its delta maker) holds the lock while its journal exists, and is waited for.
pub fn journal_finished(data: &Path) -> bool {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join("state/lock"))
        .unwrap();
    lock.lock().unwrap();
    !data.join("state/journal.json").exists()
}

/// The tree in `data` once a writer has recovered it (any command opening the catalog does):
/// [`assert_served_whole`] with every publication finished ([`Moment::AtRest`]), `verify`
/// exits 0, the journal is finished and the record and the stream name the same images.
/// Returns the published images.
pub fn assert_whole(data: &Path, context: &str) -> Vec<PublishedImage> {
    let verify = run(data, &["verify"]);
    assert!(
        verify.status.success(),
        "{context}: verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        journal_finished(data),
        "{context}: the journal was not finished"
    );
    let images = assert_www(data, context, Moment::AtRest);
    let in_stream: BTreeSet<String> = images.iter().map(|i| i.fingerprint.clone()).collect();
    assert_eq!(
        in_stream,
        listed(data),
        "{context}: the stream and the record name the same images"
    );
    images
}

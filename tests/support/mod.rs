//! Helpers shared by the end-to-end tests: a private data directory per test, real image
//! fixtures built with the real tools (tar + xz, mksquashfs, qemu-img), and the binary.
//! tests/main.rs declares it once; each area module uses what it needs from `crate::support`.
#![allow(dead_code)]

pub mod clients;
pub mod contract;
pub mod garage;
pub mod http;
pub mod invariants;
pub mod lxd_daemon;
pub mod net;
pub mod raw_ssh;
pub mod server;
pub mod ssh;
pub mod upstream;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_simplestream-server"))
}

/// Fails the test with an install hint when a tool the tests drive is missing. Never skips:
/// `tests/run` installs every tool, and a missing one is a broken machine.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let candidate = Path::new(dir).join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed; run `apt-get install {package}`, or tests/run, which installs what is missing"
    );
}

/// Held by tests that must not overlap one another now that every area runs in one process
/// (as separate binaries, cargo ran them one after another): the LXD daemon, the CPU-bound
/// torture runs and the timed floods. A test that panics while holding it does not block the
/// rest.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    EXCLUSIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `check` until it returns Some or `timeout` passes. Never a blind sleep.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary working directory with a data directory inside.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("sss-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn www(&self) -> PathBuf {
        self.data().join("www")
    }

    /// Runs the binary with `--data-dir` set; stdin is empty.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run simplestream-server")
    }

    /// Runs the binary and feeds `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn simplestream-server");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait");
        writer.join().expect("stdin writer");
        output
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin());
        command
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("SIMPLESTREAM_DATA_DIR");
        command
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs and asserts failure with `code`; returns the stderr, asserted to be one line.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: error must be one line: {stderr:?}"
        );
        stderr.trim_end().to_string()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn read_json(&self, relative: &str) -> serde_json::Value {
        let bytes = std::fs::read(self.www().join(relative)).expect("read JSON");
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    /// Every regular file under www/ with its content, for "nothing changed" assertions.
    pub fn snapshot_www(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut pending = vec![self.www()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let content = std::fs::read(&path).expect("read");
                    files.push((path, content));
                }
            }
        }
        files.sort();
        files
    }
}

/// What goes into a fixture's metadata.yaml.
#[derive(Clone, Debug)]
pub struct Meta {
    pub arch: &'static str,
    pub os: &'static str,
    pub release: &'static str,
    pub variant: Option<&'static str>,
    pub created: i64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            arch: "x86_64",
            os: "testos",
            release: "1",
            variant: Some("default"),
            created: 1_764_244_800,
        }
    }
}

impl Meta {
    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "architecture: {}\ncreation_date: {}\nproperties:\n  os: {}\n  release: \"{}\"\n  description: {} {} test image\n",
            self.arch, self.created, self.os, self.release, self.os, self.release
        );
        if let Some(variant) = self.variant {
            yaml.push_str(&format!("  variant: {variant}\n"));
        }
        yaml.push_str(
            "templates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n",
        );
        yaml
    }
}

/// A tar of named entries, compressed with `compression` ("xz", "gz", "bz2", "zst" or "").
pub fn tarball(path: &Path, entries: &[(&str, &[u8])], compression: &str) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_764_244_800);
        if name.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        }
        builder
            .append_data(&mut header, name, *data)
            .expect("tar entry");
    }
    let tar = builder.into_inner().expect("tar");
    std::fs::write(path, compress(&tar, compression)).expect("write tarball");
}

/// Compresses with the real command-line tool, as a publisher's build would.
pub fn compress(data: &[u8], compression: &str) -> Vec<u8> {
    let tool = match compression {
        "" => return data.to_vec(),
        "xz" => "xz",
        "gz" => "gzip",
        "bz2" => "bzip2",
        "zst" => "zstd",
        other => panic!("unknown compression {other}"),
    };
    require_tool(tool, if tool == "xz" { "xz-utils" } else { tool });
    let mut child = Command::new(tool)
        .args(["-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn compressor");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("compressor");
    writer.join().expect("writer").expect("write to compressor");
    assert!(output.status.success(), "{tool} failed");
    output.stdout
}

/// A split metadata tarball (xz) for `meta`.
pub fn metadata_tarball(path: &Path, meta: &Meta) {
    tarball(
        path,
        &[
            ("metadata.yaml", meta.yaml().as_bytes()),
            ("templates/hostname.tpl", b"{{ container.name }}\n"),
        ],
        "xz",
    );
}

/// A real squashfs built by mksquashfs from a tiny tree; `seed` makes its content unique.
pub fn squashfs(path: &Path, seed: &str) {
    squashfs_with_noise(path, seed, 0);
}

/// [`squashfs`] with a file of `noise` incompressible bytes in it, for an image of some size.
pub fn squashfs_with_noise(path: &Path, seed: &str, noise: usize) {
    let tree = tempfile::tempdir().expect("tree");
    std::fs::create_dir_all(tree.path().join("etc")).expect("etc");
    std::fs::write(tree.path().join("etc/hostname"), format!("{seed}\n")).expect("hostname");
    if noise > 0 {
        let mut state = seed.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let bytes: Vec<u8> = (0..noise)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        std::fs::write(tree.path().join("etc/noise"), bytes).expect("noise");
    }
    squashfs_of(tree.path(), path);
}

/// The squashfs of `tree`, reproducible: owners and times are fixed.
pub fn squashfs_of(tree: &Path, path: &Path) {
    let mksquashfs = require_tool("mksquashfs", "squashfs-tools");
    let status = Command::new(mksquashfs)
        .arg(tree)
        .arg(path)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("mksquashfs");
    assert!(status.success(), "mksquashfs failed");
}

/// A real qcow2 made by qemu-img, with `seed` written into it so contents differ.
pub fn qcow2(path: &Path, seed: &str) {
    let qemu_img = require_tool("qemu-img", "qemu-utils");
    let raw = path.with_extension("raw");
    let mut data = vec![0u8; 1 << 20];
    data[..seed.len()].copy_from_slice(seed.as_bytes());
    std::fs::write(&raw, &data).expect("raw");
    let status = Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img failed");
    std::fs::remove_file(raw).expect("remove raw");
}

/// A root.tar.xz with one file.
pub fn root_tar_xz(path: &Path, seed: &str) {
    tarball(
        path,
        &[
            ("etc/", b""),
            ("etc/hostname", format!("{seed}\n").as_bytes()),
        ],
        "xz",
    );
}

/// A unified tarball: metadata.yaml plus rootfs/ (container) or rootfs.img (qcow2, VM).
pub fn unified_tarball(path: &Path, meta: &Meta, vm: bool, seed: &str) {
    let yaml = meta.yaml();
    if vm {
        let disk = path.with_extension("qcow2-src");
        qcow2(&disk, seed);
        let image = std::fs::read(&disk).expect("disk");
        std::fs::remove_file(&disk).expect("remove disk");
        tarball(
            path,
            &[("metadata.yaml", yaml.as_bytes()), ("rootfs.img", &image)],
            "gz",
        );
    } else {
        let hostname = format!("{seed}\n");
        tarball(
            path,
            &[
                ("metadata.yaml", yaml.as_bytes()),
                ("rootfs/", b""),
                ("rootfs/etc/", b""),
                ("rootfs/etc/hostname", hostname.as_bytes()),
            ],
            "gz",
        );
    }
}

/// sha256 of the concatenation of files, lowercase hex: how clients check a fingerprint.
pub fn sha256_of(paths: &[&Path]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for path in paths {
        hasher.update(std::fs::read(path).expect("read"));
    }
    hex::encode(hasher.finalize())
}

/// A small tmpfs mounted for a test (a real ENOSPC), unmounted on drop. Needs root, as CI is.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "the disk-full tests mount a tmpfs and must run as root (CI does)"
        );
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Bytes still free for an unprivileged writer.
    pub fn available(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

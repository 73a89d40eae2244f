//! The real LXD 5.0.2 daemon (Debian's `lxd` package), private and offline: its own LXD_DIR,
//! LXD_CONF and HOME, outside fetches sent to a closed loopback port, one `dir` storage pool.
//! Shut down (containers deleted, mounts released) when dropped. Needs root, as CI is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::sync::MutexGuard;

use super::{exclusive, require_tool};

pub struct LxdDaemon {
    pub root: PathBuf,
    child: Child,
    /// One daemon at a time, and never beside a torture run or a flood; released after `drop`.
    _exclusive: MutexGuard<'static, ()>,
}

impl LxdDaemon {
    pub fn start(root: &Path) -> LxdDaemon {
        let lxd = require_tool("lxd", "lxd");
        require_tool("lxc", "lxd-client");
        assert!(
            rustix::process::geteuid().is_root(),
            "the LXD daemon tests run as root (CI does)"
        );
        let exclusive = exclusive();
        for dir in ["lxd", "conf", "home"] {
            std::fs::create_dir_all(root.join(dir)).expect("daemon dirs");
        }
        let log = std::fs::File::create(root.join("lxd.log")).expect("log file");
        let child = Command::new(&lxd)
            .args(["--group", "root", "--logfile"])
            .arg(root.join("lxd.daemon.log"))
            .envs(Self::env_for(root))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start lxd");
        let daemon = LxdDaemon {
            root: root.to_path_buf(),
            child,
            _exclusive: exclusive,
        };
        let ready = Command::new(&lxd)
            .args(["waitready", "--timeout", "60"])
            .envs(Self::env_for(root))
            .status()
            .expect("lxd waitready");
        assert!(
            ready.success(),
            "lxd did not become ready; see {}",
            root.join("lxd.daemon.log").display()
        );
        let preseed = "storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n";
        let mut init = Command::new(&lxd)
            .args(["init", "--preseed"])
            .envs(Self::env_for(root))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("lxd init");
        std::io::Write::write_all(&mut init.stdin.take().expect("stdin"), preseed.as_bytes())
            .expect("preseed");
        assert!(
            init.wait().expect("lxd init").success(),
            "lxd init --preseed failed"
        );
        daemon
    }

    fn env_for(root: &Path) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("LXD_DIR", root.join("lxd")),
            ("LXD_CONF", root.join("conf")),
            ("HOME", root.join("home")),
        ]
    }

    pub fn conf(&self) -> PathBuf {
        self.root.join("conf")
    }

    /// An `lxc` command talking to this daemon.
    pub fn lxc(&self, args: &[&str]) -> Command {
        let mut command = Command::new("lxc");
        command
            .args(args)
            .envs(Self::env_for(&self.root))
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.lxc(args).output().expect("run lxc")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "lxc {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for LxdDaemon {
    fn drop(&mut self) {
        if let Ok(output) = self.lxc(&["list", "--format", "csv", "-c", "n"]).output() {
            for name in String::from_utf8_lossy(&output.stdout).lines() {
                let _ = self.lxc(&["delete", "-f", name]).output();
            }
        }
        let _ = Command::new("lxd")
            .args(["shutdown", "--timeout", "30"])
            .envs(Self::env_for(&self.root))
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Release anything the daemon left mounted under its directory, deepest first.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(self.root.to_str().unwrap_or("/nonexistent")))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for mount in ours {
                let _ = Command::new("umount").args(["-l", mount]).status();
            }
        }
    }
}

/// A unified image whose rootfs is static busybox with `/sbin/init`: enough for a container to
/// reach RUNNING and answer `lxc exec`.
pub fn busybox_image(dir: &Path, name: &str, created: i64) -> PathBuf {
    let busybox = require_tool("busybox", "busybox-static");
    let tree = dir.join(format!("{name}-tree"));
    let rootfs = tree.join("rootfs");
    for sub in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run",
    ] {
        std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dirs");
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "ls", "cat", "echo", "sleep", "hostname", "mount"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("applet link");
    }
    std::os::unix::fs::symlink("../bin/busybox", rootfs.join("sbin/init")).expect("init link");
    std::fs::write(rootfs.join("etc/inittab"), "::respawn:/bin/sleep 3600\n").expect("inittab");
    std::fs::write(
        tree.join("metadata.yaml"),
        format!("architecture: x86_64\ncreation_date: {created}\nproperties:\n  os: busybox\n  release: \"{name}\"\n  variant: default\n  description: busybox {name} test image\n"),
    )
    .expect("metadata.yaml");
    let image = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-czf")
        .arg(&image)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .expect("tar");
    assert!(status.success(), "tar failed");
    image
}

/// The busybox image `unified` split into a metadata tarball (xz) and a squashfs root, its
/// release renamed to `release`: (metadata, root), in `dir`.
pub fn split_busybox_image(dir: &Path, unified: &Path, release: &str) -> (PathBuf, PathBuf) {
    let tree = dir.join(format!("split-{release}-tree"));
    std::fs::create_dir_all(&tree).expect("split tree");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-xzf")
        .arg(unified)
        .status()
        .expect("tar -x");
    assert!(status.success(), "tar -x failed");
    let yaml = std::fs::read_to_string(tree.join("metadata.yaml")).expect("metadata.yaml");
    let yaml = yaml
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("release:") {
                format!("  release: \"{release}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(tree.join("metadata.yaml"), yaml + "\n").expect("metadata.yaml");
    let meta = dir.join(format!("split-{release}-meta.tar.xz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cJf")
        .arg(&meta)
        .arg("metadata.yaml")
        .status()
        .expect("tar -c");
    assert!(status.success(), "tar -c failed");
    let root = dir.join(format!("split-{release}-root.squashfs"));
    let status = Command::new(require_tool("mksquashfs", "squashfs-tools"))
        .arg(tree.join("rootfs"))
        .arg(&root)
        .args(["-noappend", "-quiet", "-no-progress"])
        .stdout(Stdio::null())
        .status()
        .expect("mksquashfs");
    assert!(status.success(), "mksquashfs failed");
    (meta, root)
}

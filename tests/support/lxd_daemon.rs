//! The real LXD 5.0.2 daemon (Debian's `lxd` package) or Incus 6.0.4 daemon (`incus` from
//! bookworm-backports), private and offline: its own state directory, client configuration
//! and HOME, outside fetches sent to a closed loopback port, one `dir` storage pool. Shut down
//! (containers deleted, mounts released) when dropped. Needs root, as CI is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::sync::MutexGuard;

use super::{exclusive, require_tool};

/// One daemon family: its programs and the variables that keep it private.
struct Flavor {
    name: &'static str,
    /// The daemon program and its package.
    daemon: (&'static str, &'static str),
    /// The client program and its package.
    client: (&'static str, &'static str),
    /// The command that waits for, initialises and stops the daemon: `lxd` itself, `incus admin`.
    admin: &'static [&'static str],
    dir_var: &'static str,
    conf_var: &'static str,
}

const LXD: Flavor = Flavor {
    name: "lxd",
    daemon: ("lxd", "lxd"),
    client: ("lxc", "lxd-client"),
    admin: &["lxd"],
    dir_var: "LXD_DIR",
    conf_var: "LXD_CONF",
};

const INCUS: Flavor = Flavor {
    name: "incus",
    daemon: ("/usr/libexec/incus/incusd", "incus"),
    client: ("incus", "incus-client"),
    admin: &["incus", "admin"],
    dir_var: "INCUS_DIR",
    conf_var: "INCUS_CONF",
};

/// A running daemon; `LxdDaemon::start` and `Daemon::start_incus` start one.
pub struct Daemon {
    pub root: PathBuf,
    flavor: &'static Flavor,
    child: Child,
    /// One daemon at a time, and never beside a torture run or a flood; released after `drop`.
    _exclusive: MutexGuard<'static, ()>,
}

/// The name the LXD tests know it by.
pub type LxdDaemon = Daemon;

impl Daemon {
    /// The LXD 5.0.2 daemon; `lxc` talks to it.
    pub fn start(root: &Path) -> Daemon {
        Self::start_flavor(root, &LXD)
    }

    /// The Incus 6.0.4 daemon; `incus` talks to it.
    pub fn start_incus(root: &Path) -> Daemon {
        Self::start_flavor(root, &INCUS)
    }

    fn start_flavor(root: &Path, flavor: &'static Flavor) -> Daemon {
        let program = require_tool(flavor.daemon.0, flavor.daemon.1);
        require_tool(flavor.client.0, flavor.client.1);
        assert!(
            rustix::process::geteuid().is_root(),
            "the daemon tests run as root (CI does)"
        );
        let exclusive = exclusive();
        for dir in [flavor.name, "conf", "home"] {
            std::fs::create_dir_all(root.join(dir)).expect("daemon dirs");
        }
        let log =
            std::fs::File::create(root.join(format!("{}.log", flavor.name))).expect("log file");
        let daemon_log = root.join(format!("{}.daemon.log", flavor.name));
        let child = Command::new(&program)
            .args(["--group", "root", "--logfile"])
            .arg(&daemon_log)
            .envs(Self::env_for(root, flavor))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", flavor.name));
        let daemon = Daemon {
            root: root.to_path_buf(),
            flavor,
            child,
            _exclusive: exclusive,
        };
        let ready = daemon
            .admin(&["waitready", "--timeout", "60"])
            .status()
            .expect("waitready");
        assert!(
            ready.success(),
            "{} did not become ready; see {}",
            flavor.name,
            daemon_log.display()
        );
        let preseed = "storage_pools:\n- name: default\n  driver: dir\nprofiles:\n- name: default\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n";
        let mut init = daemon
            .admin(&["init", "--preseed"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("init --preseed");
        std::io::Write::write_all(&mut init.stdin.take().expect("stdin"), preseed.as_bytes())
            .expect("preseed");
        assert!(
            init.wait().expect("init --preseed").success(),
            "{} init --preseed failed",
            flavor.name
        );
        daemon
    }

    fn env_for(root: &Path, flavor: &Flavor) -> Vec<(&'static str, PathBuf)> {
        vec![
            (flavor.dir_var, root.join(flavor.name)),
            (flavor.conf_var, root.join("conf")),
            ("HOME", root.join("home")),
        ]
    }

    /// `lxd …` or `incus admin …` for this daemon.
    fn admin(&self, args: &[&str]) -> Command {
        let (program, prefix) = self.flavor.admin.split_first().unwrap_or((&"lxd", &[]));
        let mut command = Command::new(program);
        command
            .args(prefix)
            .args(args)
            .envs(Self::env_for(&self.root, self.flavor));
        command
    }

    /// The daemon's own state directory (LXD_DIR or INCUS_DIR).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(self.flavor.name)
    }

    pub fn conf(&self) -> PathBuf {
        self.root.join("conf")
    }

    /// A client command (`lxc` or `incus`) talking to this daemon.
    pub fn lxc(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.flavor.client.0);
        command
            .args(args)
            .envs(Self::env_for(&self.root, self.flavor))
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.lxc(args).output().expect("run the client")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{} {args:?}: {}",
            self.flavor.client.0,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(output) = self.lxc(&["list", "--format", "csv", "-c", "n"]).output() {
            for name in String::from_utf8_lossy(&output.stdout).lines() {
                let _ = self.lxc(&["delete", "-f", name]).output();
            }
        }
        let _ = self.admin(&["shutdown", "--timeout", "30"]).output();
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

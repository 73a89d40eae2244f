//! The real OpenSSH clients (`ssh`, `scp`, `scp -O`, `sftp -b`) pointed at a running server,
//! each with its own key made by `ssh-keygen`, no user configuration (`-F /dev/null`), no
//! known_hosts and no agent. Every command runs under a deadline: a hung server fails the
//! test instead of hanging it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{TestDir, require_tool};

/// How long one client command may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A key pair made with `ssh-keygen -t ed25519 -N ''` (or another type), its comment naming
/// the user.
#[derive(Clone, Debug)]
pub struct Key {
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA… comment`
    pub public: String,
    pub comment: String,
}

impl Key {
    pub fn new(t: &TestDir, comment: &str) -> Key {
        Key::of_type(t, comment, "ed25519")
    }

    /// A key of `kind` (`ssh-keygen -t`: ed25519, rsa, ecdsa).
    pub fn of_type(t: &TestDir, comment: &str, kind: &str) -> Key {
        let keygen = require_tool("ssh-keygen", "openssh-client");
        let private = t
            .path()
            .join(format!("key-{}", comment.replace(['/', ' '], "_")));
        let status = Command::new(keygen)
            .args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen");
        assert!(status.success(), "ssh-keygen failed");
        let public = std::fs::read_to_string(format!("{}.pub", private.display()))
            .expect("public key")
            .trim()
            .to_string();
        Key {
            private,
            public,
            comment: comment.to_string(),
        }
    }

    /// An `authorized_keys` line with `options` (may be empty) before the key.
    pub fn line(&self, options: &str) -> String {
        if options.is_empty() {
            self.public.clone()
        } else {
            format!("{options} {}", self.public)
        }
    }
}

/// Writes `data/authorized_keys`.
pub fn write_authorized_keys(t: &TestDir, lines: &[String]) {
    std::fs::create_dir_all(t.data()).expect("data dir");
    let mut text = lines.join("\n");
    text.push('\n');
    // Write then rename, as an editor would: the server never sees half a file.
    let temp = t.data().join("authorized_keys.tmp");
    std::fs::write(&temp, text).expect("write authorized_keys");
    std::fs::rename(&temp, t.data().join("authorized_keys")).expect("rename authorized_keys");
}

/// Writes `data/config.toml` (before the server starts).
pub fn write_config(t: &TestDir, text: &str) {
    std::fs::create_dir_all(t.data()).expect("data dir");
    std::fs::write(t.data().join("config.toml"), text).expect("write config.toml");
}

/// A client: a server address and the key to log in with.
pub struct Client {
    pub address: SocketAddr,
    pub key: Key,
    /// The login name: ignored by the server, which goes by the key.
    pub login: String,
    /// The client's LogLevel: ERROR keeps stderr to what the server says.
    pub log_level: &'static str,
}

impl Client {
    pub fn new(address: SocketAddr, key: &Key) -> Client {
        Client {
            address,
            key: key.clone(),
            login: "upload".into(),
            log_level: "ERROR",
        }
    }

    /// Options every client command gets.
    pub fn options(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=20",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            self.key.private.display().to_string(),
            "-o".into(),
            format!("LogLevel={}", self.log_level),
        ])
        .collect()
    }

    fn destination(&self) -> String {
        format!("{}@{}", self.login, self.address.ip())
    }

    /// `ssh -p PORT [extra…] user@host [command]`.
    pub fn ssh_command(&self, extra: &[&str], command: Option<&str>) -> Command {
        let mut cmd = Command::new(require_tool("ssh", "openssh-client"));
        cmd.args(self.options())
            .arg("-p")
            .arg(self.address.port().to_string())
            .args(extra)
            .arg(self.destination());
        if let Some(command) = command {
            cmd.arg(command);
        }
        cmd
    }

    /// Runs `command` over ssh with empty stdin.
    pub fn ssh(&self, command: &str) -> Output {
        run(self.ssh_command(&[], Some(command)), None)
    }

    /// Runs `command` over ssh feeding `input` on stdin.
    pub fn ssh_with_stdin(&self, command: &str, input: &[u8]) -> Output {
        run(self.ssh_command(&[], Some(command)), Some(input))
    }

    /// Runs and asserts exit status 0; returns stdout.
    pub fn ok(&self, command: &str) -> String {
        let output = self.ssh(command);
        assert_eq!(
            output.status.code(),
            Some(0),
            "`{command}` failed: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs and asserts exit status `code` and a one-line stderr; returns that line.
    pub fn fails(&self, command: &str, code: i32) -> String {
        let output = self.ssh(command);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(code),
            "`{command}`: stdout {} stderr {stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "`{command}`: the error must be one line: {stderr:?}"
        );
        stderr.trim_end().to_string()
    }

    /// `scp [extra…] files… user@host:dest` (OpenSSH 9: the SFTP protocol).
    pub fn scp(&self, extra: &[&str], files: &[&Path], dest: &str) -> Output {
        run(self.scp_command(extra, files, dest), None)
    }

    pub fn scp_command(&self, extra: &[&str], files: &[&Path], dest: &str) -> Command {
        let mut cmd = Command::new(require_tool("scp", "openssh-client"));
        cmd.args(self.options())
            .arg("-P")
            .arg(self.address.port().to_string())
            .args(extra)
            .args(files)
            .arg(format!("{}:{dest}", self.destination()));
        cmd
    }

    /// `scp -O …`: the legacy protocol (`scp -t` on the server).
    pub fn scp_legacy(&self, files: &[&Path], dest: &str) -> Output {
        self.scp(&["-O"], files, dest)
    }

    /// `sftp -b batchfile`; a batch stops at the first failing command unless it starts
    /// with `-`.
    pub fn sftp_batch(&self, dir: &Path, batch: &str) -> Output {
        let file = dir.join(format!(
            "batch-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&file, batch).expect("write sftp batch");
        let mut cmd = Command::new(require_tool("sftp", "openssh-client"));
        cmd.args(self.options())
            .arg("-P")
            .arg(self.address.port().to_string())
            .arg("-b")
            .arg(&file)
            .arg(self.destination())
            .current_dir(dir);
        run(cmd, None)
    }
}

/// Runs `cmd` to completion under [`COMMAND_DEADLINE`], feeding `input` on stdin.
pub fn run(mut cmd: Command, input: Option<&[u8]>) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn client");
    let writer = input.map(|input| {
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let output = wait_with_deadline(child, COMMAND_DEADLINE);
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    output
}

/// Collects a child's output, killing it if it outlives `deadline`.
/// Streams not piped come back empty.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a client command ran longer than {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The lines of the audit log that have `event`, parsed.
pub fn audit_events(t: &TestDir, event: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(t.data().join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["event"] == event)
        .collect()
}

/// `data/incoming/<user>/`.
pub fn area(t: &TestDir, user: &str) -> PathBuf {
    t.data().join("incoming").join(user)
}

/// Names in a directory (hidden ones included), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `n` bytes that differ per `seed`.
pub fn random_file(path: &Path, n: usize, seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(n);
    std::fs::write(path, data).expect("write random file");
}

/// Waits for the `refused` audit line of `user`, from 127.0.0.1, whose request contains
/// `request`, and returns it; fails the test when none comes or when it lacks a reason.
pub fn refusal(t: &TestDir, user: &str, request: &str) -> serde_json::Value {
    let found = super::wait_until(
        std::time::Duration::from_secs(10),
        &format!(
            "the audit line refusing {user} {request:?} among {:#?}",
            audit_events(t, "refused")
                .iter()
                .map(|e| format!("{} {} / {}", e["user"], e["request"], e["reason"]))
                .collect::<Vec<_>>()
        ),
        || {
            audit_events(t, "refused").into_iter().find(|e| {
                e["user"] == user
                    && e["request"]
                        .as_str()
                        .is_some_and(|asked| asked.contains(request))
            })
        },
    );
    assert_eq!(found["address"], "127.0.0.1", "{found}");
    assert!(
        found["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{found}"
    );
    found
}

/// The reason of the refusal [`refusal`] finds.
pub fn refusal_reason(t: &TestDir, user: &str, request: &str) -> String {
    refusal(t, user, request)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

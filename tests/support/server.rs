//! A running `serve` on 127.0.0.1 with ephemeral ports, killed when dropped.
//!
//! The server prints `listening <https|ssh> <address>` for each listener and then `ready`;
//! `start` reads those lines (never sleeps) and keeps draining the output afterwards, so a
//! chatty server never blocks on a full pipe.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::TestDir;

pub struct Server {
    pub child: Child,
    pub addresses: HashMap<String, SocketAddr>,
    /// Everything the server wrote to stdout and stderr so far.
    pub output: Arc<Mutex<String>>,
    /// What it wrote to stdout alone: the lines of two pipes interleave in `output` in the
    /// order the readers got them, so a block printed on stdout is only whole here.
    stdout: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `serve` with both listeners on 127.0.0.1:0 plus `extra` arguments.
    pub fn start(t: &TestDir, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve",
            "--https-listen",
            "127.0.0.1:0",
            "--ssh-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::start_with(t.command(&args))
    }

    pub fn start_with(mut command: std::process::Command) -> Server {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout_only = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, tx) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Some((lines_tx, stdout_only.clone())),
            ),
            (Box::new(stderr), None),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output
                        .lock()
                        .expect("output lock")
                        .push_str(&format!("{line}\n"));
                    if let Some((tx, stdout_only)) = &tx {
                        stdout_only
                            .lock()
                            .expect("output lock")
                            .push_str(&format!("{line}\n"));
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let mut addresses = HashMap::new();
        loop {
            match lines_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line == "ready" => break,
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    if let (Some("listening"), Some(proto), Some(addr)) =
                        (words.next(), words.next(), words.next())
                    {
                        addresses
                            .insert(proto.to_string(), addr.parse().expect("listening address"));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "serve did not become ready; output:\n{}",
                        output.lock().expect("output lock")
                    );
                }
            }
        }
        Server {
            child,
            addresses,
            output,
            stdout: stdout_only,
        }
    }

    pub fn https(&self) -> SocketAddr {
        self.addresses["https"]
    }

    pub fn ssh(&self) -> SocketAddr {
        self.addresses["ssh"]
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// What the server wrote to stdout so far (the startup protocol and text).
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("output lock").clone()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm();
        let status = self.child.wait().expect("wait for serve");
        std::mem::forget(self);
        status
    }

    /// Sends SIGTERM and waits at most `deadline` for the exit status, with how long it took;
    /// fails the test (the server killed on drop) when it does not exit in time.
    pub fn terminate_within(mut self, deadline: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        self.sigterm();
        let status = super::wait_until(deadline, "serve to stop after SIGTERM", || {
            self.child.try_wait().expect("wait for serve")
        });
        let took = started.elapsed();
        std::mem::forget(self);
        (status, took)
    }

    fn sigterm(&self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The real LXD (`lxc` 5.0.2) and Incus (`incus` 6.0.4) clients, each with an isolated
//! configuration directory and the server's PEM pinned as `servercerts/<remote>.crt`; and a
//! plain static HTTPS server (`openssl s_server -WWW`) for serving a tree without our server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::require_tool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Lxd,
    Incus,
}

/// A client CLI with its own config directory.
pub struct Client {
    pub family: Family,
    pub conf: PathBuf,
    binary: PathBuf,
}

impl Client {
    pub fn new(family: Family, dir: &Path) -> Client {
        let (name, package) = match family {
            Family::Lxd => ("lxc", "lxd-client"),
            Family::Incus => ("incus", "incus-client (from bookworm-backports)"),
        };
        let binary = require_tool(name, package);
        let conf = dir.join(format!("{name}-conf"));
        std::fs::create_dir_all(conf.join("servercerts")).expect("client conf dir");
        Client {
            family,
            conf,
            binary,
        }
    }

    /// Adds a simplestreams remote `name` for `url`, trusting the PEM at `cert`.
    pub fn add_remote(&self, name: &str, url: &str, cert: &Path) {
        std::fs::copy(
            cert,
            self.conf.join("servercerts").join(format!("{name}.crt")),
        )
        .expect("pin cert");
        let output = self.run(&["remote", "add", name, url, "--protocol=simplestreams"]);
        assert!(
            output.status.success(),
            "remote add: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let env = match self.family {
            Family::Lxd => "LXD_CONF",
            Family::Incus => "INCUS_CONF",
        };
        Command::new(&self.binary)
            .args(args)
            .env(env, &self.conf)
            .env("HOME", self.conf.parent().expect("parent"))
            // Outside fetches go to a closed loopback port; 127.0.0.1 is never proxied.
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .stdin(Stdio::null())
            .output()
            .expect("run client")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{:?} {args:?}: {}",
            self.family,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    /// `image list <remote>: --format json`, as (fingerprint, type, aliases) rows.
    pub fn list(&self, remote: &str) -> Vec<(String, String, Vec<String>)> {
        let text = self.ok(&["image", "list", &format!("{remote}:"), "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&text).expect("image list json");
        let mut images: Vec<(String, String, Vec<String>)> = rows
            .as_array()
            .expect("array")
            .iter()
            .map(|row| {
                let aliases = row["aliases"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x["name"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    row["fingerprint"].as_str().expect("fp").to_string(),
                    row["type"].as_str().unwrap_or("container").to_string(),
                    aliases,
                )
            })
            .collect();
        images.sort();
        images
    }

    /// Exports `image` into `dir` and returns the sha256 of the exported files concatenated
    /// (metadata first), which must equal the fingerprint.
    pub fn export_fingerprint(&self, remote: &str, image: &str, dir: &Path) -> String {
        std::fs::create_dir_all(dir).expect("export dir");
        let target = dir.join("export");
        self.ok(&[
            "image",
            "export",
            &format!("{remote}:{image}"),
            target.to_str().expect("utf-8"),
        ]);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read export dir")
            .map(|e| e.expect("entry").path())
            .collect();
        // The metadata (or unified) file is `export`, then `export.root` when split.
        files.sort_by_key(|p| p.file_name().map(|n| n.len()));
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        super::sha256_of(&refs)
    }
}

/// A self-signed certificate for 127.0.0.1 with SANs, made by openssl: (cert, key).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let openssl = require_tool("openssl", "openssl");
    let cert = dir.join("static.crt");
    let key = dir.join("static.key");
    let status = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

/// `openssl s_server -WWW`: a plain static HTTPS server (TLS 1.3) serving `root`.
pub struct StaticHttps {
    child: Child,
    pub port: u16,
}

impl StaticHttps {
    pub fn serve(root: &Path, cert: &Path, key: &Path) -> StaticHttps {
        let openssl = require_tool("openssl", "openssl");
        let mut child = Command::new(openssl)
            .args([
                "s_server",
                "-accept",
                "127.0.0.1:0",
                "-WWW",
                "-tls1_3",
                "-cert",
            ])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("s_server prints ACCEPT");
            if let Some(addr) = line.strip_prefix("ACCEPT ") {
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port");
            }
        };
        StaticHttps { child, port }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for StaticHttps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

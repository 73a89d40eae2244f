//! A real 3-node Garage cluster on 127.0.0.1 (replication factor 3, sqlite metadata), for the
//! object-storage tests: the `garage` program (installed by tests/run, never linked) started
//! once per node with ephemeral ports, connected, given a layout, a bucket and a key with
//! read/write/owner rights. `start` returns only when every node reports the cluster healthy
//! and an object written through one node reads back through each. Everything is killed on
//! drop.
//!
//! Requests to the S3 API go through curl's SigV4 signing (a real client, as the tests use
//! elsewhere); Garage needs `x-amz-content-sha256`, which curl does not add by itself.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{require_tool, wait_until};

pub const NODES: usize = 3;
/// How long a cluster (or a restarted node) may take to become healthy on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `garage` binary: on PATH, else where `cargo install` puts it.
pub fn garage_bin() -> PathBuf {
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("garage"))
        .find(|candidate| candidate.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    on_path
        .or_else(|| {
            cargo_home
                .map(|home| home.join("bin/garage"))
                .filter(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`garage` is not installed; run tests/run, which builds it once with \
                 `SODIUM_USE_PKG_CONFIG=1 cargo install garage --version 2.5.0 --locked`"
            )
        })
}

/// One node: its config file and ports, and its process while it runs.
struct Node {
    dir: PathBuf,
    config: PathBuf,
    rpc: u16,
    s3: u16,
    web: u16,
    admin: u16,
    child: Option<Child>,
}

pub struct GarageCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// Hex of `len` random bytes.
fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    hex::encode(bytes)
}

/// A port free on 127.0.0.1 now (the kernel's choice; released for Garage to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl GarageCluster {
    /// Starts the cluster in `dir` (created) and waits until it serves reads and writes.
    pub fn start(dir: &Path) -> GarageCluster {
        garage_bin();
        require_tool("curl", "curl");
        std::fs::create_dir_all(dir).expect("garage dir");
        let rpc_secret = random_hex(32);
        let mut cluster = GarageCluster {
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            region: "garage".to_string(),
            bucket: "images".to_string(),
            // Garage's own formats: GK + 12 bytes of hex, a 32-byte hex secret.
            access_key: format!("GK{}", random_hex(12)),
            secret_key: random_hex(32),
        };
        for i in 0..NODES {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            cluster.nodes.push(Node {
                config: node_dir.join("garage.toml"),
                dir: node_dir,
                rpc: 0,
                s3: 0,
                web: 0,
                admin: 0,
                child: None,
            });
            cluster.launch_fresh(i, &rpc_secret);
        }

        // Node 0 connects to the others; then one zone, equal capacities, layout version 1.
        let ids: Vec<String> = (0..NODES).map(|i| cluster.node_id(i)).collect();
        for id in &ids[1..] {
            cluster.cli_ok(0, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().expect("node id");
            cluster.cli_ok(0, &["layout", "assign", "-z", "dc1", "-c", "10G", short]);
        }
        cluster.cli_ok(0, &["layout", "apply", "--version", "1"]);
        let bucket = cluster.bucket.clone();
        let (key, secret) = (cluster.access_key.clone(), cluster.secret_key.clone());
        cluster.cli_ok(0, &["bucket", "create", &bucket]);
        cluster.cli_ok(0, &["key", "import", "--yes", "-n", "tests", &key, &secret]);
        cluster.cli_ok(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key,
            ],
        );
        cluster.wait_usable();
        cluster
    }

    /// Writes node `i`'s config with newly chosen ports and starts it; a node that exits at
    /// once (a port taken meanwhile by someone else) is retried with other ports.
    fn launch_fresh(&mut self, i: usize, rpc_secret: &str) {
        for attempt in 1..=3 {
            let node = &mut self.nodes[i];
            (node.rpc, node.s3, node.web, node.admin) =
                (free_port(), free_port(), free_port(), free_port());
            let config = format!(
                r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[s3_web]
bind_addr = "127.0.0.1:{web}"
root_domain = ".web.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                dir = node.dir.display(),
                rpc = node.rpc,
                s3 = node.s3,
                web = node.web,
                admin = node.admin,
                region = self.region,
            );
            std::fs::write(&node.config, config).expect("write garage.toml");
            self.spawn(i);
            match self.wait_listening(i) {
                Ok(()) => return,
                Err(log) if attempt == 3 => panic!("garage node {i} did not start:\n{log}"),
                Err(_) => {}
            }
        }
    }

    /// Starts node `i`'s process with its existing config; output goes to `<node>/log`.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("log"))
            .expect("garage log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn garage server");
        node.child = Some(child);
    }

    /// Polls until node `i` accepts connections on its S3 and admin ports and answers
    /// `node id` over RPC; Err(log) when it exited meanwhile.
    fn wait_listening(&mut self, i: usize) -> Result<(), String> {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("wait garage"))
                .is_some();
            if exited {
                self.nodes[i].child = None;
                return Err(self.log(i));
            }
            let node = &self.nodes[i];
            let listening = [node.s3, node.admin, node.web]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
            if listening && self.cli(i, &["node", "id", "-q"]).status.success() {
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "garage node {i} not listening after {READY_TIMEOUT:?}:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("log")).unwrap_or_default()
    }

    /// `garage -c <node i's config> args...`, its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(garage_bin())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run garage")
    }

    /// The same, asserted to succeed; its stdout.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let output = self.cli(i, args);
        assert!(
            output.status.success(),
            "garage {args:?} on node {i} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `<full node id>@127.0.0.1:<rpc port>`.
    fn node_id(&self, i: usize) -> String {
        self.cli_ok(i, &["node", "id", "-q"]).trim().to_string()
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The cluster health as node `i` sees it (Garage's GetClusterHealth JSON), if it answers.
    pub fn health(&self, i: usize) -> Option<serde_json::Value> {
        let output = self.cli(i, &["json-api", "GetClusterHealth"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Polls until every running node sees every running node as up (and, all three running,
    /// the cluster healthy), then until an object written through each running node reads
    /// back through every running node.
    fn wait_usable(&self) {
        let up: Vec<usize> = (0..NODES).filter(|&i| self.is_up(i)).collect();
        wait_until(READY_TIMEOUT, "the Garage cluster to be healthy", || {
            up.iter()
                .all(|&i| {
                    self.health(i).is_some_and(|health| {
                        let wanted = if up.len() == NODES {
                            "healthy"
                        } else {
                            "degraded"
                        };
                        health["status"] == wanted
                            && health["storageNodesUp"] == up.len()
                            && health["partitionsQuorum"] == health["partitions"]
                    })
                })
                .then_some(())
        });
        let probe = format!("garage-probe-{}", random_hex(4));
        wait_until(READY_TIMEOUT, "a write+read round trip on Garage", || {
            up.iter()
                .all(|&writer| {
                    let body = format!("probe through node {writer}");
                    self.put_via(writer, &probe, body.as_bytes()).is_ok()
                        && up.iter().all(|&reader| {
                            self.get_via(reader, &probe).ok() == Some(body.clone().into_bytes())
                        })
                })
                .then_some(())
        });
        let _ = self.request(up[0], "DELETE", &probe, None);
    }

    /// Kills node `i` (SIGKILL) and waits for it to be gone.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with its ports and data, and waits until the cluster is usable
    /// through every running node.
    pub fn start_node(&mut self, i: usize) {
        assert!(!self.is_up(i), "garage node {i} is already running");
        self.spawn(i);
        if let Err(log) = self.wait_listening(i) {
            panic!("garage node {i} did not restart:\n{log}");
        }
        self.wait_usable();
    }

    /// Node 0's S3 API, what the server is configured with.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3)
    }

    /// Node `i`'s website endpoint (plain HTTP; picks the bucket by Host header).
    pub fn web_endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].web)
    }

    /// Opens the bucket on Garage's website endpoint for the host name `localhost`: Garage
    /// picks the bucket by Host header, so the bucket gets that name as an alias. Returns the
    /// base URL of node `i`'s website endpoint (what `public_base_url` is set to).
    pub fn serve_website(&self, i: usize) -> String {
        self.cli_ok(i, &["bucket", "website", "--allow", &self.bucket]);
        self.cli_ok(i, &["bucket", "alias", &self.bucket, "localhost"]);
        format!("http://localhost:{}", self.nodes[i].web)
    }

    /// The `[storage]` table for config.toml pointing at this cluster (node 0's S3 API), with
    /// `prefix` for the keys. Garage ignores conditional writes, hence
    /// `conditional_writes = false`.
    pub fn storage_toml(&self, prefix: &str) -> String {
        self.storage_toml_at(&self.endpoint(), prefix)
    }

    /// The same with another endpoint (another node's, or one where nothing listens).
    pub fn storage_toml_at(&self, endpoint: &str, prefix: &str) -> String {
        let mut table = String::from("[storage]\n");
        let _ = writeln!(table, "backend = \"s3\"");
        let _ = writeln!(table, "endpoint = \"{endpoint}\"");
        let _ = writeln!(table, "region = \"{}\"", self.region);
        let _ = writeln!(table, "bucket = \"{}\"", self.bucket);
        let _ = writeln!(table, "prefix = \"{prefix}\"");
        let _ = writeln!(table, "path_style = true");
        let _ = writeln!(table, "conditional_writes = false");
        let _ = writeln!(table, "poll_interval_secs = 1");
        table
    }

    /// Gives `command` this cluster's credentials (the server reads them from the environment).
    pub fn credentials(&self, command: &mut Command) {
        command
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key);
    }

    /// A signed S3 request to node `i` with curl: (HTTP status, body). `body` is PUT from a
    /// file (curl sends a file with a Content-Length, which Garage wants).
    pub fn request(
        &self,
        i: usize,
        method: &str,
        key: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.request_as(i, method, key, body, &self.access_key, &self.secret_key)
    }

    /// The same signed with any credentials (wrong ones, for refusal checks).
    pub fn request_as(
        &self,
        i: usize,
        method: &str,
        key: &str,
        body: Option<&[u8]>,
        access_key: &str,
        secret_key: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        let url = format!("{}/{}/{}", self.endpoint_of(i), self.bucket, key);
        self.signed_curl(&url, method, body, access_key, secret_key)
    }

    /// curl signing with SigV4 for this cluster's region: (HTTP status, body).
    fn signed_curl(
        &self,
        url: &str,
        method: &str,
        body: Option<&[u8]>,
        access_key: &str,
        secret_key: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "30", "-X", method])
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{access_key}:{secret_key}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(["-w", "%{stderr}%{http_code}"]);
        let upload = body.map(|bytes| {
            let path = self.dir.join(format!("upload-{}", random_hex(8)));
            std::fs::write(&path, bytes).expect("write upload");
            path
        });
        if let Some(path) = &upload {
            command.arg("-T").arg(path);
        }
        let output = command.arg(url).output().expect("run curl");
        if let Some(path) = upload {
            let _ = std::fs::remove_file(path);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = stderr.trim().rsplit('\n').next().unwrap_or("").trim();
        match code
            .get(code.len().saturating_sub(3)..)
            .map(str::parse::<u16>)
        {
            Some(Ok(status)) if status != 0 && output.status.success() => {
                Ok((status, output.stdout))
            }
            _ => Err(format!("curl {method} {url}: {stderr}")),
        }
    }

    /// PUT through node `i`; Err unless 200.
    pub fn put_via(&self, i: usize, key: &str, body: &[u8]) -> Result<(), String> {
        match self.request(i, "PUT", key, Some(body))? {
            (200, _) => Ok(()),
            (status, body) => Err(format!(
                "PUT {key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// GET through node `i`; Err unless 200.
    pub fn get_via(&self, i: usize, key: &str) -> Result<Vec<u8>, String> {
        match self.request(i, "GET", key, None)? {
            (200, body) => Ok(body),
            (status, body) => Err(format!(
                "GET {key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// PUT through the first running node, asserted to work.
    pub fn put(&self, key: &str, body: &[u8]) {
        let i = self.first_up();
        self.put_via(i, key, body).unwrap_or_else(|e| panic!("{e}"));
    }

    /// GET through the first running node: Some(body), or None when the key does not exist.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let i = self.first_up();
        match self
            .request(i, "GET", key, None)
            .unwrap_or_else(|e| panic!("{e}"))
        {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => panic!(
                "GET {key}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Every key under `prefix` in the bucket (ListObjectsV2, following continuation tokens).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let i = self.first_up();
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // In SigV4's canonical order (sorted by name), which curl signs as given.
            let mut url = format!("{}/{}?", self.endpoint_of(i), self.bucket);
            if let Some(token) = &token {
                url.push_str(&format!("continuation-token={}&", encode(token)));
            }
            url.push_str(&format!("list-type=2&prefix={}", encode(prefix)));
            let (status, body) = self
                .signed_curl(&url, "GET", None, &self.access_key, &self.secret_key)
                .unwrap_or_else(|e| panic!("{e}"));
            let body = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "ListObjectsV2: {body}");
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
    }

    fn first_up(&self) -> usize {
        (0..NODES)
            .find(|&i| self.is_up(i))
            .expect("no garage node is running")
    }

    /// The process id of node `i` (for memory or signal checks).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }
}

/// The text of every `<tag>...</tag>` in `xml`, entities decoded (S3's listing answers).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        values.push(
            rest[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[end + close.len()..];
    }
    values
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

//! The HTTPS side against the real clients people use: the Debian `lxc` 5.0.2 CLI (list,
//! info, alias list, export with a fingerprint check) and headless Chromium driven through
//! chromedriver (the catalog page renders every image with no console errors).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support;
use crate::support::http::local_http;
use crate::support::server::Server;
use crate::support::{Meta, TestDir, require_tool, wait_until};

fn import(t: &TestDir, files: &[&Path]) -> String {
    let mut args = vec!["import"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend(["--format", "json"]);
    let report: Value = serde_json::from_str(&t.ok(&args)).unwrap();
    report["fingerprint"].as_str().unwrap().to_string()
}

/// A split container image (metadata tarball + squashfs).
fn import_split(t: &TestDir, meta: &Meta, seed: &str) -> String {
    let dir = t.path().join(format!("src-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    support::metadata_tarball(&dir.join("lxd.tar.xz"), meta);
    support::squashfs(&dir.join("root.squashfs"), seed);
    import(t, &[&dir.join("lxd.tar.xz"), &dir.join("root.squashfs")])
}

/// A unified tarball (container or VM).
fn import_unified(t: &TestDir, meta: &Meta, vm: bool, seed: &str) -> String {
    let path = t.path().join(format!("{seed}.tar.gz"));
    support::unified_tarball(&path, meta, vm, seed);
    import(t, &[&path])
}

/// `lxc` with a private config folder and home.
struct Lxc {
    conf: PathBuf,
    home: PathBuf,
}

impl Lxc {
    fn new(t: &TestDir) -> Lxc {
        require_tool("lxc", "lxd-client");
        let home = t.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Lxc {
            conf: t.path().join("lxd-conf"),
            home,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("lxc");
        command
            .env("LXD_CONF", &self.conf)
            .env("HOME", &self.home)
            .env_remove("LXD_DIR")
            .current_dir(&self.home)
            .stdin(Stdio::null());
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "lxc {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

fn sha256_of_concatenation(files: &[PathBuf]) -> String {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    support::sha256_of(&paths)
}

#[test]
fn lxc_lists_shows_and_exports_what_the_server_publishes() {
    let t = TestDir::new();
    let lxc = Lxc::new(&t);
    let split = import_split(&t, &Meta::default(), "lxc-split");
    let unified = import_unified(
        &t,
        &Meta {
            release: "2",
            ..Meta::default()
        },
        false,
        "lxc-unified",
    );
    let server = Server::start(&t, &[]);

    // The start-up text, run as printed (all of it is shell): stores the certificate and
    // adds the remote to each client that is installed.
    let output = server.stdout();
    let block: String = output
        .lines()
        .skip_while(|line| !line.starts_with("cat > private.crt"))
        .take_while(|line| !line.starts_with("listening https"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        block.contains("lxc remote add private https://127.0.0.1:"),
        "{block}"
    );
    let status = Command::new("bash")
        .arg("-ec")
        .arg(&block)
        .current_dir(&lxc.home)
        .env("LXD_CONF", &lxc.conf)
        .env("INCUS_CONF", lxc.home.join("incus"))
        .env("HOME", &lxc.home)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{block}");
    assert!(lxc.conf.join("servercerts/private.crt").is_file());

    let listed: Value =
        serde_json::from_str(&lxc.ok(&["image", "list", "private:", "--format", "json"])).unwrap();
    let listed = listed.as_array().unwrap();
    let fingerprints: Vec<&str> = listed
        .iter()
        .map(|image| image["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(fingerprints.contains(&split.as_str()), "{fingerprints:?}");
    assert!(fingerprints.contains(&unified.as_str()), "{fingerprints:?}");

    let info = lxc.ok(&["image", "info", "private:testos/1"]);
    assert!(info.contains(&format!("Fingerprint: {split}")), "{info}");
    let info = lxc.ok(&["image", "info", "private:testos/2"]);
    assert!(info.contains(&format!("Fingerprint: {unified}")), "{info}");
    let aliases = lxc.ok(&["image", "alias", "list", "private:", "--format", "csv"]);
    assert!(aliases.contains("testos/1,"), "{aliases}");
    assert!(aliases.contains("testos/2,"), "{aliases}");

    // Export: the files' concatenated sha256 is the fingerprint.
    for (fingerprint, file_count) in [(&split, 2), (&unified, 1)] {
        let target = t.path().join(format!("export-{}", &fingerprint[..12]));
        std::fs::create_dir_all(&target).unwrap();
        lxc.ok(&[
            "image",
            "export",
            &format!("private:{fingerprint}"),
            &format!("{}/", target.display()),
        ]);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), file_count, "{files:?}");
        // The metadata tarball comes first, the root (squashfs) after it.
        files.sort_by_key(|f| f.extension().is_some_and(|e| e == "squashfs"));
        assert_eq!(&sha256_of_concatenation(&files), fingerprint, "{files:?}");
    }

    // lxc fetched the index over HTTPS and tried the image files over plain HTTP first.
    let log = server.output();
    assert!(
        log.lines().any(|l| l.contains("scheme=\"https\"")
            && l.contains("path=/streams/v1/images.json")
            && l.contains("user_agent=LXD")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("scheme=\"http\"")
            && l.contains(".squashfs")
            && l.contains("status=200")),
        "{log}"
    );
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR "))
                && !l.contains("there is no authorized_keys file")
        })
        .collect();
    assert!(problems.is_empty(), "{log}");
}

/// A chromedriver on a free local port, stopped when dropped.
struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let chromedriver = require_tool("chromedriver", "chromium-driver");
        require_tool("chromium", "chromium");
        // Port 0 lets chromedriver pick a free port and print it: a port picked here and
        // released could be taken by another test's connection before chromedriver binds it.
        let mut child = Command::new(chromedriver)
            .arg("--port=0")
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // Reads to the end so chromedriver's later log lines never fill the pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
            }
        });
        let port = wait_until(Duration::from_secs(30), "chromedriver's port", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromedriver exited before it listened: {status}");
            }
            port_rx.try_recv().ok()
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = ChromeDriver { child, addr };
        wait_until(Duration::from_secs(30), "chromedriver ready", || {
            (driver.call("GET", "/status", None)["value"]["ready"] == true).then_some(())
        });
        driver
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        local_http(self.addr, method, path, body)
    }

    /// A headless Chromium session that records the browser console.
    fn session(&self, profile: &Path) -> Session<'_> {
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }}
        });
        let created = self.call("POST", "/session", Some(&capabilities));
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Session { driver: self, id }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Session<'a> {
    driver: &'a ChromeDriver,
    id: String,
}

impl Session<'_> {
    fn open(&self, url: &str) {
        let result = self.driver.call(
            "POST",
            &format!("/session/{}/url", self.id),
            Some(&json!({ "url": url })),
        );
        assert!(result["value"].is_null(), "opening {url}: {result}");
    }

    fn script(&self, script: &str) -> Value {
        self.driver.call(
            "POST",
            &format!("/session/{}/execute/sync", self.id),
            Some(&json!({ "script": script, "args": [] })),
        )["value"]
            .clone()
    }

    /// Console entries at WARNING or SEVERE since the last call.
    fn console_problems(&self) -> Vec<String> {
        let log = self.driver.call(
            "POST",
            &format!("/session/{}/se/log", self.id),
            Some(&json!({ "type": "browser" })),
        );
        log["value"]
            .as_array()
            .unwrap_or_else(|| panic!("no browser log: {log}"))
            .iter()
            .filter(|entry| entry["level"] == "SEVERE" || entry["level"] == "WARNING")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

#[test]
fn the_catalog_page_renders_every_image_in_chromium_without_console_errors() {
    let t = TestDir::new();
    let mut fingerprints = vec![
        import_split(&t, &Meta::default(), "page-one"),
        import_split(
            &t,
            &Meta {
                os: "otheros",
                release: "9",
                ..Meta::default()
            },
            "page-two",
        ),
        import_unified(
            &t,
            &Meta {
                release: "3",
                ..Meta::default()
            },
            true,
            "page-vm",
        ),
    ];
    fingerprints.sort();
    let server = Server::start(&t, &[]);
    let url = format!("https://127.0.0.1:{}/", server.https().port());
    let driver = ChromeDriver::start();
    let session = driver.session(&t.path().join("chromium-profile"));

    // The console check must be able to fail: a missing page on our server and a script
    // error both show up as problems.
    session.open(&format!("{url}images/missing.png"));
    session.script("console.error('deliberate'); return null");
    // The log returns what is new since the last call: gather until both have shown up.
    let mut control = Vec::new();
    wait_until(Duration::from_secs(10), "the control page's errors", || {
        control.extend(session.console_problems());
        (control.iter().any(|m| m.contains("deliberate"))
            && control
                .iter()
                .any(|m| m.contains("missing.png") && m.contains("404")))
        .then_some(())
    });

    session.open(&url);
    assert_eq!(
        session.script("return document.title"),
        format!("Images at {}", url.trim_end_matches('/'))
    );
    let rows = session.script(
        "return Array.from(document.querySelectorAll('tr.image')).map(r => r.querySelector('td.fingerprint').textContent)",
    );
    let mut shown: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    shown.sort();
    assert_eq!(shown, fingerprints);
    let remote_add = session.script("return document.getElementById('remote-add').textContent");
    assert!(
        remote_add.as_str().unwrap().contains(&format!(
            "lxc remote add private {} --protocol=simplestreams",
            url.trim_end_matches('/')
        )),
        "{remote_add}"
    );
    let cells = session.script(
        "return Array.from(document.querySelectorAll('tr.image td')).map(c => c.textContent).join('|')",
    );
    let cells = cells.as_str().unwrap();
    for expected in [
        "testos/1",
        "otheros",
        "virtual-machine",
        "container",
        "amd64",
    ] {
        assert!(cells.contains(expected), "{expected} missing in {cells}");
    }
    // The certificate link works from the page.
    let crt = session.script("return document.querySelector('a[href$=\"server.crt\"]').href");
    assert_eq!(crt.as_str().unwrap(), format!("{url}server.crt"));
    // The control page (an image, not HTML) makes Chromium ask for /favicon.ico, and that
    // 404 can be logged late; the catalog page itself names a data: icon and asks for none.
    let problems: Vec<String> = session
        .console_problems()
        .into_iter()
        .filter(|m| !m.contains("/favicon.ico"))
        .collect();
    assert_eq!(problems, Vec::<String>::new());
}

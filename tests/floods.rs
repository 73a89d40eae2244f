//! Floods against a running server, bounded and on loopback only. While each runs, a
//! legitimate user uploads (scp), imports (ssh) and downloads (HTTPS) an image, each step
//! within [`USER_BOUND`], and the server's memory stays under [`MEMORY_BOUND`].
//!
//! The flood comes from 127.0.0.2 and the user from 127.0.0.1 (see [`support::net`]): the
//! server must tell them apart, as it would on a real network, so that its per-address caps
//! and throttling stop the attacker and never the user.
//!
//! Each test prints one line with its figures (`cargo test --test main floods:: -- --nocapture`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::net::{ATTACKER, Memory, connect_from, memory, raise_fd_limit};
use crate::support::raw_ssh::step;
use crate::support::server::Server;
use crate::support::ssh::{Client, Key, audit_events, write_authorized_keys, write_config};
use crate::support::{Meta, TestDir, wait_until};

/// How long each step of the legitimate user may take while a flood runs.
const USER_BOUND: Duration = Duration::from_secs(5);
/// Peak resident memory (VmHWM) the server may reach, flood and user together.
const MEMORY_BOUND_KIB: u64 = 256 << 10;

/// A server with one legitimate publisher, an attacker's key (a reader: any key will do),
/// and the publisher's image ready to upload.
struct Target {
    /// Floods are timed: one at a time, never beside a torture run or the LXD daemon.
    _exclusive: std::sync::MutexGuard<'static, ()>,
    t: TestDir,
    server: Server,
    user: Client,
    attacker: Key,
    https: support::http::Client,
    metadata: PathBuf,
    root: PathBuf,
}

impl Target {
    fn start(name: &str, config: &str) -> Target {
        let exclusive = support::exclusive();
        raise_fd_limit(8192);
        let t = TestDir::new();
        let key = Key::new(&t, "legit");
        let attacker = Key::new(&t, "mallory");
        write_authorized_keys(&t, &[key.line(""), attacker.line(r#"role="reader""#)]);
        if !config.is_empty() {
            write_config(&t, config);
        }
        let metadata = t.file(&format!("{name}.tar.xz"));
        let root = t.file(&format!("{name}.squashfs"));
        support::metadata_tarball(&metadata, &Meta::default());
        support::squashfs(&root, name);
        let server = Server::start(&t, &[]);
        let user = Client::new(server.ssh(), &key);
        let https = support::http::Client::new(server.https(), &t.data().join("tls/server.crt"));
        Target {
            _exclusive: exclusive,
            t,
            server,
            user,
            attacker,
            https,
            metadata,
            root,
        }
    }

    fn memory(&self) -> Memory {
        memory(self.server.child.id())
    }
}

/// How long each step of the legitimate user took.
#[derive(Debug)]
struct UserTimes {
    upload: Duration,
    import: Duration,
    download: Duration,
}

impl UserTimes {
    fn assert_within_bound(&self, flood: &str) {
        for (step, took) in [
            ("upload", self.upload),
            ("import", self.import),
            ("download", self.download),
        ] {
            assert!(
                took < USER_BOUND,
                "{flood}: the legitimate user's {step} took {took:?} (bound {USER_BOUND:?})"
            );
        }
    }
}

/// The legitimate user publishes their image: scp both files, `ssh host import`, then
/// downloads the root over HTTPS and checks its bytes.
fn legitimate_user(target: &Target) -> UserTimes {
    let started = Instant::now();
    let output = target.user.scp(&[], &[&target.metadata, &target.root], "");
    let upload = started.elapsed();
    assert!(
        output.status.success(),
        "the legitimate upload failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let names = |path: &PathBuf| path.file_name().unwrap().to_string_lossy().into_owned();
    let started = Instant::now();
    let report = target.user.ok(&format!(
        "import {} {} --format json",
        names(&target.metadata),
        names(&target.root)
    ));
    let import = started.elapsed();
    let report: serde_json::Value = serde_json::from_str(&report).expect("import report");
    assert_eq!(report["status"], "published", "{report}");

    let root = std::fs::read(&target.root).unwrap();
    let root_sha = hex::encode(sha2::Sha256::digest(&root));
    let started = Instant::now();
    let images = target.https.get("/streams/v1/images.json");
    assert_eq!(images.status, 200);
    let images: serde_json::Value = serde_json::from_slice(&images.body).expect("images.json");
    let path = images["products"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["versions"].as_object().unwrap().values())
        .flat_map(|v| v["items"].as_object().unwrap().values())
        .find(|item| item["sha256"] == root_sha.as_str())
        .and_then(|item| item["path"].as_str())
        .expect("the imported root in images.json")
        .to_string();
    let file = target.https.get(&format!("/{path}"));
    let download = started.elapsed();
    assert_eq!(file.status, 200, "{path}");
    assert!(file.body == root, "{path}: the downloaded bytes differ");
    UserTimes {
        upload,
        import,
        download,
    }
}

/// An attack running on a thread of its own until stopped; its task returns its figures.
struct Attack<S> {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<S>,
}

impl<S: Send + 'static> Attack<S> {
    fn launch<F, Fut>(attack: F) -> Attack<S>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = S>,
    {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("attack runtime")
                .block_on(attack(token))
        });
        Attack { stop, thread }
    }

    fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    fn stop(self) -> S {
        self.stop.cancel();
        self.thread.join().expect("the attack panicked")
    }
}

fn report(flood: &str, before: Memory, target: &Target, times: &UserTimes, figures: &str) {
    let after = target.memory();
    println!(
        "{flood}: server RSS {} MiB before, peak {} MiB (VmHWM); user upload {:?}, import {:?}, download {:?}; {figures}",
        before.rss_kib >> 10,
        after.peak_kib >> 10,
        times.upload,
        times.import,
        times.download,
    );
    times.assert_within_bound(flood);
    assert!(
        after.peak_kib < MEMORY_BOUND_KIB,
        "{flood}: the server's peak RSS was {} MiB (bound {} MiB)",
        after.peak_kib >> 10,
        MEMORY_BOUND_KIB >> 10
    );
}

// ---------------------------------------------------------------------------------------
// SSH

/// (b) 1,000 TCP connections to the SSH port that never send a banner.
#[test]
fn a_thousand_idle_ssh_connections_from_one_address() {
    const CONNECTIONS: usize = 1000;
    let target = Target::start("idle", "");
    let before = target.memory();
    let opened = Arc::new(AtomicUsize::new(0));
    let address = target.server.ssh();
    let attack = Attack::launch({
        let opened = opened.clone();
        move |stop| async move {
            let mut streams = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                match connect_from(ATTACKER, address).await {
                    Ok(stream) => streams.push(stream),
                    Err(e) => panic!("connect: {e}"),
                }
                opened.fetch_add(1, Ordering::Relaxed);
            }
            stop.cancelled().await;
            // Which got the server's banner (held) and which were closed unanswered.
            let mut held = 0;
            let mut closed = 0;
            for stream in &streams {
                let mut byte = [0u8; 1];
                match stream.try_read(&mut byte) {
                    Ok(0) => closed += 1,
                    Ok(_) => held += 1,
                    Err(_) => closed += 1,
                }
            }
            (held, closed)
        }
    });
    wait_until(Duration::from_secs(60), "the idle connections", || {
        (opened.load(Ordering::Relaxed) == CONNECTIONS).then_some(())
    });
    let times = legitimate_user(&target);
    let (held, closed) = attack.stop();
    report(
        "1000 idle SSH connections",
        before,
        &target,
        &times,
        &format!("{held} held by the server, {closed} refused"),
    );
    assert_eq!(held, 16, "the per-address cap");
    // Audited, but not a line each: the first refusal at once, the rest counted (written a
    // minute later, or at shutdown).
    let early = audit_events(&target.t, "connection_refused");
    assert_eq!(early.len(), 1, "{early:?}");
    let t = &target.t;
    assert!(target.server.terminate().success());
    let refused = audit_events(t, "connection_refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().all(|e| e["address"] == "127.0.0.2"),
        "{refused:?}"
    );
    let counted: u64 = refused
        .iter()
        .map(|e| e["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, closed as u64, "{refused:?}");
}

/// (a) 500 failed authentications from one address: passwords, keyboard-interactive and
/// keys that are not in authorized_keys, each on a fresh connection.
#[test]
fn five_hundred_failed_logins_from_one_address() {
    const ATTEMPTS: usize = 500;
    // Throttling (on by default) would refuse this address before the handshake after its
    // tenth failure; it is off here so that every attempt goes through a key exchange and a
    // rejected authentication: the most work one address can make the server do.
    let target = Target::start("logins", "[ssh]\nfailed_auth_limit = 0\n");
    let stranger = Key::new(&target.t, "stranger");
    let before = target.memory();
    let failed = Arc::new(AtomicUsize::new(0));
    let address = target.server.ssh();
    let attack = Attack::launch({
        let failed = failed.clone();
        move |stop| async move {
            let stranger = Arc::new(
                russh::keys::load_secret_key(&stranger.private, None).expect("stranger key"),
            );
            let next = Arc::new(AtomicUsize::new(0));
            let refused = Arc::new(AtomicUsize::new(0));
            // Twelve at once: under the 16 connections one address may hold.
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..12 {
                let (failed, next, refused, stranger, stop) = (
                    failed.clone(),
                    next.clone(),
                    refused.clone(),
                    stranger.clone(),
                    stop.clone(),
                );
                workers.spawn(async move {
                    while !stop.is_cancelled() {
                        let attempt = next.fetch_add(1, Ordering::Relaxed);
                        if attempt >= ATTEMPTS {
                            break;
                        }
                        if !fail_to_log_in(address, attempt, &stranger).await {
                            refused.fetch_add(1, Ordering::Relaxed);
                            next.fetch_sub(1, Ordering::Relaxed);
                            continue;
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while workers.join_next().await.is_some() {}
            refused.load(Ordering::Relaxed)
        }
    });
    wait_until(Duration::from_secs(60), "the flood to be under way", || {
        (failed.load(Ordering::Relaxed) >= 50).then_some(())
    });
    let times = legitimate_user(&target);
    assert!(
        attack.is_running(),
        "the flood ended before the user was done; make it longer"
    );
    wait_until(Duration::from_secs(120), "the flood to end", || {
        (!attack.is_running()).then_some(())
    });
    let refused = attack.stop();
    let failures = failed.load(Ordering::Relaxed);
    report(
        "500 failed logins",
        before,
        &target,
        &times,
        &format!("{failures} failed logins, {refused} connections refused (address cap)"),
    );
    assert_eq!(failures, ATTEMPTS);
    let audited = wait_until(Duration::from_secs(20), "the audit lines", || {
        let lines: Vec<_> = audit_events(&target.t, "auth")
            .into_iter()
            .filter(|e| e["result"] == "failure" && e["address"] == "127.0.0.2")
            .collect();
        (lines.len() >= ATTEMPTS).then_some(lines)
    });
    assert_eq!(audited.len(), ATTEMPTS);
}

/// One failed login on a fresh connection; false when the server refused the connection.
async fn fail_to_log_in(
    address: std::net::SocketAddr,
    attempt: usize,
    stranger: &Arc<russh::keys::PrivateKey>,
) -> bool {
    use russh::client::{AuthResult, KeyboardInteractiveAuthResponse};
    let Ok(mut session) = support::raw_ssh::connect(address, ATTACKER).await else {
        return false;
    };
    let user = format!("root{attempt}");
    let rejected = match attempt % 3 {
        0 => matches!(
            session.authenticate_password(user, "hunter2").await,
            Ok(AuthResult::Failure { .. })
        ),
        1 => matches!(
            session
                .authenticate_keyboard_interactive_start(user, None)
                .await,
            Ok(KeyboardInteractiveAuthResponse::Failure { .. })
        ),
        _ => matches!(
            session
                .authenticate_publickey(
                    user,
                    russh::keys::PrivateKeyWithHashAlg::new(stranger.clone(), None),
                )
                .await,
            Ok(AuthResult::Failure { .. })
        ),
    };
    assert!(rejected, "attempt {attempt} was not rejected");
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    true
}

/// (d) Commands whose output nobody takes: 16 connections (the per-address cap) each try 40
/// channels with a window of 0 and run `help` on every one, so that no output can ever leave;
/// half the connections then go away, the rest stay and read nothing. One connection holds
/// at most 8 channels, one user runs at most 8 commands, every write gives up after the send
/// timeout or when its connection ends: the user's upload, import and download, and their
/// `whoami`, stay quick, and SIGTERM still stops the server.
#[test]
fn commands_whose_output_nobody_takes() {
    const CONNECTIONS: usize = 16;
    const CHANNELS: usize = 40;
    let target = Target::start("stalled", "[ssh]\nsend_timeout_secs = 5\n");
    let before = target.memory();
    let address = target.server.ssh();
    let attacker = target.attacker.clone();
    let ready = Arc::new(AtomicUsize::new(0));
    let attack = Attack::launch({
        let ready = ready.clone();
        move |stop| async move {
            let mut sessions = Vec::new();
            let (mut opened, mut refused) = (0, 0);
            let mut channels = Vec::new();
            for _ in 0..CONNECTIONS {
                let config = russh::client::Config {
                    window_size: 0,
                    ..Default::default()
                };
                let session =
                    support::raw_ssh::login_with(address, ATTACKER, &attacker, config).await;
                for _ in 0..CHANNELS {
                    match step("a session channel", session.channel_open_session()).await {
                        Ok(channel) => {
                            step("exec", channel.exec(false, "help"))
                                .await
                                .expect("exec");
                            channels.push(channel);
                            opened += 1;
                        }
                        Err(_) => refused += 1,
                    }
                }
                sessions.push(session);
            }
            // Half leave at once; the others stay, reading nothing.
            for session in sessions.drain(..CONNECTIONS / 2) {
                let _ = session
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            }
            ready.store(1, Ordering::Release);
            stop.cancelled().await;
            drop(channels);
            (opened, refused, sessions.len())
        }
    });
    wait_until(Duration::from_secs(120), "the channels to be open", || {
        (ready.load(Ordering::Acquire) == 1 || !attack.is_running()).then_some(())
    });
    assert!(attack.is_running(), "the attack ended early");
    let mut whoami = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let out = target.user.ok("whoami");
        whoami.push(started.elapsed());
        assert!(out.contains("legit"), "{out}");
    }
    let times = legitimate_user(&target);
    report(
        "stalled channels",
        before,
        &target,
        &times,
        &format!("whoami {whoami:?}"),
    );
    for took in &whoami {
        assert!(*took < USER_BOUND, "whoami took {took:?}");
    }
    // SIGTERM while the attacker still holds its connections and their stalled commands.
    let Target { t, server, .. } = target;
    let (status, stopped_in) = server.terminate_within(Duration::from_secs(15));
    let (opened, refused, stayed) = attack.stop();
    println!(
        "stalled channels: {opened} opened, {refused} refused, {stayed} connections stayed open; serve stopped {stopped_in:?} after SIGTERM"
    );
    assert!(status.success(), "serve exited with {status}");
    assert_eq!(opened, CONNECTIONS * 8, "8 channels a connection");
    assert_eq!(refused, CONNECTIONS * (CHANNELS - 8));
    let refusals = audit_events(&t, "refused");
    let count = |what: &str| {
        refusals
            .iter()
            .filter(|e| e["user"] == "mallory" && e.to_string().contains(what))
            .count()
    };
    assert_eq!(count("session channels"), CONNECTIONS * (CHANNELS - 8));
    assert!(count("commands running") > 0, "{refusals:?}");
}

/// (e) Key exchanges that never go on to a login, one connection after another from one
/// address: each costs the server a key exchange, so each counts as a failed login, and after
/// ten (`failed_auth_limit`) the address is refused before the handshake. A session the user
/// opened before keeps answering throughout.
#[test]
fn key_exchanges_without_a_login_from_one_address() {
    const ATTEMPTS: usize = 100;
    const LIMIT: usize = 10;
    let target = Target::start("kex", "");
    let before = target.memory();
    let address = target.server.ssh();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let session = runtime.block_on(support::raw_ssh::login(
        address,
        support::net::USER,
        &target.user.key,
    ));
    let attack = Attack::launch(move |stop| async move {
        let (mut exchanged, mut refused) = (0, 0);
        for _ in 0..ATTEMPTS {
            if stop.is_cancelled() {
                break;
            }
            match step(
                "a key exchange",
                support::raw_ssh::connect(address, ATTACKER),
            )
            .await
            {
                Ok(session) => {
                    exchanged += 1;
                    let _ = session
                        .disconnect(russh::Disconnect::ByApplication, "", "en")
                        .await;
                }
                Err(_) => refused += 1,
            }
        }
        (exchanged, refused)
    });
    let mut answers = Vec::new();
    while attack.is_running() || answers.is_empty() {
        let started = Instant::now();
        let whoami = runtime.block_on(support::raw_ssh::exec(&session, b"whoami", None));
        answers.push(started.elapsed());
        assert_eq!(whoami.status, Some(0), "{}", whoami.stderr());
        assert!(answers.len() < 10_000, "the attack does not end");
    }
    let (exchanged, refused) = attack.stop();
    let slowest = answers.iter().max().copied().unwrap_or_default();
    let times = legitimate_user(&target);
    report(
        "100 key exchanges without a login",
        before,
        &target,
        &times,
        &format!(
            "{exchanged} key exchanges, {refused} refused; {} whoami on an open session, slowest {slowest:?}",
            answers.len()
        ),
    );
    assert!(slowest < USER_BOUND, "whoami took {slowest:?}");
    // A connection is counted when the server sees it end, which may be just after the
    // client's next connection was let in.
    assert!(
        (LIMIT..=LIMIT + 2).contains(&exchanged),
        "{exchanged} key exchanges before the address was refused"
    );
    assert_eq!(exchanged + refused, ATTEMPTS);
    let refusals = audit_events(&target.t, "connection_refused");
    assert!(
        refusals.iter().any(|e| e["address"] == "127.0.0.2"
            && e["reason"].as_str().unwrap().contains("failed to log in")),
        "{refusals:?}"
    );
}

// ---------------------------------------------------------------------------------------
// HTTPS

/// The first `len` bytes of a real TLS ClientHello (rustls's), to stall in the middle of.
fn client_hello_prefix(len: usize) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut connection = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    assert!(
        hello.len() > len,
        "the ClientHello is {} bytes",
        hello.len()
    );
    hello.truncate(len);
    hello
}

/// Opens `count` connections from the attacker to `address`, sends each its `opening` and
/// holds them all until stopped. Returns how many the server had closed by then.
async fn hold_connections(
    address: std::net::SocketAddr,
    openings: Vec<Vec<u8>>,
    opened: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut streams = Vec::with_capacity(openings.len());
    for opening in openings {
        let mut stream = connect_from(ATTACKER, address).await.expect("connect");
        if !opening.is_empty() {
            stream.write_all(&opening).await.expect("write");
        }
        streams.push(stream);
        opened.fetch_add(1, Ordering::Relaxed);
    }
    stop.cancelled().await;
    let mut closed = 0;
    for stream in &streams {
        let mut byte = [0u8; 1];
        if matches!(stream.try_read(&mut byte), Ok(0) | Err(_))
            && stream.try_read(&mut byte).is_ok_and(|n| n == 0)
        {
            closed += 1;
        }
    }
    closed
}

/// (c) 200 TLS handshakes left half-open: nothing sent, a record header, half a ClientHello.
#[test]
fn two_hundred_half_open_tls_handshakes_from_one_address() {
    const CONNECTIONS: usize = 200;
    let target = Target::start("tls", "");
    let before = target.memory();
    let hello = client_hello_prefix(100);
    let openings: Vec<Vec<u8>> = (0..CONNECTIONS)
        .map(|i| match i % 3 {
            0 => Vec::new(),
            1 => hello[..5].to_vec(),
            _ => hello.clone(),
        })
        .collect();
    let opened = Arc::new(AtomicUsize::new(0));
    let address = target.server.https();
    let attack = Attack::launch({
        let opened = opened.clone();
        move |stop| hold_connections(address, openings, opened, stop)
    });
    wait_until(Duration::from_secs(60), "the half-open handshakes", || {
        (opened.load(Ordering::Relaxed) == CONNECTIONS).then_some(())
    });
    let times = legitimate_user(&target);
    let closed = attack.stop();
    report(
        "200 half-open TLS handshakes",
        before,
        &target,
        &times,
        &format!("{closed} of them closed by the server meanwhile"),
    );
}

/// What a slowloris slot saw.
#[derive(Debug, Default, Clone, Copy)]
struct Dribbled {
    connections: usize,
    /// Connections the server cut while they were still dribbling.
    cut: usize,
    /// The longest any connection stayed open while dribbling.
    longest: Duration,
}

/// Keeps one connection dribbling a request head, a byte every 250 ms, and opens another
/// each time the server cuts it.
async fn dribble<S, C>(connect: C, cuts: Arc<AtomicUsize>, stop: CancellationToken) -> Dribbled
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    C: Fn() -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<S>> + Send>>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = Dribbled::default();
    while !stop.is_cancelled() {
        let Ok(stream) = connect().await else {
            // Refused (a per-address cap): try again shortly.
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        seen.connections += 1;
        let opened = Instant::now();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let head = b"GET /streams/v1/index.json HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let mut cut = writer.write_all(&head[..1]).await.is_err();
        let mut sent = 1;
        let mut buf = [0u8; 512];
        while !cut {
            tokio::select! {
                () = stop.cancelled() => break,
                read = reader.read(&mut buf) => {
                    // An answer (408, 400) or the end: either way the server is done with us.
                    let _ = read;
                    cut = true;
                }
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    sent += 1;
                    cut = writer.write_all(&[byte]).await.is_err();
                }
            }
        }
        if cut {
            seen.cut += 1;
            cuts.fetch_add(1, Ordering::Relaxed);
        }
        seen.longest = seen.longest.max(opened.elapsed());
    }
    seen
}

/// (d) Slowloris: 200 connections (half plain HTTP, half HTTPS after the handshake) dribbling
/// request heads, reconnecting whenever the server cuts them.
#[test]
fn slowloris_request_heads_from_one_address() {
    const SLOTS: usize = 200;
    const TIMEOUT_SECS: u64 = 2;
    let target = Target::start(
        "slowloris",
        &format!("[http]\nhandshake_timeout_secs = {TIMEOUT_SECS}\n"),
    );
    let before = target.memory();
    let address = target.server.https();
    let tls = target.https.clone();
    let cuts = Arc::new(AtomicUsize::new(0));
    let attack = Attack::launch({
        let cuts = cuts.clone();
        move |stop| async move {
            let mut slots = tokio::task::JoinSet::new();
            for slot in 0..SLOTS {
                let stop = stop.clone();
                let tls = tls.clone();
                let cuts = cuts.clone();
                if slot % 2 == 0 {
                    slots.spawn(dribble(
                        move || Box::pin(connect_from(ATTACKER, address)),
                        cuts,
                        stop,
                    ));
                } else {
                    slots.spawn(dribble(
                        move || {
                            let tls = tls.clone();
                            Box::pin(async move { tls.connect_from(ATTACKER).await })
                        },
                        cuts,
                        stop,
                    ));
                }
            }
            let mut total = Dribbled::default();
            while let Some(seen) = slots.join_next().await {
                let seen = seen.expect("a slowloris slot panicked");
                total.connections += seen.connections;
                total.cut += seen.cut;
                total.longest = total.longest.max(seen.longest);
            }
            total
        }
    });
    // Wait for the server to cut a first round, so that the user meets a flood that is both
    // holding slots and reconnecting.
    wait_until(Duration::from_secs(30), "the first round to be cut", || {
        (cuts.load(Ordering::Relaxed) >= SLOTS / 2).then_some(())
    });
    let times = legitimate_user(&target);
    // Every first-round slot is cut before the attack stops, however quick the user was.
    wait_until(Duration::from_secs(30), "every slot to be cut once", || {
        (cuts.load(Ordering::Relaxed) >= SLOTS).then_some(())
    });
    let seen = attack.stop();
    report(
        "slowloris (200 connections)",
        before,
        &target,
        &times,
        &format!(
            "{} connections, {} cut by the server, the longest open {:?}",
            seen.connections, seen.cut, seen.longest
        ),
    );
    assert!(seen.cut >= SLOTS, "{seen:?}");
    // Cut at the timeout, wherever the head had got to (a little slack for a busy machine).
    assert!(
        seen.longest < Duration::from_secs(TIMEOUT_SECS) + Duration::from_millis(1500),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Fixes: each test is named after what broke.

/// HTTPS had a cap on connections in all but none per address: one address holding
/// half-open handshakes filled it, and everyone else waited in the kernel's queue until the
/// handshake timeout freed a slot.
#[test]
fn one_address_cannot_fill_the_https_connection_cap() {
    const CONNECTIONS: usize = 200;
    let target = Target::start(
        "cap",
        "[http]\nmax_connections = 64\nmax_connections_per_address = 16\nhandshake_timeout_secs = 60\n",
    );
    let before = target.memory();
    let opened = Arc::new(AtomicUsize::new(0));
    let address = target.server.https();
    let attack = Attack::launch({
        let opened = opened.clone();
        move |stop| hold_connections(address, vec![Vec::new(); CONNECTIONS], opened, stop)
    });
    wait_until(Duration::from_secs(60), "the held connections", || {
        (opened.load(Ordering::Relaxed) == CONNECTIONS).then_some(())
    });
    let times = legitimate_user(&target);
    let closed = attack.stop();
    report(
        "200 silent HTTPS connections, cap 64 (16 per address)",
        before,
        &target,
        &times,
        &format!("{closed} of them refused by the server"),
    );
    assert_eq!(closed, CONNECTIONS - 16);
    let metrics = target.https.get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("simplestream_https_connections_refused_total {closed}")),
        "{metrics}"
    );
}

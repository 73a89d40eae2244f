//! Attacks on the SSH and HTTPS sides, each refused, and on the SSH side each refusal found
//! in the audit log with who, from where, and what. What OpenSSH's clients can send is in
//! tests/ssh.rs; here are the requests they never send (driven by russh's client), the
//! authorized_keys corpus, and the HTTP attacks. Every server listens on 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::server::Server;
use support::{TestDir, wait_until};

// ---------------------------------------------------------------------------------------
// HTTP

fn write_config(t: &TestDir, toml: &str) {
    std::fs::create_dir_all(t.data()).unwrap();
    std::fs::write(t.data().join("config.toml"), toml).unwrap();
}

/// Sends `opening` after `delay`, then `trickle` a byte every 200 ms, until the server closes
/// the connection; returns how long after connecting it did.
fn time_until_closed(server: &Server, delay: Duration, trickle: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.https()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let closed = |stream: &mut TcpStream, buf: &mut [u8]| match stream.read(buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    while started.elapsed() < delay {
        if closed(&mut stream, &mut buf) {
            return started.elapsed();
        }
    }
    for byte in trickle.iter().cycle() {
        if stream.write_all(&[*byte]).is_err() || closed(&mut stream, &mut buf) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never closed");
    }
    unreachable!()
}

/// The handshake timeout was counted twice: once for the first byte, then again from the
/// first byte for the TLS handshake or the plain request head. A client that sent its first
/// byte just before the timeout and then dribbled held its slot for twice the timeout.
#[test]
fn the_handshake_timeout_counts_from_the_connection_not_from_its_first_byte() {
    let t = TestDir::new();
    write_config(&t, "[http]\nhandshake_timeout_secs = 2\n");
    let server = Server::start(&t, &[]);
    let delay = Duration::from_millis(1500);
    let plain = time_until_closed(&server, delay, b"GET /images/x HTTP/1.1\r\nX: ");
    // A TLS record header announcing a long ClientHello, then a byte at a time.
    let tls = time_until_closed(&server, delay, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    for (what, took) in [("plain HTTP", plain), ("TLS", tls)] {
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(2900),
            "{what}: closed after {took:?}, not at the 2 s timeout"
        );
    }
    // Still serving.
    wait_until(Duration::from_secs(10), "an answer", || {
        let (raw, _) = support::http::plain(
            server.https(),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        );
        (!raw.is_empty()).then_some(())
    });
}

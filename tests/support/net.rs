//! What the attack and flood tests need beyond the clients: sockets from a chosen loopback
//! address, room for many file descriptors, and the memory of the server process.
//!
//! All of 127.0.0.0/8 is loopback on Linux. An attack sent from [`ATTACKER`] reaches the
//! server as another address than the legitimate user's 127.0.0.1, so per-address caps and
//! throttling fall on the attacker only, as they would across a real network.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where attacks come from.
pub const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Where the legitimate user comes from (what every client binds by default).
pub const USER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A TCP connection to `to` from `from` (any port).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// The same, blocking.
pub fn connect_from_blocking(from: IpAddr, to: SocketAddr) -> io::Result<std::net::TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = runtime.block_on(connect_from(from, to))?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Raises this process's soft limit on open files to at least `wanted` (the server, started
/// later, inherits it). Fails the test when the hard limit is lower.
pub fn raise_fd_limit(wanted: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "this test opens {wanted} sockets but the hard limit on open files is {hard}; raise it (ulimit -Hn)"
    );
    limit.current = Some(wanted);
    setrlimit(Resource::Nofile, limit).expect("raise the open-file limit");
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident now, KiB.
    pub rss_kib: u64,
    /// VmHWM: the most ever resident, KiB.
    pub peak_kib: u64,
}

pub fn memory(pid: u32) -> Memory {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    }
}

/// How many segments carrying data a connection has received (`tcpi_data_segs_in`).
pub fn data_segments_received(stream: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a tcp_info of `len` bytes, owned here; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
    info.tcpi_data_segs_in
}

/// A TCP relay on 127.0.0.1 to `upstream` that counts the bytes its clients send: put between
/// a server and its object store, it tells a test how far an upload has gone. Runs until the
/// test process ends (threads, one pair per connection).
pub struct CountingRelay {
    pub addr: std::net::SocketAddr,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingRelay {
    pub fn start(upstream: std::net::SocketAddr) -> CountingRelay {
        Self::start_with(upstream, false)
    }

    /// The same, handing the upstream's bytes on in batches of 16 KiB (or what came before a
    /// 50 ms pause): an answer's head then reaches the client together with body bytes.
    pub fn start_coalescing(upstream: std::net::SocketAddr) -> CountingRelay {
        Self::start_with(upstream, true)
    }

    fn start_with(upstream: std::net::SocketAddr, coalesce: bool) -> CountingRelay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(mut client_read), Ok(mut server_write)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match io::Read::read(&mut client_read, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                                if io::Write::write_all(&mut server_write, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = server_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_read, mut client_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = match coalesce {
                        true => copy_in_batches(&mut server_read, &mut client_write),
                        false => io::copy(&mut server_read, &mut client_write).map(|_| ()),
                    };
                    let _ = client_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingRelay { addr, sent }
    }

    /// Bytes clients sent through so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Copies `from` to `to` in writes of at least 16 KiB, or of what came before a 50 ms pause.
fn copy_in_batches(from: &mut std::net::TcpStream, to: &mut std::net::TcpStream) -> io::Result<()> {
    from.set_read_timeout(Some(std::time::Duration::from_millis(50)))?;
    let mut batch = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match io::Read::read(from, &mut buf) {
            Ok(0) => return io::Write::write_all(to, &batch),
            Ok(n) => batch.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                io::Write::write_all(to, &batch)?;
                batch.clear();
                continue;
            }
            Err(e) => return Err(e),
        }
        if batch.len() >= 16 << 10 {
            io::Write::write_all(to, &batch)?;
            batch.clear();
        }
    }
}

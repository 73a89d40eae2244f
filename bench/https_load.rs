//! A load client for `bench/http.sh`: many HTTPS clients at once, HTTP/1.1 over TLS 1.3 (ALPN
//! http/1.1, as LXD's Go client speaks to a server without h2), from one process so that the
//! client side costs the same for every server under test.
//!
//! ```text
//! https_load fleet   URL CA_PEM CLIENTS            # CLIENTS downloads of URL at once
//! https_load connect URL CA_PEM COUNT CONCURRENCY [resume]
//! ```
//!
//! `fleet` starts every download together and prints one line per client, `seconds bytes`,
//! then `total_seconds total_bytes`. `connect` opens COUNT new connections (CONCURRENCY at a
//! time), each with a full TLS handshake (no session resumption unless `resume`: polling
//! daemons do not keep sessions) and one `Connection: close` request, and prints
//! `seconds count`. A download that fails or comes back short is an error (exit 1).

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Target {
    host: String,
    port: u16,
    path: String,
    connector: tokio_rustls::TlsConnector,
}

impl Target {
    fn new(url: &str, ca_pem: &str, resume: bool) -> Result<Target, Error> {
        let rest = url
            .strip_prefix("https://")
            .ok_or("the URL must start with https://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or("the URL must name a port (https://127.0.0.1:8443/...)")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Target {
            host: host.to_string(),
            port: port.parse()?,
            path: if path.is_empty() { "/" } else { path }.to_string(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// One connection, one GET; returns the body's length after checking it against
    /// Content-Length.
    async fn get(&self) -> Result<u64, Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let mut tls = self.connector.connect(name, tcp).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: https_load\r\nConnection: close\r\n\r\n",
            self.path, self.host, self.port
        );
        tls.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut head = Vec::new();
        let (expected, mut body) = loop {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                return Err("the server closed the connection before the response head".into());
            }
            head.extend_from_slice(&buf[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&head)? {
                if response.code != Some(200) {
                    return Err(format!("status {:?}", response.code).into());
                }
                let expected = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<u64>().ok())
                    .ok_or("no Content-Length")?;
                break (expected, (head.len() - len) as u64);
            }
        };
        while body < expected {
            // A server that closes without close_notify after the last byte is fine here:
            // the length is what counts.
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            body += n as u64;
        }
        if body != expected {
            return Err(format!("got {body} of {expected} bytes").into());
        }
        Ok(body)
    }
}

async fn fleet(target: Arc<Target>, clients: usize) -> Result<(), Error> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let bytes = target.get().await?;
            Ok::<_, Error>((start.elapsed().as_secs_f64(), bytes))
        }));
    }
    let mut total = 0;
    for task in tasks {
        let (seconds, bytes) = task.await??;
        println!("{seconds:.3} {bytes}");
        total += bytes;
    }
    println!("{:.3} {total}", start.elapsed().as_secs_f64());
    Ok(())
}

async fn connect(target: Arc<Target>, count: usize, concurrency: usize) -> Result<(), Error> {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, next) = (target.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                target.get().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("{:.3} {count}", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: https_load fleet URL CA_PEM CLIENTS | connect URL CA_PEM COUNT CONCURRENCY [resume]";
    let run = || -> Result<(), Error> {
        let runtime = tokio::runtime::Runtime::new()?;
        match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["fleet", url, ca, clients] => {
                let target = Arc::new(Target::new(url, ca, false)?);
                runtime.block_on(fleet(target, clients.parse()?))
            }
            ["connect", url, ca, count, concurrency, ref rest @ ..] => {
                let resume = rest == ["resume"];
                let target = Arc::new(Target::new(url, ca, resume)?);
                runtime.block_on(connect(target, count.parse()?, concurrency.parse()?))
            }
            _ => Err(usage.into()),
        }
    };
    if let Err(e) = run() {
        eprintln!("https_load: {e}");
        std::process::exit(1);
    }
}

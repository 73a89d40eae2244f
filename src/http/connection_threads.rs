//! The threads HTTPS connections run on: one per core, each with a single-threaded tokio
//! runtime, as nginx runs one worker per core.
//!
//! A connection stays on its thread from the handshake to the close, so reading a request,
//! answering it and writing the response never wake another thread. On the shared
//! multi-threaded runtime every small request cost cross-thread wakeups (about 0.65 futex
//! calls per `index.json` under wrk), a fixed cost nginx does not pay.
//!
//! The accept loop stays where it was (caps, the gate, shutdown in one place) and hands each
//! accepted socket to the thread with the fewest connections open. Work a connection sends
//! to the blocking pool (disk reads, gzip) goes to its own thread's pool; background jobs
//! (reloads, mirrors, the sweeper) stay on the main runtime.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a thread's runtime waits for its blocking jobs when the server stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

pub struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
    /// Ends every thread's runtime (tasks still running there are dropped).
    stop: CancellationToken,
}

struct ConnectionThread {
    runtime: tokio::runtime::Handle,
    /// Connections handed to this thread and not yet closed.
    open: Arc<AtomicUsize>,
}

impl ConnectionThreads {
    /// One thread per core the process may use.
    pub fn start() -> io::Result<ConnectionThreads> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let stopped = stop.clone();
            std::thread::Builder::new()
                .name(format!("https-{index}"))
                .spawn(move || {
                    runtime.block_on(stopped.cancelled());
                    runtime.shutdown_timeout(STOP_TIMEOUT);
                })?;
            threads.push(ConnectionThread {
                runtime: handle,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(ConnectionThreads { threads, stop })
    }

    /// Runs `serve` with `stream` on the thread with the fewest connections open, tracked by
    /// `tracker` (what graceful shutdown waits for).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|thread| thread.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // A socket is registered with one runtime's reactor: this one's, then the thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to its thread");
                return;
            }
        };
        let open = OpenConnection::new(thread.open.clone());
        thread.runtime.spawn(tracker.track_future(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::debug!(error = %e, "cannot register a connection"),
            }
        }));
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts a connection as open on its thread until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_spread_over_the_threads_and_are_tracked() {
        let threads = ConnectionThreads::start().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tracker = TaskTracker::new();
        let (names_tx, mut names_rx) = tokio::sync::mpsc::unbounded_channel();
        let release = CancellationToken::new();
        let mut clients = Vec::new();
        for _ in 0..threads.threads.len() {
            clients.push(TcpStream::connect(address).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let (names_tx, release) = (names_tx.clone(), release.clone());
            threads.spawn(&tracker, stream, move |stream| async move {
                let name = std::thread::current().name().map(str::to_string);
                names_tx.send(name).unwrap();
                release.cancelled().await;
                drop(stream);
            });
        }
        let mut names = Vec::new();
        for _ in 0..threads.threads.len() {
            names.push(names_rx.recv().await.unwrap().unwrap());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), threads.threads.len(), "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("https-")), "{names:?}");

        tracker.close();
        assert_eq!(tracker.len(), threads.threads.len());
        release.cancel();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .unwrap();
        assert!(
            threads
                .threads
                .iter()
                .all(|t| t.open.load(Ordering::Relaxed) == 0)
        );
    }
}

//! The thread behind a file whose bytes arrive in order from the network (an SSH upload, a
//! mirror's download): it hashes them and writes them to disk, so the connection's task only
//! decrypts and queues.
//!
//! Bytes are written in aligned 1 MiB blocks with `O_DIRECT` ([`DirectFile`]): the file does
//! not pass through the page cache, and by the time the last bytes are answered for they are
//! on the device, so an `import` or a publication finds nothing left to flush.
//!
//! A write that fails (a full disk) stops the thread at once: the next call on the
//! [`DiskWriter`] returns that error, so the sender hears it at its next write rather than
//! after sending the rest of the file.

use std::io;
use std::path::Path;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::direct_file::DirectFile;
use crate::sha256::{Sha256State, update_all_copying};

/// What the thread wrote and hashed.
pub struct Written {
    pub len: u64,
    pub own: Sha256State,
    /// (sha256 of a metadata tarball, sha256 state of that metadata followed by this file).
    pub combined: Vec<(String, Sha256State)>,
}

enum Job {
    /// Hash states to continue alongside the file's own (sent before any data).
    Seeds(Vec<(String, Sha256State)>),
    Data(Vec<Bytes>),
    Sync(oneshot::Sender<io::Result<()>>),
    Finish,
}

/// The connection's side of a writer thread. Dropped without [`DiskWriter::finish`], the
/// thread stops and writes nothing more.
pub struct DiskWriter {
    jobs: mpsc::Sender<Job>,
    done: oneshot::Receiver<io::Result<Written>>,
    /// The error the thread stopped on, once it has been received from `done`.
    failed: Option<io::Error>,
    /// One of the gateway's writer slots, held while the writer lives.
    _slot: OwnedSemaphorePermit,
}

fn gone() -> io::Error {
    io::Error::other("the file's writer thread stopped")
}

/// The same error again (io::Error is not Clone); the OS error code, and so the kind, stays.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl DiskWriter {
    /// Starts writing to the (new, empty) file at `path` from offset 0; `direct` asks for
    /// `O_DIRECT`. `slot` bounds how many writer threads exist at once, `queue` how many
    /// [`DiskWriter::write`]s may wait for the thread (the memory a writer holds).
    pub fn start(
        path: &Path,
        direct: bool,
        slot: OwnedSemaphorePermit,
        queue: usize,
    ) -> io::Result<DiskWriter> {
        let file = DirectFile::create(path, direct)?;
        let (jobs, rx) = mpsc::channel(queue);
        let (done_tx, done) = oneshot::channel();
        let mut state = WriterState::new(file);
        std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || state.run(rx, done_tx))?;
        Ok(DiskWriter {
            jobs,
            done,
            failed: None,
            _slot: slot,
        })
    }

    /// Queues `job`; when the thread has stopped, the error it stopped on.
    async fn send(&mut self, job: Job) -> io::Result<()> {
        if self.failed.is_none() && self.jobs.send(job).await.is_ok() {
            return Ok(());
        }
        Err(self.stopped().await)
    }

    /// Why the thread stopped: a failed write, or [`gone`] when it died without saying.
    async fn stopped(&mut self) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some(match (&mut self.done).await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) | Err(_) => gone(),
            });
        }
        self.failed.as_ref().map_or_else(gone, copy_error)
    }

    pub async fn seeds(&mut self, seeds: Vec<(String, Sha256State)>) -> io::Result<()> {
        self.send(Job::Seeds(seeds)).await
    }

    /// Queues the next bytes of the file.
    pub async fn write(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        self.send(Job::Data(chunks)).await
    }

    /// Makes everything queued so far durable.
    pub async fn sync(&mut self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Sync(reply)).await?;
        match answer.await {
            Ok(synced) => synced,
            Err(_) => Err(self.stopped().await),
        }
    }

    /// Writes what is queued, sets the file's exact length and hands back the hashes.
    pub async fn finish(mut self) -> io::Result<Written> {
        self.send(Job::Finish).await?;
        match self.done.await {
            Ok(written) => written,
            Err(_) => Err(gone()),
        }
    }
}

struct WriterState {
    file: DirectFile,
    own: Sha256State,
    combined: Vec<(String, Sha256State)>,
}

impl WriterState {
    fn new(file: DirectFile) -> Self {
        WriterState {
            file,
            own: Sha256State::new(),
            combined: Vec::new(),
        }
    }

    fn run(&mut self, mut jobs: mpsc::Receiver<Job>, done: oneshot::Sender<io::Result<Written>>) {
        while let Some(job) = jobs.blocking_recv() {
            match job {
                Job::Seeds(seeds) => self.combined = seeds,
                Job::Data(chunks) => {
                    if let Err(e) = self.append(&chunks) {
                        // Stop here: the next send fails and fetches this error.
                        let _ = done.send(Err(e));
                        return;
                    }
                }
                Job::Sync(reply) => {
                    let _ = reply.send(self.sync());
                }
                Job::Finish => {
                    let _ = done.send(self.finish());
                    return;
                }
            }
        }
        // The sender was dropped: nothing more to do; its temp file is removed by the owner.
    }

    /// Hashes `chunks` while copying them into the file's block (one pass over the bytes).
    fn append(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        let mut states: Vec<&mut Sha256State> = std::iter::once(&mut self.own)
            .chain(self.combined.iter_mut().map(|(_, state)| state))
            .collect();
        for chunk in chunks {
            self.file
                .append_with(chunk, |from, to| update_all_copying(&mut states, from, to))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn finish(&mut self) -> io::Result<Written> {
        self.file.write_tail()?;
        Ok(Written {
            len: self.file.len(),
            own: std::mem::take(&mut self.own),
            combined: std::mem::take(&mut self.combined),
        })
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::direct_file::tests::data;
    use crate::direct_file::{ALIGN, BLOCK};

    const QUEUE: usize = 16;

    fn slot() -> OwnedSemaphorePermit {
        std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap()
    }

    async fn write_all(path: &Path, direct: bool, body: &[u8], seed: &[u8]) -> Written {
        std::fs::write(path, b"").unwrap();
        let mut writer = DiskWriter::start(path, direct, slot(), QUEUE).unwrap();
        if !seed.is_empty() {
            let mut state = Sha256State::new();
            state.update(seed);
            writer.seeds(vec![("seed".into(), state)]).await.unwrap();
        }
        for (i, piece) in body.chunks(261_120).enumerate() {
            let chunks: Vec<Bytes> = piece.chunks(32_768).map(Bytes::copy_from_slice).collect();
            writer.write(chunks).await.unwrap();
            if i == 2 {
                writer.sync().await.unwrap();
            }
        }
        writer.finish().await.unwrap()
    }

    #[tokio::test]
    async fn writes_and_hashes_exactly_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        // With a metadata seed (two hashes, interleaved) and without (the file's own alone).
        for (direct, len, seed) in [
            (true, 3 * BLOCK + 12_345, b"meta".as_slice()),
            (false, BLOCK + 1, b"meta"),
            (true, 100, b"meta"),
            (true, 0, b"meta"),
            (true, 2 * BLOCK + 77, b""),
        ] {
            let body = data(len);
            let written = write_all(&path, direct, &body, seed).await;
            assert_eq!(written.len, len as u64);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                body,
                "direct {direct} len {len}"
            );
            assert_eq!(written.own.finalize()[..], Sha256::digest(&body)[..]);
            if seed.is_empty() {
                assert!(written.combined.is_empty());
                continue;
            }
            let (name, combined) = written.combined.into_iter().next().unwrap();
            assert_eq!(name, "seed");
            let expected = Sha256::digest([seed, &body].concat());
            assert_eq!(combined.finalize()[..], expected[..]);
        }
    }

    #[tokio::test]
    async fn a_dropped_writer_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        std::fs::write(&path, b"").unwrap();
        let mut writer = DiskWriter::start(&path, true, slot(), QUEUE).unwrap();
        writer.write(vec![Bytes::from(data(5000))]).await.unwrap();
        drop(writer);
        // Nothing hangs, and the file is at most what was written.
        assert!(std::fs::metadata(&path).unwrap().len() <= ALIGN as u64 * 2);
    }

    /// `/dev/full` fails every write with ENOSPC, as a full disk does.
    #[tokio::test]
    async fn a_full_disk_is_reported_at_the_next_write() {
        let mut writer = DiskWriter::start(Path::new("/dev/full"), false, slot(), QUEUE).unwrap();
        let block = Bytes::from(data(BLOCK));
        let mut sent = 0;
        let error = loop {
            match writer.write(vec![block.clone()]).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 2 + QUEUE, "the failed write was never reported");
        };
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        // Every later call says the same.
        let again = writer.sync().await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::StorageFull);
        let last = writer.finish().await.err().unwrap();
        assert_eq!(last.kind(), io::ErrorKind::StorageFull);
    }
}

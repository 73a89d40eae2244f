//! One pass over a file: its sha256, the combined fingerprint sha256(metadata ‖ root) and an
//! optional copy, all from the same read. The combined hash starts from a clone of the metadata
//! hasher's state, so the metadata is never hashed twice, and both hashes advance together in
//! one interleaved pass ([`crate::sha256::update_pair`]) on a second thread while this one
//! reads, which keeps an import at the speed of `openssl dgst -sha256` or better.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::sha256::{Sha256State, update_pair};

/// Bytes per read; large enough that per-chunk overhead vanishes, small enough to pipeline.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader and the other stages.
const IN_FLIGHT: usize = 8;

/// Reports how far the reading of a file has come; the import command turns it into a
/// progress line.
pub trait Progress {
    /// A file named `label` of `total` bytes (when known) starts being read.
    fn start(&mut self, _label: &str, _total: Option<u64>) {}
    /// `done` bytes of the current file have been read.
    fn advance(&mut self, _done: u64) {}
    /// The current file has been read to its end.
    fn finish(&mut self) {}
}

/// Progress that goes nowhere.
pub struct Silent;
impl Progress for Silent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigest {
    pub size: u64,
    pub sha256: String,
    /// sha256(seed ‖ stream), when a seed was given.
    pub combined: Option<String>,
}

pub fn hex(digest: impl AsRef<[u8]>) -> String {
    hex::encode(digest.as_ref())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes))
}

/// Reads `reader` to its end. `combined_seed` is a hasher that has consumed the metadata;
/// `copy_to` receives every byte.
pub fn digest_stream(
    reader: &mut dyn Read,
    combined_seed: Option<Sha256State>,
    copy_to: Option<&mut (dyn Write + Send)>,
    progress: &mut dyn Progress,
) -> io::Result<StreamDigest> {
    let mut own = Sha256State::new();
    let mut size = 0u64;
    if combined_seed.is_none() && copy_to.is_none() {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_some(reader, &mut buf)?;
            if n == 0 {
                break;
            }
            own.update(&buf[..n]);
            size += n as u64;
            progress.advance(size);
        }
        return Ok(StreamDigest {
            size,
            sha256: hex(own.finalize()),
            combined: None,
        });
    }

    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..IN_FLIGHT {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        // A pipeline: this thread reads, a second hashes (both streams in one interleaved
        // pass), a third writes the copy. A copying import then takes as long as its slowest
        // stage, not the sum of hashing and writing.
        let (hashed_tx, writer) = match copy_to {
            Some(sink) => {
                let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
                let empty_tx = empty_tx.clone();
                let writer = scope.spawn(move || -> io::Result<()> {
                    for chunk in hashed_rx {
                        sink.write_all(&chunk)?;
                        let _ = empty_tx.send(chunk);
                    }
                    sink.flush()
                });
                (Some(hashed_tx), Some(writer))
            }
            None => (None, None),
        };
        let hasher = scope.spawn(move || -> (String, Option<String>) {
            let mut combined = combined_seed;
            for chunk in full_rx {
                match combined.as_mut() {
                    Some(hasher) => update_pair(&mut own, hasher, &chunk),
                    None => own.update(&chunk),
                }
                match &hashed_tx {
                    Some(writer) => {
                        if writer.send(chunk).is_err() {
                            // The writer stopped: its join reports why.
                            break;
                        }
                    }
                    None => {
                        // The reader may have stopped early; a closed channel is fine.
                        let _ = empty_tx.send(chunk);
                    }
                }
            }
            (own.finalize_hex(), combined.map(Sha256State::finalize_hex))
        });

        let read_result = (|| -> io::Result<()> {
            loop {
                let Ok(mut buf) = empty_rx.recv() else {
                    // The other stages stopped: an error is reported by their joins below.
                    return Ok(());
                };
                buf.resize(CHUNK, 0);
                let n = read_some(reader, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                size += n as u64;
                progress.advance(size);
                if full_tx.send(buf).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let panicked = |_| io::Error::other("a hashing or copying thread panicked");
        let (sha256, combined) = hasher.join().map_err(panicked)?;
        if let Some(writer) = writer {
            writer.join().map_err(panicked)??;
        }
        read_result?;
        Ok(StreamDigest {
            size,
            sha256,
            combined,
        })
    })
}

/// Fills as much of `buf` as the reader gives before EOF, retrying on EINTR.
fn read_some(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A reader that hashes (and optionally copies) everything read through it: used where a
/// parser drives the reads, as when a unified tarball is walked while it is stored.
/// A failed copy (a full disk) fails the read too, so the parser stops; it is kept apart for
/// [`HashingReader::take_copy_error`], so that it is not reported as a corrupt input.
pub struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    copy_to: Option<&'a mut dyn Write>,
    copy_error: Option<io::Error>,
    progress: &'a mut dyn Progress,
}

impl<'a, R: Read> HashingReader<'a, R> {
    pub fn new(
        inner: R,
        copy_to: Option<&'a mut dyn Write>,
        progress: &'a mut dyn Progress,
    ) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
            copy_to,
            copy_error: None,
            progress,
        }
    }

    /// Reads whatever the parser left unread, then returns the digest of the whole stream.
    pub fn finish(&mut self) -> io::Result<StreamDigest> {
        let mut rest = vec![0u8; 64 << 10];
        while self.read(&mut rest)? > 0 {}
        Ok(StreamDigest {
            size: self.size,
            sha256: hex(std::mem::take(&mut self.hasher).finalize()),
            combined: None,
        })
    }

    /// Why the copy failed, when it did: then that, not the input, stopped the reading.
    pub fn take_copy_error(&mut self) -> Option<io::Error> {
        self.copy_error.take()
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.copy_error.is_some() {
            return Err(io::Error::other("the copy failed"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(sink) = self.copy_to.as_mut()
            && let Err(e) = sink.write_all(&buf[..n])
        {
            self.copy_error = Some(e);
            return Err(io::Error::other("the copy failed"));
        }
        self.size += n as u64;
        self.progress.advance(self.size);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_equals_hash_of_concatenation() {
        let meta = b"metadata bytes".to_vec();
        let root: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut seed = Sha256State::new();
        seed.update(&meta);
        let mut copy = Vec::new();
        let digest =
            digest_stream(&mut &root[..], Some(seed), Some(&mut copy), &mut Silent).unwrap();
        assert_eq!(digest.size, root.len() as u64);
        assert_eq!(digest.sha256, sha256_hex(&root));
        assert_eq!(
            digest.combined.unwrap(),
            sha256_hex(&[meta, root.clone()].concat())
        );
        assert_eq!(copy, root);
    }

    #[test]
    fn plain_digest_and_hashing_reader_agree() {
        let data = vec![42u8; CHUNK + 5];
        let plain = digest_stream(&mut &data[..], None, None, &mut Silent).unwrap();
        let mut silent = Silent;
        let mut reader = HashingReader::new(&data[..], None, &mut silent);
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(reader.finish().unwrap(), plain);
    }

    #[test]
    fn a_failed_copy_is_told_apart_from_the_input() {
        let data = vec![7u8; 1000];
        let mut full = io::BufWriter::with_capacity(
            0,
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        let mut silent = Silent;
        let mut reader = HashingReader::new(&data[..], Some(&mut full), &mut silent);
        assert!(reader.finish().is_err());
        let e = reader.take_copy_error().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        // A read error of the input is no copy error.
        let mut silent = Silent;
        let mut reader = HashingReader::new(&data[..], None, &mut silent);
        assert!(reader.finish().is_ok());
        assert!(reader.take_copy_error().is_none());
    }

    #[test]
    fn read_errors_surface() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err =
            digest_stream(&mut Broken, Some(Sha256State::new()), None, &mut Silent).unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
    }
}

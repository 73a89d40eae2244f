//! Making the deltas [`delta::pending`] names, off the import's path: the version is already
//! published; its delta follows in a transaction of its own once it is made and checked.
//!
//! For one delta: encode it into `tmp/` with no lock held (reading the base and the new root
//! once each, and checking both against their recorded sha256), give up as soon as it grows
//! past `catalog.delta_max_ratio` of the root, decode it against the base and compare the
//! result with the root's recorded size and sha256, then attach it
//! ([`super::Transaction::attach_delta`]). A delta that is too large or fails its check is
//! declined for good (recorded, never tried again); any other failure (a damaged base, a full
//! disk) leaves it pending for the next try. Nothing unchecked is ever published: clients do
//! not fall back to the full file when a delta fails.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::PathBuf;

use super::delta::{self, Attached, DeltaJob, VerifiedDelta};
use super::hashing::{self, Silent};
use super::record::StoredFile;
use super::{Catalog, CatalogError, Result};
use crate::format::human_size;
use crate::fsutil;
use crate::storage::ObjectRead;
use crate::vcdiff::{DeltaError, decode, encode};

/// What became of one delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Checked and published.
    Published(StoredFile),
    /// The root already had one from that base (made meanwhile by another process).
    AlreadyThere(StoredFile),
    /// Not published, for good; the reason, as recorded.
    Declined(String),
    /// Stopped before it was done (shutdown); still pending.
    Stopped,
}

/// How encoding ended: a delta to check, or an outcome already.
enum Encoding {
    Written(Staged),
    Ended(DeltaOutcome),
}

/// A file in `tmp/`, deleted on drop unless it was moved away.
pub(super) struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Catalog {
    /// Makes, checks and publishes every pending delta that `wanted` accepts, one after
    /// another. `each` hears of every one as it ends. Does nothing when `catalog.deltas` is off.
    pub fn make_pending_deltas(
        &self,
        wanted: &dyn Fn(&DeltaJob) -> bool,
        stop: &dyn Fn() -> bool,
        each: &mut dyn FnMut(&DeltaJob, &Result<DeltaOutcome>),
    ) -> Result<()> {
        if !self.settings().deltas {
            return Ok(());
        }
        for job in delta::pending(&self.load()?) {
            if !wanted(&job) {
                continue;
            }
            let outcome = self.make_delta(&job, stop);
            each(&job, &outcome);
            if matches!(outcome, Ok(DeltaOutcome::Stopped)) {
                break;
            }
        }
        Ok(())
    }

    /// Makes, checks and publishes one delta; see the module documentation.
    pub fn make_delta(&self, job: &DeltaJob, stop: &dyn Fn() -> bool) -> Result<DeltaOutcome> {
        let (base, _base_copy) = self.local_file(&job.base)?;
        let (target, _target_copy) = self.local_file(&job.target)?;
        match self.encode_delta(job, &base, &target, stop)? {
            Encoding::Written(staged) => self.check_and_attach(job, &base, staged, stop),
            Encoding::Ended(outcome) => Ok(outcome),
        }
    }

    /// Encodes the delta into `tmp/`, no lock held, checking that both roots are what the
    /// record says they are.
    fn encode_delta(
        &self,
        job: &DeltaJob,
        base: &File,
        target: &File,
        stop: &dyn Fn() -> bool,
    ) -> Result<Encoding> {
        let ratio = self.settings().delta_max_ratio;
        let max_size = (job.target.size as f64 * ratio) as u64;
        let staged = Staged(fsutil::temp_path(&self.dirs.tmp(), "delta"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged.0)
            .map_err(|e| fsutil::with_path(e, "cannot create", &staged.0))?;
        let mut out = BufWriter::new(file);
        let encoded = match encode::encode(base, target, &mut out, max_size, stop) {
            Ok(encoded) => encoded,
            Err(DeltaError::TooLarge { .. }) => {
                let reason = format!("larger than {ratio} of the root ({})", human_size(max_size));
                return self.decline(job, reason).map(Encoding::Ended);
            }
            Err(DeltaError::Stopped) => return Ok(Encoding::Ended(DeltaOutcome::Stopped)),
            Err(e) => return Err(delta_failed(job, "cannot be made", e)),
        };
        for (file, sha256) in [
            (&job.base, &encoded.source_sha256),
            (&job.target, &encoded.target_sha256),
        ] {
            if sha256 != &file.sha256 {
                return Err(CatalogError::Conflict(format!(
                    "{} does not match its recorded sha256, so no delta is made from or to it; run `verify`",
                    file.path
                )));
            }
        }
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .map_err(|e| fsutil::with_path(e, "cannot write", &staged.0))?;
        Ok(Encoding::Written(staged))
    }

    /// The check, then the second transaction: the delta applied to the base must give the
    /// root, byte for byte, or it is declined.
    fn check_and_attach(
        &self,
        job: &DeltaJob,
        base: &File,
        staged: Staged,
        stop: &dyn Fn() -> bool,
    ) -> Result<DeltaOutcome> {
        let mut written =
            File::open(&staged.0).map_err(|e| fsutil::with_path(e, "cannot open", &staged.0))?;
        match decode::decode(base, &mut written, None, job.target.size, stop) {
            Ok(decoded)
                if decoded.size == job.target.size && decoded.sha256 == job.target.sha256 => {}
            Ok(_) => {
                return self.decline(
                    job,
                    "it failed its check (it does not rebuild the root)".into(),
                );
            }
            Err(DeltaError::Stopped) => return Ok(DeltaOutcome::Stopped),
            Err(DeltaError::Io(e)) => {
                return Err(delta_failed(job, "cannot be checked", DeltaError::Io(e)));
            }
            Err(e) => return self.decline(job, format!("it failed its check ({e})")),
        }
        let digest = File::open(&staged.0)
            .and_then(|mut file| hashing::digest_stream(&mut file, None, None, &mut Silent))
            .map_err(|e| fsutil::with_path(e, "cannot read", &staged.0))?;
        let verified = VerifiedDelta {
            product_id: job.product_id.clone(),
            serial: job.serial.clone(),
            base_serial: job.base_serial.clone(),
            staged: staged.0.clone(),
            size: digest.size,
            sha256: digest.sha256,
        };
        Ok(match self.attach_delta(&verified)? {
            Attached::Published(file) => DeltaOutcome::Published(file),
            Attached::AlreadyThere(file) => DeltaOutcome::AlreadyThere(file),
        })
    }

    fn decline(&self, job: &DeltaJob, reason: String) -> Result<DeltaOutcome> {
        self.decline_delta(&job.product_id, &job.serial, &job.base_serial, &reason)?;
        Ok(DeltaOutcome::Declined(reason))
    }

    /// A published file as a local file to read at random: the file itself on the local
    /// tree, else a copy in `tmp/` (deleted when the second value drops).
    pub(super) fn local_file(&self, file: &StoredFile) -> Result<(File, Option<Staged>)> {
        let opened = self.tree().open(&file.path)?.ok_or_else(|| {
            CatalogError::NotFound(format!("{} is missing from the published tree", file.path))
        })?;
        if let Some(local) = opened.reader.local_file() {
            let local = local.try_clone().map_err(|e| {
                fsutil::with_path(e, "cannot open", std::path::Path::new(&file.path))
            })?;
            return Ok((local, None));
        }
        let copy = Staged(fsutil::temp_path(&self.dirs.tmp(), "delta-base"));
        let mut out = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&copy.0)
            .map_err(|e| fsutil::with_path(e, "cannot create", &copy.0))?;
        io::copy(&mut ObjectRead::new(opened.reader), &mut out)
            .map_err(|e| fsutil::with_path(e, "cannot copy", std::path::Path::new(&file.path)))?;
        Ok((out, Some(copy)))
    }
}

fn delta_failed(job: &DeltaJob, what: &str, e: DeltaError) -> CatalogError {
    let message = format!(
        "the delta of {} version {} from {} {what}: {e}",
        job.product_id, job.serial, job.base_serial
    );
    match e {
        DeltaError::Io(io) => CatalogError::Io(io::Error::new(io.kind(), message)),
        _ => CatalogError::Invalid(message),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;
    use crate::catalog::CatalogSettings;
    use crate::catalog::delta::pending;
    use crate::data_dir::DataDir;

    /// The generation check: a delta damaged between encoding and publishing (a bad disk, an
    /// encoder bug) is declined, and the stream never names it.
    #[test]
    fn a_damaged_delta_is_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path().join("data"));
        let catalog = Catalog::open(dirs.clone(), CatalogSettings::default()).unwrap();
        let roots = super::super::delta::tests::two_versions(&catalog, dir.path());
        let job = pending(&catalog.load().unwrap()).remove(0);
        let (base, _) = catalog.local_file(&job.base).unwrap();
        let (target, _) = catalog.local_file(&job.target).unwrap();
        let Encoding::Written(staged) = catalog
            .encode_delta(&job, &base, &target, &|| false)
            .unwrap()
        else {
            panic!("no delta was written for {roots:?}");
        };
        let mut file = OpenOptions::new().write(true).open(&staged.0).unwrap();
        let len = file.metadata().unwrap().len();
        file.seek(SeekFrom::Start(len - 1)).unwrap();
        file.write_all(b"\xff").unwrap();
        drop(file);

        let outcome = catalog
            .check_and_attach(&job, &base, staged, &|| false)
            .unwrap();
        let DeltaOutcome::Declined(reason) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.starts_with("it failed its check"), "{reason}");
        let images = std::fs::read_to_string(dirs.www().join(crate::streams::IMAGES_PATH)).unwrap();
        assert!(!images.contains("squashfs.vcdiff"), "{images}");
        assert_eq!(pending(&catalog.load().unwrap()), [], "declined for good");
        let left: Vec<_> = std::fs::read_dir(dirs.tmp()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        // Undamaged, the same delta is checked and published.
        let other = dir.path().join("again");
        std::fs::create_dir_all(&other).unwrap();
        let dirs = DataDir::new(other.join("data"));
        let catalog = Catalog::open(dirs.clone(), CatalogSettings::default()).unwrap();
        super::super::delta::tests::two_versions(&catalog, &other);
        let job = pending(&catalog.load().unwrap()).remove(0);
        let outcome = catalog.make_delta(&job, &|| false).unwrap();
        assert!(matches!(outcome, DeltaOutcome::Published(_)), "{outcome:?}");
        let images = std::fs::read_to_string(dirs.www().join(crate::streams::IMAGES_PATH)).unwrap();
        assert!(images.contains("squashfs.vcdiff"), "{images}");
    }
}

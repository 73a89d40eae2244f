//! `verify`: re-read every published file and compare it with the record: size, sha256 and
//! combined fingerprint; report files no image references and a stream that drifted from the
//! record. Every problem is reported; none stops the check.

use std::collections::BTreeSet;
use std::io;

use super::hashing::{self, Progress};
use super::record::{StoredFile, VersionFiles};
use super::{Catalog, Result};
use crate::sha256::Sha256State;
use crate::storage::ObjectRead;
use crate::streams;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub images: usize,
    pub files: usize,
    pub bytes: u64,
    /// One sentence per problem.
    pub problems: Vec<String>,
}

impl Catalog {
    pub fn verify(&self, progress: &mut dyn Progress) -> Result<VerifyReport> {
        self.verify_with(false, progress)
    }

    /// [`Catalog::verify`]; `deep` also applies every delta to its base and compares the
    /// result with the root it is meant to rebuild.
    pub fn verify_with(&self, deep: bool, progress: &mut dyn Progress) -> Result<VerifyReport> {
        let state = self.load()?;
        let mut report = VerifyReport::default();
        for (product_id, product) in &state.products {
            for (serial, version) in &product.versions {
                let place = format!("{product_id} {serial}");
                match &version.files {
                    VersionFiles::Split { metadata, roots } => {
                        let Some(meta_bytes) = self.check_metadata(metadata, &place, &mut report)
                        else {
                            continue;
                        };
                        for root in roots.values() {
                            report.images += 1;
                            let mut seed = Sha256State::new();
                            seed.update(&meta_bytes);
                            if let Some(combined) = self.check_file(
                                &root.file,
                                Some(seed),
                                &place,
                                &mut report,
                                progress,
                            ) && combined != root.combined_sha256
                            {
                                report.problems.push(format!(
                                    "{place}: the combined fingerprint of {} and {} is {combined}, the record says {}",
                                    metadata.path, root.file.path, root.combined_sha256
                                ));
                            }
                            for (base, delta) in &root.deltas {
                                self.check_file(delta, None, &place, &mut report, progress);
                                if deep {
                                    let base = product
                                        .versions
                                        .get(base)
                                        .and_then(|version| version.squashfs_root());
                                    if let Err(problem) = self.check_delta(delta, base, &root.file)
                                    {
                                        report.problems.push(format!("{place}: {problem}"));
                                    }
                                }
                            }
                        }
                    }
                    VersionFiles::Unified { tarball, .. } => {
                        report.images += 1;
                        self.check_file(tarball, None, &place, &mut report, progress);
                    }
                }
            }
        }
        // The tree as a whole is compared with the record under the writer lock: a change that
        // commits meanwhile (serve's delta maker, an import) is never taken for drift.
        let locked = self.begin()?;
        self.check_orphans(&locked.state, &mut report)?;
        self.check_stream(&locked.state, &mut report);
        Ok(report)
    }

    /// Reads a metadata tarball whole (it is small) and checks it.
    fn check_metadata(
        &self,
        file: &StoredFile,
        place: &str,
        report: &mut VerifyReport,
    ) -> Option<Vec<u8>> {
        let bytes = match self
            .tree()
            .read_to_vec(&file.path, file.size.saturating_add(1))
            .and_then(|read| read.ok_or_else(|| missing(&file.path)))
        {
            Ok(bytes) => bytes,
            Err(e) => {
                report.problems.push(format!("{place}: {e}"));
                return None;
            }
        };
        report.files += 1;
        report.bytes += bytes.len() as u64;
        self.compare(
            file,
            bytes.len() as u64,
            &hashing::sha256_hex(&bytes),
            place,
            report,
        );
        Some(bytes)
    }

    /// Hashes one file (and the combined hash when a seed is given) and compares it.
    fn check_file(
        &self,
        file: &StoredFile,
        seed: Option<Sha256State>,
        place: &str,
        report: &mut VerifyReport,
        progress: &mut dyn Progress,
    ) -> Option<String> {
        let opened = self
            .tree()
            .open(&file.path)
            .and_then(|opened| opened.ok_or_else(|| missing(&file.path)));
        let digest = opened.and_then(|opened| {
            progress.start(&file.path, Some(file.size));
            let mut read = ObjectRead::new(opened.reader);
            let digest = hashing::digest_stream(&mut read, seed, None, progress);
            progress.finish();
            digest
        });
        match digest {
            Ok(digest) => {
                report.files += 1;
                report.bytes += digest.size;
                self.compare(file, digest.size, &digest.sha256, place, report);
                digest.combined
            }
            Err(e) => {
                report.problems.push(format!("{place}: {e}"));
                None
            }
        }
    }

    /// Applies `delta` to `base` and compares the result with `target`.
    fn check_delta(
        &self,
        delta: &StoredFile,
        base: Option<&super::record::Root>,
        target: &StoredFile,
    ) -> std::result::Result<(), String> {
        let base =
            base.ok_or_else(|| format!("the base of {} is not in the record", delta.path))?;
        let (base, _copy) = self.local_file(&base.file).map_err(|e| e.to_string())?;
        let (delta_file, _delta_copy) = self.local_file(delta).map_err(|e| e.to_string())?;
        let mut reader = &delta_file;
        io::Seek::rewind(&mut reader).map_err(|e| e.to_string())?;
        match crate::vcdiff::decode::decode(&base, &mut reader, None, target.size, &|| false) {
            Ok(decoded) if decoded.size == target.size && decoded.sha256 == target.sha256 => Ok(()),
            Ok(decoded) => Err(format!(
                "{} applied to its base gives {} bytes with sha256 {}, not {}",
                delta.path, decoded.size, decoded.sha256, target.path
            )),
            Err(e) => Err(format!("{} does not apply to its base: {e}", delta.path)),
        }
    }

    fn compare(
        &self,
        file: &StoredFile,
        size: u64,
        sha256: &str,
        place: &str,
        report: &mut VerifyReport,
    ) {
        if size != file.size {
            report.problems.push(format!(
                "{place}: {} has {size} bytes, the record says {}",
                file.path, file.size
            ));
        } else if sha256 != file.sha256 {
            report.problems.push(format!(
                "{place}: {} has sha256 {sha256}, the record says {}",
                file.path, file.sha256
            ));
        }
    }

    fn check_orphans(
        &self,
        state: &super::record::CatalogState,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let mut known: BTreeSet<&str> = state.retired.iter().map(|r| r.path.as_str()).collect();
        for product in state.products.values() {
            for version in product.versions.values() {
                known.extend(version.stored_files().into_iter().map(|f| f.path.as_str()));
            }
        }
        for path in self.tree().list("images")? {
            if !known.contains(path.as_str()) {
                report.problems.push(format!(
                    "{path} belongs to no image (an orphan); delete it or import it"
                ));
            }
        }
        Ok(())
    }

    fn check_stream(&self, state: &super::record::CatalogState, report: &mut VerifyReport) {
        let expected = super::stream_files::generate(state);
        for (path, bytes) in [
            (streams::IMAGES_PATH, &expected.images_json),
            (streams::INDEX_PATH, &expected.index_json),
        ] {
            let published = self.tree().read_to_vec(path, u64::MAX);
            if !matches!(published, Ok(Some(published)) if &published == bytes) {
                report.problems.push(format!(
                    "{path} does not match the catalog record; run `rebuild`"
                ));
            }
        }
    }
}

/// A published file the record names but the tree lacks.
fn missing(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{path} is missing from the published tree"),
    )
}

//! Deltas in the record: VCDIFF files (ftype `squashfs.vcdiff`) that turn an earlier version's
//! squashfs root into a later one's, so that a daemon holding the earlier image downloads only
//! the difference (`lxc image refresh`, auto-update).
//!
//! A delta belongs to the root it produces ([`Root::deltas`], keyed by the base version's
//! serial, which the stream writes as `delta_base`). The rules:
//! - Only a container's squashfs root has deltas: clients take a delta's base fingerprint from
//!   the squashfs field even for a VM, so a `disk-kvm.img.vcdiff` would break VM refreshes.
//! - Clients do not fall back to the full file when a delta fails, so a delta enters the record
//!   only verified (decoded against its base and compared with the root's sha256), and only
//!   through [`Transaction::attach_delta`].
//! - A delta whose base leaves the index leaves with it: every commit drops such deltas
//!   ([`drop_deltas_without_base`]) and retires their files for the grace period.
//!
//! [`pending`] says which deltas are still to be made: one per product, for its newest
//! squashfs version against the version before it, unless it has a delta or that base was
//! declined (too large, or failed its check). Making them is `crate::delta`'s job.

use std::path::PathBuf;

use super::record::{CatalogState, Root, StoredFile};
use super::{Catalog, CatalogError, Result, Transaction};

/// A delta file that was checked against its base and its target, in the catalog's `tmp/`
/// (the filesystem `www/` is on), ready to be attached to a version.
#[derive(Debug, Clone)]
pub struct VerifiedDelta {
    pub product_id: String,
    /// The version whose squashfs root the delta produces.
    pub serial: String,
    /// The version whose squashfs root it applies to (`delta_base`), older than `serial`.
    pub base_serial: String,
    /// The file; moved into `www/` when attached, left where it is otherwise.
    pub staged: PathBuf,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// What attaching a delta did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The file was placed and the root lists it.
    Published(StoredFile),
    /// The root already had a delta from that base; it stays, and the offered file was not
    /// used (the caller deletes it).
    AlreadyThere(StoredFile),
}

/// A delta still to be made: `target` from `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaJob {
    pub product_id: String,
    pub serial: String,
    pub base_serial: String,
    pub base: StoredFile,
    pub target: StoredFile,
}

/// The item key and file name of a delta from `base_serial`.
pub fn file_name(base_serial: &str) -> String {
    format!("delta-{base_serial}.vcdiff")
}

impl Transaction<'_> {
    /// Attaches a verified delta to the squashfs root of `delta.product_id` version
    /// `delta.serial`: places the file beside the root and records it. Refused when either
    /// version, or its squashfs root, is not in the record. Committed with the transaction.
    pub fn attach_delta(&mut self, delta: &VerifiedDelta) -> Result<Attached> {
        let where_ = format!("{} version {}", delta.product_id, delta.serial);
        let product = self
            .state
            .products
            .get(&delta.product_id)
            .ok_or_else(|| CatalogError::NotFound(format!("{where_} is not in the catalog")))?;
        if delta.base_serial >= delta.serial {
            return Err(CatalogError::Invalid(format!(
                "a delta for {where_} must apply to an older version, not {}",
                delta.base_serial
            )));
        }
        if product
            .versions
            .get(&delta.base_serial)
            .and_then(|base| base.squashfs_root())
            .is_none()
        {
            return Err(CatalogError::NotFound(format!(
                "{} version {} has no squashfs root for a delta to apply to",
                delta.product_id, delta.base_serial
            )));
        }
        let root = product
            .versions
            .get(&delta.serial)
            .and_then(|version| version.squashfs_root())
            .ok_or_else(|| CatalogError::NotFound(format!("{where_} has no squashfs root")))?;
        if let Some(existing) = root.deltas.get(&delta.base_serial) {
            return Ok(Attached::AlreadyThere(existing.clone()));
        }
        let dir = root
            .file
            .path
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir)
            .to_string();
        let stored = super::import::place_file(
            self,
            &dir,
            &file_name(&delta.base_serial),
            &delta.staged,
            delta.size,
            &delta.sha256,
        )?;
        let root = self.squashfs_root_mut(&delta.product_id, &delta.serial)?;
        root.deltas_declined.remove(&delta.base_serial);
        root.deltas
            .insert(delta.base_serial.clone(), stored.clone());
        Ok(Attached::Published(stored))
    }

    /// Records that no delta from `base_serial` will be published for the root, and why.
    pub fn decline_delta(
        &mut self,
        product_id: &str,
        serial: &str,
        base_serial: &str,
        reason: &str,
    ) -> Result<()> {
        let root = self.squashfs_root_mut(product_id, serial)?;
        root.deltas_declined
            .insert(base_serial.to_string(), reason.to_string());
        Ok(())
    }

    fn squashfs_root_mut(&mut self, product_id: &str, serial: &str) -> Result<&mut Root> {
        self.state
            .products
            .get_mut(product_id)
            .and_then(|product| product.versions.get_mut(serial))
            .and_then(|version| version.squashfs_root_mut())
            .ok_or_else(|| {
                CatalogError::NotFound(format!(
                    "{product_id} version {serial} has no squashfs root"
                ))
            })
    }
}

impl Catalog {
    /// [`Transaction::attach_delta`] in a transaction of its own.
    pub fn attach_delta(&self, delta: &VerifiedDelta) -> Result<Attached> {
        let mut txn = self.begin()?;
        let attached = txn.attach_delta(delta)?;
        txn.commit()?;
        Ok(attached)
    }

    /// [`Transaction::decline_delta`] in a transaction of its own.
    pub fn decline_delta(
        &self,
        product_id: &str,
        serial: &str,
        base_serial: &str,
        reason: &str,
    ) -> Result<()> {
        let mut txn = self.begin()?;
        txn.decline_delta(product_id, serial, base_serial, reason)?;
        txn.commit()
    }
}

/// Takes out of the record every delta (and declined base) whose base version no longer has
/// a squashfs root in the product; returns the files of the deltas taken out, to retire.
pub(super) fn drop_deltas_without_base(state: &mut CatalogState) -> Vec<StoredFile> {
    let mut dropped = Vec::new();
    for product in state.products.values_mut() {
        let bases: Vec<String> = product
            .versions
            .iter()
            .filter(|(_, version)| version.squashfs_root().is_some())
            .map(|(serial, _)| serial.clone())
            .collect();
        for version in product.versions.values_mut() {
            let Some(root) = version.squashfs_root_mut() else {
                continue;
            };
            root.deltas_declined.retain(|base, _| bases.contains(base));
            let (kept, gone) = std::mem::take(&mut root.deltas)
                .into_iter()
                .partition(|(base, _)| bases.contains(base));
            root.deltas = kept;
            dropped.extend(gone.into_values());
        }
    }
    dropped
}

/// The deltas still to be made: for each product's newest squashfs version without a delta,
/// one from the squashfs version before it, unless that base was declined.
pub fn pending(state: &CatalogState) -> Vec<DeltaJob> {
    let mut jobs = Vec::new();
    for (product_id, product) in &state.products {
        let mut squashfs = product
            .versions
            .iter()
            .rev()
            .filter_map(|(serial, version)| Some((serial, version.squashfs_root()?)));
        let (Some((serial, target)), Some((base_serial, base))) =
            (squashfs.next(), squashfs.next())
        else {
            continue;
        };
        if !target.deltas.is_empty() || target.deltas_declined.contains_key(base_serial) {
            continue;
        }
        jobs.push(DeltaJob {
            product_id: product_id.clone(),
            serial: serial.clone(),
            base_serial: base_serial.clone(),
            base: base.file.clone(),
            target: target.file.clone(),
        });
    }
    jobs
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use super::*;
    use crate::catalog::hashing::{self, Silent};
    use crate::catalog::{CatalogSettings, ImportRequest, ImportSource, Transfer};
    use crate::data_dir::DataDir;
    use crate::streams;

    /// A metadata tarball (gzip) for version `release` of a test product.
    fn metadata(dir: &Path, name: &str) -> std::path::PathBuf {
        let yaml = "architecture: x86_64\ncreation_date: 1764244800\nproperties:\n  os: testos\n  release: \"1\"\n  variant: default\n  description: test\n";
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(yaml.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "metadata.yaml", yaml.as_bytes())
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        path
    }

    /// Bytes a squashfs 4.0 superblock check accepts, unique per `seed`.
    fn squashfs(dir: &Path, seed: &str) -> std::path::PathBuf {
        let mut bytes = vec![0u8; 4096];
        bytes[..4].copy_from_slice(b"hsqs");
        bytes[28..30].copy_from_slice(&4u16.to_le_bytes());
        bytes[40..48].copy_from_slice(&4096u64.to_le_bytes());
        bytes[100..100 + seed.len()].copy_from_slice(seed.as_bytes());
        let path = dir.join(format!("{seed}.squashfs"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn import(catalog: &Catalog, dir: &Path, serial: &str) {
        import_root(catalog, dir, serial, squashfs(dir, serial));
    }

    /// Imports `root` with a metadata tarball as version `serial`.
    fn import_root(catalog: &Catalog, dir: &Path, serial: &str, root: std::path::PathBuf) {
        let request = ImportRequest {
            sources: vec![
                ImportSource::file(metadata(dir, &format!("{serial}.tar.gz"))),
                ImportSource::file(root),
            ],
            aliases: Vec::new(),
            default_aliases: true,
            serial: Some(serial.into()),
            requirements: Default::default(),
            transfer: Transfer::Copy,
            imported_by: "test".into(),
            may_publish_anywhere: true,
            expected_fingerprint: None,
        };
        catalog.import(request, &mut Silent).unwrap();
    }

    /// Imports two versions whose squashfs roots share most of their bytes; returns the roots.
    pub(in crate::catalog) fn two_versions(
        catalog: &Catalog,
        dir: &Path,
    ) -> Vec<std::path::PathBuf> {
        let mut roots = Vec::new();
        for (serial, seed) in [("20250101_0000", 1u64), ("20250102_0000", 2)] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut bytes: Vec<u8> = (0..200_000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            bytes[..4].copy_from_slice(b"hsqs");
            bytes[28..30].copy_from_slice(&4u16.to_le_bytes());
            bytes[40..48].copy_from_slice(&200_000u64.to_le_bytes());
            bytes[100_000..100_008].copy_from_slice(&seed.to_le_bytes());
            let root = dir.join(format!("{serial}.squashfs"));
            std::fs::write(&root, bytes).unwrap();
            import_root(catalog, dir, serial, root.clone());
            roots.push(root);
        }
        roots
    }

    fn delta_items(dirs: &DataDir) -> Vec<streams::Item> {
        let bytes = std::fs::read(dirs.www().join(streams::IMAGES_PATH)).unwrap();
        streams::Products::from_json(&bytes)
            .unwrap()
            .products
            .values()
            .flat_map(|product| product.versions.values())
            .flat_map(|version| version.items.values())
            .filter(|item| item.ftype == "squashfs.vcdiff")
            .cloned()
            .collect()
    }

    fn staged_delta(catalog: &Catalog, serial: &str, base: &str, content: &[u8]) -> VerifiedDelta {
        let staged = catalog.dirs().tmp().join(format!(".delta-test-{serial}"));
        std::fs::write(&staged, content).unwrap();
        VerifiedDelta {
            product_id: "testos:1:amd64:default".into(),
            serial: serial.into(),
            base_serial: base.into(),
            staged,
            size: content.len() as u64,
            sha256: hashing::sha256_hex(content),
        }
    }

    #[test]
    fn a_delta_is_published_with_its_version_and_leaves_with_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path().join("data"));
        let catalog = Catalog::open(dirs.clone(), CatalogSettings::default()).unwrap();
        import(&catalog, dir.path(), "20250101_0000");
        assert_eq!(pending(&catalog.load().unwrap()), []);
        import(&catalog, dir.path(), "20250102_0000");
        let jobs = pending(&catalog.load().unwrap());
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].serial.as_str(), jobs[0].base_serial.as_str()),
            ("20250102_0000", "20250101_0000")
        );

        // A delta for a base that is not there, or newer than its target, is refused.
        let wrong = staged_delta(&catalog, "20250102_0000", "20241231_0000", b"x");
        assert!(catalog.attach_delta(&wrong).is_err());
        let backwards = staged_delta(&catalog, "20250101_0000", "20250102_0000", b"x");
        assert!(catalog.attach_delta(&backwards).is_err());
        assert!(delta_items(&dirs).is_empty());

        let delta = staged_delta(&catalog, "20250102_0000", "20250101_0000", b"vcdiff bytes");
        let Attached::Published(stored) = catalog.attach_delta(&delta).unwrap() else {
            panic!("not published");
        };
        assert_eq!(
            stored.path,
            "images/testos/1/amd64/default/20250102_0000/delta-20250101_0000.vcdiff"
        );
        assert!(
            !delta.staged.exists(),
            "the staged file was moved into place"
        );
        let items = delta_items(&dirs);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].delta_base.as_deref(), Some("20250101_0000"));
        assert_eq!(
            (items[0].size, &items[0].sha256),
            (stored.size, &stored.sha256)
        );
        assert_eq!(items[0].path, stored.path);
        assert_eq!(pending(&catalog.load().unwrap()), []);
        let report = catalog.verify(&mut Silent).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.files, 5, "two metadata, two roots, one delta");

        // Offered again: the published one stays.
        let again = staged_delta(&catalog, "20250102_0000", "20250101_0000", b"other bytes");
        assert_eq!(
            catalog.attach_delta(&again).unwrap(),
            Attached::AlreadyThere(stored.clone())
        );

        // The base leaves: so does the delta, its file retired for the grace period.
        let base =
            catalog.load().unwrap().products["testos:1:amd64:default"].versions["20250101_0000"]
                .squashfs_root()
                .unwrap()
                .combined_sha256
                .clone();
        catalog.remove(&base).unwrap();
        assert!(delta_items(&dirs).is_empty());
        let state = catalog.load().unwrap();
        assert!(state.retired.iter().any(|r| r.path == stored.path));
        assert!(
            dirs.www().join(&stored.path).exists(),
            "kept for the grace period"
        );
        assert_eq!(pending(&state), [], "no older version to make one from");
        let report = catalog.verify(&mut Silent).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_declined_base_is_not_pending_and_removing_the_target_retires_its_delta() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = DataDir::new(dir.path().join("data"));
        let settings = CatalogSettings {
            grace_period_secs: 0,
            ..CatalogSettings::default()
        };
        let catalog = Catalog::open(dirs.clone(), settings).unwrap();
        for serial in ["20250101_0000", "20250102_0000", "20250103_0000"] {
            import(&catalog, dir.path(), serial);
        }
        let jobs = pending(&catalog.load().unwrap());
        assert_eq!(jobs.len(), 1, "only the newest version gets one");
        assert_eq!(jobs[0].base_serial, "20250102_0000");
        catalog
            .decline_delta(
                "testos:1:amd64:default",
                "20250103_0000",
                "20250102_0000",
                "too large",
            )
            .unwrap();
        assert_eq!(pending(&catalog.load().unwrap()), []);

        let delta = staged_delta(&catalog, "20250102_0000", "20250101_0000", b"delta");
        let Attached::Published(stored) = catalog.attach_delta(&delta).unwrap() else {
            panic!("not published");
        };
        let target =
            catalog.load().unwrap().products["testos:1:amd64:default"].versions["20250102_0000"]
                .squashfs_root()
                .unwrap()
                .combined_sha256
                .clone();
        catalog.remove(&target).unwrap();
        assert!(!dirs.www().join(&stored.path).exists(), "grace period 0");
        assert!(delta_items(&dirs).is_empty());
        // With its base gone, the newest version's declined base goes too: the one before
        // it now is the base to try.
        let jobs = pending(&catalog.load().unwrap());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].base_serial, "20250101_0000");
    }

    /// A record written before deltas existed loads, and writes back without delta fields.
    #[test]
    fn a_record_without_deltas_loads() {
        let old = br#"{"format":1,"updated":1764244800,"products":{"testos:1:amd64:default":{
            "os":"testos","release":"1","arch":"amd64","variant":"default","aliases":["testos/1"],
            "versions":{"20250101_0000":{"description":"test","created":1764244800,"files":{
                "layout":"split",
                "metadata":{"path":"images/m.tar.gz","size":1,"sha256":"aa"},
                "roots":{"container":{"kind":"squashfs",
                    "file":{"path":"images/r.squashfs","size":2,"sha256":"bb"},
                    "combined_sha256":"cc","imported":{"by":"x","at":1,"sources":[]}}}}}}}},
            "retired":[]}"#;
        let state: CatalogState = serde_json::from_slice(old).unwrap();
        let root = state.products["testos:1:amd64:default"].versions["20250101_0000"]
            .squashfs_root()
            .unwrap();
        assert!(root.deltas.is_empty() && root.deltas_declined.is_empty());
        let written = String::from_utf8(serde_json::to_vec(&state).unwrap()).unwrap();
        assert!(!written.contains("deltas"), "{written}");
    }
}

//! The published tree and the catalog record in an S3-compatible bucket: the second
//! [`PublishedTree`]. Keys under the configured prefix are the tree as `www/` has it
//! (`images/…`, `streams/v1/*.json`) plus the record at `state/catalog.json`.
//!
//! - Writes upload the staged local file (a multipart upload for a large one, streamed from
//!   the file) and then delete it; the catalog's order (image files, record, images.json,
//!   index.json, deletions) is kept because each call returns only once the store answered.
//! - The stream files are held in memory ([`StreamFiles`]): `stat` of one answers from there
//!   without the network, as the HTTP side requires. A writer updates them as it replaces
//!   them; every process also polls the entity tags of the pair and reads a new one when they
//!   change. A replica ([`S3Tree::open_replica`]) takes a new pair only once every file its
//!   images.json names is in the bucket with its size, so it never serves an index naming a
//!   file it cannot serve; until then it keeps serving the pair it has.
//! - Image files are read by [`reader::S3Object`] in ranged GETs, several in flight; over
//!   plain HTTP their bytes go from the store's socket to the client's through a pipe
//!   ([`splice`]).
//! - One writer: [`writer`] probes the store's conditional writes and holds a lease.

mod client;
mod range_get;
pub mod reader;
mod splice;
pub mod writer;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use client::{Client, Condition, Head, Listed, Payload, Put};

use super::{ObjectMeta, ObjectVersion, Opened, PublishedTree};
use crate::streams::{IMAGES_PATH, INDEX_PATH};

/// The record's key.
pub const RECORD_KEY: &str = "state/catalog.json";
/// Largest stream file or record read into memory.
const MAX_JSON_BYTES: u64 = 256 << 20;

/// How to reach the bucket. The secret is never printed (see the `Debug` impl).
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub conditional_writes: bool,
    pub poll_interval: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The prefix as keys start with it: `""` or `something/`.
    pub fn key_prefix(&self) -> String {
        key_prefix(&self.prefix)
    }
}

/// `prefix` as keys start with it: `""` or `something/`.
pub fn key_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The access key and secret: from `file` (lines `AWS_ACCESS_KEY_ID=…` and
/// `AWS_SECRET_ACCESS_KEY=…`) when given, else from the environment through `env`.
pub fn load_credentials(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    const ID: &str = "AWS_ACCESS_KEY_ID";
    const SECRET: &str = "AWS_SECRET_ACCESS_KEY";
    let (id, secret, origin) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read storage.credentials_file {}: {}",
                    path.display(),
                    crate::fsutil::plain_message(&e)
                )
            })?;
            let mut id = None;
            let mut secret = None;
            for line in text.lines() {
                let line = line.trim();
                let line = line.strip_prefix("export ").unwrap_or(line);
                if let Some((name, value)) = line.split_once('=') {
                    let value = value
                        .trim()
                        .trim_matches('"')
                        .trim_matches('\'')
                        .to_string();
                    match name.trim() {
                        ID => id = Some(value),
                        SECRET => secret = Some(value),
                        _ => {}
                    }
                }
            }
            (
                id,
                secret,
                format!("storage.credentials_file {}", path.display()),
            )
        }
        None => (env(ID), env(SECRET), "the environment".to_string()),
    };
    match (
        id.filter(|v| !v.is_empty()),
        secret.filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(format!(
            "no S3 credentials in {origin}: set {ID} and {SECRET} (in the environment, or as lines of storage.credentials_file)"
        )),
    }
}

/// Whether `key` is a stream file held in memory.
fn is_stream_file(key: &str) -> bool {
    key.starts_with("streams/") && key.ends_with(".json")
}

/// Whether `key` is part of the published tree (what the HTTP side may serve).
fn is_published(key: &str) -> bool {
    key.starts_with("images/") || key.starts_with("streams/")
}

/// The version of an object with entity tag `etag` and `size` bytes.
fn version_of(etag: &str, size: u64) -> ObjectVersion {
    // FNV-1a: a version must be `Copy`; the tag is hashed, the size kept beside it.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in etag.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ObjectVersion::Stored { tag: hash, size }
}

fn meta_of(head: &Head) -> ObjectMeta {
    ObjectMeta {
        size: head.size,
        modified: head.modified,
        version: version_of(&head.etag, head.size),
    }
}

/// One stream file in memory.
#[derive(Debug)]
struct HeldFile {
    meta: ObjectMeta,
    etag: String,
    bytes: Bytes,
}

/// The stream files as last read or written.
#[derive(Debug, Default)]
struct StreamFiles {
    files: HashMap<String, Arc<HeldFile>>,
}

pub struct S3Tree {
    client: Arc<Client>,
    streams: RwLock<StreamFiles>,
    /// Held while the stream files are replaced or read again, so that a poll that read an
    /// older pair never overwrites what this process has just written.
    publishing: tokio::sync::Mutex<()>,
    read_only: bool,
    /// The store honours `If-None-Match`: image files are placed create-only.
    create_only: bool,
    /// The writer's lease, renewed while the tree lives (conditional stores only).
    _lease: Option<writer::Lease>,
    /// Set when a replica's poll found a pair it could not take: said once per pair.
    last_refusal: Mutex<Option<String>>,
}

impl std::fmt::Debug for S3Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Tree")
            .field("client", &self.client)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl S3Tree {
    /// The tree a writer publishes through: checks the bucket answers, checks the store's
    /// conditional writes (unless told not to rely on them) and takes the writer's lease.
    /// `holder` names this writer in the lease. Errors are one line saying what to do.
    pub fn open_writer(settings: &S3Settings, holder: &str) -> Result<Arc<S3Tree>, String> {
        let client = Arc::new(Client::new(settings).map_err(|e| e.to_string())?);
        client.block_on(client.check_access())?;
        let lease = if settings.conditional_writes {
            if !client
                .block_on(writer::conditional_writes_hold(&client))
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "the object store at {} ignores conditional writes (If-None-Match), so it cannot keep a second writer out; with such a store (Garage) run one writer only and set storage.conditional_writes = false to say so",
                    client.endpoint()
                ));
            }
            Some(writer::Lease::take(client.clone(), holder)?)
        } else {
            None
        };
        let tree = Arc::new(S3Tree {
            client,
            streams: RwLock::new(StreamFiles::default()),
            publishing: tokio::sync::Mutex::new(()),
            read_only: false,
            create_only: lease.is_some(),
            _lease: lease,
            last_refusal: Mutex::new(None),
        });
        tree.client
            .block_on(tree.refresh(false))
            .map_err(|e| e.to_string())?;
        tree.poll(settings.poll_interval, false);
        Ok(tree)
    }

    /// The tree a read-only replica serves: checks the bucket answers and reads the stream
    /// files (only a pair whose files are all there), then polls for new ones.
    pub fn open_replica(settings: &S3Settings) -> Result<Arc<S3Tree>, String> {
        let client = Arc::new(Client::new(settings).map_err(|e| e.to_string())?);
        client.block_on(client.check_access())?;
        let tree = Arc::new(S3Tree {
            client,
            streams: RwLock::new(StreamFiles::default()),
            publishing: tokio::sync::Mutex::new(()),
            read_only: true,
            create_only: false,
            _lease: None,
            last_refusal: Mutex::new(None),
        });
        if let Err(e) = tree.client.block_on(tree.refresh(true)) {
            tracing::warn!(error = %e, "cannot read the published stream yet; serving none until it can be read");
        }
        tree.poll(settings.poll_interval, true);
        Ok(tree)
    }

    /// A tree for copying to or from the bucket (`storage push` and `pull`): no lease, no
    /// polling; the stream files are read when asked for.
    pub fn open_plain(settings: &S3Settings) -> Result<Arc<S3Tree>, String> {
        let client = Arc::new(Client::new(settings).map_err(|e| e.to_string())?);
        client.block_on(client.check_access())?;
        Ok(Arc::new(S3Tree {
            client,
            streams: RwLock::new(StreamFiles::default()),
            publishing: tokio::sync::Mutex::new(()),
            read_only: false,
            create_only: false,
            _lease: None,
            last_refusal: Mutex::new(None),
        }))
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Checks index.json every `interval` and reads a new pair when it changed.
    fn poll(self: &Arc<Self>, interval: Duration, verify_files: bool) {
        let tree = Arc::downgrade(self);
        self.client.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(tree) = tree.upgrade() else { return };
                match tree.refresh(verify_files).await {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot check the published stream"),
                }
            }
        });
    }

    fn held(&self, key: &str) -> Option<Arc<HeldFile>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .get(key)
            .cloned()
    }

    /// Reads the stream files again when index.json's or images.json's entity tag changed. With
    /// `verify_files`, a new pair is taken only when every file images.json names is in the
    /// bucket with its size. Returns whether a new pair was taken.
    async fn refresh(&self, verify_files: bool) -> io::Result<bool> {
        let _publishing = self.publishing.lock().await;
        // Both tags: a store's tag may be the content's MD5, and two publications within one
        // second with the same products write the same index.json.
        let held_tag = |key: &str| self.held(key).map(|held| held.etag.clone());
        let Some(index_head) = self.client.head(INDEX_PATH).await? else {
            return Ok(false);
        };
        let images_tag = self.client.head(IMAGES_PATH).await?.map(|head| head.etag);
        if held_tag(INDEX_PATH).as_deref() == Some(index_head.etag.as_str())
            && held_tag(IMAGES_PATH) == images_tag
        {
            return Ok(false);
        }
        // index.json first: images.json is never older than it (see `storage`'s contract).
        let Some((index_head, index)) = self.client.get(INDEX_PATH, MAX_JSON_BYTES).await? else {
            return Ok(false);
        };
        let Some((images_head, images)) = self.client.get(IMAGES_PATH, MAX_JSON_BYTES).await?
        else {
            return Ok(false);
        };
        if verify_files && let Err(why) = self.check_pair(&index, &images).await? {
            let mut last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() != Some(why.as_str()) {
                tracing::warn!("not serving the new stream yet (the previous one stays): {why}");
                *last = Some(why);
            }
            return Ok(false);
        }
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        for (key, head, bytes) in [
            (IMAGES_PATH, images_head, images),
            (INDEX_PATH, index_head, index),
        ] {
            streams.files.insert(
                key.to_string(),
                Arc::new(HeldFile {
                    meta: meta_of(&head),
                    etag: head.etag,
                    bytes,
                }),
            );
        }
        drop(streams);
        if verify_files {
            tracing::info!("serving a new publication of the stream");
        }
        Ok(true)
    }

    /// Whether a replica may serve this pair: the index names only products images.json
    /// has, and every file images.json names is in the bucket with its size. `Ok(Err(why))`
    /// when it may not.
    async fn check_pair(&self, index: &[u8], images: &[u8]) -> io::Result<Result<(), String>> {
        let Some(listed) = crate::streams::index_products(index) else {
            return Ok(Err(format!("{INDEX_PATH} is not an index")));
        };
        let products = match crate::streams::Products::from_json(images) {
            Ok(products) => products,
            Err(e) => return Ok(Err(format!("{IMAGES_PATH} is unreadable ({e})"))),
        };
        if let Some(missing) = listed
            .iter()
            .find(|id| !products.products.contains_key(*id))
        {
            return Ok(Err(format!(
                "{INDEX_PATH} names {missing}, which {IMAGES_PATH} lacks"
            )));
        }
        // One listing instead of a HEAD per file: the same answer for a tree of any size.
        let present: HashMap<String, u64> = self
            .client
            .list("images/")
            .await?
            .into_iter()
            .map(|listed| (listed.key, listed.size))
            .collect();
        for product in products.products.values() {
            for version in product.versions.values() {
                for item in version.items.values() {
                    match present.get(&item.path) {
                        Some(size) if *size == item.size => {}
                        Some(size) => {
                            return Ok(Err(format!(
                                "{} is {size} bytes in the bucket, {} in {IMAGES_PATH}",
                                item.path, item.size
                            )));
                        }
                        None => {
                            return Ok(Err(format!("{} is not in the bucket yet", item.path)));
                        }
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn refuse_write(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "this is a read-only replica: it never writes to the bucket",
            ))
        } else {
            Ok(())
        }
    }

    /// Uploads `staged` as `key`, then deletes the local file (it has been "moved").
    fn upload(&self, staged: &Path, key: &str) -> io::Result<()> {
        self.refuse_write()?;
        self.client
            .block_on(self.client.put_file(key, staged, None, self.create_only))?;
        remove_staged(staged);
        Ok(())
    }
}

fn remove_staged(staged: &Path) {
    if let Err(e) = std::fs::remove_file(staged)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %staged.display(), error = %e, "cannot remove an uploaded staged file");
    }
}

impl PublishedTree for S3Tree {
    fn place(&self, staged: &Path, key: &str) -> io::Result<()> {
        self.upload(staged, key)
    }

    fn replace(&self, staged: &Path, key: &str) -> io::Result<()> {
        self.refuse_write()?;
        let bytes = Bytes::from(std::fs::read(staged)?);
        let client = &self.client;
        client.block_on(async {
            let _publishing = self.publishing.lock().await;
            let put = client
                .put(key, &Payload::Bytes(bytes.clone()), Condition::None, None)
                .await?;
            if is_stream_file(key) {
                let etag = match put {
                    Put::Done(etag) if !etag.is_empty() => etag,
                    // A store that sends no entity tag: ask for it.
                    _ => client
                        .head(key)
                        .await?
                        .map(|head| head.etag)
                        .unwrap_or_default(),
                };
                let head = Head {
                    size: bytes.len() as u64,
                    etag: etag.clone(),
                    modified: SystemTime::now(),
                    sha256: None,
                };
                self.streams
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .insert(
                        key.to_string(),
                        Arc::new(HeldFile {
                            meta: meta_of(&head),
                            etag,
                            bytes,
                        }),
                    );
            }
            Ok::<_, io::Error>(())
        })?;
        remove_staged(staged);
        Ok(())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.refuse_write()?;
        self.client.block_on(self.client.delete(key))?;
        if is_stream_file(key) {
            self.streams
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .files
                .remove(key);
        }
        Ok(())
    }

    fn open(&self, key: &str) -> io::Result<Option<Opened>> {
        if !is_published(key) {
            return Ok(None);
        }
        if let Some(held) = self.held(key) {
            return Ok(Some(Opened {
                meta: held.meta.clone(),
                reader: Arc::new(reader::InMemory::new(held.bytes.clone())),
            }));
        }
        if is_stream_file(key) && matches!(key, INDEX_PATH | IMAGES_PATH) {
            // The pair is served only as held (checked, for a replica).
            return Ok(None);
        }
        let Some(head) = self.client.block_on(self.client.head(key))? else {
            return Ok(None);
        };
        Ok(Some(Opened {
            meta: meta_of(&head),
            reader: Arc::new(reader::S3Object::new(
                self.client.clone(),
                key.to_string(),
                head.etag,
                head.size,
            )),
        }))
    }

    /// A stream file answers from memory (never the network: this runs on async threads);
    /// anything else asks the store.
    fn stat(&self, key: &str) -> io::Result<Option<ObjectMeta>> {
        if !is_published(key) {
            return Ok(None);
        }
        if is_stream_file(key) {
            return Ok(self.held(key).map(|held| held.meta.clone()));
        }
        Ok(self
            .client
            .block_on(self.client.head(key))?
            .map(|head| meta_of(&head)))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let listed = self
            .client
            .block_on(self.client.list(&format!("{prefix}/")))?;
        Ok(listed.into_iter().map(|listed| listed.key).collect())
    }

    fn read_record(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .client
            .block_on(self.client.get(RECORD_KEY, MAX_JSON_BYTES))?
            .map(|(_, bytes)| bytes.to_vec()))
    }

    fn commit_record(&self, staged: &Path) -> io::Result<()> {
        self.refuse_write()?;
        let bytes = Bytes::from(std::fs::read(staged)?);
        self.client.block_on(self.client.put(
            RECORD_KEY,
            &Payload::Bytes(bytes),
            Condition::None,
            None,
        ))?;
        remove_staged(staged);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_slash() {
        assert_eq!(key_prefix(""), "");
        assert_eq!(key_prefix("/"), "");
        assert_eq!(key_prefix("lxd"), "lxd/");
        assert_eq!(key_prefix("a/b/"), "a/b/");
    }

    #[test]
    fn credentials_come_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(
            &file,
            "# garage key\nAWS_ACCESS_KEY_ID=GK1\nexport AWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n",
        )
        .unwrap();
        assert_eq!(
            load_credentials(Some(&file), |_| None).unwrap(),
            ("GK1".to_string(), "s3cr3t".to_string())
        );
        let env = |name: &str| Some(format!("{name}-value"));
        assert_eq!(
            load_credentials(None, env).unwrap().0,
            "AWS_ACCESS_KEY_ID-value"
        );
        let err = load_credentials(None, |_| None).unwrap_err();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
        std::fs::write(&file, "AWS_ACCESS_KEY_ID=GK1\n").unwrap();
        assert!(load_credentials(Some(&file), |_| None).is_err());
    }

    #[test]
    fn versions_differ_by_tag_and_size() {
        assert_eq!(version_of("\"a\"", 1), version_of("\"a\"", 1));
        assert_ne!(version_of("\"a\"", 1), version_of("\"b\"", 1));
        assert_ne!(version_of("\"a\"", 1), version_of("\"a\"", 2));
    }
}

//! `storage push` and `storage pull`: copy this data directory's published tree and record
//! into the bucket of `[storage]`, or restore the data directory from it (disaster
//! recovery). Both run on the server's own command line only, on the local data directory
//! whatever `storage.backend` says.
//!
//! Push is resumable and verified: a file already in the bucket with its size and SHA-256
//! (stored with it as `x-amz-meta-sha256`, or hashed from the bucket) is kept; each upload is
//! checked by size after. Image files go first, then the record, images.json and index.json,
//! so a replica never sees a stream naming a file not yet copied. Pull hashes every file it
//! downloads against the record before placing it, then writes the record and regenerates
//! the stream from it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{CommandError, Context};
use crate::access::Caller;
use crate::catalog::record::CatalogState;
use crate::config::StorageBackend;
use crate::format::human_size;
use crate::sha256::Sha256State;
use crate::storage::s3::reader::S3Object;
use crate::storage::s3::{Client, Condition, Payload, RECORD_KEY, S3Tree};
use crate::storage::{ObjectRead, ObjectReader};
use crate::streams::{IMAGES_PATH, INDEX_PATH};

/// Copy the data directory to the bucket of [storage], or restore it from there
#[derive(Debug, clap::Subcommand)]
pub enum Storage {
    /// Copy this data directory's image files, record and stream into the bucket
    /// (resumable: files already there with their size and SHA-256 are kept)
    Push,
    /// Restore this data directory's image files, record and stream from the bucket, every
    /// file checked against the record's SHA-256 (into an empty catalog)
    Pull,
}

/// One image file the record names.
struct RecordedFile {
    path: String,
    sha256: String,
    /// Unknown for a retired file (the record keeps only its hash).
    size: Option<u64>,
}

fn recorded_files(state: &CatalogState) -> Vec<RecordedFile> {
    let mut files: Vec<RecordedFile> = Vec::new();
    for product in state.products.values() {
        for version in product.versions.values() {
            for file in version.stored_files() {
                files.push(RecordedFile {
                    path: file.path.clone(),
                    sha256: file.sha256.clone(),
                    size: Some(file.size),
                });
            }
        }
    }
    for retired in &state.retired {
        files.push(RecordedFile {
            path: retired.path.clone(),
            sha256: retired.sha256.clone(),
            size: None,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    files
}

impl Storage {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        if !matches!(ctx.caller, Caller::Local) {
            return Err(CommandError::Denied(
                "storage runs on the server's own command line only".into(),
            ));
        }
        if ctx.config.storage.backend != StorageBackend::S3 {
            return Err(CommandError::Failed(
                "storage push and pull copy to and from the bucket of [storage]: set storage.backend = \"s3\" with its endpoint and bucket".into(),
            ));
        }
        let settings = ctx
            .config
            .storage
            .s3_settings()
            .map_err(CommandError::Failed)?;
        let tree = S3Tree::open_plain(&settings).map_err(CommandError::Failed)?;
        match self {
            Storage::Push => push(ctx, tree.client()),
            Storage::Pull => pull(ctx, tree.client()),
        }
    }
}

fn push(ctx: &mut Context<'_>, client: &Arc<Client>) -> Result<(), CommandError> {
    let state = ctx.catalog.load()?;
    let www = ctx.catalog.dirs().www();
    let (mut copied, mut kept, mut bytes) = (0usize, 0usize, 0u64);
    for file in recorded_files(&state) {
        let local = www.join(&file.path);
        let size = std::fs::metadata(&local)
            .map_err(|e| {
                CommandError::Failed(format!(
                    "{} is missing from this data directory ({}); run `verify`",
                    file.path,
                    crate::fsutil::plain_message(&e)
                ))
            })?
            .len();
        if already_there(client, &file.path, size, &file.sha256)? {
            kept += 1;
            continue;
        }
        client.block_on(client.put_file(&file.path, &local, Some(&file.sha256), false))?;
        let uploaded = client.block_on(client.head(&file.path))?;
        if uploaded.as_ref().map(|head| head.size) != Some(size) {
            return Err(CommandError::Failed(format!(
                "{} did not arrive whole in the bucket ({} of {size} bytes); run `storage push` again",
                file.path,
                uploaded.map_or(0, |head| head.size)
            )));
        }
        copied += 1;
        bytes += size;
    }
    // The record, then the stream: images.json before index.json.
    let record = ctx.catalog.dirs().state().join("catalog.json");
    for (key, local) in [
        (RECORD_KEY, record),
        (IMAGES_PATH, www.join(IMAGES_PATH)),
        (INDEX_PATH, www.join(INDEX_PATH)),
    ] {
        let content = std::fs::read(&local).map_err(|e| {
            CommandError::Failed(format!(
                "cannot read {}: {}",
                local.display(),
                crate::fsutil::plain_message(&e)
            ))
        })?;
        client.block_on(client.put(
            key,
            &Payload::Bytes(Bytes::from(content)),
            Condition::None,
            None,
        ))?;
    }
    writeln!(
        ctx.out,
        "pushed to bucket {}: {copied} files copied ({}), {kept} already there; record and stream published",
        client.bucket_name(),
        human_size(bytes)
    )?;
    Ok(())
}

/// Whether the bucket already holds `key` with `size` bytes hashing to `sha256`.
fn already_there(
    client: &Arc<Client>,
    key: &str,
    size: u64,
    sha256: &str,
) -> Result<bool, CommandError> {
    let Some(head) = client.block_on(client.head(key))? else {
        return Ok(false);
    };
    if head.size != size {
        return Ok(false);
    }
    if let Some(stored) = &head.sha256 {
        return Ok(stored == sha256);
    }
    // Placed by a writer, without the hash beside it: hash the bytes.
    let reader: Arc<dyn ObjectReader> = Arc::new(S3Object::new(
        client.clone(),
        key.to_string(),
        head.etag,
        head.size,
    ));
    Ok(hash_of(ObjectRead::new(reader), None)? == sha256)
}

/// The SHA-256 of what `reader` gives, copying it to `copy` on the way.
fn hash_of(mut reader: impl Read, mut copy: Option<&mut std::fs::File>) -> std::io::Result<String> {
    let mut state = Sha256State::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        state.update(&buf[..n]);
        if let Some(file) = copy.as_mut() {
            std::io::Write::write_all(file, &buf[..n])?;
        }
    }
    Ok(state.finalize_hex())
}

fn pull(ctx: &mut Context<'_>, client: &Arc<Client>) -> Result<(), CommandError> {
    let local_images = ctx.catalog.load()?.images().count();
    if local_images > 0 {
        return Err(CommandError::Failed(format!(
            "this data directory's catalog holds {local_images} images; pull restores into an empty one (use another --data-dir)"
        )));
    }
    let Some((_, record)) = client.block_on(client.get(RECORD_KEY, 256 << 20))? else {
        return Err(CommandError::Failed(format!(
            "bucket {} holds no catalog record ({RECORD_KEY}); nothing to restore",
            client.bucket_name()
        )));
    };
    let state: CatalogState = serde_json::from_slice(&record).map_err(|e| {
        CommandError::Failed(format!("the bucket's {RECORD_KEY} is unreadable ({e})"))
    })?;
    let dirs = ctx.catalog.dirs().clone();
    let (mut copied, mut kept, mut bytes) = (0usize, 0usize, 0u64);
    for file in recorded_files(&state) {
        let dest = dirs.www().join(&file.path);
        if local_matches(&dest, &file)? {
            kept += 1;
            continue;
        }
        let Some(head) = client.block_on(client.head(&file.path))? else {
            return Err(CommandError::Failed(format!(
                "{} is named by the bucket's record but not in the bucket; run `verify` on the writer",
                file.path
            )));
        };
        let staged = staging(&dirs.tmp(), &file.path);
        let mut out = std::fs::File::create(&staged)?;
        let reader: Arc<dyn ObjectReader> = Arc::new(S3Object::new(
            client.clone(),
            file.path.clone(),
            head.etag,
            head.size,
        ));
        let hash = hash_of(ObjectRead::new(reader), Some(&mut out))?;
        out.sync_all()?;
        drop(out);
        if hash != file.sha256 {
            let _ = std::fs::remove_file(&staged);
            return Err(CommandError::Failed(format!(
                "{} in the bucket does not hash to the record's SHA-256 ({hash}, expected {}); not restored",
                file.path, file.sha256
            )));
        }
        crate::fsutil::rename_durably(&staged, &dest)?;
        copied += 1;
        bytes += head.size;
    }
    crate::fsutil::write_atomic(&dirs.tmp(), &dirs.state().join("catalog.json"), &record)?;
    ctx.catalog.rebuild()?;
    writeln!(
        ctx.out,
        "pulled from bucket {}: {copied} files copied ({}), {kept} already here; record restored and stream rebuilt: {} images",
        client.bucket_name(),
        human_size(bytes),
        state.images().count()
    )?;
    Ok(())
}

/// Whether `dest` already holds the file (a pull that resumes).
fn local_matches(dest: &Path, file: &RecordedFile) -> Result<bool, CommandError> {
    let Ok(meta) = std::fs::metadata(dest) else {
        return Ok(false);
    };
    if file.size.is_some_and(|size| size != meta.len()) {
        return Ok(false);
    }
    Ok(hash_of(std::fs::File::open(dest)?, None)? == file.sha256)
}

fn staging(tmp: &Path, key: &str) -> PathBuf {
    tmp.join(format!(".pull-{}", key.replace('/', "_")))
}

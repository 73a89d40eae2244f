//! Reading what a publisher hands us: metadata tarballs, unified tarballs and root files.
//! Everything here works on bytes and readers; placing files is the catalog's job.

pub mod metadata;
pub mod qcow2;
pub mod root;
pub mod sniff;
pub mod tarball;

use std::io::Read;

pub use metadata::ImageMetadata;
pub use sniff::{Compression, ImageType, RootKind};
pub use tarball::{Layout, ScanLimits};

/// A file whose content is not what an image needs. The message is one sentence that starts
/// with the file's name, e.g. "lxd.tar.xz has no metadata.yaml".
#[derive(Debug, thiserror::Error)]
#[error("{file} {problem}")]
pub struct ImageError {
    pub file: String,
    pub problem: String,
}

impl ImageError {
    pub fn new(file: impl Into<String>, problem: impl Into<String>) -> Self {
        ImageError {
            file: crate::fsutil::printable_name(&file.into()),
            problem: problem.into(),
        }
    }
}

/// A tarball that holds `metadata.yaml`, read and validated.
#[derive(Debug)]
pub struct InspectedTarball {
    pub compression: Compression,
    pub layout: Layout,
    pub metadata: ImageMetadata,
    /// The exact bytes of `metadata.yaml`.
    pub metadata_yaml: Vec<u8>,
}

/// Reads a metadata or unified tarball from `reader` to its end. `head` is its first bytes
/// (already sniffed by the caller) and `file` names it in errors.
pub fn inspect_tarball<R: Read>(
    head: &[u8],
    reader: R,
    file: &str,
    limits: ScanLimits,
    now_unix: i64,
) -> Result<InspectedTarball, ImageError> {
    let compression = Compression::detect(head).ok_or_else(|| {
        ImageError::new(
            file,
            format!("is not a tarball (it is {})", sniff::describe(head)),
        )
    })?;
    let scan = tarball::scan(reader, compression, limits)
        .map_err(|problem| ImageError::new(file, problem))?;
    let metadata = metadata::parse(&scan.metadata_yaml, now_unix)
        .map_err(|problem| ImageError::new(format!("metadata.yaml in {file}"), problem))?;
    Ok(InspectedTarball {
        compression,
        layout: scan.layout,
        metadata,
        metadata_yaml: scan.metadata_yaml,
    })
}

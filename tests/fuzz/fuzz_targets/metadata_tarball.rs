//! Any bytes as a metadata (or unified) tarball: the reader must return an image or a
//! one-line error, never panic, and never read more than its limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simplestream_server::image::{self, ScanLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ScanLimits { metadata_search_bytes: 1 << 20, metadata_yaml_bytes: 64 << 10 };
    let head = &data[..data.len().min(512)];
    match image::inspect_tarball(head, data, "fuzz.tar", limits, 1_800_000_000) {
        Ok(inspected) => assert!(!inspected.metadata.os.is_empty()),
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
    // The YAML parser alone, on the raw bytes.
    if let Err(problem) = image::metadata::parse(data, 1_800_000_000) {
        assert!(!problem.contains('\n'), "multi-line error: {problem}");
    }
});

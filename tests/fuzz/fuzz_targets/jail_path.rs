//! Any client path through the upload-area jail: a path that is accepted must stay inside the
//! area, component by component, and carry no `..`, NUL, backslash or control character.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use simplestream_server::access::UploadArea;

fuzz_target!(|data: &[u8]| {
    let Ok(client_path) = std::str::from_utf8(data) else { return };
    let area = UploadArea::new("/data/incoming/fuzz".into());
    if let Ok(jailed) = area.resolve(client_path) {
        let full = jailed.full();
        assert!(full.starts_with(area.root()), "{client_path:?} escaped to {full:?}");
        let inside = full.strip_prefix(area.root()).unwrap_or(Path::new(""));
        for component in inside.components() {
            let Component::Normal(part) = component else { panic!("{client_path:?} gave {component:?}") };
            let part = part.to_str().unwrap_or_default();
            assert!(!part.is_empty() && part != "." && part != "..", "{client_path:?}");
            assert!(!part.contains(['\0', '\\']) && !part.chars().any(char::is_control), "{client_path:?}");
        }
        assert!(jailed.client_view().starts_with('/'));
    }
});

//! Any request path through the HTTP side's base-path stripping and path cleaning: what it
//! accepts is a relative path of plain names that cannot leave www/.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use simplestream_server::http::files::{clean_path, strip_base};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for base in ["", "/lxd"] {
        let Some(below) = strip_base(base, path) else { continue };
        let Some(relative) = clean_path(below) else { continue };
        assert!(!relative.starts_with('/'), "{path:?} -> {relative:?}");
        for component in Path::new(&relative).components() {
            let Component::Normal(part) = component else { panic!("{path:?} -> {relative:?}: {component:?}") };
            let part = part.to_string_lossy();
            assert!(!part.starts_with('.') && !part.contains(['\\', '\0', '%']), "{path:?} -> {relative:?}");
        }
        assert!(Path::new("/www").join(&relative).starts_with("/www"));
    }
});

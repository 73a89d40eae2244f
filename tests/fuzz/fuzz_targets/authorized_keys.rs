//! Any text as an authorized_keys file: the parser never panics, every problem names a line
//! that exists with a one-line message, and every `from=` pattern it accepts can be evaluated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simplestream_server::access::authorized_keys::{AuthorizedKeys, FromPatterns, tokenize_options};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = AuthorizedKeys::parse(text);
    let lines = text.lines().count();
    for problem in &parsed.problems {
        assert!(problem.line >= 1 && problem.line <= lines, "line {} of {lines}", problem.line);
        assert!(!problem.message.contains('\n'), "multi-line message: {:?}", problem.message);
    }
    assert!(parsed.keys.len() + parsed.problems.len() <= lines);
    let _ = tokenize_options(text);
    if let Ok(patterns) = FromPatterns::parse(text) {
        for address in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1"] {
            let _ = patterns.matches(address.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])));
        }
    }
});

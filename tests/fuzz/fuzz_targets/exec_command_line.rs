//! Any exec request through the shell-like splitter: it never panics, and whatever it
//! accepts splits again, once re-quoted, into exactly the same words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simplestream_server::ssh::command_line::split;

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Ok(words) = split(line) {
        let requoted: Vec<String> = words.iter().map(|w| quote(w)).collect();
        let again = split(&requoted.join(" ")).expect("re-quoted words split");
        assert_eq!(again, words, "round trip of {line:?}");
    }
});

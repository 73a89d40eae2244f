//! `data/authorized_keys`: who may connect over SSH, and with which role.
//!
//! The file reads like OpenSSH's: one key a line, `[options] type base64 [comment]`, `#`
//! comments and blank lines ignored. Options are comma-separated before the key; values are
//! quoted and may hold spaces and commas (`ssh_key::AuthorizedKeys` refuses those, hence this
//! tokeniser). Understood options:
//! - `role="reader|publisher|admin"` (default publisher);
//! - `user="name"`: the user name, instead of the one the comment gives; two different keys
//!   may share a name (an upload area, products) only when every line of that name says so;
//! - `from="pattern,CIDR,…"` with `*`/`?` wildcards and `!` negation, matched against the
//!   client's address as OpenSSH does with its default `UseDNS no`: host names are never
//!   looked up, so a host name pattern (which could never match) makes its line malformed;
//! - `expiry-time="YYYYMMDD[HHMM[SS]][Z]"`, in the server's time zone unless `Z` says UTC;
//! - OpenSSH's restrictions (`restrict`, `no-pty`, `no-port-forwarding`, …), which this server
//!   applies to everyone anyway.
//!
//! An option that would change what a key may do and that this server cannot honour
//! (`command=`, `cert-authority`, …) makes its line malformed. A malformed line is reported
//! with its number and skipped; it never locks the other keys out.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use russh::keys::{HashAlg, PublicKey};

use super::{Role, sanitize_user_name};

/// One usable line.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// 1-based line number, for messages.
    pub line: usize,
    pub key: PublicKey,
    /// `SHA256:…`
    pub fingerprint: String,
    pub role: Role,
    pub from: Option<FromPatterns>,
    /// Unix seconds after which the key no longer works.
    pub expiry: Option<i64>,
    /// The user name: `user=`, or the comment sanitised (see [`sanitize_user_name`]).
    pub name: String,
    /// The name came from `user=`: the line agrees to share it with other keys.
    pub explicit_name: bool,
    /// The comment as written, for messages.
    pub comment: String,
}

impl AuthorizedKey {
    /// Where the name came from, for messages.
    fn name_source(&self) -> String {
        if self.explicit_name {
            "user=".to_string()
        } else {
            format!("the comment {:?}", self.comment)
        }
    }
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub line: usize,
    pub message: String,
}

/// The parsed file.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    pub keys: Vec<AuthorizedKey>,
    pub problems: Vec<LineProblem>,
}

/// Why a key that signed correctly is still not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the key is not in authorized_keys")]
    Unknown,
    #[error("the key expired (authorized_keys line {line})")]
    Expired { line: usize },
    #[error("the key may not connect from {address} (from= on authorized_keys line {line})")]
    WrongAddress { line: usize, address: IpAddr },
}

impl AuthorizedKeys {
    /// Parses the whole file; never fails, problems are collected per line.
    pub fn parse(text: &str) -> AuthorizedKeys {
        let mut parsed = AuthorizedKeys::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let checked = parse_line(trimmed, line).and_then(|key| match parsed.name_taken(&key) {
                Some(message) => Err(message),
                None => Ok(key),
            });
            match checked {
                Ok(key) => parsed.keys.push(key),
                // One line, whatever the key's bytes decode to: it goes into the log as is.
                Err(message) => parsed.problems.push(LineProblem {
                    line,
                    message: crate::fsutil::one_line(&message),
                }),
            }
        }
        parsed
    }

    /// Why `key` may not have its name: an earlier line gives the same name to another key,
    /// and the two did not both ask for it with `user=`. The name is an upload area and the
    /// owner of products, so sharing it is never an accident of how comments are sanitised.
    fn name_taken(&self, key: &AuthorizedKey) -> Option<String> {
        let earlier = self.keys.iter().find(|earlier| {
            earlier.name == key.name
                && earlier.key.key_data() != key.key.key_data()
                && !(earlier.explicit_name && key.explicit_name)
        })?;
        Some(format!(
            "user name {:?} (from {}) is already line {}'s (from {}); two keys share a name, \
             its upload area and its products only when both lines say user=\"{}\": \
             add that to both, or give this key another comment",
            key.name,
            key.name_source(),
            earlier.line,
            earlier.name_source(),
            key.name
        ))
    }

    /// The user name of the first line listing `key`, whatever its conditions: who a refused
    /// key belongs to, for the audit log.
    pub fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.keys
            .iter()
            .find(|entry| entry.key.key_data() == key.key_data())
            .map(|entry| entry.name.as_str())
    }

    /// The first line naming `key` whose conditions let it in from `address` at `now`.
    pub fn find(
        &self,
        key: &PublicKey,
        address: IpAddr,
        now_unix: i64,
    ) -> Result<&AuthorizedKey, Refusal> {
        let address = address.to_canonical();
        let mut refusal = Refusal::Unknown;
        for entry in self
            .keys
            .iter()
            .filter(|entry| entry.key.key_data() == key.key_data())
        {
            if let Some(expiry) = entry.expiry
                && now_unix >= expiry
            {
                refusal = Refusal::Expired { line: entry.line };
                continue;
            }
            if let Some(from) = &entry.from
                && !from.matches(address)
            {
                refusal = Refusal::WrongAddress {
                    line: entry.line,
                    address,
                };
                continue;
            }
            return Ok(entry);
        }
        Err(refusal)
    }
}

/// Key types OpenSSH writes first on a line without options.
fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

fn parse_line(line_text: &str, line: usize) -> Result<AuthorizedKey, String> {
    let first_word = line_text.split_whitespace().next().unwrap_or_default();
    let (options, key_part) = if is_key_type(first_word) {
        (Vec::new(), line_text)
    } else {
        let (options, rest) = tokenize_options(line_text)?;
        (options, rest.trim_start())
    };

    let mut words = key_part.splitn(3, [' ', '\t']);
    let key_type = words.next().unwrap_or_default();
    let base64 = words.next().map(str::trim).unwrap_or_default();
    let comment = words.next().map(str::trim).unwrap_or_default();
    if !is_key_type(key_type) {
        return Err(format!(
            "{key_type:?} is not a key type (expected ssh-ed25519, ssh-rsa, ecdsa-sha2-…)"
        ));
    }
    if key_type.contains("-cert-") {
        return Err("certificates are not accepted here; list the plain public key".into());
    }
    if base64.is_empty() {
        return Err("the key's base64 data is missing".into());
    }
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}"))
        .map_err(|e| format!("the {key_type} key does not parse ({e})"))?;
    if key.algorithm().as_str() != key_type {
        return Err(format!(
            "the line says {key_type} but the key is {}",
            key.algorithm().as_str()
        ));
    }
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();

    let mut role = None;
    let mut from = None;
    let mut expiry = None;
    let mut user = None;
    for (name, value) in options {
        let lower = name.to_ascii_lowercase();
        let needs_value = |value: Option<String>| {
            value.ok_or_else(|| format!("option {name} needs a value, e.g. {name}=\"…\""))
        };
        match lower.as_str() {
            "role" => {
                if role.is_some() {
                    return Err("role= is given twice".into());
                }
                role = Some(needs_value(value)?.parse::<Role>()?);
            }
            "from" => {
                if from.is_some() {
                    return Err("from= is given twice".into());
                }
                from = Some(FromPatterns::parse(&needs_value(value)?)?);
            }
            "user" => {
                if user.is_some() {
                    return Err("user= is given twice".into());
                }
                let name = needs_value(value)?;
                if name.is_empty() || sanitize_user_name(&name, "") != name {
                    return Err(format!(
                        "user={name:?} is not a user name (1 to 64 letters, digits, '.', '_', '-', '@'; no leading '.')"
                    ));
                }
                user = Some(name);
            }
            "expiry-time" => {
                if expiry.is_some() {
                    return Err("expiry-time= is given twice".into());
                }
                expiry = Some(parse_expiry(&needs_value(value)?)?);
            }
            // Restrictions this server applies to every key anyway.
            "restrict"
            | "no-pty"
            | "no-port-forwarding"
            | "no-agent-forwarding"
            | "no-x11-forwarding"
            | "no-user-rc"
            | "no-touch-required" => {
                if value.is_some() {
                    return Err(format!("option {name} takes no value"));
                }
            }
            // Permissions for things this server never offers: nothing to grant.
            "pty" | "port-forwarding" | "agent-forwarding" | "x11-forwarding" | "user-rc"
            | "permitopen" | "permitlisten" | "environment" | "tunnel" => {}
            "command" => {
                return Err(
                    "command= is not supported: this server runs its own commands; use role= to limit the key"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "option {name} is not supported (known: role, user, from, expiry-time, and OpenSSH's no-* restrictions)"
                ));
            }
        }
    }

    let fallback = format!(
        "key-{}",
        fingerprint
            .trim_start_matches("SHA256:")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>()
    );
    Ok(AuthorizedKey {
        line,
        fingerprint,
        role: role.unwrap_or(Role::Publisher),
        from,
        expiry,
        explicit_name: user.is_some(),
        name: user.unwrap_or_else(|| sanitize_user_name(comment, &fallback)),
        comment: comment.to_string(),
        key,
    })
}

/// One option: its name and, for `name="value"`, the unquoted value.
pub type KeyOption = (String, Option<String>);

/// Splits the leading options of a line: `name[="value"]` separated by commas, ended by the
/// first unquoted space or tab. Inside quotes, `\"` is a quote and commas and spaces are
/// literal. Returns the options and the rest of the line.
pub fn tokenize_options(text: &str) -> Result<(Vec<KeyOption>, &str), String> {
    let mut options = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        let mut name = String::new();
        let mut value: Option<String> = None;
        // The name: up to '=', ',' or whitespace.
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c == ',' || c == ' ' || c == '\t' {
                break;
            }
            if c == '"' {
                return Err(format!("unexpected quote in option name {name:?}"));
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("an option name is missing (a stray comma or '=')".into());
        }
        if let Some(&(_, '=')) = chars.peek() {
            chars.next();
            let mut text_value = String::new();
            if let Some(&(_, '"')) = chars.peek() {
                chars.next();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' if matches!(chars.peek(), Some(&(_, '"'))) => {
                            text_value.push('"');
                            chars.next();
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => text_value.push(c),
                    }
                }
                if !closed {
                    return Err(format!("the value of {name} has no closing quote"));
                }
            } else {
                while let Some(&(_, c)) = chars.peek() {
                    if c == ',' || c == ' ' || c == '\t' {
                        break;
                    }
                    if c == '"' {
                        return Err(format!("the value of {name} has a stray quote"));
                    }
                    text_value.push(c);
                    chars.next();
                }
            }
            value = Some(text_value);
        }
        options.push((name, value));
        match chars.next() {
            Some((_, ',')) => continue,
            Some((index, ' ' | '\t')) => return Ok((options, &text[index..])),
            Some((_, c)) => {
                return Err(format!(
                    "unexpected {c:?} after an option; separate options with commas"
                ));
            }
            None => return Err("the line has options but no key".into()),
        }
    }
}

/// `YYYYMMDD[HHMM[SS]]`, optionally ending in `Z` for UTC; otherwise the server's time zone.
fn parse_expiry(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "expiry-time={text:?} is not a time; use YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (append Z for UTC)"
        )
    };
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(digits) => (digits, true),
        None => (text, false),
    };
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let format = match digits.len() {
        8 => "%Y%m%d",
        12 => "%Y%m%d%H%M",
        14 => "%Y%m%d%H%M%S",
        _ => return Err(bad()),
    };
    let datetime = if digits.len() == 8 {
        jiff::civil::Date::strptime(format, digits)
            .map_err(|_| bad())?
            .to_datetime(jiff::civil::Time::midnight())
    } else {
        jiff::civil::DateTime::strptime(format, digits).map_err(|_| bad())?
    };
    let zone = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    let zoned = datetime.to_zoned_datetime(zone).map_err(|_| bad())?;
    Ok(zoned.timestamp().as_second())
}

/// `from="…"`: address patterns and CIDR blocks, `!` negating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromPatterns {
    patterns: Vec<(bool, AddressPattern)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AddressPattern {
    Cidr(IpAddr, u8),
    /// `*` and `?` wildcards over the address's text, e.g. `192.168.1.*`.
    Wildcard(String),
}

impl FromPatterns {
    pub fn parse(text: &str) -> Result<FromPatterns, String> {
        let mut patterns = Vec::new();
        for raw in text.split(',') {
            let raw = raw.trim();
            let (negated, pattern) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            if pattern.is_empty() {
                return Err(format!("from={text:?} has an empty pattern"));
            }
            let parsed = if let Some((addr, bits)) = pattern.split_once('/') {
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("from= pattern {pattern:?} is not a valid CIDR block"))?;
                let bits: u8 = bits
                    .parse()
                    .map_err(|_| format!("from= pattern {pattern:?} is not a valid CIDR block"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if bits > max {
                    return Err(format!(
                        "from= pattern {pattern:?} has a prefix longer than {max} bits"
                    ));
                }
                AddressPattern::Cidr(addr.to_canonical(), bits)
            } else if is_address_pattern(pattern) {
                AddressPattern::Wildcard(pattern.to_ascii_lowercase())
            } else {
                return Err(format!(
                    "from= pattern {pattern:?} is a host name; host names are never looked up \
                     (as with OpenSSH's default UseDNS no), so it would never match: give \
                     addresses, address wildcards (192.168.1.*) or CIDR blocks (10.0.0.0/8)"
                ));
            };
            patterns.push((negated, parsed));
        }
        Ok(FromPatterns { patterns })
    }

    /// OpenSSH's rule: any negated match refuses; otherwise one positive match admits.
    pub fn matches(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        let text = address.to_string();
        let mut admitted = false;
        for (negated, pattern) in &self.patterns {
            let hit = match pattern {
                AddressPattern::Cidr(net, bits) => in_cidr(address, *net, *bits),
                AddressPattern::Wildcard(glob) => wildcard_match(glob, &text),
            };
            if hit {
                if *negated {
                    return false;
                }
                admitted = true;
            }
        }
        admitted
    }
}

/// True when a wildcard pattern can match only an address's text: IPv4 (digits and dots)
/// or IPv6 (hex digits and colons), with `*` and `?`. Anything else names hosts.
fn is_address_pattern(pattern: &str) -> bool {
    let wildcard = |c: char| matches!(c, '*' | '?');
    let ipv4 = pattern
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || wildcard(c));
    let ipv6 = pattern.contains(':')
        && pattern
            .chars()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.') || wildcard(c));
    ipv4 || ipv6
}

fn in_cidr(address: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (address, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `*` matches any run of characters, `?` exactly one.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The file on disk, re-read whenever its size, mtime, ctime or inode change (checked on each
/// use: one `stat`), so edits apply to the next login without a restart.
pub struct AuthorizedKeysFile {
    path: PathBuf,
    loaded: Mutex<Option<(FileStamp, Arc<AuthorizedKeys>)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStamp {
    /// Matches no file: the next use reads it again.
    Stale,
    Missing,
    Present {
        size: u64,
        mtime: Option<SystemTime>,
        ctime: (i64, i64),
        inode: u64,
    },
}

impl FileStamp {
    fn of(path: &Path) -> Result<FileStamp, std::io::Error> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(meta) => Ok(FileStamp::Present {
                size: meta.len(),
                mtime: meta.modified().ok(),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                inode: meta.ino(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileStamp::Missing),
            Err(e) => Err(e),
        }
    }
}

impl AuthorizedKeysFile {
    pub fn new(path: PathBuf) -> Self {
        AuthorizedKeysFile {
            path,
            loaded: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again even if it looks unchanged (SIGHUP: an edit within the same
    /// second and size as the last one is not missed), logging its problems again.
    pub fn reload(&self) -> Arc<AuthorizedKeys> {
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((stamp, _)) = loaded.as_mut() {
                // Keep the keys (an unreadable file keeps them); forget when they were read.
                *stamp = FileStamp::Stale;
            }
        }
        self.current()
    }

    /// An unreadable file keeps the keys read before (none, if it was never read).
    fn keep_previous(
        &self,
        loaded: &Option<(FileStamp, Arc<AuthorizedKeys>)>,
        e: &std::io::Error,
    ) -> Arc<AuthorizedKeys> {
        tracing::warn!(path = %self.path.display(), error = %e, "cannot read authorized_keys; keeping the keys read before");
        loaded
            .as_ref()
            .map(|(_, keys)| keys.clone())
            .unwrap_or_default()
    }

    /// The keys as the file says now. An unreadable file keeps the last good copy (and says
    /// so in the log); a missing file means nobody may log in.
    pub fn current(&self) -> Arc<AuthorizedKeys> {
        let mut loaded = match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stamp = match FileStamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(e) => return self.keep_previous(&loaded, &e),
        };
        if let Some((seen, keys)) = loaded.as_ref()
            && *seen == stamp
        {
            return keys.clone();
        }
        let keys = match stamp {
            FileStamp::Missing => {
                tracing::warn!(
                    path = %self.path.display(),
                    "there is no authorized_keys file, so nobody can log in over SSH; add a key (one OpenSSH public key a line, e.g. role=\"admin\" ssh-ed25519 AAAA… you@laptop)"
                );
                AuthorizedKeys::default()
            }
            FileStamp::Stale | FileStamp::Present { .. } => {
                match std::fs::read_to_string(&self.path) {
                    Ok(text) => {
                        let keys = AuthorizedKeys::parse(&text);
                        for problem in &keys.problems {
                            tracing::warn!(
                                "{} line {}: {}; the line is skipped",
                                self.path.display(),
                                problem.line,
                                problem.message
                            );
                        }
                        tracing::info!(
                            keys = keys.keys.len(),
                            skipped = keys.problems.len(),
                            "read authorized_keys"
                        );
                        keys
                    }
                    Err(e) => return self.keep_previous(&loaded, &e),
                }
            }
        };
        let keys = Arc::new(keys);
        *loaded = Some((stamp, keys.clone()));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the authorized_keys fuzz target: a key blob whose decoded label holds a
    /// newline, which the ssh-key crate quotes in its error.
    #[test]
    fn problems_are_one_line_even_when_the_key_decodes_to_newlines() {
        let text =
            String::from_utf8_lossy(include_bytes!("testdata/fuzz-key-with-newline-in-label"));
        let parsed = AuthorizedKeys::parse(&text);
        assert!(!parsed.problems.is_empty());
        for problem in &parsed.problems {
            assert!(
                !problem.message.chars().any(char::is_control),
                "{:?}",
                problem.message
            );
        }
    }

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMVm6fErkpG9qA97cOl4SjIp4HyyZdC8r03cczsFaZXS";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGMBD8lq6koVUAxs29HyT3RUCKuypFXob1EJev3o0l+Y";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    fn v4(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn tokenizer_handles_quotes_commas_and_escapes() {
        let (options, rest) = tokenize_options(
            r#"role="admin",from="10.0.0.0/8,!10.1.2.3",no-pty,command="echo \"hi, there\"" ssh-ed25519 AAAA c"#,
        )
        .unwrap();
        assert_eq!(
            options,
            vec![
                ("role".into(), Some("admin".into())),
                ("from".into(), Some("10.0.0.0/8,!10.1.2.3".into())),
                ("no-pty".into(), None),
                ("command".into(), Some(r#"echo "hi, there""#.into())),
            ]
        );
        assert_eq!(rest, " ssh-ed25519 AAAA c");
        assert!(
            tokenize_options(r#"role="admin ssh-ed25519 AAAA"#)
                .unwrap_err()
                .contains("closing quote")
        );
        assert!(tokenize_options("role=admin,").is_err());
        assert!(tokenize_options(",role=admin ssh-ed25519 A").is_err());
        assert!(
            tokenize_options("role=admin")
                .unwrap_err()
                .contains("no key")
        );
    }

    #[test]
    fn parses_roles_names_and_skips_bad_lines_with_their_numbers() {
        let text = format!(
            "# admins\n\
             role=\"admin\" {ED_A} alice@laptop\n\
             \n\
             role=\"root\" {ED_B} bob\n\
             ssh-ed25519 notbase64!! carol\n\
             command=\"ls\" {ED_B} dave\n\
             role=reader {ED_B} CI bot #1\n\
             {ED_A}\n"
        );
        let parsed = AuthorizedKeys::parse(&text);
        let lines: Vec<usize> = parsed.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 5, 6], "{:?}", parsed.problems);
        assert!(parsed.problems[0].message.contains("unknown role"));
        assert!(parsed.problems[2].message.contains("command="));
        assert_eq!(parsed.keys.len(), 3);
        assert_eq!(parsed.keys[0].role, Role::Admin);
        assert_eq!(parsed.keys[0].name, "alice@laptop");
        assert_eq!(parsed.keys[1].role, Role::Reader);
        assert_eq!(parsed.keys[1].name, "CI_bot__1");
        assert_eq!(parsed.keys[2].role, Role::Publisher, "the default role");
        assert!(
            parsed.keys[2].name.starts_with("key-"),
            "{}",
            parsed.keys[2].name
        );
        assert!(parsed.keys[0].fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn find_honours_expiry_and_from_and_takes_the_first_usable_line() {
        let text = format!(
            "role=\"admin\",expiry-time=\"20000101Z\" {ED_A} old\n\
             role=\"admin\",from=\"192.168.*.*,!192.168.1.66\" {ED_A} lan\n\
             role=\"reader\" {ED_A} anywhere\n\
             from=\"10.0.0.0/8\" {ED_B} ten\n"
        );
        let parsed = AuthorizedKeys::parse(&text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let now = 1_800_000_000;
        let a = key(ED_A);
        let b = key(ED_B);
        assert_eq!(parsed.find(&a, v4("192.168.1.5"), now).unwrap().name, "lan");
        assert_eq!(
            parsed.find(&a, v4("192.168.1.66"), now).unwrap().name,
            "anywhere"
        );
        assert_eq!(parsed.find(&b, v4("10.9.8.7"), now).unwrap().name, "ten");
        assert_eq!(
            parsed.find(&b, v4("11.0.0.1"), now).unwrap_err(),
            Refusal::WrongAddress {
                line: 4,
                address: v4("11.0.0.1")
            }
        );
        assert_eq!(parsed.name_of(&b), Some("ten"));
        assert_eq!(parsed.name_of(&a), Some("old"));
        let expired_only = AuthorizedKeys::parse(&format!("expiry-time=\"20000101\" {ED_B} x\n"));
        assert_eq!(
            expired_only.find(&b, v4("127.0.0.1"), now).unwrap_err(),
            Refusal::Expired { line: 1 }
        );
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        assert_eq!(parsed.find(&b, mapped, now).unwrap().name, "ten");
        assert_eq!(
            AuthorizedKeys::default()
                .find(&a, v4("127.0.0.1"), now)
                .unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn expiry_formats() {
        assert_eq!(parse_expiry("20300101Z").unwrap(), 1_893_456_000);
        assert_eq!(parse_expiry("203001010000Z").unwrap(), 1_893_456_000);
        assert_eq!(parse_expiry("20300101000001Z").unwrap(), 1_893_456_001);
        for bad in [
            "2030",
            "2030010",
            "20301301Z",
            "tomorrow",
            "20300101000000000",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_patterns() {
        let p = FromPatterns::parse("127.0.0.1,::1,fd00::/8").unwrap();
        assert!(p.matches(v4("127.0.0.1")));
        assert!(p.matches("::1".parse().unwrap()));
        assert!(p.matches("fd12::5".parse().unwrap()));
        assert!(!p.matches(v4("127.0.0.2")));
        let p = FromPatterns::parse("*,!10.0.0.0/8").unwrap();
        assert!(p.matches(v4("8.8.8.8")));
        assert!(!p.matches(v4("10.2.3.4")));
        assert!(FromPatterns::parse("10.0.0.0/33").is_err());
        assert!(FromPatterns::parse("a,,b").is_err());
        assert!(FromPatterns::parse("!*").unwrap().patterns[0].0);
        assert!(wildcard_match("1?.*.3", "10.20.3"));
        assert!(!wildcard_match("1?.*.3", "1.20.3"));
    }

    #[test]
    fn host_name_patterns_are_refused_with_their_line() {
        for pattern in [
            "*.example.com",
            "localhost",
            "127.0.0.1,!badhost",
            "deadbeef",
        ] {
            let parsed = AuthorizedKeys::parse(&format!("from=\"{pattern}\" {ED_A} x\n"));
            assert!(parsed.keys.is_empty(), "{pattern}");
            assert_eq!(parsed.problems[0].line, 1);
            assert!(
                parsed.problems[0].message.contains("is a host name"),
                "{pattern}: {:?}",
                parsed.problems
            );
        }
        for pattern in [
            "192.168.1.*",
            "10.?.0.1",
            "*",
            "fe80::*",
            "::ffff:10.0.0.1",
            "::1",
        ] {
            assert!(FromPatterns::parse(pattern).is_ok(), "{pattern}");
        }
    }

    #[test]
    fn names_that_collide_are_refused_unless_both_lines_share_explicitly() {
        const ED_C: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        // Two comments that sanitise to one name: the later line is refused, naming both.
        let parsed = AuthorizedKeys::parse(&format!(
            "{ED_A} alice@laptop (CI)\n# note\n{ED_B} alice@laptop_ CI_\n"
        ));
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].name, "alice@laptop__CI_");
        assert_eq!(parsed.problems[0].line, 3);
        let message = &parsed.problems[0].message;
        assert!(
            message.contains("already line 1's") && message.contains("user=\"alice@laptop__CI_\""),
            "{message}"
        );
        // The same comment on two keys is no more explicit.
        let parsed = AuthorizedKeys::parse(&format!("{ED_A} ci\n{ED_B} ci\n"));
        assert_eq!((parsed.keys.len(), parsed.problems[0].line), (1, 2));
        // One key on several lines is one person.
        let parsed = AuthorizedKeys::parse(&format!("from=\"10.0.0.0/8\" {ED_A} ci\n{ED_A} ci\n"));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        // user= on every line of the name shares it; one line without it is refused.
        let parsed = AuthorizedKeys::parse(&format!(
            "user=\"team\" {ED_A} a\nuser=\"team\" {ED_B} b\n{ED_C} team\n"
        ));
        let names: Vec<&str> = parsed.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["team", "team"]);
        assert_eq!(parsed.problems[0].line, 3);
        assert!(
            parsed.problems[0].message.contains("(from user=)"),
            "{:?}",
            parsed.problems
        );
        for bad in ["", "a b", "../x", ".hidden"] {
            let parsed = AuthorizedKeys::parse(&format!("user=\"{bad}\" {ED_A} a\n"));
            assert!(
                parsed.problems[0].message.contains("not a user name"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_documented_example_parses_cleanly() {
        let text = include_str!("../../keys/authorized_keys.example");
        let parsed = AuthorizedKeys::parse(text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let roles: Vec<Role> = parsed.keys.iter().map(|k| k.role).collect();
        assert_eq!(roles, [Role::Admin, Role::Publisher, Role::Reader]);
        assert_eq!(parsed.keys[1].name, "ci-builder");
    }

    #[test]
    fn the_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        let file = AuthorizedKeysFile::new(path.clone());
        assert!(file.current().keys.is_empty());
        std::fs::write(&path, format!("{ED_A} one\n")).unwrap();
        assert_eq!(file.current().keys[0].name, "one");
        std::fs::write(&path, format!("{ED_A} one\n{ED_B} two\n")).unwrap();
        assert_eq!(file.current().keys.len(), 2);
    }
}

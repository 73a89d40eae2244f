//! The audit log: one JSON object a line for every authentication, upload, removal, command
//! and refusal, written to `data/audit.log` (or standard output) as it happens. Fields are a
//! stable interface for log shippers: `time` (RFC 3339, UTC), `event`, then the event's own.
//!
//! Every door refuses through [`Audit::refused`], so every refusal reads alike: event
//! `refused`, `user` (`-` before authentication), `address`, `request` (what was asked, as
//! the client put it) and `reason` (what the client was told).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value, json};

/// Longest text kept from a client in one field; a 200 KiB file name is not worth a line of
/// that length each time it is refused.
const MAX_FIELD: usize = 512;

pub struct Audit {
    sink: Option<Mutex<Box<dyn Write + Send>>>,
}

impl Audit {
    /// `setting`: a path (relative to `data_dir`), `-` for standard output, empty for nowhere.
    pub fn open(setting: &str, data_dir: &Path) -> io::Result<Audit> {
        let sink: Option<Box<dyn Write + Send>> = match setting.trim() {
            "" => None,
            "-" => Some(Box::new(io::stdout())),
            path => {
                let path = data_dir.join(path);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| crate::fsutil::with_path(e, "cannot open the audit log", &path))?;
                Some(Box::new(file))
            }
        };
        Ok(Audit {
            sink: sink.map(Mutex::new),
        })
    }

    pub fn disabled() -> Audit {
        Audit { sink: None }
    }

    /// A request refused: who (`-` before authentication), from where, what, and why.
    pub fn refused(&self, user: &str, address: IpAddr, request: &str, reason: &str) {
        self.record(
            "refused",
            json!({
                "user": user,
                "address": address.to_canonical().to_string(),
                "request": clip(request),
                "reason": clip(reason),
            }),
        );
    }

    /// Writes one event. `fields` must be a JSON object; a failed write is logged, never fatal.
    pub fn record(&self, event: &str, fields: Value) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::String(
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
            ),
        );
        line.insert("event".into(), Value::String(event.into()));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut sink = match sink.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = sink.write_all(text.as_bytes()).and_then(|()| sink.flush()) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}

/// Refusals of one connection or one run, audited one by one up to a budget; past it they
/// are counted and written as one line at the end ([`RefusalBudget::close`]), so that a client
/// looping on refused requests cannot flood the log.
pub struct RefusalBudget {
    /// What the refusals are of, for the summary line: "sftp", "scp", "ssh".
    door: &'static str,
    audited: usize,
    counted: usize,
}

/// Refusals audited one by one in one [`RefusalBudget`].
pub const MAX_REFUSALS_AUDITED: usize = 32;

impl RefusalBudget {
    pub fn new(door: &'static str) -> Self {
        RefusalBudget {
            door,
            audited: 0,
            counted: 0,
        }
    }

    /// [`Audit::refused`] while the budget lasts; counted after that.
    pub fn refused(&mut self, audit: &Audit, user: &str, address: IpAddr, what: &str, why: &str) {
        if self.audited < MAX_REFUSALS_AUDITED {
            self.audited += 1;
            audit.refused(user, address, what, why);
        } else {
            self.counted += 1;
        }
    }

    /// One line for the refusals that were only counted, if any.
    pub fn close(&mut self, audit: &Audit, user: &str, address: IpAddr) {
        let count = std::mem::take(&mut self.counted);
        if count > 0 {
            audit.refused(
                user,
                address,
                &format!("{}: {count} more requests", self.door),
                &format!(
                    "refused like the {MAX_REFUSALS_AUDITED} before them (not audited one by one)"
                ),
            );
        }
    }
}

/// `text`, cut to [`MAX_FIELD`] bytes with `…` when longer.
pub fn clip(text: &str) -> String {
    crate::fsutil::clip(text, MAX_FIELD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_who_where_what_and_why_in_bounded_fields() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open("audit.log", dir.path()).unwrap();
        let long = "é".repeat(1000);
        audit.refused("alice", "::ffff:10.0.0.1".parse().unwrap(), &long, "no");
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["event"], "refused");
        assert_eq!(line["user"], "alice");
        assert_eq!(line["address"], "10.0.0.1");
        assert_eq!(line["reason"], "no");
        let request = line["request"].as_str().unwrap();
        assert!(request.len() <= MAX_FIELD + 3 && request.ends_with('…'));
    }

    #[test]
    fn writes_one_json_object_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open("audit.log", dir.path()).unwrap();
        audit.record(
            "auth",
            serde_json::json!({"result": "success", "user": "a\nb"}),
        );
        audit.record("upload", serde_json::json!({"bytes": 3}));
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "auth");
        assert_eq!(lines[0]["user"], "a\nb");
        assert_eq!(lines[1]["bytes"], 3);
        assert!(lines[1]["time"].as_str().unwrap().ends_with('Z'));
    }
}

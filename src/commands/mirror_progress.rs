//! The progress of a mirror run on a terminal: one line rewritten in place with files, bytes,
//! rate and time left. Only for a person watching stderr on a terminal: never with
//! `--format json`, never over SSH (no terminal there), never in `serve`'s scheduled runs.
//!
//! The engine reports from its download threads, so the line is drawn by whichever thread
//! reports, at most a few times a second, through stderr's own per-write lock.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::format::human_size;
use crate::mirror::Progress;

/// Redraws at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

pub struct TerminalProgress {
    label: String,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    files_total: u64,
    files_done: u64,
    bytes_total: u64,
    bytes_done: u64,
    /// When the first byte arrived: the rate is measured from there.
    first_byte: Option<Instant>,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl TerminalProgress {
    /// A display for the mirror run named `label` (its name or URL).
    pub fn new(label: &str) -> TerminalProgress {
        TerminalProgress {
            label: crate::fsutil::escape_controls(label),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Clears the line, before the run's summary is printed.
    pub fn finish(&self) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.drawn {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }

    fn update(&self, change: impl FnOnce(&mut Counts), force: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut counts);
        let now = Instant::now();
        if !force && counts.last_draw.is_some_and(|at| now - at < REDRAW_EVERY) {
            return;
        }
        counts.last_draw = Some(now);
        counts.drawn = true;
        let line = line(&self.label, &counts, now);
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }
}

/// `mirror lxc: 3/12 files, 1.2 GiB of 4.0 GiB, 45 MiB/s, 1m10s left`.
fn line(label: &str, counts: &Counts, now: Instant) -> String {
    let mut text = format!(
        "mirror {label}: {}/{} files, {} of {}",
        counts.files_done,
        counts.files_total,
        human_size(counts.bytes_done),
        human_size(counts.bytes_total)
    );
    let elapsed = counts.first_byte.map_or(0.0, |at| (now - at).as_secs_f64());
    if elapsed >= 0.5 && counts.bytes_done > 0 {
        let rate = counts.bytes_done as f64 / elapsed;
        text.push_str(&format!(", {}/s", human_size(rate as u64)));
        let left = counts.bytes_total.saturating_sub(counts.bytes_done) as f64 / rate;
        text.push_str(&format!(", {} left", duration_text(left as u64)));
    }
    text
}

/// `45s`, `3m05s`, `1h02m`.
fn duration_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

impl Progress for TerminalProgress {
    fn planned(&self, files: u64, bytes: u64) {
        self.update(
            |counts| {
                counts.files_total = files;
                counts.bytes_total = bytes;
            },
            true,
        );
    }

    fn transferred(&self, bytes: u64) {
        self.update(
            |counts| {
                counts.first_byte.get_or_insert_with(Instant::now);
                counts.bytes_done += bytes;
            },
            false,
        );
    }

    fn file_done(&self) {
        self.update(|counts| counts.files_done += 1, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_files_bytes_rate_and_time_left() {
        let start = Instant::now();
        let counts = Counts {
            files_total: 12,
            files_done: 3,
            bytes_total: 400 << 20,
            bytes_done: 100 << 20,
            first_byte: Some(start),
            ..Counts::default()
        };
        assert_eq!(
            line("lxc", &counts, start + Duration::from_secs(10)),
            "mirror lxc: 3/12 files, 100 MiB of 400 MiB, 10 MiB/s, 30s left"
        );
        assert_eq!(
            line("lxc", &Counts::default(), start),
            "mirror lxc: 0/0 files, 0 B of 0 B"
        );
        assert_eq!(duration_text(185), "3m05s");
        assert_eq!(duration_text(3720), "1h02m");
    }
}

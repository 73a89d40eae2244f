//! Output formats shared by the listing commands: an aligned table for people, JSON and CSV
//! for scripts (stable field names), and the import progress line.

use std::io::{self, Write};

use super::ProgressStyle;
use crate::catalog::hashing::Progress;
use crate::format::human_size;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Text for people or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFormat {
    Text,
    Json,
}

/// Writes rows as left-aligned columns under an upper-case header. Cells are for people:
/// control characters in them are shown escaped (see [`for_people`]).
pub fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| for_people(cell)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Text that an image or a publisher chose (a description, a requirement value, a file
/// name), made safe to print on a terminal: escape sequences and other control characters
/// are shown escaped (`\u{1b}`) instead of acting. JSON and CSV output keep the exact text.
pub fn for_people(text: &str) -> String {
    crate::fsutil::escape_controls(text)
}

/// Writes RFC 4180 CSV: a header, then rows; fields with `,`, `"` or newlines are quoted.
pub fn write_csv(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let field = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    writeln!(
        out,
        "{}",
        header
            .iter()
            .map(|h| field(h))
            .collect::<Vec<_>>()
            .join(",")
    )?;
    for row in rows {
        writeln!(
            out,
            "{}",
            row.iter().map(|c| field(c)).collect::<Vec<_>>().join(",")
        )?;
    }
    Ok(())
}

pub fn write_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// The import progress on stderr: a line rewritten in place on a terminal, a line per 10%
/// otherwise.
pub struct ProgressReporter<'a> {
    err: &'a mut dyn Write,
    style: ProgressStyle,
    label: String,
    total: Option<u64>,
    last_step: u64,
}

impl<'a> ProgressReporter<'a> {
    pub fn new(err: &'a mut dyn Write, style: ProgressStyle) -> Self {
        ProgressReporter {
            err,
            style,
            label: String::new(),
            total: None,
            last_step: 0,
        }
    }

    fn line(&self, done: u64) -> String {
        match self.total {
            Some(total) if total > 0 => format!(
                "reading {}: {:>3}% ({} of {})",
                self.label,
                done * 100 / total,
                human_size(done),
                human_size(total)
            ),
            _ => format!("reading {}: {}", self.label, human_size(done)),
        }
    }
}

/// Unknown totals report every 64 MiB.
const UNSIZED_STEP: u64 = 64 << 20;

impl Progress for ProgressReporter<'_> {
    fn start(&mut self, label: &str, total: Option<u64>) {
        self.label = label.to_string();
        self.total = total;
        self.last_step = 0;
    }

    fn advance(&mut self, done: u64) {
        let step = match self.total {
            Some(total) if total > 0 => done * 10 / total,
            _ => done / UNSIZED_STEP,
        };
        if step == self.last_step || self.style == ProgressStyle::Off {
            return;
        }
        self.last_step = step;
        let line = self.line(done);
        let _ = match self.style {
            ProgressStyle::Terminal => write!(self.err, "\r{line}\x1b[K"),
            _ => writeln!(self.err, "{line}"),
        };
        let _ = self.err.flush();
    }

    fn finish(&mut self) {
        if self.style == ProgressStyle::Terminal && self.last_step > 0 {
            let _ = write!(self.err, "\r\x1b[K");
            let _ = self.err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut out = Vec::new();
        write_table(&mut out, &["A", "BB"], &[vec!["long".into(), "x".into()]]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     BB\nlong  x\n");
    }

    #[test]
    fn table_cells_cannot_drive_the_terminal() {
        let mut out = Vec::new();
        write_table(&mut out, &["A"], &[vec!["x\x1b]0;owned\x07".into()]]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A\nx\\u{1b}]0;owned\\u{7}\n"
        );
    }

    #[test]
    fn csv_quotes_when_needed() {
        let mut out = Vec::new();
        write_csv(
            &mut out,
            &["a", "b"],
            &[vec!["x,y".into(), "say \"hi\"".into()]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,b\n\"x,y\",\"say \"\"hi\"\"\"\n"
        );
    }

    #[test]
    fn progress_lines_every_tenth() {
        let mut err = Vec::new();
        let mut progress = ProgressReporter::new(&mut err, ProgressStyle::Lines);
        progress.start("root.squashfs", Some(1000));
        for done in (0..=1000).step_by(50) {
            progress.advance(done);
        }
        let text = String::from_utf8(err).unwrap();
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(text.ends_with("100% (1000 B of 1000 B)\n"), "{text}");
    }
}

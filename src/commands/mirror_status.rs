//! `mirror status`: each mirror's last run (when, result, bytes, counts), whether one runs
//! now, when the next is due, and the notes of its last run. Configured mirrors come from the
//! configuration, runs from `state/mirrors.json`; one-off `mirror sync URL` runs show too.

use serde::Serialize;

use super::output::{TextFormat, for_people, write_json, write_table};
use super::{CommandError, Context};
use crate::config::MirrorConfig;
use crate::format::{human_size, rfc3339};
use crate::mirror::status::{MirrorStatus, StatusBook};

/// Show each mirror's last run, its result and when the next is due
#[derive(Debug, clap::Args)]
pub struct Status {
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
}

/// One mirror as `mirror status --format json` prints it. Field names are a stable interface;
/// times are RFC 3339 UTC.
#[derive(Debug, Serialize)]
struct StatusRow {
    name: String,
    url: String,
    /// A `[[mirror]]` table names it (else it is a one-off `mirror sync URL`).
    configured: bool,
    /// `serve` runs it on its schedule.
    scheduled: bool,
    /// Seconds between runs, for a configured mirror.
    interval_secs: Option<u64>,
    /// A run holds the mirror's lock now.
    running: bool,
    last_start: Option<String>,
    last_end: Option<String>,
    /// `ok`, `refused` (some versions refused), `failed`, or null before the first run.
    result: Option<&'static str>,
    error: Option<String>,
    bytes_downloaded: u64,
    files_reused: u64,
    new_versions: u64,
    removed_versions: u64,
    refused_versions: u64,
    refused: Vec<String>,
    last_success: Option<String>,
    /// When `serve` runs it next (for a mirror never run, or interrupted: at once).
    next_run: Option<String>,
    notes: Vec<String>,
}

impl Status {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let book = StatusBook::new(ctx.catalog.dirs());
        let recorded = book.read()?;
        let now = jiff::Timestamp::now().as_second();
        let mut rows: Vec<StatusRow> = ctx
            .config
            .mirrors
            .iter()
            .map(|mirror| {
                let status = recorded.get(&mirror.name).cloned().unwrap_or_default();
                row(&book, &mirror.name, Some(mirror), &status, now)
            })
            .collect();
        for (origin, status) in &recorded {
            if !ctx.config.mirrors.iter().any(|m| &m.name == origin) {
                rows.push(row(&book, origin, None, status, now));
            }
        }
        match self.format {
            TextFormat::Json => write_json(ctx.out, &rows)?,
            TextFormat::Text => print_text(ctx, &rows)?,
        }
        Ok(())
    }
}

fn row(
    book: &StatusBook,
    origin: &str,
    configured: Option<&MirrorConfig>,
    status: &MirrorStatus,
    now: i64,
) -> StatusRow {
    let scheduled = configured.is_some_and(|m| m.enabled);
    let next_run = match configured {
        // As the schedule computes it, with the interval in force now.
        Some(mirror) if mirror.enabled => Some(status.due_at(mirror.interval.0, now)),
        _ => None,
    };
    StatusRow {
        name: origin.to_string(),
        url: configured.map_or_else(|| status.url.clone(), |m| m.url.clone()),
        configured: configured.is_some(),
        scheduled,
        interval_secs: configured.map(|m| m.interval.0),
        running: book.is_running(origin),
        last_start: status.last_start.map(rfc3339),
        last_end: status
            .last_end
            .filter(|_| !status.unfinished())
            .map(rfc3339),
        result: status.result.map(|r| r.as_str()),
        error: status.error.clone(),
        bytes_downloaded: status.bytes_downloaded,
        files_reused: status.files_reused,
        new_versions: status.new_versions,
        removed_versions: status.removed_versions,
        refused_versions: status.refused_versions,
        refused: status.refused.clone(),
        last_success: status.last_success.map(rfc3339),
        next_run: next_run.map(|at| rfc3339(at.max(now))),
        notes: status.notes.clone(),
    }
}

/// A table, then a line per error, refusal and note, each starting with the mirror's name.
fn print_text(ctx: &mut Context<'_>, rows: &[StatusRow]) -> Result<(), CommandError> {
    if rows.is_empty() {
        writeln!(
            ctx.out,
            "no mirrors: add [[mirror]] tables to config.toml, or run `mirror sync URL`"
        )?;
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let result = if r.running {
                "running".to_string()
            } else if r.last_start.is_some() && r.last_end.is_none() {
                "interrupted".to_string()
            } else {
                r.result.unwrap_or("never run").to_string()
            };
            let next = match (&r.next_run, r.configured) {
                (Some(at), _) => at.clone(),
                (None, true) => "not scheduled (enabled = false)".into(),
                (None, false) => "-".into(),
            };
            vec![
                r.name.clone(),
                result,
                r.last_start.clone().unwrap_or_else(|| "-".into()),
                human_size(r.bytes_downloaded),
                r.new_versions.to_string(),
                r.removed_versions.to_string(),
                r.refused_versions.to_string(),
                next,
                r.url.clone(),
            ]
        })
        .collect();
    write_table(
        ctx.out,
        &[
            "MIRROR",
            "RESULT",
            "LAST RUN",
            "DOWNLOADED",
            "NEW",
            "REMOVED",
            "REFUSED",
            "NEXT RUN",
            "URL",
        ],
        &cells,
    )?;
    for r in rows {
        let lines = r
            .error
            .iter()
            .map(|e| format!("error: {e}"))
            .chain(r.refused.iter().map(|line| format!("refused: {line}")))
            .chain(r.notes.iter().map(|note| format!("note: {note}")));
        for line in lines {
            writeln!(ctx.out, "{}: {}", r.name, for_people(&line))?;
        }
    }
    Ok(())
}

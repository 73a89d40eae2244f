//! `mirror sync <URL>` / `mirror sync --name NAME`: pull an upstream simplestreams server's
//! images into the catalog, once or as a `[[mirror]]` table says; `mirror status` is
//! [`super::mirror_status`].

use std::path::PathBuf;

use super::mirror_progress::TerminalProgress;
use super::mirror_status::Status;
use super::output::{TextFormat, write_json};
use super::{CommandError, Context, ProgressStyle};
use crate::access::Caller;
use crate::format::human_size;
use crate::mirror::run::run_recorded;
use crate::mirror::{self, Filter, MirrorSpec, NoProgress, Progress, SyncReport};

/// Keep a verified copy of an upstream image server's images
#[derive(Debug, clap::Subcommand)]
pub enum Mirror {
    Sync(Sync),
    Status(Status),
}

impl Mirror {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        match self {
            Mirror::Sync(sync) => sync.run(ctx),
            Mirror::Status(status) => status.run(ctx),
        }
    }
}

/// Mirror an upstream now: new versions in, versions gone upstream (or beyond --keep) out
#[derive(Debug, clap::Args)]
pub struct Sync {
    /// The upstream's base URL, e.g. https://images.linuxcontainers.org
    #[arg(required_unless_present = "name")]
    pub url: Option<String>,
    /// Run the configured [[mirror]] table NAME now, with its settings
    #[arg(long, value_name = "NAME", conflicts_with_all = [
        "url", "ca_cert", "filters", "keep", "alias_prefix", "concurrency", "bandwidth_limit",
    ])]
    pub name: Option<String>,
    /// A PEM file of CA certificates to trust for this upstream, besides the system's
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Which products and image types to take: key=value, key!=value, key~regex, key!~regex
    /// over os, release, arch, variant and type (container|virtual-machine); all must hold
    #[arg(long = "filter", value_name = "EXPR", value_parser = parse_filter)]
    pub filters: Vec<Filter>,
    /// Keep the newest N versions of each product
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
    /// Put this before every upstream alias (mirror/ makes debian/12 into mirror/debian/12)
    #[arg(long, value_name = "P")]
    pub alias_prefix: Option<String>,
    /// Only show what would be done
    #[arg(long)]
    pub dry_run: bool,
    /// Files downloaded at once
    #[arg(long, value_name = "N", default_value_t = MirrorSpec::DEFAULT_CONCURRENCY as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// Bytes per second over all downloads (K, M and G suffixes: 10M)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bandwidth_limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
}

impl Sync {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let (spec, interval_secs) = match &self.name {
            Some(name) => self.configured(ctx, name)?,
            None => (self.one_off(ctx)?, None),
        };
        // A line redrawn in place, for a person at a terminal only.
        let display = (ctx.progress == ProgressStyle::Terminal && self.format == TextFormat::Text)
            .then(|| TerminalProgress::new(spec.origin()));
        let progress: &dyn Progress = match &display {
            Some(display) => display,
            None => &NoProgress,
        };
        let outcome = run_recorded(ctx.catalog, &spec, interval_secs, progress, mirror::sync);
        if let Some(display) = &display {
            display.finish();
        }
        let report = outcome.map_err(|e| CommandError::Failed(e.to_string()))?;
        print_report(ctx, &spec, &report, self.format)
    }

    /// The spec of a `[[mirror]]` table, and its interval when `serve` runs it.
    fn configured(
        &self,
        ctx: &Context<'_>,
        name: &str,
    ) -> Result<(MirrorSpec, Option<u64>), CommandError> {
        let Some(mirror) = ctx.config.mirrors.iter().find(|m| m.name == name) else {
            let names: Vec<&str> = ctx.config.mirrors.iter().map(|m| m.name.as_str()).collect();
            return Err(CommandError::Failed(if names.is_empty() {
                format!("no mirror is named {name:?}: config.toml has no [[mirror]] tables")
            } else {
                format!(
                    "no mirror is named {name:?}; the configured ones are {}",
                    names.join(", ")
                )
            }));
        };
        let mut spec = mirror.spec().map_err(|problems| {
            CommandError::Failed(format!("[[mirror]] {name:?}: {}", problems.join("; ")))
        })?;
        spec.dry_run = self.dry_run;
        Ok((spec, mirror.enabled.then_some(mirror.interval.0)))
    }

    /// The spec the command line gives.
    fn one_off(&self, ctx: &Context<'_>) -> Result<MirrorSpec, CommandError> {
        let url = self.url.clone().unwrap_or_default();
        let ca_cert = match (&self.ca_cert, ctx.caller) {
            (None, _) => None,
            (Some(path), Caller::Local) => Some(path.clone()),
            // Over SSH the PEM comes from the caller's upload area.
            (Some(path), Caller::Remote { upload_area, .. }) => {
                let jailed = upload_area.resolve(&path.to_string_lossy())?;
                jailed.check_no_symlinks(upload_area)?;
                Some(jailed.full().to_path_buf())
            }
        };
        Ok(MirrorSpec {
            name: None,
            url,
            ca_cert,
            filters: self.filters.clone(),
            keep: self.keep.map(|n| n as usize),
            alias_prefix: self.alias_prefix.clone(),
            dry_run: self.dry_run,
            concurrency: self.concurrency as usize,
            bandwidth_limit: self.bandwidth_limit,
        })
    }
}

/// Prints a run's outcome: refusals and notes, then one summary line (or the JSON report).
/// Refusals make the exit status 1.
pub fn print_report(
    ctx: &mut Context<'_>,
    spec: &MirrorSpec,
    report: &SyncReport,
    format: TextFormat,
) -> Result<(), CommandError> {
    match format {
        TextFormat::Json => write_json(ctx.out, report)?,
        TextFormat::Text => {
            for line in report.refused.iter().chain(&report.notes) {
                writeln!(ctx.out, "{}", super::output::for_people(line))?;
            }
            writeln!(ctx.out, "{}", summary_line(spec, report))?;
        }
    }
    if report.succeeded() {
        Ok(())
    } else {
        Err(CommandError::Reported(format!(
            "{} version(s) of {} refused; see the lines above",
            report.refused.len(),
            spec.origin()
        )))
    }
}

/// `mirrored URL: 3 new versions, 1.2 GiB downloaded, 0 files reused, 1 removed, 0 refused`.
pub fn summary_line(spec: &MirrorSpec, report: &SyncReport) -> String {
    let (verb, new, removed) = if spec.dry_run {
        ("would mirror", "to fetch", "to remove")
    } else {
        ("mirrored", "new", "removed")
    };
    format!(
        "{verb} {}: {} {new} version(s), {} downloaded, {} file(s) reused, {} {removed}, {} refused",
        spec.origin(),
        report.new_versions,
        human_size(report.bytes_downloaded),
        report.files_reused,
        report.removed_versions,
        report.refused.len()
    )
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    text.parse()
        .map_err(|e: mirror::filter::FilterError| e.to_string())
}

/// `10M` → 10 MiB per second.
fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, factor) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a rate in bytes per second (e.g. 10M)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_suffixes() {
        assert_eq!(parse_rate("100"), Ok(100));
        assert_eq!(parse_rate("10K"), Ok(10 << 10));
        assert_eq!(parse_rate("2m"), Ok(2 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn the_summary_is_one_line() {
        let spec = MirrorSpec {
            name: None,
            url: "https://images.example.com".into(),
            ca_cert: None,
            filters: Vec::new(),
            keep: None,
            alias_prefix: None,
            dry_run: false,
            concurrency: 4,
            bandwidth_limit: None,
        };
        let report = SyncReport {
            new_versions: 3,
            bytes_downloaded: 3 << 20,
            ..SyncReport::default()
        };
        assert_eq!(
            summary_line(&spec, &report),
            "mirrored https://images.example.com: 3 new version(s), 3.0 MiB downloaded, 0 file(s) reused, 0 removed, 0 refused"
        );
    }
}

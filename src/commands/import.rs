//! `import <metadata> [<root>]`: publish an image. Locally the paths are the machine's and
//! the files are copied (`--move` moves them); over SSH the paths are in the caller's upload
//! area and the files are always moved. `-` reads a unified tarball from standard input.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::output::{ProgressReporter, TextFormat, write_json};
use super::{CommandError, Context, ProgressStyle, parse_key_value};
use crate::access::{Caller, Role};
use crate::catalog::delta::{self, DeltaJob};
use crate::catalog::import::{ImportOutcome, ImportRequest, ImportSource, ImportedImage, Transfer};
use crate::catalog::make_delta::DeltaOutcome;
use crate::format::human_size;

/// Import an image: a unified tarball, or a metadata tarball and its root
#[derive(Debug, clap::Args)]
pub struct Import {
    /// Metadata tarball, or a unified tarball (`-` reads one from standard input)
    pub metadata: String,
    /// Root file: squashfs, qcow2 disk or root.tar.xz
    pub root: Option<String>,
    /// Another alias for the product (repeatable)
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// Do not add the default aliases (os/release, os/release/variant)
    #[arg(long)]
    pub no_default_alias: bool,
    /// Version serial to publish under, instead of creation_date as YYYYMMDD_hhmm
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// A requirement written to the product, e.g. secureboot=false (repeatable)
    #[arg(long = "requirement", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub requirements: Vec<(String, String)>,
    /// Move the files into the catalog instead of copying them
    #[arg(long = "move")]
    pub move_files: bool,
    /// Do not wait for the delta from the previous version (the server makes it later)
    #[arg(long)]
    pub no_delta: bool,
    #[arg(long, value_enum, default_value_t = TextFormat::Text)]
    pub format: TextFormat,
}

#[derive(Serialize)]
struct ImportReport<'a> {
    status: &'static str,
    fingerprint: &'a str,
    product: &'a str,
    serial: &'a str,
    #[serde(rename = "type")]
    image_type: &'static str,
    aliases: &'a [String],
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaReport>,
}

/// The delta made for the new version, when the import waited for it.
#[derive(Serialize)]
struct DeltaReport {
    base: String,
    /// Absent when none was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// Why none was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    declined: Option<String>,
}

impl Import {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let mut sources = Vec::new();
        // Files moved out of the caller's upload area: (path, size), for its account.
        let mut from_area = Vec::new();
        if self.metadata == "-" {
            if self.root.is_some() {
                return Err(CommandError::Usage(
                    "`import -` reads one unified tarball from standard input; give no root file"
                        .into(),
                ));
            }
            let mut reader = ctx.stdin.take().ok_or_else(|| {
                CommandError::Usage("standard input is not available here".into())
            })?;
            if let Caller::Remote {
                identity,
                upload_area,
            } = ctx.caller
            {
                reader = ctx
                    .areas
                    .user(&identity.name, upload_area)
                    .import_stream(reader);
            }
            sources.push(ImportSource::Stream {
                label: "standard input".into(),
                reader,
            });
        } else {
            for given in std::iter::once(&self.metadata).chain(&self.root) {
                let path = input_path(ctx.caller, given)?;
                let known = ctx.areas.digest_cache().lookup(&path);
                if let Caller::Remote { .. } = ctx.caller
                    && let Ok(meta) = std::fs::symlink_metadata(&path)
                {
                    from_area.push((path.clone(), meta.len()));
                }
                sources.push(ImportSource::File {
                    path,
                    label: given.clone(),
                    known,
                });
            }
        }
        let transfer = match ctx.caller {
            Caller::Remote { .. } => Transfer::Move,
            Caller::Local if self.move_files => Transfer::Move,
            Caller::Local => Transfer::Copy,
        };
        let request = ImportRequest {
            sources,
            aliases: self.aliases,
            default_aliases: !self.no_default_alias,
            serial: self.serial,
            requirements: self.requirements.into_iter().collect::<BTreeMap<_, _>>(),
            transfer,
            imported_by: ctx.caller.name(),
            may_publish_anywhere: ctx.caller.role() == Role::Admin,
            expected_fingerprint: None,
        };
        let outcome = {
            let mut progress = ProgressReporter::new(&mut *ctx.err, ctx.progress);
            ctx.catalog.import(request, &mut progress)?
        };
        if let Caller::Remote {
            identity,
            upload_area,
        } = ctx.caller
        {
            let area = ctx.areas.user(&identity.name, upload_area);
            for (path, size) in from_area {
                area.imported(&path, size);
            }
        }
        // Locally the import waits for its delta (over SSH the server makes it in the
        // background); a delta that cannot be made does not undo the import.
        let delta = match (&outcome, ctx.caller) {
            (ImportOutcome::Published(image), Caller::Local) if !self.no_delta => {
                wait_for_delta(ctx, image)?
            }
            _ => None,
        };
        let (status, image) = match &outcome {
            ImportOutcome::Published(image) => {
                crate::metrics::record_import();
                ("published", image)
            }
            ImportOutcome::AlreadyPublished(image) => ("unchanged", image),
        };
        match self.format {
            TextFormat::Json => write_json(
                ctx.out,
                &ImportReport {
                    status,
                    fingerprint: &image.fingerprint,
                    product: &image.product_id,
                    serial: &image.serial,
                    image_type: image.image_type.as_str(),
                    aliases: &image.aliases,
                    size: image.size,
                    delta,
                },
            )?,
            TextFormat::Text => {
                let verb = if status == "published" {
                    "published"
                } else {
                    "already published"
                };
                writeln!(
                    ctx.out,
                    "{verb} {} ({}, {} version {}, {})",
                    image.fingerprint,
                    image.image_type,
                    image.product_id,
                    image.serial,
                    human_size(image.size)
                )?;
                if !image.aliases.is_empty() {
                    writeln!(ctx.out, "aliases: {}", image.aliases.join(", "))?;
                }
                match delta {
                    Some(DeltaReport {
                        base,
                        size: Some(size),
                        ..
                    }) => writeln!(
                        ctx.out,
                        "delta from {base}: {} ({:.1}% of the image)",
                        human_size(size),
                        100.0 * size as f64 / image.size.max(1) as f64
                    )?,
                    Some(DeltaReport {
                        base,
                        declined: Some(reason),
                        ..
                    }) => writeln!(ctx.out, "no delta from {base}: {reason}")?,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Makes the delta of the image just published, if one is pending; says on stderr why none
/// was made when that failed.
fn wait_for_delta(
    ctx: &mut Context<'_>,
    image: &ImportedImage,
) -> Result<Option<DeltaReport>, CommandError> {
    let mut report = None;
    let wanted = |job: &DeltaJob| job.product_id == image.product_id && job.serial == image.serial;
    let err = &mut *ctx.err;
    if ctx.progress != ProgressStyle::Off && ctx.catalog.settings().deltas {
        let state = ctx.catalog.load()?;
        if let Some(job) = delta::pending(&state).iter().find(|job| wanted(job)) {
            writeln!(err, "making the delta from {}...", job.base_serial)?;
        }
    }
    ctx.catalog
        .make_pending_deltas(&wanted, &|| false, &mut |job, outcome| {
            let base = job.base_serial.clone();
            report = match outcome {
                Ok(DeltaOutcome::Published(file) | DeltaOutcome::AlreadyThere(file)) => {
                    Some(DeltaReport {
                        base,
                        size: Some(file.size),
                        declined: None,
                    })
                }
                Ok(DeltaOutcome::Declined(reason)) => Some(DeltaReport {
                    base,
                    size: None,
                    declined: Some(reason.clone()),
                }),
                Ok(DeltaOutcome::Stopped) => None,
                Err(e) => {
                    let _ = writeln!(
                        err,
                        "the image is published, but its delta from {base} was not made: {e}"
                    );
                    None
                }
            };
        })?;
    Ok(report)
}

/// A local path as given, or a path in the caller's upload area through the jail.
fn input_path(caller: &Caller, given: &str) -> Result<PathBuf, CommandError> {
    match caller {
        Caller::Local => Ok(PathBuf::from(given)),
        Caller::Remote { upload_area, .. } => {
            let jailed = upload_area.resolve(given)?;
            jailed.check_no_symlinks(upload_area)?;
            if !jailed.full().is_file() {
                return Err(CommandError::Failed(format!(
                    "{given} is not in your upload area; upload it first (scp {given} <host>:), `uploads` lists what is there"
                )));
            }
            Ok(jailed.full().to_path_buf())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        import: super::Import,
    }

    #[test]
    fn parses_repeatable_options() {
        let cli = Cli::try_parse_from([
            "import",
            "meta.tar.xz",
            "root.squashfs",
            "--alias",
            "a/b",
            "--alias",
            "c",
            "--requirement",
            "secureboot=false",
            "--serial",
            "20261127_0000",
            "--no-default-alias",
        ])
        .unwrap();
        assert_eq!(cli.import.aliases, ["a/b", "c"]);
        assert_eq!(
            cli.import.requirements,
            [("secureboot".to_string(), "false".to_string())]
        );
        assert!(cli.import.no_default_alias);
        assert!(Cli::try_parse_from(["import", "m", "--requirement", "novalue"]).is_err());
    }
}

//! `import-tree <dir>`: migrate another server's tree (lxd-image-server, simplestream-maintainer,
//! any on-disk simplestreams tree) into the catalog, keeping serials and aliases.

use std::path::PathBuf;

use super::output::ProgressReporter;
use super::{CommandError, Context};
use crate::access::{Caller, Role};
use crate::catalog::import::{ImportOutcome, ImportRequest, ImportSource, Transfer};
use crate::catalog::make_delta::DeltaOutcome;
use crate::catalog::tree::{self, TreeImage};

/// Import every image of another server's tree (copies; the tree is left as it is)
#[derive(Debug, clap::Args)]
pub struct ImportTree {
    /// The tree's root: the folder holding streams/v1/ and images/, or images/ itself
    pub dir: String,
    /// Ignore streams/v1/*.json and walk images/<os>/<release>/<arch>/<variant>/<serial>/
    #[arg(long)]
    pub layout_only: bool,
    /// Only show what would be imported
    #[arg(long)]
    pub dry_run: bool,
}

impl ImportTree {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let dir = match ctx.caller {
            Caller::Local => PathBuf::from(&self.dir),
            Caller::Remote { upload_area, .. } => {
                let jailed = upload_area.resolve(&self.dir)?;
                jailed.check_no_symlinks(upload_area)?;
                jailed.full().to_path_buf()
            }
        };
        let contents = tree::read_tree(&dir, self.layout_only)?;
        for (location, reason) in &contents.skipped {
            writeln!(ctx.out, "skipped {location}: {reason}")?;
        }
        let mut refused = 0;
        for image in contents.images {
            if self.dry_run {
                let files: Vec<String> = image
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                writeln!(
                    ctx.out,
                    "would import {} version {}: {}",
                    image.location,
                    image.serial,
                    files.join(" + ")
                )?;
                continue;
            }
            let location = image.location.clone();
            match import_one(ctx, image) {
                Ok(ImportOutcome::Published(done)) => writeln!(
                    ctx.out,
                    "imported {} ({}, {} version {})",
                    done.fingerprint, done.image_type, done.product_id, done.serial
                )?,
                Ok(ImportOutcome::AlreadyPublished(done)) => writeln!(
                    ctx.out,
                    "already published {} ({} version {})",
                    done.fingerprint, done.product_id, done.serial
                )?,
                Err(e) => {
                    refused += 1;
                    writeln!(ctx.out, "refused {location}: {e}")?;
                }
            }
        }
        // Locally, the deltas of the newest versions follow (over SSH the server makes them).
        if !self.dry_run && matches!(ctx.caller, Caller::Local) {
            let out = &mut *ctx.out;
            ctx.catalog
                .make_pending_deltas(&|_| true, &|| false, &mut |job, outcome| {
                    let line = match outcome {
                        Ok(DeltaOutcome::Published(file)) => format!(
                            "delta for {} version {} from {}: {} bytes",
                            job.product_id, job.serial, job.base_serial, file.size
                        ),
                        Ok(DeltaOutcome::Declined(reason)) => format!(
                            "no delta for {} version {} from {}: {reason}",
                            job.product_id, job.serial, job.base_serial
                        ),
                        Ok(_) => return,
                        Err(e) => format!(
                            "no delta for {} version {}: {e}",
                            job.product_id, job.serial
                        ),
                    };
                    let _ = writeln!(out, "{line}");
                })?;
        }
        if refused > 0 {
            return Err(CommandError::Reported(format!(
                "{refused} images of the tree were refused; see the lines above"
            )));
        }
        Ok(())
    }
}

fn import_one(ctx: &mut Context<'_>, image: TreeImage) -> Result<ImportOutcome, CommandError> {
    let request = ImportRequest {
        sources: image.files.into_iter().map(ImportSource::file).collect(),
        default_aliases: image.aliases.is_none(),
        aliases: image.aliases.unwrap_or_default(),
        serial: Some(image.serial),
        requirements: image.requirements,
        transfer: Transfer::Copy,
        imported_by: ctx.caller.name(),
        may_publish_anywhere: ctx.caller.role() == Role::Admin,
        expected_fingerprint: image.expected_fingerprint,
    };
    let mut progress = ProgressReporter::new(&mut *ctx.err, ctx.progress);
    Ok(ctx.catalog.import(request, &mut progress)?)
}

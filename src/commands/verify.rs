//! `verify`: re-hash everything and report drift; exit status 1 on any problem.

use super::output::ProgressReporter;
use super::{CommandError, Context};
use crate::format::human_size;

/// Re-hash every published file and report any drift from the record
#[derive(Debug, clap::Args)]
pub struct Verify {
    /// Also apply every delta to its base and compare the result with its root
    #[arg(long)]
    pub deep: bool,
}

impl Verify {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let report = {
            let mut progress = ProgressReporter::new(&mut *ctx.err, ctx.progress);
            ctx.catalog.verify_with(self.deep, &mut progress)?
        };
        for problem in &report.problems {
            writeln!(ctx.out, "problem: {problem}")?;
        }
        writeln!(
            ctx.out,
            "checked {} images in {} files ({}): {} problems",
            report.images,
            report.files,
            human_size(report.bytes),
            report.problems.len()
        )?;
        if report.problems.is_empty() {
            Ok(())
        } else {
            Err(CommandError::Reported(format!(
                "verify found {} problems",
                report.problems.len()
            )))
        }
    }
}

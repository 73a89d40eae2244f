//! `help [command]`: the commands the caller's role may run, or one command's usage.

use clap::{CommandFactory, Parser};

use super::{Command, CommandError, Context, role_for};

/// List the commands you may run, or show one command's usage
#[derive(Debug, clap::Args)]
pub struct Help {
    /// A command to show the usage of
    pub command: Option<String>,
}

/// The command line as SSH exec parses it: no program name.
#[derive(Debug, Parser)]
#[command(
    name = "ssh <host>",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_version_flag = true
)]
pub struct RemoteCommandLine {
    #[command(subcommand)]
    pub command: Command,
}

impl Help {
    pub fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        let role = ctx.caller.role();
        let mut cli = RemoteCommandLine::command();
        if let Some(name) = self.command {
            let Some(sub) = cli.find_subcommand_mut(&name) else {
                return Err(CommandError::Usage(format!(
                    "there is no command {name:?}; `help` lists them"
                )));
            };
            write!(ctx.out, "{}", sub.render_long_help())?;
            return Ok(());
        }
        writeln!(ctx.out, "Commands for your role ({role}):")?;
        let allowed: Vec<(String, String)> = cli
            .get_subcommands()
            .filter(|sub| role.allows(role_for(sub.get_name())))
            .map(|sub| {
                (
                    sub.get_name().to_string(),
                    sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let width = allowed
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, about) in allowed {
            writeln!(ctx.out, "  {name:<width$}  {about}")?;
        }
        writeln!(ctx.out, "`help <command>` shows a command's options.")?;
        Ok(())
    }
}

//! Commands: each file holds one command's arguments (clap), the role it needs, its call into
//! the catalog and its output. This module is the only name table; the local CLI (`main.rs`)
//! and SSH exec (`ssh/exec.rs`) both dispatch through [`execute`], so they cannot drift.
//!
//! Exit status: 0 success, 1 failure, 2 usage. Errors are one line on stderr.

pub mod alias;
pub mod help;
pub mod import;
pub mod import_tree;
pub mod info;
pub mod list;
pub mod mirror;
pub mod mirror_progress;
pub mod mirror_status;
pub mod output;
pub mod product;
pub mod prune;
pub mod rebuild;
pub mod remote_info;
pub mod remove;
pub mod storage;
pub mod uploads;
pub mod verify;
pub mod version;
pub mod whoami;

use std::io::{Read, Write};

use crate::access::{Caller, JailError, Role};
use crate::catalog::{Catalog, CatalogError};
use crate::upload_area::UploadAreas;

/// The commands both front doors offer.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Import(import::Import),
    ImportTree(import_tree::ImportTree),
    List(list::List),
    Info(info::Info),
    #[command(subcommand)]
    Alias(alias::Alias),
    Remove(remove::Remove),
    #[command(subcommand)]
    Mirror(mirror::Mirror),
    Prune(prune::Prune),
    #[command(subcommand)]
    Product(product::Product),
    Verify(verify::Verify),
    Rebuild(rebuild::Rebuild),
    #[command(subcommand)]
    Storage(storage::Storage),
    RemoteInfo(remote_info::RemoteInfo),
    Uploads(uploads::Uploads),
    Whoami(whoami::Whoami),
    Help(help::Help),
    Version(version::Version),
}

/// Each command's name and the least role that may run it.
pub const ROLES: &[(&str, Role)] = &[
    ("import", Role::Publisher),
    ("import-tree", Role::Admin),
    ("list", Role::Reader),
    ("info", Role::Reader),
    ("alias", Role::Admin),
    ("remove", Role::Admin),
    ("mirror", Role::Admin),
    ("prune", Role::Admin),
    ("product", Role::Admin),
    ("verify", Role::Admin),
    ("rebuild", Role::Admin),
    ("storage", Role::Admin),
    ("remote-info", Role::Reader),
    ("uploads", Role::Publisher),
    ("whoami", Role::Reader),
    ("help", Role::Reader),
    ("version", Role::Reader),
];

/// The least role for a command name; unknown names need admin (refuse by default).
pub fn role_for(name: &str) -> Role {
    ROLES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Role::Admin, |(_, role)| *role)
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Import(_) => "import",
            Command::ImportTree(_) => "import-tree",
            Command::List(_) => "list",
            Command::Info(_) => "info",
            Command::Alias(_) => "alias",
            Command::Remove(_) => "remove",
            Command::Mirror(_) => "mirror",
            Command::Prune(_) => "prune",
            Command::Product(_) => "product",
            Command::Verify(_) => "verify",
            Command::Rebuild(_) => "rebuild",
            Command::Storage(_) => "storage",
            Command::RemoteInfo(_) => "remote-info",
            Command::Uploads(_) => "uploads",
            Command::Whoami(_) => "whoami",
            Command::Help(_) => "help",
            Command::Version(_) => "version",
        }
    }

    /// `storage push` and `pull` work on the local data directory, whatever the backend.
    pub fn uses_local_tree(&self) -> bool {
        matches!(self, Command::Storage(_))
    }

    /// `mirror sync` streams downloads for as long as `serve` streams responses.
    pub fn streams_downloads(&self) -> bool {
        matches!(self, Command::Mirror(_))
    }

    fn run(self, ctx: &mut Context<'_>) -> Result<(), CommandError> {
        match self {
            Command::Import(cmd) => cmd.run(ctx),
            Command::ImportTree(cmd) => cmd.run(ctx),
            Command::List(cmd) => cmd.run(ctx),
            Command::Info(cmd) => cmd.run(ctx),
            Command::Alias(cmd) => cmd.run(ctx),
            Command::Remove(cmd) => cmd.run(ctx),
            Command::Mirror(cmd) => cmd.run(ctx),
            Command::Prune(cmd) => cmd.run(ctx),
            Command::Product(cmd) => cmd.run(ctx),
            Command::Verify(cmd) => cmd.run(ctx),
            Command::Rebuild(cmd) => cmd.run(ctx),
            Command::Storage(cmd) => cmd.run(ctx),
            Command::RemoteInfo(cmd) => cmd.run(ctx),
            Command::Uploads(cmd) => cmd.run(ctx),
            Command::Whoami(cmd) => cmd.run(ctx),
            Command::Help(cmd) => cmd.run(ctx),
            Command::Version(cmd) => cmd.run(ctx),
        }
    }
}

/// How progress of long reads is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    Off,
    /// One line rewritten in place (`\r`): stderr is a terminal.
    Terminal,
    /// A line every 10%: stderr goes to a remote user over SSH.
    Lines,
}

/// Everything a command may use. Built by the front door.
pub struct Context<'a> {
    pub caller: &'a Caller,
    pub catalog: &'a Catalog,
    pub config: &'a crate::config::Config,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Standard input, for `import -`.
    pub stdin: Option<Box<dyn Read + Send>>,
    pub progress: ProgressStyle,
    /// The upload areas: over SSH the caller's is written, listed and emptied through them
    /// (quota, digests taken while files arrived, audit lines).
    pub areas: &'a std::sync::Arc<UploadAreas>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The arguments are wrong: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The caller's role does not allow the command.
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Failed(String),
    /// The command has already printed its findings (verify): only the status remains.
    #[error("{0}")]
    Reported(String),
    /// The reader of our output went away (`list | head`): not an error, nothing to say.
    #[error("broken pipe")]
    BrokenPipe,
}

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) => 2,
            CommandError::BrokenPipe => 0,
            _ => 1,
        }
    }
}

/// A path out of the caller's upload area is a refusal, like a role that does not allow it.
impl From<JailError> for CommandError {
    fn from(e: JailError) -> Self {
        CommandError::Denied(e.to_string())
    }
}

impl From<CatalogError> for CommandError {
    fn from(e: CatalogError) -> Self {
        CommandError::Failed(e.to_string())
    }
}

impl From<std::io::Error> for CommandError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CommandError::BrokenPipe
        } else {
            CommandError::Failed(crate::fsutil::plain_message(&e))
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    /// Why it was refused, when the caller's role or upload area did not allow it: the SSH
    /// door audits that.
    pub refused: Option<String>,
}

/// Checks the role, runs the command and reports an error as one line on stderr.
pub fn execute(command: Command, ctx: &mut Context<'_>) -> Outcome {
    let name = command.name();
    let result = ctx
        .caller
        .check(name, role_for(name))
        .map_err(CommandError::Denied)
        .and_then(|()| command.run(ctx));
    let _ = ctx.out.flush();
    match result {
        Ok(()) | Err(CommandError::BrokenPipe) => Outcome {
            code: 0,
            refused: None,
        },
        Err(e) => {
            report_error(ctx.err, &e.to_string());
            Outcome {
                code: e.exit_code(),
                refused: matches!(e, CommandError::Denied(_)).then(|| e.to_string()),
            }
        }
    }
}

/// Writes `simplestream-server: <message>` as one line.
pub fn report_error(err: &mut dyn Write, message: &str) {
    let _ = writeln!(
        err,
        "simplestream-server: {}",
        crate::fsutil::one_line(message)
    );
    let _ = err.flush();
}

/// Turns a clap parse error into the one-line usage message and exit status the front doors
/// print (help and version requests are not errors: they go to stdout with status 0).
pub fn clap_outcome(e: &clap::Error) -> (bool, String, i32) {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => (
            true,
            e.render().to_string(),
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        ),
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let hint = rendered
                .lines()
                .find_map(|line| line.trim().strip_prefix("Usage: "))
                .map(|usage| format!(" (usage: {usage})"))
                .unwrap_or_default();
            (false, format!("{first}{hint}"), 2)
        }
    }
}

/// Makes a `--requirement key=value` pair.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE (e.g. secureboot=false)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// A command missing from [`ROLES`] would silently need admin (`role_for`'s default), so
    /// every command SSH exec parses must be listed, and every listed name must be a command.
    #[test]
    fn every_command_has_a_role_and_every_role_a_command() {
        let cli = help::RemoteCommandLine::command();
        let commands: Vec<&str> = cli.get_subcommands().map(|sub| sub.get_name()).collect();
        for name in &commands {
            assert!(
                ROLES.iter().any(|(listed, _)| listed == name),
                "command `{name}` is not in ROLES; add it with the least role that may run it"
            );
        }
        for (listed, _) in ROLES {
            assert!(
                commands.contains(listed),
                "ROLES lists `{listed}`, which is no command"
            );
        }
        assert_eq!(commands.len(), ROLES.len(), "ROLES lists a command twice");
    }
}

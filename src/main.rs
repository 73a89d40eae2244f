//! The command line: parsing only. Catalog commands live in `commands/`, the server in `serve`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser};

use simplestream_server::access::Caller;
use simplestream_server::audit::Audit;
use simplestream_server::catalog::{Catalog, CatalogError};
use simplestream_server::commands::{self, Command, Context, ProgressStyle, report_error};
use simplestream_server::config::{self, Config, LiveConfig, LogFormat, StorageBackend};
use simplestream_server::data_dir::DataDir;
use simplestream_server::publish::{self, PublishArgs};
use simplestream_server::serve;
use simplestream_server::storage::s3::S3Tree;
use simplestream_server::upload_area::UploadAreas;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A private image server for LXD and Incus: SSH uploads in, simplestreams over HTTPS out.
///
/// Every setting (see `config`) can also be given as --<section>-<key> VALUE, e.g.
/// --http-listen 127.0.0.1:8443, or as SIMPLESTREAM_<SECTION>_<KEY>.
#[derive(Debug, Parser)]
#[command(name = "simplestream-server", version, disable_help_subcommand = true)]
struct Cli {
    /// The data directory (catalog, published tree, keys, uploads)
    #[arg(
        long,
        global = true,
        env = "SIMPLESTREAM_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// The configuration file [default: <data-dir>/config.toml]
    #[arg(long, global = true, env = "SIMPLESTREAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TopCommand {
    /// Run the HTTPS server and the SSH gateway until SIGTERM or SIGINT
    Serve(ServeArgs),
    Publish(PublishArgs),
    /// Print the effective configuration and where each value came from
    Config,
    #[command(flatten)]
    Catalog(Command),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Serve the bucket of `[storage]` over HTTPS only, as a read replica: no SSH gateway, no
    /// catalog changes, no mirrors, no deltas
    #[arg(long)]
    read_only: bool,
}

/// What a command opens the catalog for, which decides the published tree behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// A catalog command: the configured backend, as a writer.
    Command,
    /// `serve`: the configured backend, as a writer.
    Server,
    /// `serve --read-only`: the bucket, read only.
    Replica,
    /// `storage push` and `pull`: the local data directory, whatever the backend.
    LocalOnly,
}

/// The command line with one flag per setting (`--http-listen`, `--tls-san`, …) added to
/// what clap derives: the settings are listed in one place, config.rs.
fn command_line() -> clap::Command {
    let mut command = Cli::command();
    for (key, default) in config::keys() {
        let mut arg = clap::Arg::new(key.clone())
            .long(config::flag_name(&key))
            .global(true)
            .value_name("VALUE")
            .help(format!("Setting {key} (env {})", config::env_name(&key)))
            .help_heading("Settings")
            .hide_short_help(true);
        if default.is_array() {
            arg = arg.action(clap::ArgAction::Append);
        }
        if let Some((_, alias)) = config::FLAG_ALIASES.iter().find(|(k, _)| *k == key) {
            arg = arg.visible_alias(*alias);
        }
        command = command.arg(arg);
    }
    command
}

/// The setting flags given, as (key, flag, value), from the deepest subcommand that has them.
fn setting_flags(matches: &clap::ArgMatches) -> Vec<(String, String, String)> {
    let mut innermost = matches;
    while let Some((_, sub)) = innermost.subcommand() {
        innermost = sub;
    }
    let mut flags = Vec::new();
    for (key, _) in config::keys() {
        if innermost.value_source(&key) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        for value in innermost.get_many::<String>(&key).into_iter().flatten() {
            flags.push((
                key.clone(),
                format!("--{}", config::flag_name(&key)),
                value.clone(),
            ));
        }
    }
    flags
}

/// mimalloc's option number for `purge_delay` (its `mi_option_e`, unchanged from 2.x to 3.x;
/// libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A server (and a mirror's sync) keeps its memory small, at some CPU cost: mimalloc by
/// default keeps freed memory for a second before handing it back and backs its arenas with
/// 2 MiB transparent huge pages. A replica streaming from a bucket, or a mirror downloading
/// four files at once, frees several hundred MiB a second, so with those defaults one 1 GiB
/// replica download peaked at ~100 MiB RSS (bench/s3.sh), and a 2 GiB mirror run too
/// (bench/mirror.sh); without huge pages and with purging after 10 ms, 47 and 45-52 MiB.
/// After 250 ms (kept): 35.5 MiB for the replica, 49 MiB for the mirror, 42.9 MiB for the
/// fleet of bench/http.sh; and an SSH upload of 1 GiB took 9-13 thousand page faults instead
/// of 35-54 thousand (russh allocates every packet's data anew), 6.5% less CPU (median of 20
/// alternating uploads). Set before the runtimes start threads.
fn tune_allocator_for_streaming() {
    // SAFETY: sets a number mimalloc reads when it purges; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 250) };
    // For the whole process, also the arenas mimalloc reserved and marked MADV_HUGEPAGE
    // before main. Kernels before 3.15 lack it: they keep huge pages, nothing else changes.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() -> ExitCode {
    let parsed = command_line()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let (to_stdout, text, code) = commands::clap_outcome(&e);
            if to_stdout {
                print!("{text}");
            } else {
                report_error(&mut std::io::stderr(), &text);
            }
            return ExitCode::from(code as u8);
        }
    };
    let Cli {
        data_dir,
        config,
        command,
    } = cli;
    let common = Common {
        data_dir,
        config,
        flags: setting_flags(&matches),
    };
    match command {
        // publish runs on a publisher's machine: no data directory, no catalog.
        TopCommand::Publish(args) => {
            init_logging(false, LogFormat::Text);
            outcome(publish::run(args))
        }
        TopCommand::Config => match common.settings() {
            Ok(effective) => {
                print!("{}", config::render(&effective));
                ExitCode::SUCCESS
            }
            Err(e) => fail_config(&e),
        },
        TopCommand::Serve(args) => {
            tune_allocator_for_streaming();
            let opening = if args.read_only {
                Opening::Replica
            } else {
                Opening::Server
            };
            match common.open(opening) {
                Ok((config, catalog)) => {
                    let read_config = Box::new(move || common.settings().map(|e| e.config));
                    outcome(serve::run(config, catalog, read_config, args.read_only))
                }
                Err(code) => code,
            }
        }
        TopCommand::Catalog(command) => {
            if command.streams_downloads() {
                tune_allocator_for_streaming();
            }
            match common.open(if command.uses_local_tree() {
                Opening::LocalOnly
            } else {
                Opening::Command
            }) {
                Ok((config, catalog)) => run_command(command, &config, &catalog),
                Err(code) => code,
            }
        }
    }
}

/// The options every data-directory command shares.
struct Common {
    data_dir: PathBuf,
    config: Option<PathBuf>,
    flags: Vec<(String, String, String)>,
}

impl Common {
    /// The configuration: defaults, then the file, the environment and the flags.
    fn settings(&self) -> Result<config::Effective, config::ConfigError> {
        let file = self
            .config
            .clone()
            .unwrap_or_else(|| DataDir::new(&self.data_dir).config_file());
        Config::layered(&config::Layers {
            file: &file,
            file_named: self.config.is_some(),
            env: std::env::vars().collect(),
            flags: self.flags.clone(),
        })
    }

    /// Loads the configuration and opens the catalog, on the published tree `opening` and
    /// `[storage]` call for.
    fn open(&self, opening: Opening) -> Result<(Config, Catalog), ExitCode> {
        let config = self.settings().map_err(|e| fail_config(&e))?.config;
        init_logging(
            matches!(opening, Opening::Server | Opening::Replica),
            config.log.format,
        );
        let dirs = DataDir::new(&self.data_dir);
        let settings = config.catalog_settings();
        let cannot_open = |e: CatalogError| {
            fail(&format!(
                "cannot open the data directory {}: {e}",
                self.data_dir.display()
            ))
        };
        let catalog = match (config.storage.backend, opening) {
            (StorageBackend::Local, Opening::Replica) => {
                return Err(fail(
                    "serve --read-only serves a bucket: set storage.backend = \"s3\" with its endpoint and bucket",
                ));
            }
            (StorageBackend::Local, _) | (_, Opening::LocalOnly) => {
                Catalog::open(dirs, settings).map_err(cannot_open)?
            }
            (StorageBackend::S3, Opening::Replica) => {
                let s3 = config.storage.s3_settings().map_err(|e| fail(&e))?;
                let tree = S3Tree::open_replica(&s3).map_err(|e| fail(&e))?;
                Catalog::open_read_only(dirs, settings, tree).map_err(cannot_open)?
            }
            (StorageBackend::S3, Opening::Command | Opening::Server) => {
                let s3 = config.storage.s3_settings().map_err(|e| fail(&e))?;
                let tree =
                    S3Tree::open_writer(&s3, &writer_name(&self.data_dir)).map_err(|e| fail(&e))?;
                Catalog::open_with_tree(dirs, settings, tree).map_err(cannot_open)?
            }
        };
        Ok((config, catalog))
    }
}

/// Names this writer in the bucket's lease: the host and the data directory, so that the
/// same writer restarted, or a command run beside its server, is the same holder.
fn writer_name(data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!(
        "{}:{}",
        simplestream_server::remote::machine_hostname().unwrap_or_else(|| "localhost".into()),
        dir.display()
    )
}

fn run_command(command: Command, config: &Config, catalog: &Catalog) -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let progress = if stderr.is_terminal() {
        ProgressStyle::Terminal
    } else {
        ProgressStyle::Off
    };
    let mut out = stdout.lock();
    // Not held locked: a mirror's progress line is drawn from its download threads.
    let mut err = stderr;
    // The audit log, when it can be opened, also records what local commands do to upload
    // areas (`uploads --remove`).
    let audit = Audit::open(&config.ssh.audit_log, catalog.dirs().root())
        .unwrap_or_else(|_| Audit::disabled());
    let areas = Arc::new(UploadAreas::new(
        catalog.dirs().incoming(),
        Arc::new(LiveConfig::new(config.clone())),
        Arc::new(audit),
    ));
    let mut ctx = Context {
        caller: &Caller::Local,
        catalog,
        config,
        out: &mut out,
        err: &mut err,
        stdin: Some(Box::new(std::io::stdin())),
        progress,
        areas: &areas,
    };
    ExitCode::from(commands::execute(command, &mut ctx).code as u8)
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// A configuration error: one line per problem (each bad `[[mirror]]` entry has its own).
fn fail_config(e: &config::ConfigError) -> ExitCode {
    for line in e.lines() {
        report_error(&mut std::io::stderr(), &line);
    }
    ExitCode::from(1)
}

fn fail(message: &str) -> ExitCode {
    report_error(&mut std::io::stderr(), message);
    ExitCode::from(1)
}

/// `serve` logs at info (access log included); one-shot commands only warn.
fn init_logging(serving: bool, format: LogFormat) {
    let default_level = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIMPLESTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

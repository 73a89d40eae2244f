//! The command line: parsing only. Catalog commands live in `commands/`, the server in `serve`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use simplestream_server::access::Caller;
use simplestream_server::catalog::Catalog;
use simplestream_server::commands::{self, Command, Context, ProgressStyle, report_error};
use simplestream_server::config::{Config, LogFormat};
use simplestream_server::data_dir::DataDir;
use simplestream_server::serve::{self, ServeArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A private image server for LXD and Incus: SSH uploads in, simplestreams over HTTPS out.
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
    /// Seconds a removed image's files stay downloadable [default: 3600]
    #[arg(
        long,
        global = true,
        env = "SIMPLESTREAM_GRACE_PERIOD",
        value_name = "SECONDS"
    )]
    grace_period: Option<i64>,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TopCommand {
    Serve(ServeArgs),
    #[command(flatten)]
    Catalog(Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
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
    let dirs = DataDir::new(&cli.data_dir);
    let config_path = cli.config.clone().unwrap_or_else(|| dirs.config_file());
    let mut config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(grace) = cli.grace_period {
        config.catalog.grace_period_secs = grace;
    }
    if let TopCommand::Serve(args) = &cli.command {
        args.apply(&mut config);
    }
    init_logging(&cli.command, config.log.format);

    let catalog = match Catalog::open(dirs, config.catalog_settings()) {
        Ok(catalog) => catalog,
        Err(e) => {
            return fail(&format!(
                "cannot open the data directory {}: {e}",
                cli.data_dir.display()
            ));
        }
    };
    let command = match cli.command {
        TopCommand::Serve(_) => {
            return match serve::run(config, catalog) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("{e:#}")),
            };
        }
        TopCommand::Catalog(command) => command,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let progress = if stderr.is_terminal() {
        ProgressStyle::Terminal
    } else {
        ProgressStyle::Off
    };
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let mut ctx = Context {
        caller: &Caller::Local,
        catalog: &catalog,
        config: &config,
        out: &mut out,
        err: &mut err,
        stdin: Some(Box::new(std::io::stdin())),
        progress,
        digests: None,
    };
    ExitCode::from(commands::execute(command, &mut ctx) as u8)
}

fn fail(message: &str) -> ExitCode {
    report_error(&mut std::io::stderr(), message);
    ExitCode::from(1)
}

/// `serve` logs at info (access log included); one-shot commands only warn.
fn init_logging(command: &TopCommand, format: LogFormat) {
    let default_level = if matches!(command, TopCommand::Serve(_)) {
        "info"
    } else {
        "warn"
    };
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

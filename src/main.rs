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
use simplestream_server::publish::{self, PublishArgs};
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
    Publish(PublishArgs),
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
    let Cli {
        data_dir,
        config,
        grace_period,
        command,
    } = cli;
    let common = Common {
        data_dir,
        config,
        grace_period,
    };
    match command {
        // publish runs on a publisher's machine: no data directory, no catalog.
        TopCommand::Publish(args) => {
            init_logging(false, LogFormat::Text);
            outcome(publish::run(args))
        }
        TopCommand::Serve(args) => match common.open(Some(&args)) {
            Ok((config, catalog)) => outcome(serve::run(config, catalog)),
            Err(code) => code,
        },
        TopCommand::Catalog(command) => match common.open(None) {
            Ok((config, catalog)) => run_command(command, &config, &catalog),
            Err(code) => code,
        },
    }
}

/// The options every data-directory command shares.
struct Common {
    data_dir: PathBuf,
    config: Option<PathBuf>,
    grace_period: Option<i64>,
}

impl Common {
    /// Loads the configuration (file, then flags) and opens the catalog.
    fn open(&self, serve: Option<&ServeArgs>) -> Result<(Config, Catalog), ExitCode> {
        let dirs = DataDir::new(&self.data_dir);
        let config_path = self.config.clone().unwrap_or_else(|| dirs.config_file());
        let mut config = Config::load(&config_path).map_err(|e| fail(&e.to_string()))?;
        if let Some(grace) = self.grace_period {
            config.catalog.grace_period_secs = grace;
        }
        if let Some(args) = serve {
            args.apply(&mut config);
        }
        init_logging(serve.is_some(), config.log.format);
        let catalog = Catalog::open(dirs, config.catalog_settings()).map_err(|e| {
            fail(&format!(
                "cannot open the data directory {}: {e}",
                self.data_dir.display()
            ))
        })?;
        Ok((config, catalog))
    }
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
    let mut err = stderr.lock();
    let mut ctx = Context {
        caller: &Caller::Local,
        catalog,
        config,
        out: &mut out,
        err: &mut err,
        stdin: Some(Box::new(std::io::stdin())),
        progress,
        digests: None,
    };
    ExitCode::from(commands::execute(command, &mut ctx) as u8)
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
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

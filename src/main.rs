//! The command line: parsing only. Every command lives in `commands/`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use simplestream_server::access::Caller;
use simplestream_server::catalog::{Catalog, CatalogSettings};
use simplestream_server::commands::{self, Command, Context, ProgressStyle, report_error};
use simplestream_server::data_dir::DataDir;

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
    /// Seconds a removed image's files stay downloadable
    #[arg(
        long,
        global = true,
        env = "SIMPLESTREAM_GRACE_PERIOD",
        default_value_t = 3600,
        value_name = "SECONDS"
    )]
    grace_period: i64,
    #[command(subcommand)]
    command: Command,
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIMPLESTREAM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let settings = CatalogSettings {
        grace_period_secs: cli.grace_period,
        ..CatalogSettings::default()
    };
    let catalog = match Catalog::open(DataDir::new(&cli.data_dir), settings) {
        Ok(catalog) => catalog,
        Err(e) => {
            report_error(
                &mut std::io::stderr(),
                &format!(
                    "cannot open the data directory {}: {e}",
                    cli.data_dir.display()
                ),
            );
            return ExitCode::from(1);
        }
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
        out: &mut out,
        err: &mut err,
        stdin: Some(Box::new(std::io::stdin())),
        progress,
        digests: None,
    };
    ExitCode::from(commands::execute(cli.command, &mut ctx) as u8)
}

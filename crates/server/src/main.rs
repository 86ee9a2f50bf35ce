//! `server`: starts every listener of a TOML config (or of the embedded
//! default), each in a registered mode, and serves until SIGINT or SIGTERM; SIGHUP
//! reloads the config file.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use server::{Config, ConfigSource, MODES, config::DEFAULT_CONFIG};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Network toolkit server: listeners from a TOML file, each in a mode.
#[derive(Debug, Parser)]
#[command(version, after_help = modes_help())]
struct Args {
    /// The TOML config to run (default: the embedded config, loopback only).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE and exit: 0 if it would start, 1 with the reason if not.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "print_default_config"])]
    check_config: Option<PathBuf>,
    /// Print the embedded default config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log filter, e.g. `debug` or `info,server=debug` (default: RUST_LOG, else info).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, fields at the top level.
    Json,
}

fn modes_help() -> String {
    let mut help = String::from("Modes (the `mode` key of a [[listener]]):\n");
    for (name, what) in MODES {
        help.push_str(&format!("  {name:<10} {what}\n"));
    }
    help.push_str(
        "\nSee README.md for every config key and docs/PROTOCOL.md for the crc-tcp frame\n\
         protocol; `--print-default-config` shows an example.",
    );
    help
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        #[allow(
            clippy::print_stdout,
            reason = "printing the config is the command's output"
        )]
        {
            print!("{DEFAULT_CONFIG}");
        }
        return ExitCode::SUCCESS;
    }
    if let Err(error) = init_logging(args.log_level.as_deref(), args.log_format) {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    let json = matches!(args.log_format, LogFormat::Json);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if json => {
            error!(error = format!("{error:#}"), "cannot run");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.check_config {
        let config = Config::load(path)?;
        eprintln!(
            "{}: ok, {} listener(s)",
            path.display(),
            config.listeners.len()
        );
        return Ok(());
    }
    let (config, source) = match &args.config {
        Some(path) => (Config::load(path)?, ConfigSource::File(path.clone())),
        None => (Config::embedded_default()?, ConfigSource::Embedded),
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        server::shutdown::on_signals(shutdown.clone()).context("cannot install signal handlers")?;
        let hangups = server::shutdown::on_hangup().context("cannot install the SIGHUP handler")?;
        server::Server::bind(&config)
            .await?
            .run_reloading(shutdown, hangups, source)
            .await
    })
}

/// Raises the soft open-file limit to the hard one, as servers that hold many
/// sockets do; the socks5 default for max_connections follows from it.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit")
            }
            Err(error) => debug!(%error, "cannot raise the open-file limit"),
        }
    }
}

fn init_logging(level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .with_context(|| format!("--log-level {level:?} is not a valid filter"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
                .with_context(|| format!("RUST_LOG={value:?} is not a valid filter"))?,
            _ => EnvFilter::new("info"),
        },
    };
    // Colours only on a terminal: a log file, a pipe or the journal gets plain text that
    // log shippers and fail2ban can match (tracing-subscriber colours by default).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Human => output.boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // The second layer sees async-nats's debug lines about failed connection attempts
    // whatever the level, so that the nats handler's warning can name their cause.
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(server::sinks::nats::connect_causes())
        .try_init()
        .context("cannot install the logger")?;
    Ok(())
}

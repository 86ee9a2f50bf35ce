//! `client`: sends CRC frames (docs/PROTOCOL.md) to a listener, directly or
//! through a SOCKS5 proxy, and benchmarks it.
//!
//! - `client send --addr HOST:PORT (MESSAGE... | --file PATH | --stdin-lines)`
//!   sends one frame per message, file or line, optionally checking the acks;
//! - `client bench --addr HOST:PORT --frames N --size BYTES --connections C`
//!   measures frames per second and, with `--wait-ack`, ack latency;
//! - `client read FILE [--json] [--follow]` prints the frames of a file the
//!   server's `file` sink wrote, checking their CRCs;
//! - `client consume --nats URL --stream NAME [--count]` prints or counts
//!   the messages the server's `nats` handler put in a JetStream stream.
//!
//! Modules: [`cli`] (the options), [`send`], [`bench`](mod@bench), [`ack`] (what the
//! listener sends back), [`connect`] (opening connections, directly or
//! through the `socks5` crate's client), [`read`], [`consume`] (the compact
//! NATS headers' values read by `proto::pairs`), [`resend`], [`deadline`],
//! [`histogram`] and [`output`].
//!
//! With `--resend`, `send` and `bench` survive broken connections: see
//! [`resend`], which also fixes the exit status 4 (frames given up).
//!
//! Left out: logging (the client reports in its summary line and its error
//! chain) and, without `--resend`, any retry: a failure ends the run with a
//! non-zero exit.

mod ack;
mod bench;
mod cli;
mod connect;
mod consume;
mod deadline;
mod histogram;
mod output;
mod read;
mod report;
mod resend;
mod send;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Send(args) => send::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Read(args) => read::run(args).await.map(read::Outcome::exit_code),
            Command::Consume(args) => consume::run(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask`: the workspace's scripted checks, as a Rust program.
//!
//! - `cargo xtask e2e [--only NAME]` builds the release `server` and
//!   `client` once, starts one real server on `127.0.0.1:0` and drives real
//!   peers through it (the Python reference client, our client, curl,
//!   Chromium, ncat, PySocks, hostile peers, fail2ban-regex; systemd-analyze
//!   and python3 check the unit and the manifests), then stops it with SIGTERM;
//! - `cargo xtask bench [--quick] [--out DIR]` measures the SOCKS5 relay beside
//!   microsocks, Dante and direct loopback, and the crc-tcp listener against a
//!   loopback baseline, and writes `bench.json` and `bench.md`;
//! - `cargo xtask fuzz --seconds N [--only NAME]` runs each `cargo fuzz`
//!   target of `fuzz/` for N seconds and reports executions and crashes;
//! - `cargo xtask ci` runs the gates of STYLE.md in order, then `e2e` and
//!   `bench --quick`.
//!
//! Modules: [`harness`] (build, the server child, its log events),
//! [`process`] (tools run with deadlines), [`peers`] (the local HTTP, sink,
//! echo and UDP servers), [`socks`] (a minimal SOCKS5 client for probes and
//! load), [`e2e`], [`mod@bench`], [`mod@fuzz`] and [`ci`].
//!
//! Left out on purpose: anything that leaves loopback, fixed ports, sleeps
//! that wait for startup, and killing processes by name.
#![allow(
    clippy::print_stdout,
    reason = "xtask reports its tables and progress on the terminal"
)]

mod bench;
mod ci;
mod e2e;
mod fuzz;
mod harness;
mod peers;
mod process;
mod socks;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Workspace automation: end-to-end scenarios, benchmarks, CI gates.
#[derive(Debug, Parser)]
#[command(name = "xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end scenarios against one real server.
    E2e {
        /// Run only the scenarios whose number or name contains NAME
        /// (e.g. `3`, `curl`, `hostile`); may be repeated.
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
    },
    /// Measure the relay and the frame listener; write bench.json and bench.md.
    Bench {
        /// Small counts, netkit beside microsocks only: well under two minutes (for CI).
        #[arg(long)]
        quick: bool,
        /// Where to write the results (relative to the workspace root).
        #[arg(long, value_name = "DIR", default_value = "target/bench")]
        out: PathBuf,
        /// Install missing peers (microsocks, dante-server) with apt-get (as root;
        /// also done when CI=true).
        #[arg(long)]
        install_peers: bool,
        /// Also measure this `server` binary beside the one built now (a
        /// change's before and after in one run).
        #[arg(long, value_name = "PATH")]
        baseline_server: Option<PathBuf>,
        /// Run only the comparison with other SOCKS5 servers.
        #[arg(long)]
        compare_only: bool,
        /// Run only the nats handler's comparison with a bare JetStream
        /// publisher (full counts; with --baseline-server, its collector too).
        #[arg(long, conflicts_with = "compare_only")]
        nats_only: bool,
        /// Run only the crc-tcp listener figures and the CRC throughput (no
        /// comparison, relay or nats).
        #[arg(long, conflicts_with_all = ["compare_only", "nats_only"])]
        crc_only: bool,
    },
    /// Run every cargo-fuzz target of fuzz/ for a bounded time (needs nightly).
    Fuzz {
        /// Seconds per target (libFuzzer's -max_total_time).
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Run only the targets whose name contains NAME; may be repeated.
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
    },
    /// fmt, clippy, test, doc, then e2e and bench --quick, stopping at the first failure.
    Ci,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::E2e { only } => e2e::run(&only),
        Command::Bench {
            quick,
            out,
            install_peers,
            baseline_server,
            compare_only,
            nats_only,
            crc_only,
        } => bench::run(
            quick,
            &out,
            &bench::Options {
                install_peers,
                baseline_server,
                compare_only,
                nats_only,
                crc_only,
            },
        ),
        Command::Fuzz { seconds, only } => fuzz::run(seconds, &only),
        Command::Ci => ci::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! What `bench` shows: a progress bar on a terminal, then a human summary or
//! one JSON object on stdout.
#![allow(
    clippy::print_stdout,
    reason = "the report is the program's output and belongs on stdout"
)]

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::report::Report;

/// A bar counting frames written, drawn on stderr; hidden when stderr is not a
/// terminal or the output is JSON.
pub(crate) fn progress_bar(frames: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(frames);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} frames ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Prints `report` as one line of JSON.
///
/// # Errors
///
/// When stdout cannot be written.
pub(crate) fn print_json(report: &impl Serialize) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, report).context("writing the report")?;
    writeln!(stdout).context("writing the report")
}

/// Prints `report` for people.
pub(crate) fn print_human(report: &Report, payload_len: usize) {
    println!(
        "{} frames of {payload_len} bytes over {} connections in {:.3} s",
        report.frames, report.connections, report.seconds
    );
    println!(
        "{:.0} frames/s, {:.2} MiB/s of payload ({} bytes on the wire)",
        report.frames_per_sec, report.mib_per_sec, report.wire_bytes
    );
    if let (Some(p50), Some(p99)) = (report.ack_p50_us, report.ack_p99_us) {
        println!("ack latency: p50 {p50} µs, p99 {p99} µs");
    }
    if let Some(summary) = &report.resend {
        println!("{}", summary.human());
    }
    if report.errors > 0 {
        println!("{} connections failed", report.errors);
    }
}

//! `cargo xtask fuzz --seconds N`: builds the `cargo fuzz` targets of
//! `fuzz/` once (nightly, libFuzzer, no sanitizer: the workspace forbids
//! `unsafe`), then runs each target for N seconds, one after another, and
//! prints executions and findings per target.
//!
//! Each run starts from the committed corpus (`fuzz/corpus/<target>/`, read
//! only) and writes what it finds to a temporary folder, so a run leaves the
//! tree clean; a crash is saved under `fuzz/artifacts/<target>/`, and the
//! command fails after the last target, naming each crash file. Add the file
//! to the corpus once the bug is fixed: `cargo test -p fuzz-checks` replays it.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    harness::root,
    process::{Proc, Stdout, run_inherited},
};

/// The longest the one build of every target may take (a cold build with
/// the server's dependencies takes about 10 minutes on two busy cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// How long past its `-max_total_time` a target may take to start and stop.
const RUN_GRACE: Duration = Duration::from_secs(120);
/// An input that takes longer than this is reported as a hang.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// Runs every target (or those whose name contains one of `only`) for
/// `seconds` each.
pub(crate) fn run(seconds: u32, only: &[String]) -> anyhow::Result<()> {
    let root = root();
    ensure_cargo_fuzz()?;
    let targets = list_targets()?;
    let targets: Vec<&String> = targets
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| t.contains(o.as_str())))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target matches {only:?}");
    }
    println!("==> cargo +nightly fuzz build --sanitizer none");
    let status = run_inherited(
        "cargo fuzz build",
        nightly()
            .args(["fuzz", "build", "--sanitizer", "none"])
            .current_dir(&root),
        BUILD_TIMEOUT,
    )?;
    if !status.success() {
        bail!("cargo fuzz build failed: {status}");
    }
    let mut rows = Vec::new();
    let mut crashes = Vec::new();
    for target in targets {
        println!("==> fuzzing {target} for {seconds}s");
        let found = tempfile::tempdir().context("a temporary corpus folder")?;
        let seeds = root.join("fuzz/corpus").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("cannot create {}", artifacts.display()))?;
        let mut cmd = nightly();
        cmd.args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(found.path())
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .current_dir(&root);
        let finished = Proc::spawn(target, &mut cmd, Stdio::null(), Stdout::Null)?
            .wait(Duration::from_secs(u64::from(seconds)) + RUN_GRACE)?;
        let stats = Stats::parse(&String::from_utf8_lossy(&finished.stderr));
        let new_inputs = std::fs::read_dir(found.path()).map_or(0, Iterator::count);
        let verdict = if finished.status.success() {
            "ok".to_owned()
        } else {
            let file = stats
                .crash_file
                .clone()
                .unwrap_or_else(|| format!("(see {})", artifacts.display()));
            crashes.push(format!("{target}: {file}"));
            format!("FAILED ({}): {file}", finished.status)
        };
        println!(
            "    {target}: {} executions in {}s, {} new inputs, {verdict}",
            stats.executions, stats.seconds, new_inputs
        );
        rows.push((target.clone(), stats, new_inputs, verdict));
    }
    println!("\n| target | executions | seconds | exec/s | new inputs | result |");
    println!("|---|---:|---:|---:|---:|---|");
    for (target, stats, new_inputs, verdict) in &rows {
        let rate = stats.executions / stats.seconds.max(1);
        println!(
            "| {target} | {} | {} | {rate} | {new_inputs} | {verdict} |",
            stats.executions, stats.seconds
        );
    }
    if !crashes.is_empty() {
        bail!(
            "fuzzing found {} crash(es):\n{}",
            crashes.len(),
            crashes.join("\n")
        );
    }
    Ok(())
}

/// `cargo +nightly` through rustup, without the variables of the stable
/// cargo that runs us.
fn nightly() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Installs cargo-fuzz if `cargo fuzz` is missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = nightly()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("==> cargo install cargo-fuzz --locked");
    let status = run_inherited(
        "cargo install cargo-fuzz",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        BUILD_TIMEOUT,
    )?;
    if !status.success() {
        bail!(
            "cargo install cargo-fuzz failed ({status}); the nightly toolchain is needed too: rustup toolchain install nightly"
        );
    }
    Ok(())
}

/// The targets `cargo fuzz list` names.
fn list_targets() -> anyhow::Result<Vec<String>> {
    let mut cmd = nightly();
    cmd.args(["fuzz", "list"]).current_dir(root());
    let finished = Proc::spawn("cargo fuzz list", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(60))?;
    if !finished.status.success() {
        bail!("cargo fuzz list failed: {}", finished.stderr_tail());
    }
    Ok(finished
        .stdout_text()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// What libFuzzer says at the end of a run.
#[derive(Debug, Default, Clone)]
struct Stats {
    executions: u64,
    seconds: u64,
    crash_file: Option<String>,
}

impl Stats {
    /// Reads `stat::number_of_executed_units`, the `Done N runs in S
    /// second(s)` line and the `Test unit written to FILE` line.
    fn parse(stderr: &str) -> Self {
        let mut stats = Self::default();
        for line in stderr.lines() {
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                stats.executions = n.trim().parse().unwrap_or(stats.executions);
            } else if let Some(rest) = line.strip_prefix("Done ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [runs, "runs", "in", secs, ..] = words.as_slice() {
                    stats.executions = runs.parse().unwrap_or(stats.executions);
                    stats.seconds = secs.parse().unwrap_or(0);
                }
            } else if let Some((_, file)) = line.split_once("Test unit written to ") {
                stats.crash_file = Some(file.trim().to_owned());
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_lines() {
        let stderr = "#1000\tNEW cov: 1\nDone 12345678 runs in 61 second(s)\n\
                      stat::number_of_executed_units: 12345679\n";
        let stats = Stats::parse(stderr);
        assert_eq!((stats.executions, stats.seconds), (12_345_679, 61));
        assert_eq!(stats.crash_file, None);
        let crash = "==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='fuzz/artifacts/ack/'; Test unit written to fuzz/artifacts/ack/crash-abc\n";
        assert_eq!(
            Stats::parse(crash).crash_file.as_deref(),
            Some("fuzz/artifacts/ack/crash-abc")
        );
    }
}

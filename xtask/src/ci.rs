//! `cargo xtask ci`: the gates of STYLE.md section 11, in order, then the
//! end-to-end scenarios and the quick benchmark. Stops at the first failure.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    bench, e2e,
    harness::{cargo, root},
    process::run_inherited,
};

/// The longest any one cargo gate may take.
const GATE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A cargo gate: its name, cargo's arguments and an environment variable.
type Gate = (
    &'static str,
    &'static [&'static str],
    Option<(&'static str, &'static str)>,
);

/// Runs every gate.
pub(crate) fn run() -> anyhow::Result<()> {
    let root = root();
    let gates: [Gate; 4] = [
        (
            "cargo fmt --all --check",
            &["fmt", "--all", "--check"],
            None,
        ),
        (
            "cargo clippy --workspace --all-targets -- -D warnings",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            None,
        ),
        ("cargo test --workspace", &["test", "--workspace"], None),
        (
            "RUSTDOCFLAGS=-D warnings cargo doc --no-deps --workspace",
            &["doc", "--no-deps", "--workspace"],
            Some(("RUSTDOCFLAGS", "-D warnings")),
        ),
    ];
    let mut timings = Vec::new();
    for (name, args, env) in gates {
        let started = Instant::now();
        gate(&root, name, args, env)?;
        timings.push((name, started.elapsed()));
    }
    for (name, step) in [
        ("cargo xtask e2e", Step::E2e),
        ("cargo xtask bench --quick", Step::BenchQuick),
    ] {
        println!("==> {name}");
        let started = Instant::now();
        match step {
            Step::E2e => e2e::run(&[]),
            Step::BenchQuick => bench::run(
                true,
                Path::new("target/bench"),
                &bench::Options {
                    install_peers: true,
                    ..bench::Options::default()
                },
            ),
        }
        .map_err(|e| e.context(format!("{name} failed")))?;
        timings.push((name, started.elapsed()));
    }
    println!("\nci: all gates passed");
    for (name, took) in timings {
        println!("  {:>6.1}s  {name}", took.as_secs_f64());
    }
    Ok(())
}

enum Step {
    E2e,
    BenchQuick,
}

fn gate(root: &Path, name: &str, args: &[&str], env: Option<(&str, &str)>) -> anyhow::Result<()> {
    println!("==> {name}");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(args);
    if let Some((key, value)) = env {
        cmd.env(key, value);
    }
    // The gates' output goes straight to the terminal.
    let status = run_inherited(name, &mut cmd, GATE_TIMEOUT)?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

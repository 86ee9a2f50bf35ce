//! `cargo xtask bench [--quick]`: one run on this machine, loopback only,
//! with the load generator and the server sharing its cores.
//!
//! Four parts, each against a baseline measured in the same run:
//! - [`compare`]: netkit beside microsocks, Dante and direct loopback (echo
//!   latency and CPU per round trip, tunnels per second and CPU per tunnel,
//!   bulk and CPU per GiB, memory per idle tunnel; metrics on and off), and
//!   `--quick`'s regression check against microsocks;
//! - [`relay`]: the SOCKS5 listener: bulk MiB/s for 1 and 8 streams through
//!   the proxy vs direct to the same sink, server CPU seconds per GiB relayed;
//! - [`frames`]: the crc-tcp listener (discard handler, acks on and off)
//!   driven by `client bench --json`, vs a raw loopback stream of the same
//!   size;
//! - [`checksums`]: `proto::checksum` per version and CRC size as a plain
//!   timed loop, with the `crc` crate's CRC-32 as a baseline;
//! - [`nats`]: the nats handler vs a bare JetStream publisher (full run only).
//!
//! Targets are printed next to the figures with pass or miss; a miss never
//! fails the run, a measurement that cannot be made does (so the benchmark
//! cannot rot). Results go to `bench.md` and `bench.json` under `--out`.
//! The server logs at `warn`, plus `info` for its lifecycle ([`LOG_LEVEL`]),
//! so the figures measure the relay and not the per-connection log.

mod checksums;
mod compare;
mod frames;
mod nats;
mod relay;

pub(crate) use compare::Options;

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    harness::{self, Server, ServerSpec, message},
    process::run_inherited,
};

/// The server's log filter during the bench.
const LOG_LEVEL: &str = "warn,server=info,server::modes=warn";

/// The bench server's config.
const CONFIG: &str = r#"[server]
drain_timeout = "5s"

[[listener]]
name = "proxy"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"

[[listener]]
name = "frames-ack"
mode = "crc-tcp"
bind = "127.0.0.1:0"
ack = true
handler = { type = "discard" }

[[listener]]
name = "frames-noack"
mode = "crc-tcp"
bind = "127.0.0.1:0"
ack = false
handler = { type = "discard" }
"#;

/// Counts and time caps: the full run and `--quick`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// `--quick`.
    pub(crate) quick: bool,
    /// Bytes per bulk run (split over the streams).
    pub(crate) bulk_bytes: u64,
    /// Bulk runs of each kind, alternating direct and proxied; the median is reported
    /// (a single sub-second run on a shared VM varies by ±30 %).
    pub(crate) bulk_rounds: usize,
    /// The cap of each bulk run.
    pub(crate) bulk_cap: Duration,
    /// crc-tcp frames per run, by payload size: 64 B, 4 KiB, 64 KiB.
    pub(crate) frames: [u64; 3],
    /// The cap of each `client bench` run.
    pub(crate) client_cap: Duration,
    /// The CRC loop's buffer.
    pub(crate) crc_bytes: usize,
    /// The least time each CRC loop runs.
    pub(crate) crc_min_time: Duration,
    /// The whole measurement (after the build).
    pub(crate) budget: Duration,
    /// The comparison with other SOCKS5 servers.
    pub(crate) compare: ComparePlan,
}

/// Counts of the comparison with other SOCKS5 servers ([`compare`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ComparePlan {
    /// Rounds of each measurement, the subjects interleaved.
    pub(crate) rounds: usize,
    /// Echo round trips per subject and round.
    pub(crate) echo_iterations: usize,
    /// The cap of each echo run.
    pub(crate) echo_cap: Duration,
    /// Concurrent clients opening tunnels.
    pub(crate) tunnel_clients: usize,
    /// Tunnels per subject and round.
    pub(crate) tunnels: u64,
    /// The cap of each tunnel run.
    pub(crate) tunnel_cap: Duration,
    /// Bytes of each one-stream bulk run (0: none).
    pub(crate) bulk_bytes: u64,
    /// The cap of each bulk run.
    pub(crate) bulk_cap: Duration,
    /// Idle tunnels held for the memory figure (0: none).
    pub(crate) idle_tunnels: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                bulk_bytes: 512 << 20,
                bulk_rounds: 1,
                bulk_cap: Duration::from_secs(3),
                frames: [1_000_000, 100_000, 6_000],
                client_cap: Duration::from_secs(15),
                crc_bytes: 16 << 20,
                crc_min_time: Duration::from_millis(150),
                budget: Duration::from_secs(45),
                // netkit and microsocks only. Tunnel CPU is counted in 10 ms
                // clock ticks: each round spends about 100 of them per subject.
                compare: ComparePlan {
                    rounds: 7,
                    echo_iterations: 20_000,
                    echo_cap: Duration::from_secs(3),
                    tunnel_clients: 64,
                    tunnels: 8_000,
                    tunnel_cap: Duration::from_secs(3),
                    // Only with `--baseline-server` (see compare.rs).
                    bulk_bytes: 256 << 20,
                    bulk_cap: Duration::from_secs(3),
                    // Memory per idle tunnel, for a change's before and after
                    // (`--baseline-server`): a second or two per subject.
                    idle_tunnels: 1_000,
                },
            }
        } else {
            Self {
                quick,
                bulk_bytes: 4 << 30,
                bulk_rounds: 3,
                bulk_cap: Duration::from_secs(20),
                frames: [20_000_000, 1_000_000, 60_000],
                client_cap: Duration::from_secs(90),
                crc_bytes: 64 << 20,
                crc_min_time: Duration::from_millis(500),
                budget: Duration::from_secs(9 * 60),
                compare: ComparePlan {
                    rounds: 5,
                    echo_iterations: 10_000,
                    echo_cap: Duration::from_secs(10),
                    tunnel_clients: 64,
                    // Five subjects' connections share loopback's 28,000
                    // ephemeral ports with TIME_WAIT's 60 s (and Dante binds
                    // before it connects): 6,000 per round already ran out.
                    tunnels: 3_000,
                    tunnel_cap: Duration::from_secs(5),
                    bulk_bytes: 1 << 30,
                    bulk_cap: Duration::from_secs(10),
                    idle_tunnels: 2_000,
                },
            }
        }
    }
}

/// A target next to a figure.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// As printed, e.g. `>= 0.70x direct`.
    pub(crate) text: String,
    /// Whether the figure meets it.
    pub(crate) pass: bool,
}

impl Target {
    /// `value >= least`.
    pub(crate) fn at_least(value: f64, least: f64, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            pass: value >= least,
        }
    }

    /// `value <= most`.
    pub(crate) fn at_most(value: f64, most: f64, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            pass: value <= most,
        }
    }
}

/// One figure.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `relay`, `crc-tcp` or `crc`.
    pub(crate) group: &'static str,
    /// What was measured.
    pub(crate) metric: String,
    /// The figure (NaN when it could not be measured).
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// The target, if any.
    pub(crate) target: Option<Target>,
    /// Context: counts, the baseline, an error.
    pub(crate) note: String,
}

impl Row {
    /// A figure without a target.
    pub(crate) fn new(
        group: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            group,
            metric: metric.into(),
            value,
            unit,
            target: None,
            note: String::new(),
        }
    }

    /// With a target.
    pub(crate) fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// With a note.
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// The rows so far and the measurements that failed.
#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Every figure, in order.
    pub(crate) rows: Vec<Row>,
    /// Raw records for the JSON (e.g. `client bench --json` objects).
    pub(crate) raw: Vec<Value>,
    /// Measurements that could not be made.
    pub(crate) errors: Vec<String>,
    /// Whole markdown tables, by title (the comparison).
    pub(crate) tables: Vec<(&'static str, String)>,
}

impl Results {
    /// Records a measurement's failure as a row and an error.
    pub(crate) fn failed(&mut self, group: &'static str, metric: &str, error: &anyhow::Error) {
        self.rows
            .push(Row::new(group, metric, f64::NAN, "").note(format!("error: {error:#}")));
        self.errors.push(format!("{metric}: {error:#}"));
    }
}

/// Runs the benchmark and writes `bench.json` and `bench.md` to `out`.
///
/// `cargo xtask` builds xtask without optimisations, which would make the
/// load generators and the CRC loops measure the compiler's debug code; so a
/// debug xtask builds itself in release and runs the bench from there.
pub(crate) fn run(quick: bool, out: &Path, options: &Options) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        return rerun_optimised(quick, out, options);
    }
    let plan = Plan::new(quick);
    relay::raise_open_file_limit();
    let bins = harness::build_release()?;
    let dir = tempfile::Builder::new()
        .prefix("xtask-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut server = Server::start(
        &bins.server,
        dir.path(),
        &ServerSpec {
            config: CONFIG,
            listeners: &["proxy", "frames-ack", "frames-noack"],
            log_level: LOG_LEVEL,
            keep: |e| !matches!(message(e), "session" | "frame"),
            log_name: "bench-server.log",
        },
    )?;
    println!(
        "bench ({}) against server pid {}; log {}",
        if quick { "quick" } else { "full" },
        server.pid(),
        server.log_path().display()
    );
    let started = Instant::now();
    let mut results = Results::default();
    if options.crc_only {
        frames::run(&bins, &server, &plan, started, &mut results);
        checksums::run(&plan, &mut results);
    } else if options.nats_only {
        nats::run(&bins, dir.path(), &plan, options, started, &mut results);
    } else {
        compare::run(&bins.server, dir.path(), &plan, options, &mut results);
    }
    if !options.compare_only && !options.nats_only && !options.crc_only {
        relay::run(&server, &plan, started, &mut results);
        frames::run(&bins, &server, &plan, started, &mut results);
        checksums::run(&plan, &mut results);
        nats::run(&bins, dir.path(), &plan, options, started, &mut results);
    }
    let stop = server.stop(Duration::from_secs(15));
    let elapsed = started.elapsed();

    let markdown = markdown(&plan, &results, elapsed);
    println!("\n{markdown}");
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        harness::root().join(out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("bench.md"), &markdown)?;
    let json = to_json(&plan, &results, elapsed);
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    println!(
        "wrote {} and {}",
        out.join("bench.md").display(),
        out.join("bench.json").display()
    );
    match stop {
        Ok((status, _)) if status.success() => {}
        Ok((status, _)) => results
            .errors
            .push(format!("the server exited with {status} after SIGTERM")),
        Err(error) => results.errors.push(format!("{error:#}")),
    }
    if !results.errors.is_empty() {
        bail!(
            "{} measurement(s) failed: {}",
            results.errors.len(),
            results.errors.join("; ")
        );
    }
    Ok(())
}

fn rerun_optimised(quick: bool, out: &Path, options: &Options) -> anyhow::Result<()> {
    let mut built = harness::cargo_build_release(&["xtask"])?;
    let xtask = built
        .remove("xtask")
        .context("cargo built no `xtask` executable")?;
    let mut cmd = Command::new(&xtask);
    cmd.current_dir(harness::root())
        .arg("bench")
        .arg("--out")
        .arg(out);
    if quick {
        cmd.arg("--quick");
    }
    if options.install_peers {
        cmd.arg("--install-peers");
    }
    if options.compare_only {
        cmd.arg("--compare-only");
    }
    if options.nats_only {
        cmd.arg("--nats-only");
    }
    if options.crc_only {
        cmd.arg("--crc-only");
    }
    if let Some(baseline) = &options.baseline_server {
        cmd.arg("--baseline-server").arg(baseline);
    }
    // The optimised run builds the server once more (a no-op) and has its own budget.
    let timeout = Plan::new(quick).budget + Duration::from_secs(45 * 60);
    let status = run_inherited("xtask bench (release)", &mut cmd, timeout)?;
    if !status.success() {
        bail!("the optimised bench run failed ({status})");
    }
    Ok(())
}

/// Whether the measurement budget still has room.
pub(crate) fn within_budget(plan: &Plan, started: Instant) -> anyhow::Result<()> {
    if started.elapsed() > plan.budget {
        bail!("skipped: the bench's budget of {:?} is spent", plan.budget);
    }
    Ok(())
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value.abs() >= 1000.0 {
        let whole = format!("{:.0}", value);
        let (sign, digits) = whole.split_at(usize::from(whole.starts_with('-')));
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{sign}{grouped}")
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn markdown(plan: &Plan, results: &Results, elapsed: Duration) -> String {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "# cargo xtask bench{}\n\n{cpus} CPUs shared by the load generator and the server; loopback only; \
         measured in {:.1}s.\n",
        if plan.quick {
            " --quick (small counts: figures are rough)"
        } else {
            ""
        },
        elapsed.as_secs_f64()
    );
    for (title, table) in &results.tables {
        let _ = writeln!(md, "## {title}\n\n{table}");
    }
    for (group, title) in [
        ("relay", "SOCKS5 relay"),
        (
            "crc-tcp",
            "crc-tcp listener (1 connection, crc-size 4, discard handler)",
        ),
        ("crc", "CRC throughput (payload bytes)"),
        (
            "compare",
            "Beside other SOCKS5 servers: the figures and checks",
        ),
        (
            "nats",
            "nats handler vs a bare JetStream publisher (1 connection)",
        ),
    ] {
        if !results.rows.iter().any(|r| r.group == group) {
            continue;
        }
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(md, "| metric | value | unit | target | result | note |");
        let _ = writeln!(md, "|---|---:|---|---|---|---|");
        for row in results.rows.iter().filter(|r| r.group == group) {
            let (target, verdict) = match &row.target {
                Some(t) if row.value.is_nan() => (t.text.as_str(), "-"),
                Some(t) => (t.text.as_str(), if t.pass { "pass" } else { "miss" }),
                None => ("", ""),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                row.metric,
                format_value(row.value),
                row.unit,
                target,
                verdict,
                row.note.replace('|', "/")
            );
        }
        let _ = writeln!(md);
    }
    md
}

fn to_json(plan: &Plan, results: &Results, elapsed: Duration) -> Value {
    let rows: Vec<Value> = results
        .rows
        .iter()
        .map(|r| {
            json!({
                "group": r.group,
                "metric": r.metric,
                "value": if r.value.is_nan() { Value::Null } else { json!(r.value) },
                "unit": r.unit,
                "target": r.target.as_ref().map(|t| t.text.clone()),
                "pass": r.target.as_ref().map(|t| t.pass),
                "note": r.note,
            })
        })
        .collect();
    json!({
        "quick": plan.quick,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "server_log_level": LOG_LEVEL,
        "seconds": elapsed.as_secs_f64(),
        "rows": rows,
        "client_bench_runs": results.raw,
        "errors": results.errors,
    })
}

//! `cargo xtask e2e`: one real `server`, real peers, a pass/fail table.
//!
//! The release binaries are built once. One server runs with four listeners
//! on `127.0.0.1:0` (see [`CONFIG`]): `frames` (crc-tcp, file sink), `log`
//! (crc-tcp, log handler), `proxy` (socks5, no auth) and `proxy-auth`
//! (socks5, username/password). The scenarios run in order, each bounded by
//! its own deadlines; the last one stops the server with SIGTERM and checks
//! that it drained and exited 0. A scenario whose tool is missing fails with
//! the command that installs it.
//!
//! Scenario groups: [`frames`] (the Python reference client, our client
//! through the proxy), [`proxy`] (curl, Chromium, ncat, PySocks UDP),
//! [`chain`] (two instances of their own, A chained to B with `via`),
//! [`eyeballs`] (Happy Eyeballs with a silent IPv6 address, the server in a
//! mount namespace of its own with its own `/etc/hosts`), [`httpproxy`]
//! (`mode = "http"`: curl with plain HTTP and TLS through CONNECT, 407 and
//! 403, Chromium, ncat), [`shared`] (SOCKS4, 4a, 5 and HTTP on one port),
//! [`hostile`] (bad peers while good ones are served), [`crash`] (a file
//! sink of its own, killed with SIGKILL and restarted twenty times),
//! [`fail2ban`] (contrib's filter on a server's real log), [`prometheus`]
//! (the admin endpoint's `/metrics` through `promtool`, and scraped by a
//! real Prometheus), [`deploy`] (the systemd unit and the Kubernetes
//! manifests), [`haproxy`] (two instances of their own behind HAProxy with
//! the PROXY protocol), [`jetstream`] (a 3-node NATS JetStream cluster
//! behind two collectors behind HAProxy, a node and a collector killed
//! during the run; and the same with file sinks), [`reload`] (a server of
//! its own reloaded three times under a 1 GiB download and a frame stream)
//! and [`shutdown`].

mod chain;
mod crash;
mod deploy;
mod eyeballs;
mod fail2ban;
mod frames;
mod haproxy;
mod hostile;
mod httpproxy;
mod interop;
mod jetstream;
pub(crate) mod nats;
mod nats_auth;
mod prometheus;
mod proxy;
mod reload;
mod shared;
mod shutdown;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    harness::{self, Binaries, Server, ServerSpec, message},
    peers::{BIG_SEED, HttpServer, Pattern, SMALL_SEED, Site},
    process::{Finished, Proc, Stdout},
};

/// The crc-tcp listener with a file sink.
pub(crate) const FRAMES: &str = "frames";
/// The crc-tcp listener with the log handler.
pub(crate) const LOG: &str = "log";
/// The socks5 listener without authentication.
pub(crate) const PROXY: &str = "proxy";
/// The socks5 listener with a password.
pub(crate) const PROXY_AUTH: &str = "proxy-auth";
/// The user of `proxy-auth`.
pub(crate) const USER: &str = "alice";
/// Her password.
pub(crate) const PASSWORD: &str = "wonder-land";
/// The server's drain timeout.
/// The length of the test site's `/small` body.
pub(crate) const SMALL_LEN: u64 = 64 * 1024;
/// The bound of one curl transfer of a scenario (`--max-time`).
pub(crate) const CURL_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The size of `/big` on the local HTTP server.
const BIG_LEN: u64 = 100 * 1024 * 1024;
/// All scenarios together may take this long; the rest are then skipped.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The server config; `{SINK}` is replaced by the file sink's path.
const CONFIG: &str = r#"[server]
drain_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "frames"
mode = "crc-tcp"
bind = "127.0.0.1:0"
ack = true
handler = { type = "file", path = {SINK}, sync = "always" }

[[listener]]
name = "log"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "log" }

[[listener]]
name = "proxy"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "1s"
# Loopback only: Chromium also asks for its update and sign-in hosts, and
# the run must not reach anything off this machine. Names are decided before
# anything is resolved (`*` denies every other name), so no DNS query leaves.
rules = [
    { action = "allow", domains = ["localhost"] },
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.0/8", "::1/128", "0.0.0.0/32"] },
    { action = "deny" },
]

[[listener]]
name = "proxy-auth"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "alice", password = "wonder-land" }]
handshake_timeout = "1s"
"#;

/// Everything the scenarios share.
pub(crate) struct Ctx {
    /// The binaries under test.
    pub(crate) bins: Binaries,
    /// The running server.
    pub(crate) server: Server,
    /// Whether a scenario already stopped the server.
    pub(crate) stopped: bool,
    /// The run's temporary directory.
    pub(crate) dir: TempDir,
    /// The `frames` listener's file sink.
    pub(crate) sink_path: PathBuf,
    /// The local HTTP server.
    pub(crate) http: HttpServer,
    /// The workspace root.
    pub(crate) root: PathBuf,
    /// A marker unique to this run.
    pub(crate) nonce: String,
}

impl Ctx {
    /// The address of listener `name`.
    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.server.addr(name)
    }

    /// Runs `client ARGS` and waits up to `timeout`.
    pub(crate) fn client(&self, args: &[String], timeout: Duration) -> anyhow::Result<Finished> {
        let mut cmd = Command::new(&self.bins.client);
        cmd.args(args);
        Proc::spawn("client", &mut cmd, Stdio::null(), Stdout::Capture)?.wait(timeout)
    }

    /// The file sink's current length.
    pub(crate) fn sink_len(&self) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(&self.sink_path)
            .with_context(|| format!("cannot stat {}", self.sink_path.display()))?
            .len())
    }

    /// The `/big` length.
    pub(crate) fn big_len(&self) -> u64 {
        BIG_LEN
    }

    /// Waits up to `timeout` for a `session` event from `mark` on that
    /// satisfies `pred`.
    pub(crate) fn session(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.server
            .events()
            .wait_for(mark, timeout, |e| message(e) == "session" && pred(e))
    }
}

type ScenarioFn = fn(&mut Ctx) -> anyhow::Result<String>;

const SCENARIOS: &[(&str, ScenarioFn)] = &[
    ("reference-client", frames::reference_client),
    ("client-via-socks5", frames::client_via_socks5),
    ("curl", proxy::curl),
    ("chromium", proxy::chromium),
    ("ncat", proxy::ncat),
    ("udp-associate", proxy::udp_associate),
    ("curl-proxy-user", interop::curl_proxy_user),
    ("pysocks-connect", interop::pysocks_connect),
    ("socks5-chain", chain::socks5_chain),
    ("happy-eyeballs", eyeballs::happy_eyeballs),
    ("http-proxy-curl", httpproxy::http_proxy_curl),
    ("http-proxy-chromium", httpproxy::http_proxy_chromium),
    ("ncat-http-proxy", httpproxy::ncat_http_proxy),
    ("shared-port", shared::shared_port),
    ("hostile-peers", hostile::hostile_peers),
    ("crash-durability", crash::crash_durability),
    ("fail2ban", fail2ban::fail2ban_filter),
    ("prometheus-metrics", prometheus::promtool_check_metrics),
    ("prometheus-scrape", prometheus::prometheus_scrape),
    ("systemd-unit", deploy::systemd_unit),
    ("k8s-manifests", deploy::k8s_manifests),
    ("haproxy", haproxy::haproxy),
    ("jetstream-cluster", jetstream::jetstream_cluster),
    ("collectors-file-sink", jetstream::file_sink_limit),
    ("reload", reload::reload),
    ("nats", nats::nats),
    ("nats-auth", nats_auth::nats_auth),
    ("graceful-shutdown", shutdown::graceful_shutdown),
];

/// One row of the result table.
struct Outcome {
    number: usize,
    name: &'static str,
    result: Result<String, String>,
    elapsed: Duration,
}

/// Runs the scenarios selected by `only` (all if empty).
pub(crate) fn run(only: &[String]) -> anyhow::Result<()> {
    let selected: Vec<(usize, &'static str, ScenarioFn)> = SCENARIOS
        .iter()
        .enumerate()
        .map(|(i, (name, f))| (i + 1, *name, *f))
        .filter(|(number, name, _)| {
            only.is_empty()
                || only
                    .iter()
                    .any(|o| *o == number.to_string() || name.contains(o.as_str()))
        })
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        bail!("--only matches no scenario; the scenarios are {names:?}");
    }
    let bins = harness::build_release()?;
    let mut ctx = start(bins)?;
    println!(
        "server pid {} (log: {}); listeners: frames {}, log {}, proxy {}, proxy-auth {}; http port {}",
        ctx.server.pid(),
        ctx.server.log_path().display(),
        ctx.addr(FRAMES),
        ctx.addr(LOG),
        ctx.addr(PROXY),
        ctx.addr(PROXY_AUTH),
        ctx.http.port()
    );
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (number, name, scenario) in selected {
        if started.elapsed() > OVERALL_TIMEOUT {
            outcomes.push(Outcome {
                number,
                name,
                result: Err(format!(
                    "skipped: the overall deadline of {OVERALL_TIMEOUT:?} passed"
                )),
                elapsed: Duration::ZERO,
            });
            continue;
        }
        if ctx.stopped {
            outcomes.push(Outcome {
                number,
                name,
                result: Err("skipped: the server was already stopped".to_owned()),
                elapsed: Duration::ZERO,
            });
            continue;
        }
        println!("[{number}] {name} ...");
        let begin = Instant::now();
        let result = scenario(&mut ctx).map_err(|e| format!("{e:#}"));
        let elapsed = begin.elapsed();
        match &result {
            Ok(detail) => println!(
                "[{number}] {name}: pass ({:.1}s) {detail}",
                elapsed.as_secs_f64()
            ),
            Err(error) => println!(
                "[{number}] {name}: FAIL ({:.1}s) {error}",
                elapsed.as_secs_f64()
            ),
        }
        outcomes.push(Outcome {
            number,
            name,
            result,
            elapsed,
        });
    }
    if !ctx.stopped && ctx.server.is_running() {
        match ctx.server.stop(DRAIN_TIMEOUT + Duration::from_secs(5)) {
            Ok((status, took)) => println!("server stopped: {status} after {took:?}"),
            Err(error) => println!("server stop failed: {error:#}"),
        }
    }
    print_table(&outcomes);
    println!("server log: {}", ctx.server.log_path().display());
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} scenario(s) failed", outcomes.len());
    }
    Ok(())
}

fn start(bins: Binaries) -> anyhow::Result<Ctx> {
    let dir = tempfile::Builder::new()
        .prefix("xtask-e2e-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let sink_path = dir.path().join("frames.bin");
    let config = CONFIG.replace("{SINK}", &harness::toml_path(&sink_path));
    let server = Server::start(
        &bins.server,
        dir.path(),
        &ServerSpec {
            config: &config,
            listeners: &[FRAMES, LOG, PROXY, PROXY_AUTH],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-server.log",
        },
    )?;
    let nonce = format!(
        "{}{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros())
    );
    let http = HttpServer::start(Site {
        page: page(&nonce),
        small_len: SMALL_LEN,
        big_len: BIG_LEN,
        small: Pattern::new(SMALL_SEED),
        big: Pattern::new(BIG_SEED),
    })?;
    Ok(Ctx {
        bins,
        server,
        stopped: false,
        dir,
        sink_path,
        http,
        root: harness::root(),
        nonce,
    })
}

/// The text Chromium must render.
pub(crate) fn marker(nonce: &str) -> String {
    format!("xtask-e2e-marker-{nonce}")
}

fn page(nonce: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>xtask e2e</title></head>\n\
         <body><h1>xtask e2e</h1><p id=\"marker\">{}</p>\n\
         <script>document.getElementById('marker').insertAdjacentHTML('afterend', \
         '<p id=\"js\">script ran</p>');</script></body></html>\n",
        marker(nonce)
    )
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!("| # | scenario | result | time | detail |");
    println!("|---|----------|--------|------|--------|");
    for o in outcomes {
        let (verdict, detail) = match &o.result {
            Ok(detail) => ("pass", detail.as_str()),
            Err(error) => ("FAIL", error.as_str()),
        };
        println!(
            "| {} | {} | {} | {:.1}s | {} |",
            o.number,
            o.name,
            verdict,
            o.elapsed.as_secs_f64(),
            shorten(&detail.replace('|', "/").replace('\n', " "), 300)
        );
    }
    println!();
}

/// `text` cut to about `max` characters.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}… (full text above)")
}

/// Fails unless python3 can import `module` (installed with `install`).
pub(crate) fn require_python_module(module: &str, install: &str) -> anyhow::Result<()> {
    let python = crate::process::require("python3", "apt-get install python3")?;
    let mut cmd = Command::new(python);
    cmd.args(["-c", &format!("import {module}")]);
    let done = Proc::spawn("python3", &mut cmd, Stdio::null(), Stdout::Null)?
        .wait(Duration::from_secs(20))?;
    if !done.status.success() {
        bail!("python module {module} not found: {install}");
    }
    Ok(())
}

/// `host:port` as a String argument.
pub(crate) fn arg(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The path `rel` under the workspace root.
pub(crate) fn in_root(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

//! The collector past one machine: frames into a 3-node NATS JetStream
//! cluster through two collectors behind HAProxy, with a NATS node and a
//! collector killed (SIGKILL) during the run.
//!
//! - Three `nats-server` processes (Debian's package) form a JetStream
//!   cluster on loopback, each with its own store directory under the run's
//!   temporary directory; the run waits until the meta leader is elected.
//! - Two collectors (`server`, a `crc-tcp` listener with the `nats` handler)
//!   create the stream `FRAMES` with three replicas and file storage.
//! - HAProxy 2.6 in `mode tcp` balances the two collectors round robin.
//! - Three `client bench --resend` runs send [`FRAMES_PER_CLIENT`] frames
//!   each through HAProxy. When the stream holds a third of the frames, one
//!   NATS node is killed; at half, one collector is killed; at two thirds,
//!   both are started again (the collector on its old port).
//! - Every client must report every frame acked ok, and `client consume
//!   --count` must find every frame of every client's streams in the stream
//!   exactly once: no loss, no duplicate.
//!
//! [`file_sink_limit`] runs the same topology with the `file` sink instead
//! of NATS and one collector killed for good: every acked frame is on some
//! collector's disk, but the dead collector's frames are not served until it
//! comes back, and frames it stored without acking were stored again by the
//! other one.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, arg, haproxy::Balancer, prometheus::get};
use crate::{
    harness::{Server, ServerSpec, toml_path},
    process::{Finished, Proc, Stdout, require},
};

/// Frames each of the three clients sends.
const FRAMES_PER_CLIENT: u64 = 100_000;
/// The clients.
const CLIENTS: usize = 3;
/// Payload bytes per frame.
const SIZE: usize = 64;
/// The collectors' listener.
const LISTENER: &str = "collect";
/// The JetStream stream.
const STREAM: &str = "FRAMES";
/// Every wait for the cluster, a collector, or progress.
const WAIT: Duration = Duration::from_secs(60);
/// The whole client run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(420);

const COLLECTOR_CONFIG: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "{ADMIN}"

[[listener]]
name = "collect"
mode = "crc-tcp"
bind = "{BIND}"
ack = true
handler = { type = "nats", servers = [{SERVERS}], subject = "frames.{listener}", stream = "FRAMES", max_in_flight = 1024, publish_timeout = "5s", create_stream = { replicas = 3, storage = "file", duplicate_window = "10m" } }
"#;

const FILE_COLLECTOR_CONFIG: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "{ADMIN}"

[[listener]]
name = "collect"
mode = "crc-tcp"
bind = "{BIND}"
ack = true
handler = { type = "file", path = {PATH}, sync = "always" }
"#;

/// One `nats-server` of the cluster.
struct Node {
    name: String,
    client: SocketAddr,
    http: SocketAddr,
    config: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    fn start(&mut self, binary: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&self.config);
        self.proc = Some(Proc::spawn(
            &self.name,
            &mut cmd,
            Stdio::null(),
            Stdout::Null,
        )?);
        Ok(())
    }

    /// SIGKILL, then reaped.
    fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// `/jsz` of this node, if it answers.
    fn jsz(&self) -> anyhow::Result<Value> {
        match get(self.http, "/jsz")? {
            (200, body) => serde_json::from_str(&body).context("/jsz is not JSON"),
            (status, body) => bail!("GET /jsz: {status} {body:?}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The three nodes, each on ports of its own.
fn cluster(dir: &Path) -> anyhow::Result<Vec<Node>> {
    let mut ports = Vec::new();
    for _ in 0..9 {
        ports.push(testkit::free_loopback_port().context("no free loopback port")?);
    }
    let routes: Vec<String> = (0..3)
        .map(|i| format!("nats-route://{}", ports[3 * i + 2]))
        .collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("n{}", i + 1);
        let store = dir.join(&name);
        std::fs::create_dir_all(&store)
            .with_context(|| format!("cannot create {}", store.display()))?;
        let config = dir.join(format!("{name}.conf"));
        let text = format!(
            "server_name: {name}\nlisten: {}\nhttp: {}\n\
             jetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 2GB }}\n\
             cluster {{ name: netkit, listen: {}, routes: [{}] }}\n",
            ports[3 * i],
            ports[3 * i + 1],
            store.display(),
            ports[3 * i + 2],
            routes.join(", ")
        );
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        nodes.push(Node {
            name,
            client: ports[3 * i],
            http: ports[3 * i + 1],
            config,
            proc: None,
        });
    }
    Ok(nodes)
}

/// Waits until some node that runs sees a meta leader with two current
/// followers (a JetStream cluster of three that can place R3 streams).
fn wait_cluster(nodes: &[Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        for node in nodes.iter().filter(|n| n.proc.is_some()) {
            match node.jsz() {
                Ok(jsz) => {
                    let meta = &jsz["meta_cluster"];
                    let current = meta["replicas"].as_array().map_or(0, |r| {
                        r.iter()
                            .filter(|p| p["current"] == Value::Bool(true))
                            .count()
                    });
                    if meta["leader"].as_str().is_some_and(|l| !l.is_empty()) && current >= 2 {
                        return Ok(());
                    }
                    last = meta.to_string();
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the JetStream cluster had no meta leader with two current peers within {WAIT:?}: {last}"
            );
        }
        // The pace of a bounded poll on the cluster's own state.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages the JetStream cluster holds, as the first running node says.
fn stored(nodes: &[Node]) -> Option<u64> {
    nodes
        .iter()
        .filter(|n| n.proc.is_some())
        .find_map(|n| n.jsz().ok()?["messages"].as_u64())
}

/// A collector: its ports stay the same across a restart.
struct Collector {
    name: &'static str,
    dir: PathBuf,
    config: String,
    bind: SocketAddr,
    server: Option<Server>,
    starts: usize,
}

impl Collector {
    fn new(name: &'static str, base: &Path, template: &str) -> anyhow::Result<Self> {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let bind = testkit::free_loopback_port().context("no free loopback port")?;
        let admin = testkit::free_loopback_port().context("no free loopback port")?;
        let config = template
            .replace("{BIND}", &bind.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{PATH}", &toml_path(&dir.join("frames.bin")));
        Ok(Self {
            name,
            dir,
            config,
            bind,
            server: None,
            starts: 0,
        })
    }

    fn start(&mut self, binary: &Path) -> anyhow::Result<()> {
        self.starts += 1;
        let log_name = format!("e2e-collector-{}-{}.log", self.name, self.starts);
        let server = Server::start(
            binary,
            &self.dir,
            &ServerSpec {
                config: &self.config,
                listeners: &[LISTENER],
                log_level: "info",
                keep: |_| false,
                log_name: &log_name,
            },
        )
        .with_context(|| format!("collector {}", self.name))?;
        if server.addr(LISTENER) != self.bind {
            bail!(
                "collector {} listens on {}, expected {}",
                self.name,
                server.addr(LISTENER),
                self.bind
            );
        }
        self.server = Some(server);
        Ok(())
    }

    /// SIGKILL: dropping the server's guard kills and reaps it.
    fn kill(&mut self) {
        self.server = None;
    }

    fn sink(&self) -> PathBuf {
        self.dir.join("frames.bin")
    }
}

/// `client bench --resend` through HAProxy.
fn bench(ctx: &Ctx, frontend: SocketAddr, frames: u64) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&ctx.bins.client);
    cmd.args(["bench", "--servers"])
        .arg(arg(frontend))
        .args(["--frames", &frames.to_string()])
        .args(["--size", &SIZE.to_string()])
        .args(["--connections", "2", "--wait-ack", "--window", "256"])
        .args(["--resend", "--resend-deadline", "300s"])
        .args([
            "--version",
            "2",
            "--crc-size",
            "4",
            "--timeout",
            "15s",
            "--json",
        ]);
    Proc::spawn("client bench", &mut cmd, Stdio::null(), Stdout::Capture)
}

/// What one `client bench --resend --json` said.
struct Report {
    /// `(stream id, frames)` for each of its connections.
    streams: Vec<(String, u64)>,
    acked: u64,
    resent: u64,
}

fn report(done: &Finished, frames: u64) -> anyhow::Result<Report> {
    let text = done.stdout_text();
    if !done.status.success() {
        bail!(
            "client bench exited {}: {text} {}",
            done.status,
            done.stderr_tail()
        );
    }
    let json: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("client bench printed no JSON: {text:?}"))?;
    let mut streams = Vec::new();
    let mut acked = 0;
    for stream in json["streams"].as_array().into_iter().flatten() {
        let id = stream["id"].as_str().context("a stream without id")?;
        let sent = stream["frames"]
            .as_u64()
            .context("a stream without frames")?;
        let ok = stream["acked_ok"]
            .as_u64()
            .context("a stream without acked_ok")?;
        if ok != sent {
            bail!("stream {id}: {ok} of {sent} frames acked ok: {json}");
        }
        acked += ok;
        streams.push((id.to_owned(), sent));
    }
    if acked != frames {
        bail!("the client's streams add up to {acked} acked frames, expected {frames}: {json}");
    }
    Ok(Report {
        streams,
        acked,
        resent: json["resent"].as_u64().unwrap_or(0),
    })
}

/// Waits until `progress()` reaches `target` while the clients run.
fn wait_progress(
    what: &str,
    target: u64,
    clients: &mut [Proc],
    mut progress: impl FnMut() -> Option<u64>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = progress();
        if now.is_some_and(|n| n >= target) {
            return Ok(());
        }
        if clients.iter_mut().all(Proc::has_exited) {
            bail!("every client exited before {what} reached {target} (at {now:?})");
        }
        if Instant::now() >= deadline {
            bail!("{what} did not reach {target} within {WAIT:?} (at {now:?})");
        }
        // The pace of a bounded poll on the servers' own counters.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The scenario: see the module docs.
pub(crate) fn jetstream_cluster(ctx: &mut Ctx) -> anyhow::Result<String> {
    let nats = require("nats-server", "apt-get install nats-server")?;
    let haproxy = require("haproxy", "apt-get install haproxy")?;
    let base = ctx.dir.path().join("jetstream");
    let mut nodes = cluster(&base)?;
    for node in &mut nodes {
        node.start(&nats)?;
    }
    wait_cluster(&nodes)?;
    let servers: Vec<String> = nodes.iter().map(|n| format!("{:?}", n.url())).collect();
    let template = COLLECTOR_CONFIG.replace("{SERVERS}", &servers.join(", "));
    let mut a = Collector::new("a", &base, &template)?;
    let mut b = Collector::new("b", &base, &template)?;
    a.start(&ctx.bins.server)?;
    b.start(&ctx.bins.server)?;
    let mut balancer = Balancer::start(&haproxy, &base, a.bind, b.bind, "")?;
    let result = jetstream_run(ctx, &mut nodes, &mut a, &mut b, balancer.frontend());
    balancer.stop();
    result.map_err(|e| e.context(format!("haproxy stderr: {}", balancer.stderr_tail())))
}

fn jetstream_run(
    ctx: &Ctx,
    nodes: &mut [Node],
    a: &mut Collector,
    b: &mut Collector,
    frontend: SocketAddr,
) -> anyhow::Result<String> {
    let nats = require("nats-server", "apt-get install nats-server")?;
    let total = FRAMES_PER_CLIENT * CLIENTS as u64;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(bench(ctx, frontend, FRAMES_PER_CLIENT)?);
    }
    wait_progress("the stream", total / 3, &mut clients, || stored(nodes))?;
    nodes[0].kill();
    let node_killed = started.elapsed();
    wait_progress("the stream", total / 2, &mut clients, || stored(nodes))?;
    a.kill();
    let collector_killed = started.elapsed();
    wait_progress("the stream", total * 2 / 3, &mut clients, || stored(nodes))?;
    nodes[0].start(&nats)?;
    a.start(&ctx.bins.server)?;
    let mut reports = Vec::new();
    for client in clients {
        let done = client.wait(CLIENT_TIMEOUT)?;
        reports.push(report(&done, FRAMES_PER_CLIENT)?);
    }
    let elapsed = started.elapsed();
    // Every frame of every client's streams, exactly once.
    let mut cmd = Command::new(&ctx.bins.client);
    cmd.arg("consume");
    for node in nodes.iter() {
        cmd.args(["--nats", &node.url()]);
    }
    cmd.args(["--stream", STREAM, "--count", "--json", "--timeout", "120s"]);
    let done = Proc::spawn("client consume", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(150))?;
    let text = done.stdout_text();
    if !done.status.success() {
        bail!(
            "client consume exited {}: {text} {}",
            done.status,
            done.stderr_tail()
        );
    }
    let count: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("client consume printed no JSON: {text:?}"))?;
    if count["duplicates"].as_u64() != Some(0) {
        bail!("the stream holds duplicates: {count}");
    }
    if count["messages"].as_u64() != Some(total) {
        bail!(
            "the stream holds {} messages, expected {total}",
            count["messages"]
        );
    }
    for (id, frames) in reports.iter().flat_map(|r| r.streams.iter()) {
        let stream = &count["streams"][id];
        let ok = stream["messages"].as_u64() == Some(*frames)
            && stream["missing"].as_u64() == Some(0)
            && stream["min_seq"].as_u64() == Some(0)
            && stream["max_seq"].as_u64() == Some(frames - 1);
        if !ok {
            bail!("client stream {id} sent {frames} frames; the JetStream stream holds {stream}");
        }
    }
    let acked: u64 = reports.iter().map(|r| r.acked).sum();
    let resent: u64 = reports.iter().map(|r| r.resent).sum();
    b.kill();
    a.kill();
    Ok(format!(
        "{CLIENTS} clients acked {acked} frames of {SIZE} B in {:.1}s ({resent} resent); \
         NATS node killed at {:.1}s, collector at {:.1}s, both restarted; the R3 stream \
         holds each of the {total} frames exactly once",
        elapsed.as_secs_f64(),
        node_killed.as_secs_f64(),
        collector_killed.as_secs_f64()
    ))
}

/// The same topology with the `file` sink: see the module docs.
pub(crate) fn file_sink_limit(ctx: &mut Ctx) -> anyhow::Result<String> {
    let haproxy = require("haproxy", "apt-get install haproxy")?;
    let base = ctx.dir.path().join("file-collectors");
    let mut a = Collector::new("a", &base, FILE_COLLECTOR_CONFIG)?;
    let mut b = Collector::new("b", &base, FILE_COLLECTOR_CONFIG)?;
    a.start(&ctx.bins.server)?;
    b.start(&ctx.bins.server)?;
    let mut balancer = Balancer::start(&haproxy, &base, a.bind, b.bind, "")?;
    let result = file_run(ctx, &mut a, &mut b, balancer.frontend());
    balancer.stop();
    result.map_err(|e| e.context(format!("haproxy stderr: {}", balancer.stderr_tail())))
}

fn file_run(
    ctx: &Ctx,
    a: &mut Collector,
    b: &mut Collector,
    frontend: SocketAddr,
) -> anyhow::Result<String> {
    const FRAMES: u64 = 20_000;
    let frame_len = 12 + SIZE as u64 + 4;
    let mut clients = vec![bench(ctx, frontend, FRAMES)?];
    let sink_a = a.sink();
    wait_progress(
        "collector a's file",
        FRAMES / 4 * frame_len,
        &mut clients,
        || std::fs::metadata(&sink_a).ok().map(|m| m.len()),
    )?;
    a.kill();
    let client = clients.pop().context("no client")?;
    let report = report(&client.wait(CLIENT_TIMEOUT)?, FRAMES)?;
    // The frames `client read` found intact, from its summary line on stderr.
    let count = |path: &Path| -> anyhow::Result<u64> {
        let mut cmd = Command::new(&ctx.bins.client);
        cmd.arg("read").arg(path).args(["--preview", "0"]);
        let done = Proc::spawn("client read", &mut cmd, Stdio::null(), Stdout::Null)?
            .wait(Duration::from_secs(60))?;
        let summary = done.stderr_tail();
        if !done.status.success() {
            bail!(
                "client read {} exited {}: {summary}",
                path.display(),
                done.status
            );
        }
        let field = |name: &str| {
            summary
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.parse::<u64>().ok())
        };
        match (field("frames="), field("ok=")) {
            (Some(frames), Some(ok)) if frames == ok => Ok(frames),
            _ => bail!(
                "client read {}: no clean summary in {summary:?}",
                path.display()
            ),
        }
    };
    let on_a = count(&a.sink())?;
    let on_b = count(&b.sink())?;
    if on_a == 0 || on_a + on_b < FRAMES {
        bail!(
            "{} frames acked, but collector a's file holds {on_a} and b's {on_b}",
            report.acked
        );
    }
    b.kill();
    Ok(format!(
        "{} frames acked ({} resent); after collector a was killed its file holds {on_a} \
         frames (on its disk, served by no one until it returns) and b's {on_b}; {} frames \
         are stored twice because the file sink does not know resends",
        report.acked,
        report.resent,
        on_a + on_b - FRAMES
    ))
}

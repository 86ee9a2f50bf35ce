//! HAProxy: the Debian `haproxy` package (2.6) in `mode tcp` with
//! `send-proxy-v2`, balancing two server instances round robin.
//!
//! Each instance has one socks5 listener with `proxy_protocol = "v2"`,
//! `proxy_protocol_from = ["127.0.0.1/32"]` and a rule denying the client
//! 127.0.0.3. HAProxy runs in the foreground (`haproxy -f CFG -db`) as our
//! child, with a stats socket we read its servers' states from, and is
//! killed by its PID at the end (as are the instances, by their guards,
//! whatever fails). The checks:
//!
//! 1. curl from 127.0.0.1 through HAProxy fetches `/small` several times,
//!    intact, and both instances log sessions for client 127.0.0.1;
//! 2. curl from 127.0.0.3 through HAProxy fails: an instance logs the
//!    session with client 127.0.0.3 (the header's address, not HAProxy's
//!    127.0.0.1) and reply 0x02, and the HTTP server sees no request; the
//!    instance's `access_log` has a line with client 127.0.0.3 and reply
//!    `not_allowed`, and `netkit_connections_rejected_total{reason="rule"}`
//!    counts it while no `/metrics` line names 127.0.0.3;
//! 3. a connection straight to an instance from 127.0.0.2 (outside
//!    `proxy_protocol_from`) is closed without a byte and logged as refused;
//! 4. one instance is stopped (SIGTERM to its PID): every request sent
//!    until HAProxy's checks mark it down succeeds (HAProxy retries and
//!    redispatches), then ten more in a row succeed, all on the other one.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

use super::{Ctx, arg, proxy::fetch};
use crate::e2e::{CURL_TIMEOUT, SMALL_LEN};
use crate::{
    harness::{Server, ServerSpec, message, toml_path},
    peers::{Pattern, SMALL_SEED},
    process::{Proc, Stdout, require},
};

/// The listener of each instance.
const LISTENER: &str = "socks";
/// The client the rules deny.
const DENIED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// A client outside `proxy_protocol_from`.
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Requests from 127.0.0.1 while both instances run.
const BALANCED: usize = 6;
/// Requests in a row that must succeed once an instance is marked down.
const AFTER_DOWN: usize = 10;
/// The most requests sent while waiting for HAProxy to mark it down.
const MAX_GAP_REQUESTS: usize = 40;
/// Each wait for HAProxy's view of its servers, and for log events.
const WAIT: Duration = Duration::from_secs(15);
/// Each instance's access log, in its directory.
const ACCESS_LOG: &str = "access.log";
/// HAProxy's backend name.
const BACKEND: &str = "netkit";

/// `{LOG}` is replaced by the instance's access log.
const SERVER_CONFIG: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "socks"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "5s"
proxy_protocol = "v2"
proxy_protocol_from = ["127.0.0.1/32"]
rules = [{ action = "deny", clients = ["127.0.0.3/32"] }]
access_log = {LOG}
"#;

/// The HAProxy config: `{SOCKET}`, `{FRONTEND}`, `{A}` and `{B}` are
/// replaced by the stats socket's path and the three addresses, `{OPTIONS}`
/// by the servers' options (`send-proxy-v2` here).
const HAPROXY_CONFIG: &str = "global
    stats socket {SOCKET} mode 600 level admin

defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

frontend socks
    bind {FRONTEND}
    default_backend netkit

backend netkit
    balance roundrobin
    server a {A} {OPTIONS} check inter 200ms fall 2 rise 1
    server b {B} {OPTIONS} check inter 200ms fall 2 rise 1
";

/// The scenario: see the module docs.
pub(crate) fn haproxy(ctx: &mut Ctx) -> anyhow::Result<String> {
    let haproxy = require("haproxy", "apt-get install haproxy")?;
    require("curl", "apt-get install curl")?;
    let base = ctx.dir.path().join("haproxy");
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let config = SERVER_CONFIG.replace("{LOG}", &toml_path(&dir.join(ACCESS_LOG)));
        let server = Server::start(
            &ctx.bins.server,
            &dir,
            &ServerSpec {
                config: &config,
                listeners: &[LISTENER],
                log_level: "info",
                keep: |_| true,
                log_name: if name == "a" {
                    "e2e-haproxy-a.log"
                } else {
                    "e2e-haproxy-b.log"
                },
            },
        )
        .with_context(|| format!("instance {name}"))?;
        servers.push(server);
    }
    let [a, b] =
        <[Server; 2]>::try_from(servers).map_err(|_| anyhow::anyhow!("expected two instances"))?;
    let mut balancer = Balancer::start(
        &haproxy,
        &base,
        a.addr(LISTENER),
        b.addr(LISTENER),
        "send-proxy-v2",
    )?;
    let mut run = Run {
        ctx,
        a,
        b,
        frontend: balancer.frontend,
    };
    let result = run.checks(&mut balancer);
    balancer.stop();
    result.map_err(|e| {
        e.context(format!(
            "haproxy stderr: {}; instance logs: {} {}",
            balancer.stderr_tail(),
            run.a.log_path().display(),
            run.b.log_path().display()
        ))
    })
}

/// The instances and where HAProxy listens.
struct Run<'a> {
    ctx: &'a Ctx,
    a: Server,
    b: Server,
    frontend: SocketAddr,
}

impl Run<'_> {
    fn checks(&mut self, balancer: &mut Balancer) -> anyhow::Result<String> {
        let report = [
            self.balanced()
                .context("check 1 (127.0.0.1 served by both)")?,
            self.denied().context("check 2 (127.0.0.3 denied)")?,
            self.untrusted()
                .context("check 3 (direct from 127.0.0.2)")?,
            self.failover(balancer)
                .context("check 4 (one instance stopped)")?,
        ];
        Ok(report.join("; "))
    }

    /// curl from `source` through HAProxy, for `/small`.
    fn curl_args(&self, source: Ipv4Addr) -> Vec<String> {
        vec![
            "--interface".into(),
            source.to_string(),
            "--socks5-hostname".into(),
            arg(self.frontend),
        ]
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/small", self.ctx.http.port())
    }

    /// One fetch from 127.0.0.1 through HAProxy, checked byte for byte.
    fn fetch_ok(&self) -> anyhow::Result<Duration> {
        let (checked, took) = fetch(
            &self.curl_args(Ipv4Addr::LOCALHOST),
            &self.url(),
            Pattern::new(SMALL_SEED),
            &[],
            CURL_TIMEOUT,
        )?;
        checked.expect(SMALL_LEN, "/small through HAProxy")?;
        Ok(took)
    }

    /// Check 1.
    fn balanced(&self) -> anyhow::Result<String> {
        let marks = (self.a.events().mark(), self.b.events().mark());
        for i in 0..BALANCED {
            self.fetch_ok()
                .with_context(|| format!("request {}", i + 1))?;
        }
        let (on_a, on_b) = self.wait_sessions(marks, BALANCED, served_from(Ipv4Addr::LOCALHOST))?;
        if on_a == 0 || on_b == 0 {
            bail!("round robin used one instance only: {on_a} sessions on a, {on_b} on b");
        }
        Ok(format!(
            "{BALANCED} fetches from 127.0.0.1 intact, sessions a {on_a} / b {on_b}"
        ))
    }

    /// Check 2.
    fn denied(&self) -> anyhow::Result<String> {
        let curl = require("curl", "apt-get install curl")?;
        let marks = (self.a.events().mark(), self.b.events().mark());
        let requests = self.ctx.http.requests().len();
        let mut cmd = Command::new(curl);
        cmd.args(["-sS", "--fail", "--max-time"])
            .arg(CURL_TIMEOUT.as_secs().to_string())
            .args(self.curl_args(DENIED))
            .arg(self.url());
        let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Capture)?
            .wait(CURL_TIMEOUT + Duration::from_secs(5))?;
        if done.status.success() {
            bail!(
                "curl from {DENIED} through HAProxy succeeded ({} bytes): the rule did not apply",
                done.stdout.len()
            );
        }
        let denied = |e: &Value| {
            message(e) == "session"
                && client_ip(e) == Some(IpAddr::V4(DENIED))
                && e["reply"].as_str().is_some_and(|r| r.contains("0x02"))
        };
        let (on_a, on_b) = self.wait_sessions(marks, 1, denied)?;
        // The connection's span names both: the header's client and HAProxy.
        let span = [(&self.a, marks.0), (&self.b, marks.1)]
            .iter()
            .flat_map(|(server, mark)| server.events().since(*mark))
            .find(|e| denied(e))
            .map(|e| e["span"].clone())
            .unwrap_or_default();
        let ip = |field: &str| {
            span[field]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
        };
        if ip("peer") != Some(IpAddr::V4(DENIED))
            || ip("proxy") != Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        {
            bail!(
                "the denied session's span should have peer {DENIED} and proxy 127.0.0.1 (HAProxy): {span}"
            );
        }
        let wrong: Vec<Value> = [(&self.a, marks.0), (&self.b, marks.1)]
            .iter()
            .flat_map(|(server, mark)| server.events().since(*mark))
            .filter(|e| message(e) == "session" && client_ip(e) != Some(IpAddr::V4(DENIED)))
            .collect();
        if !wrong.is_empty() {
            bail!("sessions logged for another client than {DENIED}: {wrong:?}");
        }
        let after = self.ctx.http.requests().len();
        if after != requests {
            bail!(
                "the HTTP server saw {} request(s) from the denied client",
                after - requests
            );
        }
        let line = self.access_log_line()?;
        let rejected = self.rule_rejections()?;
        Ok(format!(
            "curl from {DENIED} failed ({}: {}), logged as client {DENIED} with reply 0x02 \
             (a {on_a} / b {on_b}); access log: client {} reply {}; \
             netkit_connections_rejected_total{{reason=\"rule\"}} {rejected} on a and b, \
             no client address in /metrics",
            done.status,
            done.stderr_tail(),
            line["client"],
            line["reply"]
        ))
    }

    /// The access log line of the denied session, from either instance (the writer is
    /// asynchronous: waited for).
    fn access_log_line(&self) -> anyhow::Result<Value> {
        let base = self.ctx.dir.path().join("haproxy");
        let deadline = Instant::now() + WAIT;
        loop {
            let found = ["a", "b"].iter().find_map(|name| {
                let text = std::fs::read_to_string(base.join(name).join(ACCESS_LOG)).ok()?;
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|l| {
                        l["client"]
                            .as_str()
                            .and_then(|c| c.parse::<SocketAddr>().ok())
                            .is_some_and(|c| c.ip() == IpAddr::V4(DENIED))
                    })
            });
            match found {
                Some(line) if line["reply"] == "not_allowed" => return Ok(line),
                Some(line) => bail!("the access log line of {DENIED} has the wrong reply: {line}"),
                None if Instant::now() >= deadline => {
                    bail!("no access log line with client {DENIED} within {WAIT:?}")
                }
                // Polling the files, bounded by the deadline above.
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The rule rejections both instances count, checking that no metric names a client.
    fn rule_rejections(&self) -> anyhow::Result<f64> {
        let series =
            "netkit_connections_rejected_total{listener=\"socks\",mode=\"socks5\",reason=\"rule\"}";
        let mut total = 0.0;
        for server in [&self.a, &self.b] {
            let admin = super::prometheus::admin_addr_of(server.events(), WAIT)
                .context("an instance's admin endpoint")?;
            let (status, metrics) = super::prometheus::get(admin, "/metrics")?;
            if status != 200 {
                bail!("GET /metrics: {status}");
            }
            if metrics.contains(&DENIED.to_string()) {
                bail!("/metrics names the client {DENIED}: no label may carry a client address");
            }
            total += super::prometheus::value(&metrics, series)?;
        }
        if total < 1.0 {
            bail!("{series} is {total} on a and b together after a rule refused {DENIED}");
        }
        Ok(total)
    }

    /// Check 3.
    fn untrusted(&self) -> anyhow::Result<String> {
        let target = self.b.addr(LISTENER);
        let mark = self.b.events().mark();
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket
            .bind(&SocketAddr::new(IpAddr::V4(UNTRUSTED), 0).into())
            .with_context(|| format!("cannot bind a client socket to {UNTRUSTED}"))?;
        socket.connect_timeout(&target.into(), WAIT)?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        // The greeting may or may not be written before the close arrives.
        let _ = stream.write_all(&[5, 1, 0]);
        let mut buf = [0u8; 16];
        let outcome = match stream.read(&mut buf) {
            Ok(0) => "closed".to_owned(),
            Ok(n) => bail!(
                "the instance answered {:02x?} to a client outside proxy_protocol_from",
                buf.get(..n).unwrap_or_default()
            ),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                "reset".to_owned()
            }
            Err(e) => bail!("the instance neither answered nor closed within {WAIT:?}: {e}"),
        };
        let logged = self.b.events().wait_for(mark, WAIT, |e| {
            message(e).contains("not in proxy_protocol_from")
                && e["peer"].as_str() == Some(UNTRUSTED.to_string().as_str())
        });
        if logged.is_none() {
            bail!("no `not in proxy_protocol_from` warning for peer {UNTRUSTED}");
        }
        if let Some(session) = self
            .b
            .events()
            .since(mark)
            .into_iter()
            .find(|e| message(e) == "session")
        {
            bail!("a direct connection from {UNTRUSTED} got a session: {session}");
        }
        Ok(format!(
            "a direct connection from {UNTRUSTED} was {outcome} without a byte and logged"
        ))
    }

    /// Check 4.
    fn failover(&mut self, balancer: &mut Balancer) -> anyhow::Result<String> {
        let (status, took) = self.a.stop(Duration::from_secs(10))?;
        if !status.success() {
            bail!("instance a exited with {status} after SIGTERM");
        }
        let marks_b = self.b.events().mark();
        let stopped = Instant::now();
        let mut gap = 0;
        let mut slowest = Duration::ZERO;
        loop {
            let states = balancer.states()?;
            let state_a = states.get("a").map_or("?", String::as_str);
            if state_a.starts_with("DOWN") || state_a.starts_with("MAINT") {
                break;
            }
            if gap >= MAX_GAP_REQUESTS || stopped.elapsed() > WAIT {
                bail!(
                    "HAProxy still shows a as {state_a:?} {:?} after the stop ({gap} requests)",
                    stopped.elapsed()
                );
            }
            let took = self
                .fetch_ok()
                .with_context(|| format!("request {} before a was marked down", gap + 1))?;
            slowest = slowest.max(took);
            gap += 1;
        }
        let down_after = stopped.elapsed();
        let counter = |row: &str, column: &str| -> u64 {
            balancer
                .stat()
                .ok()
                .and_then(|rows| rows.get(row)?.get(column)?.parse().ok())
                .unwrap_or(0)
        };
        for i in 0..AFTER_DOWN {
            let took = self.fetch_ok().with_context(|| {
                format!("request {} of {AFTER_DOWN} after a was marked down", i + 1)
            })?;
            slowest = slowest.max(took);
        }
        let want = gap + AFTER_DOWN;
        let deadline = Instant::now() + WAIT;
        let served = |b: &Server| {
            b.events()
                .since(marks_b)
                .iter()
                .filter(|e| served_from(Ipv4Addr::LOCALHOST)(e))
                .count()
        };
        while served(&self.b) < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "b logged {} sessions from 127.0.0.1 since a stopped, expected {want}",
                    served(&self.b)
                );
            }
            let mark = self.b.events().mark();
            self.b
                .events()
                .wait_for(mark, left, |e| message(e) == "session");
        }
        Ok(format!(
            "a stopped in {took:?}; HAProxy marked it down after {:.1}s, {gap} request(s) \
             meanwhile (HAProxy retried {} and redispatched {} connection(s)) and {AFTER_DOWN} \
             after all succeeded on b (slowest {:.2}s)",
            down_after.as_secs_f64(),
            counter("BACKEND", "wretr"),
            counter("BACKEND", "wredis"),
            slowest.as_secs_f64()
        ))
    }

    /// Waits until the two instances together logged `count` events
    /// matching `pred` since `marks`; returns the count on each.
    fn wait_sessions(
        &self,
        marks: (usize, usize),
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(usize, usize)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let on_a = self
                .a
                .events()
                .since(marks.0)
                .iter()
                .filter(|e| pred(e))
                .count();
            let on_b = self
                .b
                .events()
                .since(marks.1)
                .iter()
                .filter(|e| pred(e))
                .count();
            if on_a + on_b >= count {
                return Ok((on_a, on_b));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the instances logged {} matching session(s), expected {count} (a {on_a}, b {on_b})",
                    on_a + on_b
                );
            }
            // Wake on the next event of either instance, or soon anyway.
            let mark = self.a.events().mark();
            self.a
                .events()
                .wait_for(mark, left.min(Duration::from_millis(50)), |_| true);
        }
    }
}

/// A `session` event for client `ip` that succeeded.
fn served_from(ip: Ipv4Addr) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        message(e) == "session"
            && client_ip(e) == Some(IpAddr::V4(ip))
            && e["reply"].as_str().is_some_and(|r| r.contains("0x00"))
    }
}

/// The IP of an event's `client` field.
fn client_ip(event: &Value) -> Option<IpAddr> {
    event["client"]
        .as_str()
        .and_then(|c| c.parse::<SocketAddr>().ok())
        .map(|a| a.ip().to_canonical())
}

/// HAProxy as our child; killed by its PID when stopped or dropped.
pub(super) struct Balancer {
    proc: Option<Proc>,
    socket: std::path::PathBuf,
    frontend: SocketAddr,
    stderr: String,
}

impl Balancer {
    /// Starts HAProxy and waits until it shows both servers UP. The
    /// frontend's port is picked free just before; if another process takes
    /// it first HAProxy exits at start, and a new port is tried (three
    /// attempts).
    pub(super) fn start(
        binary: &Path,
        dir: &Path,
        a: SocketAddr,
        b: SocketAddr,
        options: &str,
    ) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binary, dir, a, b, options) {
                Err(StartError::Exited(error)) if attempt < 3 => {
                    println!("haproxy exited at start (attempt {attempt}), retrying: {error:#}");
                    attempt += 1;
                }
                Err(StartError::Exited(error) | StartError::Other(error)) => return Err(error),
                Ok(balancer) => return Ok(balancer),
            }
        }
    }

    fn start_once(
        binary: &Path,
        dir: &Path,
        a: SocketAddr,
        b: SocketAddr,
        options: &str,
    ) -> Result<Self, StartError> {
        let socket = dir.join("haproxy.sock");
        let frontend = testkit::free_loopback_port()
            .context("cannot bind a loopback port for HAProxy")
            .map_err(StartError::Other)?;
        let config = HAPROXY_CONFIG
            .replace("{SOCKET}", &socket.display().to_string())
            .replace("{FRONTEND}", &frontend.to_string())
            .replace("{A}", &a.to_string())
            .replace("{B}", &b.to_string())
            .replace("{OPTIONS}", options);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(StartError::Other)?;
        let mut cmd = Command::new(binary);
        cmd.arg("-f").arg(&path).arg("-db");
        let proc = Proc::spawn("haproxy", &mut cmd, Stdio::null(), Stdout::Null)
            .map_err(StartError::Other)?;
        let mut balancer = Self {
            proc: Some(proc),
            socket,
            frontend,
            stderr: String::new(),
        };
        balancer.wait_up(&["a", "b"])?;
        Ok(balancer)
    }

    /// Waits until the stats socket shows every server in `names` UP.
    fn wait_up(&mut self, names: &[&str]) -> Result<(), StartError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.proc.as_mut().is_none_or(Proc::has_exited) {
                self.stop();
                return Err(StartError::Exited(anyhow::anyhow!(
                    "haproxy exited at start: {}",
                    self.stderr_tail()
                )));
            }
            let last = match self.states() {
                Ok(states) => {
                    if names
                        .iter()
                        .all(|n| states.get(*n).is_some_and(|s| s == "UP"))
                    {
                        return Ok(());
                    }
                    format!("{states:?}")
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                self.stop();
                return Err(StartError::Other(anyhow::anyhow!(
                    "haproxy's servers were not all UP within {WAIT:?}: {last}; stderr: {}",
                    self.stderr_tail()
                )));
            }
            // The pace of a bounded poll on HAProxy's own state, not a guess.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `status` of each server of the backend, from `show stat`.
    fn states(&self) -> anyhow::Result<HashMap<String, String>> {
        Ok(self
            .stat()?
            .into_iter()
            .filter_map(|(sv, row)| row.get("status").map(|s| (sv, s.clone())))
            .collect())
    }

    /// `show stat` for the backend: each row (the servers and `BACKEND`)
    /// by `svname`, as column name to value.
    fn stat(&self) -> anyhow::Result<HashMap<String, HashMap<String, String>>> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"show stat\n")?;
        let mut text = String::new();
        stream
            .take(1 << 20)
            .read_to_string(&mut text)
            .context("reading `show stat`")?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .with_context(|| format!("`show stat` printed no header: {text:?}"))?
            .split(',')
            .collect();
        let mut rows = HashMap::new();
        for line in lines {
            let row: HashMap<String, String> = header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                .collect();
            if row.get("pxname").map(String::as_str) != Some(BACKEND) {
                continue;
            }
            if let Some(sv) = row.get("svname").cloned() {
                rows.insert(sv, row);
            }
        }
        if rows.is_empty() {
            bail!("`show stat` has no row for the backend {BACKEND}: {text:?}");
        }
        Ok(rows)
    }

    /// Kills HAProxy by its PID (once) and keeps its stderr.
    /// Where HAProxy listens.
    pub(super) fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
            if let Ok(done) = proc.wait(Duration::from_secs(5)) {
                self.stderr = done.stderr_tail();
            }
        }
    }

    pub(super) fn stderr_tail(&self) -> &str {
        &self.stderr
    }
}

/// Why HAProxy did not start.
enum StartError {
    /// It exited (the frontend's port taken, say): worth another port.
    Exited(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop();
    }
}

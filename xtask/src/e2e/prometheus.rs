//! prometheus: the server's `[admin]` endpoint, scraped over HTTP and read
//! by the real `promtool check metrics`, then scraped by a real Prometheus
//! server (both from the Debian package `prometheus`).
//!
//! [`promtool_check_metrics`] finds the admin address in the server's `admin listening`
//! event, checks `/healthz` and `/readyz` (200), scrapes `/metrics`, sends
//! one frame to the `log` listener, scrapes again and requires
//! `netkit_connections_accepted_total` and `netkit_frames_total{status="ok"}`
//! of that listener to have grown by one. Last, `promtool check metrics`
//! reads the second scrape and must report nothing (no format error, no
//! lint finding).
//!
//! [`prometheus_scrape`] starts `prometheus` with a config of its own that
//! scrapes the admin endpoint every second, sends a frame to the `log`
//! listener every 250 ms, and asks Prometheus's HTTP API (with curl) until
//! `netkit_connections_accepted_total{listener="log"}` has grown between two
//! of its answers, and `up{job="netkit"}` is 1.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use super::{Ctx, LOG};
use crate::{
    harness::{Events, message},
    process::{self, Proc, Stdout},
};

/// Each network step.
const STEP: Duration = Duration::from_secs(10);

/// The reference client's frame and the ack of its status 0 (docs/PROTOCOL.md, vector A1).
const FRAME: [u8; 14] = [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x61, 0x10];
const ACK_OK: [u8; 25] = [
    0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbb, 0xe5, 0x68, 0xa3,
];

/// The admin endpoint's address, from the main server's `admin listening` event.
pub(super) fn admin_addr(ctx: &Ctx) -> anyhow::Result<SocketAddr> {
    admin_addr_of(ctx.server.events(), STEP)
}

/// The admin endpoint's address, from the `admin listening` event among `events`, waiting
/// up to `wait` for it.
pub(super) fn admin_addr_of(events: &Events, wait: Duration) -> anyhow::Result<SocketAddr> {
    let event = events
        .wait_for(0, wait, |e| message(e) == "admin listening")
        .context("the server did not log `admin listening`")?;
    event["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("`admin listening` without an address: {event}"))
}

pub(crate) fn promtool_check_metrics(ctx: &mut Ctx) -> anyhow::Result<String> {
    let promtool = process::require("promtool", "apt-get install prometheus")?;
    let admin = admin_addr(ctx)?;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = get(admin, path)?;
        if status != 200 {
            bail!("GET {path}: {status} {body:?}, expected 200");
        }
    }
    let accepted =
        format!("netkit_connections_accepted_total{{listener=\"{LOG}\",mode=\"crc-tcp\"}}");
    let frames_ok =
        format!("netkit_frames_total{{listener=\"{LOG}\",mode=\"crc-tcp\",status=\"ok\"}}");
    let before = scrape(admin)?;
    send_frame(ctx.addr(LOG))?;
    // The connection is counted when accepted and the frame before its ack is
    // written: both are in by now.
    let after = scrape(admin)?;
    for series in [&accepted, &frames_ok] {
        let (was, is) = (value(&before, series)?, value(&after, series)?);
        if is != was + 1.0 {
            bail!("{series} went from {was} to {is} for one frame on one connection");
        }
    }
    let path = ctx.dir.path().join("metrics.txt");
    std::fs::write(&path, &after).with_context(|| format!("cannot write {}", path.display()))?;
    let input = std::fs::File::open(&path)?;
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let done =
        Proc::spawn("promtool", &mut cmd, Stdio::from(input), Stdout::Capture)?.wait(STEP * 3)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    if !done.status.success() || !said.trim().is_empty() {
        bail!(
            "promtool check metrics ({}) on {}: {said}",
            done.status,
            path.display()
        );
    }
    let families = after.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let samples = after.lines().filter(|l| !l.starts_with('#')).count();
    Ok(format!(
        "admin {admin}: /healthz and /readyz 200; {families} families, {samples} samples; \
         accepted and frames ok +1 after one frame; promtool check metrics: clean"
    ))
}

/// One GET on its own connection: (status, body).
pub(super) fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, STEP)
        .with_context(|| format!("cannot connect to the admin endpoint {addr}"))?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(64 * 1024 * 1024)
        .read_to_end(&mut response)
        .with_context(|| format!("GET {path}: reading the response"))?;
    let response = String::from_utf8(response).context("a response that is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no end of head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    match get(admin, "/metrics")? {
        (200, body) => Ok(body),
        (status, body) => bail!("GET /metrics: {status} {body:?}"),
    }
}

/// The value of the sample `series` (name and labels, exactly as exposed).
pub(super) fn value(metrics: &str, series: &str) -> anyhow::Result<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no sample {series} in the scrape"))
}

fn send_frame(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, STEP)?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    stream.write_all(&FRAME)?;
    let mut ack = [0u8; 25];
    stream
        .read_exact(&mut ack)
        .context("no ack for the frame")?;
    if ack != ACK_OK {
        bail!("ack {ack:02x?}, expected status 0");
    }
    Ok(())
}

/// How long Prometheus may take to start and to show the counter growing.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn prometheus_scrape(ctx: &mut Ctx) -> anyhow::Result<String> {
    let prometheus = process::require("prometheus", "apt-get install prometheus")?;
    let curl = process::require("curl", "apt-get install curl")?;
    let admin = admin_addr(ctx)?;
    // A free port for Prometheus's web server (a race with another program is unlikely,
    // and would fail the readiness wait below with a clear message).
    let web = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dir = ctx.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: netkit\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    )?;
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .arg("--log.level=warn");
    let mut server = Proc::spawn("prometheus", &mut cmd, Stdio::null(), Stdout::Null)?;
    let deadline = std::time::Instant::now() + SCRAPE_DEADLINE;
    let query = |expr: &str| -> anyhow::Result<Option<f64>> {
        let mut cmd = Command::new(&curl);
        cmd.args(["-sS", "--fail", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={expr}"))
            .arg(format!("http://{web}/api/v1/query"));
        let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Capture)?.wait(STEP)?;
        if !done.status.success() {
            return Ok(None); // not up yet
        }
        let answer: serde_json::Value = serde_json::from_slice(&done.stdout)
            .with_context(|| format!("Prometheus answered {:?}", done.stdout_text()))?;
        Ok(answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok()))
    };
    let series = format!("netkit_connections_accepted_total{{listener=\"{LOG}\"}}");
    let mut first = None;
    let mut frames = 0;
    let grown = loop {
        if std::time::Instant::now() > deadline {
            bail!(
                "within {SCRAPE_DEADLINE:?} Prometheus did not show {series} growing \
                 (first answer {first:?}, {frames} frames sent)"
            );
        }
        if server.has_exited() {
            bail!("prometheus exited early (port {web} taken?)");
        }
        send_frame(ctx.addr(LOG))?;
        frames += 1;
        // The pace of the poll (bounded by `deadline`): one frame and one
        // query per quarter second while Prometheus scrapes on its own clock.
        std::thread::sleep(Duration::from_millis(250));
        let Some(now) = query(&series)? else { continue };
        match first {
            None => first = Some(now),
            Some(was) if now > was => break (was, now),
            Some(_) => {}
        }
    };
    let up = query("up{job=\"netkit\"}")?;
    if up != Some(1.0) {
        bail!("up{{job=\"netkit\"}} is {up:?}, expected 1");
    }
    server.kill();
    Ok(format!(
        "Prometheus scraped {admin} every 1s: {series} went {} -> {} ({frames} frames sent); up = 1",
        grown.0, grown.1
    ))
}

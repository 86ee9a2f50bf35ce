//! prometheus: the server's `[admin]` endpoint, scraped over HTTP and read
//! by the real `promtool check metrics` (Debian package `prometheus`).
//!
//! The scenario finds the admin address in the server's `admin listening`
//! event, checks `/healthz` and `/readyz` (200), scrapes `/metrics`, sends
//! one frame to the `log` listener, scrapes again and requires
//! `netkit_connections_accepted_total` and `netkit_frames_total{status="ok"}`
//! of that listener to have grown by one. Last, `promtool check metrics`
//! reads the second scrape and must report nothing (no format error, no
//! lint finding).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use super::{Ctx, LOG};
use crate::{
    harness::message,
    process::{self, Proc, Stdout},
};

/// Each network step.
const STEP: Duration = Duration::from_secs(10);

/// The reference client's frame and the ack of its status 0 (docs/PROTOCOL.md, vector A1).
const FRAME: [u8; 14] = [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x61, 0x10];
const ACK_OK: [u8; 25] = [
    0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbb, 0xe5, 0x68, 0xa3,
];

pub(crate) fn promtool_check_metrics(ctx: &mut Ctx) -> anyhow::Result<String> {
    let promtool = process::require("promtool", "apt-get install prometheus")?;
    let event = ctx
        .server
        .events()
        .wait_for(0, STEP, |e| message(e) == "admin listening")
        .context("the server did not log `admin listening`")?;
    let admin: SocketAddr = event["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("`admin listening` without an address: {event}"))?;
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
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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
fn value(metrics: &str, series: &str) -> anyhow::Result<f64> {
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

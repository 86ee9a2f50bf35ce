//! The `nats` handler against a real `nats-server` (Debian package, 2.9)
//! with JetStream on loopback: its own port and temporary store directory,
//! started and killed by its PID.
//!
//! 1. A collector of its own (admin endpoint, one crc-tcp listener with the
//!    nats handler and `create_stream`) becomes ready (`/readyz` 200 once the
//!    stream exists); `client send --wait-ack` sends three frames, and the
//!    stream holds exactly them, with the spec's headers (read back with
//!    `async-nats`).
//! 2. A session (stream id, frames 0 and 1) is sent, then sent again on a new
//!    connection with one frame more: every frame is acked ok, and the stream
//!    grows by three messages, not five (JetStream dropped the duplicates by
//!    their `Nats-Msg-Id`).
//! 3. nats-server is killed (SIGKILL): `/readyz` turns 503, a frame gets
//!    status 5 within `publish_timeout`, the log says the connection was lost
//!    and `netkit_nats_disconnects_total` is 1.
//! 4. nats-server is started again on the same port and store: the handler
//!    reconnects by itself, `/readyz` is 200 again and frames are acked ok and
//!    stored after the ones from before.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use async_nats::jetstream;
use proto::{Ack, AckStatus, CrcSize, Decoded, Session, Version, decode_ack};

use super::{Ctx, arg, prometheus::get};
use crate::{
    harness::{Server, ServerSpec, message},
    process::{Proc, Stdout},
};

/// The collector's listener.
const LISTENER: &str = "ingest";
/// The stream the handler creates.
const STREAM: &str = "E2E_FRAMES";
/// The handler's publish timeout.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Each wait for a state change (a server up, readiness, a log line).
const WAIT: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "ingest"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "nats", servers = ["nats://{NATS}"], subject = "e2e.{listener}", stream = "E2E_FRAMES", publish_timeout = "2s", create_stream = { replicas = 1, storage = "file", duplicate_window = "2m" } }
"#;

/// The path of `nats-server`: on `PATH` (or Debian's /usr/sbin); under CI
/// installed with apt-get when missing; otherwise an error naming the package.
pub(crate) fn nats_server() -> anyhow::Result<PathBuf> {
    let find = || {
        crate::process::require("nats-server", "")
            .ok()
            .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "nats-server"],
        ] {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .context("cannot run apt-get")?;
            if !status.success() {
                bail!("apt-get {} failed ({status})", args.join(" "));
            }
        }
        if let Some(path) = find() {
            return Ok(path);
        }
    }
    bail!("nats-server not found: apt-get install nats-server")
}

/// One `nats-server -js` on loopback, killed by its PID on drop.
pub(crate) struct NatsServer {
    proc: Proc,
    /// Its client address.
    pub(crate) addr: SocketAddr,
}

impl NatsServer {
    /// Starts `binary` with JetStream on `addr` and the store in `store`, and
    /// waits until it accepts connections.
    pub(crate) fn start(binary: &Path, addr: SocketAddr, store: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-sd",
        ])
        .arg(store);
        let mut proc = Proc::spawn("nats-server", &mut cmd, Stdio::null(), Stdout::Null)?;
        let up = testkit::wait_until(WAIT, || {
            proc.has_exited() || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        if !up || proc.has_exited() {
            bail!("nats-server did not accept connections on {addr} within {WAIT:?}");
        }
        Ok(Self { proc, addr })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// The scenario: see the module docs.
pub(crate) fn nats(ctx: &mut Ctx) -> anyhow::Result<String> {
    let binary = nats_server()?;
    let dir = ctx.dir.path().join("nats");
    let store = dir.join("store");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let nats_addr = testkit::free_loopback_port()?;
    let mut nats = NatsServer::start(&binary, nats_addr, &store)?;
    let config = CONFIG.replace("{NATS}", &nats_addr.to_string());
    let mut collector = Server::start(
        &ctx.bins.server,
        &dir,
        &ServerSpec {
            config: &config,
            listeners: &[LISTENER],
            log_level: "info",
            keep: |e| message(e).starts_with("nats") || message(e) == "admin listening",
            log_name: "e2e-nats.log",
        },
    )?;
    let admin = super::prometheus::admin_addr_of(collector.events(), WAIT)
        .context("the collector's admin endpoint")?;
    let frames = collector.addr(LISTENER);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = checks(
        ctx, &runtime, &binary, &mut nats, &store, admin, frames, &collector,
    );
    let _ = collector.stop(WAIT);
    result
}

#[allow(clippy::too_many_arguments, reason = "the scenario's parts, named")]
fn checks(
    ctx: &Ctx,
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    nats: &mut NatsServer,
    store: &Path,
    admin: SocketAddr,
    frames: SocketAddr,
    collector: &Server,
) -> anyhow::Result<String> {
    wait_ready(admin, 200)?;
    // 1. client send --wait-ack, and exactly those messages in the stream.
    let words = ["alpha", "beta", "gamma"];
    let mut args = vec![
        "send".to_owned(),
        "--addr".to_owned(),
        arg(frames),
        "--wait-ack".to_owned(),
        "--version".to_owned(),
        "2".to_owned(),
        "--crc-size".to_owned(),
        "4".to_owned(),
    ];
    args.extend(words.iter().map(|w| (*w).to_owned()));
    let sent = ctx.client(&args, WAIT)?;
    if !sent.status.success() {
        bail!("client send --wait-ack failed: {}", sent.stderr_tail());
    }
    let stored = runtime.block_on(read_stream(nats.addr))?;
    let payloads: Vec<&[u8]> = stored.iter().map(|m| m.payload.as_ref()).collect();
    let expected: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
    if payloads != expected {
        bail!("the stream holds {payloads:?}, expected {expected:?}");
    }
    let first = stored.first().context("no message")?;
    let header = |name: &str| {
        first
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let stream_hex = header("Netkit-Stream");
    let checks = [
        ("Nats-Msg-Id", format!("{stream_hex}-0")),
        ("Netkit-Version", "2".to_owned()),
        ("Netkit-Crc-Size", "4".to_owned()),
        ("Netkit-Listener", LISTENER.to_owned()),
        ("Netkit-Seq", "0".to_owned()),
    ];
    for (name, want) in checks {
        if header(name) != want {
            bail!("header {name} = {:?}, expected {want:?}", header(name));
        }
    }
    if stream_hex.len() != 32 || !header("Netkit-Client").starts_with("127.0.0.1:") {
        bail!("headers {:?}", first.headers);
    }
    if !header("Netkit-Received").ends_with('Z') || header("Netkit-Connection").is_empty() {
        bail!("headers {:?}", first.headers);
    }

    // 2. The same session twice: duplicates dropped.
    let stream_id = *b"e2e-nats-session";
    let acks = session(frames, stream_id, 0, &[b"s0", b"s1"])?;
    expect_ok(&acks, 0..2)?;
    let acks = session(frames, stream_id, 0, &[b"s0", b"s1", b"s2"])?;
    expect_ok(&acks, 0..3)?;
    let stored = runtime.block_on(read_stream(nats.addr))?;
    let tail: Vec<&[u8]> = stored.iter().skip(3).map(|m| m.payload.as_ref()).collect();
    if tail != [&b"s0"[..], b"s1", b"s2"] {
        bail!(
            "after a resent session the stream holds {tail:?} after the first three, expected s0 s1 s2 once each"
        );
    }

    // 3. nats-server killed.
    let mark = collector.events().mark();
    nats.kill();
    wait_ready(admin, 503)?;
    let started = Instant::now();
    let acks = session(frames, *b"e2e-nats-offline", 0, &[b"lost"])?;
    if acks
        != [Ack {
            status: AckStatus::HandlerFailed,
            seq: 0,
        }]
    {
        bail!("with nats-server down: acks {acks:?}, expected status 5");
    }
    if started.elapsed() > PUBLISH_TIMEOUT + Duration::from_secs(3) {
        bail!("status 5 took {:?}", started.elapsed());
    }
    collector
        .events()
        .wait_for(mark, WAIT, |e| {
            message(e).starts_with("nats: connection lost")
        })
        .context("no `nats: connection lost` warning")?;
    let (_, metrics) = get(admin, "/metrics")?;
    for line in [
        format!("netkit_nats_connected{{listener=\"{LISTENER}\",mode=\"crc-tcp\"}} 0"),
        format!("netkit_nats_disconnects_total{{listener=\"{LISTENER}\",mode=\"crc-tcp\"}} 1"),
    ] {
        if !metrics.contains(&line) {
            bail!("/metrics lacks {line:?}");
        }
    }

    // 4. Restarted: reconnects by itself.
    *nats = NatsServer::start(binary, nats.addr, store)?;
    collector
        .events()
        .wait_for(mark, WAIT, |e| message(e) == "nats: reconnected")
        .context("no `nats: reconnected` line")?;
    wait_ready(admin, 200)?;
    let acks = session(frames, *b"e2e-nats-back-up", 0, &[b"back", b"again"])?;
    expect_ok(&acks, 0..2)?;
    let stored = runtime.block_on(read_stream(nats.addr))?;
    let last: Vec<&[u8]> = stored.iter().skip(6).map(|m| m.payload.as_ref()).collect();
    if last != [&b"back"[..], b"again"] {
        bail!("after the restart the stream ends with {last:?}");
    }
    Ok(format!(
        "{} messages stored, duplicates dropped, status 5 and 503 while nats-server was down, reconnected",
        stored.len()
    ))
}

/// Waits until `/readyz` answers `status`.
fn wait_ready(admin: SocketAddr, status: u16) -> anyhow::Result<()> {
    let mut last = (0, String::new());
    let reached = testkit::wait_until(WAIT, || {
        last = get(admin, "/readyz").unwrap_or((0, String::new()));
        last.0 == status
    });
    if !reached {
        bail!(
            "/readyz did not answer {status} within {WAIT:?}: last {} {:?}",
            last.0,
            last.1
        );
    }
    Ok(())
}

/// Opens a connection, sends a session frame and `payloads`, reads their acks.
fn session(
    addr: SocketAddr,
    stream_id: [u8; 16],
    first_seq: u64,
    payloads: &[&[u8]],
) -> anyhow::Result<Vec<Ack>> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let mut bytes = Vec::new();
    proto::encode_session(
        &Session {
            stream_id,
            first_seq,
        },
        &mut bytes,
    );
    for payload in payloads {
        proto::encode_frame(Version::V2, CrcSize::Crc32, payload, &mut bytes)?;
    }
    stream.write_all(&bytes)?;
    let mut acks = Vec::new();
    for _ in payloads {
        let mut raw = [0u8; proto::ACK_FRAME_LEN];
        stream.read_exact(&mut raw).context("reading an ack")?;
        match decode_ack(&raw) {
            Ok(Decoded::Done(ack, _)) => acks.push(ack),
            other => bail!("not an ack: {other:?}"),
        }
    }
    Ok(acks)
}

fn expect_ok(acks: &[Ack], seqs: std::ops::Range<u64>) -> anyhow::Result<()> {
    let expected: Vec<Ack> = seqs
        .map(|seq| Ack {
            status: AckStatus::Ok,
            seq,
        })
        .collect();
    if acks != expected {
        bail!("acks {acks:?}, expected {expected:?}");
    }
    Ok(())
}

/// Every message of the stream, in order.
async fn read_stream(addr: SocketAddr) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    tokio::time::timeout(WAIT, async {
        let client = async_nats::connect(format!("nats://{addr}")).await?;
        let js = jetstream::new(client);
        let mut stream = js.get_stream(STREAM).await?;
        let info = stream.info().await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut messages = Vec::new();
        if info.state.messages > 0 {
            for seq in first..=last {
                messages.push(stream.get_raw_message(seq).await?);
            }
        }
        Ok::<_, anyhow::Error>(messages)
    })
    .await
    .context("reading the stream timed out")?
}

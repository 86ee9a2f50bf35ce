//! The `nats` handler against a real `nats-server` (Debian package, 2.9)
//! with JetStream on loopback: its own port and temporary store directory,
//! started and killed by its PID.
//!
//! 1. A collector of its own (admin endpoint, one crc-tcp listener with the
//!    nats handler and `create_stream`) becomes ready (`/readyz` 200 once the
//!    stream exists); `client send --wait-ack` sends three frames, and the
//!    stream holds exactly them, with the spec's headers in their compact
//!    form, the handler's default (read back with `async-nats`; see
//!    [`check_headers`]).
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
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use async_nats::{HeaderMap, jetstream};
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
/// The header that names a message (`{stream hex}-{seq}`).
const MSG_ID: &str = "Nats-Msg-Id";
/// The compact header about the frame (`v=..;crc=..;seq=..;received=..`).
const FRAME: &str = "Netkit-Frame";
/// The compact header about its source (`client=..;listener=..;conn=..;stream=..`).
const SOURCE: &str = "Netkit-Source";
/// Each wait for a state change (a server up, readiness, a log line).
pub(super) const WAIT: Duration = Duration::from_secs(20);

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
        Self::start_with(binary, addr, store, None)
    }

    /// [`NatsServer::start`], and with `config` (`-c`) when given: a config
    /// file for what has no command-line flag (`authorization`, `tls`); the
    /// flags (JetStream, address, port, store) take precedence over it.
    pub(crate) fn start_with(
        binary: &Path,
        addr: SocketAddr,
        store: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(binary);
        if let Some(config) = config {
            cmd.arg("-c").arg(config);
        }
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
    check_headers(&first.headers)?;

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

/// The compact headers of the first frame `client send --wait-ack --version
/// 2 --crc-size 4` put in the stream, as the handler writes them by default
/// (`headers = "compact"`): exactly `Nats-Msg-Id` (`{stream}-0`),
/// `Netkit-Frame` (`v=2`, `crc=4`, `seq=0`, `received` an RFC 3339 UTC time)
/// and `Netkit-Source` (`client=127.0.0.1:PORT`, `listener` this scenario's,
/// `conn` a number, `stream` 32 lowercase hex digits).
///
/// The pairs are read strictly (see [`pairs`]), in any order; keys this check
/// does not know are allowed, as readers must ignore them.
///
/// # Errors
///
/// Names the header, and the pair, that is missing or wrong.
fn check_headers(headers: &HeaderMap) -> anyhow::Result<()> {
    let names: BTreeSet<String> = headers.iter().map(|(name, _)| name.to_string()).collect();
    let expected = BTreeSet::from([MSG_ID, FRAME, SOURCE].map(str::to_owned));
    if names != expected {
        bail!("headers {names:?}, expected only the compact ones {expected:?}");
    }
    let header = |name: &str| {
        let mut values = headers.get_all(name);
        match (values.next(), values.next()) {
            (Some(value), None) => Ok(value.as_str()),
            _ => Err(anyhow::anyhow!("header {name}: expected exactly one value")),
        }
    };
    let frame = pairs(header(FRAME)?).with_context(|| format!("header {FRAME}"))?;
    let source = pairs(header(SOURCE)?).with_context(|| format!("header {SOURCE}"))?;
    let pair = |name: &str, pairs: &BTreeMap<String, String>, key: &str| {
        pairs
            .get(key)
            .cloned()
            .with_context(|| format!("header {name} has no {key}= pair: {pairs:?}"))
    };
    for (key, want) in [("v", "2"), ("crc", "4"), ("seq", "0")] {
        let got = pair(FRAME, &frame, key)?;
        if got != want {
            bail!("header {FRAME}: {key}={got:?}, expected {want:?}");
        }
    }
    let received = pair(FRAME, &frame, "received")?;
    if !received.ends_with('Z') || !received.contains('T') {
        bail!("header {FRAME}: received={received:?}, expected an RFC 3339 UTC time");
    }
    let stream = pair(SOURCE, &source, "stream")?;
    if stream.len() != 32
        || !stream
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        bail!("header {SOURCE}: stream={stream:?}, expected 32 lowercase hex digits");
    }
    let listener = pair(SOURCE, &source, "listener")?;
    if listener != LISTENER {
        bail!("header {SOURCE}: listener={listener:?}, expected {LISTENER:?}");
    }
    let client = pair(SOURCE, &source, "client")?;
    let port = client.strip_prefix("127.0.0.1:").unwrap_or_default();
    if port.parse::<u16>().is_err() {
        bail!("header {SOURCE}: client={client:?}, expected 127.0.0.1:PORT");
    }
    let conn = pair(SOURCE, &source, "conn")?;
    if conn.parse::<u64>().is_err() {
        bail!("header {SOURCE}: conn={conn:?}, expected a connection number");
    }
    let id = header(MSG_ID)?;
    if id != format!("{stream}-0") {
        bail!("header {MSG_ID} = {id:?}, expected {stream}-0 (the source's stream, frame 0)");
    }
    Ok(())
}

/// A compact header's value read strictly, as the server must write it: `key=value` pairs
/// separated by `;`, none empty, each key once, and each value exactly what
/// `proto::pairs::escape_value` writes for what `proto::pairs::find_pair` reads from it
/// (uppercase escapes, nothing escaped that need not be, UTF-8 once decoded).
fn pairs(value: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut pairs = BTreeMap::new();
    for pair in value.split(';') {
        let (key, raw) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} in {value:?} is not key=value"))?;
        let mut plain_key = String::new();
        proto::pairs::escape_value(&mut plain_key, key);
        if key.is_empty() || plain_key != key {
            bail!("key {key:?} in {value:?}");
        }
        let decoded = proto::pairs::find_pair(value, key)
            .with_context(|| format!("{pair:?} in {value:?}: a bad escape, a byte that should be escaped, not UTF-8, or the key twice"))?
            .into_owned();
        let mut canonical = String::new();
        proto::pairs::escape_value(&mut canonical, &decoded);
        if canonical != raw {
            bail!("{pair:?} in {value:?}: the server writes {key}={canonical}");
        }
        if pairs.insert(key.to_owned(), decoded).is_some() {
            bail!("key {key:?} twice in {value:?}");
        }
    }
    Ok(pairs)
}

/// Waits until `/readyz` answers `status`.
pub(super) fn wait_ready(admin: SocketAddr, status: u16) -> anyhow::Result<()> {
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
pub(super) fn session(
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

pub(super) fn expect_ok(acks: &[Ack], seqs: std::ops::Range<u64>) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM_HEX: &str = "0123456789abcdef0123456789abcdef";
    const GOOD_FRAME: &str = "v=2;crc=4;seq=0;received=2026-12-01T13:34:35.968589123Z";
    const GOOD_SOURCE: &str =
        "client=127.0.0.1:5000;listener=ingest;conn=3;stream=0123456789abcdef0123456789abcdef";

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, *value);
        }
        map
    }

    fn compact(frame: &str, source: &str) -> HeaderMap {
        map(&[
            (MSG_ID, &format!("{STREAM_HEX}-0")),
            (FRAME, frame),
            (SOURCE, source),
        ])
    }

    /// The error's whole chain, to match on.
    fn error(headers: &HeaderMap) -> String {
        match check_headers(headers) {
            Ok(()) => panic!("accepted {headers:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn accepts_the_compact_headers() {
        check_headers(&compact(GOOD_FRAME, GOOD_SOURCE)).unwrap();
        // In another order, with keys it does not know, and escapes.
        let frame = "received=2026-12-01T13:34:35Z;later=%3B%25;seq=0;crc=4;v=2";
        let source =
            format!("stream={STREAM_HEX};conn=0;new=%C3%A9;listener=ingest;client=127.0.0.1:65535");
        check_headers(&compact(frame, &source)).unwrap();
    }

    #[test]
    fn rejects_missing_or_extra_headers() {
        for drop in [MSG_ID, FRAME, SOURCE] {
            let mut headers = compact(GOOD_FRAME, GOOD_SOURCE);
            headers = headers
                .iter()
                .filter(|(name, _)| name.to_string() != drop)
                .flat_map(|(name, values)| values.iter().map(|v| (name.clone(), v.clone())))
                .collect();
            assert!(
                error(&headers).contains("expected only the compact ones"),
                "{drop}"
            );
        }
        let mut split_too = compact(GOOD_FRAME, GOOD_SOURCE);
        split_too.insert("Netkit-Seq", "0");
        assert!(error(&split_too).contains("expected only the compact ones"));
        let mut twice = compact(GOOD_FRAME, GOOD_SOURCE);
        twice.append(FRAME, GOOD_FRAME);
        assert!(error(&twice).contains("exactly one value"));
    }

    #[test]
    fn rejects_each_wrong_or_missing_field() {
        let frame = |from: &str, to: &str| compact(&GOOD_FRAME.replace(from, to), GOOD_SOURCE);
        let source = |from: &str, to: &str| compact(GOOD_FRAME, &GOOD_SOURCE.replace(from, to));
        let cases = [
            (frame("v=2", "v=1"), "v=\"1\""),
            (frame("v=2;", ""), "no v= pair"),
            (frame("crc=4", "crc=2"), "crc=\"2\""),
            (frame("crc=4;", ""), "no crc= pair"),
            (frame("seq=0", "seq=1"), "seq=\"1\""),
            (frame("seq=0;", ""), "no seq= pair"),
            (frame("35.968589123Z", "35.968589123+01:00"), "received="),
            (
                frame(";received=2026-12-01T13:34:35.968589123Z", ""),
                "no received= pair",
            ),
            (
                source("listener=ingest", "listener=other"),
                "listener=\"other\"",
            ),
            (source("listener=ingest;", ""), "no listener= pair"),
            (source("127.0.0.1:5000", "10.0.0.1:5000"), "client="),
            (source("127.0.0.1:5000", "127.0.0.1:"), "client="),
            (source("client=127.0.0.1:5000;", ""), "no client= pair"),
            (source("conn=3", "conn="), "conn="),
            (source("conn=3;", ""), "no conn= pair"),
            (
                source(STREAM_HEX, &STREAM_HEX.to_uppercase()),
                "32 lowercase hex",
            ),
            (source(STREAM_HEX, &STREAM_HEX[1..]), "32 lowercase hex"),
            (
                source(";stream=0123456789abcdef0123456789abcdef", ""),
                "no stream= pair",
            ),
        ];
        for (headers, expected) in cases {
            let error = error(&headers);
            assert!(error.contains(expected), "{error} lacks {expected:?}");
        }
        let mut other_id = compact(GOOD_FRAME, GOOD_SOURCE);
        other_id.insert(MSG_ID, format!("{STREAM_HEX}-1").as_str());
        assert!(error(&other_id).contains(MSG_ID));
    }

    #[test]
    fn rejects_values_that_break_the_grammar() {
        for bad in [
            "",
            "v=2;;crc=4",
            "v=2;",
            "=2",
            "v",
            "v=%",
            "v=%2",
            "v=%zz",
            "v=%3b",
            "v=2=2",
            "v=2 ",
            "v=\u{e9}",
            "v=%FF",
            "v=2;v=2",
            // Escaped where the server writes the byte itself.
            "v=%32",
            "v%3D=2",
        ] {
            assert!(pairs(bad).is_err(), "{bad:?}");
            let frame = format!("{bad};{GOOD_FRAME}");
            assert!(
                check_headers(&compact(&frame, GOOD_SOURCE)).is_err(),
                "{frame:?}"
            );
        }
        let decoded = pairs("a=%25%3B%3D%20;b=").unwrap();
        assert_eq!(decoded["a"], "%;= ");
        assert_eq!(decoded["b"], "");
    }
}

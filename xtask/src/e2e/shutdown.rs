//! Scenario `graceful-shutdown`: SIGTERM while frames and a download are in flight. The server
//! must exit 0 within its drain timeout, and every frame it acked ok must be
//! in the file sink. Meanwhile the admin endpoint's `/readyz` is polled: 200
//! before SIGTERM, and 503 while the server drains a running download.

use std::{
    collections::HashSet,
    io::{BufWriter, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use proto::{AckStatus, CrcSize, Decoded, HEADER_LEN, Version, decode_ack, encode_frame};
use testkit::wait_until;

use super::{Ctx, DRAIN_TIMEOUT, FRAMES, PROXY, arg, frames::split_frames};
use crate::{
    harness::message,
    peers::{BIG_SEED, Pattern, Verifier},
    process::{Proc, Stdout, require},
};

/// Acked senders of our own (their payloads are recognisable in the file).
const SENDERS: usize = 2;
/// Payload bytes per frame.
const PAYLOAD_LEN: usize = 200;
/// The most frames one sender sends.
const MAX_FRAMES: u64 = 2_000_000;
/// The file sink must hold at least this many acked frames before SIGTERM
/// (or the wait below ends).
const ACKED_BEFORE_STOP: u64 = 2_000;

/// What one acked sender saw.
#[derive(Debug, Default)]
struct SenderReport {
    sent: u64,
    ok_seqs: Vec<u64>,
    other_acks: u64,
    end: String,
}

/// Scenario `graceful-shutdown`: graceful shutdown under load.
pub(crate) fn graceful_shutdown(ctx: &mut Ctx) -> anyhow::Result<String> {
    let curl = require("curl", "apt-get install curl")?;
    let frames = ctx.addr(FRAMES);
    let start = ctx.sink_len()?;
    let mark = ctx.server.events().mark();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|conn| {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            thread::spawn(move || acked_sender(frames, conn, &stop, &acked))
        })
        .collect();
    // Load from our client too: a bench stream that waits for acks.
    let mut bench = Command::new(&ctx.bins.client);
    bench
        .args(["bench", "--addr", &arg(frames), "--frames", "5000000"])
        .args([
            "--size",
            "512",
            "--connections",
            "2",
            "--wait-ack",
            "--json",
            "--timeout",
            "5s",
        ]);
    let bench = Proc::spawn("client bench", &mut bench, Stdio::null(), Stdout::Capture)?;
    // And a download through the proxy, slow enough to still run at SIGTERM.
    let mut download = Command::new(curl);
    download
        .args(["-sS", "--max-time", "30", "--limit-rate", "20M", "--socks5"])
        .arg(arg(ctx.addr(PROXY)))
        .arg(format!("http://127.0.0.1:{}/big", ctx.http.port()));
    let mut download = Proc::spawn("curl", &mut download, Stdio::null(), Stdout::Take)?;
    let body = Counted {
        inner: download.take_stdout().context("no stdout pipe")?,
        bytes: Arc::new(AtomicU64::new(0)),
    };
    let downloaded = Arc::clone(&body.bytes);
    let checker = thread::spawn(move || Verifier::new(Pattern::new(BIG_SEED)).consume(body));

    wait_until(Duration::from_secs(5), || {
        acked.load(Ordering::Relaxed) >= ACKED_BEFORE_STOP
    });
    // The download is under way once the proxy holds its tunnel (the
    // `downloading` check below then sees it running at SIGTERM).
    let admin = super::prometheus::admin_addr(ctx)?;
    let tunnel = format!("netkit_connections_active{{listener=\"{PROXY}\",mode=\"socks5\"}} ");
    let tunnelling = wait_until(Duration::from_secs(5), || {
        super::prometheus::get(admin, "/metrics").is_ok_and(|(_, body)| {
            body.lines()
                .filter_map(|line| line.strip_prefix(&tunnel)?.parse::<f64>().ok())
                .any(|active| active >= 1.0)
        })
    });
    if !tunnelling {
        bail!("curl's tunnel through the proxy was not active within 5 s");
    }
    // An active connection may still be in its handshake, which shutdown cancels: the
    // download is under way once bytes came through it.
    if !wait_until(Duration::from_secs(5), || {
        downloaded.load(Ordering::Relaxed) > 0
    }) {
        bail!("no byte of the download came through the proxy within 5 s");
    }
    let acked_at_stop = acked.load(Ordering::Relaxed);
    let downloading = !download.has_exited();
    let ready_before = super::prometheus::get(admin, "/readyz")?.0;
    // Polls /readyz until the endpoint is gone; returns every status it saw, in order.
    let poller = thread::spawn(move || {
        let mut seen: Vec<u16> = Vec::new();
        let until = Instant::now() + DRAIN_TIMEOUT + Duration::from_secs(10);
        while Instant::now() < until {
            match super::prometheus::get(admin, "/readyz") {
                Ok((status, _)) if seen.last() != Some(&status) => seen.push(status),
                Ok(_) => {}
                Err(_) => break,
            }
            // The sampling pace of the poll (bounded by `until`), not a
            // synchronisation: every status change is recorded.
            thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    let stopped = ctx.server.stop(DRAIN_TIMEOUT + Duration::from_secs(5));
    let readiness = poller.join().unwrap_or_default();
    ctx.stopped = true;
    stop.store(true, Ordering::SeqCst);
    let reports: Vec<SenderReport> = senders
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let bench = bench.wait(Duration::from_secs(20));
    let download = download.wait(Duration::from_secs(20));
    let body = checker.join().ok().and_then(Result::ok);
    let (status, took) = stopped?;

    let mut failures = Vec::new();
    if !status.success() {
        failures.push(format!("the server exited with {status}, not 0"));
    }
    let allowed = DRAIN_TIMEOUT + Duration::from_secs(1);
    if took > allowed {
        failures.push(format!(
            "the server took {took:.2?} to exit, more than its drain timeout ({DRAIN_TIMEOUT:?}) plus 1 s"
        ));
    }
    if ready_before != 200 {
        failures.push(format!(
            "/readyz answered {ready_before} before SIGTERM, not 200"
        ));
    }
    if downloading && !readiness.contains(&503) {
        failures.push(format!(
            "/readyz never answered 503 while the server drained a download (saw {readiness:?})"
        ));
    }
    for wanted in ["shutting down", "stopped"] {
        let seen = ctx
            .server
            .events()
            .since(mark)
            .iter()
            .any(|e| message(e).starts_with(wanted));
        if !seen {
            failures.push(format!("no `{wanted}` event in the log"));
        }
    }
    // Every frame acked ok is in the file.
    let file = std::fs::read(&ctx.sink_path)
        .with_context(|| format!("cannot read {}", ctx.sink_path.display()))?;
    let stored = file.get(start as usize..).unwrap_or_default();
    let parsed = split_frames(stored)?;
    if parsed.trailing != 0 {
        failures.push(format!(
            "the file sink ends with {} bytes of an incomplete frame",
            parsed.trailing
        ));
    }
    let payloads: HashSet<&[u8]> = parsed
        .frames
        .iter()
        .filter_map(|raw| raw.get(HEADER_LEN..HEADER_LEN + PAYLOAD_LEN))
        .filter(|p| p.starts_with(b"shutdown-"))
        .collect();
    let mut acked_ok = 0;
    for (conn, report) in reports.iter().enumerate() {
        acked_ok += report.ok_seqs.len();
        let missing: Vec<u64> = report
            .ok_seqs
            .iter()
            .copied()
            .filter(|&seq| !payloads.contains(payload(conn, seq).as_slice()))
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "sender {conn}: {} frames acked ok are not in the file sink (first seqs {:?})",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ));
        }
        if report.other_acks > 0 {
            failures.push(format!(
                "sender {conn}: {} acks were not ok",
                report.other_acks
            ));
        }
    }
    if acked_ok == 0 {
        failures.push("no frame was acked before SIGTERM".to_owned());
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let bench = match bench {
        Ok(done) => format!("client bench exited {}", done.status),
        Err(error) => format!("client bench: {error:#}"),
    };
    let download = match (download, body) {
        (Ok(done), Some(body)) => format!(
            "curl exited {} after {} MiB{}",
            done.status,
            body.len >> 20,
            if body.first_mismatch.is_some() {
                " (corrupt!)"
            } else {
                ""
            }
        ),
        (Err(error), _) => format!("curl: {error:#}"),
        (Ok(done), None) => format!("curl exited {}", done.status),
    };
    Ok(format!(
        "exit 0 after {took:.2?}; /readyz {ready_before} then {readiness:?} until gone; {acked_ok} acked frames all in the file ({} frames stored, \
         {acked_at_stop} acked at SIGTERM; download running at SIGTERM: {downloading}); {bench}; {download}; \
         sent {}",
        parsed.frames.len(),
        reports
            .iter()
            .map(|r| format!("{} ({})", r.sent, r.end))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The payload of frame `seq` of sender `conn`: a recognisable prefix, then
/// filler bytes that depend on `seq`.
fn payload(conn: usize, seq: u64) -> Vec<u8> {
    let mut payload = format!("shutdown-{conn}-{seq:010}-").into_bytes();
    let filler = (0..).map(|i: u64| (seq.wrapping_mul(31).wrapping_add(i * 7) & 0xff) as u8);
    payload.extend(filler.take(PAYLOAD_LEN - payload.len()));
    payload
}

/// Streams frames on one connection (a writer thread) and records which
/// were acked ok (this thread), until the server closes or `stop` is set.
fn acked_sender(
    addr: SocketAddr,
    conn: usize,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> SenderReport {
    let mut report = SenderReport::default();
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(error) => {
            report.end = format!("connect failed: {error}");
            return report;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(write_half) = stream.try_clone() else {
        report.end = "cannot clone the socket".to_owned();
        return report;
    };
    let sent = Arc::new(AtomicU64::new(0));
    let sent_by_writer = Arc::clone(&sent);
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer_stopped = Arc::clone(&writer_stop);
    let writer = thread::spawn(move || {
        let mut out = BufWriter::with_capacity(64 * 1024, write_half);
        let mut frame = Vec::with_capacity(PAYLOAD_LEN + 32);
        for seq in 0..MAX_FRAMES {
            if writer_stopped.load(Ordering::Relaxed) {
                break;
            }
            frame.clear();
            if encode_frame(Version::V2, CrcSize::Crc32, &payload(conn, seq), &mut frame).is_err()
                || out.write_all(&frame).is_err()
            {
                break;
            }
            sent_by_writer.store(seq + 1, Ordering::Relaxed);
            // Small batches: flush every 32 frames.
            if seq % 32 == 31 && out.flush().is_err() {
                break;
            }
        }
        let _ = out.flush();
    });
    let mut reader = stream;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    report.end = loop {
        match reader.read(&mut chunk) {
            Ok(0) => break "server closed".to_owned(),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && stop.load(Ordering::Relaxed) =>
            {
                break "no more acks after the stop".to_owned();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "no ack for 10 s".to_owned();
            }
            Err(error) => break format!("read error: {error}"),
        }
        let mut used = 0;
        while let Ok(Decoded::Done(ack, len)) = decode_ack(buf.get(used..).unwrap_or_default()) {
            if ack.status == AckStatus::Ok {
                report.ok_seqs.push(ack.seq);
                acked.fetch_add(1, Ordering::Relaxed);
            } else {
                report.other_acks += 1;
            }
            used += len;
        }
        buf.drain(..used);
    };
    writer_stop.store(true, Ordering::Relaxed);
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    report.sent = sent.load(Ordering::Relaxed);
    report
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

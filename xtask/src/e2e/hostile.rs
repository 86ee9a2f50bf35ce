//! Scenario `hostile-peers`: hostile peers against the socks5 and crc-tcp listeners at
//! once, while good clients are served; afterwards the log names each
//! rejection.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use proto::{Decoded, decode_ack};

use super::{Ctx, LOG, PROXY, PROXY_AUTH, arg, proxy::fetch};
use crate::e2e::SMALL_LEN;
use crate::{
    harness::message,
    peers::{Pattern, SMALL_SEED},
};

/// How a hostile peer must be answered.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Closed within a few seconds (any bytes before the close are fine).
    Closed,
    /// Closed by the 1 s handshake timeout: not before 0.5 s, not after 4 s.
    ClosedByTimeout,
    /// One ack with this status (seq 0), then closed.
    Nack(u8),
}

struct Probe {
    name: &'static str,
    listener: &'static str,
    bytes: &'static [u8],
    expect: Expect,
    /// The log must have an event from this peer containing one of these
    /// (lowercase).
    keywords: &'static [&'static str],
}

const TLS_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2e, 0x01, 0x00, 0x00, 0x2a, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9,
    10, 11, 12, 13, 14, 15, 16,
];

static PROBES: &[Probe] = &[
    Probe {
        name: "garbage to socks5",
        listener: PROXY,
        bytes: b"\x00\xde\xad\xbe\xef garbage \xff\xfe\r\n",
        expect: Expect::Closed,
        keywords: &["not a socks5", "speak socks5"],
    },
    Probe {
        name: "SOCKS4 request",
        listener: PROXY,
        bytes: b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00",
        expect: Expect::Closed,
        keywords: &["socks4"],
    },
    Probe {
        name: "HTTP request to socks5",
        listener: PROXY,
        bytes: b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        expect: Expect::Closed,
        keywords: &["http"],
    },
    Probe {
        name: "TLS hello to socks5",
        listener: PROXY_AUTH,
        bytes: TLS_HELLO,
        expect: Expect::Closed,
        keywords: &["tls"],
    },
    Probe {
        name: "slow greeting (proxy)",
        listener: PROXY,
        bytes: b"\x05",
        expect: Expect::ClosedByTimeout,
        keywords: &["timeout", "timed out", "within"],
    },
    Probe {
        name: "slow greeting (proxy-auth)",
        listener: PROXY_AUTH,
        bytes: b"\x05",
        expect: Expect::ClosedByTimeout,
        keywords: &["timeout", "timed out", "within"],
    },
    Probe {
        name: "huge frame header",
        listener: LOG,
        bytes: b"\x00\x00\x00\x02\xff\xff\xff\xf0\x00\x00\x00\x04",
        expect: Expect::Nack(4),
        keywords: &["too large", "exceeds", "limit"],
    },
    Probe {
        name: "garbage to crc-tcp",
        listener: LOG,
        bytes: b"GET / HTTP/1.1\r\n\r\n",
        expect: Expect::Nack(2),
        keywords: &["version"],
    },
];

/// Scenario `hostile-peers`: hostile peers; the server keeps serving and logs each rejection.
pub(crate) fn hostile_peers(ctx: &mut Ctx) -> anyhow::Result<String> {
    let mark = ctx.server.events().mark();
    let probes: Vec<_> = PROBES
        .iter()
        .map(|probe| {
            let addr = ctx.addr(probe.listener);
            (probe, thread::spawn(move || run_probe(addr, probe)))
        })
        .collect();
    // Meanwhile, good clients are served.
    let text = format!("during-hostile-{}", ctx.nonce);
    let args = [
        "send",
        "--addr",
        &arg(ctx.addr(LOG)),
        "--wait-ack",
        "--timeout",
        "5s",
        &text,
    ]
    .map(String::from);
    let sent = ctx.client(&args, Duration::from_secs(20))?;
    let url = format!("http://127.0.0.1:{}/small", ctx.http.port());
    let fetched = fetch(
        &["--socks5".to_owned(), arg(ctx.addr(PROXY))],
        &url,
        Pattern::new(SMALL_SEED),
        &[],
        Duration::from_secs(20),
    );
    let mut failures = Vec::new();
    if !sent.status.success() {
        failures.push(format!(
            "client send during the attack failed ({}): {}",
            sent.status,
            sent.stderr_tail()
        ));
    }
    match fetched.and_then(|(checked, _)| checked.expect(SMALL_LEN, "curl during the attack")) {
        Ok(()) => {}
        Err(error) => failures.push(format!("{error:#}")),
    }
    let mut peers = Vec::new();
    for (probe, handle) in probes {
        match handle.join() {
            Ok(Ok(peer)) => peers.push((probe, peer)),
            Ok(Err(error)) => failures.push(format!("{}: {error:#}", probe.name)),
            Err(_) => failures.push(format!("{}: the probe thread panicked", probe.name)),
        }
    }
    let mut unlogged_peer = Vec::new();
    for (probe, peer) in &peers {
        let peer_text = peer.to_string();
        let named = |e: &serde_json::Value| {
            let text = e.to_string().to_lowercase();
            text.contains(&peer_text) && probe.keywords.iter().any(|k| text.contains(k))
        };
        if ctx
            .server
            .events()
            .wait_for(mark, Duration::from_secs(2), named)
            .is_some()
        {
            continue;
        }
        let events = ctx.server.events().since(mark);
        let mentions_peer = events.iter().any(|e| e.to_string().contains(&peer_text));
        let keyword_anywhere = events.iter().any(|e| {
            let text = e.to_string().to_lowercase();
            probe.keywords.iter().any(|k| text.contains(k))
        });
        if !mentions_peer && keyword_anywhere {
            unlogged_peer.push(probe.name);
        } else {
            let messages: Vec<String> = events
                .iter()
                .filter(|e| e.to_string().contains(&peer_text))
                .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), message(e)))
                .collect();
            failures.push(format!(
                "{}: no log event from {peer_text} says {:?} (its events: {messages:?})",
                probe.name, probe.keywords
            ));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let mut detail = format!(
        "{} hostile peers rejected and logged; client send and curl served meanwhile",
        peers.len()
    );
    if !unlogged_peer.is_empty() {
        detail.push_str(&format!(
            " (logged without the peer address: {unlogged_peer:?})"
        ));
    }
    Ok(detail)
}

/// Sends the probe's bytes, checks the answer and the close; returns the
/// probe's own address (the server logs it as `peer`).
fn run_probe(addr: SocketAddr, probe: &Probe) -> anyhow::Result<SocketAddr> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    let peer = stream.local_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let sent = Instant::now();
    stream.write_all(probe.bytes)?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too.
            Err(_) => break true,
        }
    };
    let took = sent.elapsed();
    if !closed {
        bail!(
            "still open {took:.1?} after sending; received {} bytes",
            received.len()
        );
    }
    match probe.expect {
        Expect::Closed => {}
        Expect::ClosedByTimeout => {
            if took < Duration::from_millis(500) || took > Duration::from_secs(4) {
                bail!("closed after {took:.2?}, not by the 1 s handshake timeout");
            }
        }
        Expect::Nack(status) => match decode_ack(&received) {
            Ok(Decoded::Done(ack, used)) => {
                let got = u8::from(ack.status);
                if got != status || ack.seq != 0 || used != received.len() {
                    bail!(
                        "expected one ack with status {status} for seq 0, got status {got} seq {} ({} bytes)",
                        ack.seq,
                        received.len()
                    );
                }
            }
            Ok(Decoded::NeedMore(_)) | Err(_) => bail!(
                "expected an ack with status {status}, got {} bytes: {:02x?}",
                received.len(),
                received
            ),
        },
    }
    Ok(peer)
}

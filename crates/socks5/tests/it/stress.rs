//! The relay under contention: many tunnels, bursts of random size each answered by the
//! target, every byte checked, while another thread keeps a core busy. A lost wake-up shows as a
//! burst whose end never reaches the target: its answer does not come within [`STALL`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::SplitMix64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{LIMIT, Proxy, connect_v4, greeted, options, read_reply_v4, within};

/// Tunnels at once.
const TUNNELS: usize = 8;
/// Bursts per tunnel at most.
const BURSTS: usize = 400;
/// The whole run stops starting bursts after this (the test stays well under a minute).
const RUN_FOR: Duration = Duration::from_secs(20);
/// A burst whose answer has not come back within this has stalled (the relay's idle timeout in
/// the test options is longer, so a stall cannot hide behind a closed tunnel).
const STALL: Duration = Duration::from_secs(8);
/// Burst sizes, uniformly drawn.
const BURST_LEN: std::ops::RangeInclusive<usize> = 1..=3 << 20;

/// Deterministic content of `len` bytes for `seed`, so every burst's bytes can be recomputed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    SplitMix64::new(seed).bytes(len)
}

/// Keeps one core busy until dropped.
struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Spinner {
    fn start() -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut spins = 0_u64;
            while !flag.load(Ordering::Relaxed) {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
            spins
        });
        Spinner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The target: for each burst, reads its 8-byte length and then the bytes, checks them against
/// [`content`], and answers with one byte (1: intact, 0: corrupt) followed by a reply burst of
/// the size the client asked for, so both directions carry bulk data and short tails.
async fn target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let address = listener.local_addr().expect("target address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_bursts(stream));
        }
    });
    address
}

async fn serve_bursts(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut head = [0; 24];
        match stream.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let [seed, len, back] = [0, 8, 16].map(|at| {
            let mut word = [0; 8];
            word.copy_from_slice(&head[at..at + 8]);
            u64::from_be_bytes(word)
        });
        buf.resize(usize::try_from(len).expect("small"), 0);
        stream.read_exact(&mut buf).await?;
        let intact = buf == content(seed, buf.len());
        stream.write_all(&[u8::from(intact)]).await?;
        let reply = content(!seed, usize::try_from(back).expect("small"));
        stream.write_all(&reply).await?;
    }
}

/// One tunnel's run: bursts until the count or the time is up. Returns the bursts done.
async fn tunnel(
    proxy: SocketAddr,
    target: SocketAddr,
    index: usize,
    end: Instant,
    moved: Arc<AtomicU64>,
) -> Result<usize, String> {
    let mut stream = greeted(proxy).await;
    within(LIMIT, stream.write_all(&connect_v4(target)))
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (reply, _) = read_reply_v4(&mut stream).await;
    if reply != 0 {
        return Err(format!("CONNECT refused with {reply}"));
    }
    let mut rng = SplitMix64::new(index as u64);
    let mut back = Vec::new();
    for burst in 0..BURSTS {
        if Instant::now() >= end {
            return Ok(burst);
        }
        let seed = ((index as u64) << 32) | burst as u64;
        let len = rng.in_range(BURST_LEN);
        // Most answers are short; every fourth is bulk too.
        let back_len = if burst % 4 == 3 {
            rng.in_range(BURST_LEN)
        } else {
            rng.in_range(0..=64)
        };
        let mut message = Vec::with_capacity(24 + len);
        for word in [seed, len as u64, back_len as u64] {
            message.extend_from_slice(&word.to_be_bytes());
        }
        message.extend_from_slice(&content(seed, len));
        let exchange = async {
            // Write and read at once: the answer can only start after the whole burst, but
            // writing and reading from one task keeps this side from being the bottleneck.
            let (mut read, mut write) = stream.split();
            let send = write.write_all(&message);
            back.resize(1 + back_len, 0);
            let receive = read.read_exact(&mut back);
            tokio::try_join!(send, receive)
        };
        match tokio::time::timeout(STALL, exchange).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("tunnel {index} burst {burst}: {error}")),
            Err(_) => {
                return Err(format!(
                    "tunnel {index} stalled in burst {burst} ({len} bytes up, {back_len} down): \
                     no answer within {STALL:?}"
                ));
            }
        }
        if back.first() != Some(&1) {
            return Err(format!(
                "tunnel {index} burst {burst}: the target saw corrupt bytes"
            ));
        }
        if back.get(1..) != Some(content(!seed, back_len).as_slice()) {
            return Err(format!(
                "tunnel {index} burst {burst}: the answer came back corrupt"
            ));
        }
        moved.fetch_add((len + back_len) as u64, Ordering::Relaxed);
    }
    Ok(BURSTS)
}

/// Many tunnels with random bursts under a busy core: every burst arrives whole and in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tunnel_stalls_under_contention() {
    let _spinner = Spinner::start();
    let proxy = Proxy::start(options()).await;
    let target = target().await;
    let started = Instant::now();
    let end = started + RUN_FOR;
    let moved = Arc::new(AtomicU64::new(0));
    let runs: Vec<_> = (0..TUNNELS)
        .map(|index| {
            tokio::spawn(tunnel(
                proxy.address,
                target,
                index,
                end,
                Arc::clone(&moved),
            ))
        })
        .collect();
    let mut bursts = 0;
    let mut failures = Vec::new();
    for run in runs {
        match run.await.expect("tunnel task") {
            Ok(done) => bursts += done,
            Err(failure) => failures.push(failure),
        }
    }
    let mib = moved.load(Ordering::Relaxed) >> 20;
    eprintln!(
        "{bursts} bursts, {mib} MiB in {:.1?} through {TUNNELS} tunnels",
        started.elapsed()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(bursts >= TUNNELS, "too few bursts ran: {bursts}");
}

/// Bytes a fairness tunnel moves at most (the test ends earlier once the handshake is done).
const FAIR_BULK_LIMIT: u64 = 64 << 30;
/// Bytes the bulk tunnels move before the handshake is timed.
const FAIR_WARM_UP: u64 = 256 << 20;
/// How long a fairness tunnel runs at most.
const FAIR_BULK_FOR: Duration = Duration::from_secs(20);
/// A handshake while bulk tunnels keep the only worker busy must finish within this: far more
/// than a handshake takes on an idle machine, far less than the bulk run.
const FAIR_HANDSHAKE: Duration = Duration::from_secs(5);

/// A blocking SOCKS5 CONNECT (no auth) to `target` through `proxy`.
fn blocking_connect(proxy: SocketAddr, target: SocketAddr) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(proxy).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(FAIR_BULK_FOR))
        .expect("read timeout");
    stream.write_all(&[5, 1, 0]).expect("greeting");
    let mut choice = [0; 2];
    stream.read_exact(&mut choice).expect("method");
    stream.write_all(&connect_v4(target)).expect("request");
    let mut reply = [0; 10];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[1], 0, "CONNECT refused");
    stream
}

/// Bulk tunnels whose both ends never make the relay wait (fast threads outside the proxy's
/// runtime) must not keep the proxy's only worker from a new handshake.
#[test]
fn a_handshake_completes_while_bulk_tunnels_hold_the_worker() {
    use std::io::{Read, Write};
    let stop = Arc::new(AtomicBool::new(false));
    // The proxy on a runtime with a single worker, in its own thread.
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    // The proxy runs until told to stop (a message, not a polled flag).
    let (proxy_stop, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let proxy = Proxy::start(options()).await;
            address_tx.send(proxy.address).expect("send address");
            // An error is the sender dropped: the test is over either way.
            let _ = proxy_stopped.await;
        });
    });
    let proxy = address_rx.recv_timeout(LIMIT).expect("the proxy started");
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let sink_address = sink.local_addr().expect("sink address");
    let mut threads = Vec::new();
    let drained = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let mut source = blocking_connect(proxy, sink_address);
        let (mut drain, _) = sink.accept().expect("accept");
        let stop_drain = Arc::clone(&stop);
        let progress = Arc::clone(&drained);
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 20];
            let mut total = 0_u64;
            drain
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("read timeout");
            while !stop_drain.load(Ordering::Relaxed) {
                match drain.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        total += n as u64;
                        progress.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
            total
        }));
        let stop_source = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let chunk = vec![7; 1 << 20];
            let started = Instant::now();
            let mut total = 0_u64;
            while !stop_source.load(Ordering::Relaxed)
                && total < FAIR_BULK_LIMIT
                && started.elapsed() < FAIR_BULK_FOR
            {
                if source.write_all(&chunk).is_err() {
                    break;
                }
                total += chunk.len() as u64;
            }
            total
        }));
    }
    // The bulk tunnels are at full speed once they have moved a good amount.
    let warm = Instant::now();
    while drained.load(Ordering::Relaxed) < FAIR_WARM_UP {
        assert!(warm.elapsed() < LIMIT, "the bulk tunnels did not start");
        std::thread::yield_now();
    }
    let echo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let echo_address = echo.local_addr().expect("echo address");
    let started = Instant::now();
    let mut stream = blocking_connect(proxy, echo_address);
    let took = started.elapsed();
    drop(echo);
    stream.flush().expect("flush");
    stop.store(true, Ordering::Relaxed);
    let _ = proxy_stop.send(());
    let moved: u64 = threads
        .into_iter()
        .map(|thread| thread.join().expect("bulk thread"))
        .sum();
    proxy_thread.join().expect("proxy thread");
    eprintln!("handshake took {took:?} while {} MiB moved", moved >> 20);
    assert!(
        took < FAIR_HANDSHAKE,
        "a handshake took {took:?} while bulk tunnels ran"
    );
}

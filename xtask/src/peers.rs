//! Local peers that xtask runs on `127.0.0.1:0` with std threads: an HTTP/1.1
//! file server, a byte sink, an echo server, an accept-and-hold server and a
//! UDP echo server, plus the deterministic byte [`Pattern`] they serve and
//! check.
//!
//! Each TCP server is a fixed pool of threads that block in `accept` on one
//! listener ([`TcpService`]); dropping it wakes and ends them. Every accepted
//! socket has read and write timeouts, so no thread waits forever.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver},
    },
    thread,
    time::Duration,
};

use anyhow::Context;

/// The deadline of every read or write on a peer's socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The period of a [`Pattern`]: a prime, so it lines up with no buffer size.
const PERIOD: usize = 1_048_573;

/// Deterministic bytes: byte `i` of the stream with seed `s` is a function
/// of `(s, i)` only, so a receiver checks any range without storing it.
///
/// The stream repeats a table of [`PERIOD`] pseudo-random bytes, so filling
/// and checking are `memcpy` and `memcmp` (fast even in a debug build).
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    table: Arc<[u8]>,
}

impl Pattern {
    /// The pattern with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut table = Vec::with_capacity(PERIOD + 8);
        let mut index = 0u64;
        while table.len() < PERIOD {
            // splitmix64 of (seed, index)
            let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            table.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            index += 1;
        }
        table.truncate(PERIOD);
        Self {
            table: table.into(),
        }
    }

    /// Calls `f` with consecutive pieces of the table that cover the bytes
    /// at `offset..offset + len`.
    fn pieces(&self, offset: u64, len: usize, mut f: impl FnMut(usize, &[u8])) {
        let mut start = (offset % PERIOD as u64) as usize;
        let mut done = 0;
        while done < len {
            let take = (PERIOD - start).min(len - done);
            f(
                done,
                self.table.get(start..start + take).unwrap_or_default(),
            );
            done += take;
            start = 0;
        }
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    pub(crate) fn fill(&self, offset: u64, buf: &mut [u8]) {
        let len = buf.len();
        self.pieces(offset, len, |at, piece| {
            if let Some(dst) = buf.get_mut(at..at + piece.len()) {
                dst.copy_from_slice(piece);
            }
        });
    }

    /// The first `len` bytes.
    pub(crate) fn bytes(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.fill(0, &mut buf);
        buf
    }
}

/// Checks a byte stream against a [`Pattern`] as it arrives.
#[derive(Debug)]
pub(crate) struct Verifier {
    pattern: Pattern,
    len: u64,
    first_mismatch: Option<u64>,
}

impl Verifier {
    /// A verifier of the stream `pattern` from offset 0.
    pub(crate) fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            len: 0,
            first_mismatch: None,
        }
    }

    /// Checks the next bytes of the stream.
    pub(crate) fn update(&mut self, data: &[u8]) {
        if self.first_mismatch.is_none() {
            let mut mismatch = None;
            self.pattern.pieces(self.len, data.len(), |at, piece| {
                let got = data.get(at..at + piece.len()).unwrap_or_default();
                if mismatch.is_none() && got != piece {
                    let within = got.iter().zip(piece).position(|(a, b)| a != b).unwrap_or(0);
                    mismatch = Some((at + within) as u64);
                }
            });
            self.first_mismatch = mismatch.map(|at| self.len + at);
        }
        self.len += data.len() as u64;
    }

    /// Reads `reader` to its end through the verifier.
    pub(crate) fn consume(mut self, mut reader: impl Read) -> io::Result<Checked> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(self.finish()),
                Ok(n) => self.update(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The verdict.
    pub(crate) fn finish(self) -> Checked {
        Checked {
            len: self.len,
            first_mismatch: self.first_mismatch,
        }
    }
}

/// What a [`Verifier`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Bytes received.
    pub(crate) len: u64,
    /// The offset of the first byte that differs from the pattern.
    pub(crate) first_mismatch: Option<u64>,
}

impl Checked {
    /// Fails unless exactly `expected` pattern bytes arrived.
    pub(crate) fn expect(self, expected: u64, what: &str) -> anyhow::Result<()> {
        if let Some(at) = self.first_mismatch {
            anyhow::bail!(
                "{what}: byte {at} differs from what was sent ({} bytes received)",
                self.len
            );
        }
        if self.len != expected {
            anyhow::bail!("{what}: {} bytes received, expected {expected}", self.len);
        }
        Ok(())
    }
}

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A pool of threads that accept on one loopback listener.
pub(crate) struct TcpService {
    addr: SocketAddr,
    threads: usize,
    stop: Arc<AtomicBool>,
}

impl TcpService {
    /// Binds `bind` and starts `threads` acceptors, each serving one
    /// connection at a time with `handler`.
    pub(crate) fn start(
        bind: SocketAddr,
        threads: usize,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
        Self::serve(listener, threads, handler)
    }

    /// As [`TcpService::start`], on a listener bound earlier.
    pub(crate) fn serve(
        listener: TcpListener,
        threads: usize,
        handler: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        for _ in 0..threads {
            let listener = listener.try_clone()?;
            let (stop, handler) = (Arc::clone(&stop), Arc::clone(&handler));
            thread::spawn(move || {
                while let Ok((stream, _)) = listener.accept() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    handler(stream);
                }
            });
        }
        Ok(Self {
            addr,
            threads,
            stop,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // One connection per acceptor: each takes one and sees the flag.
        for _ in 0..self.threads {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
    }
}

/// The files the HTTP server serves.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// The HTML of `/page.html`.
    pub(crate) page: String,
    /// `/small`: this many bytes of the pattern [`SMALL_SEED`].
    pub(crate) small_len: u64,
    /// `/big`: this many bytes of the pattern [`BIG_SEED`].
    pub(crate) big_len: u64,
    /// The pattern of `/small`.
    pub(crate) small: Pattern,
    /// The pattern of `/big`.
    pub(crate) big: Pattern,
}

/// The seed of `/small`.
pub(crate) const SMALL_SEED: u64 = 11;
/// The seed of `/big`.
pub(crate) const BIG_SEED: u64 = 12;

/// A small threaded HTTP/1.1 server: GET only, one request per connection.
pub(crate) struct HttpServer {
    services: Vec<TcpService>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Serves `site` on `127.0.0.1:0` and, on the same port, `[::1]` when
    /// the host has IPv6 loopback (so `localhost` works whichever address
    /// the proxy tries first).
    pub(crate) fn start(site: Site) -> anyhow::Result<Self> {
        Self::start_on(site, true)
    }

    /// Serves `site` on `127.0.0.1:0` only, leaving `[::1]` on its port to
    /// the caller (the Happy Eyeballs scenario puts a silent listener there).
    pub(crate) fn start_v4_only(site: Site) -> anyhow::Result<Self> {
        Self::start_on(site, false)
    }

    fn start_on(site: Site, with_v6: bool) -> anyhow::Result<Self> {
        let site = Arc::new(site);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let make = || {
            let (site, requests) = (Arc::clone(&site), Arc::clone(&requests));
            move |stream: TcpStream| {
                let _ = serve_http(stream, &site, &requests);
            }
        };
        let v4 = TcpService::start(SocketAddr::from(([127, 0, 0, 1], 0)), 16, make())?;
        let mut services = vec![];
        let v6_bind = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], v4.addr().port()));
        services.push(v4);
        if !with_v6 {
            return Ok(Self { services, requests });
        }
        if let Ok(v6) = TcpService::start(v6_bind, 8, make()) {
            services.push(v6);
        }
        Ok(Self { services, requests })
    }

    /// The port (the same on both addresses).
    pub(crate) fn port(&self) -> u16 {
        self.services.first().map_or(0, |s| s.addr().port())
    }

    /// The request lines served so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn serve_http(mut stream: TcpStream, site: &Site, log: &Mutex<Vec<String>>) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&head);
    let request_line = text.lines().next().unwrap_or_default().to_owned();
    if let Ok(mut log) = log.lock() {
        log.push(request_line.clone());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split('?').next().unwrap_or_default();
    enum Body<'a> {
        Text(&'a str, &'static str),
        Pattern(Pattern, u64),
    }
    let body = match (method, path) {
        ("GET" | "HEAD", "/page.html" | "/") => Body::Text(&site.page, "text/html; charset=utf-8"),
        ("GET" | "HEAD", "/small") => Body::Pattern(site.small.clone(), site.small_len),
        ("GET" | "HEAD", "/big") => Body::Pattern(site.big.clone(), site.big_len),
        _ => Body::Text("not found\n", "text/plain"),
    };
    let (status, kind, len) = match &body {
        Body::Text(text, kind) if text.starts_with("not found") => {
            ("404 Not Found", *kind, text.len() as u64)
        }
        Body::Text(text, kind) => ("200 OK", *kind, text.len() as u64),
        Body::Pattern(_, len) => ("200 OK", "application/octet-stream", *len),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        match body {
            Body::Text(text, _) => stream.write_all(text.as_bytes())?,
            Body::Pattern(pattern, len) => {
                let mut chunk = vec![0u8; 256 * 1024];
                let mut sent = 0u64;
                while sent < len {
                    let n = (len - sent).min(chunk.len() as u64) as usize;
                    let part = chunk.get_mut(..n).unwrap_or_default();
                    pattern.fill(sent, part);
                    stream.write_all(part)?;
                    sent += n as u64;
                }
            }
        }
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    // Let the client close first, so it never sees a reset.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// A TCP sink that checks each connection against a pattern and reports it.
pub(crate) struct CheckingSink {
    service: TcpService,
    results: Receiver<io::Result<Checked>>,
}

impl CheckingSink {
    /// Reads each connection to its end through a [`Verifier`] of `pattern`.
    pub(crate) fn start(pattern: Pattern) -> anyhow::Result<Self> {
        let (tx, results) = mpsc::channel();
        let tx = Mutex::new(tx);
        let service = TcpService::start(SocketAddr::from(([127, 0, 0, 1], 0)), 4, move |stream| {
            let checked = Verifier::new(pattern.clone()).consume(&stream);
            let _ = stream.shutdown(Shutdown::Both);
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(checked);
            }
        })?;
        Ok(Self { service, results })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.service.addr()
    }

    /// The next connection's verdict, waiting up to `timeout`.
    pub(crate) fn next(&self, timeout: Duration) -> anyhow::Result<Checked> {
        let checked = self
            .results
            .recv_timeout(timeout)
            .context("the sink received no connection")?;
        checked.context("the sink's connection failed")
    }
}

/// A TCP sink that reads and discards, counting the bytes.
pub(crate) fn discard_sink(threads: usize) -> anyhow::Result<(TcpService, Arc<AtomicU64>)> {
    let total = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&total);
    let service = TcpService::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        threads,
        move |mut stream| {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = stream.shutdown(Shutdown::Both);
        },
    )?;
    Ok((service, total))
}

/// A TCP echo server: each connection gets its bytes back until it closes.
pub(crate) fn echo_server(threads: usize) -> anyhow::Result<TcpService> {
    let bind = SocketAddr::from(([127, 0, 0, 1], 0));
    echo_on(
        TcpListener::bind(bind).with_context(|| format!("cannot bind {bind}"))?,
        threads,
    )
}

/// An echo server on `listener` (bound earlier), `threads` connections at a time.
pub(crate) fn echo_on(listener: TcpListener, threads: usize) -> anyhow::Result<TcpService> {
    TcpService::serve(listener, threads, |mut stream| {
        let _ = stream.set_nodelay(true);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                break;
            }
        }
    })
}

/// An echo server on `listener` (bound earlier) that answers one read and then closes:
/// the server's side closes first, as an HTTP/1.0 server does. The tunnel benchmark uses it
/// so that no TIME_WAIT socket holds an ephemeral port: the side that closes first keeps the
/// TIME_WAIT, and here that is the target's and the proxy's listening port. (With the client
/// closing first, tens of thousands of TIME_WAIT sockets filled loopback's 28,000 ephemeral
/// ports and every later connect(2) of every subject searched longer: direct loopback fell
/// from 22,000 to 4,400 connections/s from one round to the next.)
pub(crate) fn echo_once_on(listener: TcpListener, threads: usize) -> anyhow::Result<TcpService> {
    TcpService::serve(listener, threads, |mut stream| {
        let _ = stream.set_nodelay(true);
        let mut buf = [0u8; 1024];
        if let Ok(n @ 1..) = stream.read(&mut buf) {
            let _ = stream.write_all(buf.get(..n).unwrap_or_default());
        }
    })
}

/// A server that accepts and holds every connection until dropped.
pub(crate) fn hold_server() -> anyhow::Result<(TcpService, Arc<Mutex<Vec<TcpStream>>>)> {
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    let service = TcpService::start(SocketAddr::from(([127, 0, 0, 1], 0)), 4, move |stream| {
        if let Ok(mut keep) = keep.lock() {
            keep.push(stream);
        }
    })?;
    Ok((service, held))
}

/// A UDP echo server; ends when dropped.
pub(crate) struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
}

impl UdpEcho {
    /// Binds `127.0.0.1:0` and echoes every datagram to its sender.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&echoed));
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && socket
                        .send_to(buf.get(..n).unwrap_or_default(), from)
                        .is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { addr, stop, echoed })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams echoed so far.
    pub(crate) fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_ranges_agree_with_the_whole() {
        let pattern = Pattern::new(7);
        let whole = pattern.bytes(PERIOD * 2 + 100);
        let mut part = vec![0u8; PERIOD + 37];
        pattern.fill(13, &mut part);
        assert_eq!(part, whole[13..13 + PERIOD + 37]);
        assert_eq!(whole[..100], whole[PERIOD..PERIOD + 100]);
        let mut verifier = Verifier::new(pattern.clone());
        verifier.update(&whole[..5]);
        verifier.update(&whole[5..PERIOD + 3]);
        verifier.update(&whole[PERIOD + 3..]);
        assert_eq!(
            verifier.finish(),
            Checked {
                len: whole.len() as u64,
                first_mismatch: None
            }
        );
        let mut bad = whole.clone();
        bad[PERIOD + 9] ^= 1;
        let mut verifier = Verifier::new(pattern);
        verifier.update(&bad[..PERIOD]);
        verifier.update(&bad[PERIOD..]);
        assert_eq!(verifier.finish().first_mismatch, Some(PERIOD as u64 + 9));
    }
}

//! The test server, peers (TCP and UDP echo), raw SOCKS helpers and the `within` timeout.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socks5::{
    ResolveFuture, Resolver, ServerOptions, ServerOptionsBuilder, SessionReport, StaticResolver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The default bound on a network await in these tests.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

pub(crate) use testkit::within;

/// Names the test resolver knows: `echo.test` is 127.0.0.1, `v6.test` is ::1,
/// `both.test` is 127.0.0.2 then 127.0.0.1, `slow.test` never answers; anything else does
/// not exist.
#[derive(Debug)]
pub(crate) struct TestResolver(StaticResolver);

impl TestResolver {
    pub(crate) fn new() -> Self {
        let localhost = IpAddr::from(Ipv4Addr::LOCALHOST);
        TestResolver(StaticResolver::new([
            ("echo.test".to_owned(), vec![localhost]),
            ("v6.test".to_owned(), vec!["::1".parse().expect("valid IP")]),
            (
                "both.test".to_owned(),
                vec![IpAddr::from([127, 0, 0, 2]), localhost],
            ),
        ]))
    }
}

impl Resolver for TestResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        if host == "slow.test" {
            return Box::pin(std::future::pending());
        }
        self.0.resolve(host, port)
    }
}

/// Options for tests: the test resolver, and short timeouts that still leave a slow machine
/// plenty of room.
pub(crate) fn options() -> ServerOptions {
    builder().build()
}

/// The builder of [`options`], to change some of them.
pub(crate) fn builder() -> ServerOptionsBuilder {
    ServerOptions::builder()
        .handshake_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(30))
        .bind_timeout(Duration::from_secs(5))
        .resolver(TestResolver::new())
}

/// A SOCKS5 server on 127.0.0.1:0 running `serve` for each connection.
pub(crate) struct Proxy {
    pub(crate) address: SocketAddr,
    reports: mpsc::Receiver<SessionReport>,
    pub(crate) stop: CancellationToken,
}

impl Proxy {
    pub(crate) async fn start(options: ServerOptions) -> Proxy {
        Proxy::start_on("127.0.0.1:0".parse().expect("valid"), options).await
    }

    pub(crate) async fn start_on(bind: SocketAddr, options: ServerOptions) -> Proxy {
        Proxy::start_speaking(bind, options, false).await
    }

    /// A server running `serve_socks4` for each connection.
    pub(crate) async fn start_socks4(options: ServerOptions) -> Proxy {
        let bind = "127.0.0.1:0".parse().expect("valid");
        Proxy::start_speaking(bind, options, true).await
    }

    async fn start_speaking(bind: SocketAddr, options: ServerOptions, socks4: bool) -> Proxy {
        let listener = TcpListener::bind(bind).await.expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let (sender, reports) = mpsc::channel(1024);
        let stop = CancellationToken::new();
        let options = Arc::new(options);
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = accept_stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                let (options, sender, stop) = (
                    Arc::clone(&options),
                    sender.clone(),
                    accept_stop.child_token(),
                );
                tokio::spawn(async move {
                    let report = if socks4 {
                        socks5::serve_socks4(stream, peer, &options, stop).await
                    } else {
                        socks5::serve(stream, peer, &options, stop).await
                    };
                    let _ = sender.send(report).await;
                });
            }
        });
        Proxy {
            address,
            reports,
            stop,
        }
    }

    /// The report of the next session to end.
    pub(crate) async fn report(&mut self) -> SessionReport {
        within(LIMIT, self.reports.recv())
            .await
            .expect("the server is running")
    }
}

/// A TCP echo server: echoes until EOF, then half-closes.
pub(crate) async fn echo_server(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind echo");
    let address = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// A UDP echo server on 127.0.0.1; returns its address.
pub(crate) async fn udp_echo() -> SocketAddr {
    udp_echo_on("127.0.0.1:0").await
}

/// A UDP echo server on `bind`; returns its address.
pub(crate) async fn udp_echo_on(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.expect("bind UDP echo");
    let address = socket.local_addr().expect("UDP echo address");
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket
                .send_to(buf.get(..len).unwrap_or_default(), from)
                .await;
        }
    });
    address
}

/// Whether this machine has ::1.
pub(crate) fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Connects to the proxy and says hello with no authentication; returns the stream after the
/// server chose X'00'.
pub(crate) async fn greeted(proxy: SocketAddr) -> TcpStream {
    let mut stream = within(LIMIT, TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    within(LIMIT, stream.write_all(&[5, 1, 0]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 0]);
    stream
}

/// Reads exactly `N` bytes.
pub(crate) async fn read_exactly<const N: usize>(stream: &mut TcpStream) -> [u8; N] {
    let mut buf = [0; N];
    within(LIMIT, stream.read_exact(&mut buf))
        .await
        .expect("read");
    buf
}

/// Asserts that the peer closes: the next read returns 0.
pub(crate) async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let n = within(LIMIT, stream.read(&mut buf))
        .await
        .expect("read until close");
    assert_eq!(n, 0, "expected a close, got {:02x?}", buf.get(..n));
}

/// Reads a reply with an IPv4 BND address; returns REP and BND.
pub(crate) async fn read_reply_v4(stream: &mut TcpStream) -> (u8, SocketAddr) {
    let reply = read_exactly::<10>(stream).await;
    assert_eq!(reply[0], 5, "VER of {reply:02x?}");
    assert_eq!(reply[3], 1, "ATYP of {reply:02x?}");
    let ip = Ipv4Addr::new(reply[4], reply[5], reply[6], reply[7]);
    (
        reply[1],
        SocketAddr::from((ip, u16::from_be_bytes([reply[8], reply[9]]))),
    )
}

/// A CONNECT request for an IPv4 address.
pub(crate) fn connect_v4(target: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(target) = target else {
        panic!("IPv4 target expected")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&target.ip().octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    request
}

/// Checksums bytes, independently of how they were split into chunks (FNV-1a, 64 bits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checksum(pub(crate) u64);

impl Checksum {
    pub(crate) fn new() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Makes `io::Result` readable in test bodies.
pub(crate) type IoResult<T = ()> = io::Result<T>;

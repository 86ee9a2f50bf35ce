//! Happy Eyeballs on loopback: a name with an IPv6 and an IPv4 address, where the IPv6 one
//! does not answer (a listener whose accept queue is full: Linux drops the SYNs), refuses, or
//! is denied by the rules.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use socks5::{Action, ResolveFuture, Resolver, Rule, Rules, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{LIMIT, Proxy, builder, greeted, has_ipv6_loopback, read_exactly, within};

/// `he.test` is `v6` then `v4`, each with its own port.
#[derive(Debug)]
struct Dual {
    v6: SocketAddr,
    v4: SocketAddr,
}

impl Resolver for Dual {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> ResolveFuture<'a> {
        let found = if host == "he.test" {
            Ok(vec![self.v6, self.v4])
        } else {
            Err(io::ErrorKind::NotFound.into())
        };
        Box::pin(std::future::ready(found))
    }
}

/// A server on `bind` that writes `banner` to each connection and closes.
async fn banner_server(bind: &str, banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(banner).await;
        }
    });
    address
}

/// A listener on ::1 whose accept queue is full, so that a new connection to it hangs (its
/// SYNs are dropped); returned with the connection that fills the queue, to keep both open.
fn silent_v6() -> (Socket, std::net::TcpStream, SocketAddr) {
    let listener = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "[::1]:0".parse().expect("valid");
    listener.bind(&any.into()).expect("bind");
    listener.listen(0).expect("listen");
    let address = listener
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("an IP address");
    let filler = std::net::TcpStream::connect_timeout(&address, LIMIT).expect("fill the queue");
    (listener, filler, address)
}

/// Whether a connection to `address` hangs (rather than being refused, as it would with
/// `net.ipv4.tcp_abort_on_overflow = 1`).
fn hangs(address: SocketAddr) -> bool {
    let probe = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200));
    matches!(probe, Err(error) if error.kind() == io::ErrorKind::TimedOut)
}

/// An address on ::1 where nothing listens: a connection is refused at once.
fn refusing_v6() -> SocketAddr {
    let listener = std::net::TcpListener::bind("[::1]:0").expect("bind");
    listener.local_addr().expect("address")
}

fn options(dual: Dual, delay: Duration, rules: Rules) -> ServerOptions {
    builder()
        .resolver(dual)
        .happy_eyeballs_delay(delay)
        .connect_timeout(Duration::from_secs(60))
        .rules(rules)
        .build()
}

/// CONNECTs to `he.test`; returns REP, and the server's first bytes when it succeeded, and
/// how long the reply took.
async fn connect_he(proxy: SocketAddr) -> (u8, Vec<u8>, Duration) {
    let mut stream = greeted(proxy).await;
    let mut request = vec![5, 1, 0, 3, 7];
    request.extend_from_slice(b"he.test");
    request.extend_from_slice(&80u16.to_be_bytes());
    let asked = Instant::now();
    within(LIMIT, stream.write_all(&request))
        .await
        .expect("request");
    let head = read_exactly::<4>(&mut stream).await;
    let took = asked.elapsed();
    let rest = if head[3] == 4 { 16 + 2 } else { 4 + 2 };
    let mut bound = vec![0; rest];
    within(LIMIT, stream.read_exact(&mut bound))
        .await
        .expect("BND");
    let mut banner = Vec::new();
    if head[1] == 0 {
        within(LIMIT, stream.read_to_end(&mut banner))
            .await
            .expect("the target's banner");
    }
    (head[1], banner, took)
}

/// The IPv6 address stays silent: IPv4 connects once the delay passed, long before the
/// connect timeout (60 s; `within` gives up after 10 s).
#[tokio::test]
async fn a_silent_ipv6_address_holds_ipv4_back_by_the_delay_only() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let (_listener, _filler, v6) = silent_v6();
    if !hangs(v6) {
        eprintln!("skipped: a full accept queue does not drop SYNs here");
        return;
    }
    let v4 = banner_server("127.0.0.1:0", b"v4").await;
    let delay = Duration::from_millis(300);
    let mut proxy = Proxy::start(options(Dual { v6, v4 }, delay, Rules::default())).await;
    let (reply, banner, took) = connect_he(proxy.address).await;
    assert_eq!((reply, &banner[..]), (0, &b"v4"[..]));
    assert!(took >= delay, "IPv4 started before the delay: {took:?}");
    let report = proxy.report().await;
    assert!(report.error.is_none(), "{:?}", report.error);
}

/// The IPv6 address refuses: IPv4 is tried at once, not after the delay (30 s here).
#[tokio::test]
async fn a_refusing_ipv6_address_hands_over_to_ipv4_at_once() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let v6 = refusing_v6();
    let v4 = banner_server("127.0.0.1:0", b"v4").await;
    let delay = Duration::from_secs(30);
    let proxy = Proxy::start(options(Dual { v6, v4 }, delay, Rules::default())).await;
    let (reply, banner, took) = connect_he(proxy.address).await;
    assert_eq!((reply, &banner[..]), (0, &b"v4"[..]));
    assert!(took < delay, "{took:?}");
}

/// Both refuse: X'05'.
#[tokio::test]
async fn when_both_refuse_the_reply_is_connection_refused() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let v6 = refusing_v6();
    let v4 = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let delay = Duration::from_millis(250);
    let mut proxy = Proxy::start(options(Dual { v6, v4 }, delay, Rules::default())).await;
    let (reply, _, _) = connect_he(proxy.address).await;
    assert_eq!(reply, 0x05);
    let report = proxy.report().await;
    assert_eq!(report.reply, Some(socks5::Reply::ConnectionRefused));
}

/// The rules deny ::1: it is never attempted, although it would answer first (it comes
/// first and the delay is long).
#[tokio::test]
async fn a_denied_address_is_never_attempted() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let v6 = banner_server("[::1]:0", b"v6").await;
    let v4 = banner_server("127.0.0.1:0", b"v4").await;
    let rules = Rules {
        rules: vec![Rule {
            destinations: vec!["::1/128".parse().expect("valid")],
            ..Rule::new(Action::Deny)
        }],
        default: Action::Allow,
    };
    let delay = Duration::from_secs(30);
    let proxy = Proxy::start(options(Dual { v6, v4 }, delay, rules)).await;
    let (reply, banner, _) = connect_he(proxy.address).await;
    assert_eq!((reply, &banner[..]), (0, &b"v4"[..]));
}

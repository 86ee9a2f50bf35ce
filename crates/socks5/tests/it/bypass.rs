//! The rule bypass table (issue 7, item 2 and part B): against a rule denying loopback, every
//! way of writing this host (as an IP and as a name, through a test resolver and through the
//! system resolver) is refused for CONNECT, BIND and UDP, and the loopback services never see
//! a connection or a datagram. Also: a CONNECT to the proxy's own listening address, and a
//! client the rules deny everything (item 8).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use socks5::{
    Action, Error, Reply, Resolver, Rule, Rules, ServerOptions, StaticResolver, SystemResolver,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::{
    LIMIT, Proxy, builder, greeted, has_ipv6_loopback, options, read_exactly, udp_echo, within,
};

/// Every way of writing this host that parses as an IP: sent as ATYP 1 or 4, and as a name.
const IP_FORMS: [&str; 14] = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "::",
    "::1",
    "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:0.0.0.0",
    "::127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "ff02::1",
    "::ffff:224.0.0.1",
];

/// Names that are not IP literals to `std` but that resolvers turn into this host (inet_aton
/// forms, the bracketed literal, localhost in any spelling), and test names that a resolver
/// maps to loopback, unspecified, IPv4-mapped, multicast and broadcast addresses.
const NAMES: [&str; 20] = [
    "127.1",
    "127.0.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0",
    "[::]",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "zero.test",
    "v6-zero.test",
    "mapped-loopback.test",
    "mapped-zero.test",
    "compatible.test",
    "multicast.test",
    "broadcast.test",
    "mixed.test",
];

/// What the names above resolve to, as a system resolver would answer (the inet_aton forms)
/// and for the test names.
fn test_resolver() -> StaticResolver {
    let ip = |text: &str| text.parse::<IpAddr>().expect("valid IP");
    let loopback = || vec![ip("127.0.0.1")];
    StaticResolver::new(
        [
            ("127.1", loopback()),
            ("127.0.1", loopback()),
            ("0x7f000001", loopback()),
            ("2130706433", loopback()),
            ("017700000001", loopback()),
            ("0", vec![ip("0.0.0.0")]),
            ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
            ("zero.test", vec![ip("0.0.0.0")]),
            ("v6-zero.test", vec![ip("::")]),
            ("mapped-loopback.test", vec![ip("::ffff:127.0.0.1")]),
            ("mapped-zero.test", vec![ip("::ffff:0.0.0.0")]),
            ("compatible.test", vec![ip("::127.0.0.1")]),
            ("multicast.test", vec![ip("224.0.0.1"), ip("ff02::1")]),
            ("broadcast.test", vec![ip("255.255.255.255")]),
            (
                "mixed.test",
                vec![ip("224.0.0.1"), ip("0.0.0.0"), ip("::"), ip("127.0.0.2")],
            ),
        ]
        .map(|(name, ips)| (name.to_owned(), ips)),
    )
}

/// The numeric forms that getaddrinfo(3) turns into an address itself (inet_aton), without
/// asking any name server: for the run with the system resolver.
const SYSTEM_NAMES: [&str; 6] = [
    "127.1",
    "127.0.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0",
];

/// A destination as the request carries it.
#[derive(Debug, Clone, Copy)]
enum Dst<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// Every destination of the table: each IP form as an IP and as a name, and every name.
fn destinations<'a>(names: &[&'a str]) -> Vec<Dst<'a>> {
    let mut all: Vec<Dst<'a>> = IP_FORMS
        .iter()
        .map(|text| Dst::Ip(text.parse().expect("valid IP")))
        .collect();
    all.extend(IP_FORMS.iter().map(|&text| Dst::Name(text)));
    all.extend(names.iter().map(|&name| Dst::Name(name)));
    all
}

/// ATYP, ADDR and PORT of `dst`.
fn encode(dst: Dst<'_>, port: u16) -> Vec<u8> {
    let mut out = match dst {
        Dst::Ip(IpAddr::V4(ip)) => [&[1][..], &ip.octets()].concat(),
        Dst::Ip(IpAddr::V6(ip)) => [&[4][..], &ip.octets()].concat(),
        Dst::Name(name) => {
            let len = u8::try_from(name.len()).expect("short name");
            [&[3, len][..], name.as_bytes()].concat()
        }
    };
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// Loopback services that must never be reached: TCP and UDP, on 127.0.0.1 and (where the
/// machine has it) ::1, each protocol on one port for both families, since an unspecified
/// destination reaches the loopback address of its own family. Plain non-blocking sockets, so
/// that looking at them is one system call, never a wait.
struct Victims {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    tcp_port: u16,
    udp_port: u16,
}

impl Victims {
    fn start() -> Victims {
        let v6 = has_ipv6_loopback();
        for _ in 0..50 {
            let tcp_v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let tcp_port = tcp_v4.local_addr().expect("address").port();
            let udp_v4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let udp_port = udp_v4.local_addr().expect("address").port();
            let mut victims = Victims {
                tcp: vec![tcp_v4],
                udp: vec![udp_v4],
                tcp_port,
                udp_port,
            };
            if v6 {
                // The same ports on ::1 may be taken; then try other ports.
                let (Ok(tcp_v6), Ok(udp_v6)) = (
                    std::net::TcpListener::bind(("::1", tcp_port)),
                    std::net::UdpSocket::bind(("::1", udp_port)),
                ) else {
                    continue;
                };
                victims.tcp.push(tcp_v6);
                victims.udp.push(udp_v6);
            }
            for listener in &victims.tcp {
                listener.set_nonblocking(true).expect("non-blocking");
            }
            for socket in &victims.udp {
                socket.set_nonblocking(true).expect("non-blocking");
            }
            return victims;
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    }

    /// What reached the services since the last look: connections waiting to be accepted
    /// and datagrams to be read (taken, so that the next look starts afresh). A connection the
    /// proxy made is complete before the proxy replies, so it is already queued when the reply
    /// has come.
    fn touched(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for listener in &self.tcp {
            loop {
                match listener.accept() {
                    Ok((_, peer)) => seen.push(format!("a connection from {peer}")),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("accept on a loopback service: {error}"),
                }
            }
        }
        let mut buf = [0; 64];
        for socket in &self.udp {
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) => seen.push(format!("a datagram from {from}")),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("recv on a loopback service: {error}"),
                }
            }
        }
        seen
    }
}

/// Denies loopback (`127.0.0.0/8`, `::1`) to everybody; lets UDP reach `sentinel_port` on
/// 127.0.0.1 only, so that an answer from there shows that the datagrams before it were
/// handled.
fn deny_loopback(sentinel_port: u16, resolver: Arc<dyn Resolver>) -> ServerOptions {
    let net = |text: &str| text.parse().expect("valid network");
    builder()
        .rules(Rules {
            rules: vec![
                Rule {
                    destinations: vec![net("127.0.0.1/32")],
                    ports: vec![sentinel_port..=sentinel_port],
                    ..Rule::new(Action::Allow)
                },
                Rule {
                    destinations: vec![net("127.0.0.0/8"), net("::1/128")],
                    ..Rule::new(Action::Deny)
                },
            ],
            default: Action::Allow,
        })
        .shared_resolver(resolver)
        .build()
}

/// Sends `request` on a fresh session; returns the stream, REP and BND.
async fn request(proxy: SocketAddr, request: &[u8]) -> (TcpStream, u8, SocketAddr) {
    let mut stream = greeted(proxy).await;
    within(LIMIT, stream.write_all(request))
        .await
        .expect("request");
    let (reply, bound) = read_reply(&mut stream).await;
    (stream, reply, bound)
}

/// Reads a reply with an IPv4 or IPv6 BND (a CONNECT that got through to ::1 has an IPv6
/// one); returns REP and BND.
async fn read_reply(stream: &mut TcpStream) -> (u8, SocketAddr) {
    let [version, reply, _, atyp] = read_exactly::<4>(stream).await;
    assert_eq!(version, 5, "VER");
    let ip = match atyp {
        1 => IpAddr::from(read_exactly::<4>(stream).await),
        4 => IpAddr::from(read_exactly::<16>(stream).await),
        other => panic!("ATYP {other} in a reply"),
    };
    let port = u16::from_be_bytes(read_exactly::<2>(stream).await);
    (reply, SocketAddr::new(ip, port))
}

/// Whether BIND may take `dst` as "any peer": an unspecified IP, in any spelling that is an
/// IP literal (RFC 1928 clients send 0.0.0.0 when they do not know the peer).
fn any_peer(dst: Dst<'_>) -> bool {
    let ip = match dst {
        Dst::Ip(ip) => ip,
        Dst::Name(name) => {
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return false,
            }
        }
    };
    ip.to_canonical().is_unspecified()
}

/// Runs the whole table against a proxy with `resolver`, for `names`, and fails listing every
/// way that got through.
async fn refuse_every_way(resolver: Arc<dyn Resolver>, names: &[&str]) {
    let victims = Victims::start();
    let sentinel = udp_echo().await;
    let proxy = Proxy::start(deny_loopback(sentinel.port(), resolver)).await;
    let table = destinations(names);
    let mut failures = Vec::new();

    for &dst in &table {
        let (_stream, reply, _) = request(
            proxy.address,
            &[&[5, 1, 0][..], &encode(dst, victims.tcp_port)].concat(),
        )
        .await;
        if reply != 2 {
            failures.push(format!("CONNECT {dst:?}: reply {reply}"));
        }
        for seen in victims.touched() {
            failures.push(format!("CONNECT {dst:?}: the loopback service saw {seen}"));
        }
    }

    for &dst in &table {
        let (mut stream, reply, bound) = request(
            proxy.address,
            &[&[5, 2, 0][..], &encode(dst, victims.tcp_port)].concat(),
        )
        .await;
        if reply == 0 && any_peer(dst) {
            // "Any peer": the peer that comes, from loopback, is what the rules judge.
            let _peer = within(LIMIT, TcpStream::connect(bound))
                .await
                .expect("peer connects");
            let (second, _) = read_reply(&mut stream).await;
            if second != 2 {
                failures.push(format!("BIND {dst:?}: second reply {second}"));
            }
        } else if reply != 2 {
            failures.push(format!("BIND {dst:?}: reply {reply}"));
        }
    }

    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut control = greeted(proxy.address).await;
    let mut associate = vec![5, 3, 0, 1, 127, 0, 0, 1];
    associate.extend_from_slice(&client.local_addr().expect("address").port().to_be_bytes());
    within(LIMIT, control.write_all(&associate))
        .await
        .expect("request");
    let (reply, relay) = read_reply(&mut control).await;
    assert_eq!(reply, 0, "UDP ASSOCIATE");
    let probe = [
        &[0, 0, 0][..],
        &encode(Dst::Ip(Ipv4Addr::LOCALHOST.into()), sentinel.port()),
        b"probe",
    ]
    .concat();
    let mut buf = [0; 256];
    for &dst in &table {
        let datagram = [&[0, 0, 0][..], &encode(dst, victims.udp_port), b"x"].concat();
        within(LIMIT, client.send_to(&datagram, relay))
            .await
            .expect("send");
        // The answer to a probe sent next shows that the relay has handled the datagram.
        within(LIMIT, client.send_to(&probe, relay))
            .await
            .expect("send");
        let (len, _) = within(LIMIT, client.recv_from(&mut buf))
            .await
            .expect("the probe's answer");
        if !buf.get(..len).is_some_and(|d| d.ends_with(b"probe")) {
            failures.push(format!(
                "UDP {dst:?}: an answer came back: {:02x?}",
                buf.get(..len)
            ));
            continue;
        }
        for seen in victims.touched() {
            failures.push(format!("UDP {dst:?}: the loopback service saw {seen}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {} requests:\n{}",
        failures.len(),
        table.len() * 3,
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_way_to_write_this_host_is_refused_through_the_test_resolver() {
    refuse_every_way(Arc::new(test_resolver()), &NAMES).await;
}

#[tokio::test]
async fn every_numeric_form_is_refused_through_the_system_resolver() {
    refuse_every_way(Arc::new(SystemResolver), &SYSTEM_NAMES).await;
}

#[tokio::test]
async fn a_connect_to_the_proxys_own_address_is_refused() {
    let mut proxy = Proxy::start(options()).await;
    let (stream, reply, _) = request(
        proxy.address,
        &[
            &[5, 1, 0][..],
            &encode(Dst::Ip(proxy.address.ip()), proxy.address.port()),
        ]
        .concat(),
    )
    .await;
    drop(stream);
    assert_eq!(reply, 2);
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::OwnAddress { address }) if address == proxy.address),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn a_connect_to_any_loopback_address_with_a_wildcard_listeners_port_is_refused() {
    // As if the listener were bound to 0.0.0.0 (tests stay on loopback): 127.0.0.2 and ::1
    // with its port would reach it.
    let mut proxy = Proxy::start(
        builder()
            .listen_addresses(vec!["0.0.0.0:0".parse().expect("valid")])
            .build(),
    )
    .await;
    let port = proxy.address.port();
    for dst in ["127.0.0.2", "::1", "::ffff:127.0.0.3"] {
        let (stream, reply, _) = request(
            proxy.address,
            &[&[5, 1, 0][..], &encode(Dst::Name(dst), port)].concat(),
        )
        .await;
        drop(stream);
        assert_eq!(reply, 2, "{dst}");
        let report = proxy.report().await;
        assert!(
            matches!(report.error, Some(Error::OwnAddress { .. })),
            "{dst}: {:?}",
            report.error
        );
    }
}

#[tokio::test]
async fn a_client_denied_everything_gets_no_bind_listener_and_no_udp_socket() {
    let options = builder()
        .rules(Rules {
            rules: vec![Rule {
                clients: vec!["127.0.0.0/8".parse().expect("valid")],
                ..Rule::new(Action::Deny)
            }],
            default: Action::Allow,
        })
        .build();
    let mut proxy = Proxy::start(options).await;
    for command in [2, 3] {
        let (stream, reply, bound) = request(
            proxy.address,
            &[
                &[5, command, 0][..],
                &encode(Dst::Ip(Ipv4Addr::UNSPECIFIED.into()), 0),
            ]
            .concat(),
        )
        .await;
        drop(stream);
        assert_eq!((reply, bound.port()), (2, 0), "command {command}");
        let report = proxy.report().await;
        assert_eq!(report.reply, Some(Reply::NotAllowed));
        assert!(
            matches!(report.error, Some(Error::ClientDenied { client }) if client.is_loopback()),
            "command {command}: {:?}",
            report.error
        );
    }
}

/// This host's address on its default route, if it has one (a UDP connect sends nothing).
fn primary_address() -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("198.51.100.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}

/// With `outbound_bind` set, the source of a connection to a local address is the bind
/// address, not the destination: the loop must still be recognised, before connecting.
#[tokio::test]
async fn a_connect_to_a_local_address_with_a_wildcard_listeners_port_is_refused_whatever_the_outbound_bind()
 {
    let Some(local) = primary_address() else {
        eprintln!("skipped: this machine has no address besides loopback");
        return;
    };
    let mut proxy = Proxy::start_on(
        "0.0.0.0:0".parse().expect("valid"),
        builder()
            .listen_addresses(vec!["0.0.0.0:0".parse().expect("valid")])
            .outbound_bind(Some("127.0.0.2".parse().expect("valid")))
            .build(),
    )
    .await;
    let port = proxy.address.port();
    let via: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let (stream, reply, _) = request(
        via,
        &[&[5, 1, 0][..], &encode(Dst::Ip(local), port)].concat(),
    )
    .await;
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(
        reply, 2,
        "CONNECT {local}:{port} through its own listener was served: {report:?}"
    );
    assert!(
        matches!(report.error, Some(Error::OwnAddress { .. })),
        "{report:?}"
    );
}

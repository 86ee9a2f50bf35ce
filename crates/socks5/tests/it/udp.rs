//! UDP ASSOCIATE: the round trip with its header, domains, drops, and the association's end.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socks5::client::UdpAssociation;
use socks5::{Address, Command, Error, ResolveFuture, Resolver, ServerOptions, StaticResolver};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::harness::{
    LIMIT, Proxy, builder, greeted, has_ipv6_loopback, options, read_exactly, read_reply_v4,
    udp_echo, udp_echo_on, within,
};

/// A UDP echo that answers `[n] + payload`, n counting the datagrams it has seen, so a test can
/// tell whether a datagram it expected to be dropped got through.
async fn counting_echo() -> SocketAddr {
    counting_echo_on("127.0.0.1:0").await
}

/// [`counting_echo`] on `bind`.
async fn counting_echo_on(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.expect("bind");
    let address = socket.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        let mut seen = 0_u8;
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            seen = seen.wrapping_add(1);
            let mut answer = vec![seen];
            answer.extend_from_slice(buf.get(..len).unwrap_or_default());
            let _ = socket.send_to(&answer, from).await;
        }
    });
    address
}

/// A raw association: the control stream, the client's UDP socket and the relay address.
async fn raw_association(proxy: SocketAddr) -> (TcpStream, UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = socket.local_addr().expect("address");
    let mut control = greeted(proxy).await;
    let mut request = vec![5, 3, 0, 1, 127, 0, 0, 1];
    request.extend_from_slice(&local.port().to_be_bytes());
    within(LIMIT, control.write_all(&request))
        .await
        .expect("request");
    let (reply, relay) = read_reply_v4(&mut control).await;
    assert_eq!(reply, 0);
    assert_eq!(
        relay.ip(),
        proxy.ip(),
        "the relay is on the address the client reached"
    );
    (control, socket, relay)
}

fn datagram(frag: u8, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(target) = target else {
        panic!("IPv4 expected")
    };
    let mut out = vec![0, 0, frag, 1];
    out.extend_from_slice(&target.ip().octets());
    out.extend_from_slice(&target.port().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65536];
    let (len, from) = within(LIMIT, socket.recv_from(&mut buf))
        .await
        .expect("datagram");
    buf.truncate(len);
    (buf, from)
}

#[tokio::test]
async fn relays_a_datagram_and_its_answer_with_the_source_header() {
    let proxy = Proxy::start(options()).await;
    let echo = udp_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    within(LIMIT, socket.send_to(&datagram(0, echo, b"ping"), relay))
        .await
        .expect("send");
    let (answer, from) = receive(&socket).await;
    assert_eq!(from, relay);
    assert_eq!(
        answer,
        datagram(0, echo, b"ping"),
        "RSV, FRAG 0, the echo's address, DATA"
    );
}

#[tokio::test]
async fn client_relays_to_ip_and_domain_targets() {
    let mut proxy = Proxy::start(options()).await;
    let echo = udp_echo().await;
    let association = within(LIMIT, UdpAssociation::associate(proxy.address, None, LIMIT))
        .await
        .expect("associate");
    let mut buf = vec![0; 2048];
    for target in [
        Address::Ip(echo),
        Address::Domain("echo.test".into(), echo.port()),
    ] {
        within(LIMIT, association.send_to(&target, b"hello"))
            .await
            .expect("send");
        let (source, len) = within(LIMIT, association.recv_from(&mut buf))
            .await
            .expect("receive");
        assert_eq!(
            source,
            Address::Ip(echo),
            "the answer names its source by IP"
        );
        assert_eq!(&buf[..len], b"hello");
    }
    drop(association); // closes the control connection, which ends the association
    let report = proxy.report().await;
    assert_eq!(report.command, Some(Command::UdpAssociate));
    assert_eq!((report.bytes_up, report.bytes_down), (10, 10));
    assert_eq!((report.datagrams_up, report.datagrams_down), (2, 2));
    assert_eq!(report.connect_time, None, "only CONNECT opens a target");
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn drops_fragments() {
    let proxy = Proxy::start(options()).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    within(LIMIT, socket.send_to(&datagram(1, echo, b"part"), relay))
        .await
        .expect("send");
    within(LIMIT, socket.send_to(&datagram(0, echo, b"whole"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, echo, b"\x01whole"),
        "the fragment never reached the echo"
    );
}

#[tokio::test]
async fn ignores_datagrams_from_foreign_sources() {
    let proxy = Proxy::start(options()).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    within(
        LIMIT,
        stranger.send_to(&datagram(0, echo, b"foreign"), relay),
    )
    .await
    .expect("send");
    within(LIMIT, socket.send_to(&datagram(0, echo, b"mine"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, echo, b"\x01mine"),
        "the stranger's datagram was relayed"
    );
    // The stranger gets nothing back either: the client's answer above came first and only.
    within(LIMIT, stranger.send_to(b"not even a header", relay))
        .await
        .expect("send");
    within(LIMIT, socket.send_to(&datagram(0, echo, b"again"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram(0, echo, b"\x02again"));
}

#[tokio::test]
async fn ends_after_the_idle_timeout() {
    let options = builder().idle_timeout(Duration::from_millis(300)).build();
    let mut proxy = Proxy::start(options).await;
    let _association = within(LIMIT, UdpAssociation::associate(proxy.address, None, LIMIT))
        .await
        .expect("associate");
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Idle { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn drops_datagrams_to_denied_destinations() {
    let denied = counting_echo().await;
    let allowed = counting_echo().await;
    let rules = socks5::Rules {
        rules: vec![socks5::Rule {
            ports: vec![denied.port()..=denied.port()],
            ..socks5::Rule::new(socks5::Action::Deny)
        }],
        default: socks5::Action::Allow,
    };
    let options = builder().rules(rules).build();
    let proxy = Proxy::start(options).await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    within(LIMIT, socket.send_to(&datagram(0, denied, b"no"), relay))
        .await
        .expect("send");
    within(LIMIT, socket.send_to(&datagram(0, allowed, b"yes"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, allowed, b"\x01yes"),
        "only the allowed target answered"
    );
}

/// A datagram with FRAG 0 for `target` of either family (ATYP 1 or 4).
fn datagram_any(target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = match target {
        SocketAddr::V4(v4) => [&[0, 0, 0, 1][..], &v4.ip().octets()].concat(),
        SocketAddr::V6(v6) => [&[0, 0, 0, 4][..], &v6.ip().octets()].concat(),
    };
    out.extend_from_slice(&target.port().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a reply with a BND address of either family; returns REP and BND.
async fn read_reply_any(control: &mut TcpStream) -> (u8, SocketAddr) {
    let head = read_exactly::<4>(control).await;
    assert_eq!(head[0], 5, "VER of {head:02x?}");
    let ip = match head[3] {
        1 => IpAddr::from(read_exactly::<4>(control).await),
        4 => IpAddr::from(read_exactly::<16>(control).await),
        atyp => panic!("unexpected ATYP {atyp}"),
    };
    let port = u16::from_be_bytes(read_exactly::<2>(control).await);
    (head[1], SocketAddr::new(ip, port))
}

/// A raw association from a client socket on `client_bind`.
async fn raw_association_from(
    proxy: SocketAddr,
    client_bind: &str,
) -> (TcpStream, UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind(client_bind).await.expect("bind");
    let local = socket.local_addr().expect("address");
    let mut control = greeted(proxy).await;
    let mut request = vec![5, 3, 0];
    request.extend_from_slice(&datagram_any(local, b"")[3..]);
    within(LIMIT, control.write_all(&request))
        .await
        .expect("request");
    let (reply, relay) = read_reply_any(&mut control).await;
    assert_eq!(reply, 0);
    (control, socket, relay)
}

/// A client on `client_bind` sends through a proxy on `proxy_bind` to an echo on `echo_bind`:
/// the datagram goes out through a socket of the echo's family and the answer comes back from
/// the relay address, naming its source with the ATYP of its family.
async fn round_trip_across_families(proxy_bind: &str, client_bind: &str, echo_bind: &str) {
    let proxy = Proxy::start_on(proxy_bind.parse().expect("valid"), options()).await;
    let echo = udp_echo_on(echo_bind).await;
    let (_control, socket, relay) = raw_association_from(proxy.address, client_bind).await;
    within(LIMIT, socket.send_to(&datagram_any(echo, b"across"), relay))
        .await
        .expect("send");
    let (answer, from) = receive(&socket).await;
    assert_eq!(from, relay, "the answer comes from the relay address");
    assert_eq!(
        answer,
        datagram_any(echo, b"across"),
        "RSV, FRAG 0, ATYP {}, the echo's address and port, DATA",
        if echo.is_ipv6() { 4 } else { 1 }
    );
}

#[tokio::test]
async fn relays_from_an_ipv4_client_to_an_ipv6_target() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: no ::1 on this machine");
        return;
    }
    round_trip_across_families("127.0.0.1:0", "127.0.0.1:0", "[::1]:0").await;
}

#[tokio::test]
async fn relays_from_an_ipv6_client_to_an_ipv4_target() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: no ::1 on this machine");
        return;
    }
    round_trip_across_families("[::1]:0", "[::1]:0", "127.0.0.1:0").await;
}

/// An IPv4 target written as IPv4-mapped IPv6 (ATYP 4) reaches the IPv4 echo, and the answer
/// names it as IPv4 (ATYP 1).
#[tokio::test]
async fn shows_an_ipv4_mapped_target_as_ipv4() {
    let proxy = Proxy::start(options()).await;
    let echo = udp_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    let IpAddr::V4(ip) = echo.ip() else {
        panic!("IPv4 echo expected")
    };
    let mapped = SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), echo.port());
    within(
        LIMIT,
        socket.send_to(&datagram_any(mapped, b"mapped"), relay),
    )
    .await
    .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram_any(echo, b"mapped"));
}

/// A datagram with FRAG 0 for the name `host` (ATYP 3).
fn datagram_to_name(host: &str, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 3, u8::try_from(host.len()).expect("short name")];
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A lookup that never answers (`slow.test`) does not hold up the association's datagrams to
/// IP destinations. `connect_timeout` is far longer than the wait, so a datagram loop that
/// resolved inline would stall past it.
#[tokio::test]
async fn a_pending_lookup_does_not_hold_up_other_datagrams() {
    let options = builder().connect_timeout(Duration::from_secs(120)).build();
    let proxy = Proxy::start(options).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    let to_slow = datagram_to_name("slow.test", echo.port(), b"stuck");
    within(LIMIT, socket.send_to(&to_slow, relay))
        .await
        .expect("send");
    for (payload, expected) in [
        (&b"first"[..], &b"\x01first"[..]),
        (b"second", b"\x02second"),
    ] {
        within(LIMIT, socket.send_to(&datagram(0, echo, payload), relay))
            .await
            .expect("send");
        let (answer, _) = receive(&socket).await;
        assert_eq!(
            answer,
            datagram(0, echo, expected),
            "the IP datagram went through"
        );
    }
}

/// Answers from `names` once the test adds a permit to `gate` (one per lookup).
struct GatedResolver {
    gate: Arc<Semaphore>,
    names: StaticResolver,
}

impl Resolver for GatedResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            self.gate
                .acquire()
                .await
                .map_err(io::Error::other)?
                .forget();
            self.names.resolve(host, port).await
        })
    }
}

/// Test options whose resolver answers each of `names` with 127.0.0.1 when `gate` allows.
fn gated_options(gate: &Arc<Semaphore>, names: &[&str]) -> ServerOptions {
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let resolver = GatedResolver {
        gate: Arc::clone(gate),
        names: StaticResolver::new(names.iter().map(|&name| (name.to_owned(), vec![localhost]))),
    };
    builder()
        .connect_timeout(Duration::from_secs(120))
        .shared_resolver(Arc::new(resolver))
        .build()
}

/// Datagrams for a name being resolved wait for its answer and then go out in order, while a
/// datagram to an IP goes out at once.
#[tokio::test]
async fn datagrams_for_a_name_wait_for_its_lookup() {
    let gate = Arc::new(Semaphore::new(0));
    let proxy = Proxy::start(gated_options(&gate, &["gated.test"])).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    for payload in [&b"one"[..], b"two"] {
        let packet = datagram_to_name("gated.test", echo.port(), payload);
        within(LIMIT, socket.send_to(&packet, relay))
            .await
            .expect("send");
    }
    within(LIMIT, socket.send_to(&datagram(0, echo, b"ip"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, echo, b"\x01ip"),
        "the IP datagram came first, and nothing for the name went out before it"
    );
    gate.add_permits(1);
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram(0, echo, b"\x02one"));
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram(0, echo, b"\x03two"));
}

/// At most 4 lookups are in flight per association: a datagram for a fifth name is dropped.
#[tokio::test]
async fn lookups_in_flight_are_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let names = ["a.test", "b.test", "c.test", "d.test", "e.test"];
    let proxy = Proxy::start(gated_options(&gate, &names)).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    for name in names {
        let packet = datagram_to_name(name, echo.port(), name.as_bytes());
        within(LIMIT, socket.send_to(&packet, relay))
            .await
            .expect("send");
    }
    gate.add_permits(names.len());
    let mut answered = Vec::new();
    for _ in 0..4 {
        let (answer, _) = receive(&socket).await;
        let name = answer.get(11..).expect("a header and a count");
        answered.push(String::from_utf8_lossy(name).into_owned());
    }
    answered.sort();
    assert_eq!(answered, ["a.test", "b.test", "c.test", "d.test"]);
    within(LIMIT, socket.send_to(&datagram(0, echo, b"ip"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, echo, b"\x05ip"),
        "the datagram for the fifth name never reached the echo"
    );
}

/// At most 16 datagrams wait for lookups per association: the seventeenth is dropped.
#[tokio::test]
async fn datagrams_waiting_for_a_lookup_are_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let proxy = Proxy::start(gated_options(&gate, &["gated.test"])).await;
    let echo = counting_echo().await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    for i in 0..17_u8 {
        let packet = datagram_to_name("gated.test", echo.port(), &[i]);
        within(LIMIT, socket.send_to(&packet, relay))
            .await
            .expect("send");
    }
    // Every datagram above was handled (queued or dropped) before this one.
    within(LIMIT, socket.send_to(&datagram(0, echo, b"ip"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram(0, echo, b"\x01ip"));
    gate.add_permits(1);
    for i in 0..16_u8 {
        let (answer, _) = receive(&socket).await;
        assert_eq!(
            answer,
            datagram(0, echo, &[i + 2, i]),
            "waiting datagram {i}"
        );
    }
    within(LIMIT, socket.send_to(&datagram(0, echo, b"ip"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(
        answer,
        datagram(0, echo, b"\x12ip"),
        "the seventeenth waiting datagram never reached the echo"
    );
}

/// With `outbound_bind` unspecified (either family) or unset, an IPv4 client reaches targets
/// of both families, by IP and by name (`v6.test` is ::1), and each answer names its source
/// with its family's ATYP.
#[tokio::test]
async fn reaches_both_families_whatever_the_unspecified_outbound_bind() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: no ::1 on this machine");
        return;
    }
    let echo4 = udp_echo_on("127.0.0.1:0").await;
    let echo6 = udp_echo_on("[::1]:0").await;
    for outbound_bind in [None, Some("0.0.0.0"), Some("::")] {
        let options = builder()
            .outbound_bind(outbound_bind.map(|ip| ip.parse().expect("valid IP")))
            .build();
        let proxy = Proxy::start(options).await;
        let (_control, socket, relay) = raw_association_from(proxy.address, "127.0.0.1:0").await;
        let sends = [
            (datagram_any(echo4, b"ip4"), echo4, &b"ip4"[..]),
            (datagram_any(echo6, b"ip6"), echo6, b"ip6"),
            (
                datagram_to_name("v6.test", echo6.port(), b"name6"),
                echo6,
                b"name6",
            ),
            (
                datagram_to_name("echo.test", echo4.port(), b"name4"),
                echo4,
                b"name4",
            ),
        ];
        for (packet, echo, payload) in sends {
            within(LIMIT, socket.send_to(&packet, relay))
                .await
                .expect("send");
            let (answer, from) = receive(&socket).await;
            assert_eq!(from, relay, "outbound_bind {outbound_bind:?}");
            assert_eq!(
                answer,
                datagram_any(echo, payload),
                "outbound_bind {outbound_bind:?}, sent {packet:02x?}"
            );
        }
    }
}

/// With a specific `outbound_bind`, targets of the other family are dropped (as CONNECT
/// cannot reach them either), and the association goes on.
#[tokio::test]
async fn a_specific_outbound_bind_reaches_only_its_family() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: no ::1 on this machine");
        return;
    }
    let options = builder()
        .outbound_bind(Some("127.0.0.1".parse().expect("valid IP")))
        .build();
    let proxy = Proxy::start(options).await;
    let echo4 = udp_echo().await;
    let echo6 = counting_echo_on("[::1]:0").await;
    let (_control, socket, relay) = raw_association(proxy.address).await;
    within(LIMIT, socket.send_to(&datagram_any(echo6, b"v6"), relay))
        .await
        .expect("send");
    within(LIMIT, socket.send_to(&datagram(0, echo4, b"v4"), relay))
        .await
        .expect("send");
    let (answer, _) = receive(&socket).await;
    assert_eq!(answer, datagram(0, echo4, b"v4"));
    // Had the proxy sent the IPv6 datagram, it would have reached the echo before the IPv4 one.
    let probe = UdpSocket::bind("[::1]:0").await.expect("bind");
    within(LIMIT, probe.send_to(b"probe", echo6))
        .await
        .expect("send");
    let (answer, _) = receive(&probe).await;
    assert_eq!(
        answer, b"\x01probe",
        "the echo saw nothing before the probe"
    );
}

//! The PROXY protocol in front of both modes (issue 10 §2): the header's client is the client
//! for rules and the per-IP limit, a peer outside `proxy_protocol_from` is refused, a bad or
//! partial header closes the connection, and the bytes after the header reach the mode.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use proxy_header::{Endpoints, Header, Tlv, Version, encode, encode_v2};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

use crate::common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, within};

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const DENIED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Connects to `server` from `client` (any port).
async fn connect_from(client: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(client), 0))
        .expect("bind the client to a loopback address");
    within(STEP, socket.connect(server)).await.expect("connect")
}

/// A header naming `client` as the source, in `version`.
fn header(version: Version, client: Ipv4Addr, server: SocketAddr) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(
        &Header {
            version,
            endpoints: Endpoints::Tcp {
                source: SocketAddr::new(client.into(), 40_000),
                destination: server,
            },
        },
        &mut buf,
    );
    buf
}

/// A v2 header with a CRC-32C TLV; `corrupt` spoils the CRC.
fn header_with_crc(client: Ipv4Addr, server: SocketAddr, corrupt: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let endpoints = Endpoints::Tcp {
        source: SocketAddr::new(client.into(), 40_000),
        destination: server,
    };
    let tlvs = [Tlv {
        kind: 0x01,
        value: b"h2",
    }];
    encode_v2(&endpoints, &tlvs, true, &mut buf).unwrap();
    if corrupt {
        *buf.last_mut().unwrap() ^= 0xff;
    }
    buf
}

/// Reads until the server closes; true when it did so without a byte.
async fn closed_silently(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match within(STEP, stream.read_to_end(&mut rest)).await {
        Ok(_) => rest.is_empty(),
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// A loopback echo server: echoes one connection's bytes at a time.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

fn socks5_config(proxy_protocol: &str, from: &str, extra: &str) -> String {
    format!(
        "[server]\ndrain_timeout = \"1s\"\n[[listener]]\nname = \"socks\"\nmode = \"socks5\"\n\
         bind = \"127.0.0.1:0\"\nproxy_protocol = \"{proxy_protocol}\"\n\
         proxy_protocol_from = [\"{from}\"]\n{extra}\n\
         [[listener.rules]]\naction = \"deny\"\nclients = [\"{DENIED}/32\"]\n"
    )
}

fn crc_tcp_config(proxy_protocol: &str, extra: &str) -> String {
    format!(
        "[server]\ndrain_timeout = \"1s\"\n[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\n\
         bind = \"127.0.0.1:0\"\nhandler = {{ type = \"discard\" }}\n\
         proxy_protocol = \"{proxy_protocol}\"\nproxy_protocol_from = [\"127.0.0.0/8\"]\n{extra}\n"
    )
}

/// A greeting without authentication and a CONNECT to `target`, as one write after `header`.
fn greeting_and_connect(header: &[u8], target: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(target) = target else {
        panic!("an IPv4 target")
    };
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&[5, 1, 0, 5, 1, 0, 1]);
    bytes.extend_from_slice(&target.ip().octets());
    bytes.extend_from_slice(&target.port().to_be_bytes());
    bytes
}

/// Sends `header`, a greeting and a CONNECT in one write from `from`; returns the CONNECT
/// reply code and the stream.
async fn socks5_connect(
    from: Ipv4Addr,
    proxy: SocketAddr,
    header: &[u8],
    target: SocketAddr,
) -> (u8, TcpStream) {
    let mut stream = connect_from(from, proxy).await;
    within(
        STEP,
        stream.write_all(&greeting_and_connect(header, target)),
    )
    .await
    .unwrap();
    let mut method = [0u8; 2];
    within(STEP, stream.read_exact(&mut method))
        .await
        .expect("the greeting after the header was answered");
    assert_eq!(method, [5, 0]);
    let mut reply = [0u8; 10];
    within(STEP, stream.read_exact(&mut reply))
        .await
        .expect("the CONNECT was answered");
    assert_eq!((reply[0], reply[2], reply[3]), (5, 0, 1));
    (reply[1], stream)
}

async fn socks5_rules_judge_the_header_client(version: Version, proxy_protocol: &str) {
    let target = echo_server().await;
    let server = Running::start(&socks5_config(proxy_protocol, "127.0.0.0/8", "")).await;
    let proxy = server.addr("socks");
    // The TCP peer is 127.0.0.1, the header says 127.0.0.3: the rule refuses it (0x02).
    let (reply, _) = socks5_connect(LOCAL, proxy, &header(version, DENIED, proxy), target).await;
    assert_eq!(
        reply, 2,
        "a header naming {DENIED} was not judged as {DENIED}"
    );
    // The TCP peer is 127.0.0.3, the header says 127.0.0.1: served, and the tunnel works.
    let (reply, mut stream) =
        socks5_connect(DENIED, proxy, &header(version, LOCAL, proxy), target).await;
    assert_eq!(reply, 0, "a header naming {LOCAL} was refused");
    within(STEP, stream.write_all(b"ping")).await.unwrap();
    let mut echoed = [0u8; 4];
    within(STEP, stream.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"ping");
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn socks5_rules_judge_the_v1_header_client() {
    socks5_rules_judge_the_header_client(Version::V1, "v1").await;
}

#[tokio::test]
async fn socks5_rules_judge_the_v2_header_client() {
    socks5_rules_judge_the_header_client(Version::V2, "v2").await;
}

#[tokio::test]
async fn any_accepts_both_versions() {
    socks5_rules_judge_the_header_client(Version::V1, "any").await;
    socks5_rules_judge_the_header_client(Version::V2, "any").await;
}

#[tokio::test]
async fn local_command_keeps_the_real_endpoints() {
    let target = echo_server().await;
    let server = Running::start(&socks5_config("v2", "127.0.0.0/8", "")).await;
    let proxy = server.addr("socks");
    let mut local = Vec::new();
    encode(
        &Header {
            version: Version::V2,
            endpoints: Endpoints::Local,
        },
        &mut local,
    );
    // LOCAL from 127.0.0.3: judged as the TCP peer, 127.0.0.3, and refused.
    let (reply, _) = socks5_connect(DENIED, proxy, &local, target).await;
    assert_eq!(reply, 2);
    // LOCAL from 127.0.0.1: served.
    let (reply, _) = socks5_connect(LOCAL, proxy, &local, target).await;
    assert_eq!(reply, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_version_the_listener_does_not_take_is_refused() {
    let target = echo_server().await;
    let server = Running::start(&socks5_config("v2", "127.0.0.0/8", "")).await;
    let proxy = server.addr("socks");
    let mut stream = connect_from(LOCAL, proxy).await;
    let bytes = greeting_and_connect(&header(Version::V1, LOCAL, proxy), target);
    within(STEP, stream.write_all(&bytes)).await.unwrap();
    assert!(closed_silently(&mut stream).await);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_outside_proxy_protocol_from_is_refused() {
    let target = echo_server().await;
    // Only 127.0.0.2 may send headers; 127.0.0.1 sends a valid one and is refused anyway.
    let server = Running::start(&socks5_config("any", "127.0.0.2/32", "")).await;
    let proxy = server.addr("socks");
    let mut stream = connect_from(LOCAL, proxy).await;
    let bytes = greeting_and_connect(&header(Version::V2, LOCAL, proxy), target);
    // The server may close before the write lands: only the close matters.
    let _ = within(STEP, stream.write_all(&bytes)).await;
    assert!(
        closed_silently(&mut stream).await,
        "an untrusted peer was served"
    );
    // The trusted balancer is served.
    let (reply, _) = socks5_connect(
        Ipv4Addr::new(127, 0, 0, 2),
        proxy,
        &header(Version::V2, LOCAL, proxy),
        target,
    )
    .await;
    assert_eq!(reply, 0);
    server.stop().await;
}

#[tokio::test]
async fn garbage_instead_of_a_header_is_closed_at_once() {
    // The deadline is far beyond the test step: only the garbage can close it in time.
    let server = Running::start(&socks5_config(
        "any",
        "127.0.0.0/8",
        "proxy_protocol_timeout = \"1h\"",
    ))
    .await;
    let proxy = server.addr("socks");
    // A plain SOCKS5 greeting, as a client that bypassed the balancer would send.
    for garbage in [
        &b"\x05\x01\x00"[..],
        b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut stream = connect_from(LOCAL, proxy).await;
        within(STEP, stream.write_all(garbage)).await.unwrap();
        assert!(
            closed_silently(&mut stream).await,
            "{garbage:?} was not closed"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_partial_header_is_closed_after_the_deadline() {
    let limit = Duration::from_millis(300);
    let server = Running::start(&socks5_config(
        "any",
        "127.0.0.0/8",
        "proxy_protocol_timeout = \"300ms\"",
    ))
    .await;
    let proxy = server.addr("socks");
    for partial in [
        &b"PROXY TCP4 127.0.0."[..],
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f",
    ] {
        let started = Instant::now();
        let mut stream = connect_from(LOCAL, proxy).await;
        within(STEP, stream.write_all(partial)).await.unwrap();
        assert!(
            closed_silently(&mut stream).await,
            "{partial:?} was kept open"
        );
        // Timers never fire early: a close before the deadline would be another cause.
        assert!(
            started.elapsed() >= limit,
            "{partial:?} closed before the deadline"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_header_in_pieces_is_read_whole() {
    let target = echo_server().await;
    let server = Running::start(&socks5_config(
        "any",
        "127.0.0.0/8",
        "proxy_protocol_timeout = \"1h\"",
    ))
    .await;
    let proxy = server.addr("socks");
    for version in [Version::V1, Version::V2] {
        let bytes = greeting_and_connect(&header(version, LOCAL, proxy), target);
        let mut stream = connect_from(DENIED, proxy).await;
        stream.set_nodelay(true).unwrap();
        // One byte per write: the reader waits for each instead of taking a prefix as the
        // header or as garbage.
        for byte in &bytes {
            within(STEP, stream.write_all(std::slice::from_ref(byte)))
                .await
                .unwrap();
        }
        let mut answer = [0u8; 12];
        within(STEP, stream.read_exact(&mut answer)).await.unwrap();
        assert_eq!(answer[..4], [5, 0, 5, 0], "{version:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_crc32c_tlv_is_verified() {
    let target = echo_server().await;
    let server = Running::start(&socks5_config("v2", "127.0.0.0/8", "")).await;
    let proxy = server.addr("socks");
    let (reply, _) =
        socks5_connect(DENIED, proxy, &header_with_crc(LOCAL, proxy, false), target).await;
    assert_eq!(reply, 0);
    let mut stream = connect_from(LOCAL, proxy).await;
    let bytes = greeting_and_connect(&header_with_crc(LOCAL, proxy, true), target);
    within(STEP, stream.write_all(&bytes)).await.unwrap();
    assert!(
        closed_silently(&mut stream).await,
        "a bad CRC-32C was accepted"
    );
    server.stop().await;
}

#[tokio::test]
async fn crc_tcp_acks_after_a_header_in_the_same_write() {
    for (version, mode) in [
        (Version::V1, "v1"),
        (Version::V2, "v2"),
        (Version::V2, "any"),
    ] {
        let server = Running::start(&crc_tcp_config(mode, "")).await;
        let addr = server.addr("frames");
        let mut bytes = header(version, DENIED, addr);
        bytes.extend_from_slice(&REFERENCE_FRAME);
        let mut stream = connect_from(LOCAL, addr).await;
        within(STEP, stream.write_all(&bytes)).await.unwrap();
        let mut ack = [0u8; ACK_OK_0.len()];
        within(STEP, stream.read_exact(&mut ack))
            .await
            .expect("the frame after the header was acked");
        assert_eq!(ack, ACK_OK_0, "{mode}");
        drop(stream);
        server.stop().await;
    }
    // And with a verified CRC-32C TLV.
    let server = Running::start(&crc_tcp_config("v2", "")).await;
    let addr = server.addr("frames");
    let mut bytes = header_with_crc(DENIED, addr, false);
    bytes.extend_from_slice(&REFERENCE_FRAME);
    let mut stream = connect_from(LOCAL, addr).await;
    within(STEP, stream.write_all(&bytes)).await.unwrap();
    let mut ack = [0u8; ACK_OK_0.len()];
    within(STEP, stream.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(stream);
    server.stop().await;
}

/// A crc-tcp connection is served (its frame acked), or closed.
async fn crc_tcp_served(stream: &mut TcpStream) -> bool {
    if within(STEP, stream.write_all(&REFERENCE_FRAME))
        .await
        .is_err()
    {
        return false;
    }
    let mut ack = [0u8; ACK_OK_0.len()];
    match within(STEP, stream.read_exact(&mut ack)).await {
        Ok(_) => ack == ACK_OK_0,
        Err(_) => false,
    }
}

#[tokio::test]
async fn the_per_ip_limit_counts_the_header_client() {
    let server = Running::start(&crc_tcp_config("v2", "max_connections_per_ip = 1")).await;
    let addr = server.addr("frames");
    // All from the same TCP peer (the balancer), for two different clients: both served.
    let mut first = connect_from(LOCAL, addr).await;
    within(
        STEP,
        first.write_all(&header(Version::V2, Ipv4Addr::new(10, 0, 0, 1), addr)),
    )
    .await
    .unwrap();
    assert!(crc_tcp_served(&mut first).await);
    let mut second = connect_from(LOCAL, addr).await;
    within(
        STEP,
        second.write_all(&header(Version::V2, Ipv4Addr::new(10, 0, 0, 2), addr)),
    )
    .await
    .unwrap();
    assert!(
        crc_tcp_served(&mut second).await,
        "a second client behind the same balancer was refused"
    );
    // A second connection of the first client: over its limit, closed without a byte.
    let mut third = connect_from(LOCAL, addr).await;
    within(
        STEP,
        third.write_all(&header(Version::V2, Ipv4Addr::new(10, 0, 0, 1), addr)),
    )
    .await
    .unwrap();
    assert!(
        closed_silently(&mut third).await,
        "10.0.0.1 got a second connection"
    );
    drop((first, second));
    server.stop().await;
}

#[tokio::test]
async fn no_auth_networks_judge_the_header_client() {
    let config = format!(
        "[[listener]]\nname = \"socks\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n\
         auth = \"password\"\nusers = [{{ username = \"alice\", password = \"secret\" }}]\n\
         no_auth_networks = [\"{DENIED}/32\"]\n\
         proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.0/8\"]\n"
    );
    let server = Running::start(&config).await;
    let proxy = server.addr("socks");
    // (TCP peer, header client, the method the server picks for a client offering only "none").
    for (peer, client, method) in [(LOCAL, DENIED, 0x00), (DENIED, LOCAL, 0xff)] {
        let mut stream = connect_from(peer, proxy).await;
        let mut bytes = header(Version::V1, client, proxy);
        bytes.extend_from_slice(&[5, 1, 0]);
        within(STEP, stream.write_all(&bytes)).await.unwrap();
        let mut answer = [0u8; 2];
        within(STEP, stream.read_exact(&mut answer)).await.unwrap();
        assert_eq!(answer, [5, method], "peer {peer}, header client {client}");
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_header() {
    // Both deadlines far beyond the test step: only shutdown itself can end the connection.
    let config = "[server]\ndrain_timeout = \"1h\"\n[[listener]]\nname = \"socks\"\nmode = \"socks5\"\n\
                  bind = \"127.0.0.1:0\"\nproxy_protocol = \"v1\"\nproxy_protocol_from = [\"127.0.0.0/8\"]\n\
                  proxy_protocol_timeout = \"1h\"\n";
    let server = Running::start(config).await;
    let proxy = server.addr("socks");
    let mut stream = connect_from(LOCAL, proxy).await;
    within(STEP, stream.write_all(b"PROXY TCP4 127.0.0.1 "))
        .await
        .unwrap();
    // The accept queue is first in, first out: once a second connection is served, the
    // first has been accepted and its task is waiting for the rest of its header.
    let mut probe = connect_from(LOCAL, proxy).await;
    let mut bytes = header(Version::V1, LOCAL, proxy);
    bytes.extend_from_slice(&[5, 1, 0]);
    within(STEP, probe.write_all(&bytes)).await.unwrap();
    let mut answer = [0u8; 2];
    within(STEP, probe.read_exact(&mut answer)).await.unwrap();
    drop(probe);
    server.stop().await;
    assert!(closed_silently(&mut stream).await);
}

//! SOCKS4 and SOCKS4a sessions (`serve_socks4`): CONNECT and BIND through the same core as
//! SOCKS5, answered 90 or 91; no way around a password listener.

use std::net::SocketAddr;

use socks5::wire::protocol::Protocol;
use socks5::wire::socks4::{self, Command as Socks4Command, Request as Socks4Request};
use socks5::{Action, Address, AuthPolicy, Command, Error, Reply, Rule, Rules, ServerOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{
    LIMIT, Proxy, assert_closed, builder, echo_server, options, read_exactly, within,
};

fn request(command: Socks4Command, destination: Address, user_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    socks4::encode_request(
        &Socks4Request {
            command,
            destination,
            user_id: user_id.to_vec(),
        },
        &mut out,
    )
    .expect("encodable");
    out
}

/// Sends a request and reads the 8-byte reply: (VN, CD, address).
async fn ask(proxy: SocketAddr, bytes: &[u8]) -> (TcpStream, u8, u8, SocketAddr) {
    let mut stream = within(LIMIT, TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    within(LIMIT, stream.write_all(bytes))
        .await
        .expect("request");
    let (vn, cd, address) = read_reply(&mut stream).await;
    (stream, vn, cd, address)
}

async fn read_reply(stream: &mut TcpStream) -> (u8, u8, SocketAddr) {
    let reply = read_exactly::<8>(stream).await;
    let port = u16::from_be_bytes([reply[2], reply[3]]);
    let ip = std::net::Ipv4Addr::new(reply[4], reply[5], reply[6], reply[7]);
    (reply[0], reply[1], SocketAddr::from((ip, port)))
}

async fn ping(stream: &mut TcpStream) {
    within(LIMIT, stream.write_all(b"ping"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<4>(stream).await, b"ping");
}

#[tokio::test]
async fn socks4_connects_to_an_ipv4_target_and_relays() {
    let mut proxy = Proxy::start_socks4(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let bytes = request(Socks4Command::Connect, Address::Ip(echo), b"bob");
    let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 90));
    ping(&mut stream).await;
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.protocol, Protocol::Socks4);
    assert_eq!(report.command, Some(Command::Connect));
    assert_eq!(report.destination, Some(Address::Ip(echo)));
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!(report.user, None, "a SOCKS4 user id is not a login");
    assert_eq!((report.bytes_up, report.bytes_down), (4, 4));
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn socks4a_resolves_the_name_through_the_core() {
    let mut proxy = Proxy::start_socks4(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let name = Address::Domain("echo.test".into(), echo.port());
    let bytes = request(Socks4Command::Connect, name.clone(), b"");
    let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 90));
    ping(&mut stream).await;
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.destination, Some(name));
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_answered_91() {
    let mut proxy = Proxy::start_socks4(options()).await;
    let bytes = request(
        Socks4Command::Connect,
        Address::Domain("nowhere.test".into(), 80),
        b"",
    );
    let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 91));
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Resolve { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn a_destination_denied_by_a_rule_is_answered_91() {
    let echo = echo_server("127.0.0.1:0").await;
    let options = builder()
        .rules(Rules {
            rules: vec![Rule {
                ports: vec![echo.port()..=echo.port()],
                ..Rule::new(Action::Deny)
            }],
            default: Action::Allow,
        })
        .build();
    let mut proxy = Proxy::start_socks4(options).await;
    for destination in [
        Address::Ip(echo),
        Address::Domain("echo.test".into(), echo.port()),
    ] {
        let bytes = request(Socks4Command::Connect, destination, b"");
        let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
        assert_eq!((vn, cd), (0, 91));
        assert_closed(&mut stream).await;
        let report = proxy.report().await;
        assert!(
            matches!(report.error, Some(Error::Denied { .. })),
            "{:?}",
            report.error
        );
        assert_eq!(report.reply, Some(Reply::NotAllowed));
    }
}

fn password_options(no_auth_networks: &[&str], rules: Vec<Rule>) -> ServerOptions {
    let users = [("alice".to_owned(), "wonderland".to_owned())];
    let networks = no_auth_networks
        .iter()
        .map(|n| n.parse().expect("valid network"))
        .collect();
    builder()
        .authenticator(AuthPolicy::password(users, networks))
        .rules(Rules {
            rules,
            default: Action::Allow,
        })
        .build()
}

#[tokio::test]
async fn a_password_listener_refuses_socks4_from_a_client_that_must_log_in() {
    let mut proxy = Proxy::start_socks4(password_options(&["10.0.0.0/8"], vec![])).await;
    let echo = echo_server("127.0.0.1:0").await;
    // A user id that names a configured user changes nothing: it is not a login.
    let bytes = request(Socks4Command::Connect, Address::Ip(echo), b"alice");
    let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 91));
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Socks4NeedsPassword)),
        "{:?}",
        report.error
    );
    assert_eq!(report.user, None);
}

#[tokio::test]
async fn a_password_listener_serves_socks4_to_exempt_clients_and_ignores_the_user_id() {
    // A rule that denies alice: the user id "alice" must not make it match.
    let deny_alice = Rule {
        users: vec!["alice".into()],
        ..Rule::new(Action::Deny)
    };
    let mut proxy = Proxy::start_socks4(password_options(&["127.0.0.0/8"], vec![deny_alice])).await;
    let echo = echo_server("127.0.0.1:0").await;
    let bytes = request(Socks4Command::Connect, Address::Ip(echo), b"alice");
    let (mut stream, vn, cd, _) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 90));
    ping(&mut stream).await;
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.user, None);
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn socks4_bind_replies_twice_and_relays() {
    let mut proxy = Proxy::start_socks4(options()).await;
    let expected = Address::Ip("127.0.0.1:0".parse().expect("valid"));
    let bytes = request(Socks4Command::Bind, expected, b"");
    let (mut stream, vn, cd, listening) = ask(proxy.address, &bytes).await;
    assert_eq!((vn, cd), (0, 90));
    assert_eq!(listening.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(listening.port(), 0);
    let mut peer = within(LIMIT, TcpStream::connect(listening))
        .await
        .expect("connect to the BIND listener");
    let (vn, cd, from) = read_reply(&mut stream).await;
    assert_eq!((vn, cd), (0, 90));
    assert_eq!(from, peer.local_addr().expect("peer address"));
    within(LIMIT, peer.write_all(b"pong")).await.expect("write");
    assert_eq!(&read_exactly::<4>(&mut stream).await, b"pong");
    drop((stream, peer));
    let report = proxy.report().await;
    assert_eq!(report.command, Some(Command::Bind));
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn a_malformed_socks4_request_is_answered_91() {
    let mut proxy = Proxy::start_socks4(options()).await;
    // CD 3 does not exist in SOCKS4.
    let (mut stream, vn, cd, _) = ask(proxy.address, &[4, 3, 0, 80, 127, 0, 0, 1, 0]).await;
    assert_eq!((vn, cd), (0, 91));
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Socks4(_))),
        "{:?}",
        report.error
    );
}

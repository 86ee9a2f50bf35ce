//! The crate as a library: a session over a stream that is not a socket, an authenticator of
//! the embedder's that names the user, a connector of the embedder's that hands back a stream.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use socks5::wire::Method;
use socks5::{
    Address, AuthFuture, Authenticator, Command, ConnectFuture, Connector, LoginFailure, Outbound,
    Reply, client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{LIMIT, Proxy, builder, echo_server, options, within};

/// A SOCKS5 CONNECT by raw bytes over `stream`, answered by a session over the other end.
async fn connect_over(stream: &mut DuplexStream, target: SocketAddr) {
    let SocketAddr::V4(target) = target else {
        panic!("IPv4 target expected")
    };
    let mut request = vec![5, 1, 0, 5, 1, 0, 1];
    request.extend_from_slice(&target.ip().octets());
    request.extend_from_slice(&target.port().to_be_bytes());
    within(LIMIT, stream.write_all(&request))
        .await
        .expect("greeting and request");
    let mut answer = [0; 2 + 10];
    within(LIMIT, stream.read_exact(&mut answer))
        .await
        .expect("method and reply");
    assert_eq!(answer[..4], [5, 0, 5, 0], "{answer:02x?}");
}

/// `serve` runs over an in-memory pipe: the handshake, the connect and the relay (copying,
/// since one end is not a socket) work as over TCP.
#[tokio::test]
async fn a_session_runs_over_any_stream() {
    let echo = echo_server("127.0.0.1:0").await;
    let (mut client_end, server_end) = tokio::io::duplex(4096);
    let peer: SocketAddr = "192.0.2.1:5000".parse().expect("valid");
    let options = options();
    let session = tokio::spawn(async move {
        socks5::serve(server_end, peer, &options, CancellationToken::new()).await
    });
    connect_over(&mut client_end, echo).await;
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = tokio::io::split(client_end);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await?;
        write.shutdown().await
    });
    let mut back = Vec::new();
    within(LIMIT, read.read_to_end(&mut back))
        .await
        .expect("echo until the half-close comes back");
    within(LIMIT, writer)
        .await
        .expect("no panic")
        .expect("written");
    assert_eq!(back, payload);
    let report = within(LIMIT, session).await.expect("no panic");
    assert_eq!(report.client, peer);
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!((report.bytes_up, report.bytes_down), (20_000, 20_000));
    assert!(report.error.is_none(), "{:?}", report.error);
}

/// BIND needs a local address to listen on: over a stream that is not a socket, without
/// `outbound_bind`, it fails with X'01' instead of guessing.
#[tokio::test]
async fn bind_over_a_stream_without_an_address_fails_cleanly() {
    let (mut client_end, server_end) = tokio::io::duplex(4096);
    let options = options();
    let peer: SocketAddr = "192.0.2.1:5000".parse().expect("valid");
    let session = tokio::spawn(async move {
        socks5::serve(server_end, peer, &options, CancellationToken::new()).await
    });
    within(
        LIMIT,
        client_end.write_all(&[5, 1, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0]),
    )
    .await
    .expect("greeting and BIND");
    let mut answer = [0; 2 + 10];
    within(LIMIT, client_end.read_exact(&mut answer))
        .await
        .expect("method and reply");
    assert_eq!(answer[..4], [5, 0, 5, 1], "{answer:02x?}");
    let report = within(LIMIT, session).await.expect("no panic");
    assert_eq!(report.command, Some(Command::Bind));
    assert_eq!(report.reply, Some(Reply::GeneralFailure));
}

/// Everyone logs in; user `u-NAME` with password `NAME` is the user `NAME`.
struct Prefixed;

impl Authenticator for Prefixed {
    fn choose(&self, _client: IpAddr, offered: &[Method]) -> Method {
        if offered.contains(&Method::UsernamePassword) {
            Method::UsernamePassword
        } else {
            Method::NoAcceptable
        }
    }

    fn authenticate<'a>(
        &'a self,
        _client: IpAddr,
        username: &'a [u8],
        password: &'a [u8],
    ) -> AuthFuture<'a> {
        Box::pin(async move {
            let name = std::str::from_utf8(username).map_err(|_| LoginFailure::UnknownUser)?;
            match name.strip_prefix("u-") {
                Some(user) if user.as_bytes() == password => Ok(user.to_owned()),
                Some(_) => Err(LoginFailure::WrongPassword),
                None => Err(LoginFailure::UnknownUser),
            }
        })
    }
}

/// The session asks the embedder's authenticator, and the user it returns is the session's.
#[tokio::test]
async fn an_authenticator_decides_and_names_the_user() {
    let mut proxy = Proxy::start(builder().authenticator(Prefixed).build()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Ip(echo);
    let (mut stream, _) = within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("u-carol", "carol")), LIMIT),
    )
    .await
    .expect("login accepted");
    within(LIMIT, stream.write_all(b"hi")).await.expect("write");
    let mut back = [0; 2];
    within(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("echo");
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.user.as_deref(), Some("carol"));
    assert_eq!(report.reply, Some(Reply::Succeeded));

    let refused = within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("u-carol", "dave")), LIMIT),
    )
    .await;
    assert!(
        matches!(refused, Err(socks5::Error::AuthFailed)),
        "{refused:?}"
    );
    let report = proxy.report().await;
    assert!(matches!(report.error, Some(socks5::Error::AuthFailed)));
    assert_eq!(report.user.as_deref(), Some("u-carol"), "the name sent");
}

/// Answers every connect with one end of an in-memory pipe whose other end echoes, and records
/// the addresses asked for.
#[derive(Default, Clone)]
struct PipeConnector {
    asked: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Connector for PipeConnector {
    fn connect(&self, address: SocketAddr, _bind: Option<IpAddr>) -> ConnectFuture<'_> {
        self.asked.lock().expect("not poisoned").push(address);
        Box::pin(async move {
            let (near, mut far) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while let Ok(n) = far.read(&mut buf).await {
                    if n == 0 || far.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Outbound::Stream(Box::new(near)))
        })
    }
}

/// CONNECT goes out through the embedder's connector, to the address the rules allowed, and
/// the relay carries a stream that is not a socket (BND is then unspecified).
#[tokio::test]
async fn a_connector_makes_the_outbound_connection() {
    let connector = PipeConnector::default();
    let mut proxy = Proxy::start(builder().connector(connector.clone()).build()).await;
    let target = Address::Domain("echo.test".into(), 7);
    let (mut stream, bound) = within(LIMIT, client::connect(proxy.address, &target, None, LIMIT))
        .await
        .expect("CONNECT");
    assert_eq!(bound, Address::UNSPECIFIED);
    within(LIMIT, stream.write_all(b"through the pipe"))
        .await
        .expect("write");
    let mut back = [0; 16];
    within(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(&back, b"through the pipe");
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!(
        *connector.asked.lock().expect("not poisoned"),
        vec!["127.0.0.1:7".parse::<SocketAddr>().expect("valid")]
    );
}

/// Rules with `users` match the user the authenticator returned (not the name the client
/// sent): carol (who logs in as `u-carol`) is denied, dave gets through.
#[tokio::test]
async fn rules_match_the_user_the_authenticator_returned() {
    let rules = socks5::Rules {
        rules: vec![socks5::Rule {
            users: vec!["carol".into()],
            ..socks5::Rule::new(socks5::Action::Deny)
        }],
        default: socks5::Action::Allow,
    };
    let mut proxy = Proxy::start(builder().authenticator(Prefixed).rules(rules).build()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Ip(echo);
    let denied = within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("u-carol", "carol")), LIMIT),
    )
    .await;
    assert!(
        matches!(denied, Err(socks5::Error::Rejected(Reply::NotAllowed))),
        "{denied:?}"
    );
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(socks5::Error::ClientDenied { .. })),
        "{report:?}"
    );
    let (stream, _) = within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("u-dave", "dave")), LIMIT),
    )
    .await
    .expect("dave is not denied");
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.user.as_deref(), Some("dave"));
    assert_eq!(report.reply, Some(Reply::Succeeded));
}

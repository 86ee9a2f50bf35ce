//! Method negotiation and RFC 1929 login.

use socks5::client;
use socks5::{Address, AuthPolicy, Error, ServerOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{
    LIMIT, Proxy, assert_closed, builder, connect_v4, echo_server, options, read_exactly,
    read_reply_v4, within,
};

fn password_options(no_auth_networks: &[&str]) -> ServerOptions {
    let users = [("alice".to_owned(), "wonderland".to_owned())];
    let networks = no_auth_networks
        .iter()
        .map(|n| n.parse().expect("valid network"))
        .collect();
    builder()
        .authenticator(AuthPolicy::password(users, networks))
        .build()
}

async fn connect(proxy: std::net::SocketAddr) -> TcpStream {
    within(LIMIT, TcpStream::connect(proxy))
        .await
        .expect("connect to proxy")
}

#[tokio::test]
async fn logs_in_with_username_and_password() {
    let mut proxy = Proxy::start(password_options(&[])).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = connect(proxy.address).await;
    within(LIMIT, stream.write_all(&[5, 2, 0, 2]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 2]);
    within(LIMIT, stream.write_all(b"\x01\x05alice\x0awonderland"))
        .await
        .expect("login");
    assert_eq!(read_exactly::<2>(&mut stream).await, [1, 0]);
    within(LIMIT, stream.write_all(&connect_v4(echo)))
        .await
        .expect("request");
    assert_eq!(read_reply_v4(&mut stream).await.0, 0);
    drop(stream);
    assert_eq!(proxy.report().await.user.as_deref(), Some("alice"));

    // And through our client.
    let target = Address::Ip(echo);
    within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("alice", "wonderland")), LIMIT),
    )
    .await
    .expect("client login");
}

#[tokio::test]
async fn a_wrong_password_gets_a_failure_status_and_a_close() {
    let mut proxy = Proxy::start(password_options(&[])).await;
    let mut stream = connect(proxy.address).await;
    within(LIMIT, stream.write_all(&[5, 1, 2]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 2]);
    within(LIMIT, stream.write_all(b"\x01\x05alice\x05guess"))
        .await
        .expect("login");
    let status = read_exactly::<2>(&mut stream).await;
    assert_eq!(status[0], 1);
    assert_ne!(status[1], 0, "STATUS must be a failure");
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::AuthFailed)),
        "{:?}",
        report.error
    );
    assert_eq!(report.user.as_deref(), Some("alice"));

    let target = Address::Ip("127.0.0.1:1".parse().expect("valid"));
    let refused = within(
        LIMIT,
        client::connect(proxy.address, &target, Some(("alice", "x")), LIMIT),
    )
    .await;
    assert!(matches!(refused, Err(Error::AuthFailed)), "{refused:?}");
}

#[tokio::test]
async fn no_acceptable_method_gets_0xff_and_a_close() {
    // A password is required and 127.0.0.1 is not exempt, but only no-auth is offered.
    let mut proxy = Proxy::start(password_options(&["10.0.0.0/8"])).await;
    let mut stream = connect(proxy.address).await;
    within(LIMIT, stream.write_all(&[5, 1, 0]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 0xFF]);
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::NoAcceptableMethod)),
        "{:?}",
        report.error
    );

    // Without a password policy, offering only username/password fails the same way.
    let open = Proxy::start(options()).await;
    let mut stream = connect(open.address).await;
    within(LIMIT, stream.write_all(&[5, 1, 2]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 0xFF]);
    assert_closed(&mut stream).await;

    let target = Address::Ip("127.0.0.1:1".parse().expect("valid"));
    let refused = within(LIMIT, client::connect(proxy.address, &target, None, LIMIT)).await;
    assert!(
        matches!(refused, Err(Error::NoAcceptableMethod)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn clients_in_no_auth_networks_may_skip_the_login() {
    let proxy = Proxy::start(password_options(&["127.0.0.0/8"])).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = connect(proxy.address).await;
    within(LIMIT, stream.write_all(&[5, 1, 0]))
        .await
        .expect("greeting");
    assert_eq!(read_exactly::<2>(&mut stream).await, [5, 0]);
    within(LIMIT, stream.write_all(&connect_v4(echo)))
        .await
        .expect("request");
    assert_eq!(read_reply_v4(&mut stream).await.0, 0);
}

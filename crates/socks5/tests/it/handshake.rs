//! Greetings that are not SOCKS5, silent clients, and shutdown.

use std::time::Duration;

use socks5::client;
use socks5::{Address, Error};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{
    LIMIT, Proxy, assert_closed, builder, echo_server, greeted, options, read_exactly, within,
};

#[tokio::test]
async fn closes_foreign_greetings_at_once_without_a_reply() {
    let mut proxy = Proxy::start(options()).await;
    let table: [(&[u8], &str); 5] = [
        (&[4, 1, 0, 80, 127, 0, 0, 1, b'u', 0], "SOCKS4"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "an HTTP request"),
        (
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            "an HTTP CONNECT (HTTP proxy) request",
        ),
        (
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03],
            "a TLS ClientHello",
        ),
        (&[0xDE, 0xAD, 0xBE, 0xEF], "binary data"),
    ];
    for (bytes, looks_like) in table {
        let mut stream = within(LIMIT, TcpStream::connect(proxy.address))
            .await
            .expect("connect");
        within(LIMIT, stream.write_all(bytes)).await.expect("write");
        assert_closed(&mut stream).await;
        let report = proxy.report().await;
        assert!(
            matches!(report.error, Some(Error::NotSocks5 { looks_like: l }) if l == looks_like),
            "{bytes:02x?}: {:?}",
            report.error
        );
        assert!(report.reply.is_none());
    }
}

#[tokio::test]
async fn closes_a_silent_client_after_the_handshake_timeout() {
    let options = builder()
        .handshake_timeout(Duration::from_millis(300))
        .build();
    let mut proxy = Proxy::start(options).await;
    // Greeting, then nothing: the request never comes.
    let mut stream = greeted(proxy.address).await;
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(
        matches!(
            report.error,
            Some(Error::Timeout {
                stage: "request",
                ..
            })
        ),
        "{:?}",
        report.error
    );
    // Connected, and not even a greeting.
    let mut stream = within(LIMIT, TcpStream::connect(proxy.address))
        .await
        .expect("connect");
    assert_closed(&mut stream).await;
    let report = proxy.report().await;
    assert!(matches!(
        report.error,
        Some(Error::Timeout {
            stage: "greeting",
            ..
        })
    ));
}

#[tokio::test]
async fn an_early_close_is_reported_with_its_stage() {
    let mut proxy = Proxy::start(options()).await;
    let mut stream = within(LIMIT, TcpStream::connect(proxy.address))
        .await
        .expect("connect");
    within(LIMIT, stream.write_all(&[5]))
        .await
        .expect("half a greeting");
    drop(stream);
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Closed { stage: "greeting" })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn stop_ends_a_handshake_at_once_but_not_an_established_relay() {
    let mut proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let (mut relayed, _) = within(
        LIMIT,
        client::connect(proxy.address, &Address::Ip(echo), None, LIMIT),
    )
    .await
    .expect("CONNECT");
    let mut waiting = greeted(proxy.address).await;

    proxy.stop.cancel();
    assert_closed(&mut waiting).await;
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::Cancelled { .. })),
        "{:?}",
        report.error
    );

    within(LIMIT, relayed.write_all(b"still"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<5>(&mut relayed).await, b"still");
}

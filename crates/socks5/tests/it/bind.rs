//! BIND: both replies, the relay, an unexpected peer, the timeout.

use std::time::Duration;

use socks5::client;
use socks5::{Address, Error, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{LIMIT, Proxy, builder, options, read_exactly, within};

async fn connect_peer(address: &Address) -> TcpStream {
    let Address::Ip(address) = address else {
        panic!("BIND listens on an IP")
    };
    within(LIMIT, TcpStream::connect(address))
        .await
        .expect("peer connects")
}

#[tokio::test]
async fn bind_replies_twice_and_relays() {
    let mut proxy = Proxy::start(options()).await;
    let expected = Address::Ip("127.0.0.1:0".parse().expect("valid"));
    let pending = within(LIMIT, client::bind(proxy.address, &expected, None, LIMIT))
        .await
        .expect("BIND");
    let listening = pending.address().clone();
    assert!(matches!(&listening, Address::Ip(a) if a.ip().is_loopback() && a.port() != 0));
    let mut peer = connect_peer(&listening).await;
    let (mut stream, peer_address) = within(LIMIT, pending.accept(LIMIT))
        .await
        .expect("second reply");
    assert_eq!(
        peer_address,
        Address::Ip(peer.local_addr().expect("address"))
    );

    within(LIMIT, peer.write_all(b"from peer"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<9>(&mut stream).await, b"from peer");
    within(LIMIT, stream.write_all(b"to peer"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<7>(&mut peer).await, b"to peer");
    drop((stream, peer));
    let report = proxy.report().await;
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!((report.bytes_up, report.bytes_down), (7, 9));
}

#[tokio::test]
async fn bind_refuses_a_peer_from_another_address() {
    let mut proxy = Proxy::start(options()).await;
    let expected = Address::Ip("127.0.0.2:0".parse().expect("valid"));
    let pending = within(LIMIT, client::bind(proxy.address, &expected, None, LIMIT))
        .await
        .expect("BIND");
    let _peer = connect_peer(pending.address()).await; // from 127.0.0.1
    let refused = within(LIMIT, pending.accept(LIMIT)).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::NotAllowed))),
        "{refused:?}"
    );
    let report = proxy.report().await;
    assert!(
        matches!(report.error, Some(Error::UnexpectedPeer { .. })),
        "{:?}",
        report.error
    );
}

#[tokio::test]
async fn bind_gives_up_after_the_bind_timeout() {
    let options = builder().bind_timeout(Duration::from_millis(300)).build();
    let proxy = Proxy::start(options).await;
    let expected = Address::Ip("127.0.0.1:0".parse().expect("valid"));
    let pending = within(LIMIT, client::bind(proxy.address, &expected, None, LIMIT))
        .await
        .expect("BIND");
    let late = within(LIMIT, pending.accept(LIMIT)).await;
    assert!(
        matches!(late, Err(Error::Rejected(Reply::HostUnreachable))),
        "{late:?}"
    );
}

//! CONNECT: every address type, pending bytes, half-close, bulk data, many tunnels.

use std::net::SocketAddr;

use socks5::client;
use socks5::{Address, Command, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    Checksum, IoResult, LIMIT, Proxy, connect_v4, echo_server, greeted, has_ipv6_loopback, options,
    read_exactly, read_reply_v4, within,
};

#[tokio::test]
async fn connects_to_an_ipv4_target_and_relays_both_ways() {
    let mut proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = greeted(proxy.address).await;
    within(LIMIT, stream.write_all(&connect_v4(echo)))
        .await
        .expect("request");
    let (reply, bound) = read_reply_v4(&mut stream).await;
    assert_eq!(reply, 0x00);
    assert_eq!(
        bound.ip(),
        echo.ip(),
        "BND is the outbound socket's local address"
    );
    assert_ne!(bound.port(), 0);
    within(LIMIT, stream.write_all(b"ping"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<4>(&mut stream).await, b"ping");
    drop(stream);
    let report = proxy.report().await;
    assert_eq!(report.command, Some(Command::Connect));
    assert_eq!(report.destination, Some(Address::Ip(echo)));
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!((report.bytes_up, report.bytes_down), (4, 4));
    let connect = report
        .connect_time
        .expect("CONNECT reports its connect time");
    assert!(
        connect <= report.duration,
        "{connect:?} > {:?}",
        report.duration
    );
    assert_eq!((report.datagrams_up, report.datagrams_down), (0, 0));
    assert!(report.error.is_none(), "{:?}", report.error);
}

#[tokio::test]
async fn connects_to_an_ipv6_target() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let proxy = Proxy::start_on("[::1]:0".parse().expect("valid"), options()).await;
    let echo = echo_server("[::1]:0").await;
    let (mut stream, bound) = within(
        LIMIT,
        client::connect(proxy.address, &Address::Ip(echo), None, LIMIT),
    )
    .await
    .expect("CONNECT [::1]");
    assert!(matches!(bound, Address::Ip(SocketAddr::V6(_))), "{bound}");
    within(LIMIT, stream.write_all(b"six"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<3>(&mut stream).await, b"six");
}

#[tokio::test]
async fn connects_to_a_domain_through_the_resolver() {
    let mut proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Domain("echo.test".into(), echo.port());
    let (mut stream, _) = within(LIMIT, client::connect(proxy.address, &target, None, LIMIT))
        .await
        .expect("CONNECT echo.test");
    within(LIMIT, stream.write_all(b"name"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<4>(&mut stream).await, b"name");
    drop(stream);
    assert_eq!(proxy.report().await.destination, Some(target));
}

#[tokio::test]
async fn tries_each_resolved_address_in_turn() {
    // both.test is 127.0.0.2 (nothing listens there) and then 127.0.0.1.
    let proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Domain("both.test".into(), echo.port());
    let (mut stream, _) = within(LIMIT, client::connect(proxy.address, &target, None, LIMIT))
        .await
        .expect("the second address works");
    within(LIMIT, stream.write_all(b"2nd"))
        .await
        .expect("write");
    assert_eq!(&read_exactly::<3>(&mut stream).await, b"2nd");
}

#[tokio::test]
async fn sends_bytes_that_came_with_the_request_upstream_first() {
    let proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = greeted(proxy.address).await;
    let mut request = connect_v4(echo);
    request.extend_from_slice(b"early");
    within(LIMIT, stream.write_all(&request))
        .await
        .expect("request and data in one write");
    assert_eq!(read_reply_v4(&mut stream).await.0, 0x00);
    assert_eq!(&read_exactly::<5>(&mut stream).await, b"early");
}

#[tokio::test]
async fn passes_a_half_close_through_and_keeps_the_other_direction() {
    let proxy = Proxy::start(options()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?; // ends only if the client's FIN came through
        stream
            .write_all(format!("got {} bytes", got.len()).as_bytes())
            .await?;
        stream.shutdown().await?;
        IoResult::Ok(())
    });
    let (mut stream, _) = within(
        LIMIT,
        client::connect(proxy.address, &Address::Ip(target), None, LIMIT),
    )
    .await
    .expect("CONNECT");
    within(LIMIT, stream.write_all(b"abc"))
        .await
        .expect("write");
    within(LIMIT, stream.shutdown()).await.expect("half-close");
    let mut answer = String::new();
    within(LIMIT, stream.read_to_string(&mut answer))
        .await
        .expect("read to EOF");
    assert_eq!(answer, "got 3 bytes");
    within(LIMIT, server)
        .await
        .expect("join")
        .expect("target side");
}

/// 64 MiB each way through an echo target, checksummed on both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_64_mib_each_way_intact() {
    const TOTAL: usize = 64 << 20;
    let mut proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let (stream, _) = within(
        LIMIT,
        client::connect(proxy.address, &Address::Ip(echo), None, LIMIT),
    )
    .await
    .expect("CONNECT");
    let (mut read, mut write) = stream.into_split();
    let sender = tokio::spawn(async move {
        let mut sum = Checksum::new();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut chunk = vec![0; 256 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            for word in chunk.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            sum.update(&chunk);
            write.write_all(&chunk).await?;
        }
        write.shutdown().await?;
        IoResult::Ok(sum.0)
    });
    let receiver = tokio::spawn(async move {
        let mut sum = Checksum::new();
        let mut total = 0;
        let mut buf = vec![0; 256 * 1024];
        loop {
            let n = read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            total += n;
        }
        IoResult::Ok((total, sum.0))
    });
    let limit = LIMIT * 12;
    let sent = within(limit, sender).await.expect("join").expect("send");
    let (received, received_sum) = within(limit, receiver)
        .await
        .expect("join")
        .expect("receive");
    assert_eq!(received, TOTAL);
    assert_eq!(received_sum, sent, "checksums differ");
    let report = proxy.report().await;
    assert_eq!(
        (report.bytes_up, report.bytes_down),
        (TOTAL as u64, TOTAL as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_200_tunnels_at_once() {
    let proxy = Proxy::start(options()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let proxy = proxy.address;
        opening.spawn(async move { client::connect(proxy, &Address::Ip(echo), None, LIMIT).await });
    }
    let mut streams: Vec<TcpStream> = Vec::new();
    while let Some(opened) = within(LIMIT, opening.join_next()).await {
        streams.push(opened.expect("join").expect("CONNECT").0);
    }
    assert_eq!(streams.len(), 200);
    // All 200 are open at the same time; now use every one.
    let mut using = tokio::task::JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        using.spawn(async move {
            let message = format!("tunnel {i:03}");
            stream.write_all(message.as_bytes()).await?;
            let mut back = vec![0; message.len()];
            stream.read_exact(&mut back).await?;
            IoResult::Ok(back == message.as_bytes())
        });
    }
    let mut echoed = 0;
    while let Some(used) = within(LIMIT, using.join_next()).await {
        assert!(
            used.expect("join").expect("echo through the tunnel"),
            "echo differs"
        );
        echoed += 1;
    }
    assert_eq!(echoed, 200);
}

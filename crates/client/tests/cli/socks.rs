//! `--socks5`, through a minimal in-test SOCKS5 proxy.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proto::AckStatus;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::support::{Reply, client, frame_server, payloads, within};

/// A SOCKS5 proxy (RFC 1928, 1929) for `connections` connections. It wants
/// username/password when `credentials` is set, else no authentication;
/// connects every CONNECT to `upstream`, whatever the request names; and
/// relays. The handle yields the addresses requested, as text.
async fn socks_proxy(
    connections: usize,
    credentials: Option<(&'static str, &'static str)>,
    upstream: SocketAddr,
) -> (SocketAddr, JoinHandle<Vec<Option<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        let mut sessions = Vec::new();
        for _ in 0..connections {
            let (stream, _) = within(listener.accept()).await.unwrap();
            sessions.push(tokio::spawn(within(relay(stream, credentials, upstream))));
        }
        let mut requested = Vec::new();
        for session in sessions {
            requested.push(within(session).await.unwrap());
        }
        requested
    });
    (addr, proxy)
}

/// One proxy session; `None` when the client was turned away.
async fn relay(
    mut client: TcpStream,
    credentials: Option<(&str, &str)>,
    upstream: SocketAddr,
) -> Option<String> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 5);
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await.unwrap();
    let wanted = if credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        client.write_all(&[5, 0xff]).await.unwrap();
        return None;
    }
    client.write_all(&[5, wanted]).await.unwrap();
    if let Some((user, password)) = credentials {
        let mut version_len = [0u8; 2];
        client.read_exact(&mut version_len).await.unwrap();
        assert_eq!(version_len[0], 1);
        let mut given_user = vec![0u8; usize::from(version_len[1])];
        client.read_exact(&mut given_user).await.unwrap();
        let mut given_password = vec![0u8; usize::from(client.read_u8().await.unwrap())];
        client.read_exact(&mut given_password).await.unwrap();
        let ok = given_user == user.as_bytes() && given_password == password.as_bytes();
        client.write_all(&[1, u8::from(!ok)]).await.unwrap();
        if !ok {
            return None;
        }
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await.unwrap();
    assert_eq!(request[..3], [5, 1, 0], "a CONNECT request");
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await.unwrap();
            Ipv4Addr::from(ip).to_string()
        }
        4 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await.unwrap();
            format!("[{}]", Ipv6Addr::from(ip))
        }
        3 => {
            let mut name = vec![0u8; usize::from(client.read_u8().await.unwrap())];
            client.read_exact(&mut name).await.unwrap();
            String::from_utf8(name).unwrap()
        }
        other => panic!("address type {other}"),
    };
    let port = client.read_u16().await.unwrap();
    let mut server = TcpStream::connect(upstream).await.unwrap();
    client
        .write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90])
        .await
        .unwrap();
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    Some(format!("{host}:{port}"))
}

#[tokio::test]
async fn sends_through_a_proxy_without_authentication() {
    let (server_addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let (proxy_addr, proxy) = socks_proxy(1, None, server_addr).await;
    let run = client(
        &[
            "send",
            "--addr",
            &server_addr.to_string(),
            "--socks5",
            &proxy_addr.to_string(),
            "--wait-ack",
            "via",
            "proxy",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(
        payloads(&within(server).await.unwrap()[0]),
        ["via", "proxy"]
    );
    assert_eq!(
        within(proxy).await.unwrap(),
        [Some(server_addr.to_string())]
    );
}

#[tokio::test]
async fn authenticates_with_username_and_password() {
    let (server_addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let (proxy_addr, proxy) = socks_proxy(1, Some(("alice", "s3cret")), server_addr).await;
    let run = client(
        &[
            "send",
            "--addr",
            &server_addr.to_string(),
            "--socks5",
            &proxy_addr.to_string(),
            "--proxy-user",
            "alice",
            "--proxy-password",
            "s3cret",
            "--wait-ack",
            "hello",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(payloads(&within(server).await.unwrap()[0]), ["hello"]);
    assert_eq!(
        within(proxy).await.unwrap(),
        [Some(server_addr.to_string())]
    );
}

#[tokio::test]
async fn reports_a_wrong_password() {
    let (proxy_addr, proxy) =
        socks_proxy(1, Some(("alice", "s3cret")), "127.0.0.1:9".parse().unwrap()).await;
    let run = client(
        &[
            "send",
            "--addr",
            "127.0.0.1:9",
            "--socks5",
            &proxy_addr.to_string(),
            "--proxy-user",
            "alice",
            "--proxy-password",
            "wrong",
            "hello",
        ],
        None,
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("authentication failed"), "{run:?}");
    assert!(
        !run.stderr.contains("wrong"),
        "the password is not shown: {run:?}"
    );
    assert_eq!(within(proxy).await.unwrap(), [None]);
}

#[tokio::test]
async fn lets_the_proxy_resolve_a_host_name() {
    let (server_addr, server) = frame_server(1, |_| Reply::Silent).await;
    let (proxy_addr, proxy) = socks_proxy(1, None, server_addr).await;
    let target = format!("frames.invalid:{}", server_addr.port());
    let run = client(
        &[
            "send",
            "--addr",
            &target,
            "--socks5",
            &proxy_addr.to_string(),
            "named",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(payloads(&within(server).await.unwrap()[0]), ["named"]);
    assert_eq!(within(proxy).await.unwrap(), [Some(target)]);
}

#[tokio::test]
async fn bench_runs_through_the_proxy() {
    let (server_addr, server) = frame_server(2, |_| Reply::Ack(AckStatus::Ok)).await;
    let (proxy_addr, proxy) = socks_proxy(2, None, server_addr).await;
    let run = client(
        &[
            "bench",
            "--addr",
            &server_addr.to_string(),
            "--socks5",
            &proxy_addr.to_string(),
            "--frames",
            "100",
            "--size",
            "32",
            "--connections",
            "2",
            "--wait-ack",
            "--json",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["frames"], 100);
    assert_eq!(
        within(server)
            .await
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>(),
        100
    );
    assert_eq!(within(proxy).await.unwrap().len(), 2);
}

#[tokio::test]
async fn bench_asks_the_proxy_for_each_of_the_servers() {
    let (server_addr, server) = frame_server(2, |_| Reply::Ack(AckStatus::Ok)).await;
    let (proxy_addr, proxy) = socks_proxy(2, None, server_addr).await;
    let run = client(
        &[
            "bench",
            "--servers",
            "first.test:7001,second.test:7002",
            "--socks5",
            &proxy_addr.to_string(),
            "--frames",
            "10",
            "--size",
            "8",
            "--connections",
            "2",
            "--wait-ack",
            "--json",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    within(server).await.unwrap();
    let mut requested = within(proxy).await.unwrap();
    requested.sort();
    assert_eq!(
        requested,
        [
            Some("first.test:7001".to_owned()),
            Some("second.test:7002".to_owned())
        ]
    );
}

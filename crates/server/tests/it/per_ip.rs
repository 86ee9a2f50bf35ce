//! `max_connections_per_ip` in both modes: a client address over the limit
//! is closed at once, another address is served, and a closed connection
//! gives its place back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, within};

/// Connects to `server` from `client` (any port).
async fn connect_from(client: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(client), 0))
        .expect("bind the client to a loopback address");
    within(STEP, socket.connect(server)).await.expect("connect")
}

/// What a mode answers on a connection it serves.
#[derive(Clone, Copy)]
enum Mode {
    /// A frame gets its ack.
    CrcTcp,
    /// A greeting without authentication gets `05 00`.
    Socks5,
}

impl Mode {
    fn config(self) -> String {
        // Long handshake/first-byte timeouts: only the limit may close a
        // connection within a test step.
        let (mode, keys) = match self {
            Self::CrcTcp => ("crc-tcp", "first_byte_timeout = \"5m\""),
            Self::Socks5 => ("socks5", "handshake_timeout = \"5m\""),
        };
        format!(
            "[server]\ndrain_timeout = \"1s\"\n[[listener]]\nname = \"limited\"\nmode = \"{mode}\"\n\
             bind = \"127.0.0.1:0\"\nmax_connections_per_ip = 2\n{keys}\n"
        )
    }

    /// Speaks first on `stream`; whether the server answered as it should
    /// (false: it closed the connection instead).
    async fn served(self, stream: &mut TcpStream) -> bool {
        let (request, answer): (&[u8], &[u8]) = match self {
            Self::CrcTcp => (&REFERENCE_FRAME, &ACK_OK_0),
            Self::Socks5 => (&[5, 1, 0], &[5, 0]),
        };
        if within(STEP, stream.write_all(request)).await.is_err() {
            return false;
        }
        let mut got = vec![0u8; answer.len()];
        match within(STEP, stream.read_exact(&mut got)).await {
            Ok(_) => {
                assert_eq!(got, answer);
                true
            }
            Err(_) => false,
        }
    }
}

/// Reads until the server closes; true when it did so without a byte.
async fn closed_silently(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match within(STEP, stream.read_to_end(&mut rest)).await {
        Ok(_) => rest.is_empty(),
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

async fn limits_connections_per_client_ip(mode: Mode) {
    let server = Running::start(&mode.config()).await;
    let addr = server.addr("limited");
    let (local, other) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let mut first = connect_from(local, addr).await;
    assert!(mode.served(&mut first).await);
    let mut second = connect_from(local, addr).await;
    assert!(mode.served(&mut second).await);
    // The third from the same address is closed at once, before it speaks.
    let mut third = connect_from(local, addr).await;
    assert!(
        closed_silently(&mut third).await,
        "the third connection from {local} was kept"
    );
    // Another address has its own count.
    let mut elsewhere = connect_from(other, addr).await;
    assert!(mode.served(&mut elsewhere).await, "{other} was refused");
    // Once one of the first two closes, its place is free again (the server
    // sees the close a moment later: try until it does, a bounded number of times).
    drop(first);
    let mut attempts = 0;
    let again = loop {
        attempts += 1;
        assert!(attempts <= 1000, "no place came free after a close");
        let mut stream = connect_from(local, addr).await;
        if mode.served(&mut stream).await {
            break stream;
        }
    };
    // And the limit holds again.
    let mut over = connect_from(local, addr).await;
    assert!(closed_silently(&mut over).await);
    drop((second, elsewhere, again));
    server.stop().await;
}

#[tokio::test]
async fn crc_tcp_limits_connections_per_client_ip() {
    limits_connections_per_client_ip(Mode::CrcTcp).await;
}

#[tokio::test]
async fn socks5_limits_connections_per_client_ip() {
    limits_connections_per_client_ip(Mode::Socks5).await;
}

#[test]
fn max_connections_per_ip_of_zero_is_refused() {
    for mode in ["crc-tcp", "socks5"] {
        let config = format!(
            "[[listener]]\nmode = \"{mode}\"\nbind = \"127.0.0.1:0\"\nmax_connections_per_ip = 0\n"
        );
        let error = server::Config::parse(&config, "test config").expect_err("0 is refused");
        assert!(
            format!("{error:#}").contains("max_connections_per_ip"),
            "{error:#}"
        );
    }
}

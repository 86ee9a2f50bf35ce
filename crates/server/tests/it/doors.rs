//! The front doors of a proxy listener: `protocols` on a `socks5` listener (SOCKS5, SOCKS4/4a
//! and HTTP on one port), with Rust peers speaking raw bytes.

use std::net::SocketAddr;

use socks5::{Address, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, read_to_close, within};

const FRAMES: &str =
    "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n";
const ALICE: &str =
    "auth = \"password\"\nusers = [{ username = \"alice\", password = \"s3cret\" }]";

fn shared(protocols: &str, extra: &str) -> String {
    format!(
        "{FRAMES}[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\nprotocols = {protocols}\n{extra}\n"
    )
}

async fn connect(proxy: SocketAddr) -> TcpStream {
    within(STEP, TcpStream::connect(proxy)).await.unwrap()
}

/// A SOCKS4 (or with a name, SOCKS4a) CONNECT; returns the stream and the reply's CD.
pub(crate) async fn socks4_connect(proxy: SocketAddr, target: Address) -> (TcpStream, u8) {
    let mut request = Vec::new();
    socks5::wire::socks4::encode_request(
        &socks5::wire::socks4::Request {
            command: socks5::wire::socks4::Command::Connect,
            destination: target,
            user_id: b"someone".to_vec(),
        },
        &mut request,
    )
    .unwrap();
    let mut stream = connect(proxy).await;
    within(STEP, stream.write_all(&request)).await.unwrap();
    let mut reply = [0u8; 8];
    within(STEP, stream.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply[0], 0, "VN of {reply:?}");
    (stream, reply[1])
}

/// Reads an HTTP response head (up to the blank line); returns the status and the head.
pub(crate) async fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within(STEP, stream.read(&mut byte)).await.unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024, "head too long");
    }
    let head = String::from_utf8(head).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head)
}

/// `CONNECT target HTTP/1.1` with optional Basic credentials; returns the stream, the status
/// and the head.
pub(crate) async fn http_connect(
    proxy: SocketAddr,
    target: &str,
    credentials: Option<&str>,
) -> (TcpStream, u16, String) {
    use base64::Engine as _;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(credentials);
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = connect(proxy).await;
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let (status, head) = read_head(&mut stream).await;
    (stream, status, head)
}

/// One frame through an open tunnel to the crc-tcp listener, and its ack.
pub(crate) async fn frame_through(mut stream: TcpStream) {
    within(STEP, stream.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    let mut ack = [0u8; 25];
    within(STEP, stream.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
}

#[tokio::test]
async fn one_port_serves_socks5_socks4_socks4a_and_http_connect() {
    let server = Running::start(&shared(r#"["socks5", "socks4", "http"]"#, "")).await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    // SOCKS5.
    let (stream, _) = client::connect(proxy, &Address::Ip(frames), None, STEP)
        .await
        .unwrap();
    frame_through(stream).await;
    // SOCKS4 and SOCKS4a.
    let (stream, cd) = socks4_connect(proxy, Address::Ip(frames)).await;
    assert_eq!(cd, 90);
    frame_through(stream).await;
    let by_name = Address::Domain("localhost".into(), frames.port());
    let (stream, cd) = socks4_connect(proxy, by_name).await;
    assert_eq!(cd, 90);
    frame_through(stream).await;
    // HTTP CONNECT.
    let (stream, status, head) = http_connect(proxy, &frames.to_string(), None).await;
    assert_eq!(status, 200, "{head}");
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn a_protocol_not_listed_or_unknown_is_closed_without_an_answer() {
    let server = Running::start(&shared(r#"["socks5", "http"]"#, "")).await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let mut request = Vec::new();
    socks5::wire::socks4::encode_request(
        &socks5::wire::socks4::Request {
            command: socks5::wire::socks4::Command::Connect,
            destination: Address::Ip(frames),
            user_id: Vec::new(),
        },
        &mut request,
    )
    .unwrap();
    for first_bytes in [
        request.as_slice(),
        b"\x16\x03\x01\x02\x00",
        b"SSH-2.0-x\r\n",
    ] {
        let mut stream = connect(proxy).await;
        within(STEP, stream.write_all(first_bytes)).await.unwrap();
        // Closed (a reset is a close too: the bytes were left unread).
        let mut answer = Vec::new();
        let read = within(STEP, stream.read_to_end(&mut answer)).await;
        assert!(
            answer.is_empty() && read.is_ok_or_reset(),
            "{first_bytes:?} got {answer:?} ({read:?})"
        );
    }
    // The listener still serves what it lists.
    let (stream, status, _) = http_connect(proxy, &frames.to_string(), None).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn a_password_listener_keeps_socks4_out_and_asks_http_clients_to_log_in() {
    let server = Running::start(&shared(r#"["socks5", "socks4", "http"]"#, ALICE)).await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let (mut stream, cd) = socks4_connect(proxy, Address::Ip(frames)).await;
    assert_eq!(cd, 91, "SOCKS4 cannot send a password");
    assert!(read_to_close(&mut stream).await.is_empty());
    let target = frames.to_string();
    let (_, status, head) = http_connect(proxy, &target, None).await;
    assert_eq!(status, 407, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{head}"
    );
    let (_, status, _) = http_connect(proxy, &target, Some("alice:wrong")).await;
    assert_eq!(status, 407);
    let (stream, status, _) = http_connect(proxy, &target, Some("alice:s3cret")).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    let (stream, _) = client::connect(proxy, &Address::Ip(frames), Some(("alice", "s3cret")), STEP)
        .await
        .unwrap();
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn no_auth_networks_let_socks4_and_http_in_without_a_password() {
    let server = Running::start(&shared(
        r#"["socks4", "http"]"#,
        &format!("{ALICE}\nno_auth_networks = [\"127.0.0.0/8\"]"),
    ))
    .await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let (stream, cd) = socks4_connect(proxy, Address::Ip(frames)).await;
    assert_eq!(cd, 90);
    frame_through(stream).await;
    let (stream, status, _) = http_connect(proxy, &frames.to_string(), None).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn the_rules_apply_to_every_door() {
    let rule = "[[listener.rules]]\naction = \"deny\"\ndestinations = [\"127.0.0.1/32\"]";
    let server = Running::start(&shared(r#"["socks5", "socks4", "http"]"#, rule)).await;
    let (proxy, frames) = (server.addr("proxy"), server.addr("frames"));
    let (_, cd) = socks4_connect(proxy, Address::Ip(frames)).await;
    assert_eq!(cd, 91);
    let (_, status, head) = http_connect(proxy, &frames.to_string(), None).await;
    assert_eq!(status, 403, "{head}");
    let refused = client::connect(proxy, &Address::Ip(frames), None, STEP).await;
    assert!(
        matches!(
            refused,
            Err(socks5::Error::Rejected(socks5::Reply::NotAllowed))
        ),
        "{refused:?}"
    );
    server.stop().await;
}

trait ClosedOrReset {
    fn is_ok_or_reset(&self) -> bool;
}

impl ClosedOrReset for std::io::Result<usize> {
    fn is_ok_or_reset(&self) -> bool {
        match self {
            Ok(_) => true,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listeners.toml");
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn protocols_must_be_a_non_empty_set_of_known_names() {
    assert!(check(&shared(r#"["http", "socks4", "socks5"]"#, "")).0);
    for (protocols, expected) in [
        ("[]", "at least one"),
        (r#"["socks5", "socks5"]"#, "listed twice"),
        (
            r#"["socks6"]"#,
            "expected one of `socks5`, `socks4`, `http`",
        ),
    ] {
        let (ok, stderr) = check(&shared(protocols, ""));
        assert!(!ok, "{protocols} was accepted");
        assert!(stderr.contains(expected), "{protocols}: {stderr}");
    }
}

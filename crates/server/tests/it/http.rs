//! `mode = "http"`: CONNECT tunnels and absolute-form GETs through the listener, the 407
//! flow, rules answered 403, and its metrics; Rust peers speaking raw HTTP/1.1.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    admin::{Admin, wait_for_sample},
    common::{Running, STEP, within},
    doors::{frame_through, http_connect, read_head},
};

const FRAMES: &str =
    "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n";
const ALICE: &str =
    "auth = \"password\"\nusers = [{ username = \"alice\", password = \"s3cret\" }]";

fn http(extra: &str) -> String {
    format!(
        "{FRAMES}[[listener]]\nname = \"web\"\nmode = \"http\"\nbind = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// An origin server: answers every request on a connection with `200` and the path as the
/// body, keeping the connection open, and counts the connections it accepted.
async fn origin() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (accepted, connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = accepted.send(());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                    if head.ends_with(b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let path = text.split(' ').nth(1).unwrap_or("?").to_owned();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        head.clear();
                    }
                }
            });
        }
    });
    (address, connections)
}

async fn get(
    stream: &mut TcpStream,
    url: &str,
    credentials: Option<&str>,
) -> (u16, String, String) {
    use base64::Engine as _;
    let mut request = format!("GET {url} HTTP/1.1\r\nHost: origin\r\n");
    if let Some(credentials) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(credentials);
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let (status, head) = read_head(stream).await;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    within(STEP, stream.read_exact(&mut body)).await.unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn connect_tunnels_reach_their_target() {
    let server = Running::start(&http("")).await;
    let (stream, status, head) =
        http_connect(server.addr("web"), &server.addr("frames").to_string(), None).await;
    assert_eq!(status, 200, "{head}");
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn absolute_form_gets_are_forwarded_with_keep_alive() {
    let (origin, mut connections) = origin().await;
    let server = Running::start(&http("")).await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("web")))
        .await
        .unwrap();
    for path in ["/one", "/two"] {
        let (status, head, body) = get(&mut stream, &format!("http://{origin}{path}"), None).await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(body, path);
    }
    within(STEP, connections.recv()).await.unwrap();
    assert!(
        connections.try_recv().is_err(),
        "two requests, one origin connection"
    );
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_password_listener_answers_407_until_the_right_basic_credentials() {
    let (origin, _connections) = origin().await;
    let server = Running::start(&http(ALICE)).await;
    let (web, frames) = (server.addr("web"), server.addr("frames").to_string());
    let (_, status, head) = http_connect(web, &frames, None).await;
    assert_eq!(status, 407, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"netkit\""),
        "{head}"
    );
    let (_, status, _) = http_connect(web, &frames, Some("alice:nope")).await;
    assert_eq!(status, 407);
    let (stream, status, _) = http_connect(web, &frames, Some("alice:s3cret")).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    let mut stream = within(STEP, TcpStream::connect(web)).await.unwrap();
    let url = format!("http://{origin}/page");
    let (status, _, _) = get(&mut stream, &url, None).await;
    assert_eq!(status, 407);
    let (status, _, body) = get(&mut stream, &url, Some("alice:s3cret")).await;
    assert_eq!((status, body.as_str()), (200, "/page"));
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_rule_that_denies_the_target_is_answered_403() {
    let (origin, _connections) = origin().await;
    let rules = format!(
        "[[listener.rules]]\naction = \"deny\"\nports = [{}]",
        origin.port()
    );
    let server = Running::start(&http(&rules)).await;
    let web = server.addr("web");
    let (_, status, head) = http_connect(web, &origin.to_string(), None).await;
    assert_eq!(status, 403, "{head}");
    let mut stream = within(STEP, TcpStream::connect(web)).await.unwrap();
    let (status, _, _) = get(&mut stream, &format!("http://{origin}/"), None).await;
    assert_eq!(status, 403);
    drop(stream);
    // Another port is not denied.
    let (stream, status, _) = http_connect(web, &server.addr("frames").to_string(), None).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    server.stop().await;
}

#[tokio::test]
async fn http_sessions_are_counted_by_protocol_method_and_status() {
    let server = Admin::start(&http("[[listener.rules]]\naction = \"deny\"\nports = [9]")).await;
    let web = server.addr("web");
    let (stream, status, _) = http_connect(web, &server.addr("frames").to_string(), None).await;
    assert_eq!(status, 200);
    frame_through(stream).await;
    let (stream, status, _) = http_connect(web, "127.0.0.1:9", None).await;
    assert_eq!(status, 403);
    drop(stream);
    let labels = "listener=\"web\",mode=\"http\"";
    wait_for_sample(
        &server,
        &format!("netkit_proxy_sessions_total{{{labels},protocol=\"http\"}}"),
        2.0,
    )
    .await;
    wait_for_sample(
        &server,
        &format!("netkit_http_sessions_total{{{labels},method=\"connect\",status=\"2xx\"}}"),
        1.0,
    )
    .await;
    wait_for_sample(
        &server,
        &format!("netkit_http_sessions_total{{{labels},method=\"connect\",status=\"4xx\"}}"),
        1.0,
    )
    .await;
    wait_for_sample(
        &server,
        &format!("netkit_connections_rejected_total{{{labels},reason=\"rule\"}}"),
        1.0,
    )
    .await;
    server.stop().await;
}

#[test]
fn an_http_listener_rejects_socks_only_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listeners.toml");
    std::fs::write(&path, http("commands = [\"bind\"]")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown field `commands`"), "{stderr}");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_idle_timeout() {
    // The target (a crc-tcp listener) would keep an idle connection for its own default
    // idle_timeout, far longer than this test waits.
    let server = Running::start(&http("idle_timeout = \"300ms\"")).await;
    let (mut stream, status, head) =
        http_connect(server.addr("web"), &server.addr("frames").to_string(), None).await;
    assert_eq!(status, 200, "{head}");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = within(STEP, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
    server.stop().await;
}

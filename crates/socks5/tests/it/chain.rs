//! Upstream chaining (`via`): requests leave through a second SOCKS5 server of this crate or
//! through a small HTTP CONNECT proxy written here, both on loopback.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use socks5::{
    Action, Address, AuthPolicy, DomainPattern, Error, Reply, Rule, Rules, StaticResolver, Via,
    client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::harness::{LIMIT, Proxy, builder, echo_server, within};

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

/// A resolver that knows only `names`, all as 127.0.0.1.
fn knows(names: &[&str]) -> StaticResolver {
    StaticResolver::new(
        names
            .iter()
            .map(|name| ((*name).to_owned(), vec![IpAddr::from(LOCALHOST)])),
    )
}

/// The upstream: a SOCKS5 server that wants alice's password and knows `far.test`.
async fn upstream() -> Proxy {
    let auth = AuthPolicy::password([("alice".to_owned(), "wonderland".to_owned())], Vec::new());
    Proxy::start(
        builder()
            .authenticator(auth)
            .resolver(knows(&["far.test"]))
            .build(),
    )
    .await
}

fn via(text: &str) -> Via {
    text.parse().expect("valid via")
}

/// `*.internal` leaves directly; everything else through `upstream`.
fn internal_direct() -> Rules {
    Rules {
        rules: vec![Rule {
            domains: vec![DomainPattern::new("*.internal").expect("valid")],
            via: Some(Via::Direct),
            ..Rule::new(Action::Allow)
        }],
        default: Action::Allow,
    }
}

/// Sends `payload` through a CONNECT to `target` and reads the echo.
async fn echo_through(proxy: SocketAddr, target: &Address, payload: &[u8]) -> Result<(), Error> {
    let (mut stream, _) = within(LIMIT, client::connect(proxy, target, None, LIMIT)).await?;
    within(LIMIT, stream.write_all(payload)).await?;
    let mut back = vec![0; payload.len()];
    within(LIMIT, stream.read_exact(&mut back)).await?;
    assert_eq!(back, payload);
    Ok(())
}

/// The name goes to the upstream unresolved (the front does not know it, the upstream does),
/// with the upstream's password; `*.internal` goes directly (the upstream does not know it).
#[tokio::test]
async fn chains_through_a_second_server_and_routes_internal_names_directly() {
    let mut far = upstream().await;
    let echo = echo_server("127.0.0.1:0").await;
    let via = via(&format!("socks5://alice:wonderland@{}", far.address));
    let mut front = Proxy::start(
        builder()
            .via(via)
            .rules(internal_direct())
            .resolver(knows(&["db.internal"]))
            .build(),
    )
    .await;

    let direct = Address::Domain("db.internal".into(), echo.port());
    echo_through(front.address, &direct, b"direct")
        .await
        .expect("db.internal directly");
    let report = front.report().await;
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert!(report.via.is_none(), "{:?}", report.via);

    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let chained = Address::Domain("far.test".into(), echo.port());
    echo_through(front.address, &chained, &payload)
        .await
        .expect("far.test through the upstream");
    let seen = far.report().await;
    assert_eq!(
        seen.destination,
        Some(chained.clone()),
        "the name, unresolved"
    );
    assert_eq!(seen.user.as_deref(), Some("alice"));
    assert_eq!(seen.reply, Some(Reply::Succeeded));
    assert_eq!((seen.bytes_up, seen.bytes_down), (50_000, 50_000));
    let report = front.report().await;
    assert_eq!((report.bytes_up, report.bytes_down), (50_000, 50_000));
    let shown = report.via.as_ref().map(ToString::to_string);
    assert_eq!(shown, Some(format!("socks5://alice@{}", far.address)));
}

/// A rule that decides by address sends the address, not the name, to the upstream.
#[tokio::test]
async fn a_rule_matched_by_address_sends_the_address() {
    let mut far = upstream().await;
    let echo = echo_server("127.0.0.1:0").await;
    let rules = Rules {
        rules: vec![Rule {
            destinations: vec!["127.0.0.0/8".parse().expect("valid")],
            via: Some(via(&format!("socks5://alice:wonderland@{}", far.address))),
            ..Rule::new(Action::Allow)
        }],
        default: Action::Deny,
    };
    let front = Proxy::start(
        builder()
            .rules(rules)
            .resolver(knows(&["near.test"]))
            .build(),
    )
    .await;
    let target = Address::Domain("near.test".into(), echo.port());
    echo_through(front.address, &target, b"by address")
        .await
        .expect("through the upstream");
    let seen = far.report().await;
    assert_eq!(seen.destination, Some(Address::Ip(echo)));
}

/// The upstream refuses our login: the client gets X'01', and one warning names the upstream
/// (never the password).
#[tokio::test]
async fn a_wrong_upstream_password_fails_with_a_general_failure_and_a_warning() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = Arc::clone(&log);
            move || Captured(Arc::clone(&log))
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut far = upstream().await;
    let via = via(&format!("socks5://alice:hunter2@{}", far.address));
    let mut front = Proxy::start(builder().via(via).build()).await;
    let target = Address::Domain("far.test".into(), 9);
    let refused = within(LIMIT, client::connect(front.address, &target, None, LIMIT)).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::GeneralFailure))),
        "{refused:?}"
    );
    let report = front.report().await;
    assert!(
        matches!(&report.error, Some(Error::Upstream { error, .. }) if matches!(**error, Error::AuthFailed)),
        "{:?}",
        report.error
    );
    let seen = far.report().await;
    assert!(matches!(seen.error, Some(Error::AuthFailed)), "{seen:?}");
    let log = String::from_utf8(log.lock().expect("not poisoned").clone()).expect("UTF-8");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("the upstream proxy refused our login"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let expected = format!("upstream=socks5://alice@{}", far.address);
    assert!(
        warnings[0].contains(" WARN ") && warnings[0].contains(&expected),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}

/// Collects log output.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The upstream's own reply about the destination passes through: refused → X'05'.
#[tokio::test]
async fn the_upstreams_reply_passes_through() {
    let far = upstream().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let via = via(&format!("socks5://alice:wonderland@{}", far.address));
    let mut front = Proxy::start(builder().via(via).build()).await;
    let target = Address::Domain("far.test".into(), closed.port());
    let refused = within(LIMIT, client::connect(front.address, &target, None, LIMIT)).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Reply::ConnectionRefused))),
        "{refused:?}"
    );
    let report = front.report().await;
    assert_eq!(report.reply, Some(Reply::ConnectionRefused));
}

/// What the test HTTP proxy saw of a CONNECT: the request line and Proxy-Authorization.
type Seen = (String, Option<String>);

/// A tiny HTTP CONNECT proxy: reads the request head, answers `status`, and for 200 connects
/// to `target` (whatever the request named), writes `early` right after the response head (in
/// the same write) and relays.
async fn http_proxy(
    status: &'static str,
    target: SocketAddr,
    early: &'static [u8],
) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (seen, requests) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("proxy-authorization: "))
                    .map(str::to_owned);
                let _ = seen.send((line, auth)).await;
                let mut answer = format!("HTTP/1.1 {status}\r\n\r\n").into_bytes();
                if !status.starts_with("200") {
                    let _ = stream.write_all(&answer).await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                answer.extend_from_slice(early);
                if stream.write_all(&answer).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                }
            });
        }
    });
    (address, requests)
}

/// Through an HTTP upstream: CONNECT with the name and Basic credentials; the bytes the
/// destination sent with the response reach the client first, then the tunnel echoes.
#[tokio::test]
async fn chains_through_an_http_upstream() {
    let echo = echo_server("127.0.0.1:0").await;
    let (http, mut requests) = http_proxy("200 Connection established", echo, b"early:").await;
    let via = via(&format!("http://alice:wonder%3Aland@{http}"));
    let mut front = Proxy::start(builder().via(via).build()).await;
    let target = Address::Domain("far.test".into(), 443);
    let connected = within(LIMIT, client::connect(front.address, &target, None, LIMIT)).await;
    let Ok((mut stream, _)) = connected else {
        panic!(
            "CONNECT through HTTP: {connected:?}: {:?}",
            front.report().await
        );
    };
    let mut early = [0; 6];
    within(LIMIT, stream.read_exact(&mut early))
        .await
        .expect("early bytes");
    assert_eq!(&early, b"early:");
    within(LIMIT, stream.write_all(b"over http"))
        .await
        .expect("write");
    let mut back = [0; 9];
    within(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(&back, b"over http");
    drop(stream);
    let (line, auth) = within(LIMIT, requests.recv()).await.expect("a request");
    assert_eq!(line, "CONNECT far.test:443 HTTP/1.1");
    // base64("alice:wonder:land")
    assert_eq!(auth.as_deref(), Some("Basic YWxpY2U6d29uZGVyOmxhbmQ="));
    let report = front.report().await;
    assert_eq!(report.reply, Some(Reply::Succeeded));
    assert_eq!((report.bytes_up, report.bytes_down), (9, 6 + 9));
    let shown = report.via.as_ref().map(ToString::to_string);
    assert_eq!(shown, Some(format!("http://alice@{http}")));
}

/// An HTTP upstream's refusal maps to a reply: 407 (our login) → X'01', 403 → X'02', 502 →
/// X'04'.
#[tokio::test]
async fn an_http_upstreams_status_maps_to_a_reply() {
    let unused: SocketAddr = "127.0.0.1:9".parse().expect("valid");
    for (status, reply) in [
        ("407 Proxy Authentication Required", Reply::GeneralFailure),
        ("403 Forbidden", Reply::NotAllowed),
        ("502 Bad Gateway", Reply::HostUnreachable),
    ] {
        let (http, _requests) = http_proxy(status, unused, b"").await;
        let front = Proxy::start(builder().via(via(&format!("http://{http}"))).build()).await;
        let target = Address::Domain("far.test".into(), 443);
        let refused = within(LIMIT, client::connect(front.address, &target, None, LIMIT)).await;
        assert!(
            matches!(refused, Err(Error::Rejected(got)) if got == reply),
            "{status}: {refused:?}"
        );
    }
}

/// An upstream that accepts and never answers holds the client no longer than
/// `connect_timeout`: X'04', as for a silent destination.
#[tokio::test]
async fn a_silent_upstream_is_bounded_by_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream); // never read, never answered
        }
    });
    for scheme in ["socks5", "http"] {
        let options = builder()
            .via(via(&format!("{scheme}://{address}")))
            .connect_timeout(std::time::Duration::from_millis(300))
            .build();
        let mut front = Proxy::start(options).await;
        let target = Address::Domain("far.test".into(), 443);
        let late = within(LIMIT, client::connect(front.address, &target, None, LIMIT)).await;
        assert!(
            matches!(late, Err(Error::Rejected(Reply::HostUnreachable))),
            "{scheme}: {late:?}"
        );
        let report = front.report().await;
        assert!(
            matches!(report.error, Some(Error::ConnectTimeout { .. })),
            "{scheme}: {:?}",
            report.error
        );
    }
    held.abort();
}

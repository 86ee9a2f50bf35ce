//! The HTTP front door over real loopback sockets: clients written here byte by byte, an echo
//! server for tunnels, a hyper origin for forwarded requests, and a dialer that connects on
//! loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use http_proxy::{
    BoxedStream, DialError, DialFuture, Dialer, Error, HttpProxy, ProxyOptions, SessionReport,
    Target,
};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use testkit::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

/// Connects IP targets on loopback and names from its table; `denied.test` is refused by
/// "the rules", `silent.test` never answers. Remembers the user of every dial.
#[derive(Default)]
struct LoopbackDialer {
    names: HashMap<String, SocketAddr>,
    users: Mutex<Vec<Option<String>>>,
    dials: AtomicUsize,
}

impl Dialer for LoopbackDialer {
    fn dial<'a>(&'a self, target: &'a Target, user: Option<&'a str>) -> DialFuture<'a> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            self.users
                .lock()
                .expect("not poisoned")
                .push(user.map(str::to_owned));
            let address = match target {
                Target::Ip(address) => *address,
                Target::Domain(name, _) if name == "denied.test" => {
                    return Err(DialError::Denied {
                        target: target.clone(),
                    });
                }
                Target::Domain(name, _) if name == "silent.test" => {
                    std::future::pending::<()>().await;
                    unreachable!("pending never ends")
                }
                Target::Domain(name, port) => match self.names.get(name) {
                    Some(address) => SocketAddr::new(address.ip(), *port),
                    None => {
                        return Err(DialError::Unreachable {
                            target: target.clone(),
                            error: std::io::ErrorKind::NotFound.into(),
                        });
                    }
                },
            };
            assert!(address.ip().is_loopback(), "tests stay on loopback");
            match TcpStream::connect(address).await {
                Ok(stream) => Ok(Box::new(stream) as BoxedStream),
                Err(error) => Err(DialError::Unreachable {
                    target: target.clone(),
                    error,
                }),
            }
        })
    }
}

/// A proxy on 127.0.0.1:0 serving every connection; each report arrives on the channel.
async fn start_proxy(proxy: HttpProxy) -> (SocketAddr, mpsc::Receiver<SessionReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound");
    let (reports, received) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (proxy, reports) = (proxy.clone(), reports.clone());
            tokio::spawn(async move {
                let report = proxy.serve(stream, peer, CancellationToken::new()).await;
                let _ = reports.send(report).await;
            });
        }
    });
    (address, received)
}

/// An echo server on 127.0.0.1:0.
async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    address
}

/// A hyper origin on 127.0.0.1:0 that answers every request with what it saw, and counts the
/// connections it accepted.
async fn start_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let service = service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.expect("a whole body").to_bytes();
                    let proxy_headers: Vec<&str> = parts
                        .headers
                        .keys()
                        .map(|name| name.as_str())
                        .filter(|name| name.starts_with("proxy-") || *name == "connection")
                        .collect();
                    let text = format!(
                        "{} {} {:?} host={} proxy-headers={proxy_headers:?} connection={connection} body={}",
                        parts.method,
                        parts.uri,
                        parts.version,
                        parts
                            .headers
                            .get("host")
                            .map_or("", |h| h.to_str().unwrap_or("?")),
                        String::from_utf8_lossy(&body),
                    );
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (address, accepted)
}

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response head byte by byte (so nothing after it is consumed), then a body of
/// `Content-Length` bytes, or none (CONNECT's 200).
async fn read_answer(stream: &mut TcpStream) -> Answer {
    within(LIMIT, async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 64 * 1024, "no end of the response head");
            let byte = stream.read_u8().await.expect("a response head");
            head.push(byte);
        }
        let head = String::from_utf8(head).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status in {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').expect("name: value");
                (name.to_owned(), value.trim().to_owned())
            })
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = answer
            .header("content-length")
            .map_or(0, |v| v.parse().expect("a length"));
        answer.body = vec![0; len];
        stream.read_exact(&mut answer.body).await.expect("the body");
        answer
    })
    .await
}

/// Asserts that the proxy closes the connection: the next read returns 0.
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = within(LIMIT, stream.read_to_end(&mut rest))
        .await
        .expect("a clean close");
    assert_eq!(
        n,
        0,
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

async fn send(stream: &mut TcpStream, bytes: impl AsRef<[u8]>) {
    within(LIMIT, stream.write_all(bytes.as_ref()))
        .await
        .expect("write");
}

async fn next_report(reports: &mut mpsc::Receiver<SessionReport>) -> SessionReport {
    within(LIMIT, reports.recv()).await.expect("a report")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn open_proxy(dialer: Arc<LoopbackDialer>) -> HttpProxy {
    HttpProxy::new(ProxyOptions::default(), dialer)
}

#[tokio::test]
async fn connect_tunnels_to_an_echo_server() {
    let echo = start_echo().await;
    let dialer = Arc::new(LoopbackDialer {
        names: HashMap::from([("echo.test".to_owned(), echo)]),
        ..LoopbackDialer::default()
    });
    let (proxy, mut reports) = start_proxy(open_proxy(Arc::clone(&dialer))).await;

    // By IP, with data sent in the same write as the request head (as a TLS client may).
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    send(
        &mut client,
        format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nearly"),
    )
    .await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // RFC 9110 §9.3.6: no Content-Length or Transfer-Encoding in a 2xx to CONNECT.
    assert!(answer.header("content-length").is_none(), "{answer:?}");
    assert!(answer.header("transfer-encoding").is_none(), "{answer:?}");
    let mut echoed = [0; 5];
    within(LIMIT, client.read_exact(&mut echoed))
        .await
        .expect("echo");
    assert_eq!(&echoed, b"early");
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    send(&mut client, &payload).await;
    let mut back = vec![0; payload.len()];
    within(LIMIT, client.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(back, payload);
    drop(client);
    let report = next_report(&mut reports).await;
    assert_eq!(report.tunnel, Some(Target::Ip(echo)));
    assert_eq!(report.last_status.map(|s| s.as_u16()), Some(200));
    assert_eq!(report.requests, 1);
    assert!(
        report.bytes_in > 100_005 && report.bytes_out > 100_005,
        "{report:?}"
    );
    assert!(report.error.is_none(), "{report:?}");

    // By name, any port: the name reaches the dialer unresolved.
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    let port = echo.port();
    send(
        &mut client,
        format!("CONNECT echo.test:{port} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 200);
    send(&mut client, b"by name").await;
    let mut echoed = [0; 7];
    within(LIMIT, client.read_exact(&mut echoed))
        .await
        .expect("echo");
    assert_eq!(&echoed, b"by name");
    drop(client);
    let report = next_report(&mut reports).await;
    assert_eq!(
        report.tunnel,
        Some(Target::Domain("echo.test".into(), port))
    );
}

#[tokio::test]
async fn dial_errors_answer_403_502_and_504() {
    let refused = testkit::free_loopback_port().expect("a free port");
    let dialer = Arc::new(LoopbackDialer::default());
    let mut options = ProxyOptions::default();
    // The backstop on a dialer that never answers (the test's bound, not a timing assert).
    options.dial_timeout = Duration::from_millis(200);
    let (proxy, mut reports) = start_proxy(HttpProxy::new(options, dialer)).await;

    let mut client = TcpStream::connect(proxy).await.expect("connect");
    // All on one connection: an error answer keeps it open.
    let table = [
        ("denied.test:443".to_owned(), 403),
        (refused.to_string(), 502),
        ("nowhere.test:80".to_owned(), 502),
        ("silent.test:443".to_owned(), 504),
    ];
    for (target, status) in &table {
        send(&mut client, format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        let answer = read_answer(&mut client).await;
        assert_eq!(answer.status, *status, "{target}: {answer:?}");
        assert!(answer.text().starts_with(&status.to_string()), "{answer:?}");
    }
    // A plain request after them still works on the same connection (here a 400: origin-form).
    send(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_answer(&mut client).await.status, 400);
    assert_closed(&mut client).await;
    let report = next_report(&mut reports).await;
    assert_eq!(report.requests, 5);
    assert!(report.tunnel.is_none());
    assert!(
        matches!(report.error, Some(Error::NotAbsolute(_))),
        "{report:?}"
    );
}

#[tokio::test]
async fn connect_takes_only_authority_form_with_a_port() {
    let dialer = Arc::new(LoopbackDialer::default());
    let (proxy, _reports) = start_proxy(open_proxy(Arc::clone(&dialer))).await;
    for target in [
        "example.test",
        "/index.html",
        "http://example.test:80/",
        "user@example.test:80",
        "*",
    ] {
        let mut client = TcpStream::connect(proxy).await.expect("connect");
        send(&mut client, format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        let answer = read_answer(&mut client).await;
        assert_eq!(answer.status, 400, "{target}: {answer:?}");
        assert_closed(&mut client).await;
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn forwards_absolute_form_requests_on_one_kept_alive_origin_connection() {
    let (origin, accepted) = start_origin().await;
    let dialer = Arc::new(LoopbackDialer {
        names: HashMap::from([("origin.test".to_owned(), origin)]),
        ..LoopbackDialer::default()
    });
    let (proxy, mut reports) = start_proxy(open_proxy(Arc::clone(&dialer))).await;
    let port = origin.port();

    let mut client = TcpStream::connect(proxy).await.expect("connect");
    send(
        &mut client,
        format!(
            "GET http://origin.test:{port}/one?x=1 HTTP/1.1\r\nHost: origin.test:{port}\r\n\
             Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic {}\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
            basic("a", "b")
        ),
    )
    .await;
    let first = read_answer(&mut client).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.text(),
        format!(
            "GET /one?x=1 HTTP/1.1 host=origin.test:{port} proxy-headers=[] connection=1 body="
        )
    );
    // The second request, with a body, goes over the same origin connection.
    send(
        &mut client,
        format!(
            "POST http://origin.test:{port}/two HTTP/1.1\r\nHost: wrong.test\r\n\
             Content-Length: 5\r\n\r\nhello"
        ),
    )
    .await;
    let second = read_answer(&mut client).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(
        second.text(),
        format!(
            "POST /two HTTP/1.1 host=origin.test:{port} proxy-headers=[] connection=1 body=hello"
        )
    );
    // A chunked body is forwarded whole too.
    send(
        &mut client,
        format!(
            "PUT http://origin.test:{port}/three HTTP/1.1\r\nHost: origin.test\r\n\
             Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        ),
    )
    .await;
    let third = read_answer_chunked_or_sized(&mut client).await;
    assert_eq!(
        third,
        format!(
            "PUT /three HTTP/1.1 host=origin.test:{port} proxy-headers=[] connection=1 body=abcde"
        )
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one origin connection");
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 1);

    // https:// in absolute form is refused, and closes.
    send(
        &mut client,
        b"GET https://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 400);
    assert_closed(&mut client).await;
    let report = next_report(&mut reports).await;
    assert_eq!(report.requests, 4);
    assert!(matches!(report.error, Some(Error::Https(_))), "{report:?}");
}

/// The body of a response that is either sized or chunked (hyper picks).
async fn read_answer_chunked_or_sized(stream: &mut TcpStream) -> String {
    let answer = read_answer(stream).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    if answer.header("transfer-encoding").is_none() {
        return answer.text();
    }
    // Chunked: size line, data, CRLF ... 0 CRLF CRLF.
    within(LIMIT, async {
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                line.push(stream.read_u8().await.expect("a chunk size"));
            }
            let size = usize::from_str_radix(std::str::from_utf8(&line).expect("ASCII").trim(), 16)
                .expect("hex size");
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await.expect("a chunk");
            if size == 0 {
                return String::from_utf8(body).expect("text");
            }
            body.extend_from_slice(&chunk[..size]);
        }
    })
    .await
}

#[tokio::test]
async fn asks_for_a_password_with_407_and_accepts_the_right_one() {
    let echo = start_echo().await;
    let (origin, _) = start_origin().await;
    let dialer = Arc::new(LoopbackDialer::default());
    let policy = socks5::AuthPolicy::password([("alice".to_owned(), "secret".to_owned())], vec![]);
    let proxy = open_proxy(Arc::clone(&dialer)).with_auth(Arc::new(policy));
    let (proxy, mut reports) = start_proxy(proxy).await;

    let mut client = TcpStream::connect(proxy).await.expect("connect");
    let attempts = [
        (String::new(), 407),
        (
            format!("Proxy-Authorization: Basic {}\r\n", basic("alice", "wrong")),
            407,
        ),
        (
            format!(
                "Proxy-Authorization: Basic {}\r\n",
                basic("mallory", "secret")
            ),
            407,
        ),
        ("Proxy-Authorization: Bearer abc\r\n".to_owned(), 407),
    ];
    for (credentials, status) in &attempts {
        send(
            &mut client,
            format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n{credentials}\r\n"),
        )
        .await;
        let answer = read_answer(&mut client).await;
        assert_eq!(answer.status, *status, "{credentials:?}");
        assert_eq!(
            answer.header("proxy-authenticate"),
            Some("Basic realm=\"netkit\"")
        );
    }
    assert_eq!(
        dialer.dials.load(Ordering::SeqCst),
        0,
        "nothing dialed before a login"
    );
    // The right password, on the same connection: a forwarded GET, then a tunnel.
    let credentials = format!(
        "Proxy-Authorization: Basic {}\r\n",
        basic("alice", "secret")
    );
    send(
        &mut client,
        format!("GET http://{origin}/ok HTTP/1.1\r\nHost: {origin}\r\n{credentials}\r\n"),
    )
    .await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.text().contains("proxy-headers=[]"), "{answer:?}");
    send(
        &mut client,
        format!("CONNECT {echo} HTTP/1.1\r\n{credentials}\r\n"),
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 200);
    send(&mut client, b"tunnelled").await;
    let mut echoed = [0; 9];
    within(LIMIT, client.read_exact(&mut echoed))
        .await
        .expect("echo");
    assert_eq!(&echoed, b"tunnelled");
    drop(client);
    let report = next_report(&mut reports).await;
    assert_eq!(report.user.as_deref(), Some("alice"));
    assert_eq!(
        *dialer.users.lock().expect("not poisoned"),
        [Some("alice".to_owned()), Some("alice".to_owned())]
    );
}

#[tokio::test]
async fn clients_exempt_from_the_login_need_no_password() {
    let echo = start_echo().await;
    let dialer = Arc::new(LoopbackDialer::default());
    let policy = socks5::AuthPolicy::password(
        [("alice".to_owned(), "secret".to_owned())],
        vec!["127.0.0.0/8".parse().expect("valid")],
    );
    let proxy = open_proxy(Arc::clone(&dialer)).with_auth(Arc::new(policy));
    let (proxy, _reports) = start_proxy(proxy).await;
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    send(&mut client, format!("CONNECT {echo} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(read_answer(&mut client).await.status, 200);
    assert_eq!(*dialer.users.lock().expect("not poisoned"), [None]);
}

#[tokio::test]
async fn malformed_requests_get_400_and_a_close() {
    let dialer = Arc::new(LoopbackDialer::default());
    let (proxy, mut reports) = start_proxy(open_proxy(Arc::clone(&dialer))).await;
    let table: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET http://a.test/ HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ];
    for bytes in table {
        let mut client = TcpStream::connect(proxy).await.expect("connect");
        send(&mut client, bytes).await;
        let answer = read_answer(&mut client).await;
        assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(bytes));
        assert_closed(&mut client).await;
        let report = next_report(&mut reports).await;
        assert!(matches!(report.error, Some(Error::Http(_))), "{report:?}");
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_oversized_head_gets_431_and_a_close() {
    let dialer = Arc::new(LoopbackDialer::default());
    let mut options = ProxyOptions::default();
    options.max_header_len = 16 * 1024;
    let (proxy, mut reports) = start_proxy(HttpProxy::new(options, dialer)).await;
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    let big = "a".repeat(20 * 1024);
    // The proxy answers before the head ends; it may close while this is still being sent.
    let _ = client
        .write_all(format!("GET http://a.test/ HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.status, 431, "{answer:?}");
    let report = next_report(&mut reports).await;
    assert!(matches!(report.error, Some(Error::Http(_))), "{report:?}");
    let mut rest = Vec::new();
    // Closed: EOF, or a reset because unread request bytes were left behind.
    let read = within(LIMIT, client.read_to_end(&mut rest)).await;
    assert!(rest.is_empty() && read.map_or(true, |n| n == 0), "{rest:?}");

    // Just under the limit passes (and is refused only for being origin-form).
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    let fits = "a".repeat(15 * 1024);
    send(
        &mut client,
        format!("GET / HTTP/1.1\r\nX-Big: {fits}\r\n\r\n"),
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 400);
}

#[tokio::test]
async fn a_head_not_sent_in_time_closes_the_connection() {
    let dialer = Arc::new(LoopbackDialer::default());
    let mut options = ProxyOptions::default();
    options.header_read_timeout = Duration::from_millis(200);
    let (proxy, mut reports) = start_proxy(HttpProxy::new(options, dialer)).await;
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    send(&mut client, b"GET http://a.test/ HTTP/1.1\r\nHost: a").await;
    // The proxy gives up and closes (no answer is owed to a client that never finished).
    let mut rest = Vec::new();
    let _ = within(LIMIT, client.read_to_end(&mut rest)).await;
    let report = next_report(&mut reports).await;
    assert_eq!(report.requests, 0);
    assert!(matches!(report.error, Some(Error::Http(_))), "{report:?}");
}

#[tokio::test]
async fn stop_ends_an_idle_kept_alive_connection() {
    let (origin, _) = start_origin().await;
    let dialer = Arc::new(LoopbackDialer::default());
    let proxy = open_proxy(dialer);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound");
    let stop = CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            proxy.serve(stream, peer, stop).await
        })
    };
    let mut client = TcpStream::connect(address).await.expect("connect");
    send(
        &mut client,
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 200);
    stop.cancel();
    let report = within(LIMIT, server).await.expect("served");
    assert_eq!(report.requests, 1);
    assert_closed(&mut client).await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_read_timeout() {
    let (origin, _) = start_origin().await;
    let dialer = Arc::new(LoopbackDialer::default());
    let mut options = ProxyOptions::default();
    options.header_read_timeout = Duration::from_millis(300);
    let (proxy, mut reports) = start_proxy(HttpProxy::new(options, dialer)).await;
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    send(
        &mut client,
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
    )
    .await;
    assert_eq!(read_answer(&mut client).await.status, 200);
    // No next request: the wait for its head is bounded like any other.
    assert_closed(&mut client).await;
    let report = next_report(&mut reports).await;
    assert_eq!(report.requests, 1);
}

/// A log sink for the current thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
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

/// A failed login logs the SOCKS5 door's one warn line (the format contrib/fail2ban
/// matches), with the reason, and never the password; a request without credentials logs no
/// warning (browsers always ask first without).
#[tokio::test(flavor = "current_thread")]
async fn a_failed_login_logs_the_fail2ban_line() {
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dialer = Arc::new(LoopbackDialer::default());
    let policy = socks5::AuthPolicy::password([("alice".to_owned(), "secret".to_owned())], vec![]);
    let proxy = open_proxy(dialer).with_auth(Arc::new(policy));
    let (proxy, _reports) = start_proxy(proxy).await;
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    let local = client.local_addr().expect("bound");
    for credentials in [
        String::new(),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            basic("alice", "hunter2")
        ),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            basic("bob\" x=\"1", "pw")
        ),
    ] {
        send(
            &mut client,
            format!("CONNECT a.test:443 HTTP/1.1\r\n{credentials}\r\n"),
        )
        .await;
        assert_eq!(read_answer(&mut client).await.status, 407);
    }
    let text = String::from_utf8(log.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(&format!(
            "authentication failed client={local} reason=\"wrong password\" user=\"alice\""
        )),
        "{text}"
    );
    assert!(
        lines[1].contains(&format!(
            "authentication failed client={local} reason=\"unknown user\" user=\"bob\\\" x=\\\"1\""
        )),
        "{text}"
    );
    assert!(lines.iter().all(|line| line.contains(" WARN ")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Many tunnels at once, each with its own random sizes and contents, written and read
/// concurrently: every byte comes back in order. Bounded in count (24 tunnels, at most 256 KiB
/// each) and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_relay_every_byte() {
    let echo = start_echo().await;
    let dialer = Arc::new(LoopbackDialer::default());
    let (proxy, mut reports) = start_proxy(open_proxy(dialer)).await;
    let mut rng = testkit::SplitMix64::new(0x4854_5450);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let len = rng.in_range(1..=256 * 1024);
        let payload = rng.bytes(len);
        let chunk = rng.in_range(1..=16 * 1024);
        clients.spawn(async move {
            let mut client = TcpStream::connect(proxy).await.expect("connect");
            send(&mut client, format!("CONNECT {echo} HTTP/1.1\r\n\r\n")).await;
            assert_eq!(read_answer(&mut client).await.status, 200);
            let (mut read, mut write) = client.into_split();
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                for part in sent.chunks(chunk) {
                    write.write_all(part).await.expect("write");
                }
                write
            });
            let mut back = vec![0; payload.len()];
            read.read_exact(&mut back).await.expect("echo");
            assert!(back == payload, "bytes differ");
            drop(writer.await.expect("writer"));
            payload.len()
        });
    }
    let relayed = within(Duration::from_secs(60), async {
        let mut total = 0;
        while let Some(done) = clients.join_next().await {
            total += done.expect("a client");
        }
        total
    })
    .await;
    let mut reported = 0;
    for _ in 0..24 {
        let report = next_report(&mut reports).await;
        assert!(report.error.is_none(), "{report:?}");
        reported += report.bytes_in;
    }
    assert!(
        reported >= u64::try_from(relayed).expect("fits"),
        "{reported} < {relayed}"
    );
}

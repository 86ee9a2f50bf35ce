//! The `[admin]` endpoint: /healthz, /readyz (also while draining), /metrics
//! after real traffic, and a clear error when its address is taken. The HTTP
//! client is a raw `TcpStream` writing a GET.

use std::{net::SocketAddr, time::Duration};

use server::{Config, Server};
use socks5::{Address, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::common::{ACK_OK_0, REFERENCE_FRAME, STEP, read_to_close, send, within};

/// An in-process server with `[admin]` on an ephemeral port.
pub(crate) struct Admin {
    admin: SocketAddr,
    addrs: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Admin {
    pub(crate) async fn start(listeners: &str) -> Self {
        let text = format!("[admin]\nbind = \"127.0.0.1:0\"\n{listeners}");
        let config = Config::parse(&text, "test config").expect("test config is valid");
        let server = Server::bind(&config).await.expect("server binds");
        let admin = server.admin_addr().expect("[admin] is set");
        let addrs = server.local_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            admin,
            addrs,
            shutdown,
            task,
        }
    }

    pub(crate) fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("listener exists")
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        request(self.admin, "GET", path).await
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        within(STEP, self.task)
            .await
            .expect("server task")
            .expect("server ran");
    }
}

const LISTENERS: &str = "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
    [[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n";

/// One HTTP/1.1 request on its own connection: (status, body).
pub(crate) async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = within(STEP, TcpStream::connect(addr))
        .await
        .expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    within(STEP, stream.write_all(head.as_bytes()))
        .await
        .expect("write");
    let response = String::from_utf8(read_to_close(&mut stream).await).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Polls `condition` every 10 ms until it holds, failing after `STEP`.
async fn until<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    within(STEP, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The value of the sample line that starts with `series ` (name and labels exactly).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Checks that every line is a `# HELP`/`# TYPE` comment or a sample
/// `name{label="value",...} value`, and that every sample's family was typed.
fn check_format(metrics: &str) {
    let mut typed = Vec::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "not a value in {line:?}"
        );
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                Some(
                    labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("{line:?}")),
                ),
            ),
            None => (series, None),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        for label in labels.into_iter().flat_map(|l| l.split(',')) {
            let (key, value) = label.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line:?}"
            );
            assert!(
                value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                "{line:?}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| typed.iter().any(|t| t == base))
            .unwrap_or(name);
        assert!(typed.iter().any(|t| t == family), "untyped sample {line:?}");
    }
}

#[tokio::test]
async fn healthz_readyz_and_unknown_paths() {
    let server = Admin::start(LISTENERS).await;
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(server.get("/nope").await.0, 404);
    assert_eq!(server.get("/metrics/x").await.0, 404);
    assert_eq!(request(server.admin, "POST", "/metrics").await.0, 405);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_frames_and_socks5_requests_with_listener_labels() {
    let server = Admin::start(LISTENERS).await;
    let (frames, proxy) = (server.addr("frames"), server.addr("proxy"));
    // A frame straight to the crc-tcp listener, acked ok.
    let mut direct = send(frames, &REFERENCE_FRAME).await;
    let mut ack = [0u8; 25];
    within(STEP, direct.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(direct);
    // A CONNECT through the socks5 listener to it, with a frame.
    let (mut tunnel, _) = client::connect(proxy, &Address::Ip(frames), None, STEP)
        .await
        .unwrap();
    within(STEP, tunnel.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    within(STEP, tunnel.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(tunnel);
    // Something that is not SOCKS5 at all.
    let mut http = send(proxy, b"GET / HTTP/1.1\r\n\r\n").await;
    read_to_close(&mut http).await;

    let socks = "listener=\"proxy\",mode=\"socks5\"";
    let crc = "listener=\"frames\",mode=\"crc-tcp\"";
    let requests =
        format!("netkit_socks5_requests_total{{{socks},command=\"connect\",reply=\"succeeded\"}}");
    let protocol = format!("netkit_socks5_handshake_failures_total{{{socks},reason=\"protocol\"}}");
    // Sessions are counted when they end, and an ack's latency once it is written (the
    // client may read the ack first, on another worker thread): wait for all three.
    let acks = format!("netkit_frame_ack_seconds_count{{{crc}}}");
    let metrics = within(STEP, async {
        loop {
            let (status, body) = server.get("/metrics").await;
            assert_eq!(status, 200);
            if sample(&body, &requests) == Some(1.0)
                && sample(&body, &protocol) == Some(1.0)
                && sample(&body, &acks) == Some(2.0)
            {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    check_format(&metrics);
    let expect = |series: String, value: f64| {
        assert_eq!(
            sample(&metrics, &series),
            Some(value),
            "{series} in\n{metrics}"
        );
    };
    expect(format!("netkit_frames_total{{{crc},status=\"ok\"}}"), 2.0);
    expect(
        format!("netkit_frames_total{{{crc},status=\"crc_mismatch\"}}"),
        0.0,
    );
    expect(format!("netkit_frame_ack_seconds_count{{{crc}}}"), 2.0);
    expect(format!("netkit_connections_accepted_total{{{crc}}}"), 2.0);
    expect(format!("netkit_connections_accepted_total{{{socks}}}"), 2.0);
    expect(format!("netkit_connections_active{{{socks}}}"), 0.0);
    expect(
        format!("netkit_bytes_total{{{socks},direction=\"in\"}}"),
        14.0,
    );
    expect(
        format!("netkit_bytes_total{{{socks},direction=\"out\"}}"),
        25.0,
    );
    expect(
        format!("netkit_connections_rejected_total{{{socks},reason=\"rule\"}}"),
        0.0,
    );
    expect(
        format!("netkit_connections_rejected_total{{{crc},reason=\"per_ip_limit\"}}"),
        0.0,
    );
    expect(
        format!("netkit_socks5_connect_seconds_count{{{socks}}}"),
        1.0,
    );
    expect(
        format!("netkit_socks5_session_seconds_count{{{socks}}}"),
        1.0,
    );
    expect(format!("netkit_socks5_auth_failures_total{{{socks}}}"), 0.0);
    expect(
        format!("netkit_socks5_udp_datagrams_total{{{socks},direction=\"in\"}}"),
        0.0,
    );
    expect(
        format!(
            "netkit_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    expect(
        "netkit_config_reloads_total{result=\"error\"}".to_owned(),
        0.0,
    );
    for family in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "# TYPE netkit_socks5_connect_seconds histogram",
    ] {
        assert!(metrics.contains(family), "no {family:?} in\n{metrics}");
    }
    // No label carries a client address (the listeners' own names do not either).
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    // crc-tcp families only for crc-tcp listeners, socks5 ones only for socks5 listeners.
    assert!(!metrics.contains("netkit_frames_total{listener=\"proxy\""));
    assert!(!metrics.contains("netkit_socks5_requests_total{listener=\"frames\""));
    server.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_while_draining_and_healthz_200() {
    let server = Admin::start(&format!("[server]\ndrain_timeout = \"20s\"\n{LISTENERS}")).await;
    // A target of our own, which keeps its end of the tunnel open.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let (mut tunnel, _) =
        client::connect(server.addr("proxy"), &Address::Ip(target_addr), None, STEP)
            .await
            .unwrap();
    let (mut far_end, _) = within(STEP, target.accept()).await.unwrap();
    within(STEP, tunnel.write_all(b"ping")).await.unwrap();
    let mut ping = [0u8; 4];
    within(STEP, far_end.read_exact(&mut ping)).await.unwrap();
    assert_eq!(server.get("/readyz").await.0, 200);

    server.shutdown.cancel();
    until(|| async { server.get("/readyz").await.0 == 503 }).await;
    assert_eq!(server.get("/healthz").await.0, 200);
    // Still draining: the tunnel is open and relays.
    within(STEP, tunnel.write_all(b"pong")).await.unwrap();
    within(STEP, far_end.read_exact(&mut ping)).await.unwrap();
    assert_eq!(&ping, b"pong");
    assert!(!server.task.is_finished());
    assert_eq!(server.get("/readyz").await.0, 503);

    drop((tunnel, far_end));
    let admin = server.admin;
    within(STEP, server.task)
        .await
        .expect("server task")
        .expect("server ran");
    // Once stopped, the admin endpoint is gone too.
    assert!(TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn an_admin_address_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = format!("[admin]\nbind = \"{addr}\"\n{LISTENERS}");
    let config = Config::parse(&text, "test config").unwrap();
    let error = match Server::bind(&config).await {
        Ok(_) => panic!("bound an address in use"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("[admin] bind") && error.contains(&addr.to_string()),
        "{error}"
    );
}

/// Scrapes until `series` has `value`, or fails after `STEP` with the last scrape.
pub(crate) async fn wait_for_sample(server: &Admin, series: &str, value: f64) -> String {
    let mut last = String::new();
    let found = tokio::time::timeout(STEP, async {
        loop {
            last = server.get("/metrics").await.1;
            if sample(&last, series) == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "{series} never reached {value}:\n{last}");
    last
}

#[tokio::test]
async fn metrics_count_logins_rules_and_file_sink_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("frames.bin");
    let listeners = format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"file\", path = {:?}, sync = \"always\" }}\n\
         [[listener]]\nname = \"locked\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n\
         auth = \"password\"\nusers = [{{ username = \"alice\", password = \"s3cret\" }}]\n\
         [[listener.rules]]\naction = \"deny\"\nports = [9]\n",
        sink.display().to_string()
    );
    let server = Admin::start(&listeners).await;
    let (frames, locked) = (server.addr("frames"), server.addr("locked"));
    let mut direct = send(frames, &REFERENCE_FRAME).await;
    let mut ack = [0u8; 25];
    within(STEP, direct.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(direct);
    let wrong = client::connect(locked, &Address::Ip(frames), Some(("alice", "guess")), STEP).await;
    assert!(matches!(wrong, Err(socks5::Error::AuthFailed)), "{wrong:?}");
    let denied = SocketAddr::from(([127, 0, 0, 1], 9));
    let refused = client::connect(
        locked,
        &Address::Ip(denied),
        Some(("alice", "s3cret")),
        STEP,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(socks5::Error::Rejected(socks5::Reply::NotAllowed))
        ),
        "{refused:?}"
    );

    let socks = "listener=\"locked\",mode=\"socks5\"";
    let crc = "listener=\"frames\",mode=\"crc-tcp\"";
    wait_for_sample(
        &server,
        &format!("netkit_socks5_auth_failures_total{{{socks}}}"),
        1.0,
    )
    .await;
    let metrics = wait_for_sample(
        &server,
        &format!("netkit_connections_rejected_total{{{socks},reason=\"rule\"}}"),
        1.0,
    )
    .await;
    check_format(&metrics);
    let expect = |series: String, value: f64| {
        assert_eq!(
            sample(&metrics, &series),
            Some(value),
            "{series} in\n{metrics}"
        );
    };
    expect(
        format!("netkit_socks5_handshake_failures_total{{{socks},reason=\"auth\"}}"),
        1.0,
    );
    expect(
        format!(
            "netkit_socks5_requests_total{{{socks},command=\"connect\",reply=\"not_allowed\"}}"
        ),
        1.0,
    );
    expect(
        format!("netkit_socks5_connect_seconds_count{{{socks}}}"),
        0.0,
    );
    expect(format!("netkit_sink_sync_seconds_count{{{crc}}}"), 1.0);
    expect(format!("netkit_frames_total{{{crc},status=\"ok\"}}"), 1.0);
    // The user name is in the log line for fail2ban, never in a label.
    assert!(!metrics.contains("alice"), "{metrics}");
    server.stop().await;
}

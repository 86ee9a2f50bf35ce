//! Reload (SIGHUP) in-process: the new config applies to new connections, an invalid one
//! changes nothing, listeners come and go, open connections and sockets stay.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use server::{Config, ConfigSource, Server, metrics::Reloads};
use socks5::{Address, Error, Reply, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use crate::common::{ACK_OK_0, REFERENCE_FRAME, STEP, within};

/// A server run from a file, reloaded by messages on a channel (what SIGHUP sends).
struct Reloading {
    _dir: tempfile::TempDir,
    path: PathBuf,
    admin: Option<SocketAddr>,
    reloads: Arc<Reloads>,
    hangup: mpsc::Sender<()>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reloading {
    async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, config).unwrap();
        let server = Server::bind(&Config::load(&path).expect("valid"))
            .await
            .expect("binds");
        let (hangup, hangups) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let (admin, reloads) = (server.admin_addr(), server.reloads());
        let task = tokio::spawn(server.run_reloading(
            shutdown.clone(),
            hangups,
            ConfigSource::File(path.clone()),
        ));
        Self {
            _dir: dir,
            path,
            admin,
            reloads,
            hangup,
            shutdown,
            task,
        }
    }

    /// Writes `config` and reloads it; returns whether it was applied.
    async fn reload(&self, config: &str) -> bool {
        std::fs::write(&self.path, config).unwrap();
        let (ok, error) = (self.count(true), self.count(false));
        self.hangup.send(()).await.unwrap();
        until(|| self.count(true) + self.count(false) > ok + error).await;
        self.count(true) > ok
    }

    fn count(&self, ok: bool) -> u64 {
        let counter = if ok {
            &self.reloads.ok
        } else {
            &self.reloads.error
        };
        counter.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(STEP, self.task).await.unwrap().unwrap();
    }
}

/// Polls `condition` every 5 ms until it holds, failing after `STEP`.
async fn until(mut condition: impl FnMut() -> bool) {
    within(STEP, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn port() -> SocketAddr {
    testkit::free_loopback_port().unwrap()
}

fn frames(name: &str, bind: SocketAddr) -> String {
    format!("[[listener]]\nname = \"{name}\"\nmode = \"crc-tcp\"\nbind = \"{bind}\"\n")
}

fn proxy(bind: SocketAddr, extra: &str) -> String {
    format!("[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"{bind}\"\n{extra}\n")
}

fn password(password: &str) -> String {
    format!("auth = \"password\"\nusers = [{{ username = \"alice\", password = \"{password}\" }}]")
}

/// One frame through the proxy to `target`, acked ok.
async fn frame_through(
    proxy: SocketAddr,
    target: SocketAddr,
    credentials: client::Credentials<'_>,
) -> Result<(), Error> {
    let (mut stream, _) = client::connect(proxy, &Address::Ip(target), credentials, STEP).await?;
    within(STEP, stream.write_all(&REFERENCE_FRAME)).await?;
    let mut ack = [0u8; 25];
    within(STEP, stream.read_exact(&mut ack)).await?;
    assert_eq!(ack, ACK_OK_0);
    Ok(())
}

/// One frame straight to a crc-tcp listener, acked ok.
async fn frame_to(addr: SocketAddr) {
    let mut stream = within(STEP, TcpStream::connect(addr)).await.unwrap();
    within(STEP, stream.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    let mut ack = [0u8; 25];
    within(STEP, stream.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
}

#[tokio::test]
async fn a_reload_applies_a_new_password_and_refuses_the_old_one() {
    let (f, p) = (port(), port());
    let server = Reloading::start(&(frames("frames", f) + &proxy(p, &password("old")))).await;
    frame_through(p, f, Some(("alice", "old"))).await.unwrap();
    assert!(
        server
            .reload(&(frames("frames", f) + &proxy(p, &password("new"))))
            .await
    );
    frame_through(p, f, Some(("alice", "new"))).await.unwrap();
    let old = frame_through(p, f, Some(("alice", "old"))).await;
    assert!(matches!(old, Err(Error::AuthFailed)), "{old:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_applies_a_new_users_file() {
    let (f, p) = (port(), port());
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:old\n").unwrap();
    let config = frames("frames", f)
        + &proxy(
            p,
            &format!(
                "auth = \"password\"\nusers_file = {:?}",
                users.display().to_string()
            ),
        );
    let server = Reloading::start(&config).await;
    std::fs::write(&users, "alice:new\n").unwrap();
    assert!(server.reload(&config).await);
    frame_through(p, f, Some(("alice", "new"))).await.unwrap();
    let old = frame_through(p, f, Some(("alice", "old"))).await;
    assert!(matches!(old, Err(Error::AuthFailed)), "{old:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_applies_a_new_rule() {
    let (f, p) = (port(), port());
    let server = Reloading::start(&(frames("frames", f) + &proxy(p, ""))).await;
    frame_through(p, f, None).await.unwrap();
    let deny = format!(
        "[[listener.rules]]\naction = \"deny\"\ndestinations = [\"127.0.0.0/8\"]\nports = [{}]",
        f.port()
    );
    assert!(
        server
            .reload(&(frames("frames", f) + &proxy(p, &deny)))
            .await
    );
    let denied = frame_through(p, f, None).await;
    assert!(
        matches!(denied, Err(Error::Rejected(Reply::NotAllowed))),
        "{denied:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reload_adds_a_listener_and_removes_one_whose_port_then_closes() {
    let (kept, gone, added) = (port(), port(), port());
    let server = Reloading::start(&(frames("kept", kept) + &frames("gone", gone))).await;
    frame_to(gone).await;
    // A connection open on the removed listener, idle: it drains (crc-tcp: ends at once).
    let mut open = within(STEP, TcpStream::connect(gone)).await.unwrap();
    assert!(
        server
            .reload(&(frames("kept", kept) + &frames("added", added)))
            .await
    );
    frame_to(added).await;
    frame_to(kept).await;
    let mut rest = Vec::new();
    within(STEP, open.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let refused = TcpStream::connect(gone).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_config_keeps_the_running_one_and_counts_an_error() {
    let (f, p) = (port(), port());
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}",
        frames("frames", f) + &proxy(p, &password("old"))
    );
    let server = Reloading::start(&text).await;
    // A bad value, then a listener whose port another socket holds: neither applies.
    let bad = frames("frames", f) + &proxy(p, &password("new")) + "max_connections = 0\n";
    assert!(
        !server
            .reload(&format!("[admin]\nbind = \"127.0.0.1:0\"\n{bad}"))
            .await
    );
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{}{}",
        frames("frames", f) + &proxy(p, &password("new")),
        frames("busy", taken.local_addr().unwrap())
    );
    assert!(!server.reload(&busy).await);
    assert_eq!((server.count(true), server.count(false)), (0, 2));
    frame_through(p, f, Some(("alice", "old"))).await.unwrap();
    let new = frame_through(p, f, Some(("alice", "new"))).await;
    assert!(matches!(new, Err(Error::AuthFailed)), "{new:?}");
    let (status, metrics) = crate::admin::request(server.admin.unwrap(), "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("netkit_config_reloads_total{result=\"error\"} 2")
            && metrics.contains("netkit_config_reloads_total{result=\"ok\"} 0"),
        "{metrics}"
    );
    let (status, _) = crate::admin::request(server.admin.unwrap(), "GET", "/readyz").await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// An echo server for tunnels: sends back every byte.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_established_tunnel_survives_reloads_byte_exact() {
    let (f, p) = (port(), port());
    let target = echo().await;
    let server = Reloading::start(&(frames("frames", f) + &proxy(p, &password("old")))).await;
    let (mut tunnel, _) = client::connect(p, &Address::Ip(target), Some(("alice", "old")), STEP)
        .await
        .unwrap();
    let (mut read, mut write) = tunnel.split();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let chunk = data.len() / 4;
    let deny = format!(
        "[[listener.rules]]\naction = \"deny\"\ndestinations = [\"{}/32\"]",
        target.ip()
    );
    let configs = [
        frames("frames", f) + &proxy(p, &password("new")),
        frames("frames", f) + &proxy(p, &(password("new") + "\n" + &deny)),
        frames("frames", f) + &proxy(p, "idle_timeout = \"1ms\""),
    ];
    let writer = async {
        for (index, part) in data.chunks(chunk).enumerate() {
            within(STEP, write.write_all(part)).await.unwrap();
            if let Some(config) = configs.get(index) {
                assert!(server.reload(config).await);
            }
        }
    };
    let mut echoed = vec![0u8; data.len()];
    let reader = within(STEP, read.read_exact(&mut echoed));
    let ((), read) = tokio::join!(writer, reader);
    read.unwrap();
    assert!(echoed == data, "the tunnel's bytes changed");
    assert_eq!(server.count(true), 3);
    drop(tunnel);
    server.stop().await;
}

#[tokio::test]
async fn no_connect_is_refused_during_reloads() {
    let (f, p) = (port(), port());
    let configs = [
        frames("frames", f) + &proxy(p, ""),
        frames("frames", f) + &proxy(p, &password("x")),
        frames("renamed", f) + &proxy(p, "idle_timeout = \"1m\""),
    ];
    let server = Reloading::start(&configs[0]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (connected, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for addr in [f, p] {
        let (stop, connected, refused) = (stop.clone(), connected.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            // Bounded: at most 100 000 connects, and stopped after the reloads.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match within(STEP, TcpStream::connect(addr)).await {
                    Ok(_) => connected.fetch_add(1, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for round in 0..12 {
        let before = connected.load(Ordering::Relaxed);
        assert!(server.reload(&configs[round % configs.len()]).await);
        // Connections flow between reloads.
        until(|| connected.load(Ordering::Relaxed) > before + 10).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        within(STEP, client).await.unwrap();
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    assert!(connected.load(Ordering::Relaxed) > 100);
    server.stop().await;
}

#[tokio::test]
async fn a_file_sink_on_the_same_file_is_kept_not_opened_twice() {
    let f = port();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("frames.bin");
    let config = |extra: &str| {
        format!(
            "{}handler = {{ type = \"file\", path = {:?}, sync = \"always\" }}\n{extra}",
            frames("frames", f),
            sink.display().to_string()
        )
    };
    let server = Reloading::start(&config("")).await;
    // A connection open across the reloads keeps writing to the sink.
    let mut open = within(STEP, TcpStream::connect(f)).await.unwrap();
    frame_to(f).await;
    assert!(server.reload(&config("idle_timeout = \"1m\"")).await);
    frame_to(f).await;
    // sync = interval: the running sink keeps its settings (said in a warning), still served.
    let interval = format!(
        "{}handler = {{ type = \"file\", path = {:?}, sync = \"interval\" }}\n",
        frames("frames", f),
        sink.display().to_string()
    );
    assert!(server.reload(&interval).await);
    frame_to(f).await;
    within(STEP, open.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    let mut ack = [0u8; 25];
    within(STEP, open.read_exact(&mut ack)).await.unwrap();
    assert_eq!(ack, ACK_OK_0);
    drop(open);
    server.stop().await;
    // Four frames of 14 bytes, each once.
    assert_eq!(
        std::fs::read(&sink).unwrap().len(),
        4 * REFERENCE_FRAME.len()
    );
}

#[tokio::test]
async fn a_file_sink_moved_to_another_file_releases_the_first() {
    let f = port();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("1.bin"), dir.path().join("2.bin"));
    let config = |path: &PathBuf| {
        format!(
            "{}handler = {{ type = \"file\", path = {:?} }}\n",
            frames("frames", f),
            path.display().to_string()
        )
    };
    let server = Reloading::start(&config(&first)).await;
    frame_to(f).await;
    assert!(server.reload(&config(&second)).await);
    frame_to(f).await;
    // The first sink closes once its connections ended: its lock is free again.
    until(|| {
        server::sinks::file::FileSink::open(
            &first,
            server::sinks::file::SyncPolicy::Never,
            Duration::from_secs(1),
        )
        .is_ok()
    })
    .await;
    server.stop().await;
    assert_eq!(std::fs::read(&first).unwrap().len(), REFERENCE_FRAME.len());
    assert_eq!(std::fs::read(&second).unwrap().len(), REFERENCE_FRAME.len());
}

#[tokio::test]
async fn a_mode_changed_on_the_same_bind_keeps_the_socket_and_serves_the_new_mode() {
    let (a, target) = (port(), port());
    let server = Reloading::start(&(frames("a", a) + &frames("target", target))).await;
    frame_to(a).await;
    let socks = format!("[[listener]]\nname = \"a\"\nmode = \"socks5\"\nbind = \"{a}\"\n");
    assert!(server.reload(&(socks + &frames("target", target))).await);
    frame_through(a, target, None).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_embedded_config_reloads_as_a_no_op() {
    let f = port();
    let config = Config::parse(&frames("frames", f), "test").unwrap();
    let server = Server::bind(&config).await.unwrap();
    let reloads = server.reloads();
    let (hangup, hangups) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let task =
        tokio::spawn(server.run_reloading(shutdown.clone(), hangups, ConfigSource::Embedded));
    hangup.send(()).await.unwrap();
    // The channel holds one request: a second send returns once the first was taken.
    hangup.send(()).await.unwrap();
    frame_to(f).await;
    assert_eq!(
        (
            reloads.ok.load(Ordering::Relaxed),
            reloads.error.load(Ordering::Relaxed)
        ),
        (0, 0)
    );
    shutdown.cancel();
    within(STEP, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reload_reopens_the_access_log_so_logrotate_works() {
    let f = port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = format!(
        "{}access_log = {:?}\n",
        frames("frames", f),
        log.display().to_string()
    );
    let server = Reloading::start(&config).await;
    let lines = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    frame_to(f).await;
    until(|| lines(&log) == 1).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert!(server.reload(&config).await);
    frame_to(f).await;
    until(|| lines(&log) == 1).await;
    assert_eq!(lines(&rotated), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_listener_s_tunnel_drains_then_is_closed_after_drain_timeout() {
    let (f, p) = (port(), port());
    let target = echo().await;
    let head = "[server]\ndrain_timeout = \"300ms\"\n";
    let server = Reloading::start(&format!("{head}{}{}", frames("frames", f), proxy(p, ""))).await;
    let (mut tunnel, _) = client::connect(p, &Address::Ip(target), None, STEP)
        .await
        .unwrap();
    assert!(
        server
            .reload(&format!("{head}{}", frames("frames", f)))
            .await
    );
    // The port closes at once; the tunnel runs on within the drain...
    until(|| std::net::TcpStream::connect(p).is_err()).await;
    within(STEP, tunnel.write_all(b"still here")).await.unwrap();
    let mut echoed = [0u8; 10];
    within(STEP, tunnel.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"still here");
    // ...and is closed once drain_timeout has passed (the echo server never closes it: a
    // tunnel left open makes `within` fail). A reset counts as closed too.
    let mut rest = Vec::new();
    let _closed = within(STEP, tunnel.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_applies_new_passwords_and_protocols_to_http_and_shared_listeners() {
    use crate::doors::{http_connect, socks4_connect};
    let (f, h, p) = (port(), port(), port());
    let http = |password: &str| {
        format!(
            "[[listener]]\nname = \"web\"\nmode = \"http\"\nbind = \"{h}\"\nauth = \"password\"\n\
             users = [{{ username = \"alice\", password = \"{password}\" }}]\n"
        )
    };
    let shared = |protocols: &str| proxy(p, &format!("protocols = {protocols}"));
    let server =
        Reloading::start(&(frames("frames", f) + &http("old") + &shared(r#"["socks5"]"#))).await;
    let target = f.to_string();
    assert_eq!(http_connect(h, &target, Some("alice:old")).await.1, 200);
    assert!(
        server
            .reload(&(frames("frames", f) + &http("new") + &shared(r#"["socks5", "socks4"]"#)))
            .await
    );
    assert_eq!(http_connect(h, &target, Some("alice:new")).await.1, 200);
    assert_eq!(http_connect(h, &target, Some("alice:old")).await.1, 407);
    let (_, cd) = socks4_connect(p, Address::Ip(f)).await;
    assert_eq!(cd, 90, "socks4 is served after the reload");
    server.stop().await;
}

//! Property: every config that `Config::parse` accepts (what `server --check-config` runs)
//! starts and serves.
//!
//! Random configs with one to three listeners of both modes and a random value (or the
//! default) for every numeric key, extremes included: 0, the documented bounds and one step
//! past them, years, `u64::MAX` seconds, counts past tokio's semaphore limit. Each accepted
//! config is started in-process on loopback; every crc-tcp listener gets one frame and must
//! answer what its config implies (echo, ack, both or neither; a file sink must hold the
//! frame after shutdown); every socks5 listener gets a CONNECT to a loopback echo server
//! and must relay, or refuse with reply 7 when CONNECT is disabled. Then the server shuts
//! down. A panic in any of the server's tasks fails the case.
//!
//! A listener with a timeout under a second may close a connection before the test's bytes
//! arrive on a busy machine, so for such a listener a clean early close counts as serving;
//! a wrong answer, a hang or a panic never does.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use proptest::{prelude::*, sample::select, test_runner::TestCaseError};
use server::{Config, Server};
use socks5::{Address, Error, Reply, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_util::sync::CancellationToken;

/// The most any network step of a case may take.
const STEP: Duration = Duration::from_secs(10);

/// The most a whole case may take.
const CASE_LIMIT: Duration = Duration::from_secs(30);

/// Timeouts from this long up must not end a connection the test is using.
const SURE: Duration = Duration::from_secs(1);

/// `00000001 00000002 00000001 61 10`: what the reference client sends.
const REFERENCE_FRAME: [u8; 14] = [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x61, 0x10];

/// Status 0 for seq 0, from PROTOCOL.md.
const ACK_OK_0: [u8; 25] = [
    0, 0, 0, 2, 0, 0, 0, 0x0d, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbb, 0xe5, 0x68, 0xa3,
];

/// Panics anywhere in this test binary (its tests expect none at all).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

const NORMAL_DURATIONS: &[&str] = &["1s", "5s", "30s", "2m", "5m", "1h"];
const EXTREME_DURATIONS: &[&str] = &[
    "0s",
    "1ns",
    "999us 999ns",
    "1ms",
    "999ms",
    "30days",
    "30days 1ns",
    "1y",
    "300000000000y",
    "18446744073709551615s",
    "18446744073709551615s 999999999ns",
];

/// A duration as written in TOML: mostly ordinary, sometimes extreme (weighted so that
/// about half of the configs pass validation and get started).
fn duration() -> BoxedStrategy<String> {
    prop_oneof![
        16 => select(NORMAL_DURATIONS).prop_map(|d| format!("{d:?}")),
        3 => (1u64..2_000).prop_map(|ms| format!("\"{ms}ms\"")),
        2 => select(EXTREME_DURATIONS).prop_map(|d| format!("{d:?}")),
        1 => prop_oneof![
            any::<u64>().prop_map(|n| format!("\"{n}ns\"")),
            any::<u64>().prop_map(|n| format!("\"{n}s\"")),
        ],
    ]
    .boxed()
}

/// A count as written in TOML: mostly in `normal`, sometimes one of `extremes` or anything.
fn count(normal: std::ops::Range<i64>, extremes: &'static [i64]) -> BoxedStrategy<String> {
    prop_oneof![
        16 => normal,
        2 => select(extremes),
        1 => any::<i64>(),
    ]
    .prop_map(|n| n.to_string())
    .boxed()
}

/// tokio's `Semaphore::MAX_PERMITS`.
const MAX_PERMITS: i64 = (usize::MAX >> 3) as i64;

const CONNECTION_EXTREMES: &[i64] = &[
    0,
    1,
    1_000_000,
    1_000_001,
    MAX_PERMITS,
    MAX_PERMITS + 1,
    i64::MAX,
    -1,
];
const FRAME_SIZE_EXTREMES: &[i64] = &[
    0,
    4,
    5,
    1 << 30,
    (1 << 30) + 1,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
];
/// `[server] workers`: 0 (the shared runtime), the most (1024) and past it.
const WORKER_EXTREMES: &[i64] = &[0, 1, 1024, 1025, -1, i64::MAX];
const PREVIEW_EXTREMES: &[i64] = &[0, 1, 4096, 4097, i64::MAX];

fn boolean() -> BoxedStrategy<String> {
    any::<bool>().prop_map(|b| b.to_string()).boxed()
}

/// `key = value` pairs, each present or left to its default.
type Keys = Vec<(&'static str, Option<String>)>;

fn keys(spec: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<Keys> {
    spec.into_iter()
        .map(|(key, value)| proptest::option::weighted(0.4, value).prop_map(move |v| (key, v)))
        .collect::<Vec<_>>()
        .boxed()
}

#[derive(Debug, Clone)]
enum Handler {
    Default,
    Log(Keys),
    Echo,
    Discard,
    File(Keys),
}

#[derive(Debug, Clone)]
enum Listener {
    CrcTcp {
        keys: Keys,
        handler: Handler,
    },
    Socks5 {
        keys: Keys,
        commands: Option<Vec<&'static str>>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    server: Keys,
    listeners: Vec<Listener>,
}

fn handler() -> BoxedStrategy<Handler> {
    prop_oneof![
        Just(Handler::Default),
        keys(vec![
            (
                "level",
                select(&["\"error\"", "\"info\"", "\"trace\""][..])
                    .prop_map(str::to_owned)
                    .boxed()
            ),
            ("preview_len", count(0..100, PREVIEW_EXTREMES)),
        ])
        .prop_map(Handler::Log),
        Just(Handler::Echo),
        Just(Handler::Discard),
        keys(vec![
            (
                "sync",
                select(&["\"always\"", "\"interval\"", "\"never\""][..])
                    .prop_map(str::to_owned)
                    .boxed()
            ),
            ("sync_interval", duration()),
        ])
        .prop_map(Handler::File),
    ]
    .boxed()
}

fn crc_tcp() -> BoxedStrategy<Listener> {
    (
        keys(vec![
            ("ack", boolean()),
            ("allow_no_crc", boolean()),
            ("reuse_port", boolean()),
            ("max_frame_size", count(5..100_000, FRAME_SIZE_EXTREMES)),
            ("max_connections", count(1..5_000, CONNECTION_EXTREMES)),
            ("idle_timeout", duration()),
            ("frame_timeout", duration()),
            ("write_timeout", duration()),
            ("proxy_protocol_timeout", duration()),
        ]),
        handler(),
    )
        .prop_map(|(keys, handler)| Listener::CrcTcp { keys, handler })
        .boxed()
}

fn socks5() -> BoxedStrategy<Listener> {
    (
        keys(vec![
            ("reuse_port", boolean()),
            ("max_connections", count(1..5_000, CONNECTION_EXTREMES)),
            ("handshake_timeout", duration()),
            ("connect_timeout", duration()),
            ("happy_eyeballs_delay", duration()),
            ("idle_timeout", duration()),
            ("bind_timeout", duration()),
            ("proxy_protocol_timeout", duration()),
        ]),
        proptest::option::of(proptest::collection::vec(
            select(&["connect", "bind", "udp-associate"][..]),
            0..=3,
        )),
    )
        .prop_map(|(keys, commands)| Listener::Socks5 { keys, commands })
        .boxed()
}

fn case() -> BoxedStrategy<Case> {
    (
        keys(vec![
            ("drain_timeout", duration()),
            ("stats_interval", duration()),
            ("workers", count(0..4, WORKER_EXTREMES)),
        ]),
        proptest::collection::vec(prop_oneof![crc_tcp(), socks5()], 1..=3),
    )
        .prop_map(|(server, listeners)| Case { server, listeners })
        .boxed()
}

fn write_keys(out: &mut String, keys: &Keys) {
    for (key, value) in keys {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
}

fn inline(keys: &Keys) -> String {
    keys.iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!(", {key} = {v}")))
        .collect()
}

fn sink_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("sink{index}.frames"))
}

impl Case {
    fn render(&self, dir: &Path) -> String {
        let mut out = String::from("[server]\n");
        write_keys(&mut out, &self.server);
        for (index, listener) in self.listeners.iter().enumerate() {
            out.push_str("[[listener]]\nbind = \"127.0.0.1:0\"\n");
            match listener {
                Listener::CrcTcp { keys, handler } => {
                    out.push_str("mode = \"crc-tcp\"\n");
                    write_keys(&mut out, keys);
                    let handler = match handler {
                        Handler::Default => None,
                        Handler::Log(keys) => Some(format!("type = \"log\"{}", inline(keys))),
                        Handler::Echo => Some("type = \"echo\"".to_owned()),
                        Handler::Discard => Some("type = \"discard\"".to_owned()),
                        Handler::File(keys) => Some(format!(
                            "type = \"file\", path = {:?}{}",
                            sink_path(dir, index).display().to_string(),
                            inline(keys)
                        )),
                    };
                    if let Some(handler) = handler {
                        let _ = writeln!(out, "handler = {{ {handler} }}");
                    }
                }
                Listener::Socks5 { keys, commands } => {
                    out.push_str("mode = \"socks5\"\n");
                    write_keys(&mut out, keys);
                    if let Some(commands) = commands {
                        let _ = writeln!(out, "commands = {commands:?}");
                    }
                }
            }
        }
        out
    }
}

/// The value of `key` in `keys` as a duration, or `default` when absent.
fn duration_of(keys: &Keys, key: &str, default: Duration) -> Duration {
    keys.iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.as_deref())
        .map_or(default, |v| {
            humantime_serde::re::humantime::parse_duration(v.trim_matches('"'))
                .expect("an accepted config's durations parse")
        })
}

fn bool_of(keys: &Keys, key: &str, default: bool) -> bool {
    keys.iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.as_deref())
        .map_or(default, |v| v == "true")
}

/// Whether every timeout of a listener that bears on the test's connection is long enough
/// that the connection must be served in full.
fn sure(keys: &Keys, timeouts: &[(&str, Duration)]) -> bool {
    timeouts
        .iter()
        .all(|(key, default)| duration_of(keys, key, *default) >= SURE)
}

/// Sends the reference frame, closes our side and checks what comes back.
async fn crc_tcp_serves(addr: SocketAddr, keys: &Keys, handler: &Handler) -> Result<(), String> {
    let sure = sure(
        keys,
        &[
            ("idle_timeout", Duration::from_secs(300)),
            ("frame_timeout", Duration::from_secs(30)),
            ("write_timeout", Duration::from_secs(30)),
        ],
    );
    let mut expected = Vec::new();
    if matches!(handler, Handler::Echo) {
        expected.extend_from_slice(&REFERENCE_FRAME);
    }
    if bool_of(keys, "ack", true) {
        expected.extend_from_slice(&ACK_OK_0);
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        // In two writes, so the server often sees a partial frame (its frame timer runs).
        let (head, rest) = REFERENCE_FRAME.split_at(12);
        stream.write_all(head).await?;
        stream.write_all(rest).await?;
        stream.shutdown().await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    match timeout(STEP, exchange).await {
        Err(_) => Err(format!(
            "crc-tcp {addr}: no answer and no close within {STEP:?}"
        )),
        Ok(Ok(got)) if got == expected => Ok(()),
        Ok(Ok(got)) if !sure && expected.starts_with(&got) => Ok(()),
        Ok(Err(_)) if !sure => Ok(()),
        Ok(got) => Err(format!(
            "crc-tcp {addr}: expected {expected:02x?}, got {got:02x?}"
        )),
    }
}

/// A CONNECT to `echo` through the listener, then one round trip.
async fn socks5_serves(
    addr: SocketAddr,
    echo: SocketAddr,
    keys: &Keys,
    commands: Option<&[&str]>,
) -> Result<(), String> {
    let sure = sure(
        keys,
        &[
            ("handshake_timeout", Duration::from_secs(10)),
            ("connect_timeout", Duration::from_secs(10)),
            ("idle_timeout", Duration::from_secs(300)),
        ],
    );
    let connect_enabled = commands.is_none_or(|c| c.contains(&"connect"));
    let exchange = async {
        let (mut stream, _) = client::connect(addr, &Address::Ip(echo), None, STEP).await?;
        stream.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await?;
        Ok::<_, Error>(got)
    };
    match timeout(STEP, exchange).await {
        Err(_) => Err(format!("socks5 {addr}: no reply within {STEP:?}")),
        Ok(Ok(got)) if connect_enabled && &got == b"ping" => Ok(()),
        Ok(Err(Error::Rejected(Reply::CommandNotSupported))) if !connect_enabled => Ok(()),
        Ok(Err(_)) if !sure => Ok(()),
        Ok(other) => Err(format!(
            "socks5 {addr}: CONNECT {}: got {other:?}",
            if connect_enabled {
                "enabled"
            } else {
                "disabled"
            }
        )),
    }
}

/// A loopback echo server for the socks5 listeners to reach.
async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = timeout(STEP, tokio::io::copy(&mut read, &mut write)).await;
            });
        }
    });
    Ok(addr)
}

/// Starts `config`, serves one connection per listener, shuts down.
async fn starts_and_serves(case: &Case, config: &Config, dir: &Path) -> Result<(), String> {
    let server = Server::bind(config)
        .await
        .map_err(|e| format!("does not start: {e:#}"))?;
    let addrs = server.local_addrs();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let echo = echo_server()
        .await
        .map_err(|e| format!("echo server: {e}"))?;
    let mut served = Ok(());
    let mut sure_sinks = Vec::new();
    for (index, (listener, (_, addr))) in case.listeners.iter().zip(&addrs).enumerate() {
        let result = match listener {
            Listener::CrcTcp { keys, handler } => {
                if matches!(handler, Handler::File(_))
                    && sure(
                        keys,
                        &[
                            ("idle_timeout", Duration::from_secs(300)),
                            ("frame_timeout", Duration::from_secs(30)),
                        ],
                    )
                {
                    sure_sinks.push(index);
                }
                crc_tcp_serves(*addr, keys, handler).await
            }
            Listener::Socks5 { keys, commands } => {
                socks5_serves(*addr, echo, keys, commands.as_deref()).await
            }
        };
        if served.is_ok() {
            served = result;
        }
    }
    shutdown.cancel();
    match timeout(STEP, task).await {
        Err(_) => return Err(format!("did not stop within {STEP:?}")),
        Ok(Err(error)) => return Err(format!("the server task failed: {error}")),
        Ok(Ok(Err(error))) => return Err(format!("run failed: {error:#}")),
        Ok(Ok(Ok(()))) => {}
    }
    served?;
    for index in sure_sinks {
        let path = sink_path(dir, index);
        let stored = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if stored != REFERENCE_FRAME {
            return Err(format!(
                "{} holds {stored:02x?}, not the frame",
                path.display()
            ));
        }
    }
    Ok(())
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let text = case.render(dir.path());
    let Ok(config) = Config::parse(&text, "random config") else {
        return Ok(());
    };
    let panics = PANICS.load(Ordering::SeqCst);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let outcome = runtime.block_on(async {
        timeout(CASE_LIMIT, starts_and_serves(case, &config, dir.path()))
            .await
            .unwrap_or_else(|_| Err(format!("the case took longer than {CASE_LIMIT:?}")))
    });
    runtime.shutdown_timeout(STEP);
    let panicked = PANICS.load(Ordering::SeqCst) - panics;
    if panicked > 0 {
        let then = outcome.err().unwrap_or_default();
        return Err(TestCaseError::fail(format!(
            "accepted, then {panicked} panic(s) in the server (see stderr) {then}; config:\n{text}"
        )));
    }
    outcome.map_err(|e| TestCaseError::fail(format!("accepted, then {e}; config:\n{text}")))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 200,
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_accepted_config_starts_and_serves(case in case()) {
        count_panics();
        check(&case)?;
    }
}

fn keys_of(pairs: &[(&'static str, &str)]) -> Keys {
    pairs
        .iter()
        .map(|(key, value)| (*key, Some((*value).to_owned())))
        .collect()
}

fn crc(pairs: &[(&'static str, &str)], handler: Handler) -> Case {
    Case {
        server: Vec::new(),
        listeners: vec![Listener::CrcTcp {
            keys: keys_of(pairs),
            handler,
        }],
    }
}

fn socks(pairs: &[(&'static str, &str)]) -> Case {
    Case {
        server: Vec::new(),
        listeners: vec![Listener::Socks5 {
            keys: keys_of(pairs),
            commands: None,
        }],
    }
}

fn server(pairs: &[(&'static str, &str)]) -> Case {
    Case {
        server: keys_of(pairs),
        ..crc(&[], Handler::Discard)
    }
}

/// Every config found to pass validation and then panic (issue 7 item 5), each through the
/// same check as the random ones. Today each is rejected; before the bounds, each started
/// and panicked.
#[test]
fn configs_that_used_to_panic_are_rejected_or_serve() {
    count_panics();
    let huge = "\"300000000000y\"";
    let cases = [
        // tokio::time::interval(0) in the file sink task; every frame answered status 5.
        crc(
            &[],
            Handler::File(keys_of(&[
                ("sync", "\"always\""),
                ("sync_interval", "\"0s\""),
            ])),
        ),
        // Instant + Duration overflows at the connection's first idle deadline.
        crc(&[("idle_timeout", huge)], Handler::Discard),
        // ... at a partial frame's deadline (when a read ends mid-frame).
        crc(&[("frame_timeout", huge)], Handler::Discard),
        // Semaphore::new panics above usize::MAX >> 3 permits: the accept loop dies.
        crc(
            &[("max_connections", "9223372036854775807")],
            Handler::Discard,
        ),
        socks(&[("max_connections", "9223372036854775807")]),
        // The handshake deadline.
        socks(&[("handshake_timeout", huge)]),
        // The relay's idle clock.
        socks(&[("idle_timeout", huge)]),
        // The stats ticker's first tick, at start.
        server(&[("stats_interval", huge)]),
        // The drain deadline, at shutdown.
        server(&[("drain_timeout", huge)]),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).err().map(|e| e.to_string()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

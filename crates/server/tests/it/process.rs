//! The `server` binary as a process: SIGTERM drains and keeps acked frames.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use proto::{
    ACK_FRAME_LEN, AckStatus, CrcSize, Decoded, Limits, Version, decode_ack, decode_frame,
    encode_frame,
};
use rustix::process::{Pid, Signal, kill_process};
use testkit::{ChildGuard, stderr_lines, wait_exit, wait_listening};

/// Starts the binary and waits for its first `listening` event; returns the
/// lines logged up to it too.
fn start(config: &str) -> (ChildGuard, SocketAddr, mpsc::Receiver<String>) {
    let (guard, addr, rx, _) = start_with_open_files(config, None);
    (guard, addr, rx)
}

/// The server binary, under `ulimit LIMIT` (e.g. `-n 256`) when given.
fn server_under(limit: Option<&str>) -> Command {
    match limit {
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("ulimit {limit} && exec \"$0\" \"$@\"")]);
            sh.arg(env!("CARGO_BIN_EXE_server"));
            sh
        }
        None => Command::new(env!("CARGO_BIN_EXE_server")),
    }
}

/// The server on `config`, logging JSON at `level`, under `ulimit LIMIT` when given, and its
/// stderr lines; the directory of the config file must outlive the start.
fn spawn_server(
    config: &str,
    limit: Option<&str>,
    level: &str,
) -> (ChildGuard, mpsc::Receiver<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, config).unwrap();
    let child = server_under(limit)
        .args(["--log-format", "json", "--log-level", level, "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let rx = stderr_lines(guard.stderr.take().unwrap());
    (guard, rx, dir)
}

/// As [`start`], under an open-file limit of `open_files` (soft and hard) if given.
fn start_with_open_files(
    config: &str,
    open_files: Option<u32>,
) -> (ChildGuard, SocketAddr, mpsc::Receiver<String>, Vec<String>) {
    let limit = open_files.map(|limit| format!("-n {limit}"));
    let (guard, rx, _dir) = spawn_server(config, limit.as_deref(), "debug");
    let (addr, early) = wait_listening(&rx, Duration::from_secs(10))
        .unwrap_or_else(|early| panic!("no listening event; logged: {early:?}"));
    (guard, addr, rx, early)
}

#[test]
fn warns_when_max_connections_does_not_fit_the_open_file_limit() {
    // `workers = 0`: no worker runtime holds descriptors (see
    // the_default_max_connections_fits_the_open_file_limit_with_workers).
    let config = "[server]\nworkers = 0\n\
                  [[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\nmax_connections = 10000\n\
                  [[listener]]\nname = \"fits\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n";
    let (_guard, _addr, rx, early) = start_with_open_files(config, Some(256));
    let warning = early
        .iter()
        .find(|l| l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("{early:?}"));
    assert!(
        warning.contains("\"level\":\"WARN\"") && warning.contains("\"max_connections\":10000"),
        "{warning}"
    );
    // The listener without a configured value takes what the limit allows: (256 - 64) / 2.
    let fits = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(10)).ok())
        .find(|l| l.contains("\"listener\":\"fits\""))
        .expect("the second listener's listening event");
    assert!(
        fits.contains("\"listener\":\"fits\"") && fits.contains("\"max_connections\":96"),
        "{fits}"
    );
}

#[test]
fn sigterm_drains_exits_zero_and_keeps_every_acked_frame() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("frames.bin");
    let config = format!(
        "[server]\ndrain_timeout = \"5s\"\n[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"file\", path = {:?}, sync = \"interval\", sync_interval = \"50ms\" }}\n",
        sink.display().to_string()
    );
    let (mut guard, addr, logs) = start(&config);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut acked = 0u64;
    let mut sent = Vec::new();
    for batch in 0..20 {
        let mut bytes = Vec::new();
        for i in 0..50 {
            let payload = format!("batch {batch} frame {i}");
            encode_frame(Version::V2, CrcSize::Crc32, payload.as_bytes(), &mut bytes).unwrap();
            sent.push(payload);
        }
        stream.write_all(&bytes).unwrap();
        let mut acks = vec![0u8; 50 * ACK_FRAME_LEN];
        stream.read_exact(&mut acks).unwrap();
        for chunk in acks.chunks(ACK_FRAME_LEN) {
            let Ok(Decoded::Done(ack, _)) = decode_ack(chunk) else {
                panic!("bad ack")
            };
            assert_eq!((ack.status, ack.seq), (AckStatus::Ok, acked));
            acked += 1;
        }
    }
    // Terminate while the connection is still open.
    kill_process(Pid::from_child(&guard), Signal::TERM).unwrap();
    let exit = wait_exit(&mut guard, Duration::from_secs(10))
        .unwrap()
        .expect("server did not exit within its drain timeout");
    assert!(exit.success(), "server exited with {exit}");
    // Every line up to the end of stderr: the reader thread may still be forwarding the last
    // ones, and the channel closes when it reaches the end.
    let log: Vec<String> =
        std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(10)).ok()).collect();
    assert!(
        log.iter().any(|l| l.contains("\"signal\":\"SIGTERM\"")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("file sink closed and synced")),
        "{log:?}"
    );
    let stored = std::fs::read(&sink).unwrap();
    let mut rest = stored.as_slice();
    let mut payloads = Vec::new();
    while let Ok(Decoded::Done(frame, used)) = decode_frame(rest, &Limits::default()) {
        payloads.push(String::from_utf8(frame.payload.to_vec()).unwrap());
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(payloads.len() as u64, acked);
    assert_eq!(payloads, sent);
}

/// The next line of `logs` that contains `needle`, within 10 s.
fn line_with(logs: &mpsc::Receiver<String>, needle: &str) -> String {
    // 10 s in all: a server that keeps logging other lines must not keep the wait going.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    std::iter::from_fn(|| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        logs.recv_timeout(left).ok()
    })
    .find(|l| l.contains(needle))
    .unwrap_or_else(|| panic!("no line with {needle:?} within 10 s"))
}

/// A connection to a crc-tcp listener that sent one frame of `payload` and read its ack,
/// which must be ok.
fn connection_with_one_frame_acked(addr: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    encode_frame(Version::V2, CrcSize::Crc32, payload, &mut bytes).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut ack = [0u8; ACK_FRAME_LEN];
    stream.read_exact(&mut ack).unwrap();
    let Ok(Decoded::Done(ack, _)) = decode_ack(&ack) else {
        panic!("bad ack")
    };
    assert_eq!(ack.status, AckStatus::Ok);
    stream
}

/// One frame to a crc-tcp listener, acked ok.
fn frame_acked(addr: SocketAddr) {
    connection_with_one_frame_acked(addr, b"hi");
}

#[test]
fn sighup_reloads_the_config_file_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    let first = "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n";
    std::fs::write(&path, first).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let logs = stderr_lines(guard.stderr.take().unwrap());
    let (frames, _) = wait_listening(&logs, Duration::from_secs(10)).unwrap();
    let added = testkit::free_loopback_port().unwrap();
    std::fs::write(
        &path,
        format!("{first}[[listener]]\nname = \"added\"\nmode = \"crc-tcp\"\nbind = \"{added}\"\n"),
    )
    .unwrap();
    let pid = Pid::from_child(&guard);
    kill_process(pid, Signal::HUP).unwrap();
    line_with(&logs, "config reloaded");
    frame_acked(added);
    frame_acked(frames);
    // An invalid file: logged at error level, the running config stays.
    std::fs::write(&path, "[[listener]]\nmode = \"nope\"\n").unwrap();
    kill_process(pid, Signal::HUP).unwrap();
    let failed = line_with(&logs, "reload failed");
    assert!(
        failed.contains("\"level\":\"ERROR\"") && failed.contains("nope"),
        "{failed}"
    );
    frame_acked(added);
    assert!(
        guard.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    kill_process(pid, Signal::TERM).unwrap();
    let exit = wait_exit(&mut guard, Duration::from_secs(10))
        .unwrap()
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit}");
}

/// CPU nanoseconds of each thread of `pid`, by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let nanos = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        threads.push((name.trim().to_owned(), nanos));
    }
    threads
}

/// Sum of the CPU nanoseconds of `pid`'s threads whose name starts with `prefix`.
fn cpu_of(pid: u32, prefix: &str) -> u64 {
    thread_cpu(pid)
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, nanos)| nanos)
        .sum()
}

/// A loopback echo server on its own threads.
fn std_echo() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A SOCKS5 CONNECT to `target` through `proxy`, without authentication.
fn socks_tunnel(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 0]);
    let SocketAddr::V4(v4) = target else {
        panic!("an IPv4 target")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    stream.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "CONNECT refused: {reply:?}");
    stream
}

/// `[server] workers = 3`: three worker threads, and the tunnels' bytes are moved by them,
/// not by the runtime that accepts; with `workers = 0` there is no worker thread.
#[test]
fn workers_serve_the_connections_on_their_own_threads() {
    let target = std_echo();
    for workers in [3usize, 0] {
        let config = format!(
            "[server]\nworkers = {workers}\n[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n"
        );
        let (guard, proxy, _logs) = start(&config);
        let pid = guard.id();
        let names: Vec<String> = thread_cpu(pid).into_iter().map(|(name, _)| name).collect();
        let mut found: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("netkit-wk-"))
            .collect();
        found.sort();
        let expected: Vec<String> = (0..workers).map(|i| format!("netkit-wk-{i}")).collect();
        assert_eq!(found, expected.iter().collect::<Vec<_>>(), "{names:?}");

        let mut tunnels: Vec<TcpStream> = (0..6).map(|_| socks_tunnel(proxy, target)).collect();
        let (workers_before, runtime_before) =
            (cpu_of(pid, "netkit-wk-"), cpu_of(pid, "tokio-rt-worker"));
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..300 {
            for tunnel in &mut tunnels {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = 1 + (seed % 3000) as usize;
                let message: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
                tunnel.write_all(&message).unwrap();
                let mut echoed = vec![0u8; len];
                tunnel.read_exact(&mut echoed).unwrap();
                assert_eq!(echoed, message, "round {round}");
            }
        }
        let on_workers = cpu_of(pid, "netkit-wk-") - workers_before;
        let on_runtime = cpu_of(pid, "tokio-rt-worker") - runtime_before;
        if workers > 0 {
            assert!(
                on_workers > on_runtime,
                "the relay ran on the shared runtime: {on_workers} ns on the workers, {on_runtime} ns on the runtime"
            );
        } else {
            assert!(
                on_runtime > 0 && on_workers == 0,
                "{on_workers} / {on_runtime}"
            );
        }
    }
}

/// A crc-tcp listener with the `nats` handler is served on the shared runtime, where the NATS
/// client's task runs, even with workers: on a worker every batch and every PubAck would wake
/// the other thread (BENCHMARKS.md: 20 % more CPU per frame). Here NATS is unreachable, so
/// each frame is answered status 5 by the sink: the work is the connection's alone.
#[test]
fn a_nats_listener_is_served_on_the_shared_runtime_with_workers() {
    let nowhere_addr = testkit::free_loopback_port().unwrap();
    let config = format!(
        "[server]\nworkers = 2\n[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"nats\", servers = [\"nats://{nowhere_addr}\"] }}\n"
    );
    let (guard, addr, _logs) = start(&config);
    let pid = guard.id();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (workers_before, runtime_before) =
        (cpu_of(pid, "netkit-wk-"), cpu_of(pid, "tokio-rt-worker"));
    let mut batch = Vec::new();
    for _ in 0..100 {
        encode_frame(Version::V2, CrcSize::Crc32, &[7u8; 64], &mut batch).unwrap();
    }
    let mut acks = vec![0u8; 100 * ACK_FRAME_LEN];
    for round in 0..100 {
        stream.write_all(&batch).unwrap();
        stream.read_exact(&mut acks).unwrap();
        for ack in acks.chunks(ACK_FRAME_LEN) {
            let Ok(Decoded::Done(ack, _)) = decode_ack(ack) else {
                panic!("bad ack in round {round}")
            };
            assert_eq!(ack.status, AckStatus::HandlerFailed, "round {round}");
        }
    }
    let on_workers = cpu_of(pid, "netkit-wk-") - workers_before;
    let on_runtime = cpu_of(pid, "tokio-rt-worker") - runtime_before;
    assert!(
        on_workers * 10 < on_runtime,
        "the nats listener ran on the workers: {on_workers} ns on the workers, {on_runtime} ns on the runtime"
    );
}

/// NATS unreachable: one warning names the listener, the servers, the error and where to
/// look (before, only async-nats's own `info` line "event: client error: nats: IO error" was
/// logged, without the listener, once per attempt).
#[test]
fn an_unreachable_nats_server_is_warned_about_with_the_listener_and_a_hint() {
    let nowhere_addr = testkit::free_loopback_port().unwrap();
    let config = format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"nats\", servers = [\"nats://{nowhere_addr}\"] }}\n"
    );
    // At `warn`: the cause comes from async-nats's debug line whatever the level.
    let (_guard, logs, _dir) = spawn_server(&config, None, "warn");
    let line = line_with(&logs, "nats: cannot connect");
    for part in [
        "\"level\":\"WARN\"",
        "\"listener\":\"frames\"",
        &format!("nats://{nowhere_addr}"),
        "IO error",
        // The cause, from async-nats's own debug line.
        "Connection refused",
        "reachable",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
}

/// Worker threads that cannot all start (here: an address-space limit too small for 1024
/// thread stacks, as a pids limit of a container would be) end the start with an error
/// that says so, exit status 1; not with a panic (status 101) from a runtime dropped
/// inside the main runtime.
#[test]
fn workers_that_cannot_start_fail_the_start_cleanly() {
    // 1 GiB of address space: the process starts, 1024 stacks of 2 MiB do not fit.
    let (mut guard, logs, _dir) = spawn_server(
        "[server]\nworkers = 1024\n[[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n",
        Some("-v 1048576"),
        "info",
    );
    let exit = wait_exit(&mut guard, Duration::from_secs(20))
        .unwrap()
        .expect("the server did not exit");
    let log: Vec<String> =
        std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(10)).ok()).collect();
    assert_eq!(exit.code(), Some(1), "{exit}: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("cannot start 1024 worker runtime(s)")),
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
}

/// The "connection limit reached" warnings of a crc-tcp listener with `workers = 4` and
/// `max_connections = 4`, with `open` connections served (each frame acked) and held open
/// until the server has exited after SIGTERM.
fn limit_warnings(open: usize) -> Vec<String> {
    let config = "[server]\nworkers = 4\ndrain_timeout = \"5s\"\n[[listener]]\nname = \"frames\"\n\
                  mode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\nmax_connections = 4\n";
    let (mut guard, addr, logs) = start(config);
    let mut streams = Vec::new();
    for _ in 0..open {
        streams.push(connection_with_one_frame_acked(addr, b"one"));
    }
    kill_process(Pid::from_child(&guard), Signal::TERM).unwrap();
    let exit = wait_exit(&mut guard, Duration::from_secs(10))
        .unwrap()
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit}");
    std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(10)).ok())
        .filter(|l| l.contains("connection limit reached"))
        .collect()
}

/// With `workers = 4` each accept loop holds a permit of `max_connections` while it waits
/// to accept: one connection of four is not the limit, and no "connection limit reached"
/// warning may say so (it did, from the loop that accepted it, as soon as it looped).
#[test]
fn permits_held_by_idle_accept_loops_are_not_the_connection_limit() {
    let warned = limit_warnings(1);
    assert!(warned.is_empty(), "1 connection of 4: {warned:#?}");
}

/// Four connections of four are the limit: one warning for the listener, not one per loop.
#[test]
fn the_connection_limit_is_warned_once_per_listener_not_per_worker() {
    let warned = limit_warnings(4);
    assert_eq!(warned.len(), 1, "4 connections of 4: {warned:#?}");
}

/// The socks5 default of `max_connections` follows from the open-file limit: every session
/// it lets in must get its two descriptors, also with `workers = 16`, whose runtimes and
/// duplicates of the listening socket hold descriptors of their own.
#[test]
fn the_default_max_connections_fits_the_open_file_limit_with_workers() {
    let target = std_echo();
    let config = "[server]\nworkers = 16\n\
                  [[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
                  [[listener]]\nname = \"proxy\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n";
    let (_guard, _frames, logs, _) = start_with_open_files(config, Some(256));
    let listening = line_with(&logs, "\"listener\":\"proxy\"");
    let field = |key: &str| {
        listening
            .split(&format!("\"{key}\":"))
            .nth(1)
            .map(|rest| rest.trim_start_matches('"'))
            .and_then(|rest| rest.split(['"', ',', '}']).next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {key} in {listening}"))
    };
    let proxy: SocketAddr = field("addr").parse().unwrap();
    let max: usize = field("max_connections").parse().unwrap();
    let mut tunnels = Vec::with_capacity(max);
    for index in 0..max {
        let mut tunnel = socks_tunnel(proxy, target);
        tunnel.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        tunnel
            .read_exact(&mut echoed)
            .unwrap_or_else(|error| panic!("tunnel {index} of {max}: {error}"));
        tunnels.push(tunnel);
    }
}

/// Refusals by `max_connections_per_ip` are logged at most once per interval per listener,
/// with the count since the last line: with `workers = 4` the four accept loops share that
/// throttle (each had its own: up to four lines, each counting only its own refusals).
#[test]
fn per_ip_refusals_are_logged_once_per_listener_with_workers() {
    let config = "[server]\nworkers = 4\n[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\n\
                  bind = \"127.0.0.1:0\"\nmax_connections_per_ip = 1\n";
    let (mut guard, addr, logs) = start(config);
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    encode_frame(Version::V2, CrcSize::Crc32, b"held", &mut bytes).unwrap();
    held.write_all(&bytes).unwrap();
    let mut ack = [0u8; ACK_FRAME_LEN];
    held.read_exact(&mut ack).unwrap();
    const REFUSED: usize = 40;
    for _ in 0..REFUSED {
        let mut refused = TcpStream::connect(addr).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Closed at once, before a byte is read: EOF or a reset.
        let mut byte = [0u8; 1];
        assert!(!matches!(refused.read(&mut byte), Ok(n) if n > 0));
    }
    kill_process(Pid::from_child(&guard), Signal::TERM).unwrap();
    let exit = wait_exit(&mut guard, Duration::from_secs(10))
        .unwrap()
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit}");
    let lines: Vec<String> = std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(10)).ok())
        .filter(|l| l.contains("connection refused: the client has max_connections_per_ip"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{REFUSED} refusals within seconds: {lines:#?}"
    );
}

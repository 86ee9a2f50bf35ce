//! The `server` binary as a process: SIGTERM drains and keeps acked frames.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use proto::{
    ACK_FRAME_LEN, AckStatus, CrcSize, Decoded, Limits, Version, decode_ack, decode_frame,
    encode_frame,
};

/// Kills the child if a test fails before it stops it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and waits for its `listening` event.
fn start(config: &str) -> (Guard, SocketAddr, mpsc::Receiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--log-format", "json", "--log-level", "debug", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let stderr = guard.0.stderr.take().unwrap();
    let (lines, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("listening event");
        if line.contains("\"message\":\"listening\"") {
            let addr = line
                .split("\"addr\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap();
            return (guard, addr.parse().unwrap(), rx);
        }
    }
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
    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = guard.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within its drain timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "server exited with {exit}");
    let log: Vec<String> = logs.try_iter().collect();
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

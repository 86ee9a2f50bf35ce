//! `--resend` and `--servers` against a scripted collector: it reads the
//! session frame and the raw bytes of every frame, and acks, closes or
//! fails frames as each test says.

use std::net::SocketAddr;

use bytes::BytesMut;
use proto::{
    Ack, AckStatus, CrcSize, Decoded, Limits, Session, Version, decode_header, decode_session,
    encode_ack, encode_frame, session::starts_session,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::support::{Reply, client, within};

/// What one connection carried.
#[derive(Debug)]
struct Conn {
    /// The session frame, when the connection started with one.
    session: Option<Session>,
    /// The raw bytes of each data frame, in order.
    frames: Vec<Vec<u8>>,
}

impl Conn {
    fn session(&self) -> Session {
        self.session
            .expect("the connection starts with a session frame")
    }
}

/// What the collector does with frame `seq` on connection `conn` (0 first).
type Script = fn(usize, u64) -> Reply;

/// A collector on loopback for `connections` connections, served one after
/// the other (a stream uses one connection at a time).
async fn collector(connections: usize, script: Script) -> (SocketAddr, JoinHandle<Vec<Conn>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for index in 0..connections {
            let (stream, _) = within(listener.accept()).await.unwrap();
            seen.push(within(serve(stream, index, script)).await);
        }
        seen
    });
    (addr, server)
}

/// Fills `buf` until it holds `len` bytes; false at EOF (or a reset).
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut, len: usize) -> bool {
    while buf.len() < len {
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

async fn serve(mut stream: TcpStream, index: usize, script: Script) -> Conn {
    let mut buf = BytesMut::new();
    let mut conn = Conn {
        session: None,
        frames: Vec::new(),
    };
    let mut seq = 0;
    if fill(&mut stream, &mut buf, 4).await && starts_session(&buf) == Some(true) {
        fill(&mut stream, &mut buf, proto::SESSION_FRAME_LEN).await;
        let Ok(Decoded::Done(session, used)) = decode_session(&buf) else {
            panic!("a bad session frame: {buf:?}");
        };
        let _ = buf.split_to(used);
        seq = session.first_seq;
        conn.session = Some(session);
    }
    loop {
        if !fill(&mut stream, &mut buf, proto::HEADER_LEN).await {
            return conn;
        }
        let Ok(Decoded::Done(header, _)) = decode_header(&buf, &Limits::default()) else {
            panic!("a bad header: {buf:?}");
        };
        let len = proto::HEADER_LEN + header.body_size as usize;
        if !fill(&mut stream, &mut buf, len).await {
            return conn;
        }
        conn.frames.push(buf.split_to(len).to_vec());
        match script(index, seq) {
            Reply::Silent => {}
            Reply::Close => {
                close(stream).await;
                return conn;
            }
            Reply::Stall => std::future::pending().await,
            Reply::Ack(status) => {
                let mut ack = Vec::new();
                encode_ack(&Ack { status, seq }, &mut ack);
                if stream.write_all(&ack).await.is_err() {
                    return conn;
                }
                if status.closes() {
                    close(stream).await;
                    return conn;
                }
            }
        }
        seq += 1;
    }
}

/// Closes with a FIN after the acks written, and reads (and drops) what
/// the client still sends until it closes too. Closing with bytes unread
/// would send a reset, and a reset makes the client's kernel drop the acks
/// it has not read yet: which acks arrive would then be up to chance.
async fn close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The frame `client send` writes for `payload` by default (version 1, CRC-8).
fn frame(payload: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(Version::V1, CrcSize::Crc8, payload.as_bytes(), &mut out).unwrap();
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

const OK: Reply = Reply::Ack(AckStatus::Ok);

#[tokio::test]
async fn resends_every_frame_without_an_ok_ack_on_a_new_connection() {
    // Connection 0 acks frames 0 and 1, then drops the connection on frame 2.
    let (addr, server) = collector(2, |conn, seq| match (conn, seq) {
        (0, 2) => Reply::Close,
        _ => OK,
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "--json",
            "a",
            "b",
            "c",
            "d",
            "e",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let seen = within(server).await.unwrap();
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first.session().first_seq, 0);
    assert_eq!(
        second.session().first_seq,
        2,
        "the oldest frame without an ok ack"
    );
    assert_eq!(first.session().stream_id, second.session().stream_id);
    // Byte for byte the frames of the first connection, from frame 2 on.
    assert_eq!(first.frames[..3], [frame("a"), frame("b"), frame("c")]);
    assert_eq!(second.frames, [frame("c"), frame("d"), frame("e")]);

    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["sent"], 5, "{report}");
    assert_eq!(report["acked_ok"], 5, "{report}");
    assert_eq!(report["given_up"], 0, "{report}");
    assert_eq!(report["reconnects"], 1, "{report}");
    // Every frame went out in the first batch: c, d and e were written twice.
    assert_eq!(report["resent"], 3, "{report}");
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["id"], hex(&first.session().stream_id));
    assert_eq!(streams[0]["frames"], 5);
    assert_eq!(streams[0]["acked_ok"], 5);
    assert!(
        run.stderr
            .contains("broke (the server closed the connection)"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_frame_the_handler_failed_is_resent_with_its_number() {
    let (addr, server) = collector(2, |conn, seq| match (conn, seq) {
        (0, 1) => Reply::Ack(AckStatus::HandlerFailed),
        _ => OK,
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "x",
            "y",
            "z",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr
            .contains("sent 3 frames, 3 acked ok, 2 resent, 0 given up, 1 reconnects"),
        "{run:?}"
    );
    let seen = within(server).await.unwrap();
    assert_eq!(seen[1].session().first_seq, 1);
    assert_eq!(seen[1].frames, [frame("y"), frame("z")]);
}

#[tokio::test]
async fn a_crc_mismatch_gives_the_frame_up_and_exits_4() {
    let (addr, server) = collector(1, |_, seq| {
        if seq == 1 {
            Reply::Ack(AckStatus::CrcMismatch)
        } else {
            OK
        }
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "--json",
            "x",
            "y",
            "z",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["acked_ok"], 2, "{report}");
    assert_eq!(report["given_up"], 1, "{report}");
    assert_eq!(report["reconnects"], 0, "{report}");
    assert_eq!(report["streams"][0]["frames"], 3, "{report}");
    assert!(run.stderr.contains("frame 1 given up"), "{run:?}");
    assert_eq!(within(server).await.unwrap()[0].frames.len(), 3);
}

#[tokio::test]
async fn a_server_without_session_frames_fails_the_run_clearly() {
    // What a server from before session frames does: status 2, seq 0, close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = within(listener.accept()).await.unwrap();
        let mut head = [0u8; 12];
        within(stream.read_exact(&mut head)).await.unwrap();
        let mut ack = Vec::new();
        let status = AckStatus::UnsupportedVersion;
        encode_ack(&Ack { status, seq: 0 }, &mut ack);
        within(stream.write_all(&ack)).await.unwrap();
        within(close(stream)).await;
        head
    });
    let run = client(
        &["send", "--addr", &addr.to_string(), "--resend", "x"],
        None,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("predates session frames"), "{run:?}");
    assert_eq!(within(server).await.unwrap()[..4], [0, 0, 0, 3]);
}

#[tokio::test]
async fn the_deadline_gives_every_frame_up_with_exit_4() {
    let refused = testkit::free_loopback_port().unwrap().to_string();
    let run = client(
        &[
            "send",
            "--addr",
            &refused,
            "--resend",
            "--resend-deadline",
            "300ms",
            "--json",
            "x",
            "y",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["given_up"], 2, "{report}");
    assert_eq!(report["sent"], 0, "{report}");
    assert!(run.stderr.contains("giving up"), "{run:?}");
}

#[tokio::test]
async fn the_deadline_stops_resending_to_a_server_that_keeps_failing() {
    // Every connection takes the frames and answers status 5: nothing is
    // ever acked ok, so the client reconnects until the deadline.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut connections = 0;
        while let Ok(Ok((stream, _))) =
            tokio::time::timeout(std::time::Duration::from_secs(3), listener.accept()).await
        {
            connections += 1;
            within(serve(stream, 0, |_, _| {
                Reply::Ack(AckStatus::HandlerFailed)
            }))
            .await;
        }
        connections
    });
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "--resend-deadline",
            "500ms",
            "--json",
            "x",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["given_up"], 1, "{report}");
    assert_eq!(report["acked_ok"], 0, "{report}");
    let connections = within(server).await.unwrap();
    assert!(connections >= 2, "{connections} connections");
    assert_eq!(report["reconnects"], connections - 1, "{report}");
}

#[tokio::test]
async fn servers_move_on_to_the_next_listener_when_one_breaks_or_refuses() {
    let refused = testkit::free_loopback_port().unwrap().to_string();
    // A acks frame 0 and closes on frame 1; B takes the rest.
    let (a, a_seen) = collector(1, |_, seq| if seq == 0 { OK } else { Reply::Close }).await;
    let (b, b_seen) = collector(1, |_, _| OK).await;
    let servers = format!("{refused},{a},{b}");
    let run = client(
        &[
            "send",
            "--servers",
            &servers,
            "--resend",
            "--json",
            "1",
            "2",
            "3",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let (a_seen, b_seen) = (within(a_seen).await.unwrap(), within(b_seen).await.unwrap());
    assert_eq!(a_seen[0].session().first_seq, 0);
    assert_eq!(b_seen[0].session().first_seq, 1);
    assert_eq!(b_seen[0].session().stream_id, a_seen[0].session().stream_id);
    assert_eq!(b_seen[0].frames, [frame("2"), frame("3")]);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["acked_ok"], 3, "{report}");
    assert_eq!(report["reconnects"], 1, "{report}");
}

#[tokio::test]
async fn stdin_lines_are_resent_too() {
    let (addr, server) = collector(2, |conn, seq| match (conn, seq) {
        (0, 1) => Reply::Close,
        _ => OK,
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "--stdin-lines",
        ],
        Some(b"one\ntwo\nthree\n"),
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("3 acked ok"), "{run:?}");
    let seen = within(server).await.unwrap();
    assert_eq!(seen[1].session().first_seq, 1);
    assert_eq!(seen[1].frames, [frame("two"), frame("three")]);
}

#[tokio::test]
async fn bench_resends_and_reports_every_stream() {
    // The first connection of each stream breaks after 10 frames.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut handlers = Vec::new();
        for index in 0..4 {
            let (stream, _) = within(listener.accept()).await.unwrap();
            // Connections 0 and 1 are the first of the two streams.
            let script: Script = if index < 2 {
                |_, seq| if seq < 10 { OK } else { Reply::Close }
            } else {
                |_, _| OK
            };
            handlers.push(tokio::spawn(within(serve(stream, index, script))));
        }
        let mut seen = Vec::new();
        for handler in handlers {
            seen.push(within(handler).await.unwrap());
        }
        seen
    });
    let run = client(
        &[
            "bench",
            "--addr",
            &addr.to_string(),
            "--frames",
            "200",
            "--size",
            "16",
            "--connections",
            "2",
            "--wait-ack",
            "--window",
            "8",
            "--resend",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["frames"], 200, "{report}");
    assert_eq!(report["acked_ok"], 200, "{report}");
    assert_eq!(report["given_up"], 0, "{report}");
    assert_eq!(report["reconnects"], 2, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    for stream in streams {
        assert_eq!(stream["frames"], 100, "{report}");
        assert_eq!(stream["acked_ok"], 100, "{report}");
    }
    let seen = within(server).await.unwrap();
    for first in &seen[..2] {
        let id = first.session().stream_id;
        let second = seen[2..]
            .iter()
            .find(|conn| conn.session().stream_id == id)
            .expect("the stream came back");
        assert_eq!(second.session().first_seq, 10);
        // Frames 10.. arrive once more on the new connection, 100 in all.
        assert_eq!(second.frames.len(), 90);
    }
}

#[tokio::test]
async fn the_window_bounds_the_frames_kept_without_an_ok_ack() {
    // Nothing is ever acked: the client may have at most --window frames out.
    let (addr, server) = collector(1, |_, _| Reply::Silent).await;
    let run = client(
        &[
            "bench",
            "--addr",
            &addr.to_string(),
            "--frames",
            "50",
            "--size",
            "8",
            "--wait-ack",
            "--window",
            "4",
            "--timeout",
            "300ms",
            "--resend",
            "--resend-deadline",
            "100ms",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["sent"], 4, "{report}");
    assert_eq!(report["given_up"], 50, "{report}");
    assert_eq!(report["acked_ok"], 0, "{report}");
    assert!(run.stderr.contains("no ack within 300ms"), "{run:?}");
    assert_eq!(within(server).await.unwrap()[0].frames.len(), 4);
}

#[tokio::test]
async fn a_frame_too_large_is_given_up_and_the_rest_goes_on_a_new_connection() {
    let (addr, server) = collector(2, |conn, seq| match (conn, seq) {
        (0, 1) => Reply::Ack(AckStatus::TooLarge),
        _ => OK,
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--resend",
            "--json",
            "x",
            "y",
            "z",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(4), "{run:?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["acked_ok"], 2, "{report}");
    assert_eq!(report["given_up"], 1, "{report}");
    assert_eq!(report["reconnects"], 1, "{report}");
    let seen = within(server).await.unwrap();
    assert_eq!(seen[1].session().first_seq, 2);
    assert_eq!(seen[1].frames, [frame("z")]);
}

#[tokio::test]
async fn a_refused_crc_size_fails_the_run() {
    let (addr, server) = collector(1, |_, _| Reply::Ack(AckStatus::UnsupportedCrcSize)).await;
    let run = client(
        &["send", "--addr", &addr.to_string(), "--resend", "x"],
        None,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("answered frame 0 with status 3: unsupported crc size"),
        "{run:?}"
    );
    within(server).await.unwrap();
}

#[tokio::test]
async fn an_old_server_that_closes_with_frames_unread_is_still_recognised() {
    // Like a server from before session frames: one read of what has
    // arrived, status 2 for the session frame, and a close at once, with
    // the frames the client keeps writing unread: the kernel resets the
    // connection, and the client's next write fails. The ack is there to
    // read all the same, and must be read. A race, so ten rounds.
    for round in 0..10 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = within(listener.accept()).await.unwrap();
            let mut first = vec![0u8; 64 * 1024];
            let read = within(stream.read(&mut first)).await.unwrap();
            let mut ack = Vec::new();
            let status = AckStatus::UnsupportedVersion;
            encode_ack(&Ack { status, seq: 0 }, &mut ack);
            within(stream.write_all(&ack)).await.unwrap();
            first.truncate(read);
            first
        });
        let run = client(
            &[
                "bench",
                "--addr",
                &addr.to_string(),
                "--frames",
                "400000",
                "--size",
                "64",
                "--wait-ack",
                "--window",
                "400000",
                "--resend",
                "--resend-deadline",
                "1s",
            ],
            None,
        )
        .await;
        assert_eq!(run.code, Some(1), "round {round}: {run:?}");
        assert!(
            run.stderr.contains("predates session frames"),
            "round {round}: {run:?}"
        );
        assert_eq!(within(server).await.unwrap()[..4], [0, 0, 0, 3]);
    }
}

#[tokio::test]
async fn bench_prints_the_resend_summary_for_people() {
    let (addr, server) = collector(1, |_, _| OK).await;
    let run = client(
        &[
            "bench",
            "--addr",
            &addr.to_string(),
            "--frames",
            "10",
            "--size",
            "4",
            "--wait-ack",
            "--resend",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("sent 10 frames, 10 acked ok, 0 resent, 0 given up, 0 reconnects"),
        "{run:?}"
    );
    let seen = within(server).await.unwrap();
    assert_eq!(seen[0].session().first_seq, 0);
    assert_eq!(seen[0].frames.len(), 10);
}

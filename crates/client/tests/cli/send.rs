//! `client send`.

use proto::{AckStatus, CrcSize, Version};

use crate::support::{Reply, byte_recorder, client, frame_server, payloads, within};

#[tokio::test]
async fn writes_the_reference_clients_frame() {
    let (addr, recorder) = byte_recorder().await;
    let run = client(&["send", "--addr", &addr.to_string(), "a"], None).await;
    assert!(run.success, "{run:?}");
    assert_eq!(
        within(recorder).await.unwrap(),
        [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x61, 0x10]
    );
    assert!(run.stderr.contains("sent 1 frames (14 bytes)"), "{run:?}");
}

#[tokio::test]
async fn sends_one_frame_per_message_in_order() {
    let (addr, server) = frame_server(1, |_| Reply::Silent).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--version",
            "2",
            "--crc-size",
            "4",
            "one",
            "two",
            "",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    let frames = within(server).await.unwrap().remove(0);
    assert_eq!(payloads(&frames), ["one", "two", ""]);
    for frame in &frames {
        assert_eq!(frame.header.version, Version::V2);
        assert_eq!(frame.header.crc_size, CrcSize::Crc32);
        assert!(frame.crc_ok);
    }
}

#[tokio::test]
async fn wait_ack_succeeds_when_every_frame_is_acked_ok() {
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--wait-ack",
            "x",
            "y",
            "z",
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert!(run.stderr.contains("sent 3 frames"), "{run:?}");
    assert!(run.stderr.contains("3 acked ok"), "{run:?}");
    assert_eq!(payloads(&within(server).await.unwrap()[0]), ["x", "y", "z"]);
}

#[tokio::test]
async fn wait_ack_fails_naming_the_rejected_frame() {
    let (addr, server) = frame_server(1, |seq| {
        Reply::Ack(if seq == 1 {
            AckStatus::CrcMismatch
        } else {
            AckStatus::Ok
        })
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--wait-ack",
            "one",
            "bad one",
            "three",
        ],
        None,
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr
            .contains("frame 1 (\"bad one\", 7 bytes) was rejected: crc mismatch"),
        "{run:?}"
    );
    within(server).await.unwrap();
}

#[tokio::test]
async fn wait_ack_fails_when_the_server_closes_early() {
    let (addr, server) = frame_server(1, |seq| {
        if seq == 0 {
            Reply::Ack(AckStatus::Ok)
        } else {
            Reply::Close
        }
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--wait-ack",
            "a",
            "b",
            "c",
        ],
        None,
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr
            .contains("the server closed the connection after 1 of 3 acks"),
        "{run:?}"
    );
    within(server).await.unwrap();
}

#[tokio::test]
async fn wait_ack_gives_up_after_the_timeout() {
    // The server stalls for good: its task ends with the test's runtime.
    let (addr, _server) = frame_server(1, |_| Reply::Stall).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--wait-ack",
            "--timeout",
            "200ms",
            "a",
        ],
        None,
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr.contains("no ack for frame 0 within 200ms"),
        "{run:?}"
    );
}

#[tokio::test]
async fn without_wait_ack_gives_up_when_the_server_never_closes() {
    let (addr, _server) = frame_server(1, |_| Reply::Stall).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--timeout",
            "200ms",
            "a",
        ],
        None,
    )
    .await;
    assert!(!run.success, "{run:?}");
    let expected = "waiting for the server to close after the last frame: timed out after 200ms";
    assert!(run.stderr.contains(expected), "{run:?}");
}

#[tokio::test]
async fn stdin_lines_sends_one_frame_per_line() {
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--stdin-lines",
            "--wait-ack",
        ],
        Some(b"first\nsecond\r\n\nlast"),
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(
        payloads(&within(server).await.unwrap()[0]),
        ["first", "second", "", "last"]
    );
}

#[tokio::test]
async fn file_is_sent_as_one_frame() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("send-file.txt");
    let content: String = (0..20_000).map(|n| format!("line {n}\n")).collect();
    std::fs::write(&path, &content).unwrap();
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--wait-ack",
            "--file",
            path.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(payloads(&within(server).await.unwrap()[0]), [content]);
}

#[tokio::test]
async fn many_frames_are_all_delivered() {
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let lines: String = (0..50_000).map(|n| format!("frame number {n}\n")).collect();
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--stdin-lines",
            "--wait-ack",
        ],
        Some(lines.as_bytes()),
    )
    .await;
    assert!(run.success, "{run:?}");
    let frames = within(server).await.unwrap().remove(0);
    assert_eq!(frames.len(), 50_000);
    assert_eq!(payloads(&frames[49_999..]), ["frame number 49999"]);
}

#[tokio::test]
async fn acks_nobody_waits_for_do_not_stall_the_writer() {
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let lines: String = (0..200_000).map(|n| format!("{n}\n")).collect();
    let run = client(
        &["send", "--addr", &addr.to_string(), "--stdin-lines"],
        Some(lines.as_bytes()),
    )
    .await;
    assert!(run.success, "{run:?}");
    let frames = within(server).await.unwrap().remove(0);
    assert_eq!(frames.len(), 200_000);
}

#[tokio::test]
async fn reports_a_refused_connection() {
    // Nothing listens there.
    let addr = testkit::free_loopback_port().unwrap();
    let run = client(&["send", "--addr", &addr.to_string(), "a"], None).await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr.contains(&format!("connecting to {addr}")),
        "{run:?}"
    );
}

#[tokio::test]
async fn stdin_lines_are_sent_as_they_come() {
    use futures_util::StreamExt;
    use proto::{Ack, FrameCodec, encode_ack};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["send", "--addr", &addr, "--stdin-lines", "--wait-ack"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    within(stdin.write_all(b"first\n")).await.unwrap();
    let (stream, _) = within(listener.accept()).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut frames = FramedRead::new(reader, FrameCodec::default());
    // The first line arrives while stdin is still open: nothing waits for EOF.
    let first = within(frames.next()).await.unwrap().unwrap();
    assert_eq!(&first.payload()[..], b"first");
    let mut ack = Vec::new();
    encode_ack(
        &Ack {
            status: AckStatus::Ok,
            seq: 0,
        },
        &mut ack,
    );
    within(writer.write_all(&ack)).await.unwrap();
    within(stdin.write_all(b"second\n")).await.unwrap();
    drop(stdin);
    let second = within(frames.next()).await.unwrap().unwrap();
    assert_eq!(&second.payload()[..], b"second");
    ack.clear();
    encode_ack(
        &Ack {
            status: AckStatus::Ok,
            seq: 1,
        },
        &mut ack,
    );
    within(writer.write_all(&ack)).await.unwrap();
    let output = within(child.wait_with_output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("sent 2 frames") && stderr.contains("2 acked ok"),
        "{stderr}"
    );
}

#[tokio::test]
async fn stdin_lines_name_the_rejected_line() {
    let (addr, _server) = frame_server(1, |seq| {
        Reply::Ack(if seq == 2 {
            AckStatus::HandlerFailed
        } else {
            AckStatus::Ok
        })
    })
    .await;
    let run = client(
        &[
            "send",
            "--addr",
            &addr.to_string(),
            "--stdin-lines",
            "--wait-ack",
        ],
        Some(b"one\ntwo\nthree\nfour\n"),
    )
    .await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr
            .contains("frame 2 (line 3) was rejected: handler failed"),
        "{run:?}"
    );
}

#[tokio::test]
async fn servers_are_tried_in_turn_until_one_takes_the_connection() {
    let refused = testkit::free_loopback_port().unwrap().to_string();
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let servers = format!("{refused},{addr}");
    let run = client(
        &["send", "--servers", &servers, "--wait-ack", "x", "y"],
        None,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert!(run.stderr.contains("2 acked ok"), "{run:?}");
    assert_eq!(payloads(&within(server).await.unwrap()[0]), ["x", "y"]);
}

#[tokio::test]
async fn names_every_server_when_none_takes_the_connection() {
    let first = testkit::free_loopback_port().unwrap().to_string();
    let second = testkit::free_loopback_port().unwrap().to_string();
    let servers = format!("{first},{second}");
    let run = client(&["send", "--servers", &servers, "a"], None).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("2 tried"), "{run:?}");
    assert!(
        run.stderr.contains(&format!("connecting to {first}")),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!("connecting to {second}")),
        "{run:?}"
    );
}

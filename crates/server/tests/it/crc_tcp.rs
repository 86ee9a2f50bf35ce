//! The `crc-tcp` mode over real sockets: acks, NACKs, limits, the file sink.

use std::time::Duration;

use proto::{
    ACK_FRAME_LEN, Ack, AckStatus, CrcSize, Decoded, Limits, Version, decode_ack, decode_frame,
    encode_frame,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::{ACK_OK_0, REFERENCE_FRAME, Running, STEP, read_to_close, send, within};

fn listener(extra: &str) -> String {
    format!(
        "[server]\ndrain_timeout = \"5s\"\n[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n{extra}\n"
    )
}

fn frame(version: Version, crc: CrcSize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(version, crc, payload, &mut out).unwrap();
    out
}

async fn read_acks(stream: &mut TcpStream, count: usize) -> Vec<Ack> {
    let mut bytes = vec![0u8; count * ACK_FRAME_LEN];
    within(STEP, stream.read_exact(&mut bytes))
        .await
        .expect("acks");
    bytes
        .chunks(ACK_FRAME_LEN)
        .map(|chunk| match decode_ack(chunk) {
            Ok(Decoded::Done(ack, _)) => ack,
            other => panic!("not an ack: {other:?}"),
        })
        .collect()
}

fn ack(status: AckStatus, seq: u64) -> Ack {
    Ack { status, seq }
}

#[tokio::test]
async fn acks_the_reference_clients_frame_byte_for_byte() {
    let server = Running::start(&listener("")).await;
    let mut stream = send(server.addr("frames"), &REFERENCE_FRAME).await;
    let mut answer = [0u8; 25];
    within(STEP, stream.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer, ACK_OK_0);
    server.stop().await;
}

#[tokio::test]
async fn accepts_a_frame_written_one_byte_at_a_time() {
    let server = Running::start(&listener("")).await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let bytes = frame(Version::V2, CrcSize::Crc32, b"one byte at a time");
    for byte in &bytes {
        within(STEP, stream.write_all(std::slice::from_ref(byte)))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn acks_a_thousand_frames_sent_in_one_write_in_order() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut batch = Vec::new();
    for i in 0..1000u32 {
        let (version, crc) = if i % 2 == 0 {
            (Version::V1, CrcSize::Crc8)
        } else {
            (Version::V2, CrcSize::Crc16)
        };
        encode_frame(version, crc, format!("frame {i}").as_bytes(), &mut batch).unwrap();
    }
    let mut stream = send(server.addr("frames"), &batch).await;
    let acks = read_acks(&mut stream, 1000).await;
    let expected: Vec<Ack> = (0..1000).map(|seq| ack(AckStatus::Ok, seq)).collect();
    assert_eq!(acks, expected);
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_crc_gets_nack_1_and_the_connection_goes_on() {
    let server = Running::start(&listener("")).await;
    let mut bad = frame(Version::V2, CrcSize::Crc32, b"corrupted");
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let mut stream = send(server.addr("frames"), &bad).await;
    assert_eq!(
        read_acks(&mut stream, 1).await,
        [ack(AckStatus::CrcMismatch, 0)]
    );
    within(
        STEP,
        stream.write_all(&frame(Version::V1, CrcSize::Crc8, b"fine")),
    )
    .await
    .unwrap();
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 1)]);
    server.stop().await;
}

/// Sends a header (and no body), expects one NACK with `status`, then the close.
async fn expect_nack_and_close(header: [u32; 3], status: AckStatus, config: &str) {
    let server = Running::start(&listener(config)).await;
    let mut bytes = frame(Version::V1, CrcSize::Crc8, b"first");
    bytes.extend(header.iter().flat_map(|v| v.to_be_bytes()));
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [ack(AckStatus::Ok, 0), ack(status, 1)]
    );
    assert!(
        read_to_close(&mut stream).await.is_empty(),
        "the server closes after a bad header"
    );
    // The listener keeps serving other connections.
    let mut other = send(server.addr("frames"), &REFERENCE_FRAME).await;
    assert_eq!(read_acks(&mut other, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn a_huge_body_size_gets_nack_4_and_a_close() {
    expect_nack_and_close([1, 0xffff_fff0, 1], AckStatus::TooLarge, "").await;
}

#[tokio::test]
async fn a_body_above_the_configured_limit_gets_nack_4() {
    expect_nack_and_close([2, 1025, 4], AckStatus::TooLarge, "max_frame_size = 1024").await;
}

#[tokio::test]
async fn rejects_crc_size_larger_than_body_with_nack_6() {
    expect_nack_and_close([2, 3, 4], AckStatus::MalformedHeader, "").await;
}

#[tokio::test]
async fn rejects_an_unknown_version_with_nack_2() {
    expect_nack_and_close([3, 5, 4], AckStatus::UnsupportedVersion, "").await;
}

#[tokio::test]
async fn rejects_an_undefined_crc_size_with_nack_3() {
    expect_nack_and_close([2, 5, 3], AckStatus::UnsupportedCrcSize, "").await;
}

#[tokio::test]
async fn rejects_frames_without_crc_unless_allowed() {
    expect_nack_and_close([2, 5, 0], AckStatus::UnsupportedCrcSize, "").await;
    let server = Running::start(&listener("allow_no_crc = true")).await;
    let mut stream = send(
        server.addr("frames"),
        &frame(Version::V2, CrcSize::None, b"no crc"),
    )
    .await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn sends_no_acks_when_ack_is_off() {
    let server = Running::start(&listener("ack = false")).await;
    let mut stream = send(server.addr("frames"), &REFERENCE_FRAME).await;
    stream.shutdown().await.unwrap();
    assert!(read_to_close(&mut stream).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn echo_sends_the_frame_back_then_its_ack() {
    let server = Running::start(&listener("handler = { type = \"echo\" }")).await;
    let sent = frame(Version::V1, CrcSize::Crc32, b"echo me");
    let mut stream = send(server.addr("frames"), &sent).await;
    let mut back = vec![0u8; sent.len()];
    within(STEP, stream.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, sent);
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn serves_many_connections_at_once() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let addr = server.addr("frames");
    let clients: Vec<_> = (0..50)
        .map(|client| {
            tokio::spawn(async move {
                let mut batch = Vec::new();
                for i in 0..20 {
                    encode_frame(
                        Version::V2,
                        CrcSize::Crc32,
                        format!("{client}/{i}").as_bytes(),
                        &mut batch,
                    )
                    .unwrap();
                }
                // Every connection is open before any sends: they are served concurrently.
                let mut stream = within(STEP, TcpStream::connect(addr)).await.unwrap();
                within(STEP, stream.write_all(&batch)).await.unwrap();
                read_acks(&mut stream, 20).await
            })
        })
        .collect();
    for client in clients {
        let acks = within(STEP, client).await.unwrap();
        assert!(
            acks.iter()
                .enumerate()
                .all(|(i, a)| *a == ack(AckStatus::Ok, i as u64))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn closes_an_idle_connection_after_idle_timeout() {
    let server = Running::start(&listener("idle_timeout = \"200ms\"")).await;
    let mut stream = send(server.addr("frames"), &REFERENCE_FRAME).await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    assert!(read_to_close(&mut stream).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn closes_a_frame_that_never_finishes_after_frame_timeout() {
    let server = Running::start(&listener("frame_timeout = \"200ms\"")).await;
    let partial = &frame(Version::V2, CrcSize::Crc32, b"never finished")[..15];
    let mut stream = send(server.addr("frames"), partial).await;
    let started = std::time::Instant::now();
    assert!(
        read_to_close(&mut stream).await.is_empty(),
        "no ack for a frame that never finished"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test]
async fn file_sink_holds_exactly_the_acked_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frames.bin");
    let config = listener(&format!(
        "handler = {{ type = \"file\", path = {:?}, sync = \"always\" }}",
        path.display().to_string()
    ));
    let server = Running::start(&config).await;
    let good: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            frame(
                Version::V2,
                CrcSize::Crc32,
                format!("stored {i}").as_bytes(),
            )
        })
        .collect();
    let mut bad = frame(Version::V1, CrcSize::Crc8, b"not stored");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    let mut expected_acks = Vec::new();
    let mut seq = 0;
    for (i, good) in good.iter().enumerate() {
        let mut bytes = good.clone();
        expected_acks.push(ack(AckStatus::Ok, seq));
        seq += 1;
        if i % 3 == 0 {
            bytes.extend_from_slice(&bad);
            expected_acks.push(ack(AckStatus::CrcMismatch, seq));
            seq += 1;
        }
        within(STEP, stream.write_all(&bytes)).await.unwrap();
    }
    assert_eq!(
        read_acks(&mut stream, expected_acks.len()).await,
        expected_acks
    );
    // Acked ok means written and synced: the file holds them before shutdown.
    let stored = std::fs::read(&path).unwrap();
    assert_eq!(stored, good.concat());
    server.stop().await;
    assert_eq!(std::fs::read(&path).unwrap(), good.concat());
    // The file parses back into the same frames.
    let mut rest = stored.as_slice();
    let mut count = 0;
    while let Ok(Decoded::Done(frame, used)) = decode_frame(rest, &Limits::default()) {
        assert!(frame.crc_ok());
        assert_eq!(frame.payload, format!("stored {count}").as_bytes());
        rest = &rest[used..];
        count += 1;
    }
    assert_eq!(count, 10);
}

#[tokio::test]
async fn file_sink_failure_answers_status_5_and_keeps_the_connection() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let config = listener("handler = { type = \"file\", path = \"/dev/full\", sync = \"never\" }");
    let server = Running::start(&config).await;
    let mut stream = send(server.addr("frames"), &REFERENCE_FRAME).await;
    assert_eq!(
        read_acks(&mut stream, 1).await,
        [ack(AckStatus::HandlerFailed, 0)]
    );
    within(STEP, stream.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    assert_eq!(
        read_acks(&mut stream, 1).await,
        [ack(AckStatus::HandlerFailed, 1)]
    );
    server.stop().await;
}

/// A small deterministic generator, so the garbage is the same on every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

#[tokio::test]
async fn survives_garbage_and_keeps_serving() {
    let server = Running::start(&listener(
        "frame_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
    ))
    .await;
    let addr = server.addr("frames");
    let peers: Vec<_> = (0..100u64)
        .map(|seed| {
            tokio::spawn(async move {
                // Half of the peers start with a valid header so the garbage lands in a body.
                let mut bytes = if seed % 2 == 0 {
                    REFERENCE_FRAME[..12].to_vec()
                } else {
                    Vec::new()
                };
                bytes.extend(garbage(seed, 1 + (seed as usize * 37) % 600));
                let mut stream = send(addr, &bytes).await;
                // Whatever the verdict, the server answers with acks only, then closes.
                let answer = read_to_close(&mut stream).await;
                assert_eq!(
                    answer.len() % ACK_FRAME_LEN,
                    0,
                    "peer {seed}: {} bytes back",
                    answer.len()
                );
                for chunk in answer.chunks(ACK_FRAME_LEN) {
                    assert!(
                        matches!(decode_ack(chunk), Ok(Decoded::Done(..))),
                        "peer {seed}: not an ack"
                    );
                }
            })
        })
        .collect();
    for peer in peers {
        within(STEP, peer).await.unwrap();
    }
    let mut stream = send(addr, &REFERENCE_FRAME).await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn listens_on_ipv6_loopback() {
    let config = "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"[::1]:0\"\n";
    let server = Running::start(config).await;
    let addr = server.addr("frames");
    assert!(addr.is_ipv6());
    let mut stream = send(addr, &REFERENCE_FRAME).await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 0)]);
    server.stop().await;
}

#[tokio::test]
async fn frame_timeout_times_one_frame_not_a_continuous_stream() {
    // Issue 7 item 4: every write ends in the middle of a frame, so the
    // server's buffer is never empty; each frame still completes in
    // milliseconds, and the stream runs for about 3 × frame_timeout.
    let frame_timeout = Duration::from_millis(500);
    let server = Running::start(&listener(
        "frame_timeout = \"500ms\"\nhandler = { type = \"discard\" }",
    ))
    .await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let frames: Vec<Vec<u8>> = (0..2u32)
        .map(|i| frame(Version::V2, CrcSize::Crc32, &[i as u8; 100]))
        .collect();
    let half = frames[0].len() / 2;
    within(STEP, stream.write_all(&frames[0][..half]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut seq = 0u64;
    // Bounded in count and in time; the pace only spreads the frames out.
    while started.elapsed() < frame_timeout * 3 && seq < 1_000 {
        pace.tick().await;
        let this = &frames[(seq % 2) as usize];
        let next = &frames[((seq + 1) % 2) as usize];
        // The rest of this frame and the first half of the next one.
        let mut bytes = this[half..].to_vec();
        bytes.extend_from_slice(&next[..half]);
        within(STEP, stream.write_all(&bytes)).await.unwrap();
        assert_eq!(
            read_acks(&mut stream, 1).await,
            [ack(AckStatus::Ok, seq)],
            "frame {seq}, {:?} into the stream",
            started.elapsed()
        );
        seq += 1;
    }
    assert!(started.elapsed() >= frame_timeout * 3, "only {seq} frames");
    // The connection is still served: finish the pending frame.
    let last = &frames[(seq % 2) as usize];
    within(STEP, stream.write_all(&last[half..])).await.unwrap();
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, seq)]);
    server.stop().await;
}

#[tokio::test]
async fn a_frame_trickling_in_slower_than_frame_timeout_is_closed() {
    // The slow-loris guard: each byte comes well within the timeout, but
    // the frame as a whole does not.
    let server = Running::start(&listener("frame_timeout = \"300ms\"")).await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let bytes = frame(Version::V2, CrcSize::Crc32, &[7u8; 100]);
    let started = std::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0;
    // 104 bytes at 20 ms each would take about 2 s: the server must close first.
    for byte in &bytes {
        pace.tick().await;
        if within(STEP, stream.write_all(std::slice::from_ref(byte)))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < bytes.len(),
        "the server took all {sent} bytes instead of closing"
    );
    // Closed (a FIN or a reset, depending on what was still unread), no ack.
    let mut answer = Vec::new();
    let _ = within(STEP, stream.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "no ack for a frame that came too slowly");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test]
async fn closes_a_silent_connection_after_first_byte_timeout() {
    // Issue 7 item 7: a connection that never sends a byte holds a slot
    // for first_byte_timeout, not for idle_timeout.
    let server = Running::start(&listener(
        "first_byte_timeout = \"200ms\"\nidle_timeout = \"1h\"",
    ))
    .await;
    let mut silent = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    // A connection that spoke is then held to idle_timeout only: it is
    // still served well after first_byte_timeout.
    let mut talker = send(server.addr("frames"), &REFERENCE_FRAME).await;
    assert_eq!(read_acks(&mut talker, 1).await, [ack(AckStatus::Ok, 0)]);
    let mut later = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    assert!(read_to_close(&mut later).await.is_empty());
    within(STEP, talker.write_all(&REFERENCE_FRAME))
        .await
        .unwrap();
    assert_eq!(read_acks(&mut talker, 1).await, [ack(AckStatus::Ok, 1)]);
    server.stop().await;
}

#[test]
fn max_buffered_bytes_must_hold_the_largest_frame() {
    let parse = |extra: &str| server::Config::parse(&listener(extra), "test config");
    // 1 MiB frames need 1 MiB + 12 - 64 KiB = 983052 bytes beyond the base buffer.
    let error = parse("max_frame_size = 1048576\nmax_buffered_bytes = 983051")
        .expect_err("a budget below one frame is refused");
    let message = format!("{error:#}");
    assert!(message.contains("max_buffered_bytes"), "{message}");
    assert!(
        parse("max_frame_size = 1048576\nmax_buffered_bytes = 983052").is_ok(),
        "exactly one largest frame is enough"
    );
    // The default follows a large max_frame_size, so such configs still start.
    assert!(parse("max_frame_size = 1073741824").is_ok());
    assert!(parse("max_buffered_bytes = 2000000000000").is_err());
}

fn session_frame(first_seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    proto::encode_session(
        &proto::Session {
            stream_id: *b"netkit-stream-id",
            first_seq,
        },
        &mut out,
    );
    out
}

#[tokio::test]
async fn a_session_frame_numbers_the_frames_after_it_from_first_seq() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut bytes = session_frame(41);
    for payload in [&b"a"[..], b"b", b"c"] {
        bytes.extend(frame(Version::V2, CrcSize::Crc32, payload));
    }
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 3).await,
        [
            ack(AckStatus::Ok, 41),
            ack(AckStatus::Ok, 42),
            ack(AckStatus::Ok, 43)
        ],
        "the session frame gets no ack and the data frames count from first_seq"
    );
    // A CRC mismatch after it still takes the next number.
    let mut bad = frame(Version::V2, CrcSize::Crc32, b"bad");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    within(STEP, stream.write_all(&bad)).await.unwrap();
    assert_eq!(
        read_acks(&mut stream, 1).await,
        [ack(AckStatus::CrcMismatch, 44)]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_frame_split_across_reads_is_put_together() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut stream = within(STEP, TcpStream::connect(server.addr("frames")))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut bytes = session_frame(7);
    bytes.extend(frame(Version::V1, CrcSize::Crc8, b"after"));
    // Cut at 2 (before the version word is whole) and 20 (in the middle of the stream id).
    for piece in [&bytes[..2], &bytes[2..20], &bytes[20..]] {
        within(STEP, stream.write_all(piece)).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 7)]);
    server.stop().await;
}

#[tokio::test]
async fn a_first_seq_near_the_end_of_u64_wraps_instead_of_failing() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut bytes = session_frame(u64::MAX);
    bytes.extend(frame(Version::V2, CrcSize::Crc32, b"last"));
    bytes.extend(frame(Version::V2, CrcSize::Crc32, b"wrapped"));
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [ack(AckStatus::Ok, u64::MAX), ack(AckStatus::Ok, 0)]
    );
    server.stop().await;
}

/// Sends `bytes` as the start of a connection; expects one NACK (`status`, seq 0) and the close.
async fn expect_session_nack(bytes: &[u8], status: AckStatus) {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut stream = send(server.addr("frames"), bytes).await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(status, 0)]);
    assert!(
        read_to_close(&mut stream).await.is_empty(),
        "the server closes after a bad session frame"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_frame_of_the_wrong_size_gets_nack_6_and_a_close() {
    for (body, crc) in [(27u32, 4u32), (29, 4), (28, 2), (u32::MAX, 4)] {
        let mut bytes = session_frame(0);
        bytes[4..8].copy_from_slice(&body.to_be_bytes());
        bytes[8..12].copy_from_slice(&crc.to_be_bytes());
        // Only the header: the sizes are judged before the rest arrives.
        expect_session_nack(&bytes[..12], AckStatus::MalformedHeader).await;
    }
}

#[tokio::test]
async fn a_session_frame_with_a_bad_crc_gets_nack_1_and_a_close() {
    let mut bytes = session_frame(5);
    bytes[20] ^= 0x10;
    bytes.extend(frame(Version::V2, CrcSize::Crc32, b"never taken"));
    expect_session_nack(&bytes, AckStatus::CrcMismatch).await;
}

#[tokio::test]
async fn a_session_frame_after_the_first_frame_gets_nack_2_as_before() {
    let server = Running::start(&listener("handler = { type = \"discard\" }")).await;
    let mut bytes = frame(Version::V2, CrcSize::Crc32, b"first");
    bytes.extend(session_frame(9));
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [ack(AckStatus::Ok, 0), ack(AckStatus::UnsupportedVersion, 1)]
    );
    assert!(read_to_close(&mut stream).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_session_frame_cut_short_is_closed_by_the_frame_timeout() {
    let server = Running::start(&listener(
        "handler = { type = \"discard\" }\nframe_timeout = \"200ms\"",
    ))
    .await;
    let bytes = session_frame(0);
    let mut stream = send(server.addr("frames"), &bytes[..30]).await;
    assert!(
        read_to_close(&mut stream).await.is_empty(),
        "closed without an ack"
    );
    server.stop().await;
}

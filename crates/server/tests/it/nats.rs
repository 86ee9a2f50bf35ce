//! The `nats` handler without a NATS server (the tests with one are in
//! `cargo xtask e2e --only nats`): every frame is answered status 5 within
//! `publish_timeout`, in order, the connection goes on, and `/readyz` and the
//! metrics say the handler is not connected.

use std::time::{Duration, Instant};

use proto::{ACK_FRAME_LEN, Ack, AckStatus, CrcSize, Decoded, Version, decode_ack, encode_frame};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    admin::Admin,
    common::{STEP, read_to_close, send, within},
};

/// A crc-tcp listener `frames` whose nats handler points at a port nothing listens on.
fn unreachable(publish_timeout: &str) -> String {
    let nowhere = testkit::free_loopback_port().expect("a free port");
    format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"nats\", servers = [\"nats://{nowhere}\"], publish_timeout = \"{publish_timeout}\" }}\n"
    )
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(Version::V2, CrcSize::Crc32, payload, &mut out).unwrap();
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
async fn without_nats_every_frame_gets_status_5_in_order_and_the_connection_goes_on() {
    let server = Admin::start(&unreachable("300ms")).await;
    let mut bytes = frame(b"one");
    let mut bad = frame(b"two");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    bytes.extend(bad);
    bytes.extend(frame(b"three"));
    let started = Instant::now();
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 3).await,
        [
            ack(AckStatus::HandlerFailed, 0),
            ack(AckStatus::CrcMismatch, 1),
            ack(AckStatus::HandlerFailed, 2)
        ]
    );
    // Within publish_timeout (and a margin for a loaded machine), not after some longer wait.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300) + Duration::from_secs(2),
        "{took:?}"
    );
    // The connection is still usable.
    within(STEP, stream.write_all(&frame(b"four")))
        .await
        .unwrap();
    assert_eq!(
        read_acks(&mut stream, 1).await,
        [ack(AckStatus::HandlerFailed, 3)]
    );
    // A bad header after frames in flight: their answers first, then the NACK, then the close.
    let mut tail = frame(b"five");
    tail.extend([0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0, 4]);
    within(STEP, stream.write_all(&tail)).await.unwrap();
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [
            ack(AckStatus::HandlerFailed, 4),
            ack(AckStatus::UnsupportedVersion, 5)
        ]
    );
    assert!(read_to_close(&mut stream).await.is_empty());

    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("listener frames: nats: not connected"),
        "{body}"
    );
    let (_, metrics) = server.get("/metrics").await;
    for line in [
        "netkit_nats_connected{listener=\"frames\",mode=\"crc-tcp\"} 0",
        "netkit_nats_disconnects_total{listener=\"frames\",mode=\"crc-tcp\"} 0",
        "netkit_frames_total{listener=\"frames\",mode=\"crc-tcp\",status=\"handler_failed\"} 4",
        "netkit_frames_total{listener=\"frames\",mode=\"crc-tcp\",status=\"crc_mismatch\"} 1",
        "netkit_frames_total{listener=\"frames\",mode=\"crc-tcp\",status=\"unsupported_version\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(
        metrics.contains("# TYPE netkit_nats_publish_seconds histogram"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_frame_with_the_nats_handler_numbers_the_status_5_answers() {
    let server = Admin::start(&unreachable("5s")).await;
    let mut bytes = Vec::new();
    proto::encode_session(
        &proto::Session {
            stream_id: [7; 16],
            first_seq: 1000,
        },
        &mut bytes,
    );
    bytes.extend(frame(b"a"));
    bytes.extend(frame(b"b"));
    let mut stream = send(server.addr("frames"), &bytes).await;
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [
            ack(AckStatus::HandlerFailed, 1000),
            ack(AckStatus::HandlerFailed, 1001)
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_listener_without_a_nats_handler_shows_no_nats_metrics_and_is_ready() {
    let server = Admin::start(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    assert_eq!(server.get("/readyz").await.0, 200);
    let (_, metrics) = server.get("/metrics").await;
    assert!(!metrics.contains("netkit_nats_"), "{metrics}");
    server.stop().await;
}

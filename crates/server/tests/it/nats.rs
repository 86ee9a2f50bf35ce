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

/// A NATS server of a few lines: enough of the protocol for a client to
/// connect and publish, with the test deciding what each publish's PubAck
/// says, and when.
mod fake {
    use std::{net::SocketAddr, sync::Arc};

    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::{TcpListener, tcp::OwnedWriteHalf},
        sync::{Mutex, mpsc},
    };

    /// A message published with headers (`HPUB`).
    pub struct Published {
        pub subject: String,
        pub reply: String,
        pub headers: String,
        pub payload: Vec<u8>,
    }

    pub struct FakeNats {
        pub addr: SocketAddr,
        pub published: mpsc::UnboundedReceiver<Published>,
        writer: Arc<Mutex<Option<(OwnedWriteHalf, String)>>>,
    }

    impl FakeNats {
        pub async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, published) = mpsc::unbounded_channel();
            let writer = Arc::new(Mutex::new(None));
            let shared = Arc::clone(&writer);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (read, mut write) = stream.into_split();
                    let info = format!(
                        "INFO {{\"server_id\":\"fake\",\"server_name\":\"fake\",\"version\":\"2.9.10\",\"go\":\"go1\",\"host\":\"127.0.0.1\",\"port\":{},\"headers\":true,\"max_payload\":1048576,\"proto\":1,\"jetstream\":true}}\r\n",
                        addr.port()
                    );
                    if write.write_all(info.as_bytes()).await.is_err() {
                        continue;
                    }
                    *shared.lock().await = Some((write, String::new()));
                    let (shared, tx) = (Arc::clone(&shared), tx.clone());
                    tokio::spawn(serve(BufReader::new(read), shared, tx));
                }
            });
            Self {
                addr,
                published,
                writer,
            }
        }

        /// Answers the publish whose reply subject is `reply` with `json`.
        pub async fn reply(&self, reply: &str, json: &str) {
            let mut guard = self.writer.lock().await;
            let (write, sid) = guard.as_mut().expect("a client is connected");
            let msg = format!("MSG {reply} {sid} {}\r\n{json}\r\n", json.len());
            write.write_all(msg.as_bytes()).await.unwrap();
        }
    }

    async fn serve(
        mut read: BufReader<tokio::net::tcp::OwnedReadHalf>,
        shared: Arc<Mutex<Option<(OwnedWriteHalf, String)>>>,
        tx: mpsc::UnboundedSender<Published>,
    ) {
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["PING"] => {
                    if let Some((write, _)) = shared.lock().await.as_mut() {
                        let _ = write.write_all(b"PONG\r\n").await;
                    }
                }
                ["SUB", _subject, sid] | ["SUB", _subject, _, sid] => {
                    if let Some((_, current)) = shared.lock().await.as_mut() {
                        *current = (*sid).to_owned();
                    }
                }
                ["PUB", _, rest @ ..] => {
                    let len: usize = rest.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let mut body = vec![0; len + 2];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                }
                ["HPUB", subject, reply, header_len, total_len] => {
                    let (header_len, total_len): (usize, usize) =
                        (header_len.parse().unwrap(), total_len.parse().unwrap());
                    let mut body = vec![0; total_len + 2];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send(Published {
                        subject: (*subject).to_owned(),
                        reply: (*reply).to_owned(),
                        headers: String::from_utf8_lossy(&body[..header_len]).into_owned(),
                        payload: body[header_len..total_len].to_vec(),
                    });
                }
                _ => {}
            }
        }
    }
}

/// A session frame: stream id 0xab × 16, first seq 10.
fn session_ab_from_10() -> Vec<u8> {
    let mut bytes = Vec::new();
    proto::encode_session(
        &proto::Session {
            stream_id: [0xab; 16],
            first_seq: 10,
        },
        &mut bytes,
    );
    bytes
}

/// A listener `frames` with the nats handler on `nats`.
fn handler_on(nats: std::net::SocketAddr, publish_timeout: &str) -> String {
    handler_with(nats, &format!("publish_timeout = \"{publish_timeout}\""))
}

/// A listener `frames` with the nats handler on `nats` and the handler keys `keys`.
fn handler_with(nats: std::net::SocketAddr, keys: &str) -> String {
    format!(
        "[[listener]]\nname = \"frames\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"nats\", servers = [\"nats://{nats}\"], stream = \"FRAMES\", {keys} }}\n"
    )
}

/// Waits (bounded) until the handler of `frames` says it is connected.
async fn connected(server: &Admin) {
    connected_as(server, "frames").await;
}

/// Waits (bounded) until the handler of the listener `name` says it is connected.
async fn connected_as(server: &Admin, name: &str) {
    let line = format!("netkit_nats_connected{{listener=\"{name}\",mode=\"crc-tcp\"}} 1");
    within(STEP, async {
        loop {
            let (_, metrics) = server.get("/metrics").await;
            if metrics.contains(&line) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_ok_only_after_the_puback_and_in_frame_order() {
    let mut nats = fake::FakeNats::start().await;
    // Long enough for the first part on a loaded machine, short for the unanswered publish.
    let server = Admin::start(&handler_on(nats.addr, "3s")).await;
    connected(&server).await;
    let mut bytes = session_ab_from_10();
    for payload in [&b"first"[..], b"second", b"third"] {
        bytes.extend(frame(payload));
    }
    let mut stream = send(server.addr("frames"), &bytes).await;
    // All three are published before any PubAck: the publishes are pipelined.
    let mut published = Vec::new();
    for _ in 0..3 {
        published.push(
            within(STEP, nats.published.recv())
                .await
                .expect("a publish"),
        );
    }
    let payloads: Vec<&[u8]> = published.iter().map(|p| p.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"first"[..], b"second", b"third"]);
    let first = &published[0];
    assert_eq!(first.subject, "frames.frames");
    // `headers = "compact"` (the default): the id and two headers of `key=value` pairs.
    let lines: Vec<&str> = first.headers.split("\r\n").collect();
    assert_eq!(lines.len(), 6, "{:?}", first.headers);
    assert_eq!(lines[0], "NATS/1.0");
    assert_eq!(lines[4..], ["", ""]);
    let header = |name: &str| {
        let prefix = format!("{name}: ");
        let found: Vec<&str> = lines
            .iter()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{name} in {:?}", first.headers);
        found[0].to_owned()
    };
    assert_eq!(header("Nats-Msg-Id"), format!("{}-10", "ab".repeat(16)));
    let frame_facts = header("Netkit-Frame");
    let received = frame_facts
        .strip_prefix("v=2;crc=4;seq=10;received=20")
        .unwrap_or_else(|| panic!("Netkit-Frame: {frame_facts}"));
    assert!(
        received.ends_with('Z') && received.len() == 28,
        "{received}"
    );
    let source = header("Netkit-Source");
    let port = source
        .strip_prefix("client=127.0.0.1:")
        .and_then(|rest| rest.split_once(";listener=frames;conn="))
        .and_then(|(port, rest)| {
            let (conn, stream) = rest.split_once(";stream=")?;
            conn.parse::<u64>().ok()?;
            (stream == "ab".repeat(16)).then_some(port)
        })
        .unwrap_or_else(|| panic!("Netkit-Source: {source}"));
    assert_eq!(
        port.parse::<u16>().unwrap(),
        stream.local_addr().unwrap().port()
    );
    // The later two are acknowledged first (the second as a duplicate): no ack may go out,
    // since the first frame is not stored yet.
    nats.reply(&published[2].reply, "{\"stream\":\"FRAMES\",\"seq\":3}")
        .await;
    nats.reply(
        &published[1].reply,
        "{\"stream\":\"FRAMES\",\"seq\":2,\"duplicate\":true}",
    )
    .await;
    let mut early = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut early))
            .await
            .is_err(),
        "an ack went out before the first frame's PubAck"
    );
    nats.reply(&published[0].reply, "{\"stream\":\"FRAMES\",\"seq\":1}")
        .await;
    assert_eq!(
        read_acks(&mut stream, 3).await,
        [
            ack(AckStatus::Ok, 10),
            ack(AckStatus::Ok, 11),
            ack(AckStatus::Ok, 12)
        ]
    );
    // A PubAck with an error, and one that never comes: status 5 each, in order.
    within(
        STEP,
        stream.write_all(&[frame(b"refused"), frame(b"unanswered")].concat()),
    )
    .await
    .unwrap();
    let refused = within(STEP, nats.published.recv()).await.unwrap();
    let _unanswered = within(STEP, nats.published.recv()).await.unwrap();
    nats.reply(
        &refused.reply,
        "{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"insufficient resources\"}}",
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        read_acks(&mut stream, 2).await,
        [
            ack(AckStatus::HandlerFailed, 13),
            ack(AckStatus::HandlerFailed, 14)
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(3) + Duration::from_secs(3),
        "the unanswered publish took {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_headers_carry_each_fact_in_a_header_of_its_own() {
    let mut nats = fake::FakeNats::start().await;
    let server = Admin::start(&handler_with(nats.addr, "headers = \"split\"")).await;
    connected(&server).await;
    let mut bytes = session_ab_from_10();
    bytes.extend(frame(b"first"));
    let mut stream = send(server.addr("frames"), &bytes).await;
    let first = within(STEP, nats.published.recv())
        .await
        .expect("a publish");
    let id = format!("Nats-Msg-Id: {}-10\r\n", "ab".repeat(16));
    for header in [
        id.as_str(),
        "Netkit-Version: 2\r\n",
        "Netkit-Crc-Size: 4\r\n",
        "Netkit-Listener: frames\r\n",
        "Netkit-Connection: ",
        "Netkit-Stream: abababababababababababababababab\r\n",
        "Netkit-Seq: 10\r\n",
        "Netkit-Client: 127.0.0.1:",
        "Netkit-Received: 20",
    ] {
        assert!(
            first.headers.contains(header),
            "{header:?} not in {:?}",
            first.headers
        );
    }
    assert_eq!(first.headers.matches("\r\n").count(), 1 + 9 + 1);
    assert!(!first.headers.contains("Netkit-Frame"));
    nats.reply(&first.reply, "{\"stream\":\"FRAMES\",\"seq\":1}")
        .await;
    assert_eq!(read_acks(&mut stream, 1).await, [ack(AckStatus::Ok, 10)]);
    server.stop().await;
}

/// A listener name with every character the pairs reserve, and the client's address, read
/// back from the published `Netkit-Source` by the reader `client consume` uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_listener_name_reads_back_from_the_source_header() {
    let mut nats = fake::FakeNats::start().await;
    let name = "in;gest=%\u{e9}";
    let config = format!(
        "[[listener]]\nname = \"{name}\"\nmode = \"crc-tcp\"\nbind = \"127.0.0.1:0\"\n\
         handler = {{ type = \"nats\", servers = [\"nats://{}\"], stream = \"FRAMES\" }}\n",
        nats.addr
    );
    let server = Admin::start(&config).await;
    connected_as(&server, name).await;
    let mut stream = send(server.addr(name), &frame(b"first")).await;
    let first = within(STEP, nats.published.recv())
        .await
        .expect("a publish");
    let source = first
        .headers
        .split("\r\n")
        .find_map(|line| line.strip_prefix("Netkit-Source: "))
        .unwrap_or_else(|| panic!("no Netkit-Source in {:?}", first.headers));
    assert!(source.bytes().all(|b| b.is_ascii_graphic()), "{source}");
    assert_eq!(
        proto::pairs::find_pair(source, "listener").as_deref(),
        Some(name)
    );
    let client = stream.local_addr().unwrap().to_string();
    assert_eq!(
        proto::pairs::find_pair(source, "client").as_deref(),
        Some(client.as_str())
    );
    nats.reply(&first.reply, "{\"stream\":\"FRAMES\",\"seq\":1}")
        .await;
    let mut ack = [0u8; ACK_FRAME_LEN];
    within(STEP, stream.read_exact(&mut ack)).await.unwrap();
    let Ok(Decoded::Done(ack, _)) = decode_ack(&ack) else {
        panic!("bad ack")
    };
    assert_eq!(ack.status, AckStatus::Ok);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_publishes_back_and_a_held_frame_still_times_out() {
    let mut nats = fake::FakeNats::start().await;
    let config = handler_on(nats.addr, "3s")
        .replace("publish_timeout", "max_in_flight = 2, publish_timeout");
    let server = Admin::start(&config).await;
    connected(&server).await;
    let three = |tag: &str| {
        [1, 2, 3]
            .iter()
            .flat_map(|n| frame(format!("{tag}{n}").as_bytes()))
            .collect::<Vec<u8>>()
    };
    let mut stream = send(server.addr("frames"), &three("a")).await;
    let first = within(STEP, nats.published.recv()).await.unwrap();
    let second = within(STEP, nats.published.recv()).await.unwrap();
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"a1"[..], &b"a2"[..])
    );
    // Two await their PubAck: the third waits for one of them.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), nats.published.recv())
            .await
            .is_err(),
        "a third publish with max_in_flight = 2"
    );
    nats.reply(&first.reply, "{\"stream\":\"FRAMES\",\"seq\":1}")
        .await;
    let third = within(STEP, nats.published.recv()).await.unwrap();
    assert_eq!(third.payload, b"a3");
    for (reply, seq) in [(&second.reply, 2), (&third.reply, 3)] {
        nats.reply(reply, &format!("{{\"stream\":\"FRAMES\",\"seq\":{seq}}}"))
            .await;
    }
    assert_eq!(
        read_acks(&mut stream, 3).await,
        [
            ack(AckStatus::Ok, 0),
            ack(AckStatus::Ok, 1),
            ack(AckStatus::Ok, 2)
        ]
    );
    // Unanswered: two are sent, the third is held for a permit; all three get status 5 in
    // order once publish_timeout has passed, the held one too.
    within(STEP, stream.write_all(&three("b"))).await.unwrap();
    let started = Instant::now();
    let _ = within(STEP, nats.published.recv()).await.unwrap();
    let _ = within(STEP, nats.published.recv()).await.unwrap();
    let mut bytes = vec![0u8; 3 * ACK_FRAME_LEN];
    within(Duration::from_secs(3) + STEP, stream.read_exact(&mut bytes))
        .await
        .expect("three acks");
    let acks: Vec<Ack> = bytes
        .chunks(ACK_FRAME_LEN)
        .map(|chunk| match decode_ack(chunk) {
            Ok(Decoded::Done(ack, _)) => ack,
            other => panic!("not an ack: {other:?}"),
        })
        .collect();
    assert_eq!(
        acks,
        [
            ack(AckStatus::HandlerFailed, 3),
            ack(AckStatus::HandlerFailed, 4),
            ack(AckStatus::HandlerFailed, 5)
        ]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "answered status 5 before publish_timeout: {:?}",
        started.elapsed()
    );
    server.stop().await;
}

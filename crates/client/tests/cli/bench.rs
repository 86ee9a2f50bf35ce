//! `client bench`.

use proto::AckStatus;
use serde_json::Value;

use crate::support::{Reply, client, frame_server, within};

fn bench_args(addr: &str, frames: u64, size: usize, connections: usize) -> Vec<String> {
    [
        "bench",
        "--addr",
        addr,
        "--frames",
        &frames.to_string(),
        "--size",
        &size.to_string(),
        "--connections",
        &connections.to_string(),
        "--json",
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn bench(args: &[String]) -> (crate::support::Run, Value) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = client(&args, None).await;
    let report = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|error| panic!("stdout is not one JSON object ({error}): {run:?}"));
    (run, report)
}

#[tokio::test]
async fn json_report_counts_the_frames_the_server_saw() {
    let (addr, server) = frame_server(3, |_| Reply::Silent).await;
    let (run, report) = bench(&bench_args(&addr.to_string(), 1000, 100, 3)).await;
    assert!(run.success, "{run:?}");
    let received = within(server).await.unwrap();
    let sizes: Vec<usize> = received.iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1000);
    assert!(sizes.iter().all(|&n| n == 333 || n == 334), "{sizes:?}");
    for frame in received.iter().flatten() {
        assert!(frame.crc_ok);
        assert_eq!(frame.payload().len(), 100);
    }
    assert_eq!(report["frames"], 1000);
    assert_eq!(report["payload_bytes"], 100_000);
    assert_eq!(report["wire_bytes"], 1000 * (12 + 100 + 1));
    assert_eq!(report["connections"], 3);
    assert_eq!(report["errors"], 0);
    assert!(report["ack_p50_us"].is_null() && report["ack_p99_us"].is_null());
    for key in ["seconds", "frames_per_sec", "mib_per_sec"] {
        assert!(report[key].as_f64().is_some(), "{key}: {report}");
    }
}

#[tokio::test]
async fn large_frames_are_split_into_batches_and_a_remainder() {
    // 100 kB frames: two per 256 KiB batch, so 4 = 2 + 2 and 3 = 2 + 1.
    let (addr, server) = frame_server(2, |_| Reply::Ack(AckStatus::Ok)).await;
    let mut args = bench_args(&addr.to_string(), 7, 100_000, 2);
    args.extend(["--version", "2", "--crc-size", "4", "--wait-ack"].map(str::to_owned));
    let (run, report) = bench(&args).await;
    assert!(run.success, "{run:?}");
    let received = within(server).await.unwrap();
    let mut sizes: Vec<usize> = received.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [3, 4]);
    assert!(received.iter().flatten().all(|frame| frame.crc_ok));
    assert_eq!(report["frames"], 7);
    assert_eq!(report["wire_bytes"], 7 * (12 + 100_000 + 4));
}

#[tokio::test]
async fn wait_ack_reports_latency() {
    let (addr, server) = frame_server(2, |_| Reply::Ack(AckStatus::Ok)).await;
    let mut args = bench_args(&addr.to_string(), 500, 10, 2);
    args.push("--wait-ack".to_owned());
    let (run, report) = bench(&args).await;
    assert!(run.success, "{run:?}");
    assert_eq!(
        within(server)
            .await
            .unwrap()
            .iter()
            .map(Vec::len)
            .sum::<usize>(),
        500
    );
    assert_eq!(report["frames"], 500);
    let (p50, p99) = (report["ack_p50_us"].as_u64(), report["ack_p99_us"].as_u64());
    assert!(p50.is_some() && p99.is_some() && p50 <= p99, "{report}");
}

#[tokio::test]
async fn a_rejected_frame_fails_the_run() {
    let (addr, server) = frame_server(2, |seq| {
        Reply::Ack(if seq == 3 {
            AckStatus::HandlerFailed
        } else {
            AckStatus::Ok
        })
    })
    .await;
    let mut args = bench_args(&addr.to_string(), 20, 10, 2);
    args.push("--wait-ack".to_owned());
    let (run, report) = bench(&args).await;
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr.contains("frame 3 was rejected: handler failed"),
        "{run:?}"
    );
    assert!(run.stderr.contains("2 of 2 connections failed"), "{run:?}");
    assert_eq!(report["errors"], 2);
    assert_eq!(report["frames"], 0);
    within(server).await.unwrap();
}

#[tokio::test]
async fn human_summary_goes_to_stdout() {
    let (addr, server) = frame_server(1, |_| Reply::Ack(AckStatus::Ok)).await;
    let args = [
        "bench",
        "--addr",
        &addr.to_string(),
        "--frames",
        "50",
        "--size",
        "8",
        "--wait-ack",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = client(&args, None).await;
    assert!(run.success, "{run:?}");
    assert!(
        run.stdout
            .contains("50 frames of 8 bytes over 1 connections"),
        "{run:?}"
    );
    assert!(run.stdout.contains("frames/s"), "{run:?}");
    assert!(run.stdout.contains("ack latency: p50"), "{run:?}");
    within(server).await.unwrap();
}

#[tokio::test]
async fn window_1_sends_each_frame_only_after_the_previous_ack() {
    use futures_util::StreamExt;
    use proto::{Ack, FrameCodec, encode_ack};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = within(listener.accept()).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut frames = FramedRead::new(reader, FrameCodec::default());
        let mut seq = 0;
        while let Some(frame) = within(frames.next()).await {
            assert!(frame.unwrap().crc_ok);
            // Nothing of the next frame may be here before this one is acked.
            assert!(
                frames.read_buffer().is_empty(),
                "frame {seq}: the window was exceeded"
            );
            let mut ack = Vec::new();
            encode_ack(
                &Ack {
                    status: AckStatus::Ok,
                    seq,
                },
                &mut ack,
            );
            within(writer.write_all(&ack)).await.unwrap();
            seq += 1;
        }
        seq
    });
    let mut args = bench_args(&addr.to_string(), 200, 10, 1);
    args.extend(["--wait-ack", "--window", "1"].map(str::to_owned));
    let (run, report) = bench(&args).await;
    assert!(run.success, "{run:?}");
    assert_eq!(within(server).await.unwrap(), 200);
    assert_eq!(report["frames"], 200);
    assert!(report["ack_p50_us"].as_u64().is_some(), "{report}");
}

#[tokio::test]
async fn window_needs_wait_ack() {
    let run = client(
        &[
            "bench",
            "--addr",
            "127.0.0.1:9",
            "--frames",
            "1",
            "--size",
            "1",
            "--window",
            "4",
        ],
        None,
    )
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("--wait-ack"), "{run:?}");
}

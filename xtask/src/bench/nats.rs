//! The `nats` handler's throughput: at 64 B and 4 KiB payloads, a bare
//! `async-nats` JetStream publisher (this process, one connection, at most
//! [`WINDOW`] publishes awaiting their PubAck, each with a `Nats-Msg-Id`)
//! against the collector (`client bench --wait-ack --window WINDOW`, one
//! connection, through a crc-tcp listener with the nats handler), both into
//! the same stream (file storage, one replica) of one `nats-server` on
//! loopback. Target: the collector at 0.7x the bare publisher's rate or more.
//! A second baseline publishes with the headers the collector sets (`headers =
//! "compact"`, its default: two besides the `Nats-Msg-Id`), so the collector's own cost
//! shows apart from the message format. CPU: utime+stime of the publisher (this process),
//! of nats-server and of the collector per run. A third baseline publishes with those
//! headers through the core client (`publish_with_reply_and_headers` to a reply subject
//! under one wildcard subscription, PubAcks counted there): JetStream's publish without the
//! per-message inbox, oneshot, request map and ack timer of
//! `jetstream::Context::send_publish`, the way the collector publishes. The collector also
//! runs once with `headers = "split"` (nine headers) on a second listener, to show what
//! the headers cost.
//! Skipped with a note under `--quick` and when nats-server is missing.
//! With `--baseline-server`, that binary's collector is measured too, each
//! collector twice at each size in the order A B B A (the collector measured
//! first costs nats-server more CPU per message), the figures the mean of
//! its two runs (a change's before and after in one run).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;

use super::{
    Options, Plan, Results, Row, Target,
    frames::{Acks, client_bench},
    relay::{clock_ticks, cpu_seconds},
    within_budget,
};
use crate::{
    e2e::nats::{NatsServer, nats_server},
    harness::{Binaries, Server, ServerSpec, message},
};

const GROUP: &str = "nats";
/// Publishes awaiting their ack, for both sides.
const WINDOW: usize = 256;
/// Messages per run, by payload size.
const MESSAGES: [(u64, u64); 2] = [(64, 200_000), (4096, 50_000)];

const CONFIG: &str = r#"[server]
drain_timeout = "5s"

[[listener]]
name = "nats"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "nats", servers = ["nats://{NATS}"], subject = "bench.{listener}", stream = "BENCH", max_in_flight = 1024, create_stream = { replicas = 1, storage = "file", duplicate_window = "2m" } }
"#;

/// The collector under test also has the same listener with `headers = "split"` (a
/// baseline binary may not know the key).
const SPLIT: &str = r#"
[[listener]]
name = "nats-split"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "nats", servers = ["nats://{NATS}"], subject = "bench.{listener}", stream = "BENCH", max_in_flight = 1024, headers = "split" }
"#;

/// Runs the comparison; every failure becomes a row.
pub(crate) fn run(
    bins: &Binaries,
    dir: &Path,
    plan: &Plan,
    options: &Options,
    started: Instant,
    results: &mut Results,
) {
    if plan.quick {
        results.rows.push(
            Row::new(GROUP, "collector vs bare JetStream publisher", f64::NAN, "")
                .note("skipped under --quick (see the full run)"),
        );
        return;
    }
    let binary = match nats_server() {
        Ok(binary) => binary,
        Err(error) => {
            results.rows.push(
                Row::new(GROUP, "collector vs bare JetStream publisher", f64::NAN, "")
                    .note(format!("skipped: {error:#}")),
            );
            return;
        }
    };
    let baseline = options.baseline_server.as_deref();
    if let Err(error) = compare(bins, baseline, &binary, dir, plan, started, results) {
        results.failed(GROUP, "collector vs bare JetStream publisher", &error);
    }
}

fn compare(
    bins: &Binaries,
    baseline: Option<&Path>,
    binary: &Path,
    dir: &Path,
    plan: &Plan,
    started: Instant,
    results: &mut Results,
) -> anyhow::Result<()> {
    let store = dir.join("nats-store");
    std::fs::create_dir_all(&store)?;
    let nats = NatsServer::start(binary, testkit::free_loopback_port()?, &store)?;
    let config = CONFIG.replace("{NATS}", &nats.addr.to_string());
    let with_split = format!(
        "{config}{}",
        SPLIT.replace("{NATS}", &nats.addr.to_string())
    );
    let mut collectors = vec![("collector", bins.server.clone())];
    if let Some(baseline) = baseline {
        collectors.push(("baseline collector", baseline.to_path_buf()));
    }
    let mut servers = Vec::new();
    for (index, (name, server)) in collectors.into_iter().enumerate() {
        let listeners: &[&str] = if index == 0 {
            &["nats", "nats-split"]
        } else {
            &["nats"]
        };
        let collector_dir = dir.join(format!("nats-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&collector_dir)?;
        let collector = Server::start(
            &server,
            &collector_dir,
            &ServerSpec {
                config: if index == 0 { &with_split } else { &config },
                listeners,
                log_level: "warn,server=info",
                keep: |e| message(e).starts_with("nats"),
                log_name: "bench-nats-collector.log",
            },
        )
        .with_context(|| format!("the {name} ({})", server.display()))?;
        for listener in listeners {
            collector
                .events()
                .wait_for(0, Duration::from_secs(20), |e| {
                    message(e) == "nats: stream ready" && e["listener"].as_str() == Some(listener)
                })
                .with_context(|| format!("the {name}'s stream did not become ready"))?;
        }
        servers.push((name, collector));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ticks = clock_ticks();
    for (size, count) in MESSAGES {
        within_budget(plan, started)?;
        let label = if size >= 1024 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
        let mut bare = [0.0; 3];
        for (kind, rate) in [Bare::Plain, Bare::Headers, Bare::CoreHeaders]
            .into_iter()
            .zip(&mut bare)
        {
            runtime.block_on(purge(nats.addr))?;
            let (nats_cpu, own_cpu) = (
                cpu_seconds(nats.pid(), ticks)?,
                cpu_seconds(std::process::id(), ticks)?,
            );
            *rate = match kind {
                Bare::CoreHeaders => runtime.block_on(core_publisher(nats.addr, size, count))?,
                _ => runtime.block_on(bare_publisher(
                    nats.addr,
                    size,
                    count,
                    kind == Bare::Headers,
                ))?,
            };
            let nats_cpu = cpu_seconds(nats.pid(), ticks)? - nats_cpu;
            let own_cpu = cpu_seconds(std::process::id(), ticks)? - own_cpu;
            let metric = match kind {
                Bare::Plain => format!("bare publisher {label}"),
                Bare::Headers => format!("bare publisher {label}, the collector's headers"),
                Bare::CoreHeaders => format!(
                    "bare core-client publisher {label}, the collector's headers, no oneshot"
                ),
            };
            results.rows.push(Row::new(GROUP, metric, *rate, "msg/s").note(format!(
                "{count} messages, window {WINDOW}; publisher {:.1} us CPU/msg, nats-server {:.1} us CPU/msg",
                own_cpu * 1e6 / count as f64,
                nats_cpu * 1e6 / count as f64
            )));
        }
        let [bare, same_headers, _] = bare;
        // Each collector's runs, then one of the collector under test with `headers = "split"`.
        let mut runs: Vec<(String, Vec<CollectorRun>)> = servers
            .iter()
            .map(|(name, _)| (format!("{name} {label}"), Vec::new()))
            .collect();
        for index in run_order(servers.len()) {
            let (Some((_, collector)), Some((_, runs))) = (servers.get(index), runs.get_mut(index))
            else {
                continue;
            };
            let at = collector.addr("nats");
            runs.push(collector_run(
                bins, &runtime, &nats, collector, at, size, count, plan,
            )?);
        }
        if let Some((_, collector)) = servers.first() {
            let at = collector.addr("nats-split");
            let split = collector_run(bins, &runtime, &nats, collector, at, size, count, plan)?;
            runs.push((
                format!("collector {label}, headers = \"split\""),
                vec![split],
            ));
        }
        for (index, (metric, runs)) in runs.iter().enumerate() {
            let n = runs.len().max(1) as f64;
            let mean = |pick: fn(&CollectorRun) -> f64| runs.iter().map(pick).sum::<f64>() / n;
            let rate = mean(|r| r.0);
            let per_frame = |seconds: f64| seconds * 1e6 / count as f64;
            let joined = |pick: fn(&CollectorRun) -> &str| {
                runs.iter().map(pick).collect::<Vec<_>>().join("/")
            };
            let ratio = rate / bare;
            let mut row = Row::new(GROUP, metric.clone(), rate, "msg/s").note(format!(
                "{ratio:.2}x bare, {:.2}x bare with the compact headers; {} run(s) of {count} frames (mean), window {WINDOW}, ack p50 {} us p99 {} us; collector {:.1} us CPU/frame, nats-server {:.1} us CPU/msg",
                rate / same_headers,
                runs.len(),
                joined(|r| r.3.as_str()),
                joined(|r| r.4.as_str()),
                per_frame(mean(|r| r.1)),
                per_frame(mean(|r| r.2))
            ));
            // The target is the default format's; the split row shows what the headers cost.
            if size == 64 && index < servers.len() {
                row = row.target(Target::at_least(ratio, 0.7, ">= 0.70x bare"));
            }
            results.rows.push(row);
        }
    }
    for (_, mut collector) in servers {
        let _ = collector.stop(Duration::from_secs(15));
    }
    drop(nats);
    Ok(())
}

/// One collector run: frames/s, the collector's and nats-server's CPU seconds, ack p50 and
/// p99 (µs, as the client printed them).
type CollectorRun = (f64, f64, f64, String, String);

/// `client bench` against `collector`'s listener at `at` into an emptied stream.
#[allow(clippy::too_many_arguments, reason = "one run's whole setting")]
fn collector_run(
    bins: &Binaries,
    runtime: &tokio::runtime::Runtime,
    nats: &NatsServer,
    collector: &Server,
    at: SocketAddr,
    size: u64,
    count: u64,
    plan: &Plan,
) -> anyhow::Result<CollectorRun> {
    let ticks = clock_ticks();
    runtime.block_on(purge(nats.addr))?;
    let (nats_cpu, collector_cpu) = (
        cpu_seconds(nats.pid(), ticks)?,
        cpu_seconds(collector.pid(), ticks)?,
    );
    let report = client_bench(
        bins,
        at,
        2,
        size,
        count,
        Acks::Window(WINDOW as u32),
        plan.client_cap,
    )?;
    Ok((
        report["frames_per_sec"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds(collector.pid(), ticks)? - collector_cpu,
        cpu_seconds(nats.pid(), ticks)? - nats_cpu,
        report["ack_p50_us"].to_string(),
        report["ack_p99_us"].to_string(),
    ))
}

/// Empties the stream before a run: nats-server's CPU per message grew with the data stored
/// (at 4 KiB, 20 to 57 us over four runs in a row, whichever collector ran), which weighed
/// on whatever ran last.
async fn purge(addr: SocketAddr) -> anyhow::Result<()> {
    let client = async_nats::connect(format!("nats://{addr}")).await?;
    let work = async {
        jetstream::new(client.clone())
            .get_stream("BENCH")
            .await?
            .purge()
            .await?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("purging the stream took over 30 s")?
        .context("purging the stream")?;
    close(&client).await;
    Ok(())
}

/// Closes a client's connection now: the runtime here is current-thread and idle between
/// runs, so a dropped client's connection would stay open (and subscribed) until the next
/// `block_on`.
async fn close(client: &async_nats::Client) {
    let _ = tokio::time::timeout(Duration::from_secs(10), client.drain()).await;
}

/// The order of the collectors' runs at one size: one run alone, else A B B A, so the
/// position (the first run costs nats-server more) weighs on both alike.
fn run_order(collectors: usize) -> Vec<usize> {
    match collectors {
        0 => Vec::new(),
        1 => vec![0],
        n => (0..n).chain((0..n).rev()).collect(),
    }
}

/// The bare publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    /// JetStream publishes with a `Nats-Msg-Id` only.
    Plain,
    /// JetStream publishes with the collector's headers.
    Headers,
    /// The same through the core client, PubAcks read from one wildcard subscription.
    CoreHeaders,
}

/// What the collector adds (`headers = "compact"`, its default), with values of the same
/// length.
fn collector_headers(seq: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in collector_header_values(seq) {
        headers.insert(name, value.as_str());
    }
    headers
}

/// The collector's headers but `Nats-Msg-Id`, as names and values.
fn collector_header_values(seq: u64) -> [(&'static str, String); 2] {
    [
        (
            "Netkit-Frame",
            format!("v=2;crc=4;seq={seq};received=2026-12-01T13:34:35.968589123Z"),
        ),
        (
            "Netkit-Source",
            "client=127.0.0.1:54321;listener=nats;conn=0;stream=0123456789abcdef0123456789abcdef"
                .to_owned(),
        ),
    ]
}

/// [`bare_publisher`] with the collector's headers through the core client: each message
/// published with a reply subject under one wildcard subscription, at most [`WINDOW`]
/// awaiting their PubAck, each PubAck checked for an error; messages per second.
async fn core_publisher(addr: SocketAddr, size: u64, count: u64) -> anyhow::Result<f64> {
    use futures_util::StreamExt as _;
    let client = async_nats::connect(format!("nats://{addr}")).await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("_INBOX.bench-{run}");
    let mut acks = client.subscribe(format!("{prefix}.*")).await?;
    client.flush().await?;
    let payload = Bytes::from(vec![0x5a_u8; usize::try_from(size)?]);
    let started = Instant::now();
    let work = async {
        let mut in_flight = 0usize;
        let mut next_ack = async || -> anyhow::Result<()> {
            let ack = acks.next().await.context("the PubAck subscription ended")?;
            if ack.status.is_some_and(|status| !status.is_success())
                || ack.payload.windows(8).any(|w| w == b"\"error\"")
            {
                anyhow::bail!(
                    "a publish failed: {:?}",
                    String::from_utf8_lossy(&ack.payload)
                );
            }
            Ok(())
        };
        for seq in 0..count {
            if in_flight >= WINDOW {
                next_ack().await?;
                in_flight -= 1;
            }
            let mut headers = collector_headers(seq);
            headers.insert("Nats-Msg-Id", format!("core-{run}-{size}-{seq}").as_str());
            client
                .publish_with_reply_and_headers(
                    "bench.bare",
                    format!("{prefix}.{seq}"),
                    headers,
                    payload.clone(),
                )
                .await?;
            in_flight += 1;
        }
        while in_flight > 0 {
            next_ack().await?;
            in_flight -= 1;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .context("the core publisher took over 120 s")??;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    close(&client).await;
    Ok(rate)
}

/// Publishes `count` messages of `size` bytes with at most [`WINDOW`]
/// awaiting their ack; messages per second.
async fn bare_publisher(
    addr: SocketAddr,
    size: u64,
    count: u64,
    headers: bool,
) -> anyhow::Result<f64> {
    let client = async_nats::connect(format!("nats://{addr}")).await?;
    let js = jetstream::new(client.clone());
    let payload = Bytes::from(vec![0x5a_u8; usize::try_from(size)?]);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    let work = async {
        for seq in 0..count {
            if pending.len() >= WINDOW
                && let Some(ack) = pending.pop_front()
            {
                let ack: jetstream::context::PublishAckFuture = ack;
                ack.await?;
            }
            let mut message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("bare-{run}-{size}-{headers}-{seq}"));
            if headers {
                for (name, value) in collector_header_values(seq) {
                    message = message.header(name, value);
                }
            }
            pending.push_back(js.send_publish("bench.bare", message).await?);
        }
        while let Some(ack) = pending.pop_front() {
            ack.await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .context("the bare publisher took over 120 s")??;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    close(&client).await;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_collectors_run_a_b_b_a_and_one_runs_once() {
        assert_eq!(run_order(1), vec![0]);
        assert_eq!(run_order(2), vec![0, 1, 1, 0]);
        assert!(run_order(0).is_empty());
    }

    #[test]
    fn the_core_publisher_sends_the_collectors_headers_less_the_message_id() {
        let headers = collector_headers(42);
        assert_eq!(headers.len(), 2);
        let frame = headers.get("Netkit-Frame").map(|v| v.as_str().to_owned());
        assert!(frame.unwrap().starts_with("v=2;crc=4;seq=42;received="));
        assert!(headers.get("Netkit-Source").is_some());
        assert!(headers.get("Nats-Msg-Id").is_none());
    }
}

//! `client bench`: many frames of one size over several connections, timed.
//!
//! Each connection encodes its frames once: a batch of up to [`BATCH_LEN`]
//! bytes of identical frames, written again and again, then a prefix of it
//! for the remainder. The generator thus costs one `write` per batch.
//!
//! What is measured:
//! - **seconds**: from the moment every connection is open (connecting, and
//!   the proxy handshake, are not timed) until every connection is done.
//!   Without `--wait-ack` a connection is done when it has written its last
//!   frame, shut its write side down and read to EOF: the listener closes
//!   only after it consumed everything before our FIN, so EOF means every
//!   frame was processed. With `--wait-ack` it is done when its last ack
//!   arrived.
//! - **ack latency** (with `--wait-ack`): for each frame, the time from the
//!   start of the write of the batch that carries it to the decoding of its
//!   ack. It includes the kernel's buffering, the listener's work and, for
//!   the later frames of a batch, the time the batch itself takes to go out.

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use bytes::{Bytes, BytesMut};
use futures_util::future::try_join_all;
use indicatif::ProgressBar;
use proto::{HEADER_LEN, encode_frame};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::{Semaphore, mpsc},
    time::Instant,
};

use crate::{
    ack::{discarding_input, drain_to_eof, read_acks, with_ack_reader},
    cli::BenchArgs,
    connect::Dialer,
    deadline::within,
    histogram::Histogram,
    output,
    report::Report,
    resend::{self, Settings, Source, Summary},
};

/// The most bytes of frames encoded once and written per `write`.
const BATCH_LEN: usize = 256 * 1024;

/// Runs the benchmark and prints its report (human or JSON).
///
/// # Errors
///
/// When a connection cannot be opened, or after the report when any
/// connection failed (the first failure is returned).
pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    let plan = Arc::new(Plan::new(&args)?);
    let dialer = Dialer::new(&args.connect).await?;
    if args.resend {
        return run_resending(&args, plan, dialer).await;
    }
    let streams = try_join_all((0..args.connections).map(|index| {
        let dialer = &dialer;
        async move {
            // Connection i starts with listener i, so --servers spreads them.
            let start = usize::try_from(index).unwrap_or(0);
            let (_, stream) = dialer
                .connect_from(start)
                .await
                .with_context(|| format!("opening connection {index}"))?;
            Ok::<_, anyhow::Error>(stream)
        }
    }))
    .await?;

    let progress = output::progress_bar(args.frames, args.json);
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(0..)
        .map(|(stream, index)| {
            let frames = share(args.frames, args.connections, index);
            let (plan, progress) = (Arc::clone(&plan), progress.clone());
            tokio::spawn(run_connection(stream, frames, plan, progress))
        })
        .collect();
    let mut latency = Histogram::default();
    let mut frames = 0;
    let mut failures = Vec::new();
    for (task, index) in tasks.into_iter().zip(0u64..) {
        let outcome = task
            .await
            .map_err(|error| anyhow!("the task panicked: {error}"))
            .and_then(|outcome| outcome);
        match outcome {
            Ok(done) => {
                frames += done.frames;
                latency.merge(&done.latency);
            }
            Err(error) => failures.push(error.context(format!("connection {index}"))),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let report = plan.report(frames, seconds, &latency, failures.len() as u64);
    if args.json {
        output::print_json(&report)?;
    } else {
        output::print_human(&report, args.size);
    }
    first_failure(failures, args.connections).map(|()| ExitCode::SUCCESS)
}

/// The first of `failures`, saying how many there were; `Ok` when none.
fn first_failure(failures: Vec<anyhow::Error>, connections: u64) -> Result<()> {
    let failed = failures.len();
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first.context(format!(
            "{failed} of {connections} connections failed; the first"
        ))),
    }
}

/// `bench --resend`: each connection task is a stream of identical frames
/// that survives broken connections (see [`crate::resend`]). The clock
/// starts once the first connections are open, as without `--resend`; a
/// connection that cannot be opened then is retried by its stream.
async fn run_resending(args: &BenchArgs, plan: Arc<Plan>, dialer: Dialer) -> Result<ExitCode> {
    let settings = Settings {
        window: args.window.unwrap_or(resend::DEFAULT_WINDOW),
        deadline: Instant::now() + args.resend_deadline,
    };
    let dialer = Arc::new(dialer);
    let opened = futures_util::future::join_all((0..args.connections).map(|index| {
        let dialer = &dialer;
        async move {
            let start = usize::try_from(index).unwrap_or(0);
            dialer.connect_from(start).await.ok()
        }
    }))
    .await;
    let progress = output::progress_bar(args.frames, args.json);
    let started = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .zip(0..)
        .map(|(first, index)| {
            let frames = share(args.frames, args.connections, index);
            let source = Source::Repeat {
                frame: plan.frames(1),
                left: frames,
            };
            let (dialer, progress) = (Arc::clone(&dialer), progress.clone());
            let start = usize::try_from(index).unwrap_or(0);
            tokio::spawn(async move {
                resend::run_stream(&dialer, source, settings, first, start, &progress).await
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut failures = Vec::new();
    for (task, index) in tasks.into_iter().zip(0u64..) {
        let outcome = task
            .await
            .map_err(|error| anyhow!("the task panicked: {error}"))
            .and_then(|outcome| outcome);
        match outcome {
            Ok(stream) => streams.push(stream),
            Err(error) => failures.push(error.context(format!("connection {index}"))),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let mut latency = Histogram::default();
    for stream in &streams {
        latency.merge(&stream.latency);
    }
    let summary = Summary::new(&streams);
    let mut report = plan.report(
        summary.tally.acked_ok,
        seconds,
        &latency,
        failures.len() as u64,
    );
    report.resend = Some(summary);
    if args.json {
        output::print_json(&report)?;
    } else {
        output::print_human(&report, args.size);
    }
    first_failure(failures, args.connections)?;
    let given_up = report
        .resend
        .as_ref()
        .map_or(0, |summary| summary.tally.given_up);
    Ok(if given_up > 0 {
        ExitCode::from(resend::GAVE_UP_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

/// What every connection sends, encoded once.
#[derive(Debug)]
struct Plan {
    /// `frames_per_batch` identical frames.
    batch: Bytes,
    frame_len: usize,
    frames_per_batch: u64,
    payload_len: usize,
    wait_ack: bool,
    /// Frames in flight per connection, at most (`--window`).
    window: Option<u32>,
    timeout: Duration,
    connections: u64,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self> {
        let payload: Vec<u8> = (b'a'..=b'z').cycle().take(args.size).collect();
        let mut one = BytesMut::new();
        encode_frame(
            args.format.version,
            args.format.crc_size,
            &payload,
            &mut one,
        )
        .context("--size is too large")?;
        let frame_len = one.len();
        debug_assert_eq!(
            frame_len,
            HEADER_LEN + args.size + args.format.crc_size.len()
        );
        let per_batch = (BATCH_LEN / frame_len).max(1);
        let per_connection = args.frames.div_ceil(args.connections);
        let per_batch = per_batch.min(usize::try_from(per_connection).unwrap_or(usize::MAX));
        let per_batch = args
            .window
            .map_or(per_batch, |window| per_batch.min(window as usize));
        let mut batch = BytesMut::with_capacity(per_batch * frame_len);
        for _ in 0..per_batch {
            batch.extend_from_slice(&one);
        }
        Ok(Self {
            batch: batch.freeze(),
            frame_len,
            frames_per_batch: per_batch as u64,
            payload_len: args.size,
            wait_ack: args.wait_ack,
            window: args.window,
            timeout: args.connect.timeout,
            connections: args.connections,
        })
    }

    /// The batch's first `frames` frames (at most a whole batch).
    fn frames(&self, frames: u64) -> Bytes {
        let len = usize::try_from(frames)
            .unwrap_or(usize::MAX)
            .saturating_mul(self.frame_len)
            .min(self.batch.len());
        self.batch.slice(..len)
    }

    fn report(&self, frames: u64, seconds: f64, latency: &Histogram, errors: u64) -> Report {
        let payload_bytes = frames * self.payload_len as u64;
        let per_sec = |amount: f64| if seconds > 0.0 { amount / seconds } else { 0.0 };
        Report {
            frames,
            payload_bytes,
            wire_bytes: frames * self.frame_len as u64,
            connections: self.connections,
            seconds,
            frames_per_sec: per_sec(frames as f64),
            mib_per_sec: per_sec(payload_bytes as f64 / (1024.0 * 1024.0)),
            ack_p50_us: latency.quantile(0.50),
            ack_p99_us: latency.quantile(0.99),
            errors,
            resend: None,
        }
    }
}

/// Connection `index`'s share of `frames`: the remainder goes to the first ones.
fn share(frames: u64, connections: u64, index: u64) -> u64 {
    frames / connections + u64::from(index < frames % connections)
}

/// What one connection achieved.
#[derive(Debug)]
struct Done {
    frames: u64,
    latency: Histogram,
}

/// Sends `frames` frames on `stream` and waits for the acks or the close.
async fn run_connection(
    stream: TcpStream,
    frames: u64,
    plan: Arc<Plan>,
    progress: ProgressBar,
) -> Result<Done> {
    let timeout = plan.timeout;
    let (mut reader, mut writer) = stream.into_split();
    if !plan.wait_ack {
        let writing = write_batches(&mut writer, frames, &plan, &progress, None, None);
        discarding_input(&mut reader, writing).await?;
        drain_to_eof(&mut reader, timeout)
            .await
            .context("waiting for the server to close")?;
        return Ok(Done {
            frames,
            latency: Histogram::default(),
        });
    }

    // The writer sends the start time of each batch before writing it, so
    // the channel holds it before any ack of the batch can arrive. One slot
    // per batch: the writer never waits on the reader.
    let batches = frames.div_ceil(plan.frames_per_batch);
    let (starts_tx, mut starts) =
        mpsc::channel(usize::try_from(batches).unwrap_or(usize::MAX).max(1));
    let per_batch = plan.frames_per_batch;
    // With --window, the writer takes a permit per frame and each ack gives one back.
    let window = plan.window.map(|n| Arc::new(Semaphore::new(n as usize)));
    let returned = window.clone();
    let acks = tokio::spawn(async move {
        let mut latency = Histogram::default();
        let (mut batch_start, mut next_batch) = (None, 0);
        read_acks(reader, frames, timeout, |seq| {
            if let Some(window) = &returned {
                window.add_permits(1);
            }
            while next_batch <= seq / per_batch {
                batch_start = starts.try_recv().ok();
                next_batch += 1;
            }
            if let Some(start) = batch_start {
                let micros = Instant::now().duration_since(start).as_micros();
                latency.record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
        })
        .await
        .context("waiting for acks")?;
        Ok::<_, anyhow::Error>(latency)
    });
    let acks = async {
        acks.await
            .map_err(|error| anyhow!("the ack reader panicked: {error}"))?
    };
    let writing = write_batches(
        &mut writer,
        frames,
        &plan,
        &progress,
        Some(starts_tx),
        window.as_deref(),
    );
    let ((), latency) = with_ack_reader(writing, acks).await?;
    Ok(Done { frames, latency })
}

/// Writes `frames` frames in batches, then shuts the write side down.
async fn write_batches(
    io: &mut OwnedWriteHalf,
    frames: u64,
    plan: &Plan,
    progress: &ProgressBar,
    starts: Option<mpsc::Sender<Instant>>,
    window: Option<&Semaphore>,
) -> Result<()> {
    let mut left = frames;
    while left > 0 {
        let count = left.min(plan.frames_per_batch);
        if let Some(window) = window {
            // A batch never exceeds the window, so the permits always come.
            let permits = u32::try_from(count).unwrap_or(u32::MAX);
            tokio::time::timeout(plan.timeout, window.acquire_many(permits))
                .await
                .map_err(|_| anyhow!("no ack opened the window within {:?}", plan.timeout))?
                .context("the window closed")?
                .forget();
        }
        let batch = plan.frames(count);
        if let Some(starts) = &starts {
            // Cannot be full: the channel has a slot per batch.
            let _ = starts.try_send(Instant::now());
        }
        within(plan.timeout, io.write_all(&batch))
            .await
            .context("writing frames")?;
        progress.inc(count);
        left -= count;
    }
    within(plan.timeout, io.shutdown())
        .await
        .context("shutting the connection down for writing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_frames_evenly() {
        let shares: Vec<u64> = (0..4).map(|index| share(10, 4, index)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!(share(2, 3, 2), 0);
    }
}

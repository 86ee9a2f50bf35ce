//! `--resend`: a stream of frames that survives broken connections
//! (docs/PROTOCOL.md, "Sessions and resending").
//!
//! A stream has a random 16-byte id. Every connection it opens starts with a
//! session frame naming the id and `first_seq`, the number of the oldest
//! frame without an ok ack; then the frames from that one on are written
//! again, in their old order, and new frames follow. Frames are kept until
//! their ack is ok (or the frame is given up), and at most `window` frames
//! are kept at once, so memory stays bounded whatever the stream's length.
//!
//! What each ack status does to its frame:
//! - 0 ok: done; 1 crc mismatch: given up (the server will never take
//!   those bytes); 4 too large: given up, and the connection breaks (the
//!   server closes it);
//! - 5 handler failed: the connection breaks and the frame is resent on the
//!   next one (it keeps its number, so a store that did take it after all
//!   recognises the copy);
//! - 2 unsupported version: the server does not know session frames, so no
//!   resend could be recognised: the stream fails; 3 and 6 (the listener
//!   refuses the CRC size, or the header) would come back for every frame:
//!   the stream fails too.
//!
//! A connection breaks on EOF, a reset, a write or an ack that takes longer
//! than `--timeout`, or the statuses above. The stream then connects again,
//! to the next listener of `--servers` first, right away after a connection
//! that got an ok ack, else after a backoff that doubles from 50 ms to 2 s.
//! No connection is opened after the deadline (`--resend-deadline` from the
//! start): the frames not acked ok by then are given up.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use indicatif::ProgressBar;
use proto::{AckCodec, AckStatus, CodecError, Session, encode_frame, encode_session};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Notify,
    time::Instant,
};
use tokio_util::codec::FramedRead;

use crate::{cli::FormatArgs, connect::Dialer, deadline::within, histogram::Histogram};

/// Frames kept (sent and not yet acked ok) per stream when no `--window` is given.
pub(crate) const DEFAULT_WINDOW: u32 = 1024;

/// The exit status of a run that gave frames up.
pub(crate) const GAVE_UP_EXIT: u8 = 4;

/// Bytes of frames written per `write`, at most (a single larger frame goes alone).
const BATCH_LEN: usize = 256 * 1024;

/// The first wait before connecting again after a connection that made no progress.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a stream's frames come from, already encoded.
pub(crate) enum Source {
    /// These frames, in order.
    List(std::vec::IntoIter<Bytes>),
    /// The same frame, `left` more times.
    Repeat {
        /// The encoded frame.
        frame: Bytes,
        /// How many more.
        left: u64,
    },
    /// One frame per line of stdin (without "\n" or "\r\n").
    Lines {
        /// Stdin (a pipe in tests), buffered.
        input: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
        /// The frames' format.
        format: FormatArgs,
        /// The line being read.
        line: Vec<u8>,
        /// Lines read so far.
        lines: u64,
        /// Whether stdin has ended.
        done: bool,
    },
}

impl Source {
    /// One frame per line of stdin.
    pub(crate) fn lines(format: FormatArgs) -> Self {
        Self::lines_from(Box::new(tokio::io::stdin()), format)
    }

    /// One frame per line of `input`.
    fn lines_from(input: Box<dyn AsyncRead + Send + Unpin>, format: FormatArgs) -> Self {
        Self::Lines {
            input: BufReader::with_capacity(BATCH_LEN, input),
            format,
            line: Vec::new(),
            lines: 0,
            done: false,
        }
    }

    /// The next frame, or `None` at the end (and on every call after it).
    async fn next(&mut self) -> Result<Option<Bytes>> {
        match self {
            Self::List(frames) => Ok(frames.next()),
            Self::Repeat { frame, left } => Ok((*left > 0).then(|| {
                *left -= 1;
                frame.clone()
            })),
            Self::Lines {
                input,
                format,
                line,
                lines,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                // `line` is cleared only once its frame is made: a call
                // cancelled halfway (its connection broke) leaves the part
                // read in it, and the next call goes on from there.
                let read = input
                    .read_until(b'\n', line)
                    .await
                    .context("reading stdin")?;
                if read == 0 && line.is_empty() {
                    *done = true;
                    return Ok(None);
                }
                *lines += 1;
                let text = line.strip_suffix(b"\n").unwrap_or(line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                let mut frame = BytesMut::new();
                let encoded = encode_frame(format.version, format.crc_size, text, &mut frame)
                    .with_context(|| format!("encoding line {lines}"));
                line.clear();
                encoded?;
                Ok(Some(frame.freeze()))
            }
        }
    }

    /// Whether [`Source::next`] answers without waiting for input: stdin
    /// has a buffered line (or part of one). A batch is written as soon as
    /// this is false, so a slow producer gets each line sent at once.
    fn ready(&self) -> bool {
        match self {
            Self::List(_) | Self::Repeat { .. } => true,
            Self::Lines { input, done, .. } => *done || !input.buffer().is_empty(),
        }
    }

    /// Frames not taken yet, when known (stdin's are not).
    fn remaining(&self) -> u64 {
        match self {
            Self::List(frames) => frames.len() as u64,
            Self::Repeat { left, .. } => *left,
            Self::Lines { .. } => 0,
        }
    }
}

/// How a stream resends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Frames kept at most (sent and not acked ok).
    pub(crate) window: u32,
    /// No connection is opened after this.
    pub(crate) deadline: Instant,
}

/// Counts of a stream's frames (or, summed, of a run's).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Frames written at least once.
    pub(crate) sent: u64,
    /// Frames acked ok.
    pub(crate) acked_ok: u64,
    /// Frames written again on a new connection (once per time).
    pub(crate) resent: u64,
    /// Frames given up: crc mismatch or too large, or not acked ok by the deadline.
    pub(crate) given_up: u64,
    /// Connections opened after the first.
    pub(crate) reconnects: u64,
}

impl Tally {
    /// Adds `other`'s counts.
    pub(crate) fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.acked_ok += other.acked_ok;
        self.resent += other.resent;
        self.given_up += other.given_up;
        self.reconnects += other.reconnects;
    }
}

/// One stream's outcome, as `--json` shows it in `"streams"`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamSummary {
    /// The stream id, lowercase hex (as in the `Nats-Msg-Id` header).
    pub(crate) id: String,
    /// The stream's frames: acked ok or given up.
    pub(crate) frames: u64,
    /// Those acked ok.
    pub(crate) acked_ok: u64,
}

/// The whole outcome of a run with `--resend` (the `--json` object's fields).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// The counts, summed over the streams.
    #[serde(flatten)]
    pub(crate) tally: Tally,
    /// One entry per stream (per connection task).
    pub(crate) streams: Vec<StreamSummary>,
}

impl Summary {
    /// Sums `streams`.
    pub(crate) fn new(streams: &[Stream]) -> Self {
        let mut tally = Tally::default();
        for stream in streams {
            tally.add(&stream.tally);
        }
        Self {
            tally,
            streams: streams.iter().map(Stream::summary).collect(),
        }
    }

    /// The line people read: `sent N frames, K acked ok, R resent, G given up, C reconnects`.
    pub(crate) fn human(&self) -> String {
        let Tally {
            sent,
            acked_ok,
            resent,
            given_up,
            reconnects,
        } = self.tally;
        format!(
            "sent {sent} frames, {acked_ok} acked ok, {resent} resent, {given_up} given up, \
             {reconnects} reconnects"
        )
    }
}

/// What one stream did.
#[derive(Debug)]
pub(crate) struct Stream {
    /// Its id.
    pub(crate) id: [u8; 16],
    /// Its counts.
    pub(crate) tally: Tally,
    /// Ack latencies: from the start of the write that carried a frame
    /// (the last time it was written) to its ok ack, in µs.
    pub(crate) latency: Histogram,
}

impl Stream {
    fn summary(&self) -> StreamSummary {
        StreamSummary {
            id: hex(&self.id),
            frames: self.tally.acked_ok + self.tally.given_up,
            acked_ok: self.tally.acked_ok,
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// A fresh stream id: 16 bytes from the operating system's random source.
fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|error| anyhow!("no random stream id: {error}"))?;
    Ok(id)
}

/// Sends every frame of `source` as one stream, through as many
/// connections as it takes. The first connection is `first` when given
/// (`bench` opens its connections before its clock starts), else one
/// opened from listener `start`.
///
/// # Errors
///
/// When the stream cannot go on at all: the server does not know session
/// frames, refuses the frames' format, or answers out of order; or stdin
/// cannot be read. Frames given up are not an error: the tally counts them.
pub(crate) async fn run_stream(
    dialer: &Dialer,
    mut source: Source,
    settings: Settings,
    first: Option<(usize, TcpStream)>,
    start: usize,
    progress: &ProgressBar,
) -> Result<Stream> {
    let id = random_id()?;
    let shared = Shared {
        window: Mutex::new(Window {
            pending: VecDeque::new(),
            base: 0,
            exhausted: false,
            writer_failed: false,
            tally: Tally::default(),
            latency: Histogram::default(),
        }),
        room: Notify::new(),
        frames: Notify::new(),
        limit: usize::try_from(settings.window)
            .unwrap_or(usize::MAX)
            .max(1),
        timeout: dialer.timeout(),
    };
    let (mut first, mut next_server) = (first, start);
    let (mut connections, mut backoff) = (0u64, MIN_BACKOFF);
    loop {
        let opened = match first.take() {
            Some(open) => Ok(open),
            None => dialer.connect_from(next_server).await,
        };
        let (used, stream) = match opened {
            Ok(open) => open,
            Err(error) => {
                let now = Instant::now();
                if now + backoff >= settings.deadline {
                    eprintln!("giving up: no connection before the resend deadline: {error:#}");
                    break;
                }
                eprintln!(
                    "cannot connect: {error:#}; trying again in {}",
                    humantime::format_duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if connections > 0 {
            shared.lock().tally.reconnects += 1;
        }
        connections += 1;
        let acked_before = shared.lock().tally.acked_ok;
        let name = dialer.name(used);
        let end = run_connection(stream, &shared, &mut source, id, progress)
            .await
            .with_context(|| format!("stream {} on {name}", hex(&id)))?;
        let Some(reason) = end else {
            break;
        };
        let (waiting, progressed) = {
            let window = shared.lock();
            (window.pending.len(), window.tally.acked_ok > acked_before)
        };
        next_server = used + 1;
        if Instant::now() >= settings.deadline {
            eprintln!(
                "giving up: the connection to {name} broke ({reason}) after the resend deadline"
            );
            break;
        }
        eprintln!(
            "the connection to {name} broke ({reason}); {waiting} frames without an ok ack, connecting to {}",
            dialer.name(next_server)
        );
        if progressed {
            backoff = MIN_BACKOFF;
        } else {
            let pause = backoff.min(settings.deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    let mut window = shared.lock();
    let dropped = window.pending.len() as u64 + source.remaining();
    window.pending.clear();
    window.tally.given_up += dropped;
    Ok(Stream {
        id,
        tally: window.tally,
        latency: std::mem::take(&mut window.latency),
    })
}

/// What a stream's connections share: the frames kept, and two wake-ups.
#[derive(Debug)]
struct Shared {
    window: Mutex<Window>,
    /// The reader took a frame out of the window: the writer may add one.
    room: Notify,
    /// The writer put frames in the window, or ran out of them.
    frames: Notify,
    /// Frames kept at most.
    limit: usize,
    /// The deadline of each write and each ack.
    timeout: Duration,
}

impl Shared {
    /// The window; a panic elsewhere cannot leave it half-updated in a way
    /// that matters more than the panic itself, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The frames of a stream that have no ok ack yet.
#[derive(Debug)]
struct Window {
    /// Frames `base`, `base + 1`, ... in order.
    pending: VecDeque<Pending>,
    /// The number of `pending`'s first frame.
    base: u64,
    /// Whether the source has no more frames.
    exhausted: bool,
    /// Whether this connection's writer failed: the reader reads only the
    /// acks of frames already written.
    writer_failed: bool,
    tally: Tally,
    latency: Histogram,
}

/// A frame kept for resending.
#[derive(Debug)]
struct Pending {
    frame: Bytes,
    /// When the write that carried it last started.
    written_at: Instant,
}

/// One connection of a stream: `Ok(None)` when every frame is done,
/// `Ok(Some(reason))` when it broke.
async fn run_connection(
    stream: TcpStream,
    shared: &Shared,
    source: &mut Source,
    id: [u8; 16],
    progress: &ProgressBar,
) -> Result<Option<String>> {
    shared.lock().writer_failed = false;
    let (reader, writer) = stream.into_split();
    let writing = write_side(writer, shared, source, id, progress);
    let reading = read_side(reader, shared);
    let (mut writing, mut reading) = (std::pin::pin!(writing), std::pin::pin!(reading));
    let broken = tokio::select! {
        biased;
        end = &mut reading => return end,
        written = &mut writing => match written? {
            None => return reading.await,
            Some(broken) => broken,
        },
    };
    // A write fails when the server has closed, often with a reset because
    // our frames were still arriving: the acks it sent before (an ok for
    // many frames, or the status 2 of a server without session frames) are
    // still ours to read, and reading them saves resends and tells the
    // client what happened. The reader stops at the reset or EOF after them,
    // or when nothing more is pending.
    {
        let mut window = shared.lock();
        window.writer_failed = true;
    }
    shared.frames.notify_one();
    match reading.await? {
        Some(read) if read != WRITER_FAILED => Ok(Some(format!("{broken}; then {read}"))),
        _ => Ok(Some(broken)),
    }
}

/// The reader's reason when it stops because the writer failed.
const WRITER_FAILED: &str = "the writer failed";

/// Writes the session frame, the frames kept (resent), then new frames as
/// the window lets them in. `Ok(None)` when the source is exhausted and
/// written, `Ok(Some(reason))` when a write failed.
async fn write_side(
    mut io: OwnedWriteHalf,
    shared: &Shared,
    source: &mut Source,
    id: [u8; 16],
    progress: &ProgressBar,
) -> Result<Option<String>> {
    let mut batch = BytesMut::with_capacity(BATCH_LEN);
    let kept: Vec<Bytes> = {
        let mut window = shared.lock();
        encode_session(
            &Session {
                stream_id: id,
                first_seq: window.base,
            },
            &mut batch,
        );
        let now = Instant::now();
        window.tally.resent += window.pending.len() as u64;
        window
            .pending
            .iter_mut()
            .map(|pending| {
                pending.written_at = now;
                pending.frame.clone()
            })
            .collect()
    };
    for frame in kept {
        batch.extend_from_slice(&frame);
        if batch.len() >= BATCH_LEN
            && let Some(broken) = write_batch(&mut io, &mut batch, shared.timeout).await
        {
            return Ok(Some(broken));
        }
    }
    if let Some(broken) = write_batch(&mut io, &mut batch, shared.timeout).await {
        return Ok(Some(broken));
    }
    loop {
        let room = loop {
            let room = shared.limit.saturating_sub(shared.lock().pending.len());
            if room > 0 {
                break room;
            }
            shared.room.notified().await;
        };
        let mut taken = 0;
        let mut exhausted = false;
        while taken < room && batch.len() < BATCH_LEN && (taken == 0 || source.ready()) {
            let Some(frame) = source.next().await? else {
                exhausted = true;
                break;
            };
            batch.extend_from_slice(&frame);
            let mut window = shared.lock();
            window.pending.push_back(Pending {
                frame,
                written_at: Instant::now(),
            });
            window.tally.sent += 1;
            taken += 1;
        }
        if taken > 0 {
            shared.frames.notify_one();
            progress.inc(taken as u64);
            if let Some(broken) = write_batch(&mut io, &mut batch, shared.timeout).await {
                return Ok(Some(broken));
            }
        }
        if exhausted {
            shared.lock().exhausted = true;
            shared.frames.notify_one();
            // The server finishes the frames before our FIN; a failed
            // shutdown is a broken connection like any failed write.
            return Ok(within(shared.timeout, io.shutdown())
                .await
                .err()
                .map(|error| format!("shutting the connection down for writing: {error}")));
        }
    }
}

/// Writes and empties `batch`; `Some(reason)` when the write failed.
async fn write_batch(
    io: &mut OwnedWriteHalf,
    batch: &mut BytesMut,
    timeout: Duration,
) -> Option<String> {
    if batch.is_empty() {
        return None;
    }
    let written = within(timeout, io.write_all(batch)).await;
    batch.clear();
    written
        .err()
        .map(|error| format!("writing frames: {error}"))
}

/// Reads the acks and settles the frames they answer. `Ok(None)` once the
/// source is exhausted and every frame settled, `Ok(Some(reason))` when the
/// connection broke.
async fn read_side(io: OwnedReadHalf, shared: &Shared) -> Result<Option<String>> {
    let mut acks = FramedRead::new(io, AckCodec);
    loop {
        let (done, waiting) = {
            let window = shared.lock();
            (
                window.exhausted && window.pending.is_empty(),
                !window.pending.is_empty(),
            )
        };
        if done {
            return Ok(None);
        }
        if !waiting {
            if shared.lock().writer_failed {
                return Ok(Some(WRITER_FAILED.to_owned()));
            }
            shared.frames.notified().await;
            continue;
        }
        let timeout = shared.timeout;
        let Ok(next) = within(timeout, async { Ok(acks.next().await) }).await else {
            return Ok(Some(format!(
                "no ack within {}",
                humantime::format_duration(timeout)
            )));
        };
        let ack = match next {
            None => return Ok(Some("the server closed the connection".to_owned())),
            Some(Err(CodecError::Io(error))) => return Ok(Some(format!("reading acks: {error}"))),
            Some(Err(error)) => return Ok(Some(format!("an ack that cannot be read: {error}"))),
            Some(Ok(ack)) => ack,
        };
        if ack.status == AckStatus::UnsupportedVersion {
            bail!(
                "the server answered the session frame with status 2 (unsupported version): \
                 it predates session frames, so it cannot recognise resent frames; \
                 run without --resend, or upgrade the server"
            );
        }
        let mut window = shared.lock();
        let seq = window.base;
        if ack.seq != seq || window.pending.is_empty() {
            bail!(
                "expected the ack of frame {seq}, got one for frame {}",
                ack.seq
            );
        }
        match ack.status {
            AckStatus::Ok => {
                if let Some(pending) = window.pending.pop_front() {
                    let micros = Instant::now()
                        .duration_since(pending.written_at)
                        .as_micros();
                    window
                        .latency
                        .record(u64::try_from(micros).unwrap_or(u64::MAX));
                }
                window.base += 1;
                window.tally.acked_ok += 1;
            }
            AckStatus::CrcMismatch | AckStatus::TooLarge => {
                window.pending.pop_front();
                window.base += 1;
                window.tally.given_up += 1;
                eprintln!("frame {seq} given up: the server answered {}", ack.status);
                if ack.status.closes() {
                    drop(window);
                    shared.room.notify_one();
                    return Ok(Some(format!("frame {seq}: {}", ack.status)));
                }
            }
            AckStatus::HandlerFailed => {
                return Ok(Some(format!("frame {seq}: handler failed, to be resent")));
            }
            other => bail!(
                "the server answered frame {seq} with status {}: {other}",
                u8::from(other)
            ),
        }
        drop(window);
        shared.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn stream_ids_are_random() {
        assert_ne!(random_id().unwrap(), random_id().unwrap());
    }

    #[tokio::test]
    async fn sources_end_and_stay_ended() {
        let frame = Bytes::from_static(b"f");
        let mut repeat = Source::Repeat {
            frame: frame.clone(),
            left: 2,
        };
        assert_eq!(repeat.remaining(), 2);
        assert_eq!(repeat.next().await.unwrap(), Some(frame.clone()));
        assert_eq!(repeat.next().await.unwrap(), Some(frame));
        assert_eq!(repeat.next().await.unwrap(), None);
        assert_eq!(repeat.next().await.unwrap(), None);
        assert_eq!(repeat.remaining(), 0);
        let mut list = Source::List(vec![Bytes::from_static(b"a")].into_iter());
        assert_eq!(list.remaining(), 1);
        assert!(list.next().await.unwrap().is_some());
        assert_eq!(list.next().await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_read_halfway_survives_a_cancelled_read() {
        let (mut pipe, input) = tokio::io::duplex(64);
        let format = FormatArgs {
            version: proto::Version::V2,
            crc_size: proto::CrcSize::Crc32,
        };
        let mut lines = Source::lines_from(Box::new(input), format);
        pipe.write_all(b"tw").await.unwrap();
        // The connection breaks while the writer waits for the rest of the line.
        let cancelled = tokio::time::timeout(Duration::from_secs(1), lines.next()).await;
        assert!(cancelled.is_err(), "the line is not complete yet");
        pipe.write_all(b"o\n").await.unwrap();
        drop(pipe);
        let mut two = BytesMut::new();
        encode_frame(format.version, format.crc_size, b"two", &mut two).unwrap();
        assert_eq!(lines.next().await.unwrap(), Some(two.freeze()));
        assert_eq!(lines.next().await.unwrap(), None);
    }

    #[test]
    fn summaries_add_up_the_streams() {
        let stream = |id: u8, acked_ok, given_up| Stream {
            id: [id; 16],
            tally: Tally {
                sent: acked_ok + given_up,
                acked_ok,
                resent: 1,
                given_up,
                reconnects: 2,
            },
            latency: Histogram::default(),
        };
        let summary = Summary::new(&[stream(1, 5, 0), stream(2, 3, 2)]);
        assert_eq!(
            summary.tally,
            Tally {
                sent: 10,
                acked_ok: 8,
                resent: 2,
                given_up: 2,
                reconnects: 4
            }
        );
        assert_eq!(
            summary.human(),
            "sent 10 frames, 8 acked ok, 2 resent, 2 given up, 4 reconnects"
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["acked_ok"], 8);
        assert_eq!(json["streams"][1]["id"], "02".repeat(16));
        assert_eq!(json["streams"][1]["frames"], 5);
        assert_eq!(json["streams"][1]["acked_ok"], 3);
    }
}

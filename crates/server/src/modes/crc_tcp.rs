//! `crc-tcp`: receives frames (docs/PROTOCOL.md), verifies each CRC, hands the
//! accepted ones to a handler and, when `ack = true`, answers every frame.
//!
//! Each connection reads into one buffer and takes every complete frame in
//! it as a batch: the handler sees the batch at once (a file sink writes and
//! syncs it with one call), then the acks of the whole batch go out in one
//! write, in order. A header that can never be valid gets its NACK and the
//! connection closes; a CRC mismatch gets NACK 1 and the connection goes on.
//! The buffer starts at 64 KiB; room for larger frames comes from a budget
//! shared by the listener's connections (`buffer`), and goes back to it once
//! the frame is taken.

mod buffer;

use std::{
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use proto::{
    Ack, AckStatus, Decoded, FrameRef, HEADER_LEN, Limits, SESSION_FRAME_LEN, decode_frame,
    decode_session, encode_ack,
    session::{SessionError, starts_session},
};
use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};
use tokio_util::sync::CancellationToken;
use tracing::{Level, debug, event, warn};

use self::buffer::{BASE_LEN, Budget, MAX_BUDGET, OverBudget, ReadBuffer};
use ipnet::IpNet;

use crate::{
    access_log::{self, AccessLog},
    bounds::{MAX_CONNECTIONS, MAX_DURATION, MIN_TIMEOUT, check_count, check_duration},
    mode::Common,
    proxy_protocol::{ProxyProtocol, ProxySettings},
    sinks::{
        file::{FileSink, SyncPolicy},
        nats::{self, ConnHeaders, NatsConfig, NatsSink},
    },
    stats::{FRAME_STATUSES, ListenerStats},
};

/// The `[[listener]]` keys of `mode = "crc-tcp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrcTcpConfig {
    /// Name in logs (default `crc-tcp[INDEX]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Answer every frame with an ack (docs/PROTOCOL.md, "Acknowledgements").
    #[serde(default = "yes")]
    pub ack: bool,
    /// What happens to accepted frames.
    #[serde(default)]
    pub handler: HandlerConfig,
    /// Largest `body_size` accepted, in bytes (default 16 MiB).
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: u32,
    /// Accept frames without a checksum (`crc_size = 0`).
    #[serde(default)]
    pub allow_no_crc: bool,
    /// Connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bytes all connections together may buffer beyond their 64 KiB base
    /// buffers, for frames larger than that (default: 256 MiB, or the
    /// largest frame if that is larger).
    #[serde(default)]
    pub max_buffered_bytes: Option<usize>,
    /// Connections at once from one client IP address (default: no limit).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Close a connection that sends nothing between frames for this long.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Close a connection that sends nothing at all within this of its accept.
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Close a connection whose frame has started but not finished within this.
    #[serde(default = "default_frame_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Close a connection that does not take our acks or echoes within this.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Set `SO_REUSEPORT`, so several processes can share the port.
    #[serde(default)]
    pub reuse_port: bool,
    /// Expect a PROXY protocol header before each connection's first byte.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// The balancers that may send it; required when `proxy_protocol` is on.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// The whole header must arrive within this of the accept.
    #[serde(
        default = "crate::proxy_protocol::default_timeout",
        with = "humantime_serde"
    )]
    pub proxy_protocol_timeout: Duration,
    /// A JSON line per finished connection is appended to this file.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
}

/// The `handler` table of a `crc-tcp` listener, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HandlerConfig {
    /// A tracing event per frame with peer, seq, version, size and a preview.
    Log {
        /// The event's level: `error`, `warn`, `info`, `debug` or `trace`.
        #[serde(default = "default_log_level")]
        level: LogLevel,
        /// Payload bytes shown, escaped.
        #[serde(default = "default_preview_len")]
        preview_len: usize,
    },
    /// Sends every accepted frame back, as received.
    Echo,
    /// Appends every accepted frame to a file before acking it.
    File {
        /// The file (created if missing, appended to otherwise).
        path: PathBuf,
        /// When to sync: `always` (before the ack), `interval` or `never`.
        #[serde(default)]
        sync: SyncPolicy,
        /// The period of `sync = "interval"`.
        #[serde(default = "default_sync_interval", with = "humantime_serde")]
        sync_interval: Duration,
    },
    /// Verifies and acks, nothing else (for load tests).
    Discard,
    /// Publishes every accepted frame to NATS JetStream; acks ok once stored.
    Nats(Box<NatsConfig>),
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self::Log {
            level: default_log_level(),
            preview_len: default_preview_len(),
        }
    }
}

/// A tracing level, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs, reason = "the names are the levels")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn yes() -> bool {
    true
}
fn default_max_frame_size() -> u32 {
    proto::DEFAULT_MAX_BODY_SIZE
}
fn default_max_connections() -> usize {
    1024
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_frame_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_preview_len() -> usize {
    32
}
fn default_sync_interval() -> Duration {
    Duration::from_secs(1)
}

/// The smallest `max_frame_size` that admits a one-byte payload with a CRC-32.
const MIN_FRAME_SIZE: u32 = 5;

/// The largest `max_frame_size`: 1 GiB, so one connection's buffer stays below it.
const MAX_FRAME_SIZE: u32 = 1 << 30;

/// The largest `preview_len` of the log handler, in bytes of payload.
const MAX_PREVIEW_LEN: usize = 4096;

/// The default of `max_buffered_bytes` when the largest frame fits in it.
const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;

/// The buffer a frame of `max_frame_size` needs beyond the base buffer.
fn largest_frame_room(max_frame_size: u32) -> usize {
    (HEADER_LEN + max_frame_size as usize).saturating_sub(BASE_LEN)
}

impl CrcTcpConfig {
    /// Checks every key against its documented bounds (README, "Bounds").
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        check_count(
            "max_frame_size",
            self.max_frame_size.into(),
            MIN_FRAME_SIZE.into(),
            MAX_FRAME_SIZE.into(),
            " bytes",
        )?;
        check_count(
            "max_connections",
            self.max_connections as u64,
            1,
            MAX_CONNECTIONS as u64,
            "",
        )?;
        // The budget must hold one largest frame, or such a frame could never be read.
        check_count(
            "max_buffered_bytes",
            self.max_buffered_bytes() as u64,
            largest_frame_room(self.max_frame_size) as u64,
            MAX_BUDGET as u64,
            " bytes (one largest frame beyond the 64 KiB base buffer: max_frame_size + 12 - 65536)",
        )?;
        for (key, value) in [
            ("idle_timeout", self.idle_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("frame_timeout", self.frame_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            check_duration(key, value, MIN_TIMEOUT, MAX_DURATION)?;
        }
        match &self.handler {
            HandlerConfig::Log { preview_len, .. } => check_count(
                "handler.preview_len",
                *preview_len as u64,
                0,
                MAX_PREVIEW_LEN as u64,
                " bytes",
            )?,
            // Checked whatever `sync` says: the sink's timer runs under every policy.
            HandlerConfig::File { sync_interval, .. } => check_duration(
                "handler.sync_interval",
                *sync_interval,
                MIN_TIMEOUT,
                MAX_DURATION,
            )?,
            HandlerConfig::Nats(nats) => {
                nats.validate(self.name.as_deref().unwrap_or("crc-tcp"))?
            }
            HandlerConfig::Echo | HandlerConfig::Discard => {}
        }
        Ok(())
    }

    pub(crate) fn common(&self, name: String, stats: Arc<ListenerStats>) -> Common {
        Common {
            stats,
            name,
            bind: self.bind,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            reuse_port: self.reuse_port,
            proxy_protocol: ProxySettings::new(
                self.proxy_protocol,
                &self.proxy_protocol_from,
                self.proxy_protocol_timeout,
            ),
            access_log: self.access_log.clone(),
            shared_runtime: matches!(self.handler, HandlerConfig::Nats(_)),
        }
    }

    /// `max_buffered_bytes`, or its default.
    fn max_buffered_bytes(&self) -> usize {
        self.max_buffered_bytes.unwrap_or_else(|| {
            DEFAULT_MAX_BUFFERED_BYTES.max(largest_frame_room(self.max_frame_size))
        })
    }

    pub(crate) fn sink_path(&self) -> Option<&Path> {
        match &self.handler {
            HandlerConfig::File { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// The file sinks running, which a listener (re)started by a reload shares instead of
/// opening its file again.
pub(crate) type Sinks = [Arc<FileSink>];

/// A running `crc-tcp` listener, shared by its connections.
#[derive(Debug)]
pub struct CrcTcp {
    limits: Limits,
    ack: bool,
    handler: Handler,
    idle_timeout: Duration,
    first_byte_timeout: Duration,
    frame_timeout: Duration,
    write_timeout: Duration,
    budget: Arc<Budget>,
    stats: Arc<ListenerStats>,
    access_log: Option<access_log::Sink>,
    streams: StreamIds,
}

#[derive(Debug)]
enum Handler {
    Log { level: Level, preview_len: usize },
    Echo,
    File(Arc<FileSink>),
    Discard,
    Nats(Arc<NatsSink>),
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("no frame within the idle timeout of {0:?}")]
    Idle(Duration),
    #[error("nothing received within the first-byte timeout of {0:?}")]
    FirstByte(Duration),
    #[error("a frame started but did not finish within {0:?}")]
    FrameTimeout(Duration),
    #[error("the peer did not take our acks within {0:?}")]
    WriteTimeout(Duration),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CrcTcp {
    /// Builds the listener's runtime; opens the file sink or starts the NATS
    /// client, if any.
    ///
    /// # Errors
    ///
    /// When the sink's file cannot be opened, or a file the NATS client needs read.
    /// A file sink already running for the same file (in `sinks`) is shared, not opened a
    /// second time (its exclusive lock would refuse that): it keeps the `sync` and
    /// `sync_interval` it was opened with, and says so when they differ.
    pub(crate) async fn new(
        config: &CrcTcpConfig,
        name: &str,
        stats: Arc<ListenerStats>,
        sinks: &Sinks,
        access_log: Option<access_log::Sink>,
    ) -> anyhow::Result<Self> {
        let handler = match &config.handler {
            HandlerConfig::Log { level, preview_len } => Handler::Log {
                level: match level {
                    LogLevel::Error => Level::ERROR,
                    LogLevel::Warn => Level::WARN,
                    LogLevel::Info => Level::INFO,
                    LogLevel::Debug => Level::DEBUG,
                    LogLevel::Trace => Level::TRACE,
                },
                preview_len: *preview_len,
            },
            HandlerConfig::Echo => Handler::Echo,
            HandlerConfig::File {
                path,
                sync,
                sync_interval,
            } => match sinks.iter().find(|sink| sink.path() == path.as_path()) {
                Some(running) => {
                    if running.policy() != *sync || running.sync_interval() != *sync_interval {
                        warn!(path = %path.display(), sync = ?running.policy(),
                            sync_interval = ?running.sync_interval(),
                            "the file sink keeps running with the sync settings it was opened \
                             with; a change of handler.sync or handler.sync_interval applies at \
                             the next start");
                    }
                    Handler::File(Arc::clone(running))
                }
                None => Handler::File(Arc::new(FileSink::open_timed(
                    path,
                    *sync,
                    *sync_interval,
                    Arc::clone(&stats.sink_sync),
                )?)),
            },
            HandlerConfig::Discard => Handler::Discard,
            HandlerConfig::Nats(nats) => Handler::Nats(Arc::new(
                NatsSink::start(nats, name, Arc::clone(&stats)).await?,
            )),
        };
        Ok(Self {
            limits: Limits {
                max_body_size: config.max_frame_size,
                allow_no_crc: config.allow_no_crc,
            },
            ack: config.ack,
            handler,
            idle_timeout: config.idle_timeout,
            first_byte_timeout: config.first_byte_timeout,
            frame_timeout: config.frame_timeout,
            write_timeout: config.write_timeout,
            budget: Arc::new(Budget::new(config.max_buffered_bytes())),
            stats,
            access_log,
            streams: StreamIds::new(),
        })
    }

    /// Serves one connection until the peer closes, a limit or a bad header
    /// ends it, or shutdown (after the frames already received).
    pub(crate) async fn handle(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let _ = stream.set_nodelay(true);
        let (number, stream_id) = self.streams.next();
        let mut conn = Conn {
            buf: ReadBuffer::new(Arc::clone(&self.budget)),
            out: BytesMut::new(),
            seq: 0,
            frames: 0,
            frames_ok: 0,
            bytes_in: 0,
            bytes_out: 0,
            stream_id,
            started: false,
            peer,
            number,
            inflight: nats::Acks::default(),
            headers: None,
            verdicts: Vec::new(),
            published: Vec::new(),
        };
        let served = self.serve(&mut stream, &mut conn, &stop).await;
        if let Some(log) = &self.access_log {
            log.write(&access_log::CrcTcpEntry {
                time: access_log::now(),
                listener: &log.listener,
                mode: "crc-tcp",
                client: peer.to_string(),
                frames: conn.seq,
                frames_ok: conn.frames_ok,
                bytes_in: conn.bytes_in,
                bytes_out: conn.bytes_out,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                end: match &served {
                    Ok(reason) => (*reason).to_owned(),
                    Err(error) => error.to_string(),
                },
            });
        }
        match served {
            Ok(reason) => debug!(
                frames = conn.frames,
                stream = %Hex(&conn.stream_id),
                frames_ok = conn.frames_ok,
                reason,
                "connection closed"
            ),
            Err(ConnError::Io(error)) => {
                debug!(frames = conn.frames, %error, "connection ended by an i/o error")
            }
            // Port scanners and connect-only health checks do this all day:
            // not worth a warning each.
            Err(error @ ConnError::FirstByte(_)) => debug!(%error, "connection closed"),
            Err(error) => warn!(frames = conn.frames, %error, "connection closed"),
        }
    }

    /// The access log, if the listener has one.
    pub(crate) fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access_log.as_ref().map(|sink| Arc::clone(&sink.log))
    }

    /// The file sink, if the handler is one.
    pub(crate) fn sink(&self) -> Option<Arc<FileSink>> {
        match &self.handler {
            Handler::File(sink) => Some(Arc::clone(sink)),
            _ => None,
        }
    }

    /// [`Self::serve_frames`], then (`nats`) the acks of the frames still in
    /// flight, in order, each within `publish_timeout`: a connection that ends
    /// for any reason (a bad header, the peer's close, shutdown, a timeout)
    /// still answers what it took.
    async fn serve(
        &self,
        stream: &mut TcpStream,
        conn: &mut Conn,
        stop: &CancellationToken,
    ) -> Result<&'static str, ConnError> {
        let served = self.serve_frames(stream, conn, stop).await;
        if !conn.inflight.is_empty() {
            conn.out.clear();
            while let Some(result) = conn.inflight.next().await {
                self.settle(conn, result);
            }
            if !conn.out.is_empty()
                && !matches!(served, Err(ConnError::Io(_) | ConnError::WriteTimeout(_)))
            {
                ListenerStats::add(&self.stats.bytes_out, conn.out.len() as u64);
                timeout(self.write_timeout, stream.write_all(&conn.out))
                    .await
                    .map_err(|_| ConnError::WriteTimeout(self.write_timeout))??;
            }
        }
        served
    }

    async fn serve_frames(
        &self,
        stream: &mut TcpStream,
        conn: &mut Conn,
        stop: &CancellationToken,
    ) -> Result<&'static str, ConnError> {
        let max_in_flight = match &self.handler {
            Handler::Nats(sink) => sink.max_in_flight(),
            _ => usize::MAX,
        };
        // When the frame at the front of the buffer started: the read that
        // brought its first byte, or the one that completed the frame before
        // it. The frame timeout times one frame, not a stream of them.
        let mut frame_started: Option<Instant> = None;
        let accepted = Instant::now();
        let mut last_read = accepted;
        let mut silent = true;
        loop {
            let (frames_before, started_before) = (conn.frames, conn.started);
            let fatal = self.process(conn).await;
            // A data frame, or the session frame, was taken off the buffer.
            let completed = conn.frames != frames_before || conn.started != started_before;
            // `nats`: the acks JetStream has answered already, in order.
            while let Some(Some(result)) = conn.inflight.next().now_or_never() {
                self.settle(conn, result);
            }
            if !conn.out.is_empty() {
                ListenerStats::add(&self.stats.bytes_out, conn.out.len() as u64);
                conn.bytes_out += conn.out.len() as u64;
                timeout(self.write_timeout, stream.write_all(&conn.out))
                    .await
                    .map_err(|_| ConnError::WriteTimeout(self.write_timeout))??;
                if self.ack && !matches!(self.handler, Handler::Nats(_)) {
                    // Every frame of the batch was completed by the last read (`nats`
                    // observes each frame as it settles).
                    self.stats
                        .frame_ack
                        .observe_n(last_read.elapsed(), conn.frames - frames_before);
                }
                conn.out.clear();
                if conn.out.capacity() > BASE_LEN {
                    // Echoes of a large frame: do not keep their room.
                    conn.out = BytesMut::new();
                }
            }
            if completed {
                // The next frame's time starts once this one is handled (the sink's sync and
                // the acks and echoes written are the server's time, not the client's), and
                // only now does the large buffer give its room back: an echo is a second copy
                // of the frame, held by the room of the first.
                frame_started = Some(Instant::now());
                conn.buf.shrink();
            }
            if let Some(error) = fatal {
                warn!(seq = conn.seq, %error, status = %error.ack_status(), "bad header; closing the connection");
                return Ok("bad header");
            }
            if stop.is_cancelled() {
                return Ok("shutdown");
            }
            let deadline = if silent {
                accepted + self.first_byte_timeout
            } else if conn.buf.bytes.is_empty() {
                frame_started = None;
                Instant::now() + self.idle_timeout
            } else {
                *frame_started.get_or_insert(last_read) + self.frame_timeout
            };
            // Room first (which may wait for the listener's budget: the
            // peer's bytes wait in the kernel meanwhile), then the read, both
            // within the deadline.
            let buf = &mut conn.buf;
            let room_and_read = async {
                buf.make_room(&self.limits).await?;
                Ok::<_, ConnError>(stream.read_buf(&mut buf.bytes).await?)
            };
            // `nats`: a connection with max_in_flight frames awaiting their ack reads no more.
            let may_read = conn.inflight.len() < max_in_flight;
            let inflight = &mut conn.inflight;
            let read = tokio::select! {
                () = stop.cancelled() => return Ok("shutdown"),
                Some(result) = inflight.next(), if !inflight.is_empty() => {
                    self.settle(conn, result);
                    continue;
                }
                read = timeout_at(deadline, room_and_read), if may_read => read,
            };
            last_read = Instant::now();
            match read {
                Err(_) if silent => return Err(ConnError::FirstByte(self.first_byte_timeout)),
                Err(_) if conn.buf.bytes.is_empty() => {
                    return Err(ConnError::Idle(self.idle_timeout));
                }
                Err(_) => return Err(ConnError::FrameTimeout(self.frame_timeout)),
                Ok(Ok(0)) if conn.buf.bytes.is_empty() => return Ok("peer closed"),
                Ok(Ok(0)) => {
                    debug!(
                        pending = conn.buf.bytes.len(),
                        "peer closed in the middle of a frame"
                    );
                    return Ok("peer closed mid-frame");
                }
                Ok(Ok(read)) => {
                    silent = false;
                    ListenerStats::add(&self.stats.bytes_in, read as u64);
                    conn.bytes_in += read as u64;
                }
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// Handles every complete frame in the buffer as one batch and queues
    /// their acks (and echoes). Returns the header error that ends the
    /// connection, after queueing its NACK.
    async fn process(&self, conn: &mut Conn) -> Option<Fatal> {
        if !conn.started {
            match self.session(conn) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => return Some(error),
            }
        }
        let mut used = 0;
        let mut fatal = None;
        // (seq, crc ok) of each frame, and the byte ranges of the accepted ones.
        // Reused from batch to batch: grown afresh for every read, these were a large share
        // of the nats path's time in malloc (a read holds up to thousands of small frames).
        let mut verdicts = std::mem::take(&mut conn.verdicts);
        verdicts.clear();
        let mut accepted: Vec<Range<usize>> = Vec::new();
        // `nats`: each frame's payload range, version and crc_size.
        let nats = matches!(self.handler, Handler::Nats(_));
        let mut published = std::mem::take(&mut conn.published);
        published.clear();
        let first_seq = conn.seq;
        loop {
            let rest = conn.buf.bytes.get(used..).unwrap_or_default();
            match decode_frame(rest, &self.limits) {
                Ok(Decoded::Done(frame, len)) => {
                    let seq = first_seq.wrapping_add(verdicts.len() as u64);
                    let ok = frame.crc_ok();
                    if nats {
                        let start = used + HEADER_LEN;
                        published.push((
                            start..start + frame.payload.len(),
                            u32::from(frame.header.version),
                            frame.header.crc_size.len() as u32,
                        ));
                    }
                    if ok {
                        self.on_frame(&frame, seq, &mut conn.out);
                        match accepted.last_mut() {
                            Some(last) if last.end == used => last.end = used + len,
                            _ => accepted.push(used..used + len),
                        }
                    } else {
                        debug!(
                            seq,
                            received = frame.received_crc,
                            computed = frame.computed_crc,
                            "crc mismatch"
                        );
                    }
                    verdicts.push(ok);
                    used += len;
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(error) => {
                    fatal = Some(Fatal::from(error));
                    break;
                }
            }
        }
        if verdicts.is_empty() && fatal.is_none() {
            conn.keep_scratch(verdicts, published);
            return None;
        }
        if let Handler::Nats(sink) = &self.handler {
            conn.inflight.prepare(sink).await;
            self.enqueue(sink, conn, used, &verdicts, &published, fatal.as_ref());
            conn.keep_scratch(verdicts, published);
            return fatal;
        }
        let handler_ok = match &self.handler {
            Handler::File(sink) if !accepted.is_empty() => {
                let data = conn.buf.bytes.split_to(used).freeze();
                used = 0;
                match sink.append(data, accepted).await {
                    Ok(()) => true,
                    Err(error) => {
                        warn!(%error, "file sink failed; answering status 5");
                        false
                    }
                }
            }
            _ => true,
        };
        conn.buf.bytes.advance(used);
        let ok_before = conn.frames_ok;
        let mut by_status = [0u64; FRAME_STATUSES.len()];
        for (offset, &crc_ok) in verdicts.iter().enumerate() {
            let status = match (crc_ok, handler_ok) {
                (false, _) => AckStatus::CrcMismatch,
                (true, false) => AckStatus::HandlerFailed,
                (true, true) => AckStatus::Ok,
            };
            if status == AckStatus::Ok {
                conn.frames_ok += 1;
            }
            if let Some(count) = by_status.get_mut(usize::from(u8::from(status))) {
                *count += 1;
            }
            if self.ack {
                encode_ack(
                    &Ack {
                        status,
                        seq: first_seq.wrapping_add(offset as u64),
                    },
                    &mut conn.out,
                );
            }
        }
        conn.seq = conn.seq.wrapping_add(verdicts.len() as u64);
        conn.frames += verdicts.len() as u64;
        let batch_ok = conn.frames_ok - ok_before;
        ListenerStats::add(&self.stats.frames_ok, batch_ok);
        ListenerStats::add(
            &self.stats.frames_rejected,
            verdicts.len() as u64 - batch_ok + u64::from(fatal.is_some()),
        );
        if let Some(count) = fatal
            .as_ref()
            .and_then(|error| by_status.get_mut(usize::from(u8::from(error.ack_status()))))
        {
            *count += 1;
        }
        for (counter, count) in self.stats.frames.iter().zip(by_status) {
            if count > 0 {
                ListenerStats::add(counter, count);
            }
        }
        if let Some(error) = &fatal
            && self.ack
        {
            encode_ack(
                &Ack {
                    status: error.ack_status(),
                    seq: conn.seq,
                },
                &mut conn.out,
            );
        }
        conn.keep_scratch(verdicts, published);
        fatal
    }

    /// Looks at the first bytes of a connection: a session frame there sets the
    /// stream id and the first seq. `Ok(true)` once the data frames can be
    /// read, `Ok(false)` while the first bytes are still to come; an error
    /// after queueing its NACK (seq 0), which ends the connection.
    fn session(&self, conn: &mut Conn) -> Result<bool, Fatal> {
        let bytes = &conn.buf.bytes;
        match starts_session(bytes) {
            None => return Ok(false),
            Some(false) => {
                conn.started = true;
                return Ok(true);
            }
            Some(true) => {}
        }
        match decode_session(bytes) {
            Ok(Decoded::NeedMore(_)) => Ok(false),
            Ok(Decoded::Done(session, len)) => {
                debug!(
                    stream = %Hex(&session.stream_id),
                    first_seq = session.first_seq,
                    "session frame"
                );
                conn.buf.bytes.advance(len.min(SESSION_FRAME_LEN));
                conn.stream_id = session.stream_id;
                conn.seq = session.first_seq;
                conn.started = true;
                Ok(true)
            }
            Err(error) => {
                let fatal = Fatal::from(error);
                let status = fatal.ack_status();
                ListenerStats::add(&self.stats.frames_rejected, 1);
                if let Some(counter) = self.stats.frames.get(usize::from(u8::from(status))) {
                    ListenerStats::add(counter, 1);
                }
                if self.ack {
                    encode_ack(&Ack { status, seq: 0 }, &mut conn.out);
                }
                Err(fatal)
            }
        }
    }

    fn on_frame(&self, frame: &FrameRef<'_>, seq: u64, out: &mut BytesMut) {
        match &self.handler {
            Handler::Log { level, preview_len } => {
                let preview = Preview(frame.payload, *preview_len);
                let version = u32::from(frame.header.version);
                let size = frame.payload.len();
                macro_rules! frame_event {
                    ($level:expr) => {
                        event!($level, seq, version, size, preview = %preview, "frame")
                    };
                }
                match *level {
                    Level::ERROR => frame_event!(Level::ERROR),
                    Level::WARN => frame_event!(Level::WARN),
                    Level::INFO => frame_event!(Level::INFO),
                    Level::DEBUG => frame_event!(Level::DEBUG),
                    _ => frame_event!(Level::TRACE),
                }
            }
            Handler::Echo => out.extend_from_slice(frame.raw),
            Handler::File(_) | Handler::Discard | Handler::Nats(_) => {}
        }
    }

    /// `nats`: starts the publish of every accepted frame of the batch (the
    /// first `used` bytes of the buffer), and queues every frame's answer, and
    /// the NACK of a `fatal` header, in order behind those already in flight.
    fn enqueue(
        &self,
        sink: &Arc<NatsSink>,
        conn: &mut Conn,
        used: usize,
        verdicts: &[bool],
        published: &[(Range<usize>, u32, u32)],
        fatal: Option<&Fatal>,
    ) {
        let data = conn.buf.bytes.split_to(used).freeze();
        let read_at = Instant::now();
        let conn_headers = Arc::clone(conn.headers.get_or_insert_with(|| {
            Arc::new(sink.conn_headers(conn.peer, conn.number, &conn.stream_id))
        }));
        let mut batch = nats::BatchHeaders::new(conn_headers, nats::received_now());
        for (offset, (&crc_ok, (payload, version, crc_size))) in
            verdicts.iter().zip(published.iter().cloned()).enumerate()
        {
            let seq = conn.seq.wrapping_add(offset as u64);
            if crc_ok {
                let frame = nats::Frame {
                    payload: data.slice(payload),
                    version,
                    crc_size,
                    seq,
                };
                let headers = sink.headers(&mut batch, &frame);
                conn.inflight.publish(frame, headers, read_at);
            } else {
                debug!(seq, "crc mismatch");
                conn.inflight.answer((seq, AckStatus::CrcMismatch, read_at));
            }
        }
        conn.seq = conn.seq.wrapping_add(verdicts.len() as u64);
        conn.frames += verdicts.len() as u64;
        if let Some(error) = fatal {
            conn.inflight
                .answer((conn.seq, error.ack_status(), read_at));
        }
    }

    /// `nats`: counts a frame's answer and queues its ack.
    fn settle(&self, conn: &mut Conn, (seq, status, read_at): (u64, AckStatus, Instant)) {
        if status == AckStatus::Ok {
            conn.frames_ok += 1;
            ListenerStats::add(&self.stats.frames_ok, 1);
        } else {
            ListenerStats::add(&self.stats.frames_rejected, 1);
        }
        if let Some(counter) = self.stats.frames.get(usize::from(u8::from(status))) {
            ListenerStats::add(counter, 1);
        }
        if self.ack {
            encode_ack(&Ack { status, seq }, &mut conn.out);
            self.stats.frame_ack.observe(read_at.elapsed());
        }
    }
}

struct Conn {
    buf: ReadBuffer,
    out: BytesMut,
    /// The seq of the next data frame: 0, or the session frame's `first_seq`.
    seq: u64,
    /// Data frames taken off the buffer on this connection.
    frames: u64,
    frames_ok: u64,
    /// Bytes read from the client and written to it, for the access log.
    bytes_in: u64,
    bytes_out: u64,
    /// The connection's stream id: the session frame's, or one made up for it.
    stream_id: [u8; 16],
    /// Whether the first 4 bytes were seen (a session frame can only come first).
    started: bool,
    /// The client (the PROXY protocol's when it is on).
    peer: SocketAddr,
    /// The connection's number on its listener.
    number: u64,
    /// `nats`: every frame from its read to its ack, in frame order.
    inflight: nats::Acks,
    /// `nats`: the headers every message of the connection carries.
    headers: Option<Arc<ConnHeaders>>,
    /// Scratch of [`CrcTcp::process`], kept between batches: each frame's CRC verdict.
    verdicts: Vec<bool>,
    /// Scratch of [`CrcTcp::process`] (`nats`): each frame's payload range, version and crc_size.
    published: Vec<(Range<usize>, u32, u32)>,
}

/// The most entries the scratch vectors keep between batches (24 KiB at most).
const SCRATCH_KEPT: usize = 1024;

impl Conn {
    fn keep_scratch(
        &mut self,
        mut verdicts: Vec<bool>,
        mut published: Vec<(Range<usize>, u32, u32)>,
    ) {
        verdicts.shrink_to(SCRATCH_KEPT);
        published.shrink_to(SCRATCH_KEPT);
        self.verdicts = verdicts;
        self.published = published;
    }
}

/// What ends a connection after its NACK: a header that can never be valid,
/// or a session frame that cannot be trusted.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Header(#[from] proto::HeaderError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl Fatal {
    /// The NACK's status (docs/PROTOCOL.md, "Sessions and resending").
    fn ack_status(&self) -> AckStatus {
        match self {
            Self::Header(error) => error.ack_status(),
            Self::Session(SessionError::Crc) => AckStatus::CrcMismatch,
            Self::Session(_) => AckStatus::MalformedHeader,
        }
    }
}

/// Bytes as lowercase hex.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// Makes up a stream id for each connection without a session frame: 8 bytes
/// chosen at random when the listener starts, then the connection's number,
/// so that no two connections (of this or any other run) share one.
#[derive(Debug)]
struct StreamIds {
    prefix: [u8; 8],
    next: std::sync::atomic::AtomicU64,
}

impl StreamIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS; the time and pid make two runs differ even so.
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        Self {
            prefix: hasher.finish().to_be_bytes(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The connection's number and its made-up stream id.
    fn next(&self) -> (u64, [u8; 16]) {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut id = [0u8; 16];
        let (prefix, rest) = id.split_at_mut(8);
        prefix.copy_from_slice(&self.prefix);
        rest.copy_from_slice(&number.to_be_bytes());
        (number, id)
    }
}

/// The first bytes of a payload, escaped (`\n`, `\xff`), with `…` if cut.
struct Preview<'a>(&'a [u8], usize);

impl std::fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self(payload, len) = *self;
        let shown = payload.get(..len.min(payload.len())).unwrap_or_default();
        write!(f, "{}", shown.escape_ascii())?;
        if shown.len() < payload.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// The registry's view of `mode = "crc-tcp"`.
impl crate::mode::ModeConfig for CrcTcpConfig {
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn bind(&self) -> SocketAddr {
        self.bind
    }

    fn max_connections_per_ip(&self) -> Option<usize> {
        self.max_connections_per_ip
    }

    fn proxy_protocol(&self) -> (ProxyProtocol, &[IpNet], Duration) {
        (
            self.proxy_protocol,
            &self.proxy_protocol_from,
            self.proxy_protocol_timeout,
        )
    }

    fn sink_path(&self) -> Option<&Path> {
        CrcTcpConfig::sink_path(self)
    }

    fn stats_kind(&self) -> crate::stats::StatsKind {
        crate::stats::StatsKind::Frames
    }

    fn prepare(
        &self,
        name: String,
        stats: Arc<ListenerStats>,
        _proxies: &[SocketAddr],
        _worker_fds: u64,
    ) -> anyhow::Result<(Common, Arc<dyn crate::mode::ModeSettings>)> {
        self.validate()?;
        Ok((self.common(name, stats), Arc::new(self.clone())))
    }
}

/// The checked keys are the settings (the file sink is opened when the listener starts).
impl crate::mode::ModeSettings for CrcTcpConfig {
    fn build<'a>(&'a self, context: crate::mode::BuildContext<'a>) -> crate::mode::BuildFuture<'a> {
        Box::pin(async move {
            let crate::mode::BuildContext {
                name,
                stats,
                sinks,
                access_log,
            } = context;
            let service = CrcTcp::new(self, name, stats, sinks, access_log).await?;
            Ok(Arc::new(service) as crate::mode::Service)
        })
    }
}

impl crate::mode::Mode for CrcTcp {
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> crate::mode::HandleFuture<'_> {
        Box::pin(CrcTcp::handle(self, stream, peer, stop))
    }

    fn access_log(&self) -> Option<Arc<AccessLog>> {
        CrcTcp::access_log(self)
    }

    fn sink(&self) -> Option<Arc<FileSink>> {
        CrcTcp::sink(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use proto::{ACK_FRAME_LEN, CrcSize, Version, decode_ack, encode_frame};

    use super::*;

    const STEP: Duration = Duration::from_secs(10);

    /// A `crc-tcp` service on 127.0.0.1 with the given extra keys; its
    /// address and the token that stops it.
    async fn serve(extra: &str) -> (Arc<CrcTcp>, SocketAddr, CancellationToken) {
        serve_with("{ type = \"discard\" }", extra, None).await
    }

    /// [`serve`] with a handler, and the send buffer of accepted sockets if given.
    async fn serve_with(
        handler: &str,
        extra: &str,
        send_buffer: Option<u32>,
    ) -> (Arc<CrcTcp>, SocketAddr, CancellationToken) {
        let config: CrcTcpConfig = toml::from_str(&format!(
            "bind = \"127.0.0.1:0\"\nhandler = {handler}\n{extra}"
        ))
        .unwrap();
        config.validate().unwrap();
        let service = Arc::new(
            CrcTcp::new(&config, "test", Arc::default(), &[], None)
                .await
                .unwrap(),
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(len) = send_buffer {
            socket.set_send_buffer_size(len).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (accepting, stopped) = (Arc::clone(&service), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stopped.cancelled() => break,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (service, stop) = (Arc::clone(&accepting), stopped.child_token());
                tokio::spawn(async move { service.handle(stream, peer, stop).await });
            }
        });
        (service, addr, stop)
    }

    async fn read_ack(stream: &mut TcpStream) -> Ack {
        let mut bytes = [0u8; ACK_FRAME_LEN];
        timeout(STEP, stream.read_exact(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        match decode_ack(&bytes) {
            Ok(Decoded::Done(ack, _)) => ack,
            other => panic!("not an ack: {other:?}"),
        }
    }

    fn large_frame(len: usize, fill: u8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(Version::V2, CrcSize::Crc32, &vec![fill; len], &mut out).unwrap();
        out
    }

    /// Waits, yielding, until `condition` holds.
    async fn until(mut condition: impl FnMut() -> bool) {
        let wait = async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        };
        timeout(STEP, wait).await.unwrap();
    }

    /// The echo of a large frame is a second copy of it: the frame keeps its room in the
    /// budget until the echo is written, or every connection could hold an echo of a largest
    /// frame whatever `max_buffered_bytes` says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_frame_keeps_its_budget_until_its_echo_is_written() {
        let frame_room = HEADER_LEN + (1 << 20) - BASE_LEN;
        let (service, addr, stop) = serve_with(
            "{ type = \"echo\" }",
            &format!(
                "max_frame_size = {}\nmax_buffered_bytes = {frame_room}",
                1 << 20
            ),
            Some(4096),
        )
        .await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = timeout(STEP, socket.connect(addr)).await.unwrap().unwrap();
        let frame = large_frame((1 << 20) - 4, 3);
        timeout(STEP, stream.write_all(&frame))
            .await
            .unwrap()
            .unwrap();
        // The frame is verified; its echo cannot all go out while the client reads nothing.
        until(|| service.stats.frames_ok.load(Ordering::Relaxed) == 1).await;
        assert_eq!(
            service.budget.allocated(),
            frame_room,
            "the frame gave its room back while its echo was still unwritten"
        );
        let mut echoed = vec![0; frame.len()];
        timeout(STEP, stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert!(echoed == frame, "the echo differs from the frame");
        assert_eq!(read_ack(&mut stream).await.status, AckStatus::Ok);
        until(|| service.budget.allocated() == 0).await;
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_share_the_buffer_budget_and_all_frames_complete() {
        // Room for two 1 MiB frames beyond the base buffers, not for four.
        let budget = 5 << 19;
        let (service, addr, stop) = serve(&format!(
            "max_frame_size = {}\nmax_buffered_bytes = {budget}\nframe_timeout = \"20s\"",
            1 << 20
        ))
        .await;
        let clients: Vec<_> = (0..4u8)
            .map(|client| {
                tokio::spawn(async move {
                    let bytes = large_frame((1 << 20) - 4, client);
                    let mut stream = timeout(STEP, TcpStream::connect(addr))
                        .await
                        .unwrap()
                        .unwrap();
                    // Slowly, so that all four are in the middle of their frame
                    // at once; the pace is not a synchronisation.
                    let mut pace = tokio::time::interval(Duration::from_millis(2));
                    for chunk in bytes.chunks(32 * 1024) {
                        pace.tick().await;
                        timeout(STEP, stream.write_all(chunk))
                            .await
                            .unwrap()
                            .unwrap();
                    }
                    let ack = read_ack(&mut stream).await;
                    (stream, ack)
                })
            })
            .collect();
        let mut open = Vec::new();
        for client in clients {
            let (stream, ack) = timeout(STEP * 3, client).await.unwrap().unwrap();
            assert_eq!(
                ack,
                Ack {
                    status: AckStatus::Ok,
                    seq: 0
                }
            );
            open.push(stream);
        }
        let peak = service.budget.peak();
        assert!(
            peak <= budget,
            "{peak} bytes buffered, over the budget of {budget}"
        );
        let frame_room = HEADER_LEN + (1 << 20) - BASE_LEN;
        assert!(
            peak >= frame_room,
            "the frames did grow their buffers ({peak})"
        );
        // Every connection is still open, and none keeps its large buffer: each gives its room
        // back right after writing its ack, so wait (bounded) for the last one to do so.
        until(|| service.budget.allocated() == 0).await;
        for stream in &mut open {
            stream.write_all(&large_frame(10, 0)).await.unwrap();
            assert_eq!(
                read_ack(stream).await,
                Ack {
                    status: AckStatus::Ok,
                    seq: 1
                }
            );
        }
        stop.cancel();
    }

    #[test]
    fn preview_escapes_and_cuts() {
        assert_eq!(Preview(b"a\nb\xff", 10).to_string(), "a\\nb\\xff");
        assert_eq!(Preview(b"abcdef", 3).to_string(), "abc…");
        assert_eq!(Preview(b"", 3).to_string(), "");
    }
}

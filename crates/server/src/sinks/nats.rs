//! The `nats` handler of `crc-tcp`: every accepted frame becomes one
//! JetStream message (the frame's payload, with the headers of the README's
//! "The `nats` handler" and a `Nats-Msg-Id` of `STREAM-SEQ`), and its ack is ok
//! only once JetStream has acknowledged the message (stored, and replicated
//! when the stream has replicas). A publish that fails or is not
//! acknowledged within `publish_timeout` answers status 5.
//!
//! One NATS client per listener, made with `async-nats`: it reconnects by
//! itself; while it is disconnected frames get status 5 at once, `/readyz`
//! says 503, and the listener's `netkit_nats_*` metrics say so. Publishes
//! are pipelined: a connection keeps up to `max_in_flight` frames awaiting
//! their ack (and the listener as a whole as many: a permit each), and the
//! crc-tcp connection writes the acks in frame order (`Acks`: the core
//! client's publish with a reply subject of the connection's, rather than
//! JetStream's `send_publish` and its per-message futures).

use std::{
    collections::VecDeque,
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use async_nats::{
    Client, ConnectOptions, Event, HeaderMap, HeaderName, HeaderValue, ServerAddr, Subject,
    Subscriber,
    jetstream::{self, context::GetStreamErrorKind},
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use proto::AckStatus;
use serde::{Deserialize, de::IgnoredAny};
use tokio::{
    sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError},
    time::{Instant, Sleep},
};
use tracing::{debug, info, warn};

use crate::{
    bounds::{MAX_DURATION, MIN_TIMEOUT, check_count, check_duration, invalid},
    stats::{ListenerStats, stream_state},
};

/// The `handler = { type = "nats", ... }` keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URLs, tried in turn (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// The subject of every message; `{listener}` becomes the listener's name.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The JetStream stream that stores the subject.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CAs that sign the servers' certificates.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a server that does not offer TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// Create the stream when it is missing; absent: it must exist.
    #[serde(default)]
    pub create_stream: Option<CreateStream>,
    /// Frames awaiting JetStream's ack, per connection and per listener.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A publish not acknowledged within this answers status 5.
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How a message's headers carry the frame's facts.
    #[serde(default)]
    pub headers: HeaderFormat,
}

/// `headers = "compact" | "split"`: the facts of a frame (version, crc_size, seq, receive
/// time) and of its source (client, listener, connection, stream id) in two headers of
/// `key=value;` pairs, or each in a header of its own. Each header costs the publisher and
/// nats-server per message (BENCHMARKS.md, "Fewer headers, and the shared runtime"), so
/// compact is the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFormat {
    /// `Nats-Msg-Id`, `Netkit-Frame` and `Netkit-Source`.
    #[default]
    Compact,
    /// `Nats-Msg-Id` and eight `Netkit-*` headers, one per fact.
    Split,
}

/// `create_stream = { ... }`: the stream made when it is missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// Copies of each message in the cluster (1 to 5).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// `file` or `memory`.
    #[serde(default)]
    pub storage: Storage,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
}

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs, reason = "the names are the storage types")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

fn default_subject() -> String {
    "frames.{listener}".to_owned()
}
fn default_stream() -> String {
    "FRAMES".to_owned()
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// The largest `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// The longest `publish_timeout`: a frame's ack waits at most this.
pub const MAX_PUBLISH_TIMEOUT: Duration = Duration::from_secs(3600);

/// The most replicas JetStream allows.
pub const MAX_REPLICAS: usize = 5;

/// What `{listener}` becomes in the subject when the stream is created: every
/// listener's subject, so collectors with other names share the stream.
const ANY_LISTENER: &str = "*";

impl NatsConfig {
    /// Checks the keys (README, "Bounds"); `listener` is the listener's name,
    /// which the subject may include.
    pub(crate) fn validate(&self, listener: &str) -> anyhow::Result<()> {
        if self.servers.is_empty() {
            return Err(invalid(
                "handler.servers",
                "must name at least one server, e.g. [\"nats://127.0.0.1:4222\"]",
            ));
        }
        for server in &self.servers {
            ServerAddr::from_str(server).map_err(|error| {
                invalid(
                    "handler.servers",
                    format!(
                        "{server:?} is not a NATS URL ({error}), e.g. \"nats://127.0.0.1:4222\""
                    ),
                )
            })?;
        }
        check_subject(&self.subject(listener))
            .map_err(|reason| invalid("handler.subject", reason))?;
        check_stream_name(&self.stream).map_err(|reason| invalid("handler.stream", reason))?;
        check_count(
            "handler.max_in_flight",
            self.max_in_flight as u64,
            1,
            MAX_IN_FLIGHT as u64,
            "",
        )?;
        check_duration(
            "handler.publish_timeout",
            self.publish_timeout,
            MIN_TIMEOUT,
            MAX_PUBLISH_TIMEOUT,
        )?;
        if let Some(create) = &self.create_stream {
            check_count(
                "handler.create_stream.replicas",
                create.replicas as u64,
                1,
                MAX_REPLICAS as u64,
                "",
            )?;
            check_duration(
                "handler.create_stream.duplicate_window",
                create.duplicate_window,
                Duration::from_secs(1),
                MAX_DURATION,
            )?;
        }
        match (&self.user, &self.password) {
            (Some(_), None) => return Err(invalid("handler.user", "needs handler.password")),
            (None, Some(_)) => return Err(invalid("handler.password", "needs handler.user")),
            _ => {}
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.creds_file.is_some(),
        ];
        if ways.iter().filter(|&&set| set).count() > 1 {
            return Err(invalid(
                "handler.token",
                "set one of user and password, token, or creds_file",
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "handler.tls_cert_file",
                    "needs handler.tls_key_file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "handler.tls_key_file",
                    "needs handler.tls_cert_file",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The subject, with `{listener}` replaced.
    fn subject(&self, listener: &str) -> String {
        self.subject.replace("{listener}", listener)
    }

    /// The subjects of a stream `create_stream` makes: the subject with any
    /// listener's name in place of `{listener}` when that is a whole token.
    fn stream_subject(&self, listener: &str) -> String {
        let tokens: Vec<&str> = self.subject.split('.').collect();
        if tokens.contains(&"{listener}") {
            tokens
                .iter()
                .map(|&token| {
                    if token == "{listener}" {
                        ANY_LISTENER
                    } else {
                        token
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        } else {
            self.subject(listener)
        }
    }
}

/// A subject to publish to: tokens separated by dots, none empty, no
/// wildcard, no white space.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("must not be empty".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{subject:?} has white space or a control character"
        ));
    }
    if subject
        .split('.')
        .any(|token| token.is_empty() || token == "*" || token == ">")
    {
        return Err(format!(
            "{subject:?} has an empty token or a wildcard: messages are published to one subject"
        ));
    }
    Ok(())
}

/// A stream name: JetStream refuses dots, wildcards, slashes and white space.
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!(
            "{name:?}: a stream name has no white space, '.', '*', '>', '/' or '\\\\'"
        ));
    }
    Ok(())
}

/// The running handler of one listener.
pub(crate) struct NatsSink {
    /// Shared by the publishes in flight: an `Arc` clone per frame is one count, a `Client`
    /// clone six (and a channel sender's).
    client: Arc<Client>,
    /// The listener's window: a permit per frame sent and not yet answered.
    window: Arc<Semaphore>,
    subject: Subject,
    listener: HeaderValue,
    listener_name: String,
    format: HeaderFormat,
    publish_timeout: Duration,
    max_in_flight: usize,
    stats: Arc<ListenerStats>,
    failures: FailureLog,
    supervisor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

const MSG_ID: HeaderName = HeaderName::from_static("Nats-Msg-Id");
const VERSION: HeaderName = HeaderName::from_static("Netkit-Version");
const CRC_SIZE: HeaderName = HeaderName::from_static("Netkit-Crc-Size");
const CLIENT: HeaderName = HeaderName::from_static("Netkit-Client");
const LISTENER: HeaderName = HeaderName::from_static("Netkit-Listener");
const CONNECTION: HeaderName = HeaderName::from_static("Netkit-Connection");
const STREAM: HeaderName = HeaderName::from_static("Netkit-Stream");
const SEQ: HeaderName = HeaderName::from_static("Netkit-Seq");
const RECEIVED: HeaderName = HeaderName::from_static("Netkit-Received");
const FRAME: HeaderName = HeaderName::from_static("Netkit-Frame");
const SOURCE: HeaderName = HeaderName::from_static("Netkit-Source");

/// What every message of one crc-tcp connection says the same.
#[derive(Debug, Clone)]
pub(crate) struct ConnHeaders {
    format: HeaderFormat,
    client: HeaderValue,
    connection: HeaderValue,
    stream_hex: String,
    stream: HeaderValue,
    /// `headers = "compact"`: the `Netkit-Source` value.
    source: HeaderValue,
}

impl ConnHeaders {
    fn new(
        format: HeaderFormat,
        listener: &str,
        client: SocketAddr,
        connection: u64,
        stream_id: &[u8; 16],
    ) -> Self {
        let stream_hex: String = stream_id.iter().map(|b| format!("{b:02x}")).collect();
        let source = match format {
            HeaderFormat::Split => HeaderValue::new(),
            HeaderFormat::Compact => {
                let mut source = String::from("client=");
                // Escaped too: a link-local IPv6 client has a scope id after a `%`.
                proto::pairs::escape_value(&mut source, &client.to_string());
                source.push_str(";listener=");
                proto::pairs::escape_value(&mut source, listener);
                let _ = write!(source, ";conn={connection};stream={stream_hex}");
                value_owned(source)
            }
        };
        Self {
            format,
            client: value(&client.to_string()),
            connection: value(&connection.to_string()),
            stream: value(&stream_hex),
            stream_hex,
            source,
        }
    }
}

/// The headers a batch of frames shares (the connection's, the listener's, the version and
/// crc_size, the receive time), built once and cloned for each frame, which then adds only
/// its `Netkit-Seq` and `Nats-Msg-Id`: a map built afresh took nine inserts, its rehashes as
/// it grew and eighteen small strings per frame.
#[derive(Debug)]
pub(crate) struct BatchHeaders {
    conn: Arc<ConnHeaders>,
    received: HeaderValue,
    /// The map for the (version, crc_size) last seen, with room for the per-frame headers.
    fixed: Option<(u32, u32, HeaderMap)>,
}

impl BatchHeaders {
    pub(crate) fn new(conn: Arc<ConnHeaders>, received: HeaderValue) -> Self {
        Self {
            conn,
            received,
            fixed: None,
        }
    }

    /// Every header of the frame `seq` of `version` and `crc_size`.
    fn frame(
        &mut self,
        listener: &HeaderValue,
        version: u32,
        crc_size: u32,
        seq: u64,
    ) -> HeaderMap {
        if self.conn.format == HeaderFormat::Compact {
            return self.compact(version, crc_size, seq);
        }
        let fixed = match &mut self.fixed {
            Some((v, c, map)) if *v == version && *c == crc_size => map,
            slot => {
                let mut map = HeaderMap::new();
                // Placeholders (an empty value's clone allocates nothing) that each frame's
                // insert replaces in place: no clone grows and rehashes its table.
                map.insert(MSG_ID, HeaderValue::new());
                map.insert(SEQ, HeaderValue::new());
                map.insert(VERSION, value(&version.to_string()));
                map.insert(CRC_SIZE, value(&crc_size.to_string()));
                map.insert(CLIENT, self.conn.client.clone());
                map.insert(LISTENER, listener.clone());
                map.insert(CONNECTION, self.conn.connection.clone());
                map.insert(STREAM, self.conn.stream.clone());
                map.insert(RECEIVED, self.received.clone());
                &mut slot.insert((version, crc_size, map)).2
            }
        };
        let mut headers = fixed.clone();
        let seq_text = seq.to_string();
        let mut id = String::with_capacity(self.conn.stream_hex.len() + 1 + seq_text.len());
        id.push_str(&self.conn.stream_hex);
        id.push('-');
        id.push_str(&seq_text);
        headers.insert(MSG_ID, value_owned(id));
        headers.insert(SEQ, value_owned(seq_text));
        headers
    }

    /// `headers = "compact"`: `Nats-Msg-Id`, `Netkit-Frame` and `Netkit-Source`, a fresh map
    /// (three inserts fit its first table) with three values.
    fn compact(&self, version: u32, crc_size: u32, seq: u64) -> HeaderMap {
        let received = self.received.as_str();
        let mut frame = String::with_capacity(48 + received.len());
        let _ = write!(
            frame,
            "v={version};crc={crc_size};seq={seq};received={received}"
        );
        let stream = &self.conn.stream_hex;
        let mut id = String::with_capacity(stream.len() + 21);
        let _ = write!(id, "{stream}-{seq}");
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, value_owned(id));
        headers.insert(FRAME, value_owned(frame));
        headers.insert(SOURCE, self.conn.source.clone());
        headers
    }
}

/// A header value from text the server made (digits, hex, addresses), which
/// never holds a line break; one that did would be left empty.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_default()
}

/// [`value`] of a string made here, without copying it.
fn value_owned(text: String) -> HeaderValue {
    if text.bytes().any(|byte| matches!(byte, b'\r' | b'\n')) {
        HeaderValue::new()
    } else {
        HeaderValue::from(text)
    }
}

/// One accepted frame, as the handler publishes it.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) payload: Bytes,
    pub(crate) version: u32,
    pub(crate) crc_size: u32,
    pub(crate) seq: u64,
}

/// A frame's answer: its seq, its status, and when its read completed.
pub(crate) type Answer = (u64, AckStatus, Instant);

type Sending = Pin<Box<dyn Future<Output = Result<(), async_nats::PublishError>> + Send>>;
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The frames of one crc-tcp connection from their read to their answer, in frame order.
///
/// Each frame is published with the core client to a reply subject of the connection's own
/// (`_INBOX.<id>.<token>`, one wildcard subscription per connection), and JetStream's PubAck
/// comes back there: no inbox, oneshot, request-map entry, boxed future and timer per frame,
/// as `jetstream::Context::send_publish` makes (BENCHMARKS.md, "The levers of 2026-12-01
/// evening"). A frame is answered ok only once its PubAck says stored; answers leave in frame
/// order; the frame at the front fails (status 5) when `publish_timeout` has passed since its
/// publish began (a permit of the listener's window awaited counts), and as the front always
/// is the oldest, one timer per connection is enough.
pub(crate) struct Acks {
    queue: VecDeque<Entry>,
    /// The token of `queue[0]`; entry `i` has token `front + i`.
    front: u64,
    /// The token of the next entry to send.
    next_send: u64,
    sending: Option<(u64, Sending)>,
    acquiring: Option<Acquiring>,
    /// The replies' subscription and subject prefix (`_INBOX.<id>.`), made at the first frame.
    replies: Option<(Subscriber, String)>,
    timer: Pin<Box<Sleep>>,
    /// What `timer` is set to, when it is.
    armed: Option<Instant>,
    sink: Option<Arc<NatsSink>>,
}

struct Entry {
    seq: u64,
    /// When its read completed: its deadline is this plus `publish_timeout` (a wait for the
    /// listener's window counts), its publish time in the histogram runs from it.
    read_at: Instant,
    /// Whether it was sent (its time goes into the publish histogram).
    sent: bool,
    state: State,
}

enum State {
    /// Waiting for a permit of the window and its turn to be sent.
    Queued { payload: Bytes, headers: HeaderMap },
    /// Sent (or being sent) with its permit, waiting for the PubAck.
    Sent { _permit: OwnedSemaphorePermit },
    /// Answered.
    Done(AckStatus),
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks")
            .field("len", &self.queue.len())
            .field("front", &self.front)
            .finish_non_exhaustive()
    }
}

impl Default for Acks {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            front: 0,
            next_send: 0,
            sending: None,
            acquiring: None,
            replies: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            sink: None,
        }
    }
}

/// Whether a reply to a publish says JetStream stored the message: `Ok(duplicate)`, or why not
/// (an error status such as 503 "no responders", an error in the PubAck, or no PubAck at all).
fn stored(status: Option<async_nats::StatusCode>, payload: &[u8]) -> Result<bool, String> {
    if let Some(status) = status.filter(|status| !status.is_success()) {
        return Err(format!("status {status}"));
    }
    match serde_json::from_slice::<PubAck>(payload) {
        Ok(ack) if ack.error.is_none() && ack.stream.is_some() => Ok(ack.duplicate),
        _ => Err(String::from_utf8_lossy(payload).into_owned()),
    }
}

/// The entry of `token` in a queue whose first entry has the token `front`.
fn entry_mut(queue: &mut VecDeque<Entry>, front: u64, token: u64) -> Option<&mut Entry> {
    let index = usize::try_from(token.checked_sub(front)?).ok()?;
    queue.get_mut(index)
}

/// What a PubAck says (`{"stream":"FRAMES","seq":7}`, with `"duplicate":true` for a message
/// id already stored, or `{"error":{...}}`).
#[derive(Deserialize)]
struct PubAck {
    stream: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
    #[serde(default)]
    duplicate: bool,
}

impl Acks {
    /// Frames not yet answered.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Makes the connection's reply subscription, once (within `publish_timeout`); frames
    /// published without one fail.
    pub(crate) async fn prepare(&mut self, sink: &Arc<NatsSink>) {
        if self.sink.is_none() {
            self.sink = Some(Arc::clone(sink));
        }
        if self.replies.is_some() || !sink.stats.nats.connected.load(Relaxed) {
            return;
        }
        let prefix = format!("{}.", sink.client.new_inbox());
        match tokio::time::timeout(
            sink.publish_timeout,
            sink.client.subscribe(format!("{prefix}*")),
        )
        .await
        {
            Ok(Ok(subscriber)) => self.replies = Some((subscriber, prefix)),
            Ok(Err(error)) => sink.failures.note(&sink.stats, &error.to_string()),
            Err(_) => sink
                .failures
                .note(&sink.stats, "no reply subscription within publish_timeout"),
        }
    }

    /// Queues `frame` for its publish with `headers`.
    pub(crate) fn publish(&mut self, frame: Frame, headers: HeaderMap, read_at: Instant) {
        let state = if self.replies.is_some() {
            State::Queued {
                payload: frame.payload,
                headers,
            }
        } else {
            if let Some(sink) = &self.sink {
                sink.failures.note(&sink.stats, "not connected to NATS");
            }
            State::Done(AckStatus::HandlerFailed)
        };
        self.push(frame.seq, read_at, state);
    }

    /// Queues an answer known already (a CRC mismatch, the NACK of a bad header).
    pub(crate) fn answer(&mut self, (seq, status, read_at): Answer) {
        self.push(seq, read_at, State::Done(status));
    }

    fn push(&mut self, seq: u64, read_at: Instant, state: State) {
        self.queue.push_back(Entry {
            seq,
            read_at,
            sent: false,
            state,
        });
    }

    /// The next answer in frame order, once there is one; `None` when nothing is in flight.
    /// Cancel-safe: every state is in `self`.
    pub(crate) async fn next(&mut self) -> Option<Answer> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn entry(&mut self, token: u64) -> Option<&mut Entry> {
        entry_mut(&mut self.queue, self.front, token)
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let Some(sink) = self.sink.clone() else {
            // Only answers known already (no frame was published).
            return Poll::Ready(self.pop_done());
        };
        self.poll_sends(&sink, cx);
        self.poll_replies(&sink, cx);
        if let Some(answer) = self.pop_done() {
            return Poll::Ready(Some(answer));
        }
        let Some(front) = self.queue.front() else {
            return Poll::Ready(None);
        };
        // The front's deadline. The timer may run early (set for an older front): then it is
        // set again, so a frame costs no timer of its own.
        let deadline = front.read_at + sink.publish_timeout;
        if self.armed.is_none_or(|armed| armed > deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                self.armed = None;
                sink.failures
                    .note(&sink.stats, "no ack within publish_timeout");
                if let Some(entry) = self.queue.front_mut() {
                    entry.state = State::Done(AckStatus::HandlerFailed);
                }
                return Poll::Ready(self.pop_done());
            }
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        Poll::Pending
    }

    /// Sends the queued frames, one at a time, each with a permit of the listener's window.
    fn poll_sends(&mut self, sink: &NatsSink, cx: &mut Context<'_>) {
        loop {
            if let Some((token, sending)) = &mut self.sending {
                let token = *token;
                match sending.as_mut().poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(result) => {
                        self.sending = None;
                        if let Err(error) = result {
                            sink.failures.note(&sink.stats, &error.to_string());
                            if let Some(entry) = self.entry(token)
                                && matches!(entry.state, State::Sent { .. })
                            {
                                entry.state = State::Done(AckStatus::HandlerFailed);
                            }
                        }
                    }
                }
            }
            self.next_send = self.next_send.max(self.front);
            // The next frame waiting to be sent.
            let token = self.next_send;
            let Some(entry) = self.entry(token) else {
                return;
            };
            if !matches!(entry.state, State::Queued { .. }) {
                self.next_send += 1;
                continue;
            }
            let permit = match Arc::clone(&sink.window).try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return,
                Err(TryAcquireError::NoPermits) => {
                    let acquiring = self
                        .acquiring
                        .get_or_insert_with(|| Box::pin(Arc::clone(&sink.window).acquire_owned()));
                    match acquiring.as_mut().poll(cx) {
                        Poll::Pending => return,
                        Poll::Ready(permit) => {
                            self.acquiring = None;
                            match permit {
                                Ok(permit) => permit,
                                Err(_) => return,
                            }
                        }
                    }
                }
            };
            let connected = sink.stats.nats.connected.load(Relaxed);
            let Some((_, prefix)) = &self.replies else {
                return;
            };
            let mut reply = String::with_capacity(prefix.len() + 20);
            reply.push_str(prefix);
            let _ = write!(reply, "{token}");
            self.next_send = token + 1;
            let Some(entry) = entry_mut(&mut self.queue, self.front, token) else {
                return;
            };
            if !connected {
                sink.failures.note(&sink.stats, "not connected to NATS");
                entry.state = State::Done(AckStatus::HandlerFailed);
                continue;
            }
            let State::Queued { payload, headers } =
                std::mem::replace(&mut entry.state, State::Sent { _permit: permit })
            else {
                continue;
            };
            entry.sent = true;
            let client = Arc::clone(&sink.client);
            let subject = sink.subject.clone();
            self.sending = Some((
                token,
                Box::pin(async move {
                    client
                        .publish_with_reply_and_headers(subject, reply, headers, payload)
                        .await
                }),
            ));
        }
    }

    /// Takes the PubAcks that came in.
    fn poll_replies(&mut self, sink: &NatsSink, cx: &mut Context<'_>) {
        let Some((subscriber, prefix)) = &mut self.replies else {
            return;
        };
        let prefix_len = prefix.len();
        while let Poll::Ready(Some(message)) = subscriber.poll_next_unpin(cx) {
            let Some(token) = message
                .subject
                .as_str()
                .get(prefix_len..)
                .and_then(|token| token.parse::<u64>().ok())
            else {
                continue;
            };
            let verdict = stored(message.status, &message.payload);
            if let Err(reason) = &verdict {
                sink.failures.note(&sink.stats, reason);
            }
            if let Some(entry) = entry_mut(&mut self.queue, self.front, token)
                && matches!(entry.state, State::Sent { .. })
            {
                if verdict == Ok(true) {
                    debug!(seq = entry.seq, "nats: a duplicate, already stored");
                }
                let stored = verdict.is_ok();
                entry.state = State::Done(if stored {
                    AckStatus::Ok
                } else {
                    AckStatus::HandlerFailed
                });
            }
        }
    }

    /// The front's answer, when it has one.
    fn pop_done(&mut self) -> Option<Answer> {
        let front = self.queue.front()?;
        let State::Done(status) = front.state else {
            return None;
        };
        let entry = self.queue.pop_front()?;
        self.front += 1;
        if let Some(sink) = &self.sink
            && entry.sent
        {
            sink.stats.nats.publish.observe(entry.read_at.elapsed());
        }
        Some((entry.seq, status, entry.read_at))
    }
}

impl NatsSink {
    /// Starts the client (it connects, and reconnects, in the background) and
    /// the task that looks up or creates the stream on each connection.
    ///
    /// # Errors
    ///
    /// When a credentials or TLS file cannot be read, or a server URL parsed.
    pub(crate) async fn start(
        config: &NatsConfig,
        listener: &str,
        stats: Arc<ListenerStats>,
    ) -> anyhow::Result<Self> {
        stats.nats.enabled.store(true, Relaxed);
        let wake = Arc::new(Notify::new());
        let mut options = ConnectOptions::new()
            .retry_on_initial_connect()
            .name(format!("netkit {listener}"))
            .require_tls(config.tls_required)
            .client_capacity(config.max_in_flight.max(2048))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64.saturating_mul(attempts as u64).min(2000))
            })
            .event_callback({
                let (stats, wake, listener) =
                    (Arc::clone(&stats), Arc::clone(&wake), listener.to_owned());
                let failures = Arc::new(ConnectLog::new(config));
                move |event| {
                    on_event(&event, &stats, &wake, &listener, &failures);
                    std::future::ready(())
                }
            });
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("handler.creds_file: cannot read {}", path.display()))?;
        }
        if let Some(path) = &config.tls_ca_file {
            readable("handler.tls_ca_file", path)?;
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            readable("handler.tls_cert_file", cert)?;
            readable("handler.tls_key_file", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers = config
            .servers
            .iter()
            .map(|server| ServerAddr::from_str(server))
            .collect::<Result<Vec<_>, _>>()
            .context("handler.servers")?;
        let client = options
            .connect(servers)
            .await
            .context("handler.servers: cannot start the NATS client")?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .ack_timeout(config.publish_timeout)
            .build(client.clone());
        let supervisor = tokio::spawn(supervise(
            js.clone(),
            config.clone(),
            listener.to_owned(),
            Arc::clone(&stats),
            wake,
        ));
        Ok(Self {
            client: Arc::new(client),
            window: Arc::new(Semaphore::new(config.max_in_flight)),
            subject: Subject::from(config.subject(listener)),
            listener: value(listener),
            listener_name: listener.to_owned(),
            format: config.headers,
            publish_timeout: config.publish_timeout,
            max_in_flight: config.max_in_flight,
            stats,
            failures: FailureLog::default(),
            supervisor,
        })
    }

    /// Frames a connection may have awaiting their ack.
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// What every message of the connection `number` from `client` with `stream_id` says.
    pub(crate) fn conn_headers(
        &self,
        client: SocketAddr,
        number: u64,
        stream_id: &[u8; 16],
    ) -> ConnHeaders {
        ConnHeaders::new(self.format, &self.listener_name, client, number, stream_id)
    }

    /// The headers of `frame`, one of the batch `batch`.
    pub(crate) fn headers(&self, batch: &mut BatchHeaders, frame: &Frame) -> HeaderMap {
        batch.frame(&self.listener, frame.version, frame.crc_size, frame.seq)
    }
}

impl Drop for NatsSink {
    /// Stops the stream task when the last connection of the listener's generation is done
    /// (a reload builds a new sink; the client closes when its last handle goes).
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

fn readable(key: &'static str, path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .with_context(|| format!("{key}: cannot read {}", path.display()))
}

/// The client's events: the connection state for readiness and metrics, and
/// one log line per change.
fn on_event(
    event: &Event,
    stats: &ListenerStats,
    wake: &Notify,
    listener: &str,
    failures: &ConnectLog,
) {
    let nats = &stats.nats;
    match event {
        // nats-server reports some errors on a live connection (a permissions violation):
        // not a failed connection.
        Event::ServerError(_) if nats.connected.load(Relaxed) => {
            let error = event.to_string();
            if let Some(repeated) = failures.note(&error, Instant::now()) {
                warn!(
                    listener,
                    servers = %failures.servers,
                    error,
                    repeated,
                    "nats: the server reported an error"
                );
            }
        }
        Event::ClientError(_) | Event::ServerError(_) => {
            let error = event.to_string();
            // A refused login ends async-nats's attempt before it logs a cause.
            let refused = is_refused_login(&error);
            let cause = if refused {
                None
            } else {
                connect_cause(&failures.addrs)
            };
            if let Some(repeated) = failures.note(&error, Instant::now()) {
                warn!(
                    listener,
                    servers = %failures.servers,
                    error,
                    cause = cause.as_deref().unwrap_or("(none logged by async-nats)"),
                    repeated,
                    hint = connect_hint(&error, cause.as_deref(), failures.tls),
                    "nats: cannot connect or was refused; frames get status 5 until it connects"
                );
            }
        }
        Event::Connected => {
            failures.reset();
            let reconnect = nats.disconnects.load(Relaxed) > 0;
            nats.connected.store(true, Relaxed);
            if reconnect {
                info!(listener, "nats: reconnected");
            } else {
                info!(listener, "nats: connected");
            }
            wake.notify_one();
        }
        Event::Disconnected => {
            if nats.connected.swap(false, Relaxed) {
                ListenerStats::add(&nats.disconnects, 1);
                warn!(
                    listener,
                    "nats: connection lost; frames get status 5 until it is back (reconnecting)"
                );
            }
        }
        // Only a client we dropped closes (it reconnects forever otherwise): after a reload
        // that is the old generation's, whose counters the new one shares, so `connected`
        // stays as the new client set it.
        Event::Closed => debug!(listener, "nats: client closed"),
        other => debug!(listener, event = %other, "nats event"),
    }
}

/// On each connection, looks up (or creates) the stream, retrying while connected until it
/// exists, so that `/readyz` can say whether frames have somewhere to go.
async fn supervise(
    js: jetstream::Context,
    config: NatsConfig,
    listener: String,
    stats: Arc<ListenerStats>,
    wake: Arc<Notify>,
) {
    let name = config.stream.as_str();
    loop {
        wake.notified().await;
        let mut delay = Duration::from_millis(100);
        while stats.nats.connected.load(Relaxed) {
            let found = match &config.create_stream {
                Some(create) => js
                    .get_or_create_stream(jetstream::stream::Config {
                        name: name.to_owned(),
                        subjects: vec![config.stream_subject(&listener)],
                        num_replicas: create.replicas,
                        storage: match create.storage {
                            Storage::File => jetstream::stream::StorageType::File,
                            Storage::Memory => jetstream::stream::StorageType::Memory,
                        },
                        duplicate_window: create.duplicate_window,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(|error| (stream_state::FAILED, error.to_string())),
                None => js.get_stream(name).await.map(drop).map_err(|error| {
                    if matches!(error.kind(), GetStreamErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
                    {
                        (stream_state::MISSING, error.to_string())
                    } else {
                        (stream_state::FAILED, error.to_string())
                    }
                }),
            };
            match found {
                Ok(()) => {
                    if stats.nats.stream.swap(stream_state::OK, Relaxed) != stream_state::OK {
                        info!(listener, stream = name, "nats: stream ready");
                    }
                    break;
                }
                Err((state, error)) => {
                    if stats.nats.stream.swap(state, Relaxed) != state {
                        warn!(listener, stream = name, %error, "nats: the stream is not usable; frames get status 5 (retrying)");
                    }
                }
            }
            // A backoff between lookups, cut short by a new connection.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = wake.notified() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// The warnings about failed connection attempts: one at the first failure and at each
/// change of the error, else one per [`ConnectLog::EVERY`] with the count since (the client
/// retries every 2 s at most), until it connects again.
#[derive(Debug)]
struct ConnectLog {
    /// `handler.servers`, for the line.
    servers: String,
    /// Their addresses as async-nats writes them in its debug lines (`Debug`), to find the
    /// causes it logged.
    addrs: Vec<String>,
    /// Whether TLS is on (a `tls://` server, `tls_required`, a CA or client certificate).
    tls: bool,
    /// The error last logged, when, and the attempts not logged since.
    state: std::sync::Mutex<Option<(String, Instant, u64)>>,
}

impl ConnectLog {
    const EVERY: Duration = Duration::from_secs(30);

    fn new(config: &NatsConfig) -> Self {
        Self {
            servers: config.servers.join(","),
            addrs: config
                .servers
                .iter()
                .filter_map(|server| ServerAddr::from_str(server).ok())
                .map(|addr| format!("{addr:?}"))
                .collect(),
            tls: config.tls_required
                || config.tls_ca_file.is_some()
                || config.tls_cert_file.is_some()
                || config.servers.iter().any(|s| s.starts_with("tls://")),
            state: std::sync::Mutex::new(None),
        }
    }

    /// Notes a failure; `Some(n)` when a line is due, `n` the times the same error came
    /// since its last line (a new error starts from 0; a connection forgets the count).
    fn note(&self, error: &str, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &mut *state {
            Some((last, at, unlogged)) if last == error => {
                if now.saturating_duration_since(*at) < Self::EVERY {
                    *unlogged += 1;
                    return None;
                }
                let repeated = std::mem::take(unlogged);
                *at = now;
                Some(repeated)
            }
            slot => {
                *slot = Some((error.to_owned(), now, 0));
                Some(0)
            }
        }
    }

    /// Connected: the next failure is logged at once.
    fn reset(&self) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// The causes async-nats logged (at `debug`) for its last failed connection attempts, newest
/// last: the server's address as it writes it (`Debug`), the error with its source, which
/// its `ClientError` event leaves out ("IO error" for a refused certificate), and when.
static CONNECT_CAUSES: std::sync::Mutex<VecDeque<(String, String, std::time::Instant)>> =
    std::sync::Mutex::new(VecDeque::new());

/// Causes kept: the newest attempts of a few servers.
const CONNECT_CAUSES_KEPT: usize = 64;

/// A cause older than this belongs to an earlier round of attempts (a round ends with the
/// event that reads it, within milliseconds; rounds are at least 100 ms apart).
const CONNECT_CAUSE_FRESH: Duration = Duration::from_secs(5);

/// A `tracing` layer for the binary's subscriber: keeps the cause of each connection attempt
/// async-nats logs as failed (target `async_nats::connector`, "connection attempt failed",
/// fields `server` and `error`), whatever the log level, for the handler's connection warning.
pub fn connect_causes<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    ConnectCauses.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target("async_nats::connector", tracing::Level::DEBUG),
    )
}

struct ConnectCauses;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ConnectCauses {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = CauseFields::default();
        event.record(&mut fields);
        if fields.message != "connection attempt failed" {
            return;
        }
        let (Some(server), Some(error)) = (fields.server, fields.error) else {
            return;
        };
        let mut causes = CONNECT_CAUSES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if causes.len() >= CONNECT_CAUSES_KEPT {
            causes.pop_front();
        }
        causes.push_back((server, error, std::time::Instant::now()));
    }
}

#[derive(Default)]
struct CauseFields {
    message: String,
    server: Option<String>,
    error: Option<String>,
}

impl tracing::field::Visit for CauseFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "server" => self.server = Some(text),
            "error" => self.error = Some(text),
            _ => {}
        }
    }
}

/// The newest fresh cause kept for one of `servers` (`Debug` of their addresses), taking
/// every cause of theirs out so that a later event cannot show it again. (Two listeners with
/// the same server share its causes: the first event takes them.)
fn connect_cause(servers: &[String]) -> Option<String> {
    let mut causes = CONNECT_CAUSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut newest = None;
    causes.retain(|(server, error, at)| {
        if !servers.contains(server) {
            return true;
        }
        if at.elapsed() < CONNECT_CAUSE_FRESH {
            newest = Some(error.clone());
        }
        false
    });
    newest
}

/// Whether the server refused the client's login.
fn is_refused_login(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("authorization") || error.contains("authentication")
}

/// What to check for a failed connection attempt: async-nats's event reports a failed TLS
/// handshake only as "IO error" (its cause is in its own debug line, [`connect_cause`]).
fn connect_hint(error: &str, cause: Option<&str>, tls: bool) -> &'static str {
    let lower = |text: &str| text.to_ascii_lowercase();
    let (error, cause) = (lower(error), cause.map(lower).unwrap_or_default());
    let tls_cause = [
        "certificate",
        "tls",
        "alert",
        "invalidcontenttype",
        "handshake",
    ]
    .iter()
    .any(|word| cause.contains(word));
    if is_refused_login(&error) {
        "the server refused the login: check handler.user and handler.password, handler.token or handler.creds_file"
    } else if tls_cause || (tls && error.contains("io error") && cause.is_empty()) {
        "a TLS handshake failed: UnknownIssuer: no CA in handler.tls_ca_file signed the server's certificate; BadCertificate: the server refused the client certificate (handler.tls_cert_file); InvalidContentType: the server does not speak TLS"
    } else if error.contains("tls") {
        "check TLS on both sides: handler.tls_required, the servers' URLs (tls://) and nats-server's tls block"
    } else {
        "is nats-server running and reachable at handler.servers?"
    }
}

/// At most one warning per [`FailureLog::EVERY`] for failed publishes, with
/// the count since the last (a lost connection fails every frame).
#[derive(Debug, Default)]
struct FailureLog {
    /// Failures not yet logged.
    count: AtomicU64,
    /// When the last line was logged, in ms since the epoch.
    last: AtomicU64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&self, stats: &ListenerStats, reason: &str) {
        let _ = stats;
        self.count.fetch_add(1, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) >= Self::EVERY.as_millis() as u64
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            let failed = self.count.swap(0, Relaxed);
            warn!(failed, reason, "nats: publishes failed; answered status 5");
        }
    }
}

/// `time` as RFC 3339 in UTC with nanoseconds: `2026-12-01T10:58:00.123456789Z`.
pub(crate) fn rfc3339_nanos(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_nanos()
    )
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The `Netkit-Received` value of frames completed now.
pub(crate) fn received_now() -> HeaderValue {
    value(&rfc3339_nanos(SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        let at = |secs, nanos| rfc3339_nanos(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        // `date -u -d @1795862280` = 2026-11-28T10:38:00Z
        assert_eq!(at(1_795_862_280, 5), "2026-11-28T10:38:00.000000005Z");
        // A leap day: 2024-02-29T23:59:59Z = 1709251199.
        assert_eq!(
            at(1_709_251_199, 123_456_789),
            "2024-02-29T23:59:59.123456789Z"
        );
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000000000Z");
    }

    #[test]
    fn the_stream_covers_every_listener_when_the_name_is_a_token() {
        let config: NatsConfig = toml::from_str("servers = [\"nats://127.0.0.1:4222\"]").unwrap();
        assert_eq!(config.subject("ingest"), "frames.ingest");
        assert_eq!(config.stream_subject("ingest"), "frames.*");
        let config: NatsConfig =
            toml::from_str("servers = [\"nats://127.0.0.1:4222\"]\nsubject = \"f-{listener}\"")
                .unwrap();
        assert_eq!(config.stream_subject("ingest"), "f-ingest");
    }

    #[test]
    fn message_ids_are_the_stream_hex_and_the_seq() {
        let headers = ConnHeaders::new(
            HeaderFormat::Split,
            "ingest",
            "127.0.0.1:9".parse().unwrap(),
            3,
            &[0xab; 16],
        );
        assert_eq!(headers.stream_hex, "ab".repeat(16));
        assert_eq!(headers.connection.as_str(), "3");
        assert_eq!(headers.client.as_str(), "127.0.0.1:9");
    }

    #[test]
    fn only_a_puback_naming_the_stream_without_an_error_is_stored() {
        assert_eq!(stored(None, br#"{"stream":"FRAMES","seq":7}"#), Ok(false));
        assert_eq!(
            stored(None, br#"{"stream":"FRAMES","seq":7,"duplicate":true}"#),
            Ok(true)
        );
        let error =
            br#"{"error":{"code":503,"err_code":10077,"description":"insufficient resources"}}"#;
        assert!(
            stored(None, error)
                .unwrap_err()
                .contains("insufficient resources")
        );
        assert!(stored(None, br#"{"stream":"FRAMES","error":{"code":500}}"#).is_err());
        assert!(stored(None, b"{}").is_err());
        assert!(stored(None, b"").is_err());
        assert!(stored(None, b"+OK").is_err());
        // "No responders": no stream listens on the subject.
        let no_responders = async_nats::StatusCode::from_u16(503).ok();
        assert_eq!(stored(no_responders, b""), Err("status 503".to_owned()));
    }

    #[tokio::test]
    async fn answers_known_already_leave_in_order_without_a_sink() {
        let mut acks = Acks::default();
        let at = Instant::now();
        acks.answer((1, AckStatus::CrcMismatch, at));
        acks.answer((2, AckStatus::MalformedHeader, at));
        assert_eq!(acks.len(), 2);
        assert_eq!(acks.next().await, Some((1, AckStatus::CrcMismatch, at)));
        assert_eq!(acks.next().await, Some((2, AckStatus::MalformedHeader, at)));
        assert!(acks.is_empty());
        assert_eq!(acks.next().await, None);
    }

    #[test]
    fn each_frame_gets_the_nine_headers_from_the_batch_map() {
        let conn = Arc::new(ConnHeaders::new(
            HeaderFormat::Split,
            "ingest",
            "127.0.0.1:9".parse().unwrap(),
            3,
            &[0xab; 16],
        ));
        let mut batch = BatchHeaders::new(conn, value("2026-12-01T10:58:00.000000001Z"));
        let listener = value("ingest");
        let check = |headers: &HeaderMap, version: &str, crc: &str, seq: &str| {
            assert_eq!(headers.len(), 9);
            let get = |name: HeaderName| headers.get(name).map(|v| v.as_str().to_owned());
            assert_eq!(get(MSG_ID).unwrap(), format!("{}-{seq}", "ab".repeat(16)));
            assert_eq!(get(SEQ).unwrap(), seq);
            assert_eq!(get(VERSION).unwrap(), version);
            assert_eq!(get(CRC_SIZE).unwrap(), crc);
            assert_eq!(get(CLIENT).unwrap(), "127.0.0.1:9");
            assert_eq!(get(LISTENER).unwrap(), "ingest");
            assert_eq!(get(CONNECTION).unwrap(), "3");
            assert_eq!(get(STREAM).unwrap(), "ab".repeat(16));
            assert_eq!(get(RECEIVED).unwrap(), "2026-12-01T10:58:00.000000001Z");
            assert_eq!(headers.get_all(MSG_ID).count(), 1);
            assert_eq!(headers.get_all(SEQ).count(), 1);
        };
        let first = batch.frame(&listener, 2, 4, 7);
        let second = batch.frame(&listener, 2, 4, 8);
        // Another version or crc_size in the same batch rebuilds the shared map.
        let third = batch.frame(&listener, 1, 2, 9);
        let fourth = batch.frame(&listener, 2, 4, 10);
        check(&first, "2", "4", "7");
        check(&second, "2", "4", "8");
        check(&third, "1", "2", "9");
        check(&fourth, "2", "4", "10");
    }

    #[test]
    fn compact_headers_are_the_id_the_frame_and_the_source() {
        let conn = Arc::new(ConnHeaders::new(
            HeaderFormat::Compact,
            "ingest",
            "[::1]:9".parse().unwrap(),
            3,
            &[0xab; 16],
        ));
        let mut batch = BatchHeaders::new(conn, value("2026-12-01T10:58:00.000000001Z"));
        let listener = value("ingest");
        for (version, crc, seq) in [(2, 4, 7), (1, 2, 8), (2, 0, u64::MAX)] {
            let headers = batch.frame(&listener, version, crc, seq);
            assert_eq!(headers.len(), 3);
            let get = |name: HeaderName| headers.get(name).map(|v| v.as_str().to_owned());
            assert_eq!(get(MSG_ID).unwrap(), format!("{}-{seq}", "ab".repeat(16)));
            assert_eq!(
                get(FRAME).unwrap(),
                format!("v={version};crc={crc};seq={seq};received=2026-12-01T10:58:00.000000001Z")
            );
            assert_eq!(
                get(SOURCE).unwrap(),
                format!(
                    "client=[::1]:9;listener=ingest;conn=3;stream={}",
                    "ab".repeat(16)
                )
            );
            for name in [
                SEQ, VERSION, CRC_SIZE, CLIENT, LISTENER, CONNECTION, STREAM, RECEIVED,
            ] {
                assert!(headers.get(name).is_none());
            }
        }
    }

    #[test]
    fn a_listener_name_cannot_break_the_source_pairs_apart() {
        let source = |listener: &str| {
            ConnHeaders::new(
                HeaderFormat::Compact,
                listener,
                "127.0.0.1:9".parse().unwrap(),
                0,
                &[0; 16],
            )
            .source
            .as_str()
            .to_owned()
        };
        let pairs = |source: &str| source.split(';').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(pairs(&source("in;gest=1%"))[1], "listener=in%3Bgest%3D1%25");
        assert_eq!(pairs(&source("a b\r\nc"))[1], "listener=a%20b%0D%0Ac");
        assert_eq!(pairs(&source("é"))[1], "listener=%C3%A9");
        for hostile in [
            "",
            ";",
            "=",
            "%",
            "x;conn=9",
            "\r\nNats-Msg-Id: x",
            "\u{7f}\t",
        ] {
            let source = source(hostile);
            assert_eq!(pairs(&source).len(), 4, "{hostile:?} gave {source:?}");
            assert!(source.bytes().all(|b| b.is_ascii_graphic()), "{source:?}");
            assert!(source.contains(";conn=0;stream="), "{source:?}");
        }
    }

    /// Every value of a compact header read back as the README's grammar says (what the
    /// client's `consume --count` and the e2e check do): a `%` is always followed by two hex
    /// digits, and the decoded value is the one written.
    fn decode_strictly(value: &str) -> Option<String> {
        let mut decoded = Vec::new();
        let mut rest = value.as_bytes();
        while let Some((&byte, tail)) = rest.split_first() {
            rest = match (byte, tail) {
                (b'%', [high, low, tail @ ..]) => {
                    let high = char::from(*high).to_digit(16)?;
                    let low = char::from(*low).to_digit(16)?;
                    decoded.push(u8::try_from(high * 16 + low).ok()?);
                    tail
                }
                (byte, tail) if byte.is_ascii_graphic() && !matches!(byte, b'%' | b';' | b'=') => {
                    decoded.push(byte);
                    tail
                }
                _ => return None,
            };
        }
        String::from_utf8(decoded).ok()
    }

    /// A link-local IPv6 peer has a scope id, which `SocketAddr` writes after a `%`
    /// (`[fe80::1%2]:9`): raw in `client=`, it is a broken escape, and a reader cannot get the
    /// client back (the client's `find_pair` reads the pair as absent, the e2e check fails).
    #[test]
    fn a_client_address_with_a_scope_id_reads_back() {
        for client in ["[fe80::1%2]:9", "127.0.0.1:9", "[::1]:9"] {
            let client: SocketAddr = client.parse().unwrap();
            let source = ConnHeaders::new(HeaderFormat::Compact, "ingest", client, 0, &[0; 16])
                .source
                .as_str()
                .to_owned();
            let value = source
                .split(';')
                .find_map(|pair| pair.strip_prefix("client="))
                .unwrap_or_else(|| panic!("no client= in {source:?}"));
            assert_eq!(
                decode_strictly(value),
                Some(client.to_string()),
                "{source:?}"
            );
        }
    }

    fn config_of(text: &str) -> NatsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_failed_connection_is_logged_at_once_at_each_change_and_every_30_s() {
        let log = ConnectLog::new(&config_of("servers = [\"nats://127.0.0.1:4222\"]"));
        let start = Instant::now();
        let io = "client error: nats: IO error";
        assert_eq!(log.note(io, start), Some(0));
        assert_eq!(log.note(io, start + Duration::from_secs(2)), None);
        assert_eq!(log.note(io, start + Duration::from_secs(4)), None);
        // Another error: at once, its own count from 0.
        let refused = "server error: authorization violation";
        assert_eq!(log.note(refused, start + Duration::from_secs(5)), Some(0));
        assert_eq!(log.note(refused, start + Duration::from_secs(6)), None);
        assert_eq!(log.note(refused, start + Duration::from_secs(35)), Some(1));
        // Connected: the next failure is news again.
        log.reset();
        assert_eq!(log.note(refused, start + Duration::from_secs(36)), Some(0));
    }

    #[test]
    fn the_hint_says_where_to_look() {
        let plain = ConnectLog::new(&config_of("servers = [\"nats://127.0.0.1:4222\"]"));
        assert!(!plain.tls);
        assert_eq!(plain.servers, "nats://127.0.0.1:4222");
        for tls in [
            "servers = [\"tls://127.0.0.1:4222\"]",
            "servers = [\"nats://a:1\"]\ntls_required = true",
            "servers = [\"nats://a:1\"]\ntls_ca_file = \"/ca.pem\"",
        ] {
            assert!(ConnectLog::new(&config_of(tls)).tls, "{tls}");
        }
        let io = "client error: nats: IO error";
        assert!(
            connect_hint("server error: authorization violation", None, false).contains("login")
        );
        assert!(connect_hint(io, None, true).contains("tls_ca_file"));
        assert!(connect_hint(io, None, false).contains("reachable"));
        assert!(connect_hint(io, Some("IO error: Connection refused"), true).contains("reachable"));
        let unknown = Some("IO error: invalid peer certificate: UnknownIssuer");
        assert!(connect_hint(io, unknown, false).contains("tls_ca_file"));
        assert!(connect_hint("client error: TLS error", None, false).contains("TLS"));
    }

    #[test]
    fn the_cause_async_nats_logs_at_debug_is_kept_for_its_server() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let addr: ServerAddr = "tls://127.0.0.1:47123".parse().unwrap();
        let other: ServerAddr = "tls://127.0.0.1:47124".parse().unwrap();
        let subscriber = tracing_subscriber::registry().with(connect_causes());
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "async_nats::connector", server = ?other, error = %"IO error: other", "connection attempt failed");
            tracing::debug!(target: "async_nats::connector", server = ?addr, error = %"IO error: invalid peer certificate: UnknownIssuer", "connection attempt failed");
            // Another message or target is not a cause.
            tracing::debug!(target: "async_nats::connector", server = ?addr, error = %"no", "attempting connection");
            tracing::debug!(target: "elsewhere", server = ?addr, error = %"no", "connection attempt failed");
        });
        let log = ConnectLog::new(&config_of("servers = [\"tls://127.0.0.1:47123\"]"));
        assert_eq!(
            connect_cause(&log.addrs).as_deref(),
            Some("IO error: invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(connect_cause(&log.addrs), None, "taken once");
        let elsewhere: ServerAddr = "tls://127.0.0.1:47125".parse().unwrap();
        assert_eq!(connect_cause(&[format!("{elsewhere:?}")]), None);
    }
}

/// Review of the connection warning (issue 11): tests that fail on the code as it is.
#[cfg(test)]
mod review_connect_log {
    use std::sync::{Arc, Mutex};

    use async_nats::{ClientError, ServerError};
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _};

    use super::*;

    /// The lines logged (plain text, no ANSI) while `f` runs, with the causes layer installed
    /// as `init_logging` does.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(tracing_subscriber::EnvFilter::new("info")),
            )
            .with(connect_causes());
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// async-nats's own debug line for one failed attempt (connector.rs, `try_connect`).
    fn attempt_failed(server: &str, error: &str) {
        let addr: ServerAddr = server.parse().unwrap();
        tracing::debug!(target: "async_nats::connector", server = ?addr, error = %error, "connection attempt failed");
    }

    fn config_of(text: &str) -> NatsConfig {
        toml::from_str(text).unwrap()
    }

    /// `nats://host` without a port is valid (async-nats connects to 4222), but the Debug
    /// text of its ServerAddr says `port: None`, not `port: Some(4222)`: the cause is never
    /// found, the line says "(not logged by async-nats)" though async-nats logged it.
    #[test]
    fn a_server_url_without_a_port_finds_its_cause() {
        let server = "nats://127.0.0.2";
        let error = "IO error: Connection refused (os error 111)";
        let _ = logged(|| attempt_failed(server, error));
        let log = ConnectLog::new(&config_of(&format!("servers = [\"{server}\"]")));
        assert_eq!(log.addrs.len(), 1);
        assert_eq!(connect_cause(&log.addrs).as_deref(), Some(error));
    }

    /// The match is a substring test of the host in the whole Debug text of the address: a
    /// host `nats` (the usual container name) is in every address's `scheme: "nats"`, so
    /// another server's cause is shown for this listener.
    #[test]
    fn a_cause_of_another_host_named_like_the_scheme_is_not_taken() {
        let _ = logged(|| {
            attempt_failed(
                "nats://broker-b:47131",
                "IO error: invalid peer certificate: UnknownIssuer",
            );
        });
        let named: ServerAddr = "nats://nats:47131".parse().unwrap();
        assert_eq!(connect_cause(&[format!("{named:?}")]), None);
    }

    /// The same substring test: `10.0.0.1` is in `Ipv4(10.0.0.11)`.
    #[test]
    fn a_cause_of_a_host_whose_name_contains_this_one_is_not_taken() {
        let _ = logged(|| attempt_failed("nats://10.0.0.11:47132", "IO error: timed out"));
        let shorter: ServerAddr = "nats://10.0.0.1:47132".parse().unwrap();
        assert_eq!(connect_cause(&[format!("{shorter:?}")]), None);
    }

    /// The hint looks at the event's error and the config only, not at the cause: a
    /// `nats://` URL to a server whose INFO requires TLS (async-nats then upgrades) that
    /// fails with UnknownIssuer is told "is nats-server running and reachable".
    #[test]
    fn a_tls_cause_gets_the_tls_hint() {
        let server = "nats://127.0.0.6:47137";
        let log = ConnectLog::new(&config_of(&format!("servers = [\"{server}\"]")));
        let stats = ListenerStats::default();
        let lines = logged(|| {
            attempt_failed(server, "IO error: invalid peer certificate: UnknownIssuer");
            let io = Event::ClientError(ClientError::Other("IO error".into()));
            on_event(&io, &stats, &Notify::new(), "frames", &log);
        });
        let line = lines
            .iter()
            .find(|line| line.contains("UnknownIssuer"))
            .expect("a line with the cause");
        assert!(line.contains("tls"), "{line}");
    }

    /// A refused login returns from async-nats's `try_connect` before its "connection attempt
    /// failed" line: the event then gets the newest cause kept for that server, from an
    /// earlier attempt (here: when nats-server was down; the same happens with another
    /// listener's attempt to the same server).
    #[test]
    fn a_refused_login_is_not_given_an_older_attempts_cause() {
        let server = "nats://127.0.0.3:47133";
        let log = ConnectLog::new(&config_of(&format!("servers = [\"{server}\"]")));
        let stats = ListenerStats::default();
        let lines = logged(|| {
            attempt_failed(server, "IO error: Connection refused (os error 111)");
            let refused = Event::ClientError(ClientError::Other("authorization violation".into()));
            on_event(&refused, &stats, &Notify::new(), "frames", &log);
        });
        let line = lines
            .iter()
            .find(|line| line.contains("authorization violation"))
            .expect("a line for the refused login");
        assert!(!line.contains("Connection refused"), "{line}");
    }

    /// A server error while connected (here a permissions violation, which nats-server sends
    /// on a live connection) is logged as "cannot connect or was refused; frames get status 5
    /// until it connects" with the hint "is nats-server running and reachable": wrong.
    #[test]
    fn a_server_error_on_a_live_connection_is_not_called_a_failed_connection() {
        let log = ConnectLog::new(&config_of("servers = [\"nats://127.0.0.4:47134\"]"));
        let stats = ListenerStats::default();
        let wake = Notify::new();
        let lines = logged(|| {
            on_event(&Event::Connected, &stats, &wake, "frames", &log);
            let denied = Event::ServerError(ServerError::Other(
                "Permissions Violation for Publish to \"frames.frames\"".into(),
            ));
            on_event(&denied, &stats, &wake, "frames", &log);
        });
        let line = lines
            .iter()
            .find(|line| line.contains("Permissions Violation"))
            .expect("a line for the server error");
        assert!(!line.contains("cannot connect"), "{line}");
        assert!(!line.contains("reachable"), "{line}");
    }

    /// Two servers failing with different causes (async-nats tries them in a shuffled order,
    /// one event per round): the newest cause alternates, each round is a "change", and
    /// every attempt (every <= 2 s) is logged: the 30 s limit does not hold.
    #[test]
    fn two_servers_failing_differently_do_not_log_every_attempt() {
        let (a, b) = ("nats://127.0.0.5:47135", "nats://127.0.0.5:47136");
        let log = ConnectLog::new(&config_of(&format!("servers = [\"{a}\", \"{b}\"]")));
        let stats = ListenerStats::default();
        let wake = Notify::new();
        let io = Event::ClientError(ClientError::Other("IO error".into()));
        let lines = logged(|| {
            for _round in 0..3 {
                attempt_failed(a, "IO error: Connection refused (os error 111)");
                on_event(&io, &stats, &wake, "frames", &log);
                attempt_failed(b, "IO error: invalid peer certificate: UnknownIssuer");
                on_event(&io, &stats, &wake, "frames", &log);
            }
        });
        let warned = lines
            .iter()
            .filter(|line| line.contains("cannot connect"))
            .count();
        assert!(
            warned <= 2,
            "{warned} lines for 6 attempts in a few ms:\n{lines:#?}"
        );
    }
}

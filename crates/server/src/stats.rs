//! Per-listener counters, logged as one `stats` event per listener every
//! `[server] stats_interval` and once more at shutdown, and read by the
//! admin endpoint's `/metrics` at scrape time (see [`crate::metrics`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tracing::info;

/// What a listener has done since it started. Counters only grow, except
/// `active`. Updated with relaxed atomics, once per batch or session.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Which counters the periodic `stats` line shows (the mode says, see
    /// `ModeConfig::stats_kind` in the `mode` module).
    pub kind: StatsKind,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections being served now.
    pub active: AtomicU64,
    /// crc-tcp: frames acked ok.
    pub frames_ok: AtomicU64,
    /// crc-tcp: frames answered with a non-ok status (CRC mismatch, handler
    /// failure, or a bad header that closed the connection).
    pub frames_rejected: AtomicU64,
    /// socks5: sessions that got a request.
    pub sessions: AtomicU64,
    /// socks5: those that ended with a failure reply or an error.
    pub sessions_failed: AtomicU64,
    /// PROXY protocol: connections refused because they came from outside
    /// `proxy_protocol_from`.
    pub proxy_untrusted: AtomicU64,
    /// PROXY protocol: connections closed because their header was malformed,
    /// cut short, or not complete within `proxy_protocol_timeout`.
    pub proxy_header_failed: AtomicU64,
    /// Connections refused by `max_connections_per_ip`.
    pub per_ip_refused: AtomicU64,
    /// Bytes received from clients (crc-tcp: frame bytes; socks5: relayed up).
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients (crc-tcp: acks and echoes; socks5: relayed down).
    pub bytes_out: AtomicU64,
    /// socks5: sessions refused by an access rule (a denied destination or BIND
    /// peer, or a client the rules deny everything).
    pub rule_refused: AtomicU64,
    /// crc-tcp: frames by ack status, indexed by the status code
    /// ([`FRAME_STATUSES`] names them); counted with or without `ack`.
    pub frames: [AtomicU64; FRAME_STATUSES.len()],
    /// crc-tcp with `ack = true`: from the read that completed a frame to
    /// its ack written.
    pub frame_ack: DurationHistogram,
    /// crc-tcp with a file sink: how long each sync of the file took.
    pub sink_sync: Arc<DurationHistogram>,
    /// socks5: what the sessions asked for and how they ended.
    pub socks5: Socks5Stats,
    /// `access_log` lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// crc-tcp with a `nats` handler: its connection and publishes.
    pub nats: NatsStats,
    /// socks5 and http: sessions by the protocol they spoke ([`PROTOCOLS`]).
    pub protocols: [AtomicU64; PROTOCOLS.len()],
    /// The HTTP door: sessions by method class ([`HTTP_METHODS`]) and status class of the last
    /// response ([`HTTP_STATUSES`]).
    pub http: [[AtomicU64; HTTP_STATUSES.len()]; HTTP_METHODS.len()],
}

/// The `protocol` label of `netkit_proxy_sessions_total`, by
/// [`crate::modes::doors::ProtocolName::index`].
pub const PROTOCOLS: [&str; 3] = ["socks5", "socks4", "http"];

/// The `method` label of `netkit_http_sessions_total`: a CONNECT tunnel, or forwarded
/// absolute-form requests (and anything answered by the proxy itself).
pub const HTTP_METHODS: [&str; 2] = ["connect", "other"];

/// The `status` label of `netkit_http_sessions_total`: the class of the last status sent;
/// `none` when the connection ended before a response.
pub const HTTP_STATUSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The state of a `nats` handler's stream, as [`NatsStats::stream`] holds it.
pub mod stream_state {
    /// Not looked at yet (no connection so far).
    pub const UNKNOWN: u8 = 0;
    /// Found (or created).
    pub const OK: u8 = 1;
    /// Missing, and `create_stream` is not set.
    pub const MISSING: u8 = 2;
    /// Looking it up or creating it failed.
    pub const FAILED: u8 = 3;
}

/// The `nats` handler's part of [`ListenerStats`].
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Whether the listener has a `nats` handler at all.
    pub enabled: AtomicBool,
    /// Whether the handler is connected to a NATS server now.
    pub connected: AtomicBool,
    /// The stream, as [`stream_state`] says.
    pub stream: AtomicU8,
    /// Connections to NATS lost.
    pub disconnects: AtomicU64,
    /// From a frame handed to the client to JetStream's ack (or the failure).
    pub publish: DurationHistogram,
}

impl NatsStats {
    /// Why the listener is not ready, if it has a `nats` handler that cannot store frames now.
    #[must_use]
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.enabled.load(Relaxed) {
            return None;
        }
        if !self.connected.load(Relaxed) {
            return Some("nats: not connected");
        }
        match self.stream.load(Relaxed) {
            stream_state::OK => None,
            stream_state::MISSING => {
                Some("nats: the stream does not exist (create it, or set create_stream)")
            }
            stream_state::FAILED => Some("nats: the stream could not be looked up or created"),
            _ => Some("nats: the stream is being looked up"),
        }
    }
}

/// What a listener counts, for its `stats` line: frames (crc-tcp) or sessions (the proxies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatsKind {
    /// Sessions: `sessions` and `sessions_failed`.
    #[default]
    Sessions,
    /// Frames: `frames_ok` and `frames_rejected`.
    Frames,
}

/// The ack status names, by status code: the `status` label of `netkit_frames_total`.
pub const FRAME_STATUSES: [&str; 7] = [
    "ok",
    "crc_mismatch",
    "unsupported_version",
    "unsupported_crc_size",
    "too_large",
    "handler_failed",
    "malformed_header",
];

/// The socks5 command names (as `commands` in the config writes them), by
/// [`Socks5Stats::requests`] index.
pub const SOCKS5_COMMANDS: [&str; 3] = ["connect", "bind", "udp-associate"];

/// The socks5 reply names, by reply code; the last, `none`, is a request
/// that got no reply (the client left, or shutdown came, before one).
pub const SOCKS5_REPLIES: [&str; 10] = [
    "succeeded",
    "general_failure",
    "not_allowed",
    "network_unreachable",
    "host_unreachable",
    "connection_refused",
    "ttl_expired",
    "command_not_supported",
    "address_type_not_supported",
    "none",
];

/// Why a socks5 session ended before a request, by
/// [`Socks5Stats::handshake_failures`] index.
pub const HANDSHAKE_FAILURES: [&str; 7] = [
    "protocol",
    "no_acceptable_method",
    "auth",
    "timeout",
    "closed",
    "cancelled",
    "other",
];

/// The socks5 part of [`ListenerStats`], updated once per session.
#[derive(Debug)]
pub struct Socks5Stats {
    /// Requests by command ([`SOCKS5_COMMANDS`]) and last reply ([`SOCKS5_REPLIES`]).
    pub requests: [[AtomicU64; SOCKS5_REPLIES.len()]; SOCKS5_COMMANDS.len()],
    /// Sessions that ended before a request, by reason ([`HANDSHAKE_FAILURES`]).
    pub handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len()],
    /// Failed username/password logins.
    pub auth_failures: AtomicU64,
    /// CONNECT: the time to open the target.
    pub connect: DurationHistogram,
    /// Sessions that got a request: from accept to close.
    pub session: DurationHistogram,
    /// UDP ASSOCIATE: datagrams relayed from clients.
    pub datagrams_up: AtomicU64,
    /// UDP ASSOCIATE: datagrams relayed to clients.
    pub datagrams_down: AtomicU64,
}

impl Default for Socks5Stats {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            handshake_failures: Default::default(),
            auth_failures: AtomicU64::new(0),
            connect: DurationHistogram::new(LATENCY_BUCKETS),
            session: DurationHistogram::new(SESSION_BUCKETS),
            datagrams_up: AtomicU64::new(0),
            datagrams_down: AtomicU64::new(0),
        }
    }
}

/// Upper bounds (seconds) for latencies: acks, syncs, connects.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds (seconds) for session lengths.
pub const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// A histogram of durations kept in relaxed atomics: observing takes no
/// lock, and a batch of equal observations is one call. The admin endpoint
/// encodes it with `prometheus-client` at scrape time.
#[derive(Debug)]
pub struct DurationHistogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (the `+Inf` bucket).
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl DurationHistogram {
    /// An empty histogram with these bucket upper bounds (seconds, ascending).
    #[must_use]
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `value`.
    pub fn observe_n(&self, value: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let seconds = value.as_secs_f64();
        let index = self.bounds.partition_point(|&bound| bound < seconds);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(n, Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos.saturating_mul(n), Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    /// Records one observation of `value`.
    pub fn observe(&self, value: Duration) {
        self.observe_n(value, 1);
    }

    /// How many observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// (sum in seconds, count, per-bucket (upper bound, count) not cumulative),
    /// as `prometheus-client` encodes a histogram. The count is the buckets'
    /// total, so `_count` always equals the `+Inf` bucket; read without a lock,
    /// the sum may hold an observation the buckets do not yet.
    #[must_use]
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|bucket| bucket.load(Relaxed)))
            .collect();
        let sum = Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        (sum, count, buckets)
    }
}

impl ListenerStats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Logs the counters of listener `name` in `mode`.
    pub fn log(&self, name: &str, mode: &'static str) {
        let get = |counter: &AtomicU64| counter.load(Relaxed);
        let (accepted, active) = (get(&self.accepted), get(&self.active));
        let (bytes_in, bytes_out) = (get(&self.bytes_in), get(&self.bytes_out));
        match self.kind {
            StatsKind::Frames => info!(
                listener = name,
                mode,
                accepted,
                active,
                frames_ok = get(&self.frames_ok),
                frames_rejected = get(&self.frames_rejected),
                bytes_in,
                bytes_out,
                per_ip_refused = get(&self.per_ip_refused),
                proxy_untrusted = get(&self.proxy_untrusted),
                proxy_header_failed = get(&self.proxy_header_failed),
                "stats"
            ),
            StatsKind::Sessions => info!(
                listener = name,
                mode,
                accepted,
                active,
                sessions = get(&self.sessions),
                sessions_failed = get(&self.sessions_failed),
                bytes_in,
                bytes_out,
                per_ip_refused = get(&self.per_ip_refused),
                proxy_untrusted = get(&self.proxy_untrusted),
                proxy_header_failed = get(&self.proxy_header_failed),
                "stats"
            ),
        }
    }
}

/// Holds one `active` connection for as long as it lives.
pub(crate) struct ActiveGuard<'a>(&'a ListenerStats);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(stats: &'a ListenerStats) -> Self {
        stats.accepted.fetch_add(1, Relaxed);
        stats.active.fetch_add(1, Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = DurationHistogram::new(&[0.001, 0.01]);
        histogram.observe(Duration::from_micros(1000)); // exactly on a bound: le="0.001"
        histogram.observe_n(Duration::from_millis(5), 3);
        histogram.observe(Duration::from_secs(2)); // past every bound: +Inf only
        histogram.observe_n(Duration::from_secs(1), 0); // nothing
        let (sum, count, buckets) = histogram.snapshot();
        assert_eq!(count, 5);
        assert_eq!(
            buckets,
            vec![(0.001, 1), (0.01, 3), (f64::INFINITY, 1)],
            "per bucket, not cumulative"
        );
        assert!((sum - (0.001 + 0.015 + 2.0)).abs() < 1e-9, "{sum}");
    }
}

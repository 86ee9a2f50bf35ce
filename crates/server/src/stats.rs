//! Per-listener counters, logged as one `stats` event per listener every
//! `[server] stats_interval` and once more at shutdown.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing::info;

/// What a listener has done since it started. Counters only grow, except
/// `active`. Updated with relaxed atomics, once per batch or session.
#[derive(Debug, Default)]
pub struct ListenerStats {
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
        match mode {
            "crc-tcp" => info!(
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
            _ => info!(
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

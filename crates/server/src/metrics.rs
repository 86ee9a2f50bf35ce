//! The `/metrics` of the admin endpoint: a `prometheus-client` collector
//! that reads every listener's [`ListenerStats`] at scrape time (so serving
//! pays nothing for metrics beyond the atomics it already keeps), the
//! build, the config reloads and the process (from `/proc/self`).
//!
//! Every `netkit_` sample has `listener` and `mode` labels; no label takes a
//! client address, a user name or any other unbounded value.

use std::sync::{
    Arc, PoisonError, RwLock,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::stats::{
    DurationHistogram, FRAME_STATUSES, HANDSHAKE_FAILURES, HTTP_METHODS, HTTP_STATUSES,
    ListenerStats, PROTOCOLS, SOCKS5_COMMANDS, SOCKS5_REPLIES,
};

/// Config reloads (SIGHUP), by result: `netkit_config_reloads_total{result}`.
#[derive(Debug, Default)]
pub struct Reloads {
    /// Reloads applied.
    pub ok: AtomicU64,
    /// Reloads refused (the new config was invalid; the old one kept running).
    pub error: AtomicU64,
}

/// One listener as the metrics name it.
#[derive(Debug, Clone)]
pub struct ListenerEntry {
    /// `name` of the listener.
    pub name: String,
    /// Its mode (`crc-tcp`, `socks5`).
    pub mode: &'static str,
    /// Its counters.
    pub stats: Arc<ListenerStats>,
}

/// The listeners `/metrics` shows: those running now (a reload adds and removes some).
pub type Listeners = Arc<RwLock<Vec<ListenerEntry>>>;

/// The collector behind `/metrics`: reads the listeners running at scrape time.
#[derive(Debug)]
struct LiveCollector {
    listeners: Listeners,
    reloads: Arc<Reloads>,
}

impl Collector for LiveCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        // A copy of a few names and pointers, so no lock is held while encoding.
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        NetkitCollector {
            listeners,
            reloads: Arc::clone(&self.reloads),
        }
        .encode(encoder)
    }
}

/// The listeners of one scrape and the reloads, encoded.
#[derive(Debug)]
struct NetkitCollector {
    listeners: Vec<ListenerEntry>,
    reloads: Arc<Reloads>,
}

/// The registry `/metrics` encodes: the listeners' metrics and the process's.
#[must_use]
pub fn registry(listeners: Listeners, reloads: Arc<Reloads>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LiveCollector { listeners, reloads }));
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// Renders `registry` in the Prometheus text format (0.0.4).
///
/// # Errors
///
/// Only when a collector fails to write, which a `String` never makes it.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

fn counter(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_family(labels)?)
}

fn gauge(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: i64,
) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_family(labels)?)
}

fn histogram(
    encoder: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    histogram: &DurationHistogram,
) -> std::fmt::Result {
    let (sum, count, buckets) = histogram.snapshot();
    encoder
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl NetkitCollector {
    fn of_mode(&self, mode: &str) -> impl Iterator<Item = &ListenerEntry> {
        self.listeners.iter().filter(move |l| l.mode == mode)
    }

    /// One family, written only when a listener of `mode` (any if `None`) has it.
    fn family(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        metric_type: MetricType,
        mode: Option<&str>,
        mut samples: impl FnMut(
            &mut MetricEncoder<'_>,
            &ListenerEntry,
            Labels<'_, 2>,
        ) -> std::fmt::Result,
    ) -> std::fmt::Result {
        let mut listeners = self
            .listeners
            .iter()
            .filter(|l| mode.is_none_or(|mode| l.mode == mode))
            .peekable();
        if listeners.peek().is_none() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
        for listener in listeners {
            let labels = [
                ("listener", listener.name.as_str()),
                ("mode", listener.mode),
            ];
            samples(&mut metric, listener, labels)?;
        }
        Ok(())
    }
}

impl Collector for NetkitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        self.family(
            e,
            "netkit_connections_accepted",
            "Connections accepted.",
            MetricType::Counter,
            None,
            |m, l, labels| counter(m, &labels, load(&l.stats.accepted)),
        )?;
        self.family(
            e,
            "netkit_connections_active",
            "Connections being served now.",
            MetricType::Gauge,
            None,
            |m, l, labels| gauge(m, &labels, gauge_value(load(&l.stats.active))),
        )?;
        self.family(
            e,
            "netkit_connections_rejected",
            "Connections refused or closed before being served, by reason.",
            MetricType::Counter,
            None,
            |m, l, [listener, mode]| {
                let s = &l.stats;
                let mut reasons = vec![
                    ("per_ip_limit", load(&s.per_ip_refused)),
                    ("proxy_untrusted", load(&s.proxy_untrusted)),
                    ("proxy_header", load(&s.proxy_header_failed)),
                ];
                if l.mode != "crc-tcp" {
                    reasons.push(("rule", load(&s.rule_refused)));
                }
                for (reason, value) in reasons {
                    counter(m, &[listener, mode, ("reason", reason)], value)?;
                }
                Ok(())
            },
        )?;
        self.family(
            e,
            "netkit_bytes",
            "Bytes from clients (in) and to clients (out).",
            MetricType::Counter,
            None,
            |m, l, [listener, mode]| {
                counter(
                    m,
                    &[listener, mode, ("direction", "in")],
                    load(&l.stats.bytes_in),
                )?;
                counter(
                    m,
                    &[listener, mode, ("direction", "out")],
                    load(&l.stats.bytes_out),
                )
            },
        )?;
        self.family(
            e,
            "netkit_access_log_dropped",
            "Access log lines dropped because the writer fell behind.",
            MetricType::Counter,
            None,
            |m, l, labels| counter(m, &labels, load(&l.stats.access_log_dropped)),
        )?;
        self.crc_tcp(e)?;
        self.socks5(e)?;
        self.doors(e)?;
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        let mut build = e.encode_descriptor(
            "netkit_build_info",
            "The running build; always 1.",
            None,
            MetricType::Gauge,
        )?;
        gauge(&mut build, &version, 1)?;
        let mut reloads = e.encode_descriptor(
            "netkit_config_reloads",
            "Config reloads, by result.",
            None,
            MetricType::Counter,
        )?;
        counter(&mut reloads, &[("result", "ok")], load(&self.reloads.ok))?;
        counter(
            &mut reloads,
            &[("result", "error")],
            load(&self.reloads.error),
        )
    }
}

impl NetkitCollector {
    fn crc_tcp(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mode = Some("crc-tcp");
        self.family(
            e,
            "netkit_frames",
            "Frames, by ack status.",
            MetricType::Counter,
            mode,
            |m, l, [listener, mode]| {
                for (status, value) in FRAME_STATUSES.iter().zip(&l.stats.frames) {
                    counter(m, &[listener, mode, ("status", status)], load(value))?;
                }
                Ok(())
            },
        )?;
        self.family(
            e,
            "netkit_frame_ack_seconds",
            "From the read that completed a frame to its ack written (ack = true).",
            MetricType::Histogram,
            mode,
            |m, l, labels| histogram(m, &labels, &l.stats.frame_ack),
        )?;
        self.nats(e)?;
        if self
            .of_mode("crc-tcp")
            .any(|l| l.stats.sink_sync.count() > 0)
        {
            self.family(
                e,
                "netkit_sink_sync_seconds",
                "How long each sync of the file sink took.",
                MetricType::Histogram,
                mode,
                |m, l, labels| match l.stats.sink_sync.count() {
                    0 => Ok(()), // no file sink, or none synced yet
                    _ => histogram(m, &labels, &l.stats.sink_sync),
                },
            )?;
        }
        Ok(())
    }

    /// The `nats` handler's families, for the listeners that have one.
    fn nats(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let with_nats = |l: &ListenerEntry| l.stats.nats.enabled.load(Relaxed);
        if !self.of_mode("crc-tcp").any(with_nats) {
            return Ok(());
        }
        let mode = Some("crc-tcp");
        self.family(
            e,
            "netkit_nats_connected",
            "Whether the nats handler is connected to a NATS server (1) or not (0).",
            MetricType::Gauge,
            mode,
            |m, l, labels| match with_nats(l) {
                true => gauge(m, &labels, i64::from(l.stats.nats.connected.load(Relaxed))),
                false => Ok(()),
            },
        )?;
        self.family(
            e,
            "netkit_nats_disconnects",
            "Connections to NATS lost.",
            MetricType::Counter,
            mode,
            |m, l, labels| match with_nats(l) {
                true => counter(m, &labels, load(&l.stats.nats.disconnects)),
                false => Ok(()),
            },
        )?;
        self.family(
            e,
            "netkit_nats_publish_seconds",
            "From a frame handed to the NATS client to JetStream's ack or the failure.",
            MetricType::Histogram,
            mode,
            |m, l, labels| match with_nats(l) {
                true => histogram(m, &labels, &l.stats.nats.publish),
                false => Ok(()),
            },
        )
    }

    /// The families of every proxy listener (`socks5`, `http`): sessions by protocol, and the
    /// HTTP door's sessions by method and status class. Only the pairs that happened.
    fn doors(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        if !self.listeners.iter().any(|l| l.mode != "crc-tcp") {
            return Ok(());
        }
        self.family(
            e,
            "netkit_proxy_sessions",
            "Proxy sessions, by the protocol the client spoke.",
            MetricType::Counter,
            None,
            |m, l, [listener, mode]| {
                for (protocol, value) in PROTOCOLS.iter().zip(&l.stats.protocols) {
                    let value = load(value);
                    if value > 0 {
                        counter(m, &[listener, mode, ("protocol", protocol)], value)?;
                    }
                }
                Ok(())
            },
        )?;
        self.family(
            e,
            "netkit_http_sessions",
            "HTTP proxy sessions, by method class (connect: a tunnel) and the class of the last status sent.",
            MetricType::Counter,
            None,
            |m, l, [listener, mode]| {
                for (method, statuses) in HTTP_METHODS.iter().zip(&l.stats.http) {
                    for (status, value) in HTTP_STATUSES.iter().zip(statuses) {
                        let value = load(value);
                        if value > 0 {
                            let labels = [listener, mode, ("method", method), ("status", status)];
                            counter(m, &labels, value)?;
                        }
                    }
                }
                Ok(())
            },
        )
    }

    fn socks5(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mode = Some("socks5");
        self.family(
            e,
            "netkit_socks5_requests",
            "Requests, by command and the last reply sent (none: the session ended before one).",
            MetricType::Counter,
            mode,
            |m, l, [listener, mode]| {
                for (command, replies) in SOCKS5_COMMANDS.iter().zip(&l.stats.socks5.requests) {
                    for (reply, value) in SOCKS5_REPLIES.iter().zip(replies) {
                        let value = load(value);
                        // Only the pairs that happened: 30 zero series per listener help no one.
                        if value > 0 {
                            counter(
                                m,
                                &[listener, mode, ("command", command), ("reply", reply)],
                                value,
                            )?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        self.family(
            e,
            "netkit_socks5_handshake_failures",
            "Sessions that ended before a request, by reason.",
            MetricType::Counter,
            mode,
            |m, l, [listener, mode]| {
                for (reason, value) in HANDSHAKE_FAILURES
                    .iter()
                    .zip(&l.stats.socks5.handshake_failures)
                {
                    counter(m, &[listener, mode, ("reason", reason)], load(value))?;
                }
                Ok(())
            },
        )?;
        self.family(
            e,
            "netkit_socks5_auth_failures",
            "Failed username/password logins.",
            MetricType::Counter,
            mode,
            |m, l, labels| counter(m, &labels, load(&l.stats.socks5.auth_failures)),
        )?;
        self.family(
            e,
            "netkit_socks5_connect_seconds",
            "CONNECT: the time to open the target (resolving and every attempt).",
            MetricType::Histogram,
            mode,
            |m, l, labels| histogram(m, &labels, &l.stats.socks5.connect),
        )?;
        self.family(
            e,
            "netkit_socks5_session_seconds",
            "Sessions that got a request: from accept to close.",
            MetricType::Histogram,
            mode,
            |m, l, labels| histogram(m, &labels, &l.stats.socks5.session),
        )?;
        self.family(
            e,
            "netkit_socks5_udp_datagrams",
            "UDP ASSOCIATE datagrams relayed from clients (in) and to them (out).",
            MetricType::Counter,
            mode,
            |m, l, [listener, mode]| {
                let s = &l.stats.socks5;
                counter(
                    m,
                    &[listener, mode, ("direction", "in")],
                    load(&s.datagrams_up),
                )?;
                counter(
                    m,
                    &[listener, mode, ("direction", "out")],
                    load(&s.datagrams_down),
                )
            },
        )
    }
}

/// The standard process metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says; a field it cannot read is left out.
#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessSample {
    fn read() -> Self {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time(&text));
        let field = |index: usize| -> Option<u64> { fields.as_ref()?.get(index)?.parse().ok() };
        // Fields after the command, from field 3 (`state`) on: utime is field 14, stime 15,
        // starttime 22, rss 24 (proc(5)).
        let at = |number: usize| field(number - 3);
        Self {
            cpu_seconds: at(14)
                .zip(at(15))
                .map(|(user, system)| (user + system) as f64 / ticks),
            resident_bytes: at(24).map(|pages| pages.saturating_mul(page)),
            start_time_seconds: at(22)
                .zip(boot)
                .map(|(start, boot)| boot as f64 + start as f64 / ticks),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
        }
    }
}

/// The fields of `/proc/self/stat` after `(comm)`, which may itself hold spaces and parentheses.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let sample = ProcessSample::read();
        if let Some(value) = sample.cpu_seconds {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(value).encode(m)?;
        }
        if let Some(value) = sample.resident_bytes {
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(gauge_value(value)).encode(m)?;
        }
        if let Some(value) = sample.start_time_seconds {
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(value).encode(m)?;
        }
        if let Some(value) = sample.open_fds {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(gauge_value(value)).encode(m)?;
        }
        if let Some(value) = sample.max_fds {
            let m = encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(gauge_value(value)).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_with_spaces_and_parentheses() {
        let text = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13";
        let fields = stat_fields(text).unwrap();
        assert_eq!(fields.first(), Some(&"S"));
        assert_eq!(fields.get(11), Some(&"11"));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn process_metrics_are_read_on_linux() {
        let sample = ProcessSample::read();
        if cfg!(target_os = "linux") {
            assert!(
                sample.resident_bytes.is_some_and(|bytes| bytes > 0),
                "{sample:?}"
            );
            assert!(sample.open_fds.is_some_and(|fds| fds > 0), "{sample:?}");
            assert!(sample.cpu_seconds.is_some(), "{sample:?}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let start = sample.start_time_seconds.unwrap();
            assert!(
                start <= now + 1.0 && start > now - 86_400.0 * 365.0,
                "{start} vs {now}"
            );
        }
    }
}

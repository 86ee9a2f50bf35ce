//! What a `bench` run measured: the report that `bench` fills and `output`
//! prints (a leaf, so that `bench` and `output` do not name each other).

use serde::Serialize;

use crate::resend::Summary;

/// The outcome of a run, as printed (`--json` prints exactly these fields).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Frames sent (and acked, with `--wait-ack`) by the connections that
    /// succeeded; with `--resend`, frames acked ok.
    pub(crate) frames: u64,
    /// Their payload bytes.
    pub(crate) payload_bytes: u64,
    /// Their bytes on the wire: headers, payloads and CRCs.
    pub(crate) wire_bytes: u64,
    /// Connections opened.
    pub(crate) connections: u64,
    /// Wall time of the run (see the module docs).
    pub(crate) seconds: f64,
    /// `frames / seconds`.
    pub(crate) frames_per_sec: f64,
    /// Payload MiB (2^20 bytes) per second.
    pub(crate) mib_per_sec: f64,
    /// Median ack latency in microseconds (`null` without `--wait-ack`).
    pub(crate) ack_p50_us: Option<u64>,
    /// 99th percentile ack latency in microseconds (`null` without `--wait-ack`).
    pub(crate) ack_p99_us: Option<u64>,
    /// Connections that failed (with `--resend`: streams that failed).
    pub(crate) errors: u64,
    /// With `--resend`: sent, acked_ok, resent, given_up, reconnects and
    /// streams (absent without it).
    #[serde(flatten)]
    pub(crate) resend: Option<Summary>,
}

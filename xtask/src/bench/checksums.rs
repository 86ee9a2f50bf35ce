//! CRC throughput: `proto::checksum` for each (version, size) pair over one
//! buffer, as a plain timed loop, and the `crc` crate's table CRC-32 as the
//! baseline. Figures are GB/s of payload (10^9 bytes per second).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use proto::{CrcSize, Version, checksum};

use super::{Plan, Results, Row};
use crate::peers::Pattern;

const GROUP: &str = "crc";
/// The most passes over the buffer per algorithm.
const MAX_PASSES: u32 = 1_000;

/// Times every algorithm.
pub(crate) fn run(plan: &Plan, results: &mut Results) {
    let buffer = Pattern::new(1).bytes(plan.crc_bytes);
    let mib = plan.crc_bytes >> 20;
    for (version, name) in [(Version::V1, "v1"), (Version::V2, "v2")] {
        for (size, algorithm) in [
            (CrcSize::Crc8, "CRC-8/SMBUS"),
            (CrcSize::Crc16, "CRC-16/ARC"),
            (
                CrcSize::Crc32,
                if version == Version::V1 {
                    "CRC-32/ISO-HDLC"
                } else {
                    "CRC-32C"
                },
            ),
        ] {
            let over = if version == Version::V1 {
                "over the hex text"
            } else {
                "over the bytes"
            };
            let (gbps, passes) = time(plan.crc_min_time, buffer.len(), || {
                checksum(version, size, black_box(&buffer))
            });
            results.rows.push(
                Row::new(
                    GROUP,
                    format!(
                        "proto::checksum {name} crc-size {} ({algorithm} {over})",
                        size.len()
                    ),
                    gbps,
                    "GB/s",
                )
                .note(format!("{passes} x {mib} MiB")),
            );
        }
    }
    let baseline = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let (gbps, passes) = time(plan.crc_min_time, buffer.len(), || {
        baseline.checksum(black_box(&buffer))
    });
    results.rows.push(
        Row::new(
            GROUP,
            "baseline: crc crate CRC-32/ISO-HDLC (default table)",
            gbps,
            "GB/s",
        )
        .note(format!("{passes} x {mib} MiB")),
    );
}

/// Runs `f` once to warm up, then until `min_time` has passed; GB/s of
/// `bytes` per pass and the number of passes.
fn time(min_time: Duration, bytes: usize, mut f: impl FnMut() -> u32) -> (f64, u32) {
    black_box(f());
    let start = Instant::now();
    let mut passes = 0;
    while passes < MAX_PASSES && (passes == 0 || start.elapsed() < min_time) {
        black_box(f());
        passes += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    (f64::from(passes) * bytes as f64 / seconds / 1e9, passes)
}

//! The bounds every part of the config is checked against, and the checks: the longest
//! duration, the most connections, the largest file, and [`invalid`] (the error naming a
//! key). A leaf: it names no other module of the crate, so `config`, the modes, the sinks
//! and `proxy_protocol` all use it without naming each other.

use std::{path::Path, time::Duration};

use anyhow::bail;

/// The longest any duration key may be: 30 days. Far past any sensible timeout, and far
/// below the ~292 billion years at which adding it to a clock reading overflows (a panic).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The shortest timeout or interval: tokio's timers count whole milliseconds, and a zero
/// period panics `tokio::time::interval`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The most `[server] workers`: far more than any machine has cores.
pub const MAX_WORKERS: usize = 1024;

/// The shortest `stats_interval` other than `0s` (off): one log line per listener per second.
pub const MIN_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The most connections one listener serves at once. Far below tokio's semaphore limit
/// (`usize::MAX >> 3` permits; more panics), and more than the open-file limit of most hosts.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// The most the server reads of a config file or a `users_file`: 16 MiB, far past any real
/// one, so a path such as `/dev/zero` is an error, not an endless read.
pub const MAX_FILE_LEN: u64 = 16 << 20;

/// Reads the text file at `path`, refusing one longer than `limit` bytes.
///
/// # Errors
///
/// When the file cannot be read, is not UTF-8, or is longer than `limit`.
pub fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        bail!("it is longer than {limit} bytes");
    }
    Ok(text)
}

/// A value in the config that failed a check: the key and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidValue {
    /// The key, as written in the file (e.g. `max_frame_size`).
    pub key: &'static str,
    /// What is wrong and what would be valid.
    pub reason: String,
}

/// Shorthand for an [`InvalidValue`] error.
pub fn invalid(key: &'static str, reason: impl Into<String>) -> anyhow::Error {
    InvalidValue {
        key,
        reason: reason.into(),
    }
    .into()
}

/// A duration as the config writes it (`1ms`, `30days`).
pub(crate) fn format_duration(
    value: Duration,
) -> humantime_serde::re::humantime::FormattedDuration {
    humantime_serde::re::humantime::format_duration(value)
}

/// Checks that the duration `value` of `key` lies in `[min, max]`.
///
/// # Errors
///
/// An [`InvalidValue`] that names the key, the value and the bound it crosses.
pub fn check_duration(
    key: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> anyhow::Result<()> {
    if value < min {
        return Err(invalid(
            key,
            format!(
                "{} is too short: it must be at least {}",
                format_duration(value),
                format_duration(min)
            ),
        ));
    }
    if value > max {
        return Err(invalid(
            key,
            format!(
                "{} is too long: it must be at most {}",
                format_duration(value),
                format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// Checks that the count `value` of `key` lies in `[min, max]`; `unit` (e.g. `" bytes"`)
/// follows the bound in the message.
///
/// # Errors
///
/// An [`InvalidValue`] that names the key, the value and the bound it crosses.
pub fn check_count(
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> anyhow::Result<()> {
    if value < min {
        return Err(invalid(
            key,
            format!("{value} is too small: it must be at least {min}{unit}"),
        ));
    }
    if value > max {
        return Err(invalid(
            key,
            format!("{value} is too large: it must be at most {max}{unit}"),
        ));
    }
    Ok(())
}

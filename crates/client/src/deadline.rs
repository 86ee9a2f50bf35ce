//! The one deadline helper: every network wait of the client goes through it.

use std::{future::Future, io, time::Duration};

use tokio::time;

/// Runs `io` for at most `limit`; running out of time is an
/// [`io::ErrorKind::TimedOut`] error that names the limit.
pub(crate) async fn within<T>(
    limit: Duration,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}", humantime::format_duration(limit)),
        ))
    })
}

//! Turning SIGINT and SIGTERM into a [`CancellationToken`], and SIGHUP into reload requests.

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Fires `shutdown` on the first SIGINT or SIGTERM; a second signal ends the
/// process at once with status 130, for an operator who will not wait.
///
/// # Errors
///
/// When the signal handlers cannot be installed.
pub fn on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!(signal = name, "shutdown requested");
        shutdown.cancel();
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(())
}

/// A message on the returned channel for each SIGHUP (a reload request). Signals that come
/// while a reload is still pending merge into it. Installed at start, so that a SIGHUP never
/// ends the process (its default action).
///
/// # Errors
///
/// When the signal handler cannot be installed.
pub fn on_hangup() -> std::io::Result<mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (requests, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match requests.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => break,
            }
        }
    });
    Ok(receiver)
}

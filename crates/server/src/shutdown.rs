//! Turning SIGINT and SIGTERM into a [`CancellationToken`].

use tokio::signal::unix::{SignalKind, signal};
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

//! [`Throttle`]: one warning per interval, with the count of the events it stands for
//! (a leaf, shared by the listeners and the access log).

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// At most one warning per this long about each kind of refused connection
/// (`max_connections_per_ip`, PROXY protocol), so that a flood does not
/// flood the log.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one warning through per [`REFUSED_LOG_INTERVAL`], with how many
/// events happened since the last one it let through.
#[derive(Debug, Default)]
pub(crate) struct Throttle(Mutex<ThrottleState>);

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Notes one event; `Some(count)` when a line is due now, with the
    /// events it stands for.
    pub(crate) fn note(&self) -> Option<u64> {
        // The counts stay usable whatever panicked while holding them.
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.unlogged += 1;
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSED_LOG_INTERVAL)
        {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

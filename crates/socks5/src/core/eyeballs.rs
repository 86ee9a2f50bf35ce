//! Connecting to the allowed addresses of a destination.

use std::net::SocketAddr;

use tracing::debug;

use super::{Opened, OwnListeners, attempt};
use crate::Error;
use crate::server::ServerOptions;

/// Tries `candidates` one after another; the first to connect wins.
pub(super) async fn race(
    candidates: Vec<SocketAddr>,
    options: &ServerOptions,
    own: &OwnListeners,
) -> Result<Opened, Error> {
    let mut last_failure = None;
    for address in candidates {
        match attempt(address, options, own).await {
            Ok(opened) => return Ok(opened),
            Err(error) => {
                debug!(%address, %error, "connect attempt failed");
                last_failure = Some(error);
            }
        }
    }
    Err(last_failure.unwrap_or_else(|| Error::Io(std::io::ErrorKind::NotFound.into())))
}

//! Binding a listening socket and the accept loop every mode shares: a
//! connection permit is taken before `accept`, each connection runs in a
//! tracked task inside a span that names the listener, mode and peer.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpListener, sync::Semaphore, time::sleep};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    registry::{Common, Service},
    stats::ActiveGuard,
};

/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent failure never becomes a hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accept queue length.
const BACKLOG: i32 = 1024;

/// Binds `common.bind` with `SO_REUSEADDR` (as the reference server does) and,
/// when asked, `SO_REUSEPORT`.
///
/// # Errors
///
/// When the address cannot be bound; the message names it.
pub(crate) fn bind(common: &Common) -> anyhow::Result<TcpListener> {
    let addr = common.bind;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| {
            format!(
                "listener {}: cannot create a socket for {addr}",
                common.name
            )
        })?;
    socket.set_reuse_address(true)?;
    if common.reuse_port {
        socket
            .set_reuse_port(true)
            .with_context(|| format!("listener {}: cannot set SO_REUSEPORT", common.name))?;
    }
    if addr.is_ipv6() {
        // Bind exactly the family the operator wrote; "[::]" does not also take IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                " (another socket holds the port: `ss -tanp 'sport = :{}'` shows which)",
                addr.port()
            )
        } else {
            String::new()
        };
        anyhow::Error::new(error).context(format!(
            "listener {}: cannot bind {addr}{hint}",
            common.name
        ))
    })?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("listener {}: cannot listen on {addr}", common.name))?;
    TcpListener::from_std(socket.into())
        .with_context(|| format!("listener {}: cannot register {addr}", common.name))
}

/// Accepts connections until `stop` fires, each served by `service` in a
/// task of `tasks`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    common: Common,
    mode: &'static str,
    service: Service,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(common.max_connections));
    let mut full_warned = false;
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !full_warned {
                    warn!(listener = %common.name, max_connections = common.max_connections,
                        "connection limit reached; new connections wait in the accept queue");
                    full_warned = true;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // the semaphore is never closed
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(listener = %common.name, %error, "accept failed");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if permits.available_permits() > common.max_connections / 2 {
            full_warned = false;
        }
        let service = service.clone();
        let stats = Arc::clone(&common.stats);
        let stop = stop.child_token();
        let span = info_span!("conn", listener = %common.name, mode, %peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                let _active = ActiveGuard::new(&stats);
                debug!("accepted");
                service.handle(stream, peer, stop).await;
            }
            .instrument(span),
        );
    }
    debug!(listener = %common.name, "stopped accepting");
}

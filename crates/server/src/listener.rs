//! Binding a listening socket and the accept loop every mode shares: a
//! connection permit is taken before `accept`, a connection over the
//! per-client-IP limit is closed at once, with the PROXY protocol on a
//! connection from outside `proxy_protocol_from` is closed at once and the
//! others' headers are read first, and each connection runs in a tracked task
//! inside a span that names the listener, mode and peer (the client).

use std::{
    collections::{HashMap, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::sleep,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, trace, warn};

use crate::{
    mode::{Common, Service},
    proxy_protocol,
    stats::{ActiveGuard, ListenerStats},
    throttle::Throttle,
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

/// The settings a listener serves new connections with: built once per start or reload,
/// and kept by the connections accepted under it until they end (a reload gives the
/// listener a new one; the old one lives on in its connections).
pub(crate) struct Generation {
    pub(crate) common: Common,
    pub(crate) mode: &'static str,
    pub(crate) service: Service,
    /// The connections served under these settings.
    pub(crate) tasks: TaskTracker,
    permits: Arc<Semaphore>,
    /// Permits held by accept loops waiting to accept (one per loop, with `[server]
    /// workers`): taken, but by no connection.
    idle: AtomicUsize,
    /// "connection limit reached" was logged, and the connections have not fallen below
    /// half the limit since (one warning per listener, however many loops).
    full_warned: AtomicBool,
    per_ip: Option<Arc<PerIp>>,
    proxy: Option<Arc<proxy_protocol::ProxySettings>>,
    name: Arc<str>,
}

impl Generation {
    pub(crate) fn new(common: Common, mode: &'static str, service: Service) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(common.max_connections)),
            idle: AtomicUsize::new(0),
            full_warned: AtomicBool::new(false),
            per_ip: common.max_connections_per_ip.map(PerIp::new),
            proxy: common.proxy_protocol.clone().map(Arc::new),
            name: Arc::from(common.name.as_str()),
            common,
            mode,
            service,
            tasks: TaskTracker::new(),
        })
    }
}

/// What stops a listener's connections: `stop` is the drain (as on SIGTERM: crc-tcp ends
/// after the frames in hand, socks5 handshakes end, tunnels run on), `kill` ends every
/// connection at once (after the drain timeout of a listener a reload removed).
#[derive(Clone)]
pub(crate) struct Stops {
    pub(crate) stop: CancellationToken,
    pub(crate) kill: CancellationToken,
    /// Every connection of the listener, whatever its generation.
    pub(crate) tasks: TaskTracker,
    /// The listener's rate-limited warnings, shared by its accept loops (one per worker).
    pub(crate) logs: Arc<Logs>,
}

/// Accepts connections until `stops.stop` fires, each served by the current
/// [`Generation`] of `current` in a task of `tasks` (and of the listener's and the
/// generation's trackers). A reload that keeps the socket sends a new generation on
/// `current`: the connections accepted from then on get it.
///
/// Without the PROXY protocol the TCP peer is the client, and the per-IP
/// limit is applied here, before the task starts. With it, a peer outside
/// `proxy_protocol_from` is closed here; the task reads the header, and the
/// client it names (or the peer, for `LOCAL` and unknown addresses) is the
/// one the per-IP limit, the span and the mode see.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    mut current: watch::Receiver<Arc<Generation>>,
    stops: Stops,
    tasks: TaskTracker,
) {
    let stop = stops.stop.clone();
    let logs = Arc::clone(&stops.logs);
    loop {
        let generation = Arc::clone(&current.borrow_and_update());
        let Some(permit) = permit(&generation, &stop, &mut current).await else {
            break;
        };
        let Some(permit) = permit else {
            continue; // a reload came while waiting for a permit
        };
        let idle = Idle::hold(&generation);
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(listener = %generation.common.name, %error, "accept failed");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        drop(idle);
        // A reload applied while accept waited: this connection gets the new settings.
        let (generation, permit) = if current.has_changed().unwrap_or(false) {
            drop(permit);
            let generation = Arc::clone(&current.borrow_and_update());
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = Arc::clone(&generation.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            (generation, permit)
        } else {
            (generation, permit)
        };
        serve_accepted(&generation, stream, peer, permit, &stops, &tasks, &logs);
    }
    debug!(listener = %current.borrow().common.name, "stopped accepting");
}

/// One of `generation`'s permits held by an accept loop while it waits to accept.
struct Idle<'a>(&'a AtomicUsize);

impl<'a> Idle<'a> {
    fn hold(generation: &'a Generation) -> Self {
        generation.idle.fetch_add(1, Ordering::Relaxed);
        Self(&generation.idle)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection permit of `generation`: `None` when the listener stops, `Some(None)` when
/// a reload came first.
async fn permit(
    generation: &Generation,
    stop: &CancellationToken,
    current: &mut watch::Receiver<Arc<Generation>>,
) -> Option<Option<OwnedSemaphorePermit>> {
    let permits = &generation.permits;
    let max = generation.common.max_connections;
    // The permits no connection holds: free ones and those of loops waiting to accept.
    let unused = || permits.available_permits() + generation.idle.load(Ordering::Relaxed);
    if unused() > max / 2 {
        generation.full_warned.store(false, Ordering::Relaxed);
    }
    if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
        return Some(Some(permit));
    }
    // No permit: the limit is reached only when connections hold every one, not when
    // another worker's loop holds the last while it waits to accept.
    if unused() == 0 && !generation.full_warned.swap(true, Ordering::Relaxed) {
        warn!(listener = %generation.common.name, max_connections = max,
            "connection limit reached; new connections wait in the accept queue");
    }
    tokio::select! {
        () = stop.cancelled() => None,
        changed = current.changed() => changed.ok().map(|()| None),
        permit = Arc::clone(permits).acquire_owned() => permit.ok().map(Some),
    }
}

/// Admits one accepted connection under `generation` and spawns its task.
fn serve_accepted(
    generation: &Arc<Generation>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    stops: &Stops,
    tasks: &TaskTracker,
    logs: &Arc<Logs>,
) {
    let common = &generation.common;
    let slot = match &generation.proxy {
        Some(settings) => {
            if !settings.trusts(peer.ip()) {
                // Closed before a byte is read: never guess whether a header is there.
                drop(stream);
                ListenerStats::add(&common.stats.proxy_untrusted, 1);
                if let Some(refused) = logs.untrusted.note() {
                    warn!(listener = %common.name, peer = %peer.ip().to_canonical(), refused,
                        "connection refused: the peer is not in proxy_protocol_from \
                         (refused counts every refusal since the last such line)");
                }
                return;
            }
            // The per-IP limit applies to the header's client, in the task.
            None
        }
        None => match admit(
            generation.per_ip.as_ref(),
            peer.ip(),
            &common.stats,
            logs,
            &generation.name,
        ) {
            Ok(slot) => slot,
            // Closed before a byte is read or written, the permit goes back at once.
            Err(Refused) => return,
        },
    };
    let mode = generation.mode;
    let service = generation.service.clone();
    let stats = Arc::clone(&common.stats);
    let stop = stops.stop.child_token();
    let kill = stops.kill.clone();
    let (proxy, per_ip, logs, name) = (
        generation.proxy.clone(),
        generation.per_ip.clone(),
        Arc::clone(logs),
        Arc::clone(&generation.name),
    );
    let connection = async move {
        let _permit = permit;
        let _active = ActiveGuard::new(&stats);
        let mut stream = stream;
        let Some(settings) = proxy else {
            let _slot = slot;
            let span = info_span!("conn", listener = %name, mode, %peer);
            serve(service, stream, peer, stop).instrument(span).await;
            return;
        };
        let header_span = info_span!("proxy", listener = %name, mode, %peer);
        let read = proxy_protocol::read_client(&mut stream, peer, &settings)
            .instrument(header_span.clone());
        // Shutdown does not wait for a header: nothing has been served yet.
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = read => read,
        };
        let client = match read {
            Ok((client, header)) => {
                header_span.in_scope(|| trace!(?header, "PROXY protocol header"));
                client
            }
            Err(error) => {
                ListenerStats::add(&stats.proxy_header_failed, 1);
                header_span.in_scope(|| debug!(%error, "connection closed"));
                if let Some(closed) = logs.bad_header.note() {
                    warn!(listener = %name, peer = %peer.ip().to_canonical(), %error, closed,
                        "connection closed: no valid PROXY protocol header \
                         (closed counts every such close since the last such line)");
                }
                return;
            }
        };
        let Ok(_slot) = admit(per_ip.as_ref(), client.ip(), &stats, &logs, &name) else {
            return;
        };
        let span = info_span!("conn", listener = %name, mode, peer = %client, proxy = %peer);
        serve(service, stream, client, stop).instrument(span).await;
    };
    // `kill` drops the connection (and closes its sockets) wherever it is.
    let connection = async move {
        tokio::select! {
            () = kill.cancelled() => {}
            () = connection => {}
        }
    };
    tasks.spawn(
        stops
            .tasks
            .track_future(generation.tasks.track_future(connection)),
    );
}

/// Serves one connection once its client is known.
async fn serve(service: Service, stream: TcpStream, client: SocketAddr, stop: CancellationToken) {
    debug!("accepted");
    service.handle(stream, client, stop).await;
}

/// A connection refused by `max_connections_per_ip`.
struct Refused;

/// Takes a slot of `ip` under `max_connections_per_ip` (none is needed without a limit), or
/// counts and logs the refusal.
fn admit(
    per_ip: Option<&Arc<PerIp>>,
    ip: IpAddr,
    stats: &ListenerStats,
    logs: &Logs,
    listener: &str,
) -> Result<Option<PerIpSlot>, Refused> {
    let Some(per_ip) = per_ip else {
        return Ok(None);
    };
    match per_ip.take(ip) {
        Some(slot) => Ok(Some(slot)),
        None => {
            refuse_per_ip(stats, logs, listener, ip, per_ip.limit);
            Err(Refused)
        }
    }
}

/// Counts and (rate-limited) logs a connection refused by `max_connections_per_ip`.
fn refuse_per_ip(stats: &ListenerStats, logs: &Logs, listener: &str, ip: IpAddr, limit: usize) {
    ListenerStats::add(&stats.per_ip_refused, 1);
    if let Some(refused) = logs.per_ip.note() {
        warn!(listener, client = %ip.to_canonical(), max_connections_per_ip = limit, refused,
            "connection refused: the client has max_connections_per_ip open already \
             (refused counts every refusal since the last such line)");
    }
}

/// The rate-limited warnings of one listener.
#[derive(Debug, Default)]
pub(crate) struct Logs {
    per_ip: Throttle,
    untrusted: Throttle,
    bad_header: Throttle,
}

/// Open connections per client address, for `max_connections_per_ip`. It
/// has an entry only for addresses with an open connection, so it is never
/// larger than `max_connections`.
#[derive(Debug)]
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerIp`], given back when it drops.
#[derive(Debug)]
struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, if it has fewer than the
    /// limit. An IPv4-mapped IPv6 address counts as its IPv4 address.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpSlot> {
        let ip = ip.to_canonical();
        // The table stays consistent whatever panicked while holding it.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut entry) = open.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_each_address_and_gives_slots_back() {
        let table = PerIp::new(2);
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let first = table.take(one).unwrap();
        // The IPv4-mapped form of the same client counts as the same client.
        let second = table.take(mapped).unwrap();
        assert!(table.take(one).is_none());
        assert!(table.take(mapped).is_none());
        let third = table.take(other).unwrap();
        drop(first);
        let again = table.take(one).unwrap();
        assert!(table.take(one).is_none());
        drop((second, third, again));
        assert!(
            table.open.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
    }
}

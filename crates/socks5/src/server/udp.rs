//! UDP ASSOCIATE (RFC 1928 §7): one relay socket per association.
//!
//! - The socket is bound to `outbound_bind` or the local IP of the client's TCP connection,
//!   port 0, and the reply names it (or `udp_advertise`).
//! - A datagram is the client's if it comes from the client's IP (that of its TCP connection)
//!   and the client's port: DST.PORT of the request if not 0, else the port of the first
//!   datagram from that IP, which locks it. DST.ADDR is not used to pick the IP, because
//!   clients behind NAT often send their private address there.
//! - The client's datagrams are relayed to their header's destination, if the rules allow it;
//!   fragments (FRAG ≠ 0) and malformed headers are dropped.
//! - A domain destination is resolved off the datagram path: the lookup runs in its own task
//!   (bounded by `connect_timeout`, at most [`MAX_LOOKUPS`] per association) while datagrams to
//!   other destinations keep flowing. Datagrams for a name being resolved wait for its answer
//!   (at most [`MAX_WAITING`] datagrams and [`MAX_WAITING_BYTES`] per association; past that,
//!   or past the lookup bound, they are dropped with a debug event). Answers, and failures,
//!   are remembered for [`NAME_TTL`] (at most [`MAX_NAMES`] names).
//! - Datagrams from an address the client has sent to come back to the client with a header
//!   naming their source; datagrams from anywhere else are dropped (like a NAT's
//!   address-and-port-dependent filtering), so strangers cannot inject traffic.
//! - The association ends when the TCP connection closes or fails, or after `idle_timeout`
//!   without a relayed datagram.
//!
//! The relay socket has one IP family (an IPv6 socket bound to `::` also reaches IPv4). A target
//! of the other family goes out through a second socket, opened on the first such datagram and
//! bound to the unspecified address of that family (port 0), and its answers come back to the
//! client through the relay socket with a header naming their source: ATYP X'04' for IPv6, X'01'
//! for IPv4 (an IPv4-mapped IPv6 source is shown as IPv4). When `outbound_bind` is a specific
//! address, only targets of its family are reached (as for CONNECT); others are dropped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::task::{self, JoinError, JoinSet};
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug};

use super::Session;
use crate::Error;
use crate::options::ServerOptions;
use crate::resolve::lookup;
use crate::rules::{Action, Requester};
use crate::wire::{Address, Decoded, Reply, UdpHeader, decode_udp_header, encode_udp_header};

/// Room in front of a received datagram for the header of an IP address (the largest, IPv6: RSV,
/// FRAG, ATYP, 16 + 2 bytes), so that a datagram goes back to the client without a copy.
const HEADER_ROOM: usize = 3 + 1 + 16 + 2;
/// Larger than any UDP payload.
const MAX_DATAGRAM_LEN: usize = 64 * 1024;
/// Remembered targets, whose answers are let back in. Past this, the set starts over.
const MAX_TARGETS: usize = 1024;
/// Remembered names. Past this, expired answers are forgotten, and if that is not enough, all.
const MAX_NAMES: usize = 64;
/// How long an association trusts an answer (or a failure) before it looks the name up again.
const NAME_TTL: Duration = Duration::from_secs(60);
/// Lookups in flight per association; a datagram that needs one more is dropped.
const MAX_LOOKUPS: usize = 4;
/// Datagrams waiting for lookups per association, and their payload bytes; past either, a
/// datagram for a name being resolved is dropped.
const MAX_WAITING: usize = 16;
const MAX_WAITING_BYTES: usize = 64 * 1024;

/// Runs a UDP association for `session` until it ends.
pub(crate) async fn associate<S>(
    session: &mut Session<'_, S>,
    requested: &Address,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, advertised) = match open(session).await {
        Ok(opened) => opened,
        Err(error) => return Err(session.fail(error).await),
    };
    session
        .reply(Reply::Succeeded, Address::Ip(advertised))
        .await?;
    let local = socket.local_addr()?;
    let mut association = Association {
        local_unspecified: local.ip().is_unspecified(),
        v6: local.is_ipv6(),
        socket,
        other: Other::NotOpened,
        client_ip: session.client_ip,
        user: session.report.user.clone(),
        client_port: Some(requested.port()).filter(|&port| port != 0),
        client: None,
        targets: HashSet::new(),
        names: Names::new(),
        options: session.options,
        up: 0,
        down: 0,
        datagrams_up: 0,
        datagrams_down: 0,
    };
    let result = association.run(&mut session.stream).await;
    session.report.bytes_up += association.up;
    session.report.bytes_down += association.down;
    session.report.datagrams_up += association.datagrams_up;
    session.report.datagrams_down += association.datagrams_down;
    result
}

/// Binds the relay socket; returns it and the address for the reply.
async fn open<S>(session: &Session<'_, S>) -> Result<(UdpSocket, SocketAddr), Error> {
    let (bind_ip, local_ip) = match (session.options.outbound_bind, session.local) {
        (Some(bind), Some(local)) => (bind, local.ip().to_canonical()),
        (None, Some(local)) => (local.ip().to_canonical(), local.ip().to_canonical()),
        (Some(bind), None) => (bind, bind),
        (None, None) => return Err(Error::Io(super::no_local_address())),
    };
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
    let bound = socket.local_addr()?;
    let ip = match session.options.udp_advertise {
        Some(ip) => ip,
        None if bound.ip().is_unspecified() => local_ip,
        None => bound.ip().to_canonical(),
    };
    Ok((socket, SocketAddr::new(ip, bound.port())))
}

struct Association<'a> {
    /// The relay socket: the client's datagrams, the answers to the client, and the targets of
    /// its family.
    socket: UdpSocket,
    /// The socket for targets of the other family.
    other: Other,
    /// Bound to `0.0.0.0` or `::`: may send to any address of its family (and `::` to IPv4).
    local_unspecified: bool,
    /// An IPv6 socket.
    v6: bool,
    client_ip: IpAddr,
    /// The user the client logged in as, for rules with `users`.
    user: Option<String>,
    client_port: Option<u16>,
    /// The client's address exactly as the socket sees it, once known.
    client: Option<SocketAddr>,
    /// Targets sent to (canonical): their answers are let in.
    targets: HashSet<SocketAddr>,
    names: Names,
    options: &'a ServerOptions,
    up: u64,
    down: u64,
    datagrams_up: u64,
    datagrams_down: u64,
}

/// The socket for targets the relay socket cannot reach.
enum Other {
    /// No such target yet.
    NotOpened,
    Open(UdpSocket),
    /// `outbound_bind` is a specific address of the relay socket's family, or opening failed.
    Unavailable,
}

/// Which socket a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Relay,
    Other,
}

enum Event {
    Control(io::Result<usize>),
    Readable(Side, io::Result<()>),
    Resolved(Result<(task::Id, (String, Vec<IpAddr>)), JoinError>),
    Idle,
}

/// Waits until the other-family socket, if open, is readable.
async fn other_readable(other: &Other) -> io::Result<()> {
    match other {
        Other::Open(socket) => socket.readable().await,
        Other::NotOpened | Other::Unavailable => std::future::pending().await,
    }
}

impl Association<'_> {
    /// The client as the rules see it.
    fn requester(&self) -> Requester<'_> {
        Requester::new(self.client_ip, self.user.as_deref())
    }

    async fn run<C: AsyncRead + Unpin>(&mut self, control: &mut C) -> Result<(), Error> {
        let limit = self.options.idle_timeout;
        let idle = sleep(limit);
        tokio::pin!(idle);
        let mut ignored = [0; 64];
        loop {
            let event = tokio::select! {
                read = control.read(&mut ignored) => Event::Control(read),
                ready = self.socket.readable() => Event::Readable(Side::Relay, ready),
                ready = other_readable(&self.other) => Event::Readable(Side::Other, ready),
                Some(joined) = self.names.lookups.join_next_with_id() => Event::Resolved(joined),
                () = &mut idle => Event::Idle,
            };
            match event {
                Event::Control(Ok(0)) => return Ok(()),
                // RFC 1928 defines no message on the control connection after the reply.
                Event::Control(Ok(_)) => {}
                Event::Control(Err(error)) => {
                    debug!(%error, "UDP association control connection failed");
                    return Ok(());
                }
                Event::Readable(side, ready) => {
                    ready?;
                    if self.drain(side).await? {
                        idle.as_mut()
                            .reset(crate::framing::later(Instant::now(), limit));
                    }
                }
                Event::Resolved(joined) => {
                    if self.resolved(joined).await {
                        idle.as_mut()
                            .reset(crate::framing::later(Instant::now(), limit));
                    }
                }
                Event::Idle => {
                    return Err(Error::Idle { limit });
                }
            }
        }
    }

    /// Handles every datagram waiting on the socket of `side`, with one buffer taken for the
    /// burst; returns whether any was relayed.
    async fn drain(&mut self, side: Side) -> Result<bool, Error> {
        let mut buf = Vec::with_capacity(HEADER_ROOM + MAX_DATAGRAM_LEN);
        let mut relayed = false;
        loop {
            buf.clear();
            buf.resize(HEADER_ROOM, 0);
            let socket = match (side, &self.other) {
                (Side::Relay, _) => &self.socket,
                (Side::Other, Other::Open(socket)) => socket,
                (Side::Other, Other::NotOpened | Other::Unavailable) => return Ok(relayed),
            };
            let from = match socket.try_recv_buf_from(&mut buf) {
                Ok((_, from)) => from,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(relayed),
                // ICMP errors for earlier datagrams; they do not concern this one.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    debug!(%error, "UDP relay socket reported an error");
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            relayed |= self.handle(&mut buf, from, side).await;
            // A flood of datagrams never drains the socket: spend tokio's cooperative budget
            // per datagram, so the association yields its worker like any other task.
            tokio::task::consume_budget().await;
        }
    }

    /// One datagram in `buf[HEADER_ROOM..]`, received on `side`; returns whether it was relayed.
    /// Only the relay socket takes the client's datagrams; either takes answers from targets.
    async fn handle(&mut self, buf: &mut [u8], raw_from: SocketAddr, side: Side) -> bool {
        let from = canonical(raw_from);
        let is_client = side == Side::Relay
            && from.ip() == self.client_ip
            && self.client_port.is_none_or(|port| port == from.port());
        if is_client {
            if self.client.is_none() {
                debug!(client = %from, "UDP association locked to the client's address");
                self.client_port = Some(from.port());
                self.client = Some(raw_from);
            }
            let datagram = buf.get(HEADER_ROOM..).unwrap_or_default();
            self.relay_out(datagram).await
        } else if let Some(client) = self.client
            && self.targets.contains(&from)
        {
            self.relay_back(buf, from, client).await
        } else {
            debug!(%from, "dropped a UDP datagram from an unknown source");
            false
        }
    }

    async fn relay_out(&mut self, datagram: &[u8]) -> bool {
        let (header, used) = match decode_udp_header(datagram) {
            Ok(Decoded::Done(header, used)) => (header, used),
            Ok(Decoded::NeedMore(_)) => {
                debug!(len = datagram.len(), "dropped a truncated UDP datagram");
                return false;
            }
            Err(error) => {
                debug!(%error, "dropped a UDP datagram with a malformed header");
                return false;
            }
        };
        if header.frag != 0 {
            debug!(
                frag = header.frag,
                "dropped a UDP fragment: fragmentation is not supported"
            );
            return false;
        }
        let payload = datagram.get(used..).unwrap_or_default();
        match header.address.without_ip_literal_name() {
            Address::Ip(address) => self.relay_to_ip(address, payload).await,
            Address::Domain(host, port) => self.relay_to_name(&host, port, payload).await,
        }
    }

    /// Sends `payload` to `target` (canonical) through the socket that reaches its family, and
    /// lets its answers in.
    async fn send(&mut self, payload: &[u8], target: SocketAddr) -> bool {
        let sent = if self.relay_reaches(target.ip()) {
            let address = self.socket_address(target);
            self.socket.send_to(payload, address).await
        } else if let Some(other) = self.other_socket().await {
            other.send_to(payload, target).await
        } else {
            debug!(%target, "no UDP socket can reach this address family");
            return false;
        };
        match sent {
            Ok(_) => {
                self.up += payload.len() as u64;
                self.datagrams_up += 1;
                if self.targets.len() >= MAX_TARGETS && !self.targets.contains(&target) {
                    self.targets.clear();
                }
                self.targets.insert(target);
                true
            }
            Err(error) => {
                debug!(%error, %target, "could not send a UDP datagram");
                false
            }
        }
    }

    /// The socket for the family the relay socket does not reach, opened on first use.
    async fn other_socket(&mut self) -> Option<&UdpSocket> {
        if matches!(self.other, Other::NotOpened) {
            self.other = match self.other_bind() {
                None => Other::Unavailable,
                Some(ip) => match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                    Ok(socket) => {
                        let local = socket.local_addr().ok();
                        debug!(?local, "opened a UDP socket for the other address family");
                        Other::Open(socket)
                    }
                    Err(error) => {
                        debug!(%error, %ip, "cannot open a UDP socket for the other family");
                        Other::Unavailable
                    }
                },
            };
        }
        match &self.other {
            Other::Open(socket) => Some(socket),
            Other::NotOpened | Other::Unavailable => None,
        }
    }

    /// Where the other-family socket binds: the unspecified address of that family, unless
    /// `outbound_bind` names a specific address (then only its family is reached).
    fn other_bind(&self) -> Option<IpAddr> {
        match self.options.outbound_bind {
            Some(ip) if !ip.is_unspecified() => None,
            _ if self.v6 => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            _ => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        }
    }

    /// Whether some socket of this association can send to `ip`.
    fn reachable(&self, ip: IpAddr) -> bool {
        self.relay_reaches(ip)
            || match self.other {
                Other::NotOpened => self.other_bind().is_some(),
                Other::Open(_) => true,
                Other::Unavailable => false,
            }
    }

    /// Wraps the datagram in `buf[HEADER_ROOM..]` in a header naming `from` (canonical), in
    /// place.
    async fn relay_back(&mut self, buf: &mut [u8], from: SocketAddr, client: SocketAddr) -> bool {
        let payload_len = buf.len().saturating_sub(HEADER_ROOM);
        let header = UdpHeader::new(Address::Ip(from));
        let start = HEADER_ROOM.saturating_sub(3 + header.address.encoded_len());
        let Some(mut slot) = buf.get_mut(start..HEADER_ROOM) else {
            return false;
        };
        if encode_udp_header(&header, &mut slot).is_err() {
            return false;
        }
        let packet = buf.get(start..).unwrap_or_default();
        match self.socket.send_to(packet, client).await {
            Ok(_) => {
                self.down += payload_len as u64;
                self.datagrams_down += 1;
                true
            }
            Err(error) => {
                debug!(%error, %client, "could not send a UDP datagram to the client");
                false
            }
        }
    }

    /// Relays `payload` to an IP destination, if the rules allow.
    async fn relay_to_ip(&mut self, address: SocketAddr, payload: &[u8]) -> bool {
        let target = canonical(address);
        if self
            .options
            .rules
            .check(self.requester(), None, target.ip(), target.port())
            == Action::Deny
        {
            debug!(%target, "rules deny a UDP destination");
            return false;
        }
        if !self.reachable(target.ip()) {
            debug!(%target, "UDP association cannot reach this address family");
            return false;
        }
        self.send(payload, target).await
    }

    /// Relays `payload` to a named destination: at once if the name's addresses are known,
    /// else once its lookup (started here if needed) answers. Returns whether the datagram was
    /// sent or queued.
    async fn relay_to_name(&mut self, host: &str, port: u16, payload: &[u8]) -> bool {
        if self.options.rules.check_name(self.requester(), host, port) == Some(Action::Deny) {
            debug!(%host, "rules deny a UDP destination");
            return false;
        }
        if let Some(ips) = self.names.cached(host) {
            let Some(target) = self.pick(host, ips, port) else {
                return false;
            };
            return self.send(payload, target).await;
        }
        self.names.wait_for(host, port, payload, self.options)
    }

    /// A lookup ended: remembers its answer and sends the datagrams that waited for it.
    async fn resolved(
        &mut self,
        joined: Result<(task::Id, (String, Vec<IpAddr>)), JoinError>,
    ) -> bool {
        let (host, ips) = match joined {
            Ok((_, answer)) => answer,
            Err(error) => {
                // A resolver that panicked: the name counts as not found.
                debug!(%error, "a UDP destination lookup failed");
                match self.names.host_of(error.id()) {
                    Some(host) => (host, Vec::new()),
                    None => return false,
                }
            }
        };
        let waiting = self.names.finish(&host, ips.clone());
        let mut relayed = false;
        for datagram in waiting {
            if let Some(target) = self.pick(&host, &ips, datagram.port) {
                relayed |= self.send(&datagram.payload, target).await;
            }
        }
        relayed
    }

    /// The first address of `host` that the rules allow and a socket can reach.
    fn pick(&self, host: &str, ips: &[IpAddr], port: u16) -> Option<SocketAddr> {
        let rules = &self.options.rules;
        let usable = ips.iter().find(|&&ip| {
            self.reachable(ip)
                && rules.check(self.requester(), Some(host), ip, port) == Action::Allow
        });
        if usable.is_none() {
            debug!(%host, "no allowed address for a UDP destination");
        }
        usable.map(|&ip| SocketAddr::new(ip, port))
    }

    /// Whether the relay socket itself can send to `ip`.
    fn relay_reaches(&self, ip: IpAddr) -> bool {
        match (self.v6, ip) {
            (false, IpAddr::V4(_)) | (true, IpAddr::V6(_)) => true,
            (true, IpAddr::V4(_)) => self.local_unspecified,
            (false, IpAddr::V6(_)) => false,
        }
    }

    /// An IPv6 socket reaches IPv4 targets through their IPv4-mapped form.
    fn socket_address(&self, target: SocketAddr) -> SocketAddr {
        match target.ip() {
            IpAddr::V4(ip) if self.v6 => {
                SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), target.port())
            }
            _ => target,
        }
    }
}

/// `address` with an IPv4-mapped IPv6 address as IPv4.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The names of one association: recent answers, and the lookups in flight with the datagrams
/// that wait for them. Lookups run in their own tasks, so a slow name never holds up the
/// association's other datagrams; every bound here is per association.
struct Names {
    answers: HashMap<String, Answer>,
    pending: HashMap<String, Pending>,
    lookups: JoinSet<(String, Vec<IpAddr>)>,
    /// Datagrams waiting in `pending`, and their payload bytes.
    queued: usize,
    queued_bytes: usize,
}

/// The addresses of a name (none if it did not resolve), and when they were learnt.
struct Answer {
    ips: Vec<IpAddr>,
    at: Instant,
}

/// A lookup in flight.
struct Pending {
    task: task::Id,
    waiting: Vec<Waiting>,
}

/// A datagram for a name being resolved.
struct Waiting {
    port: u16,
    payload: Vec<u8>,
}

impl Names {
    fn new() -> Self {
        Names {
            answers: HashMap::new(),
            pending: HashMap::new(),
            lookups: JoinSet::new(),
            queued: 0,
            queued_bytes: 0,
        }
    }

    /// The addresses of `host` learnt within [`NAME_TTL`] (a failed lookup is remembered as
    /// none).
    fn cached(&self, host: &str) -> Option<&[IpAddr]> {
        self.answers
            .get(host)
            .filter(|answer| answer.at.elapsed() < NAME_TTL)
            .map(|answer| answer.ips.as_slice())
    }

    /// Queues a datagram for `host`, starting its lookup if none is in flight; returns whether
    /// the datagram was queued (false: dropped, past a bound).
    fn wait_for(&mut self, host: &str, port: u16, payload: &[u8], options: &ServerOptions) -> bool {
        if self.queued >= MAX_WAITING || self.queued_bytes + payload.len() > MAX_WAITING_BYTES {
            debug!(%host, "dropped a UDP datagram: too many wait for lookups");
            return false;
        }
        let waiting = Waiting {
            port,
            payload: payload.to_vec(),
        };
        if let Some(pending) = self.pending.get_mut(host) {
            pending.waiting.push(waiting);
        } else {
            if self.lookups.len() >= MAX_LOOKUPS {
                debug!(%host, "dropped a UDP datagram: too many lookups in flight");
                return false;
            }
            let task = self.start(host, port, options);
            self.pending.insert(
                host.to_owned(),
                Pending {
                    task,
                    waiting: vec![waiting],
                },
            );
        }
        self.queued += 1;
        self.queued_bytes += payload.len();
        true
    }

    /// Starts looking `host` up, bounded by `connect_timeout`.
    fn start(&mut self, host: &str, port: u16, options: &ServerOptions) -> task::Id {
        let resolver = Arc::clone(&options.resolver);
        let limit = options.connect_timeout;
        let host = host.to_owned();
        let lookup = async move {
            let ips = match timeout(limit, lookup(&*resolver, &host, port)).await {
                Ok(Ok(found)) => found.into_iter().map(|a| a.ip()).collect(),
                Ok(Err(error)) => {
                    debug!(%error, "UDP destination does not resolve");
                    Vec::new()
                }
                Err(_) => {
                    debug!(%host, ?limit, "resolving a UDP destination timed out");
                    Vec::new()
                }
            };
            (host, ips)
        };
        self.lookups.spawn(lookup.in_current_span()).id()
    }

    /// The name whose lookup ran in `task`.
    fn host_of(&self, task: task::Id) -> Option<String> {
        self.pending
            .iter()
            .find(|(_, pending)| pending.task == task)
            .map(|(host, _)| host.clone())
    }

    /// Remembers the answer for `host`; returns the datagrams that waited for it.
    fn finish(&mut self, host: &str, ips: Vec<IpAddr>) -> Vec<Waiting> {
        if self.answers.len() >= MAX_NAMES && !self.answers.contains_key(host) {
            self.answers
                .retain(|_, answer| answer.at.elapsed() < NAME_TTL);
            if self.answers.len() >= MAX_NAMES {
                self.answers.clear();
            }
        }
        self.answers.insert(
            host.to_owned(),
            Answer {
                ips,
                at: Instant::now(),
            },
        );
        let waiting = self
            .pending
            .remove(host)
            .map(|pending| pending.waiting)
            .unwrap_or_default();
        for datagram in &waiting {
            self.queued = self.queued.saturating_sub(1);
            self.queued_bytes = self.queued_bytes.saturating_sub(datagram.payload.len());
        }
        waiting
    }
}

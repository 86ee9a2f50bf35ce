//! [`ServerOptions`]: what a session is allowed and how long it may take (a module of its
//! own so that the server, the core and UDP ASSOCIATE use it without naming each other).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthPolicy, Authenticator};
use crate::connector::{Connector, DirectConnector};
use crate::resolve::{Resolver, SystemResolver};
use crate::rules::Rules;
use crate::via::Via;
use crate::wire::Command;

/// Which commands the server carries out; a disabled one is answered with REP X'07'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commands {
    /// CONNECT. Default: on.
    pub connect: bool,
    /// BIND. Default: on.
    pub bind: bool,
    /// UDP ASSOCIATE. Default: on.
    pub udp_associate: bool,
}

impl Commands {
    /// Whether `command` is enabled.
    #[must_use]
    pub fn allows(&self, command: Command) -> bool {
        match command {
            Command::Connect => self.connect,
            Command::Bind => self.bind,
            Command::UdpAssociate => self.udp_associate,
        }
    }
}

impl Default for Commands {
    /// All three on.
    fn default() -> Self {
        Commands {
            connect: true,
            bind: true,
            udp_associate: true,
        }
    }
}

/// Everything a session needs to know, filled in by the caller (the server crate from its
/// config) through [`ServerOptions::builder`]. See each field for its default; the fields can
/// be read, and changed in place, but new ones may come, so the struct is built only by the
/// builder or [`Default`].
///
/// ```
/// use std::time::Duration;
///
/// let options = socks5::ServerOptions::builder()
///     .connect_timeout(Duration::from_secs(5))
///     .resolver(socks5::StaticResolver::new([(
///         "printer.lan".to_owned(),
///         vec!["192.0.2.7".parse().unwrap()],
///     )]))
///     .build();
/// assert_eq!(options.connect_timeout, Duration::from_secs(5));
/// assert_eq!(options.handshake_timeout, Duration::from_secs(10)); // the default
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The greeting, the login and the request together must arrive within this, counted from
    /// the start of the session. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Resolving a CONNECT destination and connecting to it, trying every resolved address,
    /// share this one deadline: a client waits at most this long for its reply. Default:
    /// 10 s.
    pub connect_timeout: Duration,
    /// Happy Eyeballs (RFC 8305): when a name has several allowed addresses, the next attempt
    /// starts after this long without a connection (or at once when an attempt fails); the
    /// addresses alternate between IPv6 and IPv4, IPv6 first, and the first to connect wins.
    /// Zero turns the race off: the addresses are tried one after another in the resolver's
    /// order, each once the previous failed. Default: 250 ms (RFC 8305 §8 recommends 250 ms,
    /// and at least 100 ms).
    pub happy_eyeballs_delay: Duration,
    /// A TCP relay with no byte moving either way for this long ends, and so does a UDP
    /// association with no datagram. Default: 5 min.
    pub idle_timeout: Duration,
    /// BIND waits this long for the peer to connect. Default: 2 min.
    pub bind_timeout: Duration,
    /// The enabled commands. Default: all.
    pub commands: Commands,
    /// Who must log in, and checking logins. Default: [`AuthPolicy::none`].
    pub auth: Arc<dyn Authenticator>,
    /// Access rules. Default: allow everything.
    pub rules: Arc<Rules>,
    /// The IP put in the UDP ASSOCIATE reply, for a server behind NAT. Default (`None`): the
    /// address the relay socket is bound to, or if that is unspecified, the local IP of the
    /// client's TCP connection.
    pub udp_advertise: Option<IpAddr>,
    /// The local IP for outbound sockets: CONNECT's, the BIND listener and the UDP relay
    /// socket. Default (`None`): any for CONNECT (the kernel picks), the local IP of the
    /// client's TCP connection for BIND and UDP. A CONNECT target of the other IP family then
    /// fails with REP X'01'.
    pub outbound_bind: Option<IpAddr>,
    /// The addresses the caller's listeners are bound to, as bound (`0.0.0.0:1080`, `[::]:1080`
    /// or a specific address; port 0 stands for the port of the listener the client reached).
    /// A CONNECT that would reach one of them is refused with REP X'02'
    /// ([`Error::OwnAddress`](crate::Error::OwnAddress)): it would loop back into the server, and the second session
    /// would see the server itself, a local address, as its client. The listener the client
    /// reached (the local address of its connection) always counts. For a specific address
    /// the destination must equal it; for an unspecified one, a destination with its port is
    /// refused if it is a loopback address, the client's own listener address, or, found once
    /// connected, a local address (the connection's source and destination IPs are equal, as
    /// Linux makes them for every local address). Default: none but the listener reached.
    pub listen_addresses: Vec<SocketAddr>,
    /// Resolves domain names. Default: [`SystemResolver`].
    pub resolver: Arc<dyn Resolver>,
    /// Makes the outbound connections of CONNECT, once the rules allowed an address, and the
    /// connections to upstream proxies. Default: [`DirectConnector`].
    pub connector: Arc<dyn Connector>,
    /// How CONNECT requests leave when the rule that allowed them has no `via` of its own
    /// (or no rule decided): [`Via::Direct`], or through an upstream proxy. A name allowed
    /// by name goes to the upstream unresolved; a name that needed its addresses judged goes
    /// as the address. BIND and UDP ASSOCIATE are never chained. Default: direct.
    pub via: Via,
    /// Size of the buffer each relay direction takes while data flows (and gives back when it
    /// stops). Default: 64 KiB. Smaller costs CPU (measured with plain copying: 0.62 s/GiB at
    /// 16 KiB, 0.46 at 32 KiB, 0.29 at 64 KiB, 0.28 at 128 KiB); on Linux a burst that fills
    /// the buffer continues through splice(2) anyway.
    pub relay_buffer_len: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            happy_eyeballs_delay: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(5 * 60),
            bind_timeout: Duration::from_secs(2 * 60),
            commands: Commands::default(),
            auth: Arc::new(AuthPolicy::none()),
            rules: Arc::new(Rules::default()),
            udp_advertise: None,
            outbound_bind: None,
            listen_addresses: Vec::new(),
            resolver: Arc::new(SystemResolver),
            connector: Arc::new(DirectConnector),
            via: Via::Direct,
            relay_buffer_len: 64 * 1024,
        }
    }
}

impl ServerOptions {
    /// A builder starting from the defaults.
    pub fn builder() -> ServerOptionsBuilder {
        ServerOptionsBuilder(ServerOptions::default())
    }
}

/// Builds [`ServerOptions`]: each method sets the field of its name (see there for the
/// meaning and the default).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerOptionsBuilder(ServerOptions);

impl ServerOptionsBuilder {
    /// [`ServerOptions::handshake_timeout`].
    pub fn handshake_timeout(mut self, limit: Duration) -> Self {
        self.0.handshake_timeout = limit;
        self
    }

    /// [`ServerOptions::connect_timeout`].
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.0.connect_timeout = limit;
        self
    }

    /// [`ServerOptions::happy_eyeballs_delay`].
    pub fn happy_eyeballs_delay(mut self, delay: Duration) -> Self {
        self.0.happy_eyeballs_delay = delay;
        self
    }

    /// [`ServerOptions::idle_timeout`].
    pub fn idle_timeout(mut self, limit: Duration) -> Self {
        self.0.idle_timeout = limit;
        self
    }

    /// [`ServerOptions::bind_timeout`].
    pub fn bind_timeout(mut self, limit: Duration) -> Self {
        self.0.bind_timeout = limit;
        self
    }

    /// [`ServerOptions::commands`].
    pub fn commands(mut self, commands: Commands) -> Self {
        self.0.commands = commands;
        self
    }

    /// [`ServerOptions::auth`].
    pub fn authenticator(mut self, auth: impl Authenticator + 'static) -> Self {
        self.0.auth = Arc::new(auth);
        self
    }

    /// [`ServerOptions::auth`], shared.
    pub fn shared_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.0.auth = auth;
        self
    }

    /// [`ServerOptions::rules`].
    pub fn rules(mut self, rules: Rules) -> Self {
        self.0.rules = Arc::new(rules);
        self
    }

    /// [`ServerOptions::udp_advertise`].
    pub fn udp_advertise(mut self, ip: Option<IpAddr>) -> Self {
        self.0.udp_advertise = ip;
        self
    }

    /// [`ServerOptions::outbound_bind`].
    pub fn outbound_bind(mut self, ip: Option<IpAddr>) -> Self {
        self.0.outbound_bind = ip;
        self
    }

    /// [`ServerOptions::listen_addresses`].
    pub fn listen_addresses(mut self, addresses: Vec<SocketAddr>) -> Self {
        self.0.listen_addresses = addresses;
        self
    }

    /// [`ServerOptions::resolver`].
    pub fn resolver(mut self, resolver: impl Resolver + 'static) -> Self {
        self.0.resolver = Arc::new(resolver);
        self
    }

    /// [`ServerOptions::resolver`], shared.
    pub fn shared_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.0.resolver = resolver;
        self
    }

    /// [`ServerOptions::connector`].
    pub fn connector(mut self, connector: impl Connector + 'static) -> Self {
        self.0.connector = Arc::new(connector);
        self
    }

    /// [`ServerOptions::via`].
    pub fn via(mut self, via: Via) -> Self {
        self.0.via = via;
        self
    }

    /// [`ServerOptions::relay_buffer_len`].
    pub fn relay_buffer_len(mut self, len: usize) -> Self {
        self.0.relay_buffer_len = len;
        self
    }

    /// The options.
    #[must_use]
    pub fn build(self) -> ServerOptions {
        self.0
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("happy_eyeballs_delay", &self.happy_eyeballs_delay)
            .field("idle_timeout", &self.idle_timeout)
            .field("bind_timeout", &self.bind_timeout)
            .field("commands", &self.commands)
            .field("rules", &self.rules)
            .field("udp_advertise", &self.udp_advertise)
            .field("outbound_bind", &self.outbound_bind)
            .field("listen_addresses", &self.listen_addresses)
            .field("via", &self.via)
            .field("relay_buffer_len", &self.relay_buffer_len)
            .finish_non_exhaustive()
    }
}

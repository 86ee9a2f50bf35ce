//! The server's own listening addresses: a CONNECT that would loop back into the server is
//! refused.

use std::net::{IpAddr, SocketAddr};

/// Whether `ip` is an address of this host. The kernel routes a local address through the
/// local table, whose preferred source is the address itself: an unbound UDP socket connected
/// to it (which sends nothing) takes `ip` as its own address. This holds whatever
/// `outbound_bind` says, unlike the source of the TCP connection itself.
pub(super) fn is_local_address(ip: IpAddr) -> bool {
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let Ok(probe) = std::net::UdpSocket::bind(SocketAddr::new(any, 0)) else {
        return false;
    };
    probe.connect(SocketAddr::new(ip, 9)).is_ok()
        && probe
            .local_addr()
            .is_ok_and(|local| local.ip().to_canonical() == ip.to_canonical())
}

/// The server's own listening addresses, for refusing a CONNECT that loops back into it.
#[derive(Debug)]
pub(crate) struct OwnListeners {
    own: Vec<SocketAddr>,
    reached: Option<SocketAddr>,
}

impl OwnListeners {
    /// `configured` (see [`ServerOptions::listen_addresses`]; port 0 means the port of
    /// `reached`) and `reached`, the local address of the client's connection. IPs canonical.
    pub(crate) fn new(configured: &[SocketAddr], reached: Option<SocketAddr>) -> OwnListeners {
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let mut own: Vec<SocketAddr> = reached.map(canonical).into_iter().collect();
        for &address in configured {
            let port = match (address.port(), reached) {
                (0, Some(reached)) => reached.port(),
                (0, None) => continue,
                (port, _) => port,
            };
            own.push(canonical(SocketAddr::new(address.ip(), port)));
        }
        OwnListeners { own, reached }
    }

    /// Whether a listener on an unspecified address has `port`: then any local address with
    /// that port reaches it.
    pub(crate) fn wildcard_on(&self, port: u16) -> bool {
        self.own
            .iter()
            .any(|own| own.port() == port && own.ip().is_unspecified())
    }

    /// Whether a connection to `destination` (from `source`, once connected) reaches one of
    /// the listeners. For a listener on an unspecified address: a destination with its port
    /// that is a loopback address, or equal to `source` (on Linux, a connection to any local
    /// address has that address as its source) or to the listener address the client reached.
    pub(crate) fn reached_by(&self, destination: SocketAddr, source: Option<IpAddr>) -> bool {
        let ip = destination.ip().to_canonical();
        let local = source.map(|ip| ip.to_canonical());
        let reached = self.reached.map(|a| a.ip().to_canonical());
        self.own.iter().any(|own| {
            own.port() == destination.port()
                && if own.ip().is_unspecified() {
                    ip.is_loopback() || local == Some(ip) || Some(ip) == reached
                } else {
                    own.ip() == ip
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SocketAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn own_listeners_are_recognised_however_reached() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("valid IP");
        let specific = OwnListeners::new(&[at("192.0.2.7:1080")], Some(at("192.0.2.7:1080")));
        let wildcard = OwnListeners::new(&[at("0.0.0.0:1080")], Some(at("192.0.2.7:1080")));
        let v6_wildcard = OwnListeners::new(&[at("[::]:0")], Some(at("[::ffff:192.0.2.7]:1080")));
        let table = [
            (&specific, "192.0.2.7:1080", None, true),
            (&specific, "[::ffff:192.0.2.7]:1080", None, true),
            (&specific, "127.0.0.1:1080", None, false),
            (&specific, "192.0.2.7:1081", None, false),
            (&wildcard, "127.0.0.1:1080", None, true),
            (&wildcard, "127.3.2.1:1080", None, true),
            (&wildcard, "[::1]:1080", None, true),
            (&wildcard, "192.0.2.7:1080", None, true),
            (&wildcard, "198.51.100.1:1080", None, false),
            (
                &wildcard,
                "198.51.100.1:1080",
                Some(ip("198.51.100.1")),
                true,
            ),
            (&wildcard, "198.51.100.1:1080", Some(ip("192.0.2.7")), false),
            (&wildcard, "127.0.0.1:1081", None, false),
            (&v6_wildcard, "127.0.0.1:1080", None, true),
            (&v6_wildcard, "192.0.2.7:1080", None, true),
            (
                &v6_wildcard,
                "[2001:db8::1]:1080",
                Some(ip("2001:db8::1")),
                true,
            ),
            (
                &v6_wildcard,
                "[2001:db8::1]:1080",
                Some(ip("2001:db8::2")),
                false,
            ),
        ];
        for (own, destination, source, expected) in table {
            assert_eq!(
                own.reached_by(at(destination), source),
                expected,
                "{own:?} {destination} from {source:?}"
            );
        }
    }
}

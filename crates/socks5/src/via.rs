//! Where an allowed request leaves: directly, or through an upstream proxy (`via`). Pure: the
//! values and their parsing; [`crate::core`] connects.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::Error;

/// How a request the rules allow goes out: a rule's `via`, else the server's.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Via {
    /// Straight to the destination, through the [`crate::Connector`].
    #[default]
    Direct,
    /// Through an upstream proxy.
    Upstream(Upstream),
}

/// The protocol an upstream proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamKind {
    /// SOCKS5 CONNECT (RFC 1928), with an RFC 1929 login when credentials are given.
    Socks5,
    /// HTTP CONNECT (RFC 9110 §9.3.6), with `Proxy-Authorization: Basic` when credentials are
    /// given.
    Http,
}

/// An upstream proxy: `socks5://[user:password@]host:port` or `http://[user:password@]host:port`.
///
/// The host is an IP address (IPv6 in brackets) or a name, resolved by the server's resolver
/// when a request goes there. In the user and the password, `%XX` stands for the byte XX (so
/// `%40` for `@` and `%3A` for `:`). `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Its protocol.
    pub kind: UpstreamKind,
    /// Its host: an IP address or a name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// User and password, if it wants a login.
    pub credentials: Option<(String, String)>,
}

impl Upstream {
    /// The host as an IP address, when it is one.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for Via {
    type Err = Error;

    /// `direct`, `socks5://...` or `http://...` (see [`Upstream`]).
    fn from_str(text: &str) -> Result<Via, Error> {
        if text == "direct" {
            return Ok(Via::Direct);
        }
        text.parse().map(Via::Upstream)
    }
}

impl FromStr for Upstream {
    type Err = Error;

    fn from_str(text: &str) -> Result<Upstream, Error> {
        let bad = |why: &str| Error::Via(format!("{}: {why}", redacted(text)));
        let (kind, rest) = if let Some(rest) = text.strip_prefix("socks5://") {
            (UpstreamKind::Socks5, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (UpstreamKind::Http, rest)
        } else {
            return Err(bad(
                "expected \"direct\", socks5://[user:password@]host:port or http://[user:password@]host:port",
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("a login is written user:password@"))?;
                let (user, password) = (decode(user), decode(password));
                let (Some(user), Some(password)) = (user, password) else {
                    return Err(bad("a % in the login must be followed by two hex digits"));
                };
                if user.is_empty() || user.len() > 255 || password.len() > 255 {
                    return Err(bad(
                        "the user must be 1 to 255 bytes and the password at most 255",
                    ));
                }
                (Some((user, password)), address)
            }
            None => (None, rest),
        };
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("the port is missing (host:port)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| bad("the port must be 1 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6
                    .strip_suffix(']')
                    .ok_or_else(|| bad("an IPv6 address is written [address]"))?;
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address in the brackets"))?;
                v6.to_owned()
            }
            None => {
                let valid_name = host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if host.is_empty() || host.len() > 255 || !valid_name {
                    return Err(bad(
                        "the host must be an IPv4 address, [an IPv6 address] or a name",
                    ));
                }
                host.to_owned()
            }
        };
        Ok(Upstream {
            kind,
            host,
            port,
            credentials,
        })
    }
}

/// `%XX` decoded; `None` for a `%` not followed by two hex digits or a result that is not
/// UTF-8.
fn decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = char::from(bytes.next()?).to_digit(16)?;
            let low = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

/// `text` with the password (between `user:` and `@`) replaced, for error messages.
fn redacted(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, address)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{address}")
        }
        None => text.to_owned(),
    }
}

impl fmt::Display for Upstream {
    /// `socks5://user@host:port`: never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            UpstreamKind::Socks5 => "socks5",
            UpstreamKind::Http => "http",
        };
        write!(f, "{scheme}://")?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({self})")
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Direct => f.write_str("direct"),
            Via::Upstream(upstream) => upstream.fmt(f),
        }
    }
}

impl fmt::Debug for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Direct => f.write_str("Direct"),
            Via::Upstream(upstream) => upstream.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(
        kind: UpstreamKind,
        host: &str,
        port: u16,
        credentials: Option<(&str, &str)>,
    ) -> Via {
        Via::Upstream(Upstream {
            kind,
            host: host.to_owned(),
            port,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        })
    }

    #[test]
    fn parses_every_form() {
        use UpstreamKind::{Http, Socks5};
        let table = [
            ("direct", Via::Direct),
            (
                "socks5://10.0.0.1:1080",
                upstream(Socks5, "10.0.0.1", 1080, None),
            ),
            (
                "socks5://alice:s3cr%40t@proxy.example:1080",
                upstream(Socks5, "proxy.example", 1080, Some(("alice", "s3cr@t"))),
            ),
            (
                "socks5://a:b:c@[2001:db8::1]:1080",
                upstream(Socks5, "2001:db8::1", 1080, Some(("a", "b:c"))),
            ),
            ("http://proxy:3128/", upstream(Http, "proxy", 3128, None)),
            (
                "http://u:p@w@127.0.0.1:8080",
                upstream(Http, "127.0.0.1", 8080, Some(("u", "p@w"))),
            ),
            ("socks5://u:@h:1", upstream(Socks5, "h", 1, Some(("u", "")))),
        ];
        for (text, expected) in table {
            assert_eq!(text.parse::<Via>().expect(text), expected, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_upstreams_without_showing_the_password() {
        for bad in [
            "",
            "socks4://h:1",
            "https://h:1",
            "socks5://h",
            "socks5://h:0",
            "socks5://h:65536",
            "socks5://:1080",
            "socks5://[::1:1080",
            "socks5://[nope]:1080",
            "socks5://user@h:1",
            "socks5://:pw@h:1",
            "socks5://u:p%4@h:1",
            "socks5://u:p%zz@h:1",
            "socks5://h h:1",
            "socks5://h/x:1",
            "socks5://a:b:1",
            "socks5://::1:1080",
            "socks5://[]:1080",
        ] {
            let error = bad.parse::<Via>().expect_err(bad);
            assert!(matches!(error, Error::Via(_)), "{bad}: {error:?}");
        }
        let error = "socks5://alice:hunter2@h"
            .parse::<Via>()
            .expect_err("no port");
        let message = error.to_string();
        assert!(
            !message.contains("hunter2") && message.contains("alice:***@h"),
            "{message}"
        );
    }

    proptest::proptest! {
        /// No text makes the parser panic, and an upstream without a login reads back from
        /// what it shows.
        #[test]
        fn parsing_never_panics_and_shown_upstreams_read_back(
            text in "\\PC{0,80}",
            host in "[a-z0-9][a-z0-9.-]{0,30}",
            port in 1u16..,
            http in proptest::bool::ANY,
        ) {
            let _ = text.parse::<Via>();
            let kind = if http { UpstreamKind::Http } else { UpstreamKind::Socks5 };
            let upstream = Upstream { kind, host, port, credentials: None };
            let shown = upstream.to_string();
            proptest::prop_assert_eq!(shown.parse::<Upstream>().ok(), Some(upstream));
        }
    }

    #[test]
    fn shows_no_password() {
        let via: Via = "socks5://alice:hunter2@[::1]:1080".parse().expect("valid");
        assert_eq!(via.to_string(), "socks5://alice@[::1]:1080");
        assert!(!format!("{via:?}").contains("hunter2"));
    }
}

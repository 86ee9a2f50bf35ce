//! Access rules: which client may reach which destination. Pure; the server applies them.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::Error;
use crate::via::Via;

/// What a rule (or the default) does with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Answer "connection not allowed by ruleset" (REP X'02').
    Deny,
}

/// A domain-name pattern: `example.com` (that name only) or `*.example.com` (the apex
/// `example.com` and every name below it, such as `a.b.example.com`).
///
/// Matching ignores ASCII case and one trailing dot on either side. `*.example.com` does not
/// match `badexample.com`. The apex is included because a rule meant for a site almost always
/// means the site's own name too; write an exact rule first to treat the apex differently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// Lowercase, without the `*.` and the trailing dot.
    name: String,
    subdomains: bool,
}

impl DomainPattern {
    /// Parses `name`, `*.name` or `*` (any name at all, so that a rule can decide every
    /// domain destination by name, before anything is resolved).
    ///
    /// # Errors
    ///
    /// [`Error::DomainPattern`] if the name is empty or holds a `*` anywhere but a leading `*.`.
    pub fn new(pattern: &str) -> Result<Self, Error> {
        let trimmed = pattern.strip_suffix('.').unwrap_or(pattern);
        if pattern == "*" {
            return Ok(DomainPattern {
                name: String::new(),
                subdomains: true,
            });
        }
        let (name, subdomains) = match trimmed.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (trimmed, false),
        };
        if name.is_empty() || name.contains('*') || name.starts_with('.') {
            return Err(Error::DomainPattern(pattern.to_owned()));
        }
        Ok(DomainPattern {
            name: name.to_ascii_lowercase(),
            subdomains,
        })
    }

    /// Whether `name` (a DST.ADDR domain) matches.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if self.name.is_empty() {
            // `*`: every name.
            return true;
        }
        if name.eq_ignore_ascii_case(&self.name) {
            return true;
        }
        if !self.subdomains {
            return false;
        }
        let Some(split) = name.len().checked_sub(self.name.len() + 1) else {
            return false;
        };
        match (name.get(..split), name.get(split..)) {
            (Some(head), Some(tail)) => {
                !head.is_empty()
                    && tail
                        .strip_prefix('.')
                        .is_some_and(|t| t.eq_ignore_ascii_case(&self.name))
            }
            _ => false,
        }
    }
}

impl FromStr for DomainPattern {
    type Err = Error;

    fn from_str(pattern: &str) -> Result<Self, Error> {
        DomainPattern::new(pattern)
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            return f.write_str("*");
        }
        if self.subdomains {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// One access rule. A request matches when every non-empty list matches; an empty list means
/// "any".
///
/// - `clients`: the client's IP is in one of the networks;
/// - `destinations`: the destination IP (for a domain, each resolved IP in turn) is in one;
/// - `domains`: the destination is a domain name matching one pattern. A rule with domains
///   never matches an IP destination;
/// - `ports`: the destination port is in one of the ranges;
/// - `users`: the client logged in as one of these users (a client that did not log in
///   matches no rule with users).
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are compared as the IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do with a matching request.
    pub action: Action,
    /// Client networks.
    pub clients: Vec<IpNet>,
    /// Users, as the [`crate::Authenticator`] named them.
    pub users: Vec<String>,
    /// Destination networks.
    pub destinations: Vec<IpNet>,
    /// Destination name patterns.
    pub domains: Vec<DomainPattern>,
    /// Destination port ranges.
    pub ports: Vec<RangeInclusive<u16>>,
    /// For an allow rule: how matching requests leave (`None`: as the server's
    /// [`crate::ServerOptions::via`] says).
    pub via: Option<Via>,
}

/// Who asks: the client's IP and, once it logged in, its user. Every method of [`Rules`] that
/// takes a client takes an `IpAddr` too, for a client without a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester<'a> {
    /// The client's IP (IPv4-mapped addresses are judged as IPv4).
    pub ip: IpAddr,
    /// The user it logged in as.
    pub user: Option<&'a str>,
}

impl<'a> Requester<'a> {
    /// `ip`, logged in as `user` if any.
    #[must_use]
    pub fn new(ip: IpAddr, user: Option<&'a str>) -> Self {
        Requester {
            ip: ip.to_canonical(),
            user,
        }
    }

    /// Whether `rule` names this requester (its `clients` and `users`).
    fn named_by(&self, rule: &Rule) -> bool {
        (rule.clients.is_empty() || rule.clients.iter().any(|net| net.contains(&self.ip)))
            && (rule.users.is_empty()
                || self
                    .user
                    .is_some_and(|user| rule.users.iter().any(|name| name == user)))
    }
}

impl From<IpAddr> for Requester<'_> {
    fn from(ip: IpAddr) -> Self {
        Requester::new(ip, None)
    }
}

/// What the rules decided for a request: the action, and the `via` of the rule that decided
/// (`None` when the default decided, the rule has none, or the built-in rule refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// Allow or deny.
    pub action: Action,
    /// The deciding rule's `via`.
    pub via: Option<&'a Via>,
}

impl Rule {
    /// A rule with `action` that matches everything (all lists empty), to fill in with
    /// struct-update syntax: `Rule { ports: vec![25..=25], ..Rule::new(Action::Deny) }`.
    #[must_use]
    pub fn new(action: Action) -> Self {
        Rule {
            action,
            clients: vec![],
            users: vec![],
            destinations: vec![],
            domains: vec![],
            ports: vec![],
            via: None,
        }
    }

    /// `Some(matches)`, or `None` when only the destination IP, not yet known, could decide.
    fn matches(
        &self,
        client: Requester<'_>,
        domain: Option<&str>,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Option<bool> {
        if !client.named_by(self) {
            return Some(false);
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|range| range.contains(&port)) {
            return Some(false);
        }
        if !self.domains.is_empty() {
            let Some(name) = domain else {
                return Some(false);
            };
            if !self.domains.iter().any(|pattern| pattern.matches(name)) {
                return Some(false);
            }
        }
        if !self.destinations.is_empty() {
            let ip = ip?;
            return Some(self.destinations.iter().any(|net| net.contains(&ip)));
        }
        Some(true)
    }

    /// The clients of one family this rule names: everybody for an empty list, else the union
    /// of its networks of that family (IPv4-mapped clients are matched as IPv4, so IPv6
    /// networks never name an IPv4 client).
    fn client_spans(&self, v4: bool) -> Spans {
        if self.clients.is_empty() {
            return Spans::full(v4);
        }
        Spans::of_networks(&self.clients, v4)
    }

    fn covers_every_destination(&self) -> bool {
        self.destinations.is_empty() && self.domains.is_empty() && self.ports.is_empty()
    }
}

/// An ordered rule list: the first matching rule decides, and `default` decides when none
/// matches.
///
/// The server checks CONNECT destinations (for a domain: the name before resolving, then each
/// resolved address), the expected and the actual peer of BIND, and the destination of every
/// UDP datagram. A denied request is answered with REP X'02'.
///
/// A built-in rule comes before every configured one and no rule can allow what it refuses
/// (see [`Rules::never_allowed`]): unspecified, broadcast and multicast destinations, and
/// IPv4-compatible IPv6 addresses. Linux connects an unspecified address (`0.0.0.0`, `::`)
/// to the local host, so without it a rule denying `127.0.0.0/8` and `::1` would not keep
/// clients away from loopback services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
    /// The action when no rule matches.
    pub default: Action,
}

impl Default for Rules {
    /// No rules, default [`Action::Allow`].
    fn default() -> Self {
        Rules {
            rules: vec![],
            default: Action::Allow,
        }
    }
}

impl Rules {
    /// The action for `client` reaching `ip:port`, which was asked for by the name `domain`
    /// (`None` for an IP destination). [`Action::Deny`] for every address that
    /// [`Rules::never_allowed`] names, whatever the rules say.
    #[must_use]
    pub fn check<'a>(
        &self,
        client: impl Into<Requester<'a>>,
        domain: Option<&str>,
        ip: IpAddr,
        port: u16,
    ) -> Action {
        self.route(client, domain, ip, port).action
    }

    /// As [`Rules::check`], with the deciding rule's `via`.
    #[must_use]
    pub fn route<'a>(
        &self,
        client: impl Into<Requester<'a>>,
        domain: Option<&str>,
        ip: IpAddr,
        port: u16,
    ) -> Verdict<'_> {
        let client = client.into();
        let client = Requester::new(client.ip, client.user);
        let ip = ip.to_canonical();
        if Rules::never_allowed(ip) {
            return Verdict {
                action: Action::Deny,
                via: None,
            };
        }
        self.decide(
            self.rules
                .iter()
                .find(|rule| rule.matches(client, domain, Some(ip), port) == Some(true)),
        )
    }

    /// The verdict of `rule`, or of the default when no rule matched.
    fn decide<'a>(&'a self, rule: Option<&'a Rule>) -> Verdict<'a> {
        match rule {
            Some(rule) => Verdict {
                action: rule.action,
                via: rule.via.as_ref(),
            },
            None => Verdict {
                action: self.default,
                via: None,
            },
        }
    }

    /// Whether `ip` is a destination that no rule can allow (the built-in rule; REP X'02'):
    ///
    /// - IPv4 `0.0.0.0/8` ("this host on this network", RFC 1122 §3.2.1.3: never a
    ///   destination; Linux connects `0.0.0.0` to the local host) and IPv6 `::`;
    /// - the limited broadcast `255.255.255.255` (a directed broadcast cannot be told from a
    ///   host address without knowing the remote network, so it is left to the rules);
    /// - multicast: `224.0.0.0/4` and `ff00::/8`;
    /// - IPv4-compatible IPv6 addresses (`::a.b.c.d`, `::/96` but `::1`), deprecated by
    ///   RFC 4291 §2.5.5.1, so that `::127.0.0.1` cannot stand in for `127.0.0.1`.
    ///
    /// IPv4-mapped addresses (`::ffff:a.b.c.d`) are judged as their IPv4 address.
    #[must_use]
    pub fn never_allowed(ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => ip.octets()[0] == 0 || ip.is_broadcast() || ip.is_multicast(),
            IpAddr::V6(ip) => {
                let compatible = matches!(ip.segments(), [0, 0, 0, 0, 0, 0, _, _]);
                ip.is_multicast() || (compatible && ip != Ipv6Addr::LOCALHOST)
            }
        }
    }

    /// The action for `client` reaching `domain:port` if it is already decided by the name, or
    /// `None` if a rule with `destinations` comes first and the resolved addresses will decide.
    ///
    /// The server calls this before resolving, so that a denied name is never looked up.
    #[must_use]
    pub fn check_name<'a>(
        &self,
        client: impl Into<Requester<'a>>,
        domain: &str,
        port: u16,
    ) -> Option<Action> {
        self.route_name(client, domain, port)
            .map(|verdict| verdict.action)
    }

    /// As [`Rules::check_name`], with the deciding rule's `via`: a name allowed by name with
    /// an upstream goes there unresolved.
    #[must_use]
    pub fn route_name<'a>(
        &self,
        client: impl Into<Requester<'a>>,
        domain: &str,
        port: u16,
    ) -> Option<Verdict<'_>> {
        let client = client.into();
        let client = Requester::new(client.ip, client.user);
        for rule in &self.rules {
            match rule.matches(client, Some(domain), None, port) {
                Some(true) => return Some(self.decide(Some(rule))),
                Some(false) => {}
                None => return None,
            }
        }
        Some(self.decide(None))
    }

    /// Whether `client` may reach anything at all: `false` if the first rule naming it (by
    /// network and user) that
    /// decides for every destination (no `destinations`, `domains` or `ports`) is a deny, with
    /// no allow rule for it before; the default decides if no rule does.
    ///
    /// The server asks this before it opens anything for a request (a BIND listener, a UDP
    /// relay socket) and answers REP X'02' at once when it is `false`.
    #[must_use]
    pub fn admits<'a>(&self, client: impl Into<Requester<'a>>) -> bool {
        let client = client.into();
        let client = Requester::new(client.ip, client.user);
        for rule in &self.rules {
            if !client.named_by(rule) {
                continue;
            }
            match rule.action {
                Action::Allow => return true,
                Action::Deny if rule.covers_every_destination() => return false,
                Action::Deny => {}
            }
        }
        self.default == Action::Allow
    }

    /// Whether the rules keep an arbitrary client from using the proxy, for the server's
    /// open-proxy check. `true` only if it holds for IPv4 and for IPv6 clients.
    ///
    /// Networks are judged by what they cover together, however they are split: `0.0.0.0/1`
    /// and `128.0.0.0/1` (in one rule or in two) name everybody, like `0.0.0.0/0`. For each
    /// family, walking the rules in order, a client becomes *admitted* at the first allow rule
    /// naming it (even for only some destinations or users), and *shut out* at the first deny
    /// rule naming it that has no destination, domain, port or user list; clients still undecided at the
    /// end are admitted if the default is [`Action::Allow`]. The networks of such deny rules
    /// are the *exceptions*, unless together they name everybody (then they are a catch-all).
    /// The family is open if the admitted clients and the exceptions together are everybody:
    /// so `[deny clients 1.2.3.4]` with default allow is *not* limiting (everybody else still
    /// gets through), while `[allow clients 10.0.0.0/8]` with default deny is, and so is
    /// `[allow clients 10.0.0.0/8, deny clients 0.0.0.0/1, deny clients 128.0.0.0/1]`.
    #[must_use]
    pub fn limits_clients(&self) -> bool {
        [true, false].into_iter().all(|v4| {
            let full = Spans::full(v4);
            let mut undecided = full.clone();
            let mut admitted = Spans::default();
            let mut exceptions = Spans::default();
            for rule in &self.rules {
                let named = rule.client_spans(v4);
                match rule.action {
                    // A rule with users admits some of its clients (those who log in as
                    // them): counted as admitting them all, while the others stay undecided,
                    // so that such a rule never makes a listener look closed.
                    Action::Allow => {
                        admitted = admitted.union(&undecided.intersect(&named));
                        if rule.users.is_empty() {
                            undecided = undecided.subtract(&named);
                        }
                    }
                    // A deny rule with users shuts out only them: it limits nobody else.
                    Action::Deny if rule.covers_every_destination() && rule.users.is_empty() => {
                        undecided = undecided.subtract(&named);
                        if !named.covers_every_client(v4) {
                            exceptions = exceptions.union(&named);
                        }
                    }
                    Action::Deny => {}
                }
            }
            if self.default == Action::Allow {
                admitted = admitted.union(&undecided);
            }
            if exceptions.covers_every_client(v4) {
                exceptions = Spans::default();
            }
            !admitted.union(&exceptions).covers_every_client(v4)
        })
    }
}

/// Whether `networks` together name every address of one family (IPv4 if `v4`), however they
/// are split or overlap. IPv6 networks never cover IPv4 clients: an IPv4-mapped client is
/// matched as IPv4.
#[must_use]
pub fn networks_cover_family(networks: &[IpNet], v4: bool) -> bool {
    Spans::of_networks(networks, v4).covers_every_client(v4)
}

/// A set of addresses of one family as sorted, disjoint, non-adjacent inclusive ranges (IPv4
/// addresses as their `u32` value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spans(Vec<(u128, u128)>);

impl Spans {
    fn full(v4: bool) -> Spans {
        let last = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        Spans(vec![(0, last)])
    }

    /// The addresses a TCP client can have: everything but `0.0.0.0/8`, `224.0.0.0/3`
    /// (multicast, reserved and broadcast), and for IPv6 `::`, the IPv4-mapped block (such
    /// clients are judged as IPv4) and `ff00::/8`. Networks that miss only these still name
    /// everybody.
    fn possible_clients(v4: bool) -> Spans {
        let impossible: &[&str] = if v4 {
            &["0.0.0.0/8", "224.0.0.0/3"]
        } else {
            &["::/128", "::ffff:0:0/96", "ff00::/8"]
        };
        let impossible: Vec<IpNet> = impossible
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect();
        Spans::full(v4).subtract(&Spans::of_networks(&impossible, v4))
    }

    /// Whether these addresses include every possible client of the family.
    fn covers_every_client(&self, v4: bool) -> bool {
        Spans::possible_clients(v4).subtract(self).0.is_empty()
    }

    fn of_networks(networks: &[IpNet], v4: bool) -> Spans {
        let ranges = networks.iter().filter_map(|net| match net {
            IpNet::V4(net) if v4 => Some((
                u128::from(u32::from(net.network())),
                u128::from(u32::from(net.broadcast())),
            )),
            IpNet::V6(net) if !v4 => Some((u128::from(net.network()), u128::from(net.broadcast()))),
            _ => None,
        });
        Spans::normalized(ranges.collect())
    }

    /// Sorts and merges overlapping or adjacent ranges.
    fn normalized(mut ranges: Vec<(u128, u128)>) -> Spans {
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Spans(merged)
    }

    fn union(&self, other: &Spans) -> Spans {
        Spans::normalized(self.0.iter().chain(&other.0).copied().collect())
    }

    fn subtract(&self, other: &Spans) -> Spans {
        let mut out = Vec::with_capacity(self.0.len());
        for &(start, end) in &self.0 {
            let mut from = Some(start);
            for &(cut_start, cut_end) in &other.0 {
                let Some(current) = from else { break };
                if cut_end < current || cut_start > end {
                    continue;
                }
                if cut_start > current {
                    out.push((current, cut_start - 1));
                }
                from = cut_end.checked_add(1).filter(|&next| next <= end);
            }
            if let Some(current) = from {
                out.push((current, end));
            }
        }
        Spans::normalized(out)
    }

    fn intersect(&self, other: &Spans) -> Spans {
        self.subtract(&self.subtract(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid IP")
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("valid network")
    }

    fn pattern(text: &str) -> DomainPattern {
        DomainPattern::new(text).expect("valid pattern")
    }

    #[test]
    fn domain_patterns_match_names_and_subdomains() {
        let table = [
            ("example.com", "example.com", true),
            ("example.com", "EXAMPLE.com.", true),
            ("example.com.", "example.com", true),
            ("example.com", "www.example.com", false),
            ("*.example.com", "example.com", true),
            ("*.example.com", "a.b.Example.COM", true),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "example.org", false),
            ("*.com", "x.com", true),
            ("*", "clients2.google.com", true),
            ("*", "localhost", true),
        ];
        for (pattern_text, name, expected) in table {
            assert_eq!(
                pattern(pattern_text).matches(name),
                expected,
                "{pattern_text} vs {name}"
            );
        }
    }

    #[test]
    fn a_star_pattern_decides_every_name_before_resolving() {
        let rules = Rules {
            rules: vec![
                Rule {
                    domains: vec![pattern("localhost")],
                    ..Rule::new(Action::Allow)
                },
                Rule {
                    domains: vec![pattern("*")],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    destinations: vec!["127.0.0.0/8".parse().expect("net")],
                    ..Rule::new(Action::Allow)
                },
            ],
            default: Action::Deny,
        };
        let client = ip("127.0.0.1");
        assert_eq!(
            rules.check_name(client, "localhost", 80),
            Some(Action::Allow)
        );
        assert_eq!(
            rules.check_name(client, "update.example.com", 443),
            Some(Action::Deny)
        );
        assert_eq!(
            rules.check(client, None, ip("127.0.0.2"), 80),
            Action::Allow
        );
        assert_eq!(pattern("*").to_string(), "*");
    }

    #[test]
    fn users_rules_match_only_logged_in_users_they_name() {
        let rules = Rules {
            rules: vec![
                Rule {
                    users: vec!["bob".into()],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    users: vec!["alice".into()],
                    ports: vec![22..=22],
                    ..Rule::new(Action::Allow)
                },
                Rule {
                    ports: vec![22..=22],
                    ..Rule::new(Action::Deny)
                },
            ],
            default: Action::Allow,
        };
        let client = ip("192.0.2.1");
        let (alice, bob) = (
            Requester::new(client, Some("alice")),
            Requester::new(client, Some("bob")),
        );
        let table = [
            (Requester::from(client), 80, Action::Allow),
            (Requester::from(client), 22, Action::Deny),
            (alice, 22, Action::Allow),
            (alice, 80, Action::Allow),
            (bob, 80, Action::Deny),
            (Requester::new(client, Some("carol")), 22, Action::Deny),
        ];
        for (who, port, expected) in table {
            assert_eq!(
                rules.check(who, None, ip("198.51.100.1"), port),
                expected,
                "{who:?} {port}"
            );
            assert_eq!(
                rules.check_name(who, "example.test", port),
                Some(expected),
                "{who:?} {port}"
            );
        }
        assert!(!rules.admits(bob));
        assert!(rules.admits(alice) && rules.admits(client));
        // Users do not limit clients: a deny rule for bob leaves everybody else in.
        assert!(!rules.limits_clients());
        let only_alice = Rules {
            rules: vec![Rule {
                users: vec!["alice".into()],
                ..Rule::new(Action::Allow)
            }],
            default: Action::Deny,
        };
        // Conservative: an allow rule with users counts as admitting its clients.
        assert!(!only_alice.limits_clients());
    }

    #[test]
    fn rejects_malformed_domain_patterns() {
        for bad in ["", ".", "*.", "a.*.com", "*example.com", ".example.com"] {
            assert!(
                matches!(DomainPattern::new(bad), Err(Error::DomainPattern(p)) if p == bad),
                "{bad}"
            );
        }
        assert_eq!(pattern("*.Example.com.").to_string(), "*.example.com");
    }

    fn sample() -> Rules {
        Rules {
            rules: vec![
                Rule {
                    clients: vec![net("192.0.2.0/24")],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    destinations: vec![net("10.0.0.0/8")],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    domains: vec![pattern("*.blocked.test")],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    ports: vec![25..=25, 465..=587],
                    ..Rule::new(Action::Deny)
                },
                Rule {
                    domains: vec![pattern("ok.test")],
                    ..Rule::new(Action::Allow)
                },
            ],
            default: Action::Allow,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = sample();
        let client = ip("198.51.100.7");
        let table: [(IpAddr, Option<&str>, &str, u16, Action); 10] = [
            (ip("192.0.2.9"), None, "203.0.113.1", 80, Action::Deny),
            (client, None, "203.0.113.1", 80, Action::Allow),
            (client, None, "10.1.2.3", 80, Action::Deny),
            (client, Some("intranet.test"), "10.1.2.3", 80, Action::Deny),
            (
                client,
                Some("x.blocked.test"),
                "203.0.113.1",
                80,
                Action::Deny,
            ),
            (
                client,
                Some("blocked.test"),
                "203.0.113.1",
                80,
                Action::Deny,
            ),
            (client, None, "203.0.113.1", 25, Action::Deny),
            (client, None, "203.0.113.1", 500, Action::Deny),
            (client, None, "203.0.113.1", 588, Action::Allow),
            (
                ip("::ffff:192.0.2.1"),
                None,
                "203.0.113.1",
                80,
                Action::Deny,
            ),
        ];
        for (client, domain, dest, port, expected) in table {
            assert_eq!(
                rules.check(client, domain, ip(dest), port),
                expected,
                "{client} -> {domain:?}/{dest}:{port}"
            );
        }
    }

    #[test]
    fn domain_rules_never_match_ip_destinations() {
        let rules = Rules {
            rules: vec![Rule {
                domains: vec![pattern("*.test")],
                ..Rule::new(Action::Allow)
            }],
            default: Action::Deny,
        };
        let client = ip("127.0.0.1");
        assert_eq!(
            rules.check(client, Some("a.test"), ip("127.0.0.1"), 80),
            Action::Allow
        );
        assert_eq!(rules.check(client, None, ip("127.0.0.1"), 80), Action::Deny);
    }

    #[test]
    fn names_decide_before_resolution_only_when_no_address_rule_comes_first() {
        let rules = sample();
        let client = ip("198.51.100.7");
        // The client rule matches nobody here, then the 10/8 rule needs the address.
        assert_eq!(rules.check_name(client, "x.blocked.test", 80), None);
        assert_eq!(
            rules.check_name(ip("192.0.2.1"), "ok.test", 80),
            Some(Action::Deny)
        );
        let names_only = Rules {
            rules: vec![Rule {
                domains: vec![pattern("*.blocked.test")],
                ..Rule::new(Action::Deny)
            }],
            default: Action::Allow,
        };
        assert_eq!(
            names_only.check_name(client, "a.blocked.test", 80),
            Some(Action::Deny)
        );
        assert_eq!(
            names_only.check_name(client, "fine.test", 80),
            Some(Action::Allow)
        );
    }

    #[test]
    fn tells_whether_arbitrary_clients_are_kept_out() {
        let allow_lan = Rule {
            clients: vec![net("10.0.0.0/8")],
            ..Rule::new(Action::Allow)
        };
        let deny_one = Rule {
            clients: vec![net("192.0.2.1/32")],
            ..Rule::new(Action::Deny)
        };
        let deny_all = Rule::new(Action::Deny);
        let deny_v4 = Rule {
            clients: vec![net("0.0.0.0/0")],
            ..Rule::new(Action::Deny)
        };
        let deny_port = Rule {
            ports: vec![25..=25],
            ..Rule::new(Action::Deny)
        };
        let table = [
            (vec![], Action::Allow, false),
            (vec![], Action::Deny, true),
            (vec![allow_lan.clone()], Action::Deny, true),
            (
                vec![allow_lan.clone(), deny_all.clone()],
                Action::Allow,
                true,
            ),
            (vec![deny_one], Action::Allow, false),
            (vec![deny_port.clone()], Action::Allow, false),
            (vec![deny_port, allow_lan], Action::Deny, true),
            (vec![deny_v4.clone()], Action::Allow, false),
            (
                vec![
                    deny_v4,
                    Rule {
                        clients: vec![net("::/0")],
                        ..deny_all
                    },
                ],
                Action::Allow,
                true,
            ),
            (vec![Rule::new(Action::Allow)], Action::Deny, false),
        ];
        for (rules, default, expected) in table {
            let rules = Rules { rules, default };
            assert_eq!(rules.limits_clients(), expected, "{rules:?}");
        }
    }
    #[test]
    fn unspecified_broadcast_multicast_and_compatible_destinations_are_never_allowed() {
        let allow_all = Rules {
            rules: vec![Rule::new(Action::Allow)],
            default: Action::Allow,
        };
        let client = ip("127.0.0.1");
        let never = [
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "::",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::127.0.0.1",
            "::224.0.0.1",
            "::0.0.0.2",
            "ff02::1",
            "ff0e::1",
        ];
        for text in never {
            assert!(Rules::never_allowed(ip(text)), "{text}");
            assert_eq!(
                allow_all.check(client, None, ip(text), 80),
                Action::Deny,
                "{text}"
            );
            assert_eq!(
                allow_all.check(client, Some("name.test"), ip(text), 80),
                Action::Deny,
                "{text}"
            );
        }
        let judged_by_rules = [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "1.0.0.0",
            "192.0.2.255",
            "2001:db8::1",
            "fe80::1",
            "::ffff:0:7f00:1",
        ];
        for text in judged_by_rules {
            assert!(!Rules::never_allowed(ip(text)), "{text}");
            assert_eq!(
                allow_all.check(client, None, ip(text), 80),
                Action::Allow,
                "{text}"
            );
        }
    }

    #[test]
    fn tells_whether_a_client_may_reach_anything() {
        let lan = net("10.0.0.0/8");
        let deny_lan = Rule {
            clients: vec![lan],
            ..Rule::new(Action::Deny)
        };
        let allow_lan_web = Rule {
            clients: vec![lan],
            ports: vec![443..=443],
            ..Rule::new(Action::Allow)
        };
        let deny_lan_smtp = Rule {
            clients: vec![lan],
            ports: vec![25..=25],
            ..Rule::new(Action::Deny)
        };
        let (inside, outside) = (ip("10.1.2.3"), ip("192.0.2.1"));
        let table = [
            (vec![deny_lan.clone()], Action::Allow, false, true),
            (
                vec![allow_lan_web.clone(), deny_lan.clone()],
                Action::Allow,
                true,
                true,
            ),
            (
                vec![deny_lan_smtp.clone(), deny_lan.clone()],
                Action::Allow,
                false,
                true,
            ),
            (vec![deny_lan_smtp], Action::Deny, false, false),
            (vec![allow_lan_web], Action::Deny, true, false),
            (vec![Rule::new(Action::Deny)], Action::Allow, false, false),
            (vec![], Action::Deny, false, false),
            (vec![], Action::Allow, true, true),
        ];
        for (rules, default, inside_admitted, outside_admitted) in table {
            let rules = Rules { rules, default };
            assert_eq!(rules.admits(inside), inside_admitted, "{rules:?}");
            assert_eq!(rules.admits(outside), outside_admitted, "{rules:?}");
        }
        let v6_mapped = ip("::ffff:10.0.0.1");
        let rules = Rules {
            rules: vec![deny_lan],
            default: Action::Allow,
        };
        assert!(!rules.admits(v6_mapped));
    }

    #[test]
    fn networks_count_by_what_they_cover_together() {
        let nets = |list: &[&str]| list.iter().map(|text| net(text)).collect::<Vec<_>>();
        let v4_halves = nets(&["0.0.0.0/1", "128.0.0.0/1"]);
        let v4_quarters = nets(&["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"]);
        let v4_overlapping = nets(&["0.0.0.0/1", "64.0.0.0/2", "100.0.0.0/8", "128.0.0.0/1"]);
        let v6_halves = nets(&["::/1", "8000::/1"]);
        let v4_gap = nets(&["0.0.0.0/1", "128.0.0.0/2", "224.0.0.0/3"]);
        // Missing only addresses no client can have (240.0.0.0/4, 0.0.0.0/8) is no gap.
        let v4_no_client_missing = nets(&[
            "1.0.0.0/8",
            "2.0.0.0/7",
            "4.0.0.0/6",
            "8.0.0.0/5",
            "16.0.0.0/4",
            "32.0.0.0/3",
            "64.0.0.0/2",
            "128.0.0.0/2",
            "192.0.0.0/3",
            "224.0.0.0/4",
        ]);
        assert!(networks_cover_family(&v4_no_client_missing, true));
        assert!(networks_cover_family(&v4_halves, true));
        assert!(networks_cover_family(&v4_quarters, true));
        assert!(networks_cover_family(&v4_overlapping, true));
        assert!(!networks_cover_family(&v4_halves, false));
        assert!(networks_cover_family(&v6_halves, false));
        assert!(!networks_cover_family(&v6_halves, true));
        assert!(!networks_cover_family(&v4_gap, true));
        assert!(!networks_cover_family(&nets(&["::ffff:0:0/96"]), true));
        assert!(networks_cover_family(&nets(&["0.0.0.0/0"]), true));
        assert!(networks_cover_family(&nets(&["::/0"]), false));

        let allow = |list: &[&str]| Rule {
            clients: nets(list),
            ..Rule::new(Action::Allow)
        };
        let deny = |list: &[&str]| Rule {
            clients: nets(list),
            ..Rule::new(Action::Deny)
        };
        let v6_all = deny(&["::/0"]);
        let table = [
            // Split allow rules let everybody in, as one rule or as several.
            (
                vec![
                    allow(&["0.0.0.0/1", "128.0.0.0/1"]),
                    Rule::new(Action::Deny),
                ],
                false,
            ),
            (
                vec![
                    allow(&["0.0.0.0/2", "64.0.0.0/2"]),
                    allow(&["128.0.0.0/2"]),
                    allow(&["192.0.0.0/2"]),
                    Rule::new(Action::Deny),
                ],
                false,
            ),
            (
                vec![
                    allow(&["::/1", "8000::/1"]),
                    deny(&["0.0.0.0/0"]),
                    Rule::new(Action::Deny),
                ],
                false,
            ),
            // Split deny rules shut everybody out like one catch-all deny.
            (
                vec![deny(&["0.0.0.0/1"]), deny(&["128.0.0.0/1"]), v6_all.clone()],
                true,
            ),
            (
                vec![
                    allow(&["10.0.0.0/8"]),
                    deny(&["0.0.0.0/1", "128.0.0.0/1"]),
                    v6_all.clone(),
                ],
                true,
            ),
            // A deny for one half leaves the other half open.
            (vec![deny(&["0.0.0.0/1"]), v6_all.clone()], false),
            // An exception before split allows still leaves everybody else in.
            (
                vec![
                    deny(&["192.0.2.1/32"]),
                    allow(&["0.0.0.0/1", "128.0.0.0/1"]),
                    Rule::new(Action::Deny),
                ],
                false,
            ),
            (
                vec![
                    allow(&["10.0.0.0/8", "192.168.0.0/16"]),
                    Rule::new(Action::Deny),
                ],
                true,
            ),
        ];
        for (rules, limited) in table {
            let rules = Rules {
                rules,
                default: Action::Allow,
            };
            assert_eq!(rules.limits_clients(), limited, "{rules:?}");
        }
    }
    proptest::proptest! {
        #[test]
        fn span_sets_agree_with_a_brute_force_model(
            a in proptest::collection::vec((0_u128..64, 0_u128..8), 0..6),
            b in proptest::collection::vec((0_u128..64, 0_u128..8), 0..6),
        ) {
            let spans = |ranges: &[(u128, u128)]| {
                Spans::normalized(ranges.iter().map(|&(start, len)| (start, start + len)).collect())
            };
            let model = |ranges: &[(u128, u128)], x: u128| {
                ranges.iter().any(|&(start, len)| (start..=start + len).contains(&x))
            };
            let member = |set: &Spans, x: u128| set.0.iter().any(|&(s, e)| (s..=e).contains(&x));
            let (sa, sb) = (spans(&a), spans(&b));
            let (union, difference, intersection) =
                (sa.union(&sb), sa.subtract(&sb), sa.intersect(&sb));
            for x in 0..80 {
                let (in_a, in_b) = (model(&a, x), model(&b, x));
                proptest::prop_assert_eq!(member(&union, x), in_a || in_b, "union at {}", x);
                proptest::prop_assert_eq!(member(&difference, x), in_a && !in_b, "difference at {}", x);
                proptest::prop_assert_eq!(member(&intersection, x), in_a && in_b, "intersection at {}", x);
            }
            // Normalized: sorted, disjoint and not adjacent, so equal sets compare equal.
            for set in [&union, &difference, &intersection] {
                for pair in set.0.windows(2) {
                    proptest::prop_assert!(pair[0].1 + 1 < pair[1].0, "{:?}", set);
                }
            }
        }
    }
}

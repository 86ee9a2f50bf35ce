//! Access rules: which client may reach which destination. Pure; the server applies them.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::Error;

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
/// - `ports`: the destination port is in one of the ranges.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are compared as the IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do with a matching request.
    pub action: Action,
    /// Client networks.
    pub clients: Vec<IpNet>,
    /// Destination networks.
    pub destinations: Vec<IpNet>,
    /// Destination name patterns.
    pub domains: Vec<DomainPattern>,
    /// Destination port ranges.
    pub ports: Vec<RangeInclusive<u16>>,
}

impl Rule {
    /// A rule with `action` that matches everything (all lists empty), to fill in with
    /// struct-update syntax: `Rule { ports: vec![25..=25], ..Rule::new(Action::Deny) }`.
    #[must_use]
    pub fn new(action: Action) -> Self {
        Rule {
            action,
            clients: vec![],
            destinations: vec![],
            domains: vec![],
            ports: vec![],
        }
    }

    /// `Some(matches)`, or `None` when only the destination IP, not yet known, could decide.
    fn matches(
        &self,
        client: IpAddr,
        domain: Option<&str>,
        ip: Option<IpAddr>,
        port: u16,
    ) -> Option<bool> {
        if !self.clients.is_empty() && !self.clients.iter().any(|net| net.contains(&client)) {
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

    /// Whether every client of this family, whatever its address, is in `clients`.
    fn covers_every_client(&self, v4: bool) -> bool {
        self.clients.is_empty()
            || self
                .clients
                .iter()
                .any(|net| net.prefix_len() == 0 && matches!(net, IpNet::V4(_)) == v4)
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
    /// (`None` for an IP destination).
    #[must_use]
    pub fn check(&self, client: IpAddr, domain: Option<&str>, ip: IpAddr, port: u16) -> Action {
        let (client, ip) = (client.to_canonical(), ip.to_canonical());
        self.rules
            .iter()
            .find(|rule| rule.matches(client, domain, Some(ip), port) == Some(true))
            .map_or(self.default, |rule| rule.action)
    }

    /// The action for `client` reaching `domain:port` if it is already decided by the name, or
    /// `None` if a rule with `destinations` comes first and the resolved addresses will decide.
    ///
    /// The server calls this before resolving, so that a denied name is never looked up.
    #[must_use]
    pub fn check_name(&self, client: IpAddr, domain: &str, port: u16) -> Option<Action> {
        let client = client.to_canonical();
        for rule in &self.rules {
            match rule.matches(client, Some(domain), None, port) {
                Some(true) => return Some(rule.action),
                Some(false) => {}
                None => return None,
            }
        }
        Some(self.default)
    }

    /// Whether the rules keep an arbitrary client from using the proxy, for the server's
    /// open-proxy check.
    ///
    /// An arbitrary client is one in none of the networks the rules name, except networks of
    /// prefix length 0 (`0.0.0.0/0`, `::/0`), which name everybody of their family. Walking the
    /// rules in order, for IPv4 and IPv6 clients separately: a rule that such a client matches
    /// with [`Action::Allow`], even for only some destinations, means "not limited"; one with
    /// [`Action::Deny`] and no destination, domain or port list means "limited"; if neither
    /// comes, the default action decides. The result is `true` only if both families are
    /// limited. So `[deny clients 1.2.3.4]` with default allow is *not* limiting (everybody
    /// else still gets through), while `[allow clients 10.0.0.0/8]` with default deny is.
    #[must_use]
    pub fn limits_clients(&self) -> bool {
        [true, false].into_iter().all(|v4| {
            for rule in self
                .rules
                .iter()
                .filter(|rule| rule.covers_every_client(v4))
            {
                match rule.action {
                    Action::Allow => return false,
                    Action::Deny if rule.covers_every_destination() => return true,
                    Action::Deny => {}
                }
            }
            self.default == Action::Deny
        })
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
}

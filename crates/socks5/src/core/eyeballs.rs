//! Connecting to the allowed addresses of a destination: Happy Eyeballs (RFC 8305).
//!
//! The addresses are put in the order to try (families interleaved, IPv6 first, RFC 8305
//! §4), and the first attempt starts at once. The next one starts when the current ones have
//! not connected within `happy_eyeballs_delay` (the "Connection Attempt Delay" of §5), or at
//! once when an attempt fails; the first to connect wins and the others are dropped (their
//! sockets closed). With a delay of zero the addresses are tried one after another in the
//! resolver's order, each after the previous failed. The caller bounds the whole by
//! `connect_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::{Opened, OwnListeners, attempt};
use crate::Error;
use crate::framing::later;
use crate::options::ServerOptions;
use crate::via::Upstream;

type Attempt<'a> = Pin<Box<dyn Future<Output = (SocketAddr, Result<Opened, Error>)> + Send + 'a>>;

/// An allowed address, and the upstream it goes through (`None`: directly).
pub(super) type Candidate<'a> = (SocketAddr, Option<&'a Upstream>);

/// Connects to the first of `candidates` (all allowed by the rules) that answers.
///
/// # Errors
///
/// The error of the last attempt to fail, when all failed.
pub(super) async fn race<'a>(
    candidates: Vec<Candidate<'a>>,
    options: &'a ServerOptions,
    own: &'a OwnListeners,
) -> Result<Opened, Error> {
    let delay = options.happy_eyeballs_delay;
    if delay.is_zero() {
        return one_after_another(candidates, options, own).await;
    }
    let mut waiting = interleave(candidates).into_iter();
    let mut running = FuturesUnordered::<Attempt<'a>>::new();
    let start = |(address, via): Candidate<'a>| -> Attempt<'a> {
        Box::pin(labelled(address, via, options, own))
    };
    let mut next_at = Instant::now();
    loop {
        let more = waiting.len() > 0;
        tokio::select! {
            // `biased`: an attempt that connected wins over starting another.
            biased;
            Some((address, result)) = running.next(), if !running.is_empty() => match result {
                Ok(opened) => return Ok(opened),
                Err(error) => {
                    debug!(%address, %error, "connect attempt failed");
                    if more {
                        // A failure starts the next attempt at once (RFC 8305 §5).
                        next_at = Instant::now();
                    } else if running.is_empty() {
                        // The last attempt failed: its error answers the client.
                        return Err(error);
                    }
                }
            },
            () = sleep_until(next_at), if more => {
                if let Some(candidate) = waiting.next() {
                    running.push(start(candidate));
                }
                next_at = later(Instant::now(), delay);
            }
            // Nothing running and nothing to start: only with no candidate at all.
            else => return Err(no_address()),
        }
    }
}

/// One attempt, with its address for the log.
async fn labelled(
    address: SocketAddr,
    via: Option<&Upstream>,
    options: &ServerOptions,
    own: &OwnListeners,
) -> (SocketAddr, Result<Opened, Error>) {
    (address, attempt(address, via, options, own).await)
}

/// Tries `candidates` in order, each after the previous one failed.
async fn one_after_another(
    candidates: Vec<Candidate<'_>>,
    options: &ServerOptions,
    own: &OwnListeners,
) -> Result<Opened, Error> {
    let mut last_failure = None;
    for (address, via) in candidates {
        match attempt(address, via, options, own).await {
            Ok(opened) => return Ok(opened),
            Err(error) => {
                debug!(%address, %error, "connect attempt failed");
                last_failure = Some(error);
            }
        }
    }
    Err(last_failure.unwrap_or_else(no_address))
}

/// The core always passes at least one candidate, so this is never the answer.
fn no_address() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no address to connect to",
    ))
}

/// The order of attempts (RFC 8305 §4): IPv6 and IPv4 alternate, starting with IPv6, each
/// family in the resolver's order; when one family runs out the rest of the other follows.
fn interleave<T>(candidates: Vec<(SocketAddr, T)>) -> Vec<(SocketAddr, T)> {
    let (v6, v4): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|(address, _)| address.is_ipv6());
    let mut order = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return order,
            (first, second) => order.extend(first.into_iter().chain(second)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::core::{ConnectFuture, Connector, Outbound, Request, open};
    use crate::resolve::StaticResolver;
    use crate::rules::{Action, Rule, Rules};
    use crate::wire::{Address, Reply};

    fn at(text: &str) -> SocketAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn interleaves_families_starting_with_ipv6() {
        let table: [(&[&str], &[&str]); 5] = [
            (
                &["127.0.0.1:1", "127.0.0.2:1", "[::1]:1", "[::2]:1"],
                &["[::1]:1", "127.0.0.1:1", "[::2]:1", "127.0.0.2:1"],
            ),
            (
                &["[::1]:1", "[::2]:1", "[::3]:1", "127.0.0.1:1"],
                &["[::1]:1", "127.0.0.1:1", "[::2]:1", "[::3]:1"],
            ),
            (
                &["127.0.0.1:1", "127.0.0.2:1"],
                &["127.0.0.1:1", "127.0.0.2:1"],
            ),
            (&["[::1]:1"], &["[::1]:1"]),
            (&[], &[]),
        ];
        for (given, expected) in table {
            let given = given.iter().map(|a| (at(a), ())).collect();
            let expected: Vec<(SocketAddr, ())> = expected.iter().map(|a| (at(a), ())).collect();
            assert_eq!(interleave(given), expected);
        }
    }

    /// What the fake connector does for an address.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        Hang,
        Refuse,
        Answer,
    }

    /// Records when each address was attempted (in the test's paused time) and behaves as
    /// told.
    #[derive(Clone)]
    struct Fake {
        behaviour: HashMap<IpAddr, Behaviour>,
        attempts: Arc<Mutex<Vec<(IpAddr, Duration)>>>,
        epoch: Instant,
    }

    impl Fake {
        fn new(behaviour: &[(&str, Behaviour)]) -> Fake {
            Fake {
                behaviour: behaviour
                    .iter()
                    .map(|(ip, b)| (ip.parse().expect("valid IP"), *b))
                    .collect(),
                attempts: Arc::default(),
                epoch: Instant::now(),
            }
        }

        fn attempts(&self) -> Vec<(IpAddr, Duration)> {
            self.attempts.lock().expect("not poisoned").clone()
        }
    }

    impl Connector for Fake {
        fn connect(&self, address: SocketAddr, _bind: Option<IpAddr>) -> ConnectFuture<'_> {
            let behaviour = self.behaviour.get(&address.ip()).copied();
            self.attempts
                .lock()
                .expect("not poisoned")
                .push((address.ip(), self.epoch.elapsed()));
            Box::pin(async move {
                match behaviour {
                    Some(Behaviour::Hang) => std::future::pending().await,
                    Some(Behaviour::Answer) => {
                        let (near, _far) = tokio::io::duplex(16);
                        Ok(Outbound::Stream(Box::new(near)))
                    }
                    Some(Behaviour::Refuse) | None => Err(io::ErrorKind::ConnectionRefused.into()),
                }
            })
        }
    }

    const DELAY: Duration = Duration::from_millis(250);
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Options whose resolver knows `dual.test` as ::1, 2001:db8::2, 127.0.0.1 (in that order, so
    /// that the interleaving shows), with `connector`.
    fn options(connector: &Fake, rules: Rules, delay: Duration) -> ServerOptions {
        let names = StaticResolver::new([(
            "dual.test".to_owned(),
            vec![
                "::1".parse().expect("valid"),
                "2001:db8::2".parse().expect("valid"),
                "127.0.0.1".parse().expect("valid"),
            ],
        )]);
        ServerOptions::builder()
            .resolver(names)
            .connector(connector.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .happy_eyeballs_delay(delay)
            .rules(rules)
            .build()
    }

    async fn open_dual(options: &ServerOptions) -> Result<Opened, Error> {
        let destination = Address::Domain("dual.test".into(), 80);
        let request = Request::new("192.0.2.1".parse().expect("valid"), &destination);
        open(options, &request).await
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid IP")
    }

    /// An IPv6 address that never answers holds IPv4 back by the delay only, not by
    /// connect_timeout; the first IPv6 attempt is not abandoned meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_silent_ipv6_address_delays_ipv4_by_the_delay_only() {
        let fake = Fake::new(&[
            ("::1", Behaviour::Hang),
            ("2001:db8::2", Behaviour::Hang),
            ("127.0.0.1", Behaviour::Answer),
        ]);
        let options = options(&fake, Rules::default(), DELAY);
        let opened = open_dual(&options).await;
        assert!(opened.is_ok(), "{opened:?}");
        assert_eq!(
            fake.attempts(),
            vec![(ip("::1"), Duration::ZERO), (ip("127.0.0.1"), DELAY)]
        );
    }

    /// A failure starts the next attempt at once, without waiting for the delay.
    #[tokio::test(start_paused = true)]
    async fn a_refusing_ipv6_address_hands_over_to_ipv4_at_once() {
        let fake = Fake::new(&[
            ("::1", Behaviour::Refuse),
            ("2001:db8::2", Behaviour::Hang),
            ("127.0.0.1", Behaviour::Answer),
        ]);
        let options = options(&fake, Rules::default(), DELAY);
        let opened = open_dual(&options).await;
        assert!(opened.is_ok(), "{opened:?}");
        assert_eq!(
            fake.attempts(),
            vec![
                (ip("::1"), Duration::ZERO),
                (ip("127.0.0.1"), Duration::ZERO)
            ]
        );
    }

    /// Every address refuses: the reply is "connection refused", after every address was
    /// tried once.
    #[tokio::test(start_paused = true)]
    async fn when_every_address_refuses_the_reply_says_refused() {
        let fake = Fake::new(&[]);
        let options = options(&fake, Rules::default(), DELAY);
        let error = open_dual(&options).await.expect_err("all refuse");
        assert_eq!(error.reply(), Reply::ConnectionRefused, "{error:?}");
        let tried: Vec<IpAddr> = fake.attempts().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(tried, vec![ip("::1"), ip("127.0.0.1"), ip("2001:db8::2")]);
    }

    /// An address the rules deny is never attempted, however the race goes.
    #[tokio::test(start_paused = true)]
    async fn a_denied_address_is_never_attempted() {
        let fake = Fake::new(&[
            ("::1", Behaviour::Answer),
            ("2001:db8::2", Behaviour::Hang),
            ("127.0.0.1", Behaviour::Refuse),
        ]);
        let rules = Rules {
            rules: vec![Rule {
                destinations: vec!["::1/128".parse().expect("valid")],
                ..Rule::new(Action::Deny)
            }],
            default: Action::Allow,
        };
        let options = options(&fake, rules, DELAY);
        let opened = open_dual(&options).await;
        // 2001:db8::2 hangs and 127.0.0.1 refuses: only the connect timeout ends it.
        let error = opened.expect_err("nothing allowed answers");
        assert!(matches!(error, Error::ConnectTimeout { .. }), "{error:?}");
        let tried: Vec<IpAddr> = fake.attempts().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(tried, vec![ip("2001:db8::2"), ip("127.0.0.1")]);
    }

    /// A delay of zero turns the race off: the next address is tried only once the previous
    /// failed, so a silent first address costs the whole connect timeout.
    #[tokio::test(start_paused = true)]
    async fn a_zero_delay_tries_one_address_after_another() {
        let fake = Fake::new(&[
            ("::1", Behaviour::Refuse),
            ("2001:db8::2", Behaviour::Hang),
            ("127.0.0.1", Behaviour::Answer),
        ]);
        let options = options(&fake, Rules::default(), Duration::ZERO);
        let error = open_dual(&options).await.expect_err("2001:db8::2 hangs");
        assert!(matches!(error, Error::ConnectTimeout { .. }), "{error:?}");
        let tried: Vec<IpAddr> = fake.attempts().into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(tried, vec![ip("::1"), ip("2001:db8::2")]);
    }
}

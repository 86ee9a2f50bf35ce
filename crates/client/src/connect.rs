//! Opening connections to the listener, directly or through a SOCKS5 proxy.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::net::{TcpStream, lookup_host};

use socks5::Address;

use crate::{cli::ConnectArgs, deadline::within};

/// Opens connections to `--addr` or `--servers`, the same way each time:
/// `bench` builds one and dials it once per connection, so the proxy is
/// resolved only once.
#[derive(Debug)]
pub(crate) struct Dialer {
    /// The listeners, in the order given; never empty.
    targets: Vec<Target>,
    proxy: Option<Proxy>,
    timeout: Duration,
}

/// One listener: its name as given, and what to ask a SOCKS5 proxy for.
#[derive(Debug)]
struct Target {
    name: String,
    socks: Address,
}

/// A resolved SOCKS5 proxy and how to log in.
#[derive(Debug)]
struct Proxy {
    name: String,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
}

impl Dialer {
    /// Checks `--addr` (or each of `--servers`) and resolves the proxy, if any.
    ///
    /// # Errors
    ///
    /// When the proxy cannot be resolved, a target is not HOST:PORT, or
    /// there is no target.
    pub(crate) async fn new(args: &ConnectArgs) -> Result<Self> {
        let targets = args
            .targets()
            .into_iter()
            .map(|name| {
                Ok(Target {
                    socks: parse_target(&name)?,
                    name,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            bail!("no listener to connect to: give --addr or --servers");
        }
        let proxy = match &args.socks5 {
            None => None,
            Some(name) => Some(Proxy {
                addr: resolve(name, args.timeout)
                    .await
                    .with_context(|| format!("resolving the SOCKS5 proxy {name}"))?,
                name: name.clone(),
                credentials: args.proxy_user.clone().zip(args.proxy_password.clone()),
            }),
        };
        Ok(Self {
            targets,
            proxy,
            timeout: args.timeout,
        })
    }

    /// The deadline of every network wait.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The name of listener `index` (modulo their number), as given.
    pub(crate) fn name(&self, index: usize) -> &str {
        self.targets
            .get(index % self.targets.len().max(1))
            .map_or("", |target| target.name.as_str())
    }

    /// Opens one connection, trying the listeners in turn from `start`
    /// (modulo their number) until one takes it. Returns the index of that
    /// listener and the connection.
    ///
    /// # Errors
    ///
    /// When every listener failed: the one error of a single listener, or
    /// every listener's error, in the order tried.
    pub(crate) async fn connect_from(&self, start: usize) -> Result<(usize, TcpStream)> {
        let count = self.targets.len();
        let mut errors = Vec::new();
        for step in 0..count {
            let index = (start + step) % count;
            let Some(target) = self.targets.get(index) else {
                continue;
            };
            match self.connect_to(target).await {
                Ok(stream) => return Ok((index, stream)),
                Err(error) => errors.push(error),
            }
        }
        if errors.len() == 1
            && let Some(error) = errors.pop()
        {
            return Err(error);
        }
        let each: Vec<String> = errors.iter().map(|error| format!("{error:#}")).collect();
        bail!(
            "no listener took the connection ({} tried): {}",
            each.len(),
            each.join("; ")
        )
    }

    /// Opens one connection to `target`, with `TCP_NODELAY` set: the client
    /// batches its writes itself, and a batch's last segment should not wait
    /// for an ack.
    async fn connect_to(&self, target: &Target) -> Result<TcpStream> {
        let stream = match &self.proxy {
            None => within(self.timeout, TcpStream::connect(&target.name))
                .await
                .with_context(|| format!("connecting to {}", target.name))?,
            Some(proxy) => {
                let credentials = proxy
                    .credentials
                    .as_ref()
                    .map(|(user, password)| (user.as_str(), password.as_str()));
                let (stream, _bound) =
                    socks5::client::connect(proxy.addr, &target.socks, credentials, self.timeout)
                        .await
                        .with_context(|| {
                            format!(
                                "connecting to {} through the SOCKS5 proxy {}",
                                target.name, proxy.name
                            )
                        })?;
                stream
            }
        };
        // Only a latency hint: a socket that refuses it still works.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Resolves HOST:PORT to its first address.
async fn resolve(name: &str, timeout: Duration) -> Result<SocketAddr> {
    within(timeout, lookup_host(name))
        .await?
        .next()
        .context("the name has no address")
}

/// The SOCKS5 address of a listener (`--addr` or one of `--servers`): an IP address when it is one, otherwise
/// a domain name that the proxy resolves.
fn parse_target(addr: &str) -> Result<Address> {
    if let Ok(ip) = addr.parse::<SocketAddr>() {
        return Ok(Address::Ip(ip));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("{addr:?} is not HOST:PORT");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("{addr:?}: {port:?} is not a port number"))?;
    if host.is_empty() || host.len() > usize::from(u8::MAX) || host.contains(':') {
        bail!("{addr:?}: {host:?} is not a host name SOCKS5 can carry");
    }
    Ok(Address::Domain(host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_and_domain_targets() {
        assert_eq!(
            parse_target("127.0.0.1:9000").unwrap(),
            Address::Ip("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            parse_target("[::1]:80").unwrap(),
            Address::Ip("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_target("example.test:443").unwrap(),
            Address::Domain("example.test".to_owned(), 443)
        );
    }

    #[test]
    fn rejects_targets_that_are_not_host_and_port() {
        for bad in ["nohost", "host:", ":80", "host:99999", "::1:80"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}

//! Opening connections to the listener, directly or through a SOCKS5 proxy.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::net::{TcpStream, lookup_host};

use socks5::Address;

use crate::{cli::ConnectArgs, deadline::within};

/// Opens connections to `--addr`, the same way each time: `bench` builds one
/// and dials it once per connection, so the proxy is resolved only once.
#[derive(Debug)]
pub(crate) struct Dialer {
    addr: String,
    proxy: Option<Proxy>,
    timeout: Duration,
}

/// A resolved SOCKS5 proxy and what to ask it for.
#[derive(Debug)]
struct Proxy {
    name: String,
    addr: SocketAddr,
    target: Address,
    credentials: Option<(String, String)>,
}

impl Dialer {
    /// Checks `--addr` and resolves the proxy, if any.
    ///
    /// # Errors
    ///
    /// When the proxy cannot be resolved or `--addr` is not HOST:PORT.
    pub(crate) async fn new(args: &ConnectArgs) -> Result<Self> {
        let target = parse_target(&args.addr)?;
        let proxy = match &args.socks5 {
            None => None,
            Some(name) => Some(Proxy {
                addr: resolve(name, args.timeout)
                    .await
                    .with_context(|| format!("resolving the SOCKS5 proxy {name}"))?,
                name: name.clone(),
                target,
                credentials: args.proxy_user.clone().zip(args.proxy_password.clone()),
            }),
        };
        Ok(Self {
            addr: args.addr.clone(),
            proxy,
            timeout: args.timeout,
        })
    }

    /// The deadline of every network wait.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens one connection to the listener, with `TCP_NODELAY` set: the
    /// client batches its writes itself, and a batch's last segment should
    /// not wait for an ack.
    ///
    /// # Errors
    ///
    /// When the connection (or the proxy's handshake) fails or times out.
    pub(crate) async fn connect(&self) -> Result<TcpStream> {
        let stream = match &self.proxy {
            None => within(self.timeout, TcpStream::connect(&self.addr))
                .await
                .with_context(|| format!("connecting to {}", self.addr))?,
            Some(proxy) => {
                let credentials = proxy
                    .credentials
                    .as_ref()
                    .map(|(user, password)| (user.as_str(), password.as_str()));
                let (stream, _bound) =
                    socks5::client::connect(proxy.addr, &proxy.target, credentials, self.timeout)
                        .await
                        .with_context(|| {
                            format!(
                                "connecting to {} through the SOCKS5 proxy {}",
                                self.addr, proxy.name
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

/// The SOCKS5 address of `--addr`: an IP address when it is one, otherwise
/// a domain name that the proxy resolves.
fn parse_target(addr: &str) -> Result<Address> {
    if let Ok(ip) = addr.parse::<SocketAddr>() {
        return Ok(Address::Ip(ip));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("--addr {addr:?} is not HOST:PORT");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--addr {addr:?}: {port:?} is not a port number"))?;
    if host.is_empty() || host.len() > usize::from(u8::MAX) || host.contains(':') {
        bail!("--addr {addr:?}: {host:?} is not a host name SOCKS5 can carry");
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

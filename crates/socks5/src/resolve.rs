//! Name resolution, behind a trait so that tests and the server can choose.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use crate::Error;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a DST.ADDR domain name into addresses.
///
/// The server bounds every call with `connect_timeout` and maps an error, or an empty list, to
/// REP X'04' (Host unreachable).
pub trait Resolver: Send + Sync {
    /// The addresses of `host`, each with `port`, in the order to try them.
    ///
    /// # Errors
    ///
    /// Any I/O error; [`io::ErrorKind::NotFound`] for a name that does not exist.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The system resolver, through [`tokio::net::lookup_host`] (`getaddrinfo` on a blocking
/// thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A fixed table of names, for tests and for pinning names; anything else is "not found".
/// Names are compared ignoring ASCII case and a trailing dot.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// A resolver that knows `names`.
    #[must_use]
    pub fn new(names: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        let names = names
            .into_iter()
            .map(|(name, ips)| (normalize(&name), ips))
            .collect();
        StaticResolver { names }
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        let found = self.names.get(&normalize(host)).map(|ips| {
            ips.iter()
                .map(|&ip| SocketAddr::new(ip, port))
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
        })
    }
}

/// Resolves through `resolver`, mapping a failure or an empty answer to [`Error::Resolve`] and
/// IPv4-mapped IPv6 answers to IPv4.
pub(crate) async fn lookup(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Error> {
    let found = resolver
        .resolve(host, port)
        .await
        .map_err(|error| Error::Resolve {
            host: host.to_owned(),
            error,
        })?;
    if found.is_empty() {
        let error = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
        return Err(Error::Resolve {
            host: host.to_owned(),
            error,
        });
    }
    Ok(found
        .into_iter()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .collect())
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_resolver_answers_only_its_names() {
        let resolver = StaticResolver::new([(
            "Echo.Test".to_owned(),
            vec![
                IpAddr::from([127, 0, 0, 1]),
                "::1".parse().expect("valid IP"),
            ],
        )]);
        let found = resolver.resolve("echo.test.", 7).await.expect("known name");
        assert_eq!(
            found,
            vec![
                "127.0.0.1:7".parse().expect("valid"),
                "[::1]:7".parse().expect("valid")
            ]
        );
        let missing = resolver
            .resolve("other.test", 7)
            .await
            .expect_err("unknown name");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}

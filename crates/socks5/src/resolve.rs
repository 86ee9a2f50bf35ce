//! Name resolution, behind a trait so that tests and the server can choose.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::sync::Semaphore;

use crate::Error;

/// The future a [`Resolver`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a DST.ADDR domain name into addresses.
///
/// The server bounds every call with `connect_timeout` and maps an error, or an empty list, to
/// REP X'04' (Host unreachable). UDP ASSOCIATE calls it from a task of its own, so a slow
/// answer holds up only the datagrams for that name. The server drops the future when it stops
/// waiting: an implementation whose work outlives its future (a blocking call) should bound
/// that work itself, as [`SystemResolver`] does.
///
/// ```
/// use std::io;
/// use socks5::{ResolveFuture, Resolver, SystemResolver};
///
/// /// Names under `.lan` are this office's printers, all at one address; the rest goes to
/// /// the system resolver.
/// struct Office;
///
/// impl Resolver for Office {
///     fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
///         if host.ends_with(".lan") {
///             let printer = "192.0.2.7".parse().map_err(io::Error::other);
///             return Box::pin(async move { Ok(vec![std::net::SocketAddr::new(printer?, port)]) });
///         }
///         SystemResolver.resolve(host, port)
///     }
/// }
///
/// let options = socks5::ServerOptions::builder().resolver(Office).build();
/// # let _ = options;
/// ```
pub trait Resolver: Send + Sync {
    /// The addresses of `host`, each with `port`, in the order to try them.
    ///
    /// # Errors
    ///
    /// Any I/O error; [`io::ErrorKind::NotFound`] for a name that does not exist.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// At most this many [`SystemResolver`] lookups run at once in the process: fewer than tokio's
/// blocking pool (512 threads), so that a slow resolver leaves threads for the file sink and
/// other blocking work.
pub const MAX_SYSTEM_LOOKUPS: usize = 64;

/// The permits of every [`SystemResolver`] in the process (the blocking pool is shared too).
static SYSTEM_LOOKUPS: Semaphore = Semaphore::const_new(MAX_SYSTEM_LOOKUPS);

/// The system resolver: `getaddrinfo` on tokio's blocking pool, at most
/// [`MAX_SYSTEM_LOOKUPS`] at once in the process.
///
/// A lookup first waits for a permit, then runs on a blocking thread that keeps the permit until
/// `getaddrinfo` returns, even if the caller stopped waiting (`getaddrinfo` cannot be
/// cancelled): the bound counts threads, not callers. A lookup that gets no permit before the
/// caller's deadline (`connect_timeout` for the server) fails like any lookup that timed out,
/// with REP X'04' for CONNECT and BIND, and a dropped datagram for UDP.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        let host = host.to_owned();
        Box::pin(run_limited(&SYSTEM_LOOKUPS, move || {
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(Iterator::collect)
        }))
    }
}

/// Runs `work` on tokio's blocking pool once one of `permits` is free. The permit goes with the
/// work and is given back when it returns, whether or not the caller still waits: so at most as
/// many `work`s run at once as `permits` has, however many callers gave up.
///
/// # Errors
///
/// `work`'s error; [`io::ErrorKind::Other`] if the blocking task failed (panicked or the
/// runtime is shutting down).
async fn run_limited<T, F>(permits: &'static Semaphore, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let permit = permits
        .acquire()
        .await
        .map_err(|_| io::Error::other("the lookup limiter is closed"))?;
    let task = tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    });
    task.await
        .map_err(|error| io::Error::other(format!("the lookup task failed: {error}")))?
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A gate that blocking work waits on (at most [`LIMIT`]) until the test opens it.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let open = self.open.lock().expect("not poisoned");
            let (open, _) = self
                .opened
                .wait_timeout_while(open, LIMIT, |open| !*open)
                .expect("not poisoned");
            assert!(*open, "the test never opened the gate");
        }

        fn open(&self) {
            *self.open.lock().expect("not poisoned") = true;
            self.opened.notify_all();
        }
    }

    /// N + k blocking lookups at once: at most N run at the same time, and all finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_n_lookups_run_at_once() {
        const N: usize = 3;
        const CALLS: usize = N + 4;
        let permits: &'static Semaphore = Box::leak(Box::new(Semaphore::new(N)));
        let gate = Arc::new(Gate::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (started, mut starts) = mpsc::unbounded_channel();
        let mut calls = Vec::new();
        for i in 0..CALLS {
            let (gate, running, most, started) = (
                Arc::clone(&gate),
                Arc::clone(&running),
                Arc::clone(&most),
                started.clone(),
            );
            calls.push(tokio::spawn(run_limited(permits, move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = started.send(i);
                gate.wait();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            })));
        }
        for _ in 0..N {
            timeout(LIMIT, starts.recv())
                .await
                .expect("N lookups start")
                .expect("open channel");
        }
        // Unbounded, the other k would start now on the blocking pool's free threads.
        let extra = timeout(Duration::from_millis(300), starts.recv()).await;
        assert!(extra.is_err(), "a lookup past the bound started: {extra:?}");
        assert_eq!(permits.available_permits(), 0);
        gate.open();
        for (i, call) in calls.into_iter().enumerate() {
            let done = timeout(LIMIT, call)
                .await
                .expect("finishes")
                .expect("no panic");
            assert_eq!(done.expect("no error"), i);
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            N,
            "at most N at once, and N reached"
        );
        assert_eq!(permits.available_permits(), N, "every permit came back");
    }

    /// A caller that gives up does not give the permit back while its lookup still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_lookup_keeps_its_permit_until_it_returns() {
        let permits: &'static Semaphore = Box::leak(Box::new(Semaphore::new(1)));
        let gate = Arc::new(Gate::default());
        let (started, mut starts) = mpsc::unbounded_channel();
        let blocked = {
            let gate = Arc::clone(&gate);
            tokio::spawn(run_limited(permits, move || {
                let _ = started.send(());
                gate.wait();
                Ok(())
            }))
        };
        timeout(LIMIT, starts.recv())
            .await
            .expect("the lookup starts")
            .expect("open channel");
        blocked.abort(); // the caller gives up, as connect_timeout would make it
        let _ = timeout(LIMIT, blocked).await.expect("the caller is gone");
        let next = tokio::spawn(run_limited(permits, || Ok(7)));
        assert_eq!(permits.available_permits(), 0, "the thread still holds it");
        gate.open();
        let next = timeout(LIMIT, next)
            .await
            .expect("runs once the first returns");
        assert_eq!(next.expect("no panic").expect("no error"), 7);
    }

    #[tokio::test]
    async fn system_resolver_answers_an_ip_literal() {
        let found = timeout(LIMIT, SystemResolver.resolve("127.0.0.1", 9))
            .await
            .expect("answers")
            .expect("an IP literal resolves");
        assert_eq!(found, vec!["127.0.0.1:9".parse().expect("valid")]);
    }

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

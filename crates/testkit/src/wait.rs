//! Bounded waits and free ports.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

/// How often the polling waits look again.
const POLL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds or `timeout` has passed; returns whether
/// it held. `condition` is checked at least once, and once more at the
/// deadline.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// Waits up to `timeout` for `child` to exit: its status, or `None` if it is
/// still running at the deadline (it is left running: the caller decides).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// Awaits `fut`, failing the test (a panic) if it takes longer than `limit`.
#[cfg(feature = "tokio")]
pub async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("no result within {limit:?}"),
    }
}

/// A loopback address with a port nothing listens on right now (bound to
/// port 0 and released). Another process may take it before the caller
/// binds it; use it only for programs that cannot be told to bind port 0
/// and report the port.
///
/// A child process forked by another thread while the port was bound holds
/// the listening socket until it execs, so this returns only once a connect
/// there is refused (an error if that takes over 5 s).
pub fn free_loopback_port() -> io::Result<SocketAddr> {
    let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
    let refused = || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    };
    if wait_until(Duration::from_secs(5), refused) {
        Ok(addr)
    } else {
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} still accepts connections after it was released"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn wait_until_sees_a_condition_turn_true_and_times_out_otherwise() {
        let start = Instant::now();
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        assert!(!wait_until(Duration::from_millis(30), || false));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn wait_exit_returns_the_status_or_none_at_the_deadline() {
        let mut quick = Command::new("true").spawn().unwrap();
        let status = wait_exit(&mut quick, Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
        let mut slow = crate::ChildGuard::new(Command::new("sleep").arg("30").spawn().unwrap());
        assert!(
            wait_exit(&mut slow, Duration::from_millis(30))
                .unwrap()
                .is_none()
        );
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn within_returns_the_value_or_fails_at_the_limit() {
        assert_eq!(within(Duration::from_secs(5), async { 7 }).await, 7);
        let late = tokio::spawn(within(
            Duration::from_millis(10),
            std::future::pending::<()>(),
        ));
        assert!(late.await.unwrap_err().is_panic());
    }

    #[test]
    fn a_free_port_is_on_loopback_and_nothing_listens_there() {
        let addr = free_loopback_port().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        // Not a bind: on a busy machine an outgoing connection may take the
        // port as its own ephemeral port, which is no listener. The other
        // tests here fork children at the same time.
        let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        assert_eq!(
            connected.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionRefused)
        );
    }
}

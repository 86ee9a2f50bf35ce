//! The server binary's log lines.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

/// Reads `pipe` (a child's stderr) line by line on a thread; the receiver
/// gets every line and disconnects at the end of the pipe. The pipe is read
/// to its end even if the receiver is dropped.
pub fn stderr_lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (lines, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            // Keep reading when nobody listens any more, so the child
            // never blocks on a full pipe.
            let _ = lines.send(line);
        }
    });
    rx
}

/// Waits up to `timeout` for the first JSON `listening` event
/// (`"message":"listening"` with an `"addr"`); returns its address and the
/// lines logged before it. On timeout or end of the log, or if the event
/// has no parsable address, the error holds the lines seen.
pub fn wait_listening(
    lines: &Receiver<String>,
    timeout: Duration,
) -> Result<(SocketAddr, Vec<String>), Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut early = Vec::new();
    loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            return Err(early);
        };
        if line.contains("\"message\":\"listening\"") {
            let addr = line
                .split("\"addr\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|addr| addr.parse().ok());
            return match addr {
                Some(addr) => Ok((addr, early)),
                None => {
                    early.push(line);
                    Err(early)
                }
            };
        }
        early.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_address_and_keeps_the_lines_before() {
        let log = "{\"message\":\"starting\"}\n\
                   {\"message\":\"listening\",\"addr\":\"127.0.0.1:4000\"}\nafter\n";
        let rx = stderr_lines(std::io::Cursor::new(log.as_bytes().to_vec()));
        let (addr, early) = wait_listening(&rx, Duration::from_secs(10)).unwrap();
        assert_eq!(addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(early, ["{\"message\":\"starting\"}"]);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "after");
    }

    #[test]
    fn a_log_without_the_event_is_an_error_with_its_lines() {
        let rx = stderr_lines(std::io::Cursor::new(b"one\ntwo\n".to_vec()));
        assert_eq!(
            wait_listening(&rx, Duration::from_secs(10)).unwrap_err(),
            ["one", "two"]
        );
    }
}

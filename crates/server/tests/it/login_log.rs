//! The failed-login line of the `server` binary: one warn line per failed
//! RFC 1929 login, in the format the README documents (and
//! contrib/fail2ban matches), in both log formats, whatever the user name.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{ChildGuard, stderr_lines};

const STEP: Duration = Duration::from_secs(10);
const PASSWORD: &str = "wonder-land";
/// The password of the failed logins: it must never be logged.
const WRONG: &str = "s3cret-not-logged";

/// A user name that tries to forge the fields before it, a second line (a
/// newline, a timestamp, a whole fake event in each format) and a colour.
const HOSTILE: &str = "x\" client=6.6.6.6:1 reason=\"wrong password\" user=\"\n\
                       2026-12-01T00:00:00.000000Z  WARN socks5::server: authentication failed \
                       client=6.6.6.7:1 reason=\"unknown user\" user=\"y\r\
                       {\"message\":\"authentication failed\",\"client\":\"6.6.6.8:1\"}\u{1b}[0m";

/// Starts the binary with `--log-format FORMAT` and one password listener;
/// returns its address and the stderr lines.
fn start(format: &str) -> (ChildGuard, SocketAddr, mpsc::Receiver<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    let config = format!(
        "[[listener]]\nname = \"proxy-auth\"\nmode = \"socks5\"\nbind = \"127.0.0.1:0\"\n\
         auth = \"password\"\nusers = [{{ username = \"alice\", password = \"{PASSWORD}\" }}]\n"
    );
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--log-format", format, "--log-level", "info", "--config"])
        .arg(&path)
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard::new(child);
    let rx = stderr_lines(guard.stderr.take().unwrap());
    let deadline = Instant::now() + STEP;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no listening event");
        if line.contains("listening") {
            let addr = line
                .split(['"', ' ', '='])
                .find_map(|word| word.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no address in {line}"));
            return (guard, addr, rx);
        }
    }
}

/// One RFC 1929 login; returns the client's address and whether it was accepted.
fn login(server: SocketAddr, user: &str, password: &str) -> (SocketAddr, bool) {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(STEP)).unwrap();
    stream.write_all(&[5, 1, 2]).unwrap();
    let mut selection = [0u8; 2];
    stream.read_exact(&mut selection).unwrap();
    assert_eq!(selection, [5, 2]);
    let mut request = vec![1, u8::try_from(user.len()).unwrap()];
    request.extend_from_slice(user.as_bytes());
    request.push(u8::try_from(password.len()).unwrap());
    request.extend_from_slice(password.as_bytes());
    stream.write_all(&request).unwrap();
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).unwrap();
    (stream.local_addr().unwrap(), status == [1, 0])
}

/// Runs three failed logins (a wrong password, an unknown user, [`HOSTILE`]),
/// a good one and a last failed one, and returns every line logged up to the
/// last one's, with the client address and reason of each failure.
fn failed_logins(format: &str) -> (Vec<String>, Vec<(SocketAddr, &'static str, String)>) {
    let (_guard, addr, rx) = start(format);
    let mut failures = Vec::new();
    for (user, password, reason) in [
        ("alice", WRONG, "wrong password"),
        ("mallory", PASSWORD, "unknown user"),
        (HOSTILE, WRONG, "unknown user"),
    ] {
        let (client, accepted) = login(addr, user, password);
        assert!(!accepted);
        failures.push((client, reason, user.to_owned()));
    }
    assert!(login(addr, "alice", PASSWORD).1);
    let (client, accepted) = login(addr, "bob", WRONG);
    assert!(!accepted);
    failures.push((client, "unknown user", "bob".to_owned()));
    let needle = format!("{}", client.port());
    let deadline = Instant::now() + STEP;
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line for the last login; logged: {lines:#?}"));
        let last = line.contains("authentication failed") && line.contains(&needle);
        lines.push(line);
        if last {
            return (lines, failures);
        }
    }
}

#[test]
fn a_failed_login_logs_one_human_line_that_a_user_name_cannot_forge() {
    let (lines, failures) = failed_logins("human");
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code in a piped log: {line:?}"
        );
        assert!(line.starts_with("20"), "not a line of our own: {line:?}");
        assert!(!line.contains(WRONG) && !line.contains(PASSWORD), "{line}");
    }
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(failed.len(), failures.len(), "{lines:#?}");
    for (line, (client, reason, user)) in failed.iter().zip(&failures) {
        let at = line.find("authentication failed").unwrap();
        assert!(line.get(..at).unwrap().contains(" WARN "), "{line}");
        let expected = format!(
            "socks5::server: authentication failed client={client} reason=\"{reason}\" user={user:?}"
        );
        assert!(
            line.ends_with(&expected),
            "{line}\nexpected the end: {expected}"
        );
    }
}

#[test]
fn a_failed_login_logs_one_json_line_that_a_user_name_cannot_forge() {
    let (lines, failures) = failed_logins("json");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let failed: Vec<(&String, &Value)> = lines
        .iter()
        .zip(&events)
        .filter(|(_, e)| e["message"] == "authentication failed")
        .collect();
    assert_eq!(failed.len(), failures.len(), "{lines:#?}");
    for ((line, event), (client, reason, user)) in failed.iter().zip(&failures) {
        assert_eq!(event["level"], "WARN", "{line}");
        assert_eq!(event["client"], client.to_string(), "{line}");
        assert_eq!(event["reason"], *reason, "{line}");
        assert_eq!(event["user"], user.as_str(), "{line}");
        assert!(!line.contains(WRONG) && !line.contains(PASSWORD), "{line}");
        // The order contrib/fail2ban relies on, as written on the line.
        let expected = format!(
            "\"message\":\"authentication failed\",\"client\":\"{client}\",\"reason\":\"{reason}\",\"user\":"
        );
        assert!(line.contains(&expected), "{line}\nexpected: {expected}");
    }
}

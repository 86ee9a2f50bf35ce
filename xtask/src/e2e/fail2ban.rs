//! fail2ban: contrib/fail2ban/filter.d/netkit.conf against the server's own
//! log, read by the real `fail2ban-regex` (Debian package `fail2ban`).
//!
//! For each `--log-format` (human, json) a server of its own (one socks5
//! listener with a password) writes its stderr to a file while clients log
//! in: failed logins from 127.0.0.1 and from 127.0.0.3 (the client socket
//! bound to it before connecting), a user name that forges a client
//! address, a line of its own and a date in both formats, and one good
//! login. The server is stopped with SIGTERM, then `fail2ban-regex -o row`
//! reads the file: it must find exactly the failed logins, each at the IP
//! it came from (never a forged one), each dated within the run (never the
//! forged date), and nothing for the good login. Last, `fail2ban-client -t`
//! loads the jail example with the filter over a copy of /etc/fail2ban (its
//! own jails left out).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use socket2::{Domain, Socket, Type};
use testkit::ChildGuard;

use super::Ctx;
use crate::process::{self, Proc, Stdout};

/// The filter under test, from the workspace root.
const FILTER: &str = "contrib/fail2ban/filter.d/netkit.conf";
/// The jail example.
const JAIL: &str = "contrib/fail2ban/jail.d/netkit.local";
/// Debian's fail2ban configuration, copied for the jail test.
const ETC: &str = "/etc/fail2ban";
/// Each network step and each wait for the server.
const STEP: Duration = Duration::from_secs(10);
/// The user and password of the listener.
const USER: &str = "alice";
const PASSWORD: &str = "wonder-land";
/// The second client address.
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Forged addresses in the hostile user names: none may be matched.
const FORGED: [&str; 3] = ["6.6.6.6", "6.6.6.7", "6.6.6.8"];

/// User names (at most 255 bytes, as RFC 1929 allows) that try to forge
/// the fields before them and a line of their own with a date from 2020:
/// one in the human format, one in JSON.
const HOSTILE_HUMAN: &str = "x\" client=6.6.6.6:1 reason=\"wrong password\" user=\"\n\
                             2020-01-01T00:00:00.000000Z  WARN socks5::server: authentication \
                             failed client=6.6.6.7:1 reason=\"unknown user\" user=\"";
const HOSTILE_JSON: &str = "x\",\"client\":\"6.6.6.6:1\"}\n{\"timestamp\":\"2020-01-01T00:00:00Z\",\
                            \"level\":\"WARN\",\"message\":\"authentication failed\",\
                            \"client\":\"6.6.6.8:1\",\"reason\":\"unknown user\",\"user\":\"";

const CONFIG: &str = r#"[[listener]]
name = "f2b"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "alice", password = "wonder-land" }]
"#;

/// One login: the client's source, the user, the password, whether the
/// server must accept it.
type Login = (Ipv4Addr, &'static str, &'static str, bool);

const LOGINS: [Login; 8] = [
    (Ipv4Addr::LOCALHOST, USER, "wrong-1", false),
    (OTHER, USER, "wrong-2", false),
    (Ipv4Addr::LOCALHOST, "mallory", PASSWORD, false),
    (OTHER, HOSTILE_HUMAN, "wrong-3", false),
    (Ipv4Addr::LOCALHOST, HOSTILE_JSON, "wrong-3", false),
    (Ipv4Addr::LOCALHOST, USER, PASSWORD, true),
    (OTHER, "bob", "wrong-4", false),
    (Ipv4Addr::LOCALHOST, USER, "wrong-5", false),
];

/// The scenario: see the module docs.
pub(crate) fn fail2ban_filter(ctx: &mut Ctx) -> anyhow::Result<String> {
    let regex = process::require("fail2ban-regex", "apt-get install fail2ban")?;
    for user in [HOSTILE_HUMAN, HOSTILE_JSON] {
        if user.len() > 255 {
            bail!("a hostile user name is {} bytes, over 255", user.len());
        }
    }
    let filter = ctx.root.join(FILTER);
    let mut details = Vec::new();
    for format in ["human", "json"] {
        let detail = run_format(ctx, &regex, &filter, format)
            .with_context(|| format!("--log-format {format}"))?;
        details.push(format!("{format}: {detail}"));
    }
    test_jail(ctx)?;
    details.push("fail2ban-client -t loads the jail".to_owned());
    Ok(details.join("; "))
}

/// `fail2ban-client -t` with the jail and the filter over a copy of
/// /etc/fail2ban whose own jails (Debian enables sshd) are removed.
fn test_jail(ctx: &Ctx) -> anyhow::Result<()> {
    let client = process::require("fail2ban-client", "apt-get install fail2ban")?;
    let etc = ctx.dir.path().join("fail2ban-etc");
    let mut cmd = Command::new("cp");
    cmd.arg("-r").arg(format!("{ETC}/.")).arg(&etc);
    let copied =
        Proc::spawn("cp", &mut cmd, Stdio::null(), Stdout::Null)?.wait(Duration::from_secs(30))?;
    if !copied.status.success() {
        bail!("cannot copy {ETC}: {}", copied.stderr_tail());
    }
    let jails = etc.join("jail.d");
    for entry in std::fs::read_dir(&jails)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::copy(ctx.root.join(FILTER), etc.join("filter.d/netkit.conf"))?;
    std::fs::copy(ctx.root.join(JAIL), jails.join("netkit.local"))?;
    let mut cmd = Command::new(client);
    cmd.arg("-c").arg(&etc).arg("-t");
    let done = Proc::spawn("fail2ban-client", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(60))?;
    let out = done.stdout_text();
    if !done.status.success() || !out.contains("OK") {
        bail!(
            "fail2ban-client -t rejects {JAIL} ({}): {out} {}",
            done.status,
            done.stderr_tail()
        );
    }
    Ok(())
}

/// One server in `format`, the logins, then `fail2ban-regex` on its log.
fn run_format(ctx: &Ctx, regex: &Path, filter: &Path, format: &str) -> anyhow::Result<String> {
    let started = unix_now();
    let dir = ctx.dir.path().join(format!("fail2ban-{format}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("server.toml");
    std::fs::write(&config, CONFIG)?;
    let log_path = dir.join("server.log");
    let mut server = LoggedServer::start(&ctx.bins.server, &config, format, &log_path)?;
    let addr = server.listening()?;
    let mut expected = Vec::new();
    for (source, user, password, good) in LOGINS {
        let accepted = login(source, addr, user, password)
            .with_context(|| format!("login as {user:?} from {source}"))?;
        if accepted != good {
            bail!("the login as {user:?} from {source} was accepted: {accepted}, expected {good}");
        }
        if !good {
            expected.push(source.to_string());
        }
    }
    server.wait_lines("authentication failed", expected.len())?;
    server.stop()?;
    let lines = std::fs::read_to_string(&log_path)
        .with_context(|| format!("cannot read {}", log_path.display()))?
        .lines()
        .count();
    let mut cmd = Command::new(regex);
    cmd.arg("-o").arg("row").arg(&log_path).arg(filter);
    let done = Proc::spawn("fail2ban-regex", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(120))?;
    if !done.status.success() {
        bail!(
            "fail2ban-regex {} {} failed ({}): {}",
            log_path.display(),
            filter.display(),
            done.status,
            done.stderr_tail()
        );
    }
    let rows = parse_rows(&done.stdout_text())?;
    let ended = unix_now();
    let mut found: Vec<String> = rows.iter().map(|(ip, _)| ip.clone()).collect();
    for (ip, time) in &rows {
        if FORGED.contains(&ip.as_str()) {
            bail!(
                "fail2ban matched the forged address {ip} (log: {})",
                log_path.display()
            );
        }
        // The log's times have microseconds; fail2ban keeps whole seconds.
        if *time + 1 < started || *time > ended + 1 {
            bail!(
                "fail2ban dated a failure from {ip} at {time}, outside the run ({started}..{ended}): \
                 a forged date? (log: {})",
                log_path.display()
            );
        }
    }
    found.sort();
    expected.sort();
    if found != expected {
        bail!(
            "fail2ban matched {found:?}, expected {expected:?} (log: {})",
            log_path.display()
        );
    }
    let from = |ip: &str| found.iter().filter(|f| *f == ip).count();
    Ok(format!(
        "{} of {lines} lines matched ({} from 127.0.0.1, {} from {OTHER}), none forged, none for the good login",
        found.len(),
        from("127.0.0.1"),
        from(&OTHER.to_string()),
    ))
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `fail2ban-regex -o row` prints one row per match:
/// `['127.0.0.1', 1796123003, {'ip4': '127.0.0.1', 'ip6': None}],`.
fn parse_rows(out: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut rows = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("['")) {
        let parse = || -> Option<(String, u64)> {
            let rest = line.strip_prefix("['")?;
            let (ip, rest) = rest.split_once('\'')?;
            let rest = rest.trim_start_matches([',', ' ', '\t']);
            let (time, _) = rest.split_once(',')?;
            Some((ip.to_owned(), time.trim().parse().ok()?))
        };
        rows.push(parse().with_context(|| format!("unexpected fail2ban-regex row: {line}"))?);
    }
    Ok(rows)
}

/// One RFC 1929 login from `source`; whether the server accepted it.
fn login(source: Ipv4Addr, server: SocketAddr, user: &str, password: &str) -> anyhow::Result<bool> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket
        .bind(&SocketAddr::new(IpAddr::V4(source), 0).into())
        .with_context(|| format!("cannot bind a client socket to {source}"))?;
    socket.connect_timeout(&server.into(), STEP)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    stream.write_all(&[5, 1, 2])?;
    let mut selection = [0u8; 2];
    stream.read_exact(&mut selection)?;
    if selection != [5, 2] {
        bail!("the server chose {selection:02x?}, not username/password");
    }
    let mut request = vec![1, u8::try_from(user.len())?];
    request.extend_from_slice(user.as_bytes());
    request.push(u8::try_from(password.len())?);
    request.extend_from_slice(password.as_bytes());
    stream.write_all(&request)?;
    let mut status = [0u8; 2];
    stream.read_exact(&mut status).context("no login status")?;
    Ok(status == [1, 0])
}

/// A server whose stderr goes, line by line, to a file and to us.
struct LoggedServer {
    /// Killed when dropped.
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    copier: Option<thread::JoinHandle<()>>,
}

impl LoggedServer {
    fn start(binary: &Path, config: &Path, format: &str, log: &Path) -> anyhow::Result<Self> {
        let mut file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .args(["--log-format", format, "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, lines) = mpsc::channel();
        let copier = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = file.write_all(&line);
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            }
            let _ = file.flush();
        });
        Ok(Self {
            child: ChildGuard::new(child),
            lines,
            seen: Vec::new(),
            copier: Some(copier),
        })
    }

    /// The next line, within what is left of `deadline`.
    fn next_line(&mut self, deadline: Instant) -> anyhow::Result<String> {
        let line = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("the server logged nothing more; so far: {:?}", self.seen))?;
        self.seen.push(line.clone());
        Ok(line)
    }

    /// Waits for the `listening` line and returns the address in it.
    fn listening(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + STEP;
        loop {
            let line = self.next_line(deadline)?;
            if line.contains("listening") {
                return line
                    .split(['"', ' ', '='])
                    .find_map(|word| word.parse::<SocketAddr>().ok())
                    .with_context(|| format!("no address in {line:?}"));
            }
        }
    }

    /// Waits until `count` lines containing `text` were logged.
    fn wait_lines(&mut self, text: &str, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP;
        let mut found = self.seen.iter().filter(|l| l.contains(text)).count();
        while found < count {
            if self.next_line(deadline)?.contains(text) {
                found += 1;
            }
        }
        Ok(())
    }

    /// SIGTERM, then the exit (0) and the end of the log, within a deadline.
    fn stop(&mut self) -> anyhow::Result<()> {
        kill_process(Pid::from_child(&self.child), Signal::TERM).context("cannot send SIGTERM")?;
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("the server did not exit within {STEP:?} of SIGTERM");
            }
            // Draining the channel is the wait: the copier ends with the log.
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The log ended: the exit is a moment away.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(5))
                }
            }
        };
        if !status.success() {
            bail!("the server exited with {status} after SIGTERM");
        }
        // The pipe closed with the exit: the copier flushes and ends.
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
        Ok(())
    }
}

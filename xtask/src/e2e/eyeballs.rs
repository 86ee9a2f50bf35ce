//! Scenario `happy-eyeballs`: a name whose IPv6 address does not answer
//! connects over IPv4 after `happy_eyeballs_delay`, not `connect_timeout`.
//!
//! The server of its own runs in a private mount namespace (`unshare
//! --mount`, as root) where a hosts file of the scenario's is bind-mounted on
//! `/etc/hosts`: [`NAME`] is `::1` and `127.0.0.1` there, and only there
//! (the machine's `/etc/hosts` is not touched). The system resolver
//! (`getaddrinfo`) thus gives the server both addresses. An HTTP server
//! listens on `127.0.0.1:PORT` only; on `[::1]:PORT` a listener whose accept
//! queue is full (backlog 0 and one connection never accepted) makes Linux
//! drop the SYNs, so the IPv6 attempt hangs. With `happy_eyeballs_delay =
//! "300ms"` and `connect_timeout = "10s"`, curl `--socks5-hostname` fetches
//! `http://NAME:PORT/small`; the checks: the body is byte-exact, the
//! `session` event names `NAME:PORT` and success, the connect histogram
//! (`netkit_socks5_connect_seconds` on `/metrics`) holds one connect that
//! took at least the delay (IPv6 was tried first and did not answer) and at
//! most the delay plus [`MARGIN`], and curl's whole run stayed far below
//! `connect_timeout`.
//!
//! Skipped, saying why, when not root, without `unshare` or `mount`, without
//! `::1`, or where a full accept queue refuses instead of dropping SYNs.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use socket2::{Domain, Socket, Type};

use super::{Ctx, arg, page, proxy::fetch};
use crate::e2e::SMALL_LEN;
use crate::{
    harness::{Server, ServerSpec, message},
    peers::{BIG_SEED, HttpServer, Pattern, SMALL_SEED, Site},
    process::require,
};

/// The test name (`.test` is reserved for testing, RFC 6761).
const NAME: &str = "happy-eyeballs.netkit.test";
/// The listener.
const LISTENER: &str = "eyeballs";
/// `happy_eyeballs_delay`.
const DELAY: Duration = Duration::from_millis(300);
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the delay the connect may take (a loaded machine).
const MARGIN: Duration = Duration::from_secs(2);
/// Each wait for a log event.
const WAIT: Duration = Duration::from_secs(10);

/// The server config: only [`NAME`] and loopback addresses are allowed.
const CONFIG: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "eyeballs"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "5s"
happy_eyeballs_delay = "300ms"
connect_timeout = "10s"
rules = [
    { action = "allow", domains = ["happy-eyeballs.netkit.test"] },
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.1/32", "::1/128"] },
    { action = "deny" },
]
"#;

/// Runs the server in a private mount namespace with `$0` on `/etc/hosts`;
/// `{HOSTS}` and `{SERVER}` are replaced. `unshare` and `sh` exec, so the
/// child's PID is the server's.
const WRAPPER: &str = "#!/bin/sh
exec unshare --mount --propagation private -- /bin/sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' '{HOSTS}' '{SERVER}' \"$@\"
";

/// The scenario: see the module docs.
pub(crate) fn happy_eyeballs(ctx: &mut Ctx) -> anyhow::Result<String> {
    require("curl", "apt-get install curl")?;
    if let Some(why) = cannot_run() {
        return Ok(format!("skipped: {why}"));
    }
    let http = HttpServer::start_v4_only(Site {
        page: page(&ctx.nonce),
        small_len: SMALL_LEN,
        big_len: 0,
        small: Pattern::new(SMALL_SEED),
        big: Pattern::new(BIG_SEED),
    })?;
    let port = http.port();
    let silent = match silent_v6(port) {
        Ok(silent) => silent,
        Err(why) => return Ok(format!("skipped: {why:#}")),
    };
    let dir = ctx.dir.path().join("happy-eyeballs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let wrapper = wrapper(&dir, &ctx.bins.server)?;
    let server = Server::start(
        &wrapper,
        &dir,
        &ServerSpec {
            config: CONFIG,
            listeners: &[LISTENER],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-happy-eyeballs.log",
        },
    )
    .context("the server in its mount namespace")?;
    let admin = super::prometheus::admin_addr_of(server.events(), WAIT)
        .context("the server's admin endpoint")?;

    let url = format!("http://{NAME}:{port}/small");
    let mark = server.events().mark();
    let (checked, took) = fetch(
        &["--socks5-hostname".into(), arg(server.addr(LISTENER))],
        &url,
        Pattern::new(SMALL_SEED),
        &[],
        CONNECT_TIMEOUT * 2,
    )?;
    checked.expect(SMALL_LEN, &url)?;
    // Held until the fetch is done: the IPv6 attempt must hang.
    drop(silent);
    if took >= DELAY + MARGIN + Duration::from_secs(1) {
        bail!(
            "curl took {took:?}: more than the delay {DELAY:?} plus {MARGIN:?} (connect_timeout \
             is {CONNECT_TIMEOUT:?})"
        );
    }
    let destination = format!("{NAME}:{port}");
    let session = server
        .events()
        .wait_for(mark, WAIT, |e| message(e) == "session")
        .with_context(|| format!("no `session` event; log: {}", server.log_path().display()))?;
    if session["destination"].as_str() != Some(destination.as_str())
        || !session["reply"]
            .as_str()
            .is_some_and(|r| r.contains("0x00"))
        || !session["error"].is_null()
    {
        bail!("the session should name {destination} and succeed: {session}");
    }
    let connect = connect_seconds(admin)?;
    if connect < DELAY || connect > DELAY + MARGIN {
        bail!(
            "the connect took {connect:?}; expected the delay {DELAY:?} (IPv6 first, silent) \
             and at most {MARGIN:?} more"
        );
    }
    if std::fs::read_to_string("/etc/hosts").is_ok_and(|hosts| hosts.contains(NAME)) {
        bail!("the machine's /etc/hosts names {NAME}: the bind mount leaked");
    }
    Ok(format!(
        "{destination}: {SMALL_LEN} bytes intact; connect {:.0} ms (delay {} ms, \
         connect_timeout {} s), curl {:.2} s",
        connect.as_secs_f64() * 1000.0,
        DELAY.as_millis(),
        CONNECT_TIMEOUT.as_secs(),
        took.as_secs_f64()
    ))
}

/// Why the scenario cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "not root: `unshare --mount` and `mount --bind` of a private /etc/hosts need root"
                .to_owned(),
        );
    }
    for (tool, install) in [
        ("unshare", "apt-get install util-linux"),
        ("mount", "apt-get install mount"),
    ] {
        if let Err(error) = require(tool, install) {
            return Some(format!("{error:#}"));
        }
    }
    None
}

/// A listener on `[::1]:port` with a full accept queue, and the connection
/// that fills it; an error says why there is none that drops SYNs.
fn silent_v6(port: u16) -> anyhow::Result<(Socket, TcpStream)> {
    let address = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port));
    let listener = Socket::new(Domain::IPV6, Type::STREAM, None)
        .context("this machine has no IPv6 sockets")?;
    listener
        .bind(&address.into())
        .with_context(|| format!("cannot bind {address} (no ::1?)"))?;
    listener.listen(0)?;
    let filler = TcpStream::connect_timeout(&address, WAIT).context("cannot fill the queue")?;
    let started = Instant::now();
    let probe = TcpStream::connect_timeout(&address, Duration::from_millis(200));
    if !matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        bail!(
            "a full accept queue does not drop SYNs here (a probe got {probe:?} after {:?})",
            started.elapsed()
        );
    }
    Ok((listener, filler))
}

/// Writes the hosts file and the wrapper script into `dir`; returns the script.
fn wrapper(dir: &Path, server: &Path) -> anyhow::Result<std::path::PathBuf> {
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n::1 localhost ip6-localhost\n::1 {NAME}\n127.0.0.1 {NAME}\n"),
    )
    .with_context(|| format!("cannot write {}", hosts.display()))?;
    let quoted = |path: &Path| -> anyhow::Result<String> {
        let text = path.display().to_string();
        if text.contains('\'') {
            bail!("{text} holds a single quote");
        }
        Ok(text)
    };
    let script = dir.join("server-in-namespace.sh");
    std::fs::write(
        &script,
        WRAPPER
            .replace("{HOSTS}", &quoted(&hosts)?)
            .replace("{SERVER}", &quoted(server)?),
    )
    .with_context(|| format!("cannot write {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// The one connect the histogram holds, from `/metrics`.
fn connect_seconds(admin: SocketAddr) -> anyhow::Result<Duration> {
    let (status, metrics) = super::prometheus::get(admin, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let labels = format!("{{listener=\"{LISTENER}\",mode=\"socks5\"}}");
    let count = super::prometheus::value(
        &metrics,
        &format!("netkit_socks5_connect_seconds_count{labels}"),
    )?;
    let sum = super::prometheus::value(
        &metrics,
        &format!("netkit_socks5_connect_seconds_sum{labels}"),
    )?;
    if count != 1.0 {
        bail!("netkit_socks5_connect_seconds counts {count} connects, expected 1");
    }
    Duration::try_from_secs_f64(sum).with_context(|| format!("a connect time of {sum} s"))
}

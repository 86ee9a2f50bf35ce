//! Scenario `socks5-chain`: two server instances of their own, A chained to
//! B with `via`.
//!
//! B is a socks5 listener with a password whose rules let in only the client
//! 127.0.0.2. A has two socks5 listeners without a password and with
//! `outbound_bind = "127.0.0.2"` (so B can tell A's connections from
//! curl's): `front`, with `via = "socks5://USER:PASSWORD@B"` (the password
//! holds `@` and `:`, written `%40` and `%3A`) and a rule that routes
//! `localhost` `direct`, and `front-bad`, whose `via` has a wrong password.
//! The checks, with curl `--socks5-hostname` through A:
//!
//! 1. `http://localhost:PORT/small` goes direct: byte-exact, A's `session`
//!    has no `via`;
//! 2. `http://127.0.0.1:PORT/small` goes through B: byte-exact, A's
//!    `session` names the upstream (without the password), and B's names
//!    the client 127.0.0.2, the user and the destination; B logged exactly
//!    this one session since check 1 began (so check 1 did not reach it);
//! 3. through `front-bad`, curl fails without a request reaching the HTTP
//!    server: A warns `the upstream proxy refused our login` (the upstream
//!    without the password) and B logs the failed login from 127.0.0.2.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, arg, proxy::fetch};
use crate::e2e::{CURL_TIMEOUT, SMALL_LEN};
use crate::{
    harness::{Server, ServerSpec, message},
    peers::{Pattern, SMALL_SEED},
    process::{Proc, Stdout, require},
};

/// B's listener.
const UPSTREAM: &str = "upstream";
/// A's listener chained to B.
const FRONT: &str = "front";
/// A's listener chained to B with a wrong password.
const FRONT_BAD: &str = "front-bad";
/// B's user.
const CHAIN_USER: &str = "chain-user";
/// Her password (`%40` and `%3A` in a `via` URL).
const CHAIN_PASSWORD: &str = "ch@in:pass";
/// The same, escaped for a URL.
const CHAIN_PASSWORD_ESCAPED: &str = "ch%40in%3Apass";
/// The wrong password of `front-bad`'s `via` (no log line may show it).
const BAD_PASSWORD: &str = "not-the-password-7f3a";
/// A's `outbound_bind`: the client B sees.
const A_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Each wait for a log event.
const WAIT: Duration = Duration::from_secs(10);

/// B: a password (`{PASSWORD}`), and only A's source address let in.
const B_CONFIG: &str = r#"[server]
drain_timeout = "2s"

[[listener]]
name = "upstream"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "chain-user", password = "{PASSWORD}" }]
handshake_timeout = "5s"
rules = [
    { action = "allow", clients = ["127.0.0.2/32"] },
    { action = "deny" },
]
"#;

/// A: `{VIA}` and `{BAD_VIA}` are replaced by the two upstream URLs.
const A_CONFIG: &str = r#"[server]
drain_timeout = "2s"

[[listener]]
name = "front"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "5s"
outbound_bind = "127.0.0.2"
via = "{VIA}"
rules = [
    { action = "allow", domains = ["localhost"], via = "direct" },
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.1/32"] },
    { action = "deny" },
]

[[listener]]
name = "front-bad"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "5s"
outbound_bind = "127.0.0.2"
via = "{BAD_VIA}"
rules = [
    { action = "allow", destinations = ["127.0.0.1/32"] },
    { action = "deny" },
]
"#;

/// The scenario: see the module docs.
pub(crate) fn socks5_chain(ctx: &mut Ctx) -> anyhow::Result<String> {
    require("curl", "apt-get install curl")?;
    let base = ctx.dir.path().join("chain");
    let (dir_a, dir_b) = (base.join("a"), base.join("b"));
    for dir in [&dir_a, &dir_b] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let b = Server::start(
        &ctx.bins.server,
        &dir_b,
        &ServerSpec {
            config: &B_CONFIG.replace("{PASSWORD}", CHAIN_PASSWORD),
            listeners: &[UPSTREAM],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-chain-b.log",
        },
    )
    .context("instance B")?;
    let upstream = b.addr(UPSTREAM);
    let config = A_CONFIG
        .replace(
            "{VIA}",
            &format!("socks5://{CHAIN_USER}:{CHAIN_PASSWORD_ESCAPED}@{upstream}"),
        )
        .replace(
            "{BAD_VIA}",
            &format!("socks5://{CHAIN_USER}:{BAD_PASSWORD}@{upstream}"),
        );
    let a = Server::start(
        &ctx.bins.server,
        &dir_a,
        &ServerSpec {
            config: &config,
            listeners: &[FRONT, FRONT_BAD],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-chain-a.log",
        },
    )
    .context("instance A")?;
    let chain = Chain {
        ctx,
        a,
        b,
        upstream,
    };
    let report = [
        chain.direct().context("check 1 (localhost direct)")?,
        chain.through_b().context("check 2 (127.0.0.1 through B)")?,
        chain
            .wrong_password()
            .context("check 3 (a wrong upstream password)")?,
    ];
    Ok(report.join("; "))
}

/// The two instances.
struct Chain<'a> {
    ctx: &'a Ctx,
    a: Server,
    b: Server,
    upstream: SocketAddr,
}

impl Chain<'_> {
    fn url(&self, host: &str) -> String {
        format!("http://{host}:{}/small", self.ctx.http.port())
    }

    fn destination(&self, host: &str) -> String {
        format!("{host}:{}", self.ctx.http.port())
    }

    /// `/small` from `host` through A's `listener`, checked byte for byte.
    fn fetch(&self, listener: &str, host: &str) -> anyhow::Result<()> {
        let (checked, _) = fetch(
            &["--socks5-hostname".into(), arg(self.a.addr(listener))],
            &self.url(host),
            Pattern::new(SMALL_SEED),
            &[],
            CURL_TIMEOUT,
        )?;
        checked.expect(SMALL_LEN, &format!("/small from {host} through A"))
    }

    /// A's `session` event for `destination` from `mark` on.
    fn a_session(&self, mark: usize, destination: &str) -> anyhow::Result<Value> {
        self.a
            .events()
            .wait_for(mark, WAIT, |e| {
                message(e) == "session" && e["destination"].as_str() == Some(destination)
            })
            .with_context(|| {
                format!(
                    "A logged no `session` for {destination} within {WAIT:?}; log: {}",
                    self.a.log_path().display()
                )
            })
    }

    /// Check 1.
    fn direct(&self) -> anyhow::Result<String> {
        let destination = self.destination("localhost");
        let mark = self.a.events().mark();
        self.fetch(FRONT, "localhost")?;
        let session = self.a_session(mark, &destination)?;
        if !succeeded(&session) {
            bail!("A's session did not succeed: {session}");
        }
        if !session["via"].is_null() {
            bail!("the rule's `via = \"direct\"` was not applied: A's session went {session}");
        }
        Ok(format!("{destination} direct, {SMALL_LEN} bytes intact"))
    }

    /// Check 2.
    fn through_b(&self) -> anyhow::Result<String> {
        let destination = self.destination("127.0.0.1");
        let (mark_a, mark_b) = (self.a.events().mark(), self.b.events().mark());
        self.fetch(FRONT, "127.0.0.1")?;
        let session = self.a_session(mark_a, &destination)?;
        let via = session["via"].as_str().unwrap_or_default();
        let want_via = format!("socks5://{CHAIN_USER}@{}", self.upstream);
        if !succeeded(&session) || via != want_via {
            bail!("A's session should have succeeded via {want_via:?}: {session}");
        }
        let tunnel = self
            .b
            .events()
            .wait_for(mark_b, WAIT, |e| message(e) == "session")
            .with_context(|| {
                format!(
                    "B logged no `session` within {WAIT:?} of the fetch through A; log: {}",
                    self.b.log_path().display()
                )
            })?;
        let client = client_ip(&tunnel);
        if client != Some(IpAddr::V4(A_SOURCE))
            || tunnel["user"].as_str() != Some(CHAIN_USER)
            || tunnel["command"].as_str() != Some("connect")
            || tunnel["destination"].as_str() != Some(destination.as_str())
            || !succeeded(&tunnel)
        {
            bail!(
                "B's session should show client {A_SOURCE}, user {CHAIN_USER:?}, CONNECT \
                 {destination} and success: {tunnel}"
            );
        }
        let down = tunnel["bytes_down"].as_u64().unwrap_or_default();
        if down < SMALL_LEN {
            bail!("B relayed {down} bytes down, less than the {SMALL_LEN}-byte body");
        }
        // Check 1's direct fetch ended before this one began: had it gone
        // through B, B would have logged it before this session.
        let sessions: Vec<Value> = self
            .b
            .events()
            .since(mark_b)
            .into_iter()
            .filter(|e| message(e) == "session")
            .collect();
        if sessions.len() != 1 {
            bail!(
                "B logged {} sessions for one fetch: {sessions:?}",
                sessions.len()
            );
        }
        Ok(format!(
            "{destination} via B, {SMALL_LEN} bytes intact; B logged client {}, user \
             {CHAIN_USER}, {down} bytes down",
            tunnel["client"].as_str().unwrap_or_default()
        ))
    }

    /// Check 3.
    fn wrong_password(&self) -> anyhow::Result<String> {
        let curl = require("curl", "apt-get install curl")?;
        let (mark_a, mark_b) = (self.a.events().mark(), self.b.events().mark());
        let requests = self.ctx.http.requests().len();
        let mut cmd = Command::new(curl);
        cmd.args(["-sS", "--fail", "--max-time"])
            .arg(CURL_TIMEOUT.as_secs().to_string())
            .args(["--socks5-hostname", &arg(self.a.addr(FRONT_BAD))])
            .arg(self.url("127.0.0.1"));
        let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Capture)?
            .wait(CURL_TIMEOUT + Duration::from_secs(5))?;
        if done.status.success() {
            bail!(
                "curl through an upstream with a wrong password succeeded ({} bytes)",
                done.stdout.len()
            );
        }
        let warning = self
            .a
            .events()
            .wait_for(mark_a, WAIT, |e| {
                message(e) == "the upstream proxy refused our login"
            })
            .context("A logged no `the upstream proxy refused our login`")?;
        let named = warning["upstream"].as_str().unwrap_or_default();
        if named != format!("socks5://{CHAIN_USER}@{}", self.upstream)
            || warning.to_string().contains(BAD_PASSWORD)
        {
            bail!("the warning should name the upstream without its password: {warning}");
        }
        let refused = self
            .b
            .events()
            .wait_for(mark_b, WAIT, |e| {
                message(e) == "authentication failed"
                    && client_ip(e) == Some(IpAddr::V4(A_SOURCE))
                    && e["user"].as_str() == Some(CHAIN_USER)
            })
            .context("B logged no `authentication failed` for A's login")?;
        if let Some(leak) = self
            .a
            .events()
            .since(mark_a)
            .into_iter()
            .find(|e| e.to_string().contains(BAD_PASSWORD))
        {
            bail!("A logged the upstream's password: {leak}");
        }
        let after = self.ctx.http.requests().len();
        if after != requests {
            bail!(
                "with a refused upstream login the page was still requested ({requests} -> {after})"
            );
        }
        Ok(format!(
            "a wrong upstream password: curl failed ({}), A warned, B logged {}",
            done.status,
            refused["reason"].as_str().unwrap_or("the failed login")
        ))
    }
}

/// Whether a `session` event's reply is success.
fn succeeded(event: &Value) -> bool {
    event["reply"].as_str().is_some_and(|r| r.contains("0x00")) && event["error"].is_null()
}

/// The IP of an event's `client` field.
fn client_ip(event: &Value) -> Option<IpAddr> {
    event["client"]
        .as_str()
        .and_then(|c| c.parse::<SocketAddr>().ok())
        .map(|a| a.ip().to_canonical())
}

//! Scenario `shared-port`: socks5 listeners with `protocols = ["socks5",
//! "socks4", "http"]` serve curl `--socks4`, `--socks4a`,
//! `--socks5-hostname` and `-x http://` on one port.
//!
//! A server of its own has two such listeners: `shared` without a password,
//! and `shared-auth` with `auth = "password"` and `no_auth_networks =
//! ["127.0.0.2/32"]`. The checks:
//!
//! 1. through `shared`, each of the four fetches `/small` byte-exact, and
//!    the `session` event names its protocol (`socks4` for SOCKS4 and 4a,
//!    `socks5`, `http`) and destination (the name for `--socks4a` and
//!    `--socks5-hostname`);
//! 2. through `shared-auth` from 127.0.0.1, `--socks4` and `--socks4a` are
//!    refused with the `SOCKS4 request refused` warning and no request
//!    reaches the origin, and SOCKS5 without a password fails too; SOCKS5
//!    and HTTP with the password fetch byte-exact;
//! 3. through `shared-auth` from 127.0.0.2 (in `no_auth_networks`),
//!    `--socks4` fetches byte-exact.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, PASSWORD, USER, arg, proxy::fetch};
use crate::e2e::{CURL_TIMEOUT, SMALL_LEN};
use crate::{
    harness::{Server, ServerSpec, message},
    peers::{Pattern, SMALL_SEED},
    process::{Proc, Stdout, require},
};

/// The listener without a password.
const SHARED: &str = "shared";
/// The listener with one.
const SHARED_AUTH: &str = "shared-auth";
/// The client in `shared-auth`'s `no_auth_networks`.
const EXEMPT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Each wait for a log event.
const WAIT: Duration = Duration::from_secs(10);

/// `{USER}` and `{PASSWORD}` are replaced.
const CONFIG: &str = r#"[server]
drain_timeout = "2s"

[[listener]]
name = "shared"
mode = "socks5"
bind = "127.0.0.1:0"
protocols = ["socks5", "socks4", "http"]
auth = "none"
handshake_timeout = "5s"
rules = [
    { action = "allow", domains = ["localhost"] },
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.0/8", "::1/128"] },
    { action = "deny" },
]

[[listener]]
name = "shared-auth"
mode = "socks5"
bind = "127.0.0.1:0"
protocols = ["socks5", "socks4", "http"]
auth = "password"
users = [{ username = "{USER}", password = "{PASSWORD}" }]
no_auth_networks = ["127.0.0.2/32"]
handshake_timeout = "5s"
rules = [
    { action = "allow", domains = ["localhost"] },
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.0/8", "::1/128"] },
    { action = "deny" },
]
"#;

/// The scenario: see the module docs.
pub(crate) fn shared_port(ctx: &mut Ctx) -> anyhow::Result<String> {
    let curl = require("curl", "apt-get install curl")?;
    let dir = ctx.dir.path().join("shared-port");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = CONFIG
        .replace("{USER}", USER)
        .replace("{PASSWORD}", PASSWORD);
    let server = Server::start(
        &ctx.bins.server,
        &dir,
        &ServerSpec {
            config: &config,
            listeners: &[SHARED, SHARED_AUTH],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-shared-port.log",
        },
    )?;
    let port = ctx.http.port();
    let url = |host: &str| format!("http://{host}:{port}/small");
    let shared = arg(server.addr(SHARED));
    let shared_auth = arg(server.addr(SHARED_AUTH));
    let mut report = Vec::new();

    // Check 1.
    let cases: [(&str, Vec<String>, &str, &str); 4] = [
        (
            "--socks4",
            vec!["--socks4".into(), shared.clone()],
            "127.0.0.1",
            "socks4",
        ),
        (
            "--socks4a",
            vec!["--socks4a".into(), shared.clone()],
            "localhost",
            "socks4",
        ),
        (
            "--socks5-hostname",
            vec!["--socks5-hostname".into(), shared.clone()],
            "localhost",
            "socks5",
        ),
        (
            "-x http://",
            vec!["-x".into(), format!("http://{shared}")],
            "127.0.0.1",
            "http",
        ),
    ];
    for (name, args, host, protocol) in cases {
        let mark = server.events().mark();
        fetch_small(&args, &url(host)).with_context(|| format!("{name} through {SHARED}"))?;
        let destination = format!("{host}:{port}");
        let got = session(&server, mark, |e| {
            e["destination"].as_str() == Some(destination.as_str())
        })
        .with_context(|| format!("{name} through {SHARED}"))?;
        if got["protocol"].as_str() != Some(protocol) {
            bail!("{name}: the session should say protocol {protocol:?}: {got}");
        }
    }
    report.push(format!(
        "{SHARED}: --socks4, --socks4a, --socks5-hostname and -x http:// on one port, \
         {SMALL_LEN} bytes intact each, protocols logged"
    ));

    // Check 2.
    let requests = ctx.http.requests().len();
    for (option, host) in [("--socks4", "127.0.0.1"), ("--socks4a", "localhost")] {
        let mark = server.events().mark();
        let mut cmd = Command::new(&curl);
        cmd.args(["-sS", "--fail", "--max-time"])
            .arg(CURL_TIMEOUT.as_secs().to_string())
            .args([option, shared_auth.as_str()])
            .arg(url(host));
        let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Null)?
            .wait(CURL_TIMEOUT + Duration::from_secs(5))?;
        if done.status.success() {
            bail!(
                "{option} through {SHARED_AUTH} from 127.0.0.1 succeeded: SOCKS4 bypassed the password"
            );
        }
        server
            .events()
            .wait_for(mark, WAIT, |e| {
                message(e).starts_with("SOCKS4 request refused")
                    && client_ip(e) == Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            })
            .with_context(|| format!("{option}: no `SOCKS4 request refused` warning"))?;
    }
    let mut cmd = Command::new(&curl);
    cmd.args(["-sS", "--fail", "--max-time"])
        .arg(CURL_TIMEOUT.as_secs().to_string())
        .args(["--socks5-hostname", shared_auth.as_str()])
        .arg(url("localhost"));
    let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Null)?
        .wait(CURL_TIMEOUT + Duration::from_secs(5))?;
    if done.status.success() {
        bail!("SOCKS5 without a password through {SHARED_AUTH} from 127.0.0.1 succeeded");
    }
    let after = ctx.http.requests().len();
    if after != requests {
        bail!("refused requests still reached the origin ({requests} -> {after})");
    }
    for (name, args) in [
        (
            "socks5h://user:pass@",
            vec![
                "-x".to_owned(),
                format!("socks5h://{USER}:{PASSWORD}@{shared_auth}"),
            ],
        ),
        (
            "-x http:// --proxy-user",
            vec![
                "-x".to_owned(),
                format!("http://{shared_auth}"),
                "--proxy-user".to_owned(),
                format!("{USER}:{PASSWORD}"),
            ],
        ),
    ] {
        let mark = server.events().mark();
        fetch_small(&args, &url("localhost"))
            .with_context(|| format!("{name} through {SHARED_AUTH}"))?;
        let destination = format!("localhost:{port}");
        let got = session(&server, mark, |e| {
            e["destination"].as_str() == Some(destination.as_str())
        })?;
        if got["user"].as_str() != Some(USER) {
            bail!("{name}: the session should name user {USER:?}: {got}");
        }
    }
    report.push(format!(
        "{SHARED_AUTH} from 127.0.0.1: SOCKS4/4a refused (warned), SOCKS5 without a password \
         refused, SOCKS5 and HTTP with it intact"
    ));

    // Check 3.
    let mark = server.events().mark();
    fetch_small(
        &[
            "--interface".to_owned(),
            EXEMPT.to_string(),
            "--socks4".to_owned(),
            shared_auth.clone(),
        ],
        &url("127.0.0.1"),
    )
    .with_context(|| format!("--socks4 through {SHARED_AUTH} from {EXEMPT}"))?;
    let got = session(&server, mark, |e| client_ip(e) == Some(IpAddr::V4(EXEMPT)))?;
    if got["protocol"].as_str() != Some("socks4") {
        bail!("the exempt client's session should say protocol \"socks4\": {got}");
    }
    report.push(format!(
        "{SHARED_AUTH} from {EXEMPT} (no_auth_networks): --socks4 intact"
    ));
    Ok(report.join("; "))
}

/// `/small` through curl with `args`, byte-exact.
fn fetch_small(args: &[String], url: &str) -> anyhow::Result<()> {
    let (checked, _) = fetch(args, url, Pattern::new(SMALL_SEED), &[], CURL_TIMEOUT)?;
    checked.expect(SMALL_LEN, url)
}

/// A successful `session` event with `pred` from `mark` on.
fn session(server: &Server, mark: usize, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let got = server
        .events()
        .wait_for(mark, WAIT, |e| message(e) == "session" && pred(e))
        .with_context(|| {
            format!(
                "no matching `session` event within {WAIT:?}; log: {}",
                server.log_path().display()
            )
        })?;
    let ok = got["reply"].as_str().is_some_and(|r| r.contains("0x00"))
        || got["status"].as_u64() == Some(200);
    if !ok || !got["error"].is_null() {
        bail!("the session did not succeed: {got}");
    }
    Ok(got)
}

/// The IP of an event's `client` field.
fn client_ip(event: &Value) -> Option<IpAddr> {
    event["client"]
        .as_str()
        .and_then(|c| c.parse::<SocketAddr>().ok())
        .map(|a| a.ip().to_canonical())
}

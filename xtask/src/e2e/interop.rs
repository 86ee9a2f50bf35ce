//! Scenarios moved out of `cargo test` because they drive external programs:
//! curl logging in with `--proxy-user` (a password holding a colon, and a
//! wrong one), and PySocks opening TCP tunnels by IP and by name.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use super::{Ctx, PASSWORD, PROXY, PROXY_AUTH, USER, arg, in_root, proxy, require_python_module};
use crate::e2e::SMALL_LEN;
use crate::{
    harness::{Server, ServerSpec, message},
    peers::{Pattern, SMALL_SEED, echo_server},
    process::{Proc, Stdout, require},
};

/// The listener of the scenario's own server.
const CURL_AUTH: &str = "curl-auth";
/// Its user.
const CURL_USER: &str = "curl-user";
/// Her password: curl splits `--proxy-user` at the first colon only.
const CURL_PASSWORD: &str = "p4ss:word";
/// A socks5 listener whose password holds a colon.
const CURL_CONFIG: &str = r#"[[listener]]
name = "curl-auth"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "curl-user", password = "p4ss:word" }]
handshake_timeout = "1s"
"#;

/// Scenario: curl logs in with `--proxy-user user:pa:ss` and fetches a page
/// (the server's `session` event names the user); with a wrong password
/// curl fails, the server logs `authentication failed` and the page is not
/// requested.
pub(crate) fn curl_proxy_user(ctx: &mut Ctx) -> anyhow::Result<String> {
    let curl = require("curl", "apt-get install curl")?;
    let dir = tempfile::Builder::new()
        .prefix("curl-auth-")
        .tempdir_in(ctx.dir.path())?;
    let server = Server::start(
        &ctx.bins.server,
        dir.path(),
        &ServerSpec {
            config: CURL_CONFIG,
            listeners: &[CURL_AUTH],
            log_level: "debug",
            keep: |_| true,
            log_name: "e2e-curl-auth-server.log",
        },
    )?;
    let proxy_addr = arg(server.addr(CURL_AUTH));
    let port = ctx.http.port();
    let url = format!("http://127.0.0.1:{port}/small");

    let mark = server.events().mark();
    let proxy_args = [
        "--socks5".to_owned(),
        proxy_addr.clone(),
        "--proxy-user".to_owned(),
        format!("{CURL_USER}:{CURL_PASSWORD}"),
    ];
    let (checked, _) = proxy::fetch(
        &proxy_args,
        &url,
        Pattern::new(SMALL_SEED),
        &[],
        Duration::from_secs(20),
    )
    .context("curl with the right password")?;
    checked.expect(SMALL_LEN, "curl with the right password")?;
    let session = server.events().wait_for(mark, Duration::from_secs(3), |e| {
        message(e) == "session" && e["user"].as_str() == Some(CURL_USER)
    });
    if session.is_none() {
        bail!(
            "the page arrived but the server logged no `session` event of user {CURL_USER:?}; \
             log: {}",
            server.log_path().display()
        );
    }

    let mark = server.events().mark();
    let requests = ctx.http.requests().len();
    let mut cmd = Command::new(&curl);
    cmd.args(["-sS", "--fail", "--max-time", "10"])
        .args(["--socks5", &proxy_addr])
        .args(["--proxy-user", &format!("{CURL_USER}:wrong")])
        .arg(&url);
    let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Null)?
        .wait(Duration::from_secs(20))?;
    if done.status.success() {
        bail!("curl with a wrong password succeeded; it must fail");
    }
    let refused = server.events().wait_for(mark, Duration::from_secs(3), |e| {
        e["error"]
            .as_str()
            .is_some_and(|error| error.contains("authentication failed"))
    });
    if refused.is_none() {
        bail!(
            "curl with a wrong password failed ({}), but the server logged no \
             `authentication failed`; log: {}",
            done.status,
            server.log_path().display()
        );
    }
    let after = ctx.http.requests().len();
    if after != requests {
        bail!("with a wrong password the page was still requested ({requests} -> {after})");
    }
    Ok(format!(
        "{CURL_USER}:{CURL_PASSWORD} fetched {SMALL_LEN} bytes as {CURL_USER}; \
         a wrong password was refused ({})",
        done.status
    ))
}

/// Scenario: PySocks opens a CONNECT tunnel to a TCP echo server by IP and,
/// with remote DNS, by name (the proxy resolves it: its `session` event names
/// the host), without and with a password; the echo comes back unchanged.
pub(crate) fn pysocks_connect(ctx: &mut Ctx) -> anyhow::Result<String> {
    let python = require("python3", "apt-get install python3")?;
    require_python_module(
        "socks",
        "apt-get install python3-socks (for Debian's python3), or python3 -m pip install PySocks",
    )?;
    let script = in_root(&ctx.root, "xtask/scripts/pysocks_connect.py");
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let echo = echo_server(4)?;
    let port = echo.addr().port();
    let cases = [
        (PROXY, "127.0.0.1", None),
        (PROXY, "localhost", None),
        (PROXY_AUTH, "localhost", Some((USER, PASSWORD))),
    ];
    let mut report = Vec::new();
    for (index, (listener, host, credentials)) in cases.into_iter().enumerate() {
        let text = format!("pysocks-{index}-{}", ctx.nonce);
        let mark = ctx.server.events().mark();
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--proxy-port", &ctx.addr(listener).port().to_string()])
            .args(["--target-host", host, "--target-port", &port.to_string()])
            .args(["--message", &text]);
        if let Some((user, password)) = credentials {
            cmd.args(["--user", user, "--password", password]);
        }
        let done = Proc::spawn(
            "pysocks_connect.py",
            &mut cmd,
            Stdio::null(),
            Stdout::Capture,
        )?
        .wait(Duration::from_secs(30))?;
        let what = format!("through {listener} to {host}:{port}");
        if !done.status.success() {
            bail!(
                "{what}: the PySocks client exited {}: {}",
                done.status,
                done.stderr_tail()
            );
        }
        let echoed = done.stdout_text();
        if echoed != text {
            bail!("{what}: PySocks printed {echoed:?}, sent {text:?}");
        }
        let destination = format!("{host}:{port}");
        let session = ctx.session(mark, Duration::from_secs(3), |e| {
            e["command"].as_str() == Some("connect")
                && e["destination"].as_str() == Some(destination.as_str())
                && credentials.is_none_or(|(user, _)| e["user"].as_str() == Some(user))
        });
        if session.is_none() {
            bail!(
                "{what}: the echo came back, but the server logged no `session` event \
                 for a CONNECT to {destination}{}",
                credentials
                    .map(|(user, _)| format!(" by {user}"))
                    .unwrap_or_default()
            );
        }
        report.push(format!(
            "{host}{}",
            credentials
                .map(|(user, _)| format!(" as {user}"))
                .unwrap_or_default()
        ));
    }
    Ok(format!("echoed through CONNECT to {}", report.join(", ")))
}

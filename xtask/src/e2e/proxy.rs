//! Scenarios 3 to 6: real SOCKS5 clients through the proxy listeners: curl,
//! headless Chromium, ncat and PySocks (UDP ASSOCIATE).

use std::{
    fs::File,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, PASSWORD, PROXY, PROXY_AUTH, USER, arg, in_root, marker, require_python_module};
use crate::e2e::SMALL_LEN;
use crate::{
    peers::{BIG_SEED, Checked, CheckingSink, Pattern, SMALL_SEED, UdpEcho, Verifier},
    process::{Proc, Stdout, require},
};

/// The pattern of the file ncat sends.
const NCAT_SEED: u64 = 21;
/// Its size.
const NCAT_LEN: usize = 4 * 1024 * 1024;

/// Fetches `url` with curl and `proxy_args`, checking the body against
/// `pattern` as it streams.
pub(crate) fn fetch(
    proxy_args: &[String],
    url: &str,
    pattern: Pattern,
    extra: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Checked, Duration)> {
    let curl = require("curl", "apt-get install curl")?;
    let mut cmd = Command::new(curl);
    cmd.args([
        "-sS",
        "--fail",
        "--max-time",
        &timeout.as_secs().to_string(),
    ])
    .args(proxy_args)
    .args(extra)
    .arg(url);
    let mut proc = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Take)?;
    let stdout = proc.take_stdout().context("no stdout pipe")?;
    let checker = thread::spawn(move || Verifier::new(pattern).consume(stdout));
    let done = proc.wait(timeout + Duration::from_secs(5))?;
    let checked = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the body checker panicked"))?
        .context("reading curl's output")?;
    if !done.status.success() {
        bail!("curl {url} exited {}: {}", done.status, done.stderr_tail());
    }
    Ok((checked, done.elapsed))
}

/// Whether a `session` event's destination names `host` and `port`.
fn names_destination(event: &Value, host: &str, port: u16) -> bool {
    let destination = event["destination"].as_str().unwrap_or_default();
    destination.ends_with(&format!(":{port}")) && destination.contains(host)
}

/// Scenario 3: curl through the proxy: `--socks5`, `--socks5-hostname localhost` and
/// `socks5h://user:pass@`, a small page and 100 MiB, bodies compared.
pub(crate) fn curl(ctx: &mut Ctx) -> anyhow::Result<String> {
    let port = ctx.http.port();
    let proxy = arg(ctx.addr(PROXY));
    let proxy_auth = ctx.addr(PROXY_AUTH);
    let cases: [(&str, Vec<String>, &str, Option<&str>); 3] = [
        (
            "--socks5",
            vec!["--socks5".into(), proxy.clone()],
            "127.0.0.1",
            None,
        ),
        (
            "--socks5-hostname",
            vec!["--socks5-hostname".into(), proxy],
            "localhost",
            None,
        ),
        (
            "socks5h://user:pass@",
            vec![
                "-x".into(),
                format!("socks5h://{USER}:{PASSWORD}@{proxy_auth}"),
            ],
            "localhost",
            Some(USER),
        ),
    ];
    let mut report = Vec::new();
    for (name, proxy_args, host, user) in cases {
        for (path, seed, len) in [
            ("small", SMALL_SEED, SMALL_LEN),
            ("big", BIG_SEED, ctx.big_len()),
        ] {
            let mark = ctx.server.events().mark();
            let url = format!("http://{host}:{port}/{path}");
            let (checked, took) = fetch(
                &proxy_args,
                &url,
                Pattern::new(seed),
                &[],
                Duration::from_secs(60),
            )
            .with_context(|| format!("{name} {url}"))?;
            checked.expect(len, &format!("{name} {url}"))?;
            let session = ctx.session(mark, Duration::from_secs(3), |e| {
                names_destination(e, host, port)
                    && user.is_none_or(|u| e["user"].as_str() == Some(u))
            });
            let Some(session) = session else {
                bail!(
                    "{name} {url}: the body arrived but the server logged no `session` event \
                     with destination {host}:{port}{}",
                    user.map(|u| format!(" and user {u}")).unwrap_or_default()
                );
            };
            if path == "big" {
                let down = session["bytes_down"].as_u64().unwrap_or(0);
                if down < len {
                    bail!("{name}: session bytes_down = {down}, but {len} body bytes arrived");
                }
                report.push(format!(
                    "{name} 100MiB {:.0} MiB/s",
                    len as f64 / 1048576.0 / took.as_secs_f64()
                ));
            }
        }
    }
    Ok(report.join(", "))
}

/// Scenario 4: headless Chromium loads a page through the proxy.
pub(crate) fn chromium(ctx: &mut Ctx) -> anyhow::Result<String> {
    let port = ctx.http.port();
    let mark = ctx.server.events().mark();
    let dom = render(ctx, &format!("socks5://{}", ctx.addr(PROXY)))?;
    chromium_session(ctx, mark, port, &dom)
}

/// Headless Chromium loads the local `/page.html` through `proxy_server`
/// (its `--proxy-server` value); returns the dumped DOM, which holds the
/// run's marker.
pub(super) fn render(ctx: &Ctx, proxy_server: &str) -> anyhow::Result<String> {
    let chromium = require("chromium", "apt-get install chromium")?;
    let profile = tempfile::Builder::new()
        .prefix("chromium-")
        .tempdir_in(ctx.dir.path())?;
    let url = format!("http://127.0.0.1:{}/page.html", ctx.http.port());
    let mut cmd = Command::new(chromium);
    cmd.env("HOME", profile.path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Beyond the brief's flags: keep Chromium's own background
            // requests (component updates, sign-in, safe browsing) off the proxy.
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-default-browser-check",
            "--disable-breakpad",
            "--disable-features=OptimizationHints,Translate,MediaRouter,AutofillServerCommunication,SafeBrowsing",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server={proxy_server}"))
        .arg("--proxy-bypass-list=<-loopback>")
        .arg("--dump-dom")
        .arg(&url);
    let done = Proc::spawn_group("chromium", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(Duration::from_secs(90))?;
    let dom = done.stdout_text();
    let want = marker(&ctx.nonce);
    if !dom.contains(&want) {
        // Chromium's stderr is mostly D-Bus noise without a session bus.
        let stderr = String::from_utf8_lossy(&done.stderr);
        let useful: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.to_lowercase().contains("dbus") && !l.trim().is_empty())
            .collect();
        bail!(
            "the dumped DOM ({} bytes, exit {}) lacks the marker {want:?}; stderr: {}",
            dom.len(),
            done.status,
            useful
                .get(useful.len().saturating_sub(3)..)
                .unwrap_or_default()
                .join(" | ")
        );
    }
    Ok(dom)
}

/// Scenario 4, continued: the session that carried the page.
fn chromium_session(ctx: &Ctx, mark: usize, port: u16, dom: &str) -> anyhow::Result<String> {
    let session = ctx.session(mark, Duration::from_secs(5), |e| {
        e["command"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("connect"))
            && names_destination(e, "", port)
    });
    if session.is_none() {
        bail!(
            "the page rendered, but no `session` event shows a CONNECT to port {port}: \
             did Chromium bypass the proxy? (HTTP requests seen: {:?})",
            ctx.http.requests()
        );
    }
    let script = if dom.contains("script ran") {
        "script ran"
    } else {
        "script did not run"
    };
    Ok(format!(
        "DOM has the marker ({script}); CONNECT 127.0.0.1:{port} logged"
    ))
}

/// Scenario 5: ncat pipes a file through the proxy to a TCP sink.
pub(crate) fn ncat(ctx: &mut Ctx) -> anyhow::Result<String> {
    let ncat = require("ncat", "apt-get install ncat")?;
    let input = ctx.dir.path().join("ncat-input.bin");
    std::fs::write(&input, Pattern::new(NCAT_SEED).bytes(NCAT_LEN))?;
    let sink = CheckingSink::start(Pattern::new(NCAT_SEED))?;
    let mut cmd = Command::new(ncat);
    cmd.args(["--proxy", &arg(ctx.addr(PROXY)), "--proxy-type", "socks5"])
        .args(["127.0.0.1", &sink.addr().port().to_string()]);
    let stdin = File::open(&input)?;
    let done = Proc::spawn("ncat", &mut cmd, Stdio::from(stdin), Stdout::Null)?
        .wait(Duration::from_secs(30))?;
    if !done.status.success() {
        bail!("ncat exited {}: {}", done.status, done.stderr_tail());
    }
    let checked = sink.next(Duration::from_secs(10))?;
    checked.expect(NCAT_LEN as u64, "the sink")?;
    Ok(format!(
        "{} MiB arrived intact in {:.2}s",
        NCAT_LEN >> 20,
        done.elapsed.as_secs_f64()
    ))
}

/// Scenario 6: PySocks sends datagrams through UDP ASSOCIATE to a UDP echo server,
/// through each socks5 listener.
pub(crate) fn udp_associate(ctx: &mut Ctx) -> anyhow::Result<String> {
    let python = require("python3", "apt-get install python3")?;
    require_python_module(
        "socks",
        "apt-get install python3-socks (for Debian's python3), or python3 -m pip install PySocks",
    )?;
    let script = in_root(&ctx.root, "xtask/scripts/udp_echo_client.py");
    let echo = UdpEcho::start()?;
    let count = 20;
    let mut report = Vec::new();
    for (listener, credentials) in [(PROXY, None), (PROXY_AUTH, Some((USER, PASSWORD)))] {
        let proxy: SocketAddr = ctx.addr(listener);
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .args(["--proxy-port", &proxy.port().to_string()])
            .args(["--target-port", &echo.addr().port().to_string()])
            .args(["--count", &count.to_string()]);
        if let Some((user, password)) = credentials {
            cmd.args(["--user", user, "--password", password]);
        }
        let done = Proc::spawn(
            "udp_echo_client.py",
            &mut cmd,
            Stdio::null(),
            Stdout::Capture,
        )?
        .wait(Duration::from_secs(60))?;
        if !done.status.success() {
            bail!(
                "through {listener}: the PySocks client exited {}: {} {}",
                done.status,
                crate::process::tail(&done.stdout, 3),
                done.stderr_tail()
            );
        }
        report.push(format!("{listener}: {}", done.stdout_text().trim()));
    }
    if echo.echoed() < 2 * count {
        bail!(
            "the echo server saw {} datagrams, expected {}",
            echo.echoed(),
            2 * count
        );
    }
    Ok(report.join("; "))
}

//! Scenarios of the `mode = "http"` front door, each with a server of its
//! own ([`CONFIG`]: `http` without a password, `http-auth` with one; both
//! deny every name, so `localhost` is a rule-denied destination, and allow
//! `127.0.0.0/8`):
//!
//! - `http-proxy-curl`: curl `-x http://` fetches `/small` (absolute-form
//!   GET) and, through CONNECT, a file from a local TLS server (`openssl
//!   s_server -WWW` with a self-signed certificate made in the temp dir;
//!   curl `-k`), byte-exact, without and with `--proxy-user`; no or a wrong
//!   password → 407 (and the `authentication failed` line); a denied
//!   destination → 403 for GET and CONNECT, with no request reaching the
//!   origin;
//! - `http-proxy-chromium`: Chromium `--proxy-server=http://` renders the
//!   local page, and the proxy logged the request;
//! - `ncat-http-proxy`: ncat `--proxy-type http` pipes 1 MiB through a
//!   CONNECT tunnel to a local echo, and gets it back byte-exact.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Ctx, PASSWORD, USER, arg, marker, proxy};
use crate::e2e::{CURL_TIMEOUT, SMALL_LEN};
use crate::{
    harness::{Server, ServerSpec, message},
    peers::{Pattern, SMALL_SEED, Verifier, echo_server},
    process::{Finished, Proc, Stdout, require},
};

/// The listener without a password.
const HTTP: &str = "http";
/// The listener with one.
const HTTP_AUTH: &str = "http-auth";
/// Each wait for a log event or a peer.
const WAIT: Duration = Duration::from_secs(10);
/// The pattern ncat sends.
const NCAT_SEED: u64 = 31;
/// Its length.
const NCAT_LEN: usize = 1 << 20;

/// The server of these scenarios (`{USER}` and `{PASSWORD}` replaced).
const CONFIG: &str = r#"[server]
drain_timeout = "2s"

[[listener]]
name = "http"
mode = "http"
bind = "127.0.0.1:0"
auth = "none"
handshake_timeout = "5s"
# Loopback only: Chromium also asks for its own hosts; no name is resolved.
rules = [
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.0/8"] },
    { action = "deny" },
]

[[listener]]
name = "http-auth"
mode = "http"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "{USER}", password = "{PASSWORD}" }]
handshake_timeout = "5s"
rules = [
    { action = "deny", domains = ["*"] },
    { action = "allow", destinations = ["127.0.0.0/8"] },
    { action = "deny" },
]
"#;

/// Starts the scenario's server, its log named after `scenario`.
fn start(ctx: &Ctx, scenario: &str) -> anyhow::Result<Server> {
    let dir = ctx.dir.path().join(scenario);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = CONFIG
        .replace("{USER}", USER)
        .replace("{PASSWORD}", PASSWORD);
    Server::start(
        &ctx.bins.server,
        &dir,
        &ServerSpec {
            config: &config,
            listeners: &[HTTP, HTTP_AUTH],
            log_level: "debug",
            keep: |_| true,
            log_name: &format!("e2e-{scenario}.log"),
        },
    )
}

/// The proxy URL of `listener`.
fn proxy_url(server: &Server, listener: &str) -> String {
    format!("http://{}", server.addr(listener))
}

/// The `session` event with `pred` from `mark` on.
fn session(
    server: &Server,
    mark: usize,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    server
        .events()
        .wait_for(mark, WAIT, |e| message(e) == "session" && pred(e))
        .with_context(|| {
            format!(
                "no `session` event for {what} within {WAIT:?}; log: {}",
                server.log_path().display()
            )
        })
}

/// Whether an HTTP `session` event has `command`, `destination` and `status`.
fn http_session(
    command: &'static str,
    destination: String,
    status: u64,
) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        e["protocol"].as_str() == Some("http")
            && e["command"].as_str() == Some(command)
            && e["destination"].as_str() == Some(destination.as_str())
            && e["status"].as_u64() == Some(status)
    }
}

/// Runs curl with `args` and returns `%{http_code} %{http_connect}`: the
/// last response's status and the CONNECT's (`000` when there was none).
fn curl_codes(args: &[String]) -> anyhow::Result<(String, Finished)> {
    let curl = require("curl", "apt-get install curl")?;
    let mut cmd = Command::new(curl);
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_connect}",
    ])
    .args(["--max-time", &CURL_TIMEOUT.as_secs().to_string()])
    .args(args);
    let done = Proc::spawn("curl", &mut cmd, Stdio::null(), Stdout::Capture)?
        .wait(CURL_TIMEOUT + Duration::from_secs(5))?;
    Ok((done.stdout_text(), done))
}

/// Scenario `http-proxy-curl`: see the module docs.
pub(crate) fn http_proxy_curl(ctx: &mut Ctx) -> anyhow::Result<String> {
    require("curl", "apt-get install curl")?;
    let openssl = require("openssl", "apt-get install openssl")?;
    let server = start(ctx, "http-proxy-curl")?;
    let tls_dir = ctx.dir.path().join("http-proxy-curl").join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let tls = TlsServer::start(&openssl, &tls_dir)?;
    let port = ctx.http.port();
    let plain = format!("http://127.0.0.1:{port}/small");
    let secure = format!("https://{}/small.bin", tls.addr);
    let mut report = Vec::new();

    // Without and with a password, plain HTTP and HTTPS through CONNECT.
    for (listener, credentials) in [
        (HTTP, None),
        (HTTP_AUTH, Some(format!("{USER}:{PASSWORD}"))),
    ] {
        let mut args = vec!["-x".to_owned(), proxy_url(&server, listener)];
        if let Some(credentials) = &credentials {
            args.extend(["--proxy-user".to_owned(), credentials.clone()]);
        }
        let user = credentials.as_ref().map_or("-", |_| USER);
        let mark = server.events().mark();
        let (checked, _) = proxy::fetch(&args, &plain, Pattern::new(SMALL_SEED), &[], CURL_TIMEOUT)
            .with_context(|| format!("GET through {listener}"))?;
        checked.expect(SMALL_LEN, &format!("{plain} through {listener}"))?;
        let got = session(
            &server,
            mark,
            &format!("GET {plain} through {listener}"),
            http_session("forward", format!("127.0.0.1:{port}"), 200),
        )?;
        if got["user"].as_str() != Some(user) {
            bail!("the session through {listener} should name user {user:?}: {got}");
        }
        let mark = server.events().mark();
        let (checked, _) = proxy::fetch(
            &args,
            &secure,
            Pattern::new(SMALL_SEED),
            &["-k"],
            CURL_TIMEOUT,
        )
        .with_context(|| format!("HTTPS through {listener}"))?;
        checked.expect(SMALL_LEN, &format!("{secure} through {listener}"))?;
        let got = session(
            &server,
            mark,
            &format!("CONNECT {} through {listener}", tls.addr),
            http_session("connect", tls.addr.to_string(), 200),
        )?;
        if got["user"].as_str() != Some(user) {
            bail!("the CONNECT session through {listener} should name user {user:?}: {got}");
        }
        report.push(format!(
            "{listener}: GET and CONNECT (TLS) {SMALL_LEN} bytes intact each"
        ));
    }

    // No password, a wrong one: 407, the failed login logged, no request.
    let requests = ctx.http.requests().len();
    let auth_proxy = proxy_url(&server, HTTP_AUTH);
    for credentials in [None, Some(format!("{USER}:not-{PASSWORD}"))] {
        let mut args = vec!["-x".to_owned(), auth_proxy.clone()];
        if let Some(credentials) = &credentials {
            args.extend(["--proxy-user".to_owned(), credentials.clone()]);
        }
        let mark = server.events().mark();
        let (codes, done) = curl_codes(&[args.clone(), vec![plain.clone()]].concat())?;
        if codes != "407 000" {
            bail!(
                "GET through {HTTP_AUTH} with credentials {credentials:?}: curl saw {codes:?} \
                 (exit {}), expected 407",
                done.status
            );
        }
        let (codes, _) = curl_codes(&[args, vec!["-k".to_owned(), secure.clone()]].concat())?;
        if !codes.ends_with(" 407") {
            bail!(
                "CONNECT through {HTTP_AUTH} with credentials {credentials:?}: curl saw \
                 {codes:?}, expected a 407 to the CONNECT"
            );
        }
        if credentials.is_some() {
            server
                .events()
                .wait_for(mark, WAIT, |e| {
                    message(e) == "authentication failed" && e["user"].as_str() == Some(USER)
                })
                .context("a wrong password logged no `authentication failed`")?;
        }
    }
    let after = ctx.http.requests().len();
    if after != requests {
        bail!("refused logins still reached the origin ({requests} -> {after} requests)");
    }
    report.push("no or a wrong password: 407 for GET and CONNECT".to_owned());

    // A rule-denied destination: 403, and nothing reaches the origins.
    let http_proxy = proxy_url(&server, HTTP);
    let denied = format!("http://localhost:{port}/small");
    let (codes, _) = curl_codes(&["-x".to_owned(), http_proxy.clone(), denied.clone()])?;
    if codes != "403 000" {
        bail!("GET {denied}: curl saw {codes:?}, expected 403 (the rules deny every name)");
    }
    let denied_tls = format!("https://localhost:{}/small.bin", tls.addr.port());
    let (codes, _) = curl_codes(&[
        "-x".to_owned(),
        http_proxy,
        "-k".to_owned(),
        denied_tls.clone(),
    ])?;
    if !codes.ends_with(" 403") {
        bail!("CONNECT for {denied_tls}: curl saw {codes:?}, expected a 403 to the CONNECT");
    }
    let after = ctx.http.requests().len();
    if after != requests {
        bail!("a denied destination still reached the origin ({requests} -> {after} requests)");
    }
    report.push("localhost denied: 403 for GET and CONNECT".to_owned());
    Ok(report.join("; "))
}

/// Scenario `http-proxy-chromium`: see the module docs.
pub(crate) fn http_proxy_chromium(ctx: &mut Ctx) -> anyhow::Result<String> {
    require("chromium", "apt-get install chromium")?;
    let server = start(ctx, "http-proxy-chromium")?;
    let port = ctx.http.port();
    let mark = server.events().mark();
    let dom = proxy::render(ctx, &proxy_url(&server, HTTP))?;
    if !dom.contains(&marker(&ctx.nonce)) {
        bail!("the DOM lacks the marker");
    }
    let got = session(&server, mark, "Chromium's page", |e| {
        e["protocol"].as_str() == Some("http")
            && e["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
    })
    .context("the page rendered, but did Chromium bypass the proxy?")?;
    // The connection's last request may be the favicon (404 here).
    Ok(format!(
        "DOM has the marker; the proxy logged {} {} ({} request(s), the last {})",
        got["command"].as_str().unwrap_or("?"),
        got["destination"].as_str().unwrap_or("?"),
        got["requests"],
        got["status"]
    ))
}

/// Scenario `ncat-http-proxy`: see the module docs.
pub(crate) fn ncat_http_proxy(ctx: &mut Ctx) -> anyhow::Result<String> {
    let ncat = require("ncat", "apt-get install ncat")?;
    let server = start(ctx, "ncat-http-proxy")?;
    let echo = echo_server(2)?;
    let input = ctx.dir.path().join("ncat-http-input.bin");
    std::fs::write(&input, Pattern::new(NCAT_SEED).bytes(NCAT_LEN))?;
    let mark = server.events().mark();
    let mut cmd = Command::new(ncat);
    cmd.args(["--proxy", &arg(server.addr(HTTP)), "--proxy-type", "http"])
        .args(["127.0.0.1", &echo.addr().port().to_string()]);
    let stdin = std::fs::File::open(&input)?;
    let mut proc = Proc::spawn("ncat", &mut cmd, Stdio::from(stdin), Stdout::Take)?;
    let stdout = proc.take_stdout().context("no stdout pipe")?;
    let checker = thread::spawn(move || Verifier::new(Pattern::new(NCAT_SEED)).consume(stdout));
    let done = proc.wait(Duration::from_secs(30))?;
    let checked = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the echo checker panicked"))?
        .context("reading ncat's output")?;
    if !done.status.success() {
        bail!("ncat exited {}: {}", done.status, done.stderr_tail());
    }
    checked.expect(NCAT_LEN as u64, "the echo through ncat")?;
    let destination = echo.addr().to_string();
    let got = session(
        &server,
        mark,
        "ncat's CONNECT",
        http_session("connect", destination.clone(), 200),
    )?;
    let up = got["bytes_up"].as_u64().unwrap_or_default();
    if up < NCAT_LEN as u64 {
        bail!("the session counts {up} bytes up, less than the {NCAT_LEN} sent: {got}");
    }
    Ok(format!(
        "{} MiB echoed intact through CONNECT {destination} in {:.2}s",
        NCAT_LEN >> 20,
        done.elapsed.as_secs_f64()
    ))
}

/// `openssl s_server -WWW` on a free loopback port, serving `small.bin` (the
/// `/small` pattern) with a self-signed certificate; killed on drop.
struct TlsServer {
    _proc: Proc,
    addr: SocketAddr,
}

impl TlsServer {
    fn start(openssl: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut req = Command::new(openssl);
        req.current_dir(dir).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        let made = Proc::spawn("openssl req", &mut req, Stdio::null(), Stdout::Null)?.wait(WAIT)?;
        if !made.status.success() {
            bail!("openssl req exited {}: {}", made.status, made.stderr_tail());
        }
        std::fs::write(
            dir.join("small.bin"),
            Pattern::new(SMALL_SEED).bytes(SMALL_LEN as usize),
        )?;
        let addr = testkit::free_loopback_port().context("no free loopback port")?;
        let mut cmd = Command::new(openssl);
        cmd.current_dir(dir)
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "cert.pem", "-key", "key.pem",
            ])
            .args(["-accept", &addr.to_string()]);
        let mut proc = Proc::spawn("openssl s_server", &mut cmd, Stdio::null(), Stdout::Null)?;
        let up = testkit::wait_until(WAIT, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
        if !up || proc.has_exited() {
            bail!("openssl s_server did not listen on {addr} within {WAIT:?}");
        }
        Ok(Self { _proc: proc, addr })
    }
}

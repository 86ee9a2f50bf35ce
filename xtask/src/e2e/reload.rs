//! Reload under load: a server of its own (config file in the run's directory) with a
//! crc-tcp listener `frames` and a socks5 listener `proxy` (user alice, an access log).
//! While curl downloads 1 GiB from the local HTTP server through the proxy (as alice, with
//! the first password; the body checked against its pattern byte for byte) and `client
//! bench --wait-ack` streams frames to `frames` through the proxy (every ack must be ok),
//! the config file is changed and SIGHUP sent three times: alice's password, then a rule
//! denying the name `localhost` (allowed until then), then a listener `added`. Each reload must log `config
//! reloaded`, `/readyz` must answer 200 throughout, and both transfers must still be running
//! when the last one is applied. Then an invalid file is sent a fourth SIGHUP, which must be
//! refused and change nothing. Afterwards: the download is intact, every frame was acked ok,
//! the new password works and the old one is refused, the rule refuses `localhost`,
//! `added` serves, `netkit_config_reloads_total` says ok 3 and error 1, and the access log
//! has the download's line.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

use super::{
    arg,
    prometheus::{get, value},
    proxy::fetch,
};
use crate::e2e::SMALL_LEN;
use crate::{
    harness::{Server, ServerSpec, message, toml_path},
    peers::{BIG_SEED, HttpServer, Pattern, SMALL_SEED, Site},
    process::{Proc, Stdout, require},
};

/// The download's length: 1 GiB.
const DOWNLOAD_LEN: u64 = 1 << 30;
/// curl's rate limit, so the download outlasts the three reloads on a fast machine
/// (1 GiB at 256 MiB/s: at least 4 s).
const RATE: &str = "256M";
/// Frames the bench sends: enough to outlast the reloads too.
const FRAMES: u64 = 3_000_000;
/// Each wait for a log event or a transfer's start.
const WAIT: Duration = Duration::from_secs(30);
/// The whole download and frame stream.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// The config, `{PASSWORD}`, `{RULES}`, `{EXTRA}` and `{LOG}` filled in per step.
const CONFIG: &str = r#"[server]
drain_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "frames"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "discard" }

[[listener]]
name = "proxy"
mode = "socks5"
bind = "127.0.0.1:0"
auth = "password"
users = [{ username = "alice", password = "{PASSWORD}" }]
access_log = {LOG}
rules = [{RULES}
    { action = "allow", destinations = ["127.0.0.0/8"] },
    { action = "allow", domains = ["localhost"] },
    { action = "deny" },
]
{EXTRA}"#;

const ADDED: &str = r#"
[[listener]]
name = "added"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "discard" }
"#;

/// The rule reload 2 adds: `localhost` was allowed by name until then.
const DENY_LOCALHOST: &str = "\n    { action = \"deny\", domains = [\"localhost\"] },";

fn config(password: &str, rules: &str, extra: &str, log: &Path) -> String {
    CONFIG
        .replace("{PASSWORD}", password)
        .replace("{RULES}", rules)
        .replace("{EXTRA}", extra)
        .replace("{LOG}", &toml_path(log))
}

/// The scenario: see the module docs.
pub(crate) fn reload(ctx: &mut super::Ctx) -> anyhow::Result<String> {
    require("curl", "apt-get install curl")?;
    let dir = ctx.dir.path().join("reload");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join("access.log");
    let server = Server::start(
        &ctx.bins.server,
        &dir,
        &ServerSpec {
            config: &config("old-secret", "", "", &log),
            listeners: &["frames", "proxy"],
            log_level: "info",
            keep: |_| true,
            log_name: "e2e-reload.log",
        },
    )?;
    let http = HttpServer::start(Site {
        page: String::new(),
        small_len: SMALL_LEN,
        big_len: DOWNLOAD_LEN,
        small: Pattern::new(SMALL_SEED),
        big: Pattern::new(BIG_SEED),
    })?;
    let run = Run {
        server,
        http,
        log,
        dir: dir.clone(),
        client: ctx.bins.client.clone(),
    };
    run.checks()
        .with_context(|| format!("server log: {}", run.server.log_path().display()))
}

struct Run {
    server: Server,
    http: HttpServer,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
    client: std::path::PathBuf,
}

impl Run {
    fn proxy_args(&self, password: &str) -> Vec<String> {
        vec![
            "--socks5-hostname".into(),
            arg(self.server.addr("proxy")),
            "--proxy-user".into(),
            format!("alice:{password}"),
        ]
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.port())
    }

    /// `/small` by the name `localhost`, which the rule of the second reload denies.
    fn localhost_url(&self) -> String {
        format!("http://localhost:{}/small", self.http.port())
    }

    /// Writes `text` as the config, sends SIGHUP and waits for the outcome's log line.
    fn reload(&self, text: &str, outcome: &str) -> anyhow::Result<Value> {
        std::fs::write(self.dir.join("server.toml"), text)?;
        let mark = self.server.events().mark();
        let pid = Pid::from_raw(i32::try_from(self.server.pid())?).context("no pid")?;
        kill_process(pid, Signal::HUP).context("cannot send SIGHUP")?;
        self.server
            .events()
            .wait_for(mark, WAIT, |e| message(e).starts_with(outcome))
            .with_context(|| format!("no `{outcome}` event within {WAIT:?} of SIGHUP"))
    }

    fn admin(&self) -> anyhow::Result<SocketAddr> {
        let event = self
            .server
            .events()
            .wait_for(0, WAIT, |e| message(e) == "admin listening")
            .context("no `admin listening` event")?;
        event["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("`admin listening` without an address")
    }

    fn ready(&self, admin: SocketAddr) -> anyhow::Result<()> {
        let (status, body) = get(admin, "/readyz")?;
        if status != 200 {
            bail!("/readyz answered {status} {body:?} during the reloads");
        }
        Ok(())
    }

    fn checks(&self) -> anyhow::Result<String> {
        let admin = self.admin()?;
        let (before, _) = fetch(
            &self.proxy_args("old-secret"),
            &self.localhost_url(),
            Pattern::new(SMALL_SEED),
            &[],
            WAIT,
        )
        .context("localhost before the rule")?;
        before.expect(SMALL_LEN, "/small by the name localhost")?;
        let (frames, proxy) = (self.server.addr("frames"), self.server.addr("proxy"));
        // The download, through the proxy as alice with the first password.
        let download = {
            let (args, url) = (self.proxy_args("old-secret"), self.url("/big"));
            std::thread::spawn(move || {
                fetch(
                    &args,
                    &url,
                    Pattern::new(BIG_SEED),
                    &["--limit-rate", RATE],
                    TRANSFER_TIMEOUT,
                )
            })
        };
        // The frame stream, through the proxy to `frames`, every ack checked.
        let mut cmd = Command::new(&self.client);
        cmd.args(["bench", "--addr", &arg(frames), "--socks5", &arg(proxy)])
            .args(["--proxy-user", "alice", "--proxy-password", "old-secret"])
            .args(["--frames", &FRAMES.to_string(), "--size", "64"])
            .args([
                "--connections",
                "2",
                "--wait-ack",
                "--window",
                "64",
                "--json",
            ])
            .args(["--timeout", "30s"]);
        let mut bench = Proc::spawn("client bench", &mut cmd, Stdio::null(), Stdout::Capture)?;
        // Both must be flowing before the first reload: the HTTP server saw the request,
        // and the proxy has the bench's two tunnels and the download's open.
        let started = Instant::now();
        while !(self.http.requests().iter().any(|r| r.contains("/big"))
            && active(admin, "proxy")? >= 3.0)
        {
            if started.elapsed() > WAIT || download.is_finished() || bench.has_exited() {
                bail!("the download and the frame stream did not both start within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20)); // polling a condition, bounded above
        }
        let steps = [
            ("a new password", config("new-secret", "", "", &self.log)),
            (
                "a rule",
                config("new-secret", DENY_LOCALHOST, "", &self.log),
            ),
            (
                "a listener added",
                config("new-secret", DENY_LOCALHOST, ADDED, &self.log),
            ),
        ];
        let reloaded_at = Instant::now();
        for (what, text) in &steps {
            self.reload(text, "config reloaded")
                .with_context(|| format!("reloading {what}"))?;
            self.ready(admin)?;
        }
        let reloads_took = reloaded_at.elapsed();
        if download.is_finished() || bench.has_exited() {
            bail!(
                "the download or the frame stream ended before the third reload was applied: \
                 make them longer (RATE, FRAMES)"
            );
        }
        let refused = self.reload("[[listener]]\nmode = \"nope\"\n", "reload failed")?;
        if refused["level"] != "ERROR" {
            bail!("a refused reload must log at error level: {refused}");
        }
        self.ready(admin)?;
        // The transfers.
        let (checked, took) = download
            .join()
            .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
        checked.expect(DOWNLOAD_LEN, "the 1 GiB download across three reloads")?;
        let bench = bench.wait(TRANSFER_TIMEOUT)?;
        if !bench.status.success() {
            bail!(
                "client bench failed ({}): {}",
                bench.status,
                bench.stderr_tail()
            );
        }
        let report: Value = serde_json::from_str(bench.stdout_text().trim())
            .with_context(|| format!("client bench --json printed {:?}", bench.stdout_text()))?;
        if report["frames"].as_u64() != Some(FRAMES) || report["errors"].as_u64() != Some(0) {
            bail!("client bench: not every frame acked ok: {report}");
        }
        // The new settings.
        let (small, _) = fetch(
            &self.proxy_args("new-secret"),
            &self.url("/small"),
            Pattern::new(SMALL_SEED),
            &[],
            WAIT,
        )
        .context("the new password")?;
        small.expect(64 * 1024, "/small with the new password")?;
        if fetch(
            &self.proxy_args("old-secret"),
            &self.url("/small"),
            Pattern::new(SMALL_SEED),
            &[],
            WAIT,
        )
        .is_ok()
        {
            bail!("the old password still works after the reload");
        }
        if fetch(
            &self.proxy_args("new-secret"),
            &self.localhost_url(),
            Pattern::new(SMALL_SEED),
            &[],
            WAIT,
        )
        .is_ok()
        {
            bail!("the reloaded rule did not refuse localhost");
        }
        let added = self
            .server
            .events()
            .wait_for(0, WAIT, |e| {
                message(e) == "listening" && e["listener"] == "added"
            })
            .and_then(|e| {
                e["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            })
            .context("no `listening` event for the added listener")?;
        let mut cmd = Command::new(&self.client);
        cmd.args([
            "send",
            "--addr",
            &arg(added),
            "--wait-ack",
            "--timeout",
            "10s",
            "added",
        ]);
        let sent =
            Proc::spawn("client send", &mut cmd, Stdio::null(), Stdout::Capture)?.wait(WAIT)?;
        if !sent.status.success() {
            bail!(
                "the added listener did not ack a frame: {}",
                sent.stderr_tail()
            );
        }
        let (_, metrics) = get(admin, "/metrics")?;
        let ok = value(&metrics, "netkit_config_reloads_total{result=\"ok\"}")?;
        let error = value(&metrics, "netkit_config_reloads_total{result=\"error\"}")?;
        if (ok, error) != (3.0, 1.0) {
            bail!("netkit_config_reloads_total: ok {ok}, error {error}; expected 3 and 1");
        }
        // The access log has the download, as alice, every byte of it.
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("cannot read {}", self.log.display()))?;
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["bytes_out"].as_u64().is_some_and(|b| b > DOWNLOAD_LEN))
            .with_context(|| format!("no access log line for the download in {text:?}"))?;
        if line["user"] != "alice" || line["reply"] != "succeeded" {
            bail!("the download's access log line: {line}");
        }
        Ok(format!(
            "1 GiB intact in {:.1}s and {FRAMES} frames acked ok ({:.0}/s) across 3 reloads \
             (applied within {:.2}s; /readyz 200 throughout); an invalid file refused; new \
             password in, old out, rule applied, added listener acked; access log: {line}",
            took.as_secs_f64(),
            report["frames_per_sec"].as_f64().unwrap_or_default(),
            reloads_took.as_secs_f64()
        ))
    }
}

/// `netkit_connections_active` of `listener`.
fn active(admin: SocketAddr, listener: &str) -> anyhow::Result<f64> {
    let (_, metrics) = get(admin, "/metrics")?;
    let series = metrics
        .lines()
        .find(|l| {
            l.starts_with("netkit_connections_active{")
                && l.contains(&format!("listener=\"{listener}\""))
        })
        .and_then(|l| l.split(' ').next_back())
        .and_then(|v| v.parse().ok());
    Ok(series.unwrap_or(0.0))
}

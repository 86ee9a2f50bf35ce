//! The `nats` handler's logins and TLS against a real `nats-server` (Debian
//! package, 2.9) with JetStream on loopback. Needs `openssl` (the command,
//! `apt-get install openssl`) to make the certificates.
//!
//! Each part starts a `nats-server` of its own (its own port, store and
//! config file in the run's temporary directory), then collectors of their
//! own (admin endpoint, one crc-tcp listener with the nats handler and
//! `create_stream`), one at a time, at the default log level (`info`):
//!
//! 1. `authorization { user, password }`: with the right password the
//!    collector becomes ready, three frames are acked ok and the stream holds
//!    exactly them (read back with `async-nats`, logged in). With a wrong
//!    password the collector still starts, but logs (`warn` or `error`) a
//!    line naming the authorization failure, `/readyz` answers 503 `nats: not
//!    connected`, frames get status 5, and nothing more is stored. The same
//!    without a login, and with the right one but `tls_required = true` (the
//!    server offers no TLS).
//! 2. `authorization { token }`: the same with the right and a wrong token.
//! 3. `tls { cert_file, key_file }`, a certificate for the IP 127.0.0.1
//!    signed by a CA made here: a collector with `tls://`, `tls_ca_file` (that
//!    CA) and `tls_required = true` stores frames; one trusting another CA
//!    logs a line naming the TLS failure, is not ready and answers status 5.
//! 4. The same with `verify: true` (a client certificate required): a
//!    collector with `tls_cert_file` and `tls_key_file` (signed by the CA)
//!    stores frames; one without is refused as in 3.
//!
//! The log check runs last in each refused case, and a missing line fails
//! the scenario only after every part ran (`DEFECT (the handler's log)`),
//! naming what the log said instead. A refused login must be named
//! (`authorization`), and a failed TLS handshake by its cause, which
//! async-nats's error event leaves out ("IO error") and the handler's
//! warning carries from async-nats's debug line: `InvalidContentType`
//! (`tls_required` against a server without TLS), `UnknownIssuer` (another
//! CA), `BadCertificate` (no client certificate). Before the handler logged
//! that warning, `tls-required` and parts 3 and 4 failed this check.
//!
//! `creds_file` is not covered: it needs an operator and account JWT setup
//! (`nsc`, not packaged in Debian).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use async_nats::{ConnectOptions, jetstream};
use proto::{Ack, AckStatus};
use serde_json::Value;

use super::{
    Ctx,
    nats::{NatsServer, WAIT, expect_ok, nats_server, session, wait_ready},
    prometheus::{admin_addr_of, get},
};
use crate::{
    harness::{Server, ServerSpec, message, toml_path},
    process::{Proc, Stdout},
};

/// The collector's listener.
const LISTENER: &str = "ingest";
/// The stream the handler creates.
const STREAM: &str = "E2E_AUTH";
/// The user nats-server knows.
const USER: &str = "collector";
/// Its password.
const PASSWORD: &str = "right-e2e-password";
/// The token nats-server knows.
const TOKEN: &str = "right-e2e-token";
/// How long a line naming a refused login may take after the first failed
/// attempt was logged.
const LOG_WAIT: Duration = Duration::from_secs(3);
/// How long `openssl` may take per command.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

const COLLECTOR: &str = r#"[server]
drain_timeout = "2s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "ingest"
mode = "crc-tcp"
bind = "127.0.0.1:0"
handler = { type = "nats", servers = ["{URL}"], subject = "e2e.auth.{listener}", stream = "E2E_AUTH", publish_timeout = "2s", create_stream = { replicas = 1, storage = "file", duplicate_window = "2m" }{KEYS} }
"#;

/// How a client reaches a nats-server: the collector's handler keys, and the
/// same for the reader of the stream.
#[derive(Debug, Clone, Default)]
struct Access {
    /// `tls://` rather than `nats://`.
    tls: bool,
    /// `tls_required = true`.
    required: bool,
    user: Option<(&'static str, &'static str)>,
    token: Option<&'static str>,
    ca: Option<PathBuf>,
    cert: Option<(PathBuf, PathBuf)>,
}

impl Access {
    fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://{addr}")
    }

    /// The handler's keys past `servers`, each with a leading `, `.
    fn keys(&self) -> String {
        let mut keys = String::new();
        if let Some((user, password)) = self.user {
            keys += &format!(", user = {user:?}, password = {password:?}");
        }
        if let Some(token) = self.token {
            keys += &format!(", token = {token:?}");
        }
        if let Some(ca) = &self.ca {
            keys += &format!(", tls_ca_file = {}", toml_path(ca));
        }
        if let Some((cert, key)) = &self.cert {
            keys += &format!(
                ", tls_cert_file = {}, tls_key_file = {}",
                toml_path(cert),
                toml_path(key)
            );
        }
        if self.required {
            keys += ", tls_required = true";
        }
        keys
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new().require_tls(self.required);
        if let Some((user, password)) = self.user {
            options = options.user_and_password(user.to_owned(), password.to_owned());
        }
        if let Some(token) = self.token {
            options = options.token(token.to_owned());
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }
}

/// One part's nats-server, and how to log in to it.
struct Part<'a> {
    ctx: &'a Ctx,
    runtime: &'a tokio::runtime::Runtime,
    name: &'static str,
    dir: PathBuf,
    nats: NatsServer,
    /// The right way in (the reader uses it too).
    right: Access,
    /// Frames stored so far.
    stored: Vec<Vec<u8>>,
}

/// The scenario: see the module docs.
pub(crate) fn nats_auth(ctx: &mut Ctx) -> anyhow::Result<String> {
    let binary = nats_server()?;
    let openssl = crate::process::require("openssl", "apt-get install openssl")?;
    let dir = ctx.dir.path().join("nats-auth");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ctx = &*ctx;
    let mut done = Vec::new();

    let pki = Pki::make(&openssl, &dir.join("pki"))?;

    // 1. user and password.
    let right = Access {
        user: Some((USER, PASSWORD)),
        ..Access::default()
    };
    let mut part = Part::start(
        ctx,
        &runtime,
        &binary,
        &dir,
        "password",
        &format!("authorization {{ user: {USER:?}, password: {PASSWORD:?} }}\n"),
        right,
    )?;
    part.accepted("password")?;
    let wrong = Access {
        user: Some((USER, "wrong-e2e-password")),
        ..Access::default()
    };
    done.push(part.refused("wrong-password", &wrong, &["authorization"])?);
    let no_login = Access::default();
    done.push(part.refused("no-password", &no_login, &["authorization"])?);
    // `tls_required` with a server that offers no TLS (a `nats://` URL): refused.
    let tls_required = Access {
        required: true,
        ca: Some(pki.ca.clone()),
        ..part.right.clone()
    };
    done.push(part.refused("tls-required", &tls_required, &["InvalidContentType"])?);
    drop(part);

    // 2. token.
    let right = Access {
        token: Some(TOKEN),
        ..Access::default()
    };
    let mut part = Part::start(
        ctx,
        &runtime,
        &binary,
        &dir,
        "token",
        &format!("authorization {{ token: {TOKEN:?} }}\n"),
        right,
    )?;
    part.accepted("token")?;
    let wrong = Access {
        token: Some("wrong-e2e-token"),
        ..Access::default()
    };
    done.push(part.refused("wrong-token", &wrong, &["authorization"])?);
    drop(part);

    // 3. TLS, the server's certificate checked.
    let right = Access {
        tls: true,
        required: true,
        ca: Some(pki.ca.clone()),
        ..Access::default()
    };
    let mut part = Part::start(
        ctx,
        &runtime,
        &binary,
        &dir,
        "tls",
        &format!(
            "tls {{ cert_file: {}, key_file: {}, timeout: 5 }}\n",
            toml_path(&pki.server.0),
            toml_path(&pki.server.1)
        ),
        right,
    )?;
    part.accepted("tls")?;
    let wrong = Access {
        tls: true,
        required: true,
        ca: Some(pki.other_ca.clone()),
        ..Access::default()
    };
    done.push(part.refused("other-ca", &wrong, &["UnknownIssuer"])?);
    drop(part);

    // 4. TLS with a client certificate required.
    let right = Access {
        tls: true,
        required: true,
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client.clone()),
        ..Access::default()
    };
    let mut part = Part::start(
        ctx,
        &runtime,
        &binary,
        &dir,
        "mtls",
        &format!(
            "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true, timeout: 5 }}\n",
            toml_path(&pki.server.0),
            toml_path(&pki.server.1),
            toml_path(&pki.ca)
        ),
        right,
    )?;
    part.accepted("mtls")?;
    let wrong = Access {
        tls: true,
        required: true,
        ca: Some(pki.ca.clone()),
        ..Access::default()
    };
    done.push(part.refused("no-client-cert", &wrong, &["BadCertificate"])?);
    drop(part);

    let (named, defects): (Vec<_>, Vec<_>) = done.into_iter().partition(Result::is_ok);
    let named: Vec<String> = named.into_iter().filter_map(Result::ok).collect();
    let defects: Vec<String> = defects.into_iter().filter_map(Result::err).collect();
    if !defects.is_empty() {
        bail!(
            "DEFECT (the handler's log): {}; otherwise as expected: the right logins stored their frames, every refused one was not ready and answered status 5, and the failure was named for {}",
            defects.join("; "),
            named.join(", ")
        );
    }
    Ok(format!(
        "password, token, TLS and TLS with a client certificate: frames stored; refused, not ready and status 5, the log naming why: {}",
        named.join(", ")
    ))
}

impl<'a> Part<'a> {
    /// Starts a nats-server with `config` (besides JetStream, port and store).
    fn start(
        ctx: &'a Ctx,
        runtime: &'a tokio::runtime::Runtime,
        binary: &Path,
        dir: &Path,
        name: &'static str,
        config: &str,
        right: Access,
    ) -> anyhow::Result<Self> {
        let dir = dir.join(name);
        let store = dir.join("store");
        std::fs::create_dir_all(&store)
            .with_context(|| format!("cannot create {}", store.display()))?;
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config)
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let addr = testkit::free_loopback_port()?;
        let nats = NatsServer::start_with(binary, addr, &store, Some(&conf))
            .with_context(|| format!("{name}: nats-server with {config:?}"))?;
        Ok(Self {
            ctx,
            runtime,
            name,
            dir,
            nats,
            right,
            stored: Vec::new(),
        })
    }

    /// Starts a collector that reaches the nats-server with `access`.
    fn collector(&self, label: &str, access: &Access) -> anyhow::Result<(Server, SocketAddr)> {
        let config = COLLECTOR
            .replace("{URL}", &access.url(self.nats.addr))
            .replace("{KEYS}", &access.keys());
        let dir = self.dir.join(label);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let collector = Server::start(
            &self.ctx.bins.server,
            &dir,
            &ServerSpec {
                config: &config,
                listeners: &[LISTENER],
                log_level: "info",
                keep: |_| true,
                log_name: &format!("e2e-nats-auth-{label}.log"),
            },
        )
        .with_context(|| format!("{label}: the collector did not start"))?;
        let admin = admin_addr_of(collector.events(), WAIT)
            .with_context(|| format!("{label}: the collector's admin endpoint"))?;
        Ok((collector, admin))
    }

    /// A collector logged in the right way: ready, three frames acked ok and
    /// stored.
    fn accepted(&mut self, label: &str) -> anyhow::Result<()> {
        let (mut collector, admin) = self.collector(label, &self.right.clone())?;
        let result = (|| {
            wait_ready(admin, 200).with_context(|| format!("{label}: logged in the right way"))?;
            let payloads: Vec<Vec<u8>> = (0..3)
                .map(|i| format!("{label}-{i}").into_bytes())
                .collect();
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let acks = session(self.frames_of(&collector), stream_id(label), 0, &refs)?;
            expect_ok(&acks, 0..3).with_context(|| format!("{label}: frames"))?;
            self.stored.extend(payloads);
            self.check_stream(label)
        })();
        let _ = collector.stop(WAIT);
        result
    }

    /// A collector with `access` that nats-server refuses: it starts, tries
    /// to connect (async-nats logs each failed attempt), is not ready,
    /// answers status 5 and stores nothing. Returns what the log says of the
    /// failure: `Ok` a `warn` or `error` line with one of `words`, `Err` (a
    /// defect, reported by the caller after the other parts ran) none.
    fn refused(
        &mut self,
        label: &'static str,
        access: &Access,
        words: &[&str],
    ) -> anyhow::Result<Result<String, String>> {
        let (mut collector, admin) = self.collector(label, access)?;
        let result = (|| {
            let events = collector.events();
            events
                .wait_for(0, WAIT, |e| {
                    names_failure(e, words) || message(e).starts_with("event: client error")
                })
                .with_context(|| {
                    format!(
                        "{label}: no failed connection attempt logged within {WAIT:?}; the log says: {}",
                        summary(&events.since(0))
                    )
                })?;
            let (status, body) = get(admin, "/readyz")?;
            if status != 503 || !body.contains("nats: not connected") {
                bail!(
                    "{label}: /readyz answered {status} {body:?}, expected 503 nats: not connected"
                );
            }
            let acks = session(
                self.frames_of(&collector),
                stream_id(label),
                0,
                &[b"refused-0", b"refused-1"],
            )?;
            let failed: Vec<Ack> = (0..2)
                .map(|seq| Ack {
                    status: AckStatus::HandlerFailed,
                    seq,
                })
                .collect();
            if acks != failed {
                bail!("{label}: acks {acks:?}, expected status 5 for both");
            }
            // Still refused after those frames, and nothing stored.
            let (status, _) = get(admin, "/readyz")?;
            if status != 503 {
                bail!("{label}: /readyz answered {status} after the frames");
            }
            self.check_stream(label)?;
            // The attempts so far failed: the line, if any, is there already.
            Ok(
                match events.wait_for(0, LOG_WAIT, |e| names_failure(e, words)) {
                    Some(line) => Ok(format!(
                        "{label} ({} {:?})",
                        line["level"].as_str().unwrap_or_default(),
                        message(&line)
                    )),
                    None => Err(format!(
                        "{label}: no warn or error line names the failure (any of {words:?}); at the default level (info) the log says only: {}",
                        summary(&events.since(0))
                    )),
                },
            )
        })();
        let _ = collector.stop(WAIT);
        result
    }

    fn frames_of(&self, collector: &Server) -> SocketAddr {
        collector.addr(LISTENER)
    }

    /// The stream holds exactly the frames stored so far, in order.
    fn check_stream(&self, label: &str) -> anyhow::Result<()> {
        let got = self
            .runtime
            .block_on(read_stream(&self.right, self.nats.addr))
            .with_context(|| format!("{}: reading the stream", self.name))?;
        if got != self.stored {
            bail!(
                "{label}: the stream holds {:?}, expected {:?}",
                lossy(&got),
                lossy(&self.stored)
            );
        }
        Ok(())
    }
}

/// A 16-byte session stream id made from `label`.
fn stream_id(label: &str) -> [u8; 16] {
    let mut id = *b"e2e-auth--------";
    for (slot, byte) in id.iter_mut().skip(9).zip(label.bytes()) {
        *slot = byte;
    }
    id
}

/// Whether `event` is a `warn` or `error` line whose text has one of `words`
/// (case-insensitive).
fn names_failure(event: &Value, words: &[&str]) -> bool {
    let level = event["level"].as_str().unwrap_or_default();
    if !matches!(level, "WARN" | "ERROR") {
        return false;
    }
    let text = event.to_string().to_lowercase();
    words.iter().any(|w| text.contains(&w.to_lowercase()))
}

/// The log's lines past the startup ones, short, a run of the same line once
/// with its count.
fn summary(events: &[Value]) -> String {
    let mut lines: Vec<(String, usize)> = Vec::new();
    for e in events {
        if matches!(message(e), "listening" | "admin listening") {
            continue;
        }
        let line = format!(
            "{} {}{}",
            e["level"].as_str().unwrap_or("?"),
            message(e),
            e.get("error")
                .map(|error| format!(" error={error}"))
                .unwrap_or_default()
        );
        match lines.last_mut() {
            Some((last, count)) if *last == line => *count += 1,
            _ => lines.push((line, 1)),
        }
    }
    if lines.is_empty() {
        return "nothing".to_owned();
    }
    lines
        .iter()
        .take(6)
        .map(|(line, count)| {
            if *count > 1 {
                format!("{line:?} x{count}")
            } else {
                format!("{line:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lossy(payloads: &[Vec<u8>]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The payloads of every message of the stream, in order (none if it does
/// not exist yet).
async fn read_stream(access: &Access, addr: SocketAddr) -> anyhow::Result<Vec<Vec<u8>>> {
    tokio::time::timeout(WAIT, async {
        let client = access.options().connect(access.url(addr)).await?;
        let js = jetstream::new(client);
        let mut stream = js.get_stream(STREAM).await?;
        let info = stream.info().await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut messages = Vec::new();
        if info.state.messages > 0 {
            for seq in first..=last {
                messages.push(stream.get_raw_message(seq).await?.payload.to_vec());
            }
        }
        Ok::<_, anyhow::Error>(messages)
    })
    .await
    .context("reading the stream timed out")?
}

/// The certificates: a CA, a server certificate for the IP 127.0.0.1 and a
/// client certificate signed by it, and another CA that signed neither.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    /// Certificate and key.
    server: (PathBuf, PathBuf),
    /// Certificate and key.
    client: (PathBuf, PathBuf),
}

impl Pki {
    fn make(openssl: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = |name: &str| dir.join(name);
        let ca = |name: &str| -> anyhow::Result<()> {
            run_openssl(
                openssl,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=netkit e2e {name}"),
                    "-keyout",
                    &path(&format!("{name}.key")).display().to_string(),
                    "-out",
                    &path(&format!("{name}.pem")).display().to_string(),
                ],
            )
        };
        ca("ca")?;
        ca("other-ca")?;
        let leaf = |name: &str, ext: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
            let (key, csr, pem, extfile) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.pem")),
                path(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext)
                .with_context(|| format!("cannot write {}", extfile.display()))?;
            run_openssl(
                openssl,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN=netkit e2e {name}"),
                    "-keyout",
                    &key.display().to_string(),
                    "-out",
                    &csr.display().to_string(),
                ],
            )?;
            run_openssl(
                openssl,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr.display().to_string(),
                    "-CA",
                    &path("ca.pem").display().to_string(),
                    "-CAkey",
                    &path("ca.key").display().to_string(),
                    "-set_serial",
                    if name == "server" { "2" } else { "3" },
                    "-days",
                    "2",
                    "-extfile",
                    &extfile.display().to_string(),
                    "-out",
                    &pem.display().to_string(),
                ],
            )?;
            Ok((pem, key))
        };
        let server = leaf(
            "server",
            "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
        )?;
        let client = leaf(
            "client",
            "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )?;
        Ok(Self {
            ca: path("ca.pem"),
            other_ca: path("other-ca.pem"),
            server,
            client,
        })
    }
}

fn run_openssl(openssl: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(openssl);
    cmd.args(args);
    let done =
        Proc::spawn("openssl", &mut cmd, Stdio::null(), Stdout::Null)?.wait(OPENSSL_TIMEOUT)?;
    if !done.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            done.status,
            done.stderr_tail()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_failure_is_named_only_by_a_warn_or_error_line_with_the_word() {
        let words = &["tls", "certificate"];
        let error = json!({"level": "ERROR", "message": "nats: cannot connect", "error": "invalid peer Certificate"});
        assert!(names_failure(&error, words));
        let warn = json!({"level": "WARN", "message": "nats: TLS handshake failed"});
        assert!(names_failure(&warn, words));
        let info = json!({"level": "INFO", "message": "nats: TLS handshake failed"});
        assert!(!names_failure(&info, words));
        let other = json!({"level": "ERROR", "message": "event: client error: nats: IO error"});
        assert!(!names_failure(&other, words));
    }

    #[test]
    fn the_summary_counts_a_repeated_line_once() {
        let line = json!({"level": "INFO", "message": "event: client error: nats: IO error"});
        let events = [
            json!({"level": "INFO", "message": "listening"}),
            line.clone(),
            line.clone(),
            json!({"level": "WARN", "message": "x", "error": "y"}),
        ];
        assert_eq!(
            summary(&events),
            r#""INFO event: client error: nats: IO error" x2, "WARN x error=\"y\"""#
        );
        assert_eq!(summary(&events[..1]), "nothing");
    }

    #[test]
    fn session_ids_differ_per_label() {
        assert_eq!(&stream_id("password"), b"e2e-auth-passwor");
        assert_ne!(stream_id("wrong-password"), stream_id("wrong-token"));
    }
}

//! The admin endpoint (`[admin]`): `GET /metrics` (Prometheus text format),
//! `GET /healthz` (200 while the process runs) and `GET /readyz` (200 once
//! every listener is bound and served, 503 from the start of shutdown). HTTP/1.1
//! by `hyper`; a connection is closed after [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin endpoint; keep it on loopback or a management network.
    pub bind: SocketAddr,
}

/// The most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The whole request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin connection (kept alive between scrapes) is closed after this.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// The content type of the Prometheus text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read: the metrics and whether the server is ready.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) registry: Registry,
    pub(crate) ready: AtomicBool,
    /// Every listener by name, for what keeps one from being ready (a `nats`
    /// handler without its connection or its stream).
    /// The same list `/metrics` reads, so a reload's listeners count at once.
    pub(crate) listeners: crate::metrics::Listeners,
}

/// Binds the admin address.
///
/// # Errors
///
/// When it cannot be bound; the message names `[admin] bind` and the address.
pub(crate) async fn bind(config: &AdminConfig) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let addr = config.bind;
    let listener = TcpListener::bind(addr).await.map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                " (another socket holds the port: `ss -tanp 'sport = :{}'` shows which)",
                addr.port()
            )
        } else {
            String::new()
        };
        anyhow::Error::new(error).context(format!("[admin] bind: cannot bind {addr}{hint}"))
    })?;
    let local = listener
        .local_addr()
        .context("[admin] bind: no local address")?;
    Ok((listener, local))
}

/// Serves the admin endpoint until `stop` fires; then closes its connections.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, "admin: too many connections; closed");
            continue;
        };
        let (state, stop) = (Arc::clone(&state), stop.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = connection => if let Err(error) = served {
                    debug!(%peer, %error, "admin: connection ended");
                },
                () = stop.cancelled() => {},
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {},
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

fn respond(state: &State, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => match crate::metrics::render(&state.registry) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            ),
        },
        "/readyz" if !state.ready.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        ),
        "/readyz" => {
            let reasons: Vec<String> = state
                .listeners
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter_map(|entry| {
                    entry
                        .stats
                        .nats
                        .not_ready()
                        .map(|reason| format!("not ready: listener {}: {reason}\n", entry.name))
                })
                .collect();
            if reasons.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "");
                *response.body_mut() = Full::new(Bytes::from(reasons.concat()));
                response
            }
        }
        _ => text(StatusCode::OK, "ok\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

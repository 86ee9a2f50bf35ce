//! [`HttpProxy`]: one client connection served with hyper's HTTP/1.1 server, CONNECT tunnels
//! and absolute-form `http://` forwarding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Error;
use crate::auth::{BasicAuth, LoginFailure, parse_basic};
use crate::counted::{Counted, Counters};
use crate::dial::{BoxedStream, DialError, Dialer, Target, target_of};
use crate::forward::{Upstream, host_header, strip_hop_by_hop, upstream_request};
use crate::options::{MIN_HEADER_LEN, ProxyOptions};

/// The body of every response the proxy sends: its own short text, or the origin's body.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The realm of the `Proxy-Authenticate` challenge.
pub const REALM: &str = "netkit";

/// The HTTP proxy front door: the settings, the [`Dialer`] every connection leaves through,
/// and, if clients must log in, the [`BasicAuth`] that checks them. Cheap to clone.
#[derive(Clone)]
pub struct HttpProxy {
    options: Arc<ProxyOptions>,
    dialer: Arc<dyn Dialer>,
    auth: Option<Arc<dyn BasicAuth>>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("options", &self.options)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

/// What happened on one client connection, for the caller's log and counters.
#[derive(Debug)]
#[non_exhaustive]
pub struct SessionReport {
    /// The client's address.
    pub client: SocketAddr,
    /// The user the client last logged in as, if it did.
    pub user: Option<String>,
    /// Requests answered (by the proxy or by an origin).
    pub requests: u64,
    /// The status of the last response sent.
    pub last_status: Option<StatusCode>,
    /// The method of the last request answered.
    pub last_method: Option<Method>,
    /// The host and port the last request named (its CONNECT target or its URI's authority,
    /// without any user info), for the log.
    pub last_host: Option<String>,
    /// The CONNECT target, once a tunnel was granted (200 sent).
    pub tunnel: Option<Target>,
    /// Bytes read from the client: request heads and bodies, and tunnel data.
    pub bytes_in: u64,
    /// Bytes written to the client: responses and tunnel data.
    pub bytes_out: u64,
    /// From the start of [`HttpProxy::serve`] to its end.
    pub duration: Duration,
    /// The last error: a request answered with an error status, or the connection's failure.
    pub error: Option<Error>,
}

impl HttpProxy {
    /// A front door that lets every client in and dials through `dialer`.
    #[must_use]
    pub fn new(options: ProxyOptions, dialer: Arc<dyn Dialer>) -> Self {
        HttpProxy {
            options: Arc::new(options),
            dialer,
            auth: None,
        }
    }

    /// Requires `Proxy-Authorization: Basic` from the clients `auth` says must log in
    /// ([`BasicAuth::required`]); others get `407` with `Proxy-Authenticate: Basic
    /// realm="netkit"`.
    #[must_use]
    pub fn with_auth(mut self, auth: Arc<dyn BasicAuth>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The settings.
    #[must_use]
    pub fn options(&self) -> &ProxyOptions {
        &self.options
    }

    /// Serves one client connection until it ends: requests one after another (keep-alive),
    /// and after a granted CONNECT the tunnel, relayed both ways until either side closes.
    ///
    /// `stop` ends the connection after the request in hand (a graceful shutdown); an
    /// established tunnel keeps going, for the caller to bound with its drain deadline. Every
    /// wait on the client or an origin is bounded by [`ProxyOptions`]; the tunnel itself is
    /// not (as in the SOCKS5 door, the caller's drain bounds it at shutdown).
    pub async fn serve<IO>(
        &self,
        io: IO,
        client: SocketAddr,
        stop: CancellationToken,
    ) -> SessionReport
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let session = Arc::new(Session {
            proxy: self.clone(),
            client,
            state: Mutex::new(State::default()),
        });
        let service = {
            let session = Arc::clone(&session);
            service_fn(move |request| {
                let session = Arc::clone(&session);
                async move { Ok::<_, Infallible>(session.handle(request).await) }
            })
        };
        let io = TokioIo::new(Counted::new(io, Arc::clone(&counters)));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout)
            .max_buf_size(self.options.max_header_len.max(MIN_HEADER_LEN))
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.as_mut().await
            }
        };
        if let Err(error) = served {
            debug!(%error, "HTTP connection ended");
            session.state().error = Some(Error::Http(error));
        }
        let tunnel = session.state().tunnel.take();
        if let Some(tunnel) = tunnel {
            let result = relay(tunnel, self.options.idle_timeout).await;
            if let Err(error) = result {
                debug!(%error, "tunnel ended");
                session.state().error = Some(error);
            }
        }
        let mut state = std::mem::take(&mut *session.state());
        SessionReport {
            client,
            user: state.user.take(),
            requests: state.requests,
            last_status: state.last_status,
            last_method: state.last_method.take(),
            last_host: state.last_host.take(),
            tunnel: state.tunnel_target.take(),
            bytes_in: counters.read.load(Ordering::Relaxed),
            bytes_out: counters.written.load(Ordering::Relaxed),
            duration: started.elapsed(),
            error: state.error.take(),
        }
    }
}

/// A granted CONNECT: the client's connection once hyper hands it back, and the target's.
struct Tunnel {
    client: OnUpgrade,
    target: BoxedStream,
    address: Target,
}

/// What the requests of one connection share. hyper serves them one after another, so the
/// lock is never contended and never held across an await.
#[derive(Default)]
struct State {
    user: Option<String>,
    requests: u64,
    last_status: Option<StatusCode>,
    last_method: Option<Method>,
    last_host: Option<String>,
    error: Option<Error>,
    upstream: Option<Upstream>,
    tunnel: Option<Tunnel>,
    tunnel_target: Option<Target>,
}

struct Session {
    proxy: HttpProxy,
    client: SocketAddr,
    state: Mutex<State>,
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let host = request
            .uri()
            .authority()
            .map(|authority| match authority.port_u16() {
                Some(port) => format!("{}:{port}", authority.host()),
                None => authority.host().to_owned(),
            });
        let answered = if method == Method::CONNECT {
            self.connect(request).await
        } else {
            self.forward(request).await
        };
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                debug!(%method, %uri, %error, "request refused");
                let response = error_response(&error);
                self.state().error = Some(error);
                response
            }
        };
        let mut state = self.state();
        state.requests += 1;
        state.last_status = Some(response.status());
        state.last_method = Some(method);
        state.last_host = host;
        response
    }

    /// RFC 9110 §9.3.6: `CONNECT host:port`, any port, authority-form only.
    async fn connect(&self, mut request: Request<Incoming>) -> Result<Response<Body>, Error> {
        let uri = request.uri();
        let target = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
            (None, Some(authority), None) if !authority.as_str().contains('@') => {
                target_of(authority, None)
            }
            _ => None,
        }
        .ok_or_else(|| Error::ConnectTarget(uri.to_string()))?;
        let user = self.authenticate(&request).await?;
        let stream = self.dial(&target, user.as_deref()).await?;
        debug!(%target, "tunnel granted");
        let mut state = self.state();
        state.tunnel = Some(Tunnel {
            client: hyper::upgrade::on(&mut request),
            target: stream,
            address: target.clone(),
        });
        state.tunnel_target = Some(target);
        Ok(Response::new(empty()))
    }

    /// RFC 9112 §3.2.2: an absolute-form `http://` request, sent on to the origin in
    /// origin-form over a kept-alive connection.
    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>, Error> {
        let uri = request.uri();
        match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
            Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
                return Err(Error::Https(uri.to_string()));
            }
            _ => return Err(Error::NotAbsolute(uri.to_string())),
        }
        let (target, host) = uri
            .authority()
            .and_then(|authority| Some((target_of(authority, Some(80))?, host_header(authority)?)))
            .ok_or_else(|| Error::NotAbsolute(uri.to_string()))?;
        let user = self.authenticate(&request).await?;
        let mut upstream = self.upstream(&target, user.as_deref()).await?;
        let limit = self.proxy.options.response_timeout;
        let sent = timeout(
            limit,
            upstream
                .sender
                .send_request(upstream_request(request, host)),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(Error::Upstream { target, error }),
            Err(_) => return Err(Error::UpstreamTimeout { target, limit }),
        };
        self.state().upstream = Some(upstream);
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// The kept connection to `target` if it is still usable, else a new one.
    async fn upstream(&self, target: &Target, user: Option<&str>) -> Result<Upstream, Error> {
        let kept = self.state().upstream.take();
        let limit = self.proxy.options.response_timeout;
        if let Some(mut kept) = kept.filter(|kept| kept.reusable_for(target)) {
            // Ready once the previous response's body has been read to its end.
            if let Ok(Ok(())) = timeout(limit, kept.sender.ready()).await {
                return Ok(kept);
            }
        }
        let stream = self.dial(target, user).await?;
        let handshake = hyper::client::conn::http1::handshake(TokioIo::new(stream));
        let (sender, connection) = match timeout(limit, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                return Err(Error::Upstream {
                    target: target.clone(),
                    error,
                });
            }
            Err(_) => {
                return Err(Error::UpstreamTimeout {
                    target: target.clone(),
                    limit,
                });
            }
        };
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "origin connection ended");
            }
        });
        Ok(Upstream {
            target: target.clone(),
            sender,
            driver,
        })
    }

    async fn dial(&self, target: &Target, user: Option<&str>) -> Result<BoxedStream, Error> {
        let limit = self.proxy.options.dial_timeout;
        match timeout(limit, self.proxy.dialer.dial(target, user)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(DialError::Timeout {
                target: target.clone(),
                limit,
            }
            .into()),
        }
    }

    /// The user, if this client must log in and did; `Ok(None)` if it need not.
    async fn authenticate(&self, request: &Request<Incoming>) -> Result<Option<String>, Error> {
        let Some(auth) = &self.proxy.auth else {
            return Ok(None);
        };
        if !auth.required(self.client.ip()) {
            return Ok(None);
        }
        let credentials = request
            .headers()
            .get(header::PROXY_AUTHORIZATION)
            .and_then(parse_basic)
            .ok_or(Error::AuthRequired)?;
        match auth.check(&credentials.user, &credentials.password).await {
            Ok(user) => {
                self.state().user = Some(user.clone());
                Ok(Some(user))
            }
            Err(reason) => {
                log_login_failure(self.client, &credentials.user, reason);
                Err(Error::AuthFailed)
            }
        }
    }
}

/// Relays a granted tunnel both ways until either side closes.
async fn relay(tunnel: Tunnel, idle_timeout: Option<Duration>) -> Result<(), Error> {
    let Tunnel {
        client,
        mut target,
        address,
    } = tunnel;
    let upgraded = client.await.map_err(Error::Upgrade)?;
    let mut client = TokioIo::new(upgraded);
    if let Some(idle) = idle_timeout {
        // The proxy core's relay: it ends a tunnel idle for `idle`.
        let options = socks5::ServerOptions::builder().idle_timeout(idle).build();
        let opened =
            socks5::core::Opened::new(socks5::Outbound::Stream(Box::new(target)), Bytes::new());
        let relayed =
            socks5::core::relay(&mut client, opened, bytes::BytesMut::new(), &options).await;
        debug!(%address, up = relayed.up, down = relayed.down, "tunnel closed");
        return relayed.result.map_err(|error| Error::Tunnel {
            target: address,
            error: match error {
                socks5::Error::Io(error) => error,
                other => std::io::Error::new(std::io::ErrorKind::TimedOut, other.to_string()),
            },
        });
    }
    match tokio::io::copy_bidirectional(&mut client, &mut target).await {
        Ok((up, down)) => {
            debug!(%address, up, down, "tunnel closed");
            Ok(())
        }
        Err(error) => Err(Error::Tunnel {
            target: address,
            error,
        }),
    }
}

/// The same warn line as the SOCKS5 door's failed login (the README's format, which
/// contrib/fail2ban matches): `authentication failed client=IP:PORT reason="..." user="..."`.
fn log_login_failure(client: SocketAddr, user: &str, reason: LoginFailure) {
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    warn!(%client, reason = reason.as_str(), user, "authentication failed");
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The proxy's own answer to a refused request: the status, a one-line text body, the
/// `Proxy-Authenticate` challenge for 407, and `Connection: close` for 400 (a client that sent
/// a request this proxy cannot make sense of gets no second chance on the connection).
fn error_response(error: &Error) -> Response<Body> {
    let status = error.status().unwrap_or(StatusCode::BAD_GATEWAY);
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        headers.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"netkit\""),
        );
    }
    if status == StatusCode::BAD_REQUEST {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_407_carries_the_challenge_and_a_400_closes() {
        let response = error_response(&Error::AuthRequired);
        assert_eq!(response.status(), 407);
        assert_eq!(
            response.headers()[header::PROXY_AUTHENTICATE],
            format!("Basic realm=\"{REALM}\"")
        );
        assert!(!response.headers().contains_key(header::CONNECTION));
        let response = error_response(&Error::ConnectTarget("/".into()));
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}

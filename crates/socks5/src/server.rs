//! The server side of one SOCKS5 connection: negotiation, authentication, and the three
//! commands. The caller accepts connections and runs [`serve`] for each.

mod command;
mod socks4;
mod udp;

pub(crate) use command::no_local_address;
pub use socks4::serve_socks4;

use std::any::Any;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::LoginFailure;

use crate::Error;
use crate::framing::{Deadline, read_msg, write_msg};
use crate::options::ServerOptions;

use crate::rules::Requester;
use crate::via::Upstream;
use crate::wire::protocol::Protocol;
use crate::wire::{
    Address, Command, Method, MethodSelection, PasswordStatus, Reply, Request, Response,
    decode_greeting, decode_password_request, decode_request, encode_method_selection,
    encode_password_status, encode_response,
};

/// What happened in one session, for the caller's one log line per session.
#[derive(Debug)]
pub struct SessionReport {
    /// The client's address.
    pub client: SocketAddr,
    /// The protocol the session spoke: [`Protocol::Socks5`] ([`serve`]) or
    /// [`Protocol::Socks4`] ([`serve_socks4`]).
    pub protocol: Protocol,
    /// The username it logged in with (or tried to), lossily decoded; never the password.
    pub user: Option<String>,
    /// The command it asked for.
    pub command: Option<Command>,
    /// DST of the request (for UDP ASSOCIATE, the address the client said it sends from).
    pub destination: Option<Address>,
    /// The last reply sent (BIND sends two). For SOCKS4, which has one success code (90) and
    /// one failure code (91), the SOCKS5 reply that would have answered: `Succeeded` for 90,
    /// the error's [`Error::reply`] for 91.
    pub reply: Option<Reply>,
    /// Bytes relayed from the client (TCP payload, or UDP DATA without headers).
    pub bytes_up: u64,
    /// Bytes relayed to the client.
    pub bytes_down: u64,
    /// CONNECT: how long opening the target took (resolving and every attempt), when it
    /// was opened.
    pub connect_time: Option<Duration>,
    /// CONNECT: the upstream proxy the tunnel goes through, if one (`via`).
    pub via: Option<Upstream>,
    /// UDP ASSOCIATE: datagrams relayed from the client.
    pub datagrams_up: u64,
    /// UDP ASSOCIATE: datagrams relayed to the client.
    pub datagrams_down: u64,
    /// From the start of [`serve`] to its end.
    pub duration: Duration,
    /// Why the session ended, if not normally.
    pub error: Option<Error>,
}

/// Runs one SOCKS5 session on an accepted connection until it ends, and reports on it.
///
/// `stream` is any byte stream: a [`TcpStream`] (then the local address of the connection is
/// known, which BIND, UDP ASSOCIATE and the own-address check use, and the relay uses
/// splice(2)), or anything else that reads and writes (a TLS session, an in-memory pipe).
/// Over a stream that is not a TCP socket, BIND and UDP ASSOCIATE need `outbound_bind`.
///
/// `stop` ends a session still in its handshake (or connecting, or waiting for a BIND peer) at
/// once; an established relay keeps going, for the caller to bound with its drain deadline.
/// Failures are answered as RFC 1928 asks (see [`Error::reply`]) and the connection is closed.
/// A first message that is not SOCKS5 is closed at once without an answer (see [`sniff`]).
/// Errors are logged as `debug` or `warn` events (never a password); the caller logs the
/// report.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    options: &ServerOptions,
    stop: CancellationToken,
) -> SessionReport
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_as(Protocol::Socks5, stream, peer, options, stop).await
}

/// [`serve`] or [`serve_socks4`]: one session speaking `protocol`.
pub(crate) async fn serve_as<S>(
    protocol: Protocol,
    stream: S,
    peer: SocketAddr,
    options: &ServerOptions,
    stop: CancellationToken,
) -> SessionReport
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let local = (&stream as &dyn Any)
        .downcast_ref::<TcpStream>()
        .and_then(|tcp| tcp.local_addr().ok());
    let mut session = Session {
        stream,
        local,
        client_ip: peer.ip().to_canonical(),
        options,
        protocol,
        report: SessionReport {
            client: peer,
            protocol,
            user: None,
            command: None,
            destination: None,
            reply: None,
            bytes_up: 0,
            bytes_down: 0,
            connect_time: None,
            via: None,
            datagrams_up: 0,
            datagrams_down: 0,
            duration: Duration::ZERO,
            error: None,
        },
    };
    if let Err(error) = session.run(&stop).await {
        log_failure(&error, &session.report);
        session.report.error = Some(error);
    }
    session.report.duration = started.elapsed();
    session.report
}

/// Describes what a first message that is not SOCKS5 looks like, for the log.
#[must_use]
pub fn sniff(first_bytes: &[u8]) -> &'static str {
    const HTTP_METHODS: [&[u8]; 8] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
    ];
    let word_len = first_bytes
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(first_bytes.len());
    let word = first_bytes.get(..word_len).unwrap_or_default();
    match first_bytes {
        [] => "nothing",
        [0x05, ..] => "SOCKS5",
        [0x04, ..] => "SOCKS4",
        [0x16] | [0x16, 0x03, ..] => "a TLS ClientHello",
        b if b.starts_with(b"CONNECT ") => "an HTTP CONNECT (HTTP proxy) request",
        b if b.starts_with(b"PRI * HTTP/2") => "an HTTP/2 preface",
        b if HTTP_METHODS.iter().any(|m| b.starts_with(m)) => "an HTTP request",
        b if b.starts_with(b"SSH-") => "an SSH banner",
        _ if !word.is_empty() && word.iter().all(u8::is_ascii_uppercase) => "an HTTP request",
        b if b
            .iter()
            .all(|c| c.is_ascii_graphic() || c.is_ascii_whitespace()) =>
        {
            "text"
        }
        _ => "binary data",
    }
}

/// Bytes read during the handshake: every handshake message fits (the largest, a login, is 513
/// bytes), with room for data a client sends right after its request.
const HANDSHAKE_BUFFER_LEN: usize = 1024;
/// How long a refused connection is drained after its FIN, so that closing it does not turn
/// into a reset that could destroy the answer still in flight.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// At most this much is drained from a refused connection.
const CLOSE_DRAIN_LEN: usize = 64 * 1024;

/// One session's state.
pub(crate) struct Session<'a, S> {
    pub(crate) stream: S,
    /// The local address of the client's connection, when it is a TCP socket.
    pub(crate) local: Option<SocketAddr>,
    /// The client's IP, IPv4-mapped addresses as IPv4.
    pub(crate) client_ip: IpAddr,
    pub(crate) options: &'a ServerOptions,
    /// SOCKS5, or SOCKS4 (then replies are SOCKS4's, see [`Session::reply`]).
    pub(crate) protocol: Protocol,
    pub(crate) report: SessionReport,
}

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self, stop: &CancellationToken) -> Result<(), Error> {
        let mut buf = BytesMut::with_capacity(HANDSHAKE_BUFFER_LEN);
        let handshake = async {
            if self.protocol == Protocol::Socks4 {
                self.socks4_handshake(&mut buf).await
            } else {
                self.handshake(&mut buf).await
            }
        };
        let request = match cancellable(stop, "handshake", handshake).await {
            Ok(request) => request,
            Err(error @ Error::Cancelled { .. }) => return Err(error),
            Err(
                error @ (Error::Command(_)
                | Error::AddressType(_)
                | Error::EmptyDomain
                | Error::Socks4(_)
                | Error::Socks4NeedsPassword),
            ) => {
                return Err(self.fail(error).await);
            }
            Err(error) => {
                close_gracefully(&mut self.stream).await;
                return Err(error);
            }
        };
        let Request {
            command,
            destination,
        } = request;
        let destination = destination.without_ip_literal_name();
        self.report.command = Some(command);
        self.report.destination = Some(destination.clone());
        if !self.options.commands.allows(command) {
            return Err(self.fail(Error::CommandDisabled(command)).await);
        }
        let requester = Requester::new(self.client_ip, self.report.user.as_deref());
        if !self.options.rules.admits(requester) {
            // Before anything is opened: a BIND listener or a UDP socket for a client that can
            // reach nothing would only hold a port.
            let client = self.client_ip;
            return Err(self.fail(Error::ClientDenied { client }).await);
        }
        match command {
            Command::Connect => self.connect(&destination, buf, stop).await,
            Command::Bind => self.bind(&destination, buf, stop).await,
            Command::UdpAssociate => {
                drop(buf);
                udp::associate(self, &destination).await
            }
        }
    }

    /// Greeting, method selection, login if chosen, request: all before one deadline.
    async fn handshake(&mut self, buf: &mut BytesMut) -> Result<Request, Error> {
        let deadline = Deadline::after(self.options.handshake_timeout);
        let greeting =
            match read_msg(&mut self.stream, buf, "greeting", deadline, decode_greeting).await {
                Ok(greeting) => greeting,
                Err(Error::Version(_)) => {
                    return Err(Error::NotSocks5 {
                        looks_like: sniff(buf),
                    });
                }
                Err(error) => return Err(error),
            };
        let method = self.options.auth.choose(self.client_ip, &greeting.methods);
        write_msg(&mut self.stream, "method selection", deadline, |out| {
            encode_method_selection(&MethodSelection { method }, out);
            Ok(())
        })
        .await?;
        match method {
            Method::NoAuth => {}
            Method::UsernamePassword => self.login(buf, deadline).await?,
            _ => {
                debug!(offered = ?greeting.methods, "no acceptable method offered");
                return Err(Error::NoAcceptableMethod);
            }
        }
        read_msg(&mut self.stream, buf, "request", deadline, decode_request).await
    }

    /// RFC 1929: read the credentials, answer with the verdict.
    async fn login(&mut self, buf: &mut BytesMut, deadline: Deadline) -> Result<(), Error> {
        let credentials = read_msg(
            &mut self.stream,
            buf,
            "login",
            deadline,
            decode_password_request,
        )
        .await?;
        let checking = self.options.auth.authenticate(
            self.client_ip,
            &credentials.username,
            &credentials.password,
        );
        let verdict = timeout_at(deadline.at, checking)
            .await
            .map_err(|_| Error::Timeout {
                stage: "login",
                limit: deadline.limit,
            })?;
        let user = match &verdict {
            Ok(user) => user.clone(),
            Err(reason) => {
                let user = String::from_utf8_lossy(&credentials.username).into_owned();
                log_login_failure(self.report.client, &user, *reason);
                user
            }
        };
        drop(credentials);
        self.report.user = Some(user);
        let accepted = verdict.is_ok();
        let status = if accepted {
            PasswordStatus::SUCCESS
        } else {
            PasswordStatus::FAILURE
        };
        write_msg(&mut self.stream, "login status", deadline, |out| {
            encode_password_status(&status, out);
            Ok(())
        })
        .await?;
        if accepted {
            Ok(())
        } else {
            Err(Error::AuthFailed)
        }
    }

    /// Sends a reply and records it.
    pub(crate) async fn reply(&mut self, reply: Reply, bound: Address) -> Result<(), Error> {
        let deadline = Deadline::after(self.options.handshake_timeout);
        if self.protocol == Protocol::Socks4 {
            write_msg(&mut self.stream, "reply", deadline, |out| {
                socks4::encode(reply, &bound, out);
                Ok(())
            })
            .await?;
            self.report.reply = Some(reply);
            return Ok(());
        }
        let response = Response { reply, bound };
        write_msg(&mut self.stream, "reply", deadline, |out| {
            encode_response(&response, out)
        })
        .await?;
        self.report.reply = Some(reply);
        Ok(())
    }

    /// Answers `error` with its failure reply, closes, and gives the error back.
    pub(crate) async fn fail(&mut self, error: Error) -> Error {
        if let Err(write_error) = self.reply(error.reply(), Address::UNSPECIFIED).await {
            debug!(error = %write_error, "could not send the failure reply");
        }
        close_gracefully(&mut self.stream).await;
        error
    }
}

/// Runs `work` unless `stop` fires first.
pub(crate) async fn cancellable<T>(
    stop: &CancellationToken,
    stage: &'static str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::select! {
        biased;
        () = stop.cancelled() => Err(Error::Cancelled { stage }),
        result = work => result,
    }
}

/// Sends FIN at once, then reads and drops what the peer still sends for a moment: closing a
/// socket with unread data makes the kernel send a reset, which can destroy the answer we just
/// wrote before the peer reads it.
async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0; 1024];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_LEN {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = timeout(CLOSE_LINGER, drain).await;
}

/// The one warn line of a failed login, in the format the README documents and
/// contrib/fail2ban matches: `authentication failed client=IP:PORT reason="..." user="..."`
/// (JSON: the same fields in the same order). The user name, chosen by the client, comes last
/// and is a string field, which both formats quote and escape, so it cannot forge the fields
/// before it or a line of its own. The client's address is shown canonical (an IPv4-mapped
/// address as IPv4).
fn log_login_failure(client: SocketAddr, user: &str, reason: LoginFailure) {
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    warn!(%client, reason = reason.as_str(), user, "authentication failed");
}

fn log_failure(error: &Error, report: &SessionReport) {
    let client = report.client;
    match error {
        Error::AuthFailed => {} // logged by `log_login_failure` at the verdict
        Error::Timeout {
            stage: "greeting" | "login" | "request",
            ..
        } => {
            warn!(%client, %error, "handshake timed out");
        }
        Error::Socks4NeedsPassword => {} // logged by the SOCKS4 handshake
        Error::Version(_)
        | Error::Socks4(_)
        | Error::AuthVersion(_)
        | Error::Command(_)
        | Error::AddressType(_)
        | Error::EmptyDomain => warn!(%client, %error, "malformed request"),
        Error::NotSocks5 { looks_like } => {
            debug!(%client, looks_like, "closed a connection that does not speak SOCKS5");
        }
        _ => debug!(%client, %error, reply = ?report.reply, "session failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Commands;
    use crate::rules::Rules;

    #[test]
    fn sniffs_what_a_foreign_greeting_looks_like() {
        let table: [(&[u8], &str); 14] = [
            (b"", "nothing"),
            (&[4, 1, 0, 80, 127, 0, 0, 1, 0], "SOCKS4"),
            (b"GET / HTTP/1.1\r\n", "an HTTP request"),
            (b"POST /x HTTP/1.0\r\n", "an HTTP request"),
            (b"GE", "an HTTP request"),
            (b"PROPFIND / HTTP/1.1", "an HTTP request"),
            (
                b"CONNECT example.com:443 HTTP/1.1\r\n",
                "an HTTP CONNECT (HTTP proxy) request",
            ),
            (b"PRI * HTTP/2.0\r\n", "an HTTP/2 preface"),
            (&[0x16, 0x03, 0x01, 0x02, 0x00], "a TLS ClientHello"),
            (&[0x16], "a TLS ClientHello"),
            (b"SSH-2.0-OpenSSH_9.2\r\n", "an SSH banner"),
            (b"hello there\n", "text"),
            (&[0x00, 0xFF, 0x13], "binary data"),
            (&[5, 1, 0], "SOCKS5"),
        ];
        for (bytes, expected) in table {
            assert_eq!(sniff(bytes), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let options = ServerOptions::default();
        assert_eq!(options.handshake_timeout, Duration::from_secs(10));
        assert_eq!(options.connect_timeout, Duration::from_secs(10));
        assert_eq!(options.happy_eyeballs_delay, Duration::from_millis(250));
        assert_eq!(options.idle_timeout, Duration::from_secs(300));
        assert_eq!(options.bind_timeout, Duration::from_secs(120));
        assert_eq!(
            options.commands,
            Commands {
                connect: true,
                bind: true,
                udp_associate: true
            }
        );
        assert_eq!(
            options.auth.choose(
                IpAddr::from([203, 0, 113, 1]),
                &[crate::wire::Method::NoAuth]
            ),
            crate::wire::Method::NoAuth
        );
        assert_eq!(*options.rules, Rules::default());
        assert_eq!((options.udp_advertise, options.outbound_bind), (None, None));
        assert_eq!(options.relay_buffer_len, 65536);
        assert!(options.listen_addresses.is_empty());
    }
}

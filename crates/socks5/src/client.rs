//! A SOCKS5 client: CONNECT, BIND and UDP ASSOCIATE through a proxy, with optional
//! username/password.
//!
//! Every function takes one `timeout` for all it does (connecting to the proxy, negotiating,
//! the reply). Replies are read exactly, byte for byte, so data the target sends right after the
//! reply stays in the returned stream.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout_at;

use crate::Error;
use crate::framing::{Deadline, read_msg_exact, write_msg};
use crate::wire::{
    Address, Command, Decoded, Greeting, Method, PasswordRequest, Reply, Request, UdpHeader,
    decode_method_selection, decode_password_status, decode_response, decode_udp_header,
    encode_greeting, encode_password_request, encode_request, encode_udp_header,
};

/// Username and password for RFC 1929.
pub type Credentials<'a> = Option<(&'a str, &'a str)>;

/// Connects to `target` through the proxy; returns the stream, ready for the target's bytes,
/// and the address the proxy connected from (BND of the reply).
///
/// # Errors
///
/// [`Error::Connect`] if the proxy cannot be reached, [`Error::Timeout`] past `timeout`,
/// [`Error::NoAcceptableMethod`] or [`Error::AuthFailed`] if the proxy refuses us,
/// [`Error::Rejected`] with the reply code if it refuses the request, and the decoding errors
/// of [`crate::wire`] for a malformed answer.
pub async fn connect(
    proxy: SocketAddr,
    target: &Address,
    credentials: Credentials<'_>,
    timeout: Duration,
) -> Result<(TcpStream, Address), Error> {
    let deadline = Deadline::after(timeout);
    let mut stream = open(proxy, credentials, deadline).await?;
    let bound = request(&mut stream, Command::Connect, target, deadline).await?;
    Ok((stream, bound))
}

/// CONNECT over `stream`, an open connection to a SOCKS5 proxy (from a [`crate::Connector`],
/// through TLS, or through another proxy): negotiates (logging in with `credentials` if the
/// proxy asks), asks for `target` and returns BND of the reply. The stream is then ready for
/// the target's bytes: nothing past the reply was read.
///
/// # Errors
///
/// As [`connect`], but for reaching the proxy.
pub async fn connect_over<S>(
    stream: &mut S,
    target: &Address,
    credentials: Credentials<'_>,
    timeout: Duration,
) -> Result<Address, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Deadline::after(timeout);
    negotiate(stream, credentials, deadline).await?;
    request(stream, Command::Connect, target, deadline).await
}

/// Asks the proxy to accept one connection from `expected_peer` (`0.0.0.0:0` for anyone; see
/// RFC 1928 §4) and returns once the proxy listens: tell the peer
/// [`PendingBind::address`], then call [`PendingBind::accept`].
///
/// # Errors
///
/// As [`connect`].
pub async fn bind(
    proxy: SocketAddr,
    expected_peer: &Address,
    credentials: Credentials<'_>,
    timeout: Duration,
) -> Result<PendingBind, Error> {
    let deadline = Deadline::after(timeout);
    let mut stream = open(proxy, credentials, deadline).await?;
    let address = request(&mut stream, Command::Bind, expected_peer, deadline).await?;
    Ok(PendingBind { stream, address })
}

/// A BIND whose first reply arrived: the proxy listens on [`PendingBind::address`].
#[derive(Debug)]
pub struct PendingBind {
    stream: TcpStream,
    address: Address,
}

impl PendingBind {
    /// Where the proxy listens for the peer (BND of the first reply).
    #[must_use]
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits up to `timeout` for the second reply; returns the stream, now relayed to the
    /// peer, and the peer's address.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] past `timeout`, [`Error::Rejected`] if the proxy reports a failure
    /// (such as X'02' for an unexpected peer), [`Error::Closed`] if it closes.
    pub async fn accept(mut self, timeout: Duration) -> Result<(TcpStream, Address), Error> {
        let deadline = Deadline::after(timeout);
        let peer = read_reply(&mut self.stream, "second BIND reply", deadline).await?;
        Ok((self.stream, peer))
    }
}

/// A UDP association (RFC 1928 §7): a local UDP socket whose datagrams go through the proxy's
/// relay, and the TCP connection that keeps the association alive (it ends when this value is
/// dropped).
#[derive(Debug)]
pub struct UdpAssociation {
    /// Held only to keep the association: the proxy ends it when this closes.
    _control: TcpStream,
    socket: UdpSocket,
    relay: SocketAddr,
}

impl UdpAssociation {
    /// Opens an association. The local socket is bound to the IP the control connection uses,
    /// and its exact address is sent as DST, so the proxy accepts datagrams from it only.
    ///
    /// # Errors
    ///
    /// As [`connect`], and I/O errors of binding the local socket.
    pub async fn associate(
        proxy: SocketAddr,
        credentials: Credentials<'_>,
        timeout: Duration,
    ) -> Result<UdpAssociation, Error> {
        let deadline = Deadline::after(timeout);
        let mut control = open(proxy, credentials, deadline).await?;
        let local_ip = control.local_addr()?.ip();
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
        let from = Address::Ip(socket.local_addr()?);
        let relay = match request(&mut control, Command::UdpAssociate, &from, deadline).await? {
            // An unspecified BND.ADDR means "the address you reached me at".
            Address::Ip(relay) if relay.ip().is_unspecified() => {
                SocketAddr::new(proxy.ip(), relay.port())
            }
            Address::Ip(relay) => relay,
            Address::Domain(..) => {
                let source = io::Error::new(io::ErrorKind::InvalidData, "relay given by name");
                return Err(Error::Io(source));
            }
        };
        Ok(UdpAssociation {
            _control: control,
            socket,
            relay,
        })
    }

    /// The proxy's relay address.
    #[must_use]
    pub fn relay_address(&self) -> SocketAddr {
        self.relay
    }

    /// The local socket's address.
    ///
    /// # Errors
    ///
    /// I/O errors of `getsockname`.
    pub fn local_address(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends `payload` to `target` through the relay; returns the payload length.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyDomain`] or [`Error::TooLong`] for a bad name, or the socket's I/O error.
    pub async fn send_to(&self, target: &Address, payload: &[u8]) -> Result<usize, Error> {
        let header = UdpHeader::new(target.clone());
        let mut datagram = Vec::with_capacity(3 + target.encoded_len() + payload.len());
        encode_udp_header(&header, &mut datagram)?;
        datagram.extend_from_slice(payload);
        self.socket.send_to(&datagram, self.relay).await?;
        Ok(payload.len())
    }

    /// Receives the next datagram from the relay into `buf`; returns its source and the
    /// payload length (the payload is at the start of `buf`). Datagrams from other addresses,
    /// fragments and malformed ones are skipped. It waits as long as it takes: wrap it in a
    /// timeout.
    ///
    /// # Errors
    ///
    /// The socket's I/O error.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(Address, usize), Error> {
        loop {
            let (len, from) = self.socket.recv_from(buf).await?;
            if from.ip().to_canonical() != self.relay.ip().to_canonical()
                || from.port() != self.relay.port()
            {
                continue;
            }
            let datagram = buf.get(..len).unwrap_or_default();
            if let Ok(Decoded::Done(header, used)) = decode_udp_header(datagram)
                && header.frag == 0
            {
                buf.copy_within(used..len, 0);
                return Ok((header.address, len - used));
            }
        }
    }
}

/// Connects to the proxy and negotiates a method (and logs in if it picks RFC 1929).
async fn open(
    proxy: SocketAddr,
    credentials: Credentials<'_>,
    deadline: Deadline,
) -> Result<TcpStream, Error> {
    let stream = timeout_at(deadline.at, TcpStream::connect(proxy))
        .await
        .map_err(|_| Error::Timeout {
            stage: "connection to the proxy",
            limit: deadline.limit,
        })?;
    let mut stream = stream.map_err(|error| Error::Connect {
        address: proxy,
        error,
    })?;
    stream.set_nodelay(true)?;
    negotiate(&mut stream, credentials, deadline).await?;
    Ok(stream)
}

/// Offers the methods `credentials` allow, and logs in if the proxy picks RFC 1929.
async fn negotiate<S>(
    stream: &mut S,
    credentials: Credentials<'_>,
    deadline: Deadline,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut methods = vec![Method::NoAuth];
    if credentials.is_some() {
        methods.push(Method::UsernamePassword);
    }
    write_msg(stream, "greeting", deadline, |out| {
        encode_greeting(&Greeting { methods }, out)
    })
    .await?;
    let selection = read_msg_exact(
        stream,
        "method selection",
        deadline,
        decode_method_selection,
    )
    .await?;
    match (selection.method, credentials) {
        (Method::NoAuth, _) => {}
        (Method::UsernamePassword, Some((username, password))) => {
            let login = PasswordRequest {
                username: username.as_bytes().to_vec(),
                password: password.as_bytes().to_vec(),
            };
            write_msg(stream, "login", deadline, |out| {
                encode_password_request(&login, out)
            })
            .await?;
            let status =
                read_msg_exact(stream, "login status", deadline, decode_password_status).await?;
            if !status.is_success() {
                return Err(Error::AuthFailed);
            }
        }
        (Method::NoAcceptable, _) => return Err(Error::NoAcceptableMethod),
        (other, _) => return Err(Error::UnexpectedMethod(other.into())),
    }
    Ok(())
}

/// Sends a request and reads its (first) reply; returns BND.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    command: Command,
    destination: &Address,
    deadline: Deadline,
) -> Result<Address, Error> {
    let request = Request {
        command,
        destination: destination.clone(),
    };
    write_msg(stream, "request", deadline, |out| {
        encode_request(&request, out)
    })
    .await?;
    read_reply(stream, "reply", deadline).await
}

async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    stage: &'static str,
    deadline: Deadline,
) -> Result<Address, Error> {
    let response = read_msg_exact(stream, stage, deadline, decode_response).await?;
    if response.reply != Reply::Succeeded {
        // The server closes after a failure reply; so do we.
        let _ = stream.shutdown().await;
        return Err(Error::Rejected(response.reply));
    }
    Ok(response.bound)
}

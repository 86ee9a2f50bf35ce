//! A minimal blocking SOCKS5 client (RFC 1928, no authentication, CONNECT to
//! an IPv4 address) for the bench's load and the e2e probes. The real client
//! lives in the `socks5` crate; this one stays independent of it on purpose,
//! so the bench measures the server, not our own client library.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, bail};

/// Connects to `proxy` and asks it to CONNECT to `target` (IPv4).
///
/// The stream comes back with `timeout` as its read and write timeout and
/// `TCP_NODELAY` set.
pub(crate) fn connect(
    proxy: SocketAddr,
    target: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&proxy, timeout)
        .with_context(|| format!("cannot connect to the proxy {proxy}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    // Greeting: version 5, one method, "no authentication".
    stream.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    stream
        .read_exact(&mut choice)
        .context("no method selection")?;
    if choice != [5, 0] {
        bail!("the proxy chose method {choice:02x?}, not [05, 00]");
    }
    let SocketAddr::V4(v4) = target else {
        bail!("this client only CONNECTs to IPv4 addresses, not {target}");
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&v4.ip().octets());
    request.extend_from_slice(&v4.port().to_be_bytes());
    stream.write_all(&request)?;
    // Reply: VER REP RSV ATYP, then an address whose length ATYP decides.
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).context("no CONNECT reply")?;
    if head[0] != 5 || head[1] != 0 {
        bail!("CONNECT to {target} refused: reply {head:02x?}");
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        other => bail!("reply with unknown address type {other:#04x}"),
    };
    let mut skip = vec![0u8; rest];
    stream.read_exact(&mut skip)?;
    Ok(stream)
}

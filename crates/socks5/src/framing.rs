//! Reading and writing whole messages on a stream, with deadlines: the thin I/O around the pure
//! decoders of [`crate::wire`].

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::Error;
use crate::wire::Decoded;

/// A point in time by which a stage must be complete, and the limit it came from (for the
/// error message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) limit: Duration,
}

impl Deadline {
    pub(crate) fn after(limit: Duration) -> Self {
        Deadline {
            at: later(Instant::now(), limit),
            limit,
        }
    }
}

/// `from + limit`, or a point decades away when that cannot be represented: an embedder may
/// pass any `Duration`, and a timeout of "practically never" must not panic.
pub(crate) fn later(from: Instant, limit: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    from.checked_add(limit)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// Reads until `parse` decodes a message, greedily: whatever arrives after the message stays in
/// `buf` (after a CONNECT request, it is sent upstream first). `buf` only grows while `parse`
/// asks for more, and every message of this crate is bounded, so `buf` is too.
pub(crate) async fn read_msg<R: AsyncRead + Unpin, T>(
    io: &mut R,
    buf: &mut BytesMut,
    stage: &'static str,
    deadline: Deadline,
    parse: impl Fn(&[u8]) -> Result<Decoded<T>, Error>,
) -> Result<T, Error> {
    let work = async {
        loop {
            match parse(buf)? {
                Decoded::Done(msg, used) => {
                    buf.advance(used);
                    return Ok(msg);
                }
                Decoded::NeedMore(more) => {
                    buf.reserve(more);
                    if io.read_buf(buf).await? == 0 {
                        return Err(Error::Closed { stage });
                    }
                }
            }
        }
    };
    timeout_at(deadline.at, work)
        .await
        .map_err(|_| Error::Timeout {
            stage,
            limit: deadline.limit,
        })?
}

/// Reads exactly one message and not a byte more (the decoders never ask for more than the rest
/// of a valid message), so that data the peer sends right after it stays in the stream. The
/// client uses this: after a reply, the target's first bytes may follow at once.
pub(crate) async fn read_msg_exact<R: AsyncRead + Unpin, T>(
    io: &mut R,
    stage: &'static str,
    deadline: Deadline,
    parse: impl Fn(&[u8]) -> Result<Decoded<T>, Error>,
) -> Result<T, Error> {
    let work = async {
        let mut buf = Vec::new();
        loop {
            match parse(&buf)? {
                Decoded::Done(msg, _) => return Ok(msg),
                Decoded::NeedMore(more) => {
                    let start = buf.len();
                    buf.resize(start + more, 0);
                    let Some(fresh) = buf.get_mut(start..) else {
                        return Err(Error::Closed { stage });
                    };
                    match io.read_exact(fresh).await {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            return Err(Error::Closed { stage });
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    };
    timeout_at(deadline.at, work)
        .await
        .map_err(|_| Error::Timeout {
            stage,
            limit: deadline.limit,
        })?
}

/// Encodes a message with `encode` and writes it whole before the deadline.
pub(crate) async fn write_msg<W: AsyncWrite + Unpin>(
    io: &mut W,
    stage: &'static str,
    deadline: Deadline,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut out = Vec::with_capacity(64);
    encode(&mut out)?;
    timeout_at(deadline.at, io.write_all(&out))
        .await
        .map_err(|_| Error::Timeout {
            stage,
            limit: deadline.limit,
        })?
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_greeting, decode_method_selection};

    #[tokio::test]
    async fn read_msg_keeps_what_follows_the_message() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 1, 0, 5, 1]).await.expect("write");
        let mut buf = BytesMut::new();
        let deadline = Deadline::after(Duration::from_secs(5));
        let greeting = read_msg(&mut server, &mut buf, "greeting", deadline, decode_greeting)
            .await
            .expect("greeting");
        assert_eq!(greeting.methods.len(), 1);
        assert_eq!(&buf[..], &[5, 1]);
    }

    #[tokio::test]
    async fn read_msg_exact_reads_no_further() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[5, 0, b'x']).await.expect("write");
        let deadline = Deadline::after(Duration::from_secs(5));
        read_msg_exact(&mut server, "method", deadline, decode_method_selection)
            .await
            .expect("selection");
        assert_eq!(server.read_u8().await.expect("next byte"), b'x');
    }

    #[tokio::test]
    async fn reports_a_close_and_a_timeout_with_the_stage() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let mut buf = BytesMut::new();
        let deadline = Deadline::after(Duration::from_secs(5));
        let closed = read_msg(&mut server, &mut buf, "greeting", deadline, decode_greeting).await;
        assert!(matches!(closed, Err(Error::Closed { stage: "greeting" })));

        tokio::time::pause();
        let (_client, mut server) = tokio::io::duplex(64);
        let deadline = Deadline::after(Duration::from_secs(5));
        let late = read_msg_exact(&mut server, "reply", deadline, decode_method_selection).await;
        assert!(matches!(late, Err(Error::Timeout { stage: "reply", .. })));
    }

    /// An embedder may pass any `Duration`: a deadline that cannot be represented is decades
    /// away, not a panic (`Instant + Duration::MAX` overflows).
    #[test]
    fn a_deadline_too_far_to_represent_saturates() {
        let now = Instant::now();
        let deadline = Deadline::after(Duration::MAX);
        assert!(deadline.at > now + Duration::from_secs(365 * 24 * 3600));
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}

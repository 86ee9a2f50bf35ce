//! What the listener sends back: acknowledgements read and checked, or
//! bytes nobody asked for, discarded so that they never stall the writer.

use std::{future::Future, io, pin::pin, time::Duration};

use futures_util::StreamExt;
use proto::{AckCodec, AckStatus, CodecError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::FramedRead;

use crate::deadline::within;

/// Why a connection's acks did not all come back ok.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AckFailure {
    /// The listener answered a frame with a status other than ok.
    #[error("frame {seq} was rejected: {status}")]
    Rejected {
        /// The frame's index on the connection.
        seq: u64,
        /// The status the listener sent.
        status: AckStatus,
    },
    /// An ack arrived for another frame than the next one.
    #[error("expected the ack of frame {expected}, got one for frame {got}")]
    OutOfOrder {
        /// The index of the next frame.
        expected: u64,
        /// The index the ack carried.
        got: u64,
    },
    /// The listener closed (or reset) the connection before acking every frame.
    #[error("the server closed the connection after {received} of {expected} acks")]
    Closed {
        /// Acks received.
        received: u64,
        /// Frames sent.
        expected: u64,
    },
    /// No ack came within the deadline.
    #[error("no ack for frame {seq} within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The frame waited for.
        seq: u64,
        /// The deadline.
        timeout: Duration,
    },
    /// The listener sent something that is not an ack, or the socket failed.
    #[error("could not read the ack of frame {seq}")]
    Read {
        /// The frame waited for.
        seq: u64,
        /// What went wrong.
        #[source]
        source: CodecError,
    },
}

/// Reads `expected` acks from `io`, which must carry seq 0, 1, 2… in order
/// and status ok, calling `on_ack(seq)` for each. Waits at most `timeout` for
/// each ack, and returns as soon as the last one arrived (without waiting for
/// the listener to close).
///
/// # Errors
///
/// The first [`AckFailure`].
pub(crate) async fn read_acks<R: AsyncRead + Unpin>(
    io: R,
    expected: u64,
    timeout: Duration,
    mut on_ack: impl FnMut(u64),
) -> Result<(), AckFailure> {
    let mut acks = FramedRead::new(io, AckCodec);
    for seq in 0..expected {
        next_ack(&mut acks, seq, expected, timeout).await?;
        on_ack(seq);
    }
    Ok(())
}

/// Reads the ack of frame `seq` (of `expected` sent so far) and checks it.
async fn next_ack<R: AsyncRead + Unpin>(
    acks: &mut FramedRead<R, AckCodec>,
    seq: u64,
    expected: u64,
    timeout: Duration,
) -> Result<(), AckFailure> {
    let next = within(timeout, async { Ok(acks.next().await) })
        .await
        .map_err(|_| AckFailure::Timeout { seq, timeout })?;
    let closed = AckFailure::Closed {
        received: seq,
        expected,
    };
    let ack = match next {
        None => return Err(closed),
        Some(Err(CodecError::Io(error))) if is_reset(&error) => return Err(closed),
        Some(Err(source)) => return Err(AckFailure::Read { seq, source }),
        Some(Ok(ack)) => ack,
    };
    if ack.seq != seq {
        return Err(AckFailure::OutOfOrder {
            expected: seq,
            got: ack.seq,
        });
    }
    if ack.status != AckStatus::Ok {
        return Err(AckFailure::Rejected {
            seq,
            status: ack.status,
        });
    }
    Ok(())
}

/// How far a streaming writer has got: frames written, and whether it is done.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    /// Frames written so far.
    pub(crate) frames: u64,
    /// Whether the writer has written its last frame.
    pub(crate) done: bool,
}

/// Reads and checks acks for a writer whose frame count is not known in
/// advance: it waits (without a deadline) while every written frame is acked,
/// at most `timeout` for each ack that is due, and returns once the writer is
/// done and every frame it wrote was acked ok. Returns the frames acked.
///
/// # Errors
///
/// The first [`AckFailure`].
pub(crate) async fn read_acks_streaming<R: AsyncRead + Unpin>(
    io: R,
    mut sent: tokio::sync::watch::Receiver<Sent>,
    timeout: Duration,
) -> Result<u64, AckFailure> {
    let mut acks = FramedRead::new(io, AckCodec);
    let mut seq = 0;
    loop {
        let now = *sent.borrow_and_update();
        if seq < now.frames {
            next_ack(&mut acks, seq, now.frames, timeout).await?;
            seq += 1;
        } else if now.done || sent.changed().await.is_err() {
            // Done, or the writer is gone (it failed, and its error will say why).
            return Ok(seq);
        }
    }
}

/// Runs a connection's `writer` and its ack `reader` to completion together.
///
/// When the reader fails first, the writer is dropped: its frames no longer
/// matter. When the writer fails, the reader still runs (under its own
/// deadlines), and its error wins: a write usually fails because the listener
/// rejected a frame and closed, and the ack says why.
///
/// # Errors
///
/// The reader's error, else the writer's.
pub(crate) async fn with_ack_reader<A, B, E>(
    writer: impl Future<Output = anyhow::Result<A>>,
    reader: impl Future<Output = Result<B, E>>,
) -> anyhow::Result<(A, B)>
where
    E: Into<anyhow::Error>,
{
    let (mut writer, mut reader) = (pin!(writer), pin!(reader));
    tokio::select! {
        read = &mut reader => {
            let read = read.map_err(Into::into)?;
            Ok((writer.await?, read))
        }
        written = &mut writer => match written {
            Ok(written) => Ok((written, reader.await.map_err(Into::into)?)),
            Err(write_error) => {
                reader.await.map_err(Into::into)?;
                Err(write_error)
            }
        },
    }
}

/// Runs `writer` while reading and discarding whatever arrives on `io`.
///
/// Without `--wait-ack` the listener may still send acks. Left unread they
/// fill the socket buffers until the listener blocks on writing them, stops
/// reading frames, and the writer stalls too; discarding them avoids that.
/// A read error or EOF only stops the discarding: the writer decides.
pub(crate) async fn discarding_input<R: AsyncRead + Unpin, T>(
    io: &mut R,
    writer: impl Future<Output = T>,
) -> T {
    let mut writer = pin!(writer);
    let mut sink = vec![0u8; DISCARD_LEN];
    let mut open = true;
    loop {
        tokio::select! {
            done = &mut writer => return done,
            read = io.read(&mut sink), if open => open = matches!(read, Ok(n) if n > 0),
        }
    }
}

/// Reads and discards everything until the listener closes, waiting at most
/// `timeout` for each read.
///
/// # Errors
///
/// When a read fails or times out.
pub(crate) async fn drain_to_eof<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> io::Result<()> {
    let mut sink = vec![0u8; DISCARD_LEN];
    while within(timeout, io.read(&mut sink)).await? > 0 {}
    Ok(())
}

/// The buffer of [`discarding_input`] and [`drain_to_eof`].
const DISCARD_LEN: usize = 64 * 1024;

/// Whether `error` means the peer is gone rather than the socket failing.
fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Ack, encode_ack};

    fn acks(list: &[(AckStatus, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(status, seq) in list {
            encode_ack(&Ack { status, seq }, &mut out);
        }
        out
    }

    async fn read(bytes: &[u8], expected: u64) -> (Result<(), AckFailure>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = read_acks(bytes, expected, Duration::from_secs(1), |seq| {
            seen.push(seq)
        })
        .await;
        (result, seen)
    }

    #[tokio::test]
    async fn reads_acks_in_order_and_stops_at_the_last() {
        let bytes = acks(&[(AckStatus::Ok, 0), (AckStatus::Ok, 1), (AckStatus::Ok, 2)]);
        let (result, seen) = read(&bytes, 2).await;
        assert!(result.is_ok());
        assert_eq!(seen, [0, 1]);
    }

    #[tokio::test]
    async fn reports_the_first_rejected_frame() {
        let bytes = acks(&[(AckStatus::Ok, 0), (AckStatus::CrcMismatch, 1)]);
        let (result, seen) = read(&bytes, 3).await;
        assert!(matches!(
            result,
            Err(AckFailure::Rejected {
                seq: 1,
                status: AckStatus::CrcMismatch
            })
        ));
        assert_eq!(seen, [0]);
    }

    #[tokio::test]
    async fn reports_acks_out_of_order_and_an_early_close() {
        let bytes = acks(&[(AckStatus::Ok, 1)]);
        assert!(matches!(
            read(&bytes, 1).await.0,
            Err(AckFailure::OutOfOrder {
                expected: 0,
                got: 1
            })
        ));
        let bytes = acks(&[(AckStatus::Ok, 0)]);
        assert!(matches!(
            read(&bytes, 2).await.0,
            Err(AckFailure::Closed {
                received: 1,
                expected: 2
            })
        ));
    }

    #[tokio::test]
    async fn reports_bytes_that_are_not_an_ack() {
        let mut bytes = acks(&[(AckStatus::Ok, 0)]);
        bytes[24] ^= 1;
        assert!(matches!(
            read(&bytes, 1).await.0,
            Err(AckFailure::Read { seq: 0, .. })
        ));
    }

    #[tokio::test]
    async fn discards_input_until_the_writer_is_done() {
        let (mut peer, mut io) = tokio::io::duplex(64);
        let writer = async {
            // More than the duplex buffer holds: only a reader lets this finish.
            tokio::io::AsyncWriteExt::write_all(&mut peer, &[7; 4096])
                .await
                .unwrap();
            drop(peer);
            42
        };
        assert_eq!(discarding_input(&mut io, writer).await, 42);
        drain_to_eof(&mut io, Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_waiting_for_an_ack() {
        let (_peer, io) = tokio::io::duplex(64);
        let result = read_acks(io, 1, Duration::from_millis(10), |_| {}).await;
        assert!(matches!(result, Err(AckFailure::Timeout { seq: 0, .. })));
    }
}

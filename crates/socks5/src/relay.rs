//! The TCP relay between a client and its target, once CONNECT or BIND succeeded.
//!
//! Each direction waits for its socket to become readable and only then takes a buffer, reads
//! until the socket is drained, writes everything to the other side, and gives the buffer back.
//! An idle tunnel thus holds no buffer at all, only the two sockets and this future. On Linux,
//! a read that fills the whole buffer shows bulk data, and the rest of that burst moves through
//! a pipe with splice(2), which spares the two copies through this process (measured: about a
//! quarter less CPU per GiB); the pipe, like the buffer, lives only for the burst. End of
//! stream in one direction is passed on as a half-close (`shutdown(SHUT_WR)`) while the other
//! direction keeps going; the relay ends when both directions have ended, on an error, or when
//! no byte moved either way for the idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::Error;

/// What [`relay`](crate::core::relay) moved, and how it ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct Relayed {
    /// Bytes from the client to the target (the pending bytes included).
    pub up: u64,
    /// Bytes from the target to the client (the early bytes included).
    pub down: u64,
    /// `Ok` when both directions ended (or a peer reset, an ordinary way to close);
    /// [`Error::Idle`] after `idle_timeout` without traffic.
    pub result: Result<(), Error>,
}

/// Writes what came before the relay: `pending` (bytes the client sent after its request) to
/// the target, `early` (bytes the target sent with an upstream's answer) to the client. `Err`
/// ends the relay with what it says.
async fn write_first<C, T>(
    client: &mut C,
    target: &mut T,
    pending: BytesMut,
    early: Bytes,
    idle_timeout: Duration,
    up: &mut u64,
    down: &mut u64,
) -> Result<(), Result<(), Error>>
where
    C: AsyncWrite + Unpin + Send,
    T: AsyncWrite + Unpin + Send,
{
    for (to, bytes, count) in [
        (
            &mut *target as &mut (dyn AsyncWrite + Unpin + Send),
            &pending[..],
            up,
        ),
        (
            &mut *client as &mut (dyn AsyncWrite + Unpin + Send),
            &early[..],
            down,
        ),
    ] {
        if bytes.is_empty() {
            continue;
        }
        match timeout(idle_timeout, to.write_all(bytes)).await {
            Ok(Ok(())) => *count += bytes.len() as u64,
            Ok(Err(error)) => return Err(ended(error)),
            Err(_) => {
                return Err(Err(Error::Idle {
                    limit: idle_timeout,
                }));
            }
        }
    }
    Ok(())
}

/// Relays between `client` and `target` until both directions end, an error, or
/// `idle_timeout` without traffic. `pending` (bytes the client sent after its request) goes to
/// the target first, `early` (bytes the target sent before the relay) to the client.
pub(crate) async fn relay(
    client: &mut TcpStream,
    target: &mut TcpStream,
    pending: BytesMut,
    early: Bytes,
    buffer_len: usize,
    idle_timeout: Duration,
) -> Relayed {
    let buffer_len = buffer_len.max(1);
    let (mut up, mut down) = (0, 0);
    let first = write_first(
        client,
        target,
        pending,
        early,
        idle_timeout,
        &mut up,
        &mut down,
    );
    if let Err(result) = first.await {
        return Relayed { up, down, result };
    }

    let clock = Clock::new();
    let (client_read, mut client_write) = client.split();
    let (target_read, mut target_write) = target.split();
    let both = async {
        tokio::try_join!(
            pump(&client_read, &mut target_write, buffer_len, &mut up, &clock),
            pump(
                &target_read,
                &mut client_write,
                buffer_len,
                &mut down,
                &clock
            ),
        )
    };
    let result = tokio::select! {
        done = both => done.map(drop).or_else(ended),
        () = clock.idle(idle_timeout) => Err(Error::Idle { limit: idle_timeout }),
    };
    Relayed { up, down, result }
}

/// As [`relay`], for streams that are not both TCP sockets: each direction copies through a
/// buffer of `buffer_len` bytes, taken for the life of the relay (the readiness trick of the
/// TCP relay needs sockets).
pub(crate) async fn relay_streams<C, T>(
    client: &mut C,
    target: &mut T,
    pending: BytesMut,
    early: Bytes,
    buffer_len: usize,
    idle_timeout: Duration,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let buffer_len = buffer_len.max(1);
    let (mut up, mut down) = (0, 0);
    let first = write_first(
        client,
        target,
        pending,
        early,
        idle_timeout,
        &mut up,
        &mut down,
    );
    if let Err(result) = first.await {
        return Relayed { up, down, result };
    }
    let clock = Clock::new();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut target_read, mut target_write) = tokio::io::split(target);
    let both = async {
        tokio::try_join!(
            copy(
                &mut client_read,
                &mut target_write,
                buffer_len,
                &mut up,
                &clock
            ),
            copy(
                &mut target_read,
                &mut client_write,
                buffer_len,
                &mut down,
                &clock
            ),
        )
    };
    let result = tokio::select! {
        done = both => done.map(drop).or_else(ended),
        () = clock.idle(idle_timeout) => Err(Error::Idle { limit: idle_timeout }),
    };
    Relayed { up, down, result }
}

/// One direction of [`relay_streams`]: copies until end of stream, then half-closes `to`.
async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    buffer_len: usize,
    count: &mut u64,
    clock: &Clock,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; buffer_len];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(buf.get(..n).unwrap_or_default()).await?;
        to.flush().await?;
        *count += n as u64;
        clock.touch();
    }
}

/// A reset or a broken pipe is how many peers close; it ends the relay without an error.
fn ended(error: io::Error) -> Result<(), Error> {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => {
            debug!(%error, "relay ended by a reset");
            Ok(())
        }
        _ => Err(error.into()),
    }
}

/// One direction: readable → take a buffer → drain `from` into `to` → give the buffer back.
///
/// Only a read that says `WouldBlock` ends a burst, and it clears the read readiness with the
/// event taken *before* that read (tokio's `try_read`), so an edge that arrives while a piece
/// is being written is never thrown away. A short read proves nothing: Linux's `recv` stops at
/// a TCP urgent mark with more bytes queued behind it, and so the one extra read per burst is
/// the price of never stalling. (An earlier version cleared the readiness observed *after* the
/// write and lost such edges; uploads hung until the idle timeout.)
async fn pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    buffer_len: usize,
    count: &mut u64,
    clock: &Clock,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(buffer_len);
        loop {
            buf.clear();
            let n = match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    to.shutdown().await?;
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            write_all(to, buf.get(..n).unwrap_or_default()).await?;
            *count += n as u64;
            clock.touch();
            // try_read, try_write and splice spend none of tokio's cooperative budget, so a
            // tunnel that always has data would never give its worker back to handshakes, acks
            // and timers. Spend one unit per chunk; when the budget is gone, this yields.
            tokio::task::consume_budget().await;
            if n < buf.capacity() {
                continue;
            }
            #[cfg(target_os = "linux")]
            {
                // A full buffer means bulk data: move the rest of the burst through a
                // pipe with splice(2), without copying it through this process.
                match splice::burst(from, to, count, clock).await? {
                    // An ordinary read follows: it finds the socket empty (and clears its
                    // readiness), or reads past an urgent mark that stopped splice.
                    splice::Ended::Drained => {}
                    splice::Ended::Eof => {
                        to.shutdown().await?;
                        return Ok(());
                    }
                    // No pipe to be had (file limit): keep copying.
                    splice::Ended::NoPipe => {}
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! Zero-copy bulk transfer: socket → pipe → socket.
    use std::io;

    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;
    use tokio::net::tcp::{ReadHalf, WriteHalf};

    use super::Clock;

    /// The pipe size asked for: 4 times the default 64 KiB halves the CPU time per GiB of the
    /// default pipe again (measured 0.16–0.18 against 0.19–0.22 s/GiB). Pages are taken only
    /// while data sits in the pipe.
    const PIPE_LEN: usize = 256 * 1024;
    /// What a pipe holds when it cannot be resized.
    const DEFAULT_PIPE_LEN: usize = 64 * 1024;

    pub(super) enum Ended {
        /// splice can take nothing more from `from` for now (an ordinary read decides whether
        /// it is empty).
        Drained,
        /// `from` reached end of stream (everything before it was written).
        Eof,
        /// No pipe could be created; nothing was moved.
        NoPipe,
    }

    /// Moves what `from` has into `to` until `from` runs dry or ends. The pipe lives only for
    /// this burst, so an idle tunnel holds no pipe.
    pub(super) async fn burst(
        from: &ReadHalf<'_>,
        to: &WriteHalf<'_>,
        count: &mut u64,
        clock: &Clock,
    ) -> io::Result<Ended> {
        let Ok((pipe_out, pipe_in)) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC) else {
            return Ok(Ended::NoPipe);
        };
        let pipe_len = fcntl_setpipe_size(&pipe_in, PIPE_LEN).unwrap_or(DEFAULT_PIPE_LEN);
        let source: &TcpStream = from.as_ref();
        let sink: &TcpStream = to.as_ref();
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        loop {
            // The pipe is empty here, so EAGAIN means the socket has nothing splice can take:
            // it is empty, or it sits at a TCP urgent mark with bytes queued behind it. So the
            // readiness is left as it is (try_io clears only on WouldBlock) and the caller's
            // ordinary read decides. A short splice proves nothing either: the pipe may have
            // run out of slots.
            let filled = source.try_io(Interest::READABLE, || {
                match splice(source, None, &pipe_in, None, pipe_len, flags) {
                    Ok(n) => Ok(Some(n)),
                    Err(rustix::io::Errno::AGAIN) => Ok(None),
                    Err(e) => Err(io::Error::from(e)),
                }
            });
            let mut in_pipe = match filled {
                Ok(None) => return Ok(Ended::Drained),
                Ok(Some(0)) => return Ok(Ended::Eof),
                Ok(Some(n)) => n,
                // try_io found no readiness at all.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Ended::Drained),
                Err(e) => return Err(e),
            };
            *count += in_pipe as u64;
            while in_pipe > 0 {
                let drained = sink.try_io(Interest::WRITABLE, || {
                    splice(&pipe_out, None, sink, None, in_pipe, flags).map_err(io::Error::from)
                });
                match drained {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => in_pipe -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            clock.touch();
            // As in `pump`: a burst that never runs dry must still let the worker go.
            tokio::task::consume_budget().await;
        }
    }
}

async fn write_all(to: &WriteHalf<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// When the last byte moved, shared by both directions of one relay (they run in the same task;
/// the atomic only makes the future `Send`).
struct Clock {
    start: Instant,
    last_nanos: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Completes once `limit` passed since the last byte moved.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed));
            let deadline = crate::framing::later(last, limit);
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (connected, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (connected.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_pending_bytes() {
        let (mut client, mut client_side) = pair().await;
        let (mut target_side, mut target) = pair().await;
        let pending = BytesMut::from(&b"early "[..]);
        let relay = tokio::spawn(async move {
            relay(
                &mut client_side,
                &mut target_side,
                pending,
                Bytes::new(),
                16,
                Duration::from_secs(10),
            )
            .await
        });
        let work = async {
            client.write_all(b"hello").await?;
            client.shutdown().await?;
            let mut got = Vec::new();
            target.read_to_end(&mut got).await?;
            assert_eq!(got, b"early hello");
            target.write_all(&[7; 100]).await?;
            target.shutdown().await?;
            let mut back = Vec::new();
            client.read_to_end(&mut back).await?;
            assert_eq!(back, vec![7; 100]);
            io::Result::Ok(())
        };
        timeout(Duration::from_secs(10), work)
            .await
            .expect("in time")
            .expect("io");
        let relayed = timeout(Duration::from_secs(10), relay)
            .await
            .expect("in time")
            .expect("join");
        assert!(relayed.result.is_ok(), "{:?}", relayed.result);
        assert_eq!((relayed.up, relayed.down), (11, 100));
    }

    /// A small buffer fills at once, so on Linux this goes through splice, and the end of
    /// stream arrives in the middle of a burst.
    #[tokio::test]
    async fn relays_bulk_data_intact_and_passes_the_end_on() {
        const LEN: usize = 4 << 20;
        let (mut client, mut client_side) = pair().await;
        let (mut target_side, mut target) = pair().await;
        let relay = tokio::spawn(async move {
            relay(
                &mut client_side,
                &mut target_side,
                BytesMut::new(),
                Bytes::new(),
                4096,
                Duration::from_secs(10),
            )
            .await
        });
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            target.write_all(&data).await?;
            target.shutdown().await?;
            io::Result::Ok(target)
        });
        let mut got = Vec::new();
        timeout(Duration::from_secs(20), client.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            got == expected,
            "{} bytes arrived, content equal: {}",
            got.len(),
            got == expected
        );
        drop(client);
        let _target = writer.await.expect("join").expect("write");
        let relayed = timeout(Duration::from_secs(10), relay)
            .await
            .expect("in time")
            .expect("join");
        assert_eq!(relayed.down, LEN as u64);
    }

    /// Waits, yielding, until `condition` holds (bounded by `within`).
    #[cfg(target_os = "linux")]
    async fn until(mut condition: impl FnMut() -> bool) {
        let wait = async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(10), wait)
            .await
            .expect("condition within 10 s");
    }

    /// Bytes queued in a socket's receive buffer.
    #[cfg(target_os = "linux")]
    fn queued(stream: impl std::os::fd::AsFd) -> u64 {
        rustix::io::ioctl_fionread(stream).expect("FIONREAD")
    }

    /// The lost wake-up: a short read, then a write to the target that has to wait, and the
    /// client's last piece arrives during that wait. The readiness it raised must survive, or the
    /// piece sits in the socket until the idle timeout.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_arriving_while_a_short_read_is_written_is_not_forgotten() {
        const FIRST: usize = 60 * 1024;
        let (mut client, client_side) = pair().await;
        // Small buffers toward the target, set before connecting (a window once advertised
        // stays), so writing FIRST to the target must wait until the target reads.
        let listening = tokio::net::TcpSocket::new_v4().expect("socket");
        listening.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        listening
            .bind("127.0.0.1:0".parse().expect("valid"))
            .expect("bind");
        let listener = listening.listen(1).expect("listen");
        let connecting = tokio::net::TcpSocket::new_v4().expect("socket");
        connecting.set_send_buffer_size(4096).expect("SO_SNDBUF");
        let address = listener.local_addr().expect("address");
        let (connected, accepted) = tokio::join!(connecting.connect(address), listener.accept());
        let (mut target_side, mut target) =
            (connected.expect("connect"), accepted.expect("accept").0);
        let watched = client_side.into_std().expect("std");
        let watcher = watched.try_clone().expect("clone");
        let client_side = TcpStream::from_std(watched).expect("tokio");
        let relay = tokio::spawn(async move {
            let mut client_side = client_side;
            relay(
                &mut client_side,
                &mut target_side,
                BytesMut::new(),
                Bytes::new(),
                64 * 1024,
                Duration::from_secs(30),
            )
            .await
        });
        client.write_all(&[1; FIRST]).await.expect("first piece");
        // The relay has taken the first piece (a short read: less than its 64 KiB buffer) and
        // cannot have written it all, since the target reads nothing yet.
        until(|| queued(&watcher) == 0).await;
        client.write_all(b"last").await.expect("last piece");
        let mut got = vec![0; FIRST + 4];
        timeout(Duration::from_secs(5), target.read_exact(&mut got))
            .await
            .expect("the last piece arrives (a lost wake-up leaves it in the relay's socket)")
            .expect("read");
        assert_eq!(got.get(FIRST..), Some(&b"last"[..]));
        drop((client, target));
        let _ = timeout(Duration::from_secs(10), relay).await;
    }

    /// Bytes, an urgent (MSG_OOB) byte and more bytes, all queued at the relay's socket before
    /// the relay starts: a read stops at the urgent mark (and splice fails there with EAGAIN)
    /// although the bytes behind it are already queued. They must still reach the target.
    #[cfg(target_os = "linux")]
    async fn relays_past_an_urgent_mark(before: usize, buffer_len: usize) {
        let (client, client_side) = pair().await;
        let (mut target_side, mut target) = pair().await;
        let client = socket2::Socket::from(client.into_std().expect("std"));
        client.set_nonblocking(false).expect("blocking");
        std::io::Write::write_all(&mut &client, &vec![b'a'; before]).expect("before");
        client.send_out_of_band(b"!").expect("urgent byte");
        std::io::Write::write_all(&mut &client, &[b'b'; 100]).expect("after");
        // FIONREAD counts up to the urgent mark; loopback delivers a blocking write before it
        // returns, so the bytes behind the mark are queued too.
        until(|| queued(&client_side) >= before as u64).await;
        let relay = tokio::spawn(async move {
            let mut client_side = client_side;
            relay(
                &mut client_side,
                &mut target_side,
                BytesMut::new(),
                Bytes::new(),
                buffer_len,
                Duration::from_secs(30),
            )
            .await
        });
        let mut got = vec![0; before + 100];
        timeout(Duration::from_secs(5), target.read_exact(&mut got))
            .await
            .expect("the bytes after the urgent byte reach the target")
            .expect("read");
        assert_eq!(got.get(before..), Some(&[b'b'; 100][..]));
        drop((client, target));
        let _ = timeout(Duration::from_secs(10), relay).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_past_an_urgent_mark_on_the_copy_path() {
        relays_past_an_urgent_mark(100, 64 * 1024).await;
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_past_an_urgent_mark_on_the_splice_path() {
        relays_past_an_urgent_mark(20_000, 4096).await;
    }

    #[tokio::test]
    async fn ends_after_the_idle_timeout() {
        let (_client, mut client_side) = pair().await;
        let (mut target_side, _target) = pair().await;
        let limit = Duration::from_millis(200);
        let relayed = timeout(
            Duration::from_secs(10),
            relay(
                &mut client_side,
                &mut target_side,
                BytesMut::new(),
                Bytes::new(),
                1024,
                limit,
            ),
        )
        .await
        .expect("in time");
        assert!(matches!(relayed.result, Err(Error::Idle { .. })));
    }
}

//! A stream wrapper that counts the bytes read from and written to the client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes from (`read`) and to (`written`) the client, shared with the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read: AtomicU64,
    pub(crate) written: AtomicU64,
}

/// `inner`, counting every byte through it: request heads and bodies, responses, and the
/// tunnel after a CONNECT (which runs over the same stream once hyper hands it back).
pub(crate) struct Counted<IO> {
    inner: IO,
    counters: Arc<Counters>,
}

impl<IO> Counted<IO> {
    pub(crate) fn new(inner: IO, counters: Arc<Counters>) -> Self {
        Counted { inner, counters }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            add(
                &self.counters.read,
                buf.filled().len().saturating_sub(before),
            );
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            add(&self.counters.written, n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            add(&self.counters.written, n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (near, mut far) = tokio::io::duplex(64);
        let counters = Arc::new(Counters::default());
        let mut counted = Counted::new(near, Arc::clone(&counters));
        counted.write_all(b"hello").await.expect("write");
        far.write_all(b"abc").await.expect("write");
        let mut buf = [0; 3];
        counted.read_exact(&mut buf).await.expect("read");
        assert_eq!(counters.written.load(Ordering::Relaxed), 5);
        assert_eq!(counters.read.load(Ordering::Relaxed), 3);
    }
}

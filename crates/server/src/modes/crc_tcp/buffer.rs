//! The read buffer of a `crc-tcp` connection and the listener-wide budget
//! that bounds what all of them hold beyond their base size.
//!
//! Every connection starts with [`BASE_LEN`] bytes, which hold any number of
//! small frames. A frame larger than that needs a larger buffer: the
//! connection first reserves, from the listener's [`Budget`], the room the
//! whole frame needs beyond the base (all at once, so two connections can
//! never each hold half of what the other waits for), then grows the
//! allocation in doubling steps as the bytes arrive, never past the frame's
//! end. While the budget cannot grant the reservation the connection does
//! not read: the peer's bytes wait in the kernel. Once the large frame has
//! been taken, the buffer goes back to [`BASE_LEN`] and the reservation
//! returns to the budget.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use bytes::BytesMut;
use proto::{Decoded, Limits, decode_header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// The buffer every connection starts with; it is not charged to the budget.
pub(crate) const BASE_LEN: usize = 64 * 1024;

/// A read is given at least this much room (or what the frame still needs).
const MIN_READ_LEN: usize = BASE_LEN / 4;

/// The largest budget accepted: far more than any machine has, and within
/// what a semaphore can count.
pub(crate) const MAX_BUDGET: usize = 1 << 40;

/// Bytes the connections of one listener may hold beyond their base buffers.
#[derive(Debug)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    total: usize,
    /// Bytes allocated beyond the base buffers, now.
    allocated: AtomicUsize,
    /// The most `allocated` has ever been.
    peak: AtomicUsize,
}

/// The budget cannot hold a frame this large.
#[derive(Debug, thiserror::Error)]
#[error(
    "a frame needs {needed} buffer bytes beyond the base, more than max_buffered_bytes ({total})"
)]
pub(crate) struct OverBudget {
    needed: usize,
    total: usize,
}

impl Budget {
    /// A budget of `total` bytes (at most [`MAX_BUDGET`]).
    pub(crate) fn new(total: usize) -> Self {
        let total = total.min(MAX_BUDGET);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            allocated: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated beyond the base buffers, now.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.allocated.load(Relaxed)
    }

    /// The most bytes ever allocated beyond the base buffers at once.
    #[cfg(test)]
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    fn add(&self, bytes: usize) {
        let now = self.allocated.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.allocated.fetch_sub(bytes, Relaxed);
    }
}

/// A connection's read buffer, its allocation and its share of the budget.
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    /// The bytes read and not yet taken; reads append here.
    pub(crate) bytes: BytesMut,
    /// The size of the allocation `bytes` lives in.
    allocation: usize,
    /// What this connection holds of the budget.
    reserved: Option<OwnedSemaphorePermit>,
    budget: Arc<Budget>,
}

impl ReadBuffer {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Self {
            bytes: BytesMut::with_capacity(BASE_LEN),
            allocation: BASE_LEN,
            reserved: None,
            budget,
        }
    }

    /// The size of the current allocation.
    #[cfg(test)]
    pub(crate) fn allocation(&self) -> usize {
        self.allocation
    }

    /// Makes room for the next read: at least one byte, at most to the end
    /// of the frame at the front. Waits for the budget when the frame needs
    /// more than the base buffer; the caller bounds the wait.
    ///
    /// # Errors
    ///
    /// When the frame needs more than the whole budget (a config that
    /// validation accepted cannot get there).
    pub(crate) async fn make_room(&mut self, limits: &Limits) -> Result<(), OverBudget> {
        let Some((target, frame_room)) = plan(&self.bytes, limits) else {
            return Ok(());
        };
        let needed = frame_room.saturating_sub(BASE_LEN);
        let held = self
            .reserved
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if needed > held {
            let more = needed - held;
            let over = || OverBudget {
                needed,
                total: self.budget.total,
            };
            let count = u32::try_from(more).map_err(|_| over())?;
            if needed > self.budget.total {
                return Err(over());
            }
            let permits = Arc::clone(&self.budget.permits);
            let permit = match Arc::clone(&permits).try_acquire_many_owned(count) {
                Ok(permit) => permit,
                Err(_) => {
                    debug!(
                        needed,
                        budget = self.budget.total,
                        "waiting for the listener's buffer budget; not reading meanwhile"
                    );
                    // The semaphore is never closed.
                    permits
                        .acquire_many_owned(count)
                        .await
                        .map_err(|_| over())?
                }
            };
            match &mut self.reserved {
                Some(reserved) => reserved.merge(permit),
                None => self.reserved = Some(permit),
            }
        }
        self.reallocate(target);
        Ok(())
    }

    /// Called after frames were taken from the front: a buffer that grew for
    /// a large frame goes back to the base size and returns its reservation,
    /// unless what is left still needs the room.
    pub(crate) fn shrink(&mut self) {
        if self.allocation <= BASE_LEN || self.bytes.len() > BASE_LEN {
            return;
        }
        self.reallocate(BASE_LEN);
        self.reserved = None;
    }

    /// Moves the bytes to a new allocation of exactly `len` bytes, so that
    /// what is allocated is what the budget counts. (During the copy both
    /// allocations exist; the old one is at most half of the new.)
    fn reallocate(&mut self, len: usize) {
        let mut fresh = BytesMut::with_capacity(len);
        fresh.extend_from_slice(&self.bytes);
        self.bytes = fresh;
        self.budget.sub(self.allocation.saturating_sub(BASE_LEN));
        self.budget.add(len.saturating_sub(BASE_LEN));
        self.allocation = len;
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.budget.sub(self.allocation.saturating_sub(BASE_LEN));
    }
}

/// Whether `bytes` needs a new allocation before the next read: `None`
/// when it has room, else the new allocation's size and the room the frame
/// at the front needs in all (at least [`BASE_LEN`]).
///
/// The front of the buffer is always the start of an incomplete frame (the
/// complete ones were taken), so its header, once there, says how far the
/// buffer may usefully grow. The buffer never grows before the bytes come:
/// each step at most doubles it.
fn plan(bytes: &BytesMut, limits: &Limits) -> Option<(usize, usize)> {
    let len = bytes.len();
    let room = bytes.capacity();
    let frame_len = match decode_header(bytes, limits) {
        Ok(Decoded::Done(header, _)) => header.frame_len(),
        // No header yet (or a bad one, which ends the connection before
        // another read): the base buffer holds it.
        Ok(Decoded::NeedMore(_)) | Err(_) => 0,
    };
    // (`len + 1` only matters for a complete frame, which is taken before a read.)
    let frame_room = frame_len.max(BASE_LEN).max(len + 1);
    let spare = room - len;
    if spare >= MIN_READ_LEN || (spare > 0 && room >= frame_room) {
        return None;
    }
    let target = if frame_room <= BASE_LEN {
        BASE_LEN
    } else {
        frame_room.min(room.saturating_mul(2).max(len + MIN_READ_LEN))
    };
    Some((target.max(len + 1), frame_room))
}

#[cfg(test)]
mod tests {
    use bytes::Buf;
    use proto::{CrcSize, Version, encode_frame};

    use super::*;

    fn frame(payload_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(Version::V2, CrcSize::Crc32, &vec![7; payload_len], &mut out).unwrap();
        out
    }

    /// Feeds `bytes` the way reads would: room first, then as much as fits.
    async fn feed(buffer: &mut ReadBuffer, mut bytes: &[u8], limits: &Limits) {
        while !bytes.is_empty() {
            buffer.make_room(limits).await.unwrap();
            let spare = buffer.bytes.capacity() - buffer.bytes.len();
            assert!(spare > 0, "make_room left no room");
            let n = spare.min(bytes.len());
            buffer.bytes.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    #[tokio::test]
    async fn grows_to_a_large_frame_exactly_and_shrinks_back_after_it() {
        let budget = Arc::new(Budget::new(64 << 20));
        let limits = Limits::default();
        let mut buffer = ReadBuffer::new(Arc::clone(&budget));
        // The largest frame the default limit admits: 16 MiB of body.
        let large = frame((16 << 20) - 4);
        feed(&mut buffer, &large, &limits).await;
        // Grown as the bytes came, never past the frame (no doubling to 32 MiB).
        assert_eq!(buffer.bytes.len(), large.len());
        assert_eq!(buffer.allocation(), large.len());
        assert_eq!(budget.allocated(), large.len() - BASE_LEN);
        assert!(budget.peak() <= large.len() - BASE_LEN);
        // The frame is taken; the buffer goes back to its base size.
        buffer.bytes.advance(large.len());
        buffer.shrink();
        assert_eq!(buffer.allocation(), BASE_LEN);
        assert!(buffer.bytes.capacity() <= BASE_LEN);
        assert_eq!(budget.allocated(), 0);
        assert_eq!(budget.permits.available_permits(), budget.total);
        // Small frames afterwards stay in the base buffer.
        feed(&mut buffer, &frame(100), &limits).await;
        assert_eq!(buffer.allocation(), BASE_LEN);
        drop(buffer);
        assert_eq!(budget.allocated(), 0);
    }

    #[tokio::test]
    async fn keeps_the_room_while_the_large_frame_is_incomplete() {
        let budget = Arc::new(Budget::new(8 << 20));
        let limits = Limits::default();
        let mut buffer = ReadBuffer::new(Arc::clone(&budget));
        let large = frame(1 << 20);
        feed(&mut buffer, &large[..BASE_LEN + 1000], &limits).await;
        let grown = buffer.allocation();
        assert!(grown > BASE_LEN);
        buffer.shrink();
        assert_eq!(buffer.allocation(), grown);
        assert_eq!(
            budget.permits.available_permits(),
            budget.total - (large.len() - BASE_LEN),
            "the whole frame's room is reserved at once"
        );
    }

    #[tokio::test]
    async fn small_frames_compact_within_the_base_buffer() {
        let budget = Arc::new(Budget::new(1 << 20));
        let limits = Limits::default();
        let mut buffer = ReadBuffer::new(Arc::clone(&budget));
        let small = frame(1000);
        for _ in 0..1000 {
            feed(&mut buffer, &small, &limits).await;
            buffer.bytes.advance(small.len());
            buffer.shrink();
        }
        assert_eq!(buffer.allocation(), BASE_LEN);
        assert_eq!(budget.peak(), 0, "small frames never touch the budget");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_is_an_error_not_a_wait() {
        let budget = Arc::new(Budget::new(BASE_LEN));
        let limits = Limits::default();
        let mut buffer = ReadBuffer::new(Arc::clone(&budget));
        let large = frame(4 * BASE_LEN);
        buffer.bytes.extend_from_slice(&large[..BASE_LEN - 10]);
        assert!(buffer.make_room(&limits).await.is_err());
    }
}

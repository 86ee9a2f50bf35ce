//! The checksums of docs/PROTOCOL.md, "Checksums".
//!
//! | crc_size | version 1 (over the hex text) | version 2 (over the raw payload) |
//! |----------|-------------------------------|----------------------------------|
//! | 1        | CRC-8/SMBUS                   | CRC-8/SMBUS                      |
//! | 2        | CRC-16/ARC                    | CRC-16/ARC                       |
//! | 4        | CRC-32/ISO-HDLC               | CRC-32C                          |
//!
//! Version 2's 8- and 16-bit CRCs use the `crc` crate's slice-by-16 tables;
//! its CRC-32C uses `crc-fast`, whose SIMD (carry-less multiply) kernels are
//! an order of magnitude faster on this hardware.
//!
//! Version 1 checksums the lowercase hex text of the payload, and never
//! allocates that text:
//! - CRC-8 and CRC-16, and CRC-32 of payloads under 1 KiB: tables (`HexTables`),
//!   which take 16 payload bytes per step straight to the register their 32
//!   hex digits would give (CRCs are linear, so each byte's two digits are
//!   one table lookup at its position in the block);
//! - CRC-32 of longer payloads: `const-hex` (SIMD hexlify, AVX2 or SSSE3
//!   chosen at run time) into 8 KiB chunks (a buffer per thread) that
//!   `crc-fast` checksums while they are in L1.
//!
//! Every path is checked against the reference (hexlify into a string, then
//! the `crc` crate's catalogue CRC) by the tests below, for every payload
//! length up to 5000 bytes.

use std::cell::RefCell;

use crc::{CRC_8_SMBUS, CRC_16_ARC, Crc, Table};
use crc_fast::{CrcAlgorithm, Digest};

use crate::{HeaderError, Version};

/// The size of a frame's CRC trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrcSize {
    /// No checksum (only where the receiver allows it).
    None,
    /// One byte: CRC-8/SMBUS.
    Crc8,
    /// Two bytes: CRC-16/ARC.
    Crc16,
    /// Four bytes: CRC-32/ISO-HDLC (version 1) or CRC-32C (version 2).
    Crc32,
}

impl CrcSize {
    /// The trailer's length in bytes.
    #[must_use]
    pub const fn len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Crc8 => 1,
            Self::Crc16 => 2,
            Self::Crc32 => 4,
        }
    }

    /// Whether there is no trailer.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        matches!(self, Self::None)
    }
}

impl TryFrom<u32> for CrcSize {
    type Error = HeaderError;

    fn try_from(raw: u32) -> Result<Self, Self::Error> {
        match raw {
            0 => Ok(Self::None),
            1 => Ok(Self::Crc8),
            2 => Ok(Self::Crc16),
            4 => Ok(Self::Crc32),
            other => Err(HeaderError::CrcSize {
                crc_size: other,
                expected: "0, 1, 2 or 4",
            }),
        }
    }
}

static CRC8: Crc<u8, Table<16>> = Crc::<u8, Table<16>>::new(&CRC_8_SMBUS);
static CRC16: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_ARC);

/// Payload bytes hexlified per chunk for the version 1 CRC-32 (the text
/// is twice as long, and stays in L1 between `const_hex` and `crc_fast`).
/// Measured (hex CRC-32 of a 64 KiB payload, GB/s of payload per CPU second
/// on a busy host): 1 KiB 6.7, 2 KiB 9.0, 4 KiB 11.2, 8 KiB 11.9; a 4 KiB
/// frame goes to `crc_fast` in one call, whose set-up and final reduction
/// cost the same for any length.
const HEX_CHUNK: usize = 4096;

/// The shortest payload whose version 1 CRC-32 goes through `const_hex` and
/// `crc_fast` rather than [`HexTables`]. Measured (GB/s of payload per CPU
/// second, tables / SIMD): 64 B 3.4 / 0.9, 256 B 3.5 / 2.1, 512 B 3.4 / 2.7,
/// 1 KiB 3.5 / 5.1, 4 KiB 3.6 / 9.7.
const SIMD_MIN: usize = 1024;

/// The checksum of `payload` for a frame of `version` with a `size` trailer,
/// as an unsigned integer (0 for [`CrcSize::None`]).
#[must_use]
pub fn checksum(version: Version, size: CrcSize, payload: &[u8]) -> u32 {
    match (version, size) {
        (_, CrcSize::None) => 0,
        (Version::V2, CrcSize::Crc8) => u32::from(CRC8.checksum(payload)),
        (Version::V2, CrcSize::Crc16) => u32::from(CRC16.checksum(payload)),
        (Version::V2, CrcSize::Crc32) => crc_fast::crc32_iscsi(payload),
        (Version::V1, CrcSize::Crc8) => u32::from(hex_crc8(payload)),
        (Version::V1, CrcSize::Crc16) => u32::from(hex_crc16(payload)),
        (Version::V1, CrcSize::Crc32) => hex_crc32(payload),
    }
}

/// Writes the low `size.len()` bytes of `value`, big-endian.
pub(crate) fn put_crc(size: CrcSize, value: u32, dst: &mut impl bytes::BufMut) {
    let bytes = value.to_be_bytes();
    dst.put_slice(bytes.get(4 - size.len()..).unwrap_or_default());
}

/// Reads a big-endian CRC trailer of any length up to 4 bytes.
pub(crate) fn read_crc(trailer: &[u8]) -> u32 {
    trailer.iter().fold(0, |acc, &b| (acc << 8) | u32::from(b))
}

/// CRC-32/ISO-HDLC of the lowercase hex text of `payload`. Below
/// [`SIMD_MIN`] bytes, by [`HexTables`]; from there on the text is made a
/// chunk at a time by `const_hex` (SIMD, chosen at run time) and fed to
/// `crc_fast`'s carry-less multiply kernels, whose set-up and final reduction
/// outweigh the tables' cost on short texts. The chunk buffer is the
/// thread's own: zeroing 8 KiB of stack on every call cost 7 % at 4 KiB
/// payloads and 10 % at 1 KiB.
fn hex_crc32(payload: &[u8]) -> u32 {
    if payload.len() < SIMD_MIN {
        return hex_crc32_tables(payload);
    }
    // The thread's buffer, so that no call zeroes 8 KiB of stack; a stack
    // buffer only when the thread's is gone (thread exit) or in use.
    TEXT.try_with(|cell| {
        cell.try_borrow_mut()
            .ok()
            .map(|mut buf| hex_crc32_chunked(payload, &mut buf))
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| hex_crc32_chunked(payload, &mut [0u8; 2 * HEX_CHUNK]))
}

thread_local! {
    /// The hex text buffer of [`hex_crc32`].
    static TEXT: RefCell<[u8; 2 * HEX_CHUNK]> = const { RefCell::new([0; 2 * HEX_CHUNK]) };
}

/// [`hex_crc32`] through the text buffer `buf`.
#[inline(always)]
fn hex_crc32_chunked(payload: &[u8], buf: &mut [u8; 2 * HEX_CHUNK]) -> u32 {
    let mut digest = Digest::new(CrcAlgorithm::Crc32IsoHdlc);
    for chunk in payload.chunks(HEX_CHUNK) {
        let text = buf.get_mut(..2 * chunk.len()).unwrap_or_default();
        // The only error is a length mismatch, which the line above rules out;
        // the tests cover every length up to beyond two chunks.
        if const_hex::encode_to_slice(chunk, &mut *text).is_ok() {
            digest.update(text);
        }
    }
    // A 32-bit CRC's value fits in the low 32 bits of the u64.
    (digest.finalize() & 0xFFFF_FFFF) as u32
}

/// Payload bytes folded per table step of the version 1 CRC-8, CRC-16 and
/// short CRC-32s.
const BLOCK: usize = 16;

/// The lowercase hex digits of a byte, high nibble first.
// Both indices are below 16.
#[allow(clippy::indexing_slicing)]
const fn hex_pair(byte: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[(byte >> 4) as usize], DIGITS[(byte & 0x0F) as usize]]
}

/// The value at `byte` of a 256-entry table: `byte` is always in bounds, so
/// the compiler drops the check and the fallback.
#[inline(always)]
fn at<T: Copy + Default>(table: &[T; 256], byte: u8) -> T {
    table.get(usize::from(byte)).copied().unwrap_or_default()
}

/// Tables that step a CRC register over the hex text of a payload without
/// making the text. CRC registers are linear over GF(2): after a block of
/// 16 payload bytes (32 text bytes) the register is `SHIFT(r)`, the old
/// register `r` carried through 32 zero bytes, XOR `POS[j][b_j]` for each
/// payload byte `b_j`, the register that a zero register would have after
/// `b_j`'s two hex digits followed by the zero bytes of the rest of the
/// block. So a block costs 16 lookups, plus one per register byte, instead
/// of the 32 of slice-by-16 over the text, and no hexlify pass.
struct HexTables<R: 'static, const REGISTER_BYTES: usize> {
    /// The byte-at-a-time table of the CRC.
    byte: [R; 256],
    /// `pos[j][b]`: payload byte `b` at index `j` of a block.
    pos: [[R; 256]; BLOCK],
    /// The register carried through the 32 text bytes of a block, one table
    /// per register byte (low byte first).
    shift: [[R; 256]; REGISTER_BYTES],
}

/// CRC-8/SMBUS: polynomial 0x07, not reflected, init 0, xorout 0.
static HEX8: HexTables<u8, 1> = hex8_tables();
/// CRC-16/ARC: polynomial 0x8005 reflected (0xA001), init 0, xorout 0.
static HEX16: HexTables<u16, 2> = hex16_tables();
/// CRC-32/ISO-HDLC: polynomial 0x04C11DB7 reflected (0xEDB88320), init and
/// xorout 0xFFFFFFFF (applied by [`hex_crc32_tables`]).
static HEX32: HexTables<u32, 4> = hex32_tables();

/// One text byte through the CRC-8/SMBUS register.
#[inline(always)]
// A u8 index into 256 entries.
#[allow(clippy::indexing_slicing)]
const fn step8(byte_table: &[u8; 256], r: u8, text: u8) -> u8 {
    byte_table[(r ^ text) as usize]
}

// The table builders run at compile time only (a panic there is a build
// error), so they index freely.
#[allow(clippy::indexing_slicing)]
const fn hex8_tables() -> HexTables<u8, 1> {
    let mut byte = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = i as u8;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x80 != 0 {
                (r << 1) ^ 0x07
            } else {
                r << 1
            };
            bit += 1;
        }
        byte[i] = r;
        i += 1;
    }
    let mut pos = [[0u8; 256]; BLOCK];
    let mut shift = [[0u8; 256]; 1];
    let mut b = 0;
    while b < 256 {
        let pair = hex_pair(b as u8);
        let mut r = step8(&byte, step8(&byte, 0, pair[0]), pair[1]);
        let mut j = BLOCK;
        while j > 0 {
            j -= 1;
            pos[j][b] = r;
            // Two more zero text bytes for the next position to the left.
            r = step8(&byte, step8(&byte, r, 0), 0);
        }
        let mut s = b as u8;
        let mut n = 0;
        while n < 2 * BLOCK {
            s = step8(&byte, s, 0);
            n += 1;
        }
        shift[0][b] = s;
        b += 1;
    }
    HexTables { byte, pos, shift }
}

/// The step and table builder of a reflected CRC whose register is `$r`.
macro_rules! reflected {
    ($step:ident, $tables:ident, $r:ty, $poly:expr) => {
        /// One text byte through the reflected register.
        #[inline(always)]
        // A u8 index into 256 entries.
        #[allow(clippy::indexing_slicing)]
        const fn $step(byte_table: &[$r; 256], r: $r, text: u8) -> $r {
            (r >> 8) ^ byte_table[((r as u8) ^ text) as usize]
        }

        // Compile time only, as above.
        #[allow(clippy::indexing_slicing)]
        const fn $tables() -> HexTables<$r, { size_of::<$r>() }> {
            const BYTES: usize = size_of::<$r>();
            let mut byte: [$r; 256] = [0; 256];
            let mut i = 0;
            while i < 256 {
                let mut r = i as $r;
                let mut bit = 0;
                while bit < 8 {
                    r = if r & 1 != 0 { (r >> 1) ^ $poly } else { r >> 1 };
                    bit += 1;
                }
                byte[i] = r;
                i += 1;
            }
            let mut pos: [[$r; 256]; BLOCK] = [[0; 256]; BLOCK];
            let mut shift: [[$r; 256]; BYTES] = [[0; 256]; BYTES];
            let mut b = 0;
            while b < 256 {
                let pair = hex_pair(b as u8);
                let mut r = $step(&byte, $step(&byte, 0, pair[0]), pair[1]);
                let mut j = BLOCK;
                while j > 0 {
                    j -= 1;
                    pos[j][b] = r;
                    r = $step(&byte, $step(&byte, r, 0), 0);
                }
                let mut k = 0;
                while k < BYTES {
                    let mut s = (b as $r) << (8 * k);
                    let mut n = 0;
                    while n < 2 * BLOCK {
                        s = $step(&byte, s, 0);
                        n += 1;
                    }
                    shift[k][b] = s;
                    k += 1;
                }
                b += 1;
            }
            HexTables { byte, pos, shift }
        }
    };
}

reflected!(step16, hex16_tables, u16, 0xA001);
reflected!(step32, hex32_tables, u32, 0xEDB8_8320);

/// The XOR of `pos[j][block[j]]` over a block: the part of the next register
/// that does not depend on the current one. Four partial sums keep the XOR
/// chain short, and since nothing here waits for the register, the next
/// block's lookups overlap this block's last steps.
#[inline(always)]
fn fold_block<R>(pos: &[[R; 256]; BLOCK], block: &[u8; BLOCK]) -> R
where
    R: Copy + Default + std::ops::BitXor<Output = R>,
{
    let mut sums = [R::default(); 4];
    for (tables, bytes) in pos.chunks_exact(4).zip(block.chunks_exact(4)) {
        for ((sum, table), &b) in sums.iter_mut().zip(tables).zip(bytes) {
            *sum = *sum ^ at(table, b);
        }
    }
    let [a, b, c, d] = sums;
    (a ^ b) ^ (c ^ d)
}

/// CRC-8/SMBUS of the lowercase hex text of `payload` (see [`HexTables`]).
fn hex_crc8(payload: &[u8]) -> u8 {
    let (blocks, tail) = payload.as_chunks::<BLOCK>();
    let mut r = 0u8;
    for block in blocks {
        r = fold_block(&HEX8.pos, block) ^ at(&HEX8.shift[0], r);
    }
    for &b in tail {
        let [hi, lo] = hex_pair(b);
        r = step8(&HEX8.byte, step8(&HEX8.byte, r, hi), lo);
    }
    r
}

/// CRC-32/ISO-HDLC of the lowercase hex text of `payload` by [`HexTables`].
fn hex_crc32_tables(payload: &[u8]) -> u32 {
    let (blocks, tail) = payload.as_chunks::<BLOCK>();
    let [s0, s1, s2, s3] = &HEX32.shift;
    let mut r = u32::MAX;
    for block in blocks {
        let [b0, b1, b2, b3] = r.to_le_bytes();
        r = fold_block(&HEX32.pos, block) ^ (at(s0, b0) ^ at(s1, b1)) ^ (at(s2, b2) ^ at(s3, b3));
    }
    for &b in tail {
        let [hi, lo] = hex_pair(b);
        r = step32(&HEX32.byte, step32(&HEX32.byte, r, hi), lo);
    }
    !r
}

/// CRC-16/ARC of the lowercase hex text of `payload` (see [`HexTables`]).
fn hex_crc16(payload: &[u8]) -> u16 {
    let (blocks, tail) = payload.as_chunks::<BLOCK>();
    let [shift_lo, shift_hi] = &HEX16.shift;
    let mut r = 0u16;
    for block in blocks {
        let [lo, hi] = r.to_le_bytes();
        r = fold_block(&HEX16.pos, block) ^ at(shift_lo, lo) ^ at(shift_hi, hi);
    }
    for &b in tail {
        let [hi, lo] = hex_pair(b);
        r = step16(&HEX16.byte, step16(&HEX16.byte, r, hi), lo);
    }
    r
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use proptest::prelude::*;

    const CHECK: &[u8] = b"123456789";

    #[test]
    fn catalogue_check_values() {
        assert_eq!(checksum(Version::V2, CrcSize::Crc8, CHECK), 0xF4);
        assert_eq!(checksum(Version::V2, CrcSize::Crc16, CHECK), 0xBB3D);
        assert_eq!(checksum(Version::V2, CrcSize::Crc32, CHECK), 0xE306_9283);
        let iso_hdlc = Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
        assert_eq!(iso_hdlc.checksum(CHECK), 0xCBF4_3926);
    }

    /// The reference: hexlify into a String, then the `crc` crate's catalogue.
    fn reference(version: Version, size: CrcSize, payload: &[u8]) -> u32 {
        let text: Vec<u8> = match version {
            Version::V1 => {
                let mut hex = String::with_capacity(2 * payload.len());
                for b in payload {
                    write!(hex, "{b:02x}").unwrap();
                }
                hex.into_bytes()
            }
            Version::V2 => payload.to_vec(),
        };
        match (version, size) {
            (_, CrcSize::None) => 0,
            (_, CrcSize::Crc8) => u32::from(Crc::<u8>::new(&CRC_8_SMBUS).checksum(&text)),
            (_, CrcSize::Crc16) => u32::from(Crc::<u16>::new(&CRC_16_ARC).checksum(&text)),
            (Version::V1, CrcSize::Crc32) => Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&text),
            (Version::V2, CrcSize::Crc32) => Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&text),
        }
    }

    /// A payload of `len` bytes from a small xorshift generator.
    fn random_payload(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn hex_pairs_are_lowercase_hex() {
        for b in 0..=255u8 {
            assert_eq!(hex_pair(b), *format!("{b:02x}").as_bytes());
        }
    }

    /// Every length from empty to past a CRC-32 hex chunk, so every tail
    /// length of the 16-byte blocks and every chunk boundary is crossed.
    #[test]
    fn every_length_up_to_5000_matches_the_reference() {
        const MAX: usize = 5000;
        const { assert!(MAX > HEX_CHUNK + BLOCK) };
        let payload = random_payload(MAX, 0x9E37_79B9_7F4A_7C15);
        for len in 0..=MAX {
            let part = &payload[..len];
            for size in [CrcSize::Crc8, CrcSize::Crc16, CrcSize::Crc32] {
                assert_eq!(
                    checksum(Version::V1, size, part),
                    reference(Version::V1, size, part),
                    "{size:?}, {len} bytes"
                );
            }
        }
    }

    /// All 256 byte values at every position of a block and of a chunk.
    #[test]
    fn every_byte_value_at_every_position() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(2 * HEX_CHUNK + 257).collect();
        for start in 0..BLOCK {
            for len in [
                BLOCK,
                255,
                256,
                SIMD_MIN - 1,
                SIMD_MIN,
                HEX_CHUNK / 2 + 1,
                HEX_CHUNK + 1,
                2 * HEX_CHUNK,
                payload.len() - start,
            ] {
                let part = &payload[start..start + len];
                for size in [CrcSize::Crc8, CrcSize::Crc16, CrcSize::Crc32] {
                    assert_eq!(
                        checksum(Version::V1, size, part),
                        reference(Version::V1, size, part)
                    );
                }
            }
        }
    }

    /// With the thread's text buffer taken, the CRC-32 falls back to a stack
    /// buffer and gives the same value.
    #[test]
    fn crc32_without_the_thread_buffer() {
        let payload = random_payload(3 * HEX_CHUNK + 5, 7);
        let held = TEXT.with(|cell| {
            cell.try_borrow_mut().is_ok_and(|_buf| {
                for len in [SIMD_MIN, HEX_CHUNK, payload.len()] {
                    let part = &payload[..len];
                    assert_eq!(
                        checksum(Version::V1, CrcSize::Crc32, part),
                        reference(Version::V1, CrcSize::Crc32, part)
                    );
                }
                true
            })
        });
        assert!(held);
    }

    proptest! {
        #[test]
        fn matches_the_catalogue(payload in proptest::collection::vec(any::<u8>(), 0..=5000),
                                 v1 in any::<bool>(), size in 0usize..4) {
            let version = if v1 { Version::V1 } else { Version::V2 };
            let size = [CrcSize::None, CrcSize::Crc8, CrcSize::Crc16, CrcSize::Crc32][size];
            prop_assert_eq!(checksum(version, size, &payload), reference(version, size, &payload));
        }
    }
}

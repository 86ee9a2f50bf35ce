//! SplitMix64.

use std::ops::RangeInclusive;

/// SplitMix64 (Steele, Lea and Flood): a tiny deterministic generator, so a
/// test's sizes, contents and kill points can be recomputed from its seed.
/// Not for anything that needs unpredictability.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `range` (its start when the range is empty).
    pub fn in_range(&mut self, range: RangeInclusive<usize>) -> usize {
        let span = (range.end().saturating_sub(*range.start()) as u64).saturating_add(1);
        range.start() + (self.next_u64() % span) as usize
    }

    /// `len` deterministic bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        data.truncate(len);
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // The first outputs for seed 0 of the reference implementation.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn bounded_draws_stay_in_bounds() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            assert!(rng.below(10) < 10);
            assert!((5..=9).contains(&rng.in_range(5..=9)));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.bytes(13).len(), 13);
    }
}

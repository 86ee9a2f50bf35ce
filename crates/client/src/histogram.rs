//! A fixed-size latency histogram: bounded memory whatever the frame count.
//!
//! Values (microseconds) below 256 have a bucket each; above, each power of
//! two is split into 128 buckets, so a quantile is within 1% of the true
//! value. Values above `u32::MAX` µs (71 minutes) count as `u32::MAX`.

/// Values below this have one bucket each.
const EXACT: u64 = 256;
/// Mantissa bits kept above [`EXACT`]: 128 buckets per power of two.
const SUB_BITS: u32 = 7;
/// Buckets: the exact ones, then 128 for each power of two from 2^8 to 2^31.
const BUCKETS: usize = EXACT as usize + (32 - 8) * (1 << SUB_BITS);

/// Counts of recorded values by bucket.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub(crate) fn record(&mut self, value: u64) {
        let value = value.min(u64::from(u32::MAX));
        if let Some(count) = self.counts.get_mut(bucket(value)) {
            *count += 1;
            self.total += 1;
        }
    }

    /// Adds every value recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (count, more) in self.counts.iter_mut().zip(&other.counts) {
            *count += more;
        }
        self.total += other.total;
    }

    /// The value at quantile `q` (0.5 for the median) by nearest rank: the
    /// highest value of the bucket holding it. `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // The rank is in 1..=total; the float is only a fraction of it.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(highest_in(index));
            }
        }
        None
    }
}

/// The bucket of `value` (at most `u32::MAX`).
fn bucket(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // 8..=31
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) - (1 << SUB_BITS); // 0..128
    EXACT as usize + (exponent as usize - 8) * (1 << SUB_BITS) + sub as usize
}

/// The highest value that falls in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT {
        return index;
    }
    let above = index - EXACT;
    let exponent = 8 + above / (1 << SUB_BITS);
    let sub = above % (1 << SUB_BITS);
    let shift = exponent - u64::from(SUB_BITS);
    (((1 << SUB_BITS) + sub + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut histogram = Histogram::default();
        for value in 1..=100 {
            histogram.record(value);
        }
        assert_eq!(histogram.total, 100);
        assert_eq!(histogram.quantile(0.5), Some(50));
        assert_eq!(histogram.quantile(0.99), Some(99));
        assert_eq!(histogram.quantile(1.0), Some(100));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn large_values_are_within_one_percent() {
        for value in [256, 257, 1000, 12_345, 999_999, u64::from(u32::MAX)] {
            let mut histogram = Histogram::default();
            histogram.record(value);
            let got = histogram.quantile(0.5).unwrap();
            assert!(
                got >= value && got - value <= value / 100,
                "{value} -> {got}"
            );
        }
    }

    #[test]
    fn every_bucket_holds_its_highest_value() {
        for index in 0..BUCKETS {
            assert_eq!(bucket(highest_in(index)), index);
        }
        assert_eq!(bucket(u64::from(u32::MAX)), BUCKETS - 1);
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(10);
        b.record(20);
        b.record(u64::MAX);
        a.merge(&b);
        assert_eq!(a.total, 3);
        assert_eq!(a.quantile(0.0), Some(10));
        assert_eq!(a.quantile(0.5), Some(20));
    }
}

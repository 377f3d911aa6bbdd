//! Latency statistics: a log-linear histogram, cheap enough to keep on a stack.
//!
//! Values below 1024 µs have 1 µs buckets; from there each power of two is split into 128
//! buckets (relative resolution < 0.8 %), up to 2^32 µs; larger values land in an
//! overflow bucket.

/// Values below this are counted exactly.
const LINEAR: u64 = 1024;
const LINEAR_BITS: u32 = 10;
/// Sub-buckets per power of two above `LINEAR` (2^SUB_BITS).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Powers of two covered above `LINEAR`: 2^10 ..= 2^31 (up to 2^32 - 1 µs).
const OCTAVES: usize = 22;
/// Number of buckets.
pub const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB;

/// Distribution of latencies in microseconds.
pub struct Histogram {
    buckets: [u32; BUCKETS],
    overflow: u32,
    count: u64,
    max: u64,
}

/// Bucket index of `us`, `None` beyond the last bucket.
fn bucket(us: u64) -> Option<usize> {
    if us < LINEAR {
        return Some(us as usize);
    }
    let k = 63 - us.leading_zeros(); // 2^k <= us < 2^(k+1), k >= 10
    let octave = (k - LINEAR_BITS) as usize;
    if octave >= OCTAVES {
        return None;
    }
    let sub = ((us >> (k - SUB_BITS)) as usize) & (SUB - 1);
    Some(LINEAR as usize + octave * SUB + sub)
}

/// Largest value that lands in bucket `i`.
fn bucket_top(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let octave = (i - LINEAR as usize) / SUB;
    let sub = ((i - LINEAR as usize) % SUB) as u64;
    let k = octave as u32 + LINEAR_BITS;
    ((SUB as u64 + sub + 1) << (k - SUB_BITS)) - 1
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [0; BUCKETS],
            overflow: 0,
            count: 0,
            max: 0,
        }
    }

    /// Records one value (µs).
    pub fn record(&mut self, us: u64) {
        match bucket(us) {
            Some(i) => self.buckets[i] = self.buckets[i].saturating_add(1),
            None => self.overflow = self.overflow.saturating_add(1),
        }
        self.count += 1;
        self.max = self.max.max(us);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest recorded value `v` such that at least `pct` percent of the values are
    /// `<= v` (nearest-rank), to the bucket's resolution: exact below 1024 µs, else the top
    /// of the bucket (at most 0.8 % high) but never above the maximum. Values in the
    /// overflow bucket report as the maximum. 0 if nothing was recorded.
    pub fn percentile(&self, pct: u64) -> u64 {
        self.permille(pct.min(100) * 10)
    }

    /// As [`percentile`](Self::percentile) in thousandths: `permille(999)` is p99.9.
    pub fn permille(&self, pm: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (self.count * pm.min(1000)).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return bucket_top(i).min(self.max);
            }
        }
        self.max
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty() {
        let h = Histogram::new();
        assert_eq!(
            (h.count(), h.max(), h.percentile(50), h.percentile(99)),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for us in 1..=100 {
            h.record(us);
        }
        assert_eq!(h.percentile(50), 50);
        assert_eq!(h.percentile(99), 99);
        assert_eq!(h.percentile(100), 100);
        assert_eq!(h.percentile(0), 1);
        assert_eq!(h.max(), 100);
        assert_eq!(h.permille(999), 100);
        assert_eq!(h.permille(990), 99);
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.permille(999), 999);
        assert_eq!(h.permille(500), 500);
    }

    #[test]
    fn log_linear_buckets() {
        assert_eq!(bucket(1023), Some(1023));
        assert_eq!(bucket(1024), Some(1024));
        assert_eq!(bucket(1031), Some(1024));
        assert_eq!(bucket(1032), Some(1024 + 1));
        assert_eq!(bucket((1 << 32) - 1), Some(BUCKETS - 1));
        assert_eq!(bucket(1 << 32), None);
        for us in [
            1024u64,
            1500,
            4095,
            4096,
            10_000,
            123_456,
            9_999_999,
            (1 << 32) - 1,
        ] {
            let i = bucket(us).unwrap();
            let top = bucket_top(i);
            assert!(top >= us && (top - us) * 128 <= us, "{us} -> {top}");
            assert_eq!(bucket(top), Some(i));
            assert_eq!(bucket(top + 1), (i + 1 < BUCKETS).then_some(i + 1));
        }
        let mut h = Histogram::new();
        for _ in 0..98 {
            h.record(100);
        }
        h.record(10_000);
        h.record(20_000);
        let p99 = h.percentile(99);
        assert!((10_000..=10_079).contains(&p99), "{p99}");
        assert_eq!(h.percentile(100), 20_000);
        assert_eq!(h.percentile(50), 100);
    }

    #[test]
    fn overflow_reports_max() {
        let mut h = Histogram::new();
        h.record(3);
        h.record(1_000_000);
        assert_eq!(h.percentile(50), 3);
        assert_eq!(h.percentile(99), 1_000_000);
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
    }
}

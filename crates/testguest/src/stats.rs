//! Latency statistics: a histogram with 1 µs buckets, cheap enough to keep on a stack.

/// Number of 1 µs buckets; larger values land in the overflow bucket.
pub const BUCKETS: usize = 4096;

/// Distribution of latencies in microseconds.
pub struct Histogram {
    buckets: [u32; BUCKETS],
    overflow: u32,
    count: u64,
    max: u64,
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
        match self.buckets.get_mut(us as usize) {
            Some(b) if us < BUCKETS as u64 => *b = b.saturating_add(1),
            _ => self.overflow = self.overflow.saturating_add(1),
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
    /// `<= v` (nearest-rank). Values in the overflow bucket report as the maximum. 0 if
    /// nothing was recorded.
    pub fn percentile(&self, pct: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (self.count * pct.min(100)).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (us, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return us as u64;
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

//! Run-queue latency histograms with log2 microsecond buckets.

use std::time::Duration;

/// Number of buckets; shared with the BPF side (`QT_HIST_SLOTS` in intf.h).
pub const SLOTS: usize = 32;

/// Run-queue waits of one cgroup, summed over CPUs.
///
/// Bucket 0 counts waits under 1 us; bucket `i >= 1` counts waits in
/// `[2^(i-1), 2^i)` us; the last bucket also counts anything longer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket.
    pub buckets: [u64; SLOTS],
    /// Sum of all waits, in nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// The half-open range of waits bucket `i` counts, in microseconds (`None` as the end: unbounded).
    pub fn bucket_bounds_us(i: usize) -> (u64, Option<u64>) {
        match i {
            0 => (0, Some(1)),
            i if i + 1 >= SLOTS => (1 << (i - 1), None),
            i => (1 << (i - 1), Some(1 << i)),
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Mean wait; `None` without samples.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_nanos(self.sum_ns / count))
    }

    /// Estimated `p`-th percentile (`p` in `0.0..=100.0`, clamped), by linear
    /// interpolation inside the bucket where it falls: exact to within that
    /// bucket, that is to within a factor of two. `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = p.clamp(0.0, 100.0) / 100.0 * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let (lo, hi) = Self::bucket_bounds_us(i);
                // The open-ended last bucket has no width to interpolate in: report its start.
                let hi = hi.unwrap_or(lo);
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let us = lo as f64 + within * (hi - lo) as f64;
                return Some(Duration::from_nanos((us * 1000.0) as u64));
            }
            below += n;
        }
        // Unreachable with count > 0 (rank <= count), but an answer beats a panic.
        Some(Duration::from_micros(Self::bucket_bounds_us(SLOTS - 1).0))
    }

    /// Samples of at least `us` microseconds, counting only whole buckets
    /// that start at or above it (so a lower bound).
    pub fn count_at_least_us(&self, us: u64) -> u64 {
        (0..SLOTS)
            .filter(|&i| Self::bucket_bounds_us(i).0 >= us)
            .map(|i| self.buckets[i])
            .sum()
    }

    /// What was added since `earlier` (a snapshot of the same cgroup); counters only grow,
    /// so a missing or reset earlier snapshot saturates to zero rather than wrapping.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut buckets = [0; SLOTS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        Histogram {
            buckets,
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// Adds another histogram (another CPU's share) into this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(buckets: &[(usize, u64)]) -> Histogram {
        let mut h = Histogram::default();
        for &(i, n) in buckets {
            h.buckets[i] = n;
        }
        h
    }

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(Histogram::bucket_bounds_us(0), (0, Some(1)));
        assert_eq!(Histogram::bucket_bounds_us(1), (1, Some(2)));
        assert_eq!(Histogram::bucket_bounds_us(11), (1024, Some(2048)));
        assert_eq!(Histogram::bucket_bounds_us(SLOTS - 1), (1 << 30, None));
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles_or_mean() {
        let h = Histogram::default();
        assert_eq!(h.count(), 0);
        assert_eq!(h.percentile(50.0), None);
        assert_eq!(h.mean(), None);
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket_they_fall_in() {
        // 100 samples in [4, 8) us and 100 in [1024, 2048) us.
        let h = with(&[(3, 100), (11, 100)]);
        assert_eq!(h.percentile(25.0), Some(Duration::from_micros(6)));
        assert_eq!(h.percentile(50.0), Some(Duration::from_micros(8)));
        assert_eq!(h.percentile(75.0), Some(Duration::from_micros(1536)));
        assert_eq!(h.percentile(100.0), Some(Duration::from_micros(2048)));
        assert_eq!(h.percentile(250.0), h.percentile(100.0), "p is clamped");
    }

    #[test]
    fn the_open_ended_last_bucket_reports_its_start() {
        let h = with(&[(SLOTS - 1, 1)]);
        assert_eq!(h.percentile(99.0), Some(Duration::from_micros(1 << 30)));
    }

    #[test]
    fn mean_is_exact_from_the_sum() {
        let h = Histogram {
            sum_ns: 3_000,
            ..with(&[(1, 2), (2, 1)])
        };
        assert_eq!(h.mean(), Some(Duration::from_nanos(1_000)));
    }

    #[test]
    fn since_subtracts_an_earlier_snapshot_and_never_wraps() {
        let before = Histogram {
            sum_ns: 10,
            ..with(&[(1, 5), (2, 1)])
        };
        let after = Histogram {
            sum_ns: 30,
            ..with(&[(1, 7), (2, 1), (3, 4)])
        };
        assert_eq!(
            after.since(&before),
            Histogram {
                sum_ns: 20,
                ..with(&[(1, 2), (3, 4)])
            }
        );
        assert_eq!(before.since(&after), Histogram::default());
    }

    #[test]
    fn count_at_least_counts_whole_buckets_from_the_threshold() {
        let h = with(&[(3, 1), (10, 2), (11, 4)]);
        assert_eq!(h.count_at_least_us(512), 6);
        assert_eq!(h.count_at_least_us(513), 4);
        assert_eq!(h.count_at_least_us(0), 7);
    }
}

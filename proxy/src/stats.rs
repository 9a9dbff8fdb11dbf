//! Per-pool request outcomes for judging canaries: attempts, errors and a
//! latency histogram, as cumulative counters that outlive reloads. A judge
//! takes a [`StatsSample`] at the start of a window and subtracts it from
//! one at the end.
//!
//! The histogram has 8 buckets per power of two of microseconds (each
//! bucket at most 12.5% wide), so recording is a few relaxed atomic adds
//! and no allocation, and a p99 read from it is within 12.5% above the
//! true value (it reports a bucket's upper bound, erring towards failing a
//! latency gate rather than passing one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: values below 8 us get one each, then 8 per power of two up to
/// 2^38 us (about 3 days).
const BUCKETS: usize = 8 + 8 * 36;

/// Counters of one pool of one service.
#[derive(Debug)]
pub struct PoolStats {
    attempts: AtomicU64,
    errors: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            attempts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket(micros: u64) -> usize {
    if micros < 8 {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros() as usize; // >= 3
    let sub = ((micros >> (exp - 3)) & 7) as usize;
    (8 + (exp - 3) * 8 + sub).min(BUCKETS - 1)
}

/// The largest value (exclusive) that falls in bucket `i`, in microseconds.
fn upper_bound(i: usize) -> u64 {
    if i < 8 {
        return i as u64 + 1;
    }
    let exp = (i - 8) / 8 + 3;
    let sub = ((i - 8) % 8) as u64;
    (9 + sub) << (exp - 3)
}

impl PoolStats {
    /// A request answered by this pool: `error` for a 5xx answer.
    pub fn record_answer(&self, error: bool, took: Duration) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt on this pool that got no answer (connect or read failure).
    pub fn record_failed_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn sample(&self) -> StatsSample {
        StatsSample {
            attempts: self.attempts.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A reading of [`PoolStats`], or the difference of two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSample {
    /// Attempts (answers and failed attempts).
    pub attempts: u64,
    /// 5xx answers and failed attempts.
    pub errors: u64,
    latency: Vec<u64>,
}

impl StatsSample {
    /// What happened between `earlier` and this sample.
    pub fn since(&self, earlier: &StatsSample) -> StatsSample {
        StatsSample {
            attempts: self.attempts.saturating_sub(earlier.attempts),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Errors over attempts; 0 without attempts.
    pub fn error_rate(&self) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = self.errors as f64 / self.attempts as f64;
        rate.min(1.0)
    }

    /// Answers in the latency histogram.
    pub fn answers(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// The `q` quantile (0 to 1) of answer latency, rounded up to its
    /// bucket's upper bound; `None` without answers.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.answers();
        if total == 0 {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            123_456,
            10_000_000,
            u64::MAX,
        ] {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            if v < 1 << 37 {
                let upper = upper_bound(b);
                assert!(upper > v, "{v} below its bucket's bound {upper}");
                assert!(
                    upper as f64 <= (v as f64 + 1.0) * 1.125 + 1.0,
                    "{v}: {upper}"
                );
            }
        }
    }

    #[test]
    fn windows_and_quantiles() {
        let s = PoolStats::default();
        for _ in 0..99 {
            s.record_answer(false, Duration::from_millis(10));
        }
        let before = s.sample();
        for _ in 0..98 {
            s.record_answer(false, Duration::from_millis(20));
        }
        s.record_answer(true, Duration::from_millis(400));
        s.record_failed_attempt();
        let window = s.sample().since(&before);
        assert_eq!(window.attempts, 100);
        assert_eq!(window.errors, 2);
        assert!((window.error_rate() - 0.02).abs() < 1e-9);
        let p50 = window.quantile(0.5).expect("p50");
        assert!(
            p50 >= Duration::from_millis(20) && p50 <= Duration::from_micros(22_600),
            "{p50:?}"
        );
        let p98 = window.quantile(0.98).expect("p98");
        assert!(
            p98 >= Duration::from_millis(20) && p98 <= Duration::from_micros(22_600),
            "{p98:?}"
        );
        // 99 answers: the 99th is the slow one.
        let p99 = window.quantile(0.99).expect("p99");
        assert!(
            p99 >= Duration::from_millis(400) && p99 <= Duration::from_millis(450),
            "{p99:?}"
        );
        assert_eq!(StatsSample::default().quantile(0.99), None);
    }
}

//! Metric names of the request path. Labels stay low-cardinality: service,
//! pool and status class, never paths or hosts.
//!
//! Counters go through the `metrics` recorder. The request duration
//! histogram does not: the exporter's histogram keeps every sample (with a
//! timestamp) until its next upkeep, which per request is a clock read and
//! a store into a growing list. [`LatencyHistogram`] bins at record time
//! into fixed buckets, a few relaxed atomic adds, and is rendered next to
//! the exporter's output by [`render_histograms`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;

/// Requests answered, by service, pool and status class.
pub const REQUESTS: &str = "switchyard_requests_total";
/// Request duration in seconds, by service and pool.
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
/// Requests that matched no route.
pub const UNROUTED: &str = "switchyard_unrouted_requests_total";
/// Failed connection attempts to backends, by service and pool.
pub const CONNECT_FAILURES: &str = "switchyard_upstream_connect_failures_total";
/// Requests sent to another backend after a failure, by service.
pub const RETRIES: &str = "switchyard_upstream_retries_total";

/// Status classes a request is counted under; `error` when no status was
/// sent (the client left, or the answer failed half-way).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Upper bounds (inclusive) of the request duration buckets, in
/// nanoseconds, and as written in the `le` label.
const BOUNDS: [(u64, &str); 13] = [
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// A Prometheus histogram of request durations with fixed buckets.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// Sum of all durations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS
            .iter()
            .position(|&(bound, _)| nanos <= bound)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of this histogram,
    /// with `labels` (already escaped, comma-separated `k="v"` pairs).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, (_, le)) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Every request duration histogram made, by its (escaped) labels, so a
/// pool keeps its histogram across reloads and a scrape finds them all.
static HISTOGRAMS: Mutex<Vec<(String, Arc<LatencyHistogram>)>> = Mutex::new(Vec::new());

/// The request duration histogram of `service` / `pool`, made on first use.
fn duration_histogram(service: &str, pool: &str) -> Arc<LatencyHistogram> {
    let labels = format!(
        "service=\"{}\",pool=\"{}\"",
        escape_label(service),
        escape_label(pool)
    );
    let mut all = HISTOGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, h)) = all.iter().find(|(l, _)| *l == labels) {
        return h.clone();
    }
    let h = Arc::new(LatencyHistogram::default());
    all.push((labels, h.clone()));
    h
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the request duration histograms of every pool seen since start
/// to `out`, in the Prometheus text format.
pub fn render_histograms(out: &mut String) {
    let all = HISTOGRAMS.lock().unwrap_or_else(|e| e.into_inner());
    if all.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
    for (labels, h) in all.iter() {
        h.render(out, REQUEST_DURATION, labels);
    }
}

/// A pool's metric handles, registered once per config generation so the
/// request path only increments atomics.
#[derive(Debug)]
pub struct PoolMetrics {
    requests: [Counter; 6],
    duration: Arc<LatencyHistogram>,
    /// Failed connection attempts.
    pub connect_failures: Counter,
}

impl PoolMetrics {
    /// Handles for `service` / `pool`.
    pub fn new(service: &str, pool: &str) -> Self {
        let labels = [("service", service.to_string()), ("pool", pool.to_string())];
        PoolMetrics {
            requests: CLASSES.map(|class| {
                metrics::counter!(REQUESTS, "service" => service.to_string(), "pool" => pool.to_string(), "class" => class)
            }),
            duration: duration_histogram(service, pool),
            connect_failures: metrics::counter!(CONNECT_FAILURES, &labels),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, status: u16, took: Duration) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.requests[class].increment(1);
        self.duration.record(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets_with_sum_and_count() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(1)); // on a bound: counted in it
        h.record(Duration::from_millis(7));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "d", "service=\"s\"");
        let line = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
                .to_string()
        };
        assert_eq!(line("d_bucket{service=\"s\",le=\"0.001\"}"), "2");
        assert_eq!(line("d_bucket{service=\"s\",le=\"0.005\"}"), "2");
        assert_eq!(line("d_bucket{service=\"s\",le=\"0.01\"}"), "3");
        assert_eq!(line("d_bucket{service=\"s\",le=\"10\"}"), "3");
        assert_eq!(line("d_bucket{service=\"s\",le=\"+Inf\"}"), "4");
        assert_eq!(line("d_count{service=\"s\"}"), "4");
        let sum: f64 = line("d_sum{service=\"s\"}").parse().expect("sum");
        assert!((sum - 60.0083).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

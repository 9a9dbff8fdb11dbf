//! Metric names of the request path. Labels stay low-cardinality: service,
//! pool and status class, never paths or hosts.

use metrics::{Counter, Histogram};

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

/// A pool's metric handles, registered once per config generation so the
/// request path only increments atomics.
#[derive(Debug)]
pub struct PoolMetrics {
    requests: [Counter; 6],
    duration: Histogram,
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
            duration: metrics::histogram!(REQUEST_DURATION, &labels),
            connect_failures: metrics::counter!(CONNECT_FAILURES, &labels),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, status: u16, seconds: f64) {
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.requests[class].increment(1);
        self.duration.record(seconds);
    }
}

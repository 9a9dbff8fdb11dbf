//! TLS handshake failures: counted, and reported at most once a minute.
//!
//! Scanners and broken clients fail handshakes all day; one error line per
//! failure would drown the log. The framework reports each failure as an
//! error-level `log` record; [`QuietHandshakes`] takes those out of the log
//! stream and counts them, and [`HandshakeReport`] writes one info line
//! with the count and the latest reason at most once a minute.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Where the framework logs downstream handshake failures.
const LISTENER_TARGET: &str = "pingora_core::services::listening";
/// How often, at most, failures are reported.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// TLS handshakes that failed since the process started.
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// The reason of the latest failure.
static LAST_REASON: Mutex<String> = Mutex::new(String::new());

/// Counts completed TLS handshakes (a callback the listener runs after
/// each one).
pub struct HandshakeCounter(pub metrics::Counter);

#[async_trait]
impl pingora::listeners::TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        _tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<std::sync::Arc<dyn std::any::Any + Send + Sync>> {
        self.0.increment(1);
        None
    }
}

/// Failed TLS handshakes since start (for metrics and the admin API).
pub fn handshake_failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// A log filter that swallows and counts handshake failure records.
pub struct QuietHandshakes;

impl<S> Filter<S> for QuietHandshakes {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        // Bridged `log` records all share the target "log"; the original
        // target travels in the `log.target` field.
        if event.metadata().target() != "log" {
            return true;
        }
        let mut fields = LogFields::default();
        event.record(&mut fields);
        if fields.target != LISTENER_TARGET || !fields.message.starts_with("Downstream handshake") {
            return true;
        }
        FAILURES.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = LAST_REASON.lock() {
            *last = fields.message;
        }
        false
    }
}

#[derive(Default)]
struct LogFields {
    target: String,
    message: String,
}

impl Visit for LogFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write;
            let _ = write!(self.message, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "log.target" => self.target.push_str(value),
            _ => {}
        }
    }
}

/// Reports handshake failures: the first as soon as it happens, later ones
/// summed up at most once a minute.
pub struct HandshakeReport;

#[async_trait]
impl BackgroundService for HandshakeReport {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reported = 0;
        let mut last_report: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let total = handshake_failures();
            let due = last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
            if total > reported && due {
                let last = LAST_REASON.lock().map(|l| l.clone()).unwrap_or_default();
                tracing::info!(
                    failed = total - reported,
                    total,
                    last = %last,
                    "TLS handshakes failed since the last report"
                );
                reported = total;
                last_report = Some(tokio::time::Instant::now());
            }
        }
    }
}

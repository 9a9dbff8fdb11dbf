//! Backend health: the state active checks and passive ejection share, the
//! registry that keeps it across config reloads, and the checker.
//!
//! A backend is *available* unless an active check found it unhealthy or
//! live traffic got it ejected. Selection skips unavailable backends; a pool
//! with none available lends its share to the other pools; a service with
//! none available at all is in *panic mode* and tries every backend. State
//! is keyed by service, pool and address, so a reload that keeps a backend
//! keeps its state. Each transition is logged once, with its reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use switchyard_config::{CheckKind, HealthCheck, Outlier};

use crate::proxy::SharedSnapshot;
use crate::snapshot::BackendRt;

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// Milliseconds since the process's first health clock read (never 0).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(|| Instant::now() - Duration::from_millis(1));
    epoch.elapsed().as_millis() as u64
}

fn wall_clock_at(ms: u64) -> SystemTime {
    let now = now_ms();
    if ms >= now {
        SystemTime::now() + Duration::from_millis(ms - now)
    } else {
        SystemTime::now() - Duration::from_millis(now - ms)
    }
}

/// The outcome of one active probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    /// When the probe ended.
    pub at: SystemTime,
    /// Whether it passed.
    pub ok: bool,
    /// What it saw: the status, or why it failed.
    pub detail: String,
}

/// The health of one backend of one pool.
#[derive(Debug)]
pub struct BackendHealth {
    service: String,
    pool: String,
    addr: SocketAddr,
    active: AtomicU8,
    pass_streak: AtomicU32,
    fail_streak: AtomicU32,
    passive_failures: AtomicU32,
    /// `now_ms` until which the backend is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// `now_ms` when it last came back into rotation (for slow start).
    back_at: AtomicU64,
    last: Mutex<Option<CheckRecord>>,
}

impl BackendHealth {
    fn new(service: &str, pool: &str, addr: SocketAddr) -> Self {
        BackendHealth {
            service: service.to_string(),
            pool: pool.to_string(),
            addr,
            active: AtomicU8::new(UNKNOWN),
            pass_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            back_at: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Whether selection may pick this backend.
    pub fn available(&self) -> bool {
        if self.active.load(Ordering::Relaxed) == UNHEALTHY {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Fraction of its full share the backend takes now: below 1 during the
    /// slow-start `window` after it came back into rotation.
    pub fn ramp(&self, window: Duration) -> f64 {
        let back = self.back_at.load(Ordering::Relaxed);
        if back == 0 {
            return 1.0;
        }
        let elapsed = now_ms().saturating_sub(back) as f64;
        (elapsed / window.as_millis().max(1) as f64).min(1.0)
    }

    /// Records a request that reached the backend and got a good answer.
    pub fn record_success(&self) {
        // Read first: a store on every request would bounce the cache line.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed request; ejects the backend when the failures in a
    /// row reach the threshold and `pool` can spare it.
    pub fn record_failure(&self, outlier: &Outlier, pool: &[BackendRt], reason: &str) {
        let failures = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < outlier.consecutive_failures || !self.available() {
            return;
        }
        let now = now_ms();
        let ejected = pool
            .iter()
            .filter(|b| {
                let until = b.health.ejected_until.load(Ordering::Relaxed);
                until != 0 && until > now
            })
            .count();
        let others_available = pool
            .iter()
            .any(|b| !std::ptr::eq(&*b.health, self) && b.available());
        let within_cap = (ejected + 1) * 100 <= outlier.max_ejected_percent as usize * pool.len();
        if !others_available || !within_cap {
            return;
        }
        let n = self.ejections.load(Ordering::Relaxed).min(16);
        let time = (outlier.base_ejection * 2u32.pow(n)).min(outlier.max_ejection);
        let until = now + time.as_millis() as u64;
        if self
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.passive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            service = %self.service, pool = %self.pool, backend = %self.addr,
            failures, ejection = ?time, last = %reason,
            "backend ejected: failed requests in a row"
        );
    }

    /// Ends an ejection whose time is up.
    fn end_expired_ejection(&self, now: u64) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && until <= now
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.back_at.store(now, Ordering::Relaxed);
            tracing::info!(
                service = %self.service, pool = %self.pool, backend = %self.addr,
                "backend back in rotation: ejection time is up"
            );
        }
    }

    /// Applies one active probe's outcome.
    fn probe_result(&self, ok: bool, detail: String, check: &HealthCheck) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(CheckRecord {
                at: SystemTime::now(),
                ok,
                detail: detail.clone(),
            });
        }
        let state = self.active.load(Ordering::Relaxed);
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let passes = self.pass_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if state == UNHEALTHY && passes >= check.healthy_threshold {
                self.active.store(HEALTHY, Ordering::Relaxed);
                self.back_at.store(now_ms(), Ordering::Relaxed);
                tracing::info!(
                    service = %self.service, pool = %self.pool, backend = %self.addr,
                    passes, "backend healthy: checks passed in a row"
                );
            } else if state == UNKNOWN {
                self.active.store(HEALTHY, Ordering::Relaxed);
            }
            // Passing checks end an ejection early.
            if passes >= check.healthy_threshold
                && self.ejected_until.swap(0, Ordering::AcqRel) != 0
            {
                self.back_at.store(now_ms(), Ordering::Relaxed);
                tracing::info!(
                    service = %self.service, pool = %self.pool, backend = %self.addr,
                    "backend back in rotation: health checks pass"
                );
            }
        } else {
            self.pass_streak.store(0, Ordering::Relaxed);
            let failures = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            let first_verdict = state == UNKNOWN;
            if state != UNHEALTHY && (first_verdict || failures >= check.unhealthy_threshold) {
                self.active.store(UNHEALTHY, Ordering::Relaxed);
                tracing::warn!(
                    service = %self.service, pool = %self.pool, backend = %self.addr,
                    failures, last = %detail,
                    "backend unhealthy: checks failed in a row"
                );
            }
        }
    }

    /// What the admin API and metrics read.
    pub fn report(&self) -> BackendReport {
        let active = self.active.load(Ordering::Relaxed);
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ejected = until != 0 && until > now_ms();
        BackendReport {
            service: self.service.clone(),
            pool: self.pool.clone(),
            addr: self.addr,
            state: match (active, ejected) {
                (UNHEALTHY, _) => BackendState::Unhealthy,
                (_, true) => BackendState::Ejected {
                    until: wall_clock_at(until),
                },
                (HEALTHY, false) => BackendState::Healthy,
                _ => BackendState::Unknown,
            },
            last_check: self.last.lock().ok().and_then(|l| l.clone()),
            consecutive_failures: self
                .fail_streak
                .load(Ordering::Relaxed)
                .max(self.passive_failures.load(Ordering::Relaxed)),
        }
    }
}

/// A backend's state as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    /// Not checked yet (and not ejected): in rotation.
    Unknown,
    /// Passing its checks: in rotation.
    Healthy,
    /// Failing its checks: out of rotation.
    Unhealthy,
    /// Out of rotation after failing live requests, until the given time.
    Ejected {
        /// When the ejection ends.
        until: SystemTime,
    },
}

/// One backend's health, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    /// Service name.
    pub service: String,
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub addr: SocketAddr,
    /// Current state.
    pub state: BackendState,
    /// The latest active probe, if any.
    pub last_check: Option<CheckRecord>,
    /// Failures in a row (active checks or live requests, the larger).
    pub consecutive_failures: u32,
}

/// Service-wide health: whether the service is in panic mode.
#[derive(Debug)]
pub struct ServiceHealth {
    name: String,
    panic: AtomicBool,
}

impl ServiceHealth {
    /// Whether no backend of the service is available, so every backend is
    /// tried rather than failing every request.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Enters or leaves panic mode, logging each change once.
    pub fn set_panic(&self, panic: bool) {
        if self.panic.load(Ordering::Relaxed) == panic {
            return;
        }
        if self.panic.swap(panic, Ordering::AcqRel) != panic {
            if panic {
                tracing::error!(
                    service = %self.name,
                    "panic mode: no backend is available; trying every backend"
                );
            } else {
                tracing::info!(service = %self.name, "panic mode over: backends available again");
            }
        }
    }
}

type BackendKey = (String, String, SocketAddr);

/// Health state of every backend, kept across config generations.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    backends: Mutex<HashMap<BackendKey, Arc<BackendHealth>>>,
    services: Mutex<HashMap<String, Arc<ServiceHealth>>>,
    stats: Mutex<HashMap<(String, String), Arc<crate::PoolStats>>>,
}

impl HealthRegistry {
    /// The state of `addr` in `pool` of `service`, new or carried over.
    pub fn backend(&self, service: &str, pool: &str, addr: SocketAddr) -> Arc<BackendHealth> {
        let mut map = match self.backends.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry((service.to_string(), pool.to_string(), addr))
            .or_insert_with(|| Arc::new(BackendHealth::new(service, pool, addr)))
            .clone()
    }

    /// The request outcomes of `pool` of `service`, new or carried over
    /// (what a rollout judge reads; metrics handles cannot be read back).
    pub fn pool_stats(&self, service: &str, pool: &str) -> Arc<crate::PoolStats> {
        let mut map = match self.stats.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry((service.to_string(), pool.to_string()))
            .or_default()
            .clone()
    }

    /// The service-wide state of `service`, new or carried over.
    pub fn service(&self, service: &str) -> Arc<ServiceHealth> {
        let mut map = match self.services.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(ServiceHealth {
                    name: service.to_string(),
                    panic: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Forgets backends and services that no snapshot refers to any more.
    pub fn prune(&self) {
        if let Ok(mut map) = self.backends.lock() {
            map.retain(|_, h| Arc::strong_count(h) > 1);
        }
        if let Ok(mut map) = self.services.lock() {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        if let Ok(mut map) = self.stats.lock() {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
    }

    /// Every backend's health, sorted by service, pool and address.
    pub fn report(&self) -> Vec<BackendReport> {
        let mut out: Vec<BackendReport> = match self.backends.lock() {
            Ok(map) => map.values().map(|h| h.report()).collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| (&a.service, &a.pool, a.addr).cmp(&(&b.service, &b.pool, b.addr)));
        out
    }

    /// Names of the services in panic mode.
    pub fn panicking(&self) -> Vec<String> {
        let mut out: Vec<String> = match self.services.lock() {
            Ok(map) => map
                .values()
                .filter(|s| s.in_panic())
                .map(|s| s.name.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }
}

/// Runs the active checks of the current snapshot's pools and ends
/// ejections whose time is up.
pub struct HealthChecker {
    snapshot: SharedSnapshot,
    connector: Arc<Connector>,
}

impl HealthChecker {
    /// A checker following whatever `snapshot` holds.
    pub fn new(snapshot: SharedSnapshot) -> Self {
        HealthChecker {
            snapshot,
            connector: Arc::new(Connector::new(None)),
        }
    }
}

/// What one probe loop checks; a loop is replaced when this changes.
#[derive(PartialEq)]
struct ProbeSpec {
    check: HealthCheck,
    peer: String,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut loops: HashMap<usize, (ProbeSpec, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut generation = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            let snapshot = self.snapshot.load_full();
            let now = now_ms();
            for service in snapshot.services.iter() {
                for pool in service.pools.iter() {
                    for b in pool.backends.iter() {
                        b.health.end_expired_ejection(now);
                    }
                }
            }
            if snapshot.generation == generation {
                continue;
            }
            generation = snapshot.generation;
            let mut wanted: HashMap<usize, ()> = HashMap::new();
            for service in snapshot.services.iter() {
                for pool in service.pools.iter() {
                    let Some(check) = &pool.health_check else {
                        continue;
                    };
                    for b in pool.backends.iter() {
                        let key = Arc::as_ptr(&b.health) as usize;
                        let peer = pool.peer(b.addr, service.connect_timeout.min(check.timeout));
                        let spec = ProbeSpec {
                            check: check.clone(),
                            peer: format!("{peer:?}"),
                        };
                        wanted.insert(key, ());
                        if loops.get(&key).is_some_and(|(s, _)| *s == spec) {
                            continue;
                        }
                        if let Some((_, old)) = loops.remove(&key) {
                            old.abort();
                        }
                        let task = tokio::spawn(probe_loop(
                            b.health.clone(),
                            check.clone(),
                            peer,
                            self.connector.clone(),
                        ));
                        loops.insert(key, (spec, task));
                    }
                }
            }
            loops.retain(|key, (_, task)| {
                let keep = wanted.contains_key(key);
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        for (_, (_, task)) in loops {
            task.abort();
        }
    }
}

async fn probe_loop(
    health: Arc<BackendHealth>,
    check: HealthCheck,
    peer: HttpPeer,
    connector: Arc<Connector>,
) {
    use rand::RngExt;
    loop {
        let (ok, detail) =
            match tokio::time::timeout(check.timeout, probe(&check, &peer, &connector)).await {
                Ok(Ok(detail)) => (true, detail),
                Ok(Err(detail)) => (false, detail),
                Err(_) => (false, format!("no answer within {:?}", check.timeout)),
            };
        health.probe_result(ok, detail, &check);
        let jitter = if check.jitter.is_zero() {
            Duration::ZERO
        } else {
            let max = check.jitter.as_millis().max(1) as u64;
            Duration::from_millis(rand::rng().random_range(0..max))
        };
        tokio::time::sleep(check.interval + jitter).await;
    }
}

/// One probe; `Ok` with what was seen, or `Err` with why it failed.
async fn probe(
    check: &HealthCheck,
    peer: &HttpPeer,
    connector: &Connector,
) -> Result<String, String> {
    let http = match &check.kind {
        CheckKind::Tcp => {
            let addr = match peer._address {
                pingora_core::protocols::l4::socket::SocketAddr::Inet(a) => a,
                _ => return Err("not a TCP backend".into()),
            };
            return tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| "connected".to_string())
                .map_err(|e| format!("connect: {e}"));
        }
        CheckKind::Http(http) => http,
    };
    let (mut session, _) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = RequestHeader::build(http.method.as_str(), http.path.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    let host = http
        .host
        .clone()
        .unwrap_or_else(|| peer._address.to_string());
    req.insert_header("host", host).map_err(|e| e.to_string())?;
    req.insert_header("user-agent", "switchyard-health-check")
        .map_err(|e| e.to_string())?;
    req.insert_header("connection", "close")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("send: {e}"))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| format!("send: {e}"))?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("response: {e}"))?;
    let status = session
        .response_header()
        .map(|r| r.status.as_u16())
        .ok_or_else(|| "no response".to_string())?;
    session.shutdown().await;
    let good = if http.expect_status.is_empty() {
        (200..400).contains(&status)
    } else {
        http.expect_status.contains(&status)
    };
    if good {
        Ok(format!("status {status}"))
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn probes_move_state_with_thresholds_and_report_it() {
        let registry = HealthRegistry::default();
        let b = registry.backend("shop", "blue", addr(1));
        assert_eq!(b.report().state, BackendState::Unknown);
        b.probe_result(true, "status 200".into(), &check());
        assert_eq!(b.report().state, BackendState::Healthy);
        b.probe_result(false, "status 500".into(), &check());
        b.probe_result(false, "status 500".into(), &check());
        assert!(
            b.available(),
            "two failures are below the threshold of three"
        );
        b.probe_result(false, "status 503".into(), &check());
        let report = b.report();
        assert_eq!(report.state, BackendState::Unhealthy);
        assert_eq!(report.consecutive_failures, 3);
        let last = report.last_check.expect("last check");
        assert_eq!((last.ok, last.detail.as_str()), (false, "status 503"));
        b.probe_result(true, "status 200".into(), &check());
        assert!(!b.available(), "one pass is below the healthy threshold");
        b.probe_result(true, "status 200".into(), &check());
        assert!(b.available());
        // The same key gives the same state: reloads carry it over.
        assert!(Arc::ptr_eq(&b, &registry.backend("shop", "blue", addr(1))));
        assert_eq!(registry.report().len(), 1);
    }

    #[test]
    fn ejection_spares_the_last_backend_and_respects_the_cap() {
        let registry = HealthRegistry::default();
        let pool: Vec<BackendRt> = (1..=2)
            .map(|p| BackendRt {
                addr: addr(p),
                health: registry.backend("s", "p", addr(p)),
                draining: false,
                peer: std::sync::OnceLock::new(),
            })
            .collect();
        let outlier = Outlier {
            consecutive_failures: 2,
            max_ejected_percent: 50,
            ..Outlier::default()
        };
        pool[0].health.record_failure(&outlier, &pool, "refused");
        assert!(pool[0].health.available(), "one failure of two");
        pool[0].health.record_failure(&outlier, &pool, "refused");
        assert!(!pool[0].health.available(), "ejected");
        assert!(matches!(
            pool[0].health.report().state,
            BackendState::Ejected { .. }
        ));
        for _ in 0..5 {
            pool[1].health.record_failure(&outlier, &pool, "refused");
        }
        assert!(
            pool[1].health.available(),
            "the last available backend is never ejected"
        );
    }
}

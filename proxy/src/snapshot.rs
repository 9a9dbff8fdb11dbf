//! One config generation, compiled for the request path.
//!
//! A [`Snapshot`] is built from a validated [`Config`] away from the request
//! path, then published with one `ArcSwap::store`. A request pins one
//! snapshot for its whole life, so it never sees two generations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::RandomState;
use http::HeaderValue;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use switchyard_config::{Config, HealthCheck, HostMatch, Outlier, Sticky};

use crate::health::{BackendHealth, HealthRegistry, ServiceHealth};
use crate::metrics::{PoolMetrics, RETRIES};

/// CA certificates (DER) to trust for upstream TLS, by the `ca` file they
/// were read from; loaded and checked before a snapshot is built.
pub type CaBundles = HashMap<PathBuf, Vec<Vec<u8>>>;

/// Everything one config generation needs on the request path.
#[derive(Debug)]
pub struct Snapshot {
    /// The reload generation this snapshot was built for (1 = first load).
    pub generation: u64,
    /// Host and path routing table.
    pub router: Router,
    /// Services in the order of [`Config::services`].
    pub services: Box<[ServiceRt]>,
    /// Port of the HTTPS listener, for redirects (`None`: no HTTPS).
    pub https_port: Option<u16>,
    /// `Strict-Transport-Security` value for HTTPS responses, if configured.
    pub hsts: Option<HeaderValue>,
    /// Whether ACME HTTP-01 challenges are answered by the proxy itself.
    pub acme: bool,
    /// Request limits and trusted proxies.
    pub http: switchyard_config::HttpSettings,
}

impl Snapshot {
    /// The service named `name`, if this generation has it.
    pub fn service(&self, name: &str) -> Option<&ServiceRt> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Compiles `config` into a snapshot tagged with `generation`. `cas`
    /// holds every `ca` file the pools name; a pool whose file is missing
    /// from it trusts the system roots. Backends take their health state
    /// from `health`, so state carries over from earlier generations.
    pub fn build(
        config: &Config,
        generation: u64,
        cas: &CaBundles,
        health: &HealthRegistry,
    ) -> Snapshot {
        let index: HashMap<&str, u32> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i as u32))
            .collect();
        let mut router = Router::default();
        for route in &config.routes {
            // Validation guarantees the service exists.
            let Some(&service) = index.get(route.service.as_str()) else {
                continue;
            };
            let table = match &route.host {
                HostMatch::Any => &mut router.any,
                HostMatch::Exact(h) => router.exact.entry(h.as_str().into()).or_default(),
                HostMatch::Wildcard(h) => router.wildcard.entry(h.as_str().into()).or_default(),
            };
            table.insert(
                &route.path,
                RouteTarget {
                    service,
                    https_redirect: route.https_redirect,
                },
            );
        }
        let services = config
            .services
            .iter()
            .map(|s| {
                let pools: Box<[PoolRt]> = s
                    .pools
                    .iter()
                    .map(|p| PoolRt {
                        name: p.name.clone(),
                        share: p.share,
                        backends: p
                            .backends
                            .iter()
                            .map(|&addr| BackendRt {
                                addr,
                                health: health.backend(&s.name, &p.name, addr),
                                draining: p.drain.contains(&addr),
                                peer: std::sync::OnceLock::new(),
                            })
                            .collect(),
                        health_check: p.health.clone(),
                        metrics: PoolMetrics::new(&s.name, &p.name),
                        stats: health.pool_stats(&s.name, &p.name),
                        tls: p.tls.as_ref().map(|t| PoolTls {
                            sni: t.sni.clone(),
                            verify: t.verify,
                            ca: t.ca.as_ref().and_then(|path| cas.get(path)).map(|ders| {
                                let certs: Vec<WrappedX509> = ders
                                    .iter()
                                    .map(|der| WrappedX509::new(der.clone(), parse_x509))
                                    .collect();
                                Arc::<CaType>::from(certs.into_boxed_slice())
                            }),
                        }),
                        // A random start keeps reloads from piling the first
                        // requests of every generation onto backend 0.
                        next: AtomicUsize::new(rand::random::<u16>() as usize),
                    })
                    .collect();
                let mut by_share: Vec<u16> = (0..pools.len() as u16)
                    .filter(|&i| pools[i as usize].share > 0)
                    .collect();
                by_share.sort_by_key(|&i| std::cmp::Reverse(pools[i as usize].share));
                ServiceRt {
                    name: s.name.clone(),
                    total_share: pools.iter().map(|p| p.share).sum(),
                    pools,
                    fallback: by_share.into_boxed_slice(),
                    connect_timeout: s.connect_timeout,
                    read_timeout: s.read_timeout,
                    write_timeout: s.write_timeout,
                    request_timeout: s.request_timeout,
                    outlier: s.outlier.clone(),
                    slow_start: s.slow_start,
                    health: health.service(&s.name),
                    retries: metrics::counter!(RETRIES, "service" => s.name.clone()),
                    sticky: match &s.sticky {
                        Some(Sticky::Off) | None => None,
                        Some(other) => Some(other.clone()),
                    },
                    override_header: s
                        .override_header
                        .as_deref()
                        .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
                    override_cookie: s.override_cookie.clone(),
                    override_secret: s.override_secret.clone(),
                    rollout: s.rollout.clone(),
                }
            })
            .collect();
        Snapshot {
            generation,
            router,
            services,
            https_port: config.listen.https.map(|a| a.port()),
            acme: config.acme.is_some(),
            http: config.http.clone(),
            hsts: config
                .tls
                .hsts
                .as_ref()
                .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
        }
    }
}

/// Host (exact, then wildcard, then any) and longest path prefix to service.
///
/// Host lookups are hash lookups, so the cost of a request does not grow with
/// the number of hosts; only the routes of the matching host are scanned.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, PathTable, RandomState>,
    wildcard: HashMap<Box<str>, PathTable, RandomState>,
    any: PathTable,
}

impl Router {
    /// The route for `host` (lower case, no port) and `path`.
    ///
    /// The most specific host that has a route for the path wins; within a
    /// host, the longest matching prefix wins.
    pub fn route(&self, host: &str, path: &str) -> Option<RouteTarget> {
        if let Some(service) = self.exact.get(host).and_then(|t| t.lookup(path)) {
            return Some(service);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(service) = self.wildcard.get(rest).and_then(|t| t.lookup(path)) {
                    return Some(service);
                }
            }
        }
        self.any.lookup(path)
    }
}

/// Where a matched route sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    /// Index into [`Snapshot::services`].
    pub service: u32,
    /// Whether plain HTTP requests are redirected to HTTPS.
    pub https_redirect: bool,
}

/// The path prefixes of one host, longest first.
#[derive(Debug, Default)]
struct PathTable {
    entries: Vec<(Box<str>, RouteTarget)>,
}

impl PathTable {
    fn insert(&mut self, prefix: &str, target: RouteTarget) {
        let at = self
            .entries
            .partition_point(|(p, _)| p.len() >= prefix.len());
        self.entries.insert(at, (prefix.into(), target));
    }

    fn lookup(&self, path: &str) -> Option<RouteTarget> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|&(_, target)| target)
    }
}

/// Whole-segment prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// A service as the request path sees it.
#[derive(Debug)]
pub struct ServiceRt {
    /// The service's name.
    pub name: String,
    /// Pools in name order (the order of the config model).
    pub pools: Box<[PoolRt]>,
    /// Sum of the pools' shares; never zero.
    pub total_share: u32,
    /// Pools with a non-zero share, largest share first: the order in which
    /// other pools are tried when the picked one has no reachable backend.
    pub fallback: Box<[u16]>,
    /// Budget for one connection attempt.
    pub connect_timeout: Duration,
    /// Longest silence from a backend while its response is awaited or read.
    pub read_timeout: Duration,
    /// Longest stall writing a request to a backend.
    pub write_timeout: Duration,
    /// Longest time for a whole request, if limited.
    pub request_timeout: Option<Duration>,
    /// Passive ejection settings, if enabled.
    pub outlier: Option<Outlier>,
    /// Ramp-up window for backends back in rotation.
    pub slow_start: Option<Duration>,
    /// Service-wide health (panic mode).
    pub health: Arc<ServiceHealth>,
    /// Requests sent to another backend after a failure.
    pub retries: metrics::Counter,
    /// Where a client's stable bucket comes from, if assignment is sticky.
    pub sticky: Option<Sticky>,
    /// Header that forces a pool by name.
    pub override_header: Option<http::HeaderName>,
    /// Cookie that forces a pool by name.
    pub override_cookie: Option<String>,
    /// When set, overrides must read `POOL:SECRET`.
    pub override_secret: Option<String>,
    /// The automated rollout, if configured.
    pub rollout: Option<switchyard_config::Rollout>,
}

impl ServiceRt {
    /// The pool whose share covers `ticket`, a number in `0..total_share`.
    pub fn pool_for(&self, ticket: u32) -> u16 {
        self.pool_for_among(ticket, |_| true)
    }

    fn pool_for_among(&self, ticket: u32, counts: impl Fn(&PoolRt) -> bool) -> u16 {
        let mut left = ticket;
        for (i, pool) in self.pools.iter().enumerate() {
            if pool.share == 0 || !counts(pool) {
                continue;
            }
            if left < pool.share {
                return i as u16;
            }
            left -= pool.share;
        }
        // Only reachable with a ticket out of range: use the largest pool.
        self.fallback.first().copied().unwrap_or(0)
    }

    /// A weighted random pool among those with an available backend; a
    /// pool with none lends its share to the others in proportion. With no
    /// backend available anywhere the service is in panic mode and the
    /// configured shares apply to every backend.
    pub fn pick_pool(&self) -> u16 {
        use rand::RngExt;
        self.pick_pool_by(|total| rand::rng().random_range(0..total))
    }

    /// The pool for a client whose stable bucket is `bucket` (uniform over
    /// `u32`): the pools' shares are laid end to end in a fixed order and
    /// the client takes the one its bucket falls in. As one pool's share
    /// grows, clients only ever move into it, never out.
    pub fn pool_for_bucket(&self, bucket: u32) -> u16 {
        self.pick_pool_by(|total| ((u64::from(bucket) * u64::from(total)) >> 32) as u32)
    }

    /// The pool by name, for overrides.
    pub fn pool_named(&self, name: &str) -> Option<u16> {
        self.pools
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as u16)
    }

    fn pick_pool_by(&self, ticket: impl Fn(u32) -> u32) -> u16 {
        let available = |p: &PoolRt| p.backends.iter().any(BackendRt::available);
        let total: u32 = self
            .pools
            .iter()
            .filter(|p| p.share > 0 && available(p))
            .map(|p| p.share)
            .sum();
        if total == 0 {
            self.health.set_panic(true);
            return self.pool_for(ticket(self.total_share.max(1)));
        }
        self.health.set_panic(false);
        self.pool_for_among(ticket(total), available)
    }

    /// The next backend to try: available backends first (the chosen pool
    /// round robin, then the other pools that get traffic), then, once those
    /// are exhausted or in panic mode, any backend not yet tried.
    pub fn next_backend(&self, pool: u16, tried: &[(u16, u32)]) -> Option<(u16, u32)> {
        let order = || {
            std::iter::once(pool).chain(self.fallback.iter().copied().filter(move |&p| p != pool))
        };
        let panic = self.health.in_panic();
        if !panic {
            if let Some(found) =
                order().find_map(|p| self.next_in_pool(p, tried, true).map(|b| (p, b)))
            {
                return Some(found);
            }
        }
        order().find_map(|p| self.next_in_pool(p, tried, false).map(|b| (p, b)))
    }

    fn next_in_pool(&self, pool: u16, tried: &[(u16, u32)], available_only: bool) -> Option<u32> {
        let p = self.pools.get(pool as usize)?;
        let n = p.backends.len();
        if n == 0 {
            return None;
        }
        let start = p.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut ramping = None;
        for k in 0..n {
            let i = (start + k) % n;
            let b = &p.backends[i];
            if b.draining
                || tried.contains(&(pool, i as u32))
                || (available_only && !b.health.available())
            {
                continue;
            }
            if let Some(window) = self.slow_start {
                let ramp = b.health.ramp(window);
                if ramp < 1.0 {
                    use rand::RngExt;
                    // Take it with a probability that grows over the window.
                    if rand::rng().random::<f64>() >= ramp.max(0.05) {
                        ramping.get_or_insert(i as u32);
                        continue;
                    }
                }
            }
            return Some(i as u32);
        }
        ramping
    }

    /// Whether any backend that could take this request is not in `tried`.
    pub fn has_untried(&self, pool: u16, tried: &[(u16, u32)]) -> bool {
        std::iter::once(pool)
            .chain(self.fallback.iter().copied())
            .any(|p| {
                self.pools.get(p as usize).is_some_and(|pool_rt| {
                    pool_rt
                        .backends
                        .iter()
                        .enumerate()
                        .any(|(b, rt)| !rt.draining && !tried.contains(&(p, b as u32)))
                })
            })
    }
}

/// A pool as the request path sees it.
#[derive(Debug)]
pub struct PoolRt {
    /// The pool's name.
    pub name: String,
    /// Relative share of the service's traffic.
    pub share: u32,
    /// The pool's backends.
    pub backends: Box<[BackendRt]>,
    /// TLS to the backends, if they speak HTTPS.
    pub tls: Option<PoolTls>,
    /// The active health check, if any.
    pub health_check: Option<HealthCheck>,
    /// Metric handles.
    pub metrics: PoolMetrics,
    /// Outcomes a rollout judge reads (kept across reloads).
    pub stats: Arc<crate::PoolStats>,
    next: AtomicUsize,
}

impl PoolRt {
    /// The peer for `addr` of this pool: plain or TLS as configured.
    pub fn peer(&self, addr: SocketAddr, connect_timeout: Duration) -> HttpPeer {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                // Without a name, the backend's IP address is what the
                // certificate must cover (an empty SNI would skip checks).
                let sni = tls.sni.clone().unwrap_or_else(|| addr.ip().to_string());
                let mut peer = HttpPeer::new(addr, true, sni);
                peer.options.verify_cert = tls.verify;
                peer.options.verify_hostname = tls.verify;
                peer.options.ca = tls.ca.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(connect_timeout);
        // The framework's pass over request headers (a lookup per
        // hop-by-hop name, present or not) is replaced by the proxy's own
        // single pass over the names the request has, which also does the
        // forwarded headers: see `Proxy::upstream_request_filter`.
        peer.options.http_upstream_request_policy =
            pingora_core::upstreams::peer::HttpUpstreamRequestPolicy::preserve();
        peer
    }
}

/// A backend as the request path sees it.
#[derive(Debug)]
pub struct BackendRt {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its health, shared with earlier and later generations.
    pub health: Arc<BackendHealth>,
    /// Being drained: gets no new requests.
    pub draining: bool,
    /// Its peer (see [`PoolRt::peer`]) with the service's timeouts and its
    /// hash for the connection pool, built for its first request and
    /// shared by the next ones.
    pub peer: std::sync::OnceLock<Arc<pingora_core::upstreams::peer::HttpPeer>>,
}

impl BackendRt {
    /// Whether new requests may go to this backend now.
    pub fn available(&self) -> bool {
        !self.draining && self.health.available()
    }
}

/// How a pool's backends are reached over TLS.
#[derive(Debug)]
pub struct PoolTls {
    /// Name to send and verify; `None`: verify the backend's IP address.
    pub sni: Option<String>,
    /// Whether the certificate is verified.
    pub verify: bool,
    /// CA certificates to trust; `None`: the system roots.
    pub ca: Option<Arc<CaType>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(text: &str) -> Snapshot {
        let config = Config::parse(text, "t.toml").expect("valid config");
        Snapshot::build(&config, 1, &CaBundles::new(), &HealthRegistry::default())
    }

    const ROUTES: &str = r#"
[listen]
http = "127.0.0.1:1"
[[routes]]
host = "shop.example.com"
path = "/api"
service = "api"
[[routes]]
host = "shop.example.com"
service = "shop"
[[routes]]
host = "*.example.com"
service = "wild"
[[routes]]
host = "*.deep.example.com"
path = "/x"
service = "deep"
[[routes]]
path = "/"
service = "fallback"
[services.api.pools.p]
backends = ["127.0.0.1:2"]
[services.shop.pools.p]
backends = ["127.0.0.1:3"]
[services.wild.pools.p]
backends = ["127.0.0.1:4"]
[services.deep.pools.p]
backends = ["127.0.0.1:5"]
[services.fallback.pools.p]
backends = ["127.0.0.1:6"]
"#;

    fn route<'a>(s: &'a Snapshot, host: &str, path: &str) -> Option<&'a str> {
        s.router
            .route(host, path)
            .map(|t| s.services[t.service as usize].name.as_str())
    }

    #[test]
    fn host_then_longest_prefix() {
        let s = snapshot(ROUTES);
        assert_eq!(route(&s, "shop.example.com", "/api/v1"), Some("api"));
        assert_eq!(route(&s, "shop.example.com", "/api"), Some("api"));
        assert_eq!(route(&s, "shop.example.com", "/apiary"), Some("shop"));
        assert_eq!(route(&s, "a.example.com", "/"), Some("wild"));
        assert_eq!(route(&s, "a.b.example.com", "/"), Some("wild"));
        assert_eq!(route(&s, "a.deep.example.com", "/x/y"), Some("deep"));
        assert_eq!(route(&s, "a.deep.example.com", "/y"), Some("wild"));
        assert_eq!(route(&s, "example.com", "/"), Some("fallback"));
        assert_eq!(route(&s, "other.org", "/z"), Some("fallback"));
    }

    #[test]
    fn no_route_without_catch_all() {
        let s = snapshot(
            "[listen]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nhost = \"a.com\"\npath = \"/a\"\nservice = \"s\"\n\
             [services.s.pools.p]\nbackends = [\"127.0.0.1:2\"]\n",
        );
        assert_eq!(route(&s, "a.com", "/b"), None);
        assert_eq!(route(&s, "b.com", "/a"), None);
    }

    const SPLIT: &str = r#"
[listen]
http = "127.0.0.1:1"
[services.s]
split = { blue = 90, green = 10, idle = 0 }
[services.s.pools.blue]
backends = ["127.0.0.1:2", "127.0.0.1:3"]
[services.s.pools.green]
backends = ["127.0.0.1:4"]
[services.s.pools.idle]
backends = ["127.0.0.1:5"]
"#;

    #[test]
    fn tickets_follow_shares() {
        let s = snapshot(SPLIT);
        let svc = &s.services[0];
        let names: Vec<&str> = (0..100)
            .map(|t| svc.pools[svc.pool_for(t) as usize].name.as_str())
            .collect();
        assert_eq!(names.iter().filter(|n| **n == "blue").count(), 90);
        assert_eq!(names.iter().filter(|n| **n == "green").count(), 10);
        assert!(!names.contains(&"idle"));
    }

    #[test]
    fn retries_walk_the_pool_then_other_pools_never_idle_ones() {
        let s = snapshot(SPLIT);
        let svc = &s.services[0];
        let blue = 0u16;
        let mut tried = Vec::new();
        while let Some(next) = svc.next_backend(blue, &tried) {
            assert!(!tried.contains(&next));
            tried.push(next);
        }
        let addrs: Vec<String> = tried
            .iter()
            .map(|&(p, b)| svc.pools[p as usize].backends[b as usize].addr.to_string())
            .collect();
        assert_eq!(addrs.len(), 3, "{addrs:?}");
        assert_eq!(
            addrs[2], "127.0.0.1:4",
            "green comes after both blue backends"
        );
        assert!(!svc.has_untried(blue, &tried));
    }
}

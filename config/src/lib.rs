//! Switchyard configuration: the TOML file schema turned into a validated model.
//!
//! This crate owns the meaning of the config file and nothing else: it reads
//! text, reports every problem it finds (file, line, column, key path), and
//! hands out a [`Config`] only when the whole file is valid, so holding a
//! `Config` proves it can be served. It must not import tokio, pingora,
//! rustls or tracing: the runtime crates build their own state from this
//! model.
//!
//! Start with [`Config::load`] and [`Config::parse`]; the walk over the file
//! is in `parse.rs`, and every key is documented in `docs/config.md`.

mod error;
mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Diagnostic, Diagnostics, LoadError};

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listening sockets (process-level: a change needs a restart).
    pub listen: Listen,
    /// Process settings (process-level: a change needs a restart).
    pub server: ServerSettings,
    /// Certificates and HTTPS policy.
    pub tls: Tls,
    /// Certificates obtained and renewed automatically, if configured.
    pub acme: Option<Acme>,
    /// Admin API settings.
    pub admin: Admin,
    /// Request limits and the proxies whose forwarding headers are believed.
    pub http: HttpSettings,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Services sorted by name.
    pub services: Vec<Service>,
}

/// The addresses Switchyard listens on; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Plain HTTP listener.
    pub http: Option<SocketAddr>,
    /// HTTPS listener (HTTP/1.1 and HTTP/2 over TLS).
    pub https: Option<SocketAddr>,
    /// Admin API listener.
    pub admin: Option<SocketAddr>,
    /// Whether the HTTP and HTTPS listeners expect a PROXY protocol header
    /// (v1 or v2) first, from an L4 balancer, and take the client address
    /// from it.
    pub proxy_protocol: bool,
}

/// The admin API's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// Append-only JSON lines, one per change.
    pub audit_log: Option<PathBuf>,
    /// Who may call the API; none means no authentication (loopback only).
    pub tokens: Vec<AdminToken>,
}

/// An admin API bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Name recorded in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where its secret is.
    pub source: TokenSource,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read status and metrics.
    Read,
    /// Read, and change traffic.
    Write,
}

/// Where a token's secret is kept (never in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding the secret (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

/// Certificates served on the HTTPS listener, and HTTPS policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// Certificate files; non-empty exactly when there is an HTTPS listener.
    pub certificates: Vec<CertificateFiles>,
    /// `Strict-Transport-Security` for HTTPS responses, if wanted.
    pub hsts: Option<Hsts>,
}

/// Automatic certificates over ACME (HTTP-01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact URLs for the account, such as `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// Where the account, certificates and keys are kept.
    pub state_dir: PathBuf,
    /// PEM file of the root that the CA's API certificate chains to, for
    /// private CAs; `None` trusts the system's roots.
    pub ca_root: Option<PathBuf>,
    /// Host names to get certificates for (one certificate each).
    pub hosts: Vec<String>,
    /// Renew when this much validity is left; `None` means a third of the
    /// certificate's lifetime.
    pub renew_before: Option<Duration>,
}

/// One certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM file: the leaf certificate first, then its chain.
    pub cert: PathBuf,
    /// PEM file: the leaf's private key.
    pub key: PathBuf,
    /// Served to clients that send no SNI or a name no certificate covers;
    /// at most one certificate is the default.
    pub default: bool,
}

/// The `Strict-Transport-Security` header's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// How long browsers remember to use HTTPS only.
    pub max_age: Duration,
    /// Whether subdomains are covered too.
    pub include_subdomains: bool,
    /// Whether to ask for inclusion in browsers' preload lists.
    pub preload: bool,
}

impl Hsts {
    /// The header value, for example `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// How a pool's backends are reached over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent as SNI and verified; `None` means the backend's IP
    /// address is verified against the certificate's IP addresses.
    pub sni: Option<String>,
    /// PEM file of the CA certificates to trust; `None` means the system's
    /// trusted roots.
    pub ca: Option<PathBuf>,
    /// Whether the backend's certificate is verified (on unless
    /// `insecure_skip_verify = true`).
    pub verify: bool,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: Duration,
    /// Worker threads for the proxy; `None` means one per CPU.
    pub threads: Option<usize>,
    /// Where access log lines go; `None` for no access log.
    pub access_log: Option<AccessLogTarget>,
}

/// Where the access log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// Limits on what a client may send, and which clients are proxies whose
/// `X-Forwarded-For` and `Forwarded` headers are believed (`[http]`;
/// applied on reload).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Largest request head (request line and headers), in bytes: 431 over it.
    pub max_header_bytes: usize,
    /// Most request headers: 431 over it.
    pub max_headers: usize,
    /// Longest request target, in bytes: 414 over it.
    pub max_uri_bytes: usize,
    /// Largest request body, in bytes: 413 over it.
    pub max_body_bytes: u64,
    /// Clients whose forwarding headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Requests allowed per client address, if limited.
    pub rate_limit: Option<RateLimit>,
    /// How long an idle keep-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Most connections open at once from one client address, if capped.
    pub max_connections_per_client: Option<usize>,
    /// Longest time a client may take to send a request head, from the
    /// connection's start (or a keep-alive request's first byte).
    pub header_timeout: Duration,
}

/// A token bucket per client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            rate_limit: None,
            max_connections_per_client: None,
            keepalive_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// An IP network such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/BITS`, or a lone address (all bits).
    pub fn parse(raw: &str) -> Option<Cidr> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (raw.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Which request hosts a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// Any host (the route has no `host` key).
    Any,
    /// Exactly this host name (lower case, no port).
    Exact(String),
    /// Any host ending in `.` + this suffix, at any depth: `*.example.com`
    /// is stored as `example.com` and matches `a.example.com` and
    /// `a.b.example.com`, but not `example.com` itself.
    Wildcard(String),
}

/// One routing rule: requests for `host` whose path starts with `path` go
/// to `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The hosts this route applies to.
    pub host: HostMatch,
    /// Path prefix, always starting with `/`. It matches whole segments:
    /// `/api` matches `/api` and `/api/v1`, not `/apiary`.
    pub path: String,
    /// Name of the service, known to exist in [`Config::services`].
    pub service: String,
    /// Whether plain HTTP requests get a 308 redirect to HTTPS instead of
    /// being served (ACME challenges are always served).
    pub https_redirect: bool,
}

/// A service: named pools of backends and how traffic is split among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The service's name (its key under `[services]`).
    pub name: String,
    /// Pools sorted by name. Shares are relative weights; at least one is
    /// non-zero, and every pool with a non-zero share has backends.
    pub pools: Vec<Pool>,
    /// How long one connection attempt to a backend may take before the
    /// next backend is tried.
    pub connect_timeout: Duration,
    /// How long a backend may stay silent while a response is awaited or
    /// read: 504 when it passes before the response began.
    pub read_timeout: Duration,
    /// How long writing the request to a backend may stall.
    pub write_timeout: Duration,
    /// The longest a whole request may take, from its arrival to the last
    /// byte of the answer, if limited.
    pub request_timeout: Option<Duration>,
    /// Passive ejection of failing backends; `None` when disabled.
    pub outlier: Option<Outlier>,
    /// Window over which a backend back in rotation ramps up to its full
    /// share; `None` for no ramp.
    pub slow_start: Option<Duration>,
    /// Sticky pool assignment; `None` picks a pool per request.
    pub sticky: Option<Sticky>,
    /// Request header (lower case) that forces a pool by name, for testers.
    pub override_header: Option<String>,
    /// Cookie that forces a pool by name, for testers.
    pub override_cookie: Option<String>,
    /// When set, an override only counts as `POOL:SECRET`.
    pub override_secret: Option<String>,
    /// An automated canary rollout, if configured.
    pub rollout: Option<Rollout>,
}

/// An automated canary rollout (`[services.NAME.rollout]`): the canary's
/// share rises step by step while its measured error rate and latency pass
/// the gates; a failing canary is rolled back to 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The stable pool.
    pub from: String,
    /// The canary pool.
    pub to: String,
    /// Canary share per step, in percent, rising, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step is measured before it is judged.
    pub step_duration: Duration,
    /// Canary requests needed in a step before it is judged.
    pub min_requests: u64,
    /// Highest canary error rate (5xx answers and failed attempts over
    /// attempts) that passes.
    pub max_error_rate: f64,
    /// Highest canary p99 latency that passes, if set.
    pub max_p99: Option<Duration>,
    /// Highest canary p99 as a multiple of the stable pool's, if set.
    pub max_p99_ratio: Option<f64>,
    /// Failed judgements (in a row) that roll the canary back.
    pub failures_before_rollback: u32,
    /// Times a step with too few requests is extended before the rollout
    /// holds and says why.
    pub max_extensions: u32,
    /// An error rate this high, mid-step, rolls back at once.
    pub rollback_error_rate: f64,
    /// Where the rollout is.
    pub state: RolloutState,
    /// Index into `steps` of the current step.
    pub step: usize,
}

/// The settings of `[services.NAME.rollout]` a user sets (the file also
/// holds `state` and `step`, which Switchyard writes).
pub const ROLLOUT_SETTINGS: [&str; 11] = [
    "from",
    "to",
    "steps",
    "step_duration",
    "min_requests",
    "max_error_rate",
    "max_p99",
    "max_p99_ratio",
    "failures_before_rollback",
    "max_extensions",
    "rollback_error_rate",
];

/// Where a rollout is; persisted in the file as `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Stepping and judging.
    Running,
    /// Holding at the current step until resumed.
    Paused,
    /// The canary took all traffic and is the stable pool now.
    Complete,
    /// The canary was sent back to 0.
    RolledBack,
}

impl RolloutState {
    /// The word used in the file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Complete => "complete",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    /// Parses the word used in the file and the API.
    pub fn parse(s: &str) -> Option<RolloutState> {
        match s {
            "running" => Some(RolloutState::Running),
            "paused" => Some(RolloutState::Paused),
            "complete" => Some(RolloutState::Complete),
            "rolled_back" => Some(RolloutState::RolledBack),
            _ => None,
        }
    }
}

impl Rollout {
    /// The canary's share at the current step, in percent.
    pub fn share(&self) -> u32 {
        match self.state {
            RolloutState::Complete => 100,
            RolloutState::RolledBack => 0,
            RolloutState::Running | RolloutState::Paused => {
                self.steps.get(self.step).copied().unwrap_or(0)
            }
        }
    }
}

/// Where a client's stable bucket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Explicitly off (`sticky = false`).
    Off,
    /// A cookie the proxy sets when the client has none.
    Cookie(String),
    /// A request header, such as a user id; clients without it are not sticky.
    Header(String),
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: CheckKind,
    /// Time between probes of one backend.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
    /// Passing probes in a row that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Failing probes in a row that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Random spread added to each interval, so probes do not align.
    pub jitter: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Http(HttpCheck::default()),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            jitter: Duration::from_millis(200),
        }
    }
}

/// The kind of probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP request whose status must be one of the expected ones.
    Http(HttpCheck),
    /// A TCP connection that must be accepted.
    Tcp,
}

/// An HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request path.
    pub path: String,
    /// Request method.
    pub method: String,
    /// `Host` header; `None` sends the backend address.
    pub host: Option<String>,
    /// Statuses that pass; empty means any 2xx or 3xx.
    pub expect_status: Vec<u16>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            path: "/".into(),
            method: "GET".into(),
            host: None,
            expect_status: Vec::new(),
        }
    }
}

/// Passive ejection (outlier detection) from live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// Whether 5xx responses count as failures (connection failures always do).
    pub include_5xx: bool,
    /// First ejection time; each further ejection doubles it.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of a pool that may be ejected at once, in percent. The last
    /// available backend of a pool is never ejected.
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            include_5xx: false,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// A named group of interchangeable backends (one version of a service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool's name, for example `blue` or `green`.
    pub name: String,
    /// Relative share of the service's traffic; 0 means the pool is idle.
    pub share: u32,
    /// Backend addresses, without duplicates.
    pub backends: Vec<SocketAddr>,
    /// Backends being drained: no new requests, in-flight ones finish.
    pub drain: Vec<SocketAddr>,
    /// TLS to the backends, if they speak HTTPS.
    pub tls: Option<UpstreamTls>,
    /// The pool's active health check (its own, or else the service's);
    /// `None` for no active checks.
    pub health: Option<HealthCheck>,
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Config::load_with_text(path).map(|(config, _)| config)
    }

    /// Like [`Config::load`], also returning the text that was validated,
    /// so a watcher can tell later whether the file changed.
    pub fn load_with_text(path: &Path) -> Result<(Config, String), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config =
            Config::parse(&text, &path.display().to_string()).map_err(LoadError::Invalid)?;
        Ok((config, text))
    }

    /// Validates configuration text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
        parse::parse(text, file)
    }

    /// Settings that a running process cannot change, described for a
    /// "restart required" message, comparing `self` (running) with `next`.
    pub fn restart_required(&self, next: &Config) -> Vec<String> {
        let mut changes = Vec::new();
        let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        if self.listen.http != next.listen.http {
            changes.push(format!(
                "listen.http changed from {} to {}",
                show(self.listen.http),
                show(next.listen.http)
            ));
        }
        if self.listen.https != next.listen.https {
            changes.push(format!(
                "listen.https changed from {} to {}",
                show(self.listen.https),
                show(next.listen.https)
            ));
        }
        if self.listen.proxy_protocol != next.listen.proxy_protocol {
            changes.push("listen.proxy_protocol changed".to_string());
        }
        if self.server.access_log != next.server.access_log {
            changes.push("server.access_log changed".to_string());
        }
        if self.server.threads != next.server.threads {
            changes.push("server.threads changed".to_string());
        }
        if self.listen.admin != next.listen.admin {
            changes.push(format!(
                "listen.admin changed from {} to {}",
                show(self.listen.admin),
                show(next.listen.admin)
            ));
        }
        if self.admin != next.admin {
            changes.push("[admin] changed".to_string());
        }
        if self.acme != next.acme {
            changes.push("[acme] changed".to_string());
        }
        if self.server.grace_period != next.server.grace_period {
            changes.push("server.grace_period changed".to_string());
        }
        changes
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.services[i])
    }
}

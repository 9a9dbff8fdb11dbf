//! The pingora `ProxyHttp` implementation: the request path.
//!
//! Phases implemented, in the order pingora calls them:
//!
//! | phase | what it does here |
//! |---|---|
//! | `new_ctx` | pins the current [`Snapshot`] for the whole request |
//! | `request_filter` | routes host + path to a service (404 when none), picks a pool by weight |
//! | `upstream_peer` | next backend: round robin in the pool, then the other pools, skipping tried ones |
//! | `fail_to_connect` | marks the backend tried; retries while an untried backend is left |
//! | `upstream_request_filter` | strips hop-by-hop headers, sets `X-Forwarded-*` |
//! | `response_filter` | strips hop-by-hop headers from the response |
//! | `error_while_proxy` | retries an idempotent request on another backend when nothing reached the client yet |
//! | `fail_to_proxy` | answers 502/503/504 with a short plain-text reason |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use switchyard_certs::ChallengeStore;
use switchyard_config::Sticky;

use crate::headers::{
    forwarded_for, hop_by_hop_names, hop_by_hop_names_and, is_websocket_upgrade, request_host,
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::snapshot::{ServiceRt, Snapshot};

/// The shared, swappable pointer to the current config generation.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// The proxy: stateless apart from the snapshot it reads per request.
pub struct Proxy {
    snapshot: SharedSnapshot,
    in_flight: InFlight,
    challenges: Arc<ChallengeStore>,
    unrouted: metrics::Counter,
    rate_limited: metrics::Counter,
    access_log: Option<Arc<crate::access::AccessLog>>,
    limiter: crate::ratelimit::RateLimiter,
}

impl Proxy {
    /// A proxy serving whatever `snapshot` holds at each request's start,
    /// counting its requests in `in_flight` and answering ACME HTTP-01
    /// challenges from `challenges`.
    pub fn new(
        snapshot: SharedSnapshot,
        in_flight: InFlight,
        challenges: Arc<ChallengeStore>,
        access_log: Option<Arc<crate::access::AccessLog>>,
    ) -> Self {
        Proxy {
            snapshot,
            in_flight,
            challenges,
            access_log,
            limiter: Default::default(),
            unrouted: metrics::counter!(crate::metrics::UNROUTED),
            rate_limited: metrics::counter!("switchyard_rate_limited_total"),
        }
    }
}

/// Number of requests being served and of HTTP/1 client connections open, so
/// shutdown can end as soon as the last one is done instead of always
/// sleeping through the grace period; and whether the process is on its way
/// out, so answers stop keeping connections alive.
#[derive(Clone, Debug, Default)]
pub struct InFlight(
    Arc<AtomicUsize>,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<AtomicUsize>,
);

impl InFlight {
    /// Requests currently being served.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// HTTP/1 client connections open (a connection waiting for a request
    /// it may still be sent counts; once shutdown begins it waits a second
    /// at most).
    pub fn connections(&self) -> usize {
        self.2.load(Ordering::Acquire)
    }

    /// Counts one client connection until the guard is dropped.
    pub fn open_connection(&self) -> ConnectionOpen {
        self.2.fetch_add(1, Ordering::AcqRel);
        ConnectionOpen(self.2.clone())
    }

    /// From now on every answer carries `Connection: close`, so clients
    /// move to a new connection (the process taking over, after an
    /// upgrade) right after an answer, never in the middle of sending a
    /// request on a connection being closed.
    pub fn start_draining(&self) {
        self.1.store(true, Ordering::Release);
    }

    fn draining(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }
}

/// Counts one client connection until dropped.
#[derive(Debug)]
pub struct ConnectionOpen(Arc<AtomicUsize>);

impl Drop for ConnectionOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one request until dropped with its context.
struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    /// Whether the client connection is TLS.
    tls: bool,
    /// Index of the routed service, once routed.
    service: Option<u32>,
    /// The pool currently being tried.
    pool: u16,
    /// The backend of the current attempt.
    current: Option<(u16, u32)>,
    /// The backend of the latest attempt (kept after a failure).
    last: Option<(u16, u32)>,
    /// Backends that failed for this request (allocates only on failure).
    tried: Vec<(u16, u32)>,
    /// When the request started.
    started: std::time::Instant,
    /// A sticky bucket made for this client, to hand back in a cookie.
    new_bucket: Option<u32>,
    /// Request body bytes read so far.
    body_bytes: u64,
    /// The request's id: the client's `X-Request-Id`, or one made here.
    request_id: Option<HeaderValue>,
    /// When the latest upstream attempt started, and how long until its
    /// response header came.
    upstream_started: Option<std::time::Instant>,
    upstream_took: Option<std::time::Duration>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn service(&self) -> Option<&ServiceRt> {
        self.service
            .and_then(|i| self.snapshot.services.get(i as usize))
    }

    /// Records the current backend as failed (for this request, and as
    /// evidence for passive ejection); whether another one is left.
    fn fail_current(&mut self, reason: &dyn std::fmt::Display) -> bool {
        if let Some(current) = self.current {
            self.record_outcome(current, Some(reason));
            if let Some(p) = self.service().and_then(|s| s.pools.get(current.0 as usize)) {
                p.stats.record_failed_attempt();
            }
        }
        self.skip_current()
    }

    /// Leaves the current backend for this request without holding it
    /// against the backend; whether another one is left.
    fn skip_current(&mut self) -> bool {
        if let Some(current) = self.current.take() {
            self.tried.push(current);
        }
        self.service()
            .is_some_and(|s| s.has_untried(self.pool, &self.tried))
    }

    /// Feeds passive health: `failure` is `None` for a good answer.
    fn record_outcome(&self, (pool, backend): (u16, u32), failure: Option<&dyn std::fmt::Display>) {
        let Some(service) = self.service() else {
            return;
        };
        let Some(outlier) = &service.outlier else {
            return;
        };
        let Some(pool_rt) = service.pools.get(pool as usize) else {
            return;
        };
        let Some(b) = pool_rt.backends.get(backend as usize) else {
            return;
        };
        match failure {
            None => b.health.record_success(),
            Some(reason) => {
                b.health
                    .record_failure(outlier, &pool_rt.backends, &reason.to_string())
            }
        }
    }

    fn service_name(&self) -> &str {
        self.service().map_or("?", |s| s.name.as_str())
    }
}

const NOT_FOUND: &str = "404 Not Found: no route matches this host and path\n";
const NO_HOST: &str = "400 Bad Request: the request names no host\n";
/// ACME HTTP-01 challenges must be answered over plain HTTP.
const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Writes a complete plain-text response, keeping the connection open.
async fn respond_text(
    session: &mut Session,
    status: u16,
    body: impl Into<Bytes>,
    location: Option<String>,
) -> Result<()> {
    let body: Bytes = body.into();
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len())?;
    if let Some(location) = location {
        resp.insert_header("location", location)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// An error answer of our own: a short text body, never cached.
async fn respond_error(session: &mut Session, code: u16, body: String) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len())?;
    resp.insert_header("cache-control", "private, no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `429 Too Many Requests` with `Retry-After` in whole seconds (at least 1).
async fn too_many_requests(session: &mut Session, wait: std::time::Duration) -> Result<()> {
    let body = Bytes::from_static(b"429 Too Many Requests: slow down\n");
    let mut resp = ResponseHeader::build(429, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len())?;
    resp.insert_header(
        "retry-after",
        wait.as_secs_f64().ceil().max(1.0).to_string(),
    )?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// FNV-1a: a hash that is the same in every process and version, so a
/// header-based bucket survives restarts.
fn stable_hash(bytes: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// The bucket in cookie `name` (8 hex digits), if the client sent one.
fn cookie_bucket(headers: &http::HeaderMap, name: &str) -> Option<u32> {
    u32::from_str_radix(cookie_value(headers, name)?, 16).ok()
}

/// The value of cookie `name`, if the request carries it.
fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim())
        })
}

/// The pool a tester's override header or cookie forces, if any: the
/// pool's name, or `POOL:SECRET` when the service sets a secret (a wrong
/// or missing secret is ignored, and the request is assigned as usual).
fn override_pool(s: &ServiceRt, headers: &http::HeaderMap) -> Option<u16> {
    let raw = s
        .override_header
        .as_ref()
        .and_then(|h| headers.get(h)?.to_str().ok())
        .or_else(|| cookie_value(headers, s.override_cookie.as_deref()?))?
        .trim();
    let name = match &s.override_secret {
        None => raw,
        Some(secret) => {
            let (name, given) = raw.split_once(':')?;
            if !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
                return None;
            }
            name
        }
    };
    s.pool_named(name)
}

/// Compares secrets without saying through timing where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `https://host[:port]/path?query` for a plain HTTP request.
fn https_location(host: &str, port: Option<u16>, uri: &http::Uri) -> String {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    match port {
        Some(443) | None => format!("https://{host}{target}"),
        Some(port) => format!("https://{host}:{port}{target}"),
    }
}

impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None. The framework's default is a response compression module
        // at level 0, which compresses nothing but still costs every
        // request an allocation for its state and two boxed header filters.
    }

    /// `http.keepalive_timeout` closes HTTP/2 connections too, once no
    /// stream is in flight (a connection that never sends a request
    /// included); read per connection, so a reload applies to new ones.
    fn h2_idle_timeout(&self) -> Option<std::time::Duration> {
        Some(self.snapshot.load().http.keepalive_timeout)
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.snapshot.load_full(),
            tls: false,
            service: None,
            pool: 0,
            current: None,
            last: None,
            tried: Vec::new(),
            started: std::time::Instant::now(),
            new_bucket: None,
            body_bytes: 0,
            request_id: None,
            upstream_started: None,
            upstream_took: None,
            _in_flight: self.in_flight.enter(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        if let Err(refused) = crate::guard::check(
            req.version,
            req.uri.authority().is_some(),
            req.raw_path().len(),
            &req.headers,
            session.simple_framing(),
            &ctx.snapshot.http,
        ) {
            // Nothing after a refused head is read as a request.
            session.set_keepalive(None);
            respond_text(session, refused.status, refused.body, None).await?;
            return Ok(true);
        }
        let req = session.req_header();
        ctx.request_id = Some(request_id(&req.headers));
        let path = req.uri.path();
        if ctx.snapshot.acme && !ctx.tls {
            if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
                // Answered here, before routing and redirects.
                match self.challenges.get(token) {
                    Some(answer) => respond_text(session, 200, answer, None).await?,
                    None => {
                        respond_text(
                            session,
                            404,
                            "404 Not Found: unknown ACME challenge token\n",
                            None,
                        )
                        .await?
                    }
                }
                return Ok(true);
            }
        }
        if let Some(limit) = ctx.snapshot.http.rate_limit {
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            if let Some(peer) = peer {
                let client = crate::headers::client_ip(
                    peer,
                    &req.headers,
                    &ctx.snapshot.http.trusted_proxies,
                );
                let taken = self.limiter.take(
                    client,
                    limit.requests_per_second,
                    f64::from(limit.burst),
                    std::time::Instant::now(),
                );
                if let Err(wait) = taken {
                    self.rate_limited.increment(1);
                    too_many_requests(session, wait).await?;
                    return Ok(true);
                }
            }
        }
        let req = session.req_header();
        let host = request_host(&req.uri, &req.headers);
        let Some(target) = ctx.snapshot.router.route(&host, path) else {
            self.unrouted.increment(1);
            respond_text(session, 404, NOT_FOUND, None).await?;
            return Ok(true);
        };
        if target.https_redirect && !ctx.tls && !path.starts_with(ACME_CHALLENGE_PREFIX) {
            if host.is_empty() {
                respond_text(session, 400, NO_HOST, None).await?;
                return Ok(true);
            }
            let location = https_location(&host, ctx.snapshot.https_port, &req.uri);
            respond_text(
                session,
                308,
                "308 Permanent Redirect: use HTTPS\n",
                Some(location),
            )
            .await?;
            return Ok(true);
        }
        ctx.service = Some(target.service);
        let Some(s) = ctx.snapshot.services.get(target.service as usize) else {
            return Ok(false);
        };
        let forced = if s.override_header.is_some() || s.override_cookie.is_some() {
            override_pool(s, &req.headers)
        } else {
            None
        };
        ctx.pool = match (forced, &s.sticky) {
            (Some(pool), _) => pool,
            (None, None) => s.pick_pool(),
            (None, Some(sticky)) => {
                let bucket = match sticky {
                    Sticky::Header(name) => req
                        .headers
                        .get(name.as_str())
                        .map(|v| stable_hash(v.as_bytes())),
                    Sticky::Cookie(name) => cookie_bucket(&req.headers, name),
                    Sticky::Off => None,
                };
                match (bucket, sticky) {
                    (Some(b), _) => s.pool_for_bucket(b),
                    (None, Sticky::Cookie(_)) => {
                        use rand::RngExt;
                        let b: u32 = rand::rng().random();
                        ctx.new_bucket = Some(b);
                        s.pool_for_bucket(b)
                    }
                    (None, _) => s.pick_pool(),
                }
            }
        };
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // The framework asks `upstream_peer_shared`; this is the same peer,
        // owned.
        let peer = self.upstream_peer_shared(session, ctx).await?;
        Ok(Box::new(HttpPeer::clone(&peer)))
    }

    async fn upstream_peer_shared(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Arc<HttpPeer>> {
        let Some(service) = ctx.service() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer called before routing",
            ));
        };
        let Some((pool, backend)) = service.next_backend(ctx.pool, &ctx.tried) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no backend available",
            ));
        };
        let pool_rt = &service.pools[pool as usize];
        let backend_rt = &pool_rt.backends[backend as usize];
        // One peer per backend and serving snapshot, with the service's
        // timeouts, built for its first request and shared by the next ones:
        // no peer (about 700 bytes) built, written and freed per request,
        // and its hash for the connection pool computed once.
        let shared = backend_rt.peer.get_or_init(|| {
            let mut peer = pool_rt.peer(backend_rt.addr, service.connect_timeout);
            peer.options.read_timeout = Some(service.read_timeout);
            peer.options.write_timeout = Some(service.write_timeout);
            let hash = peer.reuse_hash();
            peer.set_reuse_hash(hash);
            Arc::new(peer)
        });
        let peer = match service.request_timeout {
            None => Arc::clone(shared),
            Some(total) => {
                let left = total.saturating_sub(ctx.started.elapsed());
                if left.is_zero() {
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(504),
                        "request timeout reached before a backend was tried",
                    ));
                }
                // What is left of the request's time bounds every wait on
                // it: this request's own copy of the peer (timeouts are not
                // part of its hash).
                let mut peer = HttpPeer::clone(shared);
                peer.options.read_timeout = Some(service.read_timeout.min(left));
                peer.options.connection_timeout = Some(service.connect_timeout.min(left));
                Arc::new(peer)
            }
        };
        ctx.pool = pool;
        ctx.current = Some((pool, backend));
        ctx.last = Some((pool, backend));
        if self.access_log.is_some() {
            ctx.upstream_started = Some(std::time::Instant::now());
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some((service, (pool, _))) = ctx.service().zip(ctx.current) {
            if let Some(p) = service.pools.get(pool as usize) {
                p.metrics.connect_failures.increment(1);
            }
        }
        // Nothing was sent yet, so any method may go to another backend.
        if ctx.fail_current(&e) {
            e.set_retry(true);
            if let Some(s) = ctx.service() {
                s.retries.increment(1);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A pooled connection the backend had already closed says nothing
        // about the backend's health; neither does a client that failed.
        let untried_left = if e.esource() == &ErrorSource::Upstream && !client_reused {
            ctx.fail_current(&e)
        } else {
            ctx.skip_current()
        };
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.as_ref().response_written().is_none();
        if !replayable {
            // A body that went out is never sent twice; a response that
            // started reaching the client cannot be restarted.
            e.set_retry(false);
        } else if untried_left {
            e.set_retry(true);
            if let Some(s) = ctx.service() {
                s.retries.increment(1);
            }
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A secret that steers traffic is not handed to the backends.
        if let Some(s) = ctx.service().filter(|s| s.override_secret.is_some()) {
            if let Some(h) = &s.override_header {
                upstream_request.remove_header(h);
            }
        }
        // The framework's own header pass is off for our peers (see
        // `PoolRt::peer`): this one pass does all of it.
        // The downstream request's parse noted whether it has `Upgrade`
        // (this request is its copy): most have none and are not looked up.
        let upgrade = session.req_header().version == http::Version::HTTP_11
            && session.downstream_session.is_upgrade_req()
            && is_websocket_upgrade(&upstream_request.headers);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = peer.is_some_and(|ip| {
            ctx.snapshot
                .http
                .trusted_proxies
                .iter()
                .any(|c| c.contains(ip))
        });
        // Besides the hop-by-hop set: the body is re-framed (chunked when it
        // has no length), so `Transfer-Encoding` goes; `HTTP2-Settings`
        // belongs to an upgrade never passed on; what an untrusted client
        // says about addresses is not passed on; and a client's copies of
        // the headers added below go, as those are written after the map's
        // headers rather than inserted in it. The pass finds those headers
        // if the request has them.
        // Every case's names are a prefix of these.
        use crate::headers::FORWARDING_NAMES as ALSO;
        // A trusted balancer's chain is read before its header goes.
        let xff = peer.map(|peer| {
            if trusted {
                HeaderValue::from_str(&forwarded_for(&upstream_request.headers, &peer.to_string()))
                    .unwrap_or_else(|_| crate::headers::ip_value(peer))
            } else {
                peer_value(session, peer)
            }
        });
        // Cloning a header value shares its bytes; no copy for the common case.
        let host = match upstream_request.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => upstream_request.headers.get(http::header::HOST).cloned(),
        };
        let also: &[&HeaderName] = match (peer.is_some(), trusted) {
            // No address to add: a client's `X-Forwarded-For` stays.
            (false, _) => &ALSO[..5],
            (true, true) => &ALSO[..6],
            (true, false) => &ALSO,
        };
        for name in hop_by_hop_names_and(&upstream_request.headers, upgrade, also) {
            upstream_request.remove_header(&name);
        }
        if upgrade {
            upstream_request.insert_header("connection", "upgrade")?;
        }
        // Written after the map's headers, never hashed into it: these are
        // added to every request and read by nothing on the way out.
        if let Some(xff) = xff {
            upstream_request.append_wire_header(&X_FORWARDED_FOR, "X-Forwarded-For", xff);
        }
        if let Some(id) = &ctx.request_id {
            upstream_request.append_wire_header(&X_REQUEST_ID, "X-Request-Id", id.clone());
        }
        upstream_request.append_wire_header(
            &X_FORWARDED_PROTO,
            "X-Forwarded-Proto",
            HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        );
        if let Some(host) = host {
            upstream_request.append_wire_header(&X_FORWARDED_HOST, "X-Forwarded-Host", host);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.in_flight.draining() {
            session.set_keepalive(None);
        }
        ctx.upstream_took = ctx.upstream_started.map(|t| t.elapsed());
        if let Some(last) = ctx.last {
            let status = upstream_response.status.as_u16();
            let counts_5xx = ctx
                .service()
                .and_then(|s| s.outlier.as_ref())
                .is_some_and(|o| o.include_5xx);
            if status >= 500 && counts_5xx {
                ctx.record_outcome(last, Some(&format_args!("status {status}")));
            } else {
                ctx.record_outcome(last, None);
            }
        }
        if let (Some(bucket), Some(Sticky::Cookie(name))) = (
            ctx.new_bucket,
            ctx.service().and_then(|s| s.sticky.as_ref()),
        ) {
            upstream_response.append_header(
                "set-cookie",
                format!("{name}={bucket:08x}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"),
            )?;
        }
        if ctx.tls {
            if let Some(hsts) = &ctx.snapshot.hsts {
                upstream_response.insert_parsed_header(
                    &http::header::STRICT_TRANSPORT_SECURITY,
                    "strict-transport-security",
                    hsts.clone(),
                )?;
            }
        }
        let switching = upstream_response.status.as_u16() == 101;
        for name in hop_by_hop_names(&upstream_response.headers, switching) {
            upstream_response.remove_header(&name);
        }
        if switching {
            upstream_response.insert_header("connection", "upgrade")?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.snapshot.http.max_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over http.max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        let total = ctx.service().and_then(|s| s.request_timeout);
        if total.is_some_and(|t| ctx.started.elapsed() > t) {
            // The answer is cut off: the client sees a truncated response.
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the request took longer than its service's request_timeout",
            ));
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(log) = &self.access_log {
            log.log(access_line(session, ctx));
        }
        let Some(service) = ctx.service() else {
            return;
        };
        let pool = ctx.last.map_or(ctx.pool, |(p, _)| p);
        if let Some(p) = service.pools.get(pool as usize) {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let took = ctx.started.elapsed();
            p.metrics.record(status, took);
            // An attempt that ended in a backend's answer (failed attempts
            // were counted as they failed).
            if ctx.current.is_some() {
                p.stats.record_answer(status >= 500, took);
            }
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that went away is not an error of ours.
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = status_for(e);
        if code > 0 {
            let body = match code {
                502 => format!(
                    "502 Bad Gateway: no backend of service {:?} could be reached\n",
                    ctx.service_name()
                ),
                503 => format!(
                    "503 Service Unavailable: service {:?} has no backend available\n",
                    ctx.service_name()
                ),
                504 => format!(
                    "504 Gateway Timeout: the backend of service {:?} did not answer in time\n",
                    ctx.service_name()
                ),
                413 => "413 Content Too Large\n".to_string(),
                400 => "400 Bad Request\n".to_string(),
                _ => String::new(),
            };
            // After a failure the connection is not reused. Once a response
            // began, nothing more is written: the client sees it cut off.
            session.set_keepalive(None);
            if session.response_written().is_none() {
                if let Err(write_err) = respond_error(session, code, body).await {
                    tracing::debug!(error = %write_err, "could not send the error response");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// The client's `X-Request-Id` when it is a sane token (1 to 128 visible
/// ASCII characters), else a new random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&crate::headers::X_REQUEST_ID) {
        let b = id.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return id.clone();
        }
    }
    use rand::RngExt;
    let random: [u64; 2] = rand::rng().random();
    let mut buf = [0u8; 32];
    // Each random bit lands in one digit; which digit does not matter.
    for (word, digits) in random.iter().zip(buf.chunks_exact_mut(16)) {
        let (low, high) = digits.split_at_mut(8);
        low.copy_from_slice(&hex_digits(word & 0x0f0f_0f0f_0f0f_0f0f).to_le_bytes());
        high.copy_from_slice(&hex_digits((word >> 4) & 0x0f0f_0f0f_0f0f_0f0f).to_le_bytes());
    }
    // Shared from the start, so the copy for the upstream request is a
    // reference count, not a second allocation.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The client's address as a header value: formatted on a connection's
/// first request and kept in its socket digest, so the requests after it
/// share the bytes instead of formatting and allocating them again.
fn peer_value(session: &Session, peer: std::net::IpAddr) -> HeaderValue {
    let Some(digest) = session.digest().and_then(|d| d.socket_digest.as_ref()) else {
        return crate::headers::ip_value(peer);
    };
    match digest
        .peer_addr_value
        .get_or_init(|| (peer, crate::headers::ip_value(peer)))
    {
        (ip, value) if *ip == peer => value.clone(),
        _ => crate::headers::ip_value(peer),
    }
}

/// Eight values below 16, one per byte, as the lowercase hex digits
/// `0`-`9`, `a`-`f`: eight at a time (a table lookup per digit cost four
/// times as much).
fn hex_digits(nibbles: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The high bit of bytes 6 + nibble is set for a nibble of 10 or more;
    // no byte carries into the next (at most 6 + 15).
    let letters = ((nibbles + ONES * 6) >> 4) & ONES;
    nibbles + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10)
}

/// One access log line: a JSON object.
fn access_line(session: &Session, ctx: &RequestCtx) -> String {
    use crate::access::json_escape;
    use std::fmt::Write as _;
    let req = session.req_header();
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let client = peer
        .map(|p| crate::headers::client_ip(p, &req.headers, &ctx.snapshot.http.trusted_proxies));
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let mut line = String::with_capacity(384);
    let _ = write!(
        line,
        "{{\"time\":\"{}\",\"client\":\"{}\",\"method\":\"",
        humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        client.map_or_else(|| "-".to_string(), |c| c.to_string()),
    );
    json_escape(&mut line, req.method.as_str());
    line.push_str("\",\"host\":\"");
    json_escape(&mut line, &request_host(&req.uri, &req.headers));
    line.push_str("\",\"path\":\"");
    json_escape(&mut line, &String::from_utf8_lossy(req.raw_path()));
    let _ = write!(
        line,
        "\",\"status\":{status},\"bytes\":{},\"duration_ms\":{:.3},\"tls\":{}",
        session.body_bytes_sent(),
        ctx.started.elapsed().as_secs_f64() * 1000.0,
        ctx.tls
    );
    let service = ctx.service();
    let pool = ctx
        .last
        .and_then(|(p, b)| Some((service?.pools.get(p as usize)?, b)));
    line.push_str(",\"service\":");
    match service {
        Some(s) => {
            line.push('"');
            json_escape(&mut line, &s.name);
            line.push('"');
        }
        None => line.push_str("null"),
    }
    match pool {
        Some((p, b)) => {
            line.push_str(",\"pool\":\"");
            json_escape(&mut line, &p.name);
            let backend = p.backends.get(b as usize).map(|b| b.addr.to_string());
            let _ = write!(line, "\",\"backend\":\"{}\"", backend.unwrap_or_default());
        }
        None => line.push_str(",\"pool\":null,\"backend\":null"),
    }
    match ctx.upstream_took {
        Some(t) => {
            let _ = write!(line, ",\"upstream_ms\":{:.3}", t.as_secs_f64() * 1000.0);
        }
        None => line.push_str(",\"upstream_ms\":null"),
    }
    line.push_str(",\"request_id\":\"");
    if let Some(id) = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        json_escape(&mut line, id);
    }
    line.push_str("\"}");
    line
}

/// The status a failed request is answered with (0: the client is gone).
fn status_for(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_the_lowercase_hex_of_each_nibble() {
        for place in 0..8 {
            for nibble in 0..16u64 {
                // The nibble at one place, its neighbours at their extremes.
                let others = if nibble % 2 == 0 {
                    0
                } else {
                    0x0f0f_0f0f_0f0f_0f0f
                };
                let word = (others & !(0xff << (8 * place))) | (nibble << (8 * place));
                let digits = hex_digits(word).to_le_bytes();
                for (i, digit) in digits.iter().enumerate() {
                    let value = (word >> (8 * i)) & 0xf;
                    assert_eq!(
                        char::from(*digit),
                        char::from_digit(value as u32, 16).expect("below 16"),
                        "{word:#x} byte {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn request_ids_are_new_hex_or_the_clients_own() {
        let mut seen = std::collections::HashSet::new();
        let none = http::HeaderMap::new();
        for _ in 0..1000 {
            let id = request_id(&none);
            let id = id.to_str().expect("ascii");
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            assert!(seen.insert(id.to_string()), "{id} came twice");
        }
        // Every digit value shows up: the random bits reach every digit.
        let digits: std::collections::HashSet<char> =
            seen.iter().flat_map(|id| id.chars()).collect();
        assert_eq!(digits.len(), 16);

        let mut given = http::HeaderMap::new();
        given.insert(
            crate::headers::X_REQUEST_ID.clone(),
            HeaderValue::from_static("abc-123"),
        );
        assert_eq!(request_id(&given), "abc-123");
        given.insert(
            crate::headers::X_REQUEST_ID.clone(),
            HeaderValue::from_static("has space"),
        );
        assert_ne!(request_id(&given), "has space");
    }
}

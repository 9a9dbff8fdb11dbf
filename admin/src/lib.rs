//! Switchyard's admin API: status, weight shifts, blue/green switches and
//! reloads, on a listener of its own, with bearer tokens and an audit log.
//!
//! This crate owns the HTTP surface (routing, authentication, JSON, the
//! audit log) and defines the [`Control`] trait it needs; the binary
//! implements it over the running proxy. It never imports the proxy or
//! certs crates. Start at [`AdminApi`].

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use switchyard_config::Role;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin API needs from the running proxy.
pub trait Control: Send + Sync {
    /// Everything the status endpoint shows.
    fn status(&self) -> Value;
    /// Readiness, and the document `/health` answers with.
    fn health(&self) -> (bool, Value);
    /// Sets a service's split (every pool not named gets 0).
    fn set_split(
        &self,
        service: &str,
        shares: &[(String, u32)],
        if_match: Option<u64>,
    ) -> Result<Change, Refusal>;
    /// Sends all of a service's traffic to one pool.
    fn switch(
        &self,
        service: &str,
        to: &str,
        force: bool,
        if_match: Option<u64>,
    ) -> Result<Change, Refusal>;
    /// Starts (`drain = true`) or ends draining a backend: a draining
    /// backend gets no new requests; in-flight ones finish.
    fn drain(
        &self,
        service: &str,
        pool: &str,
        backend: &str,
        drain: bool,
        if_match: Option<u64>,
    ) -> Result<Change, Refusal>;
    /// A rollout command for `service`: `start` (with `params`, settings
    /// over those in the file), `pause`, `resume`, `promote` or `abort`;
    /// `by` names the caller.
    fn rollout(
        &self,
        service: &str,
        action: &str,
        params: &Value,
        by: &str,
    ) -> Result<Change, Refusal>;
    /// The state of `service`'s rollout (`null` without one).
    fn rollout_status(&self, service: &str) -> Result<Value, Refusal>;
    /// Re-reads the config file now.
    fn reload(&self) -> Result<Change, Refusal>;
    /// Metrics in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// An accepted change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The generation now serving.
    pub generation: u64,
    /// The changed part before.
    pub before: Value,
    /// The changed part after.
    pub after: Value,
}

/// A refused request: the status to answer with and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status (400, 404, 409, 500...).
    pub status: u16,
    /// One line for humans.
    pub reason: String,
    /// Every problem, for instance each config error with its line.
    pub details: Vec<String>,
}

impl Refusal {
    /// A refusal without details.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            details: Vec::new(),
        }
    }
}

/// A bearer token, loaded from its file or environment variable.
pub struct Token {
    /// Name recorded in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret.
    pub secret: Vec<u8>,
}

/// The audit log: append-only JSON lines, each made durable before the
/// change it records is answered.
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating it and its directory if needed) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` with the current time as `time`, and syncs it.
    pub fn record(&self, mut entry: Value) {
        if let Some(map) = entry.as_object_mut() {
            map.insert(
                "time".into(),
                json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
            );
        }
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        let written = writeln!(file, "{entry}")
            .and_then(|_| file.flush())
            .and_then(|_| file.sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// The admin HTTP application.
pub struct AdminApi {
    control: Arc<dyn Control>,
    tokens: Vec<Token>,
    audit: Option<Arc<AuditLog>>,
}

struct Caller {
    name: String,
    role: Role,
}

impl AdminApi {
    /// The API over `control`. With no `tokens`, callers are not
    /// authenticated (the config only allows that on loopback). Changes are
    /// appended to `audit` when given.
    pub fn new(
        control: Arc<dyn Control>,
        tokens: Vec<Token>,
        audit: Option<Arc<AuditLog>>,
    ) -> Self {
        AdminApi {
            control,
            tokens,
            audit,
        }
    }

    fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        if self.tokens.is_empty() {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Write,
            });
        }
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(ApiError(401, "a bearer token is required".into()));
        };
        // Every token is compared, in constant time, so timing says nothing.
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(presented.trim().as_bytes(), &t.secret) {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found.ok_or_else(|| ApiError(401, "unknown token".into()))
    }

    /// Appends one audit line and makes it durable before the answer goes out.
    fn audit(
        &self,
        caller: &Caller,
        client: &str,
        action: &str,
        target: Value,
        outcome: &Result<Change, Refusal>,
    ) {
        metrics::counter!(
            "switchyard_admin_changes_total",
            "action" => action.to_string(),
            "result" => if outcome.is_ok() { "ok" } else { "refused" }
        )
        .increment(1);
        let Some(audit) = &self.audit else {
            return;
        };
        let (result, before, after, generation) = match outcome {
            Ok(c) => (
                "ok".to_string(),
                c.before.clone(),
                c.after.clone(),
                Some(c.generation),
            ),
            Err(r) => (
                format!("refused ({}): {}", r.status, r.reason),
                Value::Null,
                Value::Null,
                None,
            ),
        };
        audit.record(json!({
            "token": caller.name,
            "client": client,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            "result": result,
            "generation": generation,
        }));
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(status: u16, body: &Value) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .header("cache-control", "no-store")
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: u16, reason: &str) -> Response<Vec<u8>> {
    respond(status, &json!({ "error": reason }))
}

fn outcome_response(outcome: &Result<Change, Refusal>) -> Response<Vec<u8>> {
    match outcome {
        Ok(c) => respond(
            200,
            &json!({ "generation": c.generation, "before": c.before, "after": c.after }),
        ),
        Err(r) => respond(
            r.status,
            &json!({ "error": r.reason, "details": r.details }),
        ),
    }
}

/// A refusal made before reaching [`Control`]: status and reason.
struct ApiError(u16, String);

impl From<ApiError> for Response<Vec<u8>> {
    fn from(e: ApiError) -> Self {
        error(e.0, &e.1)
    }
}

fn if_match(session: &ServerSession) -> Result<Option<u64>, ApiError> {
    match session.req_header().headers.get("if-match") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError(400, "If-Match must be a config generation number".into())),
    }
}

/// The `If-Match` generation and the JSON body of a change request.
async fn change_request(session: &mut ServerSession) -> Result<(Option<u64>, Value), ApiError> {
    let generation = if_match(session)?;
    Ok((generation, read_json(session).await?))
}

async fn read_json(session: &mut ServerSession) -> Result<Value, ApiError> {
    let body = read_body(session).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError(400, format!("invalid JSON: {e}")))
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(ApiError(413, "request body too large".into()));
                }
            }
            Ok(None) => break,
            Err(_) => return Err(ApiError(400, "cannot read the request body".into())),
        }
    }
    Ok(body)
}

/// A JSON body, or `null` when the request has none.
async fn read_json_or_empty(session: &mut ServerSession) -> Result<Value, ApiError> {
    let body = read_body(session).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError(400, format!("invalid JSON: {e}")))
}

/// Whether a `Host` or `Origin` value names this machine.
fn is_loopback_name(value: &str) -> bool {
    let host = value
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(|| "unknown".to_string(), SocketAddr::to_string);
        let header = |name: &str| {
            session
                .req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // A browser page elsewhere must not drive a loopback admin API
        // (DNS rebinding, cross-site requests).
        if self.tokens.is_empty() {
            for name in ["host", "origin"] {
                if let Some(v) = header(name) {
                    if !is_loopback_name(&v) {
                        return error(403, &format!("{name} {v:?} is not this machine"));
                    }
                }
            }
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if method == http::Method::GET && path == "/health" {
            let (ready, doc) = self.control.health();
            return respond(if ready { 200 } else { 503 }, &doc);
        }
        let caller = match self.authenticate(header("authorization").as_deref()) {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let write = !matches!(method, http::Method::GET | http::Method::HEAD);
        if write && caller.role != Role::Write {
            return error(403, &format!("token {:?} may only read", caller.name));
        }
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["api", "v1", "status"]) => respond(200, &self.control.status()),
            ("GET", ["metrics"]) => {
                let text = self.control.metrics().into_bytes();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", text.len())
                    .body(text)
                    .unwrap_or_else(|_| Response::new(Vec::new()))
            }
            ("PUT", ["api", "v1", "services", service, "split"]) => {
                let service = service.to_string();
                let (generation, body) = match change_request(session).await {
                    Ok(r) => r,
                    Err(e) => return e.into(),
                };
                let Some(map) = body.as_object() else {
                    return error(400, "expected an object of pool name to share, like {\"blue\": 75, \"green\": 25}");
                };
                let mut shares = Vec::new();
                for (pool, share) in map {
                    match share.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => shares.push((pool.clone(), n)),
                        None => {
                            return error(
                                400,
                                &format!("share of {pool:?} must be a non-negative integer"),
                            )
                        }
                    }
                }
                let outcome = self.control.set_split(&service, &shares, generation);
                self.audit(
                    &caller,
                    &client,
                    "split",
                    json!({ "service": service, "split": body }),
                    &outcome,
                );
                outcome_response(&outcome)
            }
            ("POST", ["api", "v1", "services", service, "switch"]) => {
                let service = service.to_string();
                let (generation, body) = match change_request(session).await {
                    Ok(r) => r,
                    Err(e) => return e.into(),
                };
                let Some(to) = body.get("to").and_then(Value::as_str) else {
                    return error(400, "expected {\"to\": \"POOL\"}");
                };
                let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
                let outcome = self.control.switch(&service, to, force, generation);
                self.audit(
                    &caller,
                    &client,
                    "switch",
                    json!({ "service": service, "to": to, "force": force }),
                    &outcome,
                );
                outcome_response(&outcome)
            }
            ("POST", ["api", "v1", "backends", action @ ("drain" | "undrain")]) => {
                let action = action.to_string();
                let (generation, body) = match change_request(session).await {
                    Ok(r) => r,
                    Err(e) => return e.into(),
                };
                let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
                let (Some(service), Some(pool), Some(backend)) =
                    (field("service"), field("pool"), field("backend"))
                else {
                    return error(
                        400,
                        "expected {\"service\": ..., \"pool\": ..., \"backend\": \"IP:PORT\"}",
                    );
                };
                let outcome =
                    self.control
                        .drain(&service, &pool, &backend, action == "drain", generation);
                self.audit(&caller, &client, &action, body, &outcome);
                outcome_response(&outcome)
            }
            ("GET", ["api", "v1", "services", service, "rollout"]) => {
                match self.control.rollout_status(service) {
                    Ok(v) => respond(200, &v),
                    Err(r) => respond(r.status, &json!({ "error": r.reason })),
                }
            }
            ("POST", ["api", "v1", "services", service, "rollout", action]) => {
                let (service, action) = (service.to_string(), action.to_string());
                let body = if action == "start" {
                    match read_json_or_empty(session).await {
                        Ok(b) => b,
                        Err(e) => return e.into(),
                    }
                } else {
                    Value::Null
                };
                let outcome = self.control.rollout(&service, &action, &body, &caller.name);
                self.audit(
                    &caller,
                    &client,
                    &format!("rollout {action}"),
                    json!({ "service": service, "settings": body }),
                    &outcome,
                );
                outcome_response(&outcome)
            }
            ("POST", ["api", "v1", "reload"]) => {
                let outcome = self.control.reload();
                self.audit(&caller, &client, "reload", Value::Null, &outcome);
                outcome_response(&outcome)
            }
            (_, ["api", "v1", ..]) => error(404, &format!("no endpoint {method} {path}")),
            _ => error(404, "not found; the API is under /api/v1/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "127.0.0.1:9900",
            "localhost",
            "localhost:9900",
            "[::1]:9900",
            "http://127.0.0.1:9900",
        ] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in ["evil.example.com", "10.0.0.1:9900", "https://attacker.test"] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

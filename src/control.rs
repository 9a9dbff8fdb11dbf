//! The admin API's [`Control`] over the running proxy: status from the
//! snapshot, health registry and certificates; changes through the
//! reload controller, so they are validated, written back and audited like
//! any config change.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use toml_edit::{value, DocumentMut, InlineTable, Item};

use switchyard_admin::{Change, Control, Refusal};
use switchyard_certs::{AcmeManager, CertResolver};
use switchyard_config::{Config, RolloutState};
use switchyard_proxy::{BackendState, HealthRegistry, SharedSnapshot};

use crate::reload::{Outcome, Reloader};

/// Everything the admin API reads or changes.
pub struct Controller {
    /// Applies changes.
    pub reloader: Arc<Reloader>,
    /// The serving generation.
    pub snapshot: SharedSnapshot,
    /// Backend health.
    pub health: Arc<HealthRegistry>,
    /// Certificates, with an HTTPS listener.
    pub resolver: Option<Arc<CertResolver>>,
    /// ACME state, when configured.
    pub acme: Option<Arc<AcmeManager>>,
    /// When the process started.
    pub started: SystemTime,
    /// Automated rollouts.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Renders the metrics registry.
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Controller {
    fn split_of(&self, service: &str) -> Option<Value> {
        let snapshot = self.snapshot.load();
        let s = snapshot.service(service)?;
        Some(Value::Object(
            s.pools
                .iter()
                .map(|p| (p.name.clone(), json!(p.share)))
                .collect(),
        ))
    }

    fn change(
        &self,
        service: &str,
        shares: &[(String, u32)],
        if_match: Option<u64>,
        trigger: &str,
    ) -> Result<Change, Refusal> {
        let before = self
            .split_of(service)
            .ok_or_else(|| Refusal::new(404, format!("no service {service:?}")))?;
        // A rollout owns the split while it runs; changing it underneath
        // would be undone at the next step.
        let rolling = self
            .snapshot
            .load()
            .service(service)
            .and_then(|s| s.rollout.as_ref())
            .map(|r| r.state)
            .filter(|s| matches!(s, RolloutState::Running | RolloutState::Paused));
        if let Some(state) = rolling {
            return Err(Refusal::new(
                409,
                format!(
                    "a rollout of {service:?} is {}; it owns the split: promote or abort it first",
                    state.as_str()
                ),
            ));
        }
        let generation = self.reloader.edit(if_match, trigger, |doc, config| {
            write_split(doc, config, service, shares)
        })?;
        Ok(Change {
            generation,
            before,
            after: self.split_of(service).unwrap_or(Value::Null),
        })
    }
}

/// The `[services.SERVICE]` table of `doc`.
pub(crate) fn service_table<'d>(
    doc: &'d mut DocumentMut,
    service: &str,
) -> Result<&'d mut dyn toml_edit::TableLike, Refusal> {
    doc.get_mut("services")
        .and_then(|s| s.get_mut(service))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| {
            Refusal::new(
                500,
                format!("services.{service} is not a table in the file"),
            )
        })
}

/// Sets `services.SERVICE.split` in `doc` to `shares` (pools not named get
/// 0), keeping the layout and comments around it.
pub(crate) fn write_split(
    doc: &mut DocumentMut,
    config: &Config,
    service: &str,
    shares: &[(String, u32)],
) -> Result<(), Refusal> {
    let known = config
        .service(service)
        .ok_or_else(|| Refusal::new(404, format!("no service {service:?}")))?;
    let table = service_table(doc, service)?;
    let mut wanted: Vec<(String, i64)> = known.pools.iter().map(|p| (p.name.clone(), 0)).collect();
    for (pool, share) in shares {
        match wanted.iter_mut().find(|(name, _)| name == pool) {
            Some(slot) => slot.1 = i64::from(*share),
            // Let validation name the unknown pool, like it does for the file.
            None => wanted.push((pool.clone(), i64::from(*share))),
        }
    }
    match table.get_mut("split") {
        Some(Item::Value(toml_edit::Value::InlineTable(inline))) => {
            let names: Vec<String> = inline.iter().map(|(k, _)| k.to_string()).collect();
            for name in names {
                if !wanted.iter().any(|(p, _)| *p == name) {
                    inline.remove(&name);
                }
            }
            for (pool, share) in &wanted {
                match inline.get_mut(pool) {
                    Some(v) => {
                        let decor = v.decor().clone();
                        *v = toml_edit::Value::from(*share);
                        *v.decor_mut() = decor;
                    }
                    None => {
                        inline.insert(pool, toml_edit::Value::from(*share));
                    }
                }
            }
        }
        Some(Item::Table(t)) => {
            let names: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
            for name in names {
                if !wanted.iter().any(|(p, _)| *p == name) {
                    t.remove(&name);
                }
            }
            for (pool, share) in &wanted {
                t[pool.as_str()] = value(*share);
            }
        }
        _ => {
            let mut inline = InlineTable::new();
            for (pool, share) in &wanted {
                inline.insert(pool, toml_edit::Value::from(*share));
            }
            table.insert("split", value(inline));
        }
    }
    Ok(())
}

fn state_json(state: &BackendState) -> Value {
    match state {
        BackendState::Unknown => json!("unknown"),
        BackendState::Healthy => json!("healthy"),
        BackendState::Unhealthy => json!("unhealthy"),
        BackendState::Ejected { until } => json!({ "ejected_until": time(*until) }),
    }
}

impl Control for Controller {
    fn status(&self) -> Value {
        let snapshot = self.snapshot.load_full();
        let (generation, last) = self.reloader.summary();
        let reports = self.health.report();
        let panicking = self.health.panicking();
        let services: Vec<Value> = snapshot
            .services
            .iter()
            .map(|s| {
                let available = |p: &switchyard_proxy::snapshot::PoolRt| p.backends.iter().any(|b| b.health.available());
                let live_total: u32 = s.pools.iter().filter(|p| available(p)).map(|p| p.share).sum();
                let pools: Vec<Value> = s
                    .pools
                    .iter()
                    .map(|p| {
                        let effective = if live_total == 0 || !available(p) {
                            0.0
                        } else {
                            100.0 * f64::from(p.share) / f64::from(live_total)
                        };
                        let backends: Vec<Value> = p
                            .backends
                            .iter()
                            .map(|b| {
                                let r = reports
                                    .iter()
                                    .find(|r| r.service == s.name && r.pool == p.name && r.addr == b.addr);
                                json!({
                                    "address": b.addr.to_string(),
                                    "draining": b.draining,
                                    "state": r.map_or(json!("unknown"), |r| state_json(&r.state)),
                                    "consecutive_failures": r.map_or(0, |r| r.consecutive_failures),
                                    "last_check": r.and_then(|r| r.last_check.as_ref()).map(|c| json!({
                                        "at": time(c.at), "ok": c.ok, "detail": c.detail,
                                    })),
                                })
                            })
                            .collect();
                        json!({
                            "name": p.name,
                            "share": p.share,
                            "configured_percent": 100.0 * f64::from(p.share) / f64::from(s.total_share.max(1)),
                            "effective_percent": effective,
                            "backends": backends,
                        })
                    })
                    .collect();
                json!({ "name": s.name, "panic_mode": panicking.contains(&s.name), "pools": pools })
            })
            .collect();
        let certificates: Vec<Value> = self
            .resolver
            .iter()
            .flat_map(|r| r.table().infos().to_vec())
            .map(|i| {
                json!({
                    "names": i.names, "not_after": time(i.not_after), "serial": i.serial,
                    "file": i.cert_path.display().to_string(), "default": i.default,
                })
            })
            .collect();
        let acme: Value = match &self.acme {
            None => Value::Null,
            Some(a) => Value::Object(
                a.status()
                    .into_iter()
                    .map(|(host, st)| {
                        (
                            host,
                            json!({
                                "not_after": st.not_after.map(time),
                                "last_attempt": st.last_attempt.map(time),
                                "last_error": st.last_error,
                                "next_attempt": st.next_attempt.map(time),
                                "failures": st.failures,
                            }),
                        )
                    })
                    .collect(),
            ),
        };
        let last_reload = last.map(|l| {
            json!({
                "at": time(l.at),
                "trigger": l.trigger,
                "result": match &l.result { Ok(_) => "applied", Err(_) => "rejected" },
                "generation": l.result.as_ref().ok(),
                "errors": l.result.as_ref().err(),
            })
        });
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "generation": generation,
            "started": time(self.started),
            "last_reload": last_reload,
            "services": services,
            "certificates": certificates,
            "acme": acme,
            "rollouts": self.rollouts.status(),
        })
    }

    fn rollout(
        &self,
        service: &str,
        action: &str,
        params: &Value,
        by: &str,
    ) -> Result<Change, Refusal> {
        self.rollouts.command(service, action, params, by)
    }

    fn rollout_status(&self, service: &str) -> Result<Value, Refusal> {
        if self
            .snapshot
            .load()
            .services
            .iter()
            .all(|s| s.name != service)
        {
            return Err(Refusal::new(404, format!("no service {service:?}")));
        }
        Ok(self.rollouts.status_of(service))
    }

    fn health(&self) -> (bool, Value) {
        let (generation, _) = self.reloader.summary();
        (
            true,
            json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "generation": generation }),
        )
    }

    fn set_split(
        &self,
        service: &str,
        shares: &[(String, u32)],
        if_match: Option<u64>,
    ) -> Result<Change, Refusal> {
        self.change(service, shares, if_match, "admin API: split")
    }

    fn switch(
        &self,
        service: &str,
        to: &str,
        force: bool,
        if_match: Option<u64>,
    ) -> Result<Change, Refusal> {
        let snapshot = self.snapshot.load_full();
        let s = snapshot
            .service(service)
            .ok_or_else(|| Refusal::new(404, format!("no service {service:?}")))?;
        let pool =
            s.pools.iter().find(|p| p.name == to).ok_or_else(|| {
                Refusal::new(400, format!("service {service:?} has no pool {to:?}"))
            })?;
        if !force && !pool.backends.iter().any(|b| b.health.available()) {
            return Err(Refusal::new(
                409,
                format!(
                    "pool {to:?} has no healthy backend; send \"force\": true to switch anyway"
                ),
            ));
        }
        let shares: Vec<(String, u32)> = s
            .pools
            .iter()
            .map(|p| (p.name.clone(), if p.name == to { 100 } else { 0 }))
            .collect();
        drop(snapshot);
        self.change(service, &shares, if_match, "admin API: switch")
    }

    fn metrics(&self) -> String {
        // Gauges that describe state are set at scrape time.
        let snapshot = self.snapshot.load_full();
        for s in snapshot.services.iter() {
            let live: u32 = s
                .pools
                .iter()
                .filter(|p| p.backends.iter().any(|b| b.health.available()))
                .map(|p| p.share)
                .sum();
            for p in s.pools.iter() {
                let available = p.backends.iter().filter(|b| b.health.available()).count();
                let labels = [("service", s.name.clone()), ("pool", p.name.clone())];
                metrics::gauge!("switchyard_pool_backends_available", &labels)
                    .set(available as f64);
                metrics::gauge!("switchyard_pool_backends", &labels).set(p.backends.len() as f64);
                let effective = if available == 0 || live == 0 {
                    0.0
                } else {
                    f64::from(p.share) / f64::from(live)
                };
                metrics::gauge!("switchyard_pool_effective_share", &labels).set(effective);
            }
            metrics::gauge!("switchyard_service_panic_mode", "service" => s.name.clone())
                .set(if s.health.in_panic() { 1.0 } else { 0.0 });
        }
        for info in self
            .resolver
            .iter()
            .flat_map(|r| r.table().infos().to_vec())
        {
            for name in &info.names {
                metrics::gauge!("switchyard_certificate_not_after_seconds", "name" => name.clone())
                    .set(info.not_after_unix() as f64);
            }
        }
        metrics::counter!("switchyard_tls_handshake_failures_total")
            .absolute(crate::tls_log::handshake_failures());
        let (generation, _) = self.reloader.summary();
        metrics::gauge!("switchyard_config_generation").set(generation as f64);
        let mut text = self.prometheus.render();
        switchyard_proxy::metrics::render_histograms(&mut text);
        text
    }

    fn drain(
        &self,
        service: &str,
        pool: &str,
        backend: &str,
        drain: bool,
        if_match: Option<u64>,
    ) -> Result<Change, Refusal> {
        let addr: std::net::SocketAddr = backend
            .parse()
            .map_err(|_| Refusal::new(400, format!("{backend:?} is not IP:PORT")))?;
        let draining_of = |c: &Controller| -> Value {
            let snapshot = c.snapshot.load();
            json!(snapshot
                .services
                .iter()
                .filter(|s| s.name == service)
                .flat_map(|s| s.pools.iter())
                .filter(|p| p.name == pool)
                .flat_map(|p| p.backends.iter())
                .filter(|b| b.draining)
                .map(|b| b.addr.to_string())
                .collect::<Vec<_>>())
        };
        let before = draining_of(self);
        let generation = self
            .reloader
            .edit(if_match, "admin API: drain", |doc, config| {
                let known = config
                    .service(service)
                    .and_then(|s| s.pools.iter().find(|p| p.name == pool))
                    .ok_or_else(|| {
                        Refusal::new(404, format!("no pool {pool:?} in service {service:?}"))
                    })?;
                if !known.backends.contains(&addr) {
                    return Err(Refusal::new(
                        404,
                        format!("{addr} is not a backend of {service}/{pool}"),
                    ));
                }
                let mut list: Vec<std::net::SocketAddr> = known.drain.clone();
                list.retain(|a| *a != addr);
                if drain {
                    list.push(addr);
                }
                let table = service_table(doc, service)?
                    .get_mut("pools")
                    .and_then(|p| p.get_mut(pool))
                    .and_then(Item::as_table_like_mut)
                    .ok_or_else(|| {
                        Refusal::new(
                            500,
                            format!("services.{service}.pools.{pool} is not a table in the file"),
                        )
                    })?;
                if list.is_empty() {
                    table.remove("drain");
                } else {
                    let array: toml_edit::Array = list.iter().map(|a| a.to_string()).collect();
                    table.insert("drain", value(array));
                }
                Ok(())
            })?;
        Ok(Change {
            generation,
            before,
            after: draining_of(self),
        })
    }

    fn reload(&self) -> Result<Change, Refusal> {
        match self.reloader.reload("admin API") {
            Outcome::Applied(g) | Outcome::Unchanged(g) => Ok(Change {
                generation: g,
                before: Value::Null,
                after: Value::Null,
            }),
            Outcome::Rejected(errors) => Err(Refusal {
                status: 400,
                reason: "the config file was refused; the current generation keeps serving".into(),
                details: errors,
            }),
        }
    }
}

//! Automated canary rollouts: the canary pool's share rises step by step;
//! each step is judged on the canary's own error rate and latency, measured
//! by the proxy over that step, against the gates of
//! `[services.NAME.rollout]`; a passing canary is promoted, a failing one
//! rolled back, by the proxy itself.
//!
//! Progress (`state`, `step` and the split) is written back to the config
//! file through [`Reloader::edit`], like an admin change, so a reload or a
//! restart resumes at the same step. A step that restarts (after a restart
//! or a resume) is measured afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use toml_edit::{value, DocumentMut, Item, Table};

use switchyard_admin::{AuditLog, Change, Refusal};
use switchyard_config::{Config, Rollout, RolloutState};
use switchyard_proxy::snapshot::ServiceRt;
use switchyard_proxy::{SharedSnapshot, StatsSample};

use crate::control::write_split;
use crate::reload::Reloader;

/// How often running rollouts are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Decisions kept per service for the status.
const HISTORY: usize = 50;
/// The ratio gate needs this many stable answers in the step to mean much.
const MIN_STABLE_ANSWERS: u64 = 20;

/// What the judge measured of one pool over a step.
#[derive(Debug, Clone, Default)]
struct Numbers {
    attempts: u64,
    errors: u64,
    error_rate: f64,
    p99: Option<Duration>,
}

impl Numbers {
    fn of(sample: &StatsSample) -> Numbers {
        Numbers {
            attempts: sample.attempts,
            errors: sample.errors,
            error_rate: sample.error_rate(),
            p99: sample.quantile(0.99),
        }
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.attempts,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_ms": self.p99.map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

/// One decision, for the status and the audit log.
#[derive(Debug, Clone)]
struct Decision {
    at: SystemTime,
    decision: &'static str,
    step: usize,
    share: u32,
    reason: String,
    by: String,
}

/// The live part of a running (or paused) rollout: the current step's
/// measuring window. Rebuilt whenever the step in the config changes.
struct Run {
    plan: Rollout,
    step_started: SystemTime,
    deadline: Instant,
    extensions: u32,
    failures: u32,
    canary_base: StatsSample,
    stable_base: StatsSample,
    held: Option<String>,
    canary: Numbers,
    stable: Numbers,
}

impl Run {
    fn new(plan: &Rollout, service: &ServiceRt) -> Run {
        let (canary_base, stable_base) = samples(service, plan);
        Run {
            plan: plan.clone(),
            step_started: SystemTime::now(),
            deadline: Instant::now() + plan.step_duration,
            extensions: 0,
            failures: 0,
            canary_base,
            stable_base,
            held: None,
            canary: Numbers::default(),
            stable: Numbers::default(),
        }
    }

    /// Starts the step's window again.
    fn restart_window(&mut self, service: &ServiceRt) {
        let (c, s) = samples(service, &self.plan);
        self.canary_base = c;
        self.stable_base = s;
        self.deadline = Instant::now() + self.plan.step_duration;
        self.step_started = SystemTime::now();
        self.held = None;
    }

    /// Whether `plan` (from the config now) continues this run.
    fn follows(&self, plan: &Rollout) -> bool {
        self.plan.from == plan.from
            && self.plan.to == plan.to
            && self.plan.steps == plan.steps
            && self.plan.step == plan.step
    }
}

fn samples(service: &ServiceRt, plan: &Rollout) -> (StatsSample, StatsSample) {
    let of = |name: &str| {
        service
            .pools
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.stats.sample())
            .unwrap_or_default()
    };
    (of(&plan.to), of(&plan.from))
}

/// Runs every service's rollout.
pub struct Rollouts {
    reloader: Arc<Reloader>,
    snapshot: SharedSnapshot,
    audit: Option<Arc<AuditLog>>,
    runs: Mutex<HashMap<String, Run>>,
    history: Mutex<HashMap<String, VecDeque<Decision>>>,
}

/// What a rollout change does to the file.
enum Move {
    /// Go to `step` (running).
    Step(usize),
    /// Set the state, keeping the step; the split follows the state.
    State(RolloutState),
}

impl Rollouts {
    /// Rollouts over the serving snapshot, changed through `reloader`.
    pub fn new(
        reloader: Arc<Reloader>,
        snapshot: SharedSnapshot,
        audit: Option<Arc<AuditLog>>,
    ) -> Rollouts {
        Rollouts {
            reloader,
            snapshot,
            audit,
            runs: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
        }
    }

    fn record(
        &self,
        service: &str,
        plan: &Rollout,
        decision: &'static str,
        reason: String,
        by: &str,
    ) {
        let share = plan.share();
        match decision {
            "rollback" | "fail" => {
                tracing::warn!(%service, step = plan.step, share, decision, by, "rollout: {reason}")
            }
            _ => {
                tracing::info!(%service, step = plan.step, share, decision, by, "rollout: {reason}")
            }
        }
        metrics::counter!("switchyard_rollout_decisions_total",
            "service" => service.to_string(), "decision" => decision)
        .increment(1);
        if let Some(audit) = &self.audit {
            audit.record(json!({
                "token": by,
                "action": "rollout",
                "target": { "service": service },
                "decision": decision,
                "step": plan.step,
                "share": share,
                "reason": reason,
                "result": "ok",
            }));
        }
        if let Ok(mut history) = self.history.lock() {
            let list = history.entry(service.to_string()).or_default();
            if list.len() == HISTORY {
                list.pop_front();
            }
            list.push_back(Decision {
                at: SystemTime::now(),
                decision,
                step: plan.step,
                share,
                reason,
                by: by.to_string(),
            });
        }
    }

    /// Writes a rollout move (state, step and the split that goes with
    /// them) to the file and serves it; the rollout as it is afterwards.
    fn write(&self, service: &str, trigger: &str, mv: Move) -> Result<(u64, Rollout), Refusal> {
        let mut after = None;
        let generation = self.reloader.edit(None, trigger, |doc, config| {
            let plan = rollout_of(config, service)?;
            let mut next = plan.clone();
            match mv {
                Move::Step(step) => {
                    next.step = step;
                    next.state = RolloutState::Running;
                }
                Move::State(state) => next.state = state,
            }
            write_rollout(doc, config, service, &next)?;
            after = Some(next);
            Ok(())
        })?;
        let after = after.ok_or_else(|| Refusal::new(500, "the rollout was not written"))?;
        Ok((generation, after))
    }

    /// One look at every rollout: start windows, judge, step, roll back.
    fn tick(&self) {
        let snapshot = self.snapshot.load_full();
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        runs.retain(|name, _| {
            snapshot
                .services
                .iter()
                .any(|s| s.name == *name && s.rollout.is_some())
        });
        for service in snapshot.services.iter() {
            let Some(plan) = &service.rollout else {
                continue;
            };
            publish_state(&service.name, plan);
            if !matches!(plan.state, RolloutState::Running | RolloutState::Paused) {
                runs.remove(&service.name);
                continue;
            }
            if !runs.get(&service.name).is_some_and(|r| r.follows(plan)) {
                runs.insert(service.name.clone(), Run::new(plan, service));
            }
            let Some(run) = runs.get_mut(&service.name) else {
                continue;
            };
            run.plan = plan.clone();
            // The split must be the step's, whatever the file said.
            if !split_matches(service, plan) {
                match self.write(&service.name, "rollout", Move::State(plan.state)) {
                    Ok(_) => self.record(
                        &service.name,
                        plan,
                        "resume",
                        format!("split set to the step's {}% for {}", plan.share(), plan.to),
                        "rollout",
                    ),
                    Err(e) => {
                        tracing::error!(service = %service.name, "rollout cannot set the split: {}", e.reason)
                    }
                }
                continue;
            }
            if plan.state == RolloutState::Paused {
                continue;
            }
            self.judge(service, plan, run);
        }
    }

    fn judge(&self, service: &ServiceRt, plan: &Rollout, run: &mut Run) {
        let (canary_now, stable_now) = samples(service, plan);
        let canary = canary_now.since(&run.canary_base);
        let stable = stable_now.since(&run.stable_base);
        run.canary = Numbers::of(&canary);
        run.stable = Numbers::of(&stable);
        publish_numbers(&service.name, plan, &run.canary, &run.stable);
        let name = &service.name;

        // A canary failing far above the gate goes back at once.
        let fast_min = (plan.min_requests / 10).max(10);
        if canary.attempts >= fast_min && canary.error_rate() >= plan.rollback_error_rate {
            let reason = format!(
                "canary error rate {:.1}% ({} of {}) is above the immediate-rollback rate {:.1}%",
                canary.error_rate() * 100.0,
                canary.errors,
                canary.attempts,
                plan.rollback_error_rate * 100.0
            );
            self.roll_back(name, plan, reason, "rollout");
            return;
        }
        if Instant::now() < run.deadline && run.held.is_none() {
            return;
        }
        if canary.attempts < plan.min_requests {
            if run.held.is_some() {
                return;
            }
            if run.extensions < plan.max_extensions {
                run.extensions += 1;
                run.deadline += plan.step_duration;
                self.record(
                    name,
                    plan,
                    "extend",
                    format!(
                        "only {} of the {} canary requests needed; step extended ({} of {})",
                        canary.attempts, plan.min_requests, run.extensions, plan.max_extensions
                    ),
                    "rollout",
                );
            } else {
                let reason = format!(
                    "holding at {}%: only {} of the {} canary requests needed after {} extensions; \
                     judging as soon as there are enough",
                    plan.share(),
                    canary.attempts,
                    plan.min_requests,
                    run.extensions
                );
                run.held = Some(reason.clone());
                self.record(name, plan, "hold", reason, "rollout");
            }
            return;
        }
        let mut failed = Vec::new();
        if canary.error_rate() > plan.max_error_rate {
            failed.push(format!(
                "canary error rate {:.2}% ({} of {}) is above {:.2}%",
                canary.error_rate() * 100.0,
                canary.errors,
                canary.attempts,
                plan.max_error_rate * 100.0
            ));
        }
        let canary_p99 = canary.quantile(0.99);
        if let (Some(max), Some(p99)) = (plan.max_p99, canary_p99) {
            if p99 > max {
                failed.push(format!("canary p99 {} is above {}", ms(p99), ms(max)));
            }
        }
        let mut notes = String::new();
        if let (Some(ratio), Some(p99)) = (plan.max_p99_ratio, canary_p99) {
            match stable.quantile(0.99) {
                Some(base) if stable.answers() >= MIN_STABLE_ANSWERS => {
                    if p99.as_secs_f64() > base.as_secs_f64() * ratio {
                        failed.push(format!(
                            "canary p99 {} is above {ratio} x stable p99 {}",
                            ms(p99),
                            ms(base)
                        ));
                    }
                }
                _ => notes = "; too little stable traffic to compare p99".into(),
            }
        }
        let measured = format!(
            "canary {} requests, {:.2}% errors, p99 {}",
            canary.attempts,
            canary.error_rate() * 100.0,
            canary_p99.map_or("-".into(), ms)
        );
        if failed.is_empty() {
            self.promote_step(
                name,
                service,
                plan,
                format!("step passed: {measured}{notes}"),
                run,
            );
            return;
        }
        run.failures += 1;
        let reason = failed.join("; ");
        if run.failures >= plan.failures_before_rollback {
            self.roll_back(name, plan, reason, "rollout");
        } else {
            self.record(
                name,
                plan,
                "fail",
                format!(
                    "{reason} ({} of {} failures before rollback); step repeated",
                    run.failures, plan.failures_before_rollback
                ),
                "rollout",
            );
            run.extensions = 0;
            run.restart_window(service);
        }
    }

    fn promote_step(
        &self,
        name: &str,
        service: &ServiceRt,
        plan: &Rollout,
        reason: String,
        run: &mut Run,
    ) {
        let next = plan.step + 1;
        let done = plan.steps.get(next).is_none_or(|share| *share >= 100);
        let mv = if done {
            Move::State(RolloutState::Complete)
        } else {
            Move::Step(next)
        };
        match self.write(name, "rollout", mv) {
            Ok((_, after)) => {
                let what = if done {
                    format!(
                        "{reason}; {} takes all traffic and is the stable pool now",
                        after.to
                    )
                } else {
                    format!("{reason}; canary share now {}%", after.share())
                };
                self.record(
                    name,
                    &after,
                    if done { "complete" } else { "promote" },
                    what,
                    "rollout",
                );
                *run = Run::new(&after, service);
            }
            Err(e) => {
                tracing::error!(service = %name, "rollout cannot step: {} {:?}", e.reason, e.details)
            }
        }
    }

    fn roll_back(&self, name: &str, plan: &Rollout, reason: String, by: &str) {
        match self.write(name, "rollout", Move::State(RolloutState::RolledBack)) {
            Ok((_, after)) => self.record(
                name,
                &after,
                "rollback",
                format!("{reason}; all traffic back to {}", plan.from),
                by,
            ),
            Err(e) => {
                tracing::error!(service = %name, "rollout cannot roll back: {} {:?}", e.reason, e.details)
            }
        }
    }

    /// An operator's command: `start` (with optional parameters), `pause`,
    /// `resume`, `promote` or `abort`.
    pub fn command(
        &self,
        service: &str,
        action: &str,
        params: &Value,
        by: &str,
    ) -> Result<Change, Refusal> {
        let before = self.status_of(service);
        let Ok(mut runs) = self.runs.lock() else {
            return Err(Refusal::new(500, "rollout state is poisoned"));
        };
        let current = {
            let snapshot = self.snapshot.load();
            let s = snapshot
                .service(service)
                .ok_or_else(|| Refusal::new(404, format!("no service {service:?}")))?;
            s.rollout.clone()
        };
        let trigger = format!("admin API: rollout {action}");
        let state = current.as_ref().map(|r| r.state);
        let conflict = |what: &str| {
            Refusal::new(
                409,
                format!("cannot {action}: the rollout of {service:?} is {what}",),
            )
        };
        let generation = match action {
            "start" => {
                if state == Some(RolloutState::Running) {
                    return Err(conflict("running; pause, promote or abort it first"));
                }
                let generation = self.reloader.edit(None, &trigger, |doc, config| {
                    start_rollout(doc, config, service, params)
                })?;
                runs.remove(service);
                generation
            }
            "pause" | "resume" | "promote" | "abort" => {
                let Some(plan) = current else {
                    return Err(Refusal::new(
                        404,
                        format!("service {service:?} has no rollout; start one first"),
                    ));
                };
                let target = match (action, plan.state) {
                    ("pause", RolloutState::Running) => RolloutState::Paused,
                    ("resume", RolloutState::Paused | RolloutState::Running) => {
                        RolloutState::Running
                    }
                    ("promote" | "abort", RolloutState::Running | RolloutState::Paused) => {
                        if action == "promote" {
                            RolloutState::Complete
                        } else {
                            RolloutState::RolledBack
                        }
                    }
                    (_, s) => return Err(conflict(s.as_str())),
                };
                let (generation, after) = self.write(service, &trigger, Move::State(target))?;
                if action == "resume" {
                    // A new window: what happened while paused or held is not judged.
                    runs.remove(service);
                }
                let reason = match action {
                    "pause" => format!("paused at {}%", after.share()),
                    "resume" => {
                        format!("resumed at {}%; the step is measured afresh", after.share())
                    }
                    "promote" => format!("promoted by hand: {} takes all traffic", after.to),
                    _ => format!("aborted by hand: all traffic back to {}", after.from),
                };
                let decision = match action {
                    "pause" => "pause",
                    "resume" => "resume",
                    "promote" => "complete",
                    _ => "rollback",
                };
                drop(runs);
                self.record(service, &after, decision, reason, by);
                return Ok(Change {
                    generation,
                    before,
                    after: self.status_of(service),
                });
            }
            other => {
                return Err(Refusal::new(
                    404,
                    format!(
                        "no rollout action {other:?}; use start, pause, resume, promote or abort"
                    ),
                ))
            }
        };
        drop(runs);
        if let Some(plan) = self
            .snapshot
            .load()
            .service(service)
            .and_then(|s| s.rollout.clone())
        {
            self.record(
                service,
                &plan,
                "start",
                format!(
                    "started: {} -> {} through {:?}%",
                    plan.from, plan.to, plan.steps
                ),
                by,
            );
        }
        Ok(Change {
            generation,
            before,
            after: self.status_of(service),
        })
    }

    /// The status of one service's rollout (`null` without one).
    pub fn status_of(&self, service: &str) -> Value {
        let snapshot = self.snapshot.load();
        let Some(s) = snapshot.service(service) else {
            return Value::Null;
        };
        let Some(plan) = &s.rollout else {
            return Value::Null;
        };
        let runs = self.runs.lock().ok();
        let run = runs
            .as_ref()
            .and_then(|r| r.get(service))
            .filter(|r| r.follows(plan));
        let history: Vec<Value> = self
            .history
            .lock()
            .ok()
            .and_then(|h| h.get(service).cloned())
            .unwrap_or_default()
            .iter()
            .map(|d| {
                json!({
                    "at": humantime::format_rfc3339_millis(d.at).to_string(),
                    "decision": d.decision, "step": d.step, "share": d.share,
                    "reason": d.reason, "by": d.by,
                })
            })
            .collect();
        let time_left = run
            .filter(|r| plan.state == RolloutState::Running && r.held.is_none())
            .map(|r| {
                r.deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            });
        json!({
            "service": service,
            "from": plan.from,
            "to": plan.to,
            "state": plan.state.as_str(),
            "held": run.and_then(|r| r.held.clone()),
            "step": plan.step,
            "steps": plan.steps,
            "share": plan.share(),
            "step_started": run.map(|r| humantime::format_rfc3339_seconds(r.step_started).to_string()),
            "time_left_seconds": time_left,
            "extensions": run.map_or(0, |r| r.extensions),
            "failures": run.map_or(0, |r| r.failures),
            "gates": {
                "step_duration": humantime::format_duration(plan.step_duration).to_string(),
                "min_requests": plan.min_requests,
                "max_error_rate": plan.max_error_rate,
                "max_p99_ms": plan.max_p99.map(|d| d.as_secs_f64() * 1000.0),
                "max_p99_ratio": plan.max_p99_ratio,
                "failures_before_rollback": plan.failures_before_rollback,
                "rollback_error_rate": plan.rollback_error_rate,
            },
            "measured": {
                "canary": run.map_or_else(|| Numbers::default().json(), |r| r.canary.json()),
                "stable": run.map_or_else(|| Numbers::default().json(), |r| r.stable.json()),
            },
            "history": history,
        })
    }

    /// Every service's rollout status.
    pub fn status(&self) -> Vec<Value> {
        let names: Vec<String> = self
            .snapshot
            .load()
            .services
            .iter()
            .filter(|s| s.rollout.is_some())
            .map(|s| s.name.clone())
            .collect();
        names.iter().map(|n| self.status_of(n)).collect()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn rollout_of(config: &Config, service: &str) -> Result<Rollout, Refusal> {
    config
        .service(service)
        .ok_or_else(|| Refusal::new(404, format!("no service {service:?}")))?
        .rollout
        .clone()
        .ok_or_else(|| Refusal::new(404, format!("service {service:?} has no rollout")))
}

/// The shares a rollout at its current state and step calls for.
fn wanted_split(plan: &Rollout) -> Vec<(String, u32)> {
    let share = plan.share();
    vec![(plan.to.clone(), share), (plan.from.clone(), 100 - share)]
}

fn split_matches(service: &ServiceRt, plan: &Rollout) -> bool {
    let wanted = wanted_split(plan);
    service.pools.iter().all(|p| {
        let want = wanted
            .iter()
            .find(|(n, _)| *n == p.name)
            .map_or(0, |(_, s)| *s);
        p.share == want
    })
}

/// The `[services.NAME.rollout]` table of `doc`, made if missing.
fn rollout_table<'d>(doc: &'d mut DocumentMut, service: &str) -> Result<&'d mut Table, Refusal> {
    let svc = crate::control::service_table(doc, service)?;
    if svc.get("rollout").is_none() {
        svc.insert("rollout", Item::Table(Table::new()));
    }
    svc.get_mut("rollout")
        .and_then(Item::as_table_mut)
        .ok_or_else(|| {
            Refusal::new(
                500,
                format!("services.{service}.rollout is not a table in the file"),
            )
        })
}

/// Writes the rollout's `state`, `step` and the split they call for.
fn write_rollout(
    doc: &mut DocumentMut,
    config: &Config,
    service: &str,
    plan: &Rollout,
) -> Result<(), Refusal> {
    {
        let table = rollout_table(doc, service)?;
        table.insert("state", value(plan.state.as_str()));
        table.insert("step", value(i64::try_from(plan.step).unwrap_or(0)));
    }
    write_split(doc, config, service, &wanted_split(plan))
}

/// Writes a new rollout (parameters over what the file has) at step 0.
fn start_rollout(
    doc: &mut DocumentMut,
    config: &Config,
    service: &str,
    params: &Value,
) -> Result<(), Refusal> {
    const KEYS: &[&str] = &switchyard_config::ROLLOUT_SETTINGS;
    let params = match params {
        Value::Null => serde_json::Map::new(),
        Value::Object(map) => map.clone(),
        _ => return Err(Refusal::new(400, "expected an object of rollout settings")),
    };
    {
        let table = rollout_table(doc, service)?;
        for (key, v) in &params {
            if !KEYS.contains(&key.as_str()) {
                return Err(Refusal::new(
                    400,
                    format!(
                        "unknown rollout setting {key:?}; known: {}",
                        KEYS.join(", ")
                    ),
                ));
            }
            let v = match v {
                Value::String(s) => toml_edit::Value::from(s.as_str()),
                Value::Bool(b) => toml_edit::Value::from(*b),
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => toml_edit::Value::from(i),
                    (None, Some(f)) => toml_edit::Value::from(f),
                    _ => return Err(Refusal::new(400, format!("{key}: not a usable number"))),
                },
                Value::Array(items) => {
                    let mut array = toml_edit::Array::new();
                    for item in items {
                        match item.as_i64() {
                            Some(i) => array.push(i),
                            None => {
                                return Err(Refusal::new(
                                    400,
                                    format!("{key}: expected whole numbers"),
                                ))
                            }
                        }
                    }
                    toml_edit::Value::Array(array)
                }
                _ => return Err(Refusal::new(400, format!("{key}: unsupported value"))),
            };
            table.insert(key, Item::Value(v));
        }
        if table.get("from").is_none() || table.get("to").is_none() {
            return Err(Refusal::new(
                400,
                "a rollout needs `from` (the stable pool) and `to` (the canary)",
            ));
        }
        table.insert("state", value("running"));
        table.insert("step", value(0));
    }
    // The split follows once the file is valid; write it from the new table.
    let text = doc.to_string();
    let probe = Config::parse(&text, "(the changed config)").map_err(|diags| Refusal {
        status: 400,
        reason: "the rollout settings make the config invalid".into(),
        details: diags.0.iter().map(|d| d.to_string()).collect(),
    })?;
    let plan = rollout_of(&probe, service)?;
    write_split(doc, config, service, &wanted_split(&plan))
}

fn publish_state(service: &str, plan: &Rollout) {
    let state = match plan.state {
        RolloutState::Running => 1.0,
        RolloutState::Paused => 2.0,
        RolloutState::Complete => 3.0,
        RolloutState::RolledBack => 4.0,
    };
    metrics::gauge!("switchyard_rollout_state", "service" => service.to_string()).set(state);
    metrics::gauge!("switchyard_rollout_canary_percent", "service" => service.to_string())
        .set(f64::from(plan.share()));
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("switchyard_rollout_step", "service" => service.to_string())
        .set(plan.step as f64);
}

fn publish_numbers(service: &str, plan: &Rollout, canary: &Numbers, stable: &Numbers) {
    for (pool, n) in [(&plan.to, canary), (&plan.from, stable)] {
        let labels = [("service", service.to_string()), ("pool", pool.clone())];
        metrics::gauge!("switchyard_rollout_error_rate", &labels).set(n.error_rate);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("switchyard_rollout_requests", &labels).set(n.attempts as f64);
        if let Some(p99) = n.p99 {
            metrics::gauge!("switchyard_rollout_p99_seconds", &labels).set(p99.as_secs_f64());
        }
    }
}

/// Runs [`Rollouts::tick`] until shutdown.
pub struct RolloutService(pub Arc<Rollouts>);

#[async_trait]
impl BackgroundService for RolloutService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let rollouts = self.0.clone();
                    // Edits write and fsync the config file: off the runtime.
                    let _ = tokio::task::spawn_blocking(move || rollouts.tick()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

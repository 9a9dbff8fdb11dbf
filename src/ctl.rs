//! `switchyard ctl`: the admin API from a terminal or a script.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the admin API is and how to talk to it.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Admin API address.
    #[arg(long, env = "SWITCHYARD_ADMIN", default_value = "127.0.0.1:9900")]
    admin: String,
    /// Bearer token (or the SWITCHYARD_TOKEN environment variable).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// What to do.
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Services, pools, shares, backends and certificates.
    Status,
    /// Set a service's split, for example `split shop blue=90 green=10`.
    Split {
        /// The service.
        service: String,
        /// POOL=SHARE pairs; pools not named get 0.
        #[arg(required = true)]
        shares: Vec<String>,
    },
    /// Send all of a service's traffic to one pool.
    Switch {
        /// The service.
        service: String,
        /// The pool to switch to.
        pool: String,
        /// Switch even if the pool has no healthy backend.
        #[arg(long)]
        force: bool,
    },
    /// Stop sending new requests to a backend (in-flight ones finish).
    Drain {
        /// The service.
        service: String,
        /// The pool.
        pool: String,
        /// The backend, IP:PORT.
        backend: String,
    },
    /// Send requests to a drained backend again.
    Undrain {
        /// The service.
        service: String,
        /// The pool.
        pool: String,
        /// The backend, IP:PORT.
        backend: String,
    },
    /// Re-read the config file now.
    Reload,
    /// Automated canary rollouts: status, start, pause, resume, promote, abort.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// The current step, time left, measured numbers and decisions.
    Status {
        /// The service.
        service: String,
    },
    /// Start a rollout at step 0; options override the file's settings.
    Start {
        /// The service.
        service: String,
        /// The stable pool.
        #[arg(long)]
        from: Option<String>,
        /// The canary pool.
        #[arg(long)]
        to: Option<String>,
        /// Canary share per step, in percent, for example 1,5,25,50,100.
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<u32>>,
        /// How long each step is measured, for example 2m.
        #[arg(long)]
        step_duration: Option<String>,
        /// Canary requests needed per step before judging.
        #[arg(long)]
        min_requests: Option<u64>,
        /// Highest canary error rate that passes, for example 0.01.
        #[arg(long)]
        max_error_rate: Option<f64>,
        /// Highest canary p99 that passes, for example 500ms.
        #[arg(long)]
        max_p99: Option<String>,
        /// Highest canary p99 as a multiple of the stable pool's.
        #[arg(long)]
        max_p99_ratio: Option<f64>,
    },
    /// Hold at the current step.
    Pause {
        /// The service.
        service: String,
    },
    /// Continue a paused (or held) rollout; the step is measured afresh.
    Resume {
        /// The service.
        service: String,
    },
    /// Give the canary all traffic now.
    Promote {
        /// The service.
        service: String,
    },
    /// Roll back now: all traffic to the stable pool.
    Abort {
        /// The service.
        service: String,
    },
}

impl RolloutCommand {
    fn request(&self) -> (&'static str, String, Option<Value>) {
        let (service, action) = match self {
            RolloutCommand::Status { service } => {
                return ("GET", format!("/api/v1/services/{service}/rollout"), None)
            }
            RolloutCommand::Start {
                service,
                from,
                to,
                steps,
                step_duration,
                min_requests,
                max_error_rate,
                max_p99,
                max_p99_ratio,
            } => {
                let mut map = serde_json::Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        map.insert(k.to_string(), v);
                    }
                };
                put("from", from.as_ref().map(|v| json!(v)));
                put("to", to.as_ref().map(|v| json!(v)));
                put("steps", steps.as_ref().map(|v| json!(v)));
                put("step_duration", step_duration.as_ref().map(|v| json!(v)));
                put("min_requests", min_requests.map(|v| json!(v)));
                put("max_error_rate", max_error_rate.map(|v| json!(v)));
                put("max_p99", max_p99.as_ref().map(|v| json!(v)));
                put("max_p99_ratio", max_p99_ratio.map(|v| json!(v)));
                return (
                    "POST",
                    format!("/api/v1/services/{service}/rollout/start"),
                    Some(Value::Object(map)),
                );
            }
            RolloutCommand::Pause { service } => (service, "pause"),
            RolloutCommand::Resume { service } => (service, "resume"),
            RolloutCommand::Promote { service } => (service, "promote"),
            RolloutCommand::Abort { service } => (service, "abort"),
        };
        (
            "POST",
            format!("/api/v1/services/{service}/rollout/{action}"),
            None,
        )
    }
}

/// Runs one `ctl` command; exits non-zero with the API's reason on refusal.
pub fn run(args: CtlArgs) -> ExitCode {
    let (method, path, body) = match &args.command {
        CtlCommand::Status => ("GET", "/api/v1/status".to_string(), None),
        CtlCommand::Split { service, shares } => {
            let mut map = serde_json::Map::new();
            for pair in shares {
                let parsed = pair
                    .split_once('=')
                    .and_then(|(pool, share)| Some((pool, share.parse::<u32>().ok()?)));
                let Some((pool, share)) = parsed else {
                    eprintln!("switchyard ctl: {pair:?} is not POOL=SHARE (for example blue=90)");
                    return ExitCode::from(2);
                };
                map.insert(pool.to_string(), json!(share));
            }
            (
                "PUT",
                format!("/api/v1/services/{service}/split"),
                Some(Value::Object(map)),
            )
        }
        CtlCommand::Switch {
            service,
            pool,
            force,
        } => (
            "POST",
            format!("/api/v1/services/{service}/switch"),
            Some(json!({ "to": pool, "force": force })),
        ),
        CtlCommand::Drain {
            service,
            pool,
            backend,
        } => (
            "POST",
            "/api/v1/backends/drain".to_string(),
            Some(json!({ "service": service, "pool": pool, "backend": backend })),
        ),
        CtlCommand::Undrain {
            service,
            pool,
            backend,
        } => (
            "POST",
            "/api/v1/backends/undrain".to_string(),
            Some(json!({ "service": service, "pool": pool, "backend": backend })),
        ),
        CtlCommand::Reload => ("POST", "/api/v1/reload".to_string(), None),
        CtlCommand::Rollout(r) => r.request(),
    };
    let (status, reply) = match request(&args, method, &path, body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "switchyard ctl: cannot reach the admin API at {}: {e}",
                args.admin
            );
            return ExitCode::from(3);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    }
    if !(200..300).contains(&status) {
        if !args.json {
            eprintln!(
                "switchyard ctl: refused ({status}): {}",
                reply["error"].as_str().unwrap_or("no reason given")
            );
            for d in reply["details"].as_array().into_iter().flatten() {
                eprintln!("  {}", d.as_str().unwrap_or_default());
            }
        }
        return ExitCode::FAILURE;
    }
    if !args.json {
        match &args.command {
            CtlCommand::Status => print_status(&reply),
            CtlCommand::Reload => println!("generation {} serving", reply["generation"]),
            CtlCommand::Rollout(RolloutCommand::Status { .. }) => print_rollout(&reply),
            CtlCommand::Rollout(_) => {
                println!("generation {}", reply["generation"]);
                print_rollout(&reply["after"]);
            }
            CtlCommand::Drain { .. } | CtlCommand::Undrain { .. } => println!(
                "generation {}: draining {}",
                reply["generation"], reply["after"]
            ),
            _ => println!(
                "generation {}: split is now {}",
                reply["generation"],
                shares_line(&reply["after"])
            ),
        }
    }
    ExitCode::SUCCESS
}

fn shares_line(split: &Value) -> String {
    split
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn print_rollout(r: &Value) {
    if r.is_null() {
        println!("no rollout");
        return;
    }
    println!(
        "{} rollout {} -> {}: {}, step {} of {} ({}% canary){}",
        r["service"].as_str().unwrap_or("?"),
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["step"].as_u64().map_or(0, |s| s + 1),
        r["steps"].as_array().map_or(0, Vec::len),
        r["share"],
        r["time_left_seconds"]
            .as_f64()
            .map_or(String::new(), |t| format!(", {t:.0}s left in the step")),
    );
    if let Some(held) = r["held"].as_str() {
        println!("  held: {held}");
    }
    for (label, pool) in [
        ("canary", &r["measured"]["canary"]),
        ("stable", &r["measured"]["stable"]),
    ] {
        println!(
            "  {label}: {} requests, {:.2}% errors, p99 {}",
            pool["requests"],
            pool["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            pool["p99_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1}ms"))
        );
    }
    for d in r["history"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<9} {:>3}% by {}: {}",
            d["at"].as_str().unwrap_or("?"),
            d["decision"].as_str().unwrap_or("?"),
            d["share"],
            d["by"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("")
        );
    }
}

fn print_status(doc: &Value) {
    let last = &doc["last_reload"];
    println!(
        "generation {}   last reload: {} ({})",
        doc["generation"],
        last["result"].as_str().unwrap_or("none"),
        last["trigger"].as_str().unwrap_or("-")
    );
    for e in last["errors"].as_array().into_iter().flatten() {
        println!("  {}", e.as_str().unwrap_or_default());
    }
    println!();
    println!(
        "{:<16} {:<10} {:>6} {:>10}  BACKENDS",
        "SERVICE", "POOL", "SHARE", "EFFECTIVE"
    );
    for s in doc["services"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        let panic = if s["panic_mode"].as_bool() == Some(true) {
            " (panic mode)"
        } else {
            ""
        };
        for p in s["pools"].as_array().into_iter().flatten() {
            let backends: Vec<String> = p["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let state = match &b["state"] {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => format!(
                            "ejected until {}",
                            o.get("ejected_until")
                                .and_then(Value::as_str)
                                .unwrap_or("?")
                        ),
                        _ => "?".into(),
                    };
                    let drain = if b["draining"].as_bool() == Some(true) {
                        " (draining)"
                    } else {
                        ""
                    };
                    format!("{} {state}{drain}", b["address"].as_str().unwrap_or("?"))
                })
                .collect();
            println!(
                "{:<16} {:<10} {:>6} {:>9.1}%  {}{panic}",
                name,
                p["name"].as_str().unwrap_or("?"),
                p["share"],
                p["effective_percent"].as_f64().unwrap_or(0.0),
                backends.join(", ")
            );
        }
    }
    let certs = doc["certificates"].as_array().cloned().unwrap_or_default();
    if !certs.is_empty() {
        println!();
        println!("{:<40} {:<22} SERIAL", "CERTIFICATE", "NOT AFTER");
        for c in certs {
            let names: Vec<&str> = c["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "{:<40} {:<22} {}",
                names.join(","),
                c["not_after"].as_str().unwrap_or("?"),
                c["serial"].as_str().unwrap_or("?")
            );
        }
    }
}

/// One HTTP/1.1 request to the admin API; returns the status and JSON body.
fn request(
    args: &CtlArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(&args.admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        args.admin,
        body.len()
    );
    if let Some(token) = &args.token {
        head.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok((status, json))
}

//! Automated canary rollouts: the real binary judges canaries from the
//! traffic it carries to real upstreams whose errors and latency the
//! tests set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::admin::{admin_proxy, audit_lines, call, WRITE_TOKEN};
use crate::harness::{eventually, tally, Client, Proxy, ProxyOptions, Upstream, BIN};

/// Clients sending requests until dropped (at most 100,000 each), counting
/// answers by body.
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: &Proxy, workers: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let client = Client::new();
        let url = proxy.url("/");
        let tasks = (0..workers)
            .map(|_| {
                let (stop, counts, client, url) =
                    (stop.clone(), counts.clone(), client.clone(), url.clone());
                tokio::spawn(async move {
                    for _ in 0..100_000 {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let key = match client.get(&url, None).await {
                            Ok(r) => format!("{} {}", r.status.as_u16(), r.body.trim()),
                            Err(e) => format!("error {e}"),
                        };
                        *counts.lock().expect("counts").entry(key).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            counts,
            tasks,
        }
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().expect("counts").clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn rollout(proxy: &Proxy) -> Value {
    let (status, body) = call(
        proxy.admin.expect("admin"),
        "GET",
        "/api/v1/services/shop/rollout",
        Some(WRITE_TOKEN),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_state(proxy: &Proxy, state: &str, within: Duration) -> Value {
    eventually(within, &format!("rollout state {state}"), || async {
        rollout(proxy).await["state"] == state
    })
    .await;
    rollout(proxy).await
}

fn decisions(status: &Value) -> Vec<String> {
    status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["decision"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn plan(settings: &str) -> String {
    format!("\n[services.shop.rollout]\nfrom = \"blue\"\nto = \"green\"\n{settings}\n")
}

/// Sends 200 requests; answers by body.
async fn spread(proxy: &Proxy) -> BTreeMap<String, usize> {
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let settings = "steps = [10, 50, 100]\nstep_duration = \"1s\"\nmin_requests = 20\n\
                    max_error_rate = 0.01\nmax_p99 = \"2s\"\nmax_p99_ratio = 20.0";
    let proxy = admin_proxy(blue.addr, green.addr, &plan(settings)).await;
    let traffic = Traffic::start(&proxy, 4);
    let status = wait_state(&proxy, "complete", Duration::from_secs(30)).await;
    let counts = traffic.counts();
    drop(traffic);
    assert!(
        counts.keys().all(|k| k == "200 blue" || k == "200 green"),
        "no request failed while the shares moved: {counts:?}"
    );
    assert_eq!(status["share"], 100);
    let seen = decisions(&status);
    assert_eq!(
        seen.iter().filter(|d| *d == "promote").count(),
        1,
        "10% -> 50%: {seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("complete"),
        "{seen:?}"
    );
    // Written back: a restart would keep green as the stable pool.
    let body = proxy.body_now();
    assert!(body.contains("state = \"complete\""), "{body}");
    assert!(
        body.contains("blue = 0") && body.contains("green = 100"),
        "{body}"
    );
    assert_eq!(spread(&proxy).await.get("green"), Some(&200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_one_request_in_ten_is_rolled_back_within_a_step() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    green.set_faults(10, Duration::ZERO);
    let settings =
        "steps = [20, 50, 100]\nstep_duration = \"5s\"\nmin_requests = 50\nmax_error_rate = 0.01";
    let proxy = admin_proxy(blue.addr, green.addr, &plan(settings)).await;
    let traffic = Traffic::start(&proxy, 4);
    let status = wait_state(&proxy, "rolled_back", Duration::from_secs(5)).await;
    drop(traffic);
    let last = status["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("a decision");
    assert_eq!(last["decision"], "rollback");
    assert_eq!(last["step"], 0, "rolled back in the first step");
    assert!(
        last["reason"].as_str().unwrap_or("").contains("error rate"),
        "{last}"
    );
    assert_eq!(status["share"], 0);
    assert_eq!(
        spread(&proxy).await.get("blue"),
        Some(&200),
        "only the stable pool"
    );
    // The decision is in the audit log, made by the rollout itself.
    assert!(audit_lines(&proxy)
        .iter()
        .any(|l| l["decision"] == "rollback" && l["token"] == "rollout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_gate_rolls_back_a_slow_canary_and_passes_one_under_it() {
    let blue = Upstream::start("blue").await;
    let settings =
        "steps = [50, 100]\nstep_duration = \"1s\"\nmin_requests = 20\nmax_p99 = \"100ms\"";

    let slow = Upstream::start("green").await;
    slow.set_faults(0, Duration::from_millis(150));
    let proxy = admin_proxy(blue.addr, slow.addr, &plan(settings)).await;
    let traffic = Traffic::start(&proxy, 6);
    let status = wait_state(&proxy, "rolled_back", Duration::from_secs(20)).await;
    drop(traffic);
    let reason = status["history"]
        .as_array()
        .and_then(|h| h.last())
        .map(|d| d["reason"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert!(reason.contains("p99"), "{reason}");
    let p99 = status["measured"]["canary"]["p99_ms"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(p99 >= 150.0, "measured canary p99 {p99} ms");
    drop(proxy);

    let fine = Upstream::start("green").await;
    fine.set_faults(0, Duration::from_millis(60));
    let proxy = admin_proxy(blue.addr, fine.addr, &plan(settings)).await;
    let traffic = Traffic::start(&proxy, 6);
    let status = wait_state(&proxy, "complete", Duration::from_secs(20)).await;
    drop(traffic);
    assert_eq!(status["share"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_extends_the_step_then_holds() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let settings =
        "steps = [10, 100]\nstep_duration = \"300ms\"\nmin_requests = 1000\nmax_extensions = 2";
    let proxy = admin_proxy(blue.addr, green.addr, &plan(settings)).await;
    // A trickle: far fewer canary requests than needed.
    let _ = spread(&proxy).await;
    eventually(Duration::from_secs(10), "the rollout to hold", || async {
        !rollout(&proxy).await["held"].is_null()
    })
    .await;
    let status = rollout(&proxy).await;
    let seen = decisions(&status);
    assert_eq!(
        seen.iter().filter(|d| *d == "extend").count(),
        2,
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("hold"), "{seen:?}");
    assert_eq!(status["state"], "running");
    assert_eq!(status["step"], 0);
    assert_eq!(status["share"], 10, "not promoted on noise");
    assert!(
        status["held"]
            .as_str()
            .unwrap_or("")
            .contains("of the 1000"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_at_the_same_step() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let settings =
        "steps = [10, 50, 100]\nstep_duration = \"1s\"\nmin_requests = 20\nmax_extensions = 100";
    let proxy = admin_proxy(blue.addr, green.addr, &plan(settings)).await;
    let traffic = Traffic::start(&proxy, 4);
    eventually(Duration::from_secs(20), "the second step", || async {
        rollout(&proxy).await["step"] == 1
    })
    .await;
    // No more traffic: the second step cannot pass.
    drop(traffic);
    let body = proxy.body_now();
    assert!(body.contains("step = 1"), "{body}");
    let proxy = proxy
        .restart(ProxyOptions {
            admin: true,
            ..ProxyOptions::default()
        })
        .await;
    let status = rollout(&proxy).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["step"], 1, "{status}");
    assert_eq!(status["share"], 50);
    let bodies = spread(&proxy).await;
    let green_seen = bodies.get("green").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&green_seen),
        "about half of 200 to the canary, got {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_through_the_cli_rolls_back_at_once_and_is_audited() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let settings = "steps = [30, 60, 100]\nstep_duration = \"1h\"\nmin_requests = 20";
    let proxy = admin_proxy(blue.addr, green.addr, &plan(settings)).await;
    eventually(Duration::from_secs(10), "the first step", || async {
        rollout(&proxy).await["share"] == 30 && spread(&proxy).await.contains_key("green")
    })
    .await;
    // The rollout owns the split while it runs.
    let (status, body) = call(
        proxy.admin.expect("admin"),
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 50, "green": 50}"#),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &proxy.admin.expect("admin").to_string()])
        .args(["rollout", "abort", "shop"])
        .env("SWITCHYARD_TOKEN", WRITE_TOKEN)
        .output()
        .expect("run ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("rolled_back"), "{printed}");
    // At once: the next requests all go to the stable pool.
    assert_eq!(spread(&proxy).await.get("blue"), Some(&200));
    let audit = audit_lines(&proxy);
    let line = audit
        .iter()
        .find(|l| l["action"] == "rollout abort")
        .expect("the abort is audited");
    assert_eq!(line["token"], "deploy-bot", "who did it");
    assert_eq!(line["result"], "ok");
    let status = rollout(&proxy).await;
    let last = status["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("decision");
    assert_eq!(last["by"], "deploy-bot");
    assert_eq!(last["decision"], "rollback");

    // The CLI status reads it back.
    let out = std::process::Command::new(BIN)
        .args(["ctl", "--admin", &proxy.admin.expect("admin").to_string()])
        .args(["rollout", "status", "shop"])
        .env("SWITCHYARD_TOKEN", WRITE_TOKEN)
        .output()
        .expect("run ctl");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("blue -> green: rolled_back"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_header_needs_its_secret_when_one_is_set() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let extra = "override_header = \"x-pool\"\noverride_secret = \"let-me-in\"\n";
    let proxy = admin_proxy(blue.addr, green.addr, extra).await;
    let client = Client::new();
    let ask = |value: &'static str| {
        let client = client.clone();
        let url = proxy.url("/");
        async move {
            let req = hyper::Request::get(url)
                .header("x-pool", value)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            client.send(req).await.expect("reply").body
        }
    };
    assert_eq!(ask("green:let-me-in").await.trim(), "green");
    assert_eq!(ask("green").await.trim(), "blue", "no secret: ignored");
    assert_eq!(
        ask("green:guess").await.trim(),
        "blue",
        "wrong secret: ignored"
    );
    // The secret is not handed to the backend.
    assert!(green
        .seen()
        .iter()
        .all(|s| !s.headers.contains_key("x-pool")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_only_move_toward_the_canary_as_the_rollout_steps() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // Steps never end by time here; the test moves them through the file,
    // as a reload or restart would.
    let extra = format!(
        "sticky = true\n{}",
        plan("steps = [5, 25, 50, 100]\nstep_duration = \"1h\"\nmin_requests = 1000")
    );
    let proxy = admin_proxy(blue.addr, green.addr, &extra).await;
    let admin = proxy.admin.expect("admin");
    // The split the proxy serves (the file is written just before the new
    // split is swapped in, so the file alone can be a moment early).
    let split_is = |green_share: u32| async move {
        let (_, status) = call(
            admin,
            "GET",
            "/api/v1/status",
            Some(WRITE_TOKEN),
            None,
            None,
        )
        .await;
        status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "shop")
            .flat_map(|s| s["pools"].as_array().into_iter().flatten())
            .any(|p| p["name"] == "green" && p["share"] == green_share)
    };
    eventually(Duration::from_secs(10), "the first step's split", || {
        split_is(5)
    })
    .await;
    let clients = 400;
    let mut cookies = Vec::new();
    let mut last = Vec::new();
    for _ in 0..clients {
        let (pool, cookie) = crate::sticky::get(proxy.addr, &[]).await;
        cookies.push(cookie.expect("a sticky service sets a bucket cookie"));
        last.push(pool);
    }
    for (step, share) in [(1usize, 25u32), (2, 50)] {
        let body = proxy
            .body_now()
            .replace(&format!("step = {}", step - 1), &format!("step = {step}"));
        proxy.write_in_place(&proxy.config_text(&body));
        eventually(Duration::from_secs(10), "the next step's split", || {
            split_is(share)
        })
        .await;
        let mut on_green = 0;
        for (i, cookie) in cookies.iter().enumerate() {
            let (pool, _) = crate::sticky::get(proxy.addr, &[("cookie", cookie.clone())]).await;
            if last[i] == "green" {
                assert_eq!(
                    pool, "green",
                    "client {i} was sent back to stable at {share}%"
                );
            }
            on_green += usize::from(pool == "green");
            last[i] = pool;
        }
        crate::sticky::assert_green_follows_buckets(&cookies, on_green, share);
    }
    // A rollback moves everyone back.
    let (status, _) = call(
        proxy.admin.expect("admin"),
        "POST",
        "/api/v1/services/shop/rollout/abort",
        Some(WRITE_TOKEN),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    for cookie in cookies.iter().take(100) {
        let (pool, _) = crate::sticky::get(proxy.addr, &[("cookie", cookie.clone())]).await;
        assert_eq!(pool, "blue");
    }
}

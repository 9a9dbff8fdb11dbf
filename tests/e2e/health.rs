//! Health checking: active checks, passive ejection, pool failover, panic
//! mode, state across reloads and slow start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{free_port, read_head, tally, Client, HealthMode, Proxy, Upstream};

/// Fast active checks: a dead backend is out after 2 failed probes.
const FAST_CHECKS: &str = r#"
[services.shop.health]
path = "/healthz"
interval = "200ms"
timeout = "150ms"
jitter = "0s"
healthy_threshold = 2
unhealthy_threshold = 2
"#;

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shop(
    blue: u32,
    green: u32,
    blue_addrs: &[SocketAddr],
    green_addrs: &[SocketAddr],
    extra: &str,
) -> String {
    format!(
        "[[routes]]\nservice = \"shop\"\n\n[services.shop]\nsplit = {{ blue = {blue}, green = {green} }}\n{extra}\n\
         [services.shop.pools.blue]\nbackends = [{}]\n\n[services.shop.pools.green]\nbackends = [{}]\n{FAST_CHECKS}",
        list(blue_addrs),
        list(green_addrs)
    )
}

/// Waits for a log line containing every one of `parts`; returns when it came.
async fn log_line(proxy: &Proxy, parts: &[&str], within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if proxy
            .logs()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?}:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends requests from 4 workers until stopped; returns the failures.
fn background_traffic(
    proxy: &Proxy,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Vec<String>>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let client = Client::new();
    let workers = (0..4)
        .map(|_| {
            let (client, url, stop) = (client.clone(), proxy.url("/"), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match client.get(&url, None).await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();
    (stop, workers)
}

async fn failures_of(
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_rotation_in_time_and_returns_when_healthy() {
    let one = Upstream::start("blue").await;
    let two = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&shop(100, 0, &[one.addr, two.addr], &[green.addr], "")).await;
    let (stop, workers) = background_traffic(&proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed_at = Instant::now();
    let addr = one.addr;
    one.kill();
    let backend = format!("backend={addr}");
    let out_at = log_line(
        &proxy,
        &["backend unhealthy", &backend],
        Duration::from_secs(5),
    )
    .await;
    // interval x unhealthy_threshold + one interval, with room for a busy machine.
    assert!(
        out_at - killed_at < Duration::from_millis(200 * 2 + 200 + 1000),
        "took {:?} to notice",
        out_at - killed_at
    );
    let failures = failures_of(stop, workers).await;
    assert!(
        failures.is_empty(),
        "{} client errors: {:?}",
        failures.len(),
        failures.first()
    );

    let back = Upstream::start_at("blue", addr).await;
    log_line(
        &proxy,
        &["backend healthy", &backend],
        Duration::from_secs(5),
    )
    .await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 400, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("blue"), Some(&400));
    assert!(
        back.hits() > 100,
        "back in rotation: {} of 400",
        back.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_health_endpoints_take_backends_out() {
    let failing = Upstream::start("failing").await;
    let hanging = Upstream::start("hanging").await;
    let good = Upstream::start("good").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&shop(
        100,
        0,
        &[failing.addr, hanging.addr, good.addr],
        &[green.addr],
        "",
    ))
    .await;
    failing.set_health(HealthMode::Fail);
    hanging.set_health(HealthMode::Hang);
    log_line(
        &proxy,
        &[
            "backend unhealthy",
            &format!("backend={}", failing.addr),
            "status 500",
        ],
        Duration::from_secs(5),
    )
    .await;
    log_line(
        &proxy,
        &[
            "backend unhealthy",
            &format!("backend={}", hanging.addr),
            "no answer within",
        ],
        Duration::from_secs(5),
    )
    .await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        bodies.get("good"),
        Some(&300),
        "only the healthy backend serves: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_without_active_checks() {
    let live = Upstream::start("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let body = format!(
        "[[routes]]\nservice = \"s\"\n\n[services.s.outlier]\nconsecutive_failures = 3\nbase_ejection = \"1s\"\n\n\
         [services.s.pools.main]\nbackends = [\"{dead}\", \"{}\"]\n",
        live.addr
    );
    let proxy = Proxy::start(&body).await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 100, 1).await;
    assert!(
        failures.is_empty(),
        "retries hide the dead backend: {failures:?}"
    );
    assert_eq!(bodies.get("live"), Some(&100));
    let backend = format!("backend={dead}");
    log_line(
        &proxy,
        &["backend ejected", &backend],
        Duration::from_secs(2),
    )
    .await;

    let revived = Upstream::start_at("revived", dead).await;
    log_line(
        &proxy,
        &["back in rotation: ejection time is up", &backend],
        Duration::from_secs(5),
    )
    .await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 200, 2).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        revived.hits() > 0,
        "re-admitted after the ejection: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pool_gives_its_share_to_the_other_and_gets_it_back() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&shop(50, 50, &[blue.addr], &[green.addr], "")).await;
    let (stop, workers) = background_traffic(&proxy);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = blue.addr;
    blue.kill();
    log_line(
        &proxy,
        &["backend unhealthy", &format!("backend={addr}")],
        Duration::from_secs(5),
    )
    .await;
    let failures = failures_of(stop, workers).await;
    assert!(
        failures.is_empty(),
        "{} errors (no 503 while green is up): {:?}",
        failures.len(),
        failures.first()
    );
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("green"), Some(&300));

    let _back = Upstream::start_at("blue", addr).await;
    log_line(
        &proxy,
        &["backend healthy", &format!("backend={addr}")],
        Duration::from_secs(5),
    )
    .await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 2000, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let blue_pct = 100.0 * *bodies.get("blue").unwrap_or(&0) as f64 / 2000.0;
    assert!(
        (blue_pct - 50.0).abs() < 7.0,
        "the configured split returns: blue {blue_pct:.1}%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_panic_mode_with_a_clear_error() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&shop(50, 50, &[blue.addr], &[green.addr], "")).await;
    let green_addr = green.addr;
    let blue_addr = blue.addr;
    blue.kill();
    green.kill();
    // Both out of rotation before the request (one may fail its checks a
    // beat after the other).
    for addr in [green_addr, blue_addr] {
        log_line(
            &proxy,
            &["backend unhealthy", &format!("backend={addr}")],
            Duration::from_secs(5),
        )
        .await;
    }
    let reply = Client::new()
        .get(&proxy.url("/"), None)
        .await
        .expect("reply");
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.body,
        "502 Bad Gateway: no backend of service \"shop\" could be reached\n"
    );
    log_line(
        &proxy,
        &["panic mode: no backend is available", "service=shop"],
        Duration::from_secs(2),
    )
    .await;

    // In panic mode every backend is tried, so one that comes back serves
    // at once, before its checks pass.
    let _green = Upstream::start_at("green", green_addr).await;
    let reply = Client::new()
        .get(&proxy.url("/"), None)
        .await
        .expect("reply");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "green\n")
    );
    log_line(
        &proxy,
        &["backend healthy", &format!("backend={green_addr}")],
        Duration::from_secs(5),
    )
    .await;
    let reply = Client::new()
        .get(&proxy.url("/"), None)
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    log_line(
        &proxy,
        &["panic mode over", "service=shop"],
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_backend_stays_out_across_a_reload() {
    let sick = Upstream::start("sick").await;
    let fine = Upstream::start("fine").await;
    let green = Upstream::start("green").await;
    let body = shop(100, 0, &[sick.addr, fine.addr], &[green.addr], "");
    let proxy = Proxy::start(&body).await;
    sick.set_health(HealthMode::Fail);
    log_line(
        &proxy,
        &["backend unhealthy", &format!("backend={}", sick.addr)],
        Duration::from_secs(5),
    )
    .await;

    let with_route =
        format!("[[routes]]\nhost = \"other.example.com\"\nservice = \"shop\"\n\n{body}");
    proxy.write_in_place(&proxy.config_text(&with_route));
    proxy.wait_for_log("generation=2 routes=").await;
    let hits_before = sick.hits();
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("fine"), Some(&300), "{bodies:?}");
    assert_eq!(
        sick.hits(),
        hits_before,
        "still out of rotation after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_returning_backend_up() {
    let returning = Upstream::start("returning").await;
    let steady = Upstream::start("steady").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&shop(
        100,
        0,
        &[returning.addr, steady.addr],
        &[green.addr],
        "slow_start = \"4s\"\n",
    ))
    .await;
    returning.set_health(HealthMode::Fail);
    let backend = format!("backend={}", returning.addr);
    log_line(
        &proxy,
        &["backend unhealthy", &backend],
        Duration::from_secs(5),
    )
    .await;
    returning.set_health(HealthMode::Ok);
    log_line(
        &proxy,
        &["backend healthy", &backend],
        Duration::from_secs(5),
    )
    .await;

    let client = Client::new();
    let share = |bodies: &std::collections::BTreeMap<String, usize>| {
        let r = *bodies.get("returning").unwrap_or(&0) as f64;
        r / (r + *bodies.get("steady").unwrap_or(&0) as f64)
    };
    let (early, failures) = tally(&client, &proxy.url("/"), 400, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (late, _) = tally(&client, &proxy.url("/"), 400, 4).await;
    let (early, late) = (share(&early), share(&late));
    assert!(
        early < 0.35,
        "right after coming back it takes less than its half: {early:.2}"
    );
    assert!(
        late > 0.4,
        "after the window it takes its full half: {late:.2}"
    );
}

/// A backend that answers one request per connection and then closes it,
/// without saying so: the proxy pools connections the backend has closed.
async fn closing_backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let body = format!("{name}\n");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_are_not_held_against_a_backend() {
    let (closing, task) = closing_backend("closing").await;
    let other = Upstream::start("other").await;
    let body = format!(
        "[[routes]]\nservice = \"s\"\n\n[services.s.outlier]\nconsecutive_failures = 2\nbase_ejection = \"60s\"\n\n\
         [services.s.pools.main]\nbackends = [\"{closing}\", \"{}\"]\n",
        other.addr
    );
    let proxy = Proxy::start(&body).await;
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 300, 1).await;
    task.abort();
    assert!(
        failures.is_empty(),
        "stale connections are retried: {:?}",
        failures.first()
    );
    assert!(
        bodies.get("closing").copied().unwrap_or(0) > 50,
        "{bodies:?}"
    );
    assert!(
        !proxy.logs().contains("backend ejected"),
        "{}",
        proxy.logs()
    );
}

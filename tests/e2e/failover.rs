//! Retries to other backends and pools when a backend cannot be reached.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::blue_green;
use crate::harness::{free_port, tally, Client, Proxy, Upstream};

/// An address on loopback where nothing listens.
fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_test_costs_no_client_errors() {
    let one = Upstream::start("blue").await;
    let two = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&blue_green(100, 0, &[one.addr, two.addr], &[green.addr])).await;
    let client = Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let total = 3000;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, sent) = (client.clone(), proxy.url("/"), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while sent.fetch_add(1, Ordering::SeqCst) < total {
                match client.get(&url, None).await {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    crate::harness::eventually(
        std::time::Duration::from_secs(30),
        "a third of the requests",
        || {
            let sent = sent.clone();
            async move { sent.load(Ordering::SeqCst) >= total / 3 }
        },
    )
    .await;
    one.kill();
    // Handlers already running when the tasks were aborted may still count.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let hits_at_kill = one.hits();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(
        one.hits(),
        hits_at_kill,
        "the dead backend got nothing more"
    );
    assert!(two.hits() > total / 2, "the survivor took the traffic");
    assert_eq!(
        green.hits(),
        0,
        "the pool still had a backend: no spill to green"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backend_is_retried_within_the_pool_then_in_the_other_pool() {
    let live = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let client = Client::new();

    // One of two blue backends is down: every request still lands on blue.
    let proxy = Proxy::start(&blue_green(
        100,
        0,
        &[dead_addr(), live.addr],
        &[green.addr],
    ))
    .await;
    let (bodies, failures) = tally(&client, &proxy.url("/"), 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("blue"), Some(&200), "{bodies:?}");
    drop(proxy);

    // Every blue backend is down: green, which has a share, takes over.
    let proxy = Proxy::start(&blue_green(
        90,
        10,
        &[dead_addr(), dead_addr()],
        &[green.addr],
    ))
    .await;
    let (bodies, failures) = tally(&client, &proxy.url("/"), 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("green"), Some(&200), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_is_not_a_fallback_and_no_backend_gives_a_clear_502() {
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&blue_green(
        100,
        0,
        &[dead_addr(), dead_addr()],
        &[green.addr],
    ))
    .await;
    let reply = Client::new()
        .get(&proxy.url("/"), None)
        .await
        .expect("reply");
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.body,
        "502 Bad Gateway: no backend of service \"shop\" could be reached\n"
    );
    assert_eq!(
        green.hits(),
        0,
        "a pool with share 0 takes no traffic, even as a fallback"
    );
}

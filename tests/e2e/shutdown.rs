//! Graceful shutdown on SIGTERM.

use std::time::{Duration, Instant};

use crate::harness::{Client, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let up = Upstream::start("slow").await;
    let mut proxy = Proxy::start_with_server(
        &format!(
            "[[routes]]\nservice = \"s\"\n[services.s.pools.main]\nbackends = [\"{}\"]\n",
            up.addr
        ),
        "grace_period = \"10s\"\n",
    )
    .await;
    let client = Client::new();
    let url = proxy.url("/slow?ms=1500");
    let request = tokio::spawn(async move { client.get(&url, None).await });
    crate::harness::eventually(
        Duration::from_secs(5),
        "the upstream to get the request",
        || {
            let n = up.seen().len();
            async move { n == 1 }
        },
    )
    .await;
    let signalled = Instant::now();
    proxy.signal("TERM");
    let reply = request
        .await
        .expect("join")
        .expect("the in-flight request completes");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "slow\n");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exited {:?} after SIGTERM: it should not wait out the grace period once idle",
        signalled.elapsed()
    );
}

//! Weighted pool selection.

use crate::blue_green;
use crate::harness::{tally, Client, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_is_accurate_and_zero_share_gets_nothing() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let idle = Upstream::start("idle").await;
    let body = format!(
        r#"{}
[services.shop.pools.idle]
backends = ["{}"]
"#,
        blue_green(90, 10, &[blue.addr], &[green.addr]),
        idle.addr
    )
    .replace(
        "split = { blue = 90, green = 10 }",
        "split = { blue = 90, green = 10, idle = 0 }",
    );
    let proxy = Proxy::start(&body).await;
    let client = Client::new();
    let total = 20_000;
    let (bodies, failures) = tally(&client, &proxy.url("/"), total, 16).await;
    assert!(
        failures.is_empty(),
        "failures: {:?}",
        &failures[..failures.len().min(5)]
    );
    let blue_n = bodies.get("blue").copied().unwrap_or(0);
    let green_n = bodies.get("green").copied().unwrap_or(0);
    assert_eq!(blue_n + green_n, total, "{bodies:?}");
    let green_pct = 100.0 * green_n as f64 / total as f64;
    assert!(
        (green_pct - 10.0).abs() <= 1.5,
        "green got {green_pct:.2}% of {total}, want 10 ± 1.5"
    );
    assert_eq!(idle.hits(), 0, "a pool with share 0 gets no traffic");
}

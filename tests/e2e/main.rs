//! End-to-end tests: the real `switchyard` binary against real upstream
//! servers on loopback, driven by a real HTTP client.

mod harness;
mod pki;

mod acme;
mod admin;
mod bench_report;
mod check;
mod failover;
mod hardening;
mod headers;
mod health;
mod release_profile;
mod reload;
mod rollout;
mod routing;
mod shutdown;
mod split;
mod sticky;
mod tls;

use std::net::SocketAddr;

/// A service `shop` with pools `blue` and `green` at the given shares,
/// routed for every host and path.
pub fn blue_green(
    blue: u32,
    green: u32,
    blue_addrs: &[SocketAddr],
    green_addrs: &[SocketAddr],
) -> String {
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[[routes]]
path = "/"
service = "shop"

[services.shop]
split = {{ blue = {blue}, green = {green} }}

[services.shop.pools.blue]
backends = [{}]

[services.shop.pools.green]
backends = [{}]
"#,
        list(blue_addrs),
        list(green_addrs)
    )
}

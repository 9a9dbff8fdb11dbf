//! Sticky pool assignment and the override header.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::harness::{Proxy, Upstream};

/// One GET with extra headers; returns the body and any Set-Cookie.
pub(crate) async fn get(addr: SocketAddr, headers: &[(&str, String)]) -> (String, Option<String>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", "shop.example.com");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (String::from_utf8_lossy(&body).trim().to_string(), cookie)
}

/// Where a `switchyard_bucket=HEX` cookie falls, as a percentage (0..100)
/// of the bucket space: the pools' shares are laid end to end in name
/// order, so with blue and green a client is on green when this is at
/// least blue's share.
/// Each client is where its own bucket says, exactly (`on_green` of the
/// clients holding `cookies` are on green at `share`%); and the buckets,
/// drawn at random, put about the share there.
pub(crate) fn assert_green_follows_buckets(cookies: &[String], on_green: usize, share: u32) {
    let expected = cookies
        .iter()
        .filter(|c| bucket_share(c) >= 100 - share)
        .count();
    assert_eq!(
        on_green, expected,
        "clients follow their buckets at {share}%"
    );
    let observed = 100.0 * on_green as f64 / cookies.len() as f64;
    assert!(
        (observed - f64::from(share)).abs() <= 10.0,
        "at {share}% the canary took {observed:.1}% of clients"
    );
}

pub(crate) fn bucket_share(cookie: &str) -> u32 {
    let hex = cookie.split_once('=').map_or("0", |(_, v)| v);
    let bucket = u32::from_str_radix(hex, 16).unwrap_or(0);
    ((u64::from(bucket) * 100) >> 32) as u32
}

fn config(blue: SocketAddr, green: SocketAddr, green_share: u32, sticky: &str) -> String {
    format!(
        "[[routes]]\nservice = \"shop\"\n\n[services.shop]\nsplit = {{ blue = {}, green = {green_share} }}\n{sticky}\n\
         override_header = \"x-switchyard-pool\"\n\n\
         [services.shop.pools.blue]\nbackends = [\"{blue}\"]\n\n[services.shop.pools.green]\nbackends = [\"{green}\"]\n",
        100 - green_share
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_only_move_toward_the_canary_as_its_share_rises() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&config(blue.addr, green.addr, 5, "sticky = true")).await;
    let clients = 400;
    // Each client's cookie, from its first answer.
    let mut cookies = Vec::new();
    let mut pools: Vec<Vec<String>> = Vec::new();
    for _ in 0..clients {
        let (pool, cookie) = get(proxy.addr, &[]).await;
        cookies.push(cookie.expect("a sticky service sets a bucket cookie"));
        pools.push(vec![pool]);
    }
    let mut generation = 1;
    for share in [5u32, 25, 50] {
        if share != 5 {
            generation += 1;
            proxy.write_in_place(&proxy.config_text(&config(
                blue.addr,
                green.addr,
                share,
                "sticky = true",
            )));
            proxy
                .wait_for_log(&format!("generation={generation} routes="))
                .await;
        }
        let mut on_green = 0;
        for (i, cookie) in cookies.iter().enumerate() {
            let (pool, again) = get(proxy.addr, &[("cookie", cookie.clone())]).await;
            assert!(again.is_none(), "a client with a bucket gets no new cookie");
            // The same client asks twice: the same answer.
            let (repeat, _) = get(proxy.addr, &[("cookie", cookie.clone())]).await;
            assert_eq!(
                pool, repeat,
                "client {i} moved between two requests at {share}%"
            );
            if pools[i].last().is_some_and(|p| p == "green") {
                assert_eq!(
                    pool, "green",
                    "client {i} was sent back from the canary at {share}%"
                );
            }
            on_green += usize::from(pool == "green");
            pools[i].push(pool);
        }
        assert_green_follows_buckets(&cookies, on_green, share);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keeps_a_user_on_one_pool_and_the_override_forces_one() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&config(
        blue.addr,
        green.addr,
        50,
        "sticky = { header = \"x-user-id\" }",
    ))
    .await;
    for user in 0..40 {
        let id = format!("user-{user}");
        let (first, cookie) = get(proxy.addr, &[("x-user-id", id.clone())]).await;
        assert!(cookie.is_none(), "header-based stickiness sets no cookie");
        for _ in 0..3 {
            assert_eq!(
                get(proxy.addr, &[("x-user-id", id.clone())]).await.0,
                first,
                "{id}"
            );
        }
    }
    // Testers can force a pool, even one with no share.
    proxy.write_in_place(&proxy.config_text(&config(blue.addr, green.addr, 0, "")));
    proxy.wait_for_log("generation=2 routes=").await;
    for _ in 0..20 {
        assert_eq!(
            get(proxy.addr, &[("x-switchyard-pool", "green".into())])
                .await
                .0,
            "green"
        );
        assert_eq!(get(proxy.addr, &[]).await.0, "blue");
    }
    let (pool, _) = get(proxy.addr, &[("x-switchyard-pool", "purple".into())]).await;
    assert_eq!(pool, "blue", "an unknown pool name is ignored");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

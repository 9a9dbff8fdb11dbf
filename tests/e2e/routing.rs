//! Host and path routing.

use crate::harness::{Client, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_exact_host_wildcard_and_longest_prefix() {
    let shop = Upstream::start("shop").await;
    let api = Upstream::start("api").await;
    let v2 = Upstream::start("api-v2").await;
    let wild = Upstream::start("wild").await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
host = "shop.example.com"
service = "shop"

[[routes]]
host = "shop.example.com"
path = "/api"
service = "api"

[[routes]]
host = "shop.example.com"
path = "/api/v2"
service = "v2"

[[routes]]
host = "*.example.com"
service = "wild"

[services.shop.pools.main]
backends = ["{}"]
[services.api.pools.main]
backends = ["{}"]
[services.v2.pools.main]
backends = ["{}"]
[services.wild.pools.main]
backends = ["{}"]
"#,
        shop.addr, api.addr, v2.addr, wild.addr
    ))
    .await;
    let client = Client::new();
    let cases = [
        ("shop.example.com", "/", "shop"),
        ("shop.example.com", "/cart?id=1", "shop"),
        ("SHOP.example.com:8080", "/", "shop"),
        ("shop.example.com", "/api", "api"),
        ("shop.example.com", "/api/users", "api"),
        ("shop.example.com", "/apiary", "shop"),
        ("shop.example.com", "/api/v2/users", "api-v2"),
        ("www.example.com", "/", "wild"),
        ("a.b.example.com", "/anything", "wild"),
    ];
    for (host, path, want) in cases {
        let reply = client
            .get(&proxy.url(path), Some(host))
            .await
            .unwrap_or_else(|e| panic!("{host}{path}: {e}"));
        assert_eq!(reply.status, 200, "{host}{path}: {reply:?}");
        assert_eq!(reply.body.trim(), want, "{host}{path}");
    }
    let last = api.seen().pop().expect("api saw a request");
    assert_eq!(last.target, "/api/users", "the path is forwarded unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_or_path_is_404() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
host = "a.example.com"
path = "/app"
service = "a"

[services.a.pools.main]
backends = ["{}"]
"#,
        up.addr
    ))
    .await;
    let client = Client::new();
    for (host, path) in [
        ("b.example.com", "/app"),
        ("example.com", "/app"),
        ("a.example.com", "/"),
    ] {
        let reply = client
            .get(&proxy.url(path), Some(host))
            .await
            .expect("reply");
        assert_eq!(reply.status, 404, "{host}{path}");
        assert_eq!(
            reply.body,
            "404 Not Found: no route matches this host and path\n"
        );
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    let ok = client
        .get(&proxy.url("/app/x"), Some("a.example.com"))
        .await
        .expect("reply");
    assert_eq!(ok.status, 200);
}

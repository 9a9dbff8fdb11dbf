//! Hostile and broken requests, with raw sockets: smuggling shapes, bad
//! hosts, limits, spoofed forwarding headers, hanging backends, and the
//! access log.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{raw_backend, read_head, Client, Proxy, ProxyOptions, Upstream};

/// Sends `raw`, reads until the proxy closes (or 5 s pass); returns what
/// came back and whether the connection was closed.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Status lines in what came back.
fn answers(reply: &str) -> usize {
    reply.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count()
}

fn body(upstream: std::net::SocketAddr, http: &str) -> String {
    format!(
        "{http}\n[[routes]]\nservice = \"app\"\n\n[services.app]\nread_timeout = \"1s\"\n\n\
         [services.app.pools.main]\nbackends = [\"{upstream}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_the_connection_closed() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    // Both Content-Length and Transfer-Encoding: the length is dropped, the
    // chunked body is forwarded alone, and the connection closes after the
    // answer, so bytes after the body are never read as a request.
    for raw in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let (reply, closed) = exchange(proxy.addr, raw.as_bytes()).await;
        assert!(closed, "closed after the answer: {reply:?}");
        assert_eq!(answers(&reply), 1, "one answer: {reply:?}");
    }
    for seen in up.seen() {
        assert_ne!(seen.target, "/smuggled", "the smuggled request never ran");
        assert!(
            !seen.headers.contains_key("content-length"),
            "never both framings upstream"
        );
    }
    let before = up.hits();
    let cases: [(&str, &str); 11] = [
        (
            "chunked twice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "final coding not chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "two different CL",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "repeated CL",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "signed CL",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "TE on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        ),
        (
            "NUL in a value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\0b\r\n\r\n",
        ),
        (
            "no Host on HTTP/1.1",
            "GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
        ),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let (reply, closed) = exchange(proxy.addr, raw.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{name}: expected 400, got {reply:?}"
        );
        assert!(closed, "{name}: the connection must close");
        assert_eq!(answers(&reply), 1, "{name}: one answer only");
    }
    // Request-line garbage is refused, not escaped and forwarded.
    for line in [
        "GET /a b HTTP/1.1",
        "GET /a\x01b HTTP/1.1",
        "GE(T / HTTP/1.1",
        "GET / HTTP/1.01",
        "GET /<script> HTTP/1.1",
    ] {
        let (reply, closed) =
            exchange(proxy.addr, format!("{line}\r\nHost: a\r\n\r\n").as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400") && closed,
            "{line:?}: {reply:?}"
        );
    }
    let (reply, closed) = exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 400") && closed,
        "invalid Host: {reply:?}"
    );
    assert_eq!(up.hits(), before, "no refused request reached the upstream");

    // A well-formed chunked request still goes through.
    let (reply, _) = exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_gets_400_and_a_closed_connection() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    let (reply, closed) = exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(closed, "{reply:?}");
    assert!(
        !reply.contains("200 OK"),
        "neither the body nor what follows is served: {reply:?}"
    );
    assert!(
        up.seen().iter().all(|s| s.target != "/next"),
        "bytes after a framing error are never a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_targets_and_bodies_get_431_414_and_413() {
    let up = Upstream::start("app").await;
    let limits = "[http]\nmax_header_bytes = 4096\nmax_headers = 20\nmax_uri_bytes = 256\nmax_body_bytes = 1000\n";
    let proxy = Proxy::start(&body(up.addr, limits)).await;
    let big = "x".repeat(5000);
    let (reply, closed) = exchange(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431") && closed, "{reply:?}");
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (reply, _) = exchange(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    let long = "a".repeat(300);
    let (reply, _) = exchange(
        proxy.addr,
        format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply:?}");
    let (reply, _) = exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    assert_eq!(up.hits(), 0);
    // A chunked body that grows past the limit is cut off with 413 too.
    let chunk = "y".repeat(600);
    let (reply, closed) = exchange(
        proxy.addr,
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413") && closed, "{reply:?}");
    // Within the limits: served.
    let (reply, _) = exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_gets_504_after_the_read_timeout_and_a_slow_one_succeeds() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    let client = Client::new();
    let started = std::time::Instant::now();
    let reply = client
        .get(&proxy.url("/slow?ms=3000"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 504, "{}", reply.body);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2900),
        "cut at the 1 s read timeout, took {took:?}"
    );
    let reply = client
        .get(&proxy.url("/slow?ms=300"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    drop(proxy);

    // A total budget for the whole request, shorter than the read timeout.
    let proxy = Proxy::start(
        &body(up.addr, "").replace("read_timeout = \"1s\"", "request_timeout = \"700ms\""),
    )
    .await;
    let started = std::time::Instant::now();
    let reply = client
        .get(&proxy.url("/slow?ms=3000"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

/// A backend's peer (where and how requests go to it, with the service's
/// timeouts) is made for its first request and shared by the next ones: a
/// reload that changes the timeouts makes a new one, and a request with a
/// total budget gets its own, cut to what is left of the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_read_timeout_applies_to_a_backend_already_in_use() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "").replace("\"1s\"", "\"5s\"")).await;
    let client = Client::new();
    for _ in 0..3 {
        let reply = client
            .get(&proxy.url("/slow?ms=1200"), Some("a"))
            .await
            .expect("reply");
        assert_eq!(reply.status, 200, "within the 5 s read timeout");
    }

    proxy.replace_atomically(&proxy.config_text(&body(up.addr, "").replace("\"1s\"", "\"300ms\"")));
    proxy.wait_for_log("generation=2 routes=").await;
    let started = std::time::Instant::now();
    let reply = client
        .get(&proxy.url("/slow?ms=1200"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(
        reply.status, 504,
        "the reloaded 300 ms read timeout: {}",
        reply.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    let reply = client.get(&proxy.url("/"), Some("a")).await.expect("reply");
    assert_eq!(reply.status, 200, "a quick answer still passes");

    // A total budget: the shared peer's 5 s read timeout is cut, for this
    // request only, to what is left of 600 ms.
    proxy.replace_atomically(&proxy.config_text(&body(up.addr, "").replace(
        "read_timeout = \"1s\"",
        "read_timeout = \"5s\"\nrequest_timeout = \"600ms\"",
    )));
    proxy.wait_for_log("generation=3 routes=").await;
    let reply = client.get(&proxy.url("/"), Some("a")).await.expect("reply");
    assert_eq!(reply.status, 200);
    let started = std::time::Instant::now();
    let reply = client
        .get(&proxy.url("/slow?ms=1500"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let reply = client
        .get(&proxy.url("/slow?ms=200"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 200, "the next request has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let up = Upstream::start("app").await;
    let spoof = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";

    let proxy = Proxy::start(&body(up.addr, "")).await;
    let (reply, _) = exchange(proxy.addr, spoof.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let seen = up.seen().pop().expect("request");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "not believed");
    assert!(!seen.headers.contains_key("forwarded"));
    assert!(!seen.headers.contains_key("x-real-ip"));
    drop(proxy);

    let trusted = "[http]\ntrusted_proxies = [\"127.0.0.0/8\", \"::1\"]\n";
    let proxy = Proxy::start_with(
        &body(up.addr, trusted),
        ProxyOptions {
            server: "grace_period = \"5s\"\naccess_log = \"access.log\"\n".into(),
            ..ProxyOptions::default()
        },
    )
    .await;
    let (reply, _) = exchange(proxy.addr, spoof.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let seen = up.seen().pop().expect("request");
    assert_eq!(
        seen.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1",
        "a trusted proxy's chain is kept and extended"
    );
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    // The access log names the real client: the address the trusted proxy gave.
    let log = proxy.dir().join("access.log");
    crate::harness::eventually(Duration::from_secs(5), "an access log line", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())
    })
    .await;
    let text = std::fs::read_to_string(&log).expect("access log");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("line")).expect("JSON line");
    assert_eq!(line["client"], "6.6.6.6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_and_request_ids_pass_upstream() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start_with(
        &body(up.addr, ""),
        ProxyOptions {
            server: "grace_period = \"5s\"\naccess_log = \"access.log\"\n".into(),
            ..ProxyOptions::default()
        },
    )
    .await;
    let client = Client::new();
    let reply = client
        .get(&proxy.url("/hello?x=1"), Some("shop.example.com"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    let seen = up.seen().pop().expect("request");
    let id = seen.headers["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert_eq!(id.len(), 32, "a generated id, passed upstream: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    let req = hyper::Request::get(proxy.url("/given"))
        .header("x-request-id", "trace-abc-123")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let reply = client.send(req).await.expect("reply");
    assert_eq!(reply.status, 200);
    let seen = up.seen().pop().expect("request");
    assert_eq!(seen.headers["x-request-id"], "trace-abc-123", "kept");

    let log = proxy.dir().join("access.log");
    crate::harness::eventually(Duration::from_secs(5), "two access log lines", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    })
    .await;
    let text = std::fs::read_to_string(&log).expect("access log");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("line")).expect("JSON line");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["host"], "shop.example.com");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello?x=1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 4, "the body \"app\\n\"");
    assert_eq!(line["service"], "app");
    assert_eq!(line["pool"], "main");
    assert_eq!(line["backend"], up.addr.to_string());
    assert_eq!(line["request_id"], id.as_str());
    assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(line["upstream_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_limit_gets_429_and_other_clients_are_unaffected() {
    let up = Upstream::start("app").await;
    // Clients come through a trusted balancer that names them in X-Forwarded-For.
    let http = "[http]\ntrusted_proxies = [\"127.0.0.1\"]\nrate_limit = { requests_per_second = 0.5, burst = 5 }\n";
    let proxy = Proxy::start(&body(up.addr, http)).await;
    let client = Client::new();
    let ask = |who: &'static str| {
        let client = client.clone();
        let url = proxy.url("/");
        async move {
            let req = hyper::Request::get(url)
                .header("x-forwarded-for", who)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            client.send(req).await.expect("reply")
        }
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let reply = ask("198.51.100.7").await;
        if reply.status == 429 {
            retry_after = reply.headers.get("retry-after").cloned();
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "burst of 5"
    );
    let retry_after: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(up.hits(), 5, "limited requests never reach the backend");
    // Another client is unaffected.
    for _ in 0..5 {
        assert_eq!(ask("198.51.100.8").await.status, 200);
    }
}

/// Sends a WebSocket frame with `text` and expects it back unchanged.
async fn echo(tcp: &mut TcpStream, text: &str) {
    let frame = ws_frame(text);
    tcp.write_all(&frame).await.expect("send frame");
    let mut back = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, frame, "echoed through the proxy");
}

/// A masked WebSocket text frame (client to server) carrying `text`.
fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_stays_on_its_backend_across_a_reload_and_a_weight_change() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let config = |blue_share: u32| {
        format!(
            "[[routes]]\nservice = \"app\"\n\n[services.app]\nsplit = {{ blue = {blue_share}, green = {} }}\n\n\
             [services.app.pools.blue]\nbackends = [\"{}\"]\n\n[services.app.pools.green]\nbackends = [\"{}\"]\n",
            100 - blue_share,
            blue.addr,
            green.addr
        )
    };
    let proxy = Proxy::start(&config(100)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    // The 101 head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-upstream: blue"), "{head}");

    echo(&mut tcp, "hello").await;

    // A reload that moves all new traffic to green.
    proxy.write_in_place(&proxy.config_text(&config(0)));
    proxy.wait_for_log("generation=2 routes=").await;
    let reply = Client::new()
        .get(&proxy.url("/"), Some("a"))
        .await
        .expect("reply");
    assert_eq!(
        reply.body.trim(),
        "green",
        "new requests follow the new split"
    );
    echo(&mut tcp, "still here").await;
    assert!(
        proxy.logs().contains("generation=2"),
        "the reload happened while the socket was open"
    );
    assert_eq!(blue.hits(), 1, "the socket stayed on blue");
}

/// Reads one response with a fresh connection; returns the raw bytes and
/// whether the proxy closed the connection. `close` asks it to.
async fn fetch(proxy: &Proxy, method: &str, body: &str, close: bool) -> (String, bool) {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let raw = format!(
        "{method} / HTTP/1.1\r\nHost: a\r\n{connection}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(proxy.addr, raw.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_body_gives_a_truncated_response() {
    // Content-Length promises 100 bytes; 5 come.
    let (addr, _, _task) = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
        false,
    )
    .await;
    let proxy = Proxy::start(&body(addr, "")).await;
    let (reply, closed) = fetch(&proxy, "GET", "", false).await;
    assert!(closed, "{reply:?}");
    let (_, got) = reply.split_once("\r\n\r\n").expect("a head");
    assert!(
        !reply
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
            || !got.ends_with("0\r\n\r\n"),
        "never a complete-looking chunked body: {reply:?}"
    );
    assert!(
        reply.contains("Content-Length: 100") && got == "short",
        "the promised length, the bytes that came, then the close: {reply:?}"
    );
    drop(proxy);

    // Chunked: one chunk, then the upstream is gone.
    let (addr, _, _task2) = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        false,
    )
    .await;
    let proxy = Proxy::start(&body(addr, "")).await;
    let (reply, closed) = fetch(&proxy, "GET", "", false).await;
    assert!(closed, "{reply:?}");
    assert!(
        !reply.ends_with("0\r\n\r\n"),
        "no final chunk after a truncated body: {reply:?}"
    );
}

/// A backend that answers every request with `pieces`, each written after
/// its delay, then holds the connection open, silent.
async fn paced_upstream(
    pieces: &'static [(u64, &'static [u8])],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut tcp).await.is_some() {
                    for (delay_ms, piece) in pieces {
                        tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
                        let _ = tcp.write_all(piece).await;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_is_cut_off_at_the_read_timeout() {
    // 5 of 100 promised bytes, then silence with the connection held open.
    let (addr, _task) =
        paced_upstream(&[(0, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")]).await;
    let proxy = Proxy::start(&body(addr, "")).await;
    let started = std::time::Instant::now();
    let (reply, closed) = fetch(&proxy, "GET", "", false).await;
    let took = started.elapsed();
    assert!(closed, "the proxy closes the cut-off response: {reply:?}");
    assert!(
        reply.contains("Content-Length: 100") && reply.ends_with("short"),
        "{reply:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut at the 1 s read timeout, took {took:?}"
    );
}

/// A proxy with an HTTPS listener too, serving a `shop.example.com`
/// certificate of a test CA (returned, for clients that verify it).
/// `listen_extra` goes in its `[listen]` table.
async fn https_proxy(
    upstream: std::net::SocketAddr,
    http: &str,
    listen_extra: &str,
) -> (Proxy, crate::pki::TestCa) {
    let ca = crate::pki::TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    ca.leaf(&["shop.example.com"]).write(dir.path(), "shop");
    let config = format!(
        "[[tls.certificates]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\ndefault = true\n\n{}",
        body(upstream, http).replace(
            "service = \"app\"\n",
            "service = \"app\"\nhttps_redirect = false\n"
        )
    );
    let proxy = Proxy::start_with(
        &config,
        ProxyOptions {
            https: true,
            dir: Some(dir),
            listen_extra: listen_extra.into(),
            ..ProxyOptions::default()
        },
    )
    .await;
    (proxy, ca)
}

/// 30 bytes in three pieces 700 ms apart: 1.4 s, past a 1 s keep-alive
/// timeout, while the backend is never silent for its 1 s read timeout.
const SLOW_30_BYTES: &[(u64, &[u8])] = &[
    (
        0,
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n0123456789",
    ),
    (700, b"abcdefghij"),
    (700, b"ABCDEFGHIJ"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streaming_longer_than_the_keepalive_timeout_is_not_cut() {
    let (addr, _task) = paced_upstream(SLOW_30_BYTES).await;
    let proxy = Proxy::start(&body(addr, "[http]\nkeepalive_timeout = \"1s\"\n")).await;
    let (reply, _) = fetch(&proxy, "GET", "", true).await;
    assert!(
        reply.ends_with("0123456789abcdefghijABCDEFGHIJ"),
        "the whole body: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_upstream_framing_is_refused_with_502() {
    for (name, script) in [
        (
            "two different Content-Length",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!"[..],
        ),
        (
            "invalid chunk size",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        ),
    ] {
        let (addr, _, _task) = raw_backend(script, false).await;
        let proxy = Proxy::start(&body(addr, "")).await;
        let (reply, closed) = fetch(&proxy, "GET", "", false).await;
        let ok = reply.starts_with("HTTP/1.1 502")
            || (closed && !reply.ends_with("0\r\n\r\n") && !reply.contains("hello!!"));
        assert!(ok, "{name}: 502, or a cut-off answer: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_never_replayed_to_another_backend() {
    // The first backend takes the request and dies without answering.
    let (dead, dead_seen, _task) = raw_backend(b"", false).await;
    let alive = Upstream::start("alive").await;
    let config = format!(
        "[[routes]]\nservice = \"app\"\n\n[services.app]\n\n\
         [services.app.pools.main]\nbackends = [\"{dead}\", \"{}\"]\n",
        alive.addr
    );
    let proxy = Proxy::start(&config).await;
    let mut posted = 0;
    for _ in 0..6 {
        let (reply, _) = fetch(&proxy, "POST", "payment=1", true).await;
        if reply.starts_with("HTTP/1.1 502") {
            posted += 1;
        }
    }
    assert!(posted > 0, "some POSTs went to the dying backend");
    let replayed = alive.seen().len().saturating_sub(6 - posted);
    assert_eq!(
        replayed, 0,
        "a POST whose body went to one backend is never sent to another"
    );
    assert_eq!(
        dead_seen.lock().expect("seen").len(),
        posted,
        "each failed POST reached exactly one backend"
    );
}

/// Sends `raw` one byte every `gap`; returns when the proxy closed the
/// connection (or answered), with the time it took and what came back.
async fn trickle(
    addr: std::net::SocketAddr,
    prefix: &[u8],
    raw: &[u8],
    gap: Duration,
) -> (Duration, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(prefix).await.expect("prefix");
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = tcp.into_split();
    let raw = raw.to_vec();
    let writer = tokio::spawn(async move {
        for b in raw {
            tokio::time::sleep(gap).await;
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
        }
        // Keep the write half open.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_head_is_cut_off_at_the_header_timeout() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nheader_timeout = \"2s\"\n")).await;
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // A byte every 300 ms: each read is quick, the whole head is not.
    let (took, got) = trickle(proxy.addr, b"", head, Duration::from_millis(300)).await;
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "cut off at about 2 s, took {took:?}: {got:?}"
    );
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout"),
        "told why, then closed: {got:?}"
    );

    // The same on a keep-alive connection's second request.
    let (took, got) = trickle(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        head,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(got.matches("200 OK").count(), 1, "only the first: {got:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(up.hits(), 1);

    // A head that arrives in time, then a slow body, is served.
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    for b in b"body" {
        tokio::time::sleep(Duration::from_millis(800)).await;
        tcp.write_all(&[*b]).await.expect("body byte");
    }
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.expect("reply");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_l4_balancer_the_proxy_protocol_names_the_client() {
    let up = Upstream::start("app").await;
    let (proxy, _ca) = https_proxy(up.addr, "", "proxy_protocol = true\n").await;
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

    // Version 1, plain HTTP; two requests on the connection, each naming
    // the client the header gave (the address is formatted once per
    // connection and reused).
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .expect("write");
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !first.ends_with(b"app\n") {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&buf[..n]),
            other => panic!("no first answer: {other:?} after {first:?}"),
        }
    }
    tcp.write_all(get).await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    let reply = String::from_utf8_lossy(&[first, rest].concat()).into_owned();
    assert_eq!(answers(&reply), 2, "{reply:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.headers["x-forwarded-for"], "203.0.113.7");
    }

    // Version 2 (binary), plain HTTP.
    let mut raw = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    raw.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0, 80,
    ]);
    raw.extend_from_slice(get);
    let (reply, _) = exchange(proxy.addr, &raw).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert_eq!(
        up.seen().pop().expect("seen").headers["x-forwarded-for"],
        "198.51.100.9"
    );

    // Before the TLS handshake, on the HTTPS listener.
    let spec = crate::pki::ClientSpec {
        sni: Some("shop.example.com"),
        ..crate::pki::ClientSpec::default()
    };
    let mut tls = crate::pki::tls_connect_after(
        proxy.https.expect("https"),
        spec,
        b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n",
    )
    .await
    .expect("handshake after the PROXY header");
    tls.write_all(get).await.expect("request");
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        up.seen().pop().expect("seen").headers["x-forwarded-for"],
        "2001:db8::7"
    );

    // Without a header, the connection is closed unanswered.
    let before = up.hits();
    let (reply, closed) = exchange(proxy.addr, get).await;
    assert!(closed && reply.is_empty(), "{reply:?}");
    assert_eq!(up.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_may_hold_only_so_many_connections() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nmax_connections_per_client = 2\n")).await;
    let keep_alive = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let open = || async {
        let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        tcp.write_all(keep_alive).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("in time")
            .unwrap_or(0);
        (tcp, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let (first, reply) = open().await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let (_second, reply) = open().await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let (_third, reply) = open().await;
    assert!(
        reply.is_empty(),
        "a third connection is closed unanswered: {reply:?}"
    );
    drop(first);
    crate::harness::eventually(
        Duration::from_secs(5),
        "room for a new connection",
        || async { open().await.1.starts_with("HTTP/1.1 200") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nkeepalive_timeout = \"1s\"\n")).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after about 1 s idle, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_keepalive_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // A response streaming for 1.4 s, past the 1 s timeout: the
    // connection is busy while a stream is in flight.
    let (addr, _task) = paced_upstream(SLOW_30_BYTES).await;
    let (proxy, ca) = https_proxy(addr, "[http]\nkeepalive_timeout = \"1s\"\n", "").await;
    let https = proxy.https.expect("https");
    let connect = || async {
        let spec = crate::pki::ClientSpec {
            sni: Some("shop.example.com"),
            roots: Some(ca.roots()),
            alpn: &[b"h2"],
            ..crate::pki::ClientSpec::default()
        };
        let tls = crate::pki::tls_connect(https, spec)
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        // Resolves when the proxy closes the connection.
        let closed = tokio::spawn(async move {
            let _ = conn.await;
            std::time::Instant::now()
        });
        (sender, closed)
    };
    let closed_after = |closed: tokio::task::JoinHandle<std::time::Instant>, idle| async move {
        let at = tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("closed in time")
            .expect("connection task");
        at.saturating_duration_since(idle)
    };

    // A connection that never sends a request.
    let (_sender, closed) = connect().await;
    let took = closed_after(closed, std::time::Instant::now()).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "a silent connection closed after about 1 s, took {took:?}"
    );

    // A connection whose one stream outlasts the timeout.
    let (mut sender, closed) = connect().await;
    let req = hyper::Request::get("https://shop.example.com/slow")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes();
    assert_eq!(&body[..], b"0123456789abcdefghijABCDEFGHIJ");
    let took = closed_after(closed, std::time::Instant::now()).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed about 1 s after its stream ended, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_the_https_listener() {
    let up = Upstream::start("app").await;
    let (proxy, _ca) = https_proxy(up.addr, "", "").await;
    let spec = crate::pki::ClientSpec {
        sni: Some("shop.example.com"),
        alpn: &[b"http/1.1"],
        ..crate::pki::ClientSpec::default()
    };
    let mut tls = crate::pki::tls_connect(proxy.https.expect("https"), spec)
        .await
        .expect("handshake");
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: shop.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for text in ["over tls", "and again"] {
        let frame = ws_frame(text);
        tls.write_all(&frame).await.expect("send frame");
        let mut back = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, frame, "echoed through the HTTPS listener");
    }
}

/// Everything read until the proxy closes the connection, which it must
/// do within 5 s.
async fn until_closed(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply)).await;
    assert!(matches!(read, Ok(Ok(_))), "closed after the last answer");
    String::from_utf8_lossy(&reply).into_owned()
}

/// The bodies in `reply`, in order, each an upstream's name.
fn names_in_order<'a>(reply: &str, names: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<(usize, &str)> = names
        .iter()
        .flat_map(|name| {
            let body = format!("\r\n\r\n{name}\n");
            let at: Vec<usize> = reply.match_indices(&body).map(|(at, _)| at).collect();
            at.into_iter().map(move |at| (at, *name))
        })
        .collect();
    found.sort_unstable();
    found.into_iter().map(|(_, name)| name).collect()
}

/// The targets an upstream was asked for, in order.
fn targets(up: &Upstream) -> Vec<String> {
    up.seen().into_iter().map(|s| s.target).collect()
}

/// Upstreams `blue` and `green`, and a proxy with `http` and
/// [`two_hosts`]' routes to them.
async fn two_host_proxy(http: &str) -> (Upstream, Upstream, Proxy) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = Proxy::start(&two_hosts(&blue, &green, http)).await;
    (blue, green, proxy)
}

/// Two services by host, `a.test` (blue) and `b.test` (green); other hosts
/// have no route.
fn two_hosts(blue: &Upstream, green: &Upstream, http: &str) -> String {
    format!(
        "{http}\n[[routes]]\nhost = \"a.test\"\nservice = \"blue\"\n\n\
         [[routes]]\nhost = \"b.test\"\nservice = \"green\"\n\n\
         [services.blue]\nread_timeout = \"5s\"\n\n\
         [services.blue.pools.main]\nbackends = [\"{}\"]\n\n\
         [services.green.pools.main]\nbackends = [\"{}\"]\n",
        blue.addr, green.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_answered_in_order() {
    let (blue, green, proxy) = two_host_proxy("").await;

    // Four requests in one write, to two services, with and without
    // bodies; the first answer is the slowest. Each is answered, in the
    // order asked, and each body reaches its upstream whole.
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET /slow?ms=200 HTTP/1.1\r\nHost: a.test\r\n\r\n\
          POST /posted HTTP/1.1\r\nHost: b.test\r\nContent-Length: 5\r\n\r\nhello\
          POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /last HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(closed, "closed after the last answer: {reply:?}");
    assert_eq!(answers(&reply), 4, "{reply:?}");
    assert_eq!(
        names_in_order(&reply, &["blue", "green"]),
        ["blue", "green", "blue", "green"],
        "{reply:?}"
    );
    assert_eq!(targets(&blue), ["/slow?ms=200", "/chunked"]);
    assert_eq!(targets(&green), ["/posted", "/last"]);
    assert_eq!(green.seen()[0].headers["content-length"], "5");

    // The next request sent while the one before it is still waiting on
    // its upstream.
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(b"GET /after HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let reply = until_closed(&mut tcp).await;
    assert_eq!(answers(&reply), 2, "{reply:?}");
    assert_eq!(
        names_in_order(&reply, &["blue", "green"]),
        ["green", "blue"],
        "{reply:?}"
    );
    assert_eq!(targets(&blue).last().map(String::as_str), Some("/after"));

    // An answer the proxy makes itself (no route for the host) does not
    // lose the request behind it.
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n\
          GET /found HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(closed, "{reply:?}");
    assert_eq!(answers(&reply), 2, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply:?}");
    assert_eq!(names_in_order(&reply, &["blue", "green"]), ["blue"]);
    assert_eq!(targets(&blue).last().map(String::as_str), Some("/found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_over_tls_are_each_answered() {
    let up = Upstream::start("app").await;
    let (proxy, _ca) = https_proxy(up.addr, "", "").await;
    let spec = crate::pki::ClientSpec {
        sni: Some("shop.example.com"),
        ..crate::pki::ClientSpec::default()
    };
    let mut tls = crate::pki::tls_connect(proxy.https.expect("https"), spec)
        .await
        .expect("handshake");
    tls.write_all(
        b"GET /one HTTP/1.1\r\nHost: shop.example.com\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 3\r\n\r\nabc\
          GET /three HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("requests");
    let reply = until_closed(&mut tls).await;
    assert_eq!(answers(&reply), 3, "{reply:?}");
    assert_eq!(targets(&up), ["/one", "/two", "/three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_pipelined_requests_longer_than_one_read_is_answered_whole() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    // 300 requests, about 24 KiB in one write: the proxy reads them in
    // several pieces, each starting anywhere in a head.
    let count = 300;
    let mut batch = String::new();
    let mut want = Vec::new();
    for i in 0..count {
        let close = if i + 1 == count {
            "Connection: close\r\n"
        } else {
            ""
        };
        batch.push_str(&format!(
            "GET /r{i} HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n{close}\r\n",
            "p".repeat(20 + i % 40)
        ));
        want.push(format!("/r{i}"));
    }
    assert!(batch.len() > 20_000, "{}", batch.len());
    let (reply, closed) = exchange(proxy.addr, batch.as_bytes()).await;
    assert!(closed, "closed after the last answer");
    assert_eq!(answers(&reply), count, "{reply:?}");
    assert_eq!(reply.matches("HTTP/1.1 200").count(), count, "{reply:?}");
    assert_eq!(targets(&up), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_request_behind_a_large_body_is_answered_and_the_body_never_read_as_one() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    // A 300 KB body made of request heads, then a request: the body is
    // forwarded whole, nothing in it runs, and the request behind it is
    // answered.
    let fake = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let payload = fake.repeat(300_000 / fake.len());
    for framing in ["length", "chunked"] {
        let mut raw = match framing {
            "length" => format!(
                "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{payload}",
                payload.len()
            ),
            _ => format!(
                "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{payload}\r\n0\r\n\r\n",
                payload.len()
            ),
        };
        raw.push_str("GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (reply, closed) = exchange(proxy.addr, raw.as_bytes()).await;
        assert!(closed, "{framing}: {reply:?}");
        assert_eq!(answers(&reply), 2, "{framing}: {reply:?}");
        assert_eq!(
            reply.matches("HTTP/1.1 200").count(),
            2,
            "{framing}: {reply:?}"
        );
    }
    assert_eq!(targets(&up), ["/upload", "/after", "/upload", "/after"]);
    assert_eq!(
        up.seen()[0].headers["content-length"],
        payload.len().to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_request_slower_than_the_keepalive_timeout_is_answered() {
    let (blue, _green, proxy) = two_host_proxy("[http]\nkeepalive_timeout = \"1s\"\n").await;
    // Both requests come at once; each answer takes longer than the idle
    // time a kept-alive connection is allowed between requests. The
    // second was read ahead: the proxy is busy with it, not idle.
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET /slow?ms=1500 HTTP/1.1\r\nHost: a.test\r\n\r\n\
          GET /slow?ms=1500 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(closed, "{reply:?}");
    assert_eq!(answers(&reply), 2, "{reply:?}");
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply:?}");
    assert_eq!(blue.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_proxy_answers_without_forwarding_is_never_read_as_a_request() {
    let (blue, _green, proxy) = two_host_proxy("").await;
    // A POST to a host with no route is answered by the proxy, its body
    // (a request head) unread, with a request pipelined behind it: the
    // answer says the connection closes, and it does, so nothing after
    // the unread body is taken for a request.
    let fake = "GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for framing in [
        format!("Content-Length: {}\r\n\r\n{fake}", fake.len()),
        format!(
            "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{fake}\r\n0\r\n\r\n",
            fake.len()
        ),
    ] {
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: nowhere.test\r\n{framing}\
             GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n"
        );
        let (reply, closed) = exchange(proxy.addr, raw.as_bytes()).await;
        assert!(closed, "{reply:?}");
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply:?}");
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply:?}");
        assert_eq!(answers(&reply), 1, "{reply:?}");
    }
    assert_eq!(blue.hits(), 0, "{:?}", targets(&blue));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_head_is_checked_and_timed_like_any_other() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nheader_timeout = \"2s\"\n")).await;
    // The second request's target has a space: refused with a 400 after
    // the first is answered, never escaped and forwarded.
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(closed, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert_eq!(answers(&reply), 2, "{reply:?}");
    assert!(
        reply.contains("HTTP/1.1 400 Bad Request\r\n"),
        "the second refused: {reply:?}"
    );
    assert_eq!(targets(&up), ["/first"]);

    // The second request's head is read ahead in part, and the rest never
    // comes: cut off at the header timeout, counted from when its first
    // bytes were read.
    let started = std::time::Instant::now();
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET /second HTTP/1.1\r\nHost: a\r\n\r\nGET /third HTTP/1.1\r\nHo",
    )
    .await;
    let took = started.elapsed();
    assert!(closed, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(
        reply.contains("HTTP/1.1 408 Request Timeout\r\n"),
        "told why: {reply:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "cut off at about 2 s, took {took:?}"
    );
    assert_eq!(targets(&up), ["/first", "/second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_on_pipelined_requests() {
    let up = Upstream::start("app").await;
    let limits = "[http]\nmax_header_bytes = 4096\nmax_headers = 20\nmax_uri_bytes = 256\nmax_body_bytes = 1000\n";
    let proxy = Proxy::start(&body(up.addr, limits)).await;
    let big = "x".repeat(5000);
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long = "a".repeat(300);
    let chunk = "y".repeat(600);
    let cases = [
        (
            "431",
            format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
        ),
        (
            "431",
            format!("GET /many HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
        ),
        ("414", format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")),
        (
            "413",
            "POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n".to_string(),
        ),
        (
            "413",
            format!(
                "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (status, over) in &cases {
        // Behind a request within the limits, and followed by one that
        // must never run.
        let raw = format!(
            "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n{over}GET /never HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let (reply, closed) = exchange(proxy.addr, raw.as_bytes()).await;
        assert!(closed, "{status}: {reply:?}");
        assert!(reply.starts_with("HTTP/1.1 200"), "{status}: {reply:?}");
        assert_eq!(answers(&reply), 2, "{status}: {reply:?}");
        assert!(
            reply.contains(&format!("\nHTTP/1.1 {status} ")),
            "{status}: {reply:?}"
        );
    }
    // A chunked body is forwarded as it comes, until it grows past the
    // limit; no other request over a limit, and nothing behind one, ran.
    let seen: Vec<String> = targets(&up)
        .into_iter()
        .filter(|t| t != "/chunked")
        .collect();
    assert_eq!(seen, vec!["/ok"; cases.len()]);
}

/// Writes `first`, waits, writes `then`; returns all that came back until
/// the proxy closed (within 5 s) and how long that took.
async fn in_two_writes(
    addr: std::net::SocketAddr,
    first: &[u8],
    then: &[u8],
) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(first).await.expect("first write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !then.is_empty() {
        tcp.write_all(then).await.expect("second write");
    }
    let reply = until_closed(&mut tcp).await;
    (reply, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_before_a_request_line_do_not_end_its_head() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nheader_timeout = \"2s\"\n")).await;
    // Blank lines, then a request line in two reads whose target the
    // framework would escape: refused, on a first request and on one read
    // ahead with the request before it.
    for before in ["", "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"] {
        let (reply, _) = in_two_writes(
            proxy.addr,
            format!("{before}\r\n\r\nGE").as_bytes(),
            b"T /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert!(
            reply.contains("HTTP/1.1 400 Bad Request\r\n"),
            "{before:?}: {reply:?}"
        );
    }
    assert_eq!(targets(&up), ["/ok"]);
    // Blank lines, then a head that never ends: timed, cut off.
    let (reply, took) = in_two_writes(proxy.addr, b"\r\n\r\nGET / HTTP/1.1\r\nH", b"").await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "cut off at about 2 s, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_bare_line_feeds_ends_where_the_parser_ends_it() {
    let (_blue, _green, proxy) = two_host_proxy("[http]\nheader_timeout = \"1s\"\n").await;
    // Lines ended by a bare line feed: the head is over at its empty line,
    // so an answer slower than the header timeout is not cut off by it.
    let (reply, closed) = exchange(
        proxy.addr,
        b"GET /slow?ms=1500 HTTP/1.1\nHost: a.test\nConnection: close\n\n",
    )
    .await;
    assert!(closed, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert_eq!(answers(&reply), 1, "{reply:?}");
    assert!(reply.ends_with("blue\n"), "the whole answer: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_after_pipelined_requests_closes_at_the_keepalive_timeout() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "[http]\nkeepalive_timeout = \"1s\"\n")).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let reply = until_closed(&mut tcp).await;
    let took = started.elapsed();
    assert_eq!(answers(&reply), 2, "{reply:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed about 1 s after the last answer, took {took:?}"
    );
    assert_eq!(targets(&up), ["/one", "/two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_line_split_between_a_read_ahead_and_a_read_is_refused() {
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&body(up.addr, "")).await;
    let (reply, _) = in_two_writes(
        proxy.addr,
        b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /a",
        b" b HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(reply.contains("HTTP/1.1 400 Bad Request\r\n"), "{reply:?}");
    assert_eq!(targets(&up), ["/ok"]);
}

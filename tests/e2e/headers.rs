//! Forwarded headers, hop-by-hop stripping and upstream connection reuse.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{raw_backend, read_head, Client, Proxy, Upstream};

fn one_service(addr: std::net::SocketAddr) -> String {
    format!("[[routes]]\nservice = \"s\"\n\n[services.s.pools.main]\nbackends = [\"{addr}\"]\n")
}

/// Sends `request` as raw bytes and reads the response until the proxy
/// closes the connection.
async fn raw(proxy: &Proxy, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_are_forwarded_and_hop_by_hop_ones_stripped() {
    let up = Upstream::start("s").await;
    let proxy = Proxy::start(&one_service(up.addr)).await;
    let response = raw(
        &proxy,
        "GET /x?q=1 HTTP/1.1\r\n\
         Host: Shop.example.com:8443\r\n\
         Connection: close, X-Drop-Me\r\n\
         X-Drop-Me: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Upgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Request-Id: client-id-1\r\n\
         X-Kept: yes\r\n\
         \r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = up.seen().pop().expect("the upstream saw the request");
    let h = &seen.headers;
    assert_eq!(seen.target, "/x?q=1");
    for gone in [
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
        "http2-settings",
    ] {
        assert!(!h.contains_key(gone), "{gone} was forwarded: {h:?}");
    }
    if let Some(c) = h.get("connection") {
        assert!(
            !c.to_str()
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("x-drop-me"),
            "{h:?}"
        );
    }
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "the proxy says how it was reached"
    );
    assert_eq!(h["x-forwarded-host"], "Shop.example.com:8443");
    assert_eq!(
        h["x-request-id"], "client-id-1",
        "a client's request id is kept"
    );
    // The proxy's forwarded headers replace a client's copies, never join them.
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ] {
        assert_eq!(h.get_all(name).iter().count(), 1, "{name} once: {h:?}");
    }
    assert_eq!(h["host"], "Shop.example.com:8443", "Host is passed through");
    assert_eq!(h["x-kept"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_stripped() {
    let up = Upstream::start("s").await;
    let proxy = Proxy::start(&one_service(up.addr)).await;
    let reply = Client::new()
        .get(&proxy.url("/hop"), None)
        .await
        .expect("reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-upstream"], "s");
    for gone in ["x-up-private", "keep-alive", "proxy-connection"] {
        assert!(
            !reply.headers.contains_key(gone),
            "{gone} reached the client: {:?}",
            reply.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let up = Upstream::start("s").await;
    let proxy = Proxy::start(&one_service(up.addr)).await;
    let client = Client::new();
    for _ in 0..100 {
        let reply = client.get(&proxy.url("/"), None).await.expect("reply");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(up.hits(), 100);
    assert!(
        up.connections() <= 4,
        "{} upstream connections for 100 sequential requests",
        up.connections()
    );
}

/// A backend that answers one request per connection and then, while the
/// connection sits idle in the proxy's pool, closes it as a backend does
/// when its keep-alive timeout ends. For each connection it reports
/// whether the proxy closed its side in turn.
async fn closing_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<bool>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            connections.spawn(async move {
                if read_head(&mut conn).await.is_none() {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if conn.write_all(answer).await.is_err() {
                    return;
                }
                // The proxy returns the connection to its pool; then the
                // backend's keep-alive timeout ends.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if conn.shutdown().await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 64];
                let proxy_closed = matches!(
                    tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await,
                    Ok(Ok(0))
                );
                let _ = closed_tx.send(proxy_closed);
            });
        }
    });
    (addr, closed_rx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_the_backend_closed_is_closed_and_not_reused() {
    let (addr, mut closed, backend) = closing_backend().await;
    let proxy = Proxy::start(&one_service(addr)).await;
    let client = Client::new();
    for round in 0..2 {
        let reply = client.get(&proxy.url("/"), None).await.expect("reply");
        assert_eq!(reply.status, 200, "round {round}: {}", reply.body);
        // The proxy notices the close of an idle connection on its own,
        // without a request to take it, and closes its side too.
        let proxy_closed = tokio::time::timeout(Duration::from_secs(15), closed.recv())
            .await
            .expect("the backend closed the idle connection")
            .expect("backend running");
        assert!(
            proxy_closed,
            "round {round}: the proxy kept a connection the backend closed"
        );
    }
    backend.abort();
}

/// The header names of a head, as spelled on the wire.
fn names(head: &str) -> Vec<&str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_spelling_both_ways() {
    for (reply, expect) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App-Version: 7\r\nCache-Control: no-store\r\n\r\nok"[..],
            ["Content-Length", "X-App-Version", "Cache-Control"],
        ),
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-app-version: 7\r\nCACHE-CONTROL: no-store\r\n\r\nok"[..],
            ["content-length", "x-app-version", "CACHE-CONTROL"],
        ),
        // Standard names whose usual spelling is not Title-Case, and the
        // same names in Title-Case.
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"1\"\r\nWWW-Authenticate: Basic\r\n\r\nok"[..],
            ["Content-Length", "ETag", "WWW-Authenticate"],
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nEtag: \"1\"\r\nWww-Authenticate: Basic\r\n\r\nok"[..],
            ["Content-Length", "Etag", "Www-Authenticate"],
        ),
    ] {
        let (addr, heads, task) = raw_backend(reply, true).await;
        let proxy = Proxy::start(&one_service(addr)).await;
        for request in [
            "GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nX-Trace-Id: 1\r\n\r\n",
            "GET /b HTTP/1.1\r\nhost: a\r\nuser-agent: t\r\nX-TRACE-ID: 1\r\n\r\n",
        ] {
            let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
                .await
                .expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut tcp))
                .await
                .expect("response in time")
                .expect("a response head");
            let head = String::from_utf8_lossy(&head).into_owned();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let got = names(&head);
            // The backend's names reach the client as the backend spelled them.
            for name in expect {
                assert!(got.contains(&name), "{name} not in {got:?}");
            }
            // And the client's reach the backend as the client spelled them.
            let seen = heads.lock().expect("log").pop().expect("a request upstream");
            let upstream = names(&seen);
            for name in names(request) {
                assert!(upstream.contains(&name), "{name} not in {upstream:?}");
            }
        }
        drop(proxy);
        task.abort();
    }
}

//! TLS termination: SNI, live certificate swaps, protocol versions, HTTP/2,
//! redirects, HSTS and TLS to backends.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{eventually, Client, Proxy, ProxyOptions, Upstream};
use crate::pki::{served_leaf, tls_connect, ClientSpec, TestCa};

/// Starts a proxy with an HTTPS listener; `certs` are (file stem, leaf,
/// default) written into the proxy's directory first.
async fn tls_proxy(certs: &[(&str, &crate::pki::Leaf, bool)], body: &str) -> Proxy {
    tls_proxy_with(certs, body, ProxyOptions::default().server).await
}

/// [`tls_proxy`] with the `[server]` table's contents.
async fn tls_proxy_with(
    certs: &[(&str, &crate::pki::Leaf, bool)],
    body: &str,
    server: String,
) -> Proxy {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = String::new();
    for (name, leaf, default) in certs {
        leaf.write(dir.path(), name);
        config.push_str(&format!(
            "[[tls.certificates]]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\ndefault = {default}\n\n"
        ));
    }
    config.push_str(body);
    Proxy::start_with(
        &config,
        ProxyOptions {
            server,
            https: true,
            dir: Some(dir),
            ..ProxyOptions::default()
        },
    )
    .await
}

fn one_service(addr: std::net::SocketAddr) -> String {
    format!("[[routes]]\nservice = \"s\"\n\n[services.s.pools.main]\nbackends = [\"{addr}\"]\n")
}

/// GET `path` with `host` over an established HTTP/1.1 connection.
async fn get_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, HeaderMap, String) {
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn h1_over<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let api = ca.leaf(&["api.example.com"]);
    let wild = ca.leaf(&["*.example.com"]);
    let fallback = ca.leaf(&["fallback.example.net"]);
    let up = Upstream::start("s").await;
    let proxy = tls_proxy(
        &[
            ("shop", &shop, false),
            ("api", &api, false),
            ("wild", &wild, false),
            ("fallback", &fallback, true),
        ],
        &one_service(up.addr),
    )
    .await;
    let https = proxy.https.expect("https");
    for (sni, want, what) in [
        (Some("shop.example.com"), &shop, "exact"),
        (Some("API.example.com"), &api, "exact, any case"),
        (Some("www.example.com"), &wild, "wildcard"),
        (
            Some("a.b.example.com"),
            &fallback,
            "a wildcard covers one label only",
        ),
        (Some("unknown.org"), &fallback, "unknown name"),
        (None, &fallback, "no SNI"),
    ] {
        let spec = ClientSpec {
            sni,
            ..ClientSpec::default()
        };
        let stream = tls_connect(https, spec)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            served_leaf(&stream) == want.der,
            "{what}: wrong certificate for {sni:?}"
        );
    }

    // Verified end to end by a client that trusts only the test CA.
    let spec = ClientSpec {
        sni: Some("shop.example.com"),
        roots: Some(ca.roots()),
        ..ClientSpec::default()
    };
    let mut sender = h1_over(tls_connect(https, spec).await.expect("verified handshake")).await;
    let (status, _, body) = get_h1(&mut sender, "shop.example.com", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "s\n"));
    let seen = up.seen().pop().expect("request");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_unknown_names_are_refused_quietly() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let up = Upstream::start("s").await;
    let proxy = tls_proxy(&[("shop", &shop, false)], &one_service(up.addr)).await;
    let https = proxy.https.expect("https");
    for sni in [Some("unknown.org"), None] {
        let spec = ClientSpec {
            sni,
            ..ClientSpec::default()
        };
        assert!(
            tls_connect(https, spec).await.is_err(),
            "{sni:?} must be refused"
        );
    }
    let spec = ClientSpec {
        sni: Some("shop.example.com"),
        ..ClientSpec::default()
    };
    assert!(tls_connect(https, spec).await.is_ok());

    // Failures are counted and reported once, at info level, not as errors.
    proxy
        .wait_for_log("TLS handshakes failed since the last report")
        .await;
    let logs = proxy.logs();
    let report = logs
        .lines()
        .find(|l| l.contains("TLS handshakes failed since the last report"))
        .expect("report");
    assert!(report.contains(" INFO "), "{report}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && l.to_lowercase().contains("handshake")),
        "a refused handshake must not log an error:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_the_next_handshake_and_bad_ones_are_refused() {
    let ca = TestCa::new();
    let first = ca.leaf(&["shop.example.com"]);
    let up = Upstream::start("s").await;
    let proxy = tls_proxy(&[("shop", &first, true)], &one_service(up.addr)).await;
    let https = proxy.https.expect("https");
    let spec = || ClientSpec {
        sni: Some("shop.example.com"),
        ..ClientSpec::default()
    };

    let old_conn = tls_connect(https, spec()).await.expect("handshake");
    assert!(served_leaf(&old_conn) == first.der);
    let mut old = h1_over(old_conn).await;
    assert_eq!(
        get_h1(&mut old, "shop.example.com", "/").await.0,
        StatusCode::OK
    );

    // Replace by rename, as deploy tools do: key first, then certificate.
    let second = ca.leaf(&["shop.example.com"]);
    let staging = tempfile::tempdir_in(proxy.dir()).expect("staging dir");
    let (cert_tmp, key_tmp) = second.write(staging.path(), "shop");
    std::fs::rename(&key_tmp, proxy.dir().join("shop.key")).expect("rename key");
    std::fs::rename(&cert_tmp, proxy.dir().join("shop.pem")).expect("rename cert");
    proxy
        .wait_for_log("certificate file changed; new certificate serving")
        .await;
    eventually(Duration::from_secs(5), "the new certificate", || async {
        let stream = tls_connect(https, spec()).await.expect("handshake");
        served_leaf(&stream) == second.der
    })
    .await;
    // The connection opened before the swap keeps working.
    assert_eq!(
        get_h1(&mut old, "shop.example.com", "/").await.0,
        StatusCode::OK
    );

    // A certificate that does not parse is refused; the second keeps serving.
    std::fs::write(proxy.dir().join("shop.pem"), "not a certificate").expect("write");
    proxy
        .wait_for_log("certificate refused, still serving the previous one")
        .await;
    let stream = tls_connect(https, spec()).await.expect("handshake");
    assert!(served_leaf(&stream) == second.der);

    // So is a certificate whose key is not the one on disk.
    let third = ca.leaf(&["shop.example.com"]);
    std::fs::write(proxy.dir().join("shop.pem"), &third.cert_pem).expect("write");
    eventually(
        Duration::from_secs(5),
        "the key mismatch to be logged",
        || async {
            proxy
                .logs()
                .contains("is not the private key of the certificate in")
        },
    )
    .await;
    let stream = tls_connect(https, spec()).await.expect("handshake");
    assert!(served_leaf(&stream) == second.der);
    let logs = proxy.logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains("is not the private key"))
        .expect("refusal");
    assert!(
        refusal.contains("shop.pem"),
        "the log names the file: {refusal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_only_and_h2_through_alpn() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let up = Upstream::start("s").await;
    let proxy = tls_proxy(&[("shop", &shop, true)], &one_service(up.addr)).await;
    let https = proxy.https.expect("https");

    for (versions, want) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let spec = ClientSpec {
            sni: Some("shop.example.com"),
            versions,
            ..ClientSpec::default()
        };
        let stream = tls_connect(https, spec).await.expect("handshake");
        let conn = stream.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(want));
        let suite = format!(
            "{:?}",
            conn.negotiated_cipher_suite().expect("suite").suite()
        );
        if want == rustls::ProtocolVersion::TLSv1_2 {
            assert!(suite.starts_with("TLS_ECDHE_"), "forward secret: {suite}");
            assert!(
                suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
                "AEAD: {suite}"
            );
        }
    }

    // The same hand-written ClientHello is answered with a ServerHello as
    // TLS 1.2 and refused with a fatal alert as TLS 1.1.
    let first_record = |version: [u8; 2]| async move {
        let mut tcp = tokio::net::TcpStream::connect(https)
            .await
            .expect("connect");
        tcp.write_all(&client_hello(version))
            .await
            .expect("write hello");
        let mut head = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .expect("read answer");
        head
    };
    let tls12 = first_record([3, 3]).await;
    assert_eq!(tls12[0], 0x16, "TLS 1.2 gets a handshake record: {tls12:?}");
    let tls11 = first_record([3, 2]).await;
    assert_eq!(
        &tls11[..1],
        &[0x15],
        "TLS 1.1 gets an alert record: {tls11:?}"
    );
    assert_eq!(tls11[5], 2, "a fatal alert: {tls11:?}");

    // HTTP/2 through ALPN, proxied to an HTTP/1.1 upstream.
    let spec = ClientSpec {
        sni: Some("shop.example.com"),
        roots: Some(ca.roots()),
        alpn: &[b"h2", b"http/1.1"],
        ..ClientSpec::default()
    };
    let stream = tls_connect(https, spec).await.expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("https://shop.example.com/over-h2")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"s\n");
    }
    let seen = up.seen().pop().expect("request");
    assert_eq!(seen.target, "/over-h2");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

/// One worker runs the single-threaded scheduler (there is no other worker
/// to steal work from); concurrent HTTP/1.1 connections, over TCP and TLS,
/// and concurrent HTTP/2 streams on one connection are all served on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_worker_serves_concurrent_connections_and_http2_streams() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let up = Upstream::start("s").await;
    let body = one_service(up.addr).replace(
        "service = \"s\"\n",
        "service = \"s\"\nhttps_redirect = false\n",
    );
    let proxy = tls_proxy_with(
        &[("shop", &shop, true)],
        &body,
        "grace_period = \"5s\"\nthreads = 1\n".into(),
    )
    .await;
    let logs = proxy.logs();
    assert!(logs.contains("threads=1 work_stealing=false"), "{logs}");
    let https = proxy.https.expect("https");

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (addr, roots) = (proxy.addr, ca.roots());
        clients.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut plain = h1_over(tcp).await;
            let spec = ClientSpec {
                sni: Some("shop.example.com"),
                roots: Some(roots),
                alpn: &[b"http/1.1"],
                ..ClientSpec::default()
            };
            let mut tls = h1_over(tls_connect(https, spec).await.expect("handshake")).await;
            for n in 0..5 {
                let path = format!("/c{i}/r{n}");
                for sender in [&mut plain, &mut tls] {
                    let (status, _, body) = get_h1(sender, "shop.example.com", &path).await;
                    assert_eq!((status, body.as_str()), (StatusCode::OK, "s\n"), "{path}");
                }
            }
        });
    }
    let spec = ClientSpec {
        sni: Some("shop.example.com"),
        roots: Some(ca.roots()),
        alpn: &[b"h2"],
        ..ClientSpec::default()
    };
    let stream = tls_connect(https, spec).await.expect("handshake");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for n in 0..20 {
        let mut sender = sender.clone();
        clients.spawn(async move {
            let req = Request::get(format!("https://shop.example.com/h2/{n}"))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = sender.send_request(req).await.expect("h2 response");
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"s\n");
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    assert_eq!(up.seen().len(), 6 * 5 * 2 + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_except_acme_and_opted_out_routes() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com", "open.example.com"]);
    let up = Upstream::start("s").await;
    let body = format!(
        "[tls.hsts]\nmax_age = \"1d\"\ninclude_subdomains = true\n\n\
         [[routes]]\nhost = \"shop.example.com\"\nservice = \"s\"\n\n\
         [[routes]]\nhost = \"open.example.com\"\nservice = \"s\"\nhttps_redirect = false\n\n\
         [services.s.pools.main]\nbackends = [\"{}\"]\n",
        up.addr
    );
    let proxy = tls_proxy(&[("shop", &shop, true)], &body).await;
    let https = proxy.https.expect("https");
    let client = Client::new();

    let reply = client
        .get(&proxy.url("/cart?item=7&q=a%20b"), Some("Shop.example.com"))
        .await
        .expect("reply");
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!(
            "https://shop.example.com:{}/cart?item=7&q=a%20b",
            https.port()
        )
        .as_str()
    );
    assert!(
        !reply.headers.contains_key("strict-transport-security"),
        "no HSTS over plain HTTP"
    );

    let reply = client
        .get(
            &proxy.url("/.well-known/acme-challenge/token123"),
            Some("shop.example.com"),
        )
        .await
        .expect("reply");
    assert_eq!(reply.status, 200, "ACME challenges are never redirected");
    assert_eq!(
        up.seen().pop().expect("request").target,
        "/.well-known/acme-challenge/token123"
    );

    let reply = client
        .get(&proxy.url("/"), Some("open.example.com"))
        .await
        .expect("reply");
    assert_eq!(
        reply.status, 200,
        "https_redirect = false serves plain HTTP"
    );

    let spec = ClientSpec {
        sni: Some("shop.example.com"),
        roots: Some(ca.roots()),
        ..ClientSpec::default()
    };
    let mut sender = h1_over(tls_connect(https, spec).await.expect("handshake")).await;
    let (status, headers, _) = get_h1(&mut sender, "shop.example.com", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=86400; includeSubDomains"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_reach_https_backends_and_refuse_unverified_ones() {
    let ca = TestCa::new();
    let backend = ca.leaf(&["backend.internal", "127.0.0.1"]);
    let secure = Upstream::start_tls("secure", backend.server_config()).await;
    let rogue_ca = TestCa::new();
    let rogue = Upstream::start_tls(
        "rogue",
        rogue_ca.leaf(&["backend.internal"]).server_config(),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    ca.write(dir.path(), "internal-ca.pem");
    let body = format!(
        r#"[[routes]]
path = "/named"
service = "named"

[[routes]]
path = "/by-ip"
service = "by_ip"

[[routes]]
path = "/rogue"
service = "rogue"

[services.named.pools.main]
backends = ["{secure}"]
tls = true
sni = "backend.internal"
ca = "internal-ca.pem"

[services.by_ip.pools.main]
backends = ["{secure}"]
tls = true
ca = "internal-ca.pem"

[services.rogue.pools.main]
backends = ["{rogue}"]
tls = true
sni = "backend.internal"
ca = "internal-ca.pem"
"#,
        secure = secure.addr,
        rogue = rogue.addr
    );
    let proxy = Proxy::start_with(
        &body,
        ProxyOptions {
            dir: Some(dir),
            ..ProxyOptions::default()
        },
    )
    .await;
    let client = Client::new();
    for path in ["/named", "/by-ip"] {
        let reply = client.get(&proxy.url(path), None).await.expect("reply");
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (200, "secure\n"),
            "{path}"
        );
    }
    let reply = client.get(&proxy.url("/rogue"), None).await.expect("reply");
    assert_eq!(
        reply.status, 502,
        "an unverifiable backend is refused: {reply:?}"
    );
    assert_eq!(rogue.hits(), 0);
}

/// A minimal ClientHello offering `version` (as legacy_version, with no
/// supported_versions extension) with ECDHE-ECDSA/RSA AES-GCM suites.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups: x25519
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
    ];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_certificates_and_refuses_unusable_ones() {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let api = ca.leaf(&["api.example.com"]);
    let up = Upstream::start("s").await;
    let proxy = tls_proxy(&[("shop", &shop, true)], &one_service(up.addr)).await;
    let https = proxy.https.expect("https");
    let served = |sni: &'static str| async move {
        let spec = ClientSpec {
            sni: Some(sni),
            ..ClientSpec::default()
        };
        served_leaf(&tls_connect(https, spec).await.expect("handshake"))
    };
    assert!(
        served("api.example.com").await == shop.der,
        "the default before the reload"
    );

    // A reload naming a certificate file that does not exist is refused whole.
    let certs = |extra: &str| {
        format!(
            "[[tls.certificates]]\ncert = \"shop.pem\"\nkey = \"shop.key\"\ndefault = true\n\n\
             [[tls.certificates]]\ncert = \"{extra}.pem\"\nkey = \"{extra}.key\"\n\n{}",
            one_service(up.addr)
        )
    };
    proxy.write_in_place(&proxy.config_text(&certs("api")));
    proxy
        .wait_for_log("config reload rejected: files it names cannot be used")
        .await;
    assert!(
        proxy.logs().contains("api.pem"),
        "the log names the missing file"
    );
    assert!(served("api.example.com").await == shop.der);

    // Once the files exist, the same config applies without another edit.
    api.write(proxy.dir(), "api");
    proxy.wait_for_log("generation=2 routes=").await;
    assert!(
        served("api.example.com").await == api.der,
        "the added certificate serves its name"
    );
    assert!(served("shop.example.com").await == shop.der);
}

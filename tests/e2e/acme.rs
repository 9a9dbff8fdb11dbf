//! ACME against a real CA: Debian's `pebble`, started on loopback ports.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::harness::{free_port, Client, Proxy, ProxyOptions, Upstream};
use crate::pki::{served_leaf, tls_connect, ClientSpec, TestCa};

const HOSTS: [&str; 2] = ["a.example.test", "b.example.test"];

/// pebble and its DNS (pebble-challtestsrv), stopped on drop.
struct Pebble {
    dir: tempfile::TempDir,
    pebble: Option<Child>,
    dns: Child,
    api: SocketAddr,
    management: SocketAddr,
    dns_addr: SocketAddr,
    /// Trusts pebble's API certificate.
    api_ca: TestCa,
    log: PathBuf,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` of 127.0.0.1.
    async fn start(http_port: u16) -> Pebble {
        for tool in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "{tool} is missing: install it with `apt-get install pebble` (scripts/test.sh does)");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let api_ca = TestCa::new();
        let leaf = api_ca.leaf(&["localhost", "127.0.0.1"]);
        let (cert, key) = leaf.write(dir.path(), "pebble-api");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dns_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dns_management: SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = serde_like_json(api, management, &cert, &key, http_port);
        std::fs::write(dir.path().join("pebble.json"), config).expect("pebble config");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args([
                "-dns01",
                &dns_addr.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args(["-management", &dns_management.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let mut p = Pebble {
            log: dir.path().join("pebble.log"),
            dir,
            pebble: None,
            dns,
            api,
            management,
            dns_addr,
            api_ca,
        };
        p.start_pebble().await;
        p
    }

    async fn start_pebble(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("pebble log");
        let child = Command::new("pebble")
            .args([
                "-config",
                &self.dir.path().join("pebble.json").display().to_string(),
            ])
            .args(["-dnsserver", &self.dns_addr.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pebble");
        self.pebble = Some(child);
        crate::harness::eventually(Duration::from_secs(20), "pebble to listen", || async {
            tokio::net::TcpStream::connect(self.api).await.is_ok()
        })
        .await;
    }

    fn stop_pebble(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.api)
    }

    fn api_ca_path(&self) -> PathBuf {
        self.dir.path().join("pebble-api-ca.pem")
    }

    /// Orders pebble has created so far.
    fn orders(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    /// The root pebble issues under (new at every pebble start).
    async fn issuing_root(&self) -> rustls::RootCertStore {
        let spec = ClientSpec {
            sni: Some("localhost"),
            roots: Some(self.api_ca.roots()),
            ..ClientSpec::default()
        };
        let stream = tls_connect(self.management, spec)
            .await
            .expect("pebble management");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/roots/0")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let body = sender
            .send_request(req)
            .await
            .expect("roots")
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(&body) {
            roots.add(der.expect("root PEM")).expect("add root");
        }
        roots
    }
}

use rustls::pki_types::pem::PemObject;

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop_pebble();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- pebble log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn serde_like_json(
    api: SocketAddr,
    management: SocketAddr,
    cert: &Path,
    key: &Path,
    http_port: u16,
) -> String {
    format!(
        r#"{{"pebble": {{"listenAddress": "{api}", "managementListenAddress": "{management}",
        "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {},
        "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
        cert.display(),
        key.display(),
        free_port()
    )
}

fn acme_body(pebble: &Pebble, state_dir: &Path, upstream: SocketAddr, extra: &str) -> String {
    std::fs::write(pebble.api_ca_path(), &pebble.api_ca.pem).expect("write CA");
    format!(
        r#"[acme]
directory = "{}"
contact = ["mailto:ops@example.test"]
accept_terms = true
state_dir = "{}"
ca_root = "{}"
hosts = ["{}", "{}"]
{extra}

[[routes]]
service = "s"
https_redirect = false

[services.s.pools.main]
backends = ["{upstream}"]
"#,
        pebble.directory(),
        state_dir.display(),
        pebble.api_ca_path().display(),
        HOSTS[0],
        HOSTS[1],
    )
}

async fn start_proxy(body: &str, http_port: u16) -> Proxy {
    Proxy::start_with(
        body,
        ProxyOptions {
            https: true,
            http_port: Some(http_port),
            ..ProxyOptions::default()
        },
    )
    .await
}

fn count(proxy: &Proxy, needle: &str) -> usize {
    proxy.logs().lines().filter(|l| l.contains(needle)).count()
}

async fn wait_count(proxy: &Proxy, needle: &str, n: usize, within: Duration) {
    crate::harness::eventually(within, needle, || async { count(proxy, needle) >= n }).await;
}

async fn served(proxy: &Proxy, host: &str, roots: Option<rustls::RootCertStore>) -> Vec<u8> {
    let spec = ClientSpec {
        sni: Some(host),
        roots,
        ..ClientSpec::default()
    };
    let stream = tls_connect(proxy.https.expect("https"), spec)
        .await
        .unwrap_or_else(|e| panic!("handshake for {host}: {e}"));
    served_leaf(&stream).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_on_start_persists_privately_and_reuses_after_restart() {
    let up = Upstream::start("app").await;
    let http_port = free_port();
    let pebble = Pebble::start(http_port).await;
    let state = tempfile::tempdir().expect("state dir");
    let body = acme_body(&pebble, state.path(), up.addr, "");
    let proxy = start_proxy(&body, http_port).await;
    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        2,
        Duration::from_secs(60),
    )
    .await;

    // Each host's certificate verifies against pebble's root, through Switchyard.
    let roots = pebble.issuing_root().await;
    let mut serials = Vec::new();
    for host in HOSTS {
        serials.push(served(&proxy, host, Some(roots.clone())).await);
    }
    let orders = pebble.orders();
    assert_eq!(orders, 2, "one order per host");

    // HTTP-01 answers come before routing; unknown tokens are 404.
    let reply = Client::new()
        .get(
            &proxy.url("/.well-known/acme-challenge/unknown-token"),
            Some(HOSTS[0]),
        )
        .await
        .expect("reply");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, "404 Not Found: unknown ACME challenge token\n");
    assert_eq!(up.hits(), 0);

    // Everything in the state directory is private.
    let mut files = vec![state.path().join("account.json")];
    for host in HOSTS {
        files.push(state.path().join(format!("certificates/{host}.pem")));
        files.push(state.path().join(format!("certificates/{host}.key")));
    }
    for f in &files {
        let mode = std::fs::metadata(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} is {:o}", f.display(), mode & 0o777);
    }

    // A restart serves the same certificates without a new order or account.
    drop(proxy);
    let proxy = start_proxy(&body, http_port).await;
    wait_count(
        &proxy,
        "ACME certificate loaded from the state directory",
        2,
        Duration::from_secs(10),
    )
    .await;
    for (host, serial) in HOSTS.iter().zip(&serials) {
        assert!(
            served(&proxy, host, Some(roots.clone())).await == *serial,
            "{host}: same certificate"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pebble.orders(), orders, "no new order after a restart");
    assert_eq!(
        count(&proxy, "ACME account created"),
        0,
        "the account is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_early_keeps_serving_through_a_ca_outage_and_recovers() {
    let up = Upstream::start("app").await;
    let http_port = free_port();
    let mut pebble = Pebble::start(http_port).await;
    let state = tempfile::tempdir().expect("state dir");
    // Always inside the renewal window: renew as often as allowed.
    let body = acme_body(&pebble, state.path(), up.addr, "renew_before = \"100000d\"");
    let proxy = start_proxy(&body, http_port).await;
    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        2,
        Duration::from_secs(60),
    )
    .await;
    let first = served(&proxy, HOSTS[0], None).await;

    // A keep-alive connection opened before the renewal.
    let spec = ClientSpec {
        sni: Some(HOSTS[0]),
        ..ClientSpec::default()
    };
    let stream = tls_connect(proxy.https.expect("https"), spec)
        .await
        .expect("handshake");
    let (mut old, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let get = || {
        Request::get("/")
            .header("host", HOSTS[0])
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    assert_eq!(
        old.send_request(get()).await.expect("response").status(),
        200
    );

    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        4,
        Duration::from_secs(60),
    )
    .await;
    let second = served(&proxy, HOSTS[0], None).await;
    assert!(
        second != first,
        "a renewed certificate (new serial) serves the next handshake"
    );
    assert_eq!(
        old.send_request(get()).await.expect("response").status(),
        200,
        "the old connection still works"
    );

    // The CA goes away: the renewal fails, the current certificate stays.
    pebble.stop_pebble();
    wait_count(
        &proxy,
        "certificate order failed; the current certificate keeps serving",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        served(&proxy, HOSTS[0], None).await == second,
        "still the second certificate"
    );

    // The CA is back (with no memory of the account): a retry succeeds.
    let issued = count(&proxy, "ACME certificate issued and serving");
    pebble.start_pebble().await;
    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        issued + 1,
        Duration::from_secs(90),
    )
    .await;
    crate::harness::eventually(Duration::from_secs(30), "a third certificate", || async {
        let now = served(&proxy, HOSTS[0], None).await;
        now != second && now != first
    })
    .await;
}

/// A CA in maintenance: every request gets 503 with `Retry-After`.
async fn unavailable_ca(ca: &TestCa, retry_after: &'static str) -> (SocketAddr, AbortOnDrop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = tokio_rustls::TlsAcceptor::from(ca.leaf(&["127.0.0.1"]).server_config());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| async move {
                    let body = r#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"down for maintenance","status":503}"#;
                    hyper::Response::builder()
                        .status(503)
                        .header("content-type", "application/problem+json")
                        .header("retry-after", retry_after)
                        .body(http_body_util::Full::new(Bytes::from_static(
                            body.as_bytes(),
                        )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, AbortOnDrop(task.abort_handle()))
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_as_long_as_the_ca_asks_with_retry_after() {
    let ca = TestCa::new();
    let (ca_addr, _ca) = unavailable_ca(&ca, "1800").await;
    let upstream = Upstream::start("app").await;
    let state = tempfile::tempdir().expect("state dir");
    let dir = tempfile::tempdir().expect("dir");
    let root = ca.write(dir.path(), "acme-root");
    let body = format!(
        r#"[acme]
directory = "https://{ca_addr}/dir"
contact = ["mailto:ops@example.test"]
accept_terms = true
state_dir = "{}"
ca_root = "{}"
hosts = ["{}"]

[[routes]]
service = "s"
https_redirect = false

[services.s.pools.main]
backends = ["{}"]
"#,
        state.path().display(),
        root.display(),
        HOSTS[0],
        upstream.addr,
    );
    let proxy = start_proxy(&body, free_port()).await;
    proxy
        .wait_for_log("certificate order failed; the current certificate keeps serving")
        .await;
    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("certificate order failed"))
        .expect("failure line");
    assert!(
        line.contains("retry_in=1800s") && line.contains("ca_retry_after=1800"),
        "the next attempt waits the CA's 30 minutes, not the 5 s backoff: {line}"
    );
    assert!(
        line.contains("503 Service Unavailable: down for maintenance"),
        "the failure names the CA's answer: {line}"
    );
    // Meanwhile the host is served its temporary certificate.
    let leaf = served(&proxy, HOSTS[0], None).await;
    let name = b"Switchyard temporary certificate";
    assert!(
        leaf.windows(name.len()).any(|w| w == name),
        "temporary certificate until the CA is back"
    );
}

/// Adds ACME Renewal Information to pebble (which has none): serves a copy
/// of pebble's directory with a `renewalInfo` URL of its own and answers
/// it with a window that is open now. Everything else goes to pebble.
struct AriFront {
    addr: SocketAddr,
    asked: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl AriFront {
    async fn start(pebble: &Pebble) -> AriFront {
        // Pebble's own directory.
        let spec = ClientSpec {
            sni: Some("localhost"),
            roots: Some(pebble.api_ca.roots()),
            ..ClientSpec::default()
        };
        let stream = tls_connect(pebble.api, spec).await.expect("pebble API");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        // Pebble names its URLs after the Host it is asked with.
        let req = Request::get("/dir")
            .header("host", pebble.api.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let body = sender
            .send_request(req)
            .await
            .expect("directory")
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let mut directory: serde_json::Value = serde_json::from_slice(&body).expect("directory");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        directory["renewalInfo"] = serde_json::Value::String(format!("https://{addr}/ari"));
        let directory = Bytes::from(directory.to_string());
        let asked = Arc::new(AtomicUsize::new(0));
        let tls =
            tokio_rustls::TlsAcceptor::from(pebble.api_ca.leaf(&["127.0.0.1"]).server_config());
        let counter = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, directory, counter) = (tls.clone(), directory.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let (directory, counter) = (directory.clone(), counter.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(ari_answer(&req, directory, &counter))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        AriFront {
            addr,
            asked,
            _task: AbortOnDrop(task.abort_handle()),
        }
    }
}

fn ari_answer<B>(
    req: &Request<B>,
    directory: Bytes,
    asked: &AtomicUsize,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    let reply = |status: u16, body: Bytes| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("retry-after", "21600")
            .body(http_body_util::Full::new(body))
            .expect("response")
    };
    if req.uri().path() == "/dir" {
        return reply(200, directory);
    }
    if req.uri().path().starts_with("/ari/") {
        asked.fetch_add(1, Ordering::SeqCst);
        // A window that has passed: renew as soon as allowed.
        let now = std::time::SystemTime::now();
        let minute = Duration::from_secs(60);
        let body = format!(
            r#"{{"suggestedWindow":{{"start":"{}","end":"{}"}}}}"#,
            humantime::format_rfc3339_seconds(now - 2 * minute),
            humantime::format_rfc3339_seconds(now - minute),
        );
        return reply(200, Bytes::from(body));
    }
    reply(404, Bytes::from_static(b"{}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_inside_the_window_the_ca_suggests_with_renewal_information() {
    let up = Upstream::start("app").await;
    let http_port = free_port();
    let pebble = Pebble::start(http_port).await;
    let front = AriFront::start(&pebble).await;
    let state = tempfile::tempdir().expect("state dir");
    // Our own schedule would wait years (pebble's certificates are long-lived).
    let body = acme_body(&pebble, state.path(), up.addr, "")
        .replace(&pebble.directory(), &format!("https://{}/dir", front.addr));
    let proxy = start_proxy(&body, http_port).await;
    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        2,
        Duration::from_secs(60),
    )
    .await;
    let first = served(&proxy, HOSTS[0], None).await;
    assert!(
        front.asked.load(Ordering::SeqCst) >= 2,
        "renewal information asked for each new certificate"
    );
    assert!(
        count(&proxy, "the CA suggests an earlier renewal") >= 2,
        "the CA's window comes before our own schedule"
    );
    // The window has passed: each host renews as soon as allowed.
    wait_count(
        &proxy,
        "ACME certificate issued and serving",
        4,
        Duration::from_secs(60),
    )
    .await;
    crate::harness::eventually(Duration::from_secs(10), "a renewed certificate", || async {
        served(&proxy, HOSTS[0], None).await != first
    })
    .await;
}

//! The end-to-end harness: the real `switchyard` binary, real HTTP upstreams
//! on loopback, a real HTTP client. Every process and task started here is
//! stopped when its handle is dropped.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads from a raw connection until a whole HTTP head has arrived and
/// returns what was read; `None` if the peer closed or failed first.
pub async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// A backend speaking raw bytes on loopback: it answers every request head
/// it reads with `reply` and records the head as it came. With `keep_open`
/// it then reads the next head on the same connection; without, it closes
/// the connection after its one answer.
pub async fn raw_backend(
    reply: &'static [u8],
    keep_open: bool,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = heads.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut tcp).await {
                    log.lock()
                        .expect("log")
                        .push(String::from_utf8_lossy(&head).into_owned());
                    if tcp.write_all(reply).await.is_err() || !keep_open {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads, task)
}

/// A loopback port no other test in this run was given.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..100 {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if handed.lock().expect("port registry").insert(port) {
            return port;
        }
    }
    panic!("no free port found");
}

/// A request as an upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request path and query.
    pub target: String,
    /// Request headers.
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 server on loopback that answers with its own name.
///
/// - `/slow?ms=N` waits N milliseconds before answering;
/// - `/hop` answers with hop-by-hop headers the proxy must strip.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it answers with.
    pub name: String,
    hits: Arc<AtomicUsize>,
    health: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    faults: Arc<Faults>,
}

/// Errors and latency an [`Upstream`] adds to its answers.
#[derive(Debug, Default)]
pub struct Faults {
    /// Of every 100 answers, this many are 500s.
    error_percent: AtomicUsize,
    /// Every answer waits this long first.
    delay_ms: AtomicUsize,
    answered: AtomicUsize,
}

impl Upstream {
    /// Starts an upstream on an ephemeral loopback port.
    pub async fn start(name: &str) -> Upstream {
        Self::start_inner(name, None, "127.0.0.1:0").await
    }

    /// Starts an upstream on `addr` (to bring a killed one back).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Upstream {
        Self::start_inner(name, None, &addr.to_string()).await
    }

    /// How `/healthz` answers from now on.
    pub fn set_health(&self, mode: HealthMode) {
        self.health.store(mode as usize, Ordering::SeqCst);
    }

    /// From now on, `error_percent` of every 100 answers are 500s and
    /// every answer waits `delay` first.
    pub fn set_faults(&self, error_percent: usize, delay: Duration) {
        self.faults
            .error_percent
            .store(error_percent, Ordering::SeqCst);
        self.faults
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    /// Starts an HTTPS upstream serving `tls`.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_inner(
            name,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            "127.0.0.1:0",
        )
        .await
    }

    async fn start_inner(
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        bind: &str,
    ) -> Upstream {
        let listener = bind_retrying(bind).await;
        let addr = listener.local_addr().expect("upstream address");
        let up = Upstream {
            addr,
            name: name.to_string(),
            hits: Default::default(),
            health: Default::default(),
            connections: Default::default(),
            seen: Default::default(),
            tasks: Default::default(),
            faults: Default::default(),
        };
        let (name, hits, connections, seen, tasks, health, faults) = (
            up.name.clone(),
            up.hits.clone(),
            up.connections.clone(),
            up.seen.clone(),
            up.tasks.clone(),
            up.health.clone(),
            up.faults.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (name, hits, seen, health, faults) = (
                    name.clone(),
                    hits.clone(),
                    seen.clone(),
                    health.clone(),
                    faults.clone(),
                );
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, hits, seen, health, faults) = (
                            name.clone(),
                            hits.clone(),
                            seen.clone(),
                            health.clone(),
                            faults.clone(),
                        );
                        async move {
                            Ok::<_, Infallible>(
                                answer(req, &name, &hits, &seen, &health, &faults).await,
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
                tasks.lock().expect("tasks").push(conn.abort_handle());
            }
        });
        up.tasks.lock().expect("tasks").push(accept.abort_handle());
        up
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Kills the server: the port closes and open connections are cut.
    pub fn kill(&self) {
        for task in self.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How an [`Upstream`] answers its health path, `/healthz`.
#[derive(Clone, Copy, Debug)]
pub enum HealthMode {
    /// 200.
    Ok = 0,
    /// 500.
    Fail = 1,
    /// Never answers.
    Hang = 2,
}

async fn bind_retrying(addr: &str) -> TcpListener {
    // A port just closed may linger briefly; it is ours to take back.
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}");
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    health: &AtomicUsize,
    faults: &Faults,
) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    if target == "/healthz" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"health\n")));
        match health.load(Ordering::SeqCst) {
            0 => {}
            1 => *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
            _ => std::future::pending::<()>().await,
        }
        return resp;
    }
    seen.lock().expect("seen").push(Seen {
        target: target.clone(),
        headers: req.headers().clone(),
    });
    if req.uri().path() == "/ws" && req.headers().contains_key(hyper::header::UPGRADE) {
        // An echo over the upgraded connection: every byte comes back.
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        hits.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-upstream", HeaderValue::from_str(name).expect("name"));
        return resp;
    }
    if req.uri().path() == "/slow" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Drain the request body before answering.
    let _ = req.into_body().collect().await;
    hits.fetch_add(1, Ordering::SeqCst);
    let delay = faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    // Failures spread evenly: with 10%, every tenth answer.
    let nth = faults.answered.fetch_add(1, Ordering::SeqCst);
    let percent = faults.error_percent.load(Ordering::SeqCst);
    if percent > 0 && (nth * percent) % 100 < percent {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{name} failed\n"))));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    let h = resp.headers_mut();
    h.insert("x-upstream", HeaderValue::from_str(name).expect("name"));
    if target == "/hop" {
        h.insert("connection", HeaderValue::from_static("x-up-private"));
        h.insert("x-up-private", HeaderValue::from_static("secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    }
    resp
}

/// A running `switchyard run` process with its own config directory.
pub struct Proxy {
    /// The plain HTTP listener.
    pub addr: SocketAddr,
    /// The HTTPS listener, if started with one.
    pub https: Option<SocketAddr>,
    /// The admin listener, if started with one.
    pub admin: Option<SocketAddr>,
    /// The config file it runs.
    pub config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    header: String,
    dir: tempfile::TempDir,
}

/// How to start a [`Proxy`].
pub struct ProxyOptions {
    /// The `[server]` table's contents.
    pub server: String,
    /// Whether to add an HTTPS listener (the body must then configure
    /// `[[tls.certificates]]`).
    pub https: bool,
    /// Arguments before `run` (global flags such as `--log-format json`).
    pub global_args: Vec<String>,
    /// The directory for the config file and logs (a new one by default),
    /// so tests can put certificate files there first.
    pub dir: Option<tempfile::TempDir>,
    /// The plain listener's port (a free one by default).
    pub http_port: Option<u16>,
    /// Whether to add an admin listener.
    pub admin: bool,
    /// More lines for the `[listen]` table.
    pub listen_extra: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            server: "grace_period = \"5s\"\n".into(),
            https: false,
            global_args: Vec::new(),
            dir: None,
            http_port: None,
            admin: false,
            listen_extra: String::new(),
        }
    }
}

impl Proxy {
    /// Starts the proxy with `body` (everything but `[listen]` and
    /// `[server]`) and waits until it accepts connections.
    pub async fn start(body: &str) -> Proxy {
        Self::start_with(body, ProxyOptions::default()).await
    }

    /// Like [`Proxy::start`], with the `[server]` table's contents.
    pub async fn start_with_server(body: &str, server: &str) -> Proxy {
        let options = ProxyOptions {
            server: server.into(),
            ..ProxyOptions::default()
        };
        Self::start_with(body, options).await
    }

    /// Like [`Proxy::start`], with every option.
    pub async fn start_with(body: &str, options: ProxyOptions) -> Proxy {
        let dir = match options.dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("temp dir"),
        };
        let port = options.http_port.unwrap_or_else(free_port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let https: Option<SocketAddr> = options
            .https
            .then(|| format!("127.0.0.1:{}", free_port()).parse().expect("addr"));
        let https_line = https.map_or(String::new(), |a| format!("https = \"{a}\"\n"));
        let admin: Option<SocketAddr> = options
            .admin
            .then(|| format!("127.0.0.1:{}", free_port()).parse().expect("addr"));
        let https_line = match admin {
            Some(a) => format!("{https_line}admin = \"{a}\"\n"),
            None => https_line,
        };
        let header = format!(
            "[listen]\nhttp = \"{addr}\"\n{https_line}{}\n[server]\n{}\n",
            options.listen_extra, options.server
        );
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, format!("{header}{body}")).expect("write config");
        let log_path = dir.path().join("switchyard.log");
        let log = File::create(&log_path).expect("log file");
        let child = Command::new(BIN)
            .args(&options.global_args)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start switchyard");
        let mut proxy = Proxy {
            addr,
            https,
            admin,
            config_path,
            log_path,
            child: Some(child),
            header,
            dir,
        };
        proxy.wait_ready().await;
        proxy
    }

    /// The directory holding the config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file now, without the `[listen]` and `[server]` header
    /// this harness wrote (which changes stay clear of).
    pub fn body_now(&self) -> String {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        text.strip_prefix(&self.header)
            .expect("the header is intact")
            .to_string()
    }

    /// Kills the process and starts a new one on the same directory and
    /// config file as it is now (what a crash and a restart would see).
    pub async fn restart(self, options: ProxyOptions) -> Proxy {
        let body = self.body_now();
        let dir = self.kill_keep_dir();
        Proxy::start_with(
            &body,
            ProxyOptions {
                dir: Some(dir),
                ..options
            },
        )
        .await
    }

    /// Stops the process (SIGKILL) and hands back its directory.
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let http = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            let mut others = true;
            for a in self.https.iter().chain(self.admin.iter()) {
                others &= tokio::net::TcpStream::connect(a).await.is_ok();
            }
            if http && others {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!("switchyard exited early ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "switchyard not ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log line {needle:?} never came:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The full config text for `body`, with this proxy's listener.
    pub fn config_text(&self, body: &str) -> String {
        format!("{}{}", self.header, body)
    }

    /// Rewrites the config file in place (same inode).
    pub fn write_in_place(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.config_path)
            .expect("open config");
        f.write_all(text.as_bytes()).expect("write config");
    }

    /// Replaces the config file by writing a temporary file and renaming it.
    pub fn replace_atomically(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).expect("write temp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Sends `signal` (for example `"HUP"`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        send_signal(pid, signal);
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not exit within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- switchyard log ---\n{}", self.logs());
        }
    }
}

/// Sends a signal by name with the system's `kill`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

/// A response with its body read.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Client {
    /// A client with a connection pool.
    pub fn new() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(64)
                .build_http(),
        }
    }

    /// GET `url` with `host` as the Host header (if any).
    pub async fn get(&self, url: &str, host: Option<&str>) -> Result<Reply, String> {
        let mut req = Request::get(url);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        self.send(req).await
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&self, req: Request<Empty<Bytes>>) -> Result<Reply, String> {
        let resp = tokio::time::timeout(Duration::from_secs(10), self.inner.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Sends `count` GETs to `url` over `concurrency` connections and returns
/// how many answers had each body, plus every failure.
pub async fn tally(
    client: &Client,
    url: &str,
    count: usize,
    concurrency: usize,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.to_string(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut bodies = std::collections::BTreeMap::<String, usize>::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < count {
                match client.get(&url, None).await {
                    Ok(r) if r.status == StatusCode::OK => {
                        *bodies.entry(r.body.trim().to_string()).or_default() += 1
                    }
                    Ok(r) => failures.push(format!("{}: {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
            }
            (bodies, failures)
        }));
    }
    let mut bodies = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for w in workers {
        let (b, f) = w.await.expect("worker");
        for (k, v) in b {
            *bodies.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    (bodies, failures)
}

/// The repository root (where `examples/` and `tests/` are).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

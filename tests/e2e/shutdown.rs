//! Graceful shutdown on SIGTERM.

use std::time::{Duration, Instant};

use crate::harness::{Client, Proxy, Upstream};

/// A proxy in front of `up` with a 10 s grace period.
async fn proxy_with_grace(up: &Upstream) -> Proxy {
    Proxy::start_with_server(
        &format!(
            "[[routes]]\nservice = \"s\"\n[services.s.pools.main]\nbackends = [\"{}\"]\n",
            up.addr
        ),
        "grace_period = \"10s\"\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let up = Upstream::start("slow").await;
    let mut proxy = proxy_with_grace(&up).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_its_way_when_shutdown_begins_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("app").await;
    let mut proxy = proxy_with_grace(&up).await;
    // Accepted, and waiting for its first request when the signal comes.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply))
        .await
        .expect("the connection is closed after the answer")
        .expect("read");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "reply {text:?}");
    assert!(text.ends_with("app\n"), "reply {text:?}");
    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
}

/// Counts answers and failures of clients running until `stop`.
#[derive(Default)]
struct Load {
    ok: std::sync::atomic::AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
    stop: std::sync::atomic::AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_the_sockets_under_load_with_no_failed_request() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start("app").await;
    let mut old = Proxy::start(&format!(
        "[[routes]]\nservice = \"s\"\n[services.s.pools.main]\nbackends = [\"{}\"]\n",
        up.addr
    ))
    .await;
    let load = Arc::new(Load::default());
    let mut workers = Vec::new();
    // Keep-alive clients.
    for _ in 0..3 {
        let (load, client, url) = (load.clone(), Client::new(), old.url("/"));
        workers.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if load.stop.load(Ordering::SeqCst) {
                    return;
                }
                match client.get(&url, None).await {
                    Ok(r) if r.status == 200 => {
                        load.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => load
                        .failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}", r.status)),
                    Err(e) => load.failures.lock().expect("lock").push(e),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // A new connection per request: a refused connection would show here.
    for _ in 0..2 {
        let (load, addr) = (load.clone(), old.addr);
        workers.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if load.stop.load(Ordering::SeqCst) {
                    return;
                }
                let result = async {
                    let mut tcp = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let mut reply = Vec::new();
                    tcp.read_to_end(&mut reply)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if reply.starts_with(b"HTTP/1.1 200") {
                        Ok(())
                    } else {
                        Err(format!("reply {:?}", String::from_utf8_lossy(&reply)))
                    }
                }
                .await;
                match result {
                    Ok(()) => {
                        load.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => load.failures.lock().expect("lock").push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new binary waits for the sockets; the old one hands them over.
    let log = std::fs::File::create(old.dir().join("new.log")).expect("log");
    let new = std::process::Command::new(crate::harness::BIN)
        .args(["run", "--upgrade", "--config"])
        .arg(&old.config_path)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the new process");
    let new = KillOnDrop(new);
    let new_log = old.dir().join("new.log");
    crate::harness::eventually(Duration::from_secs(10), "the new process to wait", || {
        let text = std::fs::read_to_string(&new_log).unwrap_or_default();
        async move { text.contains("waiting for the running instance") }
    })
    .await;
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the old process exits cleanly: {status}");
    let served_before = load.ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let failures = load.failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "failed requests during the upgrade: {failures:?}"
    );
    assert!(
        load.ok.load(Ordering::SeqCst) > served_before,
        "the new process serves after the old one left"
    );
    let text = std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(text.contains("config loaded"), "{text}");
    drop(new);
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

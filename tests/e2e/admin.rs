//! The admin API: authentication, status, split and switch with write-back,
//! generations, reloads and the audit log.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::harness::{tally, Client, Proxy, ProxyOptions, Upstream};

pub(crate) const WRITE_TOKEN: &str = "deploy-bot-secret-0123456789";
const READ_TOKEN: &str = "viewer-secret-abcdefghijklmnop";

/// One admin request; returns the status and the JSON body.
pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    if_match: Option<u64>,
) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(g) = if_match {
        req = req.header("if-match", g.to_string());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

/// A blue/green service with the admin API, two tokens and an audit log.
pub(crate) async fn admin_proxy(blue: SocketAddr, green: SocketAddr, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("deploy.token"), format!("{WRITE_TOKEN}\n")).expect("token");
    std::fs::write(dir.path().join("viewer.token"), READ_TOKEN).expect("token");
    let body = format!(
        r#"[admin]
audit_log = "audit.jsonl"

[[admin.tokens]]
name = "deploy-bot"
role = "write"
file = "deploy.token"

[[admin.tokens]]
name = "viewer"
role = "read"
file = "viewer.token"

# The storefront.
[[routes]]
service = "shop"

[services.shop]
split = {{ blue = 100, green = 0 }}   # share of traffic per pool
{extra}
[services.shop.pools.blue]
backends = ["{blue}"]

[services.shop.pools.green]
backends = ["{green}"]
"#
    );
    Proxy::start_with(
        &body,
        ProxyOptions {
            admin: true,
            dir: Some(dir),
            ..ProxyOptions::default()
        },
    )
    .await
}

pub(crate) fn audit_lines(proxy: &Proxy) -> Vec<Value> {
    std::fs::read_to_string(proxy.dir().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_enforced() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");
    let split = Some(r#"{"blue": 50, "green": 50}"#);

    assert_eq!(
        call(admin, "GET", "/api/v1/status", None, None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            admin,
            "GET",
            "/api/v1/status",
            Some("wrong-token-wrong-token"),
            None,
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            admin,
            "PUT",
            "/api/v1/services/shop/split",
            Some(READ_TOKEN),
            split,
            None
        )
        .await
        .0,
        403
    );
    let (status, health) = call(admin, "GET", "/health", None, None, None).await;
    assert_eq!(
        (
            status,
            health["status"].as_str(),
            health["generation"].as_u64()
        ),
        (200, Some("ok"), Some(1))
    );

    let (status, doc) = call(admin, "GET", "/api/v1/status", Some(READ_TOKEN), None, None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["generation"], 1);
    let pools = &doc["services"][0]["pools"];
    assert_eq!(pools[0]["name"], "blue");
    assert_eq!(pools[0]["effective_percent"], 100.0);
    assert_eq!(pools[1]["backends"][0]["address"], green.addr.to_string());
    assert_eq!(
        call(
            admin,
            "GET",
            "/api/v1/nothing",
            Some(READ_TOKEN),
            None,
            None
        )
        .await
        .0,
        404
    );
    assert!(audit_lines(&proxy).is_empty(), "reads are not audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_change_applies_at_once_is_written_back_and_survives_a_restart() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");

    // Refusals carry the reason, like the file would.
    let (status, body) = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 0, "green": 0}"#),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"][0]
            .as_str()
            .unwrap_or("")
            .contains("every share is zero"),
        "{body}"
    );
    let (status, body) = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"purple": 5}"#),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"][0].as_str().unwrap_or("").contains("purple"),
        "{body}"
    );
    assert_eq!(
        call(
            admin,
            "PUT",
            "/api/v1/services/nope/split",
            Some(WRITE_TOKEN),
            Some("{}"),
            None
        )
        .await
        .0,
        404
    );

    let (status, body) = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 0, "green": 100}"#),
        Some(1),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(body["before"]["blue"], 100);
    assert_eq!(body["after"]["green"], 100);
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 100, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        bodies.get("green"),
        Some(&100),
        "the change is live at once"
    );

    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    assert!(
        text.contains("# The storefront."),
        "comments are kept:\n{text}"
    );
    assert!(
        text.contains("split = { blue = 0, green = 100 }   # share of traffic per pool"),
        "layout is kept:\n{text}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !proxy.logs().contains("generation=3"),
        "the write-back is not applied twice"
    );

    // A restart reads the file the API wrote.
    let proxy = proxy
        .restart(ProxyOptions {
            admin: true,
            ..ProxyOptions::default()
        })
        .await;
    let (bodies, _) = tally(&Client::new(), &proxy.url("/"), 50, 2).await;
    assert_eq!(
        bodies.get("green"),
        Some(&50),
        "the change survived the restart"
    );

    let audit = audit_lines(&proxy);
    assert_eq!(audit.len(), 4, "one line per change attempt: {audit:?}");
    let ok: Vec<&Value> = audit.iter().filter(|l| l["result"] == "ok").collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["token"], "deploy-bot");
    assert_eq!(ok[0]["action"], "split");
    assert_eq!(ok[0]["after"]["green"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_on_one_generation_one_wins() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");
    let a = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 60, "green": 40}"#),
        Some(1),
    );
    let b = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 40, "green": 60}"#),
        Some(1),
    );
    let ((sa, _), (sb, _)) = tokio::join!(a, b);
    let mut statuses = [sa, sb];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_is_refused_to_a_dead_pool_unless_forced() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let checks = "\n[services.shop.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n";
    let proxy = admin_proxy(blue.addr, green.addr, checks).await;
    let admin = proxy.admin.expect("admin");
    let green_addr = green.addr;
    green.kill();
    proxy.wait_for_log(&format!("backend={green_addr}")).await;
    let (status, body) = call(
        admin,
        "POST",
        "/api/v1/services/shop/switch",
        Some(WRITE_TOKEN),
        Some(r#"{"to": "green"}"#),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = call(
        admin,
        "POST",
        "/api/v1/services/shop/switch",
        Some(WRITE_TOKEN),
        Some(r#"{"to": "green", "force": true}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["after"]["green"], 100);
    assert_eq!(body["after"]["blue"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_endpoint_reports_a_refused_file() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    // The watch is set up just after the listeners (on a loaded machine an
    // edit can come first, and the watcher's first look takes it instead):
    // harmless edits until one is applied as a file change.
    let mut watching = None;
    for i in 0..50 {
        proxy.write_in_place(&format!("{text}\n# edit {i}\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, doc) = call(admin, "GET", "/api/v1/status", Some(READ_TOKEN), None, None).await;
        if doc["last_reload"]["trigger"] == "file change"
            && doc["last_reload"]["result"] == "applied"
        {
            watching = Some(doc["generation"].clone());
            break;
        }
    }
    let generation = watching.expect("the watcher applies a harmless edit");
    proxy.write_in_place(&text.replace("green = 0", "green = \"lots\""));
    // The file watcher sees the edit first and refuses it; a reload asked
    // for afterwards must still say why, not "unchanged".
    crate::harness::eventually(
        Duration::from_secs(10),
        "the watcher to refuse the file",
        || async {
            let (_, doc) = call(admin, "GET", "/api/v1/status", Some(READ_TOKEN), None, None).await;
            doc["last_reload"]["trigger"] == "file change"
                && doc["last_reload"]["result"] == "rejected"
        },
    )
    .await;
    let reload = || {
        call(
            admin,
            "POST",
            "/api/v1/reload",
            Some(WRITE_TOKEN),
            None,
            None,
        )
    };
    for _ in 0..2 {
        let (status, body) = reload().await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["details"][0]
                .as_str()
                .unwrap_or("")
                .contains("services.shop.split.green: expected an integer"),
            "{body}"
        );
    }
    let (_, doc) = call(admin, "GET", "/api/v1/status", Some(READ_TOKEN), None, None).await;
    assert_eq!(doc["last_reload"]["result"], "rejected", "{doc}");
    assert_eq!(doc["last_reload"]["trigger"], "admin API", "{doc}");
    assert_eq!(
        doc["generation"], generation,
        "the refused file is not served"
    );
    // Put right, the file is applied by the next reload.
    proxy.write_in_place(&text);
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_traffic_per_pool() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");
    let (status, _) = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 50, "green": 50}"#),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (bodies, failures) = tally(&Client::new(), &proxy.url("/"), 300, 4).await;
    assert!(failures.is_empty(), "{failures:?}");

    // The scrape needs a token like any read.
    assert_eq!(
        call(admin, "GET", "/metrics", None, None, None).await.0,
        401
    );
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", admin.to_string())
        .header("authorization", format!("Bearer {READ_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");

    // Every sample line is `name{labels} value`, every family has a TYPE.
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# TYPE ") || line.starts_with("# HELP "),
                "{line}"
            );
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = key.split('{').next().unwrap_or(key);
        assert!(
            text.contains(&format!(
                "# TYPE {}",
                name.trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
            )),
            "no TYPE for {name}"
        );
        samples.insert(key.to_string(), value);
    }
    for pool in ["blue", "green"] {
        let key =
            format!("switchyard_requests_total{{service=\"shop\",pool=\"{pool}\",class=\"2xx\"}}");
        let counted = samples.get(&key).copied().unwrap_or(0.0);
        let sent = *bodies.get(pool).unwrap_or(&0) as f64;
        assert_eq!(counted, sent, "{key}\n{text}");
    }
    assert_eq!(
        samples.get("switchyard_pool_backends_available{service=\"shop\",pool=\"green\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        samples.get("switchyard_config_reloads_total{result=\"applied\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        samples.get("switchyard_admin_changes_total{action=\"split\",result=\"ok\"}"),
        Some(&1.0),
        "{text}"
    );
    // Every request answered by a pool is in its duration histogram, the
    // buckets are cumulative and end at the count.
    for pool in ["blue", "green"] {
        let labels = format!("service=\"shop\",pool=\"{pool}\"");
        let sent = *bodies.get(pool).unwrap_or(&0) as f64;
        let count = samples.get(&format!(
            "switchyard_request_duration_seconds_count{{{labels}}}"
        ));
        assert_eq!(count, Some(&sent), "{text}");
        let mut last = 0.0;
        for le in ["0.001", "0.005", "0.1", "1", "10", "+Inf"] {
            let key = format!("switchyard_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}");
            let n = *samples
                .get(&key)
                .unwrap_or_else(|| panic!("{key} missing\n{text}"));
            assert!(n >= last, "{key} below the bucket before it\n{text}");
            last = n;
        }
        assert_eq!(last, sent, "{text}");
        let sum = samples[&format!("switchyard_request_duration_seconds_sum{{{labels}}}")];
        assert!(sum > 0.0 && sum < sent * 10.0, "{text}");
    }
}

/// Runs `switchyard ctl ARGS` against `admin` with `token`.
async fn ctl(admin: SocketAddr, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(crate::harness::BIN);
    cmd.arg("ctl")
        .args(["--admin", &admin.to_string()])
        .args(args)
        .env("SWITCHYARD_TOKEN", token);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("ctl in time")
        .expect("run ctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_status_changes_the_split_and_fails_on_refusal() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");

    let out = ctl(admin, READ_TOKEN, &["status"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("generation 1"), "{stdout}");
    let blue_row = stdout
        .lines()
        .find(|l| l.starts_with("shop") && l.contains(" blue "))
        .expect("blue row");
    assert!(
        blue_row.contains("100.0%") && blue_row.contains(&blue.addr.to_string()),
        "{blue_row}"
    );

    let out = ctl(
        admin,
        WRITE_TOKEN,
        &["split", "shop", "blue=25", "green=75"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("generation 2: split is now blue=25 green=75"),
        "{stdout}"
    );

    let out = ctl(admin, WRITE_TOKEN, &["--json", "status"]).await;
    let doc: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(doc["services"][0]["pools"][1]["share"], 75);

    // A refusal: non-zero exit, the API's reason on stderr.
    let out = ctl(admin, READ_TOKEN, &["split", "shop", "blue=1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused (403)") && stderr.contains("may only read"),
        "{stderr}"
    );
    let out = ctl(admin, WRITE_TOKEN, &["split", "shop", "purple=1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services.shop.split.purple"),
        "the details are shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_finishes_in_flight_requests_and_gets_no_new_ones() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("deploy.token"), WRITE_TOKEN).expect("token");
    let body = format!(
        "[[admin.tokens]]\nname = \"deploy-bot\"\nrole = \"write\"\nfile = \"deploy.token\"\n\n\
         [[routes]]\nservice = \"shop\"\n\n[services.shop]\nsplit = {{ blue = 100, green = 0 }}\n\n\
         [services.shop.pools.blue]\nbackends = [\"{}\", \"{}\"]\n\n[services.shop.pools.green]\nbackends = [\"{}\"]\n",
        one.addr, two.addr, green.addr
    );
    let proxy = Proxy::start_with(
        &body,
        ProxyOptions {
            admin: true,
            dir: Some(dir),
            ..ProxyOptions::default()
        },
    )
    .await;
    let admin = proxy.admin.expect("admin");

    // Slow requests in flight on both backends.
    let client = Client::new();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/slow?ms=1500"));
            tokio::spawn(async move { client.get(&url, None).await })
        })
        .collect();
    crate::harness::eventually(
        Duration::from_secs(5),
        "slow requests on both backends",
        || {
            let (a, b) = (one.seen().len(), two.seen().len());
            async move { a >= 1 && b >= 1 }
        },
    )
    .await;

    let target = format!(
        r#"{{"service": "shop", "pool": "blue", "backend": "{}"}}"#,
        one.addr
    );
    let (status, reply) = call(
        admin,
        "POST",
        "/api/v1/backends/drain",
        Some(WRITE_TOKEN),
        Some(&target),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["after"][0], one.addr.to_string());
    let hits_at_drain = one.hits();
    let (bodies, failures) = tally(&client, &proxy.url("/"), 100, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        bodies.get("two"),
        Some(&100),
        "no new request reaches the drained backend"
    );
    for s in slow {
        let reply = s
            .await
            .expect("join")
            .expect("the in-flight request completes");
        assert_eq!(reply.status, 200);
    }
    assert!(
        one.hits() > hits_at_drain,
        "its in-flight requests finished"
    );
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    assert!(
        text.contains(&format!("drain = [\"{}\"]", one.addr)),
        "written back:\n{text}"
    );

    let (status, _) = call(
        admin,
        "POST",
        "/api/v1/backends/undrain",
        Some(WRITE_TOKEN),
        Some(&target),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (bodies, _) = tally(&client, &proxy.url("/"), 100, 4).await;
    assert!(
        bodies.get("one").copied().unwrap_or(0) > 20,
        "back in rotation: {bodies:?}"
    );
    let bad = r#"{"service": "shop", "pool": "blue", "backend": "127.0.0.1:1"}"#;
    assert_eq!(
        call(
            admin,
            "POST",
            "/api/v1/backends/drain",
            Some(WRITE_TOKEN),
            Some(bad),
            None
        )
        .await
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_through_a_symlinked_config_keeps_the_link() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let proxy = admin_proxy(blue.addr, green.addr, "").await;
    let admin = proxy.admin.expect("admin");
    // The config becomes a link to a file elsewhere, as deploy tools do.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real.toml");
    std::fs::copy(&proxy.config_path, &target).expect("copy");
    let link = proxy.config_path.with_extension("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    std::fs::rename(&link, &proxy.config_path).expect("swap in the link");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (status, body) = call(
        admin,
        "PUT",
        "/api/v1/services/shop/split",
        Some(WRITE_TOKEN),
        Some(r#"{"blue": 30, "green": 70}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let meta = std::fs::symlink_metadata(&proxy.config_path).expect("metadata");
    assert!(meta.file_type().is_symlink(), "the config is still a link");
    let text = std::fs::read_to_string(&target).expect("target");
    assert!(
        text.contains("split = { blue = 30, green = 70 }"),
        "the target got the change:\n{text}"
    );
}

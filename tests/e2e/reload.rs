//! Live reload of the config file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::blue_green;
use crate::harness::{tally, Client, Proxy, Upstream};

/// Percentage of `n` requests answered by green.
async fn green_pct(proxy: &Proxy, client: &Client, n: usize) -> f64 {
    let (bodies, failures) = tally(client, &proxy.url("/"), n, 8).await;
    assert!(failures.is_empty(), "failures: {failures:?}");
    100.0 * bodies.get("green").copied().unwrap_or(0) as f64 / n as f64
}

/// The log fragment of an applied reload to `generation`.
fn generation_line(generation: u64) -> String {
    format!("generation={generation} routes=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_changes_by_in_place_write_and_by_atomic_rename() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let proxy = Proxy::start(&blue_green(90, 10, &b, &g)).await;
    let client = Client::new();

    let pct = green_pct(&proxy, &client, 3000).await;
    assert!((pct - 10.0).abs() < 4.0, "before: green {pct:.1}%");

    proxy.write_in_place(&proxy.config_text(&blue_green(50, 50, &b, &g)));
    proxy.wait_for_log(&generation_line(2)).await;
    let pct = green_pct(&proxy, &client, 3000).await;
    assert!(
        (pct - 50.0).abs() < 5.0,
        "after in-place write: green {pct:.1}%"
    );

    proxy.replace_atomically(&proxy.config_text(&blue_green(90, 10, &b, &g)));
    proxy.wait_for_log(&generation_line(3)).await;
    let pct = green_pct(&proxy, &client, 3000).await;
    assert!((pct - 10.0).abs() < 4.0, "after rename: green {pct:.1}%");

    proxy.replace_atomically(&proxy.config_text(&blue_green(50, 50, &b, &g)));
    proxy.wait_for_log(&generation_line(4)).await;
    let pct = green_pct(&proxy, &client, 3000).await;
    assert!(
        (pct - 50.0).abs() < 5.0,
        "after second rename: green {pct:.1}%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_keeps_the_old_config_and_logs_line_and_key() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let proxy = Proxy::start(&blue_green(100, 0, &b, &g)).await;
    let client = Client::new();

    let broken = blue_green(0, 100, &b, &g)
        .replace(
            "split = { blue = 0, green = 100 }",
            "split = { blue = 0, green = 100, purple = 5 }",
        )
        .replace("[services.shop]", "[services.shop]\ncolour = \"red\"");
    let text = proxy.config_text(&broken);
    proxy.write_in_place(&text);
    proxy.wait_for_log("config reload rejected").await;
    let file = proxy.config_path.display().to_string();
    // 1-based line and column where `needle` first appears.
    let at = |needle: &str| {
        let (i, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .expect("needle in config");
        format!("{}:{}", i + 1, line.find(needle).expect("column") + 1)
    };
    let logs = proxy.logs();
    for expected in [
        format!(
            "{file}:{}: services.shop.colour: unknown key; expected one of `split`, `pools`, `connect_timeout`",
            at("colour")
        ),
        format!(
            "{file}:{}: services.shop.split.purple: unknown pool; this service has `blue`, `green`",
            at("purple")
        ),
    ] {
        assert!(logs.contains(&expected), "missing {expected:?} in:\n{logs}");
    }
    assert!(logs.contains("problems=2"), "{logs}");

    // Still generation 1: all blue.
    let (bodies, failures) = tally(&client, &proxy.url("/"), 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(bodies.get("blue"), Some(&200), "{bodies:?}");

    // The fixed file is applied.
    proxy.write_in_place(&proxy.config_text(&blue_green(0, 100, &b, &g)));
    proxy.wait_for_log(&generation_line(2)).await;
    let (bodies, _) = tally(&client, &proxy.url("/"), 200, 4).await;
    assert_eq!(bodies.get("green"), Some(&200), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_traffic_through_twenty_reloads_sees_no_failure() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let proxy = Proxy::start(&blue_green(100, 0, &b, &g)).await;
    let client = Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url, stop) = (client.clone(), proxy.url("/"), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0usize, Vec::new());
            // Bounded: stops when told, or after 200k requests at most.
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match client.get(&url, None).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        }));
    }
    for generation in 2..=21u64 {
        let body = if generation % 2 == 0 {
            blue_green(0, 100, &b, &g)
        } else {
            blue_green(100, 0, &b, &g)
        };
        let text = proxy.config_text(&body);
        if generation % 4 < 2 {
            proxy.write_in_place(&text);
        } else {
            proxy.replace_atomically(&text);
        }
        proxy.wait_for_log(&generation_line(generation)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failures) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.expect("worker");
        ok += o;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok > 100, "only {ok} requests went through");
    assert!(
        blue.hits() > 0 && green.hits() > 0,
        "both generations served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_change_needs_a_restart_and_the_rest_applies() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let proxy = Proxy::start(&blue_green(100, 0, &b, &g)).await;
    let text = proxy
        .config_text(&blue_green(0, 100, &b, &g))
        .replace(&proxy.addr.to_string(), "127.0.0.1:1");
    proxy.write_in_place(&text);
    proxy.wait_for_log(&generation_line(2)).await;
    let expected = format!(
        "restart required: listen.http changed from {} to 127.0.0.1:1; the running value is kept",
        proxy.addr
    );
    assert!(proxy.logs().contains(&expected), "{}", proxy.logs());
    let reply = Client::new()
        .get(&proxy.url("/"), None)
        .await
        .expect("old listener serves");
    assert_eq!(reply.body, "green\n", "the split change applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_watcher_cannot_see() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let mut proxy = Proxy::start(&blue_green(100, 0, &b, &g)).await;
    let client = Client::new();

    // The config becomes a symlink to a file in a directory nobody watches.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real.toml");
    std::fs::write(&target, proxy.config_text(&blue_green(100, 0, &b, &g))).expect("write");
    let link = proxy.config_path.with_extension("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    std::fs::rename(&link, &proxy.config_path).expect("swap in symlink");
    tokio::time::sleep(Duration::from_millis(400)).await;

    std::fs::write(&target, proxy.config_text(&blue_green(0, 100, &b, &g))).expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !proxy.logs().contains(&generation_line(2)),
        "nothing saw the change yet"
    );
    let reply = client.get(&proxy.url("/"), None).await.expect("reply");
    assert_eq!(reply.body, "blue\n");

    proxy.signal("HUP");
    proxy.wait_for_log("trigger=SIGHUP generation=2").await;
    let reply = client.get(&proxy.url("/"), None).await.expect("reply");
    assert_eq!(reply.body, "green\n");

    // An unchanged file on SIGHUP is reported, not re-applied.
    proxy.signal("HUP");
    proxy.wait_for_log("SIGHUP: config file unchanged").await;
    assert!(
        proxy.try_wait().is_none(),
        "SIGHUP must not stop the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_volume_swapping_its_data_directory_is_seen() {
    use std::os::unix::fs::symlink;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let (b, g) = ([blue.addr], [green.addr]);
    let proxy = Proxy::start(&blue_green(100, 0, &b, &g)).await;
    let client = Client::new();

    // Laid out as a Kubernetes ConfigMap volume: the file is a link
    // through `..data`, itself a link to a directory of this version.
    let dir = proxy.config_path.parent().expect("dir").to_path_buf();
    let name = proxy.config_path.file_name().expect("name").to_owned();
    let first = dir.join("..2026_11_23_01");
    std::fs::create_dir(&first).expect("dir");
    let text = proxy.config_text(&blue_green(100, 0, &b, &g));
    std::fs::write(first.join(&name), text).expect("write");
    symlink("..2026_11_23_01", dir.join("..data")).expect("link");
    let link = dir.join("config.link");
    symlink(std::path::Path::new("..data").join(&name), &link).expect("link");
    std::fs::rename(&link, &proxy.config_path).expect("swap in link");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !proxy.logs().contains(&generation_line(2)),
        "the same config is not applied again"
    );

    // A new version: a new directory, and `..data` renamed over to it.
    let second = dir.join("..2026_11_23_02");
    std::fs::create_dir(&second).expect("dir");
    let text = proxy.config_text(&blue_green(0, 100, &b, &g));
    std::fs::write(second.join(&name), text).expect("write");
    symlink("..2026_11_23_02", dir.join("..data_tmp")).expect("link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    std::fs::remove_dir_all(&first).expect("remove old version");
    proxy.wait_for_log(&generation_line(2)).await;
    let reply = client.get(&proxy.url("/"), None).await.expect("reply");
    assert_eq!(reply.body, "green\n");
}

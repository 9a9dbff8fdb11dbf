//! `switchyard check` on the shipped examples and on broken files, and
//! `switchyard demo`, the README's first command.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{free_port, tally, Client, BIN};

fn check(files: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("check")
        .args(files)
        .current_dir(crate::harness::repo_root())
        .output()
        .expect("run switchyard check")
}

#[test]
fn every_example_is_valid() {
    let dir = crate::harness::repo_root().join("examples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            format!(
                "examples/{}",
                p.file_name().expect("name").to_string_lossy()
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = check(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files {
        assert!(stdout.contains(&format!("{f}: ok")), "{stdout}");
    }
}

#[test]
fn invalid_files_print_every_problem_with_line_and_key() {
    let dir = crate::harness::repo_root().join("tests/fixtures/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let rel = format!("tests/fixtures/invalid/{name}");
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|e| panic!("{rel}: no .expected file: {e}"));
        let out = check(&[&rel]);
        assert_eq!(out.status.code(), Some(1), "{rel} must fail");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{rel}");
    }
    assert!(seen >= 5, "only {seen} fixtures");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = check(&["no/such/file.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("cannot read config file no/such/file.toml: "),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_both_pools() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A port handed out here can be taken by another test's connection
    // before the demo binds it; the demo then exits, and is started again
    // on another port (three tries).
    let mut started = None;
    let mut exits = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // Its log goes to a file (a pipe nobody reads could fill and stop
        // it), read if it exits.
        let log =
            std::env::temp_dir().join(format!("switchyard-demo-{}-{port}.log", std::process::id()));
        let child = Command::new(BIN)
            .args(["demo", "--listen", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("demo log file"))
            .spawn()
            .expect("start demo");
        let mut guard = Kill(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let exited = loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break None;
            }
            if let Ok(Some(status)) = guard.0.try_wait() {
                break Some(status);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after 30s waiting for the demo to listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match exited {
            None => {
                let _ = std::fs::remove_file(&log);
                started = Some((addr, guard));
                break;
            }
            Some(status) => {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                exits.push(format!("{addr}: {status}: {stderr}"));
            }
        }
        let _ = std::fs::remove_file(&log);
    }
    let Some((addr, _guard)) = started else {
        panic!("the demo never listened: {exits:#?}");
    };
    let (bodies, failures) = tally(&Client::new(), &format!("http://{addr}/"), 400, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let blue = bodies.get("blue").copied().unwrap_or(0);
    let green = bodies.get("green").copied().unwrap_or(0);
    assert_eq!(blue + green, 400, "{bodies:?}");
    assert!(green > 10 && blue > 300, "a 90/10 split: {bodies:?}");
}

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
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args(["demo", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    crate::harness::eventually(Duration::from_secs(30), "the demo to listen", || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
    })
    .await;
    let (bodies, failures) = tally(&Client::new(), &format!("http://{addr}/"), 400, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    let blue = bodies.get("blue").copied().unwrap_or(0);
    let green = bodies.get("green").copied().unwrap_or(0);
    assert_eq!(blue + green, 400, "{bodies:?}");
    assert!(green > 10 && blue > 300, "a 90/10 split: {bodies:?}");
}

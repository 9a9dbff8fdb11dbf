//! The release build's optimization profile (`benches/pgo/`): recorded by
//! `benches/pgo.sh`, used by `scripts/lib.sh`'s `use_release_profile` for
//! every release build the scripts make (the demo and the benchmark).

use crate::harness::repo_root;
use std::path::Path;
use std::process::Command;

/// The LLVM major version of the `rustc` on the path.
fn rustc_llvm_major() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .expect("rustc -vV names its LLVM version")
        .to_string()
}

/// Sources `lib.sh` in `root` (a checkout's layout), runs
/// `use_release_profile` with `env` set and returns the flags it leaves and
/// what it said.
fn run_helper(root: &Path, env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new("bash");
    cmd.current_dir(root)
        .args([
            "-c",
            // As the scripts run it: any failing command ends the script.
            "set -euo pipefail; . scripts/lib.sh; use_release_profile; \
             printf '%s' \"${CARGO_ENCODED_RUSTFLAGS:-}\"",
        ])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags `use_release_profile` leaves (see `run_helper`).
fn flags_after(root: &Path, env: &[(&str, &str)]) -> String {
    run_helper(root, env).0
}

#[test]
fn release_builds_use_the_recorded_profile_and_keep_the_flags_already_set() {
    let root = repo_root();
    let profile = root.join("benches/pgo/switchyard.profdata");
    let recorded = std::fs::read_to_string(root.join("benches/pgo/llvm-version"))
        .expect("benches/pgo/llvm-version");
    assert_eq!(
        recorded.trim(),
        rustc_llvm_major(),
        "the profile was recorded with another LLVM than this toolchain's: \
         release builds would not use it; record it again with benches/pgo.sh"
    );
    let use_flag = format!("-Cprofile-use={}", profile.display());
    assert_eq!(flags_after(root, &[]), use_flag);
    // Flags the user set are kept, one per field, ahead of the profile's.
    let sep = '\u{1f}';
    assert_eq!(
        flags_after(root, &[("RUSTFLAGS", "-Ctarget-cpu=native  -Cdebuginfo=1")]),
        format!("-Ctarget-cpu=native{sep}-Cdebuginfo=1{sep}{use_flag}")
    );
    assert_eq!(
        flags_after(root, &[("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=1")]),
        format!("-Cdebuginfo=1{sep}{use_flag}")
    );
}

#[test]
fn the_recorded_profile_is_read_by_this_toolchain() {
    // rustc does not refuse a profile it cannot read: it warns ("invalid
    // instrumentation profile data") and builds without it, so the check is
    // that it says nothing; compile a small program with it as the release
    // build would.
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("main.rs");
    std::fs::write(
        &src,
        "fn main() { println!(\"{}\", std::env::args().count()); }\n",
    )
    .expect("write source");
    let profile = repo_root().join("benches/pgo/switchyard.profdata");
    let out = Command::new("rustc")
        .arg("-O")
        .arg(format!("-Cprofile-use={}", profile.display()))
        .arg("-o")
        .arg(dir.path().join("main"))
        .arg(&src)
        .output()
        .expect("rustc");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rustc failed: {said}");
    assert!(
        said.trim().is_empty(),
        "rustc did not take the profile cleanly: {said}"
    );
}

/// A checkout's layout holding only `scripts/lib.sh` and an empty
/// `benches/pgo/`.
fn checkout_with_lib_sh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("scripts")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("benches/pgo")).expect("mkdir");
    std::fs::copy(
        repo_root().join("scripts/lib.sh"),
        dir.path().join("scripts/lib.sh"),
    )
    .expect("copy lib.sh");
    dir
}

#[test]
fn a_profile_from_another_llvm_is_left_out() {
    // A checkout whose profile another LLVM recorded: the build goes on
    // without it, and says so.
    let dir = checkout_with_lib_sh();
    std::fs::write(dir.path().join("benches/pgo/switchyard.profdata"), b"").expect("write");
    std::fs::write(dir.path().join("benches/pgo/llvm-version"), "1\n").expect("write");
    let (flags, said) = run_helper(dir.path(), &[]);
    assert_eq!(flags, "");
    assert!(
        said.contains("building without benches/pgo/switchyard.profdata (recorded with LLVM 1;"),
        "{said}"
    );
    assert_eq!(
        flags_after(dir.path(), &[("RUSTFLAGS", "-Cdebuginfo=1")]),
        ""
    );
    // A profile whose version note is missing is left out too, and the
    // script using the helper goes on.
    std::fs::remove_file(dir.path().join("benches/pgo/llvm-version")).expect("rm");
    let (flags, said) = run_helper(dir.path(), &[]);
    assert_eq!(flags, "");
    assert!(said.contains("(recorded with LLVM unknown;"), "{said}");
    // Without a profile at all, nothing changes either.
    std::fs::remove_file(dir.path().join("benches/pgo/switchyard.profdata")).expect("rm");
    assert_eq!(flags_after(dir.path(), &[]), "");
}

/// SHA-256 of `path`, as `sha256sum` prints it.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

/// A checkout's layout with `scripts/lib.sh`, a `Cargo.lock` and the hash
/// of the lock the profile was recorded with (by default, this lock's).
fn checkout_for_check(recorded_lock: Option<&str>) -> tempfile::TempDir {
    let dir = checkout_with_lib_sh();
    let lock = dir.path().join("Cargo.lock");
    std::fs::write(&lock, "# lock\n").expect("write");
    let recorded = recorded_lock.map_or_else(|| sha256(&lock), str::to_string);
    std::fs::write(
        dir.path().join("benches/pgo/cargo-lock.sha256"),
        format!("{recorded}\n"),
    )
    .expect("write");
    dir
}
/// Runs `check_release_profile` on `build_output` in `root`, after a build
/// with the profile; returns whether it passed and what it said.
fn check_profile(root: &Path, build_output: &str, env: &[(&str, &str)]) -> (bool, String) {
    let log = root.join("build.log");
    std::fs::write(&log, build_output).expect("write log");
    let mut cmd = Command::new("bash");
    cmd.current_dir(root)
        .args([
            "-c",
            "set -euo pipefail; . scripts/lib.sh; check_release_profile \"$1\"",
            "check",
        ])
        .arg(&log)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cprofile-use=/p/switchyard.profdata",
        )
        .env_remove("ALLOW_STALE_PROFILE")
        .env_remove("STALE_PROFILE_MIN_COUNT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// rustc's report of a function whose control flow changed since the
/// profile was recorded, as a release build prints it.
fn mismatch(symbol: &str, discarded: u64) -> String {
    format!(
        "warning: switchyard.2edc19710fb7c606-cgu.0: function control flow change detected \
         (hash mismatch) {symbol} Hash = 1639276954279222 up to {discarded} count discarded\n\n"
    )
}

#[test]
fn a_profile_older_than_the_request_path_fails_the_benchmark_build() {
    let dir = checkout_for_check(None);
    let hot = "_ZN12pingora_core9protocols4http2v16client11HttpSession22read_resp_header_parts17hb70870cd60eb28b9E";
    let cold = "_ZN16switchyard_config5parse4load17h0123456789abcdefE";

    // A fitting profile: nothing to say.
    let (ok, said) = check_profile(dir.path(), "   Compiling switchyard\n", &[]);
    assert!(ok, "{said}");
    assert_eq!(said.trim(), "");

    // A function the workload ran 30 million times lost its counts: the
    // check fails and names it.
    let output = format!("{}{}", mismatch(hot, 30_009_338), mismatch(cold, 12));
    let (ok, said) = check_profile(dir.path(), &output, &[]);
    assert!(!ok, "a stale profile passed: {said}");
    assert!(said.contains(&format!("    30009338 {hot}")), "{said}");
    assert!(!said.contains(cold), "{said}");
    assert!(
        said.contains(
            "1 function(s) changed since the profile was recorded, each run fewer than 10000 times"
        ),
        "{said}"
    );
    assert!(
        said.contains("record it again with benches/pgo.sh"),
        "{said}"
    );

    // Asked to, it reports and goes on.
    let (ok, said) = check_profile(dir.path(), &output, &[("ALLOW_STALE_PROFILE", "1")]);
    assert!(ok, "{said}");
    assert!(said.contains("going on with the stale profile"), "{said}");

    // Only start-up functions changed: reported, not failed.
    let (ok, said) = check_profile(dir.path(), &mismatch(cold, 12), &[]);
    assert!(ok, "{said}");
    assert!(said.contains("1 function(s) changed"), "{said}");

    // The threshold is a setting.
    let (ok, said) = check_profile(
        dir.path(),
        &mismatch(cold, 12),
        &[("STALE_PROFILE_MIN_COUNT", "10")],
    );
    assert!(!ok, "{said}");
    assert!(said.contains(&format!("    12 {cold}")), "{said}");

    // Without the profile in the flags there is nothing to check.
    let log = dir.path().join("build.log");
    let out = Command::new("bash")
        .current_dir(dir.path())
        .args([
            "-c",
            "set -euo pipefail; . scripts/lib.sh; check_release_profile \"$1\"",
            "check",
        ])
        .arg(&log)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("bash");
    assert!(out.status.success());
}

#[test]
fn a_profile_recorded_with_other_dependencies_fails_the_benchmark_build() {
    // Registry crates are compiled with their warnings capped, so their
    // changed functions are not reported: a changed Cargo.lock stands for
    // them.
    let dir = checkout_for_check(Some(&"0".repeat(64)));
    let (ok, said) = check_profile(dir.path(), "", &[]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("Cargo.lock changed since benches/pgo/switchyard.profdata was recorded"),
        "{said}"
    );
    // A profile recorded before its lock was noted: said, not failed.
    std::fs::remove_file(dir.path().join("benches/pgo/cargo-lock.sha256")).expect("rm");
    let (ok, said) = check_profile(dir.path(), "", &[]);
    assert!(ok, "{said}");
    assert!(
        said.contains("the profile's dependencies are unknown"),
        "{said}"
    );
}

#[test]
fn the_recorded_profile_was_recorded_with_this_cargo_lock() {
    let root = repo_root();
    let recorded = std::fs::read_to_string(root.join("benches/pgo/cargo-lock.sha256"))
        .expect("benches/pgo/cargo-lock.sha256");
    assert_eq!(
        recorded.trim(),
        sha256(&root.join("Cargo.lock")),
        "Cargo.lock changed since the profile was recorded: record it again with benches/pgo.sh"
    );
}

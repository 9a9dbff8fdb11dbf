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

#[test]
fn a_profile_from_another_llvm_is_left_out() {
    // A checkout whose profile another LLVM recorded: the build goes on
    // without it, and says so.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("scripts")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("benches/pgo")).expect("mkdir");
    std::fs::copy(
        repo_root().join("scripts/lib.sh"),
        dir.path().join("scripts/lib.sh"),
    )
    .expect("copy lib.sh");
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

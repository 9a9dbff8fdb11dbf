//! The load comparison's report (`benches/compare.py`): the round-by-round
//! table that says in how many rounds a target held.

use crate::harness::repo_root;
use std::process::Command;

/// What `script` prints, run with `benches/compare.py` importable as
/// `compare` and `args` as its `sys.argv[1..]`.
fn run_compare_py(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .current_dir(repo_root())
        // No bytecode cache written into the checkout.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-c")
        .arg(format!(
            "import json, sys; sys.path.insert(0, 'benches'); import compare; {script}"
        ))
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows `paired` makes of `per_round` (JSON, as the harness keeps it).
fn paired_rows(per_round: &str) -> Vec<String> {
    run_compare_py(
        "print('\\n'.join(compare.paired(json.loads(sys.argv[1]))))",
        &[per_round],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn each_round_is_compared_with_its_own_runs_and_the_rounds_met_counted() {
    let rows = paired_rows(
        r#"{
            "switchyard": {"http1_small_rps_per_cpu_s": [100, 90, 120],
                           "latency_p99_us": [300, 200, 250]},
            "pingora-floor": {"http1_small_rps_per_cpu_s": [50, 50, 50],
                              "latency_p99_us": [100, 100, 100]},
            "nginx": {"http1_small_rps_per_cpu_s": [100, 100, 100],
                      "latency_p99_us": [250, 250, 250]}
        }"#,
    );
    // A rate is met at or above the peer's: the tie counts.
    assert!(
        rows.contains(
            &"| HTTP/1.1 keep-alive, small (req/s), per busy core | nginx | 1.00 0.90 1.20 | 1.00 | 2 of 3 |"
                .to_string()
        ),
        "{rows:#?}"
    );
    // A latency is met at or below the peer's.
    assert!(
        rows.contains(
            &"| Latency p99 at fixed rate (µs) | nginx | 1.20 0.80 1.00 | 1.00 | 2 of 3 |"
                .to_string()
        ),
        "{rows:#?}"
    );
    // The floor's target is "within 5%", not "at or above": no row.
    assert!(
        !rows.iter().any(|r| r.contains("pingora-floor")),
        "{rows:#?}"
    );
    // Measures a peer lacks a round of are left out, not misaligned.
    let rows = paired_rows(
        r#"{
            "switchyard": {"https_small_rps_per_cpu_s": [100, 90]},
            "haproxy": {"https_small_rps_per_cpu_s": [100]}
        }"#,
    );
    assert_eq!(rows.len(), 2, "only the header: {rows:#?}");
    // A peer with nothing measured (0 in every round) has no ratio to give.
    let rows = paired_rows(
        r#"{
            "switchyard": {"https_small_rps_per_cpu_s": [100, 90]},
            "haproxy": {"https_small_rps_per_cpu_s": [0, 0]}
        }"#,
    );
    assert_eq!(rows.len(), 2, "only the header: {rows:#?}");
}

#[test]
fn every_scenario_the_harness_defines_is_run_and_reported() {
    // The rounds run THROUGHPUT's names; a scenario missing from it would be
    // defined and never measured.
    let same = run_compare_py(
        "b = compare.Bench.__new__(compare.Bench); \
         print(list(b.scenarios(0, 0)) == compare.THROUGHPUT)",
        &[],
    );
    assert_eq!(same.trim(), "True");
}

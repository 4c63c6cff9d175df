//! The performance harness's smoke run (issue #8): on a small simulated
//! file, paicha's `symptom_counts` must equal DuckDB's computation of the
//! same table from the same file, and every stage of `examples/stages.rs`
//! must run. No timing is asserted: these machines are too noisy for that;
//! the figures come from `bench/harness.py` at full size (docs/benchmarks.md).
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common::external::{needs, Tool};
use std::process::Command;

#[test]
fn harness_smoke_tables_equal_duckdb() {
    if !needs("harness_smoke_tables_equal_duckdb", &[Tool::DuckDb]) {
        return;
    }
    let out = Command::new("python3")
        .args([
            "bench/harness.py",
            "--smoke",
            "--paicha",
            env!("CARGO_BIN_EXE_paicha"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tables equal: yes"), "{stdout}");
    for stage in [
        "route+pseudonymize",
        "decode+validate",
        "dedupe+windowing",
        "processors",
        "checkpoint (parquet)",
        "kafka consume",
    ] {
        assert!(stdout.contains(stage), "stage {stage} missing:\n{stdout}");
    }
    assert!(stdout.contains("smoke: ok"), "{stdout}");
}

//! User errors: one clear line on stderr, a non-zero exit, no backtrace.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common::*;

fn fails(args: &[&str]) -> String {
    let out = paicha().args(args).output().expect("run paicha");
    assert!(!out.status.success(), "paicha {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

#[test]
fn bad_flag() {
    let err = fails(&["run", "--no-such-flag"]);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn missing_replay_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let err = fails(&[
        "run",
        "--replay",
        "/nonexistent/events.jsonl",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(err.contains("/nonexistent/events.jsonl"), "{err}");
}

#[test]
fn data_directory_that_is_not_paichas() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let d = dir.path().to_str().unwrap();
    let err = fails(&["sql", "--data", d, "SELECT 1"]);
    assert!(err.contains("not a paicha data directory"), "{err}");
    let err = fails(&["run", "--replay", "/dev/null", "--data", d]);
    assert!(err.contains("not a paicha data directory"), "{err}");
}

/// A directory written when paicha placed districts with FNV-1a holds each
/// district's state in another partition's task than murmur2 gives: refused
/// with one line that says what to do, not resumed into split state.
#[test]
fn data_placed_by_the_earlier_partitioner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let file = dir.path().join("empty.jsonl");
    std::fs::write(&file, "").unwrap();
    let (f, d) = (file.to_str().unwrap(), data.to_str().unwrap());
    ok(&["run", "--replay", f, "--data", d]);
    let marker = data.join("_paicha/manifest.json");
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(text.contains(r#""partitioner":"murmur2""#), "{text}");
    std::fs::write(&marker, text.replace(r#","partitioner":"murmur2""#, "")).unwrap();
    let err = fails(&["run", "--replay", f, "--data", d]);
    assert!(
        err.contains("murmur2") && err.contains("new data directory"),
        "{err}"
    );
}

#[test]
fn sql_errors_and_refused_statements() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    ok(&[
        "run",
        "--replay",
        empty.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let d = data.to_str().unwrap();
    let err = fails(&["sql", "--data", d, "SELEKT 1"]);
    assert!(err.starts_with("error:"), "{err}");
    let err = fails(&["sql", "--data", d, "SELECT nope FROM symptom_counts"]);
    assert!(err.contains("nope"), "{err}");
    fails(&["sql", "--data", d, "DROP VIEW symptom_counts"]);
    fails(&["sql", "--data", d, "CREATE TABLE t AS SELECT 1"]);
    // An empty directory still answers with the tables' columns.
    let out = ok(&[
        "sql",
        "--data",
        d,
        "--format",
        "csv",
        "SELECT * FROM symptom_counts",
    ]);
    assert!(out.starts_with("window_start,window_end,district,district_name,source,events"));
}

#[test]
fn simulate_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    ok(&[
        "simulate",
        "--out",
        a.to_str().unwrap(),
        "--days",
        "1",
        "--seed",
        "5",
    ]);
    ok(&[
        "simulate",
        "--out",
        b.to_str().unwrap(),
        "--days",
        "1",
        "--seed",
        "5",
    ]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let err = fails(&["simulate", "--out", a.to_str().unwrap(), "--scale=-1"]);
    assert!(err.contains("scale"), "{err}");
}

#[test]
fn settings_from_a_config_file_lose_to_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-config");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let config = dir.path().join("paicha.toml");
    std::fs::write(
        &config,
        format!("data = {:?}\nwindow = \"30m\"\n", data.to_str().unwrap()),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    ok(&["run", "--config", c, "--replay", empty.to_str().unwrap()]);
    let manifest = std::fs::read_to_string(data.join("_paicha/manifest.json")).unwrap();
    assert!(
        manifest.contains(r#""window_micros":1800000000"#),
        "{manifest}"
    );
    let out = ok(&[
        "sql",
        "--config",
        c,
        "--format",
        "csv",
        "SELECT COUNT(*) AS n FROM districts",
    ]);
    assert_eq!(out, "n\n38\n");
    // A flag wins over the file: another window for the same directory is refused.
    let err = fails(&[
        "run",
        "--config",
        c,
        "--window",
        "1h",
        "--replay",
        empty.to_str().unwrap(),
    ]);
    assert!(err.contains("windows"), "{err}");
    std::fs::write(&config, "data = [1, 2]\n").unwrap();
    let err = fails(&["sql", "--config", c, "SELECT 1"]);
    assert!(err.contains("paicha.toml"), "{err}");
    // A misspelled key is an error naming the key meant, not a default
    // silently kept; one line, whichever command reads the file.
    std::fs::write(&config, "windw = \"30m\"\n").unwrap();
    let err = fails(&["sql", "--config", c, "SELECT 1"]);
    assert!(
        err.contains("unknown key `windw`; did you mean `window`?")
            && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// The binary allocates with jemalloc, set to hand freed pages back within
/// a second (docs/benchmarks.md, issue #17's third pass).
#[test]
fn the_allocator_returns_freed_memory_within_a_second() {
    let out = paicha()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run paicha");
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(
        stats.contains("opt.dirty_decay_ms: 1000") && stats.contains("opt.muzzy_decay_ms: 0"),
        "jemalloc's options are not paicha's: {}",
        stats
            .lines()
            .filter(|l| l.contains("decay"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

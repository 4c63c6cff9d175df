//! `kill -9` at a random moment of a replay, then the same command again to
//! completion, as a user would after a crash: the tables equal the fold.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn replay_killed_and_rerun_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    ok(&[
        "simulate",
        "--out",
        file.to_str().unwrap(),
        "--days",
        "2",
        "--seed",
        "3",
    ]);
    let want = fold_symptom_counts(&file);
    let total: i64 = want.values().map(|c| c[0]).sum();
    let mut partial = 0;
    // Kill points spread over the run, which the slowed sink stretches to
    // several seconds with many checkpoints.
    for (i, kill_after_ms) in [150u64, 700, 1300, 2100, 3000].into_iter().enumerate() {
        let data = dir.path().join(format!("data-{i}"));
        let args = [
            "run",
            "--replay",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--checkpoint-interval",
            "100ms",
            "--slow-sink-ms",
            "2",
        ];
        let mut child = paicha().args(args).spawn().expect("start paicha");
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        // SIGKILL: no chance to flush or commit.
        child.kill().expect("kill -9");
        child.wait().unwrap();
        if data.join("_paicha/manifest.json").exists() {
            let before = sql_rows(&data, "SELECT COALESCE(SUM(events), 0) FROM symptom_counts");
            let n: i64 = before[0][0].parse().unwrap();
            if n > 0 && n < total {
                partial += 1;
            }
        }
        let out = ok(&args);
        assert!(out.contains("replayed"), "{out}");
        assert_same_counts(&query_symptom_counts(&data), &want);
        let letters = sql_rows(
            &data,
            "SELECT COUNT(*), COUNT(DISTINCT topic || offset || '/' || line) FROM dead_letters",
        );
        assert_eq!(letters[0][0], letters[0][1], "no dead letter twice");
    }
    assert!(partial >= 2, "only {partial} kills landed mid-replay");
}

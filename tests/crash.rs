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
    let confirmations = fold_confirmations(&file);
    let beds = fold_bed_occupancy(&file);
    let raw = fold_raw_counts(&file);
    assert!(
        beds.len() > 100 && raw.len() == 5,
        "the scenario is not trivial"
    );
    let total: i64 = want.values().map(|c| c[0]).sum();
    let mut partial = 0;
    // Kill points spread over the run, which the slowed sink stretches to
    // several seconds with many checkpoints: after the Nth committed
    // checkpoint plus a few milliseconds, so a kill can land anywhere in the
    // write-and-commit cycle whatever the machine's speed.
    for (i, (after_checkpoint, extra_ms)) in [(1u64, 0u64), (3, 37), (6, 71), (10, 13), (15, 90)]
        .into_iter()
        .enumerate()
    {
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
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
            // The most advanced partition task's committed checkpoint.
            let seq = (0..4)
                .filter_map(|p| {
                    let m = data.join(format!("partition={p}/_paicha/manifest.json"));
                    let t = std::fs::read_to_string(m).ok()?;
                    serde_json::from_str::<serde_json::Value>(&t).ok()?["checkpoint"].as_u64()
                })
                .max()
                .unwrap_or(0);
            if seq >= after_checkpoint {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
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
        assert_eq!(query_confirmations(&data), confirmations);
        assert_eq!(query_bed_occupancy(&data), beds);
        assert_eq!(query_raw_counts(&data), raw);
        let letters = sql_rows(
            &data,
            "SELECT COUNT(*), COUNT(DISTINCT topic || offset || '/' || line) FROM dead_letters",
        );
        assert_eq!(letters[0][0], letters[0][1], "no dead letter twice");
    }
    assert!(partial >= 3, "only {partial} kills landed mid-replay");
}

//! `kill -9` at a random moment of a replay, then the same command again to
//! completion, as a user would after a crash: the tables equal the fold.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;

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

/// A message that crashes processing (here by the hidden `--crash-on`,
/// since no known input does any more) stops the pipeline twice and is then
/// dead-lettered as `poison`, so the third start recovers without a person;
/// everything else counts exactly once. Both kinds of crash: while handling
/// the message, and at the checkpoint after it (pinned to it by processing
/// the suspects alone).
#[test]
fn a_message_that_crashes_twice_is_dead_lettered_as_poison() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, Producer};

    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 1, 5, &["--scale", "0.05"]);
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (victim_at, victim) = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(r#""source":"checkpoint""#))
        .nth(200)
        .map(|(i, l)| (i, serde_json::from_str::<serde_json::Value>(l).unwrap()))
        .unwrap();
    let victim_id = victim["event_id"].as_str().unwrap().to_string();
    let rest = dir.path().join("rest.jsonl");
    let mut kept = lines.clone();
    kept.remove(victim_at);
    std::fs::write(&rest, kept.join("\n") + "\n").unwrap();

    for spec in [victim_id.clone(), format!("checkpoint:{victim_id}")] {
        let cluster = MockCluster::new(1).unwrap();
        for t in TOPICS {
            cluster.create_topic(t, 2, 1).unwrap();
        }
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic = format!("screening.{}", v["source"].as_str().unwrap());
            send_keyed(&producer, &topic, v["district"].as_str().unwrap(), line);
        }
        producer.flush(Duration::from_secs(30)).unwrap();

        let data = dir.path().join(spec.replace(':', "-"));
        let data = data.to_str().unwrap();
        let args = [
            "run",
            "--brokers",
            &brokers,
            "--data",
            data,
            "--checkpoint-interval",
            "200ms",
            "--idle-after",
            "1s",
            "--crash-on",
            &spec,
        ];
        for next in ["processes it alone", "dead-letters it as poison"] {
            let mut child = paicha()
                .args(args)
                .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stopped = None;
            wait_for(
                "paicha stops on the crash",
                Duration::from_secs(300),
                || {
                    stopped = child.try_wait().unwrap();
                    stopped.is_some()
                },
            );
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!stopped.unwrap().success(), "{spec}: {err}");
            let last = err.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("error: processing crashed at") && last.contains(next),
                "{spec}: the error should say the next start {next}: {err}"
            );
            assert!(!err.contains("RUST_BACKTRACE"), "{spec}: {err}");
        }
        let mut run = serving(&args);
        caught_up(&brokers, &run.http, Duration::from_secs(300));
        sigterm(&mut run.child);
        drop(run);
        let data = std::path::Path::new(data);
        assert_tables_exact(data, &rest);
        let poison = sql_rows(
            data,
            "SELECT topic, reason FROM dead_letters WHERE reason = 'poison'",
        );
        assert_eq!(
            poison,
            vec![vec!["screening.checkpoint".to_string(), "poison".into()]],
            "{spec}"
        );
        // Once a checkpoint on disk is past them, the crashes are forgotten.
        let crashes = std::fs::read_to_string(data.join("_paicha/crashes.json")).unwrap();
        assert_eq!(crashes.trim(), "[]", "{spec}");
    }
}

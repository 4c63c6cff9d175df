//! Scale-out: several `paicha run --brokers` processes in one consumer
//! group against one broker (a librdkafka mock cluster owned by this test
//! process), sharing one data directory. The input arrives in three parts;
//! one instance is killed with SIGKILL while it consumes the second, and the
//! other takes its partitions over from their last checkpoints and consumes
//! the third. Once it has caught up, every table equals that of one instance
//! that consumed the same topics alone, and the counting tables equal
//! independent folds over the input. Every step waits for a state the
//! system guarantees, never for a time.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use rdkafka::mocking::MockCluster;

/// A `paicha run` in consumer group `group`, with its HTTP address.
struct Instance {
    child: Reaped,
    http: String,
}

fn start(brokers: &str, group: &str, data: &Path, storage: Option<&str>, slow_ms: u32) -> Instance {
    let mut cmd = paicha();
    cmd.args(["run", "--brokers", brokers, "--group", group]);
    if let Some(url) = storage {
        cmd.args(["--storage", url]);
    }
    let mut child = cmd
        .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
        .args(["--checkpoint-interval", "300ms", "--session-timeout", "3s"])
        .args(["--idle-after", "2s", "--slow-sink-ms", &slow_ms.to_string()])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start paicha");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let http = loop {
        let line = lines.next().expect("paicha said where it serves").unwrap();
        if let Some(rest) = line.split("SQL at http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Instance {
        child: Reaped(child),
        http,
    }
}

/// The value of an unlabeled metric of an instance, 0 if absent.
fn metric(http: &str, name: &str) -> f64 {
    let Ok(resp) = ureq::get(&format!("http://{http}/metrics")).call() else {
        return 0.0;
    };
    resp.into_string()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Events in the five raw tables, as an instance's SQL sees them.
fn raw_total(http: &str) -> i64 {
    let sql =
        "SELECT (SELECT COUNT(*) FROM checkpoint_events) + (SELECT COUNT(*) FROM pharmacy_events) \
               + (SELECT COUNT(*) FROM door_visits) + (SELECT COUNT(*) FROM case_events) \
               + (SELECT COUNT(*) FROM bed_events) AS n";
    http_count(http, sql).unwrap_or(-1)
}

/// The allowed lateness these runs use (`--lateness`, default 1 h), µs.
const LATENESS: i64 = 3_600_000_000;

/// Whether the partition task committed in `task` stands at its final
/// clock: every partition of it idle, so its watermark is its highest
/// event time minus the lateness (and the follow-up clock moved with it at
/// the same checkpoint). Only then are its windows as final as a lone
/// instance's will be.
fn settled(task: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(task.join("_paicha/manifest.json")) else {
        return false;
    };
    let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let high = m["offsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["max_event_time"].as_i64())
        .max();
    matches!((high, m["watermark"].as_i64()), (Some(h), Some(w)) if w == h - LATENESS)
}

/// Waits until `instance` has every event and has committed every task
/// (under `root`, where its manifests are) at its final clock, then stops
/// it as an operator does.
fn finish(instance: &mut Instance, root: &Path, total: i64) {
    wait_for(
        "the survivor has every event",
        Duration::from_secs(120),
        || raw_total(&instance.http) == total,
    );
    wait_for(
        "every partition task has committed its final clock",
        Duration::from_secs(120),
        || (0..4).all(|p| settled(&root.join(format!("partition={p}")))),
    );
    sigterm(&mut instance.child.0);
}

/// Every table, row for row, as CSV: the columns that do not depend on
/// when a process happened to run. Not `alerts`: an alert is raised when the
/// clock passes a due time, and in live mode the clock may pass it before a
/// lagging partition delivers the visit that was due (the idle rule), so
/// which alerts were ever raised depends on arrival order, in one process
/// as in two (docs/semantics.md).
fn tables(place: &Place) -> Vec<(String, Vec<Vec<String>>)> {
    [
        ("symptom_counts", "SELECT * FROM symptom_counts ORDER BY 1, 2, 3"),
        ("confirmations", "SELECT * FROM confirmations ORDER BY 1, 2"),
        ("bed_occupancy", "SELECT * FROM bed_occupancy ORDER BY 1, 2"),
        ("bed_occupancy_now", "SELECT * FROM bed_occupancy_now ORDER BY 1"),
        ("follow_ups", "SELECT * FROM follow_ups ORDER BY person_key, started_at"),
        ("aberrations", "SELECT * FROM aberrations ORDER BY 1, 2, 3, 4"),
        ("checkpoint_events", "SELECT * FROM checkpoint_events ORDER BY event_id"),
        ("pharmacy_events", "SELECT * FROM pharmacy_events ORDER BY event_id"),
        ("door_visits", "SELECT * FROM door_visits ORDER BY event_id"),
        ("case_events", "SELECT * FROM case_events ORDER BY event_id"),
        ("bed_events", "SELECT * FROM bed_events ORDER BY event_id"),
        (
            "dead_letters",
            "SELECT topic, \"partition\", \"offset\", reason, field FROM dead_letters ORDER BY 1, 2, 3",
        ),
    ]
    .into_iter()
    .map(|(name, sql)| {
        let mut rows = place.rows(sql);
        rows.sort();
        (name.to_string(), rows)
    })
    .collect()
}

/// Where a run's tables are: a data directory, or shared storage.
enum Place<'a> {
    Dir(&'a Path),
    Storage(&'a str),
}

impl Place<'_> {
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            Place::Dir(d) => sql_rows(d, sql),
            Place::Storage(url) => {
                let out = ok(&["sql", "--storage", url, "--format", "csv", sql]);
                out.lines()
                    .skip(1)
                    .map(|l| l.split(',').map(str::to_string).collect())
                    .collect()
            }
        }
    }
}

#[test]
fn two_instances_share_the_partitions_and_one_takes_over_when_the_other_dies() {
    scale_out(false);
}

/// The same with the partitions committed to an object store (the `file://`
/// backend of `object_store`): the instances share no directory, a task
/// moves by way of the store, and `paicha sql --storage` reads it all.
#[test]
fn the_same_over_an_object_store() {
    scale_out(true);
}

fn scale_out(object_store: bool) {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 10, 9, &["--scale", "0.05"]);
    // The mock cluster keeps only the newest 5 MiB of a partition: the
    // input must fit whole, since three groups read it after it is written.
    assert!(std::fs::metadata(&file).unwrap().len() < 4 * (4 << 20));

    // The input in three parts, produced one after another while the
    // instances run, so that each step waits for a state rather than a time.
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let cuts = [0, lines.len() * 2 / 5, lines.len() * 7 / 10, lines.len()];
    let parts: Vec<_> = (0..3)
        .map(|i| {
            let part = dir.path().join(format!("part-{i}.jsonl"));
            std::fs::write(&part, lines[cuts[i]..cuts[i + 1]].join("\n") + "\n").unwrap();
            part
        })
        .collect();
    let total: i64 = fold_raw_counts(&file).values().sum::<usize>() as i64;
    assert!(total > 10_000, "the scenario is not trivial: {total}");
    let first: i64 = fold_raw_counts(&parts[0]).values().sum::<usize>() as i64;

    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 4, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    // A replay writes a part into the topics (and checks them itself, as
    // one process that takes every partition, resuming where the previous
    // part ended).
    let replayed = dir.path().join("replayed");
    let produce = |part: &Path| {
        ok(&[
            "run",
            "--brokers",
            &brokers,
            "--group",
            "replay",
            "--replay",
            part.to_str().unwrap(),
            "--data",
            replayed.to_str().unwrap(),
        ]);
    };

    // Two instances in one group, over one shared directory or one object
    // store, slowed so that the second part takes a while to consume.
    let shared = dir.path().join("shared");
    let store_dir = dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    let (storage, data_a, data_b, root) = if object_store {
        (
            Some(store.as_str()),
            dir.path().join("a"),
            dir.path().join("b"),
            store_dir.clone(),
        )
    } else {
        (None, shared.clone(), shared.clone(), shared.clone())
    };
    let mut a = start(&brokers, "scale", &data_a, storage, 3);
    let mut b = start(&brokers, "scale", &data_b, storage, 3);
    wait_for(
        "both instances run partition tasks",
        Duration::from_secs(60),
        || {
            let (na, nb) = (
                metric(&a.http, "paicha_partition_tasks"),
                metric(&b.http, "paicha_partition_tasks"),
            );
            na >= 1.0 && nb >= 1.0 && na + nb == 4.0
        },
    );

    // Both consume the first part, and each one's SQL sees the other's
    // committed rows: B shows every event of the part, though it accepted
    // only those of its own partitions.
    produce(&parts[0]);
    wait_for(
        "both instances' SQL shows every event of the first part",
        Duration::from_secs(120),
        || raw_total(&a.http) == first && raw_total(&b.http) == first,
    );
    let (accepted_a, accepted_b) = (
        metric(&a.http, "paicha_events_accepted_total") as i64,
        metric(&b.http, "paicha_events_accepted_total") as i64,
    );
    assert!(
        accepted_a > 0 && accepted_b > 0 && accepted_b < first,
        "both consume, and B's SQL sees A's committed rows ({accepted_a} and {accepted_b} of {first})"
    );

    // A is killed with SIGKILL while it consumes the second part; the third
    // is produced after its death, so the survivor has work left on A's
    // partitions whatever the speed of the machine.
    produce(&parts[1]);
    wait_for(
        "A consumes the second part",
        Duration::from_secs(120),
        || metric(&a.http, "paicha_events_accepted_total") as i64 > accepted_a,
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    produce(&parts[2]);

    wait_for(
        "the survivor runs every partition",
        Duration::from_secs(60),
        || metric(&b.http, "paicha_partition_tasks") == 4.0,
    );
    finish(&mut b, &root, total);

    // One instance alone, in its own group, over the same topics.
    let single = dir.path().join("single");
    let mut c = start(&brokers, "single", &single, None, 0);
    finish(&mut c, &single, total);

    assert_tables_exact(&replayed, &file);
    let two = if object_store {
        tables(&Place::Storage(&store))
    } else {
        assert_tables_exact(&shared, &file);
        tables(&Place::Dir(&shared))
    };
    let one = tables(&Place::Dir(&single));
    for ((name, rows), (_, expected)) in two.iter().zip(&one) {
        assert!(
            !expected.is_empty(),
            "{name} is empty: the comparison would prove nothing"
        );
        let differ: Vec<_> = rows
            .iter()
            .zip(expected.iter())
            .filter(|(a, b)| a != b)
            .take(3)
            .collect();
        assert!(
            rows.len() == expected.len() && differ.is_empty(),
            "{name}: two instances differ from one ({} rows against {}); first differences: {differ:?}",
            rows.len(),
            expected.len()
        );
    }
    // Each partition's files sit in its own directory.
    for p in 0..4 {
        assert!(root
            .join(format!("partition={p}/_paicha/manifest.json"))
            .is_file());
    }
}

/// Topics whose partition counts differ cannot be processed partition by
/// partition: refused with one line naming them.
#[test]
fn topics_with_different_partition_counts_are_refused() {
    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        let n = if t == "screening.dead_letter" { 1 } else { 3 };
        cluster.create_topic(t, n, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = paicha()
        .args(["run", "--brokers", &cluster.bootstrap_servers()])
        .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("screening.dead_letter has 1 partitions but screening.checkpoint has 3"),
        "{err}"
    );
}

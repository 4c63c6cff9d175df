//! Exactly once in live mode: `paicha run --brokers` against a broker that
//! keeps its data (a librdkafka mock cluster owned by this test process, so
//! it outlives every `paicha` process), killed with SIGKILL at several
//! moments and started again as an operator would; once it has caught up
//! and stopped, every table equals an independent fold over the input.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const SOURCES: [&str; 5] = ["checkpoint", "pharmacy", "door_visit", "case", "bed"];

/// Starts `paicha run --brokers` and returns it with its HTTP address.
fn start(brokers: &str, data: &std::path::Path) -> (Child, String) {
    let mut child = paicha()
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0"])
        .args(["--pg", "127.0.0.1:0"])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paicha");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("paicha said where it serves").unwrap();
        if let Some(rest) = line.split("SQL at http://").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn live_mode_killed_and_restarted_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    ok(&[
        "simulate",
        "--out",
        file.to_str().unwrap(),
        "--days",
        "1",
        "--seed",
        "5",
    ]);

    let cluster = MockCluster::new(1).unwrap();
    for s in SOURCES {
        cluster
            .create_topic(&format!("screening.{s}"), 2, 1)
            .unwrap();
    }
    cluster.create_topic("screening.dead_letter", 2, 1).unwrap();
    cluster.create_topic("screening.repartition", 2, 1).unwrap();
    cluster.create_topic("screening.alerts", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();

    // A field system writes one event per message, on the topic its source
    // names (a line naming no known source goes to the checkpoint topic,
    // where paicha must refuse it).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let source = v["source"]
            .as_str()
            .filter(|s| SOURCES.contains(s))
            .unwrap_or("checkpoint");
        let topic = format!("screening.{source}");
        let key = v["district"].as_str().unwrap_or("000000").to_string();
        loop {
            match producer.send(BaseRecord::to(&topic).key(&key).payload(line)) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        *sent.entry(topic).or_default() += 1;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(
        sent.values().sum::<i64>() > 10_000,
        "the scenario is not trivial"
    );

    // Killed at five moments, each run resuming from the last commit.
    let total = fold_raw_counts(&file).values().sum::<usize>();
    let mut partial = 0;
    let messages: i64 = sent.values().sum();
    for (share, extra_ms) in [(0.1, 0u64), (0.25, 150), (0.4, 400), (0.55, 50), (0.7, 900)] {
        let (mut child, addr) = start(&brokers, &data);
        // Kill once the run has committed past a share of the input (the
        // positions are published at each checkpoint), plus a little, so
        // every kill lands mid-stream on a fast or a slow machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        while positions(&addr).values().sum::<i64>() < (messages as f64 * share) as i64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().expect("kill -9");
        child.wait().unwrap();
        let committed: usize = ["checkpoint_events", "pharmacy_events", "door_visits"]
            .iter()
            .map(|t| {
                sql_rows(&data, &format!("SELECT COUNT(*) FROM {t}"))[0][0]
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        if committed > 0 && committed < total {
            partial += 1;
        }
    }
    assert!(partial >= 2, "only {partial} kills landed mid-stream");

    // The last run catches up, then stops cleanly (SIGTERM).
    // The producer's partitioner is librdkafka's default (CRC32), not
    // murmur2: most events are forwarded to their district's partition too.
    let (mut child, addr) = start(&brokers, &data);
    caught_up(&brokers, &addr, Duration::from_secs(120));
    sigterm(&mut child);
    assert_tables_exact(&data, &file);
    let letters = sql_rows(
        &data,
        "SELECT COUNT(*), COUNT(DISTINCT topic || offset || '/' || line) FROM dead_letters",
    );
    assert_eq!(letters[0][0], letters[0][1], "no dead letter twice");
}

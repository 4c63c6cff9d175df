//! `paicha run --brokers` against a cluster it did not start: here a
//! librdkafka mock cluster owned by the test process, reached over loopback
//! by the `paicha` process like any broker.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common::external::{needs, Tool};
use std::time::Duration;

use crate::common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[test]
fn a_message_on_the_wrong_topic_is_a_dead_letter_and_the_rest_counts() {
    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 2, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();

    // A field system writes straight to Kafka: one checkpoint event on the
    // pharmacy topic, and a batch of two good pharmacy events plus a bad line.
    let checkpoint = r#"{"event_id":"cp-x","event_time":"2020-01-27T09:15:00+08:00","source":"checkpoint","district":"500103","checkpoint_id":"c","person_id":"p1","temperature_c":36.6,"mask":true,"symptoms":[],"disposition":"pass"}"#;
    let pharmacy = |id: &str, drug: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2020-01-27T09:20:00+08:00","source":"pharmacy","district":"500103","pharmacy_id":"ph-1","person_id":"p2","drug_class":"{drug}","quantity":1,"temperature_c":null}}"#
        )
    };
    let batch = format!(
        "{}\n{}\n{{\"event_id\":\"bad\"}}",
        pharmacy("ph-a", "cough"),
        pharmacy("ph-b", "antibiotic")
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for payload in [checkpoint.to_string(), batch] {
        producer
            .send(
                BaseRecord::to("screening.pharmacy")
                    .key("500103")
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // Then a replay through the same cluster: all of it is consumed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("more.jsonl");
    std::fs::write(&file, format!("{}\n", pharmacy("ph-c", "antipyretic"))).unwrap();
    let data = dir.path().join("data");
    let out = ok(&[
        "run",
        "--brokers",
        &brokers,
        "--replay",
        file.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(out.contains("3 events counted"), "{out}");

    let counts = query_symptom_counts(&data);
    let rows: Vec<_> = counts.iter().collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0 .2, "pharmacy");
    assert_eq!(rows[0].1[..2], [3, 2], "events, suspicious");

    let reasons = sql_rows(
        &data,
        "SELECT reason, topic, line FROM dead_letters ORDER BY reason",
    );
    assert_eq!(
        reasons,
        vec![
            vec![
                "missing_field".to_string(),
                "screening.pharmacy".into(),
                "2".into()
            ],
            vec![
                "source_mismatch".to_string(),
                "screening.pharmacy".into(),
                "0".into()
            ],
        ]
    );

    // Without a key, --brokers refuses to start.
    let out = paicha()
        .env_remove("PAICHA_HMAC_KEY")
        .args([
            "run",
            "--brokers",
            &brokers,
            "--data",
            data.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--pg",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PAICHA_HMAC_KEY"), "{err}");
}

/// kafka-python (a Kafka client not built on librdkafka), with its default
/// partitioner, as a field system sending door visits.
const KAFKA_PYTHON_PRODUCER: &str = r#"
import json, sys
from kafka import KafkaProducer
brokers, path = sys.argv[1], sys.argv[2]
p = KafkaProducer(bootstrap_servers=brokers)
parts = {}
with open(path, "rb") as f:
    for line in f:
        district = json.loads(line)["district"].encode()
        r = p.send("screening.door_visit", key=district, value=line.rstrip(b"\n")).get(timeout=30)
        parts.setdefault(district.decode(), set()).add(r.partition)
p.flush()
for d, ps in sorted(parts.items()):
    print(d, *sorted(ps))
"#;

/// Replays `file` alone, through paicha's own producer and the embedded
/// cluster, into `DIR/alone`: what the other paths must equal.
fn replay_alone(dir: &std::path::Path, file: &std::path::Path) -> std::path::PathBuf {
    let alone = dir.join("alone");
    ok(&[
        "run",
        "--replay",
        file.to_str().unwrap(),
        "--data",
        alone.to_str().unwrap(),
    ]);
    alone
}

/// Produces the door visits of `file` with kafka-python; returns what it
/// printed: each district and the partitions its visits went to.
fn kafka_python_produce(brokers: &str, file: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", KAFKA_PYTHON_PRODUCER, brokers])
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kafka-python failed (pip install 'kafka-python==2.2.15'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Issue #16, case 1: one field system writes door visits with kafka-python
/// and its default partitioner, keyed by district as the contract asks;
/// paicha's replay writes the rest. Both place a district on the same
/// partition (Kafka's murmur2), so each district's visits meet its cases in
/// one task: the tables equal those of paicha producing everything.
#[test]
fn a_kafka_python_producer_keyed_by_district_agrees_with_paicha() {
    if !needs(
        "a_kafka_python_producer_keyed_by_district_agrees_with_paicha",
        &[Tool::KafkaPython],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 10, 16, &["--scale", "0.05"]);
    let text = std::fs::read_to_string(&file).unwrap();
    // Door visits the field system can key; every other line (malformed
    // ones too) goes through paicha's replay.
    let (visits, rest): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["source"] == "door_visit" && v["district"].as_str().is_some())
    });
    let visits_file = dir.path().join("visits.jsonl");
    let rest_file = dir.path().join("rest.jsonl");
    std::fs::write(&visits_file, visits.join("\n") + "\n").unwrap();
    std::fs::write(&rest_file, rest.join("\n") + "\n").unwrap();

    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 4, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let placed = kafka_python_produce(&brokers, &visits_file);
    // Each district on one partition, and the one murmur2 gives (500103:
    // partition 3 of 4, as in the unit test of `partition_for`).
    assert!(placed.lines().count() > 10, "{placed}");
    assert!(
        placed.lines().all(|l| l.split(' ').count() == 2),
        "{placed}"
    );
    assert!(placed.lines().any(|l| l == "500103 3"), "{placed}");

    let mixed = dir.path().join("mixed");
    let run = ok_output(&[
        "run",
        "--brokers",
        &brokers,
        "--replay",
        rest_file.to_str().unwrap(),
        "--data",
        mixed.to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        !log.contains("another partition than their district's"),
        "{log}"
    );
    let alone = replay_alone(dir.path(), &file);
    assert_tables_exact(&mixed, &file);
    let statuses = "SELECT status, COUNT(*) FROM follow_ups GROUP BY 1 ORDER BY 1";
    let want = sql_rows(&alone, statuses);
    assert!(
        want.iter().any(|r| r[0] == "confirmed"),
        "the scenario confirms persons under observation: {want:?}"
    );
    assert_eq!(sql_rows(&mixed, statuses), want);
    let episodes = "SELECT person_key, started_at, status FROM follow_ups ORDER BY 1, 2";
    assert_eq!(sql_rows(&mixed, episodes), sql_rows(&alone, episodes));
}

/// Issue #16, case 1 and path (e): two field systems with different
/// partitioners. Door visits come from kafka-python (murmur2, not
/// librdkafka); cases, checks, purchases and beds from a librdkafka producer
/// with its default `consistent_random` (CRC32 of the key), which puts most
/// districts on other partitions than murmur2. paicha forwards those events
/// to their district's task: every table equals that of paicha producing
/// everything, and one warning and the run summary say so.
#[test]
fn events_on_another_partition_than_their_districts_join_their_district() {
    if !needs(
        "events_on_another_partition_than_their_districts_join_their_district",
        &[Tool::KafkaPython],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 10, 16, &["--scale", "0.05"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut visits = Vec::new();
    let mut others = Vec::new();
    let mut rest = Vec::new();
    for line in text.lines() {
        let v = serde_json::from_str::<serde_json::Value>(line).ok();
        let keyed = v.as_ref().and_then(|v| {
            let source = v["source"].as_str()?;
            let district = v["district"].as_str()?;
            Some((source.to_string(), district.to_string()))
        });
        match keyed {
            Some((s, _)) if s == "door_visit" => visits.push(line),
            Some((s, d)) if ["checkpoint", "pharmacy", "case", "bed"].contains(&s.as_str()) => {
                others.push((s, d, line))
            }
            _ => rest.push(line),
        }
    }
    let visits_file = dir.path().join("visits.jsonl");
    let rest_file = dir.path().join("rest.jsonl");
    std::fs::write(&visits_file, visits.join("\n") + "\n").unwrap();
    std::fs::write(&rest_file, rest.join("\n") + "\n").unwrap();

    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 4, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    kafka_python_produce(&brokers, &visits_file);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "consistent_random")
        .create()
        .unwrap();
    for (source, district, line) in &others {
        send_keyed(&producer, &format!("screening.{source}"), district, line);
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let mixed = dir.path().join("mixed");
    let run = ok_output(&[
        "run",
        "--brokers",
        &brokers,
        "--replay",
        rest_file.to_str().unwrap(),
        "--data",
        mixed.to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        log.matches("another partition than their district's")
            .count(),
        1,
        "one warning: {log}"
    );
    let said = String::from_utf8_lossy(&run.stdout);
    let rerouted: u64 = said
        .split(" forwarded to their district's partition")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        rerouted > others.len() as u64 / 2,
        "most of {} events forwarded: {said}",
        others.len()
    );
    let alone = replay_alone(dir.path(), &file);
    assert_tables_exact(&mixed, &file);
    let want = all_tables(&alone);
    assert_none_empty(&want);
    assert_same_tables("two partitioners", &all_tables(&mixed), &want);
}

//! `paicha run --brokers` against a cluster it did not start: here a
//! librdkafka mock cluster owned by the test process, reached over loopback
//! by the `paicha` process like any broker.

mod common;

use std::time::Duration;

use common::*;
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

//! The pipeline as a library (`paicha-pipeline`): run in this process on the
//! embedded cluster, fed by the replay producer, it gives the tables the
//! `paicha` binary gives for the same file, and those of the independent
//! fold.

use std::fs::File;
use std::io::BufReader;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paicha_contract::event::{Decoder, Source};
use paicha_contract::pseudonym::Pseudonymizer;
use paicha_contract::registry::Registry;
use paicha_ingest::kafka::{self, BatchProducer, Batching, EmbeddedCluster, FlowControl};
use paicha_ingest::metrics::Metrics;
use paicha_pipeline::{high_watermarks, ConsumerConfig, Pipeline, ReplayEnd};
use paicha_processors::tasks::Tasks;
use paicha_processors::time::HOUR_MICROS;
use paicha_processors::Config;
use rdkafka::consumer::BaseConsumer;

use crate::common::*;

const KEY: &str = "the key of the library pipeline test";
const PARTITIONS: i32 = 4;

/// Replays `file` into `data` through the library, as `paicha run --replay`
/// does through the binary.
fn replay_in_process(file: &std::path::Path, data: &std::path::Path) {
    let cluster = EmbeddedCluster::start(1, PARTITIONS).unwrap();
    let brokers = cluster.bootstrap_servers();
    let registry = Arc::new(Registry::builtin().unwrap());
    let tasks = Tasks::open(Config::new(data.to_path_buf()), registry.clone()).unwrap();
    let flow = FlowControl::new(PARTITIONS as usize, 2 << 20);
    let end = Arc::new(ReplayEnd::default());
    let running = Pipeline {
        config: ConsumerConfig {
            brokers: brokers.clone(),
            group: "paicha-library-test".into(),
            embedded: true,
            subscribe: false,
            session_timeout: Duration::from_secs(10),
            instance: None,
            checkpoint_interval: Duration::from_secs(2),
            slow_sink: Duration::ZERO,
            live: None,
            ready: Arc::new(AtomicBool::new(false)),
            data: data.to_path_buf(),
            crash_on: None,
        },
        decoder: Decoder::new(registry, Pseudonymizer::new(KEY.as_bytes())),
        tasks: Arc::new(Mutex::new(tasks)),
        metrics: Metrics::new().unwrap(),
        flow: Some(flow.clone()),
        end: Some(end.clone()),
        shutdown: Arc::new(AtomicBool::new(false)),
    }
    .start()
    .unwrap();

    let batching = Batching {
        max_span_micros: HOUR_MICROS,
        ..Batching::default()
    };
    let mut producer = BatchProducer::new(&brokers, batching, Some(flow))
        .unwrap()
        .pseudonymizing(Pseudonymizer::new(KEY.as_bytes()));
    producer
        .produce_reader(
            BufReader::new(File::open(file).unwrap()),
            "file:events.jsonl",
        )
        .unwrap();
    producer.finish().unwrap();
    let probe: BaseConsumer = kafka::client_config(&brokers).create().unwrap();
    let mut ends = std::collections::BTreeMap::new();
    for s in Source::ALL {
        ends.extend(high_watermarks(&probe, s.topic(), PARTITIONS).unwrap());
    }
    *end.source_ends.lock().unwrap() = Some(ends);

    let summary = running.join().unwrap();
    assert!(summary.accepted > 0, "{summary:?}");
}

#[test]
fn the_pipeline_library_gives_the_binarys_tables_and_the_folds() {
    let dir = tempfile::tempdir().unwrap();
    // Ten days, for EARS a baseline; a tenth of the population, for speed.
    let file = simulate_with(dir.path(), 10, 23, &["--scale", "0.1"]);
    let library = dir.path().join("library");
    replay_in_process(&file, &library);
    assert_tables_exact(&library, &file);

    let binary = dir.path().join("binary");
    let out = paicha()
        .env("PAICHA_HMAC_KEY", KEY)
        .args(["run", "--replay", file.to_str().unwrap(), "--data"])
        .arg(&binary)
        .args(["--partitions", &PARTITIONS.to_string()])
        .output()
        .unwrap();
    assert_success(&out, &["run", "--replay"]);
    let tables = all_tables(&library);
    assert_none_empty(&tables);
    assert_same_tables("library vs binary", &tables, &all_tables(&binary));
}

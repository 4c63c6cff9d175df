//! Checkpoints written on the writer thread: while one is being written, the
//! live view still holds each of its rows exactly once (from memory until
//! the manifest listing its files is committed, from the files after).
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::Int64Array;
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Body, Disposition, Event, Source, Symptoms};
use paicha_contract::registry::Registry;
use paicha_processors::{Accepted, Config, LiveView, Processor};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR: i64 = 3_600_000_000;
/// 2020-01-25T00:00:00Z.
const START: i64 = 1_579_910_400_000_000;

fn event(i: i64) -> Event {
    Event {
        event_id: format!("cp-{i}"),
        // Ten events a simulated minute: windows close as the chunks go by.
        event_time: START + i * 6_000_000,
        district: (i % 3) as u16,
        body: Body::Checkpoint {
            checkpoint_id: "cp-a".into(),
            person_key: format!("{i:032x}"),
            vehicle_key: None,
            temperature_c: if i % 7 == 0 { 38.0 } else { 36.5 },
            mask: true,
            symptoms: Symptoms(0),
            came_from: None,
            disposition: Disposition::Pass,
        },
    }
}

fn events_column(b: &RecordBatch) -> i64 {
    b.column_by_name("events")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .expect("an Int64 events column")
        .iter()
        .flatten()
        .sum()
}

/// Rows of `table` in the files the view's manifest lists, and the sum of
/// their `events` column if it has one.
fn stored(root: &std::path::Path, view: &LiveView, table: &str) -> (i64, i64) {
    let (mut rows, mut events) = (0, 0);
    for rel in view.manifest.tables.get(table).into_iter().flatten() {
        let file = File::open(root.join(rel)).expect("a committed file exists");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .expect("a committed file reads");
        for b in reader {
            let b = b.expect("a batch reads");
            rows += b.num_rows() as i64;
            if b.column_by_name("events").is_some() {
                events += events_column(&b);
            }
        }
    }
    (rows, events)
}

#[test]
fn rows_being_written_stay_visible_exactly_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut cfg = Config::new(dir.path().to_path_buf());
    cfg.background_writes = true;
    let registry = Arc::new(Registry::builtin().expect("the built-in registry"));
    let mut p = Processor::open(cfg, registry).expect("opens");
    let topic = Source::Checkpoint.topic();
    let (mut counted, mut seen_in_flight) = (0i64, 0);
    for chunk in 0..40i64 {
        let mut max_time = i64::MIN;
        for i in chunk * 2000..(chunk + 1) * 2000 {
            let e = event(i);
            max_time = max_time.max(e.event_time);
            assert_eq!(p.event(&e, i64::MIN), Accepted::Counted);
            counted += 1;
        }
        let now = Instant::now();
        p.consumed(topic, 0, chunk, Some(max_time + 2 * HOUR), now);
        p.checkpoint(false, now).expect("checkpoint");
        if p.checkpoints_in_flight() > 0 {
            seen_in_flight += 1;
        }
        let view = p.live_view().expect("a live view");
        let (raw_stored, _) = stored(dir.path(), &view, "checkpoint_events");
        let raw_memory: i64 = view
            .rows("checkpoint_events")
            .iter()
            .map(|b| b.num_rows() as i64)
            .sum();
        assert_eq!(
            raw_stored + raw_memory,
            counted,
            "checkpoint_events after chunk {chunk}"
        );
        let (_, counts_stored) = stored(dir.path(), &view, "symptom_counts");
        let counts_memory: i64 = view.rows("symptom_counts").iter().map(events_column).sum();
        assert_eq!(
            counts_stored + counts_memory,
            counted,
            "symptom_counts events after chunk {chunk}"
        );
    }
    assert!(
        seen_in_flight > 0,
        "no checkpoint was ever in flight: the test did not exercise the writer thread"
    );
    p.settle_writes().expect("every write commits");
    assert_eq!(p.checkpoints_in_flight(), 0);
    let view = p.live_view().expect("a live view");
    let (raw_stored, _) = stored(dir.path(), &view, "checkpoint_events");
    assert_eq!(raw_stored, counted, "everything is on disk once settled");
}

//! Property tests: arbitrary contract-valid events, of every source, at the
//! extremes of time and value the contract allows (the earliest bound moved
//! back to 1900, so the epoch and dates before it occur), go through
//! processing, a checkpoint, a restore and SQL on every table without a
//! panic or an error, and every accepted event is in its raw table once.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::Int64Array;
use chrono::{FixedOffset, TimeZone};
use paicha_contract::event::{Decoder, Source, SYMPTOM_NAMES};
use paicha_contract::pseudonym::Pseudonymizer;
use paicha_contract::registry::Registry;
use paicha_processors::tasks::Tasks;
use paicha_processors::{Accepted, Config};
use proptest::prelude::*;

/// The receiving clock: 2026-12-01T00:00:00Z.
const NOW: i64 = 1_796_083_200_000_000;
/// The earliest bound configured for these tests: 1900-01-01T00:00:00Z.
const EARLIEST: i64 = -2_208_988_800_000_000;
/// The latest time the contract accepts: 5 minutes ahead.
const LATEST: i64 = NOW + 300_000_000;

fn registry() -> Arc<Registry> {
    Arc::new(Registry::builtin().expect("the built-in registry"))
}

/// An instant, with the bounds, the epoch and the turn of 2000 likely.
fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => Just(EARLIEST),
        1 => Just(LATEST),
        1 => Just(-1i64),
        1 => Just(0i64),
        1 => Just(946_684_799_999_999i64),
        1 => EARLIEST..=LATEST,
        // A busy fortnight of January 2020, so windows and episodes fill.
        14 => 1_579_478_400_000_000i64..1_580_688_000_000_000,
    ]
}

/// RFC 3339 in one of the offsets a field system might use.
fn rfc3339(t: i64, offset_hours: i32) -> String {
    let tz = FixedOffset::east_opt(offset_hours * 3600).expect("a valid offset");
    tz.timestamp_micros(t)
        .single()
        .expect("in chrono's range")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

fn one_of(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(items)
}

fn temperature() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("34.0".to_string()),
        Just("43.0".to_string()),
        (340u32..=430).prop_map(|t| format!("{}.{}", t / 10, t % 10)),
    ]
}

fn symptoms() -> impl Strategy<Value = String> {
    proptest::sample::subsequence(SYMPTOM_NAMES.to_vec(), 0..=SYMPTOM_NAMES.len())
        .prop_map(|s| serde_json::to_string(&s).expect("a list"))
}

/// An identifier: short, long (64), or any Unicode.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}",
        "[A-Za-z0-9]{64}",
        "\\PC{1,20}",
        Just("500101199001011234".to_string()),
    ]
}

/// One contract-valid event of any source, as a JSON line, and its source.
fn event() -> impl Strategy<Value = (Source, String)> {
    let reg = registry();
    let districts: Vec<String> = reg.districts().iter().map(|d| d.district.clone()).collect();
    let hospitals: Vec<(String, String)> = reg
        .hospitals()
        .iter()
        .map(|h| (h.hospital_id.clone(), h.district.clone()))
        .collect();
    let common = (
        0u32..200,
        instant(),
        proptest::sample::select(vec![-12, 0, 8, 14]),
        proptest::sample::select(districts),
        id(),
    );
    let body = (
        0usize..5,
        temperature(),
        symptoms(),
        proptest::sample::select(hospitals),
        (1i64..=i64::MAX, 0i64..=i64::MAX),
        (
            one_of(&["pass", "referred", "turned_back", "isolated"]),
            one_of(&["antipyretic", "cough", "antiviral", "antibiotic", "other"]),
            one_of(&["seen", "not_home", "refused"]),
            one_of(&[
                "none",
                "home_isolation",
                "centralized_observation",
                "medical_observation",
                "released",
            ]),
            one_of(&["suspected", "confirmed", "excluded", "recovered", "died"]),
            one_of(&["admit", "discharge", "capacity"]),
        ),
    );
    (common, body).prop_map(
        |(
            (n, t, offset, district, person),
            (kind, temp, symptoms, (hospital, hospital_district), (quantity, beds), choice),
        )| {
            let (disposition, drug, outcome, observation, status, action) = choice;
            let person = serde_json::to_string(&person).expect("a string");
            let time = rfc3339(t, offset);
            let source = Source::ALL[kind];
            let head = format!(
                r#""event_id":"e-{n}","event_time":"{time}","source":"{}""#,
                source.as_str()
            );
            // A checkpoint always measures.
            let measured = if temp == "null" { "37.3" } else { temp.as_str() };
            let line = match source {
                Source::Checkpoint => format!(
                    r#"{{{head},"district":"{district}","checkpoint_id":"c","person_id":{person},"vehicle_id":"渝A12345","temperature_c":{measured},"mask":false,"symptoms":{symptoms},"disposition":"{disposition}"}}"#
                ),
                Source::Pharmacy => format!(
                    r#"{{{head},"district":"{district}","pharmacy_id":"ph","person_id":{person},"drug_class":"{drug}","quantity":{quantity},"temperature_c":{temp}}}"#
                ),
                Source::DoorVisit => {
                    let (temp, symptoms) = if outcome == "seen" {
                        (temp.as_str(), symptoms.as_str())
                    } else {
                        ("null", "[]")
                    };
                    format!(
                        r#"{{{head},"district":"{district}","grid_id":"g","household_id":"h","person_id":{person},"visit_kind":"follow_up","outcome":"{outcome}","temperature_c":{temp},"symptoms":{symptoms},"observation":"{observation}"}}"#
                    )
                }
                Source::Case => format!(
                    r#"{{{head},"district":"{district}","person_id":{person},"status":"{status}","hospital_id":"{hospital}"}}"#
                ),
                Source::Bed => {
                    let what = if action == "capacity" {
                        format!(r#""beds_total":{beds}"#)
                    } else {
                        format!(r#""person_id":{person}"#)
                    };
                    format!(
                        r#"{{{head},"district":"{hospital_district}","hospital_id":"{hospital}","action":"{action}",{what}}}"#
                    )
                }
            };
            (source, line)
        },
    )
}

/// Rows of every table, by table.
fn table_rows(data: &std::path::Path) -> BTreeMap<String, i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let ctx = paicha_query::open(data).await.expect("the data opens");
        let names = ctx
            .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            .await
            .expect("the catalog lists")
            .collect()
            .await
            .expect("the catalog lists");
        let names: Vec<String> = names
            .iter()
            .flat_map(|b| {
                let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
                    .expect("names as text");
                let c = arrow::array::cast::as_string_array(&c);
                c.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        assert!(names.len() >= 14, "{names:?}");
        let mut rows = BTreeMap::new();
        for name in names {
            // Every column read and rendered, not only counted.
            let all = ctx
                .sql(&format!("SELECT * FROM {name}"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            arrow::util::pretty::pretty_format_batches(&all)
                .unwrap_or_else(|e| panic!("{name} renders: {e}"));
            let counted = ctx
                .sql(&format!("SELECT COUNT(*) FROM {name}"))
                .await
                .expect("counts")
                .collect()
                .await
                .expect("counts");
            let n = counted[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("a count")
                .value(0);
            rows.insert(name, n);
        }
        rows
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_events_survive_processing_restore_and_sql(
        events in proptest::collection::vec(event(), 1..120)
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let registry = registry();
        let decoder = Decoder::new(registry.clone(), Pseudonymizer::new(b"key"))
            .with_earliest(EARLIEST);
        let cfg = Config::new(dir.path().to_path_buf());
        let mut accepted: BTreeMap<&str, i64> = BTreeMap::new();
        {
            let mut tasks = Tasks::open(cfg.clone(), registry.clone()).expect("tasks open");
            let p = tasks.start(0).expect("a task starts");
            for (offset, (source, line)) in events.iter().enumerate() {
                let e = decoder
                    .decode(line.as_bytes(), Some(*source), NOW)
                    .unwrap_or_else(|r| panic!("a valid event refused ({r:?}): {line}"));
                let high = p.high_mark(source.topic(), 0).max(Some(e.event_time));
                if p.event(&e, p.horizon(high)) == Accepted::Counted {
                    *accepted.entry(paicha_processors::raw::table(*source)).or_default() += 1;
                }
                p.consumed(source.topic(), 0, offset as i64, Some(e.event_time), Instant::now());
                if offset % 40 == 39 {
                    p.checkpoint(false, Instant::now()).expect("a checkpoint");
                }
            }
            p.checkpoint(false, Instant::now()).expect("a checkpoint");
            p.settle_writes().expect("written");
        }
        // Restored from its checkpoint, it finishes like a replay.
        let mut tasks = Tasks::open(cfg, registry).expect("tasks reopen");
        let p = tasks.start(0).expect("the task restores");
        let last = p.max_event_time();
        p.finish_at(last);
        p.checkpoint(true, Instant::now()).expect("the last checkpoint");
        p.settle_writes().expect("written");
        p.compact_all().expect("compacted");
        drop(tasks);
        let rows = table_rows(dir.path());
        for source in Source::ALL {
            let table = paicha_processors::raw::table(source);
            prop_assert_eq!(
                rows.get(table).copied().unwrap_or(0),
                accepted.get(table).copied().unwrap_or(0),
                "{}", table
            );
        }
    }
}

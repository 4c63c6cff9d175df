//! An accelerated soak: weeks of events in thousands of checkpoints, with a
//! restart every so often. The data directory's file count, the manifest's
//! size, checkpoint time and restart time must stay flat, not grow with
//! uptime (issue #17). `PAICHA_SOAK_CHECKPOINTS` sets the length (default
//! 2,400 here, 17 days; docs/benchmarks.md runs 12,000) and
//! `PAICHA_SOAK_RETENTION_DAYS` the retention (default 3 here, so the
//! state stops growing early and January is sealed; 30 in production);
//! the figures are printed.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use paicha_contract::event::{
    BedAction, Body, CaseStatus, Disposition, Event, Observation, Outcome, Symptoms, VisitKind,
};
use paicha_contract::registry::Registry;
use paicha_processors::{Accepted, Config, Processor};

/// 2020-01-20T00:00:00Z.
const START: i64 = 1_579_478_400_000_000;
const MINUTE: i64 = 60_000_000;

/// The events of checkpoint `c`: ten simulated minutes of a district's
/// checkpoints, door visits that order and follow observation, a case and
/// bed events; ids repeat once in a while, as producers resend.
fn events(c: i64) -> Vec<(&'static str, Event)> {
    let t = START + c * 10 * MINUTE;
    let mut out = Vec::new();
    for i in 0..40 {
        let n = c * 40 + i;
        out.push((
            "screening.checkpoint",
            Event {
                event_id: format!("cp-{}", if n % 97 == 0 { n - 1 } else { n }),
                event_time: t + i * 10_000_000,
                district: (n % 5) as u16,
                body: Body::Checkpoint {
                    checkpoint_id: "cp-a".into(),
                    person_key: format!("{:032x}", n % 50_000),
                    vehicle_key: None,
                    temperature_c: if n % 13 == 0 { 38.1 } else { 36.6 },
                    mask: true,
                    symptoms: Symptoms(0),
                    came_from: None,
                    disposition: if n % 29 == 0 {
                        Disposition::Isolated
                    } else {
                        Disposition::Pass
                    },
                },
            },
        ));
        out.push((
            "screening.door_visit",
            Event {
                event_id: format!("dv-{n}"),
                event_time: t + i * 10_000_000 + 1,
                district: (n % 5) as u16,
                body: Body::DoorVisit {
                    grid_id: "g".into(),
                    household_key: format!("{:032x}", n % 20_000),
                    // People under observation, visited every few hours
                    // for their 14 days; then the next cohort's.
                    person_key: format!("{:032x}", (c / 2_016) * 100_000 + (n % 3_000) * 29),
                    visit_kind: VisitKind::FollowUp,
                    outcome: Outcome::Seen,
                    temperature_c: Some(36.5),
                    symptoms: Symptoms(0),
                    observation: if n % 7 == 0 {
                        Observation::HomeIsolation
                    } else {
                        Observation::None
                    },
                },
            },
        ));
    }
    out.push((
        "screening.case",
        Event {
            event_id: format!("case-{c}"),
            event_time: t,
            district: (c % 5) as u16,
            body: Body::Case {
                person_key: format!("{:032x}", (c / 2_016) * 100_000 + (c % 3_000) * 29),
                status: CaseStatus::Confirmed,
                hospital: Some(0),
            },
        },
    ));
    if c % 288 == 0 {
        // Two days of one bed, two days of a thousand: runs above the
        // alert share come and go.
        out.push((
            "screening.bed",
            Event {
                event_id: format!("capacity-{c}"),
                event_time: t,
                district: 0,
                body: Body::Bed {
                    hospital: 0,
                    action: BedAction::Capacity,
                    person_key: None,
                    beds_total: Some(if (c / 288) % 2 == 0 { 1 } else { 1_000 }),
                },
            },
        ));
    }
    out.push((
        "screening.bed",
        Event {
            event_id: format!("bed-{c}"),
            event_time: t + 1,
            district: 0,
            body: Body::Bed {
                hospital: 0,
                // One in ten stays: the hospital is never empty.
                action: if c % 2 == 0 || (c / 2) % 10 == 0 {
                    BedAction::Admit
                } else {
                    BedAction::Discharge
                },
                person_key: Some(format!("{:032x}", c / 2)),
                beds_total: None,
            },
        },
    ));
    out
}

/// Bytes of the manifest's list of retired files, which is as long as the
/// last five minutes of wall time made it, not the uptime.
fn retired_bytes(m: &serde_json::Value) -> u64 {
    m["retired"].to_string().len() as u64
}

#[test]
fn files_manifest_checkpoint_and_restart_stay_flat_over_uptime() {
    let checkpoints: i64 = std::env::var("PAICHA_SOAK_CHECKPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_400);
    let retention: i64 = std::env::var("PAICHA_SOAK_RETENTION_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("a temp dir");
    let registry = Arc::new(Registry::builtin().expect("the built-in registry"));
    let mut cfg = Config::new(dir.path().to_path_buf());
    cfg.retention_micros = retention * 24 * 60 * MINUTE;
    // Time runs some 6,000 times faster than the wall clock here: retired
    // files go after a second, as after 5 minutes in real time.
    cfg.retire_after_secs = 1;
    let open = || Processor::open(cfg.clone(), registry.clone()).expect("opens");
    let mut p = open();
    let mut offsets = std::collections::BTreeMap::new();
    let every = (checkpoints / 6).max(1);
    // (checkpoint, files, manifest bytes, checkpoint ms, restart ms)
    let mut samples: Vec<(i64, usize, u64, f64, f64)> = Vec::new();
    let mut spent = 0.0;
    // Manifest bytes less the retired files and the state files.
    let mut history: Vec<u64> = Vec::new();
    for c in 0..checkpoints {
        for (topic, e) in events(c) {
            let high = p.high_mark(topic, 0).max(Some(e.event_time));
            let counted = p.event(&e, p.horizon(high));
            assert_ne!(counted, Accepted::TooLate, "{c}");
            let next = offsets.entry(topic).or_insert(0i64);
            *next += 1;
            p.consumed(topic, 0, *next - 1, Some(e.event_time), Instant::now());
        }
        let started = Instant::now();
        p.checkpoint(false, Instant::now()).expect("a checkpoint");
        spent += started.elapsed().as_secs_f64() * 1e3;
        if (c + 1) % every == 0 {
            p.settle_writes().expect("written");
            drop(p);
            let text = std::fs::read_to_string(dir.path().join("_paicha/manifest.json"))
                .expect("a manifest");
            let m: serde_json::Value = serde_json::from_str(&text).expect("json");
            // State files the manifest lists (retired ones are deleted 5
            // minutes of wall time after they leave it).
            let files = ["dedupe", "cases", "beds", "follow_ups"]
                .iter()
                .map(|k| m[k].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            let manifest = text.len() as u64 - retired_bytes(&m);
            // Less the state files' names too (at most 256 per kind,
            // checked above): what grew with uptime before.
            let listed = ["dedupe", "cases", "beds", "follow_ups"]
                .iter()
                .map(|k| m[k].to_string().len() as u64)
                .sum::<u64>();
            history.push(manifest - listed);
            if std::env::var_os("PAICHA_SOAK_SHOW").is_some() {
                for (k, v) in m.as_object().into_iter().flatten() {
                    eprintln!("  {k}: {} bytes", v.to_string().len());
                }
            }
            let started = Instant::now();
            p = open();
            let restart = started.elapsed().as_secs_f64() * 1e3;
            samples.push((c + 1, files, manifest, spent / every as f64, restart));
            spent = 0.0;
        }
    }
    eprintln!("checkpoints  state_files  manifest_bytes  checkpoint_ms  restart_ms");
    for (c, f, m, ck, r) in &samples {
        eprintln!("{c:>11}  {f:>11}  {m:>14}  {ck:>13.2}  {r:>10.1}");
    }
    // State files: never more than STATE_FILES_KEPT (256) per kind.
    for (c, f, ..) in &samples {
        assert!(*f <= 4 * 256, "{f} state files after {c} checkpoints");
    }
    // The manifest lists the retention's days and one line per sealed
    // month: past the retention and a month it stops growing.
    eprintln!("manifest bytes less retired and state files: {history:?}");
    // Past the retention and a month, the manifest lists only the days of
    // the horizon's month on, a line per month before it, and the daily
    // counts of the retention and the EARS baseline.
    if checkpoints >= 2_400 && retention <= 3 {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("_paicha/manifest.json")).expect("a manifest"),
        )
        .expect("json");
        let before = m["archived_before"].as_i64().expect("an archive ran");
        assert!(
            m["sealed"].as_array().is_some_and(|s| !s.is_empty()),
            "nothing sealed"
        );
        let calendar = paicha_processors::time::Calendar::new("Asia/Shanghai").expect("a zone");
        let month = calendar.day(before).format("%Y-%m-01").to_string();
        for (table, files) in m["tables"].as_object().into_iter().flatten() {
            for f in files.as_array().into_iter().flatten() {
                let f = f.as_str().unwrap_or_default();
                let day = f.split("day=").nth(1).unwrap_or_default();
                assert!(day >= month.as_str(), "{table}: {f} is listed, not sealed");
            }
        }
        let floor = paicha_processors::time::date32(calendar.day(before));
        for d in m["daily"].as_array().into_iter().flatten() {
            let day = d["day"].as_i64().unwrap_or_default();
            assert!(
                day >= i64::from(floor) - 20,
                "a daily count of day {day} is kept"
            );
        }
    }
}

/// Every row of `table`: its files in the manifest and the rows held, in
/// one sorted text, so two runs compare whatever their batches.
fn rows_of(dir: &std::path::Path, view: &paicha_processors::LiveView, table: &str) -> Vec<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut batches = Vec::new();
    for rel in view.manifest.table_files(table) {
        let file = std::fs::File::open(dir.join(rel)).expect("a table file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .expect("a Parquet file");
        batches.extend(reader.map(|b| b.expect("a batch")));
    }
    batches.extend(view.rows(table));
    let mut out = Vec::new();
    for b in &batches {
        let options = FormatOptions::default();
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formats"))
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|c| c.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// Archiving moves rows from the state to files once a day; the tables
/// must not depend on when that happened: checkpoints every simulated
/// hour with restarts give the rows one checkpoint at the end gives.
#[test]
fn archived_rows_are_the_rows_a_single_checkpoint_gives() {
    let groups: i64 = 20 * 144;
    let registry = Arc::new(Registry::builtin().expect("the built-in registry"));
    let run = |every: i64| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut cfg = Config::new(dir.path().to_path_buf());
        cfg.retention_micros = 3 * 24 * 60 * MINUTE;
        let open = || Processor::open(cfg.clone(), registry.clone()).expect("opens");
        let mut p = open();
        let mut offsets = std::collections::BTreeMap::new();
        let mut last = 0;
        for c in 0..groups {
            for (topic, e) in events(c) {
                let high = p.high_mark(topic, 0).max(Some(e.event_time));
                assert_ne!(p.event(&e, p.horizon(high)), Accepted::TooLate);
                let next = offsets.entry(topic).or_insert(0i64);
                *next += 1;
                last = last.max(e.event_time);
                p.consumed(topic, 0, *next - 1, Some(e.event_time), Instant::now());
            }
            if (c + 1) % every == 0 && c + 1 < groups {
                p.checkpoint(false, Instant::now()).expect("a checkpoint");
                if (c + 1) % (every * 50) == 0 {
                    p.settle_writes().expect("written");
                    drop(p);
                    p = open();
                }
            }
        }
        p.finish_at(last);
        p.checkpoint(true, Instant::now())
            .expect("the last checkpoint");
        let view = p.live_view().expect("a view");
        assert!(view.manifest.archived_before.is_some(), "nothing archived");
        let tables: Vec<Vec<String>> = ["follow_ups", "alerts", "aberrations"]
            .iter()
            .map(|t| rows_of(dir.path(), &view, t))
            .collect();
        let archived = ["follow_ups", "alerts", "aberrations"]
            .map(|t| view.manifest.tables.get(t).map_or(0, Vec::len));
        // Every kind of alert is archived: follow-up ones with their
        // episodes, bed ones once resolved.
        for kind in ["follow_up_overdue", "bed_utilization"] {
            assert!(
                tables[1].iter().any(|r| r.contains(kind)),
                "no {kind} alert"
            );
        }
        (tables, archived)
    };
    let (hourly, files) = run(6);
    let (once, _) = run(groups);
    assert!(files.iter().all(|n| *n > 0), "archived files {files:?}");
    for (t, (a, b)) in ["follow_ups", "alerts", "aberrations"]
        .iter()
        .zip(hourly.iter().zip(&once))
    {
        assert!(!a.is_empty(), "{t} has no rows");
        let only = |x: &Vec<String>, y: &Vec<String>| {
            x.iter()
                .filter(|r| !y.contains(r))
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            a.len(),
            b.len(),
            "{t}: rows; only hourly {:?}; only at the end {:?}",
            only(a, b),
            only(b, a)
        );
        assert_eq!(a, b, "{t}");
    }
}

//! An accelerated soak: weeks of events in thousands of checkpoints, with a
//! restart every so often. The data directory's file count, the manifest's
//! size, checkpoint time and restart time must stay flat, not grow with
//! uptime (issue #17). `PAICHA_SOAK_CHECKPOINTS` sets the length (default
//! 1,200 here; docs/benchmarks.md runs 12,000); the figures are printed.

use std::sync::Arc;
use std::time::Instant;

use paicha_ingest::event::{
    BedAction, Body, CaseStatus, Disposition, Event, Observation, Outcome, Symptoms, VisitKind,
};
use paicha_ingest::registry::Registry;
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
    out.push((
        "screening.bed",
        Event {
            event_id: format!("bed-{c}"),
            event_time: t + 1,
            district: 0,
            body: Body::Bed {
                hospital: 0,
                action: if c % 2 == 0 {
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
        .unwrap_or(1_200);
    let dir = tempfile::tempdir().expect("a temp dir");
    let registry = Arc::new(Registry::builtin().expect("the built-in registry"));
    let mut cfg = Config::new(dir.path().to_path_buf());
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
    // The manifest also lists each table's file per day: that part grows
    // with the days of data kept (printed above), not with checkpoints.
}

//! End to end: a hand-written follow-up scenario replayed through the
//! embedded Kafka, `follow_ups` compared with an independent fold over the
//! same file, and the `follow_up_overdue` alerts checked for the facts that
//! hold whatever order the partitions are consumed in.
//!
//! The fold is written from the contract (events.md, "Under observation",
//! "Follow-up due") and the rules in docs/semantics.md, not from the
//! processor: per person, events in file order; an isolation observation (or
//! a checkpoint `isolated`) opens a 14-day episode unless one covers the
//! event time; a `seen` visit inside the open episode moves `last_seen_at`;
//! `released` and a `confirmed` case close it; the clock is the highest event
//! time of the input.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::common::*;

const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;
/// The highest event time of the scenario: the pipeline clock at the end.
const CLOCK: &str = "2020-02-20T12:00:00+08:00";

/// `2020-MM-DDTHH:MM:00+08:00` from "MM-DD" and "HH:MM".
fn at(day: &str, hm: &str) -> String {
    format!("2020-{day}T{hm}:00+08:00")
}

/// Unix seconds of an RFC 3339 time.
fn secs(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .expect("RFC 3339")
        .timestamp()
}

/// A person of the scenario: a tag for event ids, the raw id the source
/// system sends, and the district (one person per district, so rows can be
/// matched without the pseudonym).
#[derive(Clone, Copy)]
struct Person {
    tag: &'static str,
    id: &'static str,
    district: &'static str,
}

fn visit(p: Person, time: &str, kind: &str, outcome: &str, observation: &str) -> String {
    let temperature = if outcome == "seen" { "36.6" } else { "null" };
    format!(
        r#"{{"event_id":"dv-{}-{}","event_time":"{time}","source":"door_visit","district":"{}","grid_id":"grid-{}","household_id":"hh-{}","person_id":"{}","visit_kind":"{kind}","outcome":"{outcome}","temperature_c":{temperature},"symptoms":[],"observation":"{observation}"}}"#,
        p.tag,
        &time[5..16],
        p.district,
        p.district,
        p.id,
        p.id
    )
}

fn checkpoint(p: Person, time: &str, disposition: &str) -> String {
    let (temperature, symptoms) = if disposition == "isolated" {
        ("37.9", r#"["fever","cough"]"#)
    } else {
        ("36.4", "[]")
    };
    format!(
        r#"{{"event_id":"cp-{}-{}","event_time":"{time}","source":"checkpoint","district":"{}","checkpoint_id":"cp-{}","person_id":"{}","temperature_c":{temperature},"mask":true,"symptoms":{symptoms},"came_from":"420100","disposition":"{disposition}"}}"#,
        p.tag,
        &time[5..16],
        p.district,
        p.district,
        p.id
    )
}

fn case(p: Person, time: &str, status: &str) -> String {
    format!(
        r#"{{"event_id":"case-{}-{status}","event_time":"{time}","source":"case","district":"{}","person_id":"{}","status":"{status}"}}"#,
        p.tag, p.district, p.id
    )
}

/// Seen follow-up visits keeping an observation, one per (day, time).
fn seen_visits(p: Person, observation: &str, times: &[(&str, &str)]) -> Vec<String> {
    times
        .iter()
        .map(|(d, hm)| visit(p, &at(d, hm), "follow_up", "seen", observation))
        .collect()
}

// One person per district, so a row of `follow_ups` is found by district.
/// Isolated, seen, then reported suspected before the next visit was due:
/// in hospital at the clock, no visit due and no alert.
const HOSPITALIZED: Person = Person {
    tag: "m",
    id: "500113197001010133",
    district: "500113",
};
/// Reported suspected the day after isolation (no visit yet), excluded
/// days later: the next visit is due 24 h after the exclusion.
const EXCLUDED: Person = Person {
    tag: "n",
    id: "500114197102020144",
    district: "500114",
};
/// Seen once, then never again until the 14 days elapsed: lost to
/// follow-up.
const LOST: Person = Person {
    tag: "o",
    id: "500117197203030155",
    district: "500117",
};
/// Visited on time every day, then released early.
const RELEASED: Person = Person {
    tag: "a",
    id: "500101198003150011",
    district: "500101",
};
/// Visited late once (overdue for a while), then seen daily.
const LATE_ONCE: Person = Person {
    tag: "b",
    id: "500102197511020022",
    district: "500102",
};
/// Never seen after the visit that isolated them: overdue many days.
const NEVER_SEEN: Person = Person {
    tag: "c",
    id: "500103196807230033",
    district: "500103",
};
/// Confirmed mid-episode, then visited once more the next morning.
const CONFIRMED: Person = Person {
    tag: "d",
    id: "500104199912310044",
    district: "500104",
};
/// Visited every 24 hours exactly until the 14 days elapse.
const COMPLETED: Person = Person {
    tag: "e",
    id: "500105198506060055",
    district: "500105",
};
/// Isolated at a checkpoint and never visited: overdue by less than a day.
const CHECKPOINT_ONLY: Person = Person {
    tag: "f",
    id: "500106200101010066",
    district: "500106",
};
/// Isolated at a checkpoint, then visited daily.
const CHECKPOINT_VISITED: Person = Person {
    tag: "g",
    id: "500107197003030077",
    district: "500107",
};
/// Visited daily; the last visit arrives at the end of the file.
const LATE_ARRIVAL: Person = Person {
    tag: "h",
    id: "500108199206180088",
    district: "500108",
};
/// Late once and then not seen for exactly 48 h before the clock.
const TWO_DAYS: Person = Person {
    tag: "i",
    id: "500109198811110099",
    district: "500109",
};
/// Isolated exactly 24 h before the clock: due at the clock, not overdue.
const DUE_AT_CLOCK: Person = Person {
    tag: "j",
    id: "500110197707070100",
    district: "500110",
};
/// Unrelated people: screened, confirmed without isolation, travellers.
const SCREENED: Person = Person {
    tag: "k",
    id: "500111196501010111",
    district: "500111",
};
const CONFIRMED_ONLY: Person = Person {
    tag: "l",
    id: "500112198202020122",
    district: "500112",
};

/// The scenario as JSON lines. Events are in event-time order, except the
/// two lines at the end: a visit of `LATE_ARRIVAL` older than the clock
/// events before it, and a second delivery of one of `RELEASED`'s visits.
fn scenario() -> (Vec<String>, String) {
    let mut timed: Vec<String> = Vec::new();

    // Released early: isolated 02-08 09:00, seen at most 24 h apart, released
    // (and seen) 02-15 07:00, before its 14 days.
    timed.push(visit(
        RELEASED,
        &at("02-08", "09:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(
        RELEASED,
        "home_isolation",
        &[
            ("02-09", "09:00"),
            ("02-10", "08:30"),
            ("02-11", "08:30"),
            ("02-12", "08:00"),
            ("02-13", "08:00"),
            ("02-14", "07:30"),
        ],
    ));
    timed.push(visit(
        RELEASED,
        &at("02-15", "07:00"),
        "follow_up",
        "seen",
        "released",
    ));
    let duplicate = visit(
        RELEASED,
        &at("02-11", "08:30"),
        "follow_up",
        "seen",
        "home_isolation",
    );

    // Late once: due 02-14 09:00, not home 02-14 10:00, seen 02-15 15:00;
    // a screening visit (observation `none`) still counts as seen.
    timed.push(visit(
        LATE_ONCE,
        &at("02-12", "10:00"),
        "screening",
        "seen",
        "centralized_observation",
    ));
    timed.push(visit(
        LATE_ONCE,
        &at("02-13", "09:00"),
        "follow_up",
        "seen",
        "centralized_observation",
    ));
    timed.push(visit(
        LATE_ONCE,
        &at("02-14", "10:00"),
        "follow_up",
        "not_home",
        "centralized_observation",
    ));
    timed.push(visit(
        LATE_ONCE,
        &at("02-15", "15:00"),
        "follow_up",
        "seen",
        "centralized_observation",
    ));
    timed.push(visit(
        LATE_ONCE,
        &at("02-16", "14:00"),
        "screening",
        "seen",
        "none",
    ));
    timed.extend(seen_visits(
        LATE_ONCE,
        "centralized_observation",
        &[
            ("02-17", "13:00"),
            ("02-18", "12:00"),
            ("02-19", "11:00"),
            ("02-20", "10:00"),
        ],
    ));

    // Never seen again: not home, refused (moving them to centralized
    // observation), not home.
    timed.push(visit(
        NEVER_SEEN,
        &at("02-10", "20:00"),
        "screening",
        "seen",
        "medical_observation",
    ));
    timed.push(visit(
        NEVER_SEEN,
        &at("02-12", "10:00"),
        "follow_up",
        "not_home",
        "medical_observation",
    ));
    timed.push(visit(
        NEVER_SEEN,
        &at("02-13", "11:00"),
        "follow_up",
        "refused",
        "centralized_observation",
    ));
    timed.push(visit(
        NEVER_SEEN,
        &at("02-16", "10:00"),
        "follow_up",
        "not_home",
        "centralized_observation",
    ));

    // Reported suspected 02-11 08:00 (in hospital, before its visit was
    // due), confirmed 02-11 18:00; the visit the next morning comes after
    // the episode ended and counts for nothing.
    timed.push(visit(
        CONFIRMED,
        &at("02-09", "11:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(
        CONFIRMED,
        "home_isolation",
        &[("02-10", "10:00"), ("02-11", "09:30")],
    ));
    timed.push(case(CONFIRMED, &at("02-11", "08:00"), "suspected"));
    timed.push(case(CONFIRMED, &at("02-11", "18:00"), "confirmed"));
    timed.push(visit(
        CONFIRMED,
        &at("02-12", "10:00"),
        "screening",
        "seen",
        "none",
    ));

    // Completed: isolated 01-27 08:00, seen every 24 h to 02-09 08:00, due
    // 02-10 08:00 when the 14 days end; a release visit after that is about
    // no episode.
    timed.push(visit(
        COMPLETED,
        &at("01-27", "08:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    let days: Vec<String> = (28..=31)
        .map(|d| format!("01-{d}"))
        .chain((1..=9).map(|d| format!("02-{d:02}")))
        .collect();
    let times: Vec<(&str, &str)> = days.iter().map(|d| (d.as_str(), "08:00")).collect();
    timed.extend(seen_visits(COMPLETED, "home_isolation", &times));
    timed.push(visit(
        COMPLETED,
        &at("02-10", "09:00"),
        "follow_up",
        "seen",
        "released",
    ));

    // Isolated at checkpoints.
    timed.push(checkpoint(
        CHECKPOINT_ONLY,
        &at("02-18", "16:00"),
        "isolated",
    ));
    timed.push(checkpoint(
        CHECKPOINT_VISITED,
        &at("02-14", "09:00"),
        "isolated",
    ));
    timed.extend(seen_visits(
        CHECKPOINT_VISITED,
        "centralized_observation",
        &[
            ("02-15", "08:00"),
            ("02-16", "08:00"),
            ("02-17", "08:00"),
            ("02-18", "08:00"),
            ("02-19", "08:00"),
            ("02-20", "07:00"),
        ],
    ));

    // The last visit of LATE_ARRIVAL (02-20 08:00) is held back to the end.
    timed.push(visit(
        LATE_ARRIVAL,
        &at("02-16", "09:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(
        LATE_ARRIVAL,
        "home_isolation",
        &[("02-17", "09:00"), ("02-18", "09:00"), ("02-19", "09:00")],
    ));
    let late = visit(
        LATE_ARRIVAL,
        &at("02-20", "08:00"),
        "follow_up",
        "seen",
        "home_isolation",
    );

    // Seen 02-16 09:00, then 27 h later (late), then nothing: due 02-18
    // 12:00, exactly two days before the clock.
    timed.push(visit(
        TWO_DAYS,
        &at("02-15", "10:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(
        TWO_DAYS,
        "home_isolation",
        &[("02-16", "09:00"), ("02-17", "12:00")],
    ));

    timed.push(visit(
        DUE_AT_CLOCK,
        &at("02-19", "12:00"),
        "screening",
        "seen",
        "medical_observation",
    ));

    // Hospitalized 02-16 08:00, an hour before its next visit was due.
    timed.push(visit(
        HOSPITALIZED,
        &at("02-14", "09:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(
        HOSPITALIZED,
        "home_isolation",
        &[("02-15", "09:00")],
    ));
    timed.push(case(HOSPITALIZED, &at("02-16", "08:00"), "suspected"));
    // Isolated 02-12 09:00 and never seen: overdue from 02-13 09:00 until
    // reported suspected 02-13 20:00; excluded 02-19 20:00, due 02-20 20:00.
    timed.push(visit(
        EXCLUDED,
        &at("02-12", "09:00"),
        "screening",
        "not_home",
        "home_isolation",
    ));
    timed.push(case(EXCLUDED, &at("02-13", "20:00"), "suspected"));
    timed.push(case(EXCLUDED, &at("02-19", "20:00"), "excluded"));
    // Isolated 02-01 09:00, seen 02-02 09:00, then never: lost at 02-15 09:00.
    timed.push(visit(
        LOST,
        &at("02-01", "09:00"),
        "screening",
        "seen",
        "home_isolation",
    ));
    timed.extend(seen_visits(LOST, "home_isolation", &[("02-02", "09:00")]));

    // Unrelated: screened and not isolated, confirmed without an episode,
    // travellers passing checkpoints up to the clock.
    for (d, hm) in [("01-25", "10:00"), ("02-05", "10:00"), ("02-19", "15:00")] {
        timed.push(visit(SCREENED, &at(d, hm), "screening", "seen", "none"));
    }
    timed.push(case(CONFIRMED_ONLY, &at("02-14", "12:00"), "confirmed"));
    for (tag, district, d, hm) in [
        ("t0", "500120", "01-25", "07:00"),
        ("t1", "500115", "02-01", "12:00"),
        ("t2", "500120", "02-10", "18:00"),
        ("t3", "500116", "02-19", "23:00"),
        ("t4", "500120", "02-20", "11:59"),
        ("t5", "500120", "02-20", "12:00"),
    ] {
        let traveller = Person {
            tag,
            id: tag,
            district,
        };
        timed.push(checkpoint(traveller, &at(d, hm), "pass"));
    }

    // Event-time order (every time here has the same offset, so the text
    // sorts as the instant does), then the late visit and the duplicate.
    let time_of = |l: &String| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        secs(v["event_time"].as_str().unwrap())
    };
    timed.sort_by_key(time_of);
    let mut lines = timed;
    assert!(time_of(&late) < time_of(lines.last().unwrap()));
    lines.push(late);
    lines.push(duplicate.clone());
    let id = serde_json::from_str::<serde_json::Value>(&duplicate).unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    (lines, id)
}

/// An observation episode as the fold sees it. Times in Unix seconds.
#[derive(Debug)]
struct Episode {
    district: String,
    observation: String,
    started: i64,
    last_seen: Option<i64>,
    /// Every seen visit counted in it.
    seen: Vec<i64>,
    /// Suspected (true) and excluded (false) reports in it.
    hospital: Vec<(i64, bool)>,
    /// When and how it closed early.
    closed: Option<(i64, &'static str)>,
}

impl Episode {
    fn ends(&self) -> i64 {
        self.started + 14 * DAY
    }

    /// Whether in hospital just after `t`: its last report by then says
    /// suspected.
    fn in_hospital(&self, t: i64) -> bool {
        self.hospital
            .iter()
            .rfind(|(at, _)| *at <= t)
            .is_some_and(|(_, suspected)| *suspected)
    }

    /// Where the next visit's 24 h run from: the start, the last visit seen
    /// out of hospital, or the last exclusion, whichever is latest.
    fn anchor(&self) -> i64 {
        let seen = self.seen.iter().copied().filter(|s| !self.in_hospital(*s));
        let excluded = self.hospital.iter().filter(|(_, s)| !s).map(|(t, _)| *t);
        seen.chain(excluded).fold(self.started, i64::max)
    }

    fn due(&self) -> i64 {
        self.anchor() + DAY
    }

    fn covers(&self, t: i64) -> bool {
        self.started <= t && t < self.ends() && self.closed.is_none_or(|(c, _)| t < c)
    }

    /// Status and days overdue at `clock`.
    fn status(&self, clock: i64) -> (&'static str, i64) {
        let in_hospital = self.in_hospital(clock.min(self.ends()));
        if let Some((_, s)) = self.closed {
            (s, 0)
        } else if clock >= self.ends() && !in_hospital && self.ends() > self.due() {
            ("lost_to_follow_up", 0)
        } else if clock >= self.ends() {
            ("completed", 0)
        } else if in_hospital {
            ("hospitalized", 0)
        } else if clock > self.due() {
            let late = clock - self.due();
            ("overdue", (late + DAY - 1) / DAY)
        } else {
            ("active", 0)
        }
    }

    /// Whether, on the full history up to `clock`, there was ever an
    /// instant at which it was open and more than 24 h past its last
    /// sighting (or its start).
    fn ever_late(&self, clock: i64) -> bool {
        // Anchors start a wait (the start, a visit out of hospital, an
        // exclusion); a wait ends at the next anchor or admission.
        let mut anchors: Vec<i64> = self
            .seen
            .iter()
            .copied()
            .filter(|s| !self.in_hospital(*s))
            .chain(self.hospital.iter().filter(|(_, s)| !s).map(|(t, _)| *t))
            .collect();
        anchors.push(self.started);
        anchors.sort_unstable();
        let admissions: Vec<i64> = self
            .hospital
            .iter()
            .filter(|(_, s)| *s)
            .map(|(t, _)| *t)
            .collect();
        let open_until = self.ends().min(self.closed.map_or(i64::MAX, |(c, _)| c));
        // Late after `a` when some instant after its due time is before the
        // wait ended, while open, and not after the clock.
        anchors.iter().enumerate().any(|(i, &a)| {
            let next = anchors.get(i + 1).copied().unwrap_or(i64::MAX);
            let admitted = admissions.iter().copied().filter(|h| *h >= a).min();
            let until = open_until.min(next).min(admitted.unwrap_or(i64::MAX));
            until - a > DAY && clock > a + DAY
        })
    }

    /// The row of `follow_ups` as `sql_rows` returns it.
    fn row(&self, clock: i64) -> Vec<String> {
        let (status, days) = self.status(clock);
        vec![
            self.district.clone(),
            self.observation.clone(),
            self.started.to_string(),
            self.ends().to_string(),
            self.last_seen.map(|t| t.to_string()).unwrap_or_default(),
            self.due().to_string(),
            status.to_string(),
            days.to_string(),
        ]
    }
}

const ISOLATION: [&str; 3] = [
    "home_isolation",
    "centralized_observation",
    "medical_observation",
];

/// Every episode of the file and the clock at its end, by the rules alone.
fn fold(text: &str) -> (i64, Vec<Episode>) {
    let districts = districts();
    let mut counted = HashSet::new();
    let mut clock = i64::MIN;
    let mut persons: BTreeMap<String, Vec<Episode>> = BTreeMap::new();
    for line in text.lines() {
        let v = valid(line, &districts).expect("the scenario has only valid events");
        let source = v["source"].as_str().unwrap();
        if !counted.insert((
            source.to_string(),
            v["event_id"].as_str().unwrap().to_string(),
        )) {
            continue;
        }
        let t = secs(v["event_time"].as_str().unwrap());
        clock = clock.max(t);
        let district = v["district"].as_str().unwrap().to_string();
        let episodes = persons
            .entry(v["person_id"].as_str().unwrap_or_default().to_string())
            .or_default();
        let open = episodes.iter().rposition(|e| e.covers(t));
        // (seen, observation) the event reports.
        let (seen, observation) = match source {
            "door_visit" => (
                v["outcome"] == "seen",
                v["observation"].as_str().unwrap().to_string(),
            ),
            // Recorded as centralized observation (inside an open episode it
            // would update the column like a visit; the scenario has none).
            "checkpoint" if v["disposition"] == "isolated" => {
                (false, "centralized_observation".to_string())
            }
            "case" if v["status"] == "confirmed" => {
                if let Some(i) = open {
                    episodes[i].closed = Some((t, "confirmed"));
                }
                continue;
            }
            "case" if v["status"] == "suspected" || v["status"] == "excluded" => {
                if let Some(i) = open {
                    episodes[i].hospital.push((t, v["status"] == "suspected"));
                }
                continue;
            }
            _ => continue,
        };
        if let (true, Some(i)) = (seen, open) {
            let e = &mut episodes[i];
            e.last_seen = Some(e.last_seen.map_or(t, |s| s.max(t)));
            e.seen.push(t);
        }
        match (observation.as_str(), open) {
            ("released", Some(i)) => episodes[i].closed = Some((t, "released")),
            (o, Some(i)) if ISOLATION.contains(&o) => episodes[i].observation = observation,
            (o, None) if ISOLATION.contains(&o) => episodes.push(Episode {
                district,
                observation,
                started: t,
                last_seen: seen.then_some(t),
                seen: if seen { vec![t] } else { vec![] },
                hospital: Vec::new(),
                closed: None,
            }),
            _ => {}
        }
    }
    (clock, persons.into_values().flatten().collect())
}

fn replay(file: &Path, data: &Path) -> String {
    ok(&[
        "run",
        "--replay",
        file.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ])
}

fn query_follow_ups(data: &Path) -> Vec<Vec<String>> {
    let mut rows = sql_rows(
        data,
        "SELECT district, observation, to_unixtime(started_at), to_unixtime(ends_at), \
         to_unixtime(last_seen_at), to_unixtime(next_due_at), status, days_overdue \
         FROM follow_ups",
    );
    rows.sort();
    rows
}

/// Rows only one side has, for a readable failure.
fn diff(got: &[Vec<String>], want: &[Vec<String>]) -> Vec<String> {
    let g: BTreeSet<&Vec<String>> = got.iter().collect();
    let w: BTreeSet<&Vec<String>> = want.iter().collect();
    w.difference(&g)
        .map(|r| format!("missing {}", r.join(",")))
        .chain(
            g.difference(&w)
                .map(|r| format!("unexpected {}", r.join(","))),
        )
        .collect()
}

#[test]
fn follow_ups_match_the_rules_and_overdue_alerts_hold() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("follow_ups.jsonl");
    let data = dir.path().join("data");
    let (lines, duplicate_id) = scenario();
    let text = lines.join("\n") + "\n";
    std::fs::write(&file, &text).unwrap();

    let (clock, episodes) = fold(&text);
    assert_eq!(clock, secs(CLOCK));
    // The scenario is what it says: one episode per person and district,
    // and every final status, including overdue with and without critical.
    let by_district: HashMap<&str, &Episode> =
        episodes.iter().map(|e| (e.district.as_str(), e)).collect();
    assert_eq!(
        by_district.len(),
        episodes.len(),
        "one episode per district"
    );
    let status = |p: Person| by_district[p.district].status(clock);
    assert_eq!(status(RELEASED), ("released", 0));
    assert_eq!(status(LATE_ONCE), ("active", 0));
    assert_eq!(status(NEVER_SEEN), ("overdue", 9));
    assert_eq!(status(CONFIRMED), ("confirmed", 0));
    assert_eq!(status(COMPLETED), ("completed", 0));
    assert_eq!(status(CHECKPOINT_ONLY), ("overdue", 1));
    assert_eq!(status(CHECKPOINT_VISITED), ("active", 0));
    assert_eq!(status(LATE_ARRIVAL), ("active", 0));
    assert_eq!(status(TWO_DAYS), ("overdue", 2));
    assert_eq!(status(DUE_AT_CLOCK), ("active", 0));
    assert_eq!(status(HOSPITALIZED), ("hospitalized", 0));
    assert_eq!(status(EXCLUDED), ("active", 0));
    assert_eq!(
        by_district[EXCLUDED.district].due(),
        secs(&at("02-20", "20:00"))
    );
    assert_eq!(status(LOST), ("lost_to_follow_up", 0));
    assert_eq!(episodes.len(), 13);
    assert!(by_district[EXCLUDED.district].ever_late(clock));
    assert!(by_district[LOST.district].ever_late(clock));
    assert!(by_district[LATE_ONCE.district].ever_late(clock));
    assert!(by_district[TWO_DAYS.district].ever_late(clock));
    for p in [
        RELEASED,
        CONFIRMED,
        COMPLETED,
        CHECKPOINT_VISITED,
        LATE_ARRIVAL,
        DUE_AT_CLOCK,
        HOSPITALIZED,
    ] {
        assert!(!by_district[p.district].ever_late(clock), "{}", p.tag);
    }

    let out = replay(&file, &data);
    assert!(out.contains(", 1 duplicates,"), "{out}");
    let mut failures: Vec<String> = Vec::new();

    // The duplicate delivery is one event.
    let n = sql_rows(
        &data,
        &format!("SELECT COUNT(*) FROM door_visits WHERE event_id = '{duplicate_id}'"),
    );
    if n[0][0] != "1" {
        failures.push(format!(
            "door_visits holds {duplicate_id} {} times",
            n[0][0]
        ));
    }

    // 1. follow_ups, row for row.
    let mut want: Vec<Vec<String>> = episodes.iter().map(|e| e.row(clock)).collect();
    want.sort();
    let got = query_follow_ups(&data);
    if got != want {
        failures.push(format!(
            "follow_ups (district, observation, started_at, ends_at, last_seen_at, \
             next_due_at, status, days_overdue) differ from the fold: {:?}",
            diff(&got, &want)
        ));
    }
    let keys = sql_rows(&data, "SELECT person_key FROM follow_ups");
    let raw_ids: HashSet<&str> = [
        RELEASED,
        LATE_ONCE,
        NEVER_SEEN,
        CONFIRMED,
        COMPLETED,
        CHECKPOINT_ONLY,
        CHECKPOINT_VISITED,
        LATE_ARRIVAL,
        TWO_DAYS,
        DUE_AT_CLOCK,
        HOSPITALIZED,
        EXCLUDED,
        LOST,
    ]
    .iter()
    .map(|p| p.id)
    .collect();
    for k in &keys {
        let k = &k[0];
        if k.len() != 32
            || !k.bytes().all(|b| b.is_ascii_hexdigit())
            || raw_ids.contains(k.as_str())
        {
            failures.push(format!("person_key {k} is not a pseudonym"));
        }
    }

    // 2. Alerts. Unique ids, each overdue alert about an episode's person.
    let counts = sql_rows(
        &data,
        "SELECT COUNT(*), COUNT(DISTINCT alert_id) FROM alerts",
    );
    if counts[0][0] != counts[0][1] {
        failures.push(format!("alert ids repeat: {:?}", counts[0]));
    }
    let alerts = sql_rows(
        &data,
        "SELECT f.district, a.alert_id, a.severity, \
         CASE WHEN a.resolved_at IS NULL THEN 1 ELSE 0 END \
         FROM alerts a JOIN follow_ups f ON a.person_key = f.person_key \
         WHERE a.kind = 'follow_up_overdue' ORDER BY a.alert_id",
    );
    let all = sql_rows(
        &data,
        "SELECT COUNT(*) FROM alerts WHERE kind = 'follow_up_overdue'",
    );
    if all[0][0] != alerts.len().to_string() {
        failures.push(format!(
            "{} follow_up_overdue alerts, {} of them about a person in follow_ups",
            all[0][0],
            alerts.len()
        ));
    }
    let of = |district: &str, severity: Option<&str>, unresolved: bool| {
        alerts
            .iter()
            .filter(|a| a[0] == district)
            .filter(|a| severity.is_none_or(|s| a[2] == s))
            .filter(|a| !unresolved || a[3] == "1")
            .count()
    };
    for e in &episodes {
        let (status, days) = e.status(clock);
        let d = e.district.as_str();
        if status == "overdue" && days >= 1 && of(d, Some("warning"), true) == 0 {
            failures.push(format!(
                "{d}: overdue {days} day(s) but no unresolved warning alert; its alerts: {:?}",
                alerts.iter().filter(|a| a[0] == d).collect::<Vec<_>>()
            ));
        }
        if status == "overdue" && days >= 3 && of(d, Some("critical"), true) == 0 {
            failures.push(format!(
                "{d}: overdue {days} day(s) but no unresolved critical alert; its alerts: {:?}",
                alerts.iter().filter(|a| a[0] == d).collect::<Vec<_>>()
            ));
        }
        if status != "overdue" && !e.ever_late(clock) && of(d, None, false) > 0 {
            failures.push(format!(
                "{d}: {status} and never late, yet alerted: {:?}",
                alerts.iter().filter(|a| a[0] == d).collect::<Vec<_>>()
            ));
        }
    }

    // Replaying the same file again changes nothing.
    let all_alerts = "SELECT * FROM alerts ORDER BY alert_id";
    let all_follow_ups = "SELECT * FROM follow_ups ORDER BY person_key, started_at";
    let alerts_before = sql_rows(&data, all_alerts);
    let follow_ups_before = sql_rows(&data, all_follow_ups);
    let out = replay(&file, &data);
    assert!(out.contains(" 0 events counted,"), "{out}");
    let alerts_after = sql_rows(&data, all_alerts);
    if alerts_after != alerts_before {
        failures.push(format!(
            "a second replay changed alerts: {:?}",
            diff(&alerts_after, &alerts_before)
        ));
    }
    let follow_ups_after = sql_rows(&data, all_follow_ups);
    if follow_ups_after != follow_ups_before {
        failures.push(format!(
            "a second replay changed follow_ups: {:?}",
            diff(&follow_ups_after, &follow_ups_before)
        ));
    }

    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same scenario fed live, in event-time order in two chunks and with
/// its late lines last, through `paicha run --brokers` with no allowed
/// lateness: once every partition is idle the clock stands at the last
/// event, and `follow_ups` is the fold's, row for row, hospitalized and
/// lost to follow-up included.
#[test]
fn follow_ups_fed_live_match_the_rules() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, Producer};
    use rdkafka::ClientConfig;

    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = scenario();
    let text = lines.join("\n") + "\n";
    let (clock, episodes) = fold(&text);

    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 3, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let data = dir.path().join("live");
    let run = live_run(&brokers, &data);
    for chunk in lines.chunks(lines.len() / 2 + 1) {
        for line in chunk {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic = format!("screening.{}", v["source"].as_str().unwrap());
            send_keyed(&producer, &topic, v["district"].as_str().unwrap(), line);
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        caught_up(&brokers, &run.http, Duration::from_secs(120));
    }
    // Each partition task keeps its own clock (its partitions' events):
    // one traveller at the scenario's last instant on each partition sets
    // every task's at the fold's.
    let mut codes: Vec<String> = districts().into_iter().collect();
    codes.sort();
    for p in 0..3 {
        let Some(code) = codes
            .iter()
            .find(|c| paicha_contract::topics::partition_for(c, 3) == p)
        else {
            continue;
        };
        let tag: &'static str = Box::leak(format!("hb{p}").into_boxed_str());
        let district: &'static str = Box::leak(code.clone().into_boxed_str());
        let traveller = Person {
            tag,
            id: tag,
            district,
        };
        let line = checkpoint(traveller, CLOCK, "pass");
        send_keyed(&producer, "screening.checkpoint", district, &line);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    caught_up(&brokers, &run.http, Duration::from_secs(120));
    // Every partition idle: the clock stands at the last event.
    std::thread::sleep(Duration::from_secs(3));
    let mut run = run;
    sigterm(&mut run.child);
    drop(run);

    let mut want: Vec<Vec<String>> = episodes.iter().map(|e| e.row(clock)).collect();
    want.sort();
    let got = query_follow_ups(&data);
    assert!(
        got == want,
        "live follow_ups differ from the fold: {:?}",
        diff(&got, &want)
    );
}

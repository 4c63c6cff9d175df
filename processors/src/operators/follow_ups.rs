//! `follow_ups`: every observation episode and whether its daily visit is
//! overdue by the pipeline clock; `follow_up_overdue` alerts.
//!
//! An episode opens with a door visit whose `observation` is
//! `home_isolation`, `centralized_observation` or `medical_observation`, or
//! a checkpoint `isolated` disposition (as `centralized_observation`), for a
//! person not already in an open episode at that time. It lasts 14 days,
//! unless a visit says `released` or a `confirmed` case event arrives for the
//! person. A `seen` visit inside the episode moves `next_due_at` to 24 h
//! after it. A `suspected` case report puts the person in hospital, where
//! no visit is due, until an `excluded` one (due 24 h after it); 14 days
//! that elapse while a visit is missed end as `lost_to_follow_up`. A visit
//! saying `none` changes nothing: it is what a screening
//! visit records for everyone it does not isolate, and closing an isolation
//! on a default value would hide exactly the people the command center
//! looks for.
//!
//! The clock only moves forward. Advancing it must not scan every person:
//! each open episode has its next moment of change (due, one more day
//! missed, the end of its 14 days) in an ordered queue, and advancing pops
//! only the moments passed. Counts per (district, status) and per
//! (district, days missed) are kept the same way, incrementally.

use std::collections::BTreeSet;

// Hashers seeded per process: the keys are event data, so not predictable.
use foldhash::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Body, CaseStatus, Disposition, Event, Observation, Outcome};
use paicha_contract::registry::Registry;

use anyhow::Result;
use std::time::{Duration, Instant};

use super::alerts::{Alert, AlertBook};
use super::{load_state, Cx, Final, LogSize, Operator, ReadFile, StateFiles};
use crate::store::Manifest;
use crate::tables::Table;
use crate::time::{DAY_MICROS, HOUR_MICROS};

/// How long an observation lasts.
pub const OBSERVATION_MICROS: i64 = 14 * DAY_MICROS;
/// How often a person under observation must be seen.
pub const DUE_EVERY_MICROS: i64 = 24 * HOUR_MICROS;
/// Days missed at which an overdue follow-up becomes critical.
pub const CRITICAL_DAYS: i64 = 3;

/// The status of an episode at the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Under observation, visited in time.
    Active,
    /// Under observation, the daily visit missed.
    Overdue,
    /// Under observation and in hospital as a suspected case: no visit due.
    Hospitalized,
    /// 14 days elapsed, the last visit not missed.
    Completed,
    /// 14 days elapsed while the daily visit was missed.
    LostToFollowUp,
    /// Released early.
    Released,
    /// Ended by a confirmed case.
    Confirmed,
}

impl Status {
    /// Every status, in order.
    pub const ALL: [Status; 7] = [
        Status::Active,
        Status::Overdue,
        Status::Hospitalized,
        Status::Completed,
        Status::LostToFollowUp,
        Status::Released,
        Status::Confirmed,
    ];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Overdue => "overdue",
            Status::Hospitalized => "hospitalized",
            Status::Completed => "completed",
            Status::LostToFollowUp => "lost_to_follow_up",
            Status::Released => "released",
            Status::Confirmed => "confirmed",
        }
    }
}

#[derive(Debug, Clone)]
struct Episode {
    district: u16,
    observation: Observation,
    started_at: i64,
    last_seen_at: Option<i64>,
    /// Every `seen` visit, suspected report and exclusion in the episode,
    /// in time order.
    marks: Vec<(i64, Mark)>,
    /// Released or confirmed, and when.
    closed: Option<(i64, Status)>,
    /// What the counts currently count it as: status and days missed.
    counted: (Status, i64),
}

/// What moves a person's next visit due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Seen: the next visit is due 24 h later.
    Seen,
    /// Reported suspected: in hospital, no visit due.
    Suspected,
    /// Excluded: observation resumes, a visit due 24 h later.
    Excluded,
}

/// The waits for a visit in an episode: (due, when the wait ended: a visit,
/// a hospital admission, or the episode's stop).
struct Waits {
    ended: Vec<(i64, i64)>,
    /// The wait still open at the end of the marks, if not in hospital.
    due: Option<i64>,
    /// The due instant last set (the open wait's, or the one before the
    /// admission).
    last_due: i64,
}

/// Whole days (rounded up) from `due` to `clock`, for `clock > due`; no
/// instant overflows it.
fn days_missed(clock: i64, due: i64) -> i64 {
    let late = i128::from(clock) - i128::from(due);
    let days = (late + i128::from(DUE_EVERY_MICROS) - 1) / i128::from(DUE_EVERY_MICROS);
    i64::try_from(days).unwrap_or(i64::MAX)
}

impl Episode {
    fn ends_at(&self) -> i64 {
        self.started_at.saturating_add(OBSERVATION_MICROS)
    }

    /// When the episode ended or will end: closed, or its 14 days over.
    fn stop(&self) -> i64 {
        self.closed
            .map_or(self.ends_at(), |(c, _)| c.min(self.ends_at()))
    }

    /// The waits its marks give: a `seen` visit ends one and starts the
    /// next; a suspected report ends one and no visit is due in hospital;
    /// an exclusion after it starts one again. A visit while in hospital
    /// changes nothing due.
    fn waits(&self) -> Waits {
        let first = self.started_at.saturating_add(DUE_EVERY_MICROS);
        let mut w = Waits {
            ended: Vec::with_capacity(self.marks.len() + 1),
            due: Some(first),
            last_due: first,
        };
        for &(t, mark) in &self.marks {
            let next = t.saturating_add(DUE_EVERY_MICROS);
            match (mark, w.due) {
                (Mark::Seen, Some(due)) => {
                    w.ended.push((due, t));
                    w.due = Some(next);
                    w.last_due = next;
                }
                (Mark::Suspected, Some(due)) => {
                    w.ended.push((due, t));
                    w.due = None;
                }
                (Mark::Excluded, None) => {
                    w.due = Some(next);
                    w.last_due = next;
                }
                _ => {}
            }
        }
        w
    }

    fn next_due_at(&self) -> i64 {
        self.waits().last_due
    }

    /// Whether an event at `t` falls in this episode while it is open.
    fn covers(&self, t: i64) -> bool {
        t >= self.started_at && t < self.ends_at() && self.closed.is_none_or(|(c, _)| t < c)
    }

    /// Status and days missed at `clock`. The marks are those up to the
    /// clock (the fold's), so the open wait is the one at the clock.
    fn state(&self, clock: i64) -> (Status, i64) {
        if let Some((_, s)) = self.closed {
            return (s, 0);
        }
        let due = self.waits().due;
        if clock >= self.ends_at() {
            // Lost when the visit was missed as the 14 days elapsed.
            return match due {
                Some(due) if self.ends_at() > due => (Status::LostToFollowUp, 0),
                _ => (Status::Completed, 0),
            };
        }
        match due {
            None => (Status::Hospitalized, 0),
            Some(due) if clock > due => (Status::Overdue, days_missed(clock, due)),
            Some(_) => (Status::Active, 0),
        }
    }

    /// The next instant after `clock` at which [`Episode::state`] changes
    /// by the clock alone (a later mark wakes the person itself).
    fn next_change(&self, clock: i64) -> Option<i64> {
        if self.closed.is_some() || clock >= self.ends_at() {
            return None;
        }
        let Some(due) = self.waits().due else {
            return Some(self.ends_at());
        };
        let next = if clock <= due {
            due.saturating_add(1)
        } else {
            // The next whole day missed.
            due.saturating_add(days_missed(clock, due).saturating_mul(DUE_EVERY_MICROS))
                .saturating_add(1)
        };
        Some(next.min(self.ends_at()))
    }
}

/// A change to follow-up state, as logged for restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Open(Observation),
    Seen,
    Release,
    Confirm,
    /// Reported suspected: in hospital.
    Suspect,
    /// Excluded after being suspected.
    Exclude,
}

impl Change {
    /// Order of changes at the same instant: a visit that opens an episode
    /// is its first sighting too, so open, then see, then close.
    fn rank(self) -> (u8, u8) {
        match self {
            Change::Open(o) => (0, observation_code(o)),
            Change::Seen => (1, 0),
            Change::Release => (2, 0),
            Change::Confirm => (3, 0),
            // Numbered after the first four, which logs already hold.
            Change::Suspect => (4, 0),
            Change::Exclude => (5, 0),
        }
    }
}

/// One change of a person, at event time `t`, from a district's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    t: i64,
    district: u16,
    change: Change,
}

impl Entry {
    /// The total order the fold applies changes in: event time, then a
    /// fixed rank, never arrival.
    fn key(&self) -> (i64, (u8, u8), u16) {
        (self.t, self.change.rank(), self.district)
    }
}

/// A person's changes and the episodes they give at the clock.
#[derive(Debug, Default)]
struct Person {
    /// Every change, in [`Entry::key`] order.
    changes: Vec<Entry>,
    /// The fold of the changes up to the clock.
    episodes: Vec<Episode>,
    /// The ids of this person's overdue alerts in the alert book.
    alerts: Vec<String>,
}

/// The changes of a person never ordered into observation, in arrival
/// order; one visit, the common case, needs no allocation.
#[derive(Debug)]
struct Orphans {
    first: Entry,
    rest: Vec<Entry>,
}

impl Orphans {
    fn into_vec(self) -> Vec<Entry> {
        let mut all = self.rest;
        all.push(self.first);
        all
    }
}

impl Person {
    /// Whether any change could put the person under observation, or
    /// did: only then has the person episodes, counts or alerts to fold.
    fn matters(&self) -> bool {
        !self.episodes.is_empty()
            || !self.alerts.is_empty()
            || self
                .changes
                .iter()
                .any(|c| matches!(c.change, Change::Open(_)))
    }
}

/// Bytes of one logged change.
const RECORD: usize = 8 + 16 + 2 + 1 + 1;

/// An overdue alert an episode's history implies at a clock.
struct Overdue {
    started: i64,
    due: i64,
    district: u16,
    severity: &'static str,
    days: i64,
    raised_at: i64,
    resolved_at: Option<i64>,
}

/// The episodes a person's changes give, applied in [`Entry::key`] order.
fn fold(changes: &[Entry]) -> Vec<Episode> {
    let mut episodes: Vec<Episode> = Vec::new();
    for e in changes {
        // Changes come in time order, so only the newest episode can cover t.
        let open = episodes.last_mut().filter(|ep| ep.covers(e.t));
        match (e.change, open) {
            (Change::Open(o), Some(ep)) => ep.observation = o,
            (Change::Open(o), None) => episodes.push(Episode {
                district: e.district,
                observation: o,
                started_at: e.t,
                last_seen_at: None,
                marks: Vec::new(),
                closed: None,
                counted: (Status::Active, 0),
            }),
            (Change::Seen, Some(ep)) => {
                ep.last_seen_at = Some(e.t);
                ep.marks.push((e.t, Mark::Seen));
            }
            (Change::Suspect, Some(ep)) => ep.marks.push((e.t, Mark::Suspected)),
            (Change::Exclude, Some(ep)) => ep.marks.push((e.t, Mark::Excluded)),
            (Change::Release, Some(ep)) => ep.closed = Some((e.t, Status::Released)),
            (Change::Confirm, Some(ep)) => ep.closed = Some((e.t, Status::Confirmed)),
            (_, None) => {}
        }
    }
    episodes
}

/// The overdue alerts of an episode's whole history up to `clock`: for each
/// due time, `warning` from the first instant one day is missed and
/// `critical` from three, resolved by the visit, the closing or the end of
/// the 14 days that ended the wait. A function of the events and the clock,
/// so a late event gives the alerts an in-order run would have raised.
fn overdue_alerts(ep: &Episode, clock: i64, out: &mut Vec<Overdue>) {
    let stop = ep.stop();
    let Waits {
        ended: mut waits,
        due,
        ..
    } = ep.waits();
    waits.extend(due.map(|due| (due, stop)));
    for (due, end) in waits {
        let end = end.min(stop);
        for (severity, days) in [("warning", 1), ("critical", CRITICAL_DAYS)] {
            let from = due
                .saturating_add((days - 1) * DUE_EVERY_MICROS)
                .saturating_add(1);
            if from < end && from <= clock {
                out.push(Overdue {
                    started: ep.started_at,
                    due,
                    district: ep.district,
                    severity,
                    days,
                    raised_at: from,
                    resolved_at: (end <= clock).then_some(end),
                });
            }
        }
    }
}

/// Adds `by` to the counts an episode state is in.
fn count(
    by_status: &mut HashMap<(u16, Status), i64>,
    by_days: &mut HashMap<(u16, i64), i64>,
    district: u16,
    (status, days): (Status, i64),
    by: i64,
) {
    *by_status.entry((district, status)).or_default() += by;
    if status == Status::Overdue {
        *by_days.entry((district, days.min(4))).or_default() += by;
    }
}

/// The kind of the alerts follow-ups raise.
pub const OVERDUE: &str = "follow_up_overdue";

/// Why a follow-up alert is withdrawn.
const NOT_MISSED: &str = "events that arrived later show this visit was not missed";

/// Every episode, the queue of their next changes, counts, and alerts.
#[derive(Debug, Default)]
pub struct FollowUps {
    persons: HashMap<u128, Person>,
    /// (instant, person) at which a person's state changes next: a change
    /// the clock reaches, a due time passed, the end of an episode.
    queue: BTreeSet<(i64, u128)>,
    clock: i64,
    /// Episodes per (district, status).
    by_status: HashMap<(u16, Status), i64>,
    /// Overdue episodes per (district, days missed capped at 4).
    by_days: HashMap<(u16, i64), i64>,
    pending: Vec<Logged>,
    /// How far behind the clock an event can still count (retention plus
    /// lateness): changes of persons never under observation older than
    /// that can no longer join an episode, so they are forgotten.
    keep_micros: i64,
    /// The week (of the clock) the last forgetting ran.
    forgot_on: i64,
    /// Changes of persons with no isolation order (yet): `seen` visits of
    /// the people screened, most of them.
    orphans: HashMap<u128, Orphans>,
}

/// A change as logged: (event time, person, district, change).
type Logged = (i64, u128, u16, Change);

fn person_of(key: &str) -> u128 {
    u128::from_str_radix(key, 16).unwrap_or_else(|_| xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
}

fn observation_code(o: Observation) -> u8 {
    Observation::ALL.iter().position(|x| *x == o).unwrap_or(0) as u8
}

impl FollowUps {
    /// Empty state with the clock at the beginning of time.
    pub fn new() -> Self {
        FollowUps {
            clock: i64::MIN,
            keep_micros: i64::MAX,
            forgot_on: i64::MIN,
            ..Default::default()
        }
    }

    /// How far behind the clock an event can still count.
    pub fn keep_micros(&self) -> i64 {
        self.keep_micros
    }

    /// Takes out of the state what can no longer change, so that the state
    /// (and its files, and a restart) stays as large as the retention, not
    /// the uptime: every episode that ended before `before` (with the
    /// person's changes up to its end), whose `follow_ups` rows it returns,
    /// and their overdue alerts final before it, which leave the book.
    /// `before` must be at or behind the clock minus the retention and
    /// lateness: an event that could still change them is `too_late`. The
    /// gauges count only the episodes held.
    pub fn archive(
        &mut self,
        before: i64,
        registry: &Registry,
        alerts: &mut AlertBook,
    ) -> arrow::error::Result<RecordBatch> {
        let mut episodes: Vec<(u128, Episode)> = Vec::new();
        // Started-at of each person's last archived episode.
        let mut archived_starts: HashMap<u128, i64> = HashMap::default();
        let mut dropped = false;
        for (p, person) in self.persons.iter_mut() {
            let ended = person
                .episodes
                .iter()
                .take_while(|e| e.stop() < before && e.stop() <= self.clock)
                .count();
            if let Some(last) = ended.checked_sub(1).and_then(|i| person.episodes.get(i)) {
                archived_starts.insert(*p, last.started_at);
            }
            for ep in person.episodes.drain(..ended) {
                count(
                    &mut self.by_status,
                    &mut self.by_days,
                    ep.district,
                    ep.counted,
                    -1,
                );
                episodes.push((*p, ep));
            }
            // A change before the first episode kept (and behind the
            // horizon) belonged to an archived episode or to none: the fold
            // of the rest gives the episodes kept.
            let cut = person
                .episodes
                .first()
                .map_or(before, |e| e.started_at.min(before));
            let behind = person.changes.partition_point(|c| c.t < cut);
            if behind > 0 {
                person.changes.drain(..behind);
                dropped = true;
            }
        }
        episodes.sort_unstable_by_key(|(p, e)| (e.started_at, *p));
        let rows = episodes_batch(episodes.iter().map(|(p, e)| (*p, e)), self.clock, registry)?;

        // A follow-up alert goes with its episode.
        let gone = alerts.release(before, |a| {
            if a.kind != OVERDUE {
                return false;
            }
            let person = a.person_key.as_deref().map(person_of);
            let started = a
                .alert_id
                .split(':')
                .nth(3)
                .and_then(|s| s.parse::<i64>().ok());
            match (person.and_then(|p| archived_starts.get(&p)), started) {
                (Some(last), Some(started)) => started <= *last,
                _ => false,
            }
        });
        for a in &gone {
            let person = a.person_key.as_deref().map(person_of);
            if let Some(person) = person.and_then(|p| self.persons.get_mut(&p)) {
                person.alerts.retain(|id| *id != a.alert_id);
            }
        }
        self.persons.retain(|_, person| {
            !person.changes.is_empty() || !person.episodes.is_empty() || !person.alerts.is_empty()
        });
        if dropped {
            // The log must not bring the archived changes back.
            self.pend_all();
        }
        Ok(rows)
    }

    /// Forgets, once a week of the clock, the changes of persons never
    /// under observation that are older than `keep_micros` behind it: an
    /// isolation order that could take them in would be `too_late` itself.
    pub fn keeping(mut self, keep_micros: i64) -> Self {
        self.keep_micros = keep_micros;
        self
    }

    fn forget_old(&mut self) {
        let week = self.clock.div_euclid(7 * DAY_MICROS);
        if week == self.forgot_on || self.keep_micros == i64::MAX {
            return;
        }
        self.forgot_on = week;
        let before = self.clock.saturating_sub(self.keep_micros);
        self.orphans.retain(|_, o| {
            o.rest.retain(|c| c.t >= before);
            if o.first.t < before {
                match o.rest.pop() {
                    Some(last) => o.first = last,
                    None => return false,
                }
            }
            true
        });
    }

    /// Takes one (deduplicated) event if it concerns follow-ups. It takes
    /// effect when the clock reaches its event time; a late one re-folds
    /// its person's history at once, as if it had arrived in order.
    pub fn add(&mut self, e: &Event, registry: &Registry, alerts: &mut AlertBook) {
        let t = e.event_time;
        let d = e.district;
        match &e.body {
            Body::DoorVisit {
                person_key,
                outcome,
                observation,
                ..
            } => {
                let p = person_of(person_key);
                if matches!(
                    observation,
                    Observation::HomeIsolation
                        | Observation::CentralizedObservation
                        | Observation::MedicalObservation
                ) {
                    self.submit(t, p, d, Change::Open(*observation), registry, alerts);
                }
                if *outcome == Outcome::Seen {
                    self.submit(t, p, d, Change::Seen, registry, alerts);
                }
                if *observation == Observation::Released {
                    self.submit(t, p, d, Change::Release, registry, alerts);
                }
            }
            Body::Checkpoint {
                person_key,
                disposition: Disposition::Isolated,
                ..
            } => self.submit(
                t,
                person_of(person_key),
                d,
                Change::Open(Observation::CentralizedObservation),
                registry,
                alerts,
            ),
            Body::Case {
                person_key, status, ..
            } => {
                let change = match status {
                    CaseStatus::Confirmed => Change::Confirm,
                    CaseStatus::Suspected => Change::Suspect,
                    CaseStatus::Excluded => Change::Exclude,
                    _ => return,
                };
                self.submit(t, person_of(person_key), d, change, registry, alerts)
            }
            _ => {}
        }
    }

    fn submit(
        &mut self,
        t: i64,
        p: u128,
        district: u16,
        change: Change,
        registry: &Registry,
        alerts: &mut AlertBook,
    ) {
        self.pending.push((t, p, district, change));
        self.insert(t, p, district, change);
        if t <= self.clock {
            self.recompute(p, registry, alerts);
        }
    }

    /// Files a change under its person, in order, and wakes the person when
    /// the clock reaches it.
    fn insert(&mut self, t: i64, p: u128, district: u16, change: Change) {
        let entry = Entry {
            t,
            district,
            change,
        };
        // Most visits are of people never under observation: kept apart,
        // compactly, in case a late order takes them in, and nothing to
        // wake for until then. The persons map stays small and hot.
        let person = match self.persons.get_mut(&p) {
            Some(person) => person,
            None if matches!(change, Change::Open(_)) => {
                let mut changes = self
                    .orphans
                    .remove(&p)
                    .map_or_else(Vec::new, Orphans::into_vec);
                changes.sort_by_key(Entry::key);
                self.persons.entry(p).or_insert(Person {
                    changes,
                    ..Person::default()
                })
            }
            None => {
                match self.orphans.get_mut(&p) {
                    Some(o) => o.rest.push(entry),
                    None => {
                        self.orphans.insert(
                            p,
                            Orphans {
                                first: entry,
                                rest: Vec::new(),
                            },
                        );
                    }
                }
                return;
            }
        };
        let at = person.changes.partition_point(|c| c.key() <= entry.key());
        person.changes.insert(at, entry);
        if t > self.clock {
            self.queue.insert((t, p));
        }
    }

    /// Re-folds person `p` at the clock: episodes, the counts they are in,
    /// their alerts, and when to look at them next.
    fn recompute(&mut self, p: u128, registry: &Registry, alerts: &mut AlertBook) {
        let clock = self.clock;
        let Some(person) = self.persons.get_mut(&p) else {
            return;
        };
        if !person.matters() {
            return;
        }
        let reached = person.changes.partition_point(|c| c.t <= clock);
        let mut episodes = fold(&person.changes[..reached]);
        if let Some(next) = person.changes.get(reached) {
            self.queue.insert((next.t, p));
        }
        for ep in &person.episodes {
            count(
                &mut self.by_status,
                &mut self.by_days,
                ep.district,
                ep.counted,
                -1,
            );
        }
        let mut expected = Vec::new();
        for ep in &mut episodes {
            ep.counted = ep.state(clock);
            count(
                &mut self.by_status,
                &mut self.by_days,
                ep.district,
                ep.counted,
                1,
            );
            if let Some(next) = ep.next_change(clock) {
                self.queue.insert((next, p));
            }
            overdue_alerts(ep, clock, &mut expected);
        }
        person.episodes = episodes;
        if expected.is_empty() && person.alerts.is_empty() {
            return;
        }
        let known = std::mem::take(&mut person.alerts);
        person.alerts = settle_alerts(p, known, expected, registry, alerts);
    }

    /// Moves the clock to `clock` (never backwards) and re-folds every
    /// person whose state changes by then. The fold depends only on the
    /// events and the clock, so one step or many give the same state.
    pub fn advance(&mut self, clock: i64, registry: &Registry, alerts: &mut AlertBook) {
        if clock <= self.clock {
            return;
        }
        self.clock = clock;
        let mut due = Vec::new();
        while let Some(&(w, p)) = self.queue.first() {
            if w > clock {
                break;
            }
            self.queue.pop_first();
            due.push(p);
        }
        due.sort_unstable();
        due.dedup();
        for p in due {
            self.recompute(p, registry, alerts);
        }
        self.forget_old();
    }

    /// The clock.
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Episodes per (district index, status).
    pub fn by_status(&self) -> &HashMap<(u16, Status), i64> {
        &self.by_status
    }

    /// Overdue episodes per (district index, days missed, 4 meaning 4+).
    pub fn by_days(&self) -> &HashMap<(u16, i64), i64> {
        &self.by_days
    }

    /// Whether changes arrived since the last checkpoint.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Marks every change held as pending, so the next write is a full copy
    /// of the state that replaces every earlier file.
    pub fn pend_all(&mut self) {
        let persons = self
            .persons
            .iter()
            .flat_map(|(p, person)| person.changes.iter().map(move |e| (p, e)));
        let orphans = self.orphans.iter().flat_map(|(p, o)| {
            std::iter::once(&o.first)
                .chain(&o.rest)
                .map(move |e| (p, e))
        });
        self.pending = persons
            .chain(orphans)
            .map(|(p, e)| (e.t, *p, e.district, e.change))
            .collect();
    }

    /// Writes the changes taken since the last call.
    pub fn write_pending(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.pending.len() * RECORD);
        for (t, p, d, c) in self.pending.drain(..) {
            let (kind, obs) = c.rank();
            buf.extend_from_slice(&t.to_le_bytes());
            buf.extend_from_slice(&p.to_le_bytes());
            buf.extend_from_slice(&d.to_le_bytes());
            buf.push(kind);
            buf.push(obs);
        }
        out.write_all(&buf)
    }

    /// Takes back changes written by [`FollowUps::write_pending`]. Alerts are
    /// not raised again: the caller restores them and then advances the
    /// clock, which folds every person.
    pub fn load(&mut self, input: &mut impl Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        if bytes.len() % RECORD != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "follow-up file length is not a whole number of records",
            ));
        }
        for r in bytes.chunks_exact(RECORD) {
            let mut t = [0u8; 8];
            t.copy_from_slice(&r[..8]);
            let mut p = [0u8; 16];
            p.copy_from_slice(&r[8..24]);
            let mut d = [0u8; 2];
            d.copy_from_slice(&r[24..26]);
            let change = match r[26] {
                0 => Change::Open(
                    Observation::ALL
                        .get(r[27] as usize)
                        .copied()
                        .unwrap_or(Observation::HomeIsolation),
                ),
                1 => Change::Seen,
                2 => Change::Release,
                3 => Change::Confirm,
                4 => Change::Suspect,
                5 => Change::Exclude,
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "follow-up file holds an unknown change",
                    ))
                }
            };
            self.insert(
                i64::from_le_bytes(t),
                u128::from_le_bytes(p),
                u16::from_le_bytes(d),
                change,
            );
        }
        Ok(())
    }

    /// Gives each person back the overdue alerts of `alerts` (restored
    /// from a checkpoint), so a re-fold corrects them instead of raising
    /// them again.
    pub fn link(&mut self, alerts: &[Alert]) {
        for person in self.persons.values_mut() {
            person.alerts.clear();
        }
        for a in alerts.iter().filter(|a| a.kind == OVERDUE) {
            if let Some(p) = a.person_key.as_deref().map(person_of) {
                self.persons
                    .entry(p)
                    .or_default()
                    .alerts
                    .push(a.alert_id.clone());
            }
        }
    }

    /// The `follow_ups` rows at the clock.
    pub fn batch(&self, registry: &Registry) -> arrow::error::Result<RecordBatch> {
        let mut rows: Vec<(u128, &Episode)> = self
            .persons
            .iter()
            .flat_map(|(p, person)| person.episodes.iter().map(move |e| (*p, e)))
            .collect();
        rows.sort_unstable_by_key(|(p, e)| (e.started_at, *p));
        episodes_batch(rows.into_iter(), self.clock, registry)
    }
}

/// Makes person `p`'s overdue alerts those its history implies: raises the
/// new, corrects the resolution of the `known`, and withdraws (as resolved,
/// saying why) those later events show were never true.
fn settle_alerts(
    p: u128,
    known: Vec<String>,
    expected: Vec<Overdue>,
    registry: &Registry,
    alerts: &mut AlertBook,
) -> Vec<String> {
    let person = format!("{p:032x}");
    let mut implied = Vec::with_capacity(expected.len());
    for o in expected {
        let id = format!(
            "follow_up_overdue:{}:{person}:{}:{}",
            o.severity, o.started, o.due
        );
        let district = registry.district(o.district);
        alerts.raise_or_settle(Alert {
            alert_id: id.clone(),
            raised_at: o.raised_at,
            kind: OVERDUE.into(),
            severity: o.severity.into(),
            district: district.district.clone(),
            hospital_id: None,
            person_key: Some(person.clone()),
            detail: format!(
                "follow-up of a person under observation in {} ({}) missed for {} day(s)",
                district.name, district.district, o.days
            ),
            resolved_at: o.resolved_at,
        });
        implied.push(id);
    }
    for id in known.iter().filter(|id| !implied.contains(id)) {
        alerts.withdraw(id, NOT_MISSED);
    }
    // Known first, in the order raised; withdrawn ones stay the person's.
    let mut ids = known;
    for id in implied {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// `follow_ups` rows of `episodes` at `clock`.
fn episodes_batch<'a>(
    episodes: impl ExactSizeIterator<Item = (u128, &'a Episode)>,
    clock: i64,
    registry: &Registry,
) -> arrow::error::Result<RecordBatch> {
    let n = episodes.len();
    let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut started, mut ends, mut seen, mut due) = (ts(), ts(), ts(), ts());
    let mut person = StringBuilder::with_capacity(n, n * 32);
    let mut district = StringBuilder::with_capacity(n, n * 6);
    let mut name = StringBuilder::new();
    let mut observation = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut days = Int64Builder::with_capacity(n);
    for (p, e) in episodes {
        let (s, d) = e.state(clock);
        let dist = registry.district(e.district);
        person.append_value(format!("{p:032x}"));
        district.append_value(&dist.district);
        name.append_value(&dist.name);
        observation.append_value(e.observation.as_str());
        started.append_value(e.started_at);
        ends.append_value(e.ends_at());
        seen.append_option(e.last_seen_at);
        due.append_value(e.next_due_at());
        status.append_value(s.as_str());
        days.append_value(d);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(person.finish()),
        Arc::new(district.finish()),
        Arc::new(name.finish()),
        Arc::new(observation.finish()),
        Arc::new(started.finish()),
        Arc::new(ends.finish()),
        Arc::new(seen.finish()),
        Arc::new(due.finish()),
        Arc::new(status.finish()),
        Arc::new(days.finish()),
    ];
    RecordBatch::try_new(schema(), cols)
}

/// The Arrow schema of `follow_ups`.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("person_key", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("district_name", DataType::Utf8, false),
        Field::new("observation", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("ends_at", ts.clone(), false),
        Field::new("last_seen_at", ts.clone(), true),
        Field::new("next_due_at", ts, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("days_overdue", DataType::Int64, false),
    ]))
}

const TABLE: &str = "follow_ups";

/// The `follow_ups` operator: the episodes, their log, and the rows SQL
/// sees.
pub struct FollowUpEpisodes {
    pub state: FollowUps,
    log: LogSize,
    /// The last rows built for SQL, and when: rebuilding every episode is
    /// not free, so live SQL sees them at most a second old.
    rows: Option<(Instant, RecordBatch)>,
}

impl FollowUpEpisodes {
    /// Keeping the changes of persons never under observation for
    /// `keep_micros` (see [`FollowUps::keeping`]).
    pub fn new(keep_micros: i64) -> Self {
        FollowUpEpisodes {
            state: FollowUps::new().keeping(keep_micros),
            log: LogSize::default(),
            rows: None,
        }
    }
}

impl Operator for FollowUpEpisodes {
    fn tables(&self) -> Vec<Table> {
        vec![Table::held(TABLE, schema())]
    }

    fn add(&mut self, e: &Event, cx: &Cx, alerts: &mut AlertBook) {
        self.state.add(e, cx.registry, alerts);
    }

    fn advance(&mut self, clock: i64, cx: &Cx, alerts: &mut AlertBook) {
        self.state.advance(clock, cx.registry, alerts);
    }

    /// Held whole until archived: nothing becomes final at a checkpoint.
    /// At the end of a replay (`cut` at the end of time) the next view
    /// shows the final clock at once.
    fn take_final(&mut self, cut: i64, _cx: &Cx) -> Result<Vec<Final>> {
        if cut == i64::MAX {
            self.rows = None;
        }
        Ok(Vec::new())
    }

    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        if let Some((at, rows)) = &self.rows {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(vec![(TABLE, rows.clone())]);
            }
        }
        let rows = self.state.batch(cx.registry)?;
        self.rows = Some((Instant::now(), rows.clone()));
        Ok(vec![(TABLE, rows)])
    }

    fn save(&mut self, m: &mut Manifest, state: &mut StateFiles, _cx: &Cx) -> Result<()> {
        state.log(m, TABLE, &mut self.log, &mut self.state)
    }

    /// The changes only: the clock moves, and alerts are linked, once every
    /// operator is restored ([`super::Operators::restore`]).
    fn restore(&mut self, m: &Manifest, read: &ReadFile, _cx: &Cx) -> Result<()> {
        load_state(read, m, TABLE, |f| self.state.load(f))
    }

    /// Episodes that ended before `before`, and their alerts.
    fn archive(&mut self, before: i64, cx: &Cx, alerts: &mut AlertBook) -> Result<Vec<Final>> {
        let archived = self.state.archive(before, cx.registry, alerts)?;
        // The log drops what was archived: a full copy next.
        self.log.forget_copy();
        self.rows = None;
        Ok(Final::archived(TABLE, before, cx, archived))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::WITHDRAWN;
    use paicha_contract::event::{Symptoms, VisitKind};

    /// Follow-ups and the book their alerts go to, as the operators hold
    /// them.
    struct Held {
        f: FollowUps,
        book: AlertBook,
    }

    impl Held {
        fn new() -> Self {
            Held {
                f: FollowUps::new(),
                book: AlertBook::default(),
            }
        }
        fn add(&mut self, e: &Event, reg: &Registry) {
            self.f.add(e, reg, &mut self.book);
        }
        fn advance(&mut self, clock: i64, reg: &Registry) {
            self.book.advance(clock);
            self.f.advance(clock, reg, &mut self.book);
        }
        fn alerts(&self) -> &[Alert] {
            self.book.alerts()
        }
    }

    impl std::ops::Deref for Held {
        type Target = FollowUps;
        fn deref(&self) -> &FollowUps {
            &self.f
        }
    }

    impl std::ops::DerefMut for Held {
        fn deref_mut(&mut self) -> &mut FollowUps {
            &mut self.f
        }
    }

    const H: i64 = HOUR_MICROS;
    const P: &str = "0123456789abcdef0123456789abcdef";

    fn visit(t: i64, outcome: Outcome, observation: Observation) -> Event {
        Event {
            event_id: format!("v{t}"),
            event_time: t,
            district: 3,
            body: Body::DoorVisit {
                grid_id: "g".into(),
                household_key: "h".into(),
                person_key: P.into(),
                visit_kind: VisitKind::FollowUp,
                outcome,
                temperature_c: None,
                symptoms: Symptoms(0),
                observation,
            },
        }
    }

    #[test]
    fn overdue_days_escalate_and_a_visit_resolves_the_alerts() {
        let reg = Registry::builtin().unwrap();
        let mut f = Held::new();
        f.advance(0, &reg);
        f.add(&visit(0, Outcome::Seen, Observation::HomeIsolation), &reg);
        f.advance(24 * H, &reg);
        assert_eq!(f.by_status()[&(3, Status::Active)], 1);
        assert!(f.alerts().is_empty());
        f.advance(24 * H + 1, &reg);
        assert_eq!(f.by_days()[&(3, 1)], 1);
        assert_eq!(f.alerts().len(), 1);
        f.advance(3 * 24 * H + 1, &reg);
        assert_eq!(f.by_days()[&(3, 1)], 0);
        assert_eq!(f.by_days()[&(3, 3)], 1);
        let severities: Vec<_> = f.alerts().iter().map(|a| a.severity.as_str()).collect();
        assert_eq!(severities, ["warning", "critical"]);
        // A visit seen on day 2 arrives late: both alerts resolve, and the
        // person is due again 24 h after it.
        f.add(
            &visit(
                2 * 24 * H + 12 * H,
                Outcome::Seen,
                Observation::HomeIsolation,
            ),
            &reg,
        );
        assert!(f.alerts().iter().all(|a| a.resolved_at.is_some()));
        assert_eq!(f.by_status()[&(3, Status::Active)], 1);
        // The 14 days end with the visits missed since day 3: lost.
        f.advance(14 * 24 * H, &reg);
        assert_eq!(f.by_status()[&(3, Status::LostToFollowUp)], 1);
        let mut log = Vec::new();
        f.write_pending(&mut log).unwrap();
        let mut again = Held::new();
        again.load(&mut log.as_slice()).unwrap();
        again.advance(14 * 24 * H, &reg);
        assert_eq!(again.by_status()[&(3, Status::LostToFollowUp)], 1);
        assert_eq!(again.batch(&reg).unwrap().num_rows(), 1);
    }
    fn case(t: i64, status: CaseStatus) -> Event {
        Event {
            event_id: format!("c{t}"),
            event_time: t,
            district: 3,
            body: Body::Case {
                person_key: P.into(),
                status,
                hospital: None,
            },
        }
    }

    /// The rows and the alerts that stand (not withdrawn), comparable.
    fn outcome(f: &Held, reg: &Registry) -> (RecordBatch, Vec<Alert>) {
        let rows = f.batch(reg).unwrap();
        let mut alerts: Vec<Alert> = f
            .alerts()
            .iter()
            .filter(|a| !a.detail.contains(WITHDRAWN))
            .cloned()
            .collect();
        alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        (rows, alerts)
    }

    #[test]
    fn a_screening_visit_synced_days_late_opens_the_one_episode() {
        let reg = Registry::builtin().unwrap();
        let opening = visit(0, Outcome::Seen, Observation::HomeIsolation);
        let later: Vec<Event> = (1..=4)
            .map(|d| visit(d * 24 * H - H, Outcome::Seen, Observation::HomeIsolation))
            .collect();
        let clock = 4 * 24 * H;

        let mut in_order = Held::new();
        for e in std::iter::once(&opening).chain(&later) {
            in_order.add(e, &reg);
        }
        in_order.advance(clock, &reg);

        // Live: the follow-up visits first (each opens an episode of its own
        // then), the screening visit three days late.
        let mut live = Held::new();
        for e in &later {
            live.add(e, &reg);
            live.advance(e.event_time, &reg);
        }
        live.advance(clock, &reg);
        live.add(&opening, &reg);

        assert_eq!(live.batch(&reg).unwrap().num_rows(), 1);
        assert_eq!(live.by_status()[&(3, Status::Active)], 1);
        assert_eq!(outcome(&live, &reg), outcome(&in_order, &reg));

        // A restart from the logged changes agrees with the live view.
        let mut log = Vec::new();
        live.write_pending(&mut log).unwrap();
        let mut again = Held::new();
        again.load(&mut log.as_slice()).unwrap();
        again.book.restore_alerts(live.alerts().to_vec());
        let Held { f, book } = &mut again;
        f.link(book.alerts());
        again.advance(clock, &reg);
        assert_eq!(outcome(&again, &reg), outcome(&live, &reg));
        assert!(again.book.take_news().is_empty());
    }

    #[test]
    fn an_alert_a_late_visit_disproves_is_withdrawn_with_the_reason() {
        let reg = Registry::builtin().unwrap();
        let mut f = Held::new();
        f.add(&visit(0, Outcome::Seen, Observation::HomeIsolation), &reg);
        f.advance(3 * 24 * H + 1, &reg);
        assert_eq!(f.alerts().len(), 2);
        // The visits of day 1 and day 2 were made; they arrive now.
        f.add(&visit(20 * H, Outcome::Seen, Observation::None), &reg);
        f.add(&visit(40 * H, Outcome::Seen, Observation::None), &reg);
        // The first two alerts, and the one the first late visit implied
        // until the second arrived, are withdrawn; one wait stands: the
        // one after the visit of hour 40.
        let (withdrawn, standing): (Vec<&Alert>, Vec<&Alert>) = f
            .alerts()
            .iter()
            .partition(|a| a.detail.contains(WITHDRAWN));
        assert_eq!(withdrawn.len(), 3, "{:#?}", f.alerts());
        assert!(withdrawn.iter().all(|a| a.resolved_at.is_some()));
        assert!(withdrawn[0].detail.ends_with(NOT_MISSED));
        assert_eq!(standing.len(), 1, "{standing:#?}");
        assert!(standing[0].alert_id.ends_with(&format!(":{}", 64 * H)));
        assert_eq!(standing[0].raised_at, 64 * H + 1);
        // Only the wait after the last visit is overdue.
        assert_eq!(f.by_days()[&(3, 1)], 1);
    }

    #[test]
    fn in_hospital_no_visit_is_due_and_a_missed_end_is_lost() {
        let reg = Registry::builtin().unwrap();
        let mut f = Held::new();
        f.add(&visit(0, Outcome::Seen, Observation::HomeIsolation), &reg);
        f.add(&case(20 * H, CaseStatus::Suspected), &reg);
        f.advance(5 * 24 * H, &reg);
        assert_eq!(f.by_status()[&(3, Status::Hospitalized)], 1);
        assert!(f.alerts().is_empty(), "{:?}", f.alerts());
        // Excluded on day 6: a visit is due 24 h later, and missed.
        f.add(&case(6 * 24 * H, CaseStatus::Excluded), &reg);
        f.advance(7 * 24 * H + 1, &reg);
        assert_eq!(f.by_days()[&(3, 1)], 1);
        assert_eq!(f.alerts().len(), 1);
        // Still missed when the 14 days elapse: lost, not completed.
        f.advance(14 * 24 * H, &reg);
        assert_eq!(f.by_status()[&(3, Status::LostToFollowUp)], 1);
        assert_eq!(f.by_status().get(&(3, Status::Completed)), None);
        let (rows, _) = outcome(&f, &reg);
        let status = rows
            .column_by_name("status")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
            .map(|c| c.value(0).to_string());
        assert_eq!(status.as_deref(), Some("lost_to_follow_up"));
    }

    /// Every order of one person's history, with the clock moving between
    /// arrivals, gives the in-order rows and standing alerts.
    #[test]
    fn any_arrival_order_gives_the_in_order_result() {
        let reg = Registry::builtin().unwrap();
        let events = vec![
            visit(0, Outcome::Seen, Observation::HomeIsolation),
            visit(30 * H, Outcome::Seen, Observation::None),
            visit(100 * H, Outcome::NotHome, Observation::None),
            visit(130 * H, Outcome::Seen, Observation::HomeIsolation),
            case(200 * H, CaseStatus::Confirmed),
            visit(220 * H, Outcome::Seen, Observation::MedicalObservation),
            case(240 * H, CaseStatus::Suspected),
            visit(250 * H, Outcome::Seen, Observation::None),
            case(270 * H, CaseStatus::Excluded),
            visit(300 * H, Outcome::Seen, Observation::None),
            visit(400 * H, Outcome::Seen, Observation::Released),
            visit(500 * H, Outcome::Seen, Observation::HomeIsolation),
        ];
        let clock = 900 * H;
        let mut in_order = Held::new();
        for e in &events {
            in_order.add(e, &reg);
            in_order.advance(e.event_time, &reg);
        }
        in_order.advance(clock, &reg);
        let want = outcome(&in_order, &reg);
        assert_eq!(in_order.batch(&reg).unwrap().num_rows(), 3);

        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut order = events.clone();
            for i in (1..order.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            let mut f = Held::new();
            for e in &order {
                f.add(e, &reg);
                // The clock runs ahead of late events, as live.
                f.advance(e.event_time + 50 * H, &reg);
            }
            f.advance(clock, &reg);
            assert_eq!(outcome(&f, &reg), want);
        }
    }
}

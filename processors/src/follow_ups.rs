//! `follow_ups`: every observation episode and whether its daily visit is
//! overdue by the pipeline clock; `follow_up_overdue` alerts.
//!
//! An episode opens with a door visit whose `observation` is
//! `home_isolation`, `centralized_observation` or `medical_observation`, or
//! a checkpoint `isolated` disposition (as `centralized_observation`), for a
//! person not already in an open episode at that time. It lasts 14 days,
//! unless a visit says `released` or a `confirmed` case event arrives for the
//! person. A `seen` visit inside the episode moves `next_due_at` to 24 h
//! after it. A visit saying `none` changes nothing: it is what a screening
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
use paicha_ingest::event::{Body, CaseStatus, Disposition, Event, Observation, Outcome};
use paicha_ingest::registry::Registry;

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
    /// 14 days elapsed.
    Completed,
    /// Released early.
    Released,
    /// Ended by a confirmed case.
    Confirmed,
}

impl Status {
    /// Every status, in order.
    pub const ALL: [Status; 5] = [
        Status::Active,
        Status::Overdue,
        Status::Completed,
        Status::Released,
        Status::Confirmed,
    ];

    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Overdue => "overdue",
            Status::Completed => "completed",
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
    /// Released or confirmed, and when.
    closed: Option<(i64, Status)>,
    /// What the counts currently count it as: status and days missed.
    counted: (Status, i64),
}

impl Episode {
    fn ends_at(&self) -> i64 {
        self.started_at + OBSERVATION_MICROS
    }

    fn next_due_at(&self) -> i64 {
        self.last_seen_at.unwrap_or(self.started_at) + DUE_EVERY_MICROS
    }

    /// Whether an event at `t` falls in this episode while it is open.
    fn covers(&self, t: i64) -> bool {
        t >= self.started_at && t < self.ends_at() && self.closed.is_none_or(|(c, _)| t < c)
    }

    /// Status and days missed at `clock`.
    fn state(&self, clock: i64) -> (Status, i64) {
        if let Some((_, s)) = self.closed {
            return (s, 0);
        }
        if clock >= self.ends_at() {
            return (Status::Completed, 0);
        }
        let due = self.next_due_at();
        if clock > due {
            let late = clock - due;
            return (
                Status::Overdue,
                (late + DUE_EVERY_MICROS - 1) / DUE_EVERY_MICROS,
            );
        }
        (Status::Active, 0)
    }

    /// The next instant after `clock` at which [`Episode::state`] changes.
    fn next_change(&self, clock: i64) -> Option<i64> {
        if self.closed.is_some() || clock >= self.ends_at() {
            return None;
        }
        let due = self.next_due_at();
        let next = if clock <= due {
            due + 1
        } else {
            // The next whole day missed.
            let days = (clock - due + DUE_EVERY_MICROS - 1) / DUE_EVERY_MICROS;
            due + days * DUE_EVERY_MICROS + 1
        };
        Some(next.min(self.ends_at()))
    }
}

/// An alert raised: a row of the `alerts` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// Stable id: the same condition always gets the same id.
    pub alert_id: String,
    /// Pipeline clock when raised, µs.
    pub raised_at: i64,
    /// `follow_up_overdue`, `bed_utilization`, `ears_c1`…
    pub kind: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// District code.
    pub district: String,
    /// Hospital, for bed alerts.
    pub hospital_id: Option<String>,
    /// Pseudonym, for follow-up alerts.
    pub person_key: Option<String>,
    /// For people.
    pub detail: String,
    /// Pipeline clock when resolved, µs.
    pub resolved_at: Option<i64>,
}

/// A change to follow-up state, as logged for restarts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Open(Observation),
    Seen,
    Release,
    Confirm,
}

/// Bytes of one logged change.
const RECORD: usize = 8 + 16 + 2 + 1 + 1;

/// Every episode, the queue of their next changes, counts, and alerts.
#[derive(Debug, Default)]
pub struct FollowUps {
    persons: HashMap<u128, Vec<Episode>>,
    /// (instant, person, episode index) of the next state change.
    queue: BTreeSet<(i64, u128, u32)>,
    clock: i64,
    /// Episodes per (district, status).
    by_status: HashMap<(u16, Status), i64>,
    /// Overdue episodes per (district, days missed capped at 4).
    by_days: HashMap<(u16, i64), i64>,
    alerts: Vec<Alert>,
    alert_index: HashMap<String, usize>,
    /// Overdue alerts of each episode (person, started_at), by index, so a
    /// visit finds its episode's alerts without looking at all of them.
    episode_alerts: HashMap<(u128, i64), Vec<(usize, i64)>>,
    /// Alerts raised or resolved since last taken, for the alerts topic.
    news: Vec<Alert>,
    /// Changes not yet applied, by (event time, arrival): applied in
    /// event-time order as the clock reaches them, so a confirmation and a
    /// visit from different topics take effect in the order they happened.
    buffer: std::collections::BTreeMap<(i64, u64), (u128, u16, Change)>,
    seq: u64,
    pending: Vec<(i64, u128, u16, Change)>,
    alerts_changed: bool,
}

fn person_of(key: &str) -> u128 {
    u128::from_str_radix(key, 16).unwrap_or_else(|_| xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
}

/// (person, started_at, due) of a follow-up alert id
/// `follow_up_overdue:SEVERITY:PERSON:STARTED:DUE`.
fn episode_of(id: &str) -> Option<(u128, i64, i64)> {
    let mut parts = id.split(':').skip(2);
    let person = u128::from_str_radix(parts.next()?, 16).ok()?;
    let started = parts.next()?.parse().ok()?;
    let due = parts.next()?.parse().ok()?;
    Some((person, started, due))
}

fn observation_code(o: Observation) -> u8 {
    Observation::ALL.iter().position(|x| *x == o).unwrap_or(0) as u8
}

impl FollowUps {
    /// Empty state with the clock at the beginning of time.
    pub fn new() -> Self {
        FollowUps {
            clock: i64::MIN,
            ..Default::default()
        }
    }

    /// Takes one (deduplicated) event if it concerns follow-ups. It takes
    /// effect when the clock reaches its event time (at once if the clock
    /// has passed it already: a late event).
    pub fn add(&mut self, e: &Event, registry: &Registry) {
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
                // The visit that opens an episode is its first sighting too:
                // open first, then see.
                if matches!(
                    observation,
                    Observation::HomeIsolation
                        | Observation::CentralizedObservation
                        | Observation::MedicalObservation
                ) {
                    self.submit(t, p, d, Change::Open(*observation), registry);
                }
                if *outcome == Outcome::Seen {
                    self.submit(t, p, d, Change::Seen, registry);
                }
                if *observation == Observation::Released {
                    self.submit(t, p, d, Change::Release, registry);
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
            ),
            Body::Case {
                person_key,
                status: CaseStatus::Confirmed,
                ..
            } => self.submit(t, person_of(person_key), d, Change::Confirm, registry),
            _ => {}
        }
    }

    fn submit(&mut self, t: i64, p: u128, district: u16, change: Change, registry: &Registry) {
        self.pending.push((t, p, district, change));
        if t <= self.clock {
            self.apply(t, p, district, change, registry);
        } else {
            self.buffer.insert((t, self.seq), (p, district, change));
            self.seq += 1;
        }
    }

    fn apply(&mut self, t: i64, p: u128, district: u16, change: Change, registry: &Registry) {
        let episodes = self.persons.get(&p);
        let open = episodes.and_then(|eps| eps.iter().rposition(|ep| ep.covers(t)));
        // Only changes that touch an episode are kept (and logged): a seen
        // visit of someone never observed is not follow-up state.
        match (change, open) {
            (Change::Open(o), Some(i)) => {
                if let Some(ep) = self.persons.get_mut(&p).and_then(|e| e.get_mut(i)) {
                    ep.observation = o;
                }
            }
            (Change::Open(o), None) => {
                let counted = (Status::Active, 0);
                let eps = self.persons.entry(p).or_default();
                eps.push(Episode {
                    district,
                    observation: o,
                    started_at: t,
                    last_seen_at: None,
                    closed: None,
                    counted,
                });
                *self
                    .by_status
                    .entry((district, Status::Active))
                    .or_default() += 1;
                let i = eps.len() - 1;
                self.refresh(p, i, registry);
            }
            (Change::Seen, Some(i)) => {
                let mut due = None;
                if let Some(ep) = self.persons.get_mut(&p).and_then(|e| e.get_mut(i)) {
                    ep.last_seen_at = Some(ep.last_seen_at.map_or(t, |s| s.max(t)));
                    due = Some(ep.next_due_at());
                }
                // Alerts about a due time this visit moved past are over;
                // a visit that changes nothing resolves nothing.
                if let Some(due) = due {
                    self.resolve_overdue(p, i, due);
                }
                self.refresh(p, i, registry);
            }
            (Change::Release | Change::Confirm, Some(i)) => {
                let status = if change == Change::Release {
                    Status::Released
                } else {
                    Status::Confirmed
                };
                if let Some(ep) = self.persons.get_mut(&p).and_then(|e| e.get_mut(i)) {
                    ep.closed = Some((t, status));
                }
                self.resolve_overdue(p, i, i64::MAX);
                self.refresh(p, i, registry);
            }
            (_, None) => {}
        }
    }

    /// Recounts episode `i` of `p` at the clock, raises its alerts, and
    /// queues its next change.
    fn refresh(&mut self, p: u128, i: usize, registry: &Registry) {
        let clock = self.clock;
        let Some(ep) = self.persons.get_mut(&p).and_then(|e| e.get_mut(i)) else {
            return;
        };
        let now = ep.state(clock);
        let before = ep.counted;
        ep.counted = now;
        let (district, started, due) = (ep.district, ep.started_at, ep.next_due_at());
        if let Some(next) = ep.next_change(clock) {
            self.queue.insert((next, p, i as u32));
        }
        if now.0 == Status::Completed && before.0 != Status::Completed {
            self.resolve_overdue(p, i, i64::MAX);
        }
        if before != now {
            *self.by_status.entry((district, before.0)).or_default() -= 1;
            *self.by_status.entry((district, now.0)).or_default() += 1;
            if before.0 == Status::Overdue {
                *self.by_days.entry((district, before.1.min(4))).or_default() -= 1;
            }
            if now.0 == Status::Overdue {
                *self.by_days.entry((district, now.1.min(4))).or_default() += 1;
            }
        }
        if now.0 == Status::Overdue {
            let code = &registry.district(district).district;
            let person = format!("{p:032x}");
            for (severity, days) in [("warning", 1), ("critical", CRITICAL_DAYS)] {
                if now.1 < days {
                    continue;
                }
                let id = format!("follow_up_overdue:{severity}:{person}:{started}:{due}");
                if self.alert_index.contains_key(&id) {
                    continue;
                }
                let alert = Alert {
                    alert_id: id.clone(),
                    raised_at: clock,
                    kind: "follow_up_overdue".into(),
                    severity: severity.into(),
                    district: code.clone(),
                    hospital_id: None,
                    person_key: Some(person.clone()),
                    detail: format!(
                        "follow-up of a person under observation in {} ({code}) missed for {} day(s)",
                        registry.district(district).name,
                        now.1
                    ),
                    resolved_at: None,
                };
                self.push_alert(alert, Some((p, started, due)));
            }
        }
    }

    /// Resolves the open overdue alerts of an episode about a due time
    /// before `due_before` (a visit moved it, or the episode ended).
    fn resolve_overdue(&mut self, p: u128, i: usize, due_before: i64) {
        let Some(ep) = self.persons.get(&p).and_then(|e| e.get(i)) else {
            return;
        };
        let Some(ids) = self.episode_alerts.get(&(p, ep.started_at)) else {
            return;
        };
        let clock = self.clock;
        for &(k, due) in ids {
            let Some(a) = self.alerts.get_mut(k) else {
                continue;
            };
            if a.resolved_at.is_none() && due < due_before {
                a.resolved_at = Some(a.raised_at.max(clock));
                self.news.push(a.clone());
                self.alerts_changed = true;
            }
        }
    }

    /// Moves the clock to `clock` (never backwards): applies the changes it
    /// has reached and updates the episodes whose state changes by then, all
    /// in event-time order, so each alert is raised at the instant its
    /// condition became true.
    pub fn advance(&mut self, clock: i64, registry: &Registry) {
        if clock <= self.clock {
            return;
        }
        loop {
            let change = self.buffer.first_key_value().map(|(k, _)| k.0);
            let wake = self.queue.first().map(|w| w.0);
            match (change, wake) {
                (Some(t), w) if t <= clock && w.is_none_or(|w| t <= w) => {
                    if let Some(((t, _), (p, d, c))) = self.buffer.pop_first() {
                        self.clock = self.clock.max(t);
                        self.apply(t, p, d, c, registry);
                    }
                }
                (_, Some(w)) if w <= clock => {
                    if let Some((w, p, i)) = self.queue.pop_first() {
                        self.clock = self.clock.max(w);
                        self.refresh(p, i as usize, registry);
                    }
                }
                _ => break,
            }
        }
        self.clock = clock;
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

    /// Every alert raised, in order.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Raises `alert` unless its id was raised before; true if new.
    pub fn raise(&mut self, alert: Alert) -> bool {
        if self.alert_index.contains_key(&alert.alert_id) {
            return false;
        }
        self.push_alert(alert, None);
        true
    }

    /// Records a new alert; a follow-up alert also under its episode
    /// (person, started_at) with the due time it is about, so a visit finds
    /// the alerts it ends without looking at all of them.
    fn push_alert(&mut self, alert: Alert, episode: Option<(u128, i64, i64)>) {
        let k = self.alerts.len();
        if let Some((p, started, due)) = episode {
            self.episode_alerts
                .entry((p, started))
                .or_default()
                .push((k, due));
        }
        self.alert_index.insert(alert.alert_id.clone(), k);
        self.news.push(alert.clone());
        self.alerts.push(alert);
        self.alerts_changed = true;
    }

    /// Resolves the alert `id` at the clock if it is open.
    pub fn resolve(&mut self, id: &str) {
        let clock = self.clock;
        if let Some(a) = self
            .alert_index
            .get(id)
            .and_then(|i| self.alerts.get_mut(*i))
        {
            if a.resolved_at.is_none() {
                a.resolved_at = Some(a.raised_at.max(clock));
                self.news.push(a.clone());
                self.alerts_changed = true;
            }
        }
    }

    /// Alerts raised or resolved since the last call.
    pub fn take_news(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.news)
    }

    /// Whether an alert was raised or resolved since the last call.
    pub fn take_alerts_changed(&mut self) -> bool {
        std::mem::replace(&mut self.alerts_changed, false)
    }

    /// Whether changes arrived since the last checkpoint.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the changes applied since the last call.
    pub fn write_pending(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.pending.len() * RECORD);
        for (t, p, d, c) in self.pending.drain(..) {
            let (kind, obs) = match c {
                Change::Open(o) => (0u8, observation_code(o)),
                Change::Seen => (1, 0),
                Change::Release => (2, 0),
                Change::Confirm => (3, 0),
            };
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
    /// clock.
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
                _ => Change::Confirm,
            };
            // Back into the queue of changes: the caller advances the clock
            // to the checkpoint's, which applies them in event-time order.
            self.buffer.insert(
                (i64::from_le_bytes(t), self.seq),
                (u128::from_le_bytes(p), u16::from_le_bytes(d), change),
            );
            self.seq += 1;
        }
        Ok(())
    }

    /// Restores alerts saved with a checkpoint, so a restart never raises
    /// one twice.
    pub fn restore_alerts(&mut self, alerts: Vec<Alert>) {
        self.alerts.clear();
        self.alert_index.clear();
        self.episode_alerts.clear();
        for a in alerts {
            let episode = (a.kind == "follow_up_overdue")
                .then(|| episode_of(&a.alert_id))
                .flatten();
            self.push_alert(a, episode);
        }
        self.news.clear();
        self.alerts_changed = false;
    }

    /// The `follow_ups` rows at the clock.
    pub fn batch(&self, registry: &Registry) -> arrow::error::Result<RecordBatch> {
        let n: usize = self.persons.values().map(Vec::len).sum();
        let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let (mut started, mut ends, mut seen, mut due) = (ts(), ts(), ts(), ts());
        let mut person = StringBuilder::with_capacity(n, n * 32);
        let mut district = StringBuilder::with_capacity(n, n * 6);
        let mut name = StringBuilder::new();
        let mut observation = StringBuilder::new();
        let mut status = StringBuilder::new();
        let mut days = Int64Builder::with_capacity(n);
        let mut rows: Vec<(u128, &Episode)> = self
            .persons
            .iter()
            .flat_map(|(p, eps)| eps.iter().map(move |e| (*p, e)))
            .collect();
        rows.sort_unstable_by_key(|(p, e)| (e.started_at, *p));
        for (p, e) in rows {
            let (s, d) = e.state(self.clock);
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

/// The Arrow schema of `alerts`.
pub fn alerts_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("raised_at", ts.clone(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("hospital_id", DataType::Utf8, true),
        Field::new("person_key", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
        Field::new("resolved_at", ts, true),
    ]))
}

/// Builds `alerts` rows.
pub fn alerts_batch(alerts: &[Alert]) -> arrow::error::Result<RecordBatch> {
    let n = alerts.len();
    let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut raised, mut resolved) = (ts(), ts());
    let mut id = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut severity = StringBuilder::new();
    let mut district = StringBuilder::new();
    let mut hospital = StringBuilder::new();
    let mut person = StringBuilder::new();
    let mut detail = StringBuilder::new();
    for a in alerts {
        id.append_value(&a.alert_id);
        raised.append_value(a.raised_at);
        kind.append_value(&a.kind);
        severity.append_value(&a.severity);
        district.append_value(&a.district);
        hospital.append_option(a.hospital_id.as_deref());
        person.append_option(a.person_key.as_deref());
        detail.append_value(&a.detail);
        resolved.append_option(a.resolved_at);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(raised.finish()),
        Arc::new(kind.finish()),
        Arc::new(severity.finish()),
        Arc::new(district.finish()),
        Arc::new(hospital.finish()),
        Arc::new(person.finish()),
        Arc::new(detail.finish()),
        Arc::new(resolved.finish()),
    ];
    RecordBatch::try_new(alerts_schema(), cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paicha_ingest::event::{Symptoms, VisitKind};

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
        let mut f = FollowUps::new();
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
        // The 14 days end.
        f.advance(14 * 24 * H, &reg);
        assert_eq!(f.by_status()[&(3, Status::Completed)], 1);
        let mut log = Vec::new();
        f.write_pending(&mut log).unwrap();
        let mut again = FollowUps::new();
        again.load(&mut log.as_slice()).unwrap();
        again.advance(14 * 24 * H, &reg);
        assert_eq!(again.by_status()[&(3, Status::Completed)], 1);
        assert_eq!(again.batch(&reg).unwrap().num_rows(), 1);
    }
}

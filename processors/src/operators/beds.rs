//! `bed_occupancy`: the state of every hospital at the end of each window —
//! capacity, occupied beds, admissions and discharges in the window, and the
//! anomalies (a repeated admission, a discharge of someone not admitted).
//!
//! Occupancy at a window's end depends on every earlier bed event of the
//! hospital in event-time order, so a late event changes the state of every
//! later window, not just its own. The processor therefore keeps each
//! hospital's bed events (few: admissions, not checks) and recomputes the
//! hospital's rows from them by one sweep. What was written is remembered per
//! window; a checkpoint writes, for each window now final, the difference
//! between the recomputed row and what was written before — the full row the
//! first time, a correction row after a late event — and the view sums them.
//!
//! Rules (documented in `docs/semantics.md`):
//! - events of a hospital are applied in event-time order; at the same
//!   instant `capacity` first, then admissions, then discharges, then by a
//!   hash of the event id, so arrival order never matters;
//! - `beds_total` is the latest `capacity` before the window's end, or the
//!   registry's `beds_total` before any;
//! - rows are dense: one per window from the hospital's first bed event to
//!   the pipeline clock, so a quiet hour still shows the occupancy.

use std::collections::BTreeMap;

use foldhash::{HashSet, HashSetExt};
use std::io::{Read, Write};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{BedAction, Body, Event};
use paicha_contract::registry::Registry;
use xxhash_rust::xxh3::xxh3_128;

use crate::operators::alerts::Alert;
use crate::operators::{
    by_day, load_state, AlertBook, Cx, Final, LogSize, Operator, ReadFile, StateFiles,
};
use crate::store::Manifest;
use crate::tables::{Kind, Table, View};
use crate::time::Windows;
use anyhow::Result;

/// Count columns of stored `bed_occupancy` rows, in order. `utilization` is
/// computed by the view from the folded `occupied` and `beds_total`.
pub const COUNT_COLUMNS: [&str; 6] = [
    "beds_total",
    "occupied",
    "admissions",
    "discharges",
    "repeat_admissions",
    "unmatched_discharges",
];

/// The state of one hospital at the end of one window, in the order of
/// [`COUNT_COLUMNS`].
pub type State = [i64; 6];

/// One stored row: window start, hospital index, state (or correction).
pub type Row = (i64, u16, State);

/// Bytes of one record of a bed-event file.
const RECORD: usize = 8 + 8 + 2 + 1 + 16;
/// Record kinds past the bed actions (0–2): a hospital's floor (time: the
/// window boundary, seq: its last event's time, value: beds), a person
/// inside at the floor, the run above the alert share open at the floor
/// (time: its first window, seq: raised at, value: utilization's bits).
const FLOOR: u8 = 3;
const INSIDE: u8 = 4;
const OPEN_RUN: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Admit(u128),
    Discharge(u128),
    Capacity(i64),
}

/// The order of bed events at the same instant: by action, then by a hash
/// of the event id (data directories written before kept an arrival number
/// here, which orders the same way within one run).
fn tie(act: Act, event_id: &str) -> u64 {
    let rank: u64 = match act {
        Act::Capacity(_) => 0,
        Act::Admit(_) => 1,
        Act::Discharge(_) => 2,
    };
    (rank << 62) | (xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()) >> 2)
}

#[derive(Debug, Default)]
struct Hospital {
    /// Bed events by (event time, [`tie`]), from the floor on.
    events: BTreeMap<(i64, u64), Act>,
    /// The row of each window as written so far (sum of rows written).
    written: BTreeMap<i64, State>,
    /// The state at the start of the first window kept: the events before
    /// it, and its earlier windows, are gone.
    floor: Option<Floor>,
}

/// A run of windows above the alert share: its first window's start, the
/// instant it was first above, the utilization then.
type OpenRun = (i64, i64, f64);

/// What the events before a window boundary left: everything a sweep from
/// there needs, so a sweep never goes back past the retention.
#[derive(Debug, Clone, Default)]
struct Floor {
    /// The window boundary.
    at: i64,
    beds: i64,
    inside: HashSet<u128>,
    /// The time of the last event before `at` (for the quiet rule).
    last: i64,
    /// A run above the alert share still open at `at`.
    open: Option<OpenRun>,
}

/// Where a sweep stands after its last window.
struct Swept {
    rows: Vec<(i64, State)>,
    beds: i64,
    inside: HashSet<u128>,
    last: i64,
}

/// How long a hospital's rows go on after its last bed event. A hospital
/// reports daily; one silent for longer has stopped reporting (or an event
/// decades off in time arrived), and a row for every hour of the gap would
/// be noise, or millions of rows. Its rows resume with its next bed event.
pub const QUIET_MICROS: i64 = 30 * crate::time::DAY_MICROS;

/// Bed events per hospital and the rows written from them.
#[derive(Debug)]
pub struct Beds {
    windows: Windows,
    hospitals: BTreeMap<u16, Hospital>,
    pending: Vec<(i64, u64, u16, Act)>,
    /// Whether the next write is a full copy, with the floors.
    floors_pending: bool,
    final_until: i64,
}

impl Beds {
    /// Empty state for windows of the given size.
    pub fn new(windows: Windows) -> Self {
        Beds {
            windows,
            hospitals: BTreeMap::new(),
            pending: Vec::new(),
            floors_pending: false,
            final_until: i64::MIN,
        }
    }

    /// Records one (deduplicated) event if it is a bed event.
    pub fn add(&mut self, e: &Event) {
        let Body::Bed {
            hospital,
            action,
            person_key,
            beds_total,
        } = &e.body
        else {
            return;
        };
        let person = || xxh3_128(person_key.as_deref().unwrap_or("").as_bytes());
        let act = match action {
            BedAction::Admit => Act::Admit(person()),
            BedAction::Discharge => Act::Discharge(person()),
            BedAction::Capacity => Act::Capacity(beds_total.unwrap_or(0)),
        };
        let mut seq = tie(act, &e.event_id);
        let h = self.hospitals.entry(*hospital).or_default();
        if h.floor.as_ref().is_some_and(|f| e.event_time < f.at) {
            // Behind the retention: `too_late` before it gets here.
            return;
        }
        let events = &h.events;
        while events.contains_key(&(e.event_time, seq)) {
            seq = seq.wrapping_add(1);
        }
        self.insert(e.event_time, seq, *hospital, act);
        self.pending.push((e.event_time, seq, *hospital, act));
    }

    fn insert(&mut self, time: i64, seq: u64, hospital: u16, act: Act) {
        self.hospitals
            .entry(hospital)
            .or_default()
            .events
            .insert((time, seq), act);
    }

    /// The state of `h` at the end of each window from its floor (or its
    /// first event's window) through the windows ending at or before
    /// `until`.
    fn sweep(&self, h: &Hospital, registry_beds: i64, until: i64) -> Vec<(i64, State)> {
        self.sweep_from(h, registry_beds, until).rows
    }

    fn sweep_from(&self, h: &Hospital, registry_beds: i64, until: i64) -> Swept {
        let first = h.events.keys().next().map(|(t, _)| *t);
        let (mut beds, mut inside, mut last, mut start) = match (&h.floor, first) {
            (Some(f), _) => (f.beds, f.inside.clone(), f.last, f.at),
            (None, Some(first)) => (
                registry_beds,
                HashSet::new(),
                first,
                self.windows.start(first),
            ),
            (None, None) => (registry_beds, HashSet::new(), i64::MIN, i64::MAX),
        };
        let mut out = Vec::new();
        let mut events = h.events.iter().peekable();
        while start != i64::MAX && self.windows.end(start) <= until {
            let end = self.windows.end(start);
            let mut s: State = [0; 6];
            while let Some(((t, _), act)) = events.peek() {
                if *t >= end {
                    break;
                }
                last = *t;
                match **act {
                    Act::Capacity(n) => beds = n,
                    Act::Admit(p) if inside.insert(p) => s[2] += 1,
                    Act::Admit(_) => s[4] += 1,
                    Act::Discharge(p) if inside.remove(&p) => s[3] += 1,
                    Act::Discharge(_) => s[5] += 1,
                }
                events.next();
            }
            if start.saturating_sub(last) > QUIET_MICROS {
                // Silent too long: no rows until its next bed event.
                match events.peek() {
                    Some(((t, _), _)) => {
                        start = self.windows.start(*t);
                        continue;
                    }
                    None => break,
                }
            }
            s[0] = beds;
            s[1] = inside.len() as i64;
            out.push((start, s));
            start = end;
        }
        Swept {
            rows: out,
            beds,
            inside,
            last,
        }
    }

    /// Moves every hospital's floor up to the window boundary `at`: the
    /// state there is kept, the events and windows before it dropped, so a
    /// sweep (every checkpoint makes several) covers the retention, not the
    /// uptime. `at` must be behind the retention, where no event can come
    /// any more; runs above `share` open at `at` are carried. The next
    /// write is a full copy.
    pub fn raise_floor(&mut self, at: i64, share: f64, registry: &Registry) {
        let at = self.windows.start(at);
        let mut floors = Vec::new();
        for (&id, h) in &self.hospitals {
            if h.floor.as_ref().is_some_and(|f| f.at >= at) {
                continue;
            }
            let Some(((first, _), _)) = h.events.iter().next() else {
                continue;
            };
            if h.floor.is_none() && *first >= at {
                continue;
            }
            let registry_beds = registry.hospital(id).beds_total as i64;
            let swept = self.sweep_from(h, registry_beds, at);
            let open = self.runs(h, share, &swept.rows).1;
            floors.push((
                id,
                Floor {
                    at,
                    beds: swept.beds,
                    inside: swept.inside,
                    last: swept.last,
                    open,
                },
            ));
        }
        if floors.is_empty() {
            return;
        }
        for (id, floor) in floors {
            if let Some(h) = self.hospitals.get_mut(&id) {
                h.events = h.events.split_off(&(floor.at, 0));
                h.written = h.written.split_off(&floor.at);
                h.floor = Some(floor);
            }
        }
        self.pend_all();
    }

    /// What the windows ending at or before `until` add to the rows written:
    /// a full row for a window never written, the difference for one whose
    /// state changed since.
    fn changes(&self, registry: &Registry, until: i64) -> Vec<Row> {
        let mut rows = Vec::new();
        for (&id, h) in &self.hospitals {
            let beds = registry.hospital(id).beds_total as i64;
            for (start, s) in self.sweep(h, beds, until) {
                match h.written.get(&start) {
                    None => rows.push((start, id, s)),
                    Some(w) => {
                        let d: State = std::array::from_fn(|i| s[i] - w[i]);
                        if d.iter().any(|x| *x != 0) {
                            rows.push((start, id, d));
                        }
                    }
                }
            }
        }
        rows.sort_unstable_by_key(|r| (r.0, r.1));
        rows
    }

    /// Each hospital's (index, beds_total, occupied) at the end of the last
    /// window ending by `until`.
    pub fn latest(&self, until: i64, registry: &Registry) -> Vec<(u16, i64, i64)> {
        self.hospitals
            .iter()
            .filter_map(|(&id, h)| {
                let beds = registry.hospital(id).beds_total as i64;
                let (_, s) = *self.sweep(h, beds, until).last()?;
                Some((id, s[0], s[1]))
            })
            .collect()
    }

    /// Every run of consecutive windows in which hospital `id`'s
    /// utilization at the window's end is above `share`, through the last
    /// window ending by `until`: (the run's first window start, the instant
    /// it was first above, the instant it was first back at or below or
    /// `None` if it still is, the utilization when first above). A function
    /// of the bed events, so a late one moves a run rather than depending on
    /// when it arrived.
    pub fn runs_above(
        &self,
        id: u16,
        share: f64,
        until: i64,
        registry: &Registry,
    ) -> Vec<(i64, i64, Option<i64>, f64)> {
        let Some(h) = self.hospitals.get(&id) else {
            return Vec::new();
        };
        let rows = self.sweep(h, registry.hospital(id).beds_total as i64, until);
        let (mut runs, open) = self.runs(h, share, &rows);
        if let Some((first, at, u)) = open {
            runs.push((first, at, None, u));
        }
        runs
    }

    /// The runs above `share` in `rows` (a sweep of `h`), from the one its
    /// floor carries: those that ended, and the one still open.
    #[allow(clippy::type_complexity)]
    fn runs(
        &self,
        h: &Hospital,
        share: f64,
        rows: &[(i64, State)],
    ) -> (Vec<(i64, i64, Option<i64>, f64)>, Option<OpenRun>) {
        let util = |s: &State| (s[0] > 0).then(|| s[1] as f64 / s[0] as f64);
        let mut runs = Vec::new();
        let mut open = h.floor.as_ref().and_then(|f| f.open);
        for (start, s) in rows {
            let end = self.windows.end(*start);
            match (util(s).filter(|u| *u > share), open) {
                (Some(u), None) => open = Some((*start, end, u)),
                (None, Some((first, at, u))) => {
                    runs.push((first, at, Some(end), u));
                    open = None;
                }
                _ => {}
            }
        }
        (runs, open)
    }

    /// The floor of hospital `id`: windows before it are not swept.
    pub fn floor(&self, id: u16) -> Option<i64> {
        self.hospitals
            .get(&id)
            .and_then(|h| h.floor.as_ref())
            .map(|f| f.at)
    }

    /// Rows for every window that has ended by `until`, marked as written.
    pub fn take_final(&mut self, until: i64, registry: &Registry) -> Vec<Row> {
        if until == i64::MIN {
            return Vec::new();
        }
        let rows = self.changes(registry, until);
        for (start, id, d) in &rows {
            let w = self
                .hospitals
                .entry(*id)
                .or_default()
                .written
                .entry(*start)
                .or_insert([0; 6]);
            for (a, b) in w.iter_mut().zip(d) {
                *a += b;
            }
        }
        self.final_until = self.final_until.max(until);
        rows
    }

    /// Rows not yet written for the windows ending by `until` (the end of
    /// the window of the highest event time): what SQL adds to the stored
    /// rows while the pipeline runs.
    pub fn snapshot(&self, until: i64, registry: &Registry) -> Vec<Row> {
        self.changes(registry, until)
    }

    /// The end of the last window written, to save in the checkpoint.
    pub fn final_until(&self) -> Option<i64> {
        (self.final_until != i64::MIN).then_some(self.final_until)
    }

    /// Whether bed events arrived since the last checkpoint.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Marks every bed event as pending, so the next write is a full copy
    /// of the state that replaces every earlier file.
    pub fn pend_all(&mut self) {
        self.floors_pending = true;
        self.pending = self
            .hospitals
            .iter()
            .flat_map(|(id, h)| {
                h.events
                    .iter()
                    .map(move |((t, seq), act)| (*t, *seq, *id, *act))
            })
            .collect();
    }

    /// Writes the bed events received since the last call.
    pub fn write_pending(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.pending.len() * RECORD);
        let mut record = |time: i64, seq: u64, hospital: u16, kind: u8, value: u128| {
            buf.extend_from_slice(&time.to_le_bytes());
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(&hospital.to_le_bytes());
            buf.push(kind);
            buf.extend_from_slice(&value.to_le_bytes());
        };
        if std::mem::take(&mut self.floors_pending) {
            // A floor, then who is inside, then the run it carries: a full
            // copy starts with them.
            for (&id, h) in &self.hospitals {
                let Some(f) = &h.floor else {
                    continue;
                };
                record(f.at, f.last as u64, id, FLOOR, f.beds as u128);
                for p in &f.inside {
                    record(f.at, 0, id, INSIDE, *p);
                }
                if let Some((first, at, u)) = f.open {
                    record(first, at as u64, id, OPEN_RUN, u128::from(u.to_bits()));
                }
            }
        }
        for (time, seq, hospital, act) in self.pending.drain(..) {
            let (kind, value) = match act {
                Act::Admit(p) => (0u8, p),
                Act::Discharge(p) => (1, p),
                Act::Capacity(n) => (2, n as u128),
            };
            record(time, seq, hospital, kind, value);
        }
        out.write_all(&buf)
    }

    /// Loads bed events written by [`Beds::write_pending`].
    pub fn load(&mut self, input: &mut impl Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        if bytes.len() % RECORD != 0 {
            return Err(invalid("bed file length is not a whole number of records"));
        }
        for r in bytes.chunks_exact(RECORD) {
            let time = i64::from_le_bytes(r[0..8].try_into().map_err(|_| invalid("time"))?);
            let seq = u64::from_le_bytes(r[8..16].try_into().map_err(|_| invalid("seq"))?);
            let hospital = u16::from_le_bytes(r[16..18].try_into().map_err(|_| invalid("id"))?);
            let value = u128::from_le_bytes(r[19..35].try_into().map_err(|_| invalid("value"))?);
            let act = match r[18] {
                0 => Act::Admit(value),
                1 => Act::Discharge(value),
                2 => Act::Capacity(value as i64),
                FLOOR => {
                    let h = self.hospitals.entry(hospital).or_default();
                    h.floor = Some(Floor {
                        at: time,
                        beds: value as i64,
                        inside: HashSet::new(),
                        last: seq as i64,
                        open: None,
                    });
                    h.events = h.events.split_off(&(time, 0));
                    continue;
                }
                INSIDE | OPEN_RUN => {
                    let floor = self
                        .hospitals
                        .get_mut(&hospital)
                        .and_then(|h| h.floor.as_mut())
                        .ok_or_else(|| invalid("a bed floor record before its floor"))?;
                    if r[18] == INSIDE {
                        floor.inside.insert(value);
                    } else {
                        floor.open = Some((time, seq as i64, f64::from_bits(value as u64)));
                    }
                    continue;
                }
                _ => return Err(invalid("unknown bed action in bed file")),
            };
            self.insert(time, seq, hospital, act);
        }
        Ok(())
    }

    /// After [`Beds::load`]: marks the windows through `final_until` as
    /// written, as the checkpoint that saved them had.
    pub fn restore_written(&mut self, final_until: Option<i64>, registry: &Registry) {
        if let Some(until) = final_until {
            self.take_final(until, registry);
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The Arrow schema of stored `bed_occupancy` rows.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("hospital_id", DataType::Utf8, false),
        Field::new("hospital_name", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("designated", DataType::Boolean, false),
    ];
    fields.extend(
        COUNT_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// Builds `bed_occupancy` rows.
pub fn batch(
    rows: &[Row],
    windows: Windows,
    registry: &Registry,
) -> arrow::error::Result<RecordBatch> {
    let n = rows.len();
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut id = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut district = StringBuilder::new();
    let mut designated = BooleanBuilder::with_capacity(n);
    let mut counts: Vec<Int64Builder> = (0..6).map(|_| Int64Builder::with_capacity(n)).collect();
    for (s, h, c) in rows {
        let hospital = registry.hospital(*h);
        start.append_value(*s);
        end.append_value(windows.end(*s));
        id.append_value(&hospital.hospital_id);
        name.append_value(&hospital.name);
        district.append_value(&hospital.district);
        designated.append_value(hospital.designated());
        for (b, v) in counts.iter_mut().zip(c) {
            b.append_value(*v);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(id.finish()),
        Arc::new(name.finish()),
        Arc::new(district.finish()),
        Arc::new(designated.finish()),
    ];
    cols.extend(counts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    RecordBatch::try_new(schema(), cols)
}

/// The `bed_occupancy` operator.
#[derive(Debug)]
pub struct BedOccupancy {
    /// Public for the `bed_utilization` alerts, which the processor raises
    /// with the follow-up alerts.
    pub state: Beds,
    log: LogSize,
    /// The utilization above which a `bed_utilization` alert is raised.
    alert_share: f64,
}

impl BedOccupancy {
    pub fn new(windows: Windows, alert_share: f64) -> Self {
        BedOccupancy {
            state: Beds::new(windows),
            log: LogSize::default(),
            alert_share,
        }
    }
}

const TABLE: &str = "bed_occupancy";

/// The manifest's key of the end of the last window written, µs.
const FINAL_UNTIL: &str = "bed_final_until";

impl Operator for BedOccupancy {
    fn tables(&self) -> Vec<Table> {
        vec![Table {
            name: TABLE,
            schema: schema(),
            kind: Kind::Windowed,
            // Utilization is derived from the folded counts, and
            // `bed_occupancy_now` reads it: built by the query layer.
            view: View::Custom,
        }]
    }

    fn add(&mut self, e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {
        self.state.add(e);
    }

    /// Only windows that have begun: a hospital's state runs on past the
    /// last event into every window until the clock.
    fn take_final(&mut self, cut: i64, cx: &Cx) -> Result<Vec<Final>> {
        let rows = self.state.take_final(cut.min(cx.clock_end), cx.registry);
        by_day(
            TABLE,
            cx.calendar,
            rows,
            |r| r.0,
            |rows| batch(rows, cx.windows, cx.registry),
        )
    }

    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        let rows = self.state.snapshot(cx.clock_end, cx.registry);
        Ok(vec![(TABLE, batch(&rows, cx.windows, cx.registry)?)])
    }

    fn save(&mut self, m: &mut Manifest, state: &mut StateFiles, _cx: &Cx) -> Result<()> {
        state.log(m, "beds", &mut self.log, &mut self.state)?;
        m.set_state(FINAL_UNTIL, &self.state.final_until())?;
        Ok(())
    }

    fn restore(&mut self, m: &Manifest, read: &ReadFile, cx: &Cx) -> Result<()> {
        load_state(read, m, "beds", |f| self.state.load(f))?;
        self.state
            .restore_written(m.state(FINAL_UNTIL)?, cx.registry);
        Ok(())
    }

    fn archive(&mut self, before: i64, cx: &Cx, _alerts: &mut AlertBook) -> Result<Vec<Final>> {
        self.state
            .raise_floor(before, self.alert_share, cx.registry);
        // The log drops what was archived: a full copy next.
        self.log.forget_copy();
        Ok(Vec::new())
    }

    /// A `bed_utilization` alert per run of windows a designated hospital
    /// spent above the share, raised when it went above and resolved when
    /// it came back; one that later bed events show never was is withdrawn.
    fn detect(&mut self, cx: &Cx, alerts: &mut AlertBook) {
        let share = self.alert_share;
        for (i, h) in cx.registry.hospitals().iter().enumerate() {
            if !h.designated() {
                continue;
            }
            let runs = self
                .state
                .runs_above(i as u16, share, cx.clock_end, cx.registry);
            let floor = self.state.floor(i as u16);
            let ids: Vec<String> = runs
                .iter()
                .map(|(first, ..)| format!("bed_utilization:{}:{first}", h.hospital_id))
                .collect();
            let gone: Vec<String> = alerts
                .alerts()
                .iter()
                .filter(|a| {
                    a.kind == "bed_utilization"
                        && a.hospital_id.as_deref() == Some(h.hospital_id.as_str())
                        && !ids.contains(&a.alert_id)
                        // Over before the floor: no sweep sees its run, and
                        // nothing can change it (it is archived next).
                        && a.resolved_at.is_none_or(|r| floor.is_none_or(|f| r > f))
                })
                .map(|a| a.alert_id.clone())
                .collect();
            for id in gone {
                alerts.withdraw(
                    &id,
                    "bed events that arrived later show the hospital was not above the threshold then",
                );
            }
            for ((_, raised_at, resolved_at, util), id) in runs.into_iter().zip(ids) {
                alerts.raise(Alert {
                    alert_id: id,
                    raised_at,
                    kind: "bed_utilization".into(),
                    severity: if util >= 0.95 { "critical" } else { "warning" }.into(),
                    district: h.district.clone(),
                    hospital_id: Some(h.hospital_id.clone()),
                    person_key: None,
                    detail: format!(
                        "{} at {:.0}% of its beds (alert above {:.0}%)",
                        h.name,
                        util * 100.0,
                        share * 100.0
                    ),
                    resolved_at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MICROS;

    const H: i64 = HOUR_MICROS;

    fn bed(id: &str, t: i64, action: BedAction, person: &str, beds: i64) -> Event {
        Event {
            event_id: id.into(),
            event_time: t,
            district: 0,
            body: Body::Bed {
                hospital: 0,
                action,
                person_key: (action != BedAction::Capacity).then(|| person.into()),
                beds_total: (action == BedAction::Capacity).then_some(beds),
            },
        }
    }

    /// Folds stored rows the way the view does.
    fn fold(rows: &[Row]) -> BTreeMap<i64, State> {
        let mut out: BTreeMap<i64, State> = BTreeMap::new();
        for (s, _, c) in rows {
            let e = out.entry(*s).or_insert([0; 6]);
            for (a, b) in e.iter_mut().zip(c) {
                *a += b;
            }
        }
        out
    }

    #[test]
    fn anomalies_change_nothing_and_occupancy_never_goes_negative() {
        let reg = Registry::builtin().unwrap();
        let mut b = Beds::new(Windows::new(H));
        b.add(&bed("c", 0, BedAction::Capacity, "", 2));
        b.add(&bed("a1", 10, BedAction::Admit, "p", 0));
        b.add(&bed("a2", 20, BedAction::Admit, "p", 0)); // already in
        b.add(&bed("d1", H + 5, BedAction::Discharge, "q", 0)); // never admitted
        b.add(&bed("d2", H + 6, BedAction::Discharge, "p", 0));
        b.add(&bed("d3", 2 * H + 1, BedAction::Discharge, "p", 0)); // already out
        let rows = b.take_final(3 * H, &reg);
        assert_eq!(
            rows.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
            vec![
                (0, [2, 1, 1, 0, 1, 0]),
                (H, [2, 0, 0, 1, 0, 1]),
                (2 * H, [2, 0, 0, 0, 0, 1]),
            ]
        );
    }

    #[test]
    fn a_late_admission_corrects_every_later_window() {
        let reg = Registry::builtin().unwrap();
        let beds = reg.hospital(0).beds_total as i64;
        let mut b = Beds::new(Windows::new(H));
        b.add(&bed("a", 0, BedAction::Admit, "p", 0));
        b.add(&bed("x", 3 * H, BedAction::Admit, "r", 0));
        let first = b.take_final(3 * H, &reg);
        assert_eq!(first.len(), 3);
        let mut before = Vec::new();
        b.write_pending(&mut before).unwrap();
        // q was admitted in hour 1; the report arrives after hours 0–2 were
        // written.
        b.add(&bed("late", H + 1, BedAction::Admit, "q", 0));
        let mut file = Vec::new();
        b.write_pending(&mut file).unwrap();
        let second = b.take_final(4 * H, &reg);
        let all: Vec<Row> = first.iter().chain(&second).copied().collect();
        let folded = fold(&all);
        assert_eq!(folded[&0], [beds, 1, 1, 0, 0, 0]);
        assert_eq!(folded[&H], [beds, 2, 1, 0, 0, 0]);
        assert_eq!(folded[&(2 * H)], [beds, 2, 0, 0, 0, 0]);
        assert_eq!(folded[&(3 * H)], [beds, 3, 1, 0, 0, 0]);
        // Corrections only where the state changed: hours 1 and 2, then the
        // first write of hour 3.
        assert_eq!(second.len(), 3);

        // A restart from the first checkpoint's events and cut rebuilds
        // what was written, and adds the same corrections.
        let mut again = Beds::new(Windows::new(H));
        again.load(&mut before.as_slice()).unwrap();
        again.restore_written(Some(3 * H), &reg);
        again.load(&mut file.as_slice()).unwrap();
        assert_eq!(again.take_final(4 * H, &reg), second);
    }

    #[test]
    fn a_silent_hospital_has_no_rows_for_decades_of_gap() {
        let reg = Registry::builtin().unwrap();
        let mut b = Beds::new(Windows::new(H));
        // One capacity event in 2000 and one in 2020: rows for the 30 days
        // after each, not for the twenty years between.
        let y2000 = 946_684_800_000_000;
        let y2020 = 1_577_836_800_000_000;
        b.add(&bed("b-1", y2000, BedAction::Capacity, "", 10));
        b.add(&bed("b-2", y2020, BedAction::Capacity, "", 12));
        let rows = b.take_final(y2020 + 100 * 24 * H, &reg);
        assert_eq!(rows.len(), 2 * (30 * 24 + 1), "{}", rows.len());
        assert_eq!(rows.last().unwrap().2[0], 12);
    }

    /// A floor changes nothing after it: the rows, the runs above the share
    /// (one open across the floor included) and a restart from a full copy
    /// are what the whole history gives; and the sweep no longer holds the
    /// events before it.
    #[test]
    fn a_floor_keeps_every_row_and_run_after_it() {
        let reg = Registry::builtin().unwrap();
        let total = reg.hospital(0).beds_total as i64;
        let mut events = vec![bed("cap", 0, BedAction::Capacity, "", 4)];
        for i in 0..200i64 {
            let who = format!("p{}", i % 7);
            let action = if i % 3 == 2 {
                BedAction::Discharge
            } else {
                BedAction::Admit
            };
            events.push(bed(&format!("e{i}"), i * H / 2 + 7, action, &who, 0));
        }
        let mut whole = Beds::new(Windows::new(H));
        let mut floored = Beds::new(Windows::new(H));
        for e in &events {
            whole.add(e);
            floored.add(e);
        }
        let until = 120 * H;
        whole.take_final(40 * H, &reg);
        floored.take_final(40 * H, &reg);
        floored.raise_floor(30 * H + 5, 0.5, &reg);
        assert_eq!(floored.floor(0), Some(30 * H));
        assert!(floored.hospitals[&0]
            .events
            .keys()
            .all(|(t, _)| *t >= 30 * H));
        let after = |rows: Vec<(i64, State)>| -> Vec<(i64, State)> {
            rows.into_iter().filter(|(s, _)| *s >= 30 * H).collect()
        };
        let h = |b: &Beds| b.sweep(&b.hospitals[&0], total, until);
        assert_eq!(after(h(&whole)), h(&floored));
        let runs = |b: &Beds| {
            b.runs_above(0, 0.5, until, &reg)
                .into_iter()
                .filter(|r| r.2.is_none_or(|end| end > 30 * H))
                .collect::<Vec<_>>()
        };
        assert!(!runs(&whole).is_empty());
        assert_eq!(runs(&whole), runs(&floored));
        assert_eq!(
            whole.take_final(until, &reg),
            floored.take_final(until, &reg)
        );

        // A full copy carries the floor.
        let mut file = Vec::new();
        floored.pend_all();
        floored.write_pending(&mut file).unwrap();
        let mut again = Beds::new(Windows::new(H));
        again.load(&mut file.as_slice()).unwrap();
        again.restore_written(Some(until), &reg);
        assert_eq!(h(&again), h(&floored));
        assert_eq!(runs(&again), runs(&floored));
    }
}

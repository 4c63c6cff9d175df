//! `aberrations`: EARS C1, C2 and C3 on the daily suspicious counts of each
//! district and source, for every day the clock has closed.
//!
//! Daily counts are kept in memory (districts × sources × days: small) and
//! saved with checkpoints. The table is recomputed from them whenever it is
//! asked for, so a late event that changes a closed day re-evaluates that
//! day and every later day whose baseline holds it, with no bookkeeping.
//! A district's series start on the first day a counted event of that
//! district fell on, whatever its source, so its sources share their days;
//! days without events count 0, and a district without any counted event
//! has no rows. Each partition task evaluates only the districts whose
//! events it holds, so across tasks a (day, district, source, method) has
//! exactly one row, and the rows do not depend on how districts share
//! partitions. `minSigma` is 1
//! ([`ears::DEFAULT_MIN_SIGMA`]) for all three methods.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::Source;
use paicha_contract::registry::Registry;

use anyhow::Result;
use paicha_contract::event::Event;
use serde::{Deserialize, Serialize};

use super::alerts::Alert;
use super::{AlertBook, Cx, Final, Operator, ReadFile, StateFiles};
use crate::ears::{self, Aberration, Method};
use crate::store::Manifest;
use crate::symptoms::counted;
use crate::tables::Table;
use crate::time::{self, closed_before, Calendar, DayCache};

/// Suspicious events per (day, district, source), days as `Date32`.
#[derive(Debug, Clone)]
pub struct DailyCounts {
    /// (district index, source) → day → suspicious events.
    series: HashMap<(u16, Source), BTreeMap<i32, i64>>,
    /// District index → the first day of its series.
    first_day: BTreeMap<u16, i32>,
    changed: bool,
    /// Days before this were archived: evaluated for the last time, and
    /// their counts kept only as the baseline of later days.
    floor: i32,
}

impl Default for DailyCounts {
    fn default() -> Self {
        DailyCounts {
            series: HashMap::new(),
            first_day: BTreeMap::new(),
            changed: false,
            floor: i32::MIN,
        }
    }
}

/// Days of counts kept before the archived floor: every day an evaluation
/// looks back on (C3's reach is the longest).
const BASELINE_KEPT: i32 = Method::C3.first_day() as i32 + 3;

/// One day's suspicious count of a district and source, saved for EARS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedDay {
    /// District code.
    pub district: String,
    /// Source name.
    pub source: String,
    /// Days since 1970-01-01 in the reporting calendar.
    pub day: i32,
    /// Suspicious events, or 0 for a day with events but none suspicious.
    pub suspicious: i64,
}

/// One evaluated row: day, district, source, and the detector's output.
pub type Row = (i32, String, String, Aberration);

impl DailyCounts {
    /// Counts an accepted event of `source` in `district` on `day`.
    pub fn add(&mut self, day: i32, district: u16, source: Source, suspicious: bool) {
        if !counted(source) {
            return;
        }
        self.starts_on(district, day);
        let days = self.series.entry((district, source)).or_default();
        *days.entry(day).or_default() += suspicious as i64;
        self.changed = true;
    }

    /// The counts, to save with a checkpoint.
    pub fn save(&self, registry: &Registry) -> Vec<SavedDay> {
        let mut out: Vec<SavedDay> = self
            .series
            .iter()
            .flat_map(|((d, s), days)| {
                days.iter().map(move |(day, n)| SavedDay {
                    district: registry.district(*d).district.clone(),
                    source: s.as_str().to_string(),
                    day: *day,
                    suspicious: *n,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.day, &a.district, &a.source).cmp(&(b.day, &b.district, &b.source)));
        out
    }

    /// Restores counts saved by [`DailyCounts::save`].
    pub fn restore(&mut self, saved: &[SavedDay], registry: &Registry) -> Result<(), String> {
        for r in saved {
            let d = registry.district_id(&r.district).ok_or_else(|| {
                format!("saved daily counts name unknown district {}", r.district)
            })?;
            let s = Source::parse(&r.source)
                .ok_or_else(|| format!("saved daily counts name unknown source {}", r.source))?;
            self.series
                .entry((d, s))
                .or_default()
                .insert(r.day, r.suspicious);
            self.starts_on(d, r.day);
        }
        Ok(())
    }

    fn starts_on(&mut self, district: u16, day: i32) {
        let first = self.first_day.entry(district).or_insert(day);
        *first = (*first).min(day);
    }

    /// Whether counts changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::replace(&mut self.changed, false)
    }

    /// Evaluates the days before `before` for the last time and keeps of
    /// them only the counts later days' baselines need, so the counts, the
    /// checkpoint and the evaluation stay as long as the retention, not the
    /// uptime. `before` must be at or behind the clock minus the retention
    /// and lateness, where no event can change a day any more.
    pub fn archive(&mut self, registry: &Registry, before: i32) -> Vec<Row> {
        if before <= self.floor {
            return Vec::new();
        }
        let rows = self.evaluate(registry, before);
        self.floor = before;
        let keep = before.saturating_sub(BASELINE_KEPT);
        for days in self.series.values_mut() {
            *days = days.split_off(&keep);
        }
        rows
    }

    /// After a restore: the days before `floor` were archived.
    pub fn archived_at(&mut self, floor: i32) {
        self.floor = self.floor.max(floor);
    }

    /// Every (district, source) series of every district with counted
    /// events and every counted source, evaluated for the days from the
    /// archived floor to before `closed_before`.
    pub fn evaluate(&self, registry: &Registry, closed_before: i32) -> Vec<Row> {
        let empty = BTreeMap::new();
        let mut rows = Vec::new();
        for (&i, &first) in self.first_day.iter().filter(|(_, f)| **f < closed_before) {
            let district = &registry.district(i).district;
            // Counts from far enough before the floor that every day from
            // it on is evaluated as over the whole series.
            let first = first.max(self.floor.saturating_sub(BASELINE_KEPT));
            let from = self.floor.saturating_sub(first).max(0) as usize;
            if first >= closed_before {
                continue;
            }
            let len = (i64::from(closed_before) - i64::from(first)) as usize;
            let mut counts = vec![0i64; len];
            for source in Source::ALL.into_iter().filter(|s| counted(*s)) {
                let days = self.series.get(&(i, source)).unwrap_or(&empty);
                counts.iter_mut().for_each(|c| *c = 0);
                for (day, n) in days.range(first..closed_before) {
                    counts[(day - first) as usize] = *n;
                }
                for t in from..len {
                    for m in Method::ALL {
                        if let Some(a) = ears::evaluate(&counts, t, m, ears::DEFAULT_MIN_SIGMA) {
                            rows.push((
                                first + t as i32,
                                district.clone(),
                                source.as_str().to_string(),
                                a,
                            ));
                        }
                    }
                }
            }
        }
        rows
    }
}

/// The Arrow schema of `aberrations`.
pub fn schema() -> SchemaRef {
    let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        f("day", DataType::Date32, false),
        f("district", DataType::Utf8, false),
        f("source", DataType::Utf8, false),
        f("method", DataType::Utf8, false),
        f("observed", DataType::Int64, false),
        f("baseline_mean", DataType::Float64, true),
        f("baseline_sd", DataType::Float64, true),
        f("threshold", DataType::Float64, false),
        f("statistic", DataType::Float64, true),
        f("alarm", DataType::Boolean, false),
    ]))
}

/// Builds `aberrations` rows.
pub fn batch(rows: &[Row]) -> arrow::error::Result<RecordBatch> {
    let n = rows.len();
    let mut day = Date32Builder::with_capacity(n);
    let mut district = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut method = StringBuilder::new();
    let mut observed = Int64Builder::with_capacity(n);
    let mut mean = Float64Builder::with_capacity(n);
    let mut sd = Float64Builder::with_capacity(n);
    let mut threshold = Float64Builder::with_capacity(n);
    let mut statistic = Float64Builder::with_capacity(n);
    let mut alarm = BooleanBuilder::with_capacity(n);
    for (d, dist, src, a) in rows {
        day.append_value(*d);
        district.append_value(dist);
        source.append_value(src);
        method.append_value(a.method.as_str());
        observed.append_value(a.observed);
        mean.append_option(a.baseline_mean);
        sd.append_option(a.baseline_sd);
        threshold.append_value(a.threshold);
        statistic.append_option(a.statistic);
        alarm.append_value(a.alarm);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(day.finish()),
        Arc::new(district.finish()),
        Arc::new(source.finish()),
        Arc::new(method.finish()),
        Arc::new(observed.finish()),
        Arc::new(mean.finish()),
        Arc::new(sd.finish()),
        Arc::new(threshold.finish()),
        Arc::new(statistic.finish()),
        Arc::new(alarm.finish()),
    ];
    RecordBatch::try_new(schema(), cols)
}

const TABLE: &str = "aberrations";

/// The manifest's key of the daily counts.
const DAILY: &str = "daily";

/// The `aberrations` operator: the daily counts, their last evaluation,
/// and the `ears_*` alerts it raises.
pub struct Aberrations {
    daily: DailyCounts,
    days: DayCache,
    /// The pipeline clock: the days before the one holding it are closed.
    clock: i64,
    /// The last evaluation and the first open day it was made for.
    evaluation: Option<(i32, Vec<Row>)>,
    /// Whether the evaluation changed since its alerts were last raised.
    unchecked: bool,
}

impl Aberrations {
    pub fn new(calendar: Calendar) -> Self {
        Aberrations {
            daily: DailyCounts::default(),
            days: DayCache::new(calendar),
            clock: i64::MIN,
            evaluation: None,
            unchecked: false,
        }
    }

    /// EARS over the closed days, recomputed only when a count or the set
    /// of closed days changed.
    fn evaluate(&mut self, cx: &Cx) -> &[Row] {
        let closed = closed_before(cx.calendar, self.clock);
        let changed = self.daily.take_changed();
        let stale = self
            .evaluation
            .as_ref()
            .is_none_or(|(c, _)| *c != closed || changed);
        if stale {
            let rows = self.daily.evaluate(cx.registry, closed);
            self.evaluation = Some((closed, rows));
            self.unchecked = true;
        }
        self.evaluation.as_ref().map_or(&[], |(_, r)| r.as_slice())
    }
}

impl Operator for Aberrations {
    fn tables(&self) -> Vec<Table> {
        vec![Table::held(TABLE, schema())]
    }

    fn add(&mut self, e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {
        let day = self.days.day(e.event_time);
        self.daily.add(day, e.district, e.source(), e.suspicious());
    }

    fn advance(&mut self, clock: i64, _cx: &Cx, _alerts: &mut AlertBook) {
        self.clock = self.clock.max(clock);
    }

    /// Held whole until archived: nothing becomes final at a checkpoint.
    fn take_final(&mut self, _cut: i64, _cx: &Cx) -> Result<Vec<Final>> {
        Ok(Vec::new())
    }

    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(vec![(TABLE, batch(self.evaluate(cx))?)])
    }

    /// One alert per detector, series and day that alarms, raised at the
    /// end of the day; a late event that takes the day below its threshold
    /// shows it was never true, and withdraws it.
    fn detect(&mut self, cx: &Cx, alerts: &mut AlertBook) {
        self.evaluate(cx);
        // EARS alerts change only when the evaluation does.
        if !std::mem::take(&mut self.unchecked) {
            return;
        }
        for (day, district, source, a) in self.evaluation.iter().flat_map(|(_, r)| r.iter()) {
            let day = time::from_date32(*day);
            let kind = format!("ears_{}", a.method.as_str().to_lowercase());
            let id = format!("{kind}:{district}:{source}:{day}");
            if !a.alarm {
                alerts.withdraw(
                    &id,
                    "events that arrived later took the day below the threshold",
                );
                continue;
            }
            alerts.raise(Alert {
                alert_id: id,
                raised_at: cx.calendar.day_end(day),
                kind,
                severity: if a.method == Method::C3 {
                    "critical"
                } else {
                    "warning"
                }
                .into(),
                district: district.clone(),
                hospital_id: None,
                person_key: None,
                detail: format!(
                    "{source}: {} suspicious on {day}, above the EARS {} threshold {:.2}",
                    a.observed,
                    a.method.as_str(),
                    a.threshold
                ),
                resolved_at: None,
            });
        }
    }

    fn save(&mut self, m: &mut Manifest, _state: &mut StateFiles, cx: &Cx) -> Result<()> {
        m.set_state(DAILY, &self.daily.save(cx.registry))
    }

    fn restore(&mut self, m: &Manifest, _read: &ReadFile, cx: &Cx) -> Result<()> {
        self.daily
            .restore(
                &m.state::<Vec<SavedDay>>(DAILY)?.unwrap_or_default(),
                cx.registry,
            )
            .map_err(anyhow::Error::msg)?;
        if let Some(before) = m.archived_before {
            self.daily.archived_at(closed_before(cx.calendar, before));
        }
        Ok(())
    }

    /// The days the archive closes, evaluated for the last time.
    fn archive(&mut self, before: i64, cx: &Cx, _alerts: &mut AlertBook) -> Result<Vec<Final>> {
        let rows = self
            .daily
            .archive(cx.registry, closed_before(cx.calendar, before));
        self.evaluation = None;
        Ok(Final::archived(TABLE, before, cx, batch(&rows)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_event_on_a_closed_day_re_evaluates_it_and_the_days_after() {
        let reg = Registry::builtin().unwrap();
        let mut d = DailyCounts::default();
        // 20 days of one suspicious checkpoint event a day in district 0.
        for day in 0..20 {
            d.add(day, 0, Source::Checkpoint, true);
        }
        let c1 = |rows: &[Row], day: i32| {
            rows.iter()
                .find(|(t, dist, s, a)| {
                    *t == day && dist == "500101" && s == "checkpoint" && a.method == Method::C1
                })
                .map(|r| r.3.clone())
        };
        let before = d.evaluate(&reg, 20);
        assert_eq!(
            c1(&before, 10).map(|a| (a.observed, a.alarm)),
            Some((1, false))
        );
        assert!(c1(&before, 20).is_none(), "day 20 is not closed");
        // Ten late suspicious events land on closed day 10.
        for _ in 0..10 {
            d.add(10, 0, Source::Checkpoint, true);
        }
        assert!(d.take_changed());
        let after = d.evaluate(&reg, 20);
        let day10 = c1(&after, 10).unwrap();
        assert_eq!((day10.observed, day10.alarm), (11, true));
        // Day 11's baseline now holds day 10: its mean rose from 1 to 17/7.
        let day11 = c1(&after, 11).unwrap();
        assert!((day11.baseline_mean.unwrap() - 17.0 / 7.0).abs() < 1e-12);
        // Only the district with events has rows: across partition tasks
        // each district is evaluated by the one task holding its events.
        assert!(after.iter().all(|(_, dist, _, _)| dist == "500101"));
        // Saved and restored, the counts evaluate the same.
        let mut again = DailyCounts::default();
        again.restore(&d.save(&reg), &reg).unwrap();
        assert_eq!(again.evaluate(&reg, 20), after);
    }
}

//! Reporting gaps: a district and source that reported on each of the 7
//! days before falling silent for a whole calendar day (so for more than
//! 24 hours) raise a `reporting_gap` alert, so an outage (a checkpoint's
//! tablet offline, a pharmacy chain's feed down) is not read as "no
//! cases". A whole day rather than any 24 hours: sources that report once
//! a day, at varying hours (case reports, bed counts), are often more than
//! 24 h apart without having missed a day.
//!
//! A function of the events and the clock: each series keeps, per
//! calendar day, its first and last event time. A gap runs from the last
//! event of a day to the first of the next day with events, when a day
//! lies between them, or, open, to the clock once a whole day has passed.
//! Its alert is raised at the end of the first silent day and resolved at
//! the next event; a late event inside a gap withdraws its alert and
//! leaves the gaps it splits into.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Event, Source};
use serde::{Deserialize, Serialize};

use super::alerts::Alert;
use super::{AlertBook, Cx, Final, Operator, ReadFile, StateFiles};
use crate::store::Manifest;
use crate::tables::Table;
use crate::time::{date32, Calendar, DayCache, DAY_MICROS};

/// The alert's kind.
pub const KIND: &str = "reporting_gap";

/// Days in a row a series must have reported before a silence counts.
const DAYS_REPORTED: i32 = 7;

/// The manifest's key of the days kept.
const DAYS: &str = "reporting_days";

/// One series' day, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedDay {
    district: String,
    source: String,
    /// Days since 1970-01-01 in the reporting calendar.
    day: i32,
    first: i64,
    last: i64,
}

/// The `reporting_gap` alerts' operator. It fills no table of its own.
pub struct ReportingGaps {
    /// (district, source) → day → (first, last) event time, µs.
    days: HashMap<(u16, Source), BTreeMap<i32, (i64, i64)>>,
    calendar: Calendar,
    day_of: DayCache,
    clock: i64,
    /// Days before this were archived: gaps starting before the 7 days
    /// after it cannot be told any more, and are left as they are.
    floor: i32,
}

impl ReportingGaps {
    pub fn new(calendar: Calendar) -> Self {
        ReportingGaps {
            days: HashMap::new(),
            calendar,
            day_of: DayCache::new(calendar),
            clock: i64::MIN,
            floor: i32::MIN,
        }
    }

    /// The end of the day after `day`: when a series last heard from on
    /// `day` has missed a whole day.
    fn silent_day_end(&self, day: i32) -> i64 {
        self.calendar
            .day_end(crate::time::from_date32(day.saturating_add(1)))
    }

    /// The gaps of every series at the clock: (district, source, the day of
    /// the last event before it, that event, the next event or `None` while
    /// open).
    fn gaps(&self) -> Vec<(u16, Source, i32, i64, Option<i64>)> {
        let mut out = Vec::new();
        for (&(district, source), days) in &self.days {
            let mut entries = days.iter().peekable();
            while let Some((&day, &(_, last))) = entries.next() {
                let next = entries.peek().map(|(d, (first, _))| (**d, *first));
                let silent = match next {
                    Some((next_day, _)) => next_day > day.saturating_add(1),
                    None => self.clock >= self.silent_day_end(day),
                };
                if !silent {
                    continue;
                }
                let from = day.saturating_sub(DAYS_REPORTED - 1);
                if from < self.floor {
                    continue;
                }
                let reported = (from..=day).all(|d| days.contains_key(&d));
                if reported {
                    out.push((district, source, day, last, next.map(|(_, first)| first)));
                }
            }
        }
        out
    }
}

fn id(district: &str, source: Source, last: i64) -> String {
    format!("{KIND}:{district}:{}:{last}", source.as_str())
}

impl Operator for ReportingGaps {
    fn tables(&self) -> Vec<Table> {
        Vec::new()
    }

    fn add(&mut self, e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {
        let day = self.day_of.day(e.event_time);
        let span = self
            .days
            .entry((e.district, e.source()))
            .or_default()
            .entry(day)
            .or_insert((e.event_time, e.event_time));
        span.0 = span.0.min(e.event_time);
        span.1 = span.1.max(e.event_time);
    }

    fn advance(&mut self, clock: i64, _cx: &Cx, _alerts: &mut AlertBook) {
        self.clock = self.clock.max(clock);
    }

    fn take_final(&mut self, _cut: i64, _cx: &Cx) -> Result<Vec<Final>> {
        Ok(Vec::new())
    }

    fn live(&mut self, _cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        Ok(Vec::new())
    }

    fn detect(&mut self, cx: &Cx, alerts: &mut AlertBook) {
        let mut standing = BTreeSet::new();
        for (district, source, day, last, next) in self.gaps() {
            let d = cx.registry.district(district);
            let alert_id = id(&d.district, source, last);
            standing.insert(alert_id.clone());
            let since = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(last)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            alerts.raise(Alert {
                alert_id,
                raised_at: self.silent_day_end(day),
                kind: KIND.into(),
                severity: "warning".into(),
                district: d.district.clone(),
                hospital_id: None,
                person_key: None,
                detail: format!(
                    "{source}: no events from {} ({}) for a whole day after {since}, after reporting on each of the {DAYS_REPORTED} days before: a reporting outage is not zero cases",
                    d.name, d.district
                ),
                resolved_at: next,
            });
        }
        // Gaps a late event filled were never true.
        let floor_time = self.calendar.day_end(crate::time::from_date32(
            self.floor.saturating_add(DAYS_REPORTED - 2),
        ));
        let gone: Vec<String> = alerts
            .alerts()
            .iter()
            .filter(|a| a.kind == KIND && !standing.contains(&a.alert_id))
            .filter(|a| {
                self.floor == i32::MIN || a.raised_at.saturating_sub(2 * DAY_MICROS) >= floor_time
            })
            .map(|a| a.alert_id.clone())
            .collect();
        for id in gone {
            alerts.withdraw(
                &id,
                "events that arrived later show the source was reporting",
            );
        }
    }

    fn save(&mut self, m: &mut Manifest, _state: &mut StateFiles, cx: &Cx) -> Result<()> {
        let mut saved: Vec<SavedDay> = self
            .days
            .iter()
            .flat_map(|((district, source), days)| {
                days.iter().map(move |(day, (first, last))| SavedDay {
                    district: cx.registry.district(*district).district.clone(),
                    source: source.as_str().to_string(),
                    day: *day,
                    first: *first,
                    last: *last,
                })
            })
            .collect();
        saved.sort_by(|a, b| (a.day, &a.district, &a.source).cmp(&(b.day, &b.district, &b.source)));
        m.set_state(DAYS, &saved)
    }

    fn restore(&mut self, m: &Manifest, _read: &ReadFile, cx: &Cx) -> Result<()> {
        for s in m.state::<Vec<SavedDay>>(DAYS)?.unwrap_or_default() {
            let district = cx.registry.district_id(&s.district).with_context(|| {
                format!("saved reporting days name unknown district {}", s.district)
            })?;
            let source = Source::parse(&s.source).with_context(|| {
                format!("saved reporting days name unknown source {}", s.source)
            })?;
            self.days
                .entry((district, source))
                .or_default()
                .insert(s.day, (s.first, s.last));
        }
        if let Some(before) = m.archived_before {
            self.floor = self.floor.max(archive_floor(self.calendar, before));
        }
        Ok(())
    }

    /// Days the retention passed leave, but for the week before the horizon
    /// that tells whether a later silence counts.
    fn archive(&mut self, before: i64, _cx: &Cx, _alerts: &mut AlertBook) -> Result<Vec<Final>> {
        let floor = archive_floor(self.calendar, before);
        self.floor = self.floor.max(floor);
        for days in self.days.values_mut() {
            *days = days.split_off(&floor);
        }
        self.days.retain(|_, days| !days.is_empty());
        Ok(Vec::new())
    }
}

/// The first day kept after an archive at `before`.
fn archive_floor(calendar: Calendar, before: i64) -> i32 {
    date32(calendar.day(before)).saturating_sub(DAYS_REPORTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::WITHDRAWN;
    use crate::time::{Windows, HOUR_MICROS};
    use paicha_contract::event::{Body, Disposition, Symptoms};
    use paicha_contract::registry::Registry;

    const H: i64 = HOUR_MICROS;

    fn checkpoint(t: i64, district: u16) -> Event {
        Event {
            event_id: format!("c{t}-{district}"),
            event_time: t,
            district,
            body: Body::Checkpoint {
                checkpoint_id: "cp".into(),
                person_key: "p".into(),
                vehicle_key: None,
                temperature_c: 36.5,
                mask: true,
                symptoms: Symptoms(0),
                came_from: None,
                disposition: Disposition::Pass,
            },
        }
    }

    #[test]
    fn a_week_of_reports_then_a_silent_day_is_a_gap_until_a_late_event_fills_it() {
        let reg = Registry::builtin().unwrap();
        let cx = Cx {
            registry: &reg,
            windows: Windows::new(H),
            calendar: Calendar::default(),
            clock_end: i64::MIN,
        };
        let mut gaps = ReportingGaps::new(Calendar::default());
        let mut book = AlertBook::default();
        // District 0 every day for 8 days at 02:00 UTC (10:00 in Chongqing);
        // district 1 only the last 3 of them.
        for day in 0..8 {
            gaps.add(&checkpoint(day * 24 * H + 2 * H, 0), &cx, &mut book);
            if day >= 5 {
                gaps.add(&checkpoint(day * 24 * H + 2 * H, 1), &cx, &mut book);
            }
        }
        // Day 7's event at 7 × 24 h + 2 h; day 8 in Chongqing ends at
        // 9 × 24 h − 8 h UTC.
        gaps.advance(9 * 24 * H - 9 * H, &cx, &mut book);
        gaps.detect(&cx, &mut book);
        assert!(book.alerts().is_empty(), "day 8 is not over yet");
        gaps.advance(9 * 24 * H - 6 * H, &cx, &mut book);
        gaps.detect(&cx, &mut book);
        assert_eq!(book.alerts().len(), 1, "{:?}", book.alerts());
        let a = &book.alerts()[0];
        assert_eq!(a.kind, KIND);
        assert_eq!(a.raised_at, 9 * 24 * H - 8 * H);
        assert_eq!(a.resolved_at, None);
        // An event of day 8 arrives late: no silent day after all.
        gaps.add(&checkpoint(7 * 24 * H + 22 * H, 0), &cx, &mut book);
        gaps.detect(&cx, &mut book);
        assert_eq!(book.alerts().len(), 1);
        assert!(book.alerts()[0].detail.contains(WITHDRAWN));
        // Day 9 silent, day 10 reports: a gap, resolved.
        gaps.add(&checkpoint(10 * 24 * H + 2 * H, 0), &cx, &mut book);
        gaps.advance(10 * 24 * H + 10 * H, &cx, &mut book);
        gaps.detect(&cx, &mut book);
        let standing: Vec<&Alert> = book
            .alerts()
            .iter()
            .filter(|a| !a.detail.contains(WITHDRAWN))
            .collect();
        assert_eq!(standing.len(), 1, "{standing:?}");
        assert_eq!(standing[0].raised_at, 10 * 24 * H - 8 * H);
        assert_eq!(standing[0].resolved_at, Some(10 * 24 * H + 2 * H));
    }
}

//! The raw event tables — `checkpoint_events`, `pharmacy_events`,
//! `door_visits`, `case_events`, `bed_events`: every accepted event once,
//! identifiers already pseudonymized by the decoder, one column per contract
//! field plus `district_name`. The files are partitioned by the event's
//! calendar day in the reporting time zone, hive style (`day=YYYY-MM-DD/`):
//! the `day` column lives in the directory name only, as pandas, pyarrow and
//! DuckDB expect, and paicha's SQL view derives the same value from
//! `event_time`.
//!
//! Events go straight into Arrow builders per (source, day) — no copy of the
//! event is kept — and are sealed into record batches when the pipeline
//! publishes its live view or writes a checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Body, Event, Source};
use paicha_contract::registry::Registry;

use crate::operators::{AlertBook, Cx, Final, Operator, ReadFile, StateFiles};
use crate::store::Manifest;
use crate::tables::{Kind, Table, View};
use crate::time::from_date32;
use crate::time::{Calendar, DayCache};
use anyhow::Result;

/// The table holding a source's events.
pub fn table(source: Source) -> &'static str {
    match source {
        Source::Checkpoint => "checkpoint_events",
        Source::Pharmacy => "pharmacy_events",
        Source::DoorVisit => "door_visits",
        Source::Case => "case_events",
        Source::Bed => "bed_events",
    }
}

/// The names of the raw tables, in the order of [`Source::ALL`].
pub const TABLES: [&str; 5] = [
    "checkpoint_events",
    "pharmacy_events",
    "door_visits",
    "case_events",
    "bed_events",
];

/// The per-source columns between the common ones and `day`.
fn fields(source: Source) -> Vec<Field> {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let maybe_text = |n: &str| Field::new(n, DataType::Utf8, true);
    let symptoms = Field::new(
        "symptoms",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    );
    match source {
        Source::Checkpoint => vec![
            text("checkpoint_id"),
            text("person_id"),
            maybe_text("vehicle_id"),
            Field::new("temperature_c", DataType::Float64, false),
            Field::new("mask", DataType::Boolean, false),
            symptoms,
            maybe_text("came_from"),
            text("disposition"),
        ],
        Source::Pharmacy => vec![
            text("pharmacy_id"),
            text("person_id"),
            text("drug_class"),
            Field::new("quantity", DataType::Int64, false),
            Field::new("temperature_c", DataType::Float64, true),
        ],
        Source::DoorVisit => vec![
            text("grid_id"),
            text("household_id"),
            text("person_id"),
            text("visit_kind"),
            text("outcome"),
            Field::new("temperature_c", DataType::Float64, true),
            symptoms,
            text("observation"),
        ],
        Source::Case => vec![text("person_id"), text("status"), maybe_text("hospital_id")],
        Source::Bed => vec![
            text("hospital_id"),
            text("action"),
            maybe_text("person_id"),
            Field::new("beds_total", DataType::Int64, true),
        ],
    }
}

/// The Arrow schema of a source's raw table as stored (without `day`).
pub fn schema(source: Source) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut f = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", ts, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("district_name", DataType::Utf8, false),
    ];
    f.extend(fields(source));
    Arc::new(Schema::new(f))
}

/// Builders for one source and day. Every source's columns are here; a
/// source appends to and finishes only its own.
#[derive(Default)]
struct Builder {
    rows: usize,
    event_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    source: StringBuilder,
    district: StringBuilder,
    district_name: StringBuilder,
    site: StringBuilder,
    household: StringBuilder,
    person: StringBuilder,
    vehicle: StringBuilder,
    temperature: Float64Builder,
    mask: BooleanBuilder,
    symptoms: ListBuilder<StringBuilder>,
    came_from: StringBuilder,
    kind: StringBuilder,
    outcome: StringBuilder,
    observation: StringBuilder,
    quantity: Int64Builder,
    hospital: StringBuilder,
}

impl Builder {
    fn append(&mut self, e: &Event, registry: &Registry) {
        self.rows += 1;
        let d = registry.district(e.district);
        self.event_id.append_value(&e.event_id);
        self.event_time.append_value(e.event_time);
        self.source.append_value(e.source().as_str());
        self.district.append_value(&d.district);
        self.district_name.append_value(&d.name);
        match &e.body {
            Body::Checkpoint {
                checkpoint_id,
                person_key,
                vehicle_key,
                temperature_c,
                mask,
                symptoms,
                came_from,
                disposition,
            } => {
                self.site.append_value(checkpoint_id);
                self.person.append_value(person_key);
                self.vehicle.append_option(vehicle_key.as_deref());
                self.temperature.append_value(*temperature_c);
                self.mask.append_value(*mask);
                for s in symptoms.names() {
                    self.symptoms.values().append_value(s);
                }
                self.symptoms.append(true);
                self.came_from.append_option(came_from.as_deref());
                self.kind.append_value(disposition.as_str());
            }
            Body::Pharmacy {
                pharmacy_id,
                person_key,
                drug_class,
                quantity,
                temperature_c,
            } => {
                self.site.append_value(pharmacy_id);
                self.person.append_value(person_key);
                self.kind.append_value(drug_class.as_str());
                self.quantity.append_value(*quantity);
                self.temperature.append_option(*temperature_c);
            }
            Body::DoorVisit {
                grid_id,
                household_key,
                person_key,
                visit_kind,
                outcome,
                temperature_c,
                symptoms,
                observation,
            } => {
                self.site.append_value(grid_id);
                self.household.append_value(household_key);
                self.person.append_value(person_key);
                self.kind.append_value(visit_kind.as_str());
                self.outcome.append_value(outcome.as_str());
                self.temperature.append_option(*temperature_c);
                for s in symptoms.names() {
                    self.symptoms.values().append_value(s);
                }
                self.symptoms.append(true);
                self.observation.append_value(observation.as_str());
            }
            Body::Case {
                person_key,
                status,
                hospital,
            } => {
                self.person.append_value(person_key);
                self.kind.append_value(status.as_str());
                self.hospital
                    .append_option(hospital.map(|h| registry.hospital(h).hospital_id.as_str()));
            }
            Body::Bed {
                hospital,
                action,
                person_key,
                beds_total,
            } => {
                self.hospital
                    .append_value(&registry.hospital(*hospital).hospital_id);
                self.kind.append_value(action.as_str());
                self.person.append_option(person_key.as_deref());
                self.quantity.append_option(*beds_total);
            }
        }
    }

    fn finish(&mut self, source: Source) -> arrow::error::Result<RecordBatch> {
        self.rows = 0;
        let ts = Arc::new(self.event_time.finish().with_timezone("UTC"));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            ts,
            Arc::new(self.source.finish()),
            Arc::new(self.district.finish()),
            Arc::new(self.district_name.finish()),
        ];
        let s = |b: &mut StringBuilder| Arc::new(b.finish()) as ArrayRef;
        let specific: Vec<ArrayRef> = match source {
            Source::Checkpoint => vec![
                s(&mut self.site),
                s(&mut self.person),
                s(&mut self.vehicle),
                Arc::new(self.temperature.finish()),
                Arc::new(self.mask.finish()),
                Arc::new(self.symptoms.finish()),
                s(&mut self.came_from),
                s(&mut self.kind),
            ],
            Source::Pharmacy => vec![
                s(&mut self.site),
                s(&mut self.person),
                s(&mut self.kind),
                Arc::new(self.quantity.finish()),
                Arc::new(self.temperature.finish()),
            ],
            Source::DoorVisit => vec![
                s(&mut self.site),
                s(&mut self.household),
                s(&mut self.person),
                s(&mut self.kind),
                s(&mut self.outcome),
                Arc::new(self.temperature.finish()),
                Arc::new(self.symptoms.finish()),
                s(&mut self.observation),
            ],
            Source::Case => vec![
                s(&mut self.person),
                s(&mut self.kind),
                s(&mut self.hospital),
            ],
            Source::Bed => vec![
                s(&mut self.hospital),
                s(&mut self.kind),
                s(&mut self.person),
                Arc::new(self.quantity.finish()),
            ],
        };
        cols.extend(specific);
        RecordBatch::try_new(schema(source), cols)
    }
}

/// Accepted events not yet written, per source and day.
pub struct RawEvents {
    days: DayCache,
    building: BTreeMap<(Source, i32), Builder>,
    sealed: BTreeMap<(Source, i32), Vec<RecordBatch>>,
}

impl RawEvents {
    /// Empty, with days in `calendar`.
    pub fn new(calendar: Calendar) -> Self {
        RawEvents {
            days: DayCache::new(calendar),
            building: BTreeMap::new(),
            sealed: BTreeMap::new(),
        }
    }

    /// Appends one accepted event.
    pub fn add(&mut self, e: &Event, registry: &Registry) {
        let day = self.days.day(e.event_time);
        self.building
            .entry((e.source(), day))
            .or_default()
            .append(e, registry);
    }

    /// Turns the rows appended since the last call into record batches.
    pub fn seal(&mut self) -> arrow::error::Result<()> {
        for ((source, day), b) in self.building.iter_mut() {
            if b.rows > 0 {
                let batch = b.finish(*source)?;
                self.sealed.entry((*source, *day)).or_default().push(batch);
            }
        }
        Ok(())
    }

    /// The sealed batches of each source, for the live view.
    pub fn batches(&self, source: Source) -> Vec<RecordBatch> {
        self.sealed
            .iter()
            .filter(|((s, _), _)| *s == source)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect()
    }

    /// Seals and removes every row held, by (source, day).
    pub fn take(&mut self) -> arrow::error::Result<BTreeMap<(Source, i32), Vec<RecordBatch>>> {
        self.seal()?;
        self.building.clear();
        Ok(std::mem::take(&mut self.sealed))
    }
}

/// The raw event tables' operator.
pub struct RawTables {
    /// Public for its day cache, which the daily counts of EARS share.
    pub events: RawEvents,
}

impl RawTables {
    pub fn new(calendar: Calendar) -> Self {
        RawTables {
            events: RawEvents::new(calendar),
        }
    }
}

impl Operator for RawTables {
    fn tables(&self) -> Vec<Table> {
        Source::ALL
            .into_iter()
            .map(|s| Table {
                name: table(s),
                schema: schema(s),
                kind: Kind::Appended,
                view: View::WithDay,
            })
            .collect()
    }

    fn add(&mut self, e: &Event, cx: &Cx, _alerts: &mut AlertBook) {
        self.events.add(e, cx.registry);
    }

    fn take_final(&mut self, _cut: i64, _cx: &Cx) -> Result<Vec<Final>> {
        Ok(self
            .events
            .take()?
            .into_iter()
            .map(|((source, day), batches)| Final {
                table: table(source),
                day: from_date32(day).to_string(),
                batches,
            })
            .collect())
    }

    fn live(&mut self, _cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        self.events.seal()?;
        Ok(Source::ALL
            .into_iter()
            .flat_map(|s| {
                self.events
                    .batches(s)
                    .into_iter()
                    .map(move |b| (table(s), b))
            })
            .collect())
    }

    fn save(&mut self, _m: &mut Manifest, _state: &mut StateFiles, _cx: &Cx) -> Result<()> {
        Ok(())
    }

    fn restore(&mut self, _m: &Manifest, _read: &ReadFile, _cx: &Cx) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::date32;
    use paicha_contract::event::{BedAction, Symptoms};

    #[test]
    fn rows_land_in_the_day_of_the_reporting_calendar() {
        let reg = Registry::builtin().unwrap();
        let mut raw = RawEvents::new(Calendar::default());
        let midnight = 1_580_054_400_000_000i64; // 2020-01-27T00:00+08:00
        for (i, t) in [midnight - 1, midnight, midnight + 1, midnight - 2]
            .iter()
            .enumerate()
        {
            raw.add(
                &Event {
                    event_id: format!("e{i}"),
                    event_time: *t,
                    district: 0,
                    body: Body::DoorVisit {
                        grid_id: "g".into(),
                        household_key: "h".into(),
                        person_key: "p".into(),
                        visit_kind: paicha_contract::event::VisitKind::Screening,
                        outcome: paicha_contract::event::Outcome::Seen,
                        temperature_c: Some(36.6),
                        symptoms: Symptoms(0b11),
                        observation: paicha_contract::event::Observation::None,
                    },
                },
                &reg,
            );
        }
        raw.add(
            &Event {
                event_id: "b".into(),
                event_time: midnight,
                district: 0,
                body: Body::Bed {
                    hospital: 0,
                    action: BedAction::Capacity,
                    person_key: None,
                    beds_total: Some(10),
                },
            },
            &reg,
        );
        let out = raw.take().unwrap();
        let rows: Vec<_> = out
            .iter()
            .map(|((s, d), b)| (table(*s), *d, b.iter().map(|b| b.num_rows()).sum::<usize>()))
            .collect();
        let day = date32(chrono::NaiveDate::from_ymd_opt(2020, 1, 27).unwrap());
        assert_eq!(
            rows,
            vec![
                ("door_visits", day - 1, 2),
                ("door_visits", day, 2),
                ("bed_events", day, 1)
            ]
        );
        assert!(raw.take().unwrap().is_empty());
    }
}

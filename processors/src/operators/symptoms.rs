//! `symptom_counts`: hourly event-time tumbling windows per district × source
//! for the checkpoint, pharmacy and door-visit sources.
//!
//! Rows are written when the watermark passes the window's end. An event
//! that arrives after its window was written opens a fresh entry for the same
//! key holding only the new counts; it is written with the next checkpoint as
//! a correction row, and the `symptom_counts` view sums all rows of a key, so
//! a query sees one row per key with the exact total.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Event, Source, SYMPTOM_NAMES};
use paicha_contract::registry::Registry;

use crate::operators::{by_day, AlertBook, Cx, Final, Operator, ReadFile, StateFiles};
use crate::store::Manifest;
use crate::tables::{Kind, Table, View};
use crate::time::Windows;
use crate::window_counts::{self, OpenWindow, WindowCounts};
use anyhow::Result;

/// Count columns of `symptom_counts`, in order: `events`, `suspicious`,
/// then one per symptom name (the `fever` column counts the fever
/// definition, which includes the `fever` symptom).
pub const COUNT_COLUMNS: [&str; 8] = {
    let mut c = ["events", "suspicious", "", "", "", "", "", ""];
    let mut i = 0;
    while i < SYMPTOM_NAMES.len() {
        c[i + 2] = SYMPTOM_NAMES[i];
        i += 1;
    }
    c
};

/// The sources `symptom_counts` covers.
pub fn counted(source: Source) -> bool {
    matches!(
        source,
        Source::Checkpoint | Source::Pharmacy | Source::DoorVisit
    )
}

/// A window key: start (µs), district index, source.
pub type Key = (i64, u16, Source);

/// Counts of one window, in the order of [`COUNT_COLUMNS`].
pub type Counts = [i64; 8];

/// The Arrow schema of stored `symptom_counts` rows.
pub fn schema() -> SchemaRef {
    window_counts::schema(Some("source"), &COUNT_COLUMNS)
}

/// Open windows and the final ones not yet written.
pub type SymptomWindows = WindowCounts<Source, 8>;

impl SymptomWindows {
    /// Counts one (deduplicated) event.
    pub fn add(&mut self, e: &Event) {
        let source = e.source();
        if !counted(source) {
            return;
        }
        let symptoms = e.symptoms();
        let c = self.at(e.event_time, e.district, source);
        c[0] += 1;
        c[1] += e.suspicious() as i64;
        c[2] += e.fever() as i64;
        for (i, slot) in c[3..].iter_mut().enumerate() {
            // Columns 3.. are the symptoms after `fever`.
            *slot += symptoms.has(i + 1) as i64;
        }
    }
}

/// Builds `symptom_counts` rows.
pub fn batch(
    rows: &[(Key, Counts)],
    windows: Windows,
    registry: &Registry,
) -> arrow::error::Result<RecordBatch> {
    window_counts::batch(schema(), rows, windows, registry)
}

/// The `symptom_counts` operator.
#[derive(Debug)]
pub struct SymptomCounts {
    windows: SymptomWindows,
}

impl SymptomCounts {
    pub fn new(windows: Windows) -> Self {
        SymptomCounts {
            windows: SymptomWindows::new(windows),
        }
    }
}

const TABLE: &str = "symptom_counts";

/// The manifest's key of the windows not yet final.
const OPEN: &str = "open_windows";

impl Operator for SymptomCounts {
    fn tables(&self) -> Vec<Table> {
        vec![Table {
            name: TABLE,
            schema: schema(),
            kind: Kind::Windowed,
            view: View::Folded {
                keys: "window_start, window_end, district, district_name, source",
                counts: &COUNT_COLUMNS,
            },
        }]
    }

    fn add(&mut self, e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {
        self.windows.add(e);
    }

    fn take_final(&mut self, cut: i64, cx: &Cx) -> Result<Vec<Final>> {
        let rows = self.windows.take_final(cut);
        by_day(
            TABLE,
            cx.calendar,
            rows,
            |r| r.0 .0,
            |rows| batch(rows, cx.windows, cx.registry),
        )
    }

    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        let rows = self.windows.snapshot();
        Ok(vec![(TABLE, batch(&rows, cx.windows, cx.registry)?)])
    }

    fn save(&mut self, m: &mut Manifest, _state: &mut StateFiles, cx: &Cx) -> Result<()> {
        m.set_state(OPEN, &self.windows.open(cx.registry))
    }

    fn restore(&mut self, m: &Manifest, _read: &ReadFile, cx: &Cx) -> Result<()> {
        self.windows
            .restore(
                &m.state::<Vec<OpenWindow>>(OPEN)?.unwrap_or_default(),
                cx.registry,
            )
            .map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MICROS;
    use paicha_contract::event::{Body, Disposition, Symptoms};

    fn checkpoint(t: i64, temp: f64, symptoms: u8) -> Event {
        Event {
            event_id: "x".into(),
            event_time: t,
            district: 0,
            body: Body::Checkpoint {
                checkpoint_id: "c".into(),
                person_key: "p".into(),
                vehicle_key: None,
                temperature_c: temp,
                mask: true,
                symptoms: Symptoms(symptoms),
                came_from: None,
                disposition: Disposition::Pass,
            },
        }
    }

    #[test]
    fn counts_each_column_and_finalizes_by_watermark() {
        let mut w = SymptomWindows::new(Windows::new(HOUR_MICROS));
        w.add(&checkpoint(10, 36.5, 0));
        w.add(&checkpoint(20, 38.0, 0b10)); // fever by temperature, cough
        w.add(&checkpoint(HOUR_MICROS, 36.5, 0b1)); // fever named, next window
        assert_eq!(w.take_final(HOUR_MICROS - 1), vec![]);
        let done = w.take_final(HOUR_MICROS);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1, [2, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(w.len(), 1);
        let reg = Registry::builtin().unwrap();
        let open = w.open(&reg);
        let mut again = SymptomWindows::new(Windows::new(HOUR_MICROS));
        again.restore(&open, &reg).unwrap();
        let last = again.take_final(i64::MAX);
        assert_eq!(last[0].1, [1, 1, 1, 0, 0, 0, 0, 0]);
        let b = batch(&last, Windows::new(HOUR_MICROS), &reg).unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.num_columns(), 13);
    }
}

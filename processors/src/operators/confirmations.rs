//! `confirmations`: new suspected, confirmed, excluded, recovered and died
//! per hourly window and district.
//!
//! "New" is the first case event of that status for a person, first by event
//! time: when an earlier report of the same status arrives late, the count
//! moves from the later report's window to the earlier one (a −1 correction
//! row and a +1), so the totals are exact whatever order reports arrive in.

use foldhash::{HashMap, HashMapExt};
use std::io::{Read, Write};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use paicha_contract::event::{Body, CaseStatus, Event};
use paicha_contract::registry::Registry;
use xxhash_rust::xxh3::xxh3_128;

use crate::operators::{
    by_day, load_state, AlertBook, Cx, Final, LogSize, Operator, ReadFile, StateFiles,
};
use crate::store::Manifest;
use crate::tables::{Kind, Table, View};
use crate::time::Windows;
use crate::window_counts::{self, Case, OpenWindow, WindowCounts};
use anyhow::Result;

/// Count columns of `confirmations`, in the order of [`CaseStatus::ALL`].
pub const COUNT_COLUMNS: [&str; 5] = [
    "new_suspected",
    "new_confirmed",
    "new_excluded",
    "new_recovered",
    "new_died",
];

/// A window key: start (µs), district index, and the one tag.
pub type Key = (i64, u16, Case);

/// Counts of one window, in the order of [`COUNT_COLUMNS`].
pub type Counts = [i64; 5];

/// Bytes of one record of the first-report file.
const RECORD: usize = 16 + 1 + 8 + 2;

fn status_index(s: CaseStatus) -> usize {
    CaseStatus::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

/// The Arrow schema of stored `confirmations` rows.
pub fn schema() -> SchemaRef {
    window_counts::schema(None, &COUNT_COLUMNS)
}

/// First reports per person and status, and the windows counting them.
#[derive(Debug)]
pub struct Confirmations {
    /// (person hash, status index) → (event time, district) of the first report.
    firsts: HashMap<(u128, u8), (i64, u16)>,
    /// Changes to `firsts` since the last checkpoint.
    pending: Vec<((u128, u8), (i64, u16))>,
    counts: WindowCounts<Case, 5>,
}

impl Confirmations {
    /// Empty state for windows of the given size.
    pub fn new(windows: Windows) -> Self {
        Confirmations {
            firsts: HashMap::new(),
            pending: Vec::new(),
            counts: WindowCounts::new(windows),
        }
    }

    fn bump(&mut self, time: i64, district: u16, status: usize, by: i64) {
        self.counts.at(time, district, Case)[status] += by;
    }

    /// Counts one (deduplicated) event if it is a case event.
    pub fn add(&mut self, e: &Event) {
        let Body::Case {
            person_key, status, ..
        } = &e.body
        else {
            return;
        };
        let s = status_index(*status);
        let key = (xxh3_128(person_key.as_bytes()), s as u8);
        let first = (e.event_time, e.district);
        match self.firsts.get(&key).copied() {
            None => self.bump(e.event_time, e.district, s, 1),
            Some((t, d)) if e.event_time < t => {
                self.bump(t, d, s, -1);
                self.bump(e.event_time, e.district, s, 1);
            }
            Some(_) => return,
        }
        self.firsts.insert(key, first);
        self.pending.push((key, first));
    }

    /// The windows in memory.
    pub fn counts(&self) -> &WindowCounts<Case, 5> {
        &self.counts
    }

    /// The windows in memory, to finalize or restore.
    pub fn counts_mut(&mut self) -> &mut WindowCounts<Case, 5> {
        &mut self.counts
    }

    /// Whether first reports changed since the last checkpoint.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Marks every first report as pending, so the next write is a full
    /// copy of the state that replaces every earlier file.
    pub fn pend_all(&mut self) {
        self.pending = self.firsts.iter().map(|(k, v)| (*k, *v)).collect();
    }

    /// Writes the first reports changed since the last call.
    pub fn write_pending(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.pending.len() * RECORD);
        for ((person, status), (time, district)) in self.pending.drain(..) {
            buf.extend_from_slice(&person.to_le_bytes());
            buf.push(status);
            buf.extend_from_slice(&time.to_le_bytes());
            buf.extend_from_slice(&district.to_le_bytes());
        }
        out.write_all(&buf)
    }

    /// Loads first reports written by [`Confirmations::write_pending`]; a
    /// later record of a key replaces an earlier one.
    pub fn load(&mut self, input: &mut impl Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        if bytes.len() % RECORD != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "case file length is not a whole number of records",
            ));
        }
        for r in bytes.chunks_exact(RECORD) {
            let mut p = [0u8; 16];
            p.copy_from_slice(&r[..16]);
            let mut t = [0u8; 8];
            t.copy_from_slice(&r[17..25]);
            let mut d = [0u8; 2];
            d.copy_from_slice(&r[25..27]);
            self.firsts.insert(
                (u128::from_le_bytes(p), r[16]),
                (i64::from_le_bytes(t), u16::from_le_bytes(d)),
            );
        }
        Ok(())
    }
}

/// Builds `confirmations` rows.
pub fn batch(
    rows: &[(Key, Counts)],
    windows: Windows,
    registry: &Registry,
) -> arrow::error::Result<RecordBatch> {
    window_counts::batch(schema(), rows, windows, registry)
}

/// The `confirmations` operator.
#[derive(Debug)]
pub struct ConfirmationCounts {
    state: Confirmations,
    log: LogSize,
}

impl ConfirmationCounts {
    pub fn new(windows: Windows) -> Self {
        ConfirmationCounts {
            state: Confirmations::new(windows),
            log: LogSize::default(),
        }
    }
}

const TABLE: &str = "confirmations";

/// The manifest's key of the windows not yet final.
const OPEN: &str = "open_confirmations";

impl Operator for ConfirmationCounts {
    fn tables(&self) -> Vec<Table> {
        vec![Table {
            name: TABLE,
            schema: schema(),
            kind: Kind::Windowed,
            view: View::Folded {
                keys: "window_start, window_end, district, district_name",
                counts: &COUNT_COLUMNS,
            },
        }]
    }

    fn add(&mut self, e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {
        self.state.add(e);
    }

    fn take_final(&mut self, cut: i64, cx: &Cx) -> Result<Vec<Final>> {
        let rows = self.state.counts_mut().take_final(cut);
        by_day(
            TABLE,
            cx.calendar,
            rows,
            |r| r.0 .0,
            |rows| batch(rows, cx.windows, cx.registry),
        )
    }

    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        let rows = self.state.counts().snapshot();
        Ok(vec![(TABLE, batch(&rows, cx.windows, cx.registry)?)])
    }

    fn save(&mut self, m: &mut Manifest, state: &mut StateFiles, cx: &Cx) -> Result<()> {
        state.log(m, "cases", &mut self.log, &mut self.state)?;
        m.set_state(OPEN, &self.state.counts().open(cx.registry))?;
        Ok(())
    }

    fn restore(&mut self, m: &Manifest, read: &ReadFile, cx: &Cx) -> Result<()> {
        load_state(read, m, "cases", |f| self.state.load(f))?;
        self.restore_view(m, read, cx)
    }

    /// The first reports only decide how later events count: a view needs
    /// the open windows alone.
    fn restore_view(&mut self, m: &Manifest, _read: &ReadFile, cx: &Cx) -> Result<()> {
        self.state
            .counts_mut()
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

    fn case(person: &str, status: CaseStatus, t: i64) -> Event {
        Event {
            event_id: format!("{person}-{t}"),
            event_time: t,
            district: 1,
            body: Body::Case {
                person_key: person.into(),
                status,
                hospital: None,
            },
        }
    }

    #[test]
    fn the_first_report_by_event_time_counts_once() {
        let h = HOUR_MICROS;
        let mut c = Confirmations::new(Windows::new(h));
        c.add(&case("a", CaseStatus::Confirmed, 5 * h));
        c.add(&case("a", CaseStatus::Confirmed, 6 * h)); // a re-report
        c.add(&case("a", CaseStatus::Suspected, 6 * h));
        let done = c.counts_mut().take_final(10 * h);
        assert_eq!(
            done,
            vec![
                ((5 * h, 1, Case), [0, 1, 0, 0, 0]),
                ((6 * h, 1, Case), [1, 0, 0, 0, 0])
            ]
        );
        // An earlier confirmation arrives after both windows were written:
        // the count moves from hour 5 to hour 2.
        c.add(&case("a", CaseStatus::Confirmed, 2 * h));
        let done = c.counts_mut().take_final(10 * h);
        assert_eq!(
            done,
            vec![
                ((2 * h, 1, Case), [0, 1, 0, 0, 0]),
                ((5 * h, 1, Case), [0, -1, 0, 0, 0])
            ]
        );
        // The first reports survive a checkpoint round trip.
        let mut file = Vec::new();
        c.write_pending(&mut file).unwrap();
        let mut again = Confirmations::new(Windows::new(h));
        again.load(&mut file.as_slice()).unwrap();
        again.add(&case("a", CaseStatus::Confirmed, 3 * h));
        assert!(again.counts_mut().take_final(i64::MAX).is_empty());
    }
}

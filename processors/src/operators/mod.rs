//! Operators: each table's state and rules, behind one trait.
//!
//! An operator declares the tables it fills ([`Table`]), counts the events
//! handed to it, gives the rows that became final at a checkpoint and the
//! rows SQL sees from memory meanwhile, and saves and restores its own
//! state. [`crate::Processor`] runs them all the same way, and the table
//! list, the live view and the SQL catalog come from their declarations
//! ([`crate::tables`]), so a table is one module here.
//!
//! Operators raise, resolve and withdraw alerts in the [`AlertBook`] they
//! are handed; the book is an operator too, the one that owns `alerts`.
//! Besides event time, operators that judge the present (follow-ups due,
//! days closed for EARS) read the pipeline clock, the watermark, through
//! [`Operator::advance`].

pub mod aberrations;
pub mod alerts;
pub mod beds;
pub mod confirmations;
pub mod dead_letters;
pub mod ears;
pub mod follow_ups;
pub mod raw;
pub mod reporting_gaps;
pub mod symptoms;
pub mod window_counts;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::Event;
use paicha_contract::registry::Registry;

use crate::layout::STATE_DIR;
use crate::store::{Manifest, Retired};
use crate::tables::Table;
use crate::time::{Calendar, Windows, HOUR_MICROS};
use crate::writer::Content;
pub use alerts::AlertBook;

/// What every operator reads besides the event.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub registry: &'a Registry,
    pub windows: Windows,
    pub calendar: Calendar,
    /// The end of the window holding the highest event time consumed (the
    /// last window that has begun), `i64::MIN` before the first event.
    pub clock_end: i64,
}

/// Rows of one table that became final, for one calendar day's partition.
pub struct Final {
    pub table: &'static str,
    /// `YYYY-MM-DD` in the reporting calendar.
    pub day: String,
    pub batches: Vec<RecordBatch>,
}

impl Final {
    /// `batch` of `table`, archived before `before`: one file per table per
    /// archive, in the partition of the last day archived (a first archive
    /// may hold years of days, and a file per day would be thousands).
    pub fn archived(table: &'static str, before: i64, cx: &Cx, batch: RecordBatch) -> Vec<Final> {
        if batch.num_rows() == 0 {
            return Vec::new();
        }
        vec![Final {
            table,
            day: cx.calendar.day(before.saturating_sub(1)).to_string(),
            batches: vec![batch],
        }]
    }
}

/// One table's state and rules.
pub trait Operator: Send {
    /// The tables this operator fills.
    fn tables(&self) -> Vec<Table>;

    /// Counts one event whose id was not counted before.
    fn add(&mut self, e: &Event, cx: &Cx, alerts: &mut AlertBook);

    /// Moves the pipeline clock (the watermark; never backwards) to
    /// `clock`, for operators whose rows depend on the present.
    fn advance(&mut self, _clock: i64, _cx: &Cx, _alerts: &mut AlertBook) {}

    /// Raises, resolves and withdraws the alerts the state shows, at a
    /// checkpoint, before the archive. Their instants come from event
    /// time, so they do not depend on when the events arrived.
    fn detect(&mut self, _cx: &Cx, _alerts: &mut AlertBook) {}

    /// Takes the rows final before `cut` (event time; `i64::MAX` at the end
    /// of a replay), by calendar day, to write at this checkpoint.
    fn take_final(&mut self, cut: i64, cx: &Cx) -> Result<Vec<Final>>;

    /// Rows SQL sees from memory now, by table.
    fn live(&mut self, cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>>;

    /// Saves what a restart needs into the manifest `m` being committed,
    /// larger state as files through `state`.
    fn save(&mut self, m: &mut Manifest, state: &mut StateFiles, cx: &Cx) -> Result<()>;

    /// Restores the state `m` saved, reading its files with `read`.
    fn restore(&mut self, m: &Manifest, read: &ReadFile, cx: &Cx) -> Result<()>;

    /// Restores only what [`Operator::live`] shows: a stopped pipeline's
    /// view. The same as [`Operator::restore`] unless the state has parts
    /// only counting needs.
    fn restore_view(&mut self, m: &Manifest, read: &ReadFile, cx: &Cx) -> Result<()> {
        self.restore(m, read, cx)
    }

    /// Once a day: drops state final before `before` (a day's start), which
    /// the retention has passed, returning the rows of it to keep in files
    /// (tables whose rows the state holds whole).
    fn archive(&mut self, _before: i64, _cx: &Cx, _alerts: &mut AlertBook) -> Result<Vec<Final>> {
        Ok(Vec::new())
    }
}

/// Reads a file of the data directory (or its object store), by path
/// relative to it.
pub type ReadFile<'a> = dyn Fn(&str) -> Result<Vec<u8>> + 'a;

/// Reads the files of `m`'s state `key` in order into `load`.
pub fn load_state(
    read: &ReadFile,
    m: &Manifest,
    key: &str,
    mut load: impl FnMut(&mut &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    let rels: Vec<String> = m.state(key)?.unwrap_or_default();
    for rel in &rels {
        let bytes = read(rel)?;
        load(&mut bytes.as_slice()).with_context(|| format!("cannot read {rel}"))?;
    }
    Ok(())
}

/// Groups `rows` by the calendar day of the instant `at` gives and builds
/// one batch per day.
pub fn by_day<R>(
    table: &'static str,
    calendar: Calendar,
    rows: Vec<R>,
    at: impl Fn(&R) -> i64,
    batch: impl Fn(&[R]) -> arrow::error::Result<RecordBatch>,
) -> Result<Vec<Final>> {
    let mut days: BTreeMap<String, Vec<R>> = BTreeMap::new();
    for row in rows {
        days.entry(calendar.day(at(&row)).to_string())
            .or_default()
            .push(row);
    }
    days.into_iter()
        .map(|(day, rows)| {
            Ok(Final {
                table,
                day,
                batches: vec![batch(&rows)?],
            })
        })
        .collect()
}

/// State a processor saves as the changes of each checkpoint.
pub trait ChangeLog {
    fn has_pending(&self) -> bool;
    /// Makes the next write a full copy of the state.
    fn pend_all(&mut self);
    fn write_pending(&mut self, out: &mut Vec<u8>) -> std::io::Result<()>;
}

/// The change logs are the states' own methods.
macro_rules! change_log {
    ($($t:ty),*) => {$(
        impl ChangeLog for $t {
            fn has_pending(&self) -> bool {
                <$t>::has_pending(self)
            }
            fn pend_all(&mut self) {
                <$t>::pend_all(self)
            }
            fn write_pending(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
                <$t>::write_pending(self, out).map(|_| ())
            }
        }
    )*};
}

change_log!(
    crate::dedupe::Dedupe,
    follow_ups::FollowUps,
    confirmations::Confirmations,
    beds::Beds
);

/// Most files one kind of state is kept in: at the default 2 s interval a
/// forced full copy every 8 or so minutes at most.
const STATE_FILES_KEPT: usize = 256;

/// The bytes of a change log's last full copy and of the changes written
/// since; unknown (zero) after a restart, so the first checkpoint writes a
/// full copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSize {
    copy: usize,
    changes: usize,
}

impl LogSize {
    /// Makes the next write a full copy (the state shrank).
    pub fn forget_copy(&mut self) {
        self.copy = 0;
    }
}

/// The name of state `key`'s files: `follow_ups` in `follow-ups-N.bin`.
fn file_name(key: &str) -> String {
    key.replace('_', "-")
}

/// The state files of the checkpoint being written.
pub struct StateFiles<'a> {
    pub seq: u64,
    /// Unix seconds now, when files retired by a full copy leave.
    pub now_secs: i64,
    pub files: &'a mut Vec<(String, Content)>,
    /// Files the manifest being committed no longer lists, removed once it
    /// is on disk.
    pub superseded: Vec<String>,
}

impl StateFiles<'_> {
    /// Writes the changes of `log` since the last checkpoint as one file
    /// named after `name`, listed in the manifest's state `key`; a full
    /// copy instead once the changes outweigh the last copy (or are too
    /// many files), which retires every earlier file. So a log's files
    /// never pass [`STATE_FILES_KEPT`] nor twice its state's size, and each
    /// byte of state is rewritten a bounded number of times.
    pub fn log(
        &mut self,
        m: &mut Manifest,
        key: &str,
        size: &mut LogSize,
        log: &mut dyn ChangeLog,
    ) -> Result<()> {
        let mut list: Vec<String> = m.state(key)?.unwrap_or_default();
        self.log_into(&mut list, &mut m.retired, size, key, log)?;
        m.set_state(key, &list)
    }

    fn log_into(
        &mut self,
        list: &mut Vec<String>,
        retired: &mut Vec<Retired>,
        size: &mut LogSize,
        key: &str,
        log: &mut dyn ChangeLog,
    ) -> Result<()> {
        if !log.has_pending() {
            return Ok(());
        }
        let mut buf = Vec::new();
        log.write_pending(&mut buf)?;
        let full = list.len() + 1 >= STATE_FILES_KEPT
            || size.changes.saturating_add(buf.len()) > size.copy;
        if full {
            buf.clear();
            log.pend_all();
            log.write_pending(&mut buf)?;
            let since = self.now_secs;
            retired.extend(list.drain(..).map(|path| Retired { path, since }));
            *size = LogSize {
                copy: buf.len(),
                changes: 0,
            };
        } else {
            size.changes += buf.len();
        }
        let rel = format!("{STATE_DIR}/{}-{:010}.bin", file_name(key), self.seq);
        list.push(rel.clone());
        self.files.push((rel, Content::Bytes(buf)));
        Ok(())
    }
}

/// The operators a processor runs: typed, where the processor needs more
/// of one than the trait (the bed gauges, the follow-up gauges).
pub struct Operators {
    pub symptoms: symptoms::SymptomCounts,
    pub confirmations: confirmations::ConfirmationCounts,
    pub beds: beds::BedOccupancy,
    pub dead_letters: dead_letters::DeadLetters,
    pub raw: raw::RawTables,
    pub follow_ups: follow_ups::FollowUpEpisodes,
    pub aberrations: aberrations::Aberrations,
    pub reporting_gaps: reporting_gaps::ReportingGaps,
    /// Where the others' alerts go.
    pub alerts: AlertBook,
    /// The pipeline clock they were last advanced to.
    clock: i64,
}

impl Operators {
    /// Operators counting in `windows` and `calendar` days, raising bed
    /// alerts above `bed_alert_share`, and keeping for `keep_micros` the
    /// visits of persons never under observation.
    pub fn new(
        windows: Windows,
        calendar: Calendar,
        bed_alert_share: f64,
        keep_micros: i64,
    ) -> Self {
        Operators {
            symptoms: symptoms::SymptomCounts::new(windows),
            confirmations: confirmations::ConfirmationCounts::new(windows),
            beds: beds::BedOccupancy::new(windows, bed_alert_share),
            dead_letters: dead_letters::DeadLetters::default(),
            raw: raw::RawTables::new(calendar),
            follow_ups: follow_ups::FollowUpEpisodes::new(keep_micros),
            aberrations: aberrations::Aberrations::new(calendar),
            reporting_gaps: reporting_gaps::ReportingGaps::new(calendar),
            alerts: AlertBook::default(),
            clock: i64::MIN,
        }
    }

    /// Every operator but the alert book, in the order their files are
    /// written, and the book.
    fn parts(&mut self) -> ([&mut dyn Operator; 8], &mut AlertBook) {
        (
            [
                &mut self.symptoms,
                &mut self.confirmations,
                &mut self.beds,
                &mut self.raw,
                &mut self.dead_letters,
                &mut self.follow_ups,
                &mut self.aberrations,
                &mut self.reporting_gaps,
            ],
            &mut self.alerts,
        )
    }

    /// Each operator, the alert book last.
    pub fn each(&mut self) -> impl Iterator<Item = &mut dyn Operator> {
        let (ops, alerts) = self.parts();
        ops.into_iter()
            .chain(std::iter::once(alerts as &mut dyn Operator))
    }

    /// The tables they fill, from each operator's declaration.
    pub fn tables() -> Vec<Table> {
        // A declaration does not depend on the settings.
        let mut ops = Operators::new(Windows::new(HOUR_MICROS), Calendar::default(), 1.0, 0);
        ops.each().flat_map(|op| op.tables()).collect()
    }

    /// Counts one new event.
    pub fn add(&mut self, e: &Event, cx: &Cx) {
        let (ops, alerts) = self.parts();
        for op in ops {
            op.add(e, cx, alerts);
        }
    }

    /// Moves the pipeline clock to `clock` (never backwards).
    pub fn advance(&mut self, clock: i64, cx: &Cx) {
        if clock <= self.clock {
            return;
        }
        self.clock = clock;
        let (ops, alerts) = self.parts();
        alerts.advance(clock);
        for op in ops {
            op.advance(clock, cx, alerts);
        }
    }

    /// The pipeline clock, `i64::MIN` before it first moved.
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Raises, resolves and withdraws the alerts the state shows now.
    pub fn detect(&mut self, cx: &Cx) {
        let (ops, alerts) = self.parts();
        for op in ops {
            op.detect(cx, alerts);
        }
    }

    /// Moves what is final before `before` out of every operator, the rows
    /// to keep in files returned; the alert book last, as the others
    /// release their alerts into it.
    pub fn archive(&mut self, before: i64, cx: &Cx) -> Result<Vec<Final>> {
        let (ops, alerts) = self.parts();
        let mut finals = Vec::new();
        for op in ops {
            finals.extend(op.archive(before, cx, alerts)?);
        }
        finals.extend(alerts.take_archived(before, cx)?);
        Ok(finals)
    }

    /// Restores every operator from `m` (only what their live rows need
    /// with `view_only`), then the clock it was saved at.
    pub fn restore(
        &mut self,
        m: &Manifest,
        read: &ReadFile,
        cx: &Cx,
        view_only: bool,
    ) -> Result<()> {
        for op in self.each() {
            if view_only {
                op.restore_view(m, read, cx)?;
            } else {
                op.restore(m, read, cx)?;
            }
        }
        self.follow_ups.state.link(self.alerts.alerts());
        self.advance(m.follow_up_clock.unwrap_or(i64::MIN), cx);
        // Every alert the clock raises again was published before.
        self.alerts.take_news();
        Ok(())
    }
}

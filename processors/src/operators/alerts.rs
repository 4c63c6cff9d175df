//! `alerts`: every alert the other operators raise, resolve or withdraw,
//! kept as one book.
//!
//! Operators do not publish alerts themselves: follow-ups (overdue visits),
//! EARS (aberrant days) and bed occupancy (hospitals above the threshold)
//! each write to the book they are handed ([`crate::operators::Operator::detect`]
//! and the other methods that take it). An alert's id names its condition,
//! so raising it again only corrects it; the book keeps what changed for
//! the alerts topic (`take_news`), writes itself at a checkpoint when it
//! changed, and hands alerts that can no longer change to the archive.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::Event;

use super::follow_ups::OVERDUE;
use super::{Cx, Final, Operator, ReadFile, StateFiles};
use crate::layout::STATE_DIR;
use crate::store::Manifest;
use crate::tables::Table;

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

impl Alert {
    /// When the alert can no longer change: its resolution, or for an EARS
    /// alarm (about one closed day, never resolved) when it was raised.
    /// `None` while it is open.
    pub fn final_at(&self) -> Option<i64> {
        match self.resolved_at {
            Some(r) => Some(r),
            None if self.kind.starts_with("ears_") => Some(self.raised_at),
            None => None,
        }
    }
}

/// Where an alert's detail says that later events show it was not true;
/// the reason follows.
pub const WITHDRAWN: &str = "; withdrawn: ";

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

const TABLE: &str = "alerts";

/// Every alert raised and not yet archived, in the order raised.
#[derive(Debug)]
pub struct AlertBook {
    alerts: Vec<Alert>,
    index: HashMap<String, usize>,
    /// Alerts raised or resolved since last taken, for the alerts topic.
    news: Vec<Alert>,
    /// Counts every change, so the rows are rebuilt only when one happened.
    version: u64,
    /// The version the last checkpoint wrote.
    written: u64,
    /// Alerts final before this instant were archived: one raised again
    /// is not new.
    archived_before: i64,
    /// The pipeline clock: an open alert withdrawn is resolved at it.
    clock: i64,
    /// The rows last built for SQL, with the version they show.
    rows: Option<(u64, RecordBatch)>,
    /// Alerts taken out for the archive being written.
    archived: Vec<Alert>,
}

impl Default for AlertBook {
    fn default() -> Self {
        AlertBook {
            alerts: Vec::new(),
            index: HashMap::new(),
            news: Vec::new(),
            version: 0,
            written: 0,
            archived_before: i64::MIN,
            clock: i64::MIN,
            rows: None,
            archived: Vec::new(),
        }
    }
}

impl AlertBook {
    /// Moves the clock withdrawals resolve at (never backwards).
    pub fn advance(&mut self, clock: i64) {
        self.clock = self.clock.max(clock);
    }

    /// Raises `alert`, or makes the one of its id stand with its resolution
    /// (undoing a withdrawal): alerts' instants come from the events, so the
    /// latest view of them wins.
    pub fn raise(&mut self, alert: Alert) {
        match self.index.get(&alert.alert_id).copied() {
            Some(k) => {
                self.settle_at(k, alert.resolved_at);
                // A late event changes what an alert reports (the count of
                // an EARS day, a hospital's utilization): the latest
                // evaluation's words stand, so the row does not depend on
                // when the alert was first raised. Not news: the alert was
                // raised once, and `paicha_alerts_raised_total` counts it
                // once.
                if let Some(a) = self.alerts.get_mut(k) {
                    if a.detail != alert.detail || a.severity != alert.severity {
                        a.detail = alert.detail;
                        a.severity = alert.severity;
                        self.version += 1;
                    }
                }
            }
            // Final before the archive's horizon: raised and archived
            // already (nothing that arrives now can make a new one).
            None if alert.final_at().is_some_and(|t| t < self.archived_before) => {}
            None => self.push(alert),
        }
    }

    /// Raises `alert` as it is, or, if its id is known, only makes it stand
    /// with its resolution.
    pub fn raise_or_settle(&mut self, alert: Alert) {
        match self.index.get(&alert.alert_id).copied() {
            Some(k) => self.settle_at(k, alert.resolved_at),
            None => self.push(alert),
        }
    }

    /// Makes the known alert `k` stand with resolution `resolved_at`,
    /// undoing a withdrawal if later events show it true after all.
    fn settle_at(&mut self, k: usize, resolved_at: Option<i64>) {
        let Some(a) = self.alerts.get_mut(k) else {
            return;
        };
        let withdrawn = a.detail.find(WITHDRAWN);
        if a.resolved_at != resolved_at || withdrawn.is_some() {
            if let Some(at) = withdrawn {
                a.detail.truncate(at);
            }
            a.resolved_at = resolved_at;
            self.news.push(a.clone());
            self.version += 1;
        }
    }

    /// Withdraws the alert `id` if it was raised: later events show it was
    /// never true. It stays (it was published), resolved at the clock if it
    /// was open, its detail saying why.
    pub fn withdraw(&mut self, id: &str, why: &str) {
        let clock = self.clock;
        let Some(a) = self.index.get(id).and_then(|k| self.alerts.get_mut(*k)) else {
            return;
        };
        if a.detail.contains(WITHDRAWN) {
            return;
        }
        a.resolved_at = Some(a.resolved_at.unwrap_or(a.raised_at.max(clock)));
        a.detail.push_str(WITHDRAWN);
        a.detail.push_str(why);
        self.news.push(a.clone());
        self.version += 1;
    }

    fn push(&mut self, alert: Alert) {
        self.index.insert(alert.alert_id.clone(), self.alerts.len());
        self.news.push(alert.clone());
        self.alerts.push(alert);
        self.version += 1;
    }

    /// Every alert held, in order.
    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    /// Alerts raised or resolved since the last call.
    pub fn take_news(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.news)
    }

    /// Takes out every alert final before `before` that `leaves` lets go,
    /// for the archive: the operator that raised an alert may hold it
    /// longer (a follow-up alert goes with its episode).
    pub fn release(&mut self, before: i64, leaves: impl Fn(&Alert) -> bool) -> Vec<Alert> {
        self.archived_before = self.archived_before.max(before);
        let (gone, kept): (Vec<Alert>, Vec<Alert>) = std::mem::take(&mut self.alerts)
            .into_iter()
            .partition(|a| a.final_at().is_some_and(|t| t < before) && leaves(a));
        self.alerts = kept;
        if !gone.is_empty() {
            self.reindex();
            self.version += 1;
        }
        self.archived.extend(gone.iter().cloned());
        gone
    }

    fn reindex(&mut self) {
        self.index = self
            .alerts
            .iter()
            .enumerate()
            .map(|(k, a)| (a.alert_id.clone(), k))
            .collect();
    }

    /// The `alerts` rows the archive writes, once every other operator
    /// archived: the alerts they released (follow-ups hold theirs until
    /// their episode leaves), and every other alert final before `before`.
    pub fn take_archived(&mut self, before: i64, cx: &Cx) -> Result<Vec<Final>> {
        self.release(before, |a| a.kind != OVERDUE);
        let gone = std::mem::take(&mut self.archived);
        Ok(Final::archived(TABLE, before, cx, alerts_batch(&gone)?))
    }

    /// Restores alerts saved with a checkpoint, so a restart never raises
    /// one twice.
    pub fn restore_alerts(&mut self, alerts: Vec<Alert>) {
        self.alerts = alerts;
        self.reindex();
        self.news.clear();
        // Restored alerts are already written; their rows are new to SQL.
        self.version += 1;
        self.written = self.version;
    }
}

impl Operator for AlertBook {
    fn tables(&self) -> Vec<Table> {
        vec![Table::held(TABLE, alerts_schema())]
    }

    /// Alerts come from the other operators, not from events.
    fn add(&mut self, _e: &Event, _cx: &Cx, _alerts: &mut AlertBook) {}

    /// Held until archived: nothing becomes final at a checkpoint.
    fn take_final(&mut self, _cut: i64, _cx: &Cx) -> Result<Vec<Final>> {
        Ok(Vec::new())
    }

    fn live(&mut self, _cx: &Cx) -> Result<Vec<(&'static str, RecordBatch)>> {
        if let Some((v, rows)) = &self.rows {
            if *v == self.version {
                return Ok(vec![(TABLE, rows.clone())]);
            }
        }
        let rows = alerts_batch(&self.alerts)?;
        self.rows = Some((self.version, rows.clone()));
        Ok(vec![(TABLE, rows)])
    }

    /// The whole book as one JSON file, when it changed: alerts are few.
    fn save(&mut self, m: &mut Manifest, state: &mut StateFiles, _cx: &Cx) -> Result<()> {
        if self.version == self.written {
            return Ok(());
        }
        self.written = self.version;
        let rel = format!("{STATE_DIR}/alerts-{:010}.json", state.seq);
        let bytes = serde_json::to_vec(&self.alerts)?;
        state.superseded.extend(m.state::<String>(TABLE)?);
        m.set_state(TABLE, &rel)?;
        state
            .files
            .push((rel, crate::writer::Content::Bytes(bytes)));
        Ok(())
    }

    fn restore(&mut self, m: &Manifest, read: &ReadFile, _cx: &Cx) -> Result<()> {
        let alerts = match m.state::<String>(TABLE)? {
            Some(rel) => {
                serde_json::from_slice(&read(&rel)?).with_context(|| format!("{rel} is corrupt"))?
            }
            None => Vec::new(),
        };
        self.restore_alerts(alerts);
        if let Some(before) = m.archived_before {
            self.archived_before = self.archived_before.max(before);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ears(detail: &str, severity: &str) -> Alert {
        Alert {
            alert_id: "ears_c1:500101:pharmacy:2020-01-27".into(),
            raised_at: 10,
            kind: "ears_c1".into(),
            severity: severity.into(),
            district: "500101".into(),
            hospital_id: None,
            person_key: None,
            detail: detail.into(),
            resolved_at: None,
        }
    }

    #[test]
    fn raising_again_corrects_the_words_and_withdrawing_resolves_at_the_clock() {
        let mut book = AlertBook::default();
        book.advance(50);
        book.raise(ears("7 suspicious", "warning"));
        let version = book.version;
        // Late events of that day raise its count: the same alert, the
        // latest words, whatever order the counts came in.
        book.raise(ears("9 suspicious", "critical"));
        assert!(book.version > version, "the rows are rebuilt");
        book.raise(ears("9 suspicious", "critical"));
        assert_eq!(book.alerts().len(), 1);
        assert_eq!(book.alerts()[0].severity, "critical");
        assert_eq!(book.alerts()[0].detail, "9 suspicious");
        // Corrected words are not news: the alert was raised once.
        assert_eq!(book.take_news().len(), 1);
        book.withdraw("ears_c1:500101:pharmacy:2020-01-27", "later events");
        let a = &book.alerts()[0];
        assert_eq!(a.resolved_at, Some(50));
        assert!(a.detail.ends_with("; withdrawn: later events"));
        // An EARS alert is final once raised: the archive takes it.
        assert_eq!(book.release(60, |_| true).len(), 1);
        assert!(book.alerts().is_empty());
        // Raised again after its archive: not new.
        book.raise(ears("9 suspicious", "critical"));
        assert!(book.alerts().is_empty());
    }
}

//! What the state shows the command center: alerts, follow-ups, beds.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{counter_vec, gauge_vec, registered, InternalEvent};
use crate::metrics::Metrics;

pub(crate) struct Handles {
    alerts_raised: IntCounterVec,
    follow_ups: IntGaugeVec,
    follow_ups_overdue: IntGaugeVec,
    bed_utilization: GaugeVec,
    beds_occupied: IntGaugeVec,
}

impl Handles {
    pub(crate) fn register(r: &Registry) -> prometheus::Result<Self> {
        let hospital = ["hospital_id", "district", "designated"];
        Ok(Handles {
            alerts_raised: counter_vec(
                r,
                "paicha_alerts_raised_total",
                "Alerts raised (also written to screening.alerts), by kind and severity.",
                &["kind", "severity"],
            )?,
            follow_ups: gauge_vec(
                r,
                "paicha_follow_ups",
                "Observation episodes by district and status at the pipeline clock.",
                &["district", "status"],
            )?,
            follow_ups_overdue: gauge_vec(
                r,
                "paicha_follow_ups_overdue",
                "Overdue follow-ups by district and whole days missed (1, 2, 3, 4+).",
                &["district", "days_missed"],
            )?,
            bed_utilization: registered(
                r,
                GaugeVec::new(
                    Opts::new(
                        "paicha_bed_utilization_ratio",
                        "Occupied beds over beds in service per hospital, at the latest window.",
                    ),
                    &hospital,
                )?,
            )?,
            beds_occupied: gauge_vec(
                r,
                "paicha_beds_occupied",
                "Occupied beds per hospital, at the latest window.",
                &hospital,
            )?,
        })
    }
}

/// An alert published to `screening.alerts`: `raised` when it is new and
/// open (a resolution or withdrawal is published too, but not counted).
pub struct AlertPublished<'a> {
    pub kind: &'a str,
    pub severity: &'a str,
    pub district: &'a str,
    pub raised: bool,
}

impl InternalEvent for AlertPublished<'_> {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            kind = self.kind,
            severity = self.severity,
            district = self.district,
            raised = self.raised,
            "alert published"
        );
        if self.raised {
            m.state
                .alerts_raised
                .with_label_values(&[self.kind, self.severity])
                .inc();
        }
    }
}

/// Episodes at the pipeline clock, as (district, status, episodes), and
/// the overdue ones as (district, days missed, episodes), of every task
/// this instance runs.
pub struct FollowUpsCounted<'a> {
    pub by_status: &'a [(&'a str, &'a str, i64)],
    pub by_days: &'a [(&'a str, &'a str, i64)],
}

impl InternalEvent for FollowUpsCounted<'_> {
    fn emit(self, m: &Metrics) {
        let s = &m.state;
        s.follow_ups.reset();
        for (district, status, n) in self.by_status {
            s.follow_ups.with_label_values(&[district, status]).set(*n);
        }
        s.follow_ups_overdue.reset();
        for (district, days, n) in self.by_days {
            s.follow_ups_overdue
                .with_label_values(&[district, days])
                .set(*n);
        }
    }
}

/// One hospital's beds at the latest window.
pub struct HospitalBeds<'a> {
    pub hospital_id: &'a str,
    pub district: &'a str,
    pub designated: bool,
    pub total: i64,
    pub occupied: i64,
}

/// The beds of every hospital with bed events in the tasks this instance
/// runs (a task that moved away is reported where it went).
pub struct BedsCounted<'a> {
    pub hospitals: &'a [HospitalBeds<'a>],
}

impl InternalEvent for BedsCounted<'_> {
    fn emit(self, m: &Metrics) {
        let s = &m.state;
        s.beds_occupied.reset();
        s.bed_utilization.reset();
        for h in self.hospitals {
            let designated = if h.designated { "true" } else { "false" };
            let labels = [h.hospital_id, h.district, designated];
            s.beds_occupied.with_label_values(&labels).set(h.occupied);
            if h.total > 0 {
                s.bed_utilization
                    .with_label_values(&labels)
                    .set(h.occupied as f64 / h.total as f64);
            }
        }
    }
}

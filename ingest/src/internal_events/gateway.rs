//! The ingest gateway: requests answered and what became of their events.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Registry};

use paicha_contract::event::Source;

use super::{counter_vec, registered, InternalEvent};
use crate::metrics::Metrics;

pub(crate) struct Handles {
    requests: IntCounterVec,
    events: IntCounterVec,
    request_duration: Histogram,
}

impl Handles {
    pub(crate) fn register(r: &Registry) -> prometheus::Result<Self> {
        let h = Handles {
            requests: counter_vec(
                r,
                "paicha_gateway_requests_total",
                "Ingest gateway requests answered, by source and HTTP status code.",
                &["source", "code"],
            )?,
            events: counter_vec(
                r,
                "paicha_gateway_events_total",
                "Events the ingest gateway answered for, by source and outcome (accepted: Kafka acknowledged it; rejected: invalid; retry: not acknowledged, send again).",
                &["source", "outcome"],
            )?,
            request_duration: registered(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "paicha_gateway_request_duration_seconds",
                        "Time from an ingest gateway request's arrival to its answer.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ]),
                )?,
            )?,
        };
        for s in Source::ALL {
            for outcome in ["accepted", "rejected", "retry"] {
                h.events.with_label_values(&[s.as_str(), outcome]);
            }
        }
        Ok(h)
    }
}

/// A request answered with HTTP `status` after `took`.
pub struct RequestAnswered<'a> {
    /// The source its path names, or `unknown`.
    pub source: &'a str,
    pub status: &'a str,
    pub took: Duration,
}

impl InternalEvent for RequestAnswered<'_> {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            source = self.source,
            status = self.status,
            took_ms = self.took.as_millis() as u64,
            "gateway request answered"
        );
        let g = &m.gateway;
        g.requests
            .with_label_values(&[self.source, self.status])
            .inc();
        g.request_duration.observe(self.took.as_secs_f64());
    }
}

/// `count` events of a request that were `accepted`, `rejected` or told to
/// `retry`.
pub struct EventsAnswered<'a> {
    pub source: Source,
    pub outcome: &'a str,
    pub count: usize,
}

impl InternalEvent for EventsAnswered<'_> {
    fn emit(self, m: &Metrics) {
        m.gateway
            .events
            .with_label_values(&[self.source.as_str(), self.outcome])
            .inc_by(self.count as u64);
    }
}

//! Instrumentation as events, as Vector's `internal_events` are: each event
//! is a struct for one thing that happened, and emitting it
//! ([`crate::metrics::Metrics::emit`]) logs it and updates its metrics
//! together, so a call site says what happened rather than which series
//! move, and a log line and its series cannot disagree. A module per role
//! holds its events and the Prometheus metrics they update.

pub mod checkpoint;
pub mod consumer;
pub mod gateway;
pub mod kafka;
pub mod state;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::metrics::Metrics;

/// Something that happened inside paicha, logged and counted on emit.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// Registers `metric` with `registry` and returns it.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

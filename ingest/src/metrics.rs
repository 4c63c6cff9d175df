//! The pipeline's Prometheus metrics, named by Prometheus conventions
//! (`paicha_<what>_<unit>_total` for counters), with low-cardinality labels.
//! Nothing sets them directly: an [`InternalEvent`] emitted through
//! [`Metrics::emit`] logs and counts what happened
//! ([`crate::internal_events`]).

use prometheus::Registry;

use crate::internal_events::{checkpoint, consumer, gateway, kafka, state, InternalEvent};

/// Every metric of the process, registered once, by role.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `GET /metrics` exposes.
    pub registry: Registry,
    pub(crate) consumer: std::sync::Arc<consumer::Handles>,
    pub(crate) checkpoint: std::sync::Arc<checkpoint::Handles>,
    pub(crate) state: std::sync::Arc<state::Handles>,
    pub(crate) gateway: std::sync::Arc<gateway::Handles>,
    pub(crate) kafka: std::sync::Arc<kafka::Handles>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        Ok(Metrics {
            consumer: consumer::Handles::register(&registry)?.into(),
            checkpoint: checkpoint::Handles::register(&registry)?.into(),
            state: state::Handles::register(&registry)?.into(),
            gateway: gateway::Handles::register(&registry)?.into(),
            kafka: kafka::Handles::register(&registry)?.into(),
            registry,
        })
    }

    /// Logs `event` and updates its metrics.
    pub fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }
}

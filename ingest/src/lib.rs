//! The ingest edge of paicha: the Kafka source and producers (the embedded
//! cluster, replay, flow control, dead letters), the HTTP gateway and the
//! pipeline's metrics. The event contract itself is `paicha-contract`.

pub mod bearer;
pub mod gateway;
pub mod internal_events;
pub mod kafka;
pub mod metrics;

//! The ingest edge of paicha: the event contract (types, decoding and
//! validation), pseudonymization, the registries, the Kafka source and
//! producers, dead letters and the simulator.

pub mod bearer;
pub mod event;
pub mod gateway;
pub mod kafka;
pub mod metrics;
pub mod pseudonym;
pub mod registry;
pub mod simulate;

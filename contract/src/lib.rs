//! The event contract of paicha (`shared/contract/events.md`): the event
//! types, their decoding and validation, the district and hospital
//! registries, pseudonymization, the topics and the partitioner.
//!
//! Every other crate builds on this one, so it stays light: no Kafka client,
//! no server, no query engine.

pub mod event;
pub mod pseudonym;
pub mod registry;
pub mod topics;

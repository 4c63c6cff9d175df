//! Kafka clients: brokers reachable and the errors librdkafka reports.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::{counter_vec, gauge_vec, InternalEvent};
use crate::metrics::Metrics;

pub(crate) struct Handles {
    brokers_up: IntGaugeVec,
    errors: IntCounterVec,
}

impl Handles {
    pub(crate) fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Handles {
            brokers_up: gauge_vec(
                r,
                "paicha_kafka_brokers_up",
                "Kafka brokers a client is connected to, by client; 0 while Kafka is unreachable.",
                &["client"],
            )?,
            errors: counter_vec(
                r,
                "paicha_kafka_errors_total",
                "Errors librdkafka reported, by client and error.",
                &["client", "error"],
            )?,
        })
    }
}

/// A Kafka client was created: its brokers series shows 0 until its first
/// statistics report says otherwise, so an alert on it sees the client
/// from the start.
pub struct ClientStarted {
    pub client: &'static str,
}

impl InternalEvent for ClientStarted {
    fn emit(self, m: &Metrics) {
        tracing::debug!(client = self.client, "Kafka client started");
        m.kafka.brokers_up.with_label_values(&[self.client]);
    }
}

/// A client's statistics: `up` brokers now, `before` at the last report
/// (-1 before the first). Losing the last broker and getting one back are
/// logged, both at warn: the end of an outage belongs in the same log as
/// its start.
pub struct BrokersUp {
    pub client: &'static str,
    pub up: i64,
    pub before: i64,
}

impl InternalEvent for BrokersUp {
    fn emit(self, m: &Metrics) {
        if self.up == 0 && self.before != 0 {
            tracing::warn!(
                client = self.client,
                "Kafka is unreachable: no broker is up; waiting for it and retrying"
            );
        } else if self.up > 0 && self.before == 0 {
            tracing::warn!(
                client = self.client,
                brokers = self.up,
                "Kafka is reachable again; resuming"
            );
        }
        m.kafka
            .brokers_up
            .with_label_values(&[self.client])
            .set(self.up);
    }
}

/// An error librdkafka reported (or a poll returned), by its code. A broker
/// that stays away repeats the same error many times a second, so the
/// caller says whether this one is `logged`.
pub struct KafkaErrorReported<'a> {
    pub client: &'static str,
    pub code: &'a str,
    pub error: &'a dyn std::fmt::Display,
    pub reason: &'a str,
    pub logged: bool,
}

impl InternalEvent for KafkaErrorReported<'_> {
    fn emit(self, m: &Metrics) {
        if self.logged {
            tracing::warn!(client = self.client, error = %self.error, reason = self.reason, "Kafka client error");
        }
        m.kafka
            .errors
            .with_label_values(&[self.client, self.code])
            .inc();
    }
}

/// Kafka deleted messages before the consumer read them (an offset reset:
/// topic retention shorter than the lag): events lost to paicha, which
/// librdkafka only logs as a warning.
pub struct OffsetReset<'a> {
    pub client: &'static str,
    pub message: &'a str,
}

impl InternalEvent for OffsetReset<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            client = self.client,
            "Kafka deleted messages before paicha read them (offset reset; topic \
             retention shorter than the lag): {}",
            self.message
        );
        m.kafka
            .errors
            .with_label_values(&[self.client, "OffsetReset"])
            .inc();
    }
}

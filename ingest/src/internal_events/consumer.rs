//! The consumer: messages and events taken in, refused, forwarded, and the
//! partitions it owns and how far behind it is.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use paicha_contract::event::{RejectReason, Source};

use super::{counter_vec, gauge_vec, registered, InternalEvent};
use crate::metrics::Metrics;

pub(crate) struct Handles {
    events_consumed: IntCounterVec,
    events_accepted: IntCounterVec,
    events_duplicate: IntCounterVec,
    events_rerouted: IntCounterVec,
    events_rejected: IntCounterVec,
    messages_consumed: IntCounterVec,
    dead_letters: IntCounterVec,
    dead_letters_produced: IntCounter,
    position: IntGaugeVec,
    lag: IntGaugeVec,
    partition_tasks: IntGauge,
    rebalances: IntCounter,
}

impl Handles {
    pub(crate) fn register(r: &Registry) -> prometheus::Result<Self> {
        let h = Handles {
            events_consumed: counter_vec(
                r,
                "paicha_events_consumed_total",
                "Valid events decoded, by source, before deduplication.",
                &["source"],
            )?,
            events_accepted: counter_vec(
                r,
                "paicha_events_accepted_total",
                "Events counted (first delivery of an event_id), by source.",
                &["source"],
            )?,
            events_duplicate: counter_vec(
                r,
                "paicha_events_duplicate_total",
                "Events whose event_id was already counted, by source.",
                &["source"],
            )?,
            events_rerouted: counter_vec(
                r,
                "paicha_events_rerouted_total",
                "Valid events that arrived on another partition than the one Kafka's murmur2 gives their district (a producer with another partitioner) and were forwarded to it through screening.repartition, by source.",
                &["source"],
            )?,
            events_rejected: counter_vec(
                r,
                "paicha_events_rejected_total",
                "Events refused and sent to the dead-letter topic, by topic source and reason.",
                &["source", "reason"],
            )?,
            messages_consumed: counter_vec(
                r,
                "paicha_kafka_messages_consumed_total",
                "Kafka messages consumed, by topic.",
                &["topic"],
            )?,
            dead_letters: counter_vec(
                r,
                "paicha_dead_letters_total",
                "Dead letters recorded in the dead_letters table, by reason.",
                &["reason"],
            )?,
            dead_letters_produced: registered(
                r,
                IntCounter::new(
                    "paicha_dead_letters_produced_total",
                    "Messages written to screening.dead_letter.",
                )?,
            )?,
            position: gauge_vec(
                r,
                "paicha_kafka_consumer_position",
                "Next offset to consume, by topic and partition.",
                &["topic", "partition"],
            )?,
            lag: gauge_vec(
                r,
                "paicha_kafka_consumer_lag",
                "Messages between the consumer's position and the end of the partition.",
                &["topic", "partition"],
            )?,
            partition_tasks: registered(
                r,
                IntGauge::new(
                    "paicha_partition_tasks",
                    "Partition tasks this instance runs: partition p of every consumed topic.",
                )?,
            )?,
            rebalances: registered(
                r,
                IntCounter::new(
                    "paicha_rebalances_total",
                    "Partition assignments received from the consumer group.",
                )?,
            )?,
        };
        // Every series from the start, so rates and alerts see zeros.
        for reason in RejectReason::ALL {
            h.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for s in Source::ALL {
            h.events_consumed.with_label_values(&[s.as_str()]);
            h.events_accepted.with_label_values(&[s.as_str()]);
            h.events_duplicate.with_label_values(&[s.as_str()]);
            for reason in RejectReason::ALL {
                h.events_rejected
                    .with_label_values(&[s.as_str(), reason.as_str()]);
            }
        }
        Ok(h)
    }
}

/// A Kafka message taken from `topic`.
pub struct MessageConsumed<'a> {
    pub topic: &'a str,
}

impl InternalEvent for MessageConsumed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::trace!(topic = self.topic, "message consumed");
        m.consumer
            .messages_consumed
            .with_label_values(&[self.topic])
            .inc();
    }
}

/// The valid events of one message, of which `accepted` were counted and
/// the rest were duplicates.
pub struct EventsCounted {
    pub source: Source,
    pub valid: u64,
    pub accepted: u64,
}

impl InternalEvent for EventsCounted {
    fn emit(self, m: &Metrics) {
        let duplicates = self.valid.saturating_sub(self.accepted);
        tracing::trace!(
            source = self.source.as_str(),
            accepted = self.accepted,
            duplicates,
            "events counted"
        );
        let label = [self.source.as_str()];
        let c = &m.consumer;
        c.events_consumed
            .with_label_values(&label)
            .inc_by(self.valid);
        c.events_accepted
            .with_label_values(&label)
            .inc_by(self.accepted);
        c.events_duplicate
            .with_label_values(&label)
            .inc_by(duplicates);
    }
}

/// Events refused (by the consumer or the gateway) and dead-lettered.
pub struct EventsRejected<'a> {
    /// The source its topic or path names, or `unknown`.
    pub source: &'a str,
    pub reason: RejectReason,
    pub count: u64,
}

impl InternalEvent for EventsRejected<'_> {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            source = self.source,
            reason = self.reason.as_str(),
            count = self.count,
            "events rejected"
        );
        m.consumer
            .events_rejected
            .with_label_values(&[self.source, self.reason.as_str()])
            .inc_by(self.count);
    }
}

/// Valid events that came on another partition than their district's,
/// forwarded to it. `first` says whether they are the first of the run,
/// which is worth a warning: a producer does not partition as Kafka does.
pub struct EventsRerouted<'a> {
    pub source: Source,
    pub topic: &'a str,
    pub partition: i32,
    pub count: u64,
    pub first: bool,
}

impl InternalEvent for EventsRerouted<'_> {
    fn emit(self, m: &Metrics) {
        if self.first {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                "events arrive on another partition than their district's: a producer does not partition by Kafka's murmur2 of the district; paicha forwards them to their district's partition through screening.repartition (paicha_events_rerouted_total)"
            );
        }
        m.consumer
            .events_rerouted
            .with_label_values(&[self.source.as_str()])
            .inc_by(self.count);
    }
}

/// A dead letter recorded in the `dead_letters` table.
pub struct DeadLetterRecorded<'a> {
    pub reason: &'a str,
}

impl InternalEvent for DeadLetterRecorded<'_> {
    fn emit(self, m: &Metrics) {
        tracing::debug!(reason = self.reason, "dead letter recorded");
        m.consumer
            .dead_letters
            .with_label_values(&[self.reason])
            .inc();
    }
}

/// A message written to `screening.dead_letter`.
pub struct DeadLetterProduced;

impl InternalEvent for DeadLetterProduced {
    fn emit(self, m: &Metrics) {
        tracing::trace!("dead letter produced");
        m.consumer.dead_letters_produced.inc();
    }
}

/// The consumer group gave this instance its partitions: `partitions`,
/// listed.
pub struct PartitionsAssigned<'a> {
    pub tasks: usize,
    pub partitions: &'a str,
}

impl InternalEvent for PartitionsAssigned<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(partitions = self.partitions, "partition tasks assigned");
        m.consumer.partition_tasks.set(self.tasks as i64);
        m.consumer.rebalances.inc();
    }
}

/// The next offset to consume of every partition this instance runs.
pub struct Positions<'a> {
    pub next: &'a [(&'a str, i32, i64)],
}

impl InternalEvent for Positions<'_> {
    fn emit(self, m: &Metrics) {
        per_partition(&m.consumer.position, self.next);
    }
}

/// Sets `gauge` to `values` by (topic, partition), and drops the others.
fn per_partition(gauge: &IntGaugeVec, values: &[(&str, i32, i64)]) {
    gauge.reset();
    for (topic, partition, value) in values {
        gauge
            .with_label_values(&[*topic, partition.to_string().as_str()])
            .set(*value);
    }
}

/// Messages behind the end of each partition this instance runs.
pub struct Lag<'a> {
    pub behind: &'a [(&'a str, i32, i64)],
}

impl InternalEvent for Lag<'_> {
    fn emit(self, m: &Metrics) {
        per_partition(&m.consumer.lag, self.behind);
    }
}

/// A message that crashed processing twice, dead-lettered as `poison`
/// (where it first arrived, and the source of that topic if it has one).
pub struct MessagePoisoned<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub source: Option<Source>,
}

impl InternalEvent for MessagePoisoned<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "a message that crashed processing twice is dead-lettered as poison"
        );
        if let Some(source) = self.source {
            m.consumer
                .events_rejected
                .with_label_values(&[source.as_str(), RejectReason::Poison.as_str()])
                .inc();
        }
    }
}

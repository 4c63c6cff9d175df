//! The pipeline's Prometheus metrics, named by Prometheus conventions
//! (`paicha_<what>_<unit>_total` for counters), with low-cardinality labels.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use paicha_contract::event::{RejectReason, Source};

/// Every metric the pipeline updates.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `GET /metrics` exposes.
    pub registry: Registry,
    /// Events decoded and valid, by source (before dedupe).
    pub events_consumed: IntCounterVec,
    /// Events counted once after dedupe, by source.
    pub events_accepted: IntCounterVec,
    /// Events whose id was already counted, by source.
    pub events_duplicate: IntCounterVec,
    /// Valid events that arrived on another partition than the one murmur2
    /// gives their district, by source.
    pub events_rerouted: IntCounterVec,
    /// Events refused, by source topic and reason.
    pub events_rejected: IntCounterVec,
    /// Messages written to the dead-letter topic by the consumer.
    pub dead_letters_produced: IntCounter,
    /// Dead letters recorded in the `dead_letters` table, by reason: every
    /// producer's rejects (the replay's unroutable lines included).
    pub dead_letters: IntCounterVec,
    /// Kafka messages consumed, by topic.
    pub messages_consumed: IntCounterVec,
    /// The pipeline watermark, seconds since the epoch.
    pub watermark_seconds: IntGauge,
    /// Next offset to consume, by topic and partition.
    pub consumer_position: IntGaugeVec,
    /// Partition tasks this instance runs (partition *p* of every topic).
    pub partition_tasks: IntGauge,
    /// Consumer-group rebalances this instance went through.
    pub rebalances: IntCounter,
    /// Checkpoints committed.
    pub checkpoints: IntCounter,
    /// Time to write and commit a checkpoint.
    pub checkpoint_duration: Histogram,
    /// Time to write the windows a checkpoint finalized.
    pub window_flush_duration: Histogram,
    /// Wall clock minus the watermark.
    pub watermark_lag_seconds: IntGauge,
    /// Messages behind the end of each partition.
    pub consumer_lag: IntGaugeVec,
    /// Observation episodes by district and status.
    pub follow_ups: IntGaugeVec,
    /// Overdue episodes by district and days missed (1, 2, 3, 4+).
    pub follow_ups_overdue: IntGaugeVec,
    /// Alerts raised, by kind and severity.
    pub alerts_raised: IntCounterVec,
    /// Occupied share of beds per hospital at the latest window.
    pub bed_utilization: prometheus::GaugeVec,
    /// Occupied beds per hospital at the latest window.
    pub beds_occupied: IntGaugeVec,
    /// Brokers each Kafka client is connected to, by client (0: Kafka is
    /// unreachable and the client is waiting).
    pub kafka_brokers_up: IntGaugeVec,
    /// Errors librdkafka reported, by client and error.
    pub kafka_errors: IntCounterVec,
    /// Gateway requests answered, by source and HTTP status code.
    pub gateway_requests: IntCounterVec,
    /// Events the gateway answered for, by source and outcome
    /// (`accepted`, `rejected`, `retry`).
    pub gateway_events: IntCounterVec,
    /// Time from a gateway request's arrival to its answer.
    pub gateway_request_duration: Histogram,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let m = Metrics {
            events_consumed: counter_vec(
                "paicha_events_consumed_total",
                "Valid events decoded, by source, before deduplication.",
                &["source"],
            )?,
            events_accepted: counter_vec(
                "paicha_events_accepted_total",
                "Events counted (first delivery of an event_id), by source.",
                &["source"],
            )?,
            events_duplicate: counter_vec(
                "paicha_events_duplicate_total",
                "Events whose event_id was already counted, by source.",
                &["source"],
            )?,
            events_rerouted: counter_vec(
                "paicha_events_rerouted_total",
                "Valid events that arrived on another partition than the one Kafka's murmur2 gives their district (a producer with another partitioner) and were forwarded to it through screening.repartition, by source.",
                &["source"],
            )?,
            events_rejected: counter_vec(
                "paicha_events_rejected_total",
                "Events refused and sent to the dead-letter topic, by topic source and reason.",
                &["source", "reason"],
            )?,
            messages_consumed: counter_vec(
                "paicha_kafka_messages_consumed_total",
                "Kafka messages consumed, by topic.",
                &["topic"],
            )?,
            dead_letters: counter_vec(
                "paicha_dead_letters_total",
                "Dead letters recorded in the dead_letters table, by reason.",
                &["reason"],
            )?,
            dead_letters_produced: IntCounter::new(
                "paicha_dead_letters_produced_total",
                "Messages written to screening.dead_letter.",
            )?,
            watermark_seconds: IntGauge::new(
                "paicha_watermark_seconds",
                "The pipeline's event-time watermark, seconds since the Unix epoch.",
            )?,
            partition_tasks: IntGauge::new(
                "paicha_partition_tasks",
                "Partition tasks this instance runs: partition p of every consumed topic.",
            )?,
            rebalances: IntCounter::new(
                "paicha_rebalances_total",
                "Partition assignments received from the consumer group.",
            )?,
            consumer_position: IntGaugeVec::new(
                Opts::new(
                    "paicha_kafka_consumer_position",
                    "Next offset to consume, by topic and partition.",
                ),
                &["topic", "partition"],
            )?,
            checkpoints: IntCounter::new(
                "paicha_checkpoints_total",
                "Checkpoints committed to the data directory.",
            )?,
            checkpoint_duration: Histogram::with_opts(HistogramOpts::new(
                "paicha_checkpoint_duration_seconds",
                "Time to write a checkpoint's files and commit its manifest.",
            ))?,
            window_flush_duration: Histogram::with_opts(HistogramOpts::new(
                "paicha_window_flush_duration_seconds",
                "Time to write and commit the windows a checkpoint finalized (checkpoints that finalized none are not observed).",
            ))?,
            alerts_raised: counter_vec(
                "paicha_alerts_raised_total",
                "Alerts raised (also written to screening.alerts), by kind and severity.",
                &["kind", "severity"],
            )?,
            watermark_lag_seconds: IntGauge::new(
                "paicha_watermark_lag_seconds",
                "Wall clock minus the event-time watermark, seconds (large in a replay of old data).",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "paicha_kafka_consumer_lag",
                    "Messages between the consumer's position and the end of the partition.",
                ),
                &["topic", "partition"],
            )?,
            follow_ups: IntGaugeVec::new(
                Opts::new(
                    "paicha_follow_ups",
                    "Observation episodes by district and status at the pipeline clock.",
                ),
                &["district", "status"],
            )?,
            follow_ups_overdue: IntGaugeVec::new(
                Opts::new(
                    "paicha_follow_ups_overdue",
                    "Overdue follow-ups by district and whole days missed (1, 2, 3, 4+).",
                ),
                &["district", "days_missed"],
            )?,
            bed_utilization: prometheus::GaugeVec::new(
                Opts::new(
                    "paicha_bed_utilization_ratio",
                    "Occupied beds over beds in service per hospital, at the latest window.",
                ),
                &["hospital_id", "district", "designated"],
            )?,
            beds_occupied: IntGaugeVec::new(
                Opts::new(
                    "paicha_beds_occupied",
                    "Occupied beds per hospital, at the latest window.",
                ),
                &["hospital_id", "district", "designated"],
            )?,
            kafka_brokers_up: IntGaugeVec::new(
                Opts::new(
                    "paicha_kafka_brokers_up",
                    "Kafka brokers a client is connected to, by client; 0 while Kafka is unreachable.",
                ),
                &["client"],
            )?,
            kafka_errors: counter_vec(
                "paicha_kafka_errors_total",
                "Errors librdkafka reported, by client and error.",
                &["client", "error"],
            )?,
            gateway_requests: counter_vec(
                "paicha_gateway_requests_total",
                "Ingest gateway requests answered, by source and HTTP status code.",
                &["source", "code"],
            )?,
            gateway_events: counter_vec(
                "paicha_gateway_events_total",
                "Events the ingest gateway answered for, by source and outcome (accepted: Kafka acknowledged it; rejected: invalid; retry: not acknowledged, send again).",
                &["source", "outcome"],
            )?,
            gateway_request_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "paicha_gateway_request_duration_seconds",
                    "Time from an ingest gateway request's arrival to its answer.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            registry,
        };
        m.registry.register(Box::new(m.kafka_brokers_up.clone()))?;
        m.registry
            .register(Box::new(m.gateway_request_duration.clone()))?;
        m.registry
            .register(Box::new(m.watermark_lag_seconds.clone()))?;
        m.registry
            .register(Box::new(m.window_flush_duration.clone()))?;
        m.registry.register(Box::new(m.consumer_lag.clone()))?;
        m.registry.register(Box::new(m.follow_ups.clone()))?;
        m.registry
            .register(Box::new(m.follow_ups_overdue.clone()))?;
        m.registry.register(Box::new(m.bed_utilization.clone()))?;
        m.registry.register(Box::new(m.beds_occupied.clone()))?;
        m.registry
            .register(Box::new(m.dead_letters_produced.clone()))?;
        m.registry.register(Box::new(m.watermark_seconds.clone()))?;
        m.registry.register(Box::new(m.consumer_position.clone()))?;
        m.registry.register(Box::new(m.partition_tasks.clone()))?;
        m.registry.register(Box::new(m.rebalances.clone()))?;
        m.registry.register(Box::new(m.checkpoints.clone()))?;
        m.registry
            .register(Box::new(m.checkpoint_duration.clone()))?;
        // Show every series from the start, so rates and alerts see zeros.
        for r in RejectReason::ALL {
            m.dead_letters.with_label_values(&[r.as_str()]);
        }
        for s in Source::ALL {
            m.events_consumed.with_label_values(&[s.as_str()]);
            m.events_accepted.with_label_values(&[s.as_str()]);
            m.events_duplicate.with_label_values(&[s.as_str()]);
            for outcome in ["accepted", "rejected", "retry"] {
                m.gateway_events.with_label_values(&[s.as_str(), outcome]);
            }
            for r in RejectReason::ALL {
                m.events_rejected
                    .with_label_values(&[s.as_str(), r.as_str()]);
            }
        }
        Ok(m)
    }
}

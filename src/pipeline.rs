//! The consumer loop: Kafka → decode and validate → processors → checkpoints.
//!
//! One thread owns the consumer and the [`Processor`], so the hot path takes
//! no locks. Rejected events are produced to the dead-letter topic; the loop
//! consumes that topic too, so the `dead_letters` table holds what every
//! producer and instance refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paicha_ingest::event::{
    Decoder, Ids, Reject, RejectReason, Source, ALERTS_TOPIC, DEAD_LETTER_TOPIC,
};
use paicha_ingest::kafka::{self, DeadLetterHeaders, FlowControl};
use paicha_ingest::metrics::Metrics;
use paicha_ingest::pseudonym;
use paicha_processors::dead_letters::DeadLetter;
use paicha_processors::{Accepted, Processor};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

/// Where the consumer stops.
#[derive(Debug, Default)]
pub struct ReplayEnd {
    /// Set when the producer has finished: the end offset of every source
    /// partition. The consumer stops once it has processed up to them and
    /// the dead letters it produced on the way.
    pub source_ends: Mutex<Option<BTreeMap<(String, i32), i64>>>,
}

/// How the consumer connects and when it checkpoints.
pub struct ConsumerConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group id.
    pub group: String,
    /// The embedded cluster is new each run: start from the beginning of
    /// every partition instead of the committed offsets (dedupe keeps the
    /// re-read events from counting twice).
    pub embedded: bool,
    /// How often to checkpoint.
    pub checkpoint_interval: Duration,
    /// Pause after each message (a stand-in for a slow sink in tests).
    pub slow_sink: Duration,
    /// Where to publish the rows in memory for SQL, if anyone queries.
    pub live: Option<paicha_query::Live>,
}

/// How often the rows in memory are published to SQL: an event is visible
/// in a query within this much of being consumed.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

fn publish(processor: &mut Processor, live: &Option<paicha_query::Live>) -> Result<()> {
    if let Some(live) = live {
        let view = Arc::new(processor.live_view()?);
        if let Ok(mut slot) = live.write() {
            *slot = view;
        }
    }
    Ok(())
}

/// Totals of a consumer run.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// Kafka messages consumed from source topics.
    pub messages: u64,
    /// Valid events decoded (before dedupe).
    pub valid: u64,
    /// Events counted.
    pub accepted: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Events refused by the consumer, per reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Dead-letter rows recorded in the table.
    pub dead_letters: u64,
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Runs the consumer until `shutdown` is set or, with `end`, until the
/// replay is fully processed.
pub fn consume(
    cfg: &ConsumerConfig,
    decoder: &Decoder,
    processor: &mut Processor,
    metrics: &Metrics,
    flow: Option<Arc<FlowControl>>,
    end: Option<Arc<ReplayEnd>>,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary> {
    let consumer: BaseConsumer<kafka::KafkaHealth> = kafka::client_config(&cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        // Bound librdkafka's prefetch so a backlog cannot fill memory, and
        // fetch again soon once it drains (the default waits a whole second,
        // which caps a replay at 8 MiB/s).
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.queue.backoff.ms", "2")
        .set("fetch.message.max.bytes", "2097152")
        .set("statistics.interval.ms", kafka::STATISTICS_INTERVAL_MS)
        .create_with_context(kafka::KafkaHealth::new("consumer", metrics))
        .context("cannot create Kafka consumer")?;
    let (dlq, dlq_counter) = kafka::producer(&cfg.brokers)?;

    let mut topics: Vec<&str> = Source::ALL.iter().map(|s| s.topic()).collect();
    topics.push(DEAD_LETTER_TOPIC);
    let committed: BTreeMap<(String, i32), i64> = processor
        .committed_offsets()
        .iter()
        .map(|o| ((o.topic.clone(), o.partition), o.next))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
    for topic in &topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("cannot reach Kafka at {}", cfg.brokers))?;
        let n = md
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if n == 0 {
            anyhow::bail!("topic {topic} does not exist on {}", cfg.brokers);
        }
        partitions.insert(topic.to_string(), n);
        for p in 0..n {
            let offset = match committed.get(&(topic.to_string(), p)) {
                Some(next) if !cfg.embedded => Offset::Offset(*next),
                _ => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, offset)?;
            if end.is_some() && Source::from_topic(topic).is_some() {
                // A replay's partitions all have data coming: none may let
                // the clock run ahead before it has delivered (see
                // `Watermarks::expect`).
                processor.expect_partition(topic, p, Instant::now());
            }
        }
    }
    if cfg.embedded {
        processor.forget_offsets();
    }
    consumer.assign(&tpl).context("cannot assign partitions")?;

    let mut summary = RunSummary::default();
    let mut last_checkpoint = Instant::now();
    let mut lag_checked: Option<Instant> = None;
    let mut last_publish = Instant::now();
    let mut dlq_ends: Option<BTreeMap<(String, i32), i64>> = None;
    loop {
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(msg)) => {
                handle(&msg, decoder, processor, metrics, &dlq, &flow, &mut summary)?;
                if !cfg.slow_sink.is_zero() {
                    std::thread::sleep(cfg.slow_sink);
                }
            }
            Some(Err(e)) => consumer.context().report(&e, "poll"),
            None => {}
        }
        dlq.poll(Duration::ZERO);
        if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
            checkpoint(processor, metrics, false)?;
            observe(processor, metrics, &consumer, &dlq, &mut lag_checked)?;
            last_checkpoint = Instant::now();
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            publish(processor, &cfg.live)?;
            last_publish = Instant::now();
        }
        if let Some(end) = &end {
            if dlq_ends.is_none() {
                let ends = end.source_ends.lock().ok().and_then(|e| e.clone());
                if let Some(ends) = ends {
                    if reached(processor, &ends) {
                        // Every source message is processed; the dead letters
                        // produced for them must land in the table too.
                        kafka::finish(&dlq, &dlq_counter)?;
                        dlq_ends = Some(high_watermarks(
                            &consumer,
                            DEAD_LETTER_TOPIC,
                            partitions.get(DEAD_LETTER_TOPIC).copied().unwrap_or(0),
                        )?);
                    }
                }
            }
            if let Some(ends) = &dlq_ends {
                if reached(processor, ends) {
                    break;
                }
            }
        }
    }
    kafka::finish(&dlq, &dlq_counter)?;
    checkpoint(processor, metrics, end.is_some())?;
    processor.settle_writes()?;
    observe(processor, metrics, &consumer, &dlq, &mut lag_checked)?;
    kafka::finish(&dlq, &dlq_counter)?;
    if end.is_some() {
        // A finished replay leaves one file per table per day.
        processor.compact_all()?;
    }
    publish(processor, &cfg.live)?;
    let stats = processor.stats();
    summary.accepted = stats.accepted;
    summary.duplicates = stats.duplicates;
    summary.dead_letters = stats.dead_letters;
    Ok(summary)
}

fn reached(processor: &Processor, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let pos = processor.positions();
    ends.iter()
        .all(|(k, end)| *end <= 0 || pos.get(k).is_some_and(|p| p >= end))
}

/// The end offset of every partition of `topic`.
pub fn high_watermarks<X: rdkafka::consumer::ConsumerContext, C: Consumer<X>>(
    client: &C,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .with_context(|| format!("cannot read the end offset of {topic}/{p}"))?;
        ends.insert((topic.to_string(), p), high);
    }
    Ok(ends)
}

fn checkpoint(processor: &mut Processor, metrics: &Metrics, finish: bool) -> Result<()> {
    let started = Instant::now();
    let before = processor.stats().clone();
    processor.checkpoint(finish, started)?;
    if processor.stats().checkpoints > before.checkpoints {
        metrics.checkpoints.inc();
        metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        if processor.stats().windows > before.windows {
            metrics
                .window_flush_duration
                .observe(started.elapsed().as_secs_f64());
        }
    }
    let wm = processor.watermark(started);
    if wm != i64::MIN {
        metrics.watermark_seconds.set(wm.div_euclid(1_000_000));
    }
    for ((topic, p), next) in processor.positions() {
        metrics
            .consumer_position
            .with_label_values(&[topic.as_str(), &p.to_string()])
            .set(*next);
    }
    Ok(())
}

/// Publishes what changed since the last call: alerts to `screening.alerts`
/// (at least once: a crash before the next commit publishes them again, with
/// the same `alert_id`), and the gauges of follow-ups, beds and lag.
fn observe(
    processor: &mut Processor,
    metrics: &Metrics,
    consumer: &BaseConsumer<kafka::KafkaHealth>,
    producer: &kafka::CountingProducer,
    lag_checked: &mut Option<Instant>,
) -> Result<()> {
    for alert in processor.take_alert_news() {
        if alert.resolved_at.is_none() {
            metrics
                .alerts_raised
                .with_label_values(&[alert.kind.as_str(), alert.severity.as_str()])
                .inc();
        }
        let json = serde_json::json!({
            "alert_id": alert.alert_id,
            "raised_at": micros_to_rfc3339(alert.raised_at),
            "kind": alert.kind,
            "severity": alert.severity,
            "district": alert.district,
            "hospital_id": alert.hospital_id,
            "person_key": alert.person_key,
            "detail": alert.detail,
            "resolved_at": alert.resolved_at.map(micros_to_rfc3339),
        });
        kafka::send(
            producer,
            ALERTS_TOPIC,
            None,
            alert.district.as_bytes(),
            json.to_string().as_bytes(),
            None,
        )?;
    }
    let registry = processor.registry();
    metrics.follow_ups.reset();
    for ((d, status), n) in processor.follow_ups().by_status() {
        metrics
            .follow_ups
            .with_label_values(&[registry.district(*d).district.as_str(), status.as_str()])
            .set(*n);
    }
    metrics.follow_ups_overdue.reset();
    for ((d, days), n) in processor.follow_ups().by_days() {
        let days = if *days >= 4 {
            "4+".to_string()
        } else {
            days.to_string()
        };
        metrics
            .follow_ups_overdue
            .with_label_values(&[registry.district(*d).district.as_str(), days.as_str()])
            .set(*n);
    }
    for (h, beds, occupied) in processor.beds_now() {
        let hospital = registry.hospital(h);
        let labels = [
            hospital.hospital_id.as_str(),
            hospital.district.as_str(),
            if hospital.designated() {
                "true"
            } else {
                "false"
            },
        ];
        metrics
            .beds_occupied
            .with_label_values(&labels)
            .set(occupied);
        if beds > 0 {
            metrics
                .bed_utilization
                .with_label_values(&labels)
                .set(occupied as f64 / beds as f64);
        }
    }
    let clock = processor.follow_ups().clock();
    if clock != i64::MIN {
        metrics
            .watermark_lag_seconds
            .set((micros_now() - clock).div_euclid(1_000_000));
    }
    // Partition ends cost a broker round trip each: measured every 15 s.
    if lag_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(15)) {
        *lag_checked = Some(Instant::now());
        for ((topic, p), next) in processor.positions() {
            if let Ok((_, high)) = consumer.fetch_watermarks(topic, *p, Duration::from_millis(500))
            {
                metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set((high - next).max(0));
            }
        }
    }
    Ok(())
}

fn micros_to_rfc3339(t: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn handle(
    msg: &BorrowedMessage<'_>,
    decoder: &Decoder,
    processor: &mut Processor,
    metrics: &Metrics,
    dlq: &kafka::CountingProducer,
    flow: &Option<Arc<FlowControl>>,
    summary: &mut RunSummary,
) -> Result<()> {
    let topic = msg.topic();
    let partition = msg.partition();
    let offset = msg.offset();
    let payload = msg.payload().unwrap_or_default();
    metrics.messages_consumed.with_label_values(&[topic]).inc();
    let now = Instant::now();

    if topic == DEAD_LETTER_TOPIC {
        let h = msg
            .headers()
            .and_then(|h| DeadLetterHeaders::from_kafka(h.iter()))
            .unwrap_or_else(|| DeadLetterHeaders {
                // Written by someone else: still a dead letter, kept as such.
                reason: "unlabeled".into(),
                field: None,
                topic: DEAD_LETTER_TOPIC.into(),
                partition: Some(partition),
                offset,
                line: 0,
            });
        let received_at = msg
            .timestamp()
            .to_millis()
            .map(|ms| ms * 1000)
            .unwrap_or_else(micros_now);
        let reason = h.reason.clone();
        let new = processor.dead_letter(DeadLetter {
            received_at,
            topic: h.topic,
            partition: h.partition,
            offset: h.offset,
            line: h.line,
            reason: h.reason,
            field: h.field,
        });
        if new {
            metrics.dead_letters.with_label_values(&[&reason]).inc();
        }
        processor.consumed(topic, partition, offset, None, now);
        return Ok(());
    }

    let Some(source) = Source::from_topic(topic) else {
        processor.consumed(topic, partition, offset, None, now);
        return Ok(());
    };
    summary.messages += 1;
    let wall = micros_now();
    let mut max_time: Option<i64> = None;
    let mut reject = |line: &[u8], index: i32, r: Reject| -> Result<()> {
        metrics
            .events_rejected
            .with_label_values(&[source.as_str(), r.reason.as_str()])
            .inc();
        *summary.rejected.entry(r.reason.as_str()).or_default() += 1;
        let h = DeadLetterHeaders::for_reject(&r, topic, Some(partition), offset, index);
        kafka::send(
            dlq,
            DEAD_LETTER_TOPIC,
            None,
            msg.key().unwrap_or_default(),
            line,
            Some(h.to_kafka()),
        )?;
        metrics.dead_letters_produced.inc();
        Ok(())
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        reject(
            payload,
            0,
            Reject {
                reason: RejectReason::NotJson,
                field: None,
            },
        )?;
    }
    // A paicha producer hashed the ids already and named its key; ids of
    // another key can never join ours, so they are refused, not re-hashed.
    let marked = msg.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == pseudonym::HEADER)
            .map(|h| h.value.unwrap_or_default().to_vec())
    });
    let ids = match &marked {
        None => Ok(Ids::Raw),
        Some(fp) if fp.as_slice() == decoder.fingerprint().as_bytes() => Ok(Ids::Pseudonymized),
        Some(_) => Err(Reject {
            reason: RejectReason::PseudonymKey,
            field: None,
        }),
    };
    let (mut valid, mut accepted) = (0u64, 0u64);
    let mut high_mark = processor.high_mark(topic, partition);
    for (index, line) in payload.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = ids.and_then(|ids| decoder.decode_with(line, Some(source), wall, ids));
        match decoded {
            Ok(e) => {
                valid += 1;
                max_time = Some(max_time.map_or(e.event_time, |m| m.max(e.event_time)));
                high_mark = high_mark.max(max_time);
                match processor.event(&e, processor.horizon(high_mark)) {
                    Accepted::Counted => accepted += 1,
                    Accepted::Duplicate => {}
                    Accepted::TooLate => {
                        valid -= 1;
                        reject(
                            line,
                            index as i32,
                            Reject {
                                reason: RejectReason::TooLate,
                                field: Some("event_time"),
                            },
                        )?
                    }
                }
            }
            Err(r) => reject(line, index as i32, r)?,
        }
    }
    // Metrics per message, not per event: the counts come out the same.
    summary.valid += valid;
    let label = [source.as_str()];
    metrics
        .events_consumed
        .with_label_values(&label)
        .inc_by(valid);
    metrics
        .events_accepted
        .with_label_values(&label)
        .inc_by(accepted);
    metrics
        .events_duplicate
        .with_label_values(&label)
        .inc_by(valid - accepted);
    processor.consumed(topic, partition, offset, max_time, now);
    if let Some(f) = flow {
        f.processed(source, partition, payload.len());
    }
    Ok(())
}

/// Logs what a run did.
pub fn log_summary(s: &RunSummary) {
    info!(
        messages = s.messages,
        valid = s.valid,
        accepted = s.accepted,
        duplicates = s.duplicates,
        dead_letters = s.dead_letters,
        "consumer finished"
    );
}

//! Kafka plumbing: the embedded cluster, client configuration, the producers
//! that feed the source topics (replay, simulator) and the dead-letter
//! producer.
//!
//! Everything goes through librdkafka. The embedded cluster is librdkafka's
//! in-process mock cluster, reached over loopback like any broker. It keeps
//! only the newest 5 MiB or 100,000 message sets of a partition and silently
//! drops older ones, so a producer feeding it must not run ahead of the
//! consumer: [`FlowControl`] bounds the bytes in flight per partition.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use paicha_contract::event::{route, route_and_pseudonymize, Reject, Source, DEAD_LETTER_TOPIC};
use paicha_contract::pseudonym::{self, Pseudonymizer};
use paicha_contract::topics::{all_topics, partition_for};

use crate::internal_events::kafka::{BrokersUp, ClientStarted, KafkaErrorReported, OffsetReset};

/// Creates `topic` with `partitions` partitions unless it exists: paicha
/// owns its internal topic, as Kafka Streams owns its repartition topics,
/// so a deployment need not create it.
pub fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client_config(brokers)
        // Asking for the topic must not create it with the broker's default
        // partition count.
        .set("allow.auto.create.topics", "false")
        .create()
        .context("cannot create a Kafka admin client")?;
    let exists = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("cannot reach Kafka at {brokers}"))?
        .topics()
        .first()
        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|e| {
            anyhow!(
                "cannot create paicha's internal topic {topic} at {brokers} ({e}): create it with {partitions} partitions, like the source topics"
            )
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, e)) => bail!(
                "cannot create paicha's internal topic {topic} at {brokers} ({e}): create it with {partitions} partitions, like the source topics"
            ),
        }
    }
    // Metadata of a new topic reaches every broker a moment later.
    for _ in 0..100 {
        if self::partitions(admin.inner(), topic).is_ok_and(|n| n == partitions) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("topic {topic} was created but has not appeared at {brokers}")
}

/// Where a forwarded event was first consumed: carried in headers of
/// [`REPARTITION_TOPIC`](paicha_contract::event::REPARTITION_TOPIC) messages, so its dead letters name the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The source topic.
    pub topic: String,
    /// The partition it arrived on.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

impl Origin {
    const TOPIC: &'static str = "paicha-origin-topic";
    const PARTITION: &'static str = "paicha-origin-partition";
    const OFFSET: &'static str = "paicha-origin-offset";

    /// As Kafka headers, with the pseudonym fingerprint the ids are under.
    pub fn to_kafka(&self, fingerprint: &str) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: Self::TOPIC,
                value: Some(self.topic.as_bytes()),
            })
            .insert(Header {
                key: Self::PARTITION,
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: Self::OFFSET,
                value: Some(offset.as_bytes()),
            })
            .insert(Header {
                key: pseudonym::HEADER,
                value: Some(fingerprint.as_bytes()),
            })
    }

    /// Reads the origin headers; `None` if any is missing.
    pub fn from_kafka<'a>(headers: impl Iterator<Item = Header<'a, &'a [u8]>>) -> Option<Self> {
        let (mut topic, mut partition, mut offset) = (None, None, None);
        for h in headers {
            let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
            match h.key {
                Self::TOPIC => topic = v.map(str::to_string),
                Self::PARTITION => partition = v.and_then(|v| v.parse().ok()),
                Self::OFFSET => offset = v.and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        Some(Origin {
            topic: topic?,
            partition: partition?,
            offset: offset?,
        })
    }
}

/// librdkafka's in-process mock cluster with paicha's topics.
pub struct EmbeddedCluster {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl EmbeddedCluster {
    /// Starts a mock cluster of `brokers` brokers and creates every topic
    /// with `partitions` partitions.
    pub fn start(brokers: i32, partitions: i32) -> Result<Self> {
        let cluster = MockCluster::new(brokers).context("cannot start the embedded Kafka")?;
        for topic in all_topics() {
            cluster
                .create_topic(topic, partitions, 1)
                .with_context(|| format!("cannot create topic {topic}"))?;
        }
        Ok(EmbeddedCluster { cluster })
    }

    /// The bootstrap servers other clients (and processes) connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// The configuration every paicha client starts from.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "paicha")
        // librdkafka logs through its own logger; keep it to real problems.
        .set("log_level", "3")
        // A broker that restarts is back within a second rather than after
        // librdkafka's default 10 s backoff.
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// Bounds the bytes produced but not yet processed, per partition of each
/// source topic, so the embedded cluster never drops unconsumed data.
#[derive(Debug)]
pub struct FlowControl {
    partitions: usize,
    limit: i64,
    in_flight: Vec<AtomicI64>,
    closed: AtomicBool,
}

impl FlowControl {
    /// Limit of `limit_bytes` in flight per partition, for topics of
    /// `partitions` partitions.
    pub fn new(partitions: usize, limit_bytes: i64) -> Arc<Self> {
        Arc::new(FlowControl {
            partitions,
            limit: limit_bytes,
            in_flight: (0..partitions * Source::ALL.len())
                .map(|_| AtomicI64::new(0))
                .collect(),
            closed: AtomicBool::new(false),
        })
    }

    fn slot(&self, source: Source, partition: i32) -> Option<&AtomicI64> {
        let p = usize::try_from(partition)
            .ok()
            .filter(|p| *p < self.partitions)?;
        self.in_flight.get(source as usize * self.partitions + p)
    }

    /// Whether `bytes` more may be produced to the partition now.
    pub fn has_room(&self, source: Source, partition: i32, bytes: usize) -> bool {
        match self.slot(source, partition) {
            // A message larger than the limit still goes through when the
            // partition is empty, or it would wait forever.
            Some(s) => {
                let cur = s.load(Ordering::Acquire);
                cur == 0 || cur + bytes as i64 <= self.limit
            }
            None => true,
        }
    }

    /// Records `bytes` produced to the partition.
    pub fn produced(&self, source: Source, partition: i32, bytes: usize) {
        if let Some(s) = self.slot(source, partition) {
            s.fetch_add(bytes as i64, Ordering::AcqRel);
        }
    }

    /// Records `bytes` of the partition processed by the consumer.
    pub fn processed(&self, source: Source, partition: i32, bytes: usize) {
        if let Some(s) = self.slot(source, partition) {
            s.fetch_sub(bytes as i64, Ordering::AcqRel);
        }
    }

    /// Tells a waiting producer to give up (the consumer stopped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether [`FlowControl::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A client context that tells whether Kafka is reachable. librdkafka's
/// statistics (every second) give each broker's connection state: when no
/// broker is up the client is waiting for Kafka, which is logged once and
/// shown as `paicha_kafka_brokers_up{client} 0`, and logged again when it
/// comes back. Errors are counted in `paicha_kafka_errors_total`; a broker
/// that stays away would repeat the same error many times a second, so the
/// log shows at most one every ten seconds.
#[derive(Clone)]
pub struct KafkaHealth {
    client: &'static str,
    metrics: crate::metrics::Metrics,
    /// Brokers up at the last report; -1 before the first.
    last_up: Arc<AtomicI64>,
    last_error_log: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// How often a client reports its statistics (and so its broker states).
pub const STATISTICS_INTERVAL_MS: &str = "1000";

impl KafkaHealth {
    /// The context of the client named `client` (`consumer`, `gateway`).
    pub fn new(client: &'static str, metrics: &crate::metrics::Metrics) -> Self {
        metrics.emit(ClientStarted { client });
        KafkaHealth {
            client,
            metrics: metrics.clone(),
            last_up: Arc::new(AtomicI64::new(-1)),
            last_error_log: Arc::default(),
        }
    }

    /// Counts an error in `paicha_kafka_errors_total` and logs it, at most
    /// once every ten seconds. librdkafka's global errors come here, and so
    /// do the errors a consumer's poll returns.
    pub fn report(&self, error: &KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Other".to_string(), |c| format!("{c:?}"));
        let logged = self.last_error_log.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        self.metrics.emit(KafkaErrorReported {
            client: self.client,
            code: &code,
            error,
            reason,
            logged,
        });
    }

    /// Brokers up at the last statistics report, if one came yet.
    pub fn brokers_up(&self) -> Option<i64> {
        let n = self.last_up.load(Ordering::Relaxed);
        (n >= 0).then_some(n)
    }
}

impl ClientContext for KafkaHealth {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        // An offset reset means the broker deleted what the consumer was
        // about to read (retention shorter than the lag): events lost to
        // paicha, which librdkafka only logs as a warning.
        if fac == "OFFSET" && message.contains("offset reset") {
            self.metrics.emit(OffsetReset {
                client: self.client,
                message,
            });
            return;
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0 && b.state == "UP")
            .count() as i64;
        let before = self.last_up.swap(up, Ordering::Relaxed);
        self.metrics.emit(BrokersUp {
            client: self.client,
            up,
            before,
        });
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for KafkaHealth {}

/// Counts failed deliveries so a producer can refuse to report success.
/// Clones share the counts.
#[derive(Default, Clone)]
pub struct DeliveryCounter {
    failed: Arc<AtomicU64>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl DeliveryCounter {
    /// Deliveries that failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The first delivery error, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

/// A producer whose failed deliveries are counted.
pub type CountingProducer = BaseProducer<DeliveryCounter>;

/// An idempotent producer (`acks=all`) tuned for batched throughput.
pub fn producer(brokers: &str) -> Result<(CountingProducer, DeliveryCounter)> {
    let counter = DeliveryCounter::default();
    let p = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .set("queue.buffering.max.kbytes", "65536")
        .create_with_context(counter.clone())
        .context("cannot create Kafka producer")?;
    Ok((p, counter))
}

/// Sends one record, waiting while librdkafka's queue is full.
pub fn send(
    producer: &CountingProducer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(anyhow!("cannot produce to {topic}: {e}")),
        }
    }
}

/// Waits until every message is delivered; fails if any delivery failed.
pub fn finish(producer: &CountingProducer, counter: &DeliveryCounter) -> Result<()> {
    producer
        .flush(Duration::from_secs(60))
        .context("Kafka did not acknowledge every message within 60 s")?;
    if counter.failed() > 0 {
        bail!(
            "{} messages were not delivered to Kafka (first error: {})",
            counter.failed(),
            counter.first_error().unwrap_or_default()
        );
    }
    Ok(())
}

/// The headers of a dead-letter message: where the original came from and
/// why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    /// Machine-readable reason.
    pub reason: String,
    /// Field concerned, if any.
    pub field: Option<String>,
    /// Original topic, or `file:NAME`.
    pub topic: String,
    /// Original partition, if from Kafka.
    pub partition: Option<i32>,
    /// Original offset, or line number in a file.
    pub offset: i64,
    /// Line within a batched message.
    pub line: i32,
}

impl DeadLetterHeaders {
    /// As Kafka headers.
    pub fn to_kafka(&self) -> OwnedHeaders {
        let partition = self.partition.map(|p| p.to_string());
        let offset = self.offset.to_string();
        let line = self.line.to_string();
        let mut h = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: "reason",
                value: Some(self.reason.as_bytes()),
            })
            .insert(Header {
                key: "topic",
                value: Some(self.topic.as_bytes()),
            })
            .insert(Header {
                key: "offset",
                value: Some(offset.as_bytes()),
            })
            .insert(Header {
                key: "line",
                value: Some(line.as_bytes()),
            });
        if let Some(f) = &self.field {
            h = h.insert(Header {
                key: "field",
                value: Some(f.as_bytes()),
            });
        }
        if let Some(p) = &partition {
            h = h.insert(Header {
                key: "partition",
                value: Some(p.as_bytes()),
            });
        }
        h
    }

    /// Reads the headers of a dead-letter message; `None` if it lacks the
    /// required ones (not written by paicha).
    pub fn from_kafka<'a>(headers: impl Iterator<Item = Header<'a, &'a [u8]>>) -> Option<Self> {
        let mut map: BTreeMap<&str, &str> = BTreeMap::new();
        for h in headers {
            if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                map.insert(h.key, v);
            }
        }
        Some(DeadLetterHeaders {
            reason: map.get("reason")?.to_string(),
            field: map.get("field").map(|s| s.to_string()),
            topic: map.get("topic")?.to_string(),
            partition: map.get("partition").and_then(|p| p.parse().ok()),
            offset: map.get("offset")?.parse().ok()?,
            line: map.get("line").and_then(|p| p.parse().ok()).unwrap_or(0),
        })
    }
}

impl DeadLetterHeaders {
    /// Headers for a reject of `line` within a message at `topic/partition/offset`.
    pub fn for_reject(
        reject: &Reject,
        topic: &str,
        partition: Option<i32>,
        offset: i64,
        line: i32,
    ) -> Self {
        DeadLetterHeaders {
            reason: reject.reason.as_str().to_string(),
            field: reject.field.map(str::to_string),
            topic: topic.to_string(),
            partition,
            offset,
            line,
        }
    }
}

/// The number of partitions of `topic`; an error if it does not exist.
pub fn partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("cannot reach Kafka to read topic {topic}"))?;
    let n = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if n == 0 {
        bail!("topic {topic} does not exist");
    }
    Ok(n)
}

/// How the batching producer groups lines into messages.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Most events in one message.
    pub max_events: usize,
    /// Most bytes in one message.
    pub max_bytes: usize,
    /// Every this many input lines, all pending batches are sent, so no
    /// event waits long behind a slow district (it would arrive late).
    pub flush_every_lines: u64,
    /// Most event time, µs, between the earliest and the latest event
    /// waiting in batches: beyond it every batch is sent first. Batches go
    /// out by district, so without this bound one district's batch could
    /// carry its partition's clock weeks past the next district's events in
    /// a sparse input. Keep it at most the allowed lateness, and an input in
    /// event-time order reaches the processors reordered by less than that.
    pub max_span_micros: i64,
    /// The share of batches sent to the partition after their district's,
    /// to test and measure what another producer's partitioner costs.
    pub misroute: f64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_events: 500,
            max_bytes: 512 * 1024,
            flush_every_lines: 2000,
            // The default allowed lateness (`--lateness`).
            max_span_micros: 3_600_000_000,
            misroute: 0.0,
        }
    }
}

/// What a producing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceSummary {
    /// Lines read.
    pub lines: u64,
    /// Lines produced to a source topic.
    pub events: u64,
    /// Messages produced to source topics.
    pub messages: u64,
    /// Lines refused by the producer (they could not be routed, or their
    /// identifiers could not be pseudonymized), sent to the dead-letter topic.
    pub unroutable: u64,
    /// Refused lines per reason.
    pub unroutable_by_reason: BTreeMap<String, u64>,
}

/// Produces JSON lines to the source topics in batched messages (events.md:
/// one source and district per message, JSON lines, at most 1 MiB).
pub struct BatchProducer {
    producer: CountingProducer,
    counter: DeliveryCounter,
    partitions: [i32; 5],
    /// Partitions of the dead-letter topic.
    dead_letter_partitions: i32,
    batching: Batching,
    flow: Option<Arc<FlowControl>>,
    /// The batch being filled per source and district, with its event count.
    pending: [BTreeMap<String, (Vec<u8>, usize)>; 5],
    /// The earliest and latest event time waiting in `pending`.
    pending_span: Option<(i64, i64)>,
    /// Hashes identifiers before a line is batched; its fingerprint goes in
    /// each message's [`pseudonym::HEADER`].
    pseudonymizer: Option<(Pseudonymizer, String)>,
    /// Events per second, if paced (the live simulator).
    rate: Option<f64>,
    /// Set on shutdown: a paced producer stops waiting for its next slot.
    stop: Option<Arc<AtomicBool>>,
    started: Instant,
    summary: ProduceSummary,
}

impl BatchProducer {
    /// A producer to `brokers`; the source topics must exist.
    pub fn new(brokers: &str, batching: Batching, flow: Option<Arc<FlowControl>>) -> Result<Self> {
        let (producer, counter) = producer(brokers)?;
        let mut partitions = [0; 5];
        for s in Source::ALL {
            partitions[s as usize] = self::partitions(producer.client(), s.topic())?;
        }
        let dead_letter_partitions = self::partitions(producer.client(), DEAD_LETTER_TOPIC)?;
        Ok(BatchProducer {
            producer,
            counter,
            partitions,
            dead_letter_partitions,
            batching,
            flow,
            pending: Default::default(),
            pending_span: None,
            pseudonymizer: None,
            rate: None,
            stop: None,
            started: Instant::now(),
            summary: ProduceSummary::default(),
        })
    }

    /// Pseudonymizes every line before it is produced, so the topics never
    /// hold a raw identifier (events.md, Privacy).
    pub fn pseudonymizing(mut self, pseudonymizer: Pseudonymizer) -> Self {
        let fingerprint = pseudonymizer.fingerprint();
        self.pseudonymizer = Some((pseudonymizer, fingerprint));
        self
    }

    /// Paces production to `events_per_second`; a pause between batches
    /// ends early once `stop` is set (at 1 event/s a batch of the simulator
    /// is due every half hour).
    pub fn paced(mut self, events_per_second: f64, stop: Arc<AtomicBool>) -> Self {
        self.rate = Some(events_per_second.max(0.001));
        self.stop = Some(stop);
        self
    }

    /// Adds one line; `origin` names the input for dead letters (`file:NAME`)
    /// and `line_no` is its 1-based line number there.
    pub fn line(&mut self, line: &[u8], origin: &str, line_no: u64) -> Result<()> {
        self.summary.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let routed = match &self.pseudonymizer {
            Some((p, _)) => route_and_pseudonymize(line, p).map(|(r, l)| (r, Some(l))),
            None => route(line).map(|r| (r, None)),
        };
        match routed {
            Ok((r, hashed)) => {
                if let Some(t) = r.event_time {
                    let (lo, hi) = self
                        .pending_span
                        .map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t)));
                    self.pending_span = if hi.saturating_sub(lo) > self.batching.max_span_micros {
                        self.flush_batches()?;
                        Some((t, t))
                    } else {
                        Some((lo, hi))
                    };
                }
                let line = hashed.as_deref().unwrap_or(line);
                let pending = &mut self.pending[r.source as usize];
                // Looked up by &str: the district is copied only for a new batch.
                let (buf, n) = match pending.get_mut(r.district.as_str()) {
                    Some(b) => b,
                    None => pending.entry(r.district.clone()).or_default(),
                };
                if !buf.is_empty() {
                    buf.push(b'\n');
                }
                buf.extend_from_slice(line);
                *n += 1;
                let full = *n >= self.batching.max_events || buf.len() >= self.batching.max_bytes;
                self.summary.events += 1;
                if full {
                    if let Some((buf, _)) = pending.remove(r.district.as_str()) {
                        self.send_batch(r.source, &r.district, &buf)?;
                    }
                }
            }
            Err(reject) => {
                self.summary.unroutable += 1;
                *self
                    .summary
                    .unroutable_by_reason
                    .entry(reject.reason.as_str().to_string())
                    .or_default() += 1;
                let h = DeadLetterHeaders::for_reject(&reject, origin, None, line_no as i64, 0);
                // A line has no key to route by; its place in the file is
                // stable, so a rerun sends it to the same partition, where
                // the task that recorded it recognises it.
                let partition =
                    partition_for(&format!("{origin}:{line_no}"), self.dead_letter_partitions);
                send(
                    &self.producer,
                    DEAD_LETTER_TOPIC,
                    Some(partition),
                    b"",
                    line,
                    Some(h.to_kafka()),
                )?;
            }
        }
        if self
            .summary
            .lines
            .is_multiple_of(self.batching.flush_every_lines)
        {
            self.flush_batches()?;
        }
        Ok(())
    }

    fn send_batch(&mut self, source: Source, district: &str, buf: &[u8]) -> Result<()> {
        let n = self.partitions[source as usize];
        let mut partition = partition_for(district, n);
        // Every batch whose count crosses a whole multiple of 1/share.
        let m = self.summary.messages as f64;
        let share = self.batching.misroute;
        if ((m + 1.0) * share).floor() > (m * share).floor() {
            partition = (partition + 1) % n.max(1);
        }
        if let Some(flow) = &self.flow {
            while !flow.has_room(source, partition, buf.len()) {
                if flow.is_closed() {
                    bail!("the consumer stopped before every event was produced");
                }
                // librdkafka's poll with a timeout spins on the clock; sleep
                // instead, and serve delivery reports without waiting.
                std::thread::sleep(Duration::from_micros(500));
                self.producer.poll(Duration::ZERO);
            }
            flow.produced(source, partition, buf.len());
        }
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.summary.events as f64 / rate);
            loop {
                let elapsed = self.started.elapsed();
                let stopping = self
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Acquire));
                if due <= elapsed || stopping {
                    break;
                }
                std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
            }
        }
        let headers = self.pseudonymizer.as_ref().map(|(_, fingerprint)| {
            OwnedHeaders::new().insert(Header {
                key: pseudonym::HEADER,
                value: Some(fingerprint.as_bytes()),
            })
        });
        send(
            &self.producer,
            source.topic(),
            Some(partition),
            district.as_bytes(),
            buf,
            headers,
        )?;
        self.summary.messages += 1;
        // Delivery reports are served per message, not per line: a poll
        // reads the clock and takes librdkafka's locks.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Sends every pending batch.
    pub fn flush_batches(&mut self) -> Result<()> {
        self.pending_span = None;
        for source in Source::ALL {
            let pending = std::mem::take(&mut self.pending[source as usize]);
            for (district, (buf, _)) in pending {
                self.send_batch(source, &district, &buf)?;
            }
        }
        Ok(())
    }

    /// Reads a JSON-lines input to its end and produces every line.
    pub fn produce_reader(&mut self, mut input: impl BufRead, origin: &str) -> Result<()> {
        let mut line_no = 0u64;
        // One buffer for every line: a replay reads millions.
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {origin}"))?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&line, origin, line_no)?;
        }
    }

    /// Sends what is pending and waits for Kafka to acknowledge everything.
    pub fn finish(mut self) -> Result<ProduceSummary> {
        self.flush_batches()?;
        finish(&self.producer, &self.counter)?;
        Ok(self.summary)
    }

    /// What was produced so far.
    pub fn summary(&self) -> &ProduceSummary {
        &self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_control_bounds_bytes_in_flight() {
        let f = FlowControl::new(2, 100);
        assert!(f.has_room(Source::Pharmacy, 1, 500));
        f.produced(Source::Pharmacy, 1, 60);
        assert!(f.has_room(Source::Pharmacy, 1, 40));
        assert!(!f.has_room(Source::Pharmacy, 1, 41));
        assert!(f.has_room(Source::Pharmacy, 0, 41));
        f.processed(Source::Pharmacy, 1, 60);
        assert!(f.has_room(Source::Pharmacy, 1, 100));
    }

    #[test]
    fn dead_letter_headers_round_trip() {
        use rdkafka::message::Headers;
        let h = DeadLetterHeaders {
            reason: "not_json".into(),
            field: Some("temperature_c".into()),
            topic: "screening.checkpoint".into(),
            partition: Some(3),
            offset: 42,
            line: 7,
        };
        let k = h.to_kafka();
        assert_eq!(DeadLetterHeaders::from_kafka(k.iter()), Some(h));
    }
}

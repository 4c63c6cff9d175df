//! The pipeline runtime: Kafka → decode and validate → processors →
//! checkpoints, as a library the `paicha` binary, the examples and the
//! tests run.
//!
//! One thread owns the consumer and the [`Processor`], so the hot path takes
//! no locks. Rejected events are produced to the dead-letter topic; the loop
//! consumes that topic too, so the `dead_letters` table holds what every
//! producer and instance refused.

pub mod quarantine;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paicha_contract::event::{
    pseudonymize, Decoder, Ids, Reject, RejectReason, Source, ALERTS_TOPIC, DEAD_LETTER_TOPIC,
    REPARTITION_TOPIC,
};
use paicha_contract::pseudonym;
use paicha_ingest::internal_events::checkpoint::{
    CheckpointWritten, ClockBehind, WatermarkAdvanced,
};
use paicha_ingest::internal_events::consumer::{
    DeadLetterProduced, DeadLetterRecorded, EventsCounted, EventsRejected, EventsRerouted, Lag,
    MessageConsumed, MessagePoisoned, PartitionsAssigned, Positions,
};
use paicha_ingest::internal_events::state::{
    AlertPublished, BedsCounted, FollowUpsCounted, HospitalBeds,
};
use paicha_ingest::kafka::{self, DeadLetterHeaders, FlowControl, Origin};
use paicha_ingest::metrics::Metrics;
use paicha_processors::alerts::Alert;
use paicha_processors::dead_letters::DeadLetter;
use paicha_processors::tasks::Tasks;
use paicha_processors::{Accepted, Processor};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::quarantine::{Crash, Crashes, Verdict};

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
    /// Share the partitions with the other members of `group` (subscribe,
    /// and move tasks on rebalances) instead of taking every partition.
    pub subscribe: bool,
    /// How long the group waits for a silent member before it gives that
    /// member's partitions to the others.
    pub session_timeout: Duration,
    /// A stable member name (static membership), if given.
    pub instance: Option<String>,
    /// How often to checkpoint.
    pub checkpoint_interval: Duration,
    /// Pause after each message (a stand-in for a slow sink in tests).
    pub slow_sink: Duration,
    /// Where to publish the rows in memory for SQL, if anyone queries.
    pub live: Option<paicha_query::Live>,
    /// Set once the instance has its partitions (or knows it has none).
    pub ready: Arc<AtomicBool>,
    /// The data directory, where crashes are remembered.
    pub data: std::path::PathBuf,
    /// Test knob: panic on the message holding this event id (or, as
    /// `checkpoint:ID`, at the checkpoint after it).
    pub crash_on: Option<String>,
}

/// How often the rows in memory are published to SQL: an event is visible
/// in a query within this much of being consumed.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Publishing takes at most one part in this many of the consumer thread:
/// when the state is large or the machine loaded, views are published less
/// often rather than ingestion falling behind the offered rate.
const PUBLISH_SHARE: u32 = 10;

/// The pause after a publication that took `took`.
fn publish_pause(took: Duration) -> Duration {
    PUBLISH_EVERY.max(took.saturating_mul(PUBLISH_SHARE - 1))
}

fn publish(tasks: &mut Tasks, live: &Option<paicha_query::Live>) -> Result<()> {
    if let Some(live) = live {
        let mut views = BTreeMap::new();
        for (p, processor) in tasks.iter_mut() {
            views.insert(*p, Arc::new(processor.live_view()?));
        }
        if let Ok(mut slot) = live.write() {
            *slot = Arc::new(views);
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
    /// Valid events that arrived on another partition than their
    /// district's and were forwarded to it through `screening.repartition`.
    pub rerouted: u64,
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The consumer's view of the group: it opens a task for each partition
/// number the group assigns and stops the ones it takes away, inside
/// librdkafka's rebalance callback (on the consumer thread, during `poll`),
/// so a partition is never consumed before its task is restored, and its
/// last checkpoint is committed before another member can start it.
struct Membership {
    health: kafka::KafkaHealth,
    tasks: Arc<Mutex<Tasks>>,
    /// Start every partition at its beginning (the embedded cluster).
    fresh: bool,
    /// The first error a rebalance met; the consumer loop returns it.
    failure: Mutex<Option<anyhow::Error>>,
    ready: Arc<AtomicBool>,
    metrics: Metrics,
    /// Writes forwarded events; everything it holds must be delivered
    /// before a task commits the offsets they came from.
    forward: Arc<(kafka::CountingProducer, kafka::DeliveryCounter)>,
    /// Set when processing crashed: the state in memory may be half
    /// updated, so leaving the group must not commit it.
    crashed: AtomicBool,
}

impl Membership {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tasks>> {
        lock(&self.tasks)
    }

    /// Opens the task of every partition number in `tpl` (reusing one this
    /// instance still holds if nobody committed to it since) and sets each
    /// topic partition's start to the offsets its task's manifest covers.
    fn assign(&self, tpl: &mut TopicPartitionList) -> Result<()> {
        let wanted: std::collections::BTreeSet<i32> =
            tpl.elements().iter().map(|e| e.partition()).collect();
        let mut tasks = self.lock()?;
        for p in tasks.partitions() {
            // Kept across the rebalance only if nobody committed to it since.
            if !wanted.contains(&p) || !tasks.is_current(p)? {
                tasks.release(p)?;
            }
        }
        let now = Instant::now();
        let mut starts = Vec::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_string(), e.partition());
            let task = tasks.start(p)?;
            if self.fresh {
                task.forget_offsets();
            }
            // Every partition has events coming (certainly in a replay), so
            // none may let the clock run ahead before it has delivered or
            // gone idle (see `Watermarks::expect`); one restored from a
            // checkpoint keeps its mark.
            if Source::from_topic(&topic).is_some() {
                task.expect_partition(&topic, p, now);
            }
            let next = task.positions().get(&(topic.clone(), p)).copied();
            starts.push((topic, p, next));
        }
        for (topic, p, next) in starts {
            let offset = match next {
                Some(n) if !self.fresh => Offset::Offset(n),
                _ => Offset::Beginning,
            };
            tpl.set_partition_offset(&topic, p, offset)?;
        }
        let owned = tasks.partitions();
        let list = owned
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.metrics.emit(PartitionsAssigned {
            tasks: owned.len(),
            partitions: &list,
        });
        Ok(())
    }

    /// Commits every task's work so far: the group may give any of them to
    /// another member once this returns.
    fn revoke(&self) -> Result<()> {
        if self.crashed.load(Ordering::Acquire) {
            return Ok(());
        }
        kafka::finish(&self.forward.0, &self.forward.1)?;
        self.lock()?.commit_all()
    }

    fn fail(&self, e: anyhow::Error) {
        tracing::error!(error = %format!("{e:#}"), "rebalance failed");
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(e);
        }
    }
}

impl rdkafka::ClientContext for Membership {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.health.log(level, fac, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.health.stats(statistics);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.health.error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Membership {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = self
                    .assign(tpl)
                    .and_then(|()| consumer.assign(tpl).context("cannot assign partitions"));
                match assigned {
                    Ok(()) => self.ready.store(true, Ordering::Release),
                    Err(e) => self.fail(e),
                }
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = self.revoke() {
                    self.fail(e);
                }
                if let Err(e) = consumer.unassign() {
                    self.fail(anyhow::Error::new(e).context("cannot give partitions back"));
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; giving the partitions back");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The partition count every consumed topic must share: partition *p* of
/// all of them is one task, so they must line up.
fn co_partitioned(
    consumer: &BaseConsumer<Membership>,
    topics: &[&str],
    brokers: &str,
) -> Result<i32> {
    let mut counts: Vec<(&str, i32)> = Vec::new();
    for topic in topics {
        let n = kafka::partitions(consumer.client(), topic)
            .with_context(|| format!("Kafka at {brokers}"))?;
        counts.push((topic, n));
    }
    let n = counts[0].1;
    if let Some((other, m)) = counts.iter().find(|(_, m)| *m != n) {
        anyhow::bail!(
            "topic {other} has {m} partitions but {} has {n}: paicha processes partition p of every topic together, so {} need the same partition count",
            counts[0].0,
            topics.join(", ")
        );
    }
    Ok(n)
}

/// A pipeline: the consumer, its partition tasks and what it reports to.
pub struct Pipeline {
    pub config: ConsumerConfig,
    pub decoder: Decoder,
    /// The partition tasks, shared with whoever reads their state.
    pub tasks: Arc<Mutex<Tasks>>,
    pub metrics: Metrics,
    /// The replay producer's flow control, when a replay feeds it.
    pub flow: Option<Arc<FlowControl>>,
    /// Where a replay ends, when it is one.
    pub end: Option<Arc<ReplayEnd>>,
    /// Set to stop: the last checkpoint is committed first.
    pub shutdown: Arc<AtomicBool>,
}

impl Pipeline {
    /// Runs on this thread until `shutdown` is set or, with `end`, until
    /// the replay is fully processed.
    pub fn run(&self) -> Result<RunSummary> {
        consume(
            &self.config,
            &self.decoder,
            self.tasks.clone(),
            &self.metrics,
            self.flow.clone(),
            self.end.clone(),
            self.shutdown.clone(),
        )
    }

    /// Runs on a thread of its own.
    pub fn start(self) -> Result<Running> {
        let shutdown = self.shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("paicha-consumer".into())
            .spawn(move || self.run())
            .context("cannot start the consumer thread")?;
        Ok(Running { shutdown, thread })
    }
}

/// A pipeline running on its own thread.
pub struct Running {
    shutdown: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<RunSummary>>,
}

impl Running {
    /// Waits until it stops by itself: the end of a replay, or an error.
    pub fn join(self) -> Result<RunSummary> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?
    }

    /// Stops it once its last checkpoint is committed.
    pub fn stop(self) -> Result<RunSummary> {
        self.shutdown.store(true, Ordering::Release);
        self.join()
    }

    /// Whether it stopped (and [`Running::join`] returns at once).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Runs the consumer until `shutdown` is set or, with `end`, until the
/// replay is fully processed.
fn consume(
    cfg: &ConsumerConfig,
    decoder: &Decoder,
    tasks: Arc<Mutex<Tasks>>,
    metrics: &Metrics,
    flow: Option<Arc<FlowControl>>,
    end: Option<Arc<ReplayEnd>>,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary> {
    let forward = Arc::new(kafka::producer(&cfg.brokers)?);
    let membership = Membership {
        health: kafka::KafkaHealth::new("consumer", metrics),
        tasks: tasks.clone(),
        fresh: cfg.embedded,
        failure: Mutex::new(None),
        ready: cfg.ready.clone(),
        metrics: metrics.clone(),
        forward: forward.clone(),
        crashed: AtomicBool::new(false),
    };
    let consumer = create_consumer(cfg, membership)?;
    let (partitions, homes) = join(&consumer, cfg, decoder)?;
    let mut run = Run {
        cfg,
        decoder,
        metrics,
        flow,
        end,
        partitions,
        homes,
        dlq: kafka::producer(&cfg.brokers)?,
        forward,
        summary: RunSummary::default(),
        crashes: Crashes::load(&cfg.data, decoder.pseudonymizer())?,
        test_crash: TestCrash::new(cfg.crash_on.as_deref()),
        last_checkpoint: Instant::now(),
        lag_checked: None,
        last_publish: Instant::now(),
        publish_every: PUBLISH_EVERY,
        end_checked: Instant::now(),
        stage_ends: None,
        failed_forwards: 0,
    };
    while !shutdown.load(Ordering::Acquire) {
        let polled = consumer.poll(Duration::from_millis(50));
        let failed = consumer
            .context()
            .failure
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        if let Some(e) = failed {
            return Err(e);
        }
        let mut guard = lock(&tasks)?;
        match polled {
            Some(Ok(msg)) => {
                run.message(&consumer, &mut guard, &msg)?;
                if !cfg.slow_sink.is_zero() {
                    std::thread::sleep(cfg.slow_sink);
                }
            }
            Some(Err(e)) => consumer.context().health.report(&e, "poll"),
            None => {}
        }
        if run.periodic(&consumer, &mut guard)? {
            break;
        }
    }
    let summary = run.finish(&consumer, &tasks)?;
    // Leaving the group revokes every partition (the callback commits
    // nothing new: every task has just checkpointed).
    drop(consumer);
    Ok(summary)
}

/// What a consumer run holds besides the consumer and the tasks: where it
/// sends, what it counted, what crashed before, and when it last did each
/// periodic thing.
struct Run<'a> {
    cfg: &'a ConsumerConfig,
    decoder: &'a Decoder,
    metrics: &'a Metrics,
    flow: Option<Arc<FlowControl>>,
    end: Option<Arc<ReplayEnd>>,
    /// Partitions per topic.
    partitions: i32,
    /// Each district's partition, by registry index.
    homes: Vec<i32>,
    /// The dead-letter producer.
    dlq: (kafka::CountingProducer, kafka::DeliveryCounter),
    /// The producer forwarding events to their district's partition.
    forward: Arc<(kafka::CountingProducer, kafka::DeliveryCounter)>,
    summary: RunSummary,
    crashes: Crashes,
    test_crash: TestCrash,
    last_checkpoint: Instant,
    lag_checked: Option<Instant>,
    last_publish: Instant,
    publish_every: Duration,
    end_checked: Instant,
    stage_ends: Option<(&'static str, Ends)>,
    failed_forwards: u64,
}

impl Run<'_> {
    /// Handles one message: counts it, or isolates or sets it aside if it
    /// crashed processing before.
    fn message(
        &mut self,
        consumer: &BaseConsumer<Membership>,
        guard: &mut Tasks,
        msg: &BorrowedMessage<'_>,
    ) -> Result<()> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or_default();
        let verdict = self.crashes.verdict(topic, partition, offset, payload);
        if verdict == Verdict::Isolate && guard.get_mut(partition).is_some() {
            // Suspected: everything before it checkpointed first, so that
            // the checkpoint after it holds it alone.
            kafka::finish(&self.forward.0, &self.forward.1)?;
            let metrics = self.metrics;
            at_checkpoint(consumer, &mut self.crashes, guard, &mut |tasks| {
                checkpoint(tasks, metrics, false)?;
                tasks.iter_mut().try_for_each(|(_, t)| t.settle_writes())
            })?;
        }
        // Only a partition with its task open is ever assigned.
        let Some(processor) = guard.get_mut(partition) else {
            return Ok(());
        };
        if verdict == Verdict::Poison {
            poison(
                msg,
                processor,
                self.metrics,
                &self.dlq.0,
                &self.flow,
                &mut self.summary,
            )?;
        } else {
            let handled = catch_unwind(AssertUnwindSafe(|| {
                if topic != DEAD_LETTER_TOPIC {
                    self.test_crash.handling(payload);
                }
                handle(
                    msg,
                    self.decoder,
                    &self.homes,
                    processor,
                    self.metrics,
                    &self.dlq.0,
                    &self.forward.0,
                    &self.flow,
                    &mut self.summary,
                )
            }));
            match handled {
                Ok(r) => r?,
                Err(panic) => return Err(self.crashed_at(consumer, msg, panic)),
            }
            if verdict == Verdict::Isolate {
                self.alone(consumer, guard, msg)?;
            }
        }
        Ok(())
    }

    /// A panic processing `msg`: remembered against it.
    fn crashed_at(
        &mut self,
        consumer: &BaseConsumer<Membership>,
        msg: &BorrowedMessage<'_>,
        panic: Box<dyn std::any::Any + Send>,
    ) -> anyhow::Error {
        let payload = msg.payload().unwrap_or_default();
        let pinned = vec![self
            .crashes
            .at(msg.topic(), msg.partition(), msg.offset(), payload)];
        crashed(consumer, &mut self.crashes, pinned, panic)
    }

    /// Checkpoints the suspected message `msg` alone, so a crash that shows
    /// only at a checkpoint is pinned to it.
    fn alone(
        &mut self,
        consumer: &BaseConsumer<Membership>,
        guard: &mut Tasks,
        msg: &BorrowedMessage<'_>,
    ) -> Result<()> {
        kafka::finish(&self.forward.0, &self.forward.1)?;
        let alone = catch_unwind(AssertUnwindSafe(|| {
            self.test_crash.checkpointing();
            checkpoint(guard, self.metrics, false)?;
            guard.iter_mut().try_for_each(|(_, t)| t.settle_writes())?;
            publish(guard, &self.cfg.live)
        }));
        match alone {
            Ok(r) => r?,
            Err(panic) => return Err(self.crashed_at(consumer, msg, panic)),
        }
        self.crashes.settle(&guard.durable_positions())
    }

    /// What is due after each poll: a checkpoint, publishing the live view,
    /// the end of a replay. Returns whether the replay is processed.
    fn periodic(&mut self, consumer: &BaseConsumer<Membership>, guard: &mut Tasks) -> Result<bool> {
        let (forwarder, forwarded) = (&self.forward.0, &self.forward.1);
        self.dlq.0.poll(Duration::ZERO);
        forwarder.poll(Duration::ZERO);
        if self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval
            && delivered(forwarder, forwarded, &mut self.failed_forwards)?
        {
            let (metrics, dlq, lag_checked) = (self.metrics, &self.dlq.0, &mut self.lag_checked);
            let test_crash = &mut self.test_crash;
            at_checkpoint(consumer, &mut self.crashes, guard, &mut |tasks| {
                test_crash.checkpointing();
                checkpoint(tasks, metrics, false)?;
                observe(tasks, metrics, consumer, dlq, lag_checked)
            })?;
            if !self.crashes.is_empty() {
                self.crashes.settle(&guard.durable_positions())?;
            }
            self.last_checkpoint = Instant::now();
        }
        if self.last_publish.elapsed() >= self.publish_every {
            let started = Instant::now();
            let live = &self.cfg.live;
            at_checkpoint(consumer, &mut self.crashes, guard, &mut |tasks| {
                publish(tasks, live)
            })?;
            self.publish_every = publish_pause(started.elapsed());
            self.last_publish = Instant::now();
        }
        let Some(end) = &self.end else {
            return Ok(false);
        };
        if self.end_checked.elapsed() < Duration::from_millis(20) {
            return Ok(false);
        }
        self.end_checked = Instant::now();
        replay_done(
            end,
            &mut self.stage_ends,
            &guard.positions(),
            consumer,
            self.partitions,
            [(forwarder, forwarded), (&self.dlq.0, &self.dlq.1)],
        )
    }

    /// The last checkpoint (at the end of a replay, with every window
    /// final and the files compacted), and the run's totals.
    fn finish(
        mut self,
        consumer: &BaseConsumer<Membership>,
        tasks: &Mutex<Tasks>,
    ) -> Result<RunSummary> {
        kafka::finish(&self.forward.0, &self.forward.1)?;
        kafka::finish(&self.dlq.0, &self.dlq.1)?;
        let mut guard = lock(tasks)?;
        let replay = self.end.is_some();
        let (metrics, dlq, lag_checked) = (self.metrics, &self.dlq, &mut self.lag_checked);
        let (test_crash, live) = (&mut self.test_crash, &self.cfg.live);
        at_checkpoint(consumer, &mut self.crashes, &mut guard, &mut |guard| {
            if replay {
                // The end of a replay: every task's clock stands at the
                // highest event time of the whole input.
                let last = guard.max_event_time();
                for (_, task) in guard.iter_mut() {
                    task.finish_at(last);
                }
            }
            test_crash.checkpointing();
            checkpoint(guard, metrics, replay)?;
            for (_, task) in guard.iter_mut() {
                task.settle_writes()?;
            }
            observe(guard, metrics, consumer, &dlq.0, lag_checked)?;
            kafka::finish(&dlq.0, &dlq.1)?;
            if replay {
                // A finished replay leaves one file per table per day.
                for (_, task) in guard.iter_mut() {
                    task.compact_all()?;
                }
            }
            publish(guard, live)
        })?;
        if !self.crashes.is_empty() {
            self.crashes.settle(&guard.durable_positions())?;
        }
        let stats = guard.stats();
        self.summary.accepted = stats.accepted;
        self.summary.duplicates = stats.duplicates;
        self.summary.dead_letters = stats.dead_letters;
        Ok(self.summary)
    }
}

/// A panic leaves the state half updated: it is remembered (`what` was
/// being processed), nothing is committed, and the pipeline stops for its
/// supervisor to restart it.
fn crashed(
    consumer: &BaseConsumer<Membership>,
    crashes: &mut Crashes,
    what: Vec<Crash>,
    panic: Box<dyn std::any::Any + Send>,
) -> anyhow::Error {
    consumer.context().crashed.store(true, Ordering::Release);
    crashes.crashed(what, panic)
}

/// Runs `work` on every task at once (a checkpoint, publishing): a panic in
/// it cannot name its message, so everything since the last checkpoint on
/// disk is suspect.
fn at_checkpoint(
    consumer: &BaseConsumer<Membership>,
    crashes: &mut Crashes,
    guard: &mut Tasks,
    work: &mut dyn FnMut(&mut Tasks) -> Result<()>,
) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(|| work(guard))) {
        Ok(r) => r,
        Err(panic) => Err(crashed(consumer, crashes, since_checkpoint(guard), panic)),
    }
}

/// Whether every event forwarded so far is in Kafka: a checkpoint commits
/// the offsets they came from only then, so it waits (a broker that is
/// slow or away postpones checkpoints, not consumption, until librdkafka's
/// queue fills). A delivery that failed
/// for good would lose what the committed offsets skip: an error, and the
/// restart resumes from the last checkpoint.
fn delivered(
    producer: &kafka::CountingProducer,
    counter: &kafka::DeliveryCounter,
    failed_before: &mut u64,
) -> Result<bool> {
    use rdkafka::producer::Producer as _;
    if producer.in_flight_count() > 0 {
        let _ = producer.flush(Duration::from_millis(200));
    }
    if counter.failed() > *failed_before {
        *failed_before = counter.failed();
        anyhow::bail!(
            "Kafka refused an event forwarded to screening.repartition ({}); stopping before a checkpoint could skip it",
            counter.first_error().unwrap_or_default()
        );
    }
    Ok(producer.in_flight_count() == 0)
}

/// How paicha's consumer reads: in `group`, committing only at
/// checkpoints, its prefetch bounded yet quick to refill. The benchmarks
/// that time consuming alone read with these too.
pub fn consumer_settings(brokers: &str, group: &str) -> rdkafka::ClientConfig {
    let mut client = kafka::client_config(brokers);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        // Bound librdkafka's prefetch so a backlog cannot fill memory, and
        // fetch again soon once it drains (the default waits a whole second,
        // which caps a replay at 8 MiB/s).
        .set("queued.max.messages.kbytes", "8192")
        .set("fetch.queue.backoff.ms", "2")
        .set("fetch.message.max.bytes", "2097152");
    client
}

/// The consumer: partition p of every topic to one member, committing
/// only at checkpoints.
fn create_consumer(
    cfg: &ConsumerConfig,
    membership: Membership,
) -> Result<BaseConsumer<Membership>> {
    let session_ms = cfg.session_timeout.as_millis().clamp(1000, 3_600_000);
    let mut client = consumer_settings(&cfg.brokers, &cfg.group);
    if let Some(name) = &cfg.instance {
        client.set("group.instance.id", name);
    }
    client
        // Partition p of every topic to the same member: range assignment
        // does that for topics of equal partition counts; sticky ones do not.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 4).to_string())
        .set("statistics.interval.ms", kafka::STATISTICS_INTERVAL_MS)
        .create_with_context(membership)
        .context("cannot create Kafka consumer")
}

/// Checks the topics are co-partitioned (creating the repartition topic),
/// then joins the group or, for a replay or the embedded cluster, takes
/// every partition. Returns the partition count and each district's home
/// partition, by registry index.
fn join(
    consumer: &BaseConsumer<Membership>,
    cfg: &ConsumerConfig,
    decoder: &Decoder,
) -> Result<(i32, Vec<i32>)> {
    let mut topics: Vec<&str> = Source::ALL.iter().map(|s| s.topic()).collect();
    topics.push(DEAD_LETTER_TOPIC);
    let partitions = co_partitioned(consumer, &topics, &cfg.brokers)?;
    kafka::ensure_topic(&cfg.brokers, REPARTITION_TOPIC, partitions)?;
    topics.push(REPARTITION_TOPIC);
    co_partitioned(consumer, &topics, &cfg.brokers)?;
    // The partition each district belongs on, by registry index.
    let homes: Vec<i32> = decoder
        .registry()
        .districts()
        .iter()
        .map(|d| paicha_contract::topics::partition_for(&d.district, partitions))
        .collect();
    if cfg.subscribe {
        consumer
            .subscribe(&topics)
            .context("cannot join the consumer group")?;
    } else {
        let mut tpl = TopicPartitionList::new();
        for topic in &topics {
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            }
        }
        consumer.context().assign(&mut tpl)?;
        consumer.assign(&tpl).context("cannot assign partitions")?;
        cfg.ready.store(true, Ordering::Release);
    }
    Ok((partitions, homes))
}

/// Whether a replay is processed: its source messages, then the events
/// they forwarded, then the dead letters of both. Moves `stage` on to the
/// next topic's ends as each is reached, flushing the producers first.
fn replay_done(
    end: &ReplayEnd,
    stage: &mut Option<(&'static str, Ends)>,
    positions: &BTreeMap<(String, i32), i64>,
    consumer: &BaseConsumer<Membership>,
    partitions: i32,
    producers: [(&kafka::CountingProducer, &kafka::DeliveryCounter); 2],
) -> Result<bool> {
    let ends = match stage {
        None => end.source_ends.lock().ok().and_then(|e| e.clone()),
        Some((_, ends)) => Some(ends.clone()),
    };
    let Some(ends) = ends else {
        return Ok(false);
    };
    if !reached(positions, &ends) {
        return Ok(false);
    }
    for (producer, counter) in producers {
        kafka::finish(producer, counter)?;
    }
    let next = match stage.as_ref().map(|(t, _)| *t) {
        None => REPARTITION_TOPIC,
        Some(REPARTITION_TOPIC) => DEAD_LETTER_TOPIC,
        Some(_) => return Ok(true),
    };
    *stage = Some((next, high_watermarks(consumer, next, partitions)?));
    Ok(false)
}

fn lock(tasks: &Mutex<Tasks>) -> Result<std::sync::MutexGuard<'_, Tasks>> {
    tasks
        .lock()
        .map_err(|_| anyhow::anyhow!("the partition tasks are unavailable"))
}

/// The next offset to reach in each (topic, partition).
type Ends = BTreeMap<(String, i32), i64>;

fn reached(positions: &BTreeMap<(String, i32), i64>, ends: &Ends) -> bool {
    ends.iter()
        .all(|(k, end)| *end <= 0 || positions.get(k).is_some_and(|p| p >= end))
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

fn checkpoint(tasks: &mut Tasks, metrics: &Metrics, finish: bool) -> Result<()> {
    let mut watermark: Option<i64> = None;
    for (partition, processor) in tasks.iter_mut() {
        let started = Instant::now();
        let before = processor.stats().clone();
        processor.checkpoint(finish, started)?;
        if processor.stats().checkpoints > before.checkpoints {
            metrics.emit(CheckpointWritten {
                partition: *partition,
                took: started.elapsed(),
                windows: processor.stats().windows > before.windows,
            });
        }
        let wm = processor.watermark(started);
        if wm != i64::MIN {
            watermark = Some(watermark.map_or(wm, |w| w.min(wm)));
        }
    }
    let positions = tasks.positions();
    let next: Vec<(&str, i32, i64)> = positions
        .iter()
        .map(|((topic, p), next)| (topic.as_str(), *p, *next))
        .collect();
    metrics.emit(Positions { next: &next });
    // The instance's watermark is its most lagging task's.
    if let Some(micros) = watermark {
        metrics.emit(WatermarkAdvanced { micros });
    }
    Ok(())
}

/// Publishes what changed since the last call: alerts to `screening.alerts`
/// (at least once: a crash before the next commit publishes them again, with
/// the same `alert_id`), and the gauges of follow-ups, beds and lag of the
/// tasks this instance runs.
fn observe(
    tasks: &mut Tasks,
    metrics: &Metrics,
    consumer: &BaseConsumer<Membership>,
    producer: &kafka::CountingProducer,
    lag_checked: &mut Option<Instant>,
) -> Result<()> {
    let mut by_status: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    let mut by_days: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut beds: Vec<(String, String, bool, i64, i64)> = Vec::new();
    let mut clock: Option<i64> = None;
    for (_, processor) in tasks.iter_mut() {
        for alert in processor.take_alert_news() {
            publish_alert(metrics, producer, &alert)?;
        }
        let r = processor.registry();
        for ((d, status), n) in processor.follow_ups().by_status() {
            let district = r.district(*d).district.clone();
            *by_status.entry((district, status.as_str())).or_default() += *n;
        }
        for ((d, days), n) in processor.follow_ups().by_days() {
            let days = if *days >= 4 {
                "4+".to_string()
            } else {
                days.to_string()
            };
            let district = r.district(*d).district.clone();
            *by_days.entry((district, days)).or_default() += *n;
        }
        for (h, total, occupied) in processor.beds_now() {
            let hospital = r.hospital(h);
            beds.push((
                hospital.hospital_id.clone(),
                hospital.district.clone(),
                hospital.designated(),
                total,
                occupied,
            ));
        }
        let c = processor.follow_ups().clock();
        if c != i64::MIN {
            clock = Some(clock.map_or(c, |m| m.min(c)));
        }
    }
    // This instance's tasks only: a task that moved to another instance is
    // reported there.
    let hospitals: Vec<HospitalBeds> = beds
        .iter()
        .map(|(id, district, designated, total, occupied)| HospitalBeds {
            hospital_id: id,
            district,
            designated: *designated,
            total: *total,
            occupied: *occupied,
        })
        .collect();
    metrics.emit(BedsCounted {
        hospitals: &hospitals,
    });
    let by_status: Vec<(&str, &str, i64)> = by_status
        .iter()
        .map(|((d, s), n)| (d.as_str(), *s, *n))
        .collect();
    let by_days: Vec<(&str, &str, i64)> = by_days
        .iter()
        .map(|((d, days), n)| (d.as_str(), days.as_str(), *n))
        .collect();
    metrics.emit(FollowUpsCounted {
        by_status: &by_status,
        by_days: &by_days,
    });
    if let Some(clock) = clock {
        metrics.emit(ClockBehind {
            micros: micros_now() - clock,
        });
    }
    // Partition ends cost a broker round trip each: measured every 15 s.
    if lag_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(15)) {
        *lag_checked = Some(Instant::now());
        let positions = tasks.positions();
        let behind: Vec<(&str, i32, i64)> = positions
            .iter()
            .filter_map(|((topic, p), next)| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, *p, Duration::from_millis(500))
                    .ok()?;
                Some((topic.as_str(), *p, (high - next).max(0)))
            })
            .collect();
        metrics.emit(Lag { behind: &behind });
    }
    Ok(())
}

/// Publishes `alert` to `screening.alerts`.
fn publish_alert(
    metrics: &Metrics,
    producer: &kafka::CountingProducer,
    alert: &Alert,
) -> Result<()> {
    metrics.emit(AlertPublished {
        kind: &alert.kind,
        severity: &alert.severity,
        district: &alert.district,
        raised: alert.resolved_at.is_none(),
    });
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
    )
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
    homes: &[i32],
    processor: &mut Processor,
    metrics: &Metrics,
    dlq: &kafka::CountingProducer,
    forwarder: &kafka::CountingProducer,
    flow: &Option<Arc<FlowControl>>,
    summary: &mut RunSummary,
) -> Result<()> {
    let topic = msg.topic();
    let partition = msg.partition();
    let offset = msg.offset();
    let payload = msg.payload().unwrap_or_default();
    metrics.emit(MessageConsumed { topic });
    let now = Instant::now();

    if topic == DEAD_LETTER_TOPIC {
        record_dead_letter(msg, processor, metrics);
        processor.consumed(topic, partition, offset, None, now);
        return Ok(());
    }

    // A forwarded message carries its source topic and where it first
    // arrived; its events are home now, so they are never forwarded again.
    let forwarded = topic == REPARTITION_TOPIC;
    let origin = if forwarded {
        msg.headers().and_then(|h| Origin::from_kafka(h.iter()))
    } else {
        Some(Origin {
            topic: topic.to_string(),
            partition,
            offset,
        })
    };
    let Some((origin, source)) = origin.and_then(|o| Source::from_topic(&o.topic).map(|s| (o, s)))
    else {
        processor.consumed(topic, partition, offset, None, now);
        return Ok(());
    };
    if !forwarded {
        summary.messages += 1;
    }
    let mut out = Outlets {
        msg,
        origin: &origin,
        source,
        decoder,
        metrics,
        dlq,
        forwarder,
        summary,
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        out.reject(
            payload,
            0,
            Reject {
                reason: RejectReason::NotJson,
                field: None,
            },
        )?;
    }
    let home = |district: u16| {
        homes
            .get(usize::from(district))
            .copied()
            .filter(|h| *h != partition && !forwarded)
    };
    let tally = count_lines(payload, home, processor, &mut out)?;
    count_events(metrics, out.summary, source, tally.valid, tally.accepted);
    if tally.rerouted > 0 {
        events_rerouted(
            metrics,
            out.summary,
            source,
            topic,
            partition,
            tally.rerouted,
        );
    }
    processor.consumed(topic, partition, offset, tally.max_time, now);
    if let Some(f) = flow {
        // The embedded cluster drops old data: bytes forwarded stay in
        // flight for the producer's partition until their home has
        // processed them too, so the repartition topic never outruns it.
        if forwarded {
            f.processed(source, origin.partition, payload.len());
        } else {
            f.processed(
                source,
                partition,
                payload.len().saturating_sub(tally.forwarded_bytes),
            );
        }
    }
    Ok(())
}

/// Where a message's lines go besides the processor: dead letters for the
/// refused ones, and their district's partition for those of another's.
struct Outlets<'a, 'm> {
    msg: &'a BorrowedMessage<'m>,
    /// Where the message first arrived.
    origin: &'a Origin,
    source: Source,
    decoder: &'a Decoder,
    metrics: &'a Metrics,
    dlq: &'a kafka::CountingProducer,
    forwarder: &'a kafka::CountingProducer,
    summary: &'a mut RunSummary,
}

impl Outlets<'_, '_> {
    /// Dead-letters `line`, the `index`th of the message.
    fn reject(&mut self, line: &[u8], index: i32, r: Reject) -> Result<()> {
        self.metrics.emit(EventsRejected {
            source: self.source.as_str(),
            reason: r.reason,
            count: 1,
        });
        *self.summary.rejected.entry(r.reason.as_str()).or_default() += 1;
        let h = DeadLetterHeaders::for_reject(
            &r,
            &self.origin.topic,
            Some(self.origin.partition),
            self.origin.offset,
            index,
        );
        send_dead_letter(self.dlq, self.msg, line, &h, self.metrics)
    }

    /// Forwards `lines` (pseudonymized) to partition `home`; returns their
    /// bytes.
    fn forward(&self, home: i32, lines: &[u8]) -> Result<usize> {
        kafka::send(
            self.forwarder,
            REPARTITION_TOPIC,
            Some(home),
            self.msg.key().unwrap_or_default(),
            lines,
            Some(self.origin.to_kafka(self.decoder.fingerprint())),
        )?;
        Ok(lines.len())
    }
}

/// What the lines of one message came to.
#[derive(Default)]
struct Tally {
    /// Events decoded and counted or recognised as duplicates.
    valid: u64,
    accepted: u64,
    /// Events forwarded to their district's partition.
    rerouted: u64,
    forwarded_bytes: usize,
    /// The highest event time among the message's valid events.
    max_time: Option<i64>,
}

/// Decodes each line of `payload` and counts it, forwards it to `home` of
/// its district if that is another partition, or dead-letters it.
fn count_lines(
    payload: &[u8],
    home: impl Fn(u16) -> Option<i32>,
    processor: &mut Processor,
    out: &mut Outlets,
) -> Result<Tally> {
    let (topic, partition) = (out.msg.topic(), out.msg.partition());
    let ids = ids_of(out.msg, out.decoder);
    let wall = micros_now();
    let mut tally = Tally::default();
    // Lines for other partitions, by partition, pseudonymized.
    let mut away: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    let mut high_mark = processor.high_mark(topic, partition);
    for (index, line) in payload.split(|b| *b == b'\n').enumerate() {
        let (index, line) = (index as i32, line.strip_suffix(b"\r").unwrap_or(line));
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let e = match ids.and_then(|ids| out.decoder.decode_with(line, Some(out.source), wall, ids))
        {
            Ok(e) => e,
            Err(r) => {
                out.reject(line, index, r)?;
                continue;
            }
        };
        tally.max_time = Some(tally.max_time.map_or(e.event_time, |m| m.max(e.event_time)));
        high_mark = high_mark.max(tally.max_time);
        if let Some(home) = home(e.district) {
            let hashed;
            let line = match ids {
                Ok(Ids::Pseudonymized) => line,
                _ => match pseudonymize(line, out.decoder.pseudonymizer()) {
                    Ok(h) => {
                        hashed = h;
                        &hashed
                    }
                    Err(r) => {
                        out.reject(line, index, r)?;
                        continue;
                    }
                },
            };
            let buf = away.entry(home).or_default();
            if !buf.is_empty() {
                buf.push(b'\n');
            }
            buf.extend_from_slice(line);
            tally.rerouted += 1;
            // Pseudonyms are longer than most raw ids: a forwarded message
            // stays well under the broker's size limit.
            if buf.len() >= FORWARD_BYTES {
                tally.forwarded_bytes += out.forward(home, buf)?;
                buf.clear();
            }
            continue;
        }
        match processor.event(&e, processor.horizon(high_mark)) {
            Accepted::Counted => {
                tally.valid += 1;
                tally.accepted += 1;
            }
            Accepted::Duplicate => tally.valid += 1,
            Accepted::TooLate => out.reject(
                line,
                index,
                Reject {
                    reason: RejectReason::TooLate,
                    field: Some("event_time"),
                },
            )?,
        }
    }
    for (home, lines) in away.into_iter().filter(|(_, l)| !l.is_empty()) {
        tally.forwarded_bytes += out.forward(home, &lines)?;
    }
    Ok(tally)
}

/// Records a message of the dead-letter topic in `dead_letters`, once.
fn record_dead_letter(msg: &BorrowedMessage<'_>, processor: &mut Processor, metrics: &Metrics) {
    let (partition, offset) = (msg.partition(), msg.offset());
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
        metrics.emit(DeadLetterRecorded { reason: &reason });
    }
}

/// How the ids of a message's events stand: a paicha producer hashed them
/// already and named its key; ids of another key can never join ours, so
/// they are refused, not re-hashed.
fn ids_of(msg: &BorrowedMessage<'_>, decoder: &Decoder) -> Result<Ids, Reject> {
    let marked = msg.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == pseudonym::HEADER)
            .map(|h| h.value.unwrap_or_default().to_vec())
    });
    match &marked {
        None => Ok(Ids::Raw),
        Some(fp) if fp.as_slice() == decoder.fingerprint().as_bytes() => Ok(Ids::Pseudonymized),
        Some(_) => Err(Reject {
            reason: RejectReason::PseudonymKey,
            field: None,
        }),
    }
}

/// Counts a message's events: per message, not per event, the counts come
/// out the same.
fn count_events(
    metrics: &Metrics,
    summary: &mut RunSummary,
    source: Source,
    valid: u64,
    accepted: u64,
) {
    summary.valid += valid;
    metrics.emit(EventsCounted {
        source,
        valid,
        accepted,
    });
}

/// The offsets consumed since each task's last checkpoint on disk.
fn since_checkpoint(tasks: &Tasks) -> Vec<Crash> {
    let durable = tasks.durable_positions();
    let ranges = tasks
        .positions()
        .into_iter()
        .map(|((topic, partition), to)| {
            let from = durable
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            Crash {
                topic,
                partition,
                from,
                to,
                digest: None,
            }
        });
    ranges.filter(|c| c.to > c.from).collect()
}

/// Produces `bytes` of `msg` to the dead-letter topic, into the same
/// partition number: the task that refused it records it, and a rerun's
/// copy meets the first one there.
fn send_dead_letter(
    dlq: &kafka::CountingProducer,
    msg: &BorrowedMessage<'_>,
    bytes: &[u8],
    h: &DeadLetterHeaders,
    metrics: &Metrics,
) -> Result<()> {
    kafka::send(
        dlq,
        DEAD_LETTER_TOPIC,
        Some(msg.partition()),
        msg.key().unwrap_or_default(),
        bytes,
        Some(h.to_kafka()),
    )?;
    metrics.emit(DeadLetterProduced);
    Ok(())
}

/// Sets aside a message that crashed processing twice: its bytes go to the
/// dead-letter topic as `poison` (naming where it first arrived), and its
/// offset counts as processed.
fn poison(
    msg: &BorrowedMessage<'_>,
    processor: &mut Processor,
    metrics: &Metrics,
    dlq: &kafka::CountingProducer,
    flow: &Option<Arc<FlowControl>>,
    summary: &mut RunSummary,
) -> Result<()> {
    let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
    let payload = msg.payload().unwrap_or_default();
    let origin = if topic == REPARTITION_TOPIC {
        msg.headers().and_then(|h| Origin::from_kafka(h.iter()))
    } else {
        None
    }
    .unwrap_or_else(|| Origin {
        topic: topic.to_string(),
        partition,
        offset,
    });
    let reason = RejectReason::Poison;
    let dead_lettered = topic != DEAD_LETTER_TOPIC;
    if dead_lettered {
        let h = DeadLetterHeaders {
            reason: reason.as_str().into(),
            field: None,
            topic: origin.topic.clone(),
            partition: Some(origin.partition),
            offset: origin.offset,
            // The whole message, not one of its lines: its own dead-letter
            // id, apart from a line 0 refused by an earlier attempt.
            line: -1,
        };
        send_dead_letter(dlq, msg, payload, &h, metrics)?;
        *summary.rejected.entry(reason.as_str()).or_default() += 1;
    }
    // Counted once it is in the dead-letter topic.
    metrics.emit(MessagePoisoned {
        topic: &origin.topic,
        partition: origin.partition,
        offset: origin.offset,
        source: Source::from_topic(&origin.topic).filter(|_| dead_lettered),
    });
    processor.consumed(topic, partition, offset, None, Instant::now());
    if let (Some(f), Some(source)) = (flow, Source::from_topic(&origin.topic)) {
        f.processed(source, origin.partition, payload.len());
    }
    Ok(())
}

/// The test knob `--crash-on`: a panic where no input could cause one.
struct TestCrash {
    needle: Option<Vec<u8>>,
    at_checkpoint: bool,
    armed: bool,
}

impl TestCrash {
    fn new(spec: Option<&str>) -> Self {
        let (at_checkpoint, id) = match spec.map(|s| s.strip_prefix("checkpoint:").ok_or(s)) {
            Some(Ok(id)) => (true, Some(id)),
            Some(Err(id)) => (false, Some(id)),
            None => (false, None),
        };
        TestCrash {
            needle: id.map(|id| format!("\"{id}\"").into_bytes()),
            at_checkpoint,
            armed: false,
        }
    }

    fn handling(&mut self, payload: &[u8]) {
        let Some(needle) = &self.needle else { return };
        if payload
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
        {
            assert!(self.at_checkpoint, "test crash while handling a message");
            self.armed = true;
        }
    }

    fn checkpointing(&self) {
        assert!(!self.armed, "test crash at a checkpoint");
    }
}

/// The most bytes of events forwarded in one message.
const FORWARD_BYTES: usize = 512 * 1024;

/// Events that a producer put on another partition than Kafka's murmur2
/// gives their district: forwarded to it through `screening.repartition`,
/// where they count once and join their district's state. One warning per
/// run says so; the metric counts every one (docs/semantics.md, Replays).
fn events_rerouted(
    metrics: &Metrics,
    summary: &mut RunSummary,
    source: Source,
    topic: &str,
    partition: i32,
    n: u64,
) {
    metrics.emit(EventsRerouted {
        source,
        topic,
        partition,
        count: n,
        first: summary.rerouted == 0,
    });
    summary.rerouted += n;
}

/// Logs what a run did.
pub fn log_summary(s: &RunSummary) {
    info!(
        messages = s.messages,
        valid = s.valid,
        accepted = s.accepted,
        duplicates = s.duplicates,
        dead_letters = s.dead_letters,
        rerouted = s.rerouted,
        "consumer finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_publication_spaces_the_next_ones_out() {
        assert_eq!(publish_pause(Duration::from_millis(1)), PUBLISH_EVERY);
        assert_eq!(
            publish_pause(Duration::from_millis(50)),
            Duration::from_millis(450)
        );
        assert_eq!(publish_pause(Duration::MAX), Duration::MAX);
    }
}

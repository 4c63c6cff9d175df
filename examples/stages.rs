//! Each stage of the hot path timed alone on one JSON-lines file, single
//! threaded, so the end-to-end figure of `paicha run --replay` can be split
//! into what each step costs.
//!
//! ```text
//! cargo run --release --example stages -- FILE [--chunk LINES] [--json]
//! ```
//!
//! The file is processed in chunks (default 100,000 lines) so memory stays
//! flat whatever its size; every stage sees the output of the one before,
//! as in the pipeline:
//!
//! - `read`: reading and splitting the file into lines;
//! - `route+pseudonymize`: what the replay producer does per line (one parse
//!   for `source`/`district`, HMAC-SHA-256 of the ids, the line rewritten);
//! - `decode+validate`: the consumer's decoder on the pseudonymized lines;
//! - `dedupe+windowing`: the dedupe set and the `symptom_counts` windows alone;
//! - `processors`: every in-memory processor (`Processor::event`: dedupe,
//!   windows, beds, raw-event builders, follow-ups, daily counts);
//! - `checkpoint (parquet)`: the processor's checkpoint after each chunk —
//!   Parquet files of raw events and closed windows, the dedupe log, the
//!   manifest, fsynced;
//! - `kafka consume`: the batched messages (500 events, one source and
//!   district each, as the replay sends them) read back from librdkafka's mock
//!   cluster by one consumer. Produced 20,000 lines at a time (the mock keeps
//!   only the newest 5 MiB per partition); only the consuming is timed.
//!
//! With `--json`, a last line holds the figures for `bench/harness.py`.
// A benchmark, not the pipeline: a panic is the run failing, with its line.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paicha_contract::event::{route_and_pseudonymize, Decoder, Event, Ids, Source};
use paicha_contract::pseudonym::Pseudonymizer;
use paicha_contract::registry::Registry;
use paicha_contract::topics::partition_for;
use paicha_ingest::kafka::{self, EmbeddedCluster};
use paicha_processors::dedupe::{self, Dedupe};
use paicha_processors::symptoms::SymptomWindows;
use paicha_processors::time::Windows;
use paicha_processors::{Accepted, Config, Processor};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

const STAGES: [&str; 7] = [
    "read",
    "route+pseudonymize",
    "decode+validate",
    "dedupe+windowing",
    "processors",
    "checkpoint (parquet)",
    "kafka consume",
];

/// Partitions per topic, as `paicha run` creates them.
const PARTITIONS: i32 = 4;
/// Lines produced to the mock cluster before they are read back.
const KAFKA_PIECE: usize = 20_000;
/// Events per message, as the replay batches them.
const BATCH_EVENTS: usize = 500;

#[derive(Default)]
struct Clock {
    spent: [Duration; STAGES.len()],
}

impl Clock {
    fn time<T>(&mut self, stage: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.spent[stage] += t.elapsed();
        out
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut chunk = 100_000usize;
    let mut json = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--chunk" => {
                chunk = args
                    .next()
                    .context("--chunk needs a number of lines")?
                    .parse()
                    .context("--chunk needs a number of lines")?
            }
            "--json" => json = true,
            _ if file.is_none() => file = Some(a),
            _ => bail!("unexpected argument {a}"),
        }
    }
    let file = file.context("usage: stages FILE [--chunk LINES] [--json]")?;
    let registry = Arc::new(Registry::builtin()?);
    let pseudonymizer = Pseudonymizer::new(b"bench");
    let decoder = Decoder::new(registry.clone(), pseudonymizer.clone());
    let data = tempfile::tempdir()?;
    let mut processor = Processor::open(Config::new(data.path().to_path_buf()), registry.clone())?;
    let mut dedupe = Dedupe::default();
    let mut windows = SymptomWindows::new(Windows::new(3_600_000_000));
    let cluster = EmbeddedCluster::start(1, PARTITIONS)?;
    let mut kafka = KafkaStage::new(&cluster.bootstrap_servers())?;

    let mut clock = Clock::default();
    let mut reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&file).with_context(|| format!("cannot open {file}"))?,
    );
    let now = chrono::Utc::now().timestamp_micros();
    let (mut lines, mut routed, mut valid, mut counted) = (0u64, 0u64, 0u64, 0u64);
    let mut offset = 0i64;
    let mut max_time = i64::MIN;
    loop {
        let block: Vec<Vec<u8>> = clock.time(0, || {
            let mut block = Vec::with_capacity(chunk);
            for _ in 0..chunk {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        block.push(line);
                    }
                }
            }
            block
        });
        if block.is_empty() {
            break;
        }
        lines += block.len() as u64;
        let hashed: Vec<(Source, String, Vec<u8>)> = clock.time(1, || {
            block
                .iter()
                .filter_map(|l| route_and_pseudonymize(l, &pseudonymizer).ok())
                .map(|(r, l)| (r.source, r.district, l))
                .collect()
        });
        routed += hashed.len() as u64;
        let events: Vec<Event> = clock.time(2, || {
            hashed
                .iter()
                .filter_map(|(s, _, l)| {
                    decoder
                        .decode_with(l, Some(*s), now, Ids::Pseudonymized)
                        .ok()
                })
                .collect()
        });
        valid += events.len() as u64;
        clock.time(3, || {
            for e in &events {
                let day = e.event_time.div_euclid(86_400_000_000) as i32;
                if dedupe.insert(day, dedupe::key(e.source().as_str(), &e.event_id)) {
                    windows.add(e);
                }
            }
        });
        clock.time(4, || {
            for e in &events {
                max_time = max_time.max(e.event_time);
                if processor.event(e, i64::MIN) == Accepted::Counted {
                    counted += 1;
                }
            }
        });
        clock.time(5, || -> Result<()> {
            offset += 1;
            let t = Instant::now();
            processor.consumed(Source::Checkpoint.topic(), 0, offset, Some(max_time), t);
            processor.checkpoint(false, t)
        })?;
        // A piece at a time: the mock keeps only the newest 5 MiB of a
        // partition, and a district-skewed chunk can put more in one.
        for piece in hashed.chunks(KAFKA_PIECE) {
            kafka.produce(piece)?;
            clock.time(6, || kafka.consume())?;
        }
    }
    let t = Instant::now();
    processor.checkpoint(true, t)?;
    clock.spent[5] += t.elapsed();
    if kafka.consumed_events != routed {
        bail!(
            "kafka stage read {} events back, {} were produced",
            kafka.consumed_events,
            routed
        );
    }

    let per = |stage: usize, n: u64| n as f64 / clock.spent[stage].as_secs_f64().max(1e-9);
    let inputs = [lines, lines, routed, valid, valid, counted, routed];
    println!(
        "{lines} lines, {routed} routed, {valid} valid, {counted} counted, in chunks of {chunk}"
    );
    println!(
        "{:<22} {:>9} {:>14} {:>12}",
        "stage", "seconds", "events/s", "ns/event"
    );
    let mut figures = BTreeMap::new();
    for (i, name) in STAGES.iter().enumerate() {
        let s = clock.spent[i].as_secs_f64();
        let rate = per(i, inputs[i]);
        println!(
            "{name:<22} {s:>9.3} {rate:>14.0} {:>12.0}",
            1e9 / rate.max(1e-9)
        );
        figures.insert(
            *name,
            serde_json::json!({"seconds": s, "events_per_second": rate}),
        );
    }
    let serial: f64 = clock.spent[1..].iter().map(Duration::as_secs_f64).sum();
    println!(
        "{:<22} {serial:>9.3} {:>14.0}   (all but read, one thread)",
        "sum",
        lines as f64 / serial.max(1e-9)
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"lines": lines, "valid": valid, "counted": counted, "stages": figures})
        );
    }
    Ok(())
}

/// Produces a chunk's lines in messages as the replay does and reads them
/// back, counting the events in each payload.
struct KafkaStage {
    producer: kafka::CountingProducer,
    counter: kafka::DeliveryCounter,
    consumer: BaseConsumer,
    produced_messages: u64,
    consumed_messages: u64,
    consumed_events: u64,
}

impl KafkaStage {
    fn new(brokers: &str) -> Result<Self> {
        let (producer, counter) = kafka::producer(brokers)?;
        // The pipeline's own settings: what it consumes with, timed alone.
        let consumer: BaseConsumer =
            paicha_pipeline::consumer_settings(brokers, "stages").create()?;
        let mut tpl = TopicPartitionList::new();
        for s in Source::ALL {
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(s.topic(), p, Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(KafkaStage {
            producer,
            counter,
            consumer,
            produced_messages: 0,
            consumed_messages: 0,
            consumed_events: 0,
        })
    }

    fn produce(&mut self, lines: &[(Source, String, Vec<u8>)]) -> Result<()> {
        let mut pending: BTreeMap<(Source, &str), (Vec<u8>, usize)> = BTreeMap::new();
        let mut send = |source: Source, district: &str, buf: &[u8]| -> Result<()> {
            kafka::send(
                &self.producer,
                source.topic(),
                Some(partition_for(district, PARTITIONS)),
                district.as_bytes(),
                buf,
                None,
            )?;
            self.produced_messages += 1;
            Ok(())
        };
        for (source, district, line) in lines {
            let (buf, n) = pending.entry((*source, district.as_str())).or_default();
            if !buf.is_empty() {
                buf.push(b'\n');
            }
            buf.extend_from_slice(line);
            *n += 1;
            if *n >= BATCH_EVENTS {
                send(*source, district, buf)?;
                buf.clear();
                *n = 0;
            }
        }
        for ((source, district), (buf, n)) in pending {
            if n > 0 {
                send(source, district, &buf)?;
            }
        }
        kafka::finish(&self.producer, &self.counter)?;
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    fn consume(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.consumed_messages < self.produced_messages {
            if Instant::now() > deadline {
                bail!(
                    "kafka stage: {} of {} messages read back after 120 s",
                    self.consumed_messages,
                    self.produced_messages
                );
            }
            if let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
                let m = m?;
                let payload = m.payload().unwrap_or_default();
                self.consumed_events += payload.split(|b| *b == b'\n').count() as u64;
                self.consumed_messages += 1;
            }
        }
        Ok(())
    }
}

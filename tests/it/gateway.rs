//! The HTTP ingest gateway as a field app uses it: events posted one at a
//! time and in JSON-lines batches to `paicha run --brokers` (a librdkafka
//! mock cluster owned by this test, reached over loopback like any broker).
//!
//! Each event's answer must be what an independent validator says, every
//! table must equal a fold over the input, and no output (files, SQL
//! results, logs, metrics, any topic but the dead-letter one) may hold a
//! raw person, household or vehicle id.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::gateway::*;
use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster.create_topic(t, 2, 1).unwrap();
    }
    cluster
}

/// `paicha run --brokers` with its stdout and stderr kept in `log`.
struct Run {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(brokers: &str, data: &std::path::Path, extra: &[&str]) -> Run {
    let log = data.with_extension("log");
    let err = std::fs::File::create(log.with_extension("err")).unwrap();
    let mut child = paicha()
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0"])
        .args(["--pg", "127.0.0.1:0", "--checkpoint-interval", "500ms"])
        .arg("--data")
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("start paicha");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out_path = log.clone();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(out_path).unwrap();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if let Some(rest) = line.strip_prefix("paicha: SQL at ") {
                let _ = tx.send(rest.split("/sql").next().unwrap_or_default().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("paicha printed its HTTP address");
    Run { child, url, log }
}

fn metrics(url: &str) -> String {
    ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every raw person, household and vehicle id in the input text, found
/// without the decoder under test: the string values of those keys.
fn raw_ids(text: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for key in [
        "\"person_id\":\"",
        "\"household_id\":\"",
        "\"vehicle_id\":\"",
    ] {
        for part in text.split(key).skip(1) {
            if let Some(id) = part.split('"').next() {
                if id.len() >= 6 {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    ids
}

/// The raw ids of an input, and their long pieces (split at `-` and
/// non-ASCII), so an id is found whole or inside a longer token.
struct RawIds {
    whole: HashSet<String>,
    pieces: HashSet<String>,
}

fn pieces(t: &str) -> impl Iterator<Item = &str> {
    t.split(|c: char| c == '-' || !c.is_ascii())
        .filter(|p| p.len() >= 12)
}

impl RawIds {
    fn new(whole: HashSet<String>) -> Self {
        let pieces = whole
            .iter()
            .flat_map(|id| pieces(id).map(str::to_string))
            .collect();
        RawIds { whole, pieces }
    }

    /// The raw ids (or their long pieces) that occur in `bytes`: tokens are
    /// maximal runs of the bytes ids are made of (ASCII letters, digits,
    /// `-`, and any UTF-8 non-ASCII byte).
    fn leaks(&self, bytes: &[u8]) -> Vec<String> {
        let is_id_byte = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b >= 0x80;
        let mut found = Vec::new();
        for token in bytes.split(|b| !is_id_byte(b)) {
            if token.len() < 6 {
                continue;
            }
            let t = String::from_utf8_lossy(token);
            if self.whole.contains(t.as_ref()) {
                found.push(t.into_owned());
                continue;
            }
            found.extend(
                pieces(&t)
                    .filter(|p| self.pieces.contains(*p))
                    .map(str::to_string),
            );
        }
        found
    }
}

/// Every message (key, value, headers) on `topic`, from the beginning.
fn topic_bytes(brokers: &str, topic: &str) -> (Vec<u8>, usize, usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "privacy-scan")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
    }
    consumer.assign(&tpl).unwrap();
    let (mut bytes, mut messages, mut marked) = (Vec::new(), 0, 0);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
    {
        assert!(Instant::now() < deadline, "cannot read {topic}");
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        next.insert(m.partition(), m.offset() + 1);
        messages += 1;
        bytes.extend_from_slice(m.key().unwrap_or_default());
        bytes.push(b'\n');
        bytes.extend_from_slice(m.payload().unwrap_or_default());
        bytes.push(b'\n');
        if let Some(h) = m.headers() {
            use rdkafka::message::Headers;
            for h in h.iter() {
                marked += (h.key == "paicha-pseudonyms") as usize;
                bytes.extend_from_slice(h.key.as_bytes());
                bytes.extend_from_slice(h.value.unwrap_or_default());
                bytes.push(b'\n');
            }
        }
    }
    (bytes, messages, marked)
}

fn all_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn gateway_answers_each_event_tables_are_exact_and_no_output_holds_a_raw_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_into(dir.path(), 1, 7);
    let data = dir.path().join("data");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mut run = start(&brokers, &data, &[]);

    // The first events one per request, the rest in batches per source.
    let mut outcomes = Outcomes::default();
    let singles: Vec<(usize, &str)> = lines.iter().copied().enumerate().take(60).collect();
    for one in &singles {
        post_until_answered(
            &run.url,
            None,
            std::slice::from_ref(one),
            1,
            Duration::from_secs(60),
            &mut outcomes,
        );
    }
    let mut by_source: BTreeMap<String, Vec<(usize, &str)>> = BTreeMap::new();
    for (i, l) in lines.iter().copied().enumerate().skip(60) {
        by_source.entry(source_of(l)).or_default().push((i, l));
    }
    for group in by_source.values() {
        post_until_answered(
            &run.url,
            None,
            group,
            500,
            Duration::from_secs(120),
            &mut outcomes,
        );
    }

    // Each answer is what an independent reading of the contract says.
    let districts = districts();
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    for (i, l) in lines.iter().enumerate() {
        let blank = l.trim().is_empty();
        let got = outcomes.by_line.get(&i).map(String::as_str);
        if blank {
            continue;
        }
        let want_valid = valid(l, &districts).is_some();
        match got {
            Some("accepted") => {
                assert!(want_valid, "line {} accepted but invalid: {l}", i + 1);
                accepted += 1;
            }
            Some(r) => {
                assert!(!want_valid, "line {} refused ({r}) but valid: {l}", i + 1);
                rejected += 1;
            }
            None => panic!("line {} has no answer", i + 1),
        }
    }
    assert!(accepted > 30_000 && rejected > 0, "{accepted} / {rejected}");

    // Everything accepted is consumed; then stop and compare.
    let deadline = Instant::now() + Duration::from_secs(120);
    let scraped = loop {
        let m = metrics(&run.url);
        if metric_sum(&m, "paicha_events_consumed_total") as usize >= accepted {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "paicha did not consume every accepted event"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric_sum(&scraped, "paicha_gateway_events_total{outcome=\"accepted\"") as usize,
        accepted
    );
    // The gateway's dead letters go through Kafka too.
    wait_for(
        "paicha has consumed every gateway dead letter",
        Duration::from_secs(120),
        || {
            http_count(
                &run.url,
                "SELECT COUNT(*) FROM dead_letters WHERE topic LIKE 'gateway:%'",
            ) == Some(rejected as i64)
        },
    );
    let sql_out = std::process::Command::new(env!("CARGO_BIN_EXE_paicha"))
        .args(["sql", "--url", &run.url, "--format", "csv"])
        .arg("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        .output()
        .unwrap();
    let tables: Vec<String> = String::from_utf8_lossy(&sql_out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert!(tables.len() >= 8, "{tables:?}");
    sigterm(&mut run.child);
    assert_tables_exact(&data, &file);
    let gateway_letters = sql_rows(
        &data,
        "SELECT COUNT(*) FROM dead_letters WHERE topic LIKE 'gateway:%'",
    );
    assert_eq!(gateway_letters[0][0], rejected.to_string());

    // Privacy: nothing paicha wrote or said holds a raw id of the input.
    let ids = RawIds::new(raw_ids(&text));
    assert!(ids.whole.len() > 10_000, "{} ids", ids.whole.len());
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut files = Vec::new();
    all_files(&data, &mut files);
    for f in files {
        let mut bytes = Vec::new();
        std::fs::File::open(&f)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        outputs.push((f.display().to_string(), bytes));
    }
    for t in &tables {
        let rows = paicha()
            .args(["sql", "--data", data.to_str().unwrap(), "--format", "csv"])
            .arg(format!("SELECT * FROM {t}"))
            .output()
            .unwrap();
        assert!(rows.status.success(), "SELECT * FROM {t}");
        outputs.push((format!("SELECT * FROM {t}"), rows.stdout));
    }
    outputs.push(("stdout".into(), std::fs::read(&run.log).unwrap()));
    outputs.push((
        "stderr".into(),
        std::fs::read(run.log.with_extension("err")).unwrap(),
    ));
    outputs.push(("metrics".into(), scraped.into_bytes()));
    for topic in TOPICS.iter().filter(|t| **t != "screening.dead_letter") {
        let (bytes, messages, marked) = topic_bytes(&brokers, topic);
        // Nothing is forwarded: the gateway partitions as paicha does.
        if topic != &"screening.alerts" && topic != &"screening.repartition" {
            assert!(messages > 0, "{topic} is empty");
            assert_eq!(
                marked, messages,
                "every message on {topic} says it is pseudonymized"
            );
        }
        outputs.push((topic.to_string(), bytes));
    }
    // The scan itself must be able to fail: the dead-letter topic keeps the
    // original bytes of refused lines, raw ids included.
    let (dead, _, _) = topic_bytes(&brokers, "screening.dead_letter");
    assert!(
        !ids.leaks(&dead).is_empty(),
        "the scan finds nothing anywhere"
    );
    for (what, bytes) in &outputs {
        let found = ids.leaks(bytes);
        assert!(
            found.is_empty(),
            "{what} holds raw ids, e.g. {:?}",
            &found[..found.len().min(3)]
        );
    }
}

#[test]
fn gateway_refuses_bad_requests_and_answers_503_when_kafka_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let mut run = start(
        &brokers,
        &data,
        &[
            "--ingest-token",
            "pharmacy:till-7",
            "--ingest-token",
            "*:ops",
            "--ingest-max-events",
            "3",
            "--ingest-max-body",
            "4096",
            "--ingest-timeout",
            "2s",
        ],
    );
    let url = run.url.clone();
    let event = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2020-01-27T09:20:00+08:00","source":"pharmacy","district":"500103","pharmacy_id":"ph-1","person_id":"p-500103199901011111","drug_class":"cough","quantity":1,"temperature_c":null}}"#
        )
    };

    let a = post(&url, "pharmacy", None, &event("a"));
    assert_eq!(a.status, 401, "{}", a.body);
    let a = post(&url, "pharmacy", Some("wrong"), &event("a"));
    assert_eq!(a.status, 401);
    let a = post(&url, "door_visit", Some("till-7"), &event("a"));
    assert_eq!(a.status, 401, "a pharmacy token cannot post door visits");
    let a = post(&url, "pharmacy", Some("till-7"), &event("a"));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["accepted"], 1);
    let a = post(
        &url,
        "pharmacy",
        Some("ops"),
        &format!("{}\n{}", event("b"), event("c")),
    );
    assert_eq!((a.status, a.body["accepted"].as_u64()), (200, Some(2)));
    let a = post(&url, "door_visit", Some("ops"), &event("d"));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["events"][0]["reason"], "source_mismatch");
    // A second request's line 1 is another dead letter, not the same one.
    let a = post(&url, "door_visit", Some("ops"), &event("d2"));
    assert_eq!(a.body["events"][0]["reason"], "source_mismatch");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = ureq::post(&format!("{url}/sql"))
            .set("Accept", "text/csv")
            .send_string("SELECT COUNT(*) FROM dead_letters WHERE topic = 'gateway:door_visit'")
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|b| b.lines().nth(1).and_then(|n| n.parse::<u32>().ok()));
        if n == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway dead letters: {n:?}, want 2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let four = [event("e"), event("f"), event("g"), event("h")].join("\n");
    let a = post(&url, "pharmacy", Some("ops"), &four);
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.body["error"]
        .as_str()
        .unwrap()
        .contains("--ingest-max-events"));
    let a = post(&url, "pharmacy", Some("ops"), &"x".repeat(5000));
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.body["error"]
        .as_str()
        .unwrap()
        .contains("--ingest-max-body"));
    let a = post(&url, "pharmacy", Some("ops"), "\n  \n");
    assert_eq!(a.status, 400);
    let a = post(&url, "wards", Some("ops"), &event("i"));
    assert_eq!(a.status, 404);

    // Kafka goes away: the gateway answers 503 with Retry-After, accepts
    // nothing, and says so in its metrics; it does not hang or buffer.
    drop(cluster);
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        let started = Instant::now();
        let a = post(&url, "pharmacy", Some("ops"), &event("j"));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the answer took too long"
        );
        if a.status == 503 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 while Kafka is gone: {}",
            a.status
        );
    };
    assert!(a.retry_after.is_some(), "503 without Retry-After");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(&url).contains("paicha_kafka_brokers_up{client=\"gateway\"} 0") {
        assert!(Instant::now() < deadline, "brokers_up never went to 0");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
    let err = std::fs::read_to_string(run.log.with_extension("err")).unwrap();
    assert!(err.contains("Kafka is unreachable"), "{err}");
}

#[test]
fn an_open_gateway_refuses_a_network_address() {
    // Its own data directory: the default (`./data`) may hold anything.
    let dir = tempfile::tempdir().unwrap();
    let out = paicha()
        .args(["run", "--brokers", "127.0.0.1:1", "--http", "0.0.0.0:0"])
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--http-token", "t", "--pg", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--ingest-token"), "{err}");
}

/// The embedded cluster keeps only the newest 5 MiB of a partition and
/// silently drops older data, so a gateway that ran ahead of a slow consumer
/// would answer `accepted` for events nobody ever counts. Here one
/// partition per topic and a slow sink make the gateway much faster than
/// the consumer; every accepted door visit must still be counted.
#[test]
fn an_embedded_gateway_faster_than_its_consumer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_into(dir.path(), 4, 9);
    let data = dir.path().join("data");
    let text = std::fs::read_to_string(&file).unwrap();
    let districts = districts();
    // Door visits only: more than the 5 MiB the cluster keeps plus the 8 MiB
    // the consumer prefetches, under ids the simulator that
    // runs alongside does not use.
    let visits: Vec<String> = text
        .lines()
        .filter(|l| valid(l, &districts).is_some_and(|v| v["source"] == "door_visit"))
        .map(|l| l.replacen("\"event_id\":\"", "\"event_id\":\"t-", 1))
        .collect();
    let bytes: usize = visits.iter().map(String::len).sum();
    assert!(bytes > 20 << 20, "only {bytes} bytes of door visits");
    let distinct: HashSet<String> = visits
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event_id"].as_str().map(str::to_string))
        .collect();

    let run = serving(&[
        "run",
        "--data",
        data.to_str().unwrap(),
        "--partitions",
        "1",
        "--slow-sink-ms",
        "2",
        "--rate",
        "1",
        "--checkpoint-interval",
        "500ms",
    ]);
    let lines: Vec<(usize, &str)> = visits.iter().map(String::as_str).enumerate().collect();
    let mut outcomes = Outcomes::default();
    post_until_answered(
        &run.http,
        None,
        &lines,
        500,
        Duration::from_secs(300),
        &mut outcomes,
    );
    assert!(outcomes.by_line.values().all(|o| o == "accepted"));

    let deadline = Instant::now() + Duration::from_secs(180);
    let count = || -> usize {
        ureq::post(&format!("{}/sql", run.http))
            .set("Accept", "text/csv")
            .send_string("SELECT COUNT(*) FROM door_visits WHERE event_id LIKE 't-%'")
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|b| b.lines().nth(1).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    loop {
        let n = count();
        if n == distinct.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {} accepted door visits counted",
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Had Kafka deleted anything unread, paicha would have said so.
    let m = metrics(&run.http);
    assert!(!m.contains("error=\"OffsetReset\""), "offset resets: {m}");
}

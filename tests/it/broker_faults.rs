//! Faults against a real Kafka-protocol broker (tansu, in its own process,
//! storing in SQLite): the broker stops for 30 seconds mid-stream, and
//! paicha is killed while its gateway takes requests. A field app posts the
//! whole input through the gateway and resends whatever was not
//! acknowledged; afterwards every table equals a fold over the input, so
//! nothing acknowledged was lost and nothing counted twice.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common::external::{needs, Tool};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::gateway::*;
use crate::common::tansu::{Tansu, TOPICS};
use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// A free loopback port, so a restarted paicha keeps its address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `paicha run --brokers` on a fixed HTTP port, its stderr kept in `err`.
fn start(brokers: &str, data: &Path, port: u16, err: &Path) -> Reaped {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(err)
        .unwrap();
    let mut child = paicha()
        .args(["run", "--brokers", brokers, "--pg", "127.0.0.1:0"])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--checkpoint-interval", "500ms", "--ingest-timeout", "3s"])
        // Static membership: restarted after `kill -9`, it gets its
        // partitions back at once (tansu is slow to expire a dead dynamic
        // member, as Kafka is by the session timeout).
        .args(["--instance", "paicha-0"])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("start paicha");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("paicha printed its addresses").unwrap();
        if line.contains("ingest gateway at") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Reaped(child)
}

/// Whether paicha's committed positions have reached the end of every
/// partition of the source and dead-letter topics.
fn caught_up(url: &str, brokers: &str) -> bool {
    let Ok(resp) = ureq::get(&format!("{url}/metrics")).call() else {
        return false;
    };
    let text = resp.into_string().unwrap_or_default();
    let mut pos: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("paicha_kafka_consumer_position{") else {
            continue;
        };
        let label = |k: &str| {
            rest.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|t| t.split('"').next())
                .map(str::to_string)
        };
        if let (Some(p), Some(t), Some(v)) = (
            label("partition").and_then(|p| p.parse().ok()),
            label("topic"),
            line.rsplit(' ').next().and_then(|v| v.parse().ok()),
        ) {
            pos.insert((t, p), v);
        }
    }
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-probe")
        .create()
        .unwrap();
    TOPICS
        .iter()
        .filter(|(t, _)| *t != "screening.alerts")
        .all(|(t, n)| {
            (0..*n).all(|p| {
                let Ok((_, high)) = client.fetch_watermarks(t, p, Duration::from_secs(5)) else {
                    return false;
                };
                high == 0 || pos.get(&(t.to_string(), p)).is_some_and(|v| *v >= high)
            })
        })
}

fn wait_caught_up(url: &str, brokers: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !caught_up(url, brokers) {
        assert!(Instant::now() < deadline, "paicha did not catch up");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Posts the whole input through the gateway at `url` in batches per
/// source, from a thread, counting events answered in `answered`.
fn field_app(
    url: String,
    lines: Vec<(usize, String)>,
    answered: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Outcomes>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut by_source: BTreeMap<String, Vec<(usize, &str)>> = BTreeMap::new();
        for (i, l) in &lines {
            by_source.entry(source_of(l)).or_default().push((*i, l));
        }
        // Interleave the sources batch by batch, as many apps would.
        let mut chunks: Vec<Vec<(usize, &str)>> = Vec::new();
        let groups: Vec<Vec<Vec<(usize, &str)>>> = by_source
            .values()
            .map(|g| g.chunks(200).map(<[_]>::to_vec).collect())
            .collect();
        let longest = groups.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for g in &groups {
                if let Some(c) = g.get(i) {
                    chunks.push(c.clone());
                }
            }
        }
        for chunk in chunks {
            let mut o = Outcomes::default();
            post_until_answered(&url, None, &chunk, 200, Duration::from_secs(300), &mut o);
            answered.fetch_add(chunk.len(), Ordering::SeqCst);
            let mut all = outcomes.lock().unwrap();
            all.retried_requests += o.retried_requests;
            all.by_line.extend(o.by_line);
        }
    })
}

/// The pieces both fault tests start from: a simulated day, a broker,
/// paicha on a fixed address, and a field app posting the whole day.
struct Setup {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    data: std::path::PathBuf,
    err: std::path::PathBuf,
    total: usize,
    broker: Tansu,
    brokers: String,
    port: u16,
    url: String,
    paicha: Reaped,
    answered: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Outcomes>>,
    app: std::thread::JoinHandle<()>,
}

fn setup(seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_into(dir.path(), 1, seed);
    let data = dir.path().join("data");
    let err = dir.path().join("paicha.err");
    let lines: Vec<(usize, String)> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i, l.to_string()))
        .collect();
    let total = lines.len();
    let broker = Tansu::start(dir.path());
    let brokers = broker.bootstrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let paicha = start(&brokers, &data, port, &err);
    let answered = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let app = field_app(url.clone(), lines, answered.clone(), outcomes.clone());
    Setup {
        _dir: dir,
        file,
        data,
        err,
        total,
        broker,
        brokers,
        port,
        url,
        paicha,
        answered,
        outcomes,
        app,
    }
}

#[test]
fn the_broker_stops_for_30_seconds_mid_stream_and_every_table_is_exact() {
    if !needs(
        "the_broker_stops_for_30_seconds_mid_stream_and_every_table_is_exact",
        &[Tool::Tansu],
    ) {
        return;
    }
    let Setup {
        _dir,
        file,
        data,
        err,
        total,
        mut broker,
        brokers,
        port: _,
        url,
        mut paicha,
        answered,
        outcomes,
        app,
    } = setup(11);

    // A third of the way in, the broker dies for 30 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.load(Ordering::SeqCst) < total / 3 {
        assert!(Instant::now() < deadline, "the gateway is too slow");
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.stop();
    let down = Instant::now();
    // While it is down paicha waits and says so: the gateway turns requests
    // away with 503, and the consumer's broker count drops to 0.
    let saw_zero = Arc::new(AtomicBool::new(false));
    while down.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = ureq::get(&format!("{url}/metrics")).call() {
            let m = r.into_string().unwrap_or_default();
            if m.contains("paicha_kafka_brokers_up{client=\"consumer\"} 0") {
                saw_zero.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        saw_zero.load(Ordering::SeqCst),
        "paicha_kafka_brokers_up never showed the outage"
    );
    let answered_while_down = answered.load(Ordering::SeqCst);
    broker.restart();

    if app.join().is_err() {
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the field app failed; paicha's log ends:\n{}\ntansu's:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            broker.log_tail()
        );
    }
    let outcomes = outcomes.lock().unwrap();
    assert!(
        outcomes.retried_requests > 0,
        "no request was turned away while the broker was down"
    );
    assert!(answered_while_down < total, "the outage was not mid-stream");
    wait_caught_up(&url, &brokers);
    sigterm(&mut paicha);

    let log = std::fs::read_to_string(&err).unwrap();
    assert!(log.contains("Kafka is unreachable"), "{log}");
    assert!(log.contains("Kafka is reachable again"), "{log}");
    assert_tables_exact(&data, &file);
}

#[test]
fn paicha_killed_while_the_gateway_takes_requests_loses_nothing_acknowledged() {
    if !needs(
        "paicha_killed_while_the_gateway_takes_requests_loses_nothing_acknowledged",
        &[Tool::Tansu],
    ) {
        return;
    }
    let Setup {
        _dir,
        file,
        data,
        err,
        total,
        broker,
        brokers,
        port,
        url,
        mut paicha,
        answered,
        outcomes,
        app,
    } = setup(12);

    // Killed twice while requests are in flight; each time an operator
    // starts it again on the same address. The app keeps resending what
    // got no answer or no acknowledgement.
    for share in [0.3, 0.6] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while answered.load(Ordering::SeqCst) < (total as f64 * share) as usize {
            assert!(Instant::now() < deadline, "the gateway is too slow");
            std::thread::sleep(Duration::from_millis(10));
        }
        paicha.kill().expect("kill -9");
        paicha.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        paicha = start(&brokers, &data, port, &err);
    }

    app.join().expect("the field app finished");
    assert!(
        outcomes.lock().unwrap().retried_requests > 0,
        "no request was cut off by the kills"
    );
    wait_caught_up(&url, &brokers);
    sigterm(&mut paicha);
    assert_tables_exact(&data, &file);
    let letters = sql_rows(
        &data,
        "SELECT COUNT(*), COUNT(DISTINCT topic || offset || '/' || line) FROM dead_letters \
         WHERE topic NOT LIKE 'gateway:%'",
    );
    assert_eq!(letters[0][0], letters[0][1], "no dead letter twice");
    drop(broker);
}

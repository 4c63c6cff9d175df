//! Freshness benchmark: how long from producing an event into Kafka until
//! `POST /sql` answers with it, while `paicha run` (embedded Kafka, the
//! simulator at a steady rate) is busy.
//!
//! ```text
//! cargo build --release && cargo run --release --example freshness -- [RATE] [PROBES] [PARTITIONER]
//! ```
//!
//! `PAICHA_BIN` names another paicha binary to measure (an older build, for
//! a before/after ratio). PARTITIONER is the probe producer's librdkafka
//! `partitioner`: `murmur2_random` (default) puts the probes where paicha
//! does, `consistent_random` elsewhere, so paicha forwards them home first.
//!
//! Starts `target/release/paicha run --rate RATE` (default 20,000 events/s)
//! with HTTP on a free port, waits 10 s, then sends PROBES (default 200)
//! single-event messages 100 ms apart, each with a new `event_id`, and polls
//! `SELECT COUNT(*) FROM checkpoint_events WHERE event_id = …` every 5 ms
//! until it answers 1. Prints p50/p90/p99/max of produce-to-visible and the
//! rate the pipeline actually consumed meanwhile.
//!
//! With `PAICHA_HOSTILE_CLIENTS=N` (issue #17's load test), N clients run
//! hostile queries the whole time (a huge aggregate, a cross join of raw
//! tables, a long scan, an endless count, `SELECT … INTO`: 3 of 4 over
//! HTTP, 1 of 4 with psql), paicha runs with `--query-memory 1GiB
//! --query-timeout 10s`, and the run also prints how each kind of query
//! ended and paicha's peak RSS. `PAICHA_HOSTILE_ONLY=WORD` runs only the
//! hostile queries whose kind has WORD in it.
// A benchmark, not the pipeline: a panic is the run failing, with its line.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A child process killed when dropped.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn consumed(http: &str) -> Result<f64> {
    let text = ureq::get(&format!("http://{http}/metrics"))
        .call()?
        .into_string()?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("paicha_events_consumed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u32 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let probes: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    // murmur2_random puts the probes where paicha does; consistent_random
    // (librdkafka's default) elsewhere, so they are forwarded home first.
    let partitioner = args.next().unwrap_or_else(|| "murmur2_random".into());
    let bin = match std::env::var_os("PAICHA_BIN") {
        Some(b) => std::path::PathBuf::from(b),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("paicha"))
            .context("cannot find the paicha binary next to this example")?,
    };
    let data = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let pg_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http = format!("127.0.0.1:{port}");
    let hostile: usize = std::env::var("PAICHA_HOSTILE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bounds: &[&str] = if hostile > 0 {
        &["--query-memory", "1GiB", "--query-timeout", "10s"]
    } else {
        &[]
    };
    let mut child = Command::new(&bin)
        .args([
            "run",
            "--rate",
            &rate.to_string(),
            // A scenario of 15 million events: at 20,000/s it outlasts the
            // probes, so the rate consumed meanwhile is the pipeline's, not
            // the simulator running out (scale 5 ended after about 190 s).
            "--scale",
            "20",
            "--http",
            &http,
            "--pg",
            &format!("127.0.0.1:{pg_port}"),
        ])
        .args(bounds)
        .arg("--data")
        .arg(data.path().join("data"))
        .env("PAICHA_HMAC_KEY", "bench")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    // Stopped however this run ends, a failed probe included: a paicha
    // left behind would load the next run.
    let child = Stopped(child);
    let mut brokers = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("paicha: embedded Kafka at ") {
            brokers = rest.split(' ').next().map(str::to_string);
        }
        if line.contains("SQL at") {
            break;
        }
    }
    let Some(brokers) = brokers else {
        bail!("paicha did not report its embedded Kafka");
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .set("partitioner", &partitioner)
        .create()?;
    std::thread::sleep(Duration::from_secs(10));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..hostile)
        .map(|i| {
            let (stop, http) = (stop.clone(), http.clone());
            std::thread::spawn(move || hostile_client(i, &http, pg_port, &stop))
        })
        .collect();
    // Peak RSS, the query pool's reservation at that moment, the pool's
    // own peak, and the peak of RSS less the reservation: the last is the
    // memory outside the pool (the pipeline's own, and whatever queries
    // hold without counting it).
    let peak = std::sync::Arc::new(std::sync::Mutex::new([0u64; 4]));
    let watch = {
        let (stop, peak, pid, http) = (stop.clone(), peak.clone(), child.0.id(), http.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let rss = rss(pid);
                let pool =
                    metric_sum(&http, "paicha_query_memory_reserved_bytes").unwrap_or(0.0) as u64;
                if let Ok(mut p) = peak.lock() {
                    if rss > p[0] {
                        p[0] = rss;
                        p[1] = pool;
                    }
                    p[2] = p[2].max(pool);
                    p[3] = p[3].max(rss.saturating_sub(pool));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let sql = format!("http://{http}/sql");
    let (c0, t0) = (consumed(&http)?, Instant::now());
    let mut took = Vec::with_capacity(probes);
    for i in 0..probes {
        let id = format!("probe-{}-{i}", std::process::id());
        let event = format!(
            r#"{{"event_id":"{id}","event_time":"2020-01-21T09:00:00+08:00","source":"checkpoint","district":"500103","checkpoint_id":"cp-probe","person_id":"probe","temperature_c":36.6,"mask":true,"symptoms":[],"disposition":"pass"}}"#
        );
        let query = format!("SELECT COUNT(*) AS n FROM checkpoint_events WHERE event_id = '{id}'");
        let start = Instant::now();
        producer
            .send(
                BaseRecord::to("screening.checkpoint")
                    .key("500103")
                    .payload(&event),
            )
            .map_err(|(e, _)| e)?;
        producer.flush(Duration::from_secs(5))?;
        loop {
            // A dashboard turned away while every query slot is taken (503)
            // asks again: the wait counts in the freshness it sees.
            let body = match ureq::post(&sql).send_string(&query) {
                Ok(r) => r.into_string()?,
                Err(ureq::Error::Status(503, _)) => String::new(),
                Err(e) => return Err(e.into()),
            };
            if body.contains(r#""n":1"#) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("probe {id} not visible after 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let achieved = (consumed(&http)? - c0) / t0.elapsed().as_secs_f64();
    let lag = metric_sum(&http, "paicha_kafka_consumer_lag")?;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = watch.join();
    let mut ended: std::collections::BTreeMap<String, usize> = Default::default();
    for c in clients {
        for (k, n) in c.join().unwrap_or_default() {
            *ended.entry(k).or_default() += n;
        }
    }
    drop(child);
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    println!(
        "freshness over {probes} probes ({partitioner}, {:.0} s) at {rate} events/s offered ({achieved:.0} consumed/s): \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        t0.elapsed().as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        took[took.len() - 1]
    );
    {
        let p = peak.lock().map(|p| *p).unwrap_or_default();
        println!(
            "{hostile} hostile clients; peak RSS {} MiB (query pool {} MiB at that moment, \
             {} MiB at its peak); peak RSS outside the pool {} MiB; \
             consumer lag at the end {lag:.0} messages",
            p[0] >> 20,
            p[1] >> 20,
            p[2] >> 20,
            p[3] >> 20
        );
    }
    if hostile > 0 {
        for (k, n) in ended {
            println!("  {n:>5}  {k}");
        }
    }
    Ok(())
}

fn metric_sum(http: &str, name: &str) -> Result<f64> {
    let text = ureq::get(&format!("http://{http}/metrics"))
        .call()?
        .into_string()?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

const HOSTILE: [(&str, &str); 5] = [
    (
        "huge aggregate",
        "SELECT cardinality(array_agg(value)) FROM generate_series(1, 100000000)",
    ),
    (
        "cross join of raw tables",
        "SELECT COUNT(*) FROM checkpoint_events a CROSS JOIN door_visits b",
    ),
    ("long scan", "SELECT * FROM door_visits ORDER BY event_time"),
    (
        "endless count",
        "SELECT COUNT(*) FROM generate_series(1, 100000000000)",
    ),
    ("SELECT INTO", "SELECT 1 AS x INTO paicha_leak"),
];

/// Runs the hostile queries in turn until `stop`; how each ended, counted.
fn hostile_client(
    i: usize,
    http: &str,
    pg_port: u16,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(String, usize)> {
    let mut ended: std::collections::BTreeMap<String, usize> = Default::default();
    let mut n = i;
    // `PAICHA_HOSTILE_ONLY=scan` runs only the kinds whose name has it: to
    // tell which kind holds memory outside the pool.
    let only = std::env::var("PAICHA_HOSTILE_ONLY").ok();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let (kind, sql) = HOSTILE[n % HOSTILE.len()];
        n += 1;
        if only.as_deref().is_some_and(|o| !kind.contains(o)) {
            continue;
        }
        let outcome = if i % 4 == 3 {
            let out = Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &pg_port.to_string()])
                .args(["-U", "analyst", "-d", "paicha", "-X", "-q", "-c", sql])
                .output();
            match out {
                Ok(o) if o.status.success() => "completed".to_string(),
                Ok(o) => {
                    let e = String::from_utf8_lossy(&o.stderr);
                    format!("psql error: {}", class(&e))
                }
                Err(e) => format!("psql not run: {e}"),
            }
        } else {
            let r = ureq::post(&format!("http://{http}/sql"))
                .timeout(Duration::from_secs(120))
                .send_string(sql);
            match r {
                Ok(resp) => match resp.into_string() {
                    Ok(_) => "completed".to_string(),
                    Err(e) => format!("HTTP cut off: {}", class(&e.to_string())),
                },
                Err(ureq::Error::Status(code, resp)) => {
                    let body = resp.into_string().unwrap_or_default();
                    format!("HTTP {code}: {}", class(&body))
                }
                Err(e) => format!("HTTP failed: {}", class(&e.to_string())),
            }
        };
        *ended.entry(format!("{kind}: {outcome}")).or_default() += 1;
    }
    ended.into_iter().collect()
}

/// The kind of error a message names, without its details.
fn class(message: &str) -> &'static str {
    let m = message.to_lowercase();
    if m.contains("resources exhausted") || m.contains("query-memory") {
        "memory limit"
    } else if m.contains("timeout") || m.contains("cut off") {
        "timeout"
    } else if m.contains("read-only") {
        "read-only"
    } else if m.contains("more than") && m.contains("rows") {
        "row limit"
    } else if m.contains("concurrent") {
        "concurrency limit"
    } else {
        "other"
    }
}

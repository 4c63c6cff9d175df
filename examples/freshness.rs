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

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

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
    let http = format!("127.0.0.1:{port}");
    let mut child = Command::new(&bin)
        .args([
            "run",
            "--rate",
            &rate.to_string(),
            "--scale",
            "5",
            "--http",
            &http,
            "--pg",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(data.path().join("data"))
        .env("PAICHA_HMAC_KEY", "bench")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
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
            let body = ureq::post(&sql).send_string(&query)?.into_string()?;
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
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    println!(
        "freshness over {probes} probes ({partitioner}) at {rate} events/s offered ({achieved:.0} consumed/s): \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        took[took.len() - 1]
    );
    Ok(())
}

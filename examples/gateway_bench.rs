//! Ingest gateway benchmark: how many events per second `POST /ingest/{source}`
//! accepts, and how long a request takes, seen from the client.
//!
//! ```text
//! cargo build --example gateway_bench
//! target/debug/examples/gateway_bench http://127.0.0.1:18080 events.jsonl \
//!     --batch 100 --clients 4 --duration 15
//! ```
//!
//! Reads a JSON-lines file (`paicha simulate --out …`), groups its lines per
//! `source` into requests of `--batch` lines (1 = one event per request;
//! the lines keep their file order within a source), and posts them from
//! `--clients` threads, each with its own keep-alive connection, for
//! `--duration` seconds or until `--events` events were sent (the file is
//! sent again from the start when it runs out; the gateway accepts the
//! repeats, the pipeline deduplicates them), or the file once by default.
//! Lines whose source cannot be told are left out (and counted). With
//! `--fresh-ids TAG`, every `event_id` gets `.TAG-N` appended in the N-th
//! pass over the file, so that the pipeline counts repeats (and the events
//! of an earlier run with another TAG) as new events instead of dropping
//! them as duplicates, which costs it far less.
//!
//! A 429 or 503 is counted and the events the answer names as `retry` (all
//! of them when it names none) are sent again after `Retry-After` seconds,
//! up to `--max-retries` times; the waits are part of the run's wall time.
//!
//! Prints events/s accepted, requests/s, the client-side latency of each
//! HTTP exchange (p50/p90/p99/max), the latency of each request including
//! its retries, and, from two scrapes of `/metrics`, the server's own
//! `paicha_gateway_request_duration_seconds` over the run (quantiles
//! interpolated within its buckets). The last line is the same as one
//! tab-separated `RESULT` record.
// A benchmark, not the pipeline: a panic is the run failing, with its line.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

const SOURCES: [&str; 5] = ["checkpoint", "pharmacy", "door_visit", "case", "bed"];
const HISTOGRAM: &str = "paicha_gateway_request_duration_seconds";

#[derive(Parser)]
#[command(about = "Benchmark of paicha's ingest gateway (POST /ingest/{source})")]
struct Args {
    /// The gateway's base URL, e.g. http://127.0.0.1:18080.
    url: String,
    /// JSON-lines input file (one event per line).
    input: PathBuf,
    /// Lines per request, all of one source (1 = single events).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent client threads.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Stop sending new requests after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after sending this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Bearer token for every source (`--ingest-token '*:TOKEN'`).
    #[arg(long)]
    token: Option<String>,
    /// Resends of one request after 429/503 before giving its events up.
    #[arg(long, default_value_t = 20)]
    max_retries: u32,
    /// Make every event new: `event_id` + `.TAG-N` in the N-th pass.
    #[arg(long, value_name = "TAG")]
    fresh_ids: Option<String>,
    /// A name for the RESULT line.
    #[arg(long, default_value = "run")]
    label: String,
}

/// One request: lines of one source.
struct Request {
    source: &'static str,
    lines: Vec<Arc<str>>,
    body: String,
}

#[derive(Default)]
struct Stats {
    /// Every HTTP exchange, retries included.
    exchanges: Vec<Duration>,
    /// Every request from its first send to its final answer.
    requests: Vec<Duration>,
    accepted: u64,
    rejected: u64,
    /// Events answered `retry` (or refused wholesale by a 429/503), summed
    /// over attempts.
    retried_events: u64,
    /// Events still not accepted after --max-retries.
    given_up: u64,
    status: BTreeMap<u16, u64>,
    transport_errors: u64,
    retry_wait: Duration,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.exchanges.extend(o.exchanges);
        self.requests.extend(o.requests);
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.retried_events += o.retried_events;
        self.given_up += o.given_up;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        self.transport_errors += o.transport_errors;
        self.retry_wait += o.retry_wait;
    }
}

/// The source a line names: from its JSON, else from the text (a truncated
/// line is still sent, to be rejected like a client's broken line would).
fn source_of(line: &str) -> Option<&'static str> {
    let named = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => v.get("source").and_then(|s| s.as_str()).map(str::to_string),
        Err(_) => {
            let rest = line.split("\"source\":\"").nth(1)?;
            rest.split('"').next().map(str::to_string)
        }
    };
    let named = named?;
    SOURCES.into_iter().find(|s| *s == named)
}

fn requests(text: &str, batch: usize) -> (Vec<Request>, usize) {
    let mut open: BTreeMap<&'static str, Vec<Arc<str>>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut unroutable = 0;
    let mut close = |source: &'static str, lines: Vec<Arc<str>>| {
        let body = lines.iter().map(|l| &**l).collect::<Vec<_>>().join("\n");
        out.push(Request {
            source,
            lines,
            body,
        });
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some(source) = source_of(line) else {
            unroutable += 1;
            continue;
        };
        let lines = open.entry(source).or_default();
        lines.push(Arc::from(line));
        if lines.len() >= batch {
            let full = std::mem::take(lines);
            close(source, full);
        }
    }
    for (source, lines) in open {
        if !lines.is_empty() {
            close(source, lines);
        }
    }
    (out, unroutable)
}

/// The line with `suffix` appended to its `event_id`.
fn renamed(line: &str, suffix: &str) -> Arc<str> {
    const KEY: &str = "\"event_id\":\"";
    let Some(at) = line.find(KEY).map(|i| i + KEY.len()) else {
        return Arc::from(line);
    };
    let Some(len) = line[at..].find('"') else {
        return Arc::from(line);
    };
    let end = at + len;
    Arc::from(format!("{}{suffix}{}", &line[..end], &line[end..]))
}

/// What one answer said.
struct Answer {
    accepted: u64,
    rejected: u64,
    /// Indices (0-based, into the lines sent) to send again.
    retry: Vec<usize>,
}

fn parse_answer(body: &str, sent: usize) -> Answer {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Answer {
            accepted: 0,
            rejected: 0,
            retry: (0..sent).collect(),
        };
    };
    let Some(events) = v.get("events").and_then(|e| e.as_array()) else {
        // An error without per-event entries: nothing was accepted.
        return Answer {
            accepted: 0,
            rejected: 0,
            retry: (0..sent).collect(),
        };
    };
    let mut a = Answer {
        accepted: 0,
        rejected: 0,
        retry: Vec::new(),
    };
    for e in events {
        let line = e.get("line").and_then(|l| l.as_u64()).unwrap_or(0) as usize;
        match e.get("status").and_then(|s| s.as_str()) {
            Some("accepted") => a.accepted += 1,
            Some("rejected") => a.rejected += 1,
            _ => a.retry.push(line.saturating_sub(1)),
        }
    }
    a
}

struct Plan {
    url: String,
    token: Option<String>,
    requests: Vec<Request>,
    next: AtomicUsize,
    sent_events: AtomicU64,
    limit_events: Option<u64>,
    deadline: Option<Instant>,
    looping: bool,
    fresh_ids: Option<String>,
    max_retries: u32,
}

impl Plan {
    /// The next request to send and which repeat of the file it is in.
    fn take(&self) -> Option<(&Request, usize)> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        if let Some(limit) = self.limit_events {
            if self.sent_events.load(Ordering::Relaxed) >= limit {
                return None;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if !self.looping && i >= self.requests.len() {
            return None;
        }
        let r = &self.requests[i % self.requests.len()];
        self.sent_events
            .fetch_add(r.lines.len() as u64, Ordering::Relaxed);
        Some((r, i / self.requests.len()))
    }
}

fn client(plan: &Plan) -> Stats {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .max_idle_connections_per_host(1)
        .build();
    let mut stats = Stats::default();
    while let Some((req, pass)) = plan.take() {
        let url = format!("{}/ingest/{}", plan.url, req.source);
        let first = Instant::now();
        let mut subset: Option<Vec<Arc<str>>> = None;
        if let Some(tag) = &plan.fresh_ids {
            let suffix = format!(".{tag}-{pass}");
            subset = Some(req.lines.iter().map(|l| renamed(l, &suffix)).collect());
        }
        let mut attempt = 0u32;
        loop {
            let rebuilt;
            let (body, sent) = match &subset {
                None => (req.body.as_str(), req.lines.len()),
                Some(lines) => {
                    rebuilt = lines.iter().map(|l| &**l).collect::<Vec<_>>().join("\n");
                    (rebuilt.as_str(), lines.len())
                }
            };
            let mut call = agent.post(&url).set("Content-Type", "application/x-ndjson");
            if let Some(t) = &plan.token {
                call = call.set("Authorization", &format!("Bearer {t}"));
            }
            let t0 = Instant::now();
            let result = call.send_string(body);
            let (code, retry_after, text) = match result {
                Ok(resp) => (resp.status(), None, resp.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(code, resp)) => {
                    let after = resp
                        .header("Retry-After")
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    (code, after, resp.into_string().unwrap_or_default())
                }
                Err(ureq::Error::Transport(e)) => {
                    stats.exchanges.push(t0.elapsed());
                    stats.transport_errors += 1;
                    eprintln!("transport error: {e}");
                    stats.given_up += sent as u64;
                    break;
                }
            };
            stats.exchanges.push(t0.elapsed());
            *stats.status.entry(code).or_default() += 1;
            let answer = parse_answer(&text, sent);
            stats.accepted += answer.accepted;
            stats.rejected += answer.rejected;
            if code != 429 && code != 503 {
                if code != 200 {
                    stats.given_up += answer.retry.len() as u64;
                    if stats.status[&code] == 1 {
                        eprintln!(
                            "HTTP {code}: {}",
                            text.chars().take(300).collect::<String>()
                        );
                    }
                }
                break;
            }
            stats.retried_events += answer.retry.len() as u64;
            attempt += 1;
            if attempt > plan.max_retries || answer.retry.is_empty() {
                stats.given_up += answer.retry.len() as u64;
                break;
            }
            let current: Vec<Arc<str>> = match &subset {
                None => req.lines.clone(),
                Some(l) => l.clone(),
            };
            subset = Some(
                answer
                    .retry
                    .iter()
                    .filter_map(|&i| current.get(i).cloned())
                    .collect(),
            );
            let wait = Duration::from_secs(retry_after.unwrap_or(1));
            stats.retry_wait += wait;
            std::thread::sleep(wait);
        }
        stats.requests.push(first.elapsed());
    }
    stats
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The gateway's duration histogram: cumulative counts by upper bound, the
/// sum and the count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

fn scrape(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<Histogram> {
    let mut call = agent.get(&format!("{url}/metrics"));
    if let Some(t) = token {
        call = call.set("Authorization", &format!("Bearer {t}"));
    }
    let text = call.call()?.into_string()?;
    let mut h = Histogram::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(HISTOGRAM) else {
            continue;
        };
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if let Some(le) = rest.strip_prefix("_bucket{le=\"") {
            let le = le.split('"').next().unwrap_or("");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            h.buckets.push((le, value));
        } else if rest.starts_with("_sum") {
            h.sum = value;
        } else if rest.starts_with("_count") {
            h.count = value;
        }
    }
    if h.buckets.is_empty() {
        bail!("no {HISTOGRAM} in /metrics");
    }
    Ok(h)
}

impl Histogram {
    fn minus(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, n)| *n);
                    (le, n - b)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// Like PromQL's histogram_quantile: linear within the bucket.
    fn quantile(&self, q: f64) -> String {
        if self.count <= 0.0 {
            return "-".into();
        }
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return format!("> {:.0} ms", lower.0 * 1e3);
                }
                let within = if n > lower.1 {
                    (rank - lower.1) / (n - lower.1)
                } else {
                    1.0
                };
                return format!("{:.1} ms", (lower.0 + (le - lower.0) * within) * 1e3);
            }
            lower = (le, n);
        }
        "-".into()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.clients == 0 {
        bail!("--batch and --clients must be at least 1");
    }
    let url = args.url.trim_end_matches('/').to_string();
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let (requests, unroutable) = requests(&text, args.batch);
    drop(text);
    if requests.is_empty() {
        bail!("no event with a known source in {}", args.input.display());
    }
    let lines: usize = requests.iter().map(|r| r.lines.len()).sum();
    println!(
        "input: {} lines in {} requests of up to {} ({} lines without a known source left out)",
        lines,
        requests.len(),
        args.batch,
        unroutable
    );
    let scraper = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let before = scrape(&scraper, &url, args.token.as_deref());
    if let Err(e) = &before {
        println!("server histogram unavailable: {e}");
    }

    let started = Instant::now();
    let plan = Plan {
        url: url.clone(),
        token: args.token.clone(),
        requests,
        next: AtomicUsize::new(0),
        sent_events: AtomicU64::new(0),
        limit_events: args.events,
        deadline: args.duration.map(|s| started + Duration::from_secs_f64(s)),
        looping: args.events.is_some() || args.duration.is_some(),
        fresh_ids: args.fresh_ids.clone(),
        max_retries: args.max_retries,
    };
    let total = Mutex::new(Stats::default());
    std::thread::scope(|s| {
        for _ in 0..args.clients {
            s.spawn(|| {
                let stats = client(&plan);
                if let Ok(mut t) = total.lock() {
                    t.merge(stats);
                }
            });
        }
    });
    let wall = started.elapsed();
    let mut t = total
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    t.exchanges.sort_unstable();
    t.requests.sort_unstable();
    let secs = wall.as_secs_f64();
    let n = t.requests.len();
    let codes: Vec<String> = t.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!(
        "batch {}, {} clients: {:.1} s, {} requests ({} HTTP exchanges; {})",
        args.batch,
        args.clients,
        secs,
        n,
        t.exchanges.len(),
        codes.join(", ")
    );
    println!(
        "events: {} accepted ({:.0}/s), {} rejected; {:.1} requests/s",
        t.accepted,
        t.accepted as f64 / secs,
        t.rejected,
        n as f64 / secs
    );
    println!(
        "retries: {} events answered retry (429: {}, 503: {}), {:.1} s waited on Retry-After, {} events given up, {} transport errors",
        t.retried_events,
        t.status.get(&429).unwrap_or(&0),
        t.status.get(&503).unwrap_or(&0),
        t.retry_wait.as_secs_f64(),
        t.given_up,
        t.transport_errors
    );
    let q = |v: &[Duration]| {
        [0.5, 0.9, 0.99]
            .map(|p| ms(quantile(v, p)))
            .into_iter()
            .chain([ms(v.last().copied().unwrap_or_default())])
            .collect::<Vec<f64>>()
    };
    let ex = q(&t.exchanges);
    let rq = q(&t.requests);
    println!(
        "latency per HTTP exchange: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ex[0], ex[1], ex[2], ex[3]
    );
    println!(
        "latency per request, retries included: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        rq[0], rq[1], rq[2], rq[3]
    );
    let mut server = ["-".to_string(), "-".into(), "-".into(), "-".into()];
    if let Ok(before) = &before {
        match scrape(&scraper, &url, args.token.as_deref()) {
            Ok(after) => {
                let d = after.minus(before);
                let mean = if d.count > 0.0 {
                    format!("{:.1} ms", d.sum / d.count * 1e3)
                } else {
                    "-".into()
                };
                server = [d.quantile(0.5), d.quantile(0.9), d.quantile(0.99), mean];
                println!(
                    "server {HISTOGRAM} over the run ({} requests): p50 {}, p90 {}, p99 {}, mean {}",
                    d.count, server[0], server[1], server[2], server[3]
                );
            }
            Err(e) => println!("server histogram unavailable: {e}"),
        }
    }
    println!(
        "RESULT\tlabel={}\tfresh_ids={}\tbatch={}\tclients={}\tsecs={:.1}\taccepted={}\tev_s={:.0}\treq_s={:.1}\tp50={:.1}\tp90={:.1}\tp99={:.1}\tmax={:.1}\t429={}\t503={}\tretried_events={}\tgiven_up={}\tserver_p50={}\tserver_p99={}\tserver_mean={}",
        args.label,
        args.fresh_ids.as_deref().unwrap_or("-"),
        args.batch,
        args.clients,
        secs,
        t.accepted,
        t.accepted as f64 / secs,
        n as f64 / secs,
        ex[0],
        ex[1],
        ex[2],
        ex[3],
        t.status.get(&429).unwrap_or(&0),
        t.status.get(&503).unwrap_or(&0),
        t.retried_events,
        t.given_up,
        server[0],
        server[2],
        server[3]
    );
    Ok(())
}

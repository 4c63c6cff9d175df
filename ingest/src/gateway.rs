//! The HTTP ingest gateway: `POST /ingest/{source}` for field apps and
//! pharmacy tills that do not speak Kafka.
//!
//! A request body is one event or a JSON-lines batch. Each event is
//! validated by the contract, its identifiers are pseudonymized, and it is
//! produced to its topic by an idempotent producer (`acks=all`), batched per
//! district as events.md describes. The answer names every event's outcome:
//!
//! - `accepted`: Kafka acknowledged it; it will be counted exactly once
//!   (sending it again is harmless: the pipeline deduplicates by `event_id`);
//! - `rejected`: invalid, with the machine-readable reason the consumer
//!   would give; the original line goes to `screening.dead_letter`;
//! - `retry`: Kafka did not acknowledge it in time or the gateway is full;
//!   send it again after `Retry-After` seconds.
//!
//! The gateway never holds more than it was asked to: when Kafka is down or
//! slow it answers 503 (or 429 when too many requests are waiting) with
//! `Retry-After` instead of queueing without bound, and it answers
//! `accepted` only for what Kafka acknowledged, so a client that resends
//! everything not accepted loses nothing, even if paicha is killed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::bearer::Tokens;
use crate::internal_events::consumer::EventsRejected;
use crate::internal_events::gateway::{EventsAnswered, RequestAnswered};
use crate::kafka::{self, DeadLetterHeaders, FlowControl, KafkaHealth};
use crate::metrics::Metrics;
use paicha_contract::event::{Decoder, Reject, Source, DEAD_LETTER_TOPIC};
use paicha_contract::pseudonym;

/// Bounds and credentials of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Tokens per source; a source without tokens is open.
    pub tokens: SourceTokens,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most events in one request.
    pub max_events: usize,
    /// How long Kafka has to acknowledge a request's events.
    pub timeout: Duration,
    /// Requests waiting on Kafka at once; more are answered 429.
    pub max_concurrent: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            tokens: SourceTokens::default(),
            max_body_bytes: 8 << 20,
            max_events: 10_000,
            timeout: Duration::from_secs(10),
            max_concurrent: 64,
        }
    }
}

/// Bearer tokens per source: a pharmacy till's token cannot post door
/// visits.
#[derive(Debug, Clone, Default)]
pub struct SourceTokens([Tokens; 5]);

impl SourceTokens {
    /// Parses `SOURCE:TOKEN` items; `*:TOKEN` admits every source.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut t = SourceTokens::default();
        for item in items {
            let (source, token) = item
                .split_once(':')
                .ok_or_else(|| "expected SOURCE:TOKEN (or *:TOKEN for every source)".to_string())?;
            let sources: Vec<Source> = match source.trim() {
                "*" => Source::ALL.to_vec(),
                s => vec![Source::parse(s).ok_or_else(|| {
                    format!("unknown source `{s}`: expected checkpoint, pharmacy, door_visit, case, bed or *")
                })?],
            };
            for s in sources {
                t.0[s as usize].push(token)?;
            }
        }
        Ok(t)
    }

    /// Whether every source requires a token.
    pub fn required(&self) -> bool {
        self.0.iter().all(Tokens::required)
    }
}

/// The gateway: a decoder, an idempotent producer and its bounds.
pub struct Gateway {
    decoder: Decoder,
    fingerprint: String,
    producer: FutureProducer<KafkaHealth>,
    health: KafkaHealth,
    partitions: [i32; 5],
    cfg: GatewayConfig,
    waiting: Arc<Semaphore>,
    metrics: Metrics,
    /// The embedded cluster's bound on bytes not yet consumed per partition
    /// (it silently drops older data): the gateway waits for room, within
    /// the request's deadline, and answers 429 if none comes.
    flow: Option<Arc<FlowControl>>,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last request let through to probe.
    last_probe: std::sync::atomic::AtomicU64,
    /// The last [`Gateway::request_id`] given.
    last_request: std::sync::atomic::AtomicI64,
}

/// While no broker is up, how often a request still goes to Kafka.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Most events and bytes in one Kafka message (events.md allows 1 MiB).
const BATCH_EVENTS: usize = 500;
const BATCH_BYTES: usize = 512 * 1024;

impl Gateway {
    /// A gateway producing to `brokers`; the source topics must exist.
    /// `flow` is the embedded cluster's flow control, shared with the
    /// consumer (`None` for a real cluster, which keeps what it acknowledged).
    pub fn new(
        brokers: &str,
        decoder: Decoder,
        cfg: GatewayConfig,
        metrics: &Metrics,
        flow: Option<Arc<FlowControl>>,
    ) -> Result<Self> {
        let health = KafkaHealth::new("gateway", metrics);
        let producer: FutureProducer<KafkaHealth> = kafka::client_config(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.max.bytes", "2000000")
            // A bounded queue: when it is full the gateway answers 429.
            .set("queue.buffering.max.kbytes", "65536")
            // librdkafka keeps trying to deliver for its default 5 minutes
            // after the request has been answered `retry` (a resent event
            // counts once): a delivery timeout would make an idempotent
            // producer bump its epoch, which some brokers mishandle.
            .set("statistics.interval.ms", kafka::STATISTICS_INTERVAL_MS)
            .create_with_context(health.clone())
            .context("cannot create the gateway's Kafka producer")?;
        let mut partitions = [0; 5];
        for s in Source::ALL {
            partitions[s as usize] = kafka::partitions(producer.client(), s.topic())?;
        }
        Ok(Gateway {
            fingerprint: decoder.fingerprint().to_string(),
            decoder,
            producer,
            health,
            partitions,
            waiting: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            cfg,
            metrics: metrics.clone(),
            flow,
            started: std::time::Instant::now(),
            last_probe: std::sync::atomic::AtomicU64::new(0),
            last_request: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Whether a request may go to Kafka although no broker is up. An idle
    /// producer does not reconnect by itself, so one request every
    /// [`PROBE_EVERY`] is let through to find out whether Kafka is back; the
    /// rest are answered 503 at once instead of waiting for the timeout.
    fn probe_due(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_probe.load(std::sync::atomic::Ordering::Relaxed);
        now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64
            && self
                .last_probe
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    }

    /// A request's id: its arrival in microseconds since the epoch, made
    /// unique within the process (and, clocks permitting, across restarts).
    fn request_id(&self) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = chrono::Utc::now().timestamp_micros();
        let prev = self
            .last_request
            .fetch_update(Relaxed, Relaxed, |p| Some(p.max(now - 1) + 1))
            .unwrap_or(now);
        prev.max(now - 1) + 1
    }

    /// Whether every source requires a token.
    pub fn authenticated(&self) -> bool {
        self.cfg.tokens.required()
    }

    /// The routes of the gateway, to merge into the HTTP port's router.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.cfg.max_body_bytes;
        Router::new()
            .route("/ingest/{source}", post(ingest))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    /// Waits until every message produced so far is acknowledged (or the
    /// timeout passes), for a clean shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// What happened to one line of a request.
enum Outcome {
    Accepted(String),
    Rejected(Reject),
    Retry,
}

/// Why events were not acknowledged: the answer's status.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Busy {
    /// librdkafka's queue is full: 429, retry soon.
    Full,
    /// Kafka did not acknowledge in time: 503.
    Unavailable,
}

impl Busy {
    /// The answer's status and its `Retry-After` seconds.
    fn status(self) -> (StatusCode, u32) {
        match self {
            Busy::Full => (StatusCode::TOO_MANY_REQUESTS, 1),
            Busy::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, 5),
        }
    }
}

fn respond(status: StatusCode, body: serde_json::Value, retry_after: Option<u32>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    respond(status, json!({ "error": msg.to_string() }), None)
}

/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a request body of at most `limit` bytes within [`BODY_TIMEOUT`],
/// or the response that refuses it (`what` names the body, `hint` follows
/// the size). Called once the request is authorized: an unauthorized
/// client never has its body read.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    what: &str,
    hint: &str,
) -> Result<Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the {what} did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the {what} is over {limit} bytes {hint}"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the {what}: {e}"),
                )
            })
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Nothing of the request was sent: every event is to be sent again.
fn busy(busy: Busy, msg: impl std::fmt::Display) -> Response {
    let (status, secs) = busy.status();
    respond(status, json!({ "error": msg.to_string() }), Some(secs))
}

async fn ingest(
    State(gw): State<Arc<Gateway>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    let label = Source::parse(&source).map_or("unknown", Source::as_str);
    let response = answer(&gw, &source, &headers, body).await;
    gw.metrics.emit(RequestAnswered {
        source: label,
        status: response.status().as_str(),
        took: started.elapsed(),
    });
    response
}

async fn answer(
    gw: &Gateway,
    source: &str,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some(source) = Source::parse(source) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown source `{}`: POST to /ingest/checkpoint, pharmacy, door_visit, case or bed",
                source.chars().take(40).collect::<String>()
            ),
        );
    };
    if !gw.cfg.tokens.0[source as usize].admits(headers) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            format!("a valid bearer token for {source} is required (Authorization: Bearer TOKEN)"),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let limit = gw.cfg.max_body_bytes;
    let hint = "(--ingest-max-body); send smaller batches";
    let body = match read_body(body, limit, "body", hint).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "no event in the body: send one JSON event or JSON lines",
        );
    }
    if lines.len() > gw.cfg.max_events {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request; at most {} (--ingest-max-events)",
                lines.len(),
                gw.cfg.max_events
            ),
        );
    }
    if gw.health.brokers_up() == Some(0) && !gw.probe_due() {
        count(gw, source, "retry", lines.len());
        return busy(
            Busy::Unavailable,
            "Kafka is unreachable; nothing was accepted, retry later",
        );
    }
    let Ok(_permit) = gw.waiting.clone().try_acquire_owned() else {
        count(gw, source, "retry", lines.len());
        return busy(
            Busy::Full,
            format!(
                "{} requests are already waiting on Kafka; nothing was accepted, retry shortly",
                gw.cfg.max_concurrent
            ),
        );
    };

    let (outcomes, busy) = produce(gw, source, &lines).await;
    reply(gw, source, &outcomes, busy)
}

/// The answer to a request whose events came to `outcomes`: 200 unless
/// Kafka was `busy`, and what became of each line.
fn reply(gw: &Gateway, source: Source, outcomes: &[Outcome], busy: Option<Busy>) -> Response {
    let (mut accepted, mut rejected, mut retry) = (0usize, 0usize, 0usize);
    let events: Vec<serde_json::Value> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| match o {
            Outcome::Accepted(id) => {
                accepted += 1;
                json!({"line": i + 1, "status": "accepted", "event_id": id})
            }
            Outcome::Rejected(r) => {
                rejected += 1;
                json!({"line": i + 1, "status": "rejected", "reason": r.reason.as_str(), "field": r.field})
            }
            Outcome::Retry => {
                retry += 1;
                json!({"line": i + 1, "status": "retry"})
            }
        })
        .collect();
    count(gw, source, "accepted", accepted);
    count(gw, source, "rejected", rejected);
    count(gw, source, "retry", retry);
    let (status, retry_after) = match busy {
        None => (StatusCode::OK, None),
        Some(b) => {
            let (status, secs) = b.status();
            (status, Some(secs))
        }
    };
    let body = json!({
        "accepted": accepted,
        "rejected": rejected,
        "retry": retry,
        "events": events,
    });
    respond(status, body, retry_after)
}

fn count(gw: &Gateway, source: Source, outcome: &str, n: usize) {
    gw.metrics.emit(EventsAnswered {
        source,
        outcome,
        count: n,
    });
}

/// Validates, pseudonymizes and produces the lines; answers once Kafka has
/// acknowledged (or failed) each message.
async fn produce(gw: &Gateway, source: Source, lines: &[&[u8]]) -> (Vec<Outcome>, Option<Busy>) {
    let (mut outcomes, batches, dead) = decode(gw, source, lines);
    let marker = OwnedHeaders::new().insert(Header {
        key: pseudonym::HEADER,
        value: Some(gw.fingerprint.as_bytes()),
    });
    let mut busy: Option<Busy> = None;
    let mut deliveries = Vec::with_capacity(batches.len());
    // One deadline for the whole request, however many messages it took;
    // waiting for room ends halfway, so what is sent has time to be
    // acknowledged (a full pipeline is a 429, not a slow Kafka's 503).
    let deadline = tokio::time::Instant::now() + gw.cfg.timeout;
    let room_deadline = tokio::time::Instant::now() + gw.cfg.timeout / 2;
    for (district, buf, members) in &batches {
        let district = &gw.decoder.registry().district(*district).district;
        let partition =
            paicha_contract::topics::partition_for(district, gw.partitions[source as usize]);
        if let Some(flow) = &gw.flow {
            while !flow.has_room(source, partition, buf.len())
                && tokio::time::Instant::now() < room_deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !flow.has_room(source, partition, buf.len()) {
                busy = busy.max(Some(Busy::Full));
                for &i in members.iter() {
                    outcomes[i] = Outcome::Retry;
                }
                continue;
            }
            flow.produced(source, partition, buf.len());
        }
        let record = FutureRecord::to(source.topic())
            .partition(partition)
            .key(district.as_bytes())
            .payload(buf.as_slice())
            .headers(marker.clone());
        match gw.producer.send_result(record) {
            Ok(delivery) => deliveries.push((delivery, members, partition, buf.len())),
            Err((e, _)) => {
                if let Some(flow) = &gw.flow {
                    flow.processed(source, partition, buf.len());
                }
                busy = busy.max(Some(busy_of(&e)));
                for &i in members.iter() {
                    outcomes[i] = Outcome::Retry;
                }
            }
        }
    }
    let dead_deliveries = send_dead_letters(gw, source, lines, &dead);
    for (delivery, members, partition, bytes) in deliveries {
        let result = tokio::time::timeout_at(deadline, delivery).await;
        if let (Some(flow), Ok(Ok(Err(_)))) = (&gw.flow, &result) {
            // Never delivered: the consumer will not release it.
            flow.processed(source, partition, bytes);
        }
        let acked = matches!(result, Ok(Ok(Ok(_))));
        if !acked {
            busy = busy.max(Some(Busy::Unavailable));
            for &i in members.iter() {
                outcomes[i] = Outcome::Retry;
            }
        }
    }
    for d in dead_deliveries {
        if !matches!(tokio::time::timeout_at(deadline, d).await, Ok(Ok(Ok(_)))) {
            tracing::warn!(%source, "a gateway dead letter was not acknowledged by Kafka");
        }
    }
    (outcomes, busy)
}

/// A message to produce: its district, its lines, and their indices in the
/// request.
type Batch = (u16, Vec<u8>, Vec<usize>);

/// Validates and pseudonymizes `lines`: each line's outcome so far, the
/// valid ones in messages per district, and the refused ones.
fn decode(
    gw: &Gateway,
    source: Source,
    lines: &[&[u8]],
) -> (Vec<Outcome>, Vec<Batch>, Vec<(usize, Reject)>) {
    let wall = chrono::Utc::now().timestamp_micros();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(lines.len());
    // Per district: the message being filled, and the lines it carries.
    let mut open: std::collections::BTreeMap<u16, (Vec<u8>, Vec<usize>)> = Default::default();
    let mut batches: Vec<(u16, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut dead: Vec<(usize, Reject)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match gw.decoder.decode_and_pseudonymize(line, Some(source), wall) {
            Ok((event, hashed)) => {
                let district = event.district;
                let (buf, members) = open.entry(district).or_default();
                if !buf.is_empty() {
                    buf.push(b'\n');
                }
                buf.extend_from_slice(&hashed);
                members.push(i);
                outcomes.push(Outcome::Accepted(event.event_id));
                if members.len() >= BATCH_EVENTS || buf.len() >= BATCH_BYTES {
                    if let Some((buf, members)) = open.remove(&district) {
                        batches.push((district, buf, members));
                    }
                }
            }
            Err(r) => {
                gw.metrics.emit(EventsRejected {
                    source: source.as_str(),
                    reason: r.reason,
                    count: 1,
                });
                outcomes.push(Outcome::Rejected(r));
                dead.push((i, r));
            }
        }
    }
    batches.extend(open.into_iter().map(|(d, (b, m))| (d, b, m)));
    (outcomes, batches, dead)
}

/// Produces the refused lines `dead` to the dead-letter topic; returns
/// their deliveries.
fn send_dead_letters(
    gw: &Gateway,
    source: Source,
    lines: &[&[u8]],
    dead: &[(usize, Reject)],
) -> Vec<rdkafka::producer::DeliveryFuture> {
    // Dead letters keep the original line (events.md); the client has its
    // answer either way, so a dead letter Kafka refuses is only logged.
    let mut dead_deliveries = Vec::with_capacity(dead.len());
    // A dead letter is known by (topic, offset, line): the request's id in
    // place of an offset keeps two requests' line 1 apart.
    let request = gw.request_id();
    for (i, r) in dead {
        let h = DeadLetterHeaders::for_reject(
            r,
            &format!("gateway:{source}"),
            None,
            request,
            *i as i32 + 1,
        );
        let record = FutureRecord::<[u8], [u8]>::to(DEAD_LETTER_TOPIC)
            .payload(lines[*i])
            .headers(h.to_kafka());
        if let Ok(d) = gw.producer.send_result(record) {
            dead_deliveries.push(d);
        }
    }
    dead_deliveries
}

fn busy_of(e: &KafkaError) -> Busy {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Busy::Full,
        _ => Busy::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_tokens_are_per_source_and_star_means_all() {
        let t = SourceTokens::parse(["pharmacy:till-secret", "*:ops"]).unwrap();
        assert!(t.required());
        let bearer = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {v}")).unwrap(),
            );
            h
        };
        assert!(t.0[Source::Pharmacy as usize].admits(&bearer("till-secret")));
        assert!(!t.0[Source::DoorVisit as usize].admits(&bearer("till-secret")));
        assert!(t.0[Source::DoorVisit as usize].admits(&bearer("ops")));
        assert!(!SourceTokens::parse(["pharmacy:x"]).unwrap().required());
        assert!(SourceTokens::parse(["ward:x"]).is_err());
        assert!(SourceTokens::parse(["no-colon"]).is_err());
        assert!(SourceTokens::parse(["bed:"]).is_err());
    }
}

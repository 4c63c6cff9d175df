//! A field app's side of the ingest gateway: post events, read the answer
//! per event, resend what was not acknowledged after `Retry-After`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One answer of `POST /ingest/{source}`.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

/// Posts `body` to `{url}/ingest/{source}` with an optional bearer token.
/// A refused connection (paicha not up, or killed) is status 0.
pub fn post(url: &str, source: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = ureq::post(&format!("{url}/ingest/{source}")).timeout(Duration::from_secs(60));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(_)) => {
            return Answer {
                status: 0,
                retry_after: None,
                body: Value::Null,
            }
        }
    };
    let status = resp.status();
    let retry_after = resp.header("Retry-After").and_then(|v| v.parse().ok());
    let text = resp.into_string().unwrap_or_default();
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// The gateway path of a line: its own `source` when it names one, else
/// `checkpoint` (where the gateway must refuse it).
pub fn source_of(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or_default();
    v["source"]
        .as_str()
        .filter(|s| ["checkpoint", "pharmacy", "door_visit", "case", "bed"].contains(s))
        .unwrap_or("checkpoint")
        .to_string()
}

/// What the gateway finally said of each line of the input.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Input line index → `accepted` or `rejected:REASON`.
    pub by_line: BTreeMap<usize, String>,
    /// Requests answered 429 or 503 (retried).
    pub retried_requests: usize,
}

/// Posts `lines` (input indexes and text) for one source in batches of
/// `batch`, resending every event not acknowledged until each is accepted
/// or rejected, as a well-behaved field app does. Gives up after `patience`.
pub fn post_until_answered(
    url: &str,
    token: Option<&str>,
    lines: &[(usize, &str)],
    batch: usize,
    patience: Duration,
    out: &mut Outcomes,
) {
    let deadline = Instant::now() + patience;
    for chunk in lines.chunks(batch.max(1)) {
        let mut pending: Vec<(usize, &str)> = chunk.to_vec();
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the gateway never answered {} events",
                pending.len()
            );
            let source = source_of(pending[0].1);
            let body = pending
                .iter()
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n");
            let a = post(url, &source, token, &body);
            match a.status {
                200 | 429 | 503 if a.body["events"].is_array() => {
                    let events = a.body["events"].as_array().cloned().unwrap_or_default();
                    assert_eq!(events.len(), pending.len(), "one answer per event");
                    let mut again = Vec::new();
                    for (e, (i, l)) in events.iter().zip(&pending) {
                        match e["status"].as_str() {
                            Some("accepted") => {
                                out.by_line.insert(*i, "accepted".into());
                            }
                            Some("rejected") => {
                                let reason = e["reason"].as_str().unwrap_or("?");
                                out.by_line.insert(*i, format!("rejected:{reason}"));
                            }
                            _ => again.push((*i, *l)),
                        }
                    }
                    if !again.is_empty() {
                        out.retried_requests += 1;
                        std::thread::sleep(Duration::from_millis(
                            200 * a.retry_after.unwrap_or(1).min(5),
                        ));
                    }
                    pending = again;
                }
                0 | 429 | 503 => {
                    out.retried_requests += 1;
                    std::thread::sleep(Duration::from_millis(
                        200 * a.retry_after.unwrap_or(1).min(5),
                    ));
                }
                other => panic!("gateway answered {other}: {}", a.body),
            }
        }
    }
}

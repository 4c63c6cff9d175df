//! Issue #16, the live paths of the differential harness: the same events
//! as a time-ordered replay, but fed live through `paicha run --brokers` in
//! chunks with pauses, with screening visits synced days late, from two
//! producers with different partitioners, and with a kill -9 and a restart
//! in the middle. The live view must equal what a restart shows at the same
//! clock, every episode must be the replay's, and the counts the folds'.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

/// Rows of a query over HTTP at `http`, as CSV fields (header dropped).
fn http_rows(http: &str, sql: &str) -> Vec<Vec<String>> {
    let text = ureq::post(&format!("{http}/sql"))
        .set("Accept", "text/csv")
        .send_string(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_string()
        .unwrap();
    let mut rows: Vec<Vec<String>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    rows.sort();
    rows
}

fn http_tables(http: &str) -> Vec<Vec<Vec<String>>> {
    TABLES.iter().map(|(_, q)| http_rows(http, q)).collect()
}

fn time_of(line: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    chrono::DateTime::parse_from_rfc3339(v["event_time"].as_str()?).ok()
}

/// The arrival order: time order, except that every second screening visit
/// that isolates someone arrives three days late, after that person's
/// follow-up visits (issue #16, case 2).
fn arrival(text: &str) -> (Vec<String>, usize) {
    let mut timed: Vec<(Option<chrono::DateTime<chrono::FixedOffset>>, &str)> =
        text.lines().map(|l| (time_of(l), l)).collect();
    timed.sort_by_key(|(t, _)| *t);
    let mut late: Vec<(chrono::DateTime<chrono::FixedOffset>, &str)> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut k = 0;
    for (t, line) in timed {
        while late.first().is_some_and(|(due, _)| Some(*due) <= t) {
            order.push(late.remove(0).1.to_string());
        }
        let opening = line.contains(r#""visit_kind":"screening""#)
            && !line.contains(r#""observation":"none""#)
            && !line.contains(r#""observation":"released""#);
        if let (Some(t), true) = (t, opening) {
            k += 1;
            if k % 2 == 0 {
                late.push((t + chrono::Duration::days(3), line));
                continue;
            }
        }
        order.push(line.to_string());
    }
    let delayed = k / 2;
    order.extend(late.into_iter().map(|(_, l)| l.to_string()));
    (order, delayed)
}

#[test]
fn live_in_chunks_with_late_visits_and_a_kill_equals_a_restart_and_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 10, 23, &["--scale", "0.1"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let (order, delayed) = arrival(&text);
    assert!(delayed >= 8, "only {delayed} late screening visits");

    let cluster = MockCluster::new(1).unwrap();
    for t in TOPICS {
        cluster
            .create_topic(t, if t == "screening.alerts" { 1 } else { 3 }, 1)
            .unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    // Two field systems: visits and cases with Kafka's murmur2, the rest
    // with librdkafka's default (CRC32), which puts districts elsewhere.
    let producer = |partitioner: &str| -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("partitioner", partitioner)
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap()
    };
    let murmur = producer("murmur2_random");
    let crc = producer("consistent_random");
    let send = |lines: &[String]| {
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let source = v["source"].as_str().unwrap_or("checkpoint");
            let source =
                if ["checkpoint", "pharmacy", "door_visit", "case", "bed"].contains(&source) {
                    source
                } else {
                    "checkpoint"
                };
            let topic = format!("screening.{source}");
            let key = v["district"].as_str().unwrap_or("000000").to_string();
            let p = if source == "door_visit" || source == "case" {
                &murmur
            } else {
                &crc
            };
            send_keyed(p, &topic, &key, line);
        }
        murmur.flush(Duration::from_secs(30)).unwrap();
        crc.flush(Duration::from_secs(30)).unwrap();
    };

    let data = dir.path().join("live");
    let mut run = live_run(&brokers, &data);
    let chunks: Vec<&[String]> = order.chunks(order.len() / 4 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        send(chunk);
        if i == 1 {
            // kill -9 while the chunk is being consumed, and start again.
            wait_for("paicha is consuming", Duration::from_secs(60), || {
                positions(&run.http).values().sum::<i64>() > 0
            });
            run.child.kill().unwrap();
            run.child.wait().unwrap();
            run = live_run(&brokers, &data);
        }
        // A pause long enough for the clock to pass the chunk.
        caught_up(&brokers, &run.http, Duration::from_secs(180));
    }
    // Every partition idle, the clock stands; the view must not move now.
    std::thread::sleep(Duration::from_secs(2));
    let live = http_tables(&run.http);
    assert_none_empty(&live);
    sigterm(&mut run.child);
    drop(run);

    let restarted = serving(&["serve", "--data", data.to_str().unwrap()]);
    assert_same_tables(
        "live against a restart",
        &http_tables(&restarted.http),
        &live,
    );
    drop(restarted);
    assert_tables_exact(&data, &file);

    // The replay in time order: the same episodes (their statuses follow
    // each run's clock), first reports, raw events and dead letters.
    let replayed = dir.path().join("replay");
    ok(&[
        "run",
        "--replay",
        file.to_str().unwrap(),
        "--data",
        replayed.to_str().unwrap(),
    ]);
    for sql in [
        "SELECT person_key, district, observation, started_at, ends_at, last_seen_at, next_due_at FROM follow_ups",
        "SELECT * FROM confirmations",
        "SELECT * FROM door_visits",
        "SELECT * FROM case_events",
        "SELECT * FROM checkpoint_events",
        "SELECT reason, field, COUNT(*) FROM dead_letters GROUP BY 1, 2",
    ] {
        let mut want = sql_rows(&replayed, sql);
        let mut got = sql_rows(&data, sql);
        want.sort();
        got.sort();
        assert!(!want.is_empty(), "{sql}: nothing to compare");
        let first = got.iter().zip(&want).find(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && first.is_none(),
            "{sql}: live has {} rows, the replay {}; first difference: {first:?}",
            got.len(),
            want.len()
        );
    }
}

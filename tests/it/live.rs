//! The README's main command: `paicha run` with the embedded Kafka and the
//! simulator, queried over HTTP while it runs, stopped with SIGTERM.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn live_demo_serves_sql_and_metrics_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = paicha()
        .env_remove("PAICHA_HMAC_KEY")
        .args([
            "run",
            "--data",
            data.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--pg",
            "127.0.0.1:0",
            "--rate",
            "20000",
            // No checkpoint while the test queries: what SQL sees comes
            // from the pipeline's memory.
            "--checkpoint-interval",
            "1h",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start paicha");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("paicha printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("paicha: SQL at ") {
            break rest.split("/sql").next().unwrap().to_string();
        }
    };

    // Metrics count events as they flow; SQL sees the windows written.
    let started = Instant::now();
    let mut rows = 0i64;
    while started.elapsed() < Duration::from_secs(60) {
        let body = ureq::post(&format!("{url}/sql"))
            .set("Accept", "text/csv")
            .send_string("SELECT COALESCE(SUM(events), 0) FROM symptom_counts")
            .unwrap()
            .into_string()
            .unwrap();
        rows = body.lines().nth(1).unwrap().parse().unwrap();
        if rows > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rows > 0, "no event became visible");
    let manifest = std::fs::read_to_string(data.join("_paicha/manifest.json")).unwrap();
    assert!(
        manifest.contains(r#""checkpoint":0"#),
        "nothing was committed yet"
    );
    let metrics = ureq::get(&format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metric(&metrics, "paicha_events_accepted_total") >= rows as f64);
    assert!(
        metrics.contains("paicha_events_rejected_total{reason=\"not_json\",source=\"checkpoint\"}")
    );
    assert!(metrics.contains("paicha_dead_letters_total{reason=\"not_json\"}"));
    assert!(metrics.contains("paicha_watermark_seconds"));

    // A SQL error is a 400 with a message.
    match ureq::post(&format!("{url}/sql")).send_string("SELECT nope") {
        Err(ureq::Error::Status(400, r)) => {
            assert!(r.into_string().unwrap().contains("error"))
        }
        other => panic!("expected a 400, got {other:?}"),
    }

    // SIGTERM drains and commits; what was counted stays queryable.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let waited = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(waited.elapsed() < Duration::from_secs(30), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    let after = sql_rows(&data, "SELECT SUM(events) FROM symptom_counts");
    assert!(after[0][0].parse::<i64>().unwrap() >= rows);
    // The demo generated its own pseudonymization key, kept private.
    let key = data.join("_paicha/hmac.key");
    assert!(key.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

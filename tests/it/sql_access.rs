//! SQL for analysts over both protocols, as they would use it: psql and
//! psycopg on the PostgreSQL wire, HTTP with tokens and limits, and every
//! kind of statement that would change something refused on both.
//!
//! Needs `psql` (Debian's postgresql-client) and Python's `psycopg`; `.ci/run`
//! installs both.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::external::{needs, Tool};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{fold_symptom_counts, ok, paicha, wait_for};

const FIXTURE: &str = "tests/slt/events.jsonl";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

/// A replayed data directory.
fn replayed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    replay(&fixture(), &dir.path().join("data"));
    dir
}

/// Replays `events` into `data`.
fn replay(events: &Path, data: &Path) {
    ok(&[
        "run",
        "--replay",
        events.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
}

/// `paicha serve` (or `run`) with the directory it reads.
struct Server {
    serving: common::Serving,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = common::Serving;

    fn deref(&self) -> &common::Serving {
        &self.serving
    }
}

fn serve(extra: &[&str]) -> Server {
    let dir = replayed();
    let data = dir.path().join("data");
    start(dir, &["serve", "--data", data.to_str().unwrap()], extra)
}

fn start(dir: tempfile::TempDir, command: &[&str], extra: &[&str]) -> Server {
    let args: Vec<&str> = command.iter().chain(extra).copied().collect();
    Server {
        serving: common::serving(&args),
        _dir: dir,
    }
}

/// Runs psql with `args`, as `user` with `password` if given.
fn psql(server: &Server, user: &str, password: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", &server.pg_port.to_string()])
        .args(["-U", user, "-d", "paicha", "-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    } else {
        cmd.arg("-w");
    }
    let out = cmd.output().expect("psql (install postgresql-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Suspicious events per district, folded over the fixture.
fn expected_suspicious() -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for ((_, district, _), c) in fold_symptom_counts(&fixture()) {
        *out.entry(district).or_insert(0) += c[1];
    }
    out
}

#[test]
fn psql_lists_describes_and_queries() {
    if !needs("psql_lists_describes_and_queries", &[Tool::Psql]) {
        return;
    }
    let server = serve(&[]);
    let (ok, listing) = psql(&server, "analyst", None, &["-c", r"\dt"]);
    assert!(ok, "{listing}");
    for table in [
        "symptom_counts",
        "confirmations",
        "bed_occupancy",
        "bed_occupancy_now",
        "follow_ups",
        "alerts",
        "aberrations",
        "dead_letters",
        "checkpoint_events",
        "pharmacy_events",
        "door_visits",
        "case_events",
        "bed_events",
        "districts",
        "hospitals",
    ] {
        assert!(
            listing.contains(&format!(" {table} ")),
            "\\dt does not list {table}:\n{listing}"
        );
    }
    assert!(
        !listing.contains("paicha_internal"),
        "internal tables leak into \\dt:\n{listing}"
    );

    let (ok, described) = psql(&server, "analyst", None, &["-c", r"\d symptom_counts"]);
    assert!(ok, "{described}");
    for (column, pg_type) in [
        ("window_start", "timestamp"),
        ("district", "text"),
        ("events", "bigint"),
        ("suspicious", "bigint"),
    ] {
        assert!(
            described
                .lines()
                .any(|l| l.contains(column) && l.contains(pg_type)),
            "\\d symptom_counts lacks {column} {pg_type}:\n{described}"
        );
    }

    let (ok, rows) = psql(
        &server,
        "analyst",
        None,
        &[
            "-A",
            "-t",
            "-F",
            ",",
            "-c",
            "SELECT district, SUM(suspicious) FROM symptom_counts GROUP BY district ORDER BY district",
        ],
    );
    assert!(ok, "{rows}");
    let got: BTreeMap<String, i64> = rows
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(d, n)| (d.to_string(), n.trim().parse().expect("a count")))
        .collect();
    assert_eq!(got, expected_suspicious());
}

const PSYCOPG: &str = r#"
import json, sys, datetime
import psycopg
port, district = sys.argv[1], sys.argv[2]
with psycopg.connect(host="127.0.0.1", port=port, user="analyst", dbname="paicha", autocommit=True) as conn:
    cur = conn.cursor()
    # Server-side binding: the extended protocol with a parameter.
    cur.execute(
        "SELECT SUM(suspicious) AS s, MIN(window_start) AS t FROM symptom_counts WHERE district = %s",
        (district,),
    )
    s, t = cur.fetchone()
    cur.execute(
        "SELECT hospital_id, beds_total, utilization, designated FROM bed_occupancy_now "
        "WHERE designated = %s ORDER BY hospital_id LIMIT 1",
        (True,),
    )
    h, beds, util, designated = cur.fetchone()
    cur.execute("SELECT symptoms FROM checkpoint_events ORDER BY event_time LIMIT 1")
    (symptoms,) = cur.fetchone()
    # A write dressed as a query, through the extended protocol: refused,
    # and no table appears.
    refusals = []
    for sql, params in [
        ("SELECT %s::int AS x INTO paicha_into_leak", (1,)),
        ("SELECT COUNT(*) FROM paicha_into_leak", None),
    ]:
        try:
            cur.execute(sql, params)
            refusals.append(None)
        except psycopg.Error as e:
            refusals.append(str(e).splitlines()[0])
    print(json.dumps({
        "suspicious": s,
        "suspicious_type": type(s).__name__,
        "time_type": type(t).__name__,
        "time_has_zone": t.tzinfo is not None,
        "beds_type": type(beds).__name__,
        "utilization_type": type(util).__name__,
        "designated": designated,
        "symptoms_type": type(symptoms).__name__,
        "refusals": refusals,
    }))
"#;

#[test]
fn psycopg_runs_a_parameterized_query_with_postgres_types() {
    if !needs(
        "psycopg_runs_a_parameterized_query_with_postgres_types",
        &[Tool::Psycopg],
    ) {
        return;
    }
    let server = serve(&[]);
    let expected = expected_suspicious();
    let (district, suspicious) = expected
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("the fixture has suspicious events");
    let out = Command::new("python3")
        .args(["-c", PSYCOPG, &server.pg_port.to_string(), district])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "psycopg failed (pip install 'psycopg[binary]'): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["suspicious"], *suspicious, "{v}");
    assert_eq!(v["suspicious_type"], "int", "{v}");
    assert_eq!(v["time_type"], "datetime", "{v}");
    assert_eq!(v["time_has_zone"], true, "{v}");
    assert_eq!(v["beds_type"], "int", "{v}");
    assert_eq!(v["utilization_type"], "float", "{v}");
    assert_eq!(v["designated"], true, "{v}");
    assert_eq!(v["symptoms_type"], "list", "{v}");
    let refusals = v["refusals"].as_array().expect("refusals");
    assert!(
        refusals[0]
            .as_str()
            .is_some_and(|m| m.contains("read-only")),
        "SELECT … INTO ran: {v}"
    );
    assert!(
        refusals[1].as_str().is_some_and(|m| !m.is_empty()),
        "a table was created: {v}"
    );
}

/// Statements that would change data, schema, files or settings.
const REFUSED: [&str; 21] = [
    // A query by its text that creates a table by its plan.
    "SELECT 1 AS x INTO paicha_into_leak",
    // The same inside a cursor, whose query a hook runs.
    "DECLARE c CURSOR FOR SELECT 1 AS x INTO paicha_cursor_leak",
    "CREATE TABLE t AS SELECT 1 AS x",
    "CREATE OR REPLACE VIEW v AS SELECT 1",
    "CREATE SCHEMA s",
    "DROP SCHEMA public",
    "DROP VIEW districts",
    "TRUNCATE districts",
    "INSERT INTO districts SELECT * FROM districts",
    "CREATE TABLE t (a INT)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd'",
    "INSERT INTO districts VALUES ('1', 'a', 'b', 1)",
    "UPDATE districts SET population = 0",
    "DELETE FROM districts",
    "DROP TABLE districts",
    "ALTER TABLE districts ADD COLUMN x INT",
    "COPY (SELECT 1) TO '/tmp/paicha-copy-leak.csv'",
    "SET datafusion.execution.batch_size = 1",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_csv('/etc/passwd')",
];

fn post(url: &str, token: Option<&str>, sql: &str) -> Result<(u16, String), (u16, String)> {
    let mut req = ureq::post(&format!("{url}/sql")).timeout(Duration::from_secs(60));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.send_string(sql) {
        Ok(r) => {
            let status = r.status();
            let mut body = String::new();
            match r.into_reader().read_to_string(&mut body) {
                Ok(_) => Ok((status, body)),
                Err(e) => Err((0, format!("body cut off: {e}"))),
            }
        }
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_string().unwrap_or_default())),
        Err(e) => Err((0, e.to_string())),
    }
}

#[test]
fn every_kind_of_change_is_refused_on_both_protocols() {
    if !needs(
        "every_kind_of_change_is_refused_on_both_protocols",
        &[Tool::Psql],
    ) {
        return;
    }
    let server = serve(&[]);
    let http = server.http.clone();
    for sql in REFUSED {
        let (ok, text) = psql(&server, "analyst", None, &["-c", sql]);
        assert!(!ok, "psql ran `{sql}`:\n{text}");
        assert!(text.contains("ERROR"), "psql `{sql}`: {text}");
        match post(&http, None, sql) {
            Ok(r) => panic!("HTTP ran `{sql}`: {r:?}"),
            Err((code, body)) => {
                assert_eq!(code, 400, "HTTP `{sql}`: {body}");
                assert!(body.contains("\"error\""), "HTTP `{sql}`: {body}");
            }
        }
    }
    // The writes went nowhere: the tables are whole and no file appeared.
    assert!(!Path::new("/tmp/paicha-copy-leak.csv").exists());
    for leak in ["paicha_into_leak", "paicha_cursor_leak", "t", "v"] {
        let (ok, text) = psql(
            &server,
            "analyst",
            None,
            &["-c", &format!("SELECT * FROM {leak}")],
        );
        assert!(!ok, "a table {leak} was created: {text}");
    }
    let (ok, text) = psql(
        &server,
        "analyst",
        None,
        &["-A", "-t", "-c", "SELECT COUNT(*) FROM districts"],
    );
    assert!(ok, "{text}");
    assert_eq!(text.trim(), common::districts().len().to_string());
    // Settings a client keeps for itself are allowed, and queries still run.
    let (ok, text) = psql(
        &server,
        "analyst",
        None,
        &[
            "-c",
            "SET application_name = 'wall'",
            "-c",
            "SET statement_timeout = '5s'",
            "-c",
            "SELECT 1",
        ],
    );
    assert!(ok, "{text}");
}

#[test]
fn passwords_and_tokens_are_required_when_configured() {
    if !needs(
        "passwords_and_tokens_are_required_when_configured",
        &[Tool::Psql],
    ) {
        return;
    }
    let server = serve(&[
        "--pg-user",
        "analyst:correct horse",
        "--http-token",
        "s3cret-token",
    ]);
    let (ok, text) = psql(&server, "analyst", Some("wrong"), &["-c", "SELECT 1"]);
    assert!(!ok, "a wrong password got in: {text}");
    assert!(text.to_lowercase().contains("password"), "{text}");
    let (ok, text) = psql(
        &server,
        "nobody",
        Some("correct horse"),
        &["-c", "SELECT 1"],
    );
    assert!(!ok, "an unknown user got in: {text}");
    let (ok, text) = psql(&server, "analyst", None, &["-c", "SELECT 1"]);
    assert!(!ok, "no password got in: {text}");
    let (ok, text) = psql(
        &server,
        "analyst",
        Some("correct horse"),
        &["-A", "-t", "-c", "SELECT COUNT(*) FROM districts"],
    );
    assert!(ok, "{text}");
    assert_eq!(text.trim(), common::districts().len().to_string());

    let http = server.http.clone();
    let q = "SELECT COUNT(*) AS n FROM districts";
    assert_eq!(post(&http, None, q).map_err(|e| e.0), Err(401));
    assert_eq!(post(&http, Some("guess"), q).map_err(|e| e.0), Err(401));
    // The token is checked before the body is read: a client that
    // announces 100 MB and sends none is refused at once.
    let mut socket = std::net::TcpStream::connect(http.trim_start_matches("http://")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(
        &mut socket,
        b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\nSELECT",
    )
    .unwrap();
    let mut head = [0u8; 12];
    socket
        .read_exact(&mut head)
        .expect("an answer before the body");
    assert_eq!(&head, b"HTTP/1.1 401");
    let (status, body) = post(&http, Some("s3cret-token"), q).expect("token accepted");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["n"], common::districts().len());
    // `paicha sql --url` passes the token.
    let out = paicha()
        .args([
            "sql",
            "--url",
            &http,
            "--token",
            "s3cret-token",
            "--format",
            "csv",
            q,
        ])
        .output()
        .expect("paicha sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("n\n{}\n", common::districts().len())
    );
}

#[test]
fn an_open_port_off_loopback_is_refused() {
    let dir = replayed();
    let data = dir.path().join("data");
    for (flag, addr, hint) in [
        ("--pg", "0.0.0.0:0", "--pg-user"),
        ("--http", "0.0.0.0:0", "--http-token"),
    ] {
        let (other_flag, other) = if flag == "--pg" {
            ("--http", "127.0.0.1:0")
        } else {
            ("--pg", "127.0.0.1:0")
        };
        let out = paicha()
            .args(["serve", "--data", data.to_str().unwrap()])
            .args([flag, addr, other_flag, other])
            .output()
            .expect("paicha serve");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("refusing") && err.contains(hint), "{err}");
    }
}

#[test]
fn http_limits_rows_time_and_concurrency() {
    let server = serve(&[
        "--max-rows",
        "5",
        // Long enough that the second query surely arrives while the long
        // one still holds the slot.
        "--query-timeout",
        "5s",
        "--max-concurrent-queries",
        "1",
    ]);
    let http = server.http.clone();
    let (_, body) = post(&http, None, "SELECT * FROM generate_series(1, 5)").expect("5 rows");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(5));
    match post(&http, None, "SELECT * FROM generate_series(1, 100000)") {
        Ok(r) => panic!(
            "a result over the row limit arrived whole: {} bytes",
            r.1.len()
        ),
        Err((code, msg)) => assert!(
            code == 400 && msg.contains("more than 5 rows"),
            "{code} {msg}"
        ),
    }
    // EXPLAIN ANALYZE runs (DataFusion plans it only at the root, so the
    // row limit is not put above it), and its plan shows the files pruned.
    let (_, body) = post(
        &http,
        None,
        "EXPLAIN ANALYZE SELECT COUNT(*) FROM checkpoint_events WHERE event_id = 'none'",
    )
    .expect("EXPLAIN ANALYZE over HTTP");
    assert!(body.contains("Plan with Metrics"), "{body}");
    // CSV keeps its header for an empty result.
    let r = ureq::post(&format!("{http}/sql"))
        .set("Accept", "text/csv")
        .send_string("SELECT district FROM districts WHERE false")
        .expect("csv");
    assert_eq!(r.into_string().expect("body"), "district\n");

    // A long query holds the only slot, is refused company, and times out.
    let slow = "SELECT COUNT(*) FROM generate_series(1, 100000000000)";
    let h = http.clone();
    let long = std::thread::spawn(move || post(&h, None, slow));
    wait_for(
        "the long query holds the only slot",
        Duration::from_secs(60),
        || {
            ureq::get(&format!("{http}/metrics"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|m| m.lines().any(|l| l == "paicha_sql_queries_running 1"))
        },
    );
    match post(&http, None, "SELECT 1") {
        Err((503, body)) => assert!(body.contains("concurrent"), "{body}"),
        other => panic!("a second query beside the limit: {other:?}"),
    }
    match long.join().expect("thread") {
        Err((504, body)) => assert!(body.contains("timeout"), "{body}"),
        other => panic!("the long query was not stopped: {other:?}"),
    }
    // The slot is free again.
    assert!(post(&http, None, "SELECT 1").is_ok());
}

fn scalar(server: &Server, sql: &str) -> String {
    let (ok, text) = psql(server, "analyst", None, &["-A", "-t", "-c", sql]);
    assert!(ok, "{sql}: {text}");
    text.trim().to_string()
}

#[test]
fn repeated_queries_follow_new_checkpoints_and_volatile_ones_are_never_reused() {
    if !needs(
        "repeated_queries_follow_new_checkpoints_and_volatile_ones_are_never_reused",
        &[Tool::Psql],
    ) {
        return;
    }
    // The PostgreSQL wire answers a repeated query from a cache valid for
    // one snapshot: it must move when the pipeline commits.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = start(
        dir,
        &["run", "--data", data.to_str().unwrap()],
        &["--rate", "20000", "--checkpoint-interval", "500ms"],
    );
    let count = "SELECT COUNT(*) FROM checkpoint_events";
    let moved = |seen: &[i64]| {
        let first = seen.iter().find(|n| **n > 0);
        first.is_some_and(|f| seen.last().is_some_and(|l| l > f))
    };
    let mut seen = Vec::new();
    wait_for(
        "the same query follows the pipeline's commits",
        Duration::from_secs(120),
        || {
            seen.push(scalar(&server, count).parse::<i64>().expect("a count"));
            moved(&seen)
        },
    );
    let a = scalar(&server, "SELECT random()");
    let b = scalar(&server, "SELECT random()");
    assert_ne!(a, b, "a volatile query was answered from the cache");
}

/// Issue #17's findings, as an analyst would hit them: each hostile query
/// ends with a clear error, and the server keeps answering.
const PSYCOPG_BOUNDS: &str = r#"
import json, sys, threading, time
import psycopg
port = sys.argv[1]
out = {}
def connect():
    return psycopg.connect(host="127.0.0.1", port=port, user="analyst", dbname="paicha", autocommit=True)
long = "SELECT COUNT(*) FROM generate_series(1, 100000000000) WHERE value > %s"
def stopped(cur, key):
    """Runs the endless query; how it ended and after how long."""
    started = time.time()
    try:
        cur.execute(long, (0,))
        out[key] = "ran to the end"
    except psycopg.errors.QueryCanceled as e:
        out[key] = str(e).splitlines()[0]
    out[key + "_secs"] = time.time() - started
with connect() as conn:
    cur = conn.cursor()
    # The client's statement_timeout, through the extended protocol.
    cur.execute("SET statement_timeout = '1s'")
    stopped(cur, "timeout")
    cur.execute("SET statement_timeout = 0")
    # A CancelRequest from another thread.
    threading.Timer(1.0, conn.cancel).start()
    stopped(cur, "cancel")
    cur.execute("SELECT 1")
    out["after"] = cur.fetchone()[0]
    # RESET puts the server's timeout back: the query runs past 1 s, until
    # it is canceled.
    cur.execute("SET statement_timeout = '1s'")
    cur.execute("RESET statement_timeout")
    threading.Timer(3.0, conn.cancel).start()
    stopped(cur, "reset")
# The connection limit (4): four open, the fifth refused.
held = [connect() for _ in range(4)]
try:
    connect().close()
    out["fifth"] = "connected"
except psycopg.OperationalError as e:
    out["fifth"] = str(e)
# A CancelRequest still gets through while the port is full.
threading.Timer(1.0, held[0].cancel).start()
stopped(held[0].cursor(), "full")
for c in held:
    c.close()
print(json.dumps(out))
"#;

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn hostile_queries_end_with_a_clear_error_and_the_server_stays() {
    if !needs(
        "hostile_queries_end_with_a_clear_error_and_the_server_stays",
        &[Tool::Psql, Tool::Psycopg],
    ) {
        return;
    }
    let server = serve(&[
        "--query-memory",
        "64MiB",
        "--query-timeout",
        "60s",
        "--max-connections",
        "4",
    ]);
    let http = server.http.clone();
    // One row, gigabytes of state: refused by the memory pool.
    let huge = "SELECT cardinality(array_agg(value)) FROM generate_series(1, 100000000)";
    match post(&http, None, huge) {
        Err((400, body)) => assert!(body.contains("Resources exhausted"), "{body}"),
        other => panic!("the huge aggregate was not refused: {other:?}"),
    }
    let (ok, text) = psql(&server, "analyst", None, &["-c", huge]);
    assert!(!ok && text.contains("--query-memory"), "{text}");
    let peak = peak_rss(server.child.id());
    assert!(
        peak < 1 << 30,
        "the process peaked at {} MiB with a 64 MiB query limit",
        peak >> 20
    );
    // psql's simple protocol honours its statement_timeout.
    let started = std::time::Instant::now();
    let (ok, text) = psql(
        &server,
        "analyst",
        None,
        &[
            "-c",
            "SET statement_timeout = '1s'",
            "-c",
            "SELECT COUNT(*) FROM generate_series(1, 100000000000)",
        ],
    );
    assert!(!ok && text.contains("statement timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");

    let out = Command::new("python3")
        .args(["-c", PSYCOPG_BOUNDS, &server.pg_port.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "psycopg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let says = |k: &str, what: &str| v[k].as_str().is_some_and(|m| m.contains(what));
    assert!(says("timeout", "statement timeout"), "{v}");
    assert!(v["timeout_secs"].as_f64().unwrap() < 20.0, "{v}");
    assert!(says("cancel", "user request"), "{v}");
    assert!(v["cancel_secs"].as_f64().unwrap() < 20.0, "{v}");
    assert_eq!(v["after"], 1, "{v}");
    assert!(says("fifth", "too many clients"), "{v}");
    assert!(says("reset", "user request"), "{v}");
    assert!(v["reset_secs"].as_f64().unwrap() >= 2.5, "{v}");
    assert!(says("full", "user request"), "{v}");
    assert!(v["full_secs"].as_f64().unwrap() < 20.0, "{v}");
    // A client that vanishes mid-query leaves nothing computing: over the
    // wire (psql killed) and over HTTP (the connection dropped).
    let endless = "SELECT COUNT(*) FROM generate_series(1, 100000000000)";
    let mut client = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.pg_port.to_string()])
        .args(["-U", "analyst", "-d", "paicha", "-X", "-w", "-c", endless])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = client.kill();
    let _ = client.wait();
    assert_idle_after_clients_left(server.child.id(), "psql");
    let gone = ureq::post(&format!("{http}/sql"))
        .timeout(Duration::from_millis(1500))
        .send_string(endless);
    assert!(gone.is_err(), "the endless query answered");
    assert_idle_after_clients_left(server.child.id(), "HTTP");
    // Still serving.
    let (status, _) = post(&http, None, "SELECT 1").expect("the server answers");
    assert_eq!(status, 200);
}

/// CPU seconds (user and system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after it.
    (ticks(11) + ticks(12)) / 100.0
}

/// The server stops computing within a couple of seconds of its clients
/// leaving: over two more seconds it uses well under a core.
fn assert_idle_after_clients_left(pid: u32, how: &str) {
    std::thread::sleep(Duration::from_millis(2500));
    let before = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_secs(pid) - before;
    assert!(
        used < 1.0,
        "the query of a {how} client that left still computes: {used:.2} CPU s in 2 s"
    );
}

/// What a scan fetches from Parquet counts against `--query-memory`: a
/// column chunk larger than the whole pool refuses the query with a clear
/// error instead of being held outside it, while a lookup that reads only
/// footers and bloom filters still answers (issue #17).
#[test]
fn file_reads_count_against_the_query_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    ok(&[
        "simulate",
        "--out",
        events.to_str().unwrap(),
        "--days",
        "1",
        "--scale",
        "4",
    ]);
    replay(&events, &data);
    let server = start(
        dir,
        &["serve", "--data", data.to_str().unwrap()],
        &["--query-memory", "1MiB"],
    );
    let wide = "SELECT MAX(length(person_id)), MAX(length(household_id)), \
                MAX(length(event_id)), MAX(length(grid_id)) FROM door_visits";
    match post(&server.http, None, wide) {
        Err((400, body)) => assert!(
            body.contains("Resources exhausted") && body.contains("--query-memory"),
            "{body}"
        ),
        other => panic!("a scan past the pool was not refused: {other:?}"),
    }
    let lookup = "SELECT COUNT(*) AS n FROM door_visits WHERE event_id = 'no-such-event'";
    match post(&server.http, None, lookup) {
        Ok((200, body)) => assert!(body.contains(r#""n":0"#), "{body}"),
        other => panic!("the lookup failed: {other:?}"),
    }
    // Nothing stays reserved once the queries are done: no read is kept by
    // a cache (the Parquet metadata cache holds decoded footers, not the
    // bytes read).
    let metrics = ureq::get(&format!("{}/metrics", server.http))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(
        metrics.contains("\npaicha_query_memory_reserved_bytes 0\n")
            && metrics.contains("\npaicha_query_memory_limit_bytes 1048576\n"),
        "{metrics}"
    );
}

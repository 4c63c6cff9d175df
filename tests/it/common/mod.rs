//! Helpers for the end-to-end tests: run the `paicha` binary as a user would
//! and fold over input files independently of the code under test.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod external;
pub mod gateway;
pub mod tansu;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `paicha` binary under test.
pub fn paicha() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paicha"));
    c.env("PAICHA_HMAC_KEY", "test-key")
        .env_remove("PAICHA_DATA");
    c
}

/// A `paicha run` or `serve` on ports it picked, killed when dropped.
pub struct Serving {
    pub child: Child,
    /// `http://ADDR`
    pub http: String,
    pub pg_port: u16,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `paicha ARGS --http 127.0.0.1:0 --pg 127.0.0.1:0` and waits for
/// it to print both addresses.
pub fn serving(args: &[&str]) -> Serving {
    let mut child = paicha()
        .args(args)
        .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start paicha");
    let stdout = child.stdout.take().expect("paicha's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut http, mut pg) = (None, None);
        // Read to the end: paicha keeps printing.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // "paicha: SQL at http://ADDR/sql, metrics at …"
            if let Some(rest) = line.strip_prefix("paicha: SQL at ") {
                http = rest.split("/sql").next().map(str::to_string);
            }
            // "paicha: PostgreSQL wire at ADDR (…)"
            if let Some(rest) = line.strip_prefix("paicha: PostgreSQL wire at ") {
                let addr = rest.split(' ').next().unwrap_or_default();
                pg = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            }
            if let (Some(h), Some(p)) = (&http, pg) {
                let _ = tx.send((h.clone(), p));
                http = None;
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((http, pg_port)) => Serving {
            child,
            http,
            pg_port,
        },
        Err(_) => {
            let status = child.try_wait();
            let _ = child.kill();
            panic!("paicha {args:?} printed no addresses ({status:?})")
        }
    }
}

/// Waits until `done` holds, checking every 100 ms, and fails with what it
/// waited for once `timeout` has passed. Tests wait for states the system
/// guarantees, never for a fixed time: give a deadline generous enough for a
/// busy machine, since only a failure waits it out.
/// `paicha run --brokers` on `data` that follows event time closely: no
/// allowed lateness, partitions idle after a second, checkpoints five
/// times a second.
pub fn live_run(brokers: &str, data: &Path) -> Serving {
    serving(&[
        "run",
        "--brokers",
        brokers,
        "--data",
        data.to_str().expect("utf-8 path"),
        "--lateness",
        "0s",
        "--idle-after",
        "1s",
        "--checkpoint-interval",
        "200ms",
    ])
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number a one-cell query answers over HTTP at `http` (`ADDR` or
/// `http://ADDR`), `None` while it cannot answer.
pub fn http_count(http: &str, sql: &str) -> Option<i64> {
    let base = if http.starts_with("http://") {
        http.to_string()
    } else {
        format!("http://{http}")
    };
    let text = ureq::post(&format!("{base}/sql"))
        .set("Accept", "text/csv")
        .send_string(sql)
        .ok()?
        .into_string()
        .ok()?;
    text.lines().nth(1)?.trim().parse().ok()
}

/// Every topic paicha uses.
/// (librdkafka's mock cluster cannot create topics on request, so a test
/// that owns one creates paicha's internal topic too; against a real broker
/// paicha creates it.)
pub const TOPICS: [&str; 8] = [
    "screening.checkpoint",
    "screening.pharmacy",
    "screening.door_visit",
    "screening.case",
    "screening.bed",
    "screening.dead_letter",
    "screening.repartition",
    "screening.alerts",
];

/// Writes `paicha simulate --days DAYS --seed SEED` to `DIR/events.jsonl`.
pub fn simulate_into(dir: &Path, days: u32, seed: u64) -> std::path::PathBuf {
    simulate_with(dir, days, seed, &[])
}

/// [`simulate_into`] with more flags (`--scale 0.05`, say).
pub fn simulate_with(dir: &Path, days: u32, seed: u64, extra: &[&str]) -> std::path::PathBuf {
    let file = dir.join("events.jsonl");
    let (days, seed) = (days.to_string(), seed.to_string());
    let mut args = vec![
        "simulate",
        "--out",
        file.to_str().expect("utf-8 path"),
        "--days",
        &days,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(extra);
    ok(&args);
    file
}

/// A child process killed when dropped, so a failing test leaves nothing
/// running behind it.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Stops a `paicha run` as an operator does (SIGTERM) and checks it exits 0.
pub fn sigterm(child: &mut Child) {
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = child.wait().expect("wait for paicha");
    assert!(exit.success(), "paicha stopped with {exit}");
}

/// Asserts that every counting table of `data` equals the folds over `file`.
pub fn assert_tables_exact(data: &Path, file: &Path) {
    assert_same_counts(&query_symptom_counts(data), &fold_symptom_counts(file));
    assert_eq!(query_confirmations(data), fold_confirmations(file));
    assert_eq!(query_bed_occupancy(data), fold_bed_occupancy(file));
    assert_eq!(query_raw_counts(data), fold_raw_counts(file));
}

/// Runs `paicha` with `args`, panicking with its output unless it succeeds.
pub fn ok(args: &[&str]) -> String {
    String::from_utf8(ok_output(args).stdout).expect("utf-8 stdout")
}

/// [`ok`], keeping stderr too.
pub fn ok_output(args: &[&str]) -> Output {
    let out = paicha().args(args).output().expect("run paicha");
    assert_success(&out, args);
    out
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "paicha {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows of a query as CSV fields (header dropped).
pub fn sql_rows(data: &Path, query: &str) -> Vec<Vec<String>> {
    let out = ok(&[
        "sql",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "csv",
        query,
    ]);
    let mut lines = out.lines();
    lines.next();
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub const REGISTRY_DISTRICTS: &str = include_str!("../../../registry/districts.csv");

pub fn districts() -> HashSet<String> {
    REGISTRY_DISTRICTS
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .map(str::to_string)
        .collect()
}

const SYMPTOMS: [&str; 6] = [
    "fever",
    "cough",
    "sore_throat",
    "shortness_of_breath",
    "fatigue",
    "diarrhea",
];

fn is_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

fn temp_ok(v: &Value, nullable: bool) -> bool {
    match v {
        Value::Null => nullable,
        v => v.as_f64().is_some_and(|t| (34.0..=43.0).contains(&t)),
    }
}

fn symptoms_ok(v: &Value) -> bool {
    let Some(a) = v.as_array() else { return false };
    let mut seen = HashSet::new();
    a.iter().all(|s| {
        s.as_str()
            .is_some_and(|s| SYMPTOMS.contains(&s) && seen.insert(s))
    })
}

fn one_of(v: &Value, set: &[&str]) -> bool {
    v.as_str().is_some_and(|s| set.contains(&s))
}

/// Whether a line is a valid event by the contract's rules (written from
/// events.md, not from the decoder). Hospitals by the registry's file.
pub fn valid(line: &str, districts: &HashSet<String>) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    let id = o.get("event_id")?.as_str()?;
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(o.get("event_time")?.as_str()?).ok()?;
    if !districts.contains(o.get("district")?.as_str()?) {
        return None;
    }
    let null = Value::Null;
    let f = |k: &str| o.get(k).unwrap_or(&null);
    let ok = match o.get("source")?.as_str()? {
        "checkpoint" => {
            is_str(f("checkpoint_id"))
                && is_str(f("person_id"))
                && temp_ok(f("temperature_c"), false)
                && f("mask").is_boolean()
                && symptoms_ok(f("symptoms"))
                && one_of(
                    f("disposition"),
                    &["pass", "referred", "turned_back", "isolated"],
                )
        }
        "pharmacy" => {
            is_str(f("pharmacy_id"))
                && is_str(f("person_id"))
                && one_of(
                    f("drug_class"),
                    &["antipyretic", "cough", "antiviral", "antibiotic", "other"],
                )
                && f("quantity").as_i64().is_some_and(|q| q >= 1)
                && temp_ok(f("temperature_c"), true)
        }
        "door_visit" => {
            let seen = f("outcome").as_str() == Some("seen");
            is_str(f("grid_id"))
                && is_str(f("household_id"))
                && is_str(f("person_id"))
                && one_of(f("visit_kind"), &["screening", "follow_up"])
                && one_of(f("outcome"), &["seen", "not_home", "refused"])
                && temp_ok(f("temperature_c"), true)
                && (seen || f("temperature_c").is_null())
                && symptoms_ok(f("symptoms"))
                && (seen || f("symptoms").as_array().is_some_and(|a| a.is_empty()))
                && one_of(
                    f("observation"),
                    &[
                        "none",
                        "home_isolation",
                        "centralized_observation",
                        "medical_observation",
                        "released",
                    ],
                )
        }
        "case" => {
            is_str(f("person_id"))
                && one_of(
                    f("status"),
                    &["suspected", "confirmed", "excluded", "recovered", "died"],
                )
                && (f("hospital_id").is_null() || hospital_district(f("hospital_id")).is_some())
        }
        "bed" => {
            // A bed event is its hospital's district's.
            hospital_district(f("hospital_id")).as_deref() == f("district").as_str()
                && match f("action").as_str() {
                    Some("admit") | Some("discharge") => is_str(f("person_id")),
                    Some("capacity") => f("beds_total").as_i64().is_some_and(|b| b >= 0),
                    _ => false,
                }
        }
        _ => false,
    };
    ok.then_some(v)
}

/// The district of hospital `v`, if it is in the registry: the third
/// column from the end (a name may hold a quoted comma).
fn hospital_district(v: &Value) -> Option<String> {
    let id = v.as_str()?;
    REGISTRY_HOSPITALS
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&id))
        .and_then(|cols| cols.len().checked_sub(3).map(|i| cols[i].to_string()))
}

/// `symptom_counts` computed by folding over a JSON-lines file: key is
/// (window start in Unix seconds, district, source), value the 8 counts.
pub fn fold_symptom_counts(path: &Path) -> BTreeMap<(i64, String, String), [i64; 8]> {
    let text = std::fs::read_to_string(path).expect("read input");
    let districts = districts();
    let mut seen = HashSet::new();
    let mut out: BTreeMap<(i64, String, String), [i64; 8]> = BTreeMap::new();
    for line in text.lines() {
        let Some(v) = valid(line, &districts) else {
            continue;
        };
        let source = v["source"].as_str().unwrap().to_string();
        if !seen.insert((source.clone(), v["event_id"].as_str().unwrap().to_string())) {
            continue;
        }
        if !["checkpoint", "pharmacy", "door_visit"].contains(&source.as_str()) {
            continue;
        }
        let t = chrono::DateTime::parse_from_rfc3339(v["event_time"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let window = t.div_euclid(3600) * 3600;
        let seen_visit = source != "door_visit" || v["outcome"] == "seen";
        let temp = v["temperature_c"].as_f64().filter(|_| seen_visit);
        let symptoms: Vec<&str> = if seen_visit {
            v["symptoms"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default()
        } else {
            vec![]
        };
        let hot = temp.is_some_and(|t| t >= 37.3);
        let suspicious = match source.as_str() {
            "pharmacy" => hot || v["drug_class"] == "antipyretic" || v["drug_class"] == "cough",
            _ => seen_visit && (hot || !symptoms.is_empty()),
        };
        let c = out
            .entry((window, v["district"].as_str().unwrap().to_string(), source))
            .or_default();
        c[0] += 1;
        c[1] += suspicious as i64;
        c[2] += (hot || symptoms.contains(&"fever")) as i64;
        for (i, s) in SYMPTOMS[1..].iter().enumerate() {
            c[3 + i] += symptoms.contains(s) as i64;
        }
    }
    out
}

/// `symptom_counts` as paicha answers it, in the same shape as the fold.
pub fn query_symptom_counts(data: &Path) -> BTreeMap<(i64, String, String), [i64; 8]> {
    sql_rows(
        data,
        "SELECT to_unixtime(window_start), district, source, events, suspicious, fever, \
         cough, sore_throat, shortness_of_breath, fatigue, diarrhea \
         FROM symptom_counts ORDER BY 1, 2, 3",
    )
    .into_iter()
    .map(|r| {
        let mut c = [0i64; 8];
        for (i, x) in r[3..11].iter().enumerate() {
            c[i] = x.parse().expect("count");
        }
        (
            (r[0].parse().expect("window"), r[1].clone(), r[2].clone()),
            c,
        )
    })
    .collect()
}

/// Asserts two tables of counts are equal, reporting a short diff.
pub fn assert_same_counts(
    got: &BTreeMap<(i64, String, String), [i64; 8]>,
    want: &BTreeMap<(i64, String, String), [i64; 8]>,
) {
    let diff: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .chain(
            got.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| format!("{k:?}: unexpected row")),
        )
        .collect();
    assert!(
        diff.is_empty(),
        "{} of {} rows differ; first: {:?}",
        diff.len(),
        want.len(),
        &diff[..diff.len().min(5)]
    );
}

/// `confirmations` by folding over a file: the first report of each status
/// per person, first by event time, counted in its window and district.
/// Key (window start in Unix seconds, district); counts in the order
/// suspected, confirmed, excluded, recovered, died.
pub fn fold_confirmations(path: &Path) -> BTreeMap<(i64, String), [i64; 5]> {
    const STATUSES: [&str; 5] = ["suspected", "confirmed", "excluded", "recovered", "died"];
    let text = std::fs::read_to_string(path).expect("read input");
    let districts = districts();
    let mut seen = HashSet::new();
    let mut first: BTreeMap<(String, usize), (i64, String)> = BTreeMap::new();
    for line in text.lines() {
        let Some(v) = valid(line, &districts) else {
            continue;
        };
        if v["source"] != "case" || !seen.insert(v["event_id"].as_str().unwrap().to_string()) {
            continue;
        }
        let t = chrono::DateTime::parse_from_rfc3339(v["event_time"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let s = STATUSES.iter().position(|x| v["status"] == *x).unwrap();
        let d = v["district"].as_str().unwrap().to_string();
        let e = first
            .entry((v["person_id"].as_str().unwrap().to_string(), s))
            .or_insert((t, d.clone()));
        if t < e.0 {
            *e = (t, d);
        }
    }
    let mut out: BTreeMap<(i64, String), [i64; 5]> = BTreeMap::new();
    for ((_, s), (t, d)) in first {
        out.entry((t.div_euclid(3600) * 3600, d)).or_default()[s] += 1;
    }
    out
}

/// `confirmations` as paicha answers it (rows of all zeros left out).
pub fn query_confirmations(data: &Path) -> BTreeMap<(i64, String), [i64; 5]> {
    sql_rows(
        data,
        "SELECT to_unixtime(window_start), district, new_suspected, new_confirmed, \
         new_excluded, new_recovered, new_died FROM confirmations ORDER BY 1, 2",
    )
    .into_iter()
    .map(|r| {
        let mut c = [0i64; 5];
        for (i, x) in r[2..7].iter().enumerate() {
            c[i] = x.parse().expect("count");
        }
        ((r[0].parse().expect("window"), r[1].clone()), c)
    })
    .filter(|(_, c)| c.iter().any(|x| *x != 0))
    .collect()
}

pub const REGISTRY_HOSPITALS: &str = include_str!("../../../registry/hospitals.csv");

/// `bed_occupancy` by folding over a file, written from the contract's
/// definition: per hospital, events in event-time order (ties in file
/// order); a second admit of a person inside, or a discharge of a person not
/// inside, changes nothing and is an anomaly; `beds_total` is the latest
/// capacity (the registry's before any). One row per hour from the
/// hospital's first bed event through the hour of the input's highest event
/// time. Key (window start in Unix seconds, hospital); values beds_total,
/// occupied, admissions, discharges, repeat admissions, unmatched discharges.
pub fn fold_bed_occupancy(path: &Path) -> BTreeMap<(i64, String), [i64; 6]> {
    let registry_beds: BTreeMap<String, i64> = REGISTRY_HOSPITALS
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[0].to_string(), f.last()?.parse().ok()?))
        })
        .collect();
    let text = std::fs::read_to_string(path).expect("read input");
    let districts = districts();
    let mut seen = HashSet::new();
    let mut last = i64::MIN;
    // hospital → (time, file order, action, person or beds)
    let mut events: BTreeMap<String, Vec<(i64, usize, String, Value)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let Some(v) = valid(line, &districts) else {
            continue;
        };
        let source = v["source"].as_str().unwrap().to_string();
        if !seen.insert((source.clone(), v["event_id"].as_str().unwrap().to_string())) {
            continue;
        }
        let t = chrono::DateTime::parse_from_rfc3339(v["event_time"].as_str().unwrap())
            .unwrap()
            .timestamp_micros();
        last = last.max(t);
        if source != "bed" {
            continue;
        }
        let action = v["action"].as_str().unwrap().to_string();
        let arg = if action == "capacity" {
            v["beds_total"].clone()
        } else {
            v["person_id"].clone()
        };
        events
            .entry(v["hospital_id"].as_str().unwrap().to_string())
            .or_default()
            .push((t, n, action, arg));
    }
    let hour = 3_600_000_000i64;
    let end = last.div_euclid(hour) * hour + hour;
    let mut out = BTreeMap::new();
    for (h, mut evs) in events {
        evs.sort_by_key(|e| (e.0, e.1));
        let mut beds = registry_beds[&h];
        let mut inside: HashSet<String> = HashSet::new();
        let mut i = 0;
        let mut w = evs[0].0.div_euclid(hour) * hour;
        let mut last_event = evs[0].0;
        // The contract's rows are dense; paicha stops a hospital's rows 30
        // days after its last bed event and resumes them with its next.
        let quiet = 30 * 24 * hour;
        while w + hour <= end {
            let mut row = [0i64; 6];
            while i < evs.len() && evs[i].0 < w + hour {
                last_event = evs[i].0;
                let (_, _, action, arg) = &evs[i];
                match action.as_str() {
                    "capacity" => beds = arg.as_i64().unwrap(),
                    "admit" => {
                        if inside.insert(arg.as_str().unwrap().to_string()) {
                            row[2] += 1
                        } else {
                            row[4] += 1
                        }
                    }
                    _ => {
                        if inside.remove(arg.as_str().unwrap()) {
                            row[3] += 1
                        } else {
                            row[5] += 1
                        }
                    }
                }
                i += 1;
            }
            if w - last_event > quiet {
                match evs.get(i) {
                    Some(next) => {
                        w = next.0.div_euclid(hour) * hour;
                        continue;
                    }
                    None => break,
                }
            }
            row[0] = beds;
            row[1] = inside.len() as i64;
            out.insert((w / 1_000_000, h.clone()), row);
            w += hour;
        }
    }
    out
}

/// `bed_occupancy` as paicha answers it, in the shape of the fold.
pub fn query_bed_occupancy(data: &Path) -> BTreeMap<(i64, String), [i64; 6]> {
    sql_rows(
        data,
        "SELECT to_unixtime(window_start), hospital_id, beds_total, occupied, admissions, \
         discharges, repeat_admissions, unmatched_discharges FROM bed_occupancy ORDER BY 1, 2",
    )
    .into_iter()
    .map(|r| {
        let mut c = [0i64; 6];
        for (i, x) in r[2..8].iter().enumerate() {
            c[i] = x.parse().expect("count");
        }
        ((r[0].parse().expect("window"), r[1].clone()), c)
    })
    .collect()
}

/// Number of distinct valid events of each source in a file: the rows each
/// raw table must hold.
pub fn fold_raw_counts(path: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(path).expect("read input");
    let districts = districts();
    let mut seen = HashSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(v) = valid(line, &districts) else {
            continue;
        };
        let source = v["source"].as_str().unwrap().to_string();
        if seen.insert((source.clone(), v["event_id"].as_str().unwrap().to_string())) {
            *out.entry(source).or_insert(0) += 1;
        }
    }
    out
}

/// Rows of each raw table, keyed by source name.
pub fn query_raw_counts(data: &Path) -> BTreeMap<String, usize> {
    let tables = [
        ("checkpoint", "checkpoint_events"),
        ("pharmacy", "pharmacy_events"),
        ("door_visit", "door_visits"),
        ("case", "case_events"),
        ("bed", "bed_events"),
    ];
    tables
        .iter()
        .filter_map(|(s, t)| {
            let n: usize = sql_rows(data, &format!("SELECT COUNT(DISTINCT event_id) FROM {t}"))[0]
                [0]
            .parse()
            .expect("count");
            let all: usize = sql_rows(data, &format!("SELECT COUNT(*) FROM {t}"))[0][0]
                .parse()
                .expect("count");
            assert_eq!(n, all, "{t} holds an event twice");
            (n > 0).then(|| (s.to_string(), n))
        })
        .collect()
}

/// Every table of tables.md and `bed_occupancy_now`, whole rows. `alerts`
/// without those withdrawn: which transient alerts a run raised before a
/// late event disproved them depends on arrival (docs/semantics.md).
pub const TABLES: [(&str, &str); 13] = [
    ("symptom_counts", "SELECT * FROM symptom_counts"),
    ("confirmations", "SELECT * FROM confirmations"),
    ("bed_occupancy", "SELECT * FROM bed_occupancy"),
    ("bed_occupancy_now", "SELECT * FROM bed_occupancy_now"),
    ("follow_ups", "SELECT * FROM follow_ups"),
    ("aberrations", "SELECT * FROM aberrations"),
    ("checkpoint_events", "SELECT * FROM checkpoint_events"),
    ("pharmacy_events", "SELECT * FROM pharmacy_events"),
    ("door_visits", "SELECT * FROM door_visits"),
    ("case_events", "SELECT * FROM case_events"),
    ("bed_events", "SELECT * FROM bed_events"),
    (
        "dead_letters",
        "SELECT reason, field, COUNT(*) FROM dead_letters GROUP BY 1, 2",
    ),
    (
        "alerts",
        "SELECT * FROM alerts WHERE detail NOT LIKE '%withdrawn%'",
    ),
];

/// The rows of every table in [`TABLES`], each sorted.
pub fn all_tables(data: &Path) -> Vec<Vec<Vec<String>>> {
    TABLES
        .iter()
        .map(|(_, q)| {
            let mut rows = sql_rows(data, q);
            rows.sort();
            rows
        })
        .collect()
}

/// Fails unless every table has rows: a comparison of empty tables proves
/// nothing.
pub fn assert_none_empty(tables: &[Vec<Vec<String>>]) {
    for ((name, _), rows) in TABLES.iter().zip(tables) {
        assert!(
            !rows.is_empty(),
            "{name} is empty: the comparison would prove nothing"
        );
    }
}

/// Fails at the first table of `got` that differs from `want`, naming it.
pub fn assert_same_tables(path: &str, got: &[Vec<Vec<String>>], want: &[Vec<Vec<String>>]) {
    for ((table, _), (got, want)) in TABLES.iter().zip(got.iter().zip(want)) {
        let first = got.iter().zip(want).find(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && first.is_none(),
            "{path}: {table} differs ({} rows against {}); first difference: {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// The sum of the end offsets of every partition of `topic` at `brokers`.
pub fn end_offsets(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return 0;
    };
    let n = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    (0..n)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// Next offsets a running paicha (`ADDR` or `http://ADDR`) has committed
/// to consume, summed per topic; empty while it does not answer.
pub fn positions(http: &str) -> BTreeMap<String, i64> {
    let base = if http.starts_with("http://") {
        http.to_string()
    } else {
        format!("http://{http}")
    };
    let mut out = BTreeMap::new();
    let Ok(resp) = ureq::get(&format!("{base}/metrics")).call() else {
        return out;
    };
    for line in resp.into_string().unwrap_or_default().lines() {
        let Some(rest) = line.strip_prefix("paicha_kafka_consumer_position{") else {
            continue;
        };
        let topic = rest
            .split("topic=\"")
            .nth(1)
            .and_then(|t| t.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<i64>().ok());
        if let (Some(t), Some(v)) = (topic, value) {
            *out.entry(t.to_string()).or_default() += v;
        }
    }
    out
}

/// Waits until a running paicha has consumed every message of the source
/// topics, then every event it forwarded, then every dead letter (each may
/// add to the next).
pub fn caught_up(brokers: &str, http: &str, timeout: Duration) {
    for topic in [
        "screening.checkpoint",
        "screening.pharmacy",
        "screening.door_visit",
        "screening.case",
        "screening.bed",
        "screening.repartition",
        "screening.dead_letter",
    ] {
        let end = end_offsets(brokers, topic);
        wait_for(
            &format!("paicha consumed {topic} to offset {end}"),
            timeout,
            || positions(http).get(topic).copied().unwrap_or(0) >= end,
        );
    }
}

/// Produces one keyed record, waiting while librdkafka's queue is full.
pub fn send_keyed(
    producer: &rdkafka::producer::BaseProducer,
    topic: &str,
    key: &str,
    payload: &str,
) {
    use rdkafka::producer::BaseRecord;
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

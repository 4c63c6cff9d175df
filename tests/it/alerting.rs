//! End to end with real binaries on loopback: `paicha serve` exposes an
//! overdue follow-up in its metrics, a real Prometheus scrapes it and
//! evaluates deploy/prometheus/rules.yml, a real Alertmanager routes the
//! alert with deploy/alertmanager/alertmanager.yml to a webhook this test
//! runs, and the test sees the alert arrive on the route of its severity.
//!
//! Needs the Debian packages `prometheus` and `prometheus-alertmanager`
//! (deploy/check.sh installs them); without them the test fails.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::external::{needs, Tool, ALERTMANAGER, PROMETHEUS};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the alert may take from the first scrape to the webhook.
const DEADLINE: Duration = Duration::from_secs(60);

/// Child processes killed (and reaped) when the test ends, however it ends.
#[derive(Default)]
struct Children(Vec<(&'static str, Child)>);

impl Children {
    fn add(&mut self, name: &'static str, child: Child) {
        self.0.push((name, child));
    }

    /// Panics if a child has already exited (it could not start).
    fn assert_running(&mut self, logs: &Path) {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited early ({status}):\n{}", log_tail(logs, name));
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn log_tail(logs: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn log_file(logs: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(logs.join(format!("{name}.log"))).expect("create log file"))
}

/// (path, body) of every POST the webhook received.
type Posts = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver: its URL and what it records.
fn webhook() -> (String, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(request) = read_request(stream) {
                sink.lock().expect("webhook log").push(request);
            }
        }
    });
    (url, received)
}

/// Reads one HTTP request, answers 200, returns (path, body) of a POST.
fn read_request(mut stream: TcpStream) -> Option<(String, String)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    (method == "POST").then(|| (path, String::from_utf8_lossy(&body).into_owned()))
}

fn door_visit(id: &str, time: &str, kind: &str, district: &str, person: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_time":"{time}","source":"door_visit","district":"{district}","grid_id":"grid-{district}","household_id":"hh-{person}","person_id":"{person}","visit_kind":"{kind}","outcome":"seen","temperature_c":36.6,"symptoms":[],"observation":"home_isolation"}}"#
    )
}

/// Replaces every line whose trimmed text starts with `key` by `key value`,
/// keeping its indentation; panics if there is none.
fn set_all(yaml: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let out = yaml
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with(key) {
                found = true;
                format!("{}{key} {value}", &l[..l.len() - trimmed.len()])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(found, "no `{key}` line to replace");
    out + "\n"
}

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Starts `paicha serve` on a free port and returns its base URL.
fn start_serve(children: &mut Children, data: &Path, logs: &Path) -> String {
    let mut child = common::paicha()
        .args(["serve", "--data"])
        .arg(data)
        .args(["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log_file(logs, "paicha"))
        .spawn()
        .expect("start paicha serve");
    let stdout = child.stdout.take().expect("paicha stdout");
    children.add("paicha", child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read paicha serve's address");
    // "paicha: SQL at http://ADDR/sql, metrics at http://ADDR/metrics"
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/sql,"))
        .unwrap_or_else(|| {
            panic!(
                "paicha serve printed no address: {line:?}\n{}",
                log_tail(logs, "paicha")
            )
        });
    url.to_string()
}

fn spawn(children: &mut Children, name: &'static str, cmd: &mut Command, logs: &Path) {
    let child = cmd
        .stdout(log_file(logs, &format!("{name}.out")))
        .stderr(log_file(logs, name))
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    children.add(name, child);
}

/// Every firing follow-up alert for district 500103 among the webhook
/// posts: (path, payload, alert).
fn follow_up_alerts(received: &[(String, String)]) -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    for (path, body) in received {
        let payload: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {body}"));
        let alerts = payload["alerts"].as_array().cloned().unwrap_or_default();
        for alert in alerts {
            let labels = &alert["labels"];
            let name = labels["alertname"].as_str().unwrap_or_default();
            if (name == "FollowUpsOverdue" || name == "FollowUpsOverdueCritical")
                && labels["district"] == "500103"
                && alert["status"] == "firing"
            {
                found.push((path.clone(), payload.clone(), alert));
            }
        }
    }
    found
}

#[test]
fn overdue_follow_up_reaches_the_webhook() {
    if !needs("overdue_follow_up_reaches_the_webhook", &[Tool::Prometheus]) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");

    // A person put under home isolation in 500103 on 10 Feb and never seen
    // again; a checkpoint in another district moves the clock to 20 Feb.
    let events = [
        door_visit(
            "dv-alerting-1",
            "2020-02-10T09:00:00+08:00",
            "screening",
            "500103",
            "500103196807230033",
        ),
        String::from(
            r#"{"event_id":"cp-alerting-1","event_time":"2020-02-20T12:00:00+08:00","source":"checkpoint","district":"500112","checkpoint_id":"cp-500112","person_id":"500112199001010011","temperature_c":36.4,"mask":true,"symptoms":[],"came_from":"420100","disposition":"pass"}"#,
        ),
    ];
    let replay = root.join("events.jsonl");
    std::fs::write(&replay, events.join("\n") + "\n").expect("write replay file");
    let data = root.join("data");
    common::ok(&[
        "run",
        "--replay",
        replay.to_str().expect("utf-8 path"),
        "--data",
        data.to_str().expect("utf-8 path"),
    ]);

    let mut children = Children::default();
    let paicha = start_serve(&mut children, &data, &logs);
    // The gauges are set from the first snapshot just after the port opens.
    let overdue = r#"paicha_follow_ups_overdue{days_missed="4+",district="500103"} 1"#;
    let deadline = Instant::now() + DEADLINE;
    let metrics = loop {
        let metrics = ureq::get(&format!("{paicha}/metrics"))
            .call()
            .expect("GET /metrics")
            .into_string()
            .expect("metrics text");
        if metrics.lines().any(|l| l == overdue) || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.lines().any(|l| l == overdue),
        "paicha serve does not expose the overdue follow-up:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("paicha_follow_ups"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let (receiver, received) = webhook();

    // Alertmanager: the repository's routing with the test's webhook and no
    // waiting.
    let am_port = free_port();
    let am_yml = repo_file("deploy/alertmanager/alertmanager.yml");
    assert!(am_yml.contains("http://webhook:5001/"));
    let am_yml = am_yml.replace("http://webhook:5001", &receiver);
    let am_yml = set_all(&am_yml, "group_wait:", "0s");
    let am_yml = set_all(&am_yml, "group_interval:", "1s");
    let am_config = root.join("alertmanager.yml");
    std::fs::write(&am_config, am_yml).expect("write alertmanager.yml");
    spawn(
        &mut children,
        "alertmanager",
        Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", root.join("am").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
        &logs,
    );

    // Prometheus: the repository's rules, firing at once.
    let rules = set_all(&repo_file("deploy/prometheus/rules.yml"), "for:", "0s");
    let rules_path = root.join("rules.yml");
    std::fs::write(&rules_path, rules).expect("write rules.yml");
    let paicha_target = paicha.trim_start_matches("http://");
    let prom_yml = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
  scrape_timeout: 1s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: paicha
    metrics_path: /metrics
    static_configs:
      - targets: ["{paicha_target}"]
"#,
        rules = rules_path.display()
    );
    let prom_config = root.join("prometheus.yml");
    std::fs::write(&prom_config, prom_yml).expect("write prometheus.yml");
    let prom_port = free_port();
    spawn(
        &mut children,
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &logs,
    );

    // 4+ days missed: FollowUpsOverdueCritical must arrive on /critical.
    // FollowUpsOverdue (warning) fires too; the inhibition by the critical
    // alert usually comes too late to hold it back with group_wait 0s, and
    // when it arrives it must be on /warning.
    let waiting = Instant::now();
    let found = loop {
        let posts = received.lock().expect("webhook log").clone();
        let found = follow_up_alerts(&posts);
        if found
            .iter()
            .any(|(_, _, a)| a["labels"]["alertname"] == "FollowUpsOverdueCritical")
        {
            break found;
        }
        children.assert_running(&logs);
        if waiting.elapsed() > DEADLINE {
            let alerts = ureq::get(&format!("http://127.0.0.1:{prom_port}/api/v1/alerts"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default();
            panic!(
                "no firing FollowUpsOverdueCritical for 500103 reached the webhook in {DEADLINE:?}\n\
                 webhook posts: {posts:?}\nPrometheus alerts: {alerts}\n\
                 prometheus log:\n{}\nalertmanager log:\n{}",
                log_tail(&logs, "prometheus"),
                log_tail(&logs, "alertmanager"),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (path, payload, alert) in &found {
        let name = alert["labels"]["alertname"].as_str().expect("alertname");
        let severity = if name == "FollowUpsOverdueCritical" {
            "critical"
        } else {
            "warning"
        };
        assert_eq!(alert["labels"]["severity"], severity, "{alert}");
        assert_eq!(alert["labels"]["district"], "500103", "{alert}");
        assert_eq!(*path, format!("/{severity}"), "{payload}");
        assert_eq!(
            payload["receiver"],
            format!("paicha-{severity}"),
            "{payload}"
        );
        assert_eq!(payload["status"], "firing", "{payload}");
        assert_eq!(payload["version"], "4", "{payload}");
        assert_eq!(payload["groupLabels"]["district"], "500103", "{payload}");
        assert_eq!(payload["groupLabels"]["alertname"], name, "{payload}");
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        assert!(
            summary.starts_with("District 500103: 1 follow-ups"),
            "{alert}"
        );
        eprintln!(
            "alerting: {name} on {path} (by {:.1}s after Prometheus started, {:.1}s in all)",
            waiting.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    // The children go before the directory they write to.
    drop(children);
}

//! End to end: simulate, replay through the embedded Kafka, query with SQL,
//! and compare with an independent fold over the same file.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;

fn simulate(out: &Path, days: &str, seed: &str, extra: &[&str]) {
    let mut args = vec![
        "simulate",
        "--out",
        out.to_str().unwrap(),
        "--days",
        days,
        "--seed",
        seed,
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

fn replay(file: &Path, data: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        "--replay",
        file.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn simulated_days_replay_to_exact_symptom_counts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    simulate(&file, "3", "7", &[]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(r#""sim":"duplicate""#),
        "the scenario has duplicates"
    );
    let out = replay(&file, &data, &[]);
    assert!(out.contains("replayed"), "{out}");

    let want = fold_symptom_counts(&file);
    let got = query_symptom_counts(&data);
    assert!(want.len() > 100, "the scenario is not trivial");
    assert_same_counts(&got, &want);

    let confirmations = fold_confirmations(&file);
    assert!(!confirmations.is_empty());
    assert_eq!(query_confirmations(&data), confirmations);
    let beds = fold_bed_occupancy(&file);
    assert!(beds.len() > 100, "the scenario has bed events");
    assert_eq!(query_bed_occupancy(&data), beds);
    let raw = fold_raw_counts(&file);
    assert_eq!(query_raw_counts(&data), raw);

    // Every window is an hour on the hour, and names its district.
    let rows = sql_rows(
        &data,
        "SELECT COUNT(*) FROM symptom_counts s JOIN districts d ON s.district = d.district \
         WHERE s.district_name = d.name AND s.window_end - s.window_start = INTERVAL '1 hour' \
         AND date_trunc('hour', s.window_start) = s.window_start",
    );
    assert_eq!(rows[0][0].parse::<usize>().unwrap(), want.len());

    // Replaying the same file again changes nothing: every id was counted.
    replay(&file, &data, &[]);
    assert_same_counts(&query_symptom_counts(&data), &want);
    assert_eq!(query_confirmations(&data), confirmations);
    assert_eq!(query_bed_occupancy(&data), beds);
    assert_eq!(query_raw_counts(&data), raw);

    // A finished replay leaves one file per table and day in each
    // partition's directory, besides the files merged away: those stay
    // readable for five minutes (`compact::RETIRE_AFTER_SECS`) for queries
    // that started before, listed as retired in the manifest. A replay
    // slower than the checkpoint interval has some.
    let files = |table: &str| -> Vec<String> {
        let mut days = Vec::new();
        for task in std::fs::read_dir(&data).unwrap().flatten() {
            let name = task.file_name().to_string_lossy().into_owned();
            if !name.starts_with("partition=") || !task.path().join(table).is_dir() {
                continue;
            }
            let manifest: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(task.path().join("_paicha/manifest.json")).unwrap(),
            )
            .unwrap();
            let retired: Vec<&str> = manifest["retired"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["path"].as_str())
                .collect();
            for day in std::fs::read_dir(task.path().join(table))
                .unwrap()
                .flatten()
            {
                let day_name = day.file_name().to_string_lossy().into_owned();
                let n = std::fs::read_dir(day.path())
                    .unwrap()
                    .flatten()
                    .filter(|f| {
                        let rel = format!("{table}/{day_name}/{}", f.file_name().to_string_lossy());
                        !retired.contains(&rel.as_str())
                    })
                    .count();
                days.push(format!("{name}/{}:{n}", day.file_name().to_string_lossy()));
            }
        }
        days
    };
    for table in ["symptom_counts", "checkpoint_events", "bed_occupancy"] {
        let days = files(table);
        assert!(!days.is_empty());
        assert!(days.iter().all(|d| d.ends_with(":1")), "{table}: {days:?}");
    }
}

/// Bed events shuffled across days, delivered twice, and late: admissions
/// and discharges of many patients at two hospitals, a repeated admission
/// and a discharge of someone never admitted, and capacity changes.
#[test]
fn bed_occupancy_is_exact_under_shuffling_duplicates_and_anomalies() {
    use std::fmt::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("beds.jsonl");
    let data = dir.path().join("data");
    let mut lines = Vec::new();
    let bed = |id: &str, hour: u32, min: u32, hospital: &str, extra: &str| {
        // A bed event is its hospital's district's (contract 1.1).
        let district = if hospital == "cq-sanxia" {
            "500101"
        } else {
            "500106"
        };
        format!(
            r#"{{"event_id":"{id}","event_time":"2020-01-{:02}T{:02}:{min:02}:00+08:00","source":"bed","district":"{district}","hospital_id":"{hospital}",{extra}}}"#,
            25 + hour / 24,
            hour % 24
        )
    };
    lines.push(bed(
        "cap-1",
        0,
        0,
        "cq-phmc",
        r#""action":"capacity","beds_total":40"#,
    ));
    lines.push(bed(
        "cap-2",
        30,
        0,
        "cq-phmc",
        r#""action":"capacity","beds_total":60"#,
    ));
    for p in 0..50u32 {
        let hospital = if p % 3 == 0 { "cq-sanxia" } else { "cq-phmc" };
        let admit = (p * 7) % 60;
        lines.push(bed(
            &format!("a{p}"),
            admit,
            p % 60,
            hospital,
            &format!(r#""action":"admit","person_id":"patient-{p}""#),
        ));
        if p % 4 != 0 {
            lines.push(bed(
                &format!("d{p}"),
                admit + 1 + p % 20,
                (p * 13) % 60,
                hospital,
                &format!(r#""action":"discharge","person_id":"patient-{p}""#),
            ));
        }
    }
    // patient-0 is admitted at hour 0 and never discharged.
    lines.push(bed(
        "again",
        20,
        30,
        "cq-sanxia",
        r#""action":"admit","person_id":"patient-0""#,
    ));
    lines.push(bed(
        "ghost",
        21,
        0,
        "cq-phmc",
        r#""action":"discharge","person_id":"nobody""#,
    ));
    // A deterministic shuffle, then every fifth line delivered twice and a
    // block of early events moved to the end (late, after their windows).
    let mut order: Vec<usize> = (0..lines.len()).collect();
    let mut x = 12345u64;
    for i in (1..order.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let mut text = String::new();
    for (n, i) in order.iter().enumerate() {
        writeln!(text, "{}", lines[*i]).unwrap();
        if n % 5 == 0 {
            writeln!(text, "{}", lines[*i]).unwrap();
        }
    }
    writeln!(
        text,
        "{}",
        bed(
            "late",
            2,
            5,
            "cq-phmc",
            r#""action":"admit","person_id":"late-1""#
        )
    )
    .unwrap();
    std::fs::write(&file, text).unwrap();
    replay(&file, &data, &["--partitions", "2"]);

    let want = fold_bed_occupancy(&file);
    assert!(want.values().any(|c| c[4] > 0), "a repeat admission");
    assert!(want.values().any(|c| c[5] > 0), "an unmatched discharge");
    assert!(want.values().all(|c| c[1] >= 0));
    assert_eq!(query_bed_occupancy(&data), want);
    let now = sql_rows(
        &data,
        "SELECT beds_total, occupied FROM bed_occupancy_now WHERE hospital_id = 'cq-phmc'",
    );
    let last = want.iter().rfind(|((_, h), _)| h == "cq-phmc").unwrap().1;
    assert_eq!(now, vec![vec![last[0].to_string(), last[1].to_string()]]);
}

#[test]
fn a_producer_faster_than_the_processors_loses_nothing() {
    // One partition per topic, so each holds far more than the 5 MiB the
    // embedded cluster keeps, and a consumer slowed down by 2 ms a message:
    // without flow control the oldest messages would be dropped.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    simulate(&file, "2", "11", &["--clean", "--scale", "2"]);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        size > 12 << 20,
        "input of {size} bytes is too small to overflow the cluster"
    );
    replay(&file, &data, &["--partitions", "1", "--slow-sink-ms", "2"]);
    assert_same_counts(&query_symptom_counts(&data), &fold_symptom_counts(&file));
}

/// The same with every batch on the other partition: each event is
/// forwarded home through `screening.repartition`, which the flow control
/// must cover too, or the embedded cluster drops its oldest messages.
#[test]
fn forwarded_events_stay_under_the_flow_control() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    simulate(&file, "2", "11", &["--clean", "--scale", "2"]);
    replay(
        &file,
        &data,
        &[
            "--partitions",
            "2",
            "--misroute",
            "1",
            "--slow-sink-ms",
            "2",
        ],
    );
    assert_same_counts(&query_symptom_counts(&data), &fold_symptom_counts(&file));
}

#[test]
fn malformed_lines_go_to_dead_letters_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.jsonl");
    let data = dir.path().join("data");
    let good = |id: &str, temp: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2020-01-27T09:15:00+08:00","source":"checkpoint","district":"500101","checkpoint_id":"cp-500101-01","person_id":"110101199001011234","temperature_c":{temp},"mask":true,"symptoms":["cough"],"disposition":"referred"}}"#
        )
    };
    let lines = [
        (good("ok-1", "38.2"), None),
        ("this is not json".to_string(), Some("not_json")),
        (good("ok-2", "36.5"), None),
        (good("bad-1", r#""hot""#), Some("wrong_type")),
        (good("bad-2", "45.5"), Some("out_of_range")),
        (
            good("bad-3", "36.6").replace(r#""district":"500101""#, r#""district":"999999""#),
            Some("unknown_district"),
        ),
        (
            good("bad-4", "36.6").replace("+08:00", ""),
            Some("bad_timestamp"),
        ),
        (
            good("bad-5", "36.6").replace(r#""source":"checkpoint""#, r#""source":"xray""#),
            Some("unknown_source"),
        ),
        (
            good("bad-6", "36.6").replace(r#""mask":true,"#, ""),
            Some("missing_field"),
        ),
        (
            good("bad-7", "36.6").replace(r#""referred""#, r#""teleported""#),
            Some("unknown_value"),
        ),
        (good("ok-1", "38.2"), None), // a duplicate: counts once
        (good("ok-3", "37.0")[..60].to_string(), Some("not_json")),
    ];
    let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let out = replay(&file, &data, &[]);
    assert!(out.contains("2 events counted"), "{out}");
    assert!(out.contains("1 duplicates"), "{out}");
    assert!(out.contains("9 rejected"), "{out}");

    let counts = query_symptom_counts(&data);
    assert_eq!(counts.len(), 1);
    let c = counts.values().next().unwrap();
    assert_eq!(c[..4], [2, 2, 1, 2], "events, suspicious, fever, cough");

    let mut want: Vec<String> = lines
        .iter()
        .filter_map(|(_, r)| r.map(str::to_string))
        .collect();
    want.sort();
    let got: Vec<String> = sql_rows(&data, "SELECT reason FROM dead_letters ORDER BY reason")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(got, want);

    // Nothing in the data directory holds the raw person id.
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(18).any(|w| w == b"110101199001011234"),
            "{} holds a raw id",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A sparse history in event-time order: 70 days of checkpoint events for
/// five districts, 2,468 lines. The replay batches events by district; its
/// batches must not carry a partition's clock weeks past the next
/// district's events, so nothing is `too_late` and every event counts
/// (issue #16, case 4).
#[test]
fn a_sparse_history_in_time_order_loses_nothing() {
    use std::fmt::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.jsonl");
    let data = dir.path().join("data");
    let districts = ["500101", "500102", "500103", "500104", "500105"];
    let start = chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00+08:00").unwrap();
    let lines = 2468i64;
    let step = 70 * 86_400 / lines;
    let mut text = String::new();
    for i in 0..lines {
        let t = start + chrono::Duration::seconds(i * step);
        writeln!(
            text,
            r#"{{"event_id":"h{i}","event_time":"{}","source":"checkpoint","district":"{}","checkpoint_id":"cp","person_id":"p{i}","temperature_c":{},"mask":true,"symptoms":[],"disposition":"pass"}}"#,
            t.to_rfc3339(),
            districts[i as usize % districts.len()],
            if i % 7 == 0 { "37.8" } else { "36.5" }
        )
        .unwrap();
    }
    std::fs::write(&file, text).unwrap();
    let out = replay(&file, &data, &[]);
    assert!(out.contains("replayed"), "{out}");
    let letters = sql_rows(
        &data,
        "SELECT reason, COUNT(*) FROM dead_letters GROUP BY 1",
    );
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    assert_tables_exact(&data, &file);
}

/// Differential (issue #16, paths a, b and d): the same events in time
/// order over 1, 3, 4 and 8 partitions, and shuffled, give the same tables,
/// row for row, and the counting tables equal the independent folds.
#[test]
fn the_same_events_give_the_same_tables_over_any_partitions_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = simulate_with(dir.path(), 14, 21, &["--scale", "0.1"]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // A seeded shuffle (xorshift), so a failure reproduces.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..lines.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lines.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let shuffled = dir.path().join("shuffled.jsonl");
    std::fs::write(&shuffled, lines.join("\n") + "\n").unwrap();
    let base = dir.path().join("p4");
    replay(&file, &base, &[]);
    assert_tables_exact(&base, &file);
    let want = all_tables(&base);
    assert_none_empty(&want);
    for (name, input, partitions, misroute) in [
        ("1 partition", &file, "1", "0"),
        ("3 partitions", &file, "3", "0"),
        ("8 partitions", &file, "8", "0"),
        ("shuffled", &shuffled, "4", "0"),
        // Half the batches on another partition than their district's: a
        // producer with another partitioner. They are forwarded home.
        ("half misrouted", &file, "4", "0.5"),
        ("shuffled and all misrouted", &shuffled, "3", "1"),
    ] {
        let data = dir.path().join(name.replace(' ', "-"));
        replay(
            input,
            &data,
            &["--partitions", partitions, "--misroute", misroute],
        );
        // Issue #16, case 3: one row per key in the whole deployment.
        let doubled = sql_rows(
            &data,
            "SELECT day, district, source, method FROM aberrations GROUP BY 1, 2, 3, 4 HAVING COUNT(*) > 1",
        );
        assert!(
            doubled.is_empty(),
            "{name}: keys twice in aberrations: {doubled:?}"
        );
        assert_tables_exact(&data, &file);
        assert_same_tables(name, &all_tables(&data), &want);
    }
}

//! The Grafana dashboards (`deploy/grafana/`) against a real data directory.
//!
//! A simulated scenario is replayed by the binary as a user would, then
//! `paicha serve` answers every raw SQL query of the command-center
//! dashboard after Grafana's PostgreSQL data source has expanded its macros
//! (`$__timeFilter`, `$__timeGroupAlias`, …) exactly as Grafana does, for a
//! fixed time range over the replayed days. Each query must succeed, return
//! rows, and return the columns its panel needs (a `time` column and numbers
//! for a time series; the fields the panel's overrides name).
//!
//! The macro engine below is a port of Grafana's
//! `pkg/tsdb/grafana-postgresql-datasource/macros.go` (postgresMacroEngine:
//! comment stripping, `Interpolate`, `evaluateMacro` without TimescaleDB, as
//! the data source is provisioned), of `sqleng.Interpolate` (the global
//! `$__interval`, `$__interval_ms`, `$__unixEpochFrom()`/`To()`), and of
//! `gtime.ParseInterval`/`FormatInterval` of grafana-plugin-sdk-go; its
//! cases are those of Grafana's `macros_test.go`.
//!
//! Results are read as Arrow IPC (`Accept: application/vnd.apache.arrow.stream`)
//! from `POST /sql`, so column types are DataFusion's own.
// Helpers of tests, outside #[test] functions: a panic is the test failing.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use serde_json::Value;

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

// ---------------------------------------------------------------------------
// Grafana's PostgreSQL macro engine
// ---------------------------------------------------------------------------

/// The time range and interval of a Grafana query.
struct GrafanaQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The query's interval (`$__interval`), nanoseconds.
    interval: i64,
}

/// The SQL Grafana's PostgreSQL data source sends for `raw_sql`: the global
/// substitutions of `sqleng.Interpolate`, then the PostgreSQL macro engine.
fn grafana_sql(raw_sql: &str, q: &GrafanaQuery) -> Result<String, String> {
    let sql = raw_sql
        .replace("$__interval_ms", &(q.interval / 1_000_000).to_string())
        .replace("$__interval", &format_interval(q.interval))
        .replace("$__unixEpochFrom()", &q.from.timestamp().to_string())
        .replace("$__unixEpochTo()", &q.to.timestamp().to_string());
    interpolate_macros(&sql, q)
}

/// `postgresMacroEngine.Interpolate`: strips comments, then replaces every
/// match of `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`, leftmost first.
fn interpolate_macros(sql: &str, q: &GrafanaQuery) -> Result<String, String> {
    let sql = strip_sql_comments(sql);
    let bytes = sql.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        // \$ ([_a-zA-Z0-9]+) \( ([^\)]*) \)
        let name_end = (i + 1..bytes.len())
            .find(|&j| !ident(bytes[j]))
            .unwrap_or(bytes.len());
        let args_end = if name_end > i + 1 && bytes.get(name_end) == Some(&b'(') {
            sql[name_end + 1..].find(')').map(|k| name_end + 1 + k)
        } else {
            None
        };
        let Some(args_end) = args_end else {
            i += 1;
            continue;
        };
        let whole = &sql[i..=args_end];
        let mut name = &sql[i + 1..name_end];
        // Pre-5.3 compatibility: `$__timeGroup(…)` directly followed by a
        // comma (at its first occurrence in the query) gets `AS "time"`.
        if name == "__timeGroup" {
            if let Some(at) = sql.find(whole) {
                if bytes.get(at + whole.len()) == Some(&b',') {
                    name = "__timeGroupAlias";
                }
            }
        }
        let args: Vec<&str> = sql[name_end + 1..args_end]
            .split(',')
            .map(|a| a.trim_matches(' '))
            .collect();
        out.push_str(&sql[last..i]);
        out.push_str(&evaluate_macro(name, &args, q)?);
        last = args_end + 1;
        i = last;
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

/// `postgresMacroEngine.evaluateMacro` (timescaledb off).
fn evaluate_macro(name: &str, args: &[&str], q: &GrafanaQuery) -> Result<String, String> {
    // strings.Split never returns an empty slice: "" gives [""].
    let arg0 = args[0];
    let column = || {
        if args.is_empty() {
            Err(format!("missing time column argument for macro {name}"))
        } else {
            Ok(arg0)
        }
    };
    let group = || -> Result<f64, String> {
        if args.len() < 2 {
            return Err(format!(
                "macro {name} needs time column and interval and optional fill value"
            ));
        }
        let interval = parse_interval(args[1].trim_matches('\''))
            .map_err(|_| format!("error parsing interval {}", args[1]))?;
        if args.len() == 3 {
            // sqleng.SetupFillmode: the fill only changes how Grafana
            // resamples the result, not the SQL.
            if args[2] != "NULL" && args[2] != "previous" && args[2].parse::<f64>().is_err() {
                return Err(format!("error parsing fill value {}", args[2]));
            }
        }
        Ok(go_duration_seconds(interval))
    };
    Ok(match name {
        "__time" => format!("{} AS \"time\"", column()?),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", column()?),
        "__timeFilter" => format!(
            "{} BETWEEN '{}' AND '{}'",
            column()?,
            rfc3339_nano(q.from),
            rfc3339_nano(q.to)
        ),
        "__timeFrom" => format!("'{}'", rfc3339_nano(q.from)),
        "__timeTo" => format!("'{}'", rfc3339_nano(q.to)),
        "__timeGroup" => {
            let s = go_float_v(group()?);
            format!("floor(extract(epoch from {arg0})/{s})*{s}")
        }
        "__timeGroupAlias" => format!("{} AS \"time\"", evaluate_macro("__timeGroup", args, q)?),
        "__unixEpochFilter" => {
            let c = column()?;
            format!(
                "{c} >= {} AND {c} <= {}",
                q.from.timestamp(),
                q.to.timestamp()
            )
        }
        "__unixEpochNanoFilter" => {
            let c = column()?;
            format!(
                "{c} >= {} AND {c} <= {}",
                unix_nano(q.from),
                unix_nano(q.to)
            )
        }
        "__unixEpochNanoFrom" => unix_nano(q.from).to_string(),
        "__unixEpochNanoTo" => unix_nano(q.to).to_string(),
        "__unixEpochGroup" => {
            let s = go_float_v(group()?);
            format!("floor(({arg0})/{s})*{s}")
        }
        "__unixEpochGroupAlias" => format!(
            "{} AS \"time\"",
            evaluate_macro("__unixEpochGroup", args, q)?
        ),
        _ => return Err(format!("unknown macro \"{name}\"")),
    })
}

/// `stripSQLComments` of macros.go: removes `--` and `/* */` comments
/// outside single-quoted strings, double-quoted identifiers and
/// dollar-quoted strings (`$$…$$`, `$tag$…$tag$`).
fn strip_sql_comments(sql: &str) -> String {
    let b = sql.as_bytes();
    let n = b.len();
    let tag_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let mut i = 0;
    // Copies a region quoted by `q` (doubled inside), from its opening
    // quote at i; returns the position after its closing quote.
    fn quoted(b: &[u8], mut i: usize, q: u8, out: &mut Vec<u8>) -> usize {
        out.push(q);
        i += 1;
        while i < b.len() {
            out.push(b[i]);
            if b[i] == q {
                i += 1;
                if i < b.len() && b[i] == q {
                    out.push(b[i]);
                    i += 1;
                } else {
                    break;
                }
            } else {
                i += 1;
            }
        }
        i
    }
    // Copies a dollar-quoted region from its opening delimiter at i (equal
    // to its closing one); returns the position after the closing one.
    fn dollar_quoted(b: &[u8], mut i: usize, closing: &[u8], out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(closing);
        i += closing.len();
        while i < b.len() {
            if b[i..].starts_with(closing) {
                out.extend_from_slice(closing);
                i += closing.len();
                break;
            }
            out.push(b[i]);
            i += 1;
        }
        i
    }
    while i < n {
        match b[i] {
            b'$' => {
                let j = i + 1;
                if j < n && b[j] == b'$' {
                    i = dollar_quoted(b, i, b"$$", &mut out);
                } else if j < n && tag_char(b[j]) && !b[j].is_ascii_digit() {
                    let mut k = j + 1;
                    while k < n && tag_char(b[k]) {
                        k += 1;
                    }
                    if k < n && b[k] == b'$' {
                        let closing = b[i..=k].to_vec();
                        i = dollar_quoted(b, i, &closing, &mut out);
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            b'\'' | b'"' => i = quoted(b, i, b[i], &mut out),
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                i += 2;
                while i + 1 < n {
                    if b[i] == b'*' && b[i + 1] == b'/' {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if i + 1 < n && b[i + 1] == b'-' => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("comment stripping keeps UTF-8")
}

/// Go's `time.Format(time.RFC3339Nano)` of a UTC time: fractional seconds
/// without trailing zeros, none when zero.
fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn unix_nano(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt()
        .expect("time within i64 nanoseconds")
}

/// Go's `Duration.Seconds()`.
fn go_duration_seconds(nanos: i64) -> f64 {
    let sec = nanos / 1_000_000_000;
    let nsec = nanos % 1_000_000_000;
    sec as f64 + nsec as f64 / 1e9
}

/// Go's `fmt.Sprintf("%v", f)` of a float64: `%g` with the shortest
/// precision, which strconv writes in exponent form (`1.0368e+06`) when the
/// decimal exponent is < -4 or >= 6, else as a plain decimal (`3600`, `0.02`).
fn go_float_v(f: f64) -> String {
    if f == 0.0 {
        return "0".to_string();
    }
    let sci = format!("{f:e}"); // shortest digits, e.g. "1.0368e6", "2e-2"
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// `gtime.FormatInterval`.
fn format_interval(nanos: i64) -> String {
    const MS: i64 = 1_000_000;
    const S: i64 = 1000 * MS;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    const Y: i64 = 365 * D;
    for (unit, name) in [(Y, "y"), (D, "d"), (H, "h"), (M, "m"), (S, "s"), (MS, "ms")] {
        if nanos >= unit {
            return format!("{}{name}", nanos / unit);
        }
    }
    "1ms".to_string()
}

/// `gtime.ParseInterval`: `<n>d|w|M|y` relative to now in UTC (Go's
/// `AddDate`), else Go's `time.ParseDuration`. Nanoseconds.
fn parse_interval(s: &str) -> Result<i64, String> {
    let digits = s.len().saturating_sub(1);
    if digits > 0
        && s[..digits].bytes().all(|b| b.is_ascii_digit())
        && matches!(s.as_bytes()[digits], b'd' | b'w' | b'M' | b'y')
    {
        let n: i32 = s[..digits].parse().map_err(|e| format!("{e}"))?;
        let now = Utc::now();
        let then = match s.as_bytes()[digits] {
            b'd' => go_add_date(now, 0, 0, n),
            b'w' => go_add_date(now, 0, 0, n * 7),
            b'M' => go_add_date(now, 0, n, 0),
            _ => go_add_date(now, n, 0, 0),
        };
        return (then - now)
            .num_nanoseconds()
            .ok_or_else(|| format!("interval {s} overflows"));
    }
    go_parse_duration(s)
}

/// Go's `t.AddDate(years, months, days)`: out-of-range days and months
/// overflow into the next month or year.
fn go_add_date(t: DateTime<Utc>, years: i32, months: i32, days: i32) -> DateTime<Utc> {
    let m = t.month0() as i32 + months;
    let year = t.year() + years + m.div_euclid(12);
    let month = m.rem_euclid(12) as u32 + 1;
    let first = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let date = first + ChronoDuration::days(i64::from(t.day()) - 1 + i64::from(days));
    Utc.from_utc_datetime(&date.and_time(t.time()))
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or "0".
fn go_parse_duration(s: &str) -> Result<i64, String> {
    let err = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * unit;
    }
    if total > i64::MAX as f64 {
        return Err(err());
    }
    let nanos = total.round() as i64;
    Ok(if neg { -nanos } else { nanos })
}

#[test]
fn macro_engine_matches_grafanas_tests() {
    // Cases of Grafana's macros_test.go (TestMacroEngine).
    let from = Utc.with_ymd_and_hms(2018, 4, 12, 18, 0, 0).unwrap();
    let q = GrafanaQuery {
        from,
        to: from + ChronoDuration::minutes(5),
        interval: 10 * 60 * 1_000_000_000,
    };
    let m = |sql: &str| interpolate_macros(sql, &q).expect("interpolate");
    assert_eq!(
        m("select $__time(time_column)"),
        "select time_column AS \"time\""
    );
    assert_eq!(
        m("select min($__time(time_column))"),
        "select min(time_column AS \"time\")"
    );
    assert_eq!(
        m("WHERE $__timeFilter(time_column)"),
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    );
    assert_eq!(m("select $__timeFrom()"), "select '2018-04-12T18:00:00Z'");
    assert_eq!(m("select $__timeTo()"), "select '2018-04-12T18:05:00Z'");
    assert_eq!(
        m("SELECT $__timeGroup(time_column,'5m'), value"),
        "SELECT floor(extract(epoch from time_column)/300)*300 AS \"time\", value"
    );
    assert_eq!(
        m("SELECT $__timeGroup(time_column,'5m') as time, value"),
        "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"
    );
    assert_eq!(
        m("SELECT $__timeGroup(time_column,'5m')"),
        "SELECT floor(extract(epoch from time_column)/300)*300"
    );
    assert_eq!(
        m("SELECT $__timeGroupAlias(time_column,'5m')"),
        "SELECT floor(extract(epoch from time_column)/300)*300 AS \"time\""
    );
    assert_eq!(
        m("$__timeGroup(time_column , '5m')"),
        "floor(extract(epoch from time_column)/300)*300"
    );
    assert_eq!(
        m("select $__unixEpochFilter(time)"),
        "select time >= 1523556000 AND time <= 1523556300"
    );
    assert_eq!(
        m("select $__unixEpochNanoFilter(time)"),
        "select time >= 1523556000000000000 AND time <= 1523556300000000000"
    );
    assert_eq!(
        m("select $__unixEpochNanoFrom()"),
        "select 1523556000000000000"
    );
    assert_eq!(
        m("select $__unixEpochNanoTo()"),
        "select 1523556300000000000"
    );
    assert_eq!(
        m("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')"),
        "SELECT floor((time_column+time_adjustment)/300)*300"
    );
    assert_eq!(
        m("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')"),
        "SELECT floor((time_column+time_adjustment)/300)*300 AS \"time\""
    );
    // Go's %v of interval.Seconds(): exponent form from 1e6 on.
    assert_eq!(
        m("$__timeGroup(t, '12d')"),
        "floor(extract(epoch from t)/1.0368e+06)*1.0368e+06"
    );
    assert_eq!(
        m("$__timeGroup(t, '20ms')"),
        "floor(extract(epoch from t)/0.02)*0.02"
    );
    assert_eq!(
        m("$__timeGroup(t, 1w)"),
        "floor(extract(epoch from t)/604800)*604800"
    );
    assert!(interpolate_macros("$__timeGroup(t)", &q).is_err());
    assert!(interpolate_macros("$__timeGroup(t, 'soon')", &q).is_err());
    assert!(interpolate_macros("$__nope(t)", &q).is_err());
    // Not a macro call: left alone.
    assert_eq!(m("SELECT $1, $__timeFilter"), "SELECT $1, $__timeFilter");

    // Times before 1970 and with fractions (RFC3339Nano).
    let q = GrafanaQuery {
        from: Utc.with_ymd_and_hms(1960, 2, 1, 7, 0, 0).unwrap()
            + ChronoDuration::milliseconds(500),
        to: Utc.with_ymd_and_hms(1980, 2, 3, 8, 0, 0).unwrap() + ChronoDuration::milliseconds(500),
        interval: 1_000_000_000,
    };
    assert_eq!(
        interpolate_macros("WHERE $__timeFilter(time_column)", &q).unwrap(),
        "WHERE time_column BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    );
    assert_eq!(
        interpolate_macros("select $__unixEpochFilter(time)", &q).unwrap(),
        "select time >= -312915600 AND time <= 318412800"
    );

    // TestStripSQLComments.
    for (input, want) in [
        ("SELECT 1 -- a comment", "SELECT 1 "),
        ("SELECT /* a comment */ 1", "SELECT  1"),
        (
            "SELECT '-- not a comment' AS label",
            "SELECT '-- not a comment' AS label",
        ),
        (
            "SELECT \"col /* name */\" FROM t",
            "SELECT \"col /* name */\" FROM t",
        ),
        (
            "SELECT 'it''s fine -- not a comment' AS v",
            "SELECT 'it''s fine -- not a comment' AS v",
        ),
        ("SELECT 1 -- comment\nFROM t", "SELECT 1 \nFROM t"),
        (
            "SELECT $body$ -- not a comment $body$",
            "SELECT $body$ -- not a comment $body$",
        ),
        ("SELECT $__timeFrom() -- comment", "SELECT $__timeFrom() "),
        ("SELECT $1 -- comment", "SELECT $1 "),
    ] {
        assert_eq!(strip_sql_comments(input), want, "{input:?}");
    }

    // sqleng.Interpolate's global substitutions, then the macros.
    let q = GrafanaQuery {
        from,
        to: from + ChronoDuration::minutes(5),
        interval: 10 * 60 * 1_000_000_000,
    };
    assert_eq!(
        grafana_sql(
            "SELECT $__interval, $__interval_ms, $__unixEpochFrom(), $__unixEpochTo()",
            &q
        )
        .unwrap(),
        "SELECT 10m, 600000, 1523556000, 1523556300"
    );
    assert_eq!(format_interval(3_600_000_000_000), "1h");
    assert_eq!(format_interval(86_400_000_000_000), "1d");
    assert_eq!(go_parse_duration("1h30m").unwrap(), 5_400_000_000_000);
    assert_eq!(parse_interval("1d").unwrap(), 86_400_000_000_000);
}

// ---------------------------------------------------------------------------
// The dashboards and their provisioning
// ---------------------------------------------------------------------------

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard(name: &str) -> Value {
    serde_json::from_str(&read(&format!("deploy/grafana/dashboards/{name}")))
        .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Panels of a dashboard, those inside rows included.
fn panels(d: &Value) -> Vec<&Value> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()))
        .collect()
}

fn title(p: &Value) -> String {
    format!("panel {} ({})", p["id"], p["title"].as_str().unwrap_or(""))
}

/// (uid → type) of the data sources provisioned in
/// deploy/grafana/provisioning/datasources/paicha.yaml (items of the
/// `datasources:` list, read line by line).
fn provisioned_data_sources() -> BTreeMap<String, String> {
    let text = read("deploy/grafana/provisioning/datasources/paicha.yaml");
    let mut out = BTreeMap::new();
    let mut current: Option<(Option<String>, Option<String>)> = None;
    let mut flush = |c: &mut Option<(Option<String>, Option<String>)>| {
        if let Some((Some(uid), Some(kind))) = c.take() {
            out.insert(uid, kind);
        }
    };
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start().trim_start_matches("- ");
        if indent == 2 && line.trim_start().starts_with("- ") {
            flush(&mut current);
            current = Some((None, None));
        } else if indent == 0 {
            flush(&mut current);
        }
        if let Some((uid, kind)) = current.as_mut() {
            let item_level = indent == 4 || (indent == 2 && line.trim_start().starts_with("- "));
            if item_level {
                if let Some(v) = trimmed.strip_prefix("uid:") {
                    *uid = Some(v.trim().to_string());
                } else if let Some(v) = trimmed.strip_prefix("type:") {
                    *kind = Some(v.trim().to_string());
                }
            }
        }
    }
    flush(&mut current);
    out
}

#[test]
fn provisioning_declares_the_data_sources_and_dashboards() {
    let sources = provisioned_data_sources();
    assert_eq!(
        sources.get("paicha").map(String::as_str),
        Some("grafana-postgresql-datasource"),
        "{sources:?}"
    );
    assert_eq!(
        sources.get("prometheus").map(String::as_str),
        Some("prometheus"),
        "{sources:?}"
    );
    let yaml = read("deploy/grafana/provisioning/datasources/paicha.yaml");
    for line in [
        "url: paicha:5432",
        "database: paicha",
        "user: grafana",
        "sslmode: disable",
        "timescaledb: false",
        "postgresVersion: 1500",
        "password: $PAICHA_GRAFANA_PASSWORD",
        "url: http://prometheus:9090",
    ] {
        assert!(
            yaml.lines().any(|l| l.trim() == line),
            "paicha.yaml lacks `{line}`"
        );
    }
    let providers = read("deploy/grafana/provisioning/dashboards/paicha.yaml");
    assert!(providers
        .lines()
        .any(|l| l.trim() == "path: /var/lib/grafana/dashboards"));
    assert!(providers.lines().any(|l| l.trim() == "type: file"));
}

/// Ids unique, every panel and query on a provisioned data source of the
/// right type, SQL queries raw SQL in code mode, panels inside the 24-column
/// grid without overlapping.
/// Count series show a quiet hour as 0, not as a line joining its
/// neighbours (issue #19): every hourly `$__timeGroupAlias` of the command
/// center passes Grafana the fill value 0.
#[test]
fn count_series_fill_quiet_hours_with_zero() {
    let d = dashboard("command-center.json");
    let mut grouped = 0;
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let sql = t["rawSql"].as_str().unwrap_or_default();
            for call in sql.split("$__timeGroupAlias(").skip(1) {
                let args = call.split(')').next().unwrap_or_default();
                grouped += 1;
                assert!(
                    args.split(',').nth(2).map(str::trim) == Some("0"),
                    "{}: $__timeGroupAlias({args}) does not fill with 0",
                    title(p)
                );
            }
        }
    }
    assert!(grouped >= 4, "only {grouped} grouped series");
}

#[test]
fn dashboards_are_consistent() {
    let sources = provisioned_data_sources();
    let mut uids = HashSet::new();
    for name in ["command-center.json", "pipeline-health.json"] {
        let d = dashboard(name);
        assert!(
            uids.insert(d["uid"].as_str().expect("dashboard uid").to_string()),
            "{name}: dashboard uid used twice"
        );
        let mut ids = HashSet::new();
        let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
        for p in panels(&d) {
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {}: no id", title(p)));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().expect("x"),
                g["y"].as_i64().expect("y"),
                g["w"].as_i64().expect("w"),
                g["h"].as_i64().expect("h"),
            );
            assert!(
                x >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{name}: {}: outside the grid",
                title(p)
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), title(p)) {
                        panic!("{name}: {} overlaps {other}", title(p));
                    }
                }
            }
            if p["type"] == "row" {
                continue;
            }
            let panel_ds = &p["datasource"];
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {}: no targets", title(p)));
            assert!(!targets.is_empty(), "{name}: {}: no targets", title(p));
            let mut refs = HashSet::new();
            for t in targets {
                assert!(
                    refs.insert(t["refId"].as_str().expect("refId")),
                    "{name}: {}: refId used twice",
                    title(p)
                );
                for ds in [panel_ds, &t["datasource"]] {
                    let uid = ds["uid"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: {}: data source without uid", title(p)));
                    let kind = sources.get(uid).unwrap_or_else(|| {
                        panic!("{name}: {}: data source {uid} is not provisioned", title(p))
                    });
                    assert_eq!(
                        ds["type"].as_str(),
                        Some(kind.as_str()),
                        "{name}: {}: data source {uid} has the wrong type",
                        title(p)
                    );
                }
                if t["datasource"]["type"] == "grafana-postgresql-datasource" {
                    assert_eq!(t["rawQuery"], true, "{name}: {}", title(p));
                    assert_eq!(t["editorMode"], "code", "{name}: {}", title(p));
                    assert!(
                        t["format"] == "time_series" || t["format"] == "table",
                        "{name}: {}: format {}",
                        title(p),
                        t["format"]
                    );
                    assert!(t["rawSql"].is_string(), "{name}: {}", title(p));
                }
            }
        }
    }
}

/// The metrics pipeline-health.json queries are ones paicha exports
/// (registered in ingest/src/internal_events/) or recording rules
/// (deploy/prometheus/rules.yml).
#[test]
fn pipeline_health_queries_known_metrics() {
    let dir = repo_path("ingest/src/internal_events");
    let metrics_rs: String = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert!(metrics_rs.contains("paicha_events_accepted_total"));
    let rules = read("deploy/prometheus/rules.yml");
    let exported = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        metrics_rs.contains(&format!("\"{name}\""))
            || metrics_rs.contains(&format!("\"{base}\""))
            || rules
                .lines()
                .any(|l| l.trim() == format!("- record: {name}"))
    };
    let d = dashboard("pipeline-health.json");
    let mut seen = BTreeSet::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a target without expr", title(p)));
            let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
            for word in expr.split(|c: char| !is_name(c)) {
                if word.starts_with("paicha_") || word.starts_with("paicha:") {
                    assert!(
                        exported(word),
                        "{}: {word} is neither registered in ingest/src/internal_events/ nor a recording rule",
                        title(p)
                    );
                    seen.insert(word.to_string());
                }
            }
        }
    }
    for needed in [
        "paicha_events_accepted_total",
        "paicha_kafka_consumer_lag",
        "paicha_watermark_lag_seconds",
        "paicha_dead_letters_total",
        "paicha_alerts_raised_total",
        "paicha_window_flush_duration_seconds_bucket",
    ] {
        assert!(
            seen.contains(needed),
            "pipeline-health.json never shows {needed}"
        );
    }
}

// ---------------------------------------------------------------------------
// The command center's SQL against a replayed data directory
// ---------------------------------------------------------------------------

/// Runs `sql` through `POST /sql`, as Arrow batches.
fn query(server: &common::Serving, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let response = match agent
        .post(&format!("{}/sql", server.http))
        .set("Accept", ARROW_STREAM)
        .send_string(sql)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let reader = arrow::ipc::reader::StreamReader::try_new(response.into_reader(), None)
        .map_err(|e| format!("not an Arrow stream: {e}"))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad Arrow stream: {e}"))
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

/// Columns Grafana's SQL data sources turn into numbers (int2/4/8,
/// float4/8, numeric).
fn is_number(t: &DataType) -> bool {
    t.is_numeric()
}

/// Grafana's `epochPrecisionToMS`: a number in e+09 is seconds, in e+18
/// nanoseconds, anything else milliseconds.
fn epoch_to_ms(v: f64) -> f64 {
    let sci = format!("{v:e}");
    match sci.split_once('e').map(|(_, e)| e) {
        Some("9") => v * 1e3,
        Some("18") => v / 1e6,
        _ => v,
    }
}

/// The values of a `time` column in milliseconds since the epoch, as
/// Grafana reads them, or why it cannot.
fn time_ms(column: &ArrayRef) -> Result<Vec<Option<f64>>, String> {
    let per_ms = match column.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => Some(1e-3),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Some(1.0),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(1e3),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(1e6),
        DataType::Date32 => Some(1.0 / 86_400_000.0),
        DataType::Date64 => Some(1.0),
        t if is_number(t) => None,
        t => return Err(format!("a time column of type {t}")),
    };
    let raw = match column.data_type() {
        DataType::Timestamp(_, _) | DataType::Date64 => {
            arrow::compute::cast(column, &DataType::Int64)
                .and_then(|c| arrow::compute::cast(&c, &DataType::Float64))
        }
        DataType::Date32 => arrow::compute::cast(column, &DataType::Int32)
            .and_then(|c| arrow::compute::cast(&c, &DataType::Float64)),
        _ => arrow::compute::cast(column, &DataType::Float64),
    }
    .map_err(|e| e.to_string())?;
    let values = raw.as_primitive::<Float64Type>();
    Ok((0..values.len())
        .map(|i| {
            values.is_valid(i).then(|| {
                let v = values.value(i);
                match per_ms {
                    Some(per) => v / per,
                    None => epoch_to_ms(v),
                }
            })
        })
        .collect())
}

/// What one query returned: column names and types, rows, and the values of
/// a string `metric` column.
struct Answer {
    columns: Vec<(String, DataType)>,
    rows: usize,
    metrics: BTreeSet<String>,
}

/// Checks a result as Grafana's `time_series` format reads it (sqleng's
/// processFrame): a `time` column of timestamps or epoch numbers, in range
/// and ascending (long-to-wide needs it); every other column a number,
/// except an optional string `metric`; one row per time and metric.
fn check_time_series(batches: &[RecordBatch], q: &GrafanaQuery) -> Result<(), String> {
    let schema = batches[0].schema();
    let time_index = schema
        .index_of("time")
        .map_err(|_| "no column named time".to_string())?;
    for f in schema.fields() {
        let ok = match f.name().as_str() {
            "time" => true,
            "metric" => is_string(f.data_type()),
            _ => is_number(f.data_type()),
        };
        if !ok {
            return Err(format!(
                "column {} is {}, not a {}",
                f.name(),
                f.data_type(),
                if f.name() == "metric" {
                    "string"
                } else {
                    "number"
                }
            ));
        }
    }
    let metric_index = schema.index_of("metric").ok();
    let from = q.from.timestamp_millis() as f64 - 86_400_000.0;
    let to = q.to.timestamp_millis() as f64;
    let mut previous = f64::MIN;
    let mut keys = HashSet::new();
    for b in batches {
        let times = time_ms(b.column(time_index))?;
        let metrics = metric_index
            .map(|i| arrow::compute::cast(b.column(i), &DataType::Utf8))
            .transpose()
            .map_err(|e| e.to_string())?;
        for (row, t) in times.into_iter().enumerate() {
            let t = t.ok_or_else(|| format!("a null time in row {row}"))?;
            if !(from..=to).contains(&t) {
                return Err(format!(
                    "time {t} ms is outside the range ({from} ms to {to} ms)"
                ));
            }
            if t < previous {
                return Err("rows are not ordered by time".to_string());
            }
            previous = t;
            let metric = metrics
                .as_ref()
                .map(|m| m.as_string::<i32>().value(row).to_string());
            if !keys.insert((t.to_bits(), metric.clone())) {
                return Err(format!("two rows for time {t} and metric {metric:?}"));
            }
        }
    }
    Ok(())
}

fn answer(batches: &[RecordBatch]) -> Answer {
    let schema = batches[0].schema();
    let mut metrics = BTreeSet::new();
    if let Ok(i) = schema.index_of("metric") {
        for b in batches {
            if let Ok(m) = arrow::compute::cast(b.column(i), &DataType::Utf8) {
                let m = m.as_string::<i32>();
                metrics.extend(
                    (0..m.len())
                        .filter(|&r| m.is_valid(r))
                        .map(|r| m.value(r).to_string()),
                );
            }
        }
    }
    Answer {
        columns: schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect(),
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        metrics,
    }
}

/// The field names a panel refers to: by-name overrides, a bar chart's x
/// field, a table's sort (by display name or name).
fn checks_of_panel(p: &Value, answers: &[Answer]) -> Vec<String> {
    let mut problems = Vec::new();
    let columns: BTreeSet<&str> = answers
        .iter()
        .flat_map(|a| a.columns.iter().map(|(n, _)| n.as_str()))
        .collect();
    let series: BTreeSet<&str> = answers
        .iter()
        .flat_map(|a| a.metrics.iter().map(String::as_str))
        .collect();
    let mut display_names = BTreeSet::new();
    for o in p["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if o["matcher"]["id"] == "byName" {
            let name = o["matcher"]["options"].as_str().unwrap_or("");
            if !columns.contains(name) && !series.contains(name) {
                problems.push(format!(
                    "an override names field {name:?}, which no query returns (columns {columns:?})"
                ));
            }
            for prop in o["properties"].as_array().into_iter().flatten() {
                if prop["id"] == "displayName" {
                    display_names.insert(prop["value"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    if let Some(x) = p["options"]["xField"].as_str() {
        if !columns.contains(x) {
            problems.push(format!("xField {x:?} is not a column ({columns:?})"));
        }
    }
    for s in p["options"]["sortBy"].as_array().into_iter().flatten() {
        let n = s["displayName"].as_str().unwrap_or("");
        if !columns.contains(n) && !display_names.contains(n) {
            problems.push(format!(
                "sortBy {n:?} is neither a column nor a display name"
            ));
        }
    }
    if p["type"] == "stat"
        && !answers
            .iter()
            .any(|a| a.columns.iter().any(|(_, t)| is_number(t)))
    {
        problems.push("a stat panel without a numeric column".to_string());
    }
    problems
}

#[test]
fn command_center_panels_answer_as_grafana_expects() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let events = dir.path().join("events.jsonl");
    let data = dir.path().join("data");
    common::ok(&[
        "simulate",
        "--out",
        events.to_str().expect("utf-8 path"),
        "--days",
        "3",
        "--seed",
        "1",
    ]);
    common::ok(&[
        "run",
        "--replay",
        events.to_str().expect("utf-8 path"),
        "--data",
        data.to_str().expect("utf-8 path"),
    ]);
    let server = common::serving(&["serve", "--data", data.to_str().expect("utf-8 path")]);

    // The three simulated days, 2020-01-20 to 2020-01-22 in China Standard
    // Time, as a dashboard's absolute range; hourly interval.
    let q = GrafanaQuery {
        from: Utc.with_ymd_and_hms(2020, 1, 19, 16, 0, 0).unwrap(),
        to: Utc.with_ymd_and_hms(2020, 1, 22, 16, 0, 0).unwrap(),
        interval: 3_600_000_000_000,
    };

    let d = dashboard("command-center.json");
    let mut problems = Vec::new();
    let mut queries = 0;
    for p in panels(&d) {
        let mut answers = Vec::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let Some(raw) = t["rawSql"].as_str() else {
                continue;
            };
            queries += 1;
            let what = format!("{} query {}", title(p), t["refId"]);
            let sql = match grafana_sql(raw, &q) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{what}: Grafana would refuse it: {e}"));
                    continue;
                }
            };
            let batches = match query(&server, &sql) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{what}: {e}\n  SQL: {sql}"));
                    continue;
                }
            };
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if rows == 0 {
                problems.push(format!("{what}: no rows\n  SQL: {sql}"));
                continue;
            }
            if t["format"] == "time_series" {
                if let Err(e) = check_time_series(&batches, &q) {
                    problems.push(format!(
                        "{what}: not a time series Grafana reads: {e}\n  SQL: {sql}"
                    ));
                }
            }
            let a = answer(&batches);
            eprintln!(
                "{what}: {} rows, columns {:?}",
                a.rows,
                a.columns
                    .iter()
                    .map(|(n, t)| format!("{n}: {t}"))
                    .collect::<Vec<_>>()
            );
            answers.push(a);
        }
        if !answers.is_empty() {
            problems.extend(
                checks_of_panel(p, &answers)
                    .into_iter()
                    .map(|e| format!("{}: {e}", title(p))),
            );
        }
    }
    assert!(
        queries >= 10,
        "only {queries} SQL queries in command-center.json"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

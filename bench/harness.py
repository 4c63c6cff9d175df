#!/usr/bin/env python3
"""paicha's performance harness: one simulated file, paicha end to end and per stage, against DuckDB.

What it measures, on one file of N events (`paicha simulate`, or `--file`)
-------------------------------------------------------------------------
1. paicha end to end: `paicha run --replay FILE --data DIR` (embedded Kafka,
   every processor, Parquet), wall time, events/s and peak RSS; once per CPU
   set given with `--cpus` (e.g. `0` and `0,1`: one core, then two, pinned
   with `taskset`), then `paicha sql ... FROM symptom_counts`.
2. Each stage alone: the `stages` example built next to the binary
   (`examples/stages.rs`): read, route+pseudonymize, decode+validate,
   dedupe+windowing, every processor, checkpoint (Parquet), Kafka consume.
3. DuckDB alone (the `duckdb` Python package, in a child process), in one SQL
   query over the same file that applies the contract's validity rules, so
   the two `symptom_counts` tables must be equal row for row; the run fails
   if they are not.  Also, unless `--smoke`, DuckDB's fast path: the same
   table from `read_json` with typed columns and no validation beyond types
   (what an analyst would write; not expected to be exactly equal on
   malformed input, the rows that differ are counted).
4. The ratio of paicha's end-to-end time to DuckDB's, and peak RSS of each.
5. With `--freshness`: the `freshness` example (produce-to-visible latency of
   the live mode, p50/p90/p99).

`--smoke` (about 30k events) checks only that the comparison holds: tables
equal, every stage ran.  It runs inside the test suite (tests/it/harness.rs).

How the DuckDB SQL mirrors tests/it/common/mod.rs
----------------------------------------------
`valid()` (contract validity) and `fold_symptom_counts()` (the independent fold):

* The line must be a JSON object as serde_json parses it.  DuckDB's
  `json_valid` is more lenient (trailing commas, NaN/Infinity/inf/nan), so a
  line is also rejected when, after blanking out string literals, it has a
  comma before `]`/`}` or any letters other than true/false/null and the
  exponent `e`/`E`.
* `event_id`: a non-empty string, at most 64 bytes, only [A-Za-z0-9.-_:].
* `event_time`: a string chrono's `parse_from_rfc3339` accepts: `YYYY-MM-DD`,
  `T`/`t`/space, `hh:mm:ss` (second 60 = leap second, counted as :59),
  optional `.digits`, then `Z`/`z` or `+hh:mm`/`-hh:mm`/U+2212 `hh:mm`;
  real calendar date, hour <= 23, minute <= 59, offset hour <= 23, minute <= 59.
  Epoch seconds = whole seconds (chrono's `timestamp()`), window =
  floor(epoch / 3600) * 3600.
* `district`: a string in the first column of registry/districts.csv.
* `source` = checkpoint: checkpoint_id, person_id non-empty strings
  (`is_str`); temperature_c a number in [34, 43] (`temp_ok`, not nullable);
  mask a boolean; symptoms an array of distinct strings from the six symptoms
  (`symptoms_ok`); disposition one of pass/referred/turned_back/isolated.
* pharmacy: pharmacy_id, person_id strings; drug_class one of
  antipyretic/cough/antiviral/antibiotic/other; quantity an integer
  (serde `as_i64`: JSON integer in i64 range, not 1.0) >= 1; temperature_c
  null/missing or a number in [34, 43].
* door_visit: grid_id, household_id, person_id strings; visit_kind one of
  screening/follow_up; outcome one of seen/not_home/refused; temperature_c
  null/missing or in [34, 43], and null/missing unless outcome is seen;
  symptoms valid as for checkpoint; observation one of none/home_isolation/
  centralized_observation/medical_observation/released.
* case/bed lines (and their hospital checks) are left out: `symptom_counts`
  counts only checkpoint/pharmacy/door_visit and the dedupe key includes the
  source, so case/bed validity cannot change this table.
* Dedupe: among valid lines, the first (source, event_id) in file order wins.
* Fold: seen_visit = source != door_visit or outcome == "seen";
  temp = temperature_c if seen_visit; hot = temp >= 37.3;
  symptoms = the string elements of `symptoms` if it is an array (also for
  pharmacy, where it is not validated) and seen_visit, else none;
  suspicious = pharmacy: hot or drug_class in (antipyretic, cough);
  others: seen_visit and (hot or symptoms non-empty);
  fever = hot or "fever" in symptoms; other symptom columns = contained.

Usage
-----
  python3 bench/harness.py --smoke [--paicha target/debug/paicha]
  python3 bench/harness.py --events 10000000 --paicha target/release/paicha --cpus 0 0,1
  python3 bench/harness.py --file events.jsonl --paicha target/release/paicha --freshness
"""

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS_PER_DAY_AT_SCALE_1 = 33_000
QUERY = (
    "SELECT to_unixtime(window_start), district, source, events, suspicious, fever, "
    "cough, sore_throat, shortness_of_breath, fatigue, diarrhea "
    "FROM symptom_counts ORDER BY 1,2,3"
)
COLUMNS = ["events", "suspicious", "fever", "cough", "sore_throat",
           "shortness_of_breath", "fatigue", "diarrhea"]


# ---------------------------------------------------------------------------
# The DuckDB side.

# The counts of `symptom_counts` from a `folded` relation (window_start,
# district, source, drug_class, seen_visit, hot, sy = the symptoms counted):
# shared by the exact query and the fast path.
COUNT_FOLDED = """\
SELECT window_start, district, source,
    count(*) AS events,
    count(*) FILTER (WHERE CASE WHEN source = 'pharmacy'
                                THEN hot OR drug_class IN ('antipyretic', 'cough')
                                ELSE seen_visit AND (hot OR len(sy) > 0) END) AS suspicious,
    count(*) FILTER (WHERE hot OR list_contains(sy, 'fever')) AS fever,
    count(*) FILTER (WHERE list_contains(sy, 'cough')) AS cough,
    count(*) FILTER (WHERE list_contains(sy, 'sore_throat')) AS sore_throat,
    count(*) FILTER (WHERE list_contains(sy, 'shortness_of_breath')) AS shortness_of_breath,
    count(*) FILTER (WHERE list_contains(sy, 'fatigue')) AS fatigue,
    count(*) FILTER (WHERE list_contains(sy, 'diarrhea')) AS diarrhea
FROM folded
GROUP BY ALL
ORDER BY 1, 2, 3
"""


def registry_districts():
    """First field of each line of registry/districts.csv after the header,
    as `districts()` in tests/it/common/mod.rs reads it."""
    with open(os.path.join(ROOT, "registry", "districts.csv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    return sorted({l.split(",")[0] for l in lines[1:]})


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def duckdb_sql(path, districts):
    districts_list = ", ".join(sql_str(d) for d in districts)
    symptoms = "'fever','cough','sore_throat','shortness_of_breath','fatigue','diarrhea'"
    return f"""
WITH lines AS (
    -- Every line as text, numbered in file order (insertion order preserved).
    SELECT row_number() OVER () AS n, line
    FROM read_csv({sql_str(path)}, columns={{'line': 'VARCHAR'}}, delim=chr(1),
                  quote='', escape='', header=false, auto_detect=false,
                  max_line_size=100000000)
),
parsed AS (
    -- serde_json accepts what json_valid accepts minus trailing commas and
    -- NaN/Infinity-like literals (checked outside string literals).
    SELECT n, j
    FROM (SELECT n, line, CASE WHEN json_valid(line) THEN CAST(line AS JSON) END AS j
          FROM lines)
    WHERE CASE WHEN j IS NOT NULL THEN json_type(j) = 'OBJECT' ELSE false END
      AND NOT regexp_matches(
            regexp_replace(
              regexp_replace(line, '"(?:[^"\\\\]|\\\\.)*"', '""', 'g'),
              'true|false|null', '', 'g'),
            ',\\s*[\\]}}]|[a-df-zA-DF-Z]')
),
fields AS (
    SELECT n, f[1] AS event_id, f[2] AS event_time, f[3] AS district, f[4] AS source,
           f[5] AS checkpoint_id, f[6] AS person_id, f[7] AS temperature_c, f[8] AS mask,
           f[9] AS symptoms, f[10] AS disposition, f[11] AS pharmacy_id,
           f[12] AS drug_class, f[13] AS quantity, f[14] AS grid_id,
           f[15] AS household_id, f[16] AS visit_kind, f[17] AS outcome,
           f[18] AS observation
    FROM (SELECT n, json_extract(j, ['$.event_id', '$.event_time', '$.district',
              '$.source', '$.checkpoint_id', '$.person_id', '$.temperature_c',
              '$.mask', '$.symptoms', '$.disposition', '$.pharmacy_id',
              '$.drug_class', '$.quantity', '$.grid_id', '$.household_id',
              '$.visit_kind', '$.outcome', '$.observation']) AS f
          FROM parsed)
),
typed AS (
    -- JSON values to SQL: a string field is NULL unless the value is a string
    -- (serde's as_str); a number NULL unless a number (as_f64).  A missing key
    -- and JSON null both read as SQL NULL for temperature_c (serde's f()).
    SELECT n,
        CASE WHEN json_type(event_id) = 'VARCHAR' THEN event_id ->> '$' END AS event_id,
        CASE WHEN json_type(event_time) = 'VARCHAR' THEN event_time ->> '$' END AS event_time,
        CASE WHEN json_type(district) = 'VARCHAR' THEN district ->> '$' END AS district,
        CASE WHEN json_type(source) = 'VARCHAR' THEN source ->> '$' END AS source,
        json_type(checkpoint_id) = 'VARCHAR' AND (checkpoint_id ->> '$') <> '' AS checkpoint_id_ok,
        json_type(person_id) = 'VARCHAR' AND (person_id ->> '$') <> '' AS person_id_ok,
        json_type(pharmacy_id) = 'VARCHAR' AND (pharmacy_id ->> '$') <> '' AS pharmacy_id_ok,
        json_type(grid_id) = 'VARCHAR' AND (grid_id ->> '$') <> '' AS grid_id_ok,
        json_type(household_id) = 'VARCHAR' AND (household_id ->> '$') <> '' AS household_id_ok,
        temperature_c IS NULL OR json_type(temperature_c) = 'NULL' AS temp_null,
        CASE WHEN json_type(temperature_c) IN ('DOUBLE', 'BIGINT', 'UBIGINT')
             THEN CAST(temperature_c AS DOUBLE) END AS temp,
        json_type(mask) = 'BOOLEAN' AS mask_ok,
        json_type(symptoms) = 'ARRAY' AS symptoms_is_array,
        CASE WHEN json_type(symptoms) = 'ARRAY' THEN json_array_length(symptoms) END AS symptoms_len,
        CASE WHEN json_type(symptoms) = 'ARRAY'
             THEN list_filter(
                    list_transform(json_extract(symptoms, '$[*]'),
                        lambda x: CASE WHEN json_type(x) = 'VARCHAR' THEN x ->> '$' END),
                    lambda x: x IS NOT NULL)
             ELSE [] END AS symptom_strs,
        CASE WHEN json_type(disposition) = 'VARCHAR' THEN disposition ->> '$' END AS disposition,
        CASE WHEN json_type(drug_class) = 'VARCHAR' THEN drug_class ->> '$' END AS drug_class,
        CASE WHEN json_type(quantity) IN ('BIGINT', 'UBIGINT')
             THEN TRY_CAST(quantity ->> '$' AS BIGINT) END AS quantity,
        CASE WHEN json_type(visit_kind) = 'VARCHAR' THEN visit_kind ->> '$' END AS visit_kind,
        CASE WHEN json_type(outcome) = 'VARCHAR' THEN outcome ->> '$' END AS outcome,
        CASE WHEN json_type(observation) = 'VARCHAR' THEN observation ->> '$' END AS observation
    FROM fields
),
timed AS (
    -- chrono::DateTime::parse_from_rfc3339, piece by piece.
    SELECT *,
        regexp_extract(event_time,
            '^([0-9]{{4}})-([0-9]{{2}})-([0-9]{{2}})[Tt ]([0-9]{{2}}):([0-9]{{2}}):([0-9]{{2}})(\\.[0-9]+)?([Zz]|([+\\-\u2212])([0-9]{{2}}):([0-5][0-9]))$',
            ['y', 'mo', 'd', 'h', 'mi', 's', 'frac', 'tz', 'sign', 'oh', 'om']) AS ts
    FROM typed
),
nums AS (
    SELECT *,
        CASE WHEN ts.y <> '' THEN CAST(ts.y AS INTEGER) END AS y,
        CASE WHEN ts.y <> '' THEN CAST(ts.mo AS INTEGER) END AS mo,
        CASE WHEN ts.y <> '' THEN CAST(ts.d AS INTEGER) END AS d,
        CASE WHEN ts.y <> '' THEN CAST(ts.h AS INTEGER) END AS h,
        CASE WHEN ts.y <> '' THEN CAST(ts.mi AS INTEGER) END AS mi,
        CASE WHEN ts.y <> '' THEN CAST(ts.s AS INTEGER) END AS s,
        CASE WHEN ts.sign = '' THEN 0
             WHEN ts.sign = '+' THEN CAST(ts.oh AS INTEGER) * 3600 + CAST(ts.om AS INTEGER) * 60
             ELSE -(CAST(ts.oh AS INTEGER) * 3600 + CAST(ts.om AS INTEGER) * 60) END AS offset_s,
        CASE WHEN ts.sign = '' THEN 0 ELSE CAST(ts.oh AS INTEGER) END AS oh,
        CASE WHEN ts.y <> '' THEN CAST(ts.y AS DOUBLE) - (CAST(ts.mo AS INTEGER) <= 2)::INTEGER END AS yy
    FROM timed
),
valid AS (
    SELECT n, event_id, district, source, temp, symptom_strs, drug_class, outcome,
        -- days_from_civil (proleptic Gregorian), then UTC epoch seconds.
        (  (365 * yy + floor(yy / 4) - floor(yy / 100) + floor(yy / 400)
            + (153 * ((mo + 9) % 12) + 2) // 5 + d - 1 - 719468)::BIGINT * 86400
         + h * 3600 + mi * 60 + least(s, 59) - offset_s) AS epoch
    FROM nums
    WHERE event_id IS NOT NULL AND length(event_id) BETWEEN 1 AND 64
      AND regexp_full_match(event_id, '[A-Za-z0-9.\\-_:]+')
      AND y IS NOT NULL
      AND mo BETWEEN 1 AND 12
      AND d BETWEEN 1 AND CASE
            WHEN mo IN (1, 3, 5, 7, 8, 10, 12) THEN 31
            WHEN mo IN (4, 6, 9, 11) THEN 30
            WHEN (y % 4 = 0 AND y % 100 <> 0) OR y % 400 = 0 THEN 29
            ELSE 28 END
      AND h <= 23 AND mi <= 59 AND s <= 60 AND oh <= 23
      AND district IN ({districts_list})
      AND CASE source
        WHEN 'checkpoint' THEN
            checkpoint_id_ok AND person_id_ok
            AND temp BETWEEN 34.0 AND 43.0
            AND mask_ok
            AND symptoms_is_array
            AND len(list_distinct(list_filter(symptom_strs, lambda x: x IN ({symptoms})))) = symptoms_len
            AND disposition IN ('pass', 'referred', 'turned_back', 'isolated')
        WHEN 'pharmacy' THEN
            pharmacy_id_ok AND person_id_ok
            AND drug_class IN ('antipyretic', 'cough', 'antiviral', 'antibiotic', 'other')
            AND quantity >= 1
            AND (temp_null OR temp BETWEEN 34.0 AND 43.0)
        WHEN 'door_visit' THEN
            grid_id_ok AND household_id_ok AND person_id_ok
            AND visit_kind IN ('screening', 'follow_up')
            AND outcome IN ('seen', 'not_home', 'refused')
            AND (temp_null OR temp BETWEEN 34.0 AND 43.0)
            AND (outcome = 'seen' OR temp_null)
            AND symptoms_is_array
            AND len(list_distinct(list_filter(symptom_strs, lambda x: x IN ({symptoms})))) = symptoms_len
            AND observation IN ('none', 'home_isolation', 'centralized_observation',
                                'medical_observation', 'released')
        ELSE false END
),
firsts AS (
    SELECT * FROM valid
    QUALIFY row_number() OVER (PARTITION BY source, event_id ORDER BY n) = 1
),
folded AS (
    -- window = epoch.div_euclid(3600) * 3600
    SELECT epoch - ((epoch % 3600) + 3600) % 3600 AS window_start, district, source, drug_class,
        seen_visit,
        seen_visit AND coalesce(temp >= CAST(37.3 AS DOUBLE), false) AS hot,
        CASE WHEN seen_visit THEN symptom_strs ELSE [] END AS sy
    FROM (SELECT *, source <> 'door_visit' OR outcome = 'seen' AS seen_visit FROM firsts)
)
{COUNT_FOLDED}"""


def duckdb_fast_sql(path, districts):
    """The table as an analyst would write it in DuckDB: typed `read_json`,
    malformed lines skipped, no validation beyond the column types."""
    districts_list = ", ".join(sql_str(d) for d in districts)
    return f"""
WITH t AS (
    SELECT * FROM read_json({sql_str(path)}, format='newline_delimited', ignore_errors=true,
        columns={{event_id: 'VARCHAR', event_time: 'VARCHAR', district: 'VARCHAR',
                  source: 'VARCHAR', outcome: 'VARCHAR', temperature_c: 'DOUBLE',
                  symptoms: 'VARCHAR[]', drug_class: 'VARCHAR'}})
),
firsts AS (
    SELECT DISTINCT ON (source, event_id) *, try_cast(event_time AS TIMESTAMPTZ) AS ts
    FROM t
    WHERE source IN ('checkpoint', 'pharmacy', 'door_visit')
      AND district IN ({districts_list}) AND event_id IS NOT NULL
),
folded AS (
    SELECT CAST(floor(epoch(ts) / 3600) * 3600 AS BIGINT) AS window_start, district, source,
        drug_class, seen_visit,
        seen_visit AND coalesce(temperature_c >= 37.3, false) AS hot,
        CASE WHEN seen_visit THEN coalesce(symptoms, []) ELSE [] END AS sy
    FROM (SELECT *, source <> 'door_visit' OR outcome = 'seen' AS seen_visit
          FROM firsts WHERE ts IS NOT NULL)
)
{COUNT_FOLDED}"""


def duckdb_child(mode, path, out_csv):
    """Runs in a child process: one DuckDB query, rows written as CSV."""
    import duckdb
    con = duckdb.connect()
    sql = duckdb_sql if mode == "exact" else duckdb_fast_sql
    rows = con.execute(sql(os.path.abspath(path), registry_districts())).fetchall()
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        for r in rows:
            w.writerow(r)


# ---------------------------------------------------------------------------
# Processes, time and memory.

def run_measured(cmd, env=None):
    """Runs cmd; returns (wall seconds, peak RSS in KiB or None, stdout bytes)."""
    if os.path.exists("/usr/bin/time"):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t0 = time.perf_counter()
            p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t0
            report = open(tf.name).read()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
        rss = int(m.group(1)) if m else None
    else:
        peak = [0]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def poll():
            while proc.poll() is None:
                try:
                    with open(f"/proc/{proc.pid}/status") as f:
                        for l in f:
                            if l.startswith("VmHWM:"):
                                peak[0] = max(peak[0], int(l.split()[1]))
                except OSError:
                    pass
                time.sleep(0.02)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        th.join()
        p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        rss = peak[0] or None
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode(errors="replace"))
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return wall, rss, p.stdout, p.stderr


def parse_rows(text):
    """CSV rows -> {(window, district, source): (8 counts)}."""
    out = {}
    for r in csv.reader(io.StringIO(text)):
        if not r:
            continue
        key = (int(float(r[0])), r[1], r[2])
        out[key] = tuple(int(x) for x in r[3:11])
    return out


# ---------------------------------------------------------------------------
# Inputs.

def target_of(paicha):
    """(target dir, profile) of a binary at TARGET/PROFILE/paicha."""
    profile_dir = os.path.dirname(os.path.abspath(paicha))
    return os.path.dirname(profile_dir), os.path.basename(profile_dir)


def ensure_binary(paicha, example=None):
    """Builds the binary (or one of its examples) if it is not there yet."""
    target, profile = target_of(paicha)
    path = paicha if example is None else os.path.join(target, profile, "examples", example)
    if os.path.exists(path):
        return path
    cmd = ["cargo", "build", "--quiet"]
    if profile == "release":
        cmd.append("--release")
    elif profile != "debug":
        raise SystemExit(f"no binary at {path}")
    if example:
        cmd += ["--example", example]
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=target))
    return path


def simulate(paicha, events, workdir):
    """Writes about `events` events; 1 day at scale 1 is ~33k events."""
    days = max(1, min(22, math.ceil(events / EVENTS_PER_DAY_AT_SCALE_1)))
    scale = events / (EVENTS_PER_DAY_AT_SCALE_1 * days)
    path = os.path.join(workdir, "events.jsonl")
    for _ in range(3):
        subprocess.run([paicha, "simulate", "--out", path, "--days", str(days),
                        "--scale", f"{scale:.4f}", "--seed", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
        if abs(lines - events) <= 0.1 * events:
            break
        scale *= events / lines  # the epidemic curve is not flat: rescale
    print(f"simulated: --days {days} --scale {scale:.4f} --seed 1 -> {lines} lines")
    return path


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# ---------------------------------------------------------------------------

def compare(got, want):
    """Rows that differ between two tables, as printable lines."""
    return [f"  {k}: duckdb {want.get(k)}  paicha {got.get(k)}"
            for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]


def run_duckdb(mode, path, work):
    out_csv = os.path.join(work, f"duckdb-{mode}.csv")
    s, rss, _, _ = run_measured(
        [sys.executable, os.path.abspath(__file__), "--duckdb-child", mode, path, out_csv])
    return s, rss, parse_rows(open(out_csv).read())


def run_stages(paicha, path):
    stages = ensure_binary(paicha, "stages")
    _, rss, out, _ = run_measured([stages, path, "--json"])
    text = out.decode()
    table = "\n".join(l for l in text.splitlines() if not l.startswith("{"))
    figures = json.loads(text.strip().splitlines()[-1])
    return table, figures, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--events", type=int, default=1_000_000, help="approximate events to simulate")
    ap.add_argument("--file", help="reuse this JSON-lines file instead of simulating")
    ap.add_argument("--paicha", default=os.path.join(ROOT, "target", "debug", "paicha"),
                    help="the binary to measure (its examples are built next to it)")
    ap.add_argument("--cpus", nargs="+", metavar="LIST",
                    help="one replay per CPU list, pinned with taskset (e.g. 0 0,1)")
    ap.add_argument("--smoke", action="store_true", help="~30k events, correctness only")
    ap.add_argument("--no-duckdb", action="store_true", help="paicha only (scaling runs)")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage timings")
    ap.add_argument("--freshness", action="store_true", help="also run the freshness example")
    ap.add_argument("--json", metavar="OUT", help="also write the figures to OUT as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--duckdb-child", nargs=3, metavar=("MODE", "FILE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.duckdb_child:
        duckdb_child(*a.duckdb_child)
        return 0

    if not a.no_duckdb:
        try:
            import duckdb  # noqa: F401
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "duckdb"], check=True)

    paicha = ensure_binary(os.path.abspath(a.paicha))
    work = tempfile.mkdtemp(prefix="paicha-harness.")
    figures = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
               "binary": paicha}
    try:
        path = os.path.abspath(a.file) if a.file else simulate(
            paicha, 30_000 if a.smoke else a.events, work)
        lines = count_lines(path)
        figures["input"] = {"file": path, "lines": lines, "bytes": os.path.getsize(path)}
        print(f"input: {path}: {lines:,} lines, {os.path.getsize(path) / 2**20:,.0f} MiB")
        print(f"machine: {figures['machine']}; binary: {paicha}")

        # 1. paicha end to end, once per CPU set.
        env = dict(os.environ, PAICHA_HMAC_KEY="bench")
        env.pop("PAICHA_DATA", None)
        runs = []
        got = None
        for cpus in (a.cpus or [None]):
            data = os.path.join(work, "data")
            shutil.rmtree(data, ignore_errors=True)
            pin = ["taskset", "-c", cpus] if cpus else []
            run_s, run_rss, run_out, run_err = run_measured(
                pin + [paicha, "run", "--replay", path, "--data", data], env=env)
            m = re.search(r"(\d+) events counted", (run_out + run_err).decode(errors="replace"))
            events = int(m.group(1)) if m else lines
            sql_s, _, sql_out, _ = run_measured(
                [paicha, "sql", "--data", data, "--format", "csv", QUERY], env=env)
            body = sql_out.decode().split("\n", 1)[1] if b"\n" in sql_out else ""
            rows = parse_rows(body)
            if got is not None and rows != got:
                raise SystemExit(f"replays on different CPUs gave different tables ({cpus})")
            got = rows
            run = {"cpus": cpus or "all", "seconds": run_s, "events": events,
                   "events_per_second": events / run_s, "lines_per_second": lines / run_s,
                   "peak_rss_kib": run_rss, "sql_seconds": sql_s}
            runs.append(run)
            print(f"paicha run --replay ({'CPUs ' + cpus if cpus else 'all CPUs'}): {run_s:.2f} s, "
                  f"{events / run_s:,.0f} events/s ({lines / run_s:,.0f} lines/s), "
                  f"peak RSS {fmt_kib(run_rss)}; then the SQL query {sql_s:.2f} s")
        figures["paicha"] = runs
        events = runs[0]["events"]

        # 2. Stages alone.
        if not a.no_stages:
            table, stage_figures, stage_rss = run_stages(paicha, path)
            figures["stages"] = stage_figures
            print("stages, each alone on one thread (examples/stages.rs):")
            print("  " + table.replace("\n", "\n  "))
            if stage_figures["valid"] < 0.9 * lines:
                raise SystemExit("the stages example decoded fewer than 90% of the lines")

        # 3. DuckDB.
        ok = True
        if not a.no_duckdb:
            dk_s, dk_rss, want = run_duckdb("exact", path, work)
            diffs = compare(got, want)
            ok = not diffs
            best = min(r["seconds"] for r in runs)
            figures["duckdb"] = {"version": duckdb_version(), "seconds": dk_s,
                                 "events_per_second": events / dk_s, "peak_rss_kib": dk_rss,
                                 "rows": len(want), "equal": ok, "ratio": best / dk_s}
            print(f"rows: paicha {len(got)}, duckdb {len(want)}; tables equal: "
                  f"{'yes' if ok else 'NO'}")
            if diffs:
                print(f"{len(diffs)} rows differ; first:\n" + "\n".join(diffs[:10]))
            print(f"duckdb {duckdb_version()}, same table with the contract's validation: "
                  f"{dk_s:.2f} s, {events / dk_s:,.0f} events/s, peak RSS {fmt_kib(dk_rss)}")
            print(f"ratio paicha/duckdb (time, best paicha run): {best / dk_s:.2f}")
            if not a.smoke:
                f_s, f_rss, fast = run_duckdb("fast", path, work)
                fast_diffs = len(compare(got, fast))
                figures["duckdb_fast"] = {"seconds": f_s, "events_per_second": events / f_s,
                                          "peak_rss_kib": f_rss, "rows_differing": fast_diffs}
                print(f"duckdb fast path (typed read_json, no validation): {f_s:.2f} s, "
                      f"{events / f_s:,.0f} events/s, peak RSS {fmt_kib(f_rss)}, "
                      f"{fast_diffs} of {len(fast)} rows differ from paicha's; "
                      f"ratio paicha/duckdb-fast {best / f_s:.2f}")

        # 4. Freshness of the live mode.
        if a.freshness:
            fresh = ensure_binary(paicha, "freshness")
            _, _, out, _ = run_measured([fresh, "20000", "200"])
            figures["freshness"] = out.decode()
            print("freshness (examples/freshness.rs, 20,000 events/s offered, 200 probes):")
            print("  " + out.decode().strip().replace("\n", "\n  "))

        if a.json:
            with open(a.json, "w") as f:
                json.dump(figures, f, indent=2)
        if a.smoke:
            print(f"smoke: {'ok' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for l in f:
                if l.startswith("model name"):
                    model = l.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs {model}, {mem:.0f} GiB".replace("  ", " ")


def fmt_kib(k):
    return "n/a" if k is None else f"{k / 1024:.0f} MiB"


def duckdb_version():
    import duckdb
    return duckdb.__version__


if __name__ == "__main__":
    sys.exit(main())

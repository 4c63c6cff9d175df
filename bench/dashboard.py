#!/usr/bin/env python3
"""Latency of the command-center dashboard's queries over the PostgreSQL wire.

Usage: bench/dashboard.py PORT [FROM TO] [--clients N] [--rounds R]

Runs every panel query of deploy/grafana/dashboards/command-center.json, with
Grafana's PostgreSQL macros expanded as Grafana expands them, against a
`paicha serve` on 127.0.0.1:PORT: first one client (R rounds of the whole
dashboard), then N clients at once (each R rounds), each client on its own
connection as Grafana's pool would. Prints p50/p95 per query and overall.
Needs psycopg (pip install 'psycopg[binary]').
"""

import argparse
import json
import re
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy/grafana/dashboards/command-center.json"


def seconds(interval: str) -> int:
    n, unit = int(interval[:-1]), interval[-1]
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def expand(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macro engine, for the macros the dashboards use
    (pkg/tsdb/grafana-postgresql-datasource/macros.go)."""
    f = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    t = end.strftime("%Y-%m-%dT%H:%M:%SZ")

    def group(m, alias):
        col, interval = m.group(1).strip(), m.group(2).strip().strip("'")
        s = seconds(interval)
        out = f"floor(extract(epoch from {col})/{s})*{s}"
        return out + ' AS "time"' if alias else out

    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)", lambda m: group(m, True), sql)
    sql = re.sub(r"\$__timeGroup\(([^,]+),\s*([^)]+)\)", lambda m: group(m, False), sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1).strip()} BETWEEN '{f}' AND '{t}'", sql)
    sql = re.sub(r"\$__time\(([^)]+)\)", lambda m: f'{m.group(1).strip()} AS "time"', sql)
    sql = sql.replace("$__timeFrom()", f"'{f}'").replace("$__timeTo()", f"'{t}'")
    return sql


def queries(start, end):
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            if "rawSql" in t:
                out.append((f'{p["title"]} [{t.get("refId", "A")}]', expand(t["rawSql"], start, end)))
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def client(port, qs, rounds, out, barrier=None):
    with psycopg.connect(host="127.0.0.1", port=port, user="grafana", dbname="paicha", autocommit=True) as conn:
        if barrier:
            barrier.wait()
        for _ in range(rounds):
            for name, sql in qs:
                t0 = time.perf_counter()
                conn.execute(sql).fetchall()
                out.append((name, (time.perf_counter() - t0) * 1000))


def report(label, samples):
    by = {}
    for name, ms in samples:
        by.setdefault(name, []).append(ms)
    print(f"\n{label}: {len(samples)} queries")
    print(f"{'query':60} {'p50 ms':>8} {'p95 ms':>8}")
    for name, xs in by.items():
        print(f"{name[:60]:60} {pct(xs, .5):8.1f} {pct(xs, .95):8.1f}")
    all_ms = [ms for _, ms in samples]
    print(f"{'all':60} {pct(all_ms, .5):8.1f} {pct(all_ms, .95):8.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("start", nargs="?", default="2020-01-20T00:00:00Z")
    ap.add_argument("end", nargs="?", default="2020-02-19T00:00:00Z")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    qs = queries(parse(a.start), parse(a.end))
    # Warm-up: the first scan of each file reads its footer.
    client(a.port, qs, 1, [])
    single = []
    client(a.port, qs, a.rounds, single)
    report("1 client", single)
    many = []
    barrier = threading.Barrier(a.clients)
    threads = [
        threading.Thread(target=client, args=(a.port, qs, a.rounds, many, barrier)) for _ in range(a.clients)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    report(f"{a.clients} clients at once", many)
    print(f"\n{len(many)} queries in {wall:.1f} s: {len(many) / wall:.0f} queries/s")


if __name__ == "__main__":
    main()

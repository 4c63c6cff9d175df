#!/usr/bin/env python3
"""One vs several `paicha run` instances in one consumer group on one broker (issue #9).

What it does
------------
1. Takes a JSON-lines file (`--file`) or simulates about `--events` events
   (`paicha simulate`, the days/scale choice of bench/harness.py), starts
   `paicha broker --partitions P` (librdkafka's in-process mock cluster) and
   fills its topics with `paicha run --brokers B --group fill --replay FILE
   --data FILL`, which produces the file (pseudonymized, batched) and
   consumes it itself.  FILL is the reference: the expected total is the sum
   of `SELECT COUNT(*)` of the five raw tables there.
2. For each instance count k (`--instances`, default 1 2), `--repeat` times,
   each time with a new group and a new empty shared data directory: starts
   k instances (`--instance i0`, `i1`, ...; `--checkpoint-interval 500ms`),
   each as soon as the one before has opened the shared directory (printed
   its SQL address, ~0.1 s; binaries before 55517a7 started at the same
   moment raced on `_paicha/` files and one exited; `--simultaneous`
   starts them together), and records
     t_start     just before the first process is started;
     t_first     when a first instance runs partitions (`paicha_partition_tasks`
                 > 0; /metrics polled every 50 ms): consumption starts;
     t_assigned  when every instance runs partitions and together they run
                 all P (sum of `paicha_partition_tasks` == P, each > 0);
     t_counted   when the instances' `paicha_events_accepted_total` add up
                 to the expected total (every event consumed and counted);
     t_committed when every partition task's manifest in the shared
                 directory (`partition=N/_paicha/manifest.json`, re-read when
                 it changes) has the fill's end offsets of the five source
                 topics: everything is committed, Parquet included;
     t_sql       when the five raw tables through instance 0's `POST /sql`
                 add up to the expected total, polled every 100 ms from
                 t_committed on.  Not during the run: one such count over
                 every task's files took 0.17-0.47 s and about 0.25
                 CPU-seconds (`paicha serve` on a finished 400k-event
                 directory of 64 tasks, 3,415 files), so polling every
                 100 ms could take most of a core from instance 0
                 (`--sql-during-run` polls from the first assignment on).
   Throughput = (events - counted at t_first) / (t_counted - t_first)
   ("counted") and the same to t_committed ("committed"); the first is
   what the consumers keep up with, the second includes the Parquet of the
   last checkpoint (up to one `--checkpoint-interval` later).
   Each instance's CPU time (utime+stime of /proc/PID/stat), the broker's,
   the machine's busy time (/proc/stat) and this script's are read at
   t_first and t_committed, peak RSS (VmHWM) at the end; then the instances
   get SIGTERM (they must exit 0) and the shared directory is counted once
   more with `paicha sql --data`.
   A run in which an instance got a second assignment (it missed the
   group's first generation, so another consumed alone for a while) is
   exact but not a k-instance measurement: it is kept in the JSON and done
   again with a new group (`--attempts`).
3. `--cpus 0 1` pins instance i to the i-th CPU list with taskset (k=1 on
   core 0; k=2 on cores 0 and 1); the broker and the filler stay unpinned.
4. Prints a markdown table per k (medians over the repeats) and the ratio of
   the k=2 to the k=1 rates; `--json OUT` writes every raw figure.
5. Exits 1 if any run's total (metrics, instance 0's SQL, or the shared
   directory after shutdown) differs from the expected total, e.g. data lost
   to the mock cluster's retention (it keeps only the newest 5 MiB of each
   partition; producers key by district, so the biggest district bounds
   the input: 415k events (`paicha simulate --days 13 --scale 0.9324`)
   stayed exact at 64 partitions, the biggest partition then holding about
   4.5 MiB).

Usage
-----
  python3 bench/scale_out.py --paicha target/release/paicha --events 400000 --repeat 5
  python3 bench/scale_out.py --paicha target/release/paicha --events 400000 --repeat 5 --cpus 0 1
  python3 bench/scale_out.py --paicha target/debug/paicha --events 20000 --repeat 1   # quick check
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (simulate(), machine(): same input choice as the harness)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_TABLES = ["checkpoint_events", "pharmacy_events", "door_visits", "case_events", "bed_events"]
TOTAL_SQL = "SELECT " + " + ".join(f"(SELECT COUNT(*) FROM {t})" for t in RAW_TABLES) + " AS n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SQL_LINE = r"SQL at http://([0-9.]+:[0-9]+)/sql"


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# Processes.

def start(cmd, log_path, env, cpus=None):
    pin = ["taskset", "-c", cpus] if cpus else []
    log = open(log_path, "wb")
    p = subprocess.Popen(pin + cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                         stdin=subprocess.DEVNULL)
    p.log_path = log_path
    p.log_file = log
    return p


def stop(p, timeout=30):
    """SIGTERM, then wait; SIGKILL after `timeout`. Returns the exit status."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    p.log_file.close()
    return p.returncode


def wait_for_line(p, pattern, timeout=60):
    """Waits until the process's log has a line matching `pattern`; returns the match."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(p.log_path, "rb") as f:
            m = rx.search(f.read().decode(errors="replace"))
        if m:
            return m
        if p.poll() is not None:
            raise Failure(f"{p.args} exited ({p.returncode}) before printing {pattern!r}:\n"
                          + tail(p.log_path))
        time.sleep(0.02)
    raise Failure(f"{p.args} did not print {pattern!r} within {timeout} s:\n" + tail(p.log_path))


def tail(path, n=20):
    with open(path, "rb") as f:
        return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


# ---------------------------------------------------------------------------
# HTTP.

def get_metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    tasks = accepted = rebalances = 0
    for line in text.splitlines():
        if line.startswith("paicha_partition_tasks "):
            tasks = int(float(line.split()[-1]))
        elif line.startswith("paicha_rebalances_total "):
            rebalances = int(float(line.split()[-1]))
        elif line.startswith("paicha_events_accepted_total{"):
            accepted += int(float(line.split()[-1]))
    return tasks, accepted, rebalances


def sql_total(addr, errors):
    """The raw tables' total through `POST /sql`; None (and the error kept
    in `errors`) when the query fails."""
    req = urllib.request.Request(f"http://{addr}/sql", data=TOTAL_SQL.encode(), method="POST",
                                 headers={"Accept": "text/csv"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            lines = r.read().decode().split()
    except urllib.error.HTTPError as e:
        errors.append(f"HTTP {e.code}: {e.read().decode(errors='replace')[:500]}")
        return None
    return int(lines[1])


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy (not idle or iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


SOURCE_TOPICS = {"screening.checkpoint", "screening.pharmacy", "screening.door_visit",
                 "screening.case", "screening.bed"}


def task_manifest(data, partition):
    return os.path.join(data, f"partition={partition}", "_paicha", "manifest.json")


def end_offsets(fill_dir, partitions):
    """{partition: {topic: next offset}} of the fill replay's committed
    manifests (it consumed everything): the end of each source partition."""
    ends = {}
    for p in range(partitions):
        try:
            with open(task_manifest(fill_dir, p)) as f:
                m = json.load(f)
        except FileNotFoundError:
            continue
        e = {o["topic"]: o["next"] for o in m.get("offsets", [])
             if o["topic"] in SOURCE_TOPICS and o["next"] > 0}
        if e:
            ends[p] = e
    return ends


class Committed:
    """Whether every partition task's committed manifest in a shared
    directory covers the end offsets (re-reads only manifests that changed)."""

    def __init__(self, data, ends):
        self.data, self.todo, self.seen = data, dict(ends), {}

    def done(self):
        for p, e in list(self.todo.items()):
            path = task_manifest(self.data, p)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self.seen.get(p) == key:
                continue
            self.seen[p] = key
            try:
                with open(path) as f:
                    m = json.load(f)
            except (OSError, ValueError):
                continue
            got = {o["topic"]: o["next"] for o in m.get("offsets", [])}
            if all(got.get(t, 0) >= n for t, n in e.items()):
                del self.todo[p]
        return not self.todo


def dir_total(paicha, data, env):
    total = 0
    for t in RAW_TABLES:
        out = subprocess.run([paicha, "sql", "--data", data, "--format", "csv",
                              f"SELECT COUNT(*) FROM {t}"],
                             env=env, check=True, capture_output=True).stdout.decode()
        total += int(out.split()[1])
    return total


# ---------------------------------------------------------------------------
# One run: k instances of a fresh group.

def one_run(a, paicha, env, broker, brokers, k, group, data, logs, expected, ends):
    procs = []
    load_before = loadavg()
    b_cpu0 = cpu_seconds(broker.pid)
    t_start = time.monotonic()
    try:
        addrs = []
        for i in range(k):
            cmd = [paicha, "run", "--brokers", brokers, "--group", group, "--instance", f"i{i}",
                   "--data", data, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0",
                   "--checkpoint-interval", a.checkpoint_interval]
            cpus = a.cpus[i % len(a.cpus)] if a.cpus else None
            procs.append(start(cmd, os.path.join(logs, f"{group}-i{i}.log"), env, cpus))
            if not a.simultaneous:
                # Before 55517a7, instances opening one shared directory at
                # the same moment raced on the fixed temporary names of its
                # _paicha/ files (manifest, registries): the loser exited
                # with "cannot commit manifest" or "cannot move file into
                # …/registry/districts.csv". So each starts once the one
                # before has opened it (it prints its SQL address after).
                addrs.append(wait_for_line(procs[-1], SQL_LINE).group(1))
        if a.simultaneous:
            addrs = [wait_for_line(p, SQL_LINE).group(1) for p in procs]
        t_http = time.monotonic()

        t_first = t_assigned = t_counted = t_committed = t_done = None
        at_first = at_assigned = None  # events counted by then
        committed = Committed(data, ends)
        cpu = {}  # instant -> ([instance CPU s], broker CPU s, machine busy s, own CPU s)
        sql_errors = []
        sql_polls = 0

        def sample(name):
            cpu[name] = ([cpu_seconds(p.pid) for p in procs], cpu_seconds(broker.pid),
                         busy_cpu_seconds(), self_cpu_seconds())

        last_progress, last_seen = time.monotonic(), (-1, -1)
        sql_n = -1
        next_sql = 0.0
        while True:
            now = time.monotonic()
            for p in procs:
                if p.poll() is not None:
                    raise Failure(f"instance exited ({p.returncode}) mid-run:\n" + tail(p.log_path))
            if t_counted is None:
                ms = [get_metrics(x) for x in addrs]
                tasks = [m[0] for m in ms]
                accepted = sum(m[1] for m in ms)
                if t_first is None and sum(tasks) > 0:
                    t_first, at_first = now, accepted
                    sample("first")
                if t_assigned is None and sum(tasks) == a.partitions and all(t > 0 for t in tasks):
                    t_assigned, at_assigned = now, accepted
                if accepted > expected:
                    raise Failure(f"instances counted {accepted} events, expected {expected}")
                if accepted == expected and t_assigned is not None:
                    t_counted = now
                    sample("counted")
            if t_counted is not None and t_committed is None and committed.done():
                t_committed = now
                sample("committed")
            # Instance 0's SQL is asked once every task has committed (or,
            # with --sql-during-run, all along): one count over every
            # task's files costs that instance a quarter of a CPU-second.
            sql_now = t_committed is not None or (a.sql_during_run and t_first is not None)
            if sql_now and t_done is None and now >= next_sql:
                next_sql = now + 0.1
                sql_polls += 1
                n_ = sql_total(addrs[0], sql_errors)
                if n_ is None:
                    # Kept in the run's figures; the next poll asks again.
                    print(f"  (instance 0's SQL failed: {sql_errors[-1]})", flush=True)
                    if len(sql_errors) > 20:
                        raise Failure("instance 0's SQL failed 20 times: " + sql_errors[-1])
                else:
                    sql_n = n_
                    if sql_n == expected:
                        t_done = time.monotonic()
                        sample("done")
                    if sql_n > expected:
                        raise Failure(f"instance 0's SQL sees {sql_n} events, expected {expected}")
            if None not in (t_counted, t_committed, t_done):
                break
            progress = (accepted, sql_n, len(committed.todo))
            if progress != last_seen:
                last_seen, last_progress = progress, now
            elif now - last_progress > a.stall:
                raise Failure(
                    f"no progress for {a.stall:.0f} s: the instances counted {accepted} events "
                    f"(tasks {tasks}), instance 0's SQL sees {sql_n}, expected {expected}; "
                    f"{len(committed.todo)} tasks have not committed their end offsets "
                    "(data lost to the mock cluster's 5 MiB retention per partition?)")
            time.sleep(0.05)

        sample("end")
        rss = [peak_rss_kib(p.pid) for p in procs]
        ms = [get_metrics(x) for x in addrs]
    finally:
        statuses = [stop(p) for p in procs]
    after = dir_total(paicha, data, env)
    if after != expected:
        raise Failure(f"after shutdown the shared directory holds {after} events, expected {expected}")
    if any(s != 0 for s in statuses):
        raise Failure(f"instances exited with {statuses}")

    # Consumption starts when a first instance has partitions; the events
    # counted by the time the poll saw it (up to 50 ms later) are left out.
    rest = expected - at_first
    c0, c1 = cpu["first"], cpu["committed"]
    inst_cpu = [c1[0][i] - c0[0][i] for i in range(k)]
    # CPU the rest of the machine used meanwhile (other users' builds and
    # tests): busy CPU time minus the instances', the broker's and this
    # script's.
    other = (c1[2] - c0[2]) - sum(inst_cpu) - (c1[1] - c0[1]) - (c1[3] - c0[3])
    run = {
        "k": k, "group": group, "events": expected, "loadavg_before": load_before,
        "http_s": t_http - t_start,
        "first_tasks_s": t_first - t_start,
        "assigned_s": t_assigned - t_start,
        "counted_s": t_counted - t_start,
        "committed_s": t_committed - t_start,
        "sql_s": t_done - t_start,
        "counted_at_first_tasks": at_first,
        "counted_at_assigned": at_assigned,
        # From the first assignment to: every event counted (metrics);
        # every task's checkpoint of its end offsets committed.
        "consume_s": t_counted - t_first,
        "events_per_s": rest / (t_counted - t_first),
        "commit_s": t_committed - t_first,
        "events_per_s_committed": rest / (t_committed - t_first),
        "sql_after_committed_s": t_done - t_committed,
        "sql_polls": sql_polls,
        "sql_errors": sql_errors,
        "events_per_s_from_start": expected / (t_committed - t_start),
        "instances": [
            {"name": f"i{i}", "cpus": a.cpus[i % len(a.cpus)] if a.cpus else "all",
             "cpu_s": cpu["end"][0][i], "consume_cpu_s": inst_cpu[i],
             "consume_cpu_s_to_counted": cpu["counted"][0][i] - c0[0][i],
             "peak_rss_kib": rss[i], "tasks": ms[i][0], "accepted": ms[i][1],
             "rebalances": ms[i][2]}
            for i in range(k)],
        "broker_consume_cpu_s": c1[1] - c0[1],
        "broker_run_cpu_s": cpu["end"][1] - b_cpu0,
        "events_per_instance_cpu_s": rest / sum(inst_cpu) if sum(inst_cpu) else None,
        "other_cpu_s": other,
        "machine_busy_share": (c1[2] - c0[2]) / (os.cpu_count() * (t_committed - t_first)),
        "shared_dir_total": after,
    }
    print(f"  k={k} {group}: partitions after {run['first_tasks_s']:.2f} s (every instance after "
          f"{run['assigned_s']:.2f} s, {at_assigned - at_first:,} counted meanwhile); counted in "
          f"{run['consume_s']:.2f} s ({run['events_per_s']:,.0f} events/s), committed in "
          f"{run['commit_s']:.2f} s ({run['events_per_s_committed']:,.0f}/s), in i0's SQL "
          f"{run['sql_after_committed_s']:.2f} s later; CPU s "
          + ", ".join(f"{c:.1f}" for c in inst_cpu)
          + f", broker {run['broker_consume_cpu_s']:.1f}, machine busy "
          f"{100 * run['machine_busy_share']:.0f}%; tasks "
          + "/".join(str(x["tasks"]) for x in run["instances"])
          + ", rebalances " + "/".join(str(x["rebalances"]) for x in run["instances"])
          + f"; others' CPU {other:.1f} s",
          flush=True)
    return run


# ---------------------------------------------------------------------------

def summarize(runs, ks):
    rows = []
    med = statistics.median
    for k in ks:
        rs = [r for r in runs if r["k"] == k]
        if not rs:
            continue
        insts = [x for r in rs for x in r["instances"]]
        row = {"k": k, "runs": len(rs)}
        for key in ("first_tasks_s", "consume_s", "commit_s", "events_per_s",
                    "events_per_s_committed", "events_per_s_from_start", "sql_after_committed_s",
                    "broker_consume_cpu_s", "events_per_instance_cpu_s", "other_cpu_s",
                    "machine_busy_share"):
            row[key] = med(r[key] for r in rs)
            row[key + "_range"] = (min(r[key] for r in rs), max(r[key] for r in rs))
        row["assignment_skew_s"] = med(r["assigned_s"] - r["first_tasks_s"] for r in rs)
        row["events_per_s_per_instance"] = row["events_per_s"] / k
        row["events_per_s_committed_per_instance"] = row["events_per_s_committed"] / k
        row["consume_cpu_s_per_instance"] = med(x["consume_cpu_s"] for x in insts)
        row["peak_rss_mib_per_instance"] = med(x["peak_rss_kib"] for x in insts) / 1024
        rows.append(row)
    return rows


def print_table(rows):
    def rng(r, key):
        lo, hi = r[key + "_range"]
        return f"{r[key]:,.0f} ({lo:,.0f}–{hi:,.0f})"

    print()
    print("| instances | runs | join s | counted s | events/s counted | committed s | "
          "events/s committed | per instance | CPU s per instance | events per CPU-s | "
          "machine busy | broker CPU s | peak RSS per instance | others' CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['runs']} | {r['first_tasks_s']:.2f} | {r['consume_s']:.2f} | "
              f"{rng(r, 'events_per_s')} | {r['commit_s']:.2f} | "
              f"{rng(r, 'events_per_s_committed')} | "
              f"{r['events_per_s_committed_per_instance']:,.0f} | "
              f"{r['consume_cpu_s_per_instance']:.2f} | {r['events_per_instance_cpu_s']:,.0f} | "
              f"{100 * r['machine_busy_share']:.0f}% | {r['broker_consume_cpu_s']:.2f} | "
              f"{r['peak_rss_mib_per_instance']:.0f} MiB | {r['other_cpu_s']:.1f} |")
    print("\nMedians (range) over the runs. join = start to the first partition assignment; "
          "counted = first assignment to every event counted (the instances' "
          "paicha_events_accepted_total); committed = first assignment to every task's "
          "checkpoint of its end offsets committed to the shared directory; CPU per instance, "
          "events per CPU-second of all instances, the machine's busy share and the broker's "
          "CPU over that window; others' CPU = the machine's busy CPU meanwhile minus the "
          "instances', the broker's and this script's.")
    by_k = {r["k"]: r for r in rows}
    if 1 in by_k and 2 in by_k:
        one, two = by_k[1], by_k[2]
        print("ratio two/one (medians): counted "
              f"{two['events_per_s'] / one['events_per_s']:.2f}, committed "
              f"{two['events_per_s_committed'] / one['events_per_s_committed']:.2f}")


def pair_ratios(runs, key):
    """k=2 over k=1 of each repetition (the two runs are seconds apart, so
    a drift of the machine cancels out)."""
    ones = [r[key] for r in runs if r["k"] == 1]
    twos = [r[key] for r in runs if r["k"] == 2]
    return [b / a for a, b in zip(ones, twos)]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--paicha", default=os.path.join(ROOT, "target", "debug", "paicha"))
    ap.add_argument("--events", type=int, default=200_000, help="approximate events to simulate")
    ap.add_argument("--file", help="use this JSON-lines file instead of simulating")
    ap.add_argument("--partitions", type=int, default=64, help="partitions per topic of the broker")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2], help="instance counts")
    ap.add_argument("--repeat", type=int, default=3, help="runs per instance count")
    ap.add_argument("--cpus", nargs="+", metavar="LIST",
                    help="pin instance i to the i-th CPU list with taskset (e.g. 0 1)")
    ap.add_argument("--checkpoint-interval", default="500ms")
    ap.add_argument("--simultaneous", action="store_true",
                    help="start the k instances at the same moment (by default each starts once "
                         "the previous one has opened the shared directory)")
    ap.add_argument("--sql-during-run", action="store_true",
                    help="poll instance 0's SQL every 100 ms from the first assignment on (by "
                         "default only once every task has committed: each poll costs it CPU)")
    ap.add_argument("--attempts", type=int, default=4,
                    help="tries per run to get every instance into the group's first assignment")
    ap.add_argument("--stall", type=float, default=60, help="fail after this many seconds without progress")
    ap.add_argument("--json", metavar="OUT", help="write every raw figure to OUT as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    paicha = os.path.abspath(a.paicha)
    if not os.path.exists(paicha):
        raise SystemExit(f"no binary at {paicha}")
    env = dict(os.environ, PAICHA_HMAC_KEY=os.environ.get("PAICHA_HMAC_KEY", "bench-key"))
    for v in ("PAICHA_DATA", "PAICHA_BROKERS", "PAICHA_GROUP", "PAICHA_INSTANCE", "PAICHA_STORAGE",
              "PAICHA_HTTP", "PAICHA_PG", "PAICHA_PARTITIONS", "PAICHA_CHECKPOINT_INTERVAL"):
        env.pop(v, None)
    work = tempfile.mkdtemp(prefix="paicha-scale-out.")
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    figures = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": harness.machine(), "nproc": os.cpu_count(), "binary": paicha,
               "binary_mtime": time.strftime("%Y-%m-%d %H:%M UTC",
                                             time.gmtime(os.path.getmtime(paicha))),
               "partitions": a.partitions, "cpus": a.cpus,
               "checkpoint_interval": a.checkpoint_interval, "loadavg_start": loadavg()}
    broker = None
    status = 0
    try:
        path = os.path.abspath(a.file) if a.file else harness.simulate(paicha, a.events, work)
        lines = harness.count_lines(path)
        figures["input"] = {"file": path, "lines": lines, "bytes": os.path.getsize(path)}
        print(f"input: {path}: {lines:,} lines, {os.path.getsize(path) / 2**20:,.1f} MiB")
        print(f"machine: {figures['machine']}; load average {figures['loadavg_start']}; "
              f"binary: {paicha} ({figures['binary_mtime']})", flush=True)

        broker = start([paicha, "broker", "--partitions", str(a.partitions)],
                       os.path.join(logs, "broker.log"), env)
        brokers = wait_for_line(broker, r"embedded Kafka at ([0-9.]+:[0-9]+)").group(1)

        fill_dir = os.path.join(work, "fill")
        t0 = time.monotonic()
        out = subprocess.run([paicha, "run", "--brokers", brokers, "--group", "fill",
                              "--replay", path, "--data", fill_dir],
                             env=env, capture_output=True)
        fill_s = time.monotonic() - t0
        text = (out.stdout + out.stderr).decode(errors="replace")
        if out.returncode != 0:
            raise Failure(f"the fill replay failed ({out.returncode}):\n{text[-3000:]}")
        m = re.search(r"paicha: replayed .*", text)
        print(f"fill ({fill_s:.1f} s): {m.group(0) if m else text[-500:]}")
        expected = dir_total(paicha, fill_dir, env)
        counted = re.search(r"(\d+) events counted", text)
        if counted and int(counted.group(1)) != expected:
            raise Failure(f"the fill replay counted {counted.group(1)} events, its tables hold {expected}")
        figures["expected_events"] = expected
        ends = end_offsets(fill_dir, a.partitions)
        figures["source_partitions_with_data"] = sum(len(e) for e in ends.values())
        figures["fill"] = {"seconds": fill_s, "report": m.group(0) if m else None}
        print(f"expected total (raw tables of the fill replay): {expected:,}", flush=True)

        runs = []
        unclean = []
        figures["runs"] = runs
        figures["runs_with_a_second_assignment"] = unclean
        n = 0
        for rep in range(a.repeat):
            for k in a.instances:
                n += 1
                group = f"g{n}-k{k}"
                data = os.path.join(work, group)
                os.makedirs(data)
                for attempt in range(a.attempts):
                    run = one_run(a, paicha, env, broker, brokers, k, group, data, logs, expected,
                                  ends)
                    shutil.rmtree(data, ignore_errors=True)
                    if all(x["rebalances"] == 1 for x in run["instances"]):
                        break
                    # The group's first generation missed an instance: the
                    # first one consumed alone, then the partitions moved.
                    # Exact, but not a k-instance measurement; try again.
                    print(f"  ({group}: not every instance was in the group's first assignment; "
                          "run again with a new group)", flush=True)
                    unclean.append(run)
                    n += 1
                    group = f"g{n}-k{k}"
                    data = os.path.join(work, group)
                    os.makedirs(data)
                else:
                    raise Failure(f"{a.attempts} attempts with {k} instances: in none did every "
                                  "instance get its partitions in the group's first assignment")
                runs.append(run)

        rows = summarize(runs, a.instances)
        figures["summary"] = rows
        figures["loadavg_end"] = loadavg()
        print_table(rows)
        by_k = {r["k"]: r for r in rows}
        if 1 in by_k and 2 in by_k:
            figures["ratio_two_one"] = by_k[2]["events_per_s"] / by_k[1]["events_per_s"]
            for key, label in (("events_per_s", "counted"), ("events_per_s_committed", "committed")):
                pr = pair_ratios(runs, key)
                figures[f"pair_ratios_{label}"] = pr
                print(f"ratio two/one per repetition, {label}: "
                      + ", ".join(f"{x:.2f}" for x in pr) + f" (median {statistics.median(pr):.2f})")
            figures["ratio_two_one_committed"] = (by_k[2]["events_per_s_committed"]
                                                  / by_k[1]["events_per_s_committed"])
        errs = [e for r in runs + unclean for e in r["sql_errors"]]
        if errs:
            print(f"instance 0's SQL failed {len(errs)} times (asked again 100 ms later); first: "
                  f"{errs[0]}")
        print(f"runs redone because an instance missed the group's first assignment: "
              f"{len(unclean)} (exact too; in --json)")
        print(f"every run counted exactly {expected:,} events; load average at the end "
              f"{figures['loadavg_end']}")
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        figures["failure"] = str(e)
        status = 1
    finally:
        if broker is not None:
            stop(broker)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(figures, f, indent=2)
        if a.keep or status:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# What re-routing costs (issue #16): `paicha run --replay` of one simulated
# file with 0%, 50% and 100% of its batches sent to another partition than
# their district's (the hidden `--misroute` knob stands for a producer with
# another partitioner), each event then forwarded home through
# screening.repartition. With BEFORE=path/to/an/older/paicha, that binary's
# plain replay runs in the same rounds, for a before/after ratio taken on
# the same machine at the same time. Rounds interleave the variants, so
# noise hits them alike.
#
# Usage: [BEFORE=BIN] bench/reroute.sh [SCALE] [DAYS] [ROUNDS]
#   defaults: SCALE 4, DAYS 10 (about 1.4 million events), 3 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-4}
days=${2:-10}
rounds=${3:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin paicha
bin="$CARGO_TARGET_DIR/release/paicha"
out=bench/out
mkdir -p "$out"
file="$out/events-$scale-$days.jsonl"
[ -f "$file" ] || "$bin" simulate --out "$file" --days "$days" --scale "$scale" --seed 1
echo "input: $file, $(wc -l < "$file") lines"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"

variants=("0" "0.5" "1")
[ -n "${BEFORE:-}" ] && variants=("before" "${variants[@]}")
for round in $(seq 1 "$rounds"); do
  for v in "${variants[@]}"; do
    rm -rf "$out/reroute-data"
    if [ "$v" = before ]; then
      cmd=("$BEFORE" run --replay "$file" --data "$out/reroute-data")
    else
      cmd=("$bin" run --replay "$file" --data "$out/reroute-data" --misroute "$v")
    fi
    log=$(mktemp)
    /usr/bin/time -f "%e s wall, %M KiB peak RSS" env PAICHA_HMAC_KEY=bench "${cmd[@]}" >"$log" 2>&1
    summary=$(grep -E "replayed" "$log" | head -1)
    timing=$(tail -1 "$log")
    echo "round $round, misroute $v: $summary; $timing"
    rm -f "$log"
  done
done

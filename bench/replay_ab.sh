#!/usr/bin/env bash
# Two builds of paicha on the same replay, rounds interleaved, so the
# machine's swings hit both alike: lines/s and peak RSS of each run, and
# the ratio B/A within each round (the figure to compare across machines).
#
# Usage: bench/replay_ab.sh BIN_A BIN_B [SCALE] [DAYS] [ROUNDS]
#   defaults: SCALE 4, DAYS 10 (about 1.4 million lines), 3 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1
b=$2
scale=${3:-4}
days=${4:-10}
rounds=${5:-3}
out=bench/out
mkdir -p "$out"
file="$out/events-$scale-$days.jsonl"
[ -f "$file" ] || "$b" simulate --out "$file" --days "$days" --scale "$scale" --seed 1
echo "input: $file, $(wc -l < "$file") lines"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
run() {
  rm -rf "$out/ab-data"
  local log
  log=$(mktemp)
  /usr/bin/time -f "%M" -o "$log.rss" env PAICHA_HMAC_KEY=bench "$1" run --replay "$file" --data "$out/ab-data" >"$log" 2>&1
  local rate
  rate=$(grep -oE '\(([0-9]+) lines/s\)' "$log" | tr -dc '0-9')
  echo "$rate $(( $(cat "$log.rss") / 1024 ))"
  rm -f "$log" "$log.rss"
}
printf '%-6s %12s %10s %12s %10s %7s\n' round "A lines/s" "A MiB" "B lines/s" "B MiB" "B/A"
for round in $(seq 1 "$rounds"); do
  read -r ra ma < <(run "$a")
  read -r rb mb < <(run "$b")
  printf '%-6s %12s %10s %12s %10s %7s\n' "$round" "$ra" "$ma" "$rb" "$mb" \
    "$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.2f", b / a }')"
done
rm -rf "$out/ab-data"

#!/usr/bin/env bash
# Benchmark of `paicha run --replay`: end-to-end events/s and peak RSS on a
# simulated file. Usage: bench/replay.sh [SCALE] [DAYS]
#   SCALE 7, DAYS 22 (the default) is about 5.3 million events.
# Reuses bench/out/events-SCALE-DAYS.jsonl when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-7}
days=${2:-22}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/paicha"
out=bench/out
mkdir -p "$out"
file="$out/events-$scale-$days.jsonl"
if [ ! -f "$file" ]; then
  "$bin" simulate --out "$file" --days "$days" --scale "$scale" --seed 1
fi
lines=$(wc -l < "$file")
bytes=$(stat -c %s "$file")
echo "input: $file, $lines lines, $((bytes / 1048576)) MiB"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
for run in 1 2 3; do
  rm -rf "$out/data"
  /usr/bin/time -f "%e s wall, %M KiB peak RSS, %P CPU" \
    env PAICHA_HMAC_KEY=bench "$bin" run --replay "$file" --data "$out/data" 2>&1 \
    | grep -E "replayed|peak RSS" | sed "s/^/run $run: /"
done

#!/usr/bin/env bash
# The README's test command, once alone and then RUNS times in a row while
# another process keeps one core busy (issue #23: a suite that never flakes).
# Prints each run's wall time and result; exits non-zero if any run failed.
#
#   bench/suite_under_load.sh [RUNS]      (default 3)
#
# Build first (`cargo test --workspace --no-run`) so the times are the
# tests', not the compiler's. Logs go to target/suite-runs/.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
logs=target/suite-runs
mkdir -p "$logs"
test_command=(cargo test --workspace --no-fail-fast)
failed=0

run() {
  local name=$1 started ended rc
  started=$(date +%s)
  "${test_command[@]}" >"$logs/$name.log" 2>&1
  rc=$?
  ended=$(date +%s)
  local passed fails
  passed=$(grep '^test result:' "$logs/$name.log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
  fails=$(grep '^test result:' "$logs/$name.log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
  printf '%-8s exit %d  %5d s  %d tests passed, %d failed\n' "$name" "$rc" $((ended - started)) "$passed" "$fails"
  [ "$rc" -eq 0 ] || failed=1
}

echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
run alone
# One core kept busy for the rest.
( while :; do :; done ) &
busy=$!
trap 'kill $busy 2>/dev/null' EXIT
for i in $(seq 1 "$runs"); do
  run "loaded-$i"
done
exit $failed

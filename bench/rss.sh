#!/usr/bin/env bash
# Runs a command and samples its resident memory (VmRSS from
# /proc/PID/status) into a CSV until it exits.
#
# Usage: bench/rss.sh [-i SECONDS] [-t SECONDS] OUT.csv -- COMMAND [ARGS...]
#   -i  sampling interval (default 0.2 s)
#   -t  stop the command after this long: SIGTERM, then SIGKILL 15 s later
#       (default: let it finish)
#
# OUT.csv has a header and one row per sample: seconds since the start,
# VmRSS in KiB, VmHWM (the kernel's peak) in KiB. At the end it prints, on
# stderr, the samples taken, the peak, the last sample and the median of
# the second half of the samples ("steady"), in MiB. The command's output
# goes where this script's goes; the exit status is the command's (a
# command without a SIGTERM handler stopped by -t gives 143).
set -euo pipefail
interval=0.2
limit=
while getopts "i:t:" opt; do
  case $opt in
    i) interval=$OPTARG ;;
    t) limit=$OPTARG ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
out=$1
shift 2

"$@" &
pid=$!
now() { local t=${EPOCHREALTIME/[.,]/}; echo $((10#$t / 1000)); } # ms
start=$(now)
limit_ms=
[ -n "$limit" ] && limit_ms=$(awk -v l="$limit" 'BEGIN { printf "%d", l * 1000 }')
echo "seconds,rss_kib,hwm_kib" > "$out"
stopped=
while kill -0 "$pid" 2>/dev/null; do
  t=$(( $(now) - start ))
  rss= hwm=
  while read -r key value _; do
    case $key in
      VmHWM:) hwm=$value ;;
      VmRSS:) rss=$value ;;
    esac
  done < "/proc/$pid/status" 2>/dev/null || true
  # A zombie has no VmRSS.
  [ -n "$rss" ] && printf '%d.%03d,%s,%s\n' $((t / 1000)) $((t % 1000)) "$rss" "$hwm" >> "$out"
  if [ -n "$limit_ms" ] && [ -z "$stopped" ] && [ "$t" -ge "$limit_ms" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    stopped=$t
  fi
  if [ -n "$stopped" ] && [ $((t - stopped)) -ge 15000 ]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  sleep "$interval"
done
set +e
wait "$pid"
rc=$?
set -e
awk -F, 'NR > 1 { rss[n++] = $2; if ($2 > peak) peak = $2; if ($3 > hwm) hwm = $3 }
  END {
    if (n == 0) { print "rss.sh: no sample taken" > "/dev/stderr"; exit }
    m = 0
    for (i = int(n / 2); i < n; i++) half[m++] = rss[i]
    # median of the second half (insertion sort: a few thousand samples)
    for (i = 1; i < m; i++) { v = half[i]; j = i - 1
      while (j >= 0 && half[j] > v) { half[j + 1] = half[j]; j-- }
      half[j + 1] = v }
    printf "rss.sh: %d samples, peak %.0f MiB (VmHWM %.0f MiB), last %.0f MiB, steady (median of the second half) %.0f MiB\n",
      n, peak / 1024, hwm / 1024, rss[n - 1] / 1024, half[int(m / 2)] / 1024 > "/dev/stderr"
  }' "$out"
exit "$rc"

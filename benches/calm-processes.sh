#!/usr/bin/env bash
# Calm throughput of the lab server as one process and under the supervisor
# (`--processes 1`), side by side: PAIRS interleaved pairs of
# `wrk -t1 -c32 -dSECS /hello`, then the median of each and their ratio.
#
#   apt-get install wrk
#   cargo build --release -p curfew-lab
#   benches/run-prio.sh benches/calm-processes.sh        # on a shared machine
#
# Settings: LAB (the binary, default target/release/curfew-lab), PAIRS
# (default 5), SECS (default 5).
set -euo pipefail
LAB=${LAB:-target/release/curfew-lab}
PAIRS=${PAIRS:-5}
SECS=${SECS:-5}
command -v wrk >/dev/null || { echo "calm-processes: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ -x "$LAB" ] || { echo "calm-processes: $LAB not found (cargo build --release -p curfew-lab)" >&2; exit 2; }
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

# One run: starts the server with the given arguments, waits for its
# address, drives it with wrk, stops it with SIGINT. Prints requests/s.
run() {
  "$LAB" serve --addr 127.0.0.1:0 "$@" > "$out/serve.out" 2>/dev/null &
  local pid=$! addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'http://[0-9.:]*' "$out/serve.out" 2>/dev/null | head -1 || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "calm-processes: the server did not start" >&2; exit 1; }
  sleep 0.5
  wrk -t1 -c32 -d"${SECS}s" "$addr/hello" | awk '/Requests\/sec/ {print $2}'
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "# $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), wrk -t1 -c32 -d${SECS}s /hello"
echo "| pair | one process (req/s) | --processes 1 (req/s) |"
echo "| ---: | ---: | ---: |"
for i in $(seq "$PAIRS"); do
  a=$(run --mode curfew)
  b=$(run --mode curfew --processes 1)
  echo "$a" >> "$out/a"; echo "$b" >> "$out/b"
  echo "| $i | $a | $b |"
done
ma=$(median < "$out/a"); mb=$(median < "$out/b")
echo
echo "median: one process $ma req/s, --processes 1 $mb req/s, ratio $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}')x"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

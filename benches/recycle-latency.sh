#!/usr/bin/env bash
# How quickly the supervisor recycles a poisoned worker, and what the
# process tree burns meanwhile: `curfew-lab serve --mode curfew-supervised`
# on a free port, then REQUESTS (8) spin-forever requests, one every 0.5 s,
# each from its own client id. Prints the process tree's CPU over the run
# and, from the server's log, the time from each write-off to the
# supervisor's decision and from the decision to the worker's exit.
#
#   cargo build --release -p curfew-lab && benches/recycle-latency.sh
set -euo pipefail
exe=${CURFEW_LAB:-target/release/curfew-lab}
n=${REQUESTS:-8}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
"$exe" serve --mode curfew-supervised --addr "127.0.0.1:$port" --trust-client-header "$@" >"$log" 2>&1 &
sup=$!
trap 'kill -TERM $sup 2>/dev/null; wait $sup 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/hello" && break; sleep 0.1; done
sleep 1
tree_ticks() { # the supervisor, its live workers and the reaped ones
  local t=0 p f
  for p in $sup $(pgrep -P $sup); do
    f=$(cut -d' ' -f14-17 /proc/$p/stat 2>/dev/null || echo "0 0 0 0")
    for v in $f; do t=$((t + v)); done
  done
  echo $t
}
c0=$(tree_ticks)
pids=()
for i in $(seq "$n"); do
  curl -s -o /dev/null -H "x-client-id: spin$i" --data 18446744073709551615 \
    "http://127.0.0.1:$port/attack/infinite-loop" &
  pids+=($!)
  sleep 0.5
done
wait "${pids[@]}"
sleep 2
c1=$(tree_ticks)
echo "process tree CPU for $n requests: $(( (c1 - c0) * 1000 / $(getconf CLK_TCK) )) ms"
python3 - "$log" <<'PY'
import bisect, re, sys
from datetime import datetime
text = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read()).splitlines()
t = lambda l: datetime.strptime(l[:26], "%Y-%m-%dT%H:%M:%S.%f")
# The hijack's line is written by curfew's log thread, microseconds after
# the write-off on a sink that keeps up: its time is the write-off's, to
# within that.
hijacks = [t(l) for l in text if "thread hijacked by" in l]
recycles = [t(l) for l in text if "worker poisoned; recycling" in l]
exits = [t(l) for l in text if "drained worker exited" in l]
ms = lambda a, b: round((b - a).total_seconds() * 1e3, 2)
print("write-off -> recycle decision, ms:", [ms(hijacks[bisect.bisect_right(hijacks, r) - 1], r) for r in recycles])
print("decision -> worker exited, ms:", [ms(r, exits[bisect.bisect_right(exits, r)]) for r in recycles if bisect.bisect_right(exits, r) < len(exits)])
PY

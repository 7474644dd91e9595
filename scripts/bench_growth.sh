#!/usr/bin/env bash
# How geo_ws's costs grow with the number of connections (docs/performance.md):
# broadcast deliveries/s at 100, 1 000 and 5 000 receivers, and server RSS per idle
# connection at 1 000, 5 000 and 10 000 connections. A fresh scripts/bench_target.py
# for each figure, pinned to CPU 0, the side-by-side harness's client on CPU 1.
#
#   ../shared/bench/setup.sh            # once: the harness's client venv
#   bash scripts/bench_growth.sh        # about 2 minutes; run it alone on the machine
#
# Loopback only, bounded: at most 10 000 connections, each run under a minute.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
CLIENT_PY=${BENCH_PY:-${WSBENCH_DIR:-/tmp/wsbench}/venv/bin/python}
PORT=${PORT:-9931}
[ -x "$CLIENT_PY" ] || { echo "no bench client at $CLIENT_PY: run $BENCH/setup.sh" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

measure() {  # measure SCENARIO ARGS...: one fresh server, one client run, its JSON line
  local scenario=$1
  shift
  PORT=$PORT taskset -c 0 python "$ROOT/scripts/bench_target.py" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  taskset -c 1 "$CLIENT_PY" "$BENCH/client/wsload.py" "$scenario" \
    --url "ws://127.0.0.1:$PORT" --server-pid "$pid" --max-time 60 "$@" | tail -1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

echo "| receivers | deliveries/s | last receiver p50 / p99 ms | missing |"
echo "|---|---|---|---|"
for n in 100 1000 5000; do
  measure broadcast -n "$n" -k 200 --rounds 3 | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
rate = format(d["deliveries_s"], ",.0f")
print("| %s | %s | %s / %s | %s |" % (sys.argv[1], rate, d["last_p50_ms"], d["last_p99_ms"], d["missing"]))
' "$n"
done

echo
echo "| idle connections | KiB per connection | opened |"
echo "|---|---|---|"
for n in 1000 5000 10000; do
  measure idle --idle-conns "$n" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("| %s | %s | %s |" % (sys.argv[1], d["kib_per_conn"], d["opened"]))
' "$n"
done

#!/usr/bin/env bash
# Throughput of trainlab's event engine vs SimPy on the same M/M/1 model (rho = 0.9).
# Usage: scripts/bench-mm1.sh [CUSTOMERS=1000000] [REPEATS=3]
# Builds `sim/examples/mm1.rs` in release, runs each side REPEATS times on the same N, prints medians and the ratio.
# Both count two model events (arrival, departure) per customer, so the ratio is a wall-time ratio for the same work.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
REPEATS="${2:-3}"
python3 -c 'import simpy' 2>/dev/null || python3 -m pip install --quiet simpy
cargo build --release -q -p trainlab-sim --example mm1
BIN=target/release/examples/mm1

median_rate() { # reads JSON lines on stdin, prints "median_events_per_s median_events_per_cpu_s mean_wait cf_wait"
  python3 -c '
import json, statistics, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
print(statistics.median(r["events_per_s"] for r in rs), statistics.median(r["events_per_cpu_s"] for r in rs),
      rs[0]["mean_wait"], rs[0]["closed_form_wait"])'
}

rust_out=""; py_out=""
for _ in $(seq "$REPEATS"); do rust_out+="$("$BIN" "$N")"$'\n'; done
for _ in $(seq "$REPEATS"); do py_out+="$(python3 scripts/bench_mm1.py "$N")"$'\n'; done
read -r rust_rate rust_cpu rust_wait cf <<<"$(printf '%s' "$rust_out" | median_rate)"
read -r py_rate py_cpu py_wait _ <<<"$(printf '%s' "$py_out" | median_rate)"
python3 - "$N" "$REPEATS" "$rust_rate" "$rust_cpu" "$rust_wait" "$py_rate" "$py_cpu" "$py_wait" "$cf" <<'PY'
import sys
n, reps = sys.argv[1], sys.argv[2]
rr, rc, rw, pr, pc, pw, cf = map(float, sys.argv[3:])
print(f"M/M/1 rho=0.9, {int(float(n)):,} customers, median of {reps} (events = 2 per customer on both sides)")
print(f"  trainlab engine : {rr/1e6:8.2f} M events/s wall, {rc/1e6:8.2f} M events/CPU-s   "
      f"mean wait {rw:.3f} ({100*(rw-cf)/cf:+.2f}% vs closed form {cf:.3f})")
print(f"  SimPy           : {pr/1e6:8.2f} M events/s wall, {pc/1e6:8.2f} M events/CPU-s   "
      f"mean wait {pw:.3f} ({100*(pw-cf)/cf:+.2f}%)")
print(f"  ratio           : {rr/pr:8.1f}x wall, {rc/pc:8.1f}x CPU")
PY

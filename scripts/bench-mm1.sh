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

median_rate() { # reads JSON lines on stdin, prints "median_events_per_s mean_wait_of_median_run"
  python3 -c '
import json, sys
rs = sorted((json.loads(l) for l in sys.stdin if l.strip()), key=lambda r: r["events_per_s"])
m = rs[len(rs) // 2]
print(m["events_per_s"], m["mean_wait"], m["closed_form_wait"])'
}

rust_out=""; py_out=""
for _ in $(seq "$REPEATS"); do rust_out+="$("$BIN" "$N")"$'\n'; done
for _ in $(seq "$REPEATS"); do py_out+="$(python3 scripts/bench_mm1.py "$N")"$'\n'; done
read -r rust_rate rust_wait cf <<<"$(printf '%s' "$rust_out" | median_rate)"
read -r py_rate py_wait _ <<<"$(printf '%s' "$py_out" | median_rate)"
python3 - "$N" "$REPEATS" "$rust_rate" "$rust_wait" "$py_rate" "$py_wait" "$cf" <<'PY'
import sys
n, reps, rr, rw, pr, pw, cf = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"M/M/1 rho=0.9, {int(float(n)):,} customers, median of {reps}")
print(f"  trainlab engine : {rr/1e6:8.2f} M events/s   mean wait {rw:.3f} ({100*(rw-cf)/cf:+.2f}% vs closed form {cf:.3f})")
print(f"  SimPy           : {pr/1e6:8.2f} M events/s   mean wait {pw:.3f} ({100*(pw-cf)/cf:+.2f}%)")
print(f"  ratio           : {rr/pr:8.1f}x")
PY

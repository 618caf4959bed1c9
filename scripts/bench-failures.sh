#!/usr/bin/env bash
# One replication of the Llama 3 405B job (16,384 GPUs, 54 days) in trainlab's failure DES vs the same model in SimPy.
# Usage: scripts/bench-failures.sh [RUST_REPLICATIONS=200] [SIMPY_REPLICATIONS=20]
# Prints seconds per replication for each side and the ratio per policy. The SimPy side omits the C4D detector
# (closed-form latencies) and uses one event per segment and per down episode (trainlab: two and four), so the
# ratio understates the speed-up for the same work.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
NR="${1:-200}"
NP="${2:-20}"
need_python simpy
BIN=$(bench_exe trainlab-sim failures)
rust=$(TRAINLAB_BENCH_JSON="$NR" "$BIN")
py=$(python3 scripts/bench_failures.py "$NP")
python3 - "$rust" "$py" <<'PY'
import json, sys
rust = {r["policy"]: r for r in map(json.loads, sys.argv[1].splitlines())}
py = {r["policy"]: r for r in map(json.loads, sys.argv[2].splitlines())}
for p in ("baseline", "c4d"):
    r, s = rust[p], py[p]
    print(f"{p:9s} trainlab {r['seconds_per_replication']*1e3:8.3f} ms/rep (ETTR {r['ettr']:.4f}, "
          f"{r['interruptions']:.0f} interruptions)  simpy {s['seconds_per_replication']*1e3:8.1f} ms/rep "
          f"(ETTR {s['ettr']:.4f})  ratio {s['seconds_per_replication']/r['seconds_per_replication']:.0f}x")
PY

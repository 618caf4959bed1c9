#!/usr/bin/env bash
# Throughput of trainlab's event engine vs SimPy on the same M/M/1 model (rho = 0.9), one thread each.
# Usage: scripts/bench-mm1.sh [CUSTOMERS=1000000] [REPEATS=3]
# trainlab: the engine bench (sim/benches/engine.rs) with TRAINLAB_BENCH_MM1=CUSTOMERS runs one replication of the
# `queue` workload's discrete-event backend (the scenario text parsed as the CLI parses it); SimPy:
# scripts/bench_mm1.py, the same model. Both deliver two model events per customer (arrival, departure), so the rates
# compare the same work. Prints the medians of REPEATS runs per side (wall time of the event loop; CPU time of the
# trainlab process and of SimPy's thread), each side's mean wait against the closed form rho / (mu - lambda) = 9, and
# the ratios. Installs simpy with pip when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
N="${1:-1000000}"
REPEATS="${2:-3}"
need_python simpy
BIN=$(bench_exe trainlab-sim engine)
python3 - "$BIN" "$N" "$REPEATS" <<'PY'
import json, os, resource, statistics, subprocess, sys

bin_, n, repeats = sys.argv[1], int(float(sys.argv[2])), int(sys.argv[3])

def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

rust, py = [], []
for _ in range(repeats):
    c0 = child_cpu()
    out = subprocess.run([bin_], env=dict(os.environ, TRAINLAB_BENCH_MM1=str(n)), check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out)
    r["events_per_cpu_s"] = r["events"] / (child_cpu() - c0)
    rust.append(r)
for _ in range(repeats):
    out = subprocess.run([sys.executable, "scripts/bench_mm1.py", str(n)], check=True,
                         capture_output=True, text=True).stdout
    py.append(json.loads(out))

med = lambda rs, k: statistics.median(r[k] for r in rs)
cf = py[0]["closed_form_wait"]
rr, rc, pr, pc = (med(rust, "events_per_s"), med(rust, "events_per_cpu_s"), med(py, "events_per_s"),
                  med(py, "events_per_cpu_s"))
rw, pw = med(rust, "mean_wait"), med(py, "mean_wait")
print(f"M/M/1 rho=0.9, {n:,} customers, one thread each, median of {repeats} (2 events per customer on both sides)")
print(f"  trainlab engine : {rr/1e6:8.2f} M events/s wall {rc/1e6:8.2f} M events/CPU-s   "
      f"mean wait {rw:.3f} ({100*(rw-cf)/cf:+.2f}% vs closed form {cf:.3f})")
print(f"  SimPy           : {pr/1e6:8.2f} M events/s wall {pc/1e6:8.2f} M events/CPU-s   "
      f"mean wait {pw:.3f} ({100*(pw-cf)/cf:+.2f}%)")
print(f"  ratio           : {rr/pr:8.1f}x wall {rc/pc:8.1f}x CPU")
PY

#!/usr/bin/env bash
# Times the 4,500-start approach-3 fit in Rust (models/benches/fit.rs, release, rayon on all cores) and in SciPy
# (scripts/bench_fit.py, same data, loss and starts), then prints both times, the ratio and both objectives.
# Needs python3 with numpy and scipy.
set -euo pipefail
cd "$(dirname "$0")/.."
rust_out=$(cargo bench -p trainlab-models --bench fit 2>/dev/null | grep '=')
echo "$rust_out"
rust_1t=$(RAYON_NUM_THREADS=1 cargo bench -p trainlab-models --bench fit 2>/dev/null | grep '^rust_seconds=' | cut -d= -f2)
echo "rust_seconds_1thread=$rust_1t"
py_out=$(python3 scripts/bench_fit.py target/bench-fit/points.csv)
echo "$py_out"
rs=$(echo "$rust_out" | grep '^rust_seconds=' | cut -d= -f2)
py=$(echo "$py_out" | grep '^scipy_seconds=' | cut -d= -f2)
ro=$(echo "$rust_out" | grep '^rust_objective=' | cut -d= -f2)
po=$(echo "$py_out" | grep '^scipy_objective=' | cut -d= -f2)
python3 - "$rs" "$rust_1t" "$py" "$ro" "$po" <<'PY'
import sys
rs, r1, py, ro, po = map(float, sys.argv[1:])
print(f"speedup_vs_scipy={py / rs:.1f}x (all threads), {py / r1:.1f}x (1 thread)")
print(f"objective_rust_minus_scipy={ro - po:.3e} ({'no worse' if ro <= po * (1 + 1e-9) + 1e-15 else 'WORSE'})")
PY

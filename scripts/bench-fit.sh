#!/usr/bin/env bash
# The 4,500-start Chinchilla approach-3 fit (250 points) in trainlab (models/benches/fit.rs) vs SciPy's L-BFGS-B
# (scripts/bench_fit.py), thread for thread: for each thread count T (default "1 2"), trainlab runs its multi-start
# on T rayon threads (RAYON_NUM_THREADS=T) and SciPy runs with T BLAS threads (OMP/OPENBLAS/MKL_NUM_THREADS=T; its
# multi-start loop is serial), on the same points, from the same starts (both written by the Rust bench).
# Usage: scripts/bench-fit.sh [THREAD_COUNTS="1 2"]
# Prints both objectives (each side's best over all starts) and the ratios of wall time and CPU time per thread count.
# The CPU-time ratio at T=1 is the thread-for-thread figure (robust on a loaded machine). Needs python3; installs numpy
# and scipy with pip when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
THREADS="${1:-1 2}"
need_python numpy scipy
BIN=$(bench_exe trainlab-models fit)
DIR="${CARGO_TARGET_DIR:-target}/bench-fit"
mkdir -p "$DIR"
summary=()
for t in $THREADS; do
    export RAYON_NUM_THREADS=$t OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t
    cpu_timed "$DIR/rust-$t.txt" env TRAINLAB_BENCH_FIT="$DIR" "$BIN"
    cpu_timed "$DIR/scipy-$t.txt" python3 scripts/bench_fit.py "$DIR"
    summary+=("$t" "$DIR/rust-$t.txt" "$DIR/scipy-$t.txt")
done
python3 - "${summary[@]}" <<'PY'
import sys

def kv(path):
    return dict(l.strip().split("=", 1) for l in open(path) if "=" in l)

args = sys.argv[1:]
for i in range(0, len(args), 3):
    t, r, s = args[i], kv(args[i + 1]), kv(args[i + 2])
    ro, so = float(r["rust_objective"]), float(s["scipy_objective"])
    rw, sw = float(r["rust_seconds"]), float(s["scipy_seconds"])
    rc, sc = float(r["cpu_seconds"]), float(s["scipy_cpu_seconds"])
    print(f"threads={t} (trainlab: {r['rust_threads']} rayon threads; SciPy: {s['scipy_blas_threads']} BLAS threads)")
    print(f"  trainlab : {rw:8.3f} s wall {rc:8.3f} s CPU  {1e3 * rc / int(r['rust_starts']):7.3f} ms CPU/start  "
          f"objective {ro:.12e} (start {r['rust_best_start']})")
    print(f"  SciPy    : {sw:8.3f} s wall {sc:8.3f} s CPU  {1e3 * sc / int(s['scipy_starts']):7.3f} ms CPU/start  "
          f"objective {so:.12e} (start {s['scipy_best_start']}, {s['scipy_evaluations_per_start']} evaluations/start)")
    rel = (ro - so) / abs(so)
    verdict = "equal" if abs(rel) <= 1e-9 else ("trainlab lower" if ro < so else "trainlab HIGHER")
    print(f"  objective: trainlab - SciPy = {ro - so:+.3e} (relative {rel:+.2e}: {verdict})")
    print(f"  ratio    : {sw / rw:6.1f}x wall, {sc / rc:6.1f}x CPU")
PY

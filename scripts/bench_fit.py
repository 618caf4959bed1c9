#!/usr/bin/env python3
"""SciPy peer of the Rust approach-3 fit (models/benches/fit.rs; Hoffmann et al. 2022, App. D.2).

Usage: bench_fit.py DIR   where DIR holds points.csv (N,D,loss) and starts.csv (a,b,e,alpha,beta), both written by
the Rust bench, so both sides fit the same data from the same starts in the same order.

Objective: summed Huber (delta = 1e-3) of LSE(a - alpha log N, b - beta log D, e) - log L, with its analytic
gradient; SciPy's L-BFGS-B (no bounds: the Chinchilla parameters are unbounded) with its default tolerances from
every start; the lowest objective is kept, ties to the lowest start index (as in Rust). Single process: SciPy has no
parallel multi-start. The caller pins BLAS threads (OMP/OPENBLAS/MKL_NUM_THREADS). Prints key=value lines; times
cover the starts loop only (not the imports), `scipy_cpu_seconds` is this process's CPU time (all its threads).
"""
import os
import sys
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

DELTA = 1e-3


def main(folder):
    data = np.loadtxt(os.path.join(folder, "points.csv"), delimiter=",", skiprows=1, ndmin=2)
    starts = np.loadtxt(os.path.join(folder, "starts.csv"), delimiter=",", skiprows=1, ndmin=2)
    ln_n, ln_d, ln_l = np.log(data[:, 0]), np.log(data[:, 1]), np.log(data[:, 2])

    def obj(p):
        a, b, e, alpha, beta = p
        t = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
        lse = logsumexp(t, axis=0)
        r = lse - ln_l
        w = np.exp(t - lse)  # softmax weights = d lse / d term
        dh = np.where(np.abs(r) <= DELTA, r, DELTA * np.sign(r))
        g = np.array([
            np.sum(dh * w[0]),
            np.sum(dh * w[1]),
            np.sum(dh * w[2]),
            np.sum(dh * w[0] * -ln_n),
            np.sum(dh * w[1] * -ln_d),
        ])
        return np.sum(huber(DELTA, r)), g

    t0, c0 = time.perf_counter(), time.process_time()
    best, best_i, nfev = None, -1, 0
    for i, s in enumerate(starts):
        res = minimize(obj, s.copy(), jac=True, method="L-BFGS-B")
        nfev += res.nfev
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best, best_i = res, i
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"scipy_points={len(ln_l)}")
    print(f"scipy_starts={len(starts)}")
    print(f"scipy_blas_threads={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"scipy_seconds={secs:.4f}")
    print(f"scipy_cpu_seconds={cpu:.4f}")
    print(f"scipy_evaluations_per_start={nfev / len(starts):.1f}")
    print(f"scipy_objective={best.fun:.17e}")
    print(f"scipy_best_start={best_i}")
    print(f"scipy_params={list(map(float, best.x))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: bench_fit.py DIR  (DIR/points.csv and DIR/starts.csv from the Rust bench)")
    main(sys.argv[1])

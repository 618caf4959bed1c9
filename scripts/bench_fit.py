#!/usr/bin/env python3
"""SciPy peer of models/benches/fit.rs: the same Chinchilla approach-3 fit (Hoffmann et al. 2022, App. D.2).

Same data (target/bench-fit/points.csv, written by the Rust bench), same objective (Huber delta=1e-3 on
LSE(a - alpha log N, b - beta log D, e) - log L, summed), same 4,500 starts in the same order, SciPy's L-BFGS-B with
the analytic gradient, best optimum kept. Single process (SciPy has no built-in parallel multi-start).
Prints key=value lines.
"""
import itertools
import sys
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

DELTA = 1e-3


def main(path):
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    ln_n, ln_d, ln_l = np.log(data[:, 0]), np.log(data[:, 1]), np.log(data[:, 2])

    def obj(p):
        a, b, e, alpha, beta = p
        t = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
        lse = logsumexp(t, axis=0)
        r = lse - ln_l
        w = np.exp(t - lse)  # softmax weights, d lse / d term
        dh = np.where(np.abs(r) <= DELTA, r, DELTA * np.sign(r))
        g = np.array([
            np.sum(dh * w[0]),
            np.sum(dh * w[1]),
            np.sum(dh * w[2]),
            np.sum(dh * w[0] * -ln_n),
            np.sum(dh * w[1] * -ln_d),
        ])
        return np.sum(huber(DELTA, r)), g

    ab = np.arange(0, 30, 5.0)
    ee = np.arange(-1, 1.5, 0.5)
    ex = np.arange(0, 2.5, 0.5)
    starts = list(itertools.product(ab, ab, ee, ex, ex))
    t0 = time.perf_counter()
    best = None
    for s in starts:
        res = minimize(obj, np.array(s), jac=True, method="L-BFGS-B")
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    secs = time.perf_counter() - t0
    print(f"scipy_starts={len(starts)}")
    print(f"scipy_seconds={secs:.3f}")
    print(f"scipy_objective={best.fun:.10e}")
    print(f"scipy_params={list(best.x)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench-fit/points.csv")

#!/usr/bin/env python3
"""M/M/1 at rho = 0.9 in SimPy: the model of trainlab's `queue` workload (`des` backend), for scripts/bench-mm1.sh.

Usage: bench_mm1.py [CUSTOMERS]  (default 1e6). Prints one JSON line (events, seconds, cpu_seconds, rates, mean
wait and its closed form).
`cpu_seconds` is this thread's CPU time (robust on a loaded machine). `events` counts model-level events (one arrival and one departure per customer), as the Rust engine does, so the
two events/s figures compare wall time for the same work. Requires `pip install simpy`.
"""
import json
import random
import sys
import time

import simpy

LAMBDA, MU = 0.9, 1.0


def main() -> None:
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    arr_rng, svc_rng = random.Random(7), random.Random(8)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    warmup = n // 20
    stats = {"sum_wait": 0.0, "counted": 0, "started": 0}

    def customer(env):
        arrived = env.now
        with server.request() as req:
            yield req
            stats["started"] += 1
            if stats["started"] > warmup:
                stats["sum_wait"] += env.now - arrived
                stats["counted"] += 1
            yield env.timeout(svc_rng.expovariate(MU))

    def source(env):
        for _ in range(n):
            yield env.timeout(arr_rng.expovariate(LAMBDA))
            env.process(customer(env))

    env.process(source(env))
    t, c = time.perf_counter(), time.thread_time()
    env.run()
    secs, cpu = time.perf_counter() - t, time.thread_time() - c
    events = 2 * n
    rho = LAMBDA / MU
    print(json.dumps({
        "events": events,
        "customers": n,
        "seconds": round(secs, 6),
        "cpu_seconds": round(cpu, 6),
        "events_per_s": events / secs,
        "events_per_cpu_s": events / cpu,
        "customers_per_s": n / secs,
        "mean_wait": stats["sum_wait"] / max(stats["counted"], 1),
        "closed_form_wait": rho / (MU - LAMBDA),
    }))


if __name__ == "__main__":
    main()

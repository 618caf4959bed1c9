#!/usr/bin/env python3
"""The failure/restart model of trainlab's `sim::failures` (issue 3) written in SimPy, for a speed comparison.

Same job and model as `scenarios/llama3-405b.toml`: 16,384 GPUs (2,048 nodes), 54 days, Llama 3 Table 5 rates as
one superposed Poisson stream of fail-stop/hang faults, segments of tau compute seconds plus a checkpoint, a fault
loses the segment's progress and starts detect -> localise -> isolate -> restart phases (a fault during a down
episode restarts them). This side does strictly less work than the Rust one: the C4D detector is not reimplemented
(its latencies are the closed-form constants), and a whole segment (compute + checkpoint) and a whole down episode
(all four phases) are one timeout each, where the Rust model delivers two and four events and keeps per-phase and
per-class accounts.

Usage: bench_failures.py [REPLICATIONS=20] -> one JSON line per policy.
"""
import csv, json, math, os, random, sys, time

import simpy

HERE = os.path.dirname(os.path.abspath(__file__))
GPUS, NODES, DAYS = 16384, 2048, 54.0
H = DAYS * 86400.0
STEP, DELTA, RESTART = 5.9, 10.0, 300.0
GPU_CLASSES = {"gpu", "hbm", "gpu_sram", "gpu_processor", "gpu_thermal", "sdc", "nic"}
SOFT = {"software", "dependency", "nccl_watchdog"}

rows = list(csv.DictReader(open(os.path.join(HERE, "..", "datasets", "data", "llama3", "table5.csv"))))
entries = []
for r in rows:
    comps = GPUS if r["class"] in GPU_CLASSES else NODES
    rate_s = int(r["count"]) / (comps * DAYS * 24) / 3600.0 * comps  # whole-job rate per second
    entries.append((r["class"], r["kind"], rate_s))
LAM = sum(e[2] for e in entries)


def daly(delta, m):
    x = delta / (2 * m)
    return math.sqrt(2 * delta * m) * (1 + math.sqrt(x) / 3 + x / 9) - delta


TAU = daly(DELTA, 1 / LAM)

POLICY = {
    #          crash_detect, hang_detect, localise_crash, localise_hang, isolate
    "baseline": (30.0, 1800.0, 3600.0, 8 * 3600.0, 1800.0),
    "c4d": (30.0, max(3 * STEP, 10.0) - STEP / 2, 20.0, 20.0, 60.0),
}


def replication(policy, seed):
    rnd = random.Random(seed)
    env = simpy.Environment()
    crash_d, hang_d, loc_c, loc_h, iso = POLICY[policy]
    state = {"lost": 0.0, "interruptions": 0}

    def costs():
        x = rnd.random() * LAM
        for cls, kind, r in entries:
            if x < r:
                break
            x -= r
        soft = cls in SOFT
        if kind == "hang":
            return [hang_d, loc_h, 0.0 if soft else iso, RESTART]
        return [crash_d, loc_c, 0.0 if soft else iso, RESTART]

    def job(env):
        while True:
            seg_start = env.now
            try:
                yield env.timeout(TAU + DELTA)
            except simpy.Interrupt:
                state["lost"] += env.now - seg_start
                phases = costs()
                while True:
                    try:
                        start = env.now
                        yield env.timeout(sum(phases))
                        state["lost"] += env.now - start
                        break
                    except simpy.Interrupt:
                        state["lost"] += env.now - start
                        phases = costs()
            else:
                state["lost"] += DELTA

    def faults(env, proc):
        while True:
            yield env.timeout(rnd.expovariate(LAM))
            state["interruptions"] += 1
            proc.interrupt()

    p = env.process(job(env))
    env.process(faults(env, p))
    env.run(until=H)
    return 1.0 - state["lost"] / H, state["interruptions"]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for policy in ("baseline", "c4d"):
        t = time.perf_counter()
        res = [replication(policy, 1000 + i) for i in range(n)]
        dt = time.perf_counter() - t
        print(json.dumps({
            "impl": "simpy", "policy": policy, "replications": n, "seconds_per_replication": dt / n,
            "interruptions": sum(r[1] for r in res) / n, "ettr": sum(r[0] for r in res) / n,
        }))


if __name__ == "__main__":
    main()

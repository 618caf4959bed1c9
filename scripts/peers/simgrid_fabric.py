#!/usr/bin/python3
"""Runs a trainlab `fabric` flow case in SimGrid's flow-level network model (the peer of issue 10).

Input: the JSON of `trainlab_sim::fabric::FlowCase` (file path as the only argument): directed links of one capacity,
jobs made of synchronous steps, each step a set of flows with explicit paths and equal sizes, the step ending a fixed
latency after its last flow drains. Output (stdout, JSON): each job's completion time and the wall-clock seconds
SimGrid took (platform construction and simulation separately).

Mapping: every directed link is a SimGrid link of the same bandwidth and zero latency (the step latency is added by a
sleep after the step, the rule trainlab applies); every flow gets its own pair of virtual hosts whose route is
exactly the flow's path, so per-flow ECMP or planned paths survive (SimGrid routes per host pair). Model `CM02`
without cross traffic and with zero latency is plain max-min fair sharing (bandwidth and latency factors 1; a flow's
sharing weight is its route latency, the same for all here), which is what trainlab claims to compute.

Needs Debian's python3-simgrid (3.32); run with /usr/bin/python3.
"""
import json
import sys
import time

import simgrid
from simgrid import Actor, Comm, Engine, NetZone, this_actor


def main(path):
    case = json.load(open(path))
    t0 = time.perf_counter()
    engine = Engine(
        [
            "trainlab-peer",
            "--cfg=network/model:CM02",
            "--cfg=network/crosstraffic:0",
            "--cfg=maxmin/precision:1e-9",
            "--cfg=surf/precision:1e-12",
            "--log=root.thres:critical",
        ]
    )
    zone = NetZone.create_full_zone("fabric")
    bw = float(case["link_bytes_per_s"])
    links = {}

    def link(l):
        if l not in links:
            links[l] = zone.create_link(f"l{l}", bw).set_latency(0).seal()
        return links[l]

    # hosts[j][p][f] = (source, destination)
    hosts = []
    routes = []
    for j, job in enumerate(case["jobs"]):
        hj = []
        for p, pat in enumerate(job["patterns"]):
            hp = []
            for f, path in enumerate(pat["paths"]):
                a = zone.create_host(f"s{j}.{p}.{f}", 1.0).seal()
                b = zone.create_host(f"d{j}.{p}.{f}", 1.0).seal()
                routes.append((a, b, [link(l) for l in path]))
                hp.append((a, b))
            hj.append(hp)
        hosts.append(hj)
    for a, b, ls in routes:
        zone.add_route(a.netpoint, b.netpoint, None, None, [simgrid.LinkInRoute(l) for l in ls], False)
    zone.seal()
    t1 = time.perf_counter()

    done = [0.0] * len(case["jobs"])

    def job_actor(j):
        job = case["jobs"][j]
        for s in range(job["steps"]):
            p = s // job["repeats"]
            pat = job["patterns"][p]
            size = int(round(pat["bytes"]))
            comms = [Comm.sendto_async(a, b, size) for (a, b) in hosts[j][p]]
            for c in comms:
                c.wait()
            if pat["latency_s"] > 0:
                this_actor.sleep_for(pat["latency_s"])
        done[j] = Engine.clock

    for j in range(len(case["jobs"])):
        first = hosts[j][0][0][0]
        Actor.create(f"job{j}", first, job_actor, j)
    engine.run()
    t2 = time.perf_counter()
    json.dump({"times_s": done, "build_s": t1 - t0, "run_s": t2 - t1, "simgrid": simgrid.simgrid_version}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

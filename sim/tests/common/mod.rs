//! Helpers shared by the fabric tests of this crate: a job of 16 MiB per rank placed on consecutive hosts, and a
//! validated fabric.
#![allow(dead_code)]
use trainlab_core::Workload;
use trainlab_core::workloads::fabric::{Placement, Routing, Topology};
use trainlab_core::workloads::{Fabric, FabricJob, FabricOp};

pub fn job(name: &str, first: u32, count: u32, op: FabricOp, channels: u32) -> FabricJob {
    FabricJob {
        name: name.into(),
        placement: Placement {
            first: Some(first),
            count: Some(count),
            hosts: None,
        },
        collective: op,
        bytes: 1 << 24,
        channels,
        compute_s: 0.0,
    }
}

pub fn fabric(topology: Topology, routing: Routing, jobs: Vec<FabricJob>) -> Fabric {
    let f = Fabric {
        topology,
        routing,
        jobs,
        failed_links: vec![],
        degraded_links: vec![],
    };
    f.validate().unwrap();
    f
}

/// The C4-like case of `c4p-512` (8 NICs of 2 bonded ports per host, 8 channels, 1 GiB per rank) on `pods` pods.
pub fn c4_like(pods: u32, routing: Routing) -> Fabric {
    let t = Topology {
        hosts_per_leaf: 4,
        leaves: 8,
        spines: 8,
        pods: Some(pods),
        cores: Some(64),
        oversubscription: 1.0,
        core_oversubscription: 1.0,
        link_gbps: 200.0,
        link_latency_us: 1.0,
        gpus_per_host: 8,
        nics_per_host: 8,
        ports_per_nic: 2,
    };
    let mut j = job("j512", 0, 64, FabricOp::AllReduce, 8);
    j.bytes = 1 << 30;
    fabric(t, routing, vec![j])
}

//! Flow-level fabric simulator: one ring all-reduce (1 GiB a rank, 4 channels, ECMP, one hash draw) over 1,024 to
//! 16,384 GPUs on a 3-tier fat tree of 8 pods (16 hosts a leaf, 16 leaves and 16 aggregation switches a pod, 256
//! cores; 8 GPUs and 8 NICs of 2x200 Gb/s a host). Target: an all-reduce over 16,384 GPUs in seconds on one core.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use trainlab_core::Seed;
use trainlab_core::workloads::fabric::{Placement, Routing, Topology};
use trainlab_core::workloads::{Fabric, FabricJob, FabricOp};
use trainlab_sim::fabric::simulate;

fn fabric(gpus: u32, routing: Routing) -> Fabric {
    Fabric {
        topology: Topology {
            hosts_per_leaf: 16,
            leaves: 16,
            spines: 16,
            pods: Some(8),
            cores: Some(256),
            oversubscription: 1.0,
            core_oversubscription: 1.0,
            link_gbps: 200.0,
            link_latency_us: 1.0,
            gpus_per_host: 8,
            nics_per_host: 8,
            ports_per_nic: 2,
        },
        routing,
        jobs: vec![FabricJob {
            name: "ring".into(),
            placement: Placement {
                first: Some(0),
                count: Some(gpus / 8),
                hosts: None,
            },
            collective: FabricOp::AllReduce,
            bytes: 1 << 30,
            channels: 4,
            compute_s: 0.0,
        }],
        failed_links: vec![],
        degraded_links: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fabric_allreduce_3tier");
    g.sample_size(10);
    for routing in [Routing::Ecmp, Routing::Planned] {
        for gpus in [1024u32, 4096, 16384] {
            let f = fabric(gpus, routing);
            g.bench_with_input(BenchmarkId::new(routing.as_str(), gpus), &f, |b, f| {
                b.iter(|| simulate(f, Seed(1)).expect("valid fabric"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

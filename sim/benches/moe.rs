//! MoE Monte Carlo: a 1,024-expert, 64-rank layer with 1M tokens, 100 replications (target: under a second).
use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use trainlab_core::workloads::moe::{MoeLayer, RouterModel, Routing};
use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec, Seed};
use trainlab_sim::moe::{MoeSim, aggregate};

fn layer(routing: Routing, router: RouterModel) -> MoeLayer {
    MoeLayer {
        tokens: 1 << 20,
        d_model: 4096,
        d_ff: 14336,
        experts: 1024,
        routing,
        capacity_factor: 1.25,
        balance_loss: None,
        ep_ranks: 64,
        dtype: Dtype::Bf16,
        cluster: ClusterSpec {
            gpu: GpuSpec {
                name: "h100-sxm".into(),
                memory_bytes: 80 << 30,
                peak_flops: BTreeMap::from([(Dtype::Bf16, 989e12)]),
                hbm_bandwidth_bytes_per_s: 3.35e12,
                nvlink_bandwidth_bytes_per_s: 4.5e11,
                tdp_watts: 700.0,
                source: "bench".into(),
                sm: None,
            },
            gpus_per_node: 8,
            nodes: 8,
            intra: LinkSpec {
                bandwidth_bytes_per_s: 4.5e11,
                latency_s: 3e-6,
            },
            inter: LinkSpec {
                bandwidth_bytes_per_s: 5e10,
                latency_s: 5e-6,
            },
        },
        router,
        pad_to_capacity: false,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("moe_1024e_64r_1m_tokens_100reps");
    g.sample_size(10);
    for (name, l) in [
        ("top1_uniform", layer(Routing::TopK(1), RouterModel::Uniform)),
        (
            "2xtop1_zipf1",
            layer(Routing::Prototypes(2), RouterModel::Zipf { s: 1.0 }),
        ),
    ] {
        let sim = MoeSim {
            replications: 100,
            cost: None,
        };
        g.bench_function(name, |b| {
            b.iter(|| aggregate(&l, &sim.replicate(&l, Seed(1)).expect("valid layer")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

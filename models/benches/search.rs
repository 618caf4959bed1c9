//! Layout-search throughput: a Llama-2-70B-shaped model on 1,024 H100s (128 DGX nodes).
//! `serial_step` evaluates every candidate layout one after another on one core (configurations/s per core =
//! candidates / time, criterion's `elem/s`); `search` is the full parallel search with memory filtering.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trainlab_core::workloads::{DenseTraining, TransformerSpec};
use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec};
use trainlab_models::{dense, roofline, search};

fn workload() -> DenseTraining {
    let gpu = GpuSpec {
        name: "h100-sxm".into(),
        memory_bytes: 80 << 30,
        peak_flops: [(Dtype::Bf16, 989e12), (Dtype::Fp32, 67e12)].into_iter().collect(),
        hbm_bandwidth_bytes_per_s: 3.35e12,
        nvlink_bandwidth_bytes_per_s: 450e9,
        tdp_watts: 700.0,
        source: "bench".into(),
        sm: None,
    };
    DenseTraining::new(
        TransformerSpec {
            name: "llama2-70b".into(),
            layers: 80,
            hidden: 8192,
            heads: 64,
            kv_heads: Some(8),
            ffn_hidden: 28672,
            gated_ffn: true,
            vocab: 32000,
            seq_len: 4096,
        },
        ClusterSpec {
            gpu,
            gpus_per_node: 8,
            nodes: 128,
            intra: LinkSpec {
                bandwidth_bytes_per_s: 450e9,
                latency_s: 3e-6,
            },
            inter: LinkSpec {
                bandwidth_bytes_per_s: 50e9,
                latency_s: 8e-6,
            },
        },
        4096 * 1024,
        2e12,
        Dtype::Bf16,
    )
}

fn bench(c: &mut Criterion) {
    let w = workload();
    let p = roofline::datasheet_profile(&w.cluster.gpu);
    let cands = search::candidates(&w);
    let mut g = c.benchmark_group("search_70b_1024xh100");
    g.throughput(Throughput::Elements(cands.len() as u64));
    g.bench_function("serial_step", |b| {
        b.iter(|| {
            let mut acc = 0.0;
            for cfg in &cands {
                acc += dense::step(black_box(&w), cfg, Some(&p))
                    .map(|o| o.step_time_s)
                    .unwrap_or(0.0);
            }
            acc
        })
    });
    g.bench_function("search", |b| {
        b.iter(|| search::search(black_box(&w), Some(&p)).map(|r| r.rows.len()))
    });
    g.finish();
    eprintln!("candidates per search: {}", cands.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Layout-search throughput: a Llama-2-70B-shaped model on 1,024 H100s (128 DGX nodes), and a Mixtral-8x7B-shaped
//! MoE model on 64 H100s (expert parallelism searched).
//! `serial_step` evaluates every candidate layout one after another on one core through the search's own
//! per-candidate path (`search::row_with`: layout check, step model, memory, outcome, ZeRO-2 where ZeRO-1 does not
//! fit; the workload is validated once per search, as `search` does) — configurations/s per core = candidates /
//! time, criterion's `elem/s`; `serial_step_validated` is the same through `dense::step`, which validates the whole
//! workload again for every layout (what `serial_step` measured before 2026-12-02); `search` is the full parallel
//! search with memory filtering.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trainlab_core::workloads::{DenseTraining, MoeRouting, MoeSpec, TransformerSpec};
use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec};
use trainlab_models::{dense, roofline, search};

fn workload() -> DenseTraining {
    workload_on(128)
}

fn mixtral() -> DenseTraining {
    let mut w = workload_on(8);
    w.model = TransformerSpec {
        name: "mixtral-8x7b".into(),
        layers: 32,
        hidden: 4096,
        heads: 32,
        kv_heads: Some(8),
        ffn_hidden: 14336,
        gated_ffn: true,
        vocab: 32000,
        seq_len: 4096,
    };
    w.moe = Some(MoeSpec {
        experts: 8,
        every: 1,
        top_k: 2,
        routing: MoeRouting::TopK,
        capacity_factor: 4.0,
        pad_to_capacity: false,
        router_skew: 0.0,
    });
    w
}

fn workload_on(nodes: u32) -> DenseTraining {
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
            nodes,
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
                acc += search::row_with(black_box(&w), cfg, &p, None).outcome.step_time_s;
            }
            acc
        })
    });
    g.bench_function("serial_step_validated", |b| {
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

    let w = mixtral();
    let cands = search::candidates(&w);
    let loads = search::LoadCache::of(&w, &cands);
    let mut g = c.benchmark_group("search_mixtral_64xh100");
    g.throughput(Throughput::Elements(cands.len() as u64));
    g.bench_function("serial_step", |b| {
        b.iter(|| {
            let mut acc = 0.0;
            for cfg in &cands {
                acc += search::row_with(black_box(&w), cfg, &p, loads.get(&w, cfg))
                    .outcome
                    .step_time_s;
            }
            acc
        })
    });
    g.bench_function("search", |b| {
        b.iter(|| search::search(black_box(&w), Some(&p)).map(|r| r.rows.len()))
    });
    g.finish();
    eprintln!("MoE candidates per search: {}", cands.len());
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, first field): time spent descheduled on
/// a loaded machine is not counted, so configurations per CPU-second estimate the per-core rate under load.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Configurations per CPU-second of the per-candidate path over `reps` passes (median of 5), printed.
fn cpu_rate(label: &str, w: &DenseTraining, p: &trainlab_core::DeviceProfile, reps: usize) {
    let cands = search::candidates(w);
    let loads = search::LoadCache::of(w, &cands);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let (Some(t0), wall) = (thread_cpu_ns(), std::time::Instant::now()) else {
            return;
        };
        let mut acc = 0.0;
        for _ in 0..reps {
            for cfg in &cands {
                acc += search::row_with(black_box(w), cfg, p, loads.get(w, cfg))
                    .outcome
                    .step_time_s;
            }
        }
        black_box(acc);
        let cpu = thread_cpu_ns().unwrap_or(t0) - t0;
        let n = (reps * cands.len()) as f64;
        rates.push((n / (cpu as f64 * 1e-9), n / wall.elapsed().as_secs_f64()));
    }
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu, wall) = rates[2];
    eprintln!(
        "{label}: {:.2} M configurations per CPU-second (median of 5; wall {:.2} M/s)",
        cpu / 1e6,
        wall / 1e6
    );
}

fn cpu_time(_: &mut Criterion) {
    let w = workload();
    let p = roofline::datasheet_profile(&w.cluster.gpu);
    cpu_rate("search_70b_1024xh100 per-candidate path", &w, &p, 50);
    cpu_rate("search_mixtral_64xh100 per-candidate path", &mixtral(), &p, 20);
}

criterion_group!(benches, bench, cpu_time);
criterion_main!(benches);

//! One replication of the Llama 3 405B job (16,384 GPUs, 54 days, Table 5 failure model) in the failure DES, per
//! policy. Goal: well under 100 ms on one core. `scripts/bench-failures.sh` compares it with the same model in SimPy;
//! it runs this binary with `TRAINLAB_BENCH_JSON=<replications>` to print one JSON line instead of criterion output.
use criterion::{Criterion, criterion_group};
use std::hint::black_box;
use trainlab_core::Seed;
use trainlab_core::workloads::training_job::{Policy, TrainingJob};
use trainlab_sim::failures::{rep_seed, simulate_once};

fn job() -> TrainingJob {
    let s = trainlab_datasets::scenario::parse(include_str!("../../scenarios/llama3-405b.toml"), "llama3-405b")
        .expect("shipped scenario parses");
    s.workload::<TrainingJob>().expect("shipped scenario is valid")
}

fn bench(c: &mut Criterion) {
    let j = job();
    for p in [Policy::Baseline, Policy::C4d] {
        let mut i = 0u64;
        c.bench_function(&format!("failures/llama3-405b/{}", p.as_str()), |b| {
            b.iter(|| {
                i += 1;
                black_box(simulate_once(&j, p, rep_seed(Seed(1), p, i)))
            })
        });
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(n) = std::env::var("TRAINLAB_BENCH_JSON") {
        let n: u64 = n.parse().unwrap_or(100);
        let j = job();
        // TRAINLAB_BENCH_POLICY=<policy> runs one policy only (for profiling).
        let only = std::env::var("TRAINLAB_BENCH_POLICY").ok();
        for p in [Policy::Baseline, Policy::C4d] {
            if only.as_deref().is_some_and(|o| o != p.as_str()) {
                continue;
            }
            let t = std::time::Instant::now();
            let mut events = 0u64;
            let mut interruptions = 0u64;
            let mut ettr = 0.0;
            for i in 0..n {
                let r = simulate_once(&j, p, rep_seed(Seed(1), p, i));
                events += r.events;
                interruptions += r.interruptions.iter().sum::<u64>();
                ettr += r.ettr;
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "{{\"impl\":\"trainlab\",\"policy\":\"{}\",\"replications\":{n},\"seconds_per_replication\":{},\"events_per_replication\":{},\"interruptions\":{},\"ettr\":{}}}",
                p.as_str(),
                dt / n as f64,
                events as f64 / n as f64,
                interruptions as f64 / n as f64,
                ettr / n as f64
            );
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

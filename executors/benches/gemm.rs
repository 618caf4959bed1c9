//! CPU GEMM throughput (fp32, `gemm` crate, all rayon threads) at 256, 1024 and 2048; criterion reports time per
//! product and, through `Throughput::Elements(2 n^3)`, FLOP/s ("elements/s" = FLOP/s).
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trainlab_core::Seed;
use trainlab_executors::cpu::sgemm;
use trainlab_executors::timing::random_f32;

fn bench_sgemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_sgemm");
    group.sample_size(10);
    for n in [256usize, 1024, 2048] {
        let a = random_f32(Seed(1), n * n);
        let b = random_f32(Seed(2), n * n);
        let mut out = vec![0.0f32; n * n];
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_function(format!("{n}x{n}x{n}"), |bench| {
            bench.iter(|| {
                sgemm(n, n, n, black_box(&a), black_box(&b), &mut out, 0).expect("valid shapes");
                black_box(&mut out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sgemm);
criterion_main!(benches);

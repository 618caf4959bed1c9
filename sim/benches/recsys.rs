//! Kernel-level recommender DES: one step of the `picasso-wdl` model grown to 1,000 fields, unpacked, 16
//! micro-batches on 4 streams (about 10^5 kernels), replayed from a prepared plan, and the whole backend (plan +
//! replay, no cache). Target: well under a second on one core.
use criterion::{Criterion, criterion_group, criterion_main};
use trainlab_core::workloads::RecsysStep;
use trainlab_core::{Backend, RunCtx, Seed, Workload};
use trainlab_datasets::scenario::{EMBEDDED, parse};
use trainlab_models::recsys::plan;
use trainlab_sim::recsys::{RecsysSim, replay};

fn wdl_1000() -> RecsysStep {
    let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == "picasso-wdl").expect("embedded");
    let mut w: RecsysStep = parse(text, "picasso-wdl").unwrap().workload().unwrap();
    w.fields[0].count = 700;
    w.micro_batches = 20;
    w.streams = 4;
    w.validate().unwrap();
    w
}

fn bench(c: &mut Criterion) {
    let w = wdl_1000();
    let p = plan(&w, &vec![0.0; w.fields.len()]);
    let mut g = c.benchmark_group("recsys_step_1000_fields");
    g.sample_size(10);
    g.bench_function(format!("replay_{}_kernels", p.kernels()), |b| b.iter(|| replay(&p, 4)));
    g.bench_function("backend", |b| {
        b.iter(|| RecsysSim { cache_ids: 0 }.run(&w, &mut RunCtx::new(Seed(1))).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

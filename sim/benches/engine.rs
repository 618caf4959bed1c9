//! Engine throughput on the classic "hold" model: keep `n` events pending; each step pops the earliest and schedules
//! one at `now + Exp(1 µs)`. Reported as events per second (criterion `Throughput::Elements`).
//!
//! With `TRAINLAB_BENCH_MM1=<customers>` it instead runs one replication of the `queue` workload's DES (M/M/1 at
//! rho = 0.9, two events per customer) on this thread and prints one JSON line: `scripts/bench-mm1.sh` compares it
//! with the same model in SimPy.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use std::hint::black_box;
use trainlab_core::workloads::Queue;
use trainlab_core::{Seed, SimTime};
use trainlab_sim::engine::{Engine, exp_sample};
use trainlab_sim::queueing::simulate_replication;

/// A payload the size of a typical simulator event (a tag and an index).
#[derive(Clone, Copy)]
enum Ev {
    Hold(u32),
}

const STEPS: u64 = 100_000;

fn hold(c: &mut Criterion) {
    let mut g = c.benchmark_group("hold");
    g.throughput(Throughput::Elements(STEPS));
    for pending in [8usize, 1_000, 100_000] {
        let mut rng = Seed(1).rng();
        let mut eng: Engine<Ev> = Engine::with_capacity(pending + 1);
        for i in 0..pending {
            let dt = SimTime::from_secs_f64(exp_sample(&mut rng, 1e6));
            eng.schedule_in(dt, Ev::Hold(i as u32));
        }
        g.bench_with_input(BenchmarkId::from_parameter(pending), &pending, |b, _| {
            b.iter(|| {
                for _ in 0..STEPS {
                    let (_, Ev::Hold(k)) = eng.step().expect("hold model never empties");
                    let dt = SimTime::from_nanos((exp_sample(&mut rng, 1.0) * 1_000.0) as u64);
                    eng.schedule_in(dt, Ev::Hold(black_box(k)));
                }
            })
        });
    }
    g.finish();
}

/// Baseline: the same hold loop on a bare `BinaryHeap<Reverse<(u64, u64, u32)>>` (no cancellation, no clock), to
/// show what the engine's bookkeeping costs.
fn bare_heap(c: &mut Criterion) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut g = c.benchmark_group("bare_heap");
    g.throughput(Throughput::Elements(STEPS));
    let pending = 1_000usize;
    let mut rng = Seed(1).rng();
    let mut heap: BinaryHeap<Reverse<(u64, u64, u32)>> = BinaryHeap::with_capacity(pending + 1);
    let mut seq = 0u64;
    for i in 0..pending {
        heap.push(Reverse(((exp_sample(&mut rng, 1.0) * 1_000.0) as u64, seq, i as u32)));
        seq += 1;
    }
    g.bench_with_input(BenchmarkId::from_parameter(pending), &pending, |b, _| {
        b.iter(|| {
            for _ in 0..STEPS {
                let Reverse((t, _, k)) = heap.pop().expect("never empties");
                let dt = (exp_sample(&mut rng, 1.0) * 1_000.0) as u64;
                heap.push(Reverse((t + dt, seq, black_box(k))));
                seq += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, hold, bare_heap);

/// One M/M/1 replication of `customers` customers, timed; the workload comes from a scenario text, as the CLI reads it.
fn mm1(customers: &str) {
    let text = format!(
        "name = \"mm1-bench\"\nkind = \"queue\"\ndescription = \"M/M/1 at rho = 0.9\"\nseed = 7\n[workload]\n\
         servers = 1\narrival_rate = 0.9\nservice_rate = 1.0\ncustomers = {customers}\n"
    );
    let s = trainlab_datasets::scenario::parse(&text, "TRAINLAB_BENCH_MM1").unwrap_or_else(|e| panic!("{e}"));
    let q: Queue = s.workload().unwrap_or_else(|e| panic!("{e}"));
    let t = std::time::Instant::now();
    let r = simulate_replication(&q, Seed(7));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"customers\": {customers}, \"events\": {}, \"seconds\": {secs:.6}, \"events_per_s\": {:.1}, \
         \"mean_wait\": {:.6}}}",
        r.events,
        r.events as f64 / secs,
        r.mean_wait_s
    );
}

fn main() {
    if let Ok(n) = std::env::var("TRAINLAB_BENCH_MM1") {
        mm1(&n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

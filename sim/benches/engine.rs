//! Engine throughput on the classic "hold" model: keep `n` events pending; each step pops the earliest and schedules
//! one at `now + Exp(1 µs)`. Reported as events per second (criterion `Throughput::Elements`).
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use trainlab_core::{Seed, SimTime};
use trainlab_sim::engine::{Engine, exp_sample};

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
criterion_main!(benches);

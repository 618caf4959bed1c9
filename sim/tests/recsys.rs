//! The kernel-level recommender simulator and the cache simulator against the closed forms: exact agreement where
//! nothing overlaps, CUDA occupancy rules by hand, Zipf and Che cache curves, and what packing and interleaving do.
use trainlab_core::workloads::RecsysStep;
use trainlab_core::workloads::recsys::CachePolicy;
use trainlab_core::{Backend, Outcome, RunCtx, Seed, SmSpec, Workload};
use trainlab_datasets::scenario::{EMBEDDED, parse};
use trainlab_models::recsys::{
    BlockShape, RecsysAnalytical, closed_form, closed_form_hit, lru_che_hit, occupancy, plan, stage_sums,
    static_topk_hit,
};
use trainlab_sim::recsys::{RecsysSim, replay, simulate_hit_rate};

fn wdl() -> RecsysStep {
    let (_, text) = EMBEDDED.iter().find(|(n, _)| *n == "picasso-wdl").expect("embedded");
    let w: RecsysStep = parse(text, "picasso-wdl").unwrap().workload().unwrap();
    w.validate().unwrap();
    w
}

fn metric(out: &impl Outcome, name: &str) -> f64 {
    out.metrics().into_iter().find(|m| m.name == name).unwrap().value
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn one_stream_without_overlap_equals_the_closed_form_sum() {
    for (packing, micro, cache) in [(false, 1, 0.0), (true, 1, 0.0), (false, 3, 0.02), (true, 2, 1.0)] {
        let mut w = wdl();
        w.packing = packing;
        w.micro_batches = micro;
        w.cache.fraction = cache;
        w.validate().unwrap();
        // The same hit rates in both: the closed form's.
        let hit: Vec<f64> = (0..w.fields.len()).map(|g| closed_form_hit(&w, g)).collect();
        let p = plan(&w, &hit);
        let r = replay(&p, 1);
        let s = stage_sums(&p);
        let cf = closed_form(&w);
        let sum = s.launch + s.embedding + s.mlp + s.copy;
        assert!(rel(cf.step_time_s, sum) < 1e-12);
        assert!(
            rel(r.step_s, sum) < 1e-6,
            "packing {packing} M {micro}: DES {} vs sum {sum}",
            r.step_s
        );
        assert!(rel(r.busy[0], s.embedding) < 1e-6, "{} {}", r.busy[0], s.embedding);
        assert!(rel(r.busy[1], s.mlp) < 1e-6);
        if s.copy > 0.0 {
            assert!(rel(r.busy[2], s.copy) < 1e-6);
        }
        assert!(rel(r.sm_time, s.sm_time) < 1e-6, "{} {}", r.sm_time, s.sm_time);
    }
}

fn h100_sm() -> SmSpec {
    trainlab_datasets::gpus::preset("h100-sxm").unwrap().sm.unwrap()
}

#[test]
fn occupancy_follows_the_cuda_rules_for_a_table_of_block_shapes() {
    // Hand-computed with the CUDA Occupancy Calculator rules for compute capability 9.0 (H100 SXM: 64 warps,
    // 32 blocks, 64 K registers in 4 sub-partitions allocated per warp in units of 256, 228 KiB shared memory per SM,
    // 1 KiB reserved per block, 128-byte units):
    let table: &[(u32, u32, u32, u32)] = &[
        // threads, registers/thread, shared bytes, blocks per SM
        (256, 32, 0, 8),       // warps: 64/8 = 8; regs: 1024/warp, 4 x floor(16384/1024) = 64 warps -> 8
        (256, 128, 65536, 2),  // regs: 4096/warp -> 16 warps -> 2; smem: 66560 -> 233472/66560 = 3
        (128, 64, 49152, 4),   // warps 16; regs: 2048/warp -> 32 warps -> 8; smem 50176 -> 4
        (1024, 32, 0, 2),      // warps: 64/32 = 2
        (64, 16, 0, 32),       // warps 32, regs 128 warps -> 64; block limit 32
        (96, 40, 0, 16),       // 3 warps: warps 21; regs 1280/warp -> 4 x 12 = 48 warps -> 16
        (256, 255, 0, 1),      // 8160 -> 8192/warp -> 4 x 2 = 8 warps -> 1
        (128, 32, 102400, 2),  // smem 103424 -> 233472/103424 = 2
        (2048, 32, 0, 0),      // over 1024 threads per block: cannot launch
        (256, 256, 0, 0),      // over 255 registers per thread
        (256, 32, 240_000, 0), // over 227 KiB per block
    ];
    let sm = h100_sm();
    for &(threads, regs, smem, want) in table {
        let got = occupancy(&sm, BlockShape { threads, regs, smem });
        assert_eq!(got, want, "{threads} threads, {regs} regs, {smem} B shared");
    }
    // Other capabilities: A100 (164 KiB, 1 KiB reserved) and V100 (96 KiB, none reserved, 256-byte units).
    let a100 = trainlab_datasets::gpus::preset("a100-80gb").unwrap().sm.unwrap();
    let b = BlockShape {
        threads: 256,
        regs: 32,
        smem: 49152,
    };
    assert_eq!(occupancy(&a100, b), 3); // 167936 / 50176 = 3.3
    let v100 = trainlab_datasets::gpus::preset("v100").unwrap().sm.unwrap();
    assert_eq!(occupancy(&v100, b), 2); // 98304 / 49152 = 2
    assert_eq!((sm.sms, a100.sms, v100.sms), (132, 108, 80));
}

#[test]
fn static_topk_simulated_hit_rate_equals_the_zipf_closed_form() {
    for &(rows, k, s) in &[(100_000u64, 1000u64, 1.0), (1_000_000, 50_000, 0.8), (10_000, 10, 1.3)] {
        let mut rng = Seed(3).derive("static").rng();
        let ids = 400_000;
        let sim = simulate_hit_rate(rows, k, s, CachePolicy::StaticTopk, ids, &mut rng);
        let cf = static_topk_hit(rows, k, s);
        let n = (ids - ids / 4) as f64;
        let sd = (cf * (1.0 - cf) / n).sqrt();
        eprintln!("V {rows} k {k} s {s}: static sim {sim:.5} closed form {cf:.5} sd {sd:.5}");
        assert!(
            (sim - cf).abs() < 4.0 * sd,
            "V {rows} k {k} s {s}: sim {sim} vs {cf} (sd {sd})"
        );
    }
}

#[test]
fn lru_hit_rate_matches_che_within_two_percent() {
    for &(rows, k, s) in &[(100_000u64, 2000u64, 0.9), (100_000, 500, 1.2), (50_000, 5000, 0.7)] {
        let mut rng = Seed(5).derive("lru").rng();
        let sim = simulate_hit_rate(rows, k, s, CachePolicy::Lru, 1_000_000, &mut rng);
        let che = lru_che_hit(rows, k, s);
        eprintln!("V {rows} k {k} s {s}: LRU {sim:.4} Che {che:.4} LFU/top-k below");
        assert!(rel(sim, che) < 0.02, "V {rows} k {k} s {s}: LRU {sim} vs Che {che}");
        // LFU keeps the most frequent rows: between LRU and the static top-k under independent references.
        let mut rng = Seed(5).derive("lfu").rng();
        let lfu = simulate_hit_rate(rows, k, s, CachePolicy::Lfu, 1_000_000, &mut rng);
        let top = static_topk_hit(rows, k, s);
        assert!(lfu > sim && lfu < top + 0.01, "LFU {lfu}, LRU {sim}, top-k {top}");
    }
}

#[test]
fn packing_reduces_kernels_and_step_time_in_both_backends() {
    let base = wdl();
    let mut packed = base.clone();
    packed.packing = true;
    for w in [&base, &packed] {
        w.validate().unwrap();
    }
    let mut ctx = RunCtx::new(Seed(1));
    let (a0, a1) = (
        RecsysAnalytical::default().run(&base, &mut ctx).unwrap(),
        RecsysAnalytical::default().run(&packed, &mut ctx).unwrap(),
    );
    let mut sim = RecsysSim { cache_ids: 20_000 };
    let (s0, s1) = (sim.run(&base, &mut ctx).unwrap(), sim.run(&packed, &mut ctx).unwrap());
    for (x0, x1) in [(&a0, &a1), (&s0, &s1)] {
        assert!(x1.kernels * 10 < x0.kernels, "{} vs {}", x1.kernels, x0.kernels);
        assert!(
            x1.step_time_s < x0.step_time_s,
            "{} vs {}",
            x1.step_time_s,
            x0.step_time_s
        );
        assert!(metric(x1, "sm_busy") > metric(x0, "sm_busy"));
    }
    // 500 fields -> 5 chains of (dim, pooling): 8/sum, 16/sum, 16/mean, 32/sum, 64/sum.
    assert_eq!(packed.chains(), 5);
    assert_eq!(base.chains(), 500);
}

#[test]
fn interleaved_steps_lie_between_the_stage_bound_and_the_serial_sum() {
    let mut w = wdl();
    w.packing = true;
    w.cache.fraction = 0.05;
    for (m, s) in [(1, 2), (4, 4), (8, 2), (16, 8)] {
        w.micro_batches = m;
        w.streams = s;
        w.validate().unwrap();
        let hit: Vec<f64> = (0..w.fields.len()).map(|g| closed_form_hit(&w, g)).collect();
        let p = plan(&w, &hit);
        let sums = stage_sums(&p);
        let r = replay(&p, s as u32);
        let serial = sums.launch + sums.embedding + sums.mlp + sums.copy;
        let bound = sums.launch.max(sums.copy);
        assert!(r.step_s < serial, "M {m} S {s}: {} vs serial {serial}", r.step_s);
        assert!(
            r.step_s >= bound,
            "M {m} S {s}: {} below the host/copy bound {bound}",
            r.step_s
        );
        assert!(r.sm_time <= r.step_s * (1.0 + 1e-9));
    }
}

#[test]
fn a_thousand_field_step_of_about_1e5_kernels_simulates() {
    // Size check only (the speed target is the criterion bench `cargo bench -p trainlab-sim --bench recsys`).
    let mut w = wdl();
    w.fields[0].count = 700; // 1,000 fields
    w.micro_batches = 20;
    w.streams = 4;
    w.validate().unwrap();
    assert_eq!(w.field_count(), 1000);
    let p = plan(&w, &vec![0.0; w.fields.len()]);
    assert_eq!(p.kernels(), 100_424);
    let r = replay(&p, 4);
    assert!(r.step_s > 0.0 && r.events as usize >= 2 * p.ops.len());
}

#[test]
fn all_three_optimisations_give_picasso_direction_of_effect() {
    // PICASSO [V, abstract]: utilisation up by an order of magnitude, throughput up to ~6x. Our model is not fitted
    // to these numbers; this checks the direction and the order of magnitude of SM busy time in the simulator.
    let base = wdl();
    let mut all = base.clone();
    all.packing = true;
    all.micro_batches = 4;
    all.streams = 4;
    all.cache.fraction = 0.05;
    all.validate().unwrap();
    let mut sim = RecsysSim { cache_ids: 50_000 };
    let mut ctx = RunCtx::new(Seed(11));
    let (b, a) = (sim.run(&base, &mut ctx).unwrap(), sim.run(&all, &mut ctx).unwrap());
    let speedup = metric(&a, "samples_per_s") / metric(&b, "samples_per_s");
    let busy = a.sm_busy / b.sm_busy;
    eprintln!(
        "speed-up {speedup:.2}x, SM busy {:.3} -> {:.3} ({busy:.1}x)",
        b.sm_busy, a.sm_busy
    );
    assert!(speedup > 3.0, "{speedup}");
    assert!(busy > 8.0, "{busy}");
}

#[test]
fn the_simulator_is_deterministic_for_a_seed() {
    let mut w = wdl();
    w.packing = true;
    w.micro_batches = 3;
    w.streams = 2;
    w.cache.fraction = 0.001;
    w.cache.policy = CachePolicy::Lfu;
    w.validate().unwrap();
    let run = |seed| {
        RecsysSim { cache_ids: 20_000 }
            .run(&w, &mut RunCtx::new(Seed(seed)))
            .unwrap()
    };
    let (a, b, c) = (run(4), run(4), run(5));
    assert_eq!(a, b);
    assert_ne!(a.cache_hit_rate, c.cache_hit_rate);
}

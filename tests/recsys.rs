//! End-to-end tests of the `recsys_step` kind through the binary: bad input exits 2 naming the field path, the
//! PICASSO scenario and its ablation study run.
mod common;
use common::*;
use std::path::PathBuf;

fn base() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/picasso-wdl.toml")).unwrap()
}

#[test]
fn bad_recsys_input_exits_2_with_the_field_path() {
    let _serial = timing_lock();
    let b = base();
    // The scenario without its field groups (everything from the first [[workload.fields]] on).
    let no_fields = {
        let cut = b.find("[[workload.fields]]").unwrap();
        format!("{}fields = []\n", &b[..cut])
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("zero-fields", no_fields, "workload.fields"),
        (
            "zero-count",
            b.replacen("count = 200", "count = 0", 1),
            "workload.fields[0].count",
        ),
        (
            "zero-dim",
            b.replacen("dim = 16", "dim = 0", 1),
            "workload.fields[1].dim",
        ),
        (
            "ids-over-rows",
            b.replacen(
                "rows = 100000\ndim = 8\nids_per_sample = 1",
                "rows = 100\ndim = 8\nids_per_sample = 101",
                1,
            ),
            "workload.fields[0].ids_per_sample",
        ),
        (
            "cache-over-table",
            b.replace("fraction = 0.0", "fraction = 1.5"),
            "workload.cache.fraction",
        ),
        (
            "unknown-policy",
            b.replace("policy = \"static_topk\"", "policy = \"fifo\""),
            "workload.cache.policy",
        ),
        (
            "zero-streams",
            b.replace("streams = 1", "streams = 0"),
            "workload.streams",
        ),
        (
            "zero-width",
            b.replace("mlp = [1024, 512, 256, 1]", "mlp = [1024, 0, 1]"),
            "workload.mlp[1]",
        ),
        (
            "two-gpus",
            b.replace("gpus_per_node = 1", "gpus_per_node = 2"),
            "workload.cluster",
        ),
    ];
    for (tag, text, field) in cases {
        assert_ne!(text, b, "{tag}: the replacement did not apply");
        let p = scenario_file(tag, &text);
        let o = bin()
            .args(["run", &p.display().to_string(), "--backend", "kernel_des"])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{tag}: {e}");
        assert!(e.contains(field), "{tag}: expected {field} in: {e}");
        assert!(!e.contains("panicked"), "{tag}: {e}");
    }
}

#[test]
fn picasso_scenario_compares_and_the_ablation_study_runs() {
    let _serial = timing_lock();
    let o = bin().args(["compare", "picasso-wdl", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("kernel_des") && out.contains("cache_hit_rate"), "{out}");
    let dir = std::env::temp_dir().join(format!("trainlab-recsys-study-{}", std::process::id()));
    let o = bin()
        .args(["plan", "picasso-ablation-study", "--out", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("records.parquet").exists());
    // The closed form's interleaved step against the simulator's (the host launch, the PCIe copy and one GPU stage for
    // the embedding and MLP kernels pipelined across micro-batches; a launch-bound step is the launch time): every
    // interleaved case within 8%, the cached ones (packing + interleaving + caching, PICASSO's "all") within 6%.
    // Measured 2026-12-03: -0.1% (no packing: launch-bound), -6.1% (packing), -5.3% (all, LRU), +1.0% (all, static
    // top-k); before the GPU stage and the launch-bound rule: +11.0%, -5.7%, -18.7%, -13.5%.
    let text = std::fs::read_to_string(dir.join("records.csv")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut steps: std::collections::BTreeMap<(String, String), [f64; 2]> = Default::default();
    let columns = [
        "backend",
        "metric",
        "value",
        "param.cache",
        "param.packing",
        "param.streams",
    ];
    for [backend, metric, value, cache, packing, streams] in record_columns(&text, columns) {
        if metric != "step_time" || streams.parse::<f64>().unwrap() < 2.0 {
            continue;
        }
        let e = steps.entry((cache, packing)).or_default();
        e[usize::from(backend == "kernel_des")] = value.parse().unwrap();
    }
    assert_eq!(steps.len(), 4, "{:?}", steps.keys());
    for ((cache, packing), [a, s]) in &steps {
        let d = a / s - 1.0;
        eprintln!(
            "interleaved, cache {cache}, packing {packing}: closed form {a:.5} s, simulator {s:.5} s ({:+.1}%)",
            100.0 * d
        );
        let bound = if cache.starts_with("fraction = 0.05") {
            0.06
        } else {
            0.08
        };
        assert!(d.abs() < bound, "cache {cache} packing {packing}: {d:+.3}");
    }
}

/// `picasso-sensitivity-study` (README, PICASSO row): the model's gain of packing + interleaving + caching over the
/// baseline, per assumption, in the closed form and the simulator. Its direction and where PICASSO's "up to 6x" falls:
/// the gain grows with the host time per op (2 -> 5 us) and shrinks with the dense compute per sample, and 6x lies
/// between the 4096-2048-1024-1 and the 8192-8192-4096-1 interaction MLP in both backends (10.2 / 8.4x and 4.2 / 3.9x
/// when written; 8.2 / 8.4x and 3.8 / 3.9x since the closed form's GPU stage of 2026-12-03).
#[test]
fn picasso_gain_grows_with_the_launch_cost_and_shrinks_with_the_dense_compute() {
    let _serial = timing_lock();
    let dir = tmpdir("recsys-sens");
    let o = bin()
        .args(["plan", "picasso-sensitivity-study", "--out", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.join("records.csv")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // (backend, assumption) -> (baseline, optimised) samples/s
    let mut pairs: std::collections::BTreeMap<(String, String), (f64, f64)> = Default::default();
    let columns = [
        "backend",
        "metric",
        "value",
        "param.overheads",
        "param.mlp",
        "param.cache",
        "param.packing",
    ];
    for [backend, metric, value, ovh, mlp, cache, packing] in record_columns(&text, columns) {
        if metric != "samples_per_s" {
            continue;
        }
        let key = if cache.starts_with("fraction = 1.0") {
            "resident".to_owned()
        } else {
            format!("{ovh}{mlp}")
        };
        let v: f64 = value.parse().unwrap();
        let e = pairs.entry((backend, key)).or_default();
        if packing == "true" {
            e.1 = v;
        } else {
            e.0 = v;
        }
    }
    assert_eq!(pairs.len(), 12, "{:?}", pairs.keys());
    for b in ["analytical", "kernel_des"] {
        let gain = |k: &str| {
            let (base, opt) = pairs[&(b.to_owned(), k.to_owned())];
            assert!(base > 0.0 && opt > 0.0, "{b} {k}");
            opt / base
        };
        let (l2, l5) = (
            gain("kernel_us = 2.0, launch_us = 2.0"),
            gain("kernel_us = 2.0, launch_us = 5.0"),
        );
        let (m4, m8) = (gain("[4096, 2048, 1024, 1]"), gain("[8192, 8192, 4096, 1]"));
        println!(
            "{b}: launch 2 us {l2:.2}x, 5 us {l5:.2}x; MLP 4096 {m4:.2}x, 8192 {m8:.2}x; resident {:.2}x",
            gain("resident")
        );
        assert!(l2 < l5, "{b}: {l2} vs {l5}");
        assert!(m8 < 6.0 && 6.0 < m4, "{b}: {m8} .. {m4}");
    }
}

/// The `cuda` backend is in the kind table; without a GPU `run --backend cuda` exits 2 with the reason (no panic),
/// with one it answers (the scaled step).
#[test]
fn cuda_backend_runs_or_says_why_not() {
    let _serial = timing_lock();
    let o = bin()
        .args(["run", "picasso-wdl", "--backend", "cuda"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    match trainlab_executors::gpu::gpu_unavailable_reason() {
        Some(why) => {
            assert_eq!(o.status.code(), Some(2), "{e}");
            assert!(e.contains("skipped") && e.contains(&why), "{e}");
        }
        None => assert!(o.status.success(), "{e}"),
    }
}

// ---- Issue 11 part 2: the measured CPU backend and its calibration. ----

use std::sync::atomic::AtomicBool;
use trainlab::kinds::recsys::{calibration_sets, cpu_step, fit_with_cache};
use trainlab_core::Seed;
use trainlab_core::workloads::RecsysStep;
use trainlab_core::workloads::recsys::{CachePolicy, FieldGroup, Pooling};
use trainlab_executors::recsys::{CpuStep, Measured, cache_warmup_draws, field_ranks, measure, row_of};
use trainlab_models::recsys::{
    RecsysCpuParams, cpu_closed_form, cpu_counts, cpu_embedding_time, cpu_mlp_time, cpu_stage_time, cpu_times,
};

/// A small step on the CPU: three field groups (sum of 2 ids, mean of 3 ids, dim 8 with one id), a static cache.
fn small(packing: bool, micro_batches: u64, streams: u64) -> RecsysStep {
    let mut w = cpu_step(50, packing, 0.2, micro_batches, streams);
    let g = |count, rows, dim, ids, pooling| FieldGroup {
        count,
        rows,
        dim,
        ids_per_sample: ids,
        zipf_s: 1.0,
        pooling,
    };
    w.fields = vec![
        g(3, 50, 4, 2, Pooling::Sum),
        g(2, 30, 4, 3, Pooling::Mean),
        g(2, 40, 8, 1, Pooling::Sum),
        g(1, 20, 4, 2, Pooling::Sum),
    ];
    w.batch = 16;
    w.mlp = vec![4, 1];
    w
}

fn field_shapes(w: &RecsysStep) -> Vec<(u64, u64, u64, f64, bool)> {
    let mut v = Vec::new();
    for g in &w.fields {
        for _ in 0..g.count {
            v.push((g.rows, g.dim, g.ids_per_sample, g.zipf_s, g.pooling == Pooling::Mean));
        }
    }
    v
}

#[test]
fn embedding_bag_matches_a_naive_loop() {
    let _serial = timing_lock();
    let w = small(false, 1, 1);
    let seed = Seed(5);
    let mut st = CpuStep::new(&w, seed, 1).unwrap();
    let shapes = field_shapes(&w);
    let tables: Vec<Vec<f32>> = (0..shapes.len()).map(|f| st.field_table(f).unwrap()).collect();
    st.step(&AtomicBool::new(false)).unwrap();
    let x = st.mlp_input().to_vec();
    let b = w.batch as usize;
    let k0 = w.mlp_input() as usize;
    assert_eq!(x.len(), b * k0);
    let mut off = 0usize;
    for (f, &(rows, dim, ids, s, mean)) in shapes.iter().enumerate() {
        let d = dim as usize;
        let ranks = field_ranks(seed, f as u64, rows, s, b * ids as usize).unwrap();
        for i in 0..b {
            for c in 0..d {
                let mut sum = 0.0f64;
                for j in 0..ids as usize {
                    let row = row_of(ranks[i * ids as usize + j] - 1, rows) as usize;
                    sum += tables[f][row * d + c] as f64;
                }
                if mean {
                    sum /= ids as f64;
                }
                let got = x[i * k0 + off + c] as f64;
                assert!(
                    (got - sum).abs() < 1e-5,
                    "field {f} sample {i} col {c}: {got} vs naive {sum}"
                );
            }
        }
        off += d;
    }
    assert_eq!(off, k0);
}

/// A step's time with dedicated cores (on-CPU seconds of the caller and the busiest stream worker) is positive and
/// never more than its wall time (plus the clock reads), with one stream and with two; the stage sums are scaled to it.
#[test]
fn dedicated_step_time_is_on_cpu_time_within_the_wall_time() {
    let _serial = timing_lock();
    for (m, s) in [(1, 1), (2, 2)] {
        let w = small(false, m, s);
        let mut st = CpuStep::new(&w, Seed(3), 2).unwrap();
        let cancel = AtomicBool::new(false);
        st.step(&cancel).unwrap();
        let t = st.step(&cancel).unwrap();
        assert!(t.dedicated_s > 0.0, "{t:?}");
        assert!(t.dedicated_s <= 1.05 * t.total_s + 1e-4, "{t:?}");
        assert!(t.busy_s.iter().sum::<f64>() <= (1.05 * t.total_s + 1e-4) * 2.0, "{t:?}");
    }
}

#[test]
fn packed_and_interleaved_steps_compute_what_separate_ops_do() {
    let _serial = timing_lock();
    for policy in [CachePolicy::StaticTopk, CachePolicy::Lru, CachePolicy::Lfu] {
        steps_agree_across_packing_and_streams(policy);
    }
}

/// With `policy`, packed, interleaved and separate steps give bit-identical MLP inputs and tables after two steps
/// (with LRU/LFU rows move in and out of the device table, written back when evicted), the same hits, and run the
/// ops the CPU op model counts.
fn steps_agree_across_packing_and_streams(policy: CachePolicy) {
    let small = |packing, m, s| {
        let mut w = small(packing, m, s);
        w.cache.policy = policy;
        w
    };
    let seed = Seed(9);
    let run = |w: &RecsysStep| {
        let mut st = CpuStep::new(w, seed, 2).unwrap();
        let cancel = AtomicBool::new(false);
        let t = st.step(&cancel).unwrap();
        st.step(&cancel).unwrap();
        let tables: Vec<Vec<f32>> = (0..field_shapes(w).len()).map(|f| st.field_table(f).unwrap()).collect();
        (st.mlp_input().to_vec(), tables, t, st.counts)
    };
    let (x, tables, t, counts) = run(&small(false, 2, 1));
    // The ops the executor ran are the ops the CPU op model counts.
    assert_eq!(t.ops as f64, counts.kernels() + counts.copy.ops);
    assert!(t.copies > 0 && t.hits > 0 && t.hits < t.lookups, "{t:?}");
    for (packing, m, s) in [(true, 2, 1), (false, 2, 2), (true, 2, 3)] {
        let (x2, tables2, t2, counts2) = run(&small(packing, m, s));
        assert_eq!(
            x2, x,
            "{policy:?}, packing {packing}, {m} micro-batches, {s} streams: MLP input"
        );
        assert_eq!(
            tables2, tables,
            "{policy:?}, packing {packing}, {m} micro-batches, {s} streams: tables after two steps"
        );
        assert_eq!((t2.hits, t2.lookups), (t.hits, t.lookups));
        assert_eq!(t2.ops as f64, counts2.kernels() + counts2.copy.ops);
        if packing {
            assert!(t2.ops < t.ops, "packing runs fewer ops: {} vs {}", t2.ops, t.ops);
        }
    }
}

#[test]
fn measured_hit_rate_equals_the_cache_simulator_on_the_same_ids() {
    let _serial = timing_lock();
    let mut w = cpu_step(4, false, 0.05, 1, 1);
    w.fields[0].rows = 1000;
    w.fields[0].ids_per_sample = 3;
    w.batch = 128;
    let seed = Seed(3);
    let m = measure(&w, seed, 0, 1, 1, &AtomicBool::new(false)).unwrap();
    let k = w.cached_rows(1000);
    let mut ranks = Vec::new();
    for f in 0..4 {
        ranks.extend(field_ranks(seed, f, 1000, 1.0, 128 * 3).unwrap());
    }
    let sim = trainlab_sim::recsys::hit_rate_of(&ranks, k, CachePolicy::StaticTopk, 0);
    assert!(sim > 0.2 && sim < 0.9, "{sim}");
    assert!(
        (m.hit_rate - sim).abs() < 1e-12,
        "measured {} vs simulated {sim}",
        m.hit_rate
    );
    // And both near the Zipf closed form (1,536 draws: a loose statistical bound).
    let closed = trainlab_models::recsys::static_topk_hit(1000, k, 1.0);
    assert!((sim - closed).abs() < 0.05, "{sim} vs closed form {closed}");
}

#[test]
fn lru_and_lfu_measured_hits_equal_the_cache_simulator_on_the_same_ids() {
    let _serial = timing_lock();
    for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
        let mut w = cpu_step(4, false, 0.05, 2, 1);
        w.cache.policy = policy;
        w.fields[0].rows = 1000;
        w.fields[0].ids_per_sample = 3;
        w.batch = 128;
        let seed = Seed(3);
        let mut st = CpuStep::new(&w, seed, 1).unwrap();
        let t = st.step(&AtomicBool::new(false)).unwrap();
        let k = w.cached_rows(1000);
        // each field's id stream: the warm-up draws, then one step's, then the next step's; the simulator on the
        // same stream, the warm-up not counted
        let n = 128 * 3;
        let warm = cache_warmup_draws(k, n);
        let (mut sim1, mut sim2) = (0u64, 0u64);
        for f in 0..4 {
            let ids = field_ranks(seed, f, 1000, 1.0, warm + 2 * n).unwrap();
            let rate = trainlab_sim::recsys::hit_rate_of(&ids[..warm + n], k, policy, warm);
            sim1 += (rate * n as f64).round() as u64;
            let rate = trainlab_sim::recsys::hit_rate_of(&ids, k, policy, warm + n);
            sim2 += (rate * n as f64).round() as u64;
        }
        assert_eq!(t.lookups, 4 * n as u64);
        assert_eq!(t.hits, sim1, "{policy:?}: measured vs simulated hits, first step");
        let rate = t.hits as f64 / t.lookups as f64;
        assert!(rate > 0.1 && rate < 0.9, "{policy:?}: {rate}");
        // the counts the model reads are the misses of that step
        assert_eq!(st.counts.hits as u64, t.hits);
        // the second step looks up fresh ids (a replacing cache would hold a replayed step's ids)
        let t2 = st.step(&AtomicBool::new(false)).unwrap();
        assert_eq!(t2.hits, sim2, "{policy:?}: measured vs simulated hits, second step");
    }
}

/// 1,000 tiny fields (8 samples, dim 4): per-op costs dominate, so one packed op per step stage beats 1,000 separate
/// ones. Medians of 5 steps each; the margin asserted (1.25x; 2.0x measured) is loose on purpose (a shared machine); the measured
/// ratio is printed. A speed figure, so not part of the default test run (the machine is shared and noisy; speed
/// claims live outside timed unit tests): `cargo test --workspace --test recsys -- --ignored packing --nocapture`.
/// What CI checks instead is the mechanism: packed steps launch fewer ops with identical results (tests above).
#[test]
#[ignore = "a timing figure: run on a quiet machine with --ignored"]
fn packing_1000_tiny_fields_is_faster_than_separate_ops() {
    let _serial = timing_lock();
    let tiny = |packing| {
        let mut w = cpu_step(1000, packing, 0.0, 1, 1);
        w.fields[0].rows = 100;
        w.batch = 8;
        w
    };
    let cancel = AtomicBool::new(false);
    let sep = measure(&tiny(false), Seed(1), 1, 5, 1, &cancel).unwrap();
    let packed = measure(&tiny(true), Seed(1), 1, 5, 1, &cancel).unwrap();
    let emb = |m: &Measured| m.busy_s[0] + m.busy_s[1];
    println!(
        "1,000 tiny fields: step {:.3} ms separate vs {:.3} ms packed ({:.1}x); embedding ops {:.3} vs {:.3} ms",
        sep.step_s * 1e3,
        packed.step_s * 1e3,
        sep.step_s / packed.step_s,
        emb(&sep) * 1e3,
        emb(&packed) * 1e3
    );
    assert!(sep.step_s > 1.25 * packed.step_s, "{} vs {}", sep.step_s, packed.step_s);
}

#[test]
fn the_fit_recovers_known_parameters_from_exact_stage_times() {
    let _serial = timing_lock();
    let truth = RecsysCpuParams {
        op_overhead_s: 1.5e-6,
        row_s: 12e-9,
        copy_row_s: Some(40e-9),
        miss_s: Some(25e-9),
        lru_lookup_s: Some(150e-9),
        lfu_level_s: Some(30e-9),
        span_s: Some(3e-9),
        hit_s: Some(9e-9),
        lru_hit_byte_s: Some(0.08e-9),
        lfu_hit_byte_s: Some(0.2e-9),
        mem_bytes_per_s: 9e9,
        copy_bytes_per_s: 6e9,
        gemm_flops_per_s: 8e9,
        mlp_bytes_per_s: Some(25e9),
        overlap: 0.6,
        threads: 2,
        cache_bytes: 2.0 * 1024.0 * 1024.0,
        cache_bytes_per_s: 20e9,
    };
    let (fit_set, _) = calibration_sets();
    let steps: Vec<(RecsysStep, Measured)> = fit_set
        .into_iter()
        .map(|w| {
            let h = 0.4 * w.cache.fraction * 100.0;
            let counts = cpu_counts(&w, |m, c| {
                let _ = (m, c);
                (1.0 - h.min(0.9)) * 256.0 * if w.packing { w.field_count() as f64 } else { 1.0 }
                    / w.micro_batches as f64
            });
            let t = cpu_times(&w, &counts, &truth);
            let busy = [
                cpu_stage_time(&counts.copy, &truth, true),
                cpu_embedding_time(&w, &counts, &truth),
                cpu_mlp_time(&w, &counts, &truth),
            ];
            let m = Measured {
                step_s: t.step,
                step_min_s: t.step,
                busy_s: busy,
                rel_spread: 0.0,
                counts,
                ops: 0,
                copies: 0,
                hit_rate: 0.0,
                threads: 2,
            };
            (w, m)
        })
        .collect();
    let p = fit_with_cache(&steps, truth.cache_bytes);
    let close = |a: f64, b: f64, what: &str| assert!(((a - b) / b).abs() < 1e-6, "{what}: {a} vs {b}");
    close(p.op_overhead_s, truth.op_overhead_s, "op overhead");
    close(p.row_s, truth.row_s, "per row");
    close(p.copy_row_s.unwrap(), truth.copy_row_s.unwrap(), "per copied row");
    close(p.miss_s.unwrap(), truth.miss_s.unwrap(), "per miss");
    close(p.lru_lookup_s.unwrap(), truth.lru_lookup_s.unwrap(), "per LRU lookup");
    close(
        p.lfu_level_s.unwrap(),
        truth.lfu_level_s.unwrap(),
        "per LFU lookup-level",
    );
    close(p.span_s.unwrap(), truth.span_s.unwrap(), "per host-row span level");
    close(p.hit_s.unwrap(), truth.hit_s.unwrap(), "per hit");
    close(
        p.lru_hit_byte_s.unwrap(),
        truth.lru_hit_byte_s.unwrap(),
        "per LRU hit byte",
    );
    close(
        p.lfu_hit_byte_s.unwrap(),
        truth.lfu_hit_byte_s.unwrap(),
        "per LFU hit byte",
    );
    close(p.mem_bytes_per_s, truth.mem_bytes_per_s, "memory bandwidth");
    close(p.copy_bytes_per_s, truth.copy_bytes_per_s, "copy bandwidth");
    close(p.gemm_flops_per_s, truth.gemm_flops_per_s, "GEMM rate");
    close(
        p.mlp_bytes_per_s.unwrap(),
        truth.mlp_bytes_per_s.unwrap(),
        "MLP dense-stream bandwidth",
    );
    close(p.cache_bytes_per_s, truth.cache_bytes_per_s, "cache bandwidth");
    close(p.overlap, truth.overlap, "overlap");
}

/// The quick calibration runs end to end (real CPU steps, the fit, the held-out prediction, the profile), and the
/// calibrated CPU op model predicts the held-out steps (100 and 500 fields, another cache size, other micro-batch and
/// stream counts) with a median |error| under 50%: a generous bound, because the quick run times 3 steps once on a
/// shared 2-core machine (the committed full run: README). The profile is then read by `compare`.
#[test]
fn quick_calibration_predicts_held_out_steps_and_its_profile_is_read() {
    let _serial = timing_lock();
    let dir = std::env::temp_dir().join(format!("trainlab-recsys-cal-{}", std::process::id()));
    let o = bin()
        .args(["calibrate", "--workload", "recsys_step", "--quick", "--json", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let med = v["details"]["held_out_median_abs_error"].as_f64().unwrap();
    println!("quick calibration: held-out median |error| {:.1}%", 100.0 * med);
    assert!(med < 0.5, "held-out median |error| {med}");
    let prof = dir.join("profile-recsys_step-cpu.toml");
    assert!(prof.exists());
    let o = bin()
        .args(["compare", "picasso-cpu-fields", "--quick", "--json", "--profile"])
        .arg(&prof)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let answers = v.to_string();
    // The closed form answered with the profile, the measured backend ran.
    assert!(answers.contains("\"profile\":\"recsys_step\""), "{out}");
    assert!(answers.contains("\"backend\":\"cpu\""), "{out}");
    // A CUDA calibration is refused (exit 2), not attempted.
    let o = bin()
        .args([
            "calibrate",
            "--workload",
            "recsys_step",
            "--backend",
            "cuda",
            "--quick",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn bad_cpu_input_exits_2_with_the_field_path() {
    let _serial = timing_lock();
    let b =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/picasso-cpu-fields.toml"))
            .unwrap();
    for (tag, text, field) in [
        (
            "cpu-zero-count",
            b.replace("count = 200", "count = 0"),
            "workload.fields[0].count",
        ),
        (
            "cpu-zero-dim",
            b.replace("dim = 20", "dim = 0"),
            "workload.fields[0].dim",
        ),
        (
            "cpu-zero-batch",
            b.replace("batch = 256", "batch = 0"),
            "workload.batch",
        ),
        (
            "cpu-cache-over-table",
            b.replace("fraction = 0.01", "fraction = 2.0"),
            "workload.cache.fraction",
        ),
    ] {
        assert_ne!(text, b, "{tag}");
        let p = scenario_file(tag, &text);
        let o = bin()
            .args(["run", &p.display().to_string(), "--backend", "cpu"])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{tag}: {e}");
        assert!(e.contains(field), "{tag}: expected {field} in: {e}");
        assert!(!e.contains("panicked"), "{tag}: {e}");
    }
}

/// The committed calibration (`datasets/calibration/recsys-cpu/`): today's CPU op model with the committed parameters
/// gives the committed predictions of every held-out step (recomputed from the step its label names), and the
/// issue's goal holds on the held-out field counts (100 and 500 fields, separate and packed, no cache and a 1%
/// cache, one stream; the fit saw 50, 200 and 1,000): each within 10% of its measured step time (the committed run
/// had 8.2% at worst; README). The LRU/LFU group (5% caches at 100 and 500 fields, one stream; the fit saw 50, 200
/// and 1,000) is bounded at 12% (the committed run 9.4% at worst; four runs of the committed code 8.0-10.7%: README),
/// and the interleaved group (two streams on the shared 2-core machine) has its own, weaker bound: 50%.
#[test]
fn committed_profile_predicts_held_out_field_counts_within_10_percent_and_lru_lfu_within_12() {
    use trainlab::kinds::recsys::{RecsysProfile, held_out_group, step_of_label};
    use trainlab_core::Profile;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/calibration/recsys-cpu/profile-recsys_step-cpu.toml");
    let text = std::fs::read_to_string(&path).expect("the committed recsys_step profile");
    let p: Profile<RecsysProfile> = toml::from_str(&text).expect("a recsys_step profile");
    let (mut fields, mut policy, mut inter) = (Vec::new(), Vec::new(), Vec::new());
    for h in &p.held_out {
        let w = step_of_label(&h.case).unwrap_or_else(|| panic!("a calibration label: {}", h.case));
        let pred = cpu_closed_form(&w, &p.params.cpu).step_time_s;
        assert!(
            ((pred - h.calibrated) / h.calibrated).abs() < 1e-9,
            "{}: {pred} vs committed {}",
            h.case,
            h.calibrated
        );
        let e = (pred - h.measured) / h.measured;
        println!(
            "{:40} measured {:.2} ms, predicted {:.2} ms: {:+.1}%",
            h.case,
            h.measured * 1e3,
            pred * 1e3,
            100.0 * e
        );
        match held_out_group(&w) {
            "fields" => fields.push((h.case.clone(), e)),
            "policy" => policy.push((h.case.clone(), e)),
            _ => inter.push((h.case.clone(), e)),
        }
    }
    let counts: std::collections::BTreeSet<u64> = fields
        .iter()
        .filter_map(|(c, _)| step_of_label(c))
        .map(|w| w.field_count())
        .collect();
    assert_eq!(fields.len(), 8, "{fields:?}");
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![100, 500]);
    for (case, e) in &fields {
        assert!(e.abs() < 0.10, "held-out field count {case}: {:+.1}%", 100.0 * e);
    }
    let policies: std::collections::BTreeSet<(u64, String)> = policy
        .iter()
        .filter_map(|(c, _)| step_of_label(c))
        .map(|w| (w.field_count(), w.cache.policy.as_str().to_owned()))
        .collect();
    assert_eq!(policies.len(), 4, "{policy:?}");
    assert!(policies.iter().all(|(f, _)| *f == 100 || *f == 500), "{policies:?}");
    for (case, e) in &policy {
        assert!(e.abs() < 0.12, "held-out LRU/LFU step {case}: {:+.1}%", 100.0 * e);
    }
    assert_eq!(inter.len(), 3, "{inter:?}");
    for (case, e) in &inter {
        assert!(e.abs() < 0.5, "held-out interleaved step {case}: {:+.1}%", 100.0 * e);
    }
}

/// A validation of the committed calibration on steps it never saw (`datasets/calibration/recsys-policies/`: the
/// `cpu` backend's measured steps of `scenarios/picasso-cpu-policies-study.toml`, 21 single-pass runs of each case
/// (14 at 13:51-13:53 and 7 at 14:33 on 2026-12-03), chosen before any run): LRU and LFU caches of 2% and 10% (the
/// calibration fits 5% caches only) at 125 and 400 fields (it fits 50, 200, 1,000). Today's CPU op model with the
/// committed profile against each case's median measured step: median |error| 6.0%, worst 12.0% when committed (the
/// previous profile, without the per-policy hit-byte terms and the 200-field LRU/LFU fit steps: 11.4% / 21.7%;
/// README). Asserted: median < 8%, worst < 15%.
#[test]
fn committed_profile_predicts_lru_lfu_at_cache_sizes_and_field_counts_it_never_fitted() {
    use trainlab::kinds::recsys::{RecsysProfile, cpu_step_with};
    use trainlab_core::Profile;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("datasets/calibration/recsys-cpu/profile-recsys_step-cpu.toml"))
        .expect("the committed recsys_step profile");
    let p: Profile<RecsysProfile> = toml::from_str(&text).expect("a recsys_step profile");
    let text = std::fs::read_to_string(root.join("datasets/calibration/recsys-policies/records.csv"))
        .expect("the committed policy-study records");
    // (policy, cache fraction in per mille, fields) -> measured step times
    let mut measured: std::collections::BTreeMap<(String, u64, u64), Vec<f64>> = Default::default();
    let columns = ["backend", "metric", "value", "param.cache", "param.fields"];
    for [backend, metric, value, cache, fields] in record_columns(&text, columns) {
        if backend != "cpu" || metric != "step_time" {
            continue;
        }
        let after = |s: &str, key: &str| -> String {
            let at = s.find(key).unwrap_or_else(|| panic!("{key} in {s}")) + key.len();
            s[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect()
        };
        let fraction: f64 = after(&cache, "fraction = ").parse().expect("a cache fraction");
        let policy = after(&cache, "policy = \"");
        let count: u64 = after(&fields, "count = ").parse().expect("a field count");
        measured
            .entry((policy, (fraction * 1000.0).round() as u64, count))
            .or_default()
            .push(value.parse().expect("a step time"));
    }
    assert_eq!(measured.len(), 8, "{:?}", measured.keys());
    let mut errs = Vec::new();
    for ((policy, permille, count), v) in &measured {
        assert_eq!(v.len(), 21, "{policy} {permille} {count}");
        let policy = match policy.as_str() {
            "lru" => CachePolicy::Lru,
            "lfu" => CachePolicy::Lfu,
            other => panic!("a replacing policy: {other}"),
        };
        let w = cpu_step_with(*count, false, *permille as f64 / 1000.0, policy, 1, 1);
        let m = trainlab_core::Summary::of(v).median;
        let pred = cpu_closed_form(&w, &p.params.cpu).step_time_s;
        let e = pred / m - 1.0;
        println!(
            "{policy:?} {:.1}% cache, {count} fields: measured {:.2} ms (median of {}), predicted {:.2} ms: {:+.1}%",
            *permille as f64 / 10.0,
            m * 1e3,
            v.len(),
            pred * 1e3,
            100.0 * e
        );
        errs.push(e.abs());
    }
    let median = trainlab_core::Summary::of(&errs).median;
    let worst = errs.iter().copied().fold(0.0, f64::max);
    println!("median |error| {:.1}%, worst {:.1}%", 100.0 * median, 100.0 * worst);
    assert!(median < 0.08 && worst < 0.15, "median {median}, worst {worst}");
}

/// The calibration's speed-level flag: two groups of per-pass times more than 15% apart, at least two passes each; a
/// single slow pass or a spread without a gap is not a level.
#[test]
fn speed_levels_split_passes_at_a_wide_gap_only() {
    use trainlab::kinds::recsys::{SPEED_LEVEL_GAP, speed_levels};
    let l = speed_levels(&[13.1, 10.0, 10.2, 13.0, 10.1], SPEED_LEVEL_GAP).expect("two levels");
    assert_eq!((l.low_passes, l.high_passes), (3, 2));
    assert!(
        (l.low_s - 10.1).abs() < 1e-12 && (l.high_s - 13.05).abs() < 1e-12,
        "{l:?}"
    );
    // one slow pass: an outlier
    assert_eq!(speed_levels(&[10.0, 10.1, 10.2, 10.3, 14.0], SPEED_LEVEL_GAP), None);
    // a spread without a 15% gap
    assert_eq!(
        speed_levels(&[10.0, 11.0, 12.0, 13.0, 14.0, 15.0], SPEED_LEVEL_GAP),
        None
    );
    assert_eq!(speed_levels(&[], SPEED_LEVEL_GAP), None);
    assert_eq!(speed_levels(&[f64::NAN, 1.0], SPEED_LEVEL_GAP), None);
}

/// The diagnosis of the concave growth of the step with the field count (README): the staging copy's time per
/// lookup (no cache: every lookup reads a random row of its field's host table) depends on the field's table bytes,
/// not on the row width: at 62 KiB tables d = 4 and d = 20 cost the same per lookup, a 1,250 KiB table costs more.
/// In the calibration grid the table shrinks as the field count grows (64 MiB / F), hence the concave step and the
/// op model's span term. Medians of 5 measurements of 1 warm-up + 4 steps each; a timing figure, not in the default
/// run: `cargo test --workspace --test recsys -- --ignored table_bytes --nocapture`.
#[test]
#[ignore = "a timing figure: run on a quiet machine with --ignored"]
fn copy_cost_per_lookup_follows_the_table_bytes_not_the_row_width() {
    let _serial = timing_lock();
    let cancel = AtomicBool::new(false);
    // (fields, rows): dim = 4000 / fields, table bytes = 4 rows dim
    let cases = [(200, 800), (1000, 4000), (200, 16000), (50, 4000), (1000, 800)];
    let mut per_lookup = Vec::new();
    for &(f, rows) in &cases {
        let mut w = cpu_step(f, false, 0.0, 1, 1);
        w.fields[0].rows = rows;
        let mut v: Vec<f64> = (0..5)
            .map(|rep| measure(&w, Seed(7).index(rep), 1, 4, 1, &cancel).unwrap().busy_s[0] / (256.0 * f as f64))
            .collect();
        v.sort_by(f64::total_cmp);
        let kib = rows * (4000 / f) * 4 / 1024;
        println!(
            "{f} fields, dim {}, {rows} rows ({kib} KiB a table): copy {:.1} ns per lookup",
            4000 / f,
            v[2] * 1e9
        );
        per_lookup.push(v[2]);
    }
    // equal table bytes (62 KiB), dim 20 vs dim 4: within 25%
    assert!((per_lookup[0] / per_lookup[1] - 1.0).abs() < 0.25, "{per_lookup:?}");
    // 1,250 KiB tables cost more per lookup than 62 KiB ones, at dim 20 and at dim 80 vs dim 4
    assert!(
        per_lookup[2] > per_lookup[0] && per_lookup[3] > per_lookup[1],
        "{per_lookup:?}"
    );
}

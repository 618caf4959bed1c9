//! The `recsys_step` kind: one training step of a wide-and-deep recommender on one GPU, with PICASSO's packing,
//! interleaving and caching as switches (issue 11).
//!
//! Backends: the closed form (`analytical`: launch x ops, roofline per kernel, PCIe misses, Zipf/Che cache curves,
//! the interleaving pipeline bound; on the `cpu` device the CPU op model of `trainlab_models::recsys`), the
//! kernel-level simulator (`kernel_des`: host launch queue, streams, occupancy-limited SM and HBM sharing, copy engine,
//! simulated caches; GPU only), the measured `cpu` backend (`trainlab_executors::recsys`: the step really run on
//! this CPU, op by op) and the measured `cuda` backend (`trainlab_executors::recsys::cuda`: the same step as NVRTC
//! kernels and cuBLAS GEMMs on a GPU, static top-k cache only; compiled in every build, not yet run on a GPU; skipped
//! with its reason without one; it answers a scaled step, [`on_gpu`], on the workload's GPU preset). The `cpu` backend answers a scaled step on the `cpu` device preset ([`on_cpu`]), filed in its
//! own group, where the closed form answers with its CPU op model.
//!
//! Calibration (`trainlab calibrate --workload recsys_step`): the CPU op model's per-op overhead, per-row costs (a
//! row of the embedding ops and the `concat`, a lookup and a miss of a staging copy op), memory and copy bandwidths,
//! GEMM rate, the MLP stage's dense-stream bandwidth, the activation-bytes rate of micro-batches that fit in this machine's L2, the replacing caches'
//! bookkeeping (per LRU lookup, per LFU lookup and level of its ordered set), the host-row span term (per missed
//! lookup and doubling of its field's table) and the per-hit gather cost are fitted by weighted least squares
//! (non-negative, relative residuals) to the step times and per-stage busy times of one-stream steps at 50, 200 and
//! 1,000 fields (separate and packed, with and without a cache; two of them in 4 micro-batches of 64; LRU and LFU 5%
//! caches at 50 and 1,000 fields; the `picasso-wdl` MLP 1024-512-256-1 at 50 and 1,000 fields, batch 70, whose GEMMs
//! pin the GEMM rate and the MLP's dense-stream bandwidth), scaled by one factor to their step times, the overlap factor to three interleaved
//! steps. Each case's time is the median over 15 passes of each pass's fastest on-CPU step. Held out, in three
//! groups ([`held_out_group`]): 100 and 500 fields (separate and packed, no cache and a 1% cache, one stream: the
//! issue's held-out field counts), LRU and LFU 5% caches at 100 and 500 fields, and three interleaved steps (other
//! micro-batch and stream counts, a 5% cache). The calibration also reports the held-out errors of the same
//! measurements fitted without the span term, without the hit term and without both. The profile (`recsys_step`)
//! is read by `analytical` for steps on the `cpu` device.
use super::{Answering, KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::RecsysStep;
use trainlab_core::workloads::recsys::{CachePolicy, CacheSpec, FieldGroup, Overheads, Pooling};
use trainlab_core::{Dtype, Error, Fidelity, HeldOut, Metric, Profile, Record, Unit, Workload};
use trainlab_executors::recsys::{Measured, RecsysCpu, measure, scaled_to_budget};
use trainlab_models::recsys::{CpuStage, RecsysAnalytical, RecsysCpuParams, cpu_closed_form, cpu_times};

/// The parameters of a `recsys_step` profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecsysProfile {
    /// The device preset the steps were measured on (`cpu`).
    pub device: String,
    /// The fitted CPU op model.
    pub cpu: RecsysCpuParams,
}

fn recsys_profile(o: &Opts) -> Result<Option<Profile<RecsysProfile>>, Error> {
    o.profiles
        .get_one::<RecsysProfile>("recsys_step", |p| p.params.device == "cpu")
}

/// The step the `cpu` backend really runs for `w`: on the `cpu` device preset, tables and batch within the
/// executor's budgets, fp32 MLP (`None`: `w` itself).
pub fn on_cpu(w: &RecsysStep) -> Option<RecsysStep> {
    let mut x = scaled_to_budget(w);
    if !w.on_cpu_device() {
        x.cluster = trainlab_datasets::gpus::cluster("cpu", 1, 1).ok()?;
    }
    (x != *w).then_some(x)
}

fn backends(o: &Opts) -> Result<super::Backends<RecsysStep>, Error> {
    let cpu = recsys_profile(o)?.map(|p| p.params.cpu);
    Ok(vec![
        Box::new(RecsysAnalytical { cpu }),
        Box::new(trainlab_sim::recsys::RecsysSim {
            cache_ids: if o.quick { 50_000 } else { 200_000 },
        }),
        Box::new(Answering {
            inner: Box::new(RecsysCpu {
                warmup: if o.quick { 1 } else { 2 },
                repeats: if o.quick { 3 } else { 7 },
                threads: 0,
            }),
            map: on_cpu,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::recsys::cuda::RecsysCuda {
                warmup: if o.quick {
                    1
                } else {
                    trainlab_executors::recsys::cuda::WARMUP
                },
                repeats: if o.quick {
                    3
                } else {
                    trainlab_executors::recsys::cuda::REPEATS
                },
            }),
            map: on_gpu,
        }),
    ])
}

/// The step the `cuda` backend really runs for `w`: tables and batch within the GPU executor's budgets, fp32 MLP
/// (`trainlab_executors::recsys::cuda::scaled_to_device`; `None`: `w` itself).
pub fn on_gpu(w: &RecsysStep) -> Option<RecsysStep> {
    let x = trainlab_executors::recsys::cuda::scaled_to_device(w);
    (x != *w).then_some(x)
}

/// The `recsys_step` kind.
pub static KIND: KindDef<RecsysStep> = KindDef {
    about: "one recommender (WDL) training step on one GPU: packing, interleaving, caching (PICASSO); real CPU steps",
    reads: &["recsys_step"],
    reference: &["cpu", "kernel_des", "analytical", "cuda"],
    headline: &["samples_per_s", "step_time", "kernels", "sm_busy", "cache_hit_rate"],
    backends,
    describe: |w| {
        format!(
            "{} fields, batch {}, packing {}, {} micro-batches on {} streams, cache {} {} on {}",
            w.field_count(),
            w.batch,
            w.packing,
            w.micro_batches,
            w.streams,
            w.cache.fraction,
            w.cache.policy.as_str(),
            w.cluster.gpu.name
        )
    },
    profiled: |o, w| match recsys_profile(o) {
        Ok(Some(_)) if w.on_cpu_device() => vec![("analytical", "recsys_step".into())],
        _ => vec![],
    },
    calibration: Some(&RecsysCalibration),
};

/// A step on this CPU of `fields` fields at fixed embedding bytes and MLP input: `dim = 4000 / fields` (4,000 fp32
/// values per sample in all), one id per field and sample, 4,000-row tables (64 MiB of tables at any field count),
/// Zipf 1.0, batch 256, MLP 8-1.
pub fn cpu_step(fields: u64, packing: bool, cache: f64, micro_batches: u64, streams: u64) -> RecsysStep {
    RecsysStep {
        fields: vec![FieldGroup {
            count: fields,
            rows: 4000,
            dim: 4000 / fields,
            ids_per_sample: 1,
            zipf_s: 1.0,
            pooling: Pooling::Sum,
        }],
        mlp: vec![8, 1],
        batch: 256,
        cluster: trainlab_datasets::gpus::cluster("cpu", 1, 1)
            .unwrap_or_else(|_| unreachable!("the cpu preset is part of the datasets crate")),
        mlp_dtype: Dtype::Fp32,
        packing,
        micro_batches,
        streams,
        cache: CacheSpec {
            fraction: cache,
            policy: Default::default(),
        },
        overheads: Overheads::default(),
    }
}

/// [`cpu_step`] with a cache of `policy`.
pub fn cpu_step_with(
    fields: u64,
    packing: bool,
    cache: f64,
    policy: CachePolicy,
    micro_batches: u64,
    streams: u64,
) -> RecsysStep {
    let mut w = cpu_step(fields, packing, cache, micro_batches, streams);
    w.cache.policy = policy;
    w
}

/// MLP widths of the calibration's MLP-heavy fit steps ([`cpu_step_mlp`]): those of the `picasso-wdl` scenario.
pub const HEAVY_MLP: [u64; 4] = [1024, 512, 256, 1];

/// [`cpu_step`] (separate tables, no cache, one micro-batch, one stream) with the MLP `mlp` and the batch cut to the
/// `cpu` executor's MLP FLOP budget ([`trainlab_executors::recsys::scaled_to_budget`]: 70 samples for
/// [`HEAVY_MLP`] on the grid's 4,000 pooled values): a step whose GEMMs are most of its time, which pins the GEMM
/// rate (the 8-1 MLP of the other fit steps has too few FLOPs to).
pub fn cpu_step_mlp(fields: u64, mlp: &[u64]) -> RecsysStep {
    let mut w = cpu_step(fields, false, 0.0, 1, 1);
    w.mlp = mlp.to_vec();
    w.batch = scaled_to_budget(&w).batch;
    w
}

/// Cache fraction of the LRU and LFU calibration steps.
pub const POLICY_CACHE: f64 = 0.05;

/// Fit set (one stream: 50, 200, 1,000 fields, separate and packed, no cache and a 1% cache; two one-stream steps of
/// 4 micro-batches; LRU and LFU caches of 5% at 50, 200 and 1,000 fields; the [`HEAVY_MLP`] at 50 and 1,000 fields
/// ([`cpu_step_mlp`]); three interleaved steps) and the three held-out
/// groups ([`held_out_group`]): the field counts the fit never saw (100 and 500 fields, separate and packed, no cache
/// and a 1% cache, one stream: the held-out field counts), LRU and LFU caches at 100 and 500 fields, and
/// three interleaved steps (2 and 4 micro-batches on 2 streams, a 5% cache).
pub fn calibration_sets() -> (Vec<RecsysStep>, Vec<RecsysStep>) {
    let mut fit = Vec::new();
    for f in [50, 200, 1000] {
        for packing in [false, true] {
            for cache in [0.0, 0.01] {
                fit.push(cpu_step(f, packing, cache, 1, 1));
            }
        }
    }
    // One stream, 4 micro-batches of 64: the MLP of a micro-batch that fits in L2 (the cache bandwidth's cases).
    fit.push(cpu_step(50, false, 0.01, 4, 1));
    fit.push(cpu_step(1000, true, 0.01, 4, 1));
    fit.push(cpu_step(50, false, 0.01, 4, 2));
    fit.push(cpu_step(1000, false, 0.01, 4, 2));
    fit.push(cpu_step(1000, true, 0.01, 4, 2));
    for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
        for f in [50, 200, 1000] {
            fit.push(cpu_step_with(f, false, POLICY_CACHE, policy, 1, 1));
        }
    }
    // MLP-heavy steps at the grid's ends: the GEMM rate.
    for f in [50, 1000] {
        fit.push(cpu_step_mlp(f, &HEAVY_MLP));
    }
    let mut held = Vec::new();
    for f in [100, 500] {
        for packing in [false, true] {
            for cache in [0.0, 0.01] {
                held.push(cpu_step(f, packing, cache, 1, 1));
            }
        }
    }
    held.push(cpu_step(500, false, 0.05, 2, 2));
    held.push(cpu_step(100, true, 0.05, 4, 2));
    held.push(cpu_step(500, true, 0.05, 4, 2));
    for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
        for f in [100, 500] {
            held.push(cpu_step_with(f, false, POLICY_CACHE, policy, 1, 1));
        }
    }
    (fit, held)
}

/// The held-out group of a calibration step: `"fields"` (one stream, static cache: the held-out field counts, the
/// issue's 10% claim), `"policy"` (one stream, an LRU or LFU cache: the replacing caches' bookkeeping at field counts
/// the fit never saw) or `"interleaved"` (two streams on this 2-core machine: a weaker, separately reported claim).
pub fn held_out_group(w: &RecsysStep) -> &'static str {
    if w.streams != 1 {
        "interleaved"
    } else if w.cache.policy != CachePolicy::StaticTopk && w.cache.fraction > 0.0 {
        "policy"
    } else {
        "fields"
    }
}

/// The step of a calibration label ([`label`]: `"F100 d40 separate cache0.01 m1 s1"`, with an LRU or LFU cache
/// `"F100 d40 separate cache0.05 m1 s1 lru"`, an MLP-heavy step `"F50 d80 separate cache0 m1 s1 mlp1024-512-256-1 b70"`),
/// or `None`.
pub fn step_of_label(case: &str) -> Option<RecsysStep> {
    let mut it = case.split_whitespace();
    let f: u64 = it.next()?.strip_prefix('F')?.parse().ok()?;
    let _dim = it.next()?;
    let packing = match it.next()? {
        "packed" => true,
        "separate" => false,
        _ => return None,
    };
    let cache: f64 = it.next()?.strip_prefix("cache")?.parse().ok()?;
    let m: u64 = it.next()?.strip_prefix('m')?.parse().ok()?;
    let st: u64 = it.next()?.strip_prefix('s')?.parse().ok()?;
    let mut policy = CachePolicy::StaticTopk;
    let (mut mlp, mut batch) = (None, None);
    for tok in it {
        match tok {
            "lru" => policy = CachePolicy::Lru,
            "lfu" => policy = CachePolicy::Lfu,
            _ => {
                if let Some(ws) = tok.strip_prefix("mlp") {
                    mlp = Some(ws.split('-').map(|x| x.parse().ok()).collect::<Option<Vec<u64>>>()?);
                } else {
                    batch = Some(tok.strip_prefix('b')?.parse::<u64>().ok()?);
                }
            }
        }
    }
    let mut w = cpu_step_with(f, packing, cache, policy, m, st);
    if let Some(mlp) = mlp {
        w.mlp = mlp;
    }
    if let Some(b) = batch {
        w.batch = b;
    }
    (label(&w) == case).then_some(w)
}

/// Label of a calibration step (a static top-k cache unnamed, an LRU or LFU cache named after the stream count; an MLP
/// and batch other than the grid's 8-1 and 256 named last).
pub fn label(w: &RecsysStep) -> String {
    let policy = match w.cache.policy {
        CachePolicy::StaticTopk => "",
        CachePolicy::Lru => " lru",
        CachePolicy::Lfu => " lfu",
    };
    // The MLP and batch named only where they are not the grid's (8-1, 256).
    let mlp = if w.mlp == [8, 1] && w.batch == 256 {
        String::new()
    } else {
        let ws: Vec<String> = w.mlp.iter().map(u64::to_string).collect();
        format!(" mlp{} b{}", ws.join("-"), w.batch)
    };
    format!(
        "F{} d{} {} cache{} m{} s{}{policy}{mlp}",
        w.field_count(),
        w.fields[0].dim,
        if w.packing { "packed" } else { "separate" },
        w.cache.fraction,
        w.micro_batches,
        w.streams
    )
}

/// Non-negative weighted least squares for a few unknowns: every subset of free unknowns (the rest held at 0) is
/// solved by its normal equations, and the feasible solution (all >= 0) with the smallest residual is kept: exact
/// NNLS, `2^n` small solves (used with `n = 13`, [`UNKNOWNS`]).
pub fn nnls(rows: &[Vec<f64>], rhs: &[f64]) -> Vec<f64> {
    let n = rows.first().map_or(0, Vec::len);
    let mut best: (f64, Vec<f64>) = (f64::INFINITY, vec![0.0; n]);
    for mask in 1u32..(1 << n) {
        let free: Vec<usize> = (0..n).filter(|j| mask & (1 << j) != 0).collect();
        let k = free.len();
        let mut a = vec![vec![0.0; k + 1]; k];
        for (r, y) in rows.iter().zip(rhs) {
            for (i, &fi) in free.iter().enumerate() {
                for (j, &fj) in free.iter().enumerate() {
                    a[i][j] += r[fi] * r[fj];
                }
                a[i][k] += r[fi] * y;
            }
        }
        // Gaussian elimination with partial pivoting.
        let mut ok = true;
        for c in 0..k {
            let p = (c..k)
                .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
                .unwrap_or(c);
            if a[p][c].abs() < 1e-300 {
                ok = false;
                break;
            }
            a.swap(c, p);
            let pivot = a[c].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != c {
                    let f = row[c] / pivot[c];
                    for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                        *x -= f * p;
                    }
                }
            }
        }
        if !ok {
            continue;
        }
        let mut x = vec![0.0; n];
        for (i, &fi) in free.iter().enumerate() {
            x[fi] = a[i][k] / a[i][i];
        }
        if x.iter().any(|v| *v < 0.0 || !v.is_finite()) {
            continue;
        }
        let res: f64 = rows
            .iter()
            .zip(rhs)
            .map(|(r, y)| {
                let p: f64 = r.iter().zip(&x).map(|(a, b)| a * b).sum();
                (p - y).powi(2)
            })
            .sum();
        if res < best.0 {
            best = (res, x);
        }
    }
    best.1
}

/// Fits the CPU op model to measured steps: per-op overhead, per-row costs, memory and copy bandwidths and GEMM rate
/// from the step times and per-stage busy times of the one-stream steps (each an equation, residuals relative to the
/// measurement, a step [`STEP_WEIGHT`] stages), scaled by one factor to their step times, then the overlap factor from the interleaved steps (relative least squares, clamped to [0, 1]).
pub fn fit(steps: &[(RecsysStep, Measured)]) -> RecsysCpuParams {
    fit_with_cache(steps, l2_cache_bytes())
}

/// This machine's per-core L2 cache, bytes (`/sys/devices/system/cpu/cpu0/cache/index*/{level,size}`), or 0.
pub fn l2_cache_bytes() -> f64 {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    (0..8)
        .filter_map(|i| {
            let idx = dir.join(format!("index{i}"));
            (read(idx.join("level"))? == "2").then_some(())?;
            let size = read(idx.join("size"))?;
            let (num, mult) = match size.strip_suffix('K') {
                Some(n) => (n, 1024.0),
                None => match size.strip_suffix('M') {
                    Some(n) => (n, 1024.0 * 1024.0),
                    None => (size.as_str(), 1.0),
                },
            };
            num.parse::<f64>().ok().map(|n| n * mult)
        })
        .next()
        .unwrap_or(0.0)
}

/// Unknowns of the fit: op overhead, time per row, 1 / memory bandwidth, 1 / copy bandwidth, 1 / GEMM rate, 1 /
/// cache bandwidth, time per copy-op lookup, per miss, per LRU lookup, per LFU lookup-level, per host-row span level, per
/// cache hit, 1 / the MLP stage's dense-stream bandwidth, per byte of an LRU and of an LFU cache's hit row.
pub const UNKNOWNS: usize = 15;

/// Weight of a one-stream fit step's step-time equation against its three stage equations (relative residuals).
pub const STEP_WEIGHT: f64 = 3.0;

/// [`fit`] with the cache size the MLP of a small micro-batch runs from (`cache_bytes`): the MLP bytes of a fit step
/// whose first layer fits ([`trainlab_models::recsys::mlp_working_set`]) and those of its forward and backward
/// embedding ops get their own bandwidth.
pub fn fit_with_cache(steps: &[(RecsysStep, Measured)], cache_bytes: f64) -> RecsysCpuParams {
    fit_terms(steps, cache_bytes, &[])
}

/// Unknown of the host-row span term (`span_s`) in [`fit_terms`].
pub const SPAN: usize = 10;
/// Unknown of the per-hit term (`hit_s`) in [`fit_terms`].
pub const HIT: usize = 11;
/// Unknown of the MLP stage's dense-stream bandwidth (`mlp_bytes_per_s`) in [`fit_terms`]: dropped, the MLP bytes
/// are charged at the memory bandwidth as before it (`mlp_bytes_per_s = None`).
pub const MLP_BW: usize = 12;
/// Unknown of the per-byte cost of an LRU cache's hit row (`lru_hit_byte_s`) in [`fit_terms`].
pub const LRU_HIT_BYTES: usize = 13;
/// Unknown of the per-byte cost of an LFU cache's hit row (`lfu_hit_byte_s`) in [`fit_terms`].
pub const LFU_HIT_BYTES: usize = 14;

/// Whether `w` is one of the MLP-heavy fit steps ([`cpu_step_mlp`]: an MLP other than the grid's 8-1).
pub fn is_mlp_heavy(w: &RecsysStep) -> bool {
    w.mlp != [8, 1]
}

/// [`fit_with_cache`] with the unknowns in `drop` held at 0 ([`SPAN`], [`HIT`]: the calibration reports the held-out
/// errors of the fits without them, of the same measurements).
pub fn fit_terms(steps: &[(RecsysStep, Measured)], cache_bytes: f64, drop: &[usize]) -> RecsysCpuParams {
    let (mut rows, mut rhs) = (Vec::new(), Vec::new());
    let shared_bw = drop.contains(&MLP_BW);
    for (w, m) in steps.iter().filter(|(w, _)| w.streams == 1) {
        let resident = cache_bytes > 0.0 && trainlab_models::recsys::mlp_working_set(w) <= cache_bytes;
        let c = &m.counts;
        let emb = [c.emb_fwd, c.emb_bwd, c.scatter];
        let sum = |f: fn(&CpuStage) -> f64, v: &[CpuStage]| v.iter().map(f).sum::<f64>();
        let mlp = [c.mlp, c.optim];
        // Unknowns ([`UNKNOWNS`]): op overhead, time per row, 1 / memory bandwidth, 1 / copy bandwidth, 1 / GEMM
        // rate, 1 / cache bandwidth (the MLP's bytes of a micro-batch that fits; the optimizer's always from
        // memory), time per row of a staging copy op (its lookups), per missed lookup, per lookup an LRU cache
        // decides, per lookup-level of an LFU cache (`log2(k + 1)` per lookup), per host-row access and doubling of
        // its table (`span_levels`: copy and scatter), per cache hit (the gather's random device-table row), per byte
        // of an LRU and of an LFU cache's hit row (their rows scattered over the device table).
        // (the MLP stage's bytes from memory are dense streams at their own bandwidth, the last unknown)
        let (mlp_mem, mlp_cache) = if resident {
            (c.optim.bytes, c.mlp.bytes)
        } else {
            (sum(|s| s.bytes, &mlp), 0.0)
        };
        // Likewise the forward and backward embedding ops' bytes (the scatter writes the tables: from memory).
        let (emb_mem, emb_cache) = if resident {
            (c.scatter.bytes, c.emb_fwd.bytes + c.emb_bwd.bytes)
        } else {
            (sum(|s| s.bytes, &emb), 0.0)
        };
        let eqs = [
            (
                m.busy_s[0],
                [
                    c.copy.ops,
                    0.0,
                    c.copy.row_bytes,
                    c.copy.bytes,
                    0.0,
                    0.0,
                    c.copy.rows,
                    c.copy.misses,
                    c.copy.lru_lookups,
                    c.copy.lfu_levels,
                    c.copy.span_levels,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                ],
            ),
            (
                m.busy_s[1],
                [
                    sum(|s| s.ops, &emb),
                    sum(|s| s.rows, &emb),
                    emb_mem,
                    0.0,
                    0.0,
                    emb_cache,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    c.scatter.span_levels,
                    c.emb_fwd.hits,
                    0.0,
                    c.emb_fwd.lru_hit_bytes,
                    c.emb_fwd.lfu_hit_bytes,
                ],
            ),
            (
                m.busy_s[2],
                [
                    sum(|s| s.ops, &mlp),
                    sum(|s| s.rows, &mlp),
                    if shared_bw { mlp_mem } else { 0.0 },
                    0.0,
                    sum(|s| s.flops, &mlp),
                    mlp_cache,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    if shared_bw { 0.0 } else { mlp_mem },
                    0.0,
                    0.0,
                ],
            ),
        ];
        // The step itself: the three stages' columns summed (the model's serial step), against the measured step
        // time, weighted STEP_WEIGHT: the op timers miss the work between the ops and, on a loaded machine, more of
        // it the more rows a step moves, so the step times set how the time grows with the field count.
        let eqs = eqs.map(|(t, mut x)| {
            for &j in drop {
                x[j] = 0.0;
            }
            (t, x)
        });
        let step_row: Vec<f64> = (0..UNKNOWNS)
            .map(|j| eqs.iter().map(|(_, x)| x[j]).sum::<f64>())
            .collect();
        if m.step_s > 0.0 {
            rows.push(step_row.iter().map(|v| STEP_WEIGHT * v / m.step_s).collect());
            rhs.push(STEP_WEIGHT);
        }
        for (t, x) in eqs {
            if t > 0.0 {
                rows.push(x.iter().map(|v| v / t).collect());
                rhs.push(1.0);
            }
        }
    }
    let x = nnls(&rows, &rhs);
    let any_resident = steps.iter().any(|(w, _)| {
        w.streams == 1 && cache_bytes > 0.0 && trainlab_models::recsys::mlp_working_set(w) <= cache_bytes
    });
    let inv = |v: f64| if v > 0.0 { 1.0 / v } else { 1e15 };
    let threads = steps.iter().map(|(_, m)| m.threads as u32).max().unwrap_or(1);
    let mut p = RecsysCpuParams {
        op_overhead_s: x[0],
        row_s: x[1],
        copy_row_s: Some(x[6]),
        miss_s: Some(x[7]),
        lru_lookup_s: Some(x[8]),
        lfu_level_s: Some(x[9]),
        span_s: Some(x[10]),
        hit_s: Some(x[11]),
        lru_hit_byte_s: Some(x[LRU_HIT_BYTES]),
        lfu_hit_byte_s: Some(x[LFU_HIT_BYTES]),
        mem_bytes_per_s: inv(x[2]),
        copy_bytes_per_s: inv(x[3]),
        gemm_flops_per_s: inv(x[4]),
        mlp_bytes_per_s: (!shared_bw).then(|| inv(x[MLP_BW])),
        overlap: 1.0,
        threads,
        cache_bytes,
        // Without a fit step whose activations fit, there is nothing to fit the cache bandwidth to: 0, unused.
        cache_bytes_per_s: if any_resident { inv(x[5]) } else { 0.0 },
    };
    // The stage busy times fix the proportions of the costs; the one-stream step times fix their scale (the ops are
    // timed one by one, so the work between them, and the share of the step other processes took, are not in the
    // stage sums): one factor `k` on every cost, by relative least squares on the fit steps.
    let (mut num, mut den) = (0.0, 0.0);
    for (w, m) in steps.iter().filter(|(w, _)| w.streams == 1) {
        let t = cpu_times(w, &m.counts, &p).serial / m.step_s;
        num += t;
        den += t * t;
    }
    if num > 0.0 && den > 0.0 {
        let k = num / den;
        p.op_overhead_s *= k;
        p.row_s *= k;
        p.copy_row_s = p.copy_row_s.map(|r| r * k);
        p.miss_s = p.miss_s.map(|r| r * k);
        p.lru_lookup_s = p.lru_lookup_s.map(|r| r * k);
        p.lfu_level_s = p.lfu_level_s.map(|r| r * k);
        p.span_s = p.span_s.map(|r| r * k);
        p.hit_s = p.hit_s.map(|r| r * k);
        p.lru_hit_byte_s = p.lru_hit_byte_s.map(|r| r * k);
        p.lfu_hit_byte_s = p.lfu_hit_byte_s.map(|r| r * k);
        p.mem_bytes_per_s /= k;
        p.copy_bytes_per_s /= k;
        p.gemm_flops_per_s /= k;
        p.mlp_bytes_per_s = p.mlp_bytes_per_s.map(|b| b / k);
        p.cache_bytes_per_s /= k;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (w, m) in steps.iter().filter(|(w, _)| w.streams >= 2) {
        let t = cpu_times(w, &m.counts, &p);
        let d = t.serial - t.ideal;
        num += (t.serial - m.step_s) * d / (m.step_s * m.step_s);
        den += d * d / (m.step_s * m.step_s);
    }
    if den > 0.0 {
        p.overlap = (num / den).clamp(0.0, 1.0);
    }
    p
}

/// Relative gap between neighbouring sorted per-pass times that splits a case's passes into two speed levels.
pub const SPEED_LEVEL_GAP: f64 = 0.15;

/// Two speed levels of one case's per-pass times ([`speed_levels`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeedLevels {
    /// Passes in the faster group.
    pub low_passes: usize,
    /// Their median, seconds.
    pub low_s: f64,
    /// Passes in the slower group.
    pub high_passes: usize,
    /// Their median, seconds.
    pub high_s: f64,
}

/// Whether `times` (one case's per-pass step times) fall into two speed levels: sorted, the widest relative gap
/// between neighbours exceeds `gap` with at least two passes on each side. A single slow pass is an outlier, not a
/// level.
pub fn speed_levels(times: &[f64], gap: f64) -> Option<SpeedLevels> {
    let mut t: Vec<f64> = times.iter().copied().filter(|v| v.is_finite() && *v > 0.0).collect();
    t.sort_by(f64::total_cmp);
    let (at, widest) = t
        .windows(2)
        .enumerate()
        .map(|(i, p)| (i + 1, p[1] / p[0] - 1.0))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if widest <= gap || at < 2 || t.len() - at < 2 {
        return None;
    }
    let median = |v: &[f64]| trainlab_core::Summary::of(v).median;
    Some(SpeedLevels {
        low_passes: at,
        low_s: median(&t[..at]),
        high_passes: t.len() - at,
        high_s: median(&t[at..]),
    })
}

/// Calibration of the CPU op model against real CPU steps.
pub struct RecsysCalibration;

impl Calibration for RecsysCalibration {
    fn profile_kind(&self) -> &'static str {
        "recsys_step"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        // `calibrate` has refused any device outside `devices()` already.
        debug_assert_eq!(req.device, Device::Cpu);
        let (fit_set, held) = calibration_sets();
        // Interleaved passes over every case, each pass from another starting case; of each case the median over the passes of each pass's fastest step
        // (on-CPU seconds: a neighbour's load on the shared caches slows a step, never speeds it up, and the machine's
        // speed drifts between passes; the median of a pass moved by up to 40% between runs) and per stage the
        // median over the passes of each pass's least busy time.
        let (warmup, repeats, passes) = if req.quick { (1, 3, 1) } else { (1, 4, 15) };
        let total = fit_set.len() + held.len();
        let mut passes_of: Vec<Vec<Measured>> = vec![Vec::new(); total];
        let mut pass_records = Vec::new();
        let all: Vec<&RecsysStep> = fit_set.iter().chain(&held).collect();
        for pass in 0..passes {
            // Each pass starts at another case (a slow drift of the machine's speed does not follow the case order).
            for i in (0..total).map(|j| (j + pass * 7) % total) {
                let w = all[i];
                if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Interrupted);
                }
                (req.progress)(format!(
                    "pass {} of {passes}, step {} of {total}: {}",
                    pass + 1,
                    i + 1,
                    label(w)
                ));
                let m = measure(
                    w,
                    req.seed.derive("recsys_cpu").index(i as u64),
                    warmup,
                    repeats,
                    0,
                    req.cancel,
                )?;
                // Each pass's fastest step, kept in the output too (the spread of a case over the passes).
                let r = crate::calibration::measured_record(
                    "calibrate-recsys_step-cpu",
                    RecsysStep::KIND,
                    &format!("{} [pass {}]", label(w), pass + 1),
                    Device::Cpu,
                    req.seed,
                    &Metric::new("step_time", Unit::Seconds, m.step_min_s),
                );
                pass_records.push(r.clone());
                (req.keep)(vec![r]);
                passes_of[i].push(m);
            }
        }
        let median = |v: Vec<f64>| trainlab_core::Summary::of(&v).median;
        // Cases whose passes split into two speed levels (README: the same step lands on levels up to 40% apart with
        // the process's history), reported so that a user sees which measurements to distrust.
        let levels: Vec<(String, SpeedLevels)> = all
            .iter()
            .zip(&passes_of)
            .filter_map(|(w, ms)| {
                let t: Vec<f64> = ms.iter().map(|m| m.step_min_s).collect();
                speed_levels(&t, SPEED_LEVEL_GAP).map(|l| (label(w), l))
            })
            .collect();
        let measured: Vec<Measured> = passes_of
            .into_iter()
            .filter_map(|ms| {
                let step = median(ms.iter().map(|m| m.step_min_s).collect());
                let busy = std::array::from_fn(|k| median(ms.iter().map(|m| m.busy_s[k]).collect()));
                ms.into_iter().next().map(|m| Measured {
                    step_s: step,
                    step_min_s: step,
                    busy_s: busy,
                    ..m
                })
            })
            .collect();
        let fitted: Vec<(RecsysStep, Measured)> = fit_set.iter().cloned().zip(measured.iter().cloned()).collect();
        let params = fit(&fitted);
        // The same measurements fitted without the span term, without the hit term and without both: their held-out
        // errors, reported beside the model's (whether the terms earn their place on cases the fit did not see).
        let ablations: Vec<(&str, RecsysCpuParams)> = [
            ("span", vec![SPAN]),
            ("hit", vec![HIT]),
            ("span and hit", vec![SPAN, HIT]),
            ("replacing-cache hit bytes", vec![LRU_HIT_BYTES, LFU_HIT_BYTES]),
        ]
        .into_iter()
        .map(|(name, drop)| (name, fit_terms(&fitted, l2_cache_bytes(), &drop)))
        .collect();
        // The previous model on the same measurements: no MLP-heavy fit steps, the MLP bytes at the memory bandwidth, no
        // replacing-cache hit bytes.
        let previous: Vec<(RecsysStep, Measured)> = fitted.iter().filter(|(w, _)| !is_mlp_heavy(w)).cloned().collect();
        let previous = fit_terms(&previous, l2_cache_bytes(), &[MLP_BW, LRU_HIT_BYTES, LFU_HIT_BYTES]);
        let seed = req.seed;
        let study = "calibrate-recsys_step-cpu";
        let mut records = pass_records;
        let mut held_out = Vec::new();
        for (i, (w, m)) in fit_set.iter().chain(&held).zip(&measured).enumerate() {
            let is_fit = i < fit_set.len();
            let case = format!("{} [{}]", label(w), if is_fit { "fit" } else { "held-out" });
            let cal = cpu_closed_form(w, &params);
            let uncal = cpu_closed_form(w, &RecsysCpuParams::uncalibrated(w));
            let rec = |backend: &str, f: Fidelity, name: &str, unit: Unit, v: f64| {
                Record::from_metric(
                    study,
                    RecsysStep::KIND,
                    &case,
                    backend,
                    f,
                    seed.0,
                    &Metric::new(name, unit, v),
                )
            };
            records.push(rec("cpu", Fidelity::Measured, "step_time", Unit::Seconds, m.step_s));
            records.push(rec(
                "analytical-calibrated",
                Fidelity::Analytical,
                "step_time",
                Unit::Seconds,
                cal.step_time_s,
            ));
            records.push(rec(
                "analytical-uncalibrated",
                Fidelity::Analytical,
                "step_time",
                Unit::Seconds,
                uncal.step_time_s,
            ));
            for (name, mv, cv) in [
                ("stage.copy", m.busy_s[0], cal.stage_copy_s),
                ("stage.embedding", m.busy_s[1], cal.stage_embedding_s),
                ("stage.mlp", m.busy_s[2], cal.stage_mlp_s),
            ] {
                records.push(rec("cpu", Fidelity::Measured, name, Unit::Seconds, mv));
                records.push(rec(
                    "analytical-calibrated",
                    Fidelity::Analytical,
                    name,
                    Unit::Seconds,
                    cv,
                ));
            }
            records.push(rec(
                "cpu",
                Fidelity::Measured,
                "kernels",
                Unit::Count,
                (m.ops - m.copies) as f64,
            ));
            records.push(rec(
                "cpu",
                Fidelity::Measured,
                "cache_hit_rate",
                Unit::Ratio,
                m.hit_rate,
            ));
            if !is_fit {
                held_out.push(HeldOut {
                    case: label(w),
                    metric: "step_time".into(),
                    measured: m.step_s,
                    calibrated: cal.step_time_s,
                    uncalibrated: Some(uncal.step_time_s),
                });
            }
        }
        let errs: Vec<f64> = held_out.iter().map(|h| h.calibrated_error().abs()).collect();
        let errs_of = |p: &RecsysCpuParams| -> Vec<f64> {
            held.iter()
                .zip(&measured[fit_set.len()..])
                .map(|(w, m)| (cpu_closed_form(w, p).step_time_s / m.step_s - 1.0).abs())
                .collect()
        };
        let median = trainlab_core::Summary::of(&errs).median;
        let worst = errs.iter().copied().fold(0.0, f64::max);
        // Per held-out group: median and worst |error|.
        let group_errs_of = |errs: &[f64], g: &str| -> (f64, f64, usize) {
            let e: Vec<f64> = held
                .iter()
                .zip(errs)
                .filter(|(w, _)| held_out_group(w) == g)
                .map(|(_, e)| *e)
                .collect();
            (
                trainlab_core::Summary::of(&e).median,
                e.iter().copied().fold(0.0, f64::max),
                e.len(),
            )
        };
        let group_errs = |g: &str| group_errs_of(&errs, g);
        let (fields_med, fields_worst, fields_n) = group_errs("fields");

        let (inter_med, inter_worst, inter_n) = group_errs("interleaved");
        let (pol_med, pol_worst, pol_n) = group_errs("policy");
        let device = trainlab_executors::cpu::cpu_device_description();
        let prov = provenance(
            device.clone(),
            fit_set
                .iter()
                .map(|w| format!("{} [fit]", label(w)))
                .chain(held.iter().map(|w| format!("{} [held-out]", label(w))))
                .collect(),
        );
        let mut notes = vec![
            format!("device: {device}"),
            format!(
                "fitted: op overhead {:.3} us, {:.1} ns per row, {:.1} ns per copy-op lookup, {:.1} ns per miss, \
                 {:.1} ns per LRU lookup, {:.1} ns per LFU lookup-level, {:.2} ns per host-row span level, {:.1} ns per hit, {:.3} / {:.3} ns per LRU / LFU hit byte, memory \
                 {:.2} GB/s, staging copy \
                 {:.2} GB/s, GEMM {:.2} GFLOP/s, MLP dense streams {:.2} GB/s, MLP from a {:.0} KiB cache {:.2} GB/s, overlap {:.2}, {} threads",
                params.op_overhead_s * 1e6,
                params.row_s * 1e9,
                params.copy_row_s.unwrap_or(params.row_s) * 1e9,
                params.miss_s.unwrap_or(0.0) * 1e9,
                params.lru_lookup_s.unwrap_or(0.0) * 1e9,
                params.lfu_level_s.unwrap_or(0.0) * 1e9,
                params.span_s.unwrap_or(0.0) * 1e9,
                params.hit_s.unwrap_or(0.0) * 1e9,
                params.lru_hit_byte_s.unwrap_or(0.0) * 1e9,
                params.lfu_hit_byte_s.unwrap_or(0.0) * 1e9,
                params.mem_bytes_per_s * 1e-9,
                params.copy_bytes_per_s * 1e-9,
                params.gemm_flops_per_s * 1e-9,
                params.mlp_bytes_per_s.unwrap_or(params.mem_bytes_per_s) * 1e-9,
                params.cache_bytes / 1024.0,
                params.cache_bytes_per_s * 1e-9,
                params.overlap,
                params.threads
            ),
            format!(
                "held-out step time: median |error| {:.1}%, worst {:.1}% over {} steps",
                100.0 * median,
                100.0 * worst,
                held_out.len()
            ),
            format!(
                "held-out field counts (one stream): median |error| {:.1}%, worst {:.1}% over {fields_n} steps; \
                 LRU/LFU (one stream): median {:.1}%, worst {:.1}% over {pol_n} steps; \
                 interleaved (2 streams): median {:.1}%, worst {:.1}% over {inter_n} steps",
                100.0 * fields_med,
                100.0 * fields_worst,
                100.0 * pol_med,
                100.0 * pol_worst,
                100.0 * inter_med,
                100.0 * inter_worst
            ),
        ];
        let mut ablation_json = serde_json::Map::new();
        for (name, p) in &ablations {
            let e = errs_of(p);
            let (fm, fw, _) = group_errs_of(&e, "fields");
            let (pm, pw, _) = group_errs_of(&e, "policy");
            notes.push(format!(
                "the same measurements fitted without the {name} term: held-out field counts median {:.1}%, worst \
                 {:.1}%; LRU/LFU median {:.1}%, worst {:.1}%",
                100.0 * fm,
                100.0 * fw,
                100.0 * pm,
                100.0 * pw
            ));
            ablation_json.insert(
                format!("without {name}"),
                serde_json::json!({"fields_median": fm, "fields_max": fw, "policy_median": pm, "policy_max": pw}),
            );
        }
        {
            let e = errs_of(&previous);
            let (fm, fw, _) = group_errs_of(&e, "fields");
            let (pm, pw, _) = group_errs_of(&e, "policy");
            let (im, iw, _) = group_errs_of(&e, "interleaved");
            notes.push(format!(
                "the same measurements fitted by the previous model (no MLP-heavy fit steps, the MLP bytes at the \
                 memory bandwidth, no replacing-cache hit bytes; this fit set's 200-field LRU/LFU steps kept: GEMM {:.2} GFLOP/s): held-out field counts median {:.1}%, worst {:.1}%; LRU/LFU \
                 median {:.1}%, worst {:.1}%; interleaved median {:.1}%, worst {:.1}%",
                previous.gemm_flops_per_s * 1e-9,
                100.0 * fm,
                100.0 * fw,
                100.0 * pm,
                100.0 * pw,
                100.0 * im,
                100.0 * iw
            ));
            ablation_json.insert(
                "previous model".into(),
                serde_json::json!({"fields_median": fm, "fields_max": fw, "policy_median": pm, "policy_max": pw,
                    "interleaved_median": im, "interleaved_max": iw, "params": previous}),
            );
        }
        if levels.is_empty() {
            notes.push(format!(
                "speed levels: no case's per-pass step times split into two groups more than {:.0}% apart",
                100.0 * SPEED_LEVEL_GAP
            ));
        } else {
            let list: Vec<String> = levels
                .iter()
                .map(|(case, l)| {
                    format!(
                        "{case}: {} passes at {:.2} ms, {} at {:.2} ms",
                        l.low_passes,
                        l.low_s * 1e3,
                        l.high_passes,
                        l.high_s * 1e3
                    )
                })
                .collect();
            notes.push(format!(
                "speed levels (per-pass step times in two groups more than {:.0}% apart; the case's median falls in \
                 the larger group, rerun where it matters): {}",
                100.0 * SPEED_LEVEL_GAP,
                list.join("; ")
            ));
        }
        let levels_json: Vec<serde_json::Value> = levels
            .iter()
            .map(|(case, l)| {
                serde_json::json!({"case": case, "low_passes": l.low_passes, "low_s": l.low_s,
                    "high_passes": l.high_passes, "high_s": l.high_s})
            })
            .collect();
        let json = serde_json::json!({
            "speed_levels": levels_json,
            "ablations": ablation_json,
            "device": device, "params": params,
            "held_out_median_abs_error": median, "held_out_max_abs_error": worst,
            "held_out_fields_median_abs_error": fields_med, "held_out_fields_max_abs_error": fields_worst,
            "held_out_interleaved_median_abs_error": inter_med, "held_out_interleaved_max_abs_error": inter_worst,
            "held_out_policy_median_abs_error": pol_med, "held_out_policy_max_abs_error": pol_worst,
        });
        let profile = RecsysProfile {
            device: "cpu".into(),
            cpu: params,
        };
        Ok(Calibrated {
            profile_kind: "recsys_step",
            profile_toml: envelope("recsys_step", prov, profile, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}

//! Exhaustive search over parallel layouts of a dense training job with the step model of [`crate::dense`].
//!
//! Enumerated: `tp` a power of two `<= gpus_per_node` dividing the heads; with `tp > 1` sequence parallelism on and
//! off; `cp` in 1, 2, 4, 8, 16 dividing the sequence and leaving at least [`MIN_CP_TOKENS`] tokens per rank; `pp`
//! from 1 to the layers (not necessarily dividing them: the slowest stage sets the pace) with
//! `dp = gpus / (tp cp pp)` an integer; with `pp > 1` interleaving with `v` in [`VIRTUAL_STAGES`] where valid;
//! micro-batch sizes 1, 2, 4, 8 with `dp * micro_batch` dividing the global batch; recompute none, selective, full;
//! with `pp > 1` end stages even or trimmed by one layer each ([`TRIM_END_STAGES`], Llama 3's split, for the LM
//! head's cost); for an MoE model ([`DenseTraining::moe`]) every expert-parallel size `ep` dividing both `dp` and the
//! experts ([`ep_options`]), the closed-form load of each distinct (tokens per group, `ep`) computed once per search
//! ([`crate::dense_moe::closed_form_load`]). The optimizer sharding is chosen per layout, not enumerated ([`row_of`]): ZeRO-1; ZeRO-2 when
//! ZeRO-1 does not fit (in this model ZeRO-2 has ZeRO-1's time with less memory, so it is only needed then);
//! ZeRO-3 when neither fits (never for MoE models, where it is not modelled; its parameter gathers share no bandwidth with other collectives in this model, which
//! flatters it, so it is not chosen for speed; a workload with `zero_stage = 3` is still priced as such). Layouts
//! whose modelled memory exceeds the GPU (with [`crate::dense::MEMORY_HEADROOM`] free) under every stage tried are
//! kept in the rows but cannot win. The winner is the fitting layout with the smallest step time; ties go to the
//! earlier layout in enumeration order (tp, sp, cp, pp, v, trim, micro-batch, recompute ascending; ZeRO-1 before
//! ZeRO-3), so the answer is the same at any thread count.
use rayon::prelude::*;
use trainlab_core::workloads::{DenseOutcome, DenseTraining, ParallelConfig, Recompute};
use trainlab_core::{DeviceProfile, Error, Workload};

use crate::dense::{check_config, evaluate_with, fits_memory, outcome_of};
use crate::dense_moe::{MoeLoad, closed_form_load, group_tokens};
use crate::hardware::AlphaBetaNetwork;
use crate::roofline::datasheet_profile;

/// The layout space of [`candidates`] in words, for reports.
pub const SEARCH_SPACE: &str = "every tp (a power of two up to a node, dividing the heads) with and without \
    sequence parallelism, cp up to 16, pp up to the layers with interleaving (1-6 or 8 model chunks) and even or \
    trimmed end stages, dp the \
    rest; for MoE models every expert-parallel size dividing dp and the experts; micro-batches of 1, 2, 4, 8; no, \
    selective or full recomputation; ZeRO-1, or ZeRO-2/3 where memory needs it; the fastest layout that fits in memory \
    wins";

/// Micro-batch sizes tried.
pub const MICRO_BATCHES: [u64; 4] = [1, 2, 4, 8];
/// Interleaving degrees tried (model chunks per stage) when `pp > 1`: 1 to 6 and 8, so that a stage of 5, 6, 9, 10,
/// 12 or 15 layers also has even chunks of more than one layer (Megatron-LM requires `v` to divide the layers per
/// stage; the closed form charges uneven chunks `1/v` of their stage each, which `op_sim` finds up to 10% off). Until
/// 2026-12-03 only 1, 2, 4, 8: on 16,384 H100s `op_sim`'s pick for Llama-2-70B went from TP8 PP8 CP2 v8 with
/// trimmed end stages (uneven chunks of 1-2 layers, 0.347 s simulated) to v5 (even chunks of 2 layers, 0.333 s).
pub const VIRTUAL_STAGES: [u64; 7] = [1, 2, 3, 4, 5, 6, 8];
/// Context-parallel sizes tried.
pub const CONTEXT_PARALLEL: [u64; 5] = [1, 2, 4, 8, 16];
/// Fewest tokens per context-parallel rank the search tries: below this the ring's K/V exchange is not hidden by
/// the attention it overlaps (a search heuristic, not a validity rule).
pub const MIN_CP_TOKENS: u64 = 2048;
/// Layers trimmed from the first and the last stage tried when `pp > 1`.
pub const TRIM_END_STAGES: [u64; 2] = [0, 1];
/// Recompute policies tried.
pub const RECOMPUTES: [Recompute; 3] = [Recompute::None, Recompute::Selective, Recompute::Full];

/// One evaluated layout.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRow {
    /// The prediction (its `config` is the layout).
    pub outcome: DenseOutcome,
    /// Whether it fits in memory.
    pub fits: bool,
}

/// The search answer: the best layout and every evaluated row, in enumeration order.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// The fastest fitting layout.
    pub best: DenseOutcome,
    /// All evaluated layouts (fitting or not), in enumeration order.
    pub rows: Vec<SearchRow>,
}

/// Expert-parallel sizes tried for `dp` data-parallel ranks: every divisor of `dp` that divides the experts (just 1
/// for a dense model).
pub fn ep_options(w: &DenseTraining, dp: u64) -> Vec<u64> {
    match &w.moe {
        None => vec![1],
        Some(moe) => (1..=dp.min(moe.experts))
            .filter(|&e| dp.is_multiple_of(e) && moe.experts.is_multiple_of(e))
            .collect(),
    }
}

/// All candidate layouts for the workload, in enumeration order (valid by [`check_config`], memory not checked).
pub fn candidates(w: &DenseTraining) -> Vec<ParallelConfig> {
    let m = &w.model;
    let gpus = w.cluster.gpus();
    let gpn = w.cluster.gpus_per_node as u64;
    let seqs = crate::dense::global_sequences(w).unwrap_or(0);
    let mut out = Vec::new();
    let mut tp = 1u64;
    while tp <= gpn.max(1) {
        if m.heads.is_multiple_of(tp) && gpus.is_multiple_of(tp) {
            for sp in if tp > 1 { &[true, false][..] } else { &[true][..] } {
                for &cp in &CONTEXT_PARALLEL {
                    if !m.seq_len.is_multiple_of(cp)
                        || (cp > 1 && m.seq_len / cp < MIN_CP_TOKENS)
                        || !(gpus / tp).is_multiple_of(cp)
                    {
                        continue;
                    }
                    for pp in 1..=m.layers {
                        if !(gpus / (tp * cp)).is_multiple_of(pp) {
                            continue;
                        }
                        let dp = gpus / (tp * cp * pp);
                        let eps = ep_options(w, dp);
                        for &v in &VIRTUAL_STAGES {
                            if v > 1 && pp == 1 {
                                break;
                            }
                            for &trim in &TRIM_END_STAGES {
                                if trim > 0 && pp == 1 {
                                    break;
                                }
                                for &ep in &eps {
                                    for &micro_batch in &MICRO_BATCHES {
                                        for &recompute in &RECOMPUTES {
                                            let cfg = ParallelConfig {
                                                cp,
                                                virtual_stages: v,
                                                sequence_parallel: *sp,
                                                trim_end_stages: trim,
                                                ep,
                                                ..ParallelConfig::new(tp, pp, dp, micro_batch, recompute)
                                            };
                                            if cfg.check(m, gpus, seqs).is_ok() {
                                                out.push(cfg);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        tp *= 2;
    }
    out
}

/// Evaluates every candidate layout (in parallel, results in enumeration order) and returns the fastest that fits.
pub fn search(w: &DenseTraining, profile: Option<&DeviceProfile>) -> Result<SearchResult, Error> {
    w.validate()?;
    let owned;
    let p = match profile {
        Some(p) => p,
        None => {
            owned = datasheet_profile(&w.cluster.gpu);
            &owned
        }
    };
    let cands = candidates(w);
    let loads = LoadCache::of(w, &cands);
    let rows: Vec<SearchRow> = cands
        .par_iter()
        .map(|cfg| row_with(w, cfg, p, loads.get(w, cfg)))
        .collect();
    let mut best: Option<&SearchRow> = None;
    for r in rows.iter().filter(|r| r.fits) {
        // strict `<` keeps the earliest layout among equal step times
        if best.is_none_or(|b| r.outcome.step_time_s < b.outcome.step_time_s) {
            best = Some(r);
        }
    }
    match best {
        Some(b) => Ok(SearchResult {
            best: b.outcome.clone(),
            rows,
        }),
        None => {
            let gib = (1u64 << 30) as f64;
            let smallest = rows
                .iter()
                .map(|r| r.outcome.memory_per_gpu_bytes)
                .fold(f64::INFINITY, f64::min);
            let need = if smallest.is_finite() {
                format!("smallest needs {:.1} GiB per GPU", smallest / gpu_fraction() / gib)
            } else {
                "no layout divides the batch, heads and layers".to_string()
            };
            Err(Error::invalid(
                "workload.model",
                &w.model.name,
                format!(
                    "fits in no parallel configuration on {} x {} ({need})",
                    w.cluster.gpus(),
                    w.cluster.gpu.name
                ),
                "add GPUs, use a larger-memory GPU, or a smaller model",
            ))
        }
    }
}

/// The closed-form MoE loads of a search's candidates, one per distinct (tokens per expert-parallel group, `ep`),
/// computed once (in parallel) instead of per layout.
#[derive(Debug, Default)]
pub struct LoadCache {
    keys: Vec<(u64, u64)>,
    loads: Vec<MoeLoad>,
}

impl LoadCache {
    /// The loads of every candidate of `cands` (empty for a dense model).
    pub fn of(w: &DenseTraining, cands: &[ParallelConfig]) -> LoadCache {
        let Some(moe) = &w.moe else {
            return LoadCache::default();
        };
        let mut keys: Vec<(u64, u64)> = cands.iter().map(|c| (group_tokens(w, c), c.ep.max(1))).collect();
        keys.sort_unstable();
        keys.dedup();
        let loads = keys.par_iter().map(|&(n, ep)| closed_form_load(moe, n, ep)).collect();
        LoadCache { keys, loads }
    }
    /// The load of one candidate (`None`: not cached, or a dense model).
    pub fn get(&self, w: &DenseTraining, cfg: &ParallelConfig) -> Option<MoeLoad> {
        if self.keys.is_empty() {
            return None;
        }
        let key = (group_tokens(w, cfg), cfg.ep.max(1));
        self.keys.binary_search(&key).ok().map(|i| self.loads[i])
    }
}

/// The row of one candidate layout with its optimizer sharding chosen: ZeRO-1; ZeRO-2 if that does not fit;
/// ZeRO-3 if neither fits (not for MoE models). The fitting one with the smallest step wins (the lower stage on a
/// tie); when none fits, the one needing the least memory.
pub fn row_of(w: &DenseTraining, cfg: &ParallelConfig, p: &DeviceProfile) -> SearchRow {
    row_with(w, cfg, p, None)
}

/// [`row_of`] with an MoE model's load given (`None`: computed from the closed form), e.g. from a [`LoadCache`].
pub fn row_with(w: &DenseTraining, cfg: &ParallelConfig, p: &DeviceProfile, load: Option<MoeLoad>) -> SearchRow {
    // check_config passed during enumeration
    let mb = check_config(w, cfg).unwrap_or(1);
    let net = AlphaBetaNetwork::of(&w.cluster);
    let eval = |zero_stage: u8| {
        let c = ParallelConfig { zero_stage, ..*cfg };
        let b = evaluate_with(w, &c, p, mb, &net, load);
        let row = SearchRow {
            fits: fits_memory(w, b.memory_per_gpu_bytes),
            outcome: outcome_of(w, &b),
        };
        (row, b.dp_exposed_s)
    };
    let (mut row, dp_exposed) = eval(cfg.zero_stage.max(1));
    if cfg.dp * cfg.cp <= 1 || cfg.zero_stage > 1 {
        return row;
    }
    if !row.fits {
        row = eval(2).0;
    }
    // ZeRO-3 only where memory needs it: its parameter gathers share no bandwidth with the other collectives in this
    // model (no contention), which flatters it, so it is not picked for speed (`zero_stage = 3` in a workload
    // still prices it).
    let _ = dp_exposed;
    if !row.fits && w.moe.is_none() {
        let (z3, _) = eval(3);
        let better = match (z3.fits, row.fits) {
            (true, true) => z3.outcome.step_time_s < row.outcome.step_time_s,
            (true, false) => true,
            (false, true) => false,
            (false, false) => z3.outcome.memory_per_gpu_bytes < row.outcome.memory_per_gpu_bytes,
        };
        if better {
            row = z3;
        }
    }
    row
}

/// The GPU memory needed for a modelled peak includes the headroom.
fn gpu_fraction() -> f64 {
    1.0 - crate::dense::MEMORY_HEADROOM
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::evaluate;
    use crate::dense::tests::workload;
    use crate::roofline::datasheet_profile;

    #[test]
    fn finds_a_sensible_layout_for_70b() {
        let w = workload(16);
        let r = search(&w, None).unwrap();
        assert!(r.rows.len() > 50);
        let b = &r.best;
        // 70B does not fit on fewer than ~4 GPUs of model parallelism unless ZeRO-3 shards the parameters
        assert!(
            b.config.tp * b.config.pp >= 4 || b.config.zero_stage == 3,
            "{:?}",
            b.config
        );
        for row in r.rows.iter().filter(|r| r.fits) {
            assert!(row.outcome.step_time_s >= b.step_time_s);
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let w = workload(16);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let a = one.install(|| search(&w, None).unwrap());
        let b = search(&w, None).unwrap();
        assert_eq!(a, b);
    }

    /// 16 layers of a 70B-wide model on 17 nodes (136 GPUs, 17 a prime: tp x pp is at most 8) with 5 GiB GPUs:
    /// no layout fits with ZeRO-1 or ZeRO-2 (at best `P/8 (2 + 14/17)` bytes of state, 5.7 GB), ZeRO-3 shards all 16
    /// bytes per parameter over the 17 replicas and fits; the search now finds it.
    #[test]
    fn a_layout_that_fits_only_with_zero3_is_found() {
        let mut w = workload(17);
        w.model.layers = 16;
        w.global_batch_tokens = 4096 * 17 * 8;
        w.cluster.gpu.memory_bytes = 5 << 30;
        let p = datasheet_profile(&w.cluster.gpu);
        let cands = candidates(&w);
        assert!(!cands.is_empty());
        for c in &cands {
            for z in [0u8, 1, 2] {
                let c = ParallelConfig { zero_stage: z, ..*c };
                let b = evaluate(&w, &c, &p, check_config(&w, &c).unwrap());
                assert!(!fits_memory(&w, b.memory_per_gpu_bytes), "{c:?} fits with ZeRO-{z}");
            }
        }
        let r = search(&w, None).unwrap();
        assert_eq!(r.best.config.zero_stage, 3, "{:?}", r.best.config);
        assert!(r.best.memory_per_gpu_bytes <= 0.9 * (5u64 << 30) as f64);
        // with the old memory the same search keeps ZeRO-1 (nothing needs sharding the parameters)
        w.cluster.gpu.memory_bytes = 80 << 30;
        let r = search(&w, None).unwrap();
        assert!(r.best.config.zero_stage < 3, "{:?}", r.best.config);
    }

    /// With `pp > 1` trimmed end stages are candidates; ZeRO-3 is chosen only where ZeRO-1 and ZeRO-2 do not fit.
    #[test]
    fn trims_are_enumerated_and_zero3_only_where_memory_needs_it() {
        let w = workload(16);
        let cands = candidates(&w);
        assert!(cands.iter().any(|c| c.trim_end_stages == 1 && c.pp > 1));
        assert!(cands.iter().all(|c| c.trim_end_stages == 0 || c.pp > 1));
        let p = datasheet_profile(&w.cluster.gpu);
        for c in cands.iter().step_by(11) {
            let row = row_of(&w, c, &p);
            let mb = check_config(&w, c).unwrap();
            let z2 = evaluate(&w, &ParallelConfig { zero_stage: 2, ..*c }, &p, mb);
            if fits_memory(&w, z2.memory_per_gpu_bytes) {
                assert!(row.fits && row.outcome.config.zero_stage < 3, "{c:?}");
            }
        }
    }

    #[test]
    fn too_big_is_an_error_naming_the_model() {
        let mut w = workload(1);
        w.model.layers = 800;
        w.model.hidden = 16384;
        w.model.heads = 128;
        w.model.ffn_hidden = 65536;
        let e = search(&w, None).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("workload.model") && s.contains("smallest needs"), "{s}");
        assert!(e.is_user_error());
    }
}

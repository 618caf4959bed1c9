//! Validation of the analytical dense step model (`trainlab_models::dense`) against published measured throughput
//! of large runs (`trainlab_datasets::published`): Megatron-LM SC'21 Table 1, Llama 3 Table 4, MegaScale Table 2,
//! MT-NLG 530B, BLOOM 176B.
//!
//! For each published run the model gets the paper's model, GPU, GPU count, TP/CP/PP/DP and global batch; the
//! micro-batch size and the interleaving degree (not reported) and, where the paper does not say, the recompute
//! policy are chosen as the fastest that fits in memory. Throughput is compared in tokens/s per GPU, which is convention-free: Megatron's TFLOP/s
//! (which count full recomputation, `96 B s l h^2 (1 + s/6h + V/16lh)`) are converted with their own formula, MFU
//! rows with the model-FLOP count of `TransformerSpec::train_flops_per_token`.
//!
//! Each run gets the software features its paper states: MegaScale's rows its parallel transformer block,
//! sliding-window attention (window assumed) and TP, PP and DP overlap (its Table 3); MegaScale's Megatron-LM baseline
//! none of them; Llama 3's 8K rows no activation recomputation (its sec. 3.3.2). Where the memory model does not fit a
//! stated recompute policy the run used (Llama 3 at TP8 PP16 without recomputation: the paper also frees each stage's
//! input and output tensors and runs a flexible interleaved schedule, which the memory model does not describe), the
//! fastest layout is taken without the memory check and the row is flagged.
//!
//! Bounds on the datasheet profile: every verified row over-predicted, by under 35% (the model is optimistic there,
//! not noisy); every row of a current stack within -10% / +30%, of an older stack 0 / +45%. Then a **calibration**
//! (`dense_model_calibrated_on_one_row_per_gpu_predicts_the_rest`): one parameter per GPU, the scale of the datasheet
//! GEMM rate, fitted to one named verified row (A100: MegaScale at 3,072 GPUs; H100: Llama 3 at 8,192), and every
//! other row predicted with it: held-out verified rows of current stacks mean |error| < 8%, worst < 15%; all held-out
//! rows < 10% / < 25%.
//!
//! Rows of older software stacks are over-predicted: MegaScale's Megatron-LM baseline (the same model, GPUs and
//! layout as MegaScale's own rows at 1/1.21 and 1/1.34 of their throughput, predicted without MegaScale's five
//! optimisations but still with fused kernels), MT-NLG 530B (DeepSpeed + Megatron, 2021) and BLOOM 176B
//! (Megatron-DeepSpeed, 2022): the model has no input for what these stacks lack beyond them.
//!
//! Fused attention is causal: the kernel computes the score tiles on or below the diagonal only
//! (`trainlab_models::dense::causal_block_fraction`); Megatron SC'21 rows materialise the scores (full GEMM).
//! Llama 3's row at sequence 131,072 with CP16 converts MFU to tokens/s with the model's FLOP count, which does not
//! credit the causal mask (PaLM's convention); the paper does not say which it used.
//!
//! Rows whose software predates sequence parallelism (Megatron-LM SC'21, MT-NLG, BLOOM) run without it.
//!
//! Measured on 2026-12-03 (`cargo test --workspace --locked --test validate_dense -- --nocapture`), datasheet profile:
//! V rows 8, mean |error| 18.1%, worst +28.9% (the MegaScale baseline at 12,288 GPUs); MegaScale +12.9% / +13.9%,
//! Megatron 1008B +5.3%, Llama 3 405B at 8,192 / 16,384 GPUs +27.0% / +23.9% (without recomputation, over the memory
//! model), with CP16 +12.4%. Calibrated (A100 GEMM rate x 0.881, H100 x 0.750): held-out V rows 7.9% / 16.3%, of
//! current stacks 5.7% / 13.5% (Llama 3 16,384 -2.4%, CP16 -13.5%, MegaScale 12,288 +1.1%, Megatron 1008B -5.8%);
//! all 31 held-out rows 7.6% / 22.1%. The issue-15 goal (V rows mean <= 3%, worst <= 8%) is not met.
use trainlab_core::workloads::{DenseOutcome, DenseTraining, ParallelConfig, Recompute};
use trainlab_core::{DeviceProfile, Dtype, HeldOut, PROFILE_FORMAT, Profile, Provenance};
use trainlab_datasets::gpus;
use trainlab_datasets::published::{DenseRun, dense_runs};
use trainlab_models::dense;

const BOUND: f64 = 0.30;

fn predict(r: &DenseRun) -> Prediction {
    predict_on(r, stated_stack(r), None)
}

/// One row's prediction: the fastest layout, its workload, and whether it fits the memory model.
struct Prediction {
    outcome: DenseOutcome,
    workload: DenseTraining,
    /// False where no micro-batch and interleaving degree fits the memory model under the row's stated recompute
    /// policy, which the run demonstrably used: the fastest is then taken without the memory check.
    fits: bool,
}

/// The fastest fitting prediction for `r` with the workload's options set by `options` after the defaults; where
/// nothing fits under a recompute policy the paper states, the fastest without the memory check (flagged).
fn predict_with(r: &DenseRun, options: impl Fn(&mut DenseTraining)) -> Prediction {
    predict_on(r, options, None)
}

/// [`predict_with`] on a device profile (`None`: the GPU's datasheet profile).
fn predict_on(r: &DenseRun, options: impl Fn(&mut DenseTraining), profile: Option<&DeviceProfile>) -> Prediction {
    let nodes = (r.gpus / r.gpus_per_node as u64) as u32;
    let cluster = gpus::cluster(&r.gpu, nodes, r.gpus_per_node).expect("preset");
    let mut w = DenseTraining {
        // Megatron-LM in 2021 materialised attention scores (no FlashAttention)
        attention_scores_materialized: r.source.starts_with("Narayanan"),
        ..DenseTraining::new(
            r.transformer(),
            cluster,
            r.global_batch_seqs * r.seq_len,
            1e12,
            Dtype::Bf16,
        )
    };
    options(&mut w);
    let policies: Vec<Recompute> = match r.recompute {
        Some(p) => vec![p],
        None => vec![Recompute::None, Recompute::Selective, Recompute::Full],
    };
    let mut best: Option<DenseOutcome> = None;
    let mut best_unchecked: Option<DenseOutcome> = None;
    // Not stated per row: micro-batch size, interleaving degree (and the recompute policy where `any`): the fastest
    // that fits. Stages that do not divide the layers (Llama 3: 126 on 16) get the default split, which puts one
    // layer fewer on the first and the last stage, as Llama 3 did.
    for v in [1u64, 2, 3, 4, 5, 6, 8] {
        for mb in [1u64, 2, 4, 8] {
            for &recompute in &policies {
                let cfg = ParallelConfig {
                    virtual_stages: v,
                    cp: r.cp,
                    sequence_parallel: !predates_sequence_parallelism(r),
                    ..ParallelConfig::new(r.tp, r.pp, r.dp, mb, recompute)
                };
                let Ok(o) = dense::step(&w, &cfg, profile) else {
                    continue;
                };
                let slot = if dense::fits(&w, &cfg) {
                    &mut best
                } else {
                    &mut best_unchecked
                };
                if slot.as_ref().is_none_or(|b| o.step_time_s < b.step_time_s) {
                    *slot = Some(o);
                }
            }
        }
    }
    match (best, r.recompute) {
        (Some(outcome), _) => Prediction {
            outcome,
            workload: w,
            fits: true,
        },
        (None, Some(_)) => Prediction {
            outcome: best_unchecked.unwrap_or_else(|| panic!("{} on {} GPUs: no valid layout", r.model, r.gpus)),
            workload: w,
            fits: false,
        },
        (None, None) => panic!("{} on {} GPUs: no micro-batch/recompute fits", r.model, r.gpus),
    }
}

/// MegaScale (NSDI'24) states its system's optimisations (Table 3): the parallel transformer block, sliding-window
/// attention and TP, PP and DP communication overlap; its Megatron-LM baseline has none of them (Table 3 credits the
/// DP overlap to MegaScale). Each MegaScale Table 2 row gets its own system's: the window is not published (half the
/// sequence is assumed, see `megascale_overlap_ablation_and_tp_overlap_rows`). Other rows keep the defaults (DP
/// reduction overlapped with the backward, TP collectives exposed).
fn stated_stack(r: &DenseRun) -> impl Fn(&mut DenseTraining) + use<> {
    let megascale = r.source.contains("MegaScale");
    let baseline = r.note.contains("Megatron-LM baseline");
    let window = r.seq_len / 2;
    move |w: &mut DenseTraining| {
        if megascale {
            let on = !baseline;
            w.parallel_block = on;
            w.sliding_window = on.then_some(window);
            w.tp_comm_overlap = on;
            w.pp_comm_overlap = on;
            w.overlap_comm = on;
        }
    }
}

/// Runs on 2021-2023 software stacks the model describes only in part (no input for missing fusion and the other
/// optimisations MegaScale lists as "efficient operators" and "miscellaneous"): MegaScale's Megatron-LM baseline (the
/// same model, GPUs and layout as MegaScale's own rows), MT-NLG (DeepSpeed + Megatron, 2021) and BLOOM
/// (Megatron-DeepSpeed, 2022).
fn older_stack(r: &DenseRun) -> bool {
    r.note.contains("Megatron-LM baseline") || r.model.starts_with("mt-nlg") || r.model.starts_with("bloom")
}

/// Runs whose software predates sequence parallelism (Korthikanti et al. 2022, arXiv 2205.05198, May 2022, which
/// introduced it in Megatron-LM): Megatron-LM SC'21 (April 2021), MT-NLG (Megatron-DeepSpeed, January 2022) and BLOOM
/// (Megatron-DeepSpeed, trained from March 2022). Their tensor-parallel ranks each run LayerNorm, dropout and the
/// residual adds on the whole sequence and all-reduce the block outputs.
fn predates_sequence_parallelism(r: &DenseRun) -> bool {
    ["Narayanan", "Smith", "Le Scao"]
        .iter()
        .any(|s| r.source.starts_with(s))
}

#[test]
fn dense_model_matches_published_runs() {
    let rows = dense_runs().expect("embedded CSV parses");
    assert!(rows.len() >= 10);
    println!(
        "| source | model | GPUs | TP/PP/DP | chosen | verified | published tok/s/GPU | predicted | error | published MFU* | predicted MFU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut errors = Vec::new();
    for r in &rows {
        let Prediction {
            outcome: o,
            workload: w,
            fits,
        } = predict(r);
        let peak = w.cluster.gpu.peak(Dtype::Bf16);
        let published = r.tokens_per_s_per_gpu(peak);
        let predicted = o.tokens_per_s / r.gpus as f64;
        let err = predicted / published - 1.0;
        // published throughput expressed as MFU in the model's FLOP convention
        let pub_mfu = published * w.model.train_flops_per_token() / peak;
        let short = r.source.split(" (").next().unwrap_or(&r.source);
        println!(
            "| {short} {} | {} | {} | {}/{}/{} | mb{} v{} {:?}{} | {} | {:.0} | {:.0} | {:+.1}% | {:.1}% | {:.1}% |",
            r.table,
            r.model,
            r.gpus,
            r.tp,
            r.pp,
            r.dp,
            o.config.micro_batch,
            o.config.virtual_stages,
            o.config.recompute,
            if fits {
                String::new()
            } else {
                format!(
                    " (memory model: {:.0} GiB, over the {:.0}% limit)",
                    o.memory_per_gpu_bytes / (1u64 << 30) as f64,
                    100.0 * (1.0 - dense::MEMORY_HEADROOM)
                )
            },
            r.mark,
            published,
            predicted,
            100.0 * err,
            100.0 * pub_mfu,
            100.0 * o.mfu
        );
        errors.push((r.model.clone(), r.gpus, err, r.verified, r.mark == "S", older_stack(r)));
    }
    type Row = (String, u64, f64, bool, bool, bool);
    let stats = |pick: &dyn Fn(&Row) -> bool| {
        let n = errors.iter().filter(|e| pick(e)).count();
        let (mean, worst) = mean_worst(errors.iter().filter(|e| pick(e)).map(|e| e.2));
        (n, mean, worst)
    };
    let summary = |name: &str, pick: &dyn Fn(&Row) -> bool| {
        let (n, mean, worst) = stats(pick);
        if n > 0 {
            println!(
                "{name}: {n} rows, mean |error| = {:.1}%, worst = {:.1}%",
                100.0 * mean,
                100.0 * worst
            );
        }
    };
    summary("verified rows (headline)", &|e| e.3);
    summary("verified rows without Llama 3", &|e| e.3 && !e.0.starts_with("llama3"));
    summary("secondary-source rows (S; not in the headline)", &|e| e.4);
    summary("verified + secondary-source rows", &|e| e.3 || e.4);
    summary("recalled rows (R; not in the headline)", &|e| !e.3 && !e.4);
    summary("all rows", &|_| true);
    summary("verified rows without MegaScale's Megatron-LM baseline", &|e| {
        e.3 && !e.5
    });
    summary("rows of older stacks (Megatron-LM baseline, MT-NLG, BLOOM)", &|e| e.5);
    summary("rows of current stacks", &|e| !e.5);
    // With each run's stated stack the datasheet profile over-predicts every verified row: the model is optimistic,
    // never pessimistic, there (a one-parameter calibration per GPU takes most of it out:
    // `dense_model_calibrated_on_one_row_per_gpu_predicts_the_rest`).
    for (m, g, e, verified, _, older_stack) in &errors {
        if *verified {
            assert!(
                *e > 0.0 && *e < 0.35,
                "{m} on {g} GPUs: verified row expected over-predicted by under 35% on the datasheet profile: {:+.1}%",
                100.0 * e
            );
        }
        let (lo, hi) = if *older_stack { (0.0, 0.45) } else { (-0.10, BOUND) };
        assert!(
            *e > lo && *e < hi,
            "{m} on {g} GPUs: throughput error {:+.1}% outside ({:+.0}%, {:+.0}%)",
            100.0 * e,
            100.0 * lo,
            100.0 * hi
        );
    }
}

/// MegaScale (Jiang et al., NSDI'24) Table 3 ablates its optimisations on the 175B model, 256 GPUs, batch 256 (as
/// transcribed in a public reading note of the paper, found with the search tool on 2026-12-02): MFU 47.7% (Megatron-LM
/// baseline) -> +PTB 52.3 -> +SWA 53.3 -> +TP overlap 55.5 -> +PP overlap 58.0 -> +DP overlap 59.5 -> +efficient
/// operators 61.2 -> +misc 62.3 -> +LAMB (3x batch) 65.3. The model has switches for the first five steps
/// (`parallel_block`, `sliding_window`, `tp_comm_overlap`, `pp_comm_overlap`, `overlap_comm` for the DP reduction):
/// they are turned on in Table 3's order on the same run (TP8 PP8 DP4, the fastest fitting micro-batch, interleaving
/// and recompute at each step) and each MFU gain is compared with the published one. MegaScale does not publish its
/// window: the test assumes half the sequence (1,024 of 2,048 tokens, the ratio of Mistral 7B's 4,096-token window
/// to its 8,192-token context), an assumption, not a fit. Bounds fixed before the run: the PTB, TP- and DP-overlap
/// gains within a factor of 2 of the published ones; the PP and SWA gains positive and below the published (see
/// the README for why they are smaller). Also prints MegaScale's own rows (Table 2) with TP overlap only, and with
/// PTB, SWA and all three overlaps on (its documented stack, as the headline predicts them).
#[test]
fn megascale_overlap_ablation_and_tp_overlap_rows() {
    let rows = dense_runs().expect("embedded CSV parses");
    let base = rows
        .iter()
        .find(|r| r.model == "gpt3-175b" && r.gpus == 256 && !r.note.contains("baseline"))
        .expect("MegaScale 256-GPU row");
    let at_batch_256 = DenseRun {
        global_batch_seqs: 256,
        ..base.clone()
    };
    let window = base.seq_len / 2;
    // the first `steps` of Table 3's order switched on: PTB, SWA, TP overlap, PP overlap, DP overlap
    let megascale = |steps: usize| {
        move |w: &mut DenseTraining| {
            w.parallel_block = steps >= 1;
            w.sliding_window = (steps >= 2).then_some(window);
            w.tp_comm_overlap = steps >= 3;
            w.pp_comm_overlap = steps >= 4;
            w.overlap_comm = steps >= 5;
        }
    };
    let mfu: Vec<f64> = (0..=5)
        .map(|k| predict_with(&at_batch_256, megascale(k)).outcome.mfu)
        .collect();
    let gain = |k: usize| 100.0 * (mfu[k] - mfu[k - 1]);
    let published = [4.6, 1.0, 2.2, 2.5, 1.5];
    let names = ["PTB", "SWA", "TP overlap", "PP overlap", "DP overlap"];
    let mut line = format!(
        "MegaScale Table 3 (256 GPUs, batch 256): model MFU {:.1}% with none of the five (published baseline 47.7%)",
        100.0 * mfu[0]
    );
    for k in 1..=5 {
        line += &format!(
            ", +{} {:+.1} points (published +{})",
            names[k - 1],
            gain(k),
            published[k - 1]
        );
    }
    println!("{line}; all five: {:.1}% (published 59.5%)", 100.0 * mfu[5]);
    for k in [1usize, 3, 5] {
        let (model, published) = (gain(k), published[k - 1]);
        assert!(
            model > published / 2.0 && model < 2.0 * published,
            "{}: {model} vs {published}",
            names[k - 1]
        );
    }
    // SWA and PP overlap help, by less than published (see the README)
    for k in [2usize, 4] {
        assert!(
            gain(k) > 0.0 && gain(k) < published[k - 1],
            "{}: {}",
            names[k - 1],
            gain(k)
        );
    }
    println!(
        "| GPUs | batch | published MFU | predicted MFU (TP overlap only) | error | predicted MFU (PTB, SWA, all overlaps: the headline's) | error |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows
        .iter()
        .filter(|r| r.source.contains("MegaScale") && !r.note.contains("baseline"))
    {
        let Prediction {
            outcome: o,
            workload: w,
            ..
        } = predict_with(r, |w| w.tp_comm_overlap = true);
        let all = predict_with(r, megascale(5)).outcome;
        let peak = w.cluster.gpu.peak(Dtype::Bf16);
        let published = r.tokens_per_s_per_gpu(peak);
        let err = o.tokens_per_s / r.gpus as f64 / published - 1.0;
        let err_all = all.tokens_per_s / r.gpus as f64 / published - 1.0;
        println!(
            "| {} | {} | {:.1}% | {:.1}% | {:+.1}% | {:.1}% | {:+.1}% |",
            r.gpus,
            r.global_batch_seqs,
            100.0 * r.value,
            100.0 * o.mfu,
            100.0 * err,
            100.0 * all.mfu,
            100.0 * err_all
        );
    }
}

/// Relative error of a prediction's tokens/s per GPU against row `r`'s published throughput.
fn error_of(r: &DenseRun, p: &Prediction) -> f64 {
    let peak = p.workload.cluster.gpu.peak(Dtype::Bf16);
    p.outcome.tokens_per_s / r.gpus as f64 / r.tokens_per_s_per_gpu(peak) - 1.0
}

/// The datasheet profile of GPU preset `gpu` with its GEMM rates scaled by `k`.
fn scaled_profile(gpu: &str, k: f64) -> DeviceProfile {
    let mut p = trainlab_models::roofline::datasheet_profile(&gpus::preset(gpu).expect("preset"));
    for rate in p.gemm_rate.values_mut() {
        *rate *= k;
    }
    p
}

/// The GEMM-rate scale `k` of `gpu`'s datasheet profile at which the model reproduces `row`'s published throughput
/// (each prediction re-picks the fastest fitting micro-batch and interleaving): bisection on `ln k`, the error being
/// increasing in `k`.
fn calibrate_gemm_scale(row: &DenseRun) -> f64 {
    let err = |k: f64| {
        error_of(
            row,
            &predict_on(row, stated_stack(row), Some(&scaled_profile(&row.gpu, k))),
        )
    };
    let (mut lo, mut hi) = (0.2f64.ln(), 1.5f64.ln());
    assert!(
        err(lo.exp()) < 0.0 && err(hi.exp()) > 0.0,
        "{}: no root in [0.2, 1.5]",
        row.model
    );
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if err(mid.exp()) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// Calibration, then validation on rows it was not fitted to. With each run's stated stack every verified row is
/// over-predicted on the datasheet profile (`dense_model_matches_published_runs`), so one parameter per GPU is
/// **calibrated**: the scale of the datasheet GEMM rate (the sustained tensor-core rate a production run gets, which
/// a datasheet or a microbenchmark does not give: clocks under power capping, communication kernels sharing SMs),
/// fitted to one named verified row per GPU: A100-80GB on MegaScale's 3,072-GPU row, H100 on Llama 3's 8,192-GPU row.
/// Every other row of the same GPU is a held-out prediction with that profile.
#[test]
fn dense_model_calibrated_on_one_row_per_gpu_predicts_the_rest() {
    let rows = dense_runs().expect("embedded CSV parses");
    let pick = |model: &str, gpus: u64, baseline: bool| {
        rows.iter()
            .find(|r| r.model == model && r.gpus == gpus && r.verified && r.note.contains("baseline") == baseline)
            .unwrap_or_else(|| panic!("calibration row {model} on {gpus} GPUs"))
            .clone()
    };
    let calibration = [pick("gpt3-175b", 3072, false), pick("llama3-405b", 8192, false)];
    let mut held_out = Vec::new();
    for cal in &calibration {
        let k = calibrate_gemm_scale(cal);
        // the sustained rate is below the datasheet profile's (it over-predicts every verified row)
        assert!(k > 0.5 && k < 1.0, "{}: GEMM rate scale {k}", cal.gpu);
        let profile = scaled_profile(&cal.gpu, k);
        let mut table = Vec::new();
        println!(
            "{}: GEMM rate scale {k:.3} fitted on {} on {} GPUs ({:.0} TFLOP/s sustained of {:.0} peak bf16)",
            cal.gpu,
            cal.model,
            cal.gpus,
            profile.gemm_rate[&Dtype::Bf16] / 1e12,
            gpus::preset(&cal.gpu).expect("preset").peak(Dtype::Bf16) / 1e12
        );
        for r in rows.iter().filter(|r| r.gpu == cal.gpu) {
            if r.model == cal.model && r.gpus == cal.gpus && r.note == cal.note {
                continue;
            }
            let before = error_of(r, &predict(r));
            let after = error_of(r, &predict_on(r, stated_stack(r), Some(&profile)));
            println!(
                "  held out: {} {} on {} GPUs ({}): datasheet {:+.1}%, calibrated {:+.1}%",
                r.source.split(" (").next().unwrap_or(&r.source),
                r.model,
                r.gpus,
                r.mark,
                100.0 * before,
                100.0 * after
            );
            let peak = gpus::preset(&r.gpu).expect("preset").peak(Dtype::Bf16);
            let published = r.tokens_per_s_per_gpu(peak);
            table.push(HeldOut {
                case: format!(
                    "{} {}: {} on {} GPUs ({})",
                    r.source.split(" (").next().unwrap_or(&r.source),
                    r.table,
                    r.model,
                    r.gpus,
                    if r.note.contains("Megatron-LM baseline") {
                        format!("Megatron-LM baseline, batch {}, {}", r.global_batch_seqs, r.mark)
                    } else {
                        format!("batch {}, {}", r.global_batch_seqs, r.mark)
                    }
                ),
                metric: "tokens_per_s_per_gpu".into(),
                measured: published,
                calibrated: published * (1.0 + after),
                uncalibrated: Some(published * (1.0 + before)),
            });
            held_out.push(HeldOutRow {
                verified: r.verified,
                secondary: r.mark == "S",
                older_stack: older_stack(r),
                datasheet: before,
                calibrated: after,
            });
        }
        published_profile(cal, profile, table);
    }
    let summary = |name: &str, sel: &dyn Fn(&HeldOutRow) -> bool| {
        let xs: Vec<&HeldOutRow> = held_out.iter().filter(|x| sel(x)).collect();
        let stats = |f: &dyn Fn(&HeldOutRow) -> f64| mean_worst(xs.iter().map(|x| f(x)));
        let ((mb, wb), (ma, wa)) = (stats(&|x| x.datasheet), stats(&|x| x.calibrated));
        println!(
            "{name}: {} rows, mean |error| {:.1}% / worst {:.1}% on the datasheet profile, {:.1}% / {:.1}% calibrated",
            xs.len(),
            100.0 * mb,
            100.0 * wb,
            100.0 * ma,
            100.0 * wa
        );
        (ma, wa)
    };
    summary("held-out verified rows", &|x| x.verified);
    let (mean_v, worst_v) = summary("held-out verified rows of current stacks", &|x| {
        x.verified && !x.older_stack
    });
    summary("held-out secondary-source rows", &|x| x.secondary);
    let (mean_all, worst_all) = summary("all held-out rows", &|_| true);
    assert_within(
        "held-out verified rows of current stacks, calibrated",
        (mean_v, worst_v),
        (0.08, 0.15),
    );
    assert_within("all held-out rows, calibrated", (mean_all, worst_all), (0.10, 0.25));
}

/// The mean and the largest absolute value of `errors` (0 and 0 for none).
fn mean_worst(errors: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut n, mut sum, mut worst) = (0usize, 0.0, 0.0_f64);
    for e in errors {
        n += 1;
        sum += e.abs();
        worst = worst.max(e.abs());
    }
    (sum / n.max(1) as f64, worst)
}

/// Asserts a `(mean, worst)` absolute relative error under `(mean, worst)` bounds, naming `what`.
fn assert_within(what: &str, (mean, worst): (f64, f64), (mean_bound, worst_bound): (f64, f64)) {
    assert!(
        mean < mean_bound && worst < worst_bound,
        "{what}: mean |error| {:.1}%, worst {:.1}% (bounds {:.0}%, {:.0}%)",
        100.0 * mean,
        100.0 * worst,
        100.0 * mean_bound,
        100.0 * worst_bound
    );
}

/// How much the calibration depends on its row: the GEMM-rate scale fitted to each verified row of a current stack in
/// turn, and every other such row of the same GPU predicted with it (leave-one-in cross-validation: each row is the
/// calibration row once). The spread of the scale over the rows is the calibration's uncertainty; a single published
/// row gives no other.
#[test]
fn published_calibration_depends_on_its_row_by_this_much() {
    let rows = dense_runs().expect("embedded CSV parses");
    let candidates: Vec<&DenseRun> = rows.iter().filter(|r| r.verified && !older_stack(r)).collect();
    let mut cross = Vec::new();
    for gpu in ["a100-80gb", "h100-sxm"] {
        let on_gpu: Vec<&&DenseRun> = candidates.iter().filter(|r| r.gpu == gpu).collect();
        let fits: Vec<(String, f64)> = on_gpu
            .iter()
            .map(|r| {
                (
                    format!("{} on {} GPUs (seq {})", r.model, r.gpus, r.seq_len),
                    calibrate_gemm_scale(r),
                )
            })
            .collect();
        let ks: Vec<f64> = fits.iter().map(|f| f.1).collect();
        let (lo, hi) = (
            ks.iter().copied().fold(f64::MAX, f64::min),
            ks.iter().copied().fold(0.0, f64::max),
        );
        println!("{gpu}: GEMM rate scale fitted to each verified row: {fits:.3?}; range {lo:.3} - {hi:.3}");
        for (i, k) in ks.iter().enumerate() {
            let profile = scaled_profile(gpu, *k);
            for (j, r) in on_gpu.iter().enumerate() {
                if i != j {
                    cross.push(error_of(r, &predict_on(r, stated_stack(r), Some(&profile))));
                }
            }
        }
        // every verified row of a current stack is over-predicted on the datasheet profile: every fitted scale < 1
        assert!(lo > 0.5 && hi < 1.0, "{gpu}: scales {lo} - {hi}");
    }
    let (mean, worst) = mean_worst(cross.iter().copied());
    println!(
        "cross-validated over {} (calibration row, held-out row) pairs of the same GPU: mean |error| {:.1}%, worst {:.1}%",
        cross.len(),
        100.0 * mean,
        100.0 * worst
    );
    assert_within("cross-validated", (mean, worst), (0.10, 0.20));
}

/// One held-out row of the calibration test: its provenance class and its errors before and after calibration.
struct HeldOutRow {
    verified: bool,
    secondary: bool,
    older_stack: bool,
    datasheet: f64,
    calibrated: f64,
}

/// Where the published-run calibrations are committed, one device profile per GPU preset.
const PUBLISHED_PROFILES: &str = "datasets/calibration/published-dense";

/// The calibrated device profile of `cal`'s GPU, as `--profile` reads it, checked against the committed file
/// (`datasets/calibration/published-dense/<gpu>.toml`): its GEMM rates and held-out predictions must be today's.
/// `TRAINLAB_BLESS=1` writes the file instead.
fn published_profile(cal: &DenseRun, mut params: DeviceProfile, held_out: Vec<HeldOut>) {
    params.gpu = Some(cal.gpu.clone());
    let calibration = format!(
        "{} {}: {} on {} GPUs, {} {}",
        cal.source.split(" (").next().unwrap_or(&cal.source),
        cal.table,
        cal.model,
        cal.gpus,
        match cal.metric {
            trainlab_datasets::published::PublishedMetric::Mfu => "MFU",
            trainlab_datasets::published::PublishedMetric::TflopsPerGpu => "TFLOP/s per GPU",
        },
        cal.value
    );
    params.provenance = Provenance {
        date: String::new(),
        device: format!("{} (sustained GEMM rate fitted to a published run)", cal.gpu),
        command: "TRAINLAB_BLESS=1 cargo test --workspace --locked --test validate_dense -- calibrated".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_rev: String::new(),
        measured: vec![calibration],
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(PUBLISHED_PROFILES)
        .join(format!("{}.toml", cal.gpu));
    let profile = Profile {
        kind: "device".into(),
        format: PROFILE_FORMAT,
        provenance: params.provenance.clone(),
        params,
        held_out,
    };
    if std::env::var_os("TRAINLAB_BLESS").is_some() {
        let today = std::process::Command::new("date").arg("+%F").output().expect("date");
        let mut profile = profile;
        profile.provenance.date = String::from_utf8_lossy(&today.stdout).trim().to_string();
        profile.params.provenance.date = profile.provenance.date.clone();
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("create the folder");
        let text = toml::to_string(&profile).expect("a profile serialises");
        std::fs::write(&path, text).expect("write the profile");
        println!("wrote {}", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (write it with TRAINLAB_BLESS=1)", path.display()));
    let committed: Profile<DeviceProfile> = toml::from_str(&text).expect("the committed profile parses");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs();
    let stale = format!("{} is stale: re-run with TRAINLAB_BLESS=1", path.display());
    assert_eq!(committed.params.gpu, profile.params.gpu, "{stale}");
    for (d, r) in &profile.params.gemm_rate {
        assert!(
            close(committed.params.gemm_rate[d], *r),
            "{stale} (gemm_rate.{})",
            d.as_str()
        );
    }
    assert_eq!(committed.held_out.len(), profile.held_out.len(), "{stale}");
    for (c, p) in committed.held_out.iter().zip(&profile.held_out) {
        assert!(
            c.case == p.case && close(c.calibrated, p.calibrated),
            "{stale} ({})",
            p.case
        );
    }
}

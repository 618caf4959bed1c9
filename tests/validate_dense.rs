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
//! Bounds: every row of a current stack within 25% (relative error of throughput), and over the verified (V) rows of
//! current stacks mean |error| < 8%, worst < 15%. Rows of older software stacks are a known gap, asserted as such
//! (between 0 and +45%): the model predicts an optimised stack (fused kernels, communication overlapped as modelled)
//! and has no input for what a stack lacks. They are MegaScale Table 2's Megatron-LM baseline (the same model, GPUs
//! and layout as MegaScale's own rows at 1/1.21 and 1/1.34 of their throughput), MT-NLG 530B (DeepSpeed + Megatron,
//! 2021) and BLOOM 176B (Megatron-DeepSpeed, 2022).
//!
//! Fused attention is causal: the kernel computes the score tiles on or below the diagonal only
//! (`trainlab_models::dense::causal_block_fraction`); Megatron SC'21 rows materialise the scores (full GEMM).
//! Llama 3's row at sequence 131,072 with CP16 converts MFU to tokens/s with the model's FLOP count, which does not
//! credit the causal mask (PaLM's convention); the paper does not say which it used, and crediting it would make the
//! published throughput 1.4x higher (this row's error would go from +12.7% to about -18%).
//!
//! Rows whose software predates sequence parallelism (Megatron-LM SC'21, MT-NLG, BLOOM) run without it.
//!
//! Measured on 2026-12-02 (`cargo test --workspace --locked --test validate_dense -- --nocapture`): V rows 8, mean
//! |error| 10.9%, worst 33.1% (the MegaScale baseline at 12,288 GPUs); V rows of current stacks (6): mean 5.3%,
//! worst 12.7% (Llama 3 CP16); MegaScale +0.8% / -0.6%, Megatron 1008B +5.2%, Llama 3 405B at 8,192 / 16,384 GPUs
//! -5.3% / -7.4% (only full recomputation fits at TP8/PP16 with 10% headroom, so the model pays an extra forward the
//! run may not have had). Megatron SC'21 rows (S) -3.6% to +13.8%; MegaScale Table 2's other scales (S, batch 768 on
//! 256-1,024 GPUs and batch 6,144 on 6,144 / 8,192) -7.6% to +3.4%; older stacks +13.8% to +36.5%. The issue-15 goal
//! (V rows mean <= 3%, worst <= 8%) is not met. The model has no per-run tuning: datasheet efficiencies (0.75 of
//! dense peak for large GEMMs, 0.9 of HBM) and the alpha-beta network of the DGX presets.
use trainlab_core::Dtype;
use trainlab_core::workloads::{DenseOutcome, DenseTraining, ParallelConfig, Recompute};
use trainlab_datasets::gpus;
use trainlab_datasets::published::{DenseRun, dense_runs};
use trainlab_models::dense;

const BOUND: f64 = 0.25;

fn predict(r: &DenseRun) -> (DenseOutcome, DenseTraining) {
    predict_with(r, |_| {})
}

/// The fastest fitting prediction for `r` with the workload's options set by `options` after the defaults.
fn predict_with(r: &DenseRun, options: impl Fn(&mut DenseTraining)) -> (DenseOutcome, DenseTraining) {
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
                if !dense::fits(&w, &cfg) {
                    continue;
                }
                let o = dense::step(&w, &cfg, None).expect("valid layout");
                if best.as_ref().is_none_or(|b| o.step_time_s < b.step_time_s) {
                    best = Some(o);
                }
            }
        }
    }
    (
        best.unwrap_or_else(|| panic!("{} on {} GPUs: no micro-batch/recompute fits", r.model, r.gpus)),
        w,
    )
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
        let (o, w) = predict(r);
        let peak = w.cluster.gpu.peak(Dtype::Bf16);
        let published = r.tokens_per_s_per_gpu(peak);
        let predicted = o.tokens_per_s / r.gpus as f64;
        let err = predicted / published - 1.0;
        // published throughput expressed as MFU in the model's FLOP convention
        let pub_mfu = published * w.model.train_flops_per_token() / peak;
        let short = r.source.split(" (").next().unwrap_or(&r.source);
        println!(
            "| {short} {} | {} | {} | {}/{}/{} | mb{} v{} {:?} | {} | {:.0} | {:.0} | {:+.1}% | {:.1}% | {:.1}% |",
            r.table,
            r.model,
            r.gpus,
            r.tp,
            r.pp,
            r.dp,
            o.config.micro_batch,
            o.config.virtual_stages,
            o.config.recompute,
            r.mark,
            published,
            predicted,
            100.0 * err,
            100.0 * pub_mfu,
            100.0 * o.mfu
        );
        // runs on 2021-2023 software stacks the model does not describe (no input for missing overlap or fusion):
        // MegaScale's Megatron-LM baseline (the same model, GPUs and layout as MegaScale's own rows), MT-NLG
        // (DeepSpeed + Megatron, 2021) and BLOOM (Megatron-DeepSpeed, 2022)
        let older_stack =
            r.note.contains("Megatron-LM baseline") || r.model.starts_with("mt-nlg") || r.model.starts_with("bloom");
        errors.push((r.model.clone(), r.gpus, err, r.verified, r.mark == "S", older_stack));
    }
    type Row = (String, u64, f64, bool, bool, bool);
    let stats = |pick: &dyn Fn(&Row) -> bool| {
        let xs: Vec<f64> = errors.iter().filter(|e| pick(e)).map(|e| e.2.abs()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        (xs.len(), mean, xs.iter().copied().fold(0.0, f64::max))
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
    let (_, mean, worst) = stats(&|e| e.3 && !e.5);
    assert!(
        mean < 0.08 && worst < 0.15,
        "verified rows of current stacks: mean {:.1}%, worst {:.1}%",
        100.0 * mean,
        100.0 * worst
    );
    for (m, g, e, _, _, older_stack) in &errors {
        if *older_stack {
            // the model predicts the optimised stack, so it over-predicts these rows
            assert!(
                *e > 0.0 && *e < 0.45,
                "{m} on {g} GPUs: known-gap (older stack) row out of its range: {:+.1}%",
                100.0 * e
            );
            continue;
        }
        assert!(
            e.abs() < BOUND,
            "{m} on {g} GPUs: throughput error {:+.1}% exceeds {}%",
            100.0 * e,
            100.0 * BOUND
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
/// the README for why they are smaller). Also prints MegaScale's own rows (Table 2) with its documented TP overlap on
/// (which the headline leaves off, README), and with PTB, SWA and all three overlaps on.
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
        .map(|k| predict_with(&at_batch_256, megascale(k)).0.mfu)
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
        "| GPUs | batch | published MFU | predicted MFU (TP overlap on) | error | predicted MFU (PTB, SWA, all overlaps) | error |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows
        .iter()
        .filter(|r| r.source.contains("MegaScale") && !r.note.contains("baseline"))
    {
        let (o, w) = predict_with(r, |w| w.tp_comm_overlap = true);
        let (all, _) = predict_with(r, megascale(5));
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

//! Validation of the analytical dense step model (`trainlab_models::dense`) against published measured throughput
//! of large runs (`trainlab_datasets::published`): Megatron-LM SC'21 Table 1, Llama 3 Table 4, MegaScale Table 2.
//!
//! For each published run the model gets the paper's model, GPU, GPU count, TP/PP/DP and global batch; the
//! micro-batch size and the interleaving degree (not reported) and, where the paper does not say, the recompute
//! policy are chosen as the fastest that fits in memory. Throughput is compared in tokens/s per GPU, which is convention-free: Megatron's TFLOP/s
//! (which count full recomputation, `96 B s l h^2 (1 + s/6h + V/16lh)`) are converted with their own formula, MFU
//! rows with the model-FLOP count of `TransformerSpec::train_flops_per_token`.
//!
//! Bounds: every Megatron SC'21 row and MegaScale's own rows within 25% (relative error of throughput). Two groups
//! are known gaps, asserted as such:
//! - MegaScale Table 2's Megatron-LM baseline rows have the same model, GPUs and layout as the MegaScale rows at
//!   1/1.21 and 1/1.34 of their throughput; the model has no input for what the older framework lacks (MegaScale's
//!   communication overlap and operator fusion), predicts the optimised system for both and over-predicts the
//!   baseline (asserted between 0 and +40%).
//! - Llama 3 405B: with fused attention and 10% memory headroom only full recomputation fits at TP8/PP16 (selective
//!   needs 76-90 GiB of the 72 GiB allowed), so the model pays an extra forward the real run may not have; the
//!   paper does not give the recomputation policy or the interleaving degree. Asserted under-predicted, by < 25%.
//!
//! Megatron SC'21 rows are over-predicted by up to 19% (only the 1008B row is V: +7.6%): already +14% at TP8 with
//! one stage, more where the search picks interleaving the table does not report. Not diagnosed; the candidates are
//! the TP all-reduce time on A100 NVLink (the preset's datasheet rate) and the unreported interleaving degree.
//!
//! Measured on 2026-12-01 (`cargo test --workspace --locked --test validate_dense -- --nocapture`): verified (V)
//! rows 7, mean |error| 12.2%, worst 31.1% (the MegaScale baseline at 12288 GPUs); without the two baseline rows 5 V
//! rows, mean 6.7%, worst 12.5%; Llama 3 405B -10.6% (8,192 GPUs) and -12.5% (16,384); all 16 rows mean 11.6%,
//! worst 31.1%. The issue-15 goal (V rows mean <= 3%, worst <= 8%) is not met. The model has no per-run tuning:
//! datasheet efficiencies (0.75 of dense peak for large GEMMs, 0.9 of HBM) and the alpha-beta network of the DGX
//! presets.
use trainlab_core::Dtype;
use trainlab_core::workloads::{DenseOutcome, DenseTraining, ParallelConfig, Recompute};
use trainlab_datasets::gpus;
use trainlab_datasets::published::{DenseRun, dense_runs};
use trainlab_models::dense;

const BOUND: f64 = 0.25;

fn predict(r: &DenseRun) -> (DenseOutcome, DenseTraining) {
    let nodes = (r.gpus / r.gpus_per_node as u64) as u32;
    let cluster = gpus::cluster(&r.gpu, nodes, r.gpus_per_node).expect("preset");
    let w = DenseTraining {
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
        let baseline = r.note.contains("Megatron-LM baseline");
        errors.push((r.model.clone(), r.gpus, err, r.verified, r.mark == "S", baseline));
    }
    type Row = (String, u64, f64, bool, bool, bool);
    let summary = |name: &str, pick: &dyn Fn(&Row) -> bool| {
        let xs: Vec<f64> = errors.iter().filter(|e| pick(e)).map(|e| e.2.abs()).collect();
        if xs.is_empty() {
            return;
        }
        println!(
            "{name}: {} rows, mean |error| = {:.1}%, worst = {:.1}%",
            xs.len(),
            100.0 * xs.iter().sum::<f64>() / xs.len() as f64,
            100.0 * xs.iter().copied().fold(0.0, f64::max)
        );
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
    for (m, g, e, _, _, baseline) in &errors {
        if m.starts_with("llama3") {
            assert!(
                *e < 0.0 && *e > -0.25,
                "{m} on {g} GPUs: known-gap row out of its range: {:+.1}%",
                100.0 * e
            );
            continue;
        }
        if *baseline {
            // the same model, GPUs and layout as the MegaScale rows at 1/1.21 and 1/1.34 of their throughput: the
            // model has no input for what the older framework lacks, so it over-predicts these rows
            assert!(
                *e > 0.0 && *e < 0.40,
                "{m} on {g} GPUs: known-gap (Megatron-LM baseline) row out of its range: {:+.1}%",
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

//! `trainlab moe quality`: the M6-T quality experiment on a tiny MoE (issue 4). The MoE cost model's calibration is
//! `trainlab calibrate --workload moe_layer` (the kind table's, in `trainlab::kinds::moe`).
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::{Error, Seed, Summary};
use trainlab_executors::moe::{TinyTrainConfig, train_tiny};

/// The M6-T quality experiment as a Markdown table (`quick`: 1 seed, 100 steps). Seeds `seed`, `seed + 1`, ... (the
/// README's table used 1000).
///
/// `cancel` (Ctrl-C) is polled before each training run; once it is set, the table holds the configurations that
/// finished, followed by a line saying how many did.
pub fn quality_table(quick: bool, seed: Seed, cancel: &AtomicBool) -> Result<String, Error> {
    let seeds = if quick { 1 } else { 3 };
    let bar = trainlab::progress::bar(3 * 3 * 2 * seeds, "moe quality: training runs", false);
    let t = quality_rows(quick, seed, cancel, &|| bar.inc(1));
    bar.finish_and_clear();
    t
}

fn quality_rows(quick: bool, seed: Seed, cancel: &AtomicBool, tick: &dyn Fn()) -> Result<String, Error> {
    let mut out = String::from(
        "| routing | capacity factor | balance loss | final MSE (mean +- std) | zero-predictor MSE | drop | load CV |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let seeds = if quick { 1 } else { 3 };
    let (mut rows, total) = (0, 3 * 3 * 2);
    for (name, groups, per) in [("top1", 1, 1), ("top2", 1, 2), ("2xtop1", 2, 1)] {
        for cf in [1.0, 1.25, 2.0] {
            for bal in [0.0, 0.01] {
                let mut cfg = TinyTrainConfig::small(groups, per, cf, bal);
                if quick {
                    cfg.steps = 100;
                }
                let mut rs = Vec::new();
                for s in 0..seeds {
                    if cancel.load(Ordering::Relaxed) {
                        out.push_str(&format!("\ninterrupted: {rows} of {total} configurations finished\n"));
                        return Ok(out);
                    }
                    rs.push(train_tiny(&cfg, Seed(seed.0.wrapping_add(s)))?);
                    tick();
                }
                let l: Vec<f64> = rs.iter().map(|r| r.final_loss).collect();
                let s = Summary::of(&l);
                let n = rs.len() as f64;
                out.push_str(&format!(
                    "| {name} | {cf} | {bal} | {:.4} +- {:.4} | {:.4} | {:.3} | {:.3} |\n",
                    s.mean,
                    s.std,
                    rs.iter().map(|r| r.baseline_loss).sum::<f64>() / n,
                    rs.iter().map(|r| r.drop_fraction).sum::<f64>() / n,
                    rs.iter().map(|r| r.load_cv).sum::<f64>() / n,
                ));
                rows += 1;
            }
        }
    }
    Ok(out)
}

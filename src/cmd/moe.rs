//! `trainlab moe ...`: the MoE layer's calibration against real CPU runs and the M6-T quality experiment (issue 4).
//! Library logic lives in `trainlab_sim::moe::calibrate` and `trainlab_executors::moe::train_tiny`; this module
//! only picks the configurations and formats tables.
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::workloads::moe::{MoeLayer, RouterModel, Routing};
use trainlab_core::{Dtype, Error, Seed, Summary};
use trainlab_executors::moe::{TinyTrainConfig, measure, train_tiny};
use trainlab_sim::moe::{Calibration, MeasuredStep, calibrate};

/// A single-device fp32 layer for CPU calibration (`d_model` 128).
pub fn cpu_layer(tokens: u64, d_ff: u64, experts: u64, routing: Routing, cf: f64, router: RouterModel) -> MoeLayer {
    MoeLayer {
        tokens,
        d_model: 128,
        d_ff,
        experts,
        routing,
        capacity_factor: cf,
        balance_loss: None,
        ep_ranks: 1,
        dtype: Dtype::Fp32,
        cluster: trainlab_datasets::gpus::cluster("h100-sxm", 1, 8).expect("the h100-sxm preset exists"),
        router,
        pad_to_capacity: false,
    }
}

/// Fit set (uniform routers) and held-out set (Zipf / Dirichlet skew, prototypes, other k and capacity factors).
pub fn calibration_sets() -> (Vec<MoeLayer>, Vec<MoeLayer>) {
    let u = RouterModel::Uniform;
    let fit = vec![
        cpu_layer(2048, 128, 8, Routing::TopK(1), 1.0, u.clone()),
        cpu_layer(2048, 256, 8, Routing::TopK(2), 2.0, u.clone()),
        cpu_layer(2048, 128, 32, Routing::TopK(2), 1.0, u.clone()),
        cpu_layer(2048, 256, 32, Routing::TopK(1), 2.0, u.clone()),
        cpu_layer(1024, 256, 16, Routing::TopK(4), 1.0, u.clone()),
        cpu_layer(4096, 128, 16, Routing::TopK(1), 1.25, u.clone()),
        // Large dispatches (8,192 routed slots) and small ones, so that no held-out layer lies outside the fitted
        // range of slots, rows and widths (the backward's cost per slot grows once activations leave the cache).
        cpu_layer(4096, 256, 8, Routing::TopK(2), 1.25, u.clone()),
        cpu_layer(2048, 192, 32, Routing::TopK(4), 1.5, u.clone()),
        cpu_layer(4096, 128, 32, Routing::TopK(2), 1.0, u.clone()),
        cpu_layer(1024, 192, 8, Routing::TopK(1), 1.0, u.clone()),
    ];
    let held = vec![
        cpu_layer(2048, 256, 16, Routing::TopK(2), 1.25, RouterModel::Zipf { s: 1.0 }),
        cpu_layer(2048, 128, 16, Routing::Prototypes(2), 1.0, RouterModel::Zipf { s: 0.5 }),
        cpu_layer(
            2048,
            256,
            32,
            Routing::Prototypes(4),
            1.5,
            RouterModel::Dirichlet { alpha: 0.5 },
        ),
        cpu_layer(2048, 128, 8, Routing::TopK(1), 2.0, RouterModel::Zipf { s: 1.2 }),
        cpu_layer(
            1024,
            256,
            32,
            Routing::TopK(4),
            1.0,
            RouterModel::Dirichlet { alpha: 1.0 },
        ),
        cpu_layer(4096, 192, 16, Routing::TopK(2), 1.0, u),
    ];
    (fit, held)
}

/// Real CPU runs of `l` (`draws` routing draws, `repeats` timed repeats each) as the calibration consumes them.
pub fn measured(l: &MoeLayer, i: usize, draws: usize, repeats: usize, seed: Seed) -> Result<Vec<MeasuredStep>, Error> {
    // A Dirichlet router draws a new popularity vector every step, so the load (and the drop) varies much more
    // from draw to draw than under a uniform or Zipf router (whose totals do not depend on which expert is
    // popular): its measured mean needs three times the draws to estimate the expected step time.
    let draws = if matches!(l.router, RouterModel::Dirichlet { .. }) {
        3 * draws
    } else {
        draws
    };
    // Single-threaded GEMMs: on a shared machine one core is far more repeatable than all of them.
    let m = measure(l, draws, repeats, 1, seed.index(i as u64))?;
    Ok(m.loads
        .iter()
        .zip(&m.phases)
        .zip(&m.step_s)
        .map(|((loads, p), &step)| MeasuredStep {
            loads: loads.clone(),
            router_s: p.router,
            dispatch_s: p.dispatch,
            combine_s: p.combine,
            experts_s: p.experts,
            backward_s: p.backward,
            step_s: step,
        })
        .collect())
}

/// Calibrates the simulator on this CPU and checks it on held-out configurations: 2 routing draws per layer, each
/// timed 3 times, in 3 interleaved passes over all layers (`quick`: 1 draw, 2 repeats, 1 pass).
///
/// `cancel` (Ctrl-C) is polled before each layer is measured. Once it is set, no further layer runs, the layers
/// measured so far are printed (label and fastest mean step time), and the result is [`Error::Interrupted`]: a fit on
/// part of the layers would not be the calibration asked for.
pub fn calibrate_cpu(quick: bool, seed: Seed, cancel: &AtomicBool) -> Result<Calibration, Error> {
    let (fit, held) = calibration_sets();
    let (draws, repeats, rounds) = if quick { (1, 2, 1) } else { (4, 2, 3) };
    let mut done: Vec<(String, f64)> = Vec::new();
    let r = calibrate(&fit, &held, 200, seed, rounds, |l, i| {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let m = measured(l, i, draws, repeats, seed)?;
        let mean = m.iter().map(|s| s.step_s).sum::<f64>() / m.len().max(1) as f64;
        match done.iter_mut().find(|(label, _)| *label == l.label()) {
            Some(entry) => entry.1 = entry.1.min(mean),
            None => done.push((l.label(), mean)),
        }
        Ok(m)
    });
    if matches!(r, Err(Error::Interrupted)) {
        println!(
            "interrupted: {} of {} layers measured (mean step, fastest pass):",
            done.len(),
            fit.len() + held.len()
        );
        for (label, step) in &done {
            println!("  {label}: {:.2} ms", 1e3 * step);
        }
    }
    r
}

/// The M6-T quality experiment as a Markdown table (`quick`: 1 seed, 100 steps).
///
/// `cancel` (Ctrl-C) is polled before each training run; once it is set, the table holds the configurations that
/// finished, followed by a line saying how many did.
pub fn quality_table(quick: bool, cancel: &AtomicBool) -> Result<String, Error> {
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
                    rs.push(train_tiny(&cfg, Seed(1000 + s))?);
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

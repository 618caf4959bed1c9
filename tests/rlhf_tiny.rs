//! Issue 13 part 2b: the real tiny RLHF on the CPU (`trainlab_executors::rlhf`): the credit experiment on planted
//! error spans and the mask's overhead.
use std::sync::atomic::AtomicBool;
use trainlab_core::Seed;
use trainlab_core::workloads::rlhf::Algorithm;
use trainlab_executors::rlhf::{
    Setup, TinyConfig, credit_experiment, credits, mask_overhead, measure_ppo_phases, tiny_size,
};
use trainlab_executors::timing::TimingOpts;
use trainlab_models::rlhf_tiny::{self, TinySize};

/// The README table: 5 seeds, DPO, PPO and rejection sampling, sample / token / segment credit.
/// `cargo test --workspace --locked --test rlhf_tiny -- --ignored --nocapture credit_table`
#[test]
#[ignore = "the README tables: about two minutes on a loaded 2-core machine"]
fn credit_table() {
    let cfg = TinyConfig::default();
    let seeds = [1, 2, 3, 4, 5];
    let x = credit_experiment(
        &cfg,
        &[Algorithm::Dpo, Algorithm::Ppo, Algorithm::RejectionSampling],
        &credits(1),
        &seeds,
        200,
        50,
        &AtomicBool::new(false),
    )
    .unwrap();
    println!("{}", x.table());
    let c = credits(1);
    for alg in [Algorithm::Dpo, Algorithm::Ppo] {
        let (a, b) = (x.cell(alg, c[0]), x.cell(alg, c[2]));
        for k in 1..a[0].curve.len() {
            let d: Vec<String> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| format!("{:+.3}", b.curve[k].rule_prob - a.curve[k].rule_prob))
                .collect();
            println!(
                "{}: segment − sample at step {}, seeds {seeds:?}: {}",
                alg.as_str(),
                a[0].curve[k].step,
                d.join(" ")
            );
        }
    }
    // The same DPO runs with exact scores (σ = 0): token credit then sees the truth.
    let exact = TinyConfig {
        score_noise: 0.0,
        ..cfg
    };
    let y = credit_experiment(&exact, &[Algorithm::Dpo], &c, &seeds, 200, 50, &AtomicBool::new(false)).unwrap();
    println!("score_noise = 0:\n{}", y.table());
}

/// The mask's cost on a DPO step (printed; no timing bound: this machine is shared and noisy).
/// `cargo test --workspace --locked --test rlhf_tiny -- --ignored --nocapture mask_overhead_report`
#[test]
#[ignore = "a timing report, not a check"]
fn mask_overhead_report() {
    let cfg = TinyConfig::default();
    let setup = Setup::new(&cfg, Seed(1), &AtomicBool::new(false)).unwrap();
    let opts = TimingOpts {
        min_samples: 30,
        max_samples: 200,
        min_time_s: 2.0,
        ..TimingOpts::default()
    };
    let m = mask_overhead(&setup, &cfg, credits(1)[2], &opts).unwrap();
    println!(
        "DPO step ({} pairs x 2 x {} tokens, {:.1} MFLOP): without mask computation {:.3} ms (rel. spread {:.2}); with \
         segment masks computed {:.3} ms (rel. spread {:.2}); back-to-back ratio median {:.4} (min {:.4}, max {:.4}, \
         n {}); masks alone {:.4} ms (rel. spread {:.2}) = {:.3}% of the step",
        cfg.batch,
        cfg.response_len,
        m.flops as f64 / 1e6,
        1e3 * m.step.median_s(),
        m.step.rel_spread(),
        1e3 * m.step_with_mask.median_s(),
        m.step_with_mask.rel_spread(),
        m.ratio.median,
        m.ratio.min,
        m.ratio.max,
        m.ratio.n,
        1e3 * m.mask.median_s(),
        m.mask.rel_spread(),
        100.0 * m.mask_share(),
    );
}

/// The quick check CI runs (a few seconds): on three seeds, 50 DPO steps with segment credit end with a higher
/// rule-conformant probability than 50 with sample credit, on every seed, by a margin (measured over seeds 1-5 with
/// the ignored `credit_table`: 0.856 ± 0.011 vs 0.811 ± 0.021 at step 50). PPO, where credit made no difference at
/// this scale, is checked only to learn the rule with every credit. Every run improves on its SFT start.
#[test]
fn segment_credit_beats_sample_credit_under_dpo() {
    let cfg = TinyConfig::default();
    let seeds = [1, 2, 3];
    let no = AtomicBool::new(false);
    let c = credits(1);
    let x = credit_experiment(&cfg, &[Algorithm::Dpo], &[c[0], c[2]], &seeds, 50, 50, &no).unwrap();
    let (sample, segment) = (
        x.final_rule_prob(Algorithm::Dpo, c[0]),
        x.final_rule_prob(Algorithm::Dpo, c[2]),
    );
    for (i, (a, b)) in sample.iter().zip(&segment).enumerate() {
        assert!(
            b - a > 0.01,
            "seed {}: segment {b:.3} vs sample {a:.3}\n{}",
            seeds[i],
            x.table()
        );
    }
    for r in &x.runs {
        assert!(r.curve[1].rule_prob > r.curve[0].rule_prob + 0.2, "{r:?}");
    }
    for rate in &x.conflict_rate {
        assert!(*rate > 0.2 && *rate < 0.6, "conflict rate {rate}");
    }
    let p = credit_experiment(&cfg, &[Algorithm::Ppo], &c, &seeds[..1], 20, 20, &no).unwrap();
    for r in &p.runs {
        assert!(r.curve[1].rule_prob > 0.8, "{:?}: {}", r.credit, r.curve[1].rule_prob);
    }
}

/// The phase measurements of `datasets/calibration/rlhf-cpu/phases.csv`: `(role, case, size, seconds per phase)`.
fn phase_rows(text: &str) -> Vec<(String, String, TinySize, [f64; 3])> {
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let n = |i: usize| -> f64 { f[i].trim().parse().unwrap_or_else(|_| panic!("bad number in {line}")) };
        let size = TinySize {
            batch: n(1),
            response_len: n(2),
            context: n(3),
            embed: n(4),
            hidden: n(5),
            vocab: n(6),
            ppo_epochs: n(7),
        };
        let case = format!("B={} H={}", f[1], f[5]);
        out.push((f[0].to_string(), case, size, [n(8), n(9), n(10)]));
    }
    out
}

const PHASES_CSV: &str = "datasets/calibration/rlhf-cpu/phases.csv";

/// Measures PPO iteration phases on a grid of sizes and writes `datasets/calibration/rlhf-cpu/phases.csv` (fit sizes
/// H = 32, 128, 512; held-out H = 64, 256; B = 16 and 64), then prints the fit and the held-out errors.
/// `cargo test --workspace --locked --test rlhf_tiny -- --ignored --nocapture measure_phases`
#[test]
#[ignore = "measures the CPU and rewrites the committed phase file"]
fn measure_phases() {
    let mut csv = String::from(
        "role,batch,response_len,context,embed,hidden,vocab,ppo_epochs,generation_s,experience_s,training_s,\
         generation_rel_spread,experience_rel_spread,training_rel_spread\n",
    );
    for hidden in [32usize, 64, 128, 256, 512] {
        for batch in [16usize, 64] {
            let cfg = TinyConfig {
                hidden,
                batch,
                ..TinyConfig::default()
            };
            let t = measure_ppo_phases(&cfg, 3, 25, Seed(7), &AtomicBool::new(false)).unwrap();
            let s = tiny_size(&cfg);
            let role = if hidden == 64 || hidden == 256 {
                "held_out"
            } else {
                "fit"
            };
            csv += &format!(
                "{role},{},{},{},{},{},{},{},{:.6e},{:.6e},{:.6e},{:.3},{:.3},{:.3}\n",
                s.batch,
                s.response_len,
                s.context,
                s.embed,
                s.hidden,
                s.vocab,
                s.ppo_epochs,
                t[0].median_s(),
                t[1].median_s(),
                t[2].median_s(),
                t[0].rel_spread(),
                t[1].rel_spread(),
                t[2].rel_spread()
            );
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PHASES_CSV);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &csv).unwrap();
    print!("{csv}");
    report_fit(&csv);
}

/// Fits on the `fit` rows, returns the held-out comparisons (and prints them).
fn report_fit(csv: &str) -> Vec<trainlab_core::HeldOut> {
    let rows = phase_rows(csv);
    let fit_pts: Vec<(TinySize, [f64; 3])> = rows.iter().filter(|r| r.0 == "fit").map(|r| (r.2, r.3)).collect();
    let held: Vec<(String, TinySize, [f64; 3])> = rows
        .iter()
        .filter(|r| r.0 == "held_out")
        .map(|r| (r.1.clone(), r.2, r.3))
        .collect();
    let cost = rlhf_tiny::fit(&fit_pts).unwrap();
    println!("fit: {cost:?}");
    let h = rlhf_tiny::held_out(&cost, &held);
    for x in &h {
        println!(
            "{} {}: measured {:.3e} s, predicted {:.3e} s, error {:+.1}%",
            x.case,
            x.metric,
            x.measured,
            x.calibrated,
            100.0 * x.calibrated_error()
        );
    }
    h
}

/// The committed phase measurements (taken on the shared 2-core machine at load average ≈ 7.8, so noisy: see
/// `datasets/calibration/rlhf-cpu/README.md`): the model fitted on the fit sizes predicts the held-out sizes and
/// phases with a median absolute error under 50%. The bound is computed from the committed file, so CI timing noise
/// cannot break it; single points are off by more (the README quotes every error).
#[test]
fn phase_model_predicts_held_out_sizes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PHASES_CSV);
    let csv = std::fs::read_to_string(path).expect("the committed phase measurements");
    let h = report_fit(&csv);
    assert_eq!(h.len(), 12, "4 held-out sizes × 3 phases");
    let mut e: Vec<f64> = h.iter().map(|x| x.calibrated_error().abs()).collect();
    e.sort_by(f64::total_cmp);
    let median = (e[5] + e[6]) / 2.0;
    assert!(median < 0.5, "median held-out error {median}: {h:?}");
}

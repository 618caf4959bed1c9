//! Issue 13 part 2b: the real tiny RLHF on the CPU (`trainlab_executors::rlhf`): the credit experiment on planted
//! error spans and the mask's overhead.
use std::sync::atomic::AtomicBool;
use trainlab_core::Seed;
use trainlab_core::workloads::rlhf::Algorithm;
use trainlab_executors::rlhf::{Setup, TinyConfig, credit_experiment, credits, mask_overhead};
use trainlab_executors::timing::TimingOpts;

/// The README table: 5 seeds, DPO, PPO and rejection sampling, sample / token / segment credit.
/// `cargo test --workspace --locked --test rlhf_tiny -- --ignored --nocapture credit_table`
#[test]
#[ignore = "the README table: about a minute on a loaded 2-core machine"]
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
        "DPO step ({} pairs, {} MFLOP): {:.3} ms (rel. spread {:.2}); with segment masks computed: {:.3} ms \
         (rel. spread {:.2}); masks alone: {:.4} ms (rel. spread {:.2}) = {:.3}% of the step; step difference \
         {:+.2}%",
        cfg.batch,
        m.flops as f64 / 1e6,
        1e3 * m.step.median_s(),
        m.step.rel_spread(),
        1e3 * m.step_with_mask.median_s(),
        m.step_with_mask.rel_spread(),
        1e3 * m.mask.median_s(),
        m.mask.rel_spread(),
        100.0 * m.mask_share(),
        100.0 * m.step_overhead()
    );
}

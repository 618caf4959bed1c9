//! The `distillation` kind (DDK): a teacher distilled into a student over several domains under a domain-sampling
//! schedule (uniform, static weights, or DDK's perplexity-guided sampling), answered by the closed-form compute cost
//! (`cost_model`) and by a real distillation of tiny LMs on this CPU (`cpu`).
//!
//! Not built yet (issue 12, part 2): the fitted gap-dynamics law, the simulated DDK control loop on it, and the
//! calibration that fits the law on uniform and static runs and predicts DDK runs.
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::distill::{Distillation, Schedule};

fn backends(_: &Opts) -> Result<super::Backends<Distillation>, Error> {
    Ok(vec![
        Box::new(trainlab_models::distill::DistillCost),
        Box::new(trainlab_executors::distill::DistillCpu),
    ])
}

/// The `distillation` kind.
pub static KIND: KindDef<Distillation> = KindDef {
    about: "distilling a teacher into a student over several domains: per-domain gaps under uniform, static or DDK \
            sampling, and the teacher's share of the compute",
    reads: &[],
    reference: &["cpu"],
    headline: &["gap.mean", "gap.worst", "teacher_flop_share"],
    backends,
    describe: |w| {
        let s = match &w.schedule {
            Schedule::Uniform => "uniform".to_string(),
            Schedule::Static(_) => "static".to_string(),
            Schedule::Ddk { k, alpha } => format!("ddk k={k} alpha={alpha}"),
        };
        format!("{} domains, {s}", w.domains.len())
    },
    profiled: no_profile,
    calibration: None,
};

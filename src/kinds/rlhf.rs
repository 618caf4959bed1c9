//! The `rlhf_iteration` kind: one RLHF iteration (PPO, DPO or rejection sampling) on a GPU cluster, colocated or
//! disaggregated: where the time goes (memory-bound generation with the long tail of response lengths, experience
//! making, training through the dense step model, weight sync), memory per role and GPU-hours. Answered by the
//! closed-form phase model (`analytical`); it reads a GPU `device` profile like `dense_training`.
//!
//! The `simulated` backend (`trainlab_sim::rlhf`) samples response lengths, refills rollout slots as sequences end
//! (continuous batching) and pipelines disaggregated iterations when `off_policy` is set; it answers the same metrics
//! so `trainlab compare` shows both. Not built in this part: the measured tiny RLHF run with sample, token and segment
//! credit and the per-phase calibration as a profile (the efficiencies fitted to published rows live in
//! `tests/rlhf_published.rs`). The segment-credit mask itself is in `trainlab_core::workloads::rlhf::credit_mask`.
use super::dense::gpu_profile;
use super::{KindDef, Opts};
use trainlab_core::Error;
use trainlab_core::workloads::rlhf::{Placement, RlhfIteration};

fn backends(o: &Opts) -> Result<super::Backends<RlhfIteration>, Error> {
    let profile = gpu_profile(o)?;
    let des = trainlab_sim::rlhf::RlhfDes {
        profile: profile.clone(),
        ..Default::default()
    };
    let des = if o.quick {
        trainlab_sim::rlhf::RlhfDes {
            iterations: 4,
            replications: 2,
            ..des
        }
    } else {
        des
    };
    Ok(vec![
        Box::new(trainlab_models::rlhf::RlhfAnalytical {
            profile,
            ..Default::default()
        }),
        Box::new(des),
    ])
}

/// The `rlhf_iteration` kind.
pub static KIND: KindDef<RlhfIteration> = KindDef {
    about: "one RLHF iteration (PPO, DPO, rejection sampling) on a GPU cluster: time per phase, generation share, \
            memory per role, GPU-hours; colocated or disaggregated",
    reads: &["device"],
    reference: &["analytical"],
    headline: &["iteration_time", "generation_share", "gpu_hours_per_iteration"],
    backends,
    describe: |w| {
        let p = match w.placement {
            Placement::Colocated => "colocated".to_string(),
            Placement::Disaggregated { .. } if w.off_policy => "disaggregated, off-policy".to_string(),
            Placement::Disaggregated { .. } => "disaggregated".to_string(),
        };
        format!("{} on {} GPUs, {p}", w.algorithm.as_str(), w.cluster.gpus())
    },
    profiled: |o, _| match gpu_profile(o) {
        Ok(Some(_)) => vec![("analytical", "device".into()), ("simulated", "device".into())],
        _ => vec![],
    },
    calibration: None,
};

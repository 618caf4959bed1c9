//! The `contrastive_pretrain` kind (VICTOR, CLIP): video-language contrastive pre-training from clip decoding to the
//! InfoNCE logits, answered by the closed-form step cost (`analytical`).
//!
//! Not built yet (issue 14, part 2): the input-pipeline DES, real InfoNCE and decode runs on this machine, and the
//! calibration of decode rate and encoder efficiency.
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::contrastive::{ContrastivePretrain, Negatives};

fn backends(_: &Opts) -> Result<super::Backends<ContrastivePretrain>, Error> {
    Ok(vec![Box::new(trainlab_models::contrastive::ContrastiveAnalytical)])
}

/// The `contrastive_pretrain` kind.
pub static KIND: KindDef<ContrastivePretrain> = KindDef {
    about: "video-language contrastive pre-training: loader- or compute-bound, in-batch vs queue negatives (VICTOR, \
            CLIP)",
    reads: &[],
    reference: &["analytical"],
    headline: &[
        "step_time",
        "days",
        "loader_bound",
        "cores_per_gpu_needed",
        "memory.logits",
    ],
    backends,
    describe: |w| match w.negatives {
        Negatives::InBatch { .. } => format!("{} GPUs, in-batch B={}", w.cluster.gpus(), w.global_batch),
        Negatives::Queue { size, .. } => format!("{} GPUs, queue K={size}", w.cluster.gpus()),
    },
    profiled: no_profile,
    calibration: None,
};

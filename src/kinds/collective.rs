//! The `collective` kind: one collective over a group of GPUs, in the nccl-tests convention.
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::Collective;

fn backends(_: &Opts) -> Result<super::Backends<Collective>, Error> {
    Ok(vec![Box::new(trainlab_models::collectives::AlphaBeta)])
}

/// The `collective` kind.
pub static KIND: KindDef<Collective> = KindDef {
    about: "a collective (all-reduce, all-gather, reduce-scatter, all-to-all) over a group of GPUs",
    reads: &[],
    reference: &["alpha_beta"],
    headline: &["time", "algbw", "busbw"],
    backends,
    describe: |w| format!("{} ranks", w.ranks),
    profiled: no_profile,
    calibration: None,
};

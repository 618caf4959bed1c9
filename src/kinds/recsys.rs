//! The `recsys_step` kind: one training step of a wide-and-deep recommender on one GPU, with PICASSO's packing,
//! interleaving and caching as switches (issue 11, part 1).
//!
//! Backends: the closed form (`analytical`: launch x ops, roofline per kernel, PCIe misses, Zipf/Che cache curves,
//! the interleaving pipeline bound) and the kernel-level simulator (`kernel_des`, the reference: host launch queue,
//! streams, occupancy-limited SM and HBM sharing, copy engine, simulated caches). Part 1 has **no measured backend
//! and no calibration**: nothing here ran on a CPU or a GPU, and the parameters of the shipped scenarios are
//! datasheet values and documented assumptions.
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::RecsysStep;

fn backends(opts: &Opts) -> Result<super::Backends<RecsysStep>, Error> {
    Ok(vec![
        Box::new(trainlab_models::recsys::RecsysAnalytical),
        Box::new(trainlab_sim::recsys::RecsysSim {
            cache_ids: if opts.quick { 50_000 } else { 200_000 },
        }),
    ])
}

/// The `recsys_step` kind.
pub static KIND: KindDef<RecsysStep> = KindDef {
    about: "one recommender (WDL) training step on one GPU: packing, interleaving, caching (PICASSO); no measured \
            backend yet",
    reads: &[],
    reference: &["kernel_des", "analytical"],
    headline: &["samples_per_s", "step_time", "kernels", "sm_busy", "cache_hit_rate"],
    backends,
    describe: |w| {
        format!(
            "{} fields, batch {}, packing {}, {} micro-batches on {} streams, cache {} {}",
            w.field_count(),
            w.batch,
            w.packing,
            w.micro_batches,
            w.streams,
            w.cache.fraction,
            w.cache.policy.as_str()
        )
    },
    profiled: no_profile,
    calibration: None,
};

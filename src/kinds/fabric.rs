//! The `fabric` kind: collectives of jobs on a fat tree, ECMP vs C4P-style planned paths (issue 10, part 1).
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::Fabric;

fn backends(opts: &Opts) -> Result<super::Backends<Fabric>, Error> {
    Ok(vec![
        Box::new(trainlab_models::fabric::FabricAnalytical),
        Box::new(trainlab_sim::fabric::FabricSim {
            replications: if opts.quick { 2 } else { 8 },
        }),
    ])
}

/// The `fabric` kind.
pub static KIND: KindDef<Fabric> = KindDef {
    about: "collectives of jobs on a 2- or 3-tier fat tree: ECMP, planned or adaptive paths, failed and degraded links (C4P)",
    reads: &[],
    reference: &["flow_sim", "analytical"],
    headline: &["time", "busbw", "slowdown", "max_uplink_flows", "step_time"],
    backends,
    describe: |w| format!("{} job(s), {}", w.jobs.len(), w.routing.as_str()),
    profiled: no_profile,
    calibration: None,
};

//! The `queue` kind: an M/M/c queue, the event engine's check against a closed form.
use super::{KindDef, Opts, no_profile};
use trainlab_core::Error;
use trainlab_core::workloads::Queue;

fn backends(_: &Opts) -> Result<super::Backends<Queue>, Error> {
    Ok(vec![
        Box::new(trainlab_models::queueing::QueueAnalytical),
        Box::new(trainlab_sim::queueing::QueueSim::default()),
    ])
}

/// The `queue` kind.
pub static KIND: KindDef<Queue> = KindDef {
    about: "an M/M/c queue (the event engine against Erlang C)",
    reads: &[],
    reference: &["des", "erlang_c"],
    headline: &["mean_wait", "mean_sojourn", "utilisation"],
    backends,
    describe: |_| "queue".into(),
    profiled: no_profile,
    calibration: None,
};

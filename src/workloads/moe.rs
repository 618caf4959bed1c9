//! Backends for the `moe_layer` kind (issue 4): closed form (uniform router), Monte Carlo simulator, the real CPU
//! layer, and the GPU forward + backward (skipped with its reason when no GPU is present). `trainlab compare` on a
//! MoE scenario runs them in this order.
use trainlab_core::Backend;
use trainlab_core::workloads::moe::MoeLayer;

/// The MoE backends, analytical first. `quick` lowers replications and timing repeats.
pub fn backends(quick: bool) -> Vec<Box<dyn Backend<MoeLayer>>> {
    vec![
        Box::new(trainlab_models::moe::MoeAnalytical::default()),
        Box::new(trainlab_sim::moe::MoeSim {
            replications: if quick { 50 } else { 500 },
            cost: None,
        }),
        Box::new(trainlab_executors::moe::MoeCpu {
            draws: if quick { 1 } else { 3 },
            repeats: if quick { 2 } else { 5 },
            threads: 0,
        }),
        Box::new(trainlab_executors::moe::cuda::MoeCuda),
    ]
}

//! Backends for the `training_job` kind (issue 3, C4D): the closed form (Young/Daly, renewal-reward), the failure
//! DES with the shared C4D detector, and (unless `quick`) the real fault-injection run on this machine. `trainlab
//! compare` on a training-job scenario runs them in this order; with `policies = ["baseline", "c4d"]` (the default)
//! every backend but the real run reports both policies and `saving.*` metrics.
use trainlab_core::Backend;
use trainlab_core::workloads::TrainingJob;

/// The training-job backends, analytical first. The measured backend spawns this executable's hidden
/// `__c4-worker` subcommand.
pub fn backends(quick: bool) -> Vec<Box<dyn Backend<TrainingJob>>> {
    let mut v: Vec<Box<dyn Backend<TrainingJob>>> = vec![
        Box::new(trainlab_models::reliability::ReliabilityModel::default()),
        Box::new(trainlab_sim::failures::FailureSim::default()),
    ];
    if !quick {
        v.push(Box::new(trainlab_executors::faultrun::FaultRun::new(None)));
    }
    v
}

//! Concrete workload kinds. Each is a serialisable description plus its outcome; backends for it live in the crate
//! that owns the method (closed forms in `models`, simulators in `sim`, real runs in `executors`).
pub mod collective;
pub mod contrastive;
pub mod cpt;
pub mod dense;
pub mod distill;
pub mod fabric;
pub mod gemm;
pub mod micro;
pub mod moe;
pub mod queue;
pub mod recsys;
pub mod rlhf;
pub mod training_job;

pub use collective::{Collective, CollectiveAlgo, CollectiveOp, CollectiveOutcome};
pub use cpt::{CptOutcome, CptRun, CptSetup};
pub use dense::{
    DenseOutcome, DenseTraining, Downtime, MoeLoadSource, MoeRouting, MoeSpec, MoeStepInfo, ParallelConfig,
    PipelineSchedule, Recompute, StageLayers, StepSplit, TransformerSpec,
};
pub use distill::{DistillOutcome, Distillation};
pub use fabric::{Fabric, FabricJob, FabricOp, FabricOutcome, JobOutcome};
pub use gemm::{Gemm, GemmOutcome};
pub use micro::{LaunchLatency, LaunchOutcome, MemBandwidth, MemKernel, MemOutcome};
pub use moe::{Estimate, LoadSummary, MoeLayer, MoeOutcome, RouterModel, Routing};
pub use queue::{Queue, QueueOutcome};
pub use recsys::{RecsysOutcome, RecsysStep};
pub use training_job::{
    CheckpointInterval, DetectionSpec, FailureSpec, FaultClass, FaultKind, Phase, Policy, PolicyOutcome, TrainingJob,
    TrainingJobOutcome,
};

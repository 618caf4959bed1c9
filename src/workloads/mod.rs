//! Backend lists per workload kind, used by the generic `run` and `compare` commands.
pub mod moe;
pub mod training_job;

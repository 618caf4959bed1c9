//! Subcommands owned by the workload modules.
pub mod c4;
pub mod dcpt;
pub mod moe;

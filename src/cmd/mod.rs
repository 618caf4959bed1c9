//! The subcommands: generic ones over the kind table (`run`, `compare`, `plan`, `merge`, `calibrate`, `scenarios`,
//! `kinds`) and the experiments owned by one workload (`c4-run`, `moe quality`; the D-CPT commands `fit`,
//! `plan-mixture` and `execute-dcpt` are the library's [`trainlab::dcpt`]).
pub mod answer;
pub mod c4;
pub mod calibrate;
pub mod moe;
pub mod plan;
pub mod report;
pub mod scenarios;
pub mod slurm;

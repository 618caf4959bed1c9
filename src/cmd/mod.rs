//! The subcommands: generic ones over the kind table (`run`, `compare`, `plan`, `merge`, `calibrate`, `scenarios`,
//! `kinds`) and the experiments owned by one workload (`fit`, `plan-mixture`, `execute-dcpt`, `c4-run`,
//! `moe quality`).
pub mod answer;
pub mod c4;
pub mod calibrate;
pub mod dcpt;
pub mod moe;
pub mod plan;
pub mod scenarios;

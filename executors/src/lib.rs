//! trainlab-executors: real runs. `cpu` always; `cuda` (cudarc, dynamic loading) compiled always, used when a GPU
//! is found. Every executor really computes and really times (warm-up, repeats, median, spread).
#![warn(missing_docs)]

pub mod contrastive;
pub mod cpu;
pub mod cuda;
pub mod distill;
pub mod faultrun;
pub mod gpu;
pub mod lm;
pub mod moe;
pub mod netbed;
pub mod recsys;
pub mod rlhf;
pub mod timing;

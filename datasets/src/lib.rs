//! trainlab-datasets: hardware presets with sources, published tables, scenario loading.
#![warn(missing_docs)]

pub mod gpus;
pub mod llama3;
pub mod moe_published;
pub mod published;
pub mod scenario;

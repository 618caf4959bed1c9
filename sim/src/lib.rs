//! trainlab-sim: the discrete-event engine and the simulators built on it.
#![warn(missing_docs)]

pub mod contrastive;
pub mod dag;
pub mod dense;
pub mod distill;
pub mod engine;
pub mod fabric;
pub mod fabric_net;
pub mod fabric_replay;
pub mod failures;
pub mod moe;
pub mod queueing;
pub mod recsys;
pub mod rlhf;

//! trainlab-models: closed-form models (roofline, alpha-beta collectives, training-step time), the configuration
//! search, calibration fits, and fitted laws with their fitting engine. argmin stays behind this crate's API.
#![warn(missing_docs)]

pub mod cache;
pub mod calibrate;
pub mod collectives;
pub mod contrastive;
pub mod cpt;
pub mod dense;
pub mod dense_moe;
pub mod distill;
pub mod fabric;
pub mod fabric_cal;
pub mod faultline;
pub mod fit;
pub mod gaplaw;
pub mod hardware;
pub mod laws;
pub mod mixture;
pub mod moe;
pub mod queueing;
pub mod recsys;
pub mod reliability;
pub mod rlhf;
pub mod rlhf_tiny;
pub mod roofline;
pub mod search;

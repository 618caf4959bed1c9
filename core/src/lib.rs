//! trainlab-core: the shared vocabulary of trainlab.
//!
//! Every other crate speaks these types: a [`Workload`] describes *what runs*, a [`Backend`] answers it at some
//! [`Fidelity`] (closed form, simulation or a real measured run) with an [`Outcome`], whose [`Metric`]s become uniform
//! [`Record`] rows that reports, `compare` and calibration consume. Units are explicit ([`SimTime`] in integer
//! nanoseconds, [`Bytes`], [`Flops`]); randomness is derived from one [`Seed`] per scenario by stable labels.
//!
//! This crate does no IO.
#![warn(missing_docs)]

pub mod backend;
pub mod cluster;
pub mod detector;
pub mod error;
pub mod metric;
pub mod profile;
pub mod record;
pub mod seed;
pub mod stats;
pub mod units;
pub mod workloads;

pub use backend::{Backend, Fidelity, Outcome, Progress, RunCtx, Workload, run_backends};
pub use cluster::{ClusterSpec, Device, Dtype, GpuSpec, LinkSpec, SmSpec};
pub use error::{Error, Result};
pub use metric::{Interval, Metric, Unit};
pub use profile::{DeviceProfile, HeldOut, PROFILE_FORMAT, Profile, Provenance};
pub use record::{Param, Record};
pub use seed::Seed;
pub use stats::Summary;
pub use units::{Bytes, Flops, SimTime};

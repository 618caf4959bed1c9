//! trainlab as a library: the kind table ([`kinds`]), calibration profiles ([`profiles`]), the one calibration
//! capability ([`calibration`]), studies over any kind ([`study`]) and the D-CPT law workflow ([`dcpt`]: `fit`,
//! `plan-mixture`, `execute-dcpt`). The `trainlab` binary (`src/main.rs`) is a
//! thin command-line layer over these; integration tests use them directly.
#![warn(missing_docs)]

pub mod calibration;
pub mod dcpt;
pub mod kinds;
pub mod profiles;
pub mod progress;
pub mod study;

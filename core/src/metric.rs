//! Named metrics with units: what every [`crate::Outcome`] reduces to.
use serde::{Deserialize, Serialize};
use std::fmt;

/// The unit of a metric value. Values are always stored in the base unit named here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
    /// Bytes per second.
    BytesPerSecond,
    /// Floating-point operations.
    Flop,
    /// Floating-point operations per second.
    FlopPerSecond,
    /// A fraction in [0, 1] (MFU, ETTR, drop fraction...).
    Ratio,
    /// A count of things (events, interruptions, tokens).
    Count,
    /// GPU-hours.
    GpuHours,
    /// Days of wall-clock time.
    Days,
    /// Tokens per second.
    TokensPerSecond,
    /// A loss in nats.
    Nats,
    /// No unit.
    Dimensionless,
    /// A decision the backend made (a layout dimension, a chosen option), coded as a number: compared for equality,
    /// never by relative error.
    Choice,
}

impl Unit {
    /// Short symbol for tables.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::Bytes => "B",
            Unit::BytesPerSecond => "B/s",
            Unit::Flop => "FLOP",
            Unit::FlopPerSecond => "FLOP/s",
            Unit::Ratio => "ratio",
            Unit::Count => "count",
            Unit::GpuHours => "GPU-h",
            Unit::Days => "days",
            Unit::TokensPerSecond => "tok/s",
            Unit::Nats => "nats",
            Unit::Dimensionless => "-",
            Unit::Choice => "choice",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// A named scalar with its unit and, where the backend is stochastic, a confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Stable snake_case name, e.g. `step_time`, `mfu`, `ettr`.
    pub name: String,
    /// Unit of `value`.
    pub unit: Unit,
    /// The value, in `unit`.
    pub value: f64,
    /// 95% confidence interval, if the backend estimates one.
    pub ci: Option<Interval>,
}

impl Metric {
    /// A metric without an interval.
    pub fn new(name: impl Into<String>, unit: Unit, value: f64) -> Self {
        Metric {
            name: name.into(),
            unit,
            value,
            ci: None,
        }
    }
    /// A metric with a confidence interval.
    pub fn with_ci(name: impl Into<String>, unit: Unit, value: f64, low: f64, high: f64) -> Self {
        Metric {
            name: name.into(),
            unit,
            value,
            ci: Some(Interval { low, high }),
        }
    }
}

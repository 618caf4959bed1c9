//! Microbenchmark workloads: memory bandwidth kernels and launch/dispatch latency.
use crate::error::check;
use crate::{Device, Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// Which streaming kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemKernel {
    /// `b[i] = a[i]`: 2 words moved per element.
    Copy,
    /// STREAM triad `a[i] = b[i] + s * c[i]`: 3 words moved per element.
    Triad,
}

/// Stream a buffer of `bytes` (per array) through a memory kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBandwidth {
    /// Bytes per array.
    pub bytes: u64,
    /// Kernel.
    pub kernel: MemKernel,
    /// Where it runs (`cpu`, the default, or `cuda`).
    #[serde(default)]
    pub device: Device,
}

impl MemBandwidth {
    /// Bytes moved (read + written) by one pass, STREAM convention.
    pub fn bytes_moved(&self) -> f64 {
        let words = match self.kernel {
            MemKernel::Copy => 2.0,
            MemKernel::Triad => 3.0,
        };
        self.bytes as f64 * words
    }
}

/// The answer for a memory kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemOutcome {
    /// Time of one pass, seconds.
    pub time_s: f64,
    /// Bytes moved per second.
    pub bytes_per_s: f64,
}

impl Outcome for MemOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("time", Unit::Seconds, self.time_s),
            Metric::new("bandwidth", Unit::BytesPerSecond, self.bytes_per_s),
        ]
    }
}

impl Workload for MemBandwidth {
    type Outcome = MemOutcome;
    const KIND: &'static str = "mem_bandwidth";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.bytes", self.bytes, 64)?;
        if self.bytes > 8 << 30 {
            return Err(Error::invalid(
                "workload.bytes",
                self.bytes,
                "more than 8 GiB per array",
                "use a smaller buffer",
            ));
        }
        Ok(())
    }
}

/// Launch (GPU) or dispatch (CPU thread pool) latency of an empty unit of work, `launches` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchLatency {
    /// Launches to time.
    pub launches: u64,
    /// Where it runs (`cpu`, the default, or `cuda`).
    #[serde(default)]
    pub device: Device,
}

/// The answer for a launch-latency probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchOutcome {
    /// Median time per launch, seconds.
    pub per_launch_s: f64,
}

impl Outcome for LaunchOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("per_launch", Unit::Seconds, self.per_launch_s)]
    }
}

impl Workload for LaunchLatency {
    type Outcome = LaunchOutcome;
    const KIND: &'static str = "launch_latency";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.launches", self.launches, 1)
    }
}

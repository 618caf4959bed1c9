//! A (batched) dense matrix product `C[b] = A[b] (m x k) * B[b] (k x n)`.
use crate::error::check;
use crate::{Device, Dtype, Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// A GEMM workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gemm {
    /// Rows of A and C.
    pub m: u64,
    /// Columns of B and C.
    pub n: u64,
    /// Inner dimension.
    pub k: u64,
    /// Number of independent products (1 for a plain GEMM).
    #[serde(default = "one")]
    pub batch: u64,
    /// Data type.
    #[serde(default = "fp32")]
    pub dtype: Dtype,
    /// Where it runs (`cpu`, the default, or `cuda`).
    #[serde(default)]
    pub device: Device,
}

/// Most operand elements (A, B and C over the batch) a GEMM workload may have: 16 GB in fp32, beyond any single
/// device's product; it also keeps every size computed from the dimensions far inside `u64` and `f64` integers.
const MAX_ELEMENTS: f64 = 4e9;

fn one() -> u64 {
    1
}
fn fp32() -> Dtype {
    Dtype::Fp32
}

impl Gemm {
    /// A square fp32 GEMM.
    pub fn square(n: u64) -> Gemm {
        Gemm {
            m: n,
            n,
            k: n,
            batch: 1,
            dtype: Dtype::Fp32,
            device: Default::default(),
        }
    }
    /// Total FLOPs (`2 m n k batch`).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
    /// Bytes touched at least once: A, B read, C written.
    pub fn bytes(&self) -> f64 {
        self.elements() * self.dtype.bytes() as f64
    }
    /// Elements of A, B and C over the batch (`(m k + k n + m n) batch`), in `f64` so that no size overflows.
    pub fn elements(&self) -> f64 {
        let (m, n, k) = (self.m as f64, self.n as f64, self.k as f64);
        (m * k + k * n + m * n) * self.batch as f64
    }
    /// Short label, e.g. `512x512x512 fp32`.
    pub fn label(&self) -> String {
        let b = if self.batch > 1 {
            format!("{}x", self.batch)
        } else {
            String::new()
        };
        format!("{b}{}x{}x{} {}", self.m, self.n, self.k, self.dtype.as_str())
    }
}

/// The answer for a GEMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmOutcome {
    /// Wall time of one (batched) product, seconds (median for measured runs).
    pub time_s: f64,
    /// Achieved FLOP/s.
    pub flops_per_s: f64,
    /// Relative spread of repeated measurements (std/median); 0 for predictions.
    pub spread: f64,
}

impl GemmOutcome {
    /// Builds the outcome from a time.
    pub fn from_time(g: &Gemm, time_s: f64, spread: f64) -> Self {
        GemmOutcome {
            time_s,
            flops_per_s: g.flops() / time_s,
            spread,
        }
    }
}

impl Outcome for GemmOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("time", Unit::Seconds, self.time_s),
            Metric::new("flops_per_s", Unit::FlopPerSecond, self.flops_per_s),
        ]
    }
}

impl Workload for Gemm {
    type Outcome = GemmOutcome;
    const KIND: &'static str = "gemm";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.m", self.m, 1)?;
        check::at_least("workload.n", self.n, 1)?;
        check::at_least("workload.k", self.k, 1)?;
        check::at_least("workload.batch", self.batch, 1)?;
        if self.elements() > MAX_ELEMENTS {
            // Name the field to shrink: the batch when one product fits, else the largest dimension.
            let one = Gemm {
                batch: 1,
                ..self.clone()
            };
            let (field, value) = if one.elements() <= MAX_ELEMENTS {
                ("workload.batch", self.batch)
            } else if self.m >= self.n && self.m >= self.k {
                ("workload.m", self.m)
            } else if self.n >= self.k {
                ("workload.n", self.n)
            } else {
                ("workload.k", self.k)
            };
            return Err(Error::invalid(
                field,
                value,
                format!(
                    "the operands of {} hold {:.3e} elements, more than {MAX_ELEMENTS:e}",
                    self.label(),
                    self.elements()
                ),
                "use smaller dimensions or a smaller batch",
            ));
        }
        Ok(())
    }
}

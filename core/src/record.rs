//! Uniform rows: every backend's answer to every workload flattens to these, so reports, `compare` and calibration
//! need to know nothing about the workload.
use crate::{Fidelity, Metric, Unit};
use serde::{Deserialize, Serialize};

/// The value of a case parameter (a study's grid coordinate): a number or a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Param {
    /// A number (integers are stored as floats).
    Num(f64),
    /// A text (a model name, an enum value).
    Text(String),
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Param::Num(x) => write!(f, "{x}"),
            Param::Text(s) => f.write_str(s),
        }
    }
}

/// One metric of one backend's answer to one case of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The study or scenario name.
    pub study: String,
    /// The workload kind (`Workload::KIND`).
    pub workload: String,
    /// A label for the case within the study (e.g. `7B@1024xH100`).
    pub case: String,
    /// The backend's name.
    pub backend: String,
    /// The backend's fidelity.
    pub fidelity: Fidelity,
    /// Metric name.
    pub metric: String,
    /// Metric unit.
    pub unit: Unit,
    /// Metric value.
    pub value: f64,
    /// Lower end of the 95% interval, if any.
    pub ci_low: Option<f64>,
    /// Upper end of the 95% interval, if any.
    pub ci_high: Option<f64>,
    /// The scenario seed the answer was computed with.
    pub seed: u64,
    /// The case's parameters (field path, value), sorted by path; empty outside studies. Reports write each as a
    /// column `param.<path>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, Param)>,
}

impl Record {
    /// Flattens a metric into a record.
    pub fn from_metric(
        study: &str,
        workload: &str,
        case: &str,
        backend: &str,
        fidelity: Fidelity,
        seed: u64,
        m: &Metric,
    ) -> Record {
        Record {
            study: study.to_string(),
            workload: workload.to_string(),
            case: case.to_string(),
            backend: backend.to_string(),
            fidelity,
            metric: m.name.clone(),
            unit: m.unit,
            value: m.value,
            ci_low: m.ci.map(|c| c.low),
            ci_high: m.ci.map(|c| c.high),
            seed,
            params: Vec::new(),
        }
    }
}

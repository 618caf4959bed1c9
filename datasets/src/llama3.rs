//! Llama 3 405B pre-training interruptions (Llama Team, "The Llama 3 Herd of Models", arXiv:2407.21783, §3.3.4,
//! Table 5): 419 unexpected interruptions in a 54-day snapshot on 16,384 H100 GPUs, by root cause. Shipped as
//! `data/llama3/table5.csv` with its source in `data/llama3/SOURCE.md`. The printed percentages are inconsistent
//! with the counts (148/419 is 35.3%, printed 30.1%); the counts are used.
use trainlab_core::workloads::training_job::{FailureSpec, FaultClass, FaultKind, Scope};

/// The table as shipped.
pub const TABLE5_CSV: &str = include_str!("../data/llama3/table5.csv");

/// GPUs of the run.
pub const GPUS: u64 = 16_384;
/// GPUs per node (H100 HGX).
pub const GPUS_PER_NODE: u64 = 8;
/// Days of the snapshot.
pub const DAYS: f64 = 54.0;
/// Unexpected interruptions in the snapshot.
pub const UNEXPECTED: u64 = 419;

/// One row of Table 5.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Component as printed.
    pub component: String,
    /// Category as printed.
    pub category: String,
    /// trainlab fault class.
    pub class: FaultClass,
    /// Fault kind assumed by the scenario (not given in the paper).
    pub kind: FaultKind,
    /// Interruptions.
    pub count: u64,
    /// The percentage as printed (see the module docs for the inconsistency).
    pub printed_percent: f64,
}

/// The parsed rows. The embedded CSV is fixed, so parsing cannot fail at run time; a malformed row would be a
/// packaging bug caught by this module's tests.
pub fn table5() -> Vec<Row> {
    TABLE5_CSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() != 6 {
                return None;
            }
            let class = FaultClass::ALL.iter().copied().find(|c| c.as_str() == f[2])?;
            let kind = match f[3] {
                "hang" => FaultKind::Hang,
                "slow" => FaultKind::Slow,
                _ => FaultKind::FailStop,
            };
            Some(Row {
                component: f[0].to_string(),
                category: f[1].to_string(),
                class,
                kind,
                count: f[4].parse().ok()?,
                printed_percent: f[5].parse().ok()?,
            })
        })
        .collect()
}

/// The failure model that reproduces Table 5 in expectation: rate per component-hour = count / (components x hours),
/// with GPU classes per GPU, the NIC per NIC (one per GPU) and the rest per node.
pub fn failure_model() -> Vec<FailureSpec> {
    let hours = DAYS * 24.0;
    table5()
        .into_iter()
        .map(|r| {
            let scope = r.class.default_scope();
            let comps = match scope {
                Scope::Gpu | Scope::Nic => GPUS,
                Scope::Node => GPUS / GPUS_PER_NODE,
                Scope::Job => 1,
            };
            FailureSpec {
                class: r.class,
                kind: r.kind,
                rate_per_component_hour: r.count as f64 / (comps as f64 * hours),
                scope: None,
                weibull_shape: None,
                slowdown: 1.5,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sums_to_419() {
        let t = table5();
        assert_eq!(t.len(), 18);
        assert_eq!(t.iter().map(|r| r.count).sum::<u64>(), UNEXPECTED);
        let gpu: u64 = t.iter().filter(|r| r.category == "GPU").map(|r| r.count).sum();
        assert_eq!(gpu, 268); // 64.0% by count, 58.7% as printed
    }

    #[test]
    fn model_reproduces_counts() {
        let hours = DAYS * 24.0;
        for (r, f) in table5().iter().zip(failure_model()) {
            let comps = match f.scope() {
                Scope::Gpu | Scope::Nic => GPUS,
                Scope::Node => GPUS / GPUS_PER_NODE,
                Scope::Job => 1,
            } as f64;
            assert!((f.rate_per_component_hour * comps * hours - r.count as f64).abs() < 1e-9);
        }
    }
}

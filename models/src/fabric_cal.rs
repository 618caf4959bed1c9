//! The `fabric` calibration's parameters (profile kind `fabric`): what the namespace testbed measured, fitted to the
//! flow model. A ring step of the testbed is taken to last
//!
//! `max hops x hop_latency + flows sent per host x flow_overhead + fluid time at the effective capacity`,
//!
//! where the fluid time is the flow simulator's max-min answer on the paths the flows really took (it scales as
//! `1 / capacity`). The three parameters are fitted by least squares on relative errors over the fit cases; the
//! profile keeps every case (its paths, sizes and measured time) so the held-out predictions can be recomputed
//! from the file alone.
use serde::{Deserialize, Serialize};
use trainlab_core::Error;

/// One measured testbed run, as the fit and the held-out check use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestbedCase {
    /// What ran (topology, ring, routing).
    pub label: String,
    /// Held out of the fit.
    pub held_out: bool,
    /// `ecmp` or `planned`.
    pub routing: String,
    /// Directed links of the fabric.
    pub links: usize,
    /// Ring steps.
    pub steps: u64,
    /// Hops of the longest path of a step.
    pub max_hops: u32,
    /// Flows each host sends in a step (channels).
    pub flows_per_host: u32,
    /// Bytes of one flow in one step.
    pub flow_bytes: f64,
    /// Each flow's directed links, as the testbed routed them.
    pub paths: Vec<Vec<u32>>,
    /// Fluid time of the whole collective on links of 1 byte/s (the flow simulator on `paths`), seconds.
    pub unit_fluid_s: f64,
    /// Buffer per rank, bytes.
    pub bytes: u64,
    /// nccl-tests bus-bandwidth factor of the collective.
    pub busbw_factor: f64,
    /// Measured completion time, seconds.
    pub measured_s: f64,
    /// The machine's 1-minute load average when it ran.
    pub load: f64,
}

/// Fitted testbed parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestbedParams {
    /// Nominal link rate of the testbed (its token buckets), Gb/s: the profile applies to workloads at this rate.
    pub link_gbps: f64,
    /// Fitted effective capacity of a link for TCP payload, Gb/s.
    pub capacity_gbps: f64,
    /// Fitted latency of one hop (and of a step's synchronisation), microseconds.
    pub hop_latency_us: f64,
    /// Fitted cost of each flow a host sends in a step, microseconds.
    pub flow_overhead_us: f64,
    /// Every measured case, fit and held-out.
    pub cases: Vec<TestbedCase>,
}

impl TestbedParams {
    /// Checks the fitted values (a hand-edited profile is an input error).
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        for (name, v) in [("link_gbps", self.link_gbps), ("capacity_gbps", self.capacity_gbps)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(
                    format!("{at}.{name}"),
                    v,
                    "a rate must be positive",
                    "recalibrate with `trainlab calibrate --workload fabric`",
                ));
            }
        }
        for (name, v) in [
            ("hop_latency_us", self.hop_latency_us),
            ("flow_overhead_us", self.flow_overhead_us),
        ] {
            if !v.is_finite() || v.abs() > 1e6 {
                return Err(Error::invalid(
                    format!("{at}.{name}"),
                    v,
                    "not a finite time under 1 s",
                    "recalibrate with `trainlab calibrate --workload fabric`",
                ));
            }
        }
        Ok(())
    }

    /// Whether the profile describes links of `link_gbps` (within 1%).
    pub fn applies_to(&self, link_gbps: f64) -> bool {
        (link_gbps - self.link_gbps).abs() <= 0.01 * self.link_gbps
    }

    /// Predicted time of `c`, seconds.
    pub fn predict_s(&self, c: &TestbedCase) -> f64 {
        predict(
            c,
            self.capacity_gbps * 1e9 / 8.0,
            self.hop_latency_us * 1e-6,
            self.flow_overhead_us * 1e-6,
        )
    }
}

/// Time of `c` with effective capacity `cap` bytes/s, hop latency `lat` s and per-flow overhead `o` s.
pub fn predict(c: &TestbedCase, cap: f64, lat: f64, o: f64) -> f64 {
    c.steps as f64 * (c.max_hops as f64 * lat + c.flows_per_host as f64 * o) + c.unit_fluid_s / cap
}

/// The uncalibrated prediction: the nominal rate, no latency, no overhead.
pub fn predict_nominal(c: &TestbedCase, link_gbps: f64) -> f64 {
    predict(c, link_gbps * 1e9 / 8.0, 0.0, 0.0)
}

/// Least-squares fit on relative errors of the fit cases: `(capacity bytes/s, hop latency s, flow overhead s)`, the
/// latency and the overhead kept non-negative (a negative one is fixed at 0 and the others refitted: every subset is
/// tried and the feasible one with the least squared error kept). `None` when the cases do not pin the parameters
/// (a singular system) or no subset gives a positive capacity.
pub fn fit(cases: &[TestbedCase]) -> Option<(f64, f64, f64)> {
    // 1 = [steps hops, steps flows, unit_fluid] . [lat, o, 1/cap] / measured
    let rows: Vec<[f64; 3]> = cases
        .iter()
        .filter(|c| !c.held_out && c.measured_s > 0.0)
        .map(|c| {
            let w = 1.0 / c.measured_s;
            [
                c.steps as f64 * c.max_hops as f64 * w,
                c.steps as f64 * c.flows_per_host as f64 * w,
                c.unit_fluid_s * w,
            ]
        })
        .collect();
    let mut best: Option<(f64, [f64; 3])> = None;
    for free in [
        [true, true, true],
        [false, true, true],
        [true, false, true],
        [false, false, true],
    ] {
        let Some(b) = solve_subset(&rows, free) else { continue };
        if b[0] < 0.0 || b[1] < 0.0 || b[2] <= 0.0 {
            continue;
        }
        let sse: f64 = rows
            .iter()
            .map(|x| (x[0] * b[0] + x[1] * b[1] + x[2] * b[2] - 1.0).powi(2))
            .sum();
        if best.is_none_or(|(e, _)| sse < e) {
            best = Some((sse, b));
        }
    }
    best.map(|(_, b)| (1.0 / b[2], b[0], b[1]))
}

/// Least squares of `x . b = 1` over the columns marked `free` (the others 0); `None` if singular.
fn solve_subset(rows: &[[f64; 3]], free: [bool; 3]) -> Option<[f64; 3]> {
    let cols: Vec<usize> = (0..3).filter(|&k| free[k]).collect();
    let n = cols.len();
    if rows.len() < n {
        return None;
    }
    // Scale columns so the normal equations are well conditioned.
    let scale: Vec<f64> = cols
        .iter()
        .map(|&k| rows.iter().map(|x| x[k].abs()).fold(0.0, f64::max))
        .collect();
    if scale.contains(&0.0) {
        return None;
    }
    let mut a = vec![vec![0.0f64; n + 1]; n];
    for x in rows {
        let xs: Vec<f64> = cols.iter().zip(&scale).map(|(&k, s)| x[k] / s).collect();
        for i in 0..n {
            for j in 0..n {
                a[i][j] += xs[i] * xs[j];
            }
            a[i][n] += xs[i];
        }
    }
    for col in 0..n {
        let p = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[p][col].abs() < 1e-12 * rows.len() as f64 {
            return None;
        }
        a.swap(col, p);
        let pivot = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot[col];
                for (x, p) in row.iter_mut().zip(&pivot).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut b = [0.0; 3];
    for (i, &k) in cols.iter().enumerate() {
        b[k] = a[i][n] / a[i][i] / scale[i];
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(steps: u64, hops: u32, flows: u32, unit: f64, held_out: bool) -> TestbedCase {
        TestbedCase {
            label: String::new(),
            held_out,
            routing: "planned".into(),
            links: 8,
            steps,
            max_hops: hops,
            flows_per_host: flows,
            flow_bytes: 1.0,
            paths: vec![],
            unit_fluid_s: unit,
            bytes: 1,
            busbw_factor: 1.0,
            measured_s: 0.0,
            load: 0.0,
        }
    }

    #[test]
    fn the_fit_recovers_known_parameters() {
        let (cap, lat, o) = (1.2e7, 40e-6, 15e-6);
        let mut cs = vec![
            case(2, 2, 1, 1e6, false),
            case(2, 4, 1, 4e6, false),
            case(2, 4, 4, 4e6, false),
            case(14, 4, 2, 2e7, false),
            case(6, 2, 1, 3e5, false),
            case(6, 4, 2, 9e6, true),
        ];
        for c in cs.iter_mut() {
            c.measured_s = predict(c, cap, lat, o);
        }
        let (c2, l2, o2) = fit(&cs).expect("fit");
        assert!((c2 / cap - 1.0).abs() < 1e-9 && (l2 - lat).abs() < 1e-12 && (o2 - o).abs() < 1e-12);
        // Too few cases for all three: the subset that fits them exactly (latency and overhead at 0 if need be).
        let (c1, _, _) = fit(&cs[..1]).expect("capacity alone");
        assert!(c1 > 0.0);
        // A negative latency is not kept.
        let mut neg = cs.clone();
        for c in neg.iter_mut() {
            c.measured_s = predict(c, cap, -20e-6, o);
        }
        let (_, l3, _) = fit(&neg).expect("fit");
        assert_eq!(l3, 0.0);
    }
}

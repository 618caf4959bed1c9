//! CPU phase model of the tiny PPO iteration of `trainlab_executors::rlhf` (the n-gram policy on this machine's
//! CPU, not a transformer): per phase, `seconds = overhead_s · passes + s_per_flop · FLOPs`, two constants per phase
//! fitted by least squares on measured sizes and checked on held-out sizes.
//!
//! Counts (matrix products only, as `Model::matmul_flops_per_step` counts them; one forward row costs
//! `f = 2·(c·E·H + H·V)`), with B prompts, T response tokens and `e` PPO epochs:
//! - generation: T forward passes over B rows (one per new token; the fixed window is recomputed, no KV cache):
//!   `T·B·f` FLOPs, T passes;
//! - experience making: old-policy and reference log-probs over the B·T response tokens: `2·B·T·f`, 2 passes;
//! - training: `e` forward and backward passes over B·T tokens: `3·e·B·T·f`, `e` passes.
//!
//! DPO and rejection sampling reuse the PPO-fitted constants with their own counts ([`counts_for`]): DPO has no
//! generation, one reference pass over the chosen and rejected responses (2·B·T rows) and one training pass over them;
//! rejection sampling generates K responses per prompt (T passes over K·B rows), scores them without a forward pass
//! (the reward is exact: only the per-pass overhead) and trains one pass on the best B responses. The calibration
//! measures PPO only, so these two are predictions the profile was not fitted to.
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::rlhf::{Algorithm, RlhfIteration, RlhfOutcome};
use trainlab_core::{Error, HeldOut};

/// The sizes of one tiny PPO iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TinySize {
    /// Prompts per iteration B.
    pub batch: f64,
    /// Response tokens T.
    pub response_len: f64,
    /// Context window c.
    pub context: f64,
    /// Embedding width E.
    pub embed: f64,
    /// Hidden width H.
    pub hidden: f64,
    /// Vocabulary V.
    pub vocab: f64,
    /// PPO epochs e.
    pub ppo_epochs: f64,
}

/// The three phases, in order.
pub const PHASES: [&str; 3] = ["generation", "experience", "training"];

/// Per phase (generation, experience, training): matrix FLOPs and passes.
pub fn counts(s: &TinySize) -> [(f64, f64); 3] {
    let f = 2.0 * (s.context * s.embed * s.hidden + s.hidden * s.vocab);
    let rows = s.batch * s.response_len;
    [
        (s.response_len * s.batch * f, s.response_len),
        (2.0 * rows * f, 2.0),
        (3.0 * s.ppo_epochs * rows * f, s.ppo_epochs),
    ]
}

/// Per phase, matrix FLOPs and passes of one iteration of `alg` (`samples`: responses per prompt, rejection
/// sampling's K; PPO is [`counts`]).
pub fn counts_for(alg: Algorithm, s: &TinySize, samples: f64) -> [(f64, f64); 3] {
    let f = 2.0 * (s.context * s.embed * s.hidden + s.hidden * s.vocab);
    let rows = s.batch * s.response_len;
    match alg {
        Algorithm::Ppo => counts(s),
        Algorithm::Dpo => [(0.0, 0.0), (2.0 * rows * f, 1.0), (3.0 * 2.0 * rows * f, 1.0)],
        Algorithm::RejectionSampling => [
            (s.response_len * samples * s.batch * f, s.response_len),
            (0.0, 1.0),
            (3.0 * rows * f, 1.0),
        ],
    }
}

/// The `rlhf_iteration` calibration profile (device `cpu`): the phase constants fitted on this CPU and the n-gram
/// policy's fixed context and embedding width the sizes were measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPhaseProfile {
    /// The device measured (`cpu`).
    pub device: String,
    /// Context window c of the measured policy.
    pub context: f64,
    /// Embedding width E of the measured policy.
    pub embed: f64,
    /// The fitted constants.
    pub cost: PhaseCost,
}

impl CpuPhaseProfile {
    /// Checks the constants (field paths under `path`).
    pub fn validate(&self, path: &str) -> Result<(), Error> {
        let bad = self
            .cost
            .s_per_flop
            .iter()
            .chain(&self.cost.overhead_s)
            .any(|x| !x.is_finite() || *x < 0.0);
        if bad || !(self.context > 0.0 && self.embed > 0.0) {
            return Err(Error::invalid(
                format!("{path}.cost"),
                format!("{:?}", self.cost),
                "phase constants must be finite and non-negative, context and embed positive",
                "rerun `trainlab calibrate --workload rlhf_iteration`",
            ));
        }
        Ok(())
    }
    /// Predicted seconds per phase (generation, experience, training) of one iteration of `alg`.
    pub fn predict(&self, alg: Algorithm, s: &TinySize, samples: f64) -> [f64; 3] {
        let c = counts_for(alg, s, samples);
        std::array::from_fn(|i| self.cost.s_per_flop[i] * c[i].0 + self.cost.overhead_s[i] * c[i].1)
    }
}

/// The answer for one tiny iteration of `w` with phase times `t` (generation, experience, training) and `seq_tokens`
/// tokens per sequence, measured or predicted: one CPU, no prefill or weight sync (the tiny trainer has neither), no
/// memory metrics (an n-gram model's bytes are not a transformer's).
pub fn outcome(w: &RlhfIteration, t: [f64; 3], seq_tokens: u64) -> RlhfOutcome {
    let seqs = if w.algorithm.generates() {
        w.prompts * w.samples_per_prompt
    } else {
        2 * w.prompts
    };
    RlhfOutcome {
        prefill_s: 0.0,
        decode_s: t[0],
        experience_s: t[1],
        training_s: t[2],
        sync_s: 0.0,
        tokens: (seqs * seq_tokens) as f64,
        gpus: 1,
        memory_per_gpu: Vec::new(),
        overlap_s: 0.0,
        rollout_occupancy: if w.algorithm.generates() { 1.0 } else { 0.0 },
        iteration_time_ci: None,
    }
}

/// Fitted constants per phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseCost {
    /// Seconds per FLOP, per phase.
    pub s_per_flop: [f64; 3],
    /// Seconds per pass, per phase.
    pub overhead_s: [f64; 3],
}

impl PhaseCost {
    /// Predicted seconds per phase.
    pub fn predict(&self, s: &TinySize) -> [f64; 3] {
        let c = counts(s);
        std::array::from_fn(|i| self.s_per_flop[i] * c[i].0 + self.overhead_s[i] * c[i].1)
    }
}

/// Least-squares fit of `y = a·x1 + b·x2` with relative residuals (each row divided by `y`, so small and large sizes
/// weigh alike). Falls back to the better one-term fit when the two-term solution has a negative constant or the
/// columns are collinear.
fn fit2(rows: &[(f64, f64, f64)]) -> (f64, f64) {
    let (mut s11, mut s12, mut s22, mut r1, mut r2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x1, x2, y) in rows {
        let (u, v) = (x1 / y, x2 / y);
        s11 += u * u;
        s12 += u * v;
        s22 += v * v;
        r1 += u;
        r2 += v;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() > 1e-12 * s11 * s22 {
        let a = (r1 * s22 - r2 * s12) / det;
        let b = (s11 * r2 - s12 * r1) / det;
        if a >= 0.0 && b >= 0.0 {
            return (a, b);
        }
    }
    let sse = |a: f64, b: f64| -> f64 {
        rows.iter()
            .map(|&(x1, x2, y)| ((a * x1 + b * x2) / y - 1.0).powi(2))
            .sum()
    };
    let a = if s11 > 0.0 { r1 / s11 } else { 0.0 };
    let b = if s22 > 0.0 { r2 / s22 } else { 0.0 };
    if sse(a, 0.0) <= sse(0.0, b) { (a, 0.0) } else { (0.0, b) }
}

/// Fits [`PhaseCost`] to measured `(size, seconds per phase)` points. Needs at least two points with positive times.
pub fn fit(points: &[(TinySize, [f64; 3])]) -> Result<PhaseCost, Error> {
    if points.len() < 2 {
        return Err(Error::invalid(
            "rlhf_tiny.fit",
            points.len(),
            "two constants per phase need at least two measured sizes",
            "measure more sizes",
        ));
    }
    if let Some((i, _)) = points
        .iter()
        .enumerate()
        .find(|(_, p)| p.1.iter().any(|t| t.is_nan() || *t <= 0.0))
    {
        return Err(Error::invalid(
            format!("rlhf_tiny.fit[{i}]"),
            format!("{:?}", points[i].1),
            "phase times must be positive",
            "remeasure the point",
        ));
    }
    let mut cost = PhaseCost {
        s_per_flop: [0.0; 3],
        overhead_s: [0.0; 3],
    };
    for ph in 0..3 {
        let rows: Vec<(f64, f64, f64)> = points
            .iter()
            .map(|(s, t)| {
                let c = counts(s)[ph];
                (c.0, c.1, t[ph])
            })
            .collect();
        let (a, b) = fit2(&rows);
        cost.s_per_flop[ph] = a;
        cost.overhead_s[ph] = b;
    }
    Ok(cost)
}

/// The fitted model against measured points it was not fitted on: one [`HeldOut`] per point and phase (metric
/// `time.<phase>`, seconds; no uncalibrated model).
pub fn held_out(cost: &PhaseCost, points: &[(String, TinySize, [f64; 3])]) -> Vec<HeldOut> {
    let mut out = Vec::new();
    for (case, s, t) in points {
        let p = cost.predict(s);
        for ph in 0..3 {
            out.push(HeldOut {
                case: case.clone(),
                metric: format!("time.{}", PHASES[ph]),
                measured: t[ph],
                calibrated: p[ph],
                uncalibrated: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(batch: f64, hidden: f64) -> TinySize {
        TinySize {
            batch,
            response_len: 16.0,
            context: 2.0,
            embed: 16.0,
            hidden,
            vocab: 16.0,
            ppo_epochs: 2.0,
        }
    }

    #[test]
    fn counts_by_hand() {
        // f = 2·(2·16·64 + 64·16) = 6144; B·T = 32·16 = 512.
        let c = counts(&size(32.0, 64.0));
        assert_eq!(c[0], (16.0 * 32.0 * 6144.0, 16.0));
        assert_eq!(c[1], (2.0 * 512.0 * 6144.0, 2.0));
        assert_eq!(c[2], (3.0 * 2.0 * 512.0 * 6144.0, 2.0));
    }

    #[test]
    fn counts_of_the_other_algorithms_by_hand() {
        // f = 6144, B·T = 512 (as above); K = 4 samples.
        let s = size(32.0, 64.0);
        assert_eq!(counts_for(Algorithm::Ppo, &s, 1.0), counts(&s));
        let d = counts_for(Algorithm::Dpo, &s, 1.0);
        assert_eq!(
            d,
            [(0.0, 0.0), (2.0 * 512.0 * 6144.0, 1.0), (6.0 * 512.0 * 6144.0, 1.0)]
        );
        let r = counts_for(Algorithm::RejectionSampling, &s, 4.0);
        assert_eq!(r[0], (16.0 * 4.0 * 32.0 * 6144.0, 16.0));
        assert_eq!(r[1], (0.0, 1.0));
        assert_eq!(r[2], (3.0 * 512.0 * 6144.0, 1.0));
        let p = CpuPhaseProfile {
            device: "cpu".into(),
            context: 2.0,
            embed: 16.0,
            cost: PhaseCost {
                s_per_flop: [1e-9; 3],
                overhead_s: [1e-5; 3],
            },
        };
        assert!(p.validate("p").is_ok());
        assert_eq!(p.predict(Algorithm::Dpo, &s, 1.0)[0], 0.0);
        let bad = CpuPhaseProfile {
            cost: PhaseCost {
                s_per_flop: [-1.0, 0.0, 0.0],
                overhead_s: [0.0; 3],
            },
            ..p
        };
        assert!(
            bad.validate("profile.params")
                .unwrap_err()
                .to_string()
                .contains("profile.params.cost")
        );
    }

    #[test]
    fn fit_recovers_planted_constants_and_rejects_bad_input() {
        let truth = PhaseCost {
            s_per_flop: [2e-9, 1e-9, 1.5e-9],
            overhead_s: [3e-5, 1e-4, 2e-4],
        };
        let pts: Vec<(TinySize, [f64; 3])> = [(16.0, 32.0), (64.0, 32.0), (16.0, 256.0), (64.0, 128.0)]
            .iter()
            .map(|&(b, h)| (size(b, h), truth.predict(&size(b, h))))
            .collect();
        let got = fit(&pts).unwrap();
        for i in 0..3 {
            assert!((got.s_per_flop[i] / truth.s_per_flop[i] - 1.0).abs() < 1e-9);
            assert!((got.overhead_s[i] / truth.overhead_s[i] - 1.0).abs() < 1e-9);
        }
        assert!(fit(&pts[..1]).is_err());
        let mut bad = pts.clone();
        bad[2].1[1] = 0.0;
        assert!(fit(&bad).unwrap_err().to_string().contains("rlhf_tiny.fit[2]"));
    }
}

//! The `distillation` workload: a teacher distilled into a student over several domains, under a domain-sampling
//! schedule (DDK: Liu et al. 2024, arXiv 2407.16154; notes in `shared/design/notes/dcpt-ddk.md` §2).
//!
//! At the scale this machine trains for real: teacher and student are tiny LMs of the project's family (`embed`,
//! `context`, `vocab` shared, widths `teacher_hidden` and `student_hidden`; every context starts with a domain
//! marker token, [`Distillation::model_vocab`]); each domain is a seeded order-2 Markov source with its own Zipf exponent (its entropy) and a finite pool of training examples (`tokens`) that is reused
//! cyclically once exhausted (DDK §2.2). The teacher trains on the uniform mixture; the student trains on CE + γ·τ²·KL
//! (teacher ‖ student at temperature τ; DDK: γ = 0.2, τ = 1) with domains sampled by the schedule:
//! - `uniform`: every domain 1/N;
//! - `static`: fixed weights;
//! - `phased`: fixed weights per phase of a given number of steps, the last phase to the end (an open-loop schedule
//!   whose weights change over time, e.g. a domain learned and then starved);
//! - `ddk`: every `k` steps the per-domain validation perplexities of both models give the discrepancy factor
//!   (Eq. 1, [`ddk_factor`]), smoothed with the previous weights (Eq. 2, [`ddk_update`]).
//!
//! The DDK update is pure and lives here, so the real run and any model of it use the same arithmetic.
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};

/// One domain of the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// A name for reports.
    pub name: String,
    /// Training examples (tokens) available; reused cyclically once exhausted.
    pub tokens: u64,
    /// Zipf exponent of the domain's next-token law (higher: lower entropy, easier).
    pub zipf: f64,
}

/// How the student's training examples are drawn from the domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Every domain with probability 1/N.
    Uniform,
    /// Fixed probabilities, one per domain, summing to 1.
    Static(Vec<f64>),
    /// Fixed probabilities per phase, the phases in order; the last phase runs to the end of the run.
    Phased(Vec<Phase>),
    /// DDK: re-weight every `k` student steps from the per-domain perplexity ratio, smoothed by `alpha`.
    Ddk {
        /// Student steps between updates (the distillation interval).
        k: u64,
        /// Smoothing coefficient α of Eq. 2 (DDK: 0.5); every domain keeps at least (1 − α)/N.
        alpha: f64,
    },
}

/// One phase of a [`Schedule::Phased`] schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Student steps the phase lasts (the last phase lasts to the end of the run whatever this says).
    pub steps: u64,
    /// Sampling probabilities during the phase, one per domain, summing to 1.
    pub weights: Vec<f64>,
}

/// A distillation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    /// The domains.
    pub domains: Vec<DomainSpec>,
    /// The schedule.
    pub schedule: Schedule,
    /// Hidden width of the teacher.
    pub teacher_hidden: u64,
    /// Hidden width of the student (a student wider than the teacher is allowed).
    pub student_hidden: u64,
    /// Vocabulary of every domain.
    #[serde(default = "d_vocab")]
    pub vocab: u64,
    /// Embedding width of both models.
    #[serde(default = "d_embed")]
    pub embed: u64,
    /// Previous tokens both models see.
    #[serde(default = "d_context")]
    pub context: u64,
    /// Share of each domain's next-token law taken from a law common to all domains (what transfers between them).
    #[serde(default = "d_overlap")]
    pub overlap: f64,
    /// Teacher training tokens (on the uniform mixture).
    pub teacher_tokens: u64,
    /// Student training tokens (the distillation budget).
    pub student_tokens: u64,
    /// Examples per step.
    #[serde(default = "d_batch")]
    pub batch: u64,
    /// AdamW learning rate of both models.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Weight γ of the KL term (DDK: 0.2).
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// Temperature τ of the KL term (DDK: 1).
    #[serde(default = "d_tau")]
    pub temperature: f64,
    /// Validation examples per domain (DDK: 500).
    #[serde(default = "d_val")]
    pub val_examples: u64,
    /// The same method at production scale, for its cost only (the losses are those of the tiny models above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_scale: Option<AtScale>,
}

/// A transformer teacher and student distilled on a cluster: what the cost model prices at scale.
///
/// FLOPs (Kaplan et al. 2020 accounting): `(6·N_S + 2·N_T)·D` (student training, teacher forward on every token;
/// DDK's periodic evaluation, 500 examples per domain every K = 1000 steps, is left out); time
/// `FLOPs / (GPUs · peak(dtype) · mfu)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtScale {
    /// Teacher parameters.
    pub teacher_params: f64,
    /// Student parameters.
    pub student_params: f64,
    /// Distillation tokens.
    pub tokens: f64,
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Model FLOPs utilisation assumed (a planning assumption, not measured here).
    #[serde(default = "d_mfu")]
    pub mfu: f64,
    /// Datatype of the matrix products.
    #[serde(default = "d_dtype")]
    pub dtype: Dtype,
}

fn d_mfu() -> f64 {
    0.4
}
fn d_dtype() -> Dtype {
    Dtype::Bf16
}

/// The cost of an [`AtScale`] run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AtScaleCost {
    /// All FLOPs.
    pub flops: f64,
    /// The teacher forward's share.
    pub teacher_share: f64,
    /// Days on the cluster.
    pub days: f64,
    /// GPU-hours.
    pub gpu_hours: f64,
}

impl AtScale {
    /// Its cost by the formulas above.
    pub fn cost(&self) -> AtScaleCost {
        let (s, t) = (6.0 * self.student_params, 2.0 * self.teacher_params);
        let flops = (s + t) * self.tokens;
        let gpus = self.cluster.gpus() as f64;
        let secs = flops / (gpus * self.cluster.gpu.peak(self.dtype) * self.mfu);
        AtScaleCost {
            flops,
            teacher_share: t / (s + t),
            days: secs / 86_400.0,
            gpu_hours: secs * gpus / 3600.0,
        }
    }
    fn validate(&self) -> Result<(), Error> {
        check::positive_at_most(
            "workload.at_scale.teacher_params",
            self.teacher_params,
            1e15,
            "beyond any model",
        )?;
        check::positive_at_most(
            "workload.at_scale.student_params",
            self.student_params,
            1e15,
            "beyond any model",
        )?;
        check::positive_at_most("workload.at_scale.tokens", self.tokens, 1e16, "beyond any corpus")?;
        check::positive_at_most("workload.at_scale.mfu", self.mfu, 1.0, "above the peak")?;
        self.cluster.validate("workload.at_scale.cluster")?;
        if self.cluster.gpu.peak(self.dtype).is_nan() || self.cluster.gpu.peak(self.dtype) <= 0.0 {
            return Err(Error::invalid(
                "workload.at_scale.dtype",
                format!("{:?}", self.dtype),
                "the GPU has no peak rate for this datatype",
                "use bf16 or fp16",
            ));
        }
        Ok(())
    }
}

fn d_vocab() -> u64 {
    16
}
fn d_embed() -> u64 {
    8
}
fn d_context() -> u64 {
    2
}
fn d_overlap() -> f64 {
    0.3
}
fn d_batch() -> u64 {
    64
}
fn d_lr() -> f64 {
    5e-3
}
fn d_gamma() -> f64 {
    0.2
}
fn d_tau() -> f64 {
    1.0
}
fn d_val() -> u64 {
    500
}

const MAX_DOMAINS: usize = 64;
const MAX_SIZE: u64 = 1 << 16;
const MAX_TOKENS: u64 = 1 << 36;

impl Distillation {
    /// The models' vocabulary: the domains' `vocab` tokens plus one marker token per domain. Every example's context
    /// starts with its domain's marker (a marker is never a target), so a model can tell the domains apart: without it
    /// the same context pair would carry a different next-token law in every domain and no model could learn them.
    pub fn model_vocab(&self) -> u64 {
        self.vocab + self.domains.len() as u64
    }

    /// The models' context: the marker and `context` previous tokens.
    pub fn model_context(&self) -> u64 {
        self.context + 1
    }

    /// Parameter count of a model of width `hidden` (`V·E + c·E·H + H + H·V + V` with the model vocabulary and
    /// context).
    pub fn params(&self, hidden: u64) -> f64 {
        let (v, c, e, h) = (
            self.model_vocab() as f64,
            self.model_context() as f64,
            self.embed as f64,
            hidden as f64,
        );
        v * e + c * e * h + h + h * v + v
    }

    /// The schedule's starting weights.
    pub fn initial_weights(&self) -> Vec<f64> {
        let n = self.domains.len();
        match &self.schedule {
            Schedule::Static(w) => w.clone(),
            Schedule::Phased(p) if !p.is_empty() => p[0].weights.clone(),
            Schedule::Uniform | Schedule::Phased(_) | Schedule::Ddk { .. } => vec![1.0 / n as f64; n],
        }
    }

    /// Student steps of the run (the last one may be short).
    pub fn student_steps(&self) -> u64 {
        self.student_tokens.div_ceil(self.batch)
    }

    /// An open-loop schedule as stretches `(first step, weights)`: the weights in force from that many steps done
    /// until the next stretch's first step (the last to the end of the run); stretches starting at or after the run's
    /// last step are dropped. `None` for DDK, whose weights depend on the run.
    pub fn stretches(&self) -> Option<Vec<(u64, Vec<f64>)>> {
        match &self.schedule {
            Schedule::Ddk { .. } => None,
            Schedule::Phased(p) => {
                let steps = self.student_steps();
                let mut out = Vec::with_capacity(p.len());
                let mut at = 0u64;
                for ph in p {
                    if at >= steps && !out.is_empty() {
                        break;
                    }
                    out.push((at, ph.weights.clone()));
                    at = at.saturating_add(ph.steps);
                }
                Some(out)
            }
            _ => Some(vec![(0, self.initial_weights())]),
        }
    }

    /// The weights in force at the end of an open-loop schedule (`None` for DDK).
    pub fn final_weights(&self) -> Option<Vec<f64>> {
        self.stretches().and_then(|s| s.last().map(|(_, w)| w.clone()))
    }
}

/// Checks that `w` holds `n` probabilities summing to 1, naming `field`.
fn check_weights(field: &str, w: &[f64], n: usize) -> Result<(), Error> {
    if w.len() != n {
        return Err(Error::invalid(
            field,
            format!("{} weights", w.len()),
            format!("one weight per domain ({n})"),
            format!("give {n} weights summing to 1"),
        ));
    }
    for (i, x) in w.iter().enumerate() {
        check::in_range(&format!("{field}[{i}]"), *x, 0.0, 1.0)?;
    }
    let s: f64 = w.iter().sum();
    if (s - 1.0).abs() > 1e-6 {
        return Err(Error::invalid(
            field,
            format!("{w:?}"),
            format!("the weights sum to {s}, not 1"),
            "give sampling probabilities that sum to 1",
        ));
    }
    Ok(())
}

impl Workload for Distillation {
    type Outcome = DistillOutcome;
    const KIND: &'static str = "distillation";
    fn validate(&self) -> Result<(), Error> {
        let n = self.domains.len();
        if !(2..=MAX_DOMAINS).contains(&n) {
            return Err(Error::invalid(
                "workload.domains",
                format!("{n} domains"),
                format!("need 2 to {MAX_DOMAINS} domains"),
                "list the domains as [[workload.domains]] tables with name, tokens and zipf",
            ));
        }
        for (i, d) in self.domains.iter().enumerate() {
            let f = |x: &str| format!("workload.domains[{i}].{x}");
            check::at_least(&f("tokens"), d.tokens, 1)?;
            check::at_most(&f("tokens"), d.tokens, MAX_TOKENS, "far beyond a run on this machine")?;
            check::positive_at_most(&f("zipf"), d.zipf, 10.0, "a source that emits one token")?;
        }
        match &self.schedule {
            Schedule::Uniform => {}
            Schedule::Static(w) => check_weights("workload.schedule.static", w, n)?,
            Schedule::Phased(p) => {
                if p.is_empty() {
                    return Err(Error::invalid(
                        "workload.schedule.phased",
                        "no phases",
                        "at least one phase",
                        "give [[workload.schedule.phased]] tables with steps and weights",
                    ));
                }
                for (i, ph) in p.iter().enumerate() {
                    let f = |x: &str| format!("workload.schedule.phased[{i}].{x}");
                    check::at_least(&f("steps"), ph.steps, 1)?;
                    check::at_most(&f("steps"), ph.steps, MAX_TOKENS, "longer than any run")?;
                    check_weights(&f("weights"), &ph.weights, n)?;
                }
            }
            Schedule::Ddk { k, alpha } => {
                check::at_least("workload.schedule.ddk.k", *k, 1)?;
                check::at_most("workload.schedule.ddk.k", *k, MAX_TOKENS, "longer than any run")?;
                check::in_range("workload.schedule.ddk.alpha", *alpha, 0.0, 1.0)?;
            }
        }
        for (name, v, min) in [
            ("teacher_hidden", self.teacher_hidden, 1),
            ("student_hidden", self.student_hidden, 1),
            ("vocab", self.vocab, 2),
            ("embed", self.embed, 1),
            ("context", self.context, 1),
            ("batch", self.batch, 1),
            ("val_examples", self.val_examples, 16),
        ] {
            let f = format!("workload.{name}");
            check::at_least(&f, v, min)?;
            check::at_most(&f, v, MAX_SIZE, "far beyond a model trained on this machine")?;
        }
        // The corpus holds a next-token law per context pair and domain: V^3 entries per domain.
        check::at_most(
            "workload.vocab",
            self.vocab,
            256,
            "each domain stores V^3 probabilities",
        )?;
        for (name, v) in [
            ("teacher_tokens", self.teacher_tokens),
            ("student_tokens", self.student_tokens),
        ] {
            let f = format!("workload.{name}");
            check::at_least(&f, v, self.batch)?;
            check::at_most(&f, v, MAX_TOKENS, "weeks of CPU time")?;
        }
        check::in_range("workload.overlap", self.overlap, 0.0, 1.0)?;
        check::positive_at_most("workload.lr", self.lr, 1.0, "AdamW diverges far below that")?;
        check::non_negative_at_most("workload.gamma", self.gamma, 100.0, "the KL term would swamp the data")?;
        check::positive_at_most("workload.temperature", self.temperature, 100.0, "a flat teacher")?;
        if let Some(a) = &self.at_scale {
            a.validate()?;
        }
        Ok(())
    }
    fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.teacher_hidden < self.student_hidden {
            out.push(format!(
                "workload.teacher_hidden: the teacher (hidden {}) is smaller than the student (hidden {}); \
                 distilling from a smaller teacher is allowed, but its soft targets are likely worse than the data's",
                self.teacher_hidden, self.student_hidden
            ));
        }
        if let Some(a) = &self.at_scale
            && a.teacher_params < a.student_params
        {
            out.push(format!(
                "workload.at_scale.teacher_params: the teacher ({:.3e} parameters) is smaller than the student \
                 ({:.3e}); the cost is computed, but such a teacher rarely helps",
                a.teacher_params, a.student_params
            ));
        }
        out
    }
}

/// DDK Eq. 1: the domain discrepancy factor, a softmax over domains of the student/teacher perplexity ratio.
/// `student_ce[i]` and `teacher_ce[i]` are per-domain validation cross-entropies in nats (perplexity = exp(CE)).
pub fn ddk_factor(student_ce: &[f64], teacher_ce: &[f64]) -> Vec<f64> {
    let ratio: Vec<f64> = student_ce
        .iter()
        .zip(teacher_ce)
        .map(|(s, t)| (s - t).exp()) // exp(CE_S) / exp(CE_T)
        .collect();
    let m = ratio.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = ratio.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// DDK Eq. 2: `ψ[i] = r[i]·exp(ℓ_S[i]/ℓ_T[i])`, `r'[i] = α·ψ[i]/Σψ + (1 − α)/N`: the previous weights `r` times the
/// new evidence, renormalised, mixed with the uniform floor.
pub fn ddk_update(r: &[f64], student_ce: &[f64], teacher_ce: &[f64], alpha: f64) -> Vec<f64> {
    let n = r.len() as f64;
    // exp(ratio) can overflow for large gaps; work in logs: log ψ = log r + ratio.
    let log_psi: Vec<f64> = r
        .iter()
        .zip(student_ce.iter().zip(teacher_ce))
        .map(|(ri, (s, t))| ri.ln() + (s - t).exp())
        .collect();
    let m = log_psi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let psi: Vec<f64> = log_psi.iter().map(|l| (l - m).exp()).collect();
    let z: f64 = psi.iter().sum();
    psi.iter().map(|p| alpha * p / z + (1.0 - alpha) / n).collect()
}

/// The answer for a [`Distillation`]: final per-domain losses of both models and the student's gap, the final
/// sampling weights, and the compute spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillOutcome {
    /// Domain names, in order.
    pub domains: Vec<String>,
    /// Final student validation CE per domain (nats); `None` where the backend does not model losses.
    pub student_ce: Option<Vec<f64>>,
    /// Teacher validation CE per domain (nats).
    pub teacher_ce: Option<Vec<f64>>,
    /// Final sampling weights per domain.
    pub weights: Option<Vec<f64>>,
    /// Matrix FLOPs: student training, teacher forward passes on the student's batches, periodic evaluation.
    pub flops: Flops,
    /// 95% intervals of the mean and worst gap, where the backend estimates them (Monte Carlo over sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ci: Option<GapCi>,
    /// The cost at production scale, where the workload has [`AtScale`] and the backend prices it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_scale: Option<AtScaleCost>,
}

/// 95% intervals of the mean and worst per-domain gap (nats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapCi {
    /// Interval of the mean gap.
    pub mean: (f64, f64),
    /// Interval of the worst gap.
    pub worst: (f64, f64),
}

/// Matrix FLOPs of a distillation run, by part (teacher training not included: the teacher is given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Flops {
    /// Student forward and backward on its training batches.
    pub student_train: f64,
    /// Teacher forward on the same batches (the soft targets).
    pub teacher_forward: f64,
    /// Forward passes of both models on every domain's validation set, at each schedule update.
    pub evaluation: f64,
}

impl Flops {
    /// All of it.
    pub fn total(&self) -> f64 {
        self.student_train + self.teacher_forward + self.evaluation
    }
}

impl Outcome for DistillOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        if let (Some(s), Some(t)) = (&self.student_ce, &self.teacher_ce) {
            let gaps: Vec<f64> = s.iter().zip(t).map(|(a, b)| a - b).collect();
            let n = gaps.len() as f64;
            let (mean, worst) = (
                gaps.iter().sum::<f64>() / n,
                gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            );
            match self.gap_ci {
                Some(ci) => {
                    out.push(Metric::with_ci("gap.mean", Unit::Nats, mean, ci.mean.0, ci.mean.1));
                    out.push(Metric::with_ci("gap.worst", Unit::Nats, worst, ci.worst.0, ci.worst.1));
                }
                None => {
                    out.push(Metric::new("gap.mean", Unit::Nats, mean));
                    out.push(Metric::new("gap.worst", Unit::Nats, worst));
                }
            }
            out.push(Metric::new("student_ce.mean", Unit::Nats, s.iter().sum::<f64>() / n));
            for (i, name) in self.domains.iter().enumerate() {
                out.push(Metric::new(format!("gap.{name}"), Unit::Nats, gaps[i]));
                out.push(Metric::new(format!("student_ce.{name}"), Unit::Nats, s[i]));
                out.push(Metric::new(format!("teacher_ce.{name}"), Unit::Nats, t[i]));
            }
        }
        if let Some(w) = &self.weights {
            for (name, x) in self.domains.iter().zip(w) {
                out.push(Metric::new(format!("weight.{name}"), Unit::Ratio, *x));
            }
        }
        let f = self.flops;
        out.push(Metric::new("flops", Unit::Flop, f.total()));
        out.push(Metric::new(
            "teacher_flop_share",
            Unit::Ratio,
            f.teacher_forward / f.total(),
        ));
        out.push(Metric::new("eval_flop_share", Unit::Ratio, f.evaluation / f.total()));
        if let Some(a) = self.at_scale {
            out.push(Metric::new("at_scale.flops", Unit::Flop, a.flops));
            out.push(Metric::new("at_scale.teacher_flop_share", Unit::Ratio, a.teacher_share));
            out.push(Metric::new("at_scale.days", Unit::Days, a.days));
            out.push(Metric::new("at_scale.gpu_hours", Unit::GpuHours, a.gpu_hours));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq1_by_hand() {
        // CE gaps 0 and ln 2: perplexity ratios 1 and 2; factor = (e^1, e^2) / (e^1 + e^2) = (1, e) / (1 + e).
        let r = ddk_factor(&[1.0, 1.0 + 2f64.ln()], &[1.0, 1.0]);
        let e = std::f64::consts::E;
        assert!((r[0] - 1.0 / (1.0 + e)).abs() < 1e-12, "{r:?}");
        assert!((r[1] - e / (1.0 + e)).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn eq2_by_hand_with_the_floor() {
        // r = (0.5, 0.5), ratios (1, 2): ψ = (0.5e, 0.5e²), normalised (1, e)/(1+e); α = 0.5, N = 2:
        // r' = 0.5·(1, e)/(1+e) + 0.25.
        let e = std::f64::consts::E;
        let r = ddk_update(&[0.5, 0.5], &[1.0, 1.0 + 2f64.ln()], &[1.0, 1.0], 0.5);
        assert!((r[0] - (0.5 / (1.0 + e) + 0.25)).abs() < 1e-12, "{r:?}");
        assert!((r[1] - (0.5 * e / (1.0 + e) + 0.25)).abs() < 1e-12, "{r:?}");
        // α = 0 is uniform; α = 1 has no floor; the floor (1 − α)/N holds for any gap.
        assert_eq!(ddk_update(&[0.9, 0.1], &[5.0, 1.0], &[1.0, 1.0], 0.0), vec![0.5, 0.5]);
        let r = ddk_update(&[0.25; 4], &[50.0, 1.0, 1.0, 1.0], &[1.0; 4], 0.5);
        assert!(
            r.iter().all(|x| *x >= 0.125 - 1e-12) && (r.iter().sum::<f64>() - 1.0).abs() < 1e-12,
            "{r:?}"
        );
        // History: the previous weights multiply the new evidence.
        let a = ddk_update(&[0.8, 0.2], &[1.0, 1.0], &[1.0, 1.0], 1.0);
        assert!((a[0] - 0.8).abs() < 1e-12, "{a:?}");
    }

    fn run() -> Distillation {
        let d = |n: &str| DomainSpec {
            name: n.into(),
            tokens: 1000,
            zipf: 1.2,
        };
        Distillation {
            domains: vec![d("a"), d("b"), d("c")],
            schedule: Schedule::Ddk { k: 10, alpha: 0.5 },
            teacher_hidden: 32,
            student_hidden: 8,
            vocab: 16,
            embed: 8,
            context: 2,
            overlap: 0.3,
            teacher_tokens: 10_000,
            student_tokens: 10_000,
            batch: 64,
            lr: 5e-3,
            gamma: 0.2,
            temperature: 1.0,
            val_examples: 100,
            at_scale: None,
        }
    }

    #[test]
    fn phased_stretches() {
        // 10_000 tokens in batches of 64: 157 steps. Phases of 50 and 200 steps, then a third never reached.
        let mut w = run();
        let (a, b, c) = (vec![0.2, 0.4, 0.4], vec![0.9, 0.05, 0.05], vec![0.0, 0.0, 1.0]);
        w.schedule = Schedule::Phased(vec![
            Phase {
                steps: 50,
                weights: a.clone(),
            },
            Phase {
                steps: 200,
                weights: b.clone(),
            },
            Phase { steps: 5, weights: c },
        ]);
        assert_eq!(w.student_steps(), 157);
        assert_eq!(w.stretches(), Some(vec![(0, a.clone()), (50, b.clone())]));
        assert_eq!(w.initial_weights(), a);
        assert_eq!(w.final_weights(), Some(b));
        w.schedule = Schedule::Static(vec![0.5, 0.25, 0.25]);
        assert_eq!(w.stretches(), Some(vec![(0, vec![0.5, 0.25, 0.25])]));
        w.schedule = Schedule::Ddk { k: 5, alpha: 0.5 };
        assert_eq!(w.stretches(), None);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(run().validate().is_ok());
        let e = |w: Distillation| w.validate().unwrap_err().to_string();
        let mut w = run();
        w.schedule = Schedule::Static(vec![0.5, 0.3, 0.3]);
        assert!(e(w).contains("workload.schedule.static"));
        let mut w = run();
        w.schedule = Schedule::Ddk { k: 0, alpha: 0.5 };
        assert!(e(w).contains("workload.schedule.ddk.k"));
        let ph = |steps: u64, weights: Vec<f64>| Phase { steps, weights };
        let mut w = run();
        w.schedule = Schedule::Phased(vec![]);
        assert!(e(w).contains("workload.schedule.phased"));
        let mut w = run();
        w.schedule = Schedule::Phased(vec![ph(10, vec![0.2, 0.4, 0.4]), ph(0, vec![0.2, 0.4, 0.4])]);
        assert!(e(w).contains("workload.schedule.phased[1].steps"));
        let mut w = run();
        w.schedule = Schedule::Phased(vec![ph(10, vec![0.2, 0.4, 0.4]), ph(5, vec![0.9, 0.05, 0.1])]);
        assert!(e(w).contains("workload.schedule.phased[1].weights"));
        let mut w = run();
        w.schedule = Schedule::Phased(vec![ph(10, vec![0.2, 0.4, 0.4]), ph(5, vec![0.9, 0.05, 0.05])]);
        assert!(w.validate().is_ok());
        let mut w = run();
        w.schedule = Schedule::Ddk { k: 5, alpha: 1.5 };
        assert!(e(w).contains("workload.schedule.ddk.alpha"));
        let mut w = run();
        w.domains[1].tokens = 0;
        assert!(e(w).contains("workload.domains[1].tokens"));
        let mut w = run();
        w.student_hidden = 64; // wider than the teacher: allowed
        assert!(w.validate().is_ok());
    }
}

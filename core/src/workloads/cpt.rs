//! The `cpt_run` workload: one continual-pretraining (CPT) run of the D-CPT Law paper (Que et al. 2024), at the
//! scale this machine trains for real.
//!
//! A small language model of the project's tiny LM family (`setup.vocab`, `setup.context`, `setup.embed` and the
//! model's `hidden` width) is pretrained on a general source for `setup.pretrain_tokens` tokens, then continued for
//! `cpt_tokens` tokens on a mixture with domain share `domain_ratio` (r_d). The answer is the validation loss on the
//! general and on the domain source after CPT, in nats.
//!
//! Backends: the real run in `trainlab_executors::lm` (CPU, or CUDA), and the D-CPT law L3 fitted to such runs in
//! `trainlab_models::cpt` (it answers only with a calibrated `cpt_run` profile of the same `setup`).
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{Error, Metric, Outcome, Unit, Workload};

/// What every run of a D-CPT grid shares: the tiny LM family, its data and its optimiser. A law fitted on runs of one
/// setup predicts runs of that setup only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CptSetup {
    /// Vocabulary of the synthetic sources.
    pub vocab: u64,
    /// Previous tokens the model sees.
    pub context: u64,
    /// Embedding width.
    pub embed: u64,
    /// Examples (tokens) per optimiser step.
    pub batch: u64,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// General-only pretraining tokens of the base model.
    pub pretrain_tokens: u64,
    /// Validation examples per source.
    pub val_examples: u64,
    /// Zipf exponent of the sources' token statistics.
    pub zipf: f64,
    /// Overlap of the domain source with the general one (0 = disjoint statistics, 1 = identical).
    pub overlap: f64,
}

impl Default for CptSetup {
    /// The setup of `trainlab execute-dcpt`'s default grid.
    fn default() -> Self {
        CptSetup {
            vocab: 16,
            context: 2,
            embed: 8,
            batch: 64,
            lr: 5e-3,
            weight_decay: 0.01,
            pretrain_tokens: 100_000,
            val_examples: 4096,
            zipf: 1.6,
            overlap: 0.8,
        }
    }
}

/// Largest width, vocabulary or token count accepted: far above what trains on a CPU in minutes, and small enough
/// that parameter counts and FLOPs stay exact in `f64`.
const MAX_SIZE: u64 = 1 << 20;
const MAX_TOKENS: u64 = 1 << 40;

impl CptSetup {
    /// Checks every field; `path` prefixes the field names (`workload.setup`).
    pub fn validate_at(&self, path: &str) -> Result<(), Error> {
        let f = |name: &str| format!("{path}.{name}");
        for (name, v, min) in [
            ("vocab", self.vocab, 2),
            ("context", self.context, 1),
            ("embed", self.embed, 1),
            ("batch", self.batch, 1),
            ("val_examples", self.val_examples, 16),
        ] {
            check::at_least(&f(name), v, min)?;
            check::at_most(&f(name), v, MAX_SIZE, "far beyond a model trained on this machine")?;
        }
        check::at_most(
            &f("pretrain_tokens"),
            self.pretrain_tokens,
            MAX_TOKENS,
            "weeks of CPU time",
        )?;
        check::positive_at_most(&f("lr"), self.lr, 1.0, "AdamW diverges far below that")?;
        check::in_range(&f("weight_decay"), self.weight_decay, 0.0, 1.0)?;
        check::positive_at_most(&f("zipf"), self.zipf, 10.0, "a source that emits one token")?;
        check::in_range(&f("overlap"), self.overlap, 0.0, 1.0)
    }
}

/// One CPT run: a model of width `hidden` continued on `cpt_tokens` tokens with domain share `domain_ratio`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CptRun {
    /// Hidden width of the model (its size knob).
    pub hidden: u64,
    /// Domain share r_d of the CPT mixture, in [0, 1].
    pub domain_ratio: f64,
    /// CPT tokens.
    pub cpt_tokens: u64,
    /// The model family, data and optimiser (defaults: `trainlab execute-dcpt`'s).
    #[serde(default)]
    pub setup: CptSetup,
}

impl CptRun {
    /// Parameter count N of the model: `V·E + c·E·H + H + H·V + V` (the tiny LM's embedding, hidden layer with bias
    /// and output layer with bias).
    pub fn params(&self) -> f64 {
        let (v, c, e, h) = (
            self.setup.vocab as f64,
            self.setup.context as f64,
            self.setup.embed as f64,
            self.hidden as f64,
        );
        v * e + c * e * h + h + h * v + v
    }
}

impl Workload for CptRun {
    type Outcome = CptOutcome;
    const KIND: &'static str = "cpt_run";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.hidden", self.hidden, 1)?;
        check::at_most(
            "workload.hidden",
            self.hidden,
            MAX_SIZE,
            "far beyond a model trained on this machine",
        )?;
        check::in_range("workload.domain_ratio", self.domain_ratio, 0.0, 1.0)?;
        check::at_least("workload.cpt_tokens", self.cpt_tokens, 32)?;
        check::at_most("workload.cpt_tokens", self.cpt_tokens, MAX_TOKENS, "weeks of CPU time")?;
        self.setup.validate_at("workload.setup")
    }
}

/// The answer for a [`CptRun`]: validation losses after CPT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CptOutcome {
    /// Validation loss on the general source, nats; with an interval where the backend has one.
    pub general_loss: (f64, Option<(f64, f64)>),
    /// Validation loss on the domain source, nats.
    pub domain_loss: (f64, Option<(f64, f64)>),
    /// Parameter count N.
    pub params: f64,
}

impl Outcome for CptOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let m = |name: &str, (v, ci): (f64, Option<(f64, f64)>)| match ci {
            Some((lo, hi)) => Metric::with_ci(name, Unit::Nats, v, lo, hi),
            None => Metric::new(name, Unit::Nats, v),
        };
        vec![
            m("general_loss", self.general_loss),
            m("domain_loss", self.domain_loss),
            Metric::new("params", Unit::Count, self.params),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> CptRun {
        CptRun {
            hidden: 16,
            domain_ratio: 0.5,
            cpt_tokens: 10_000,
            setup: CptSetup::default(),
        }
    }

    #[test]
    fn params_match_the_tiny_lm() {
        // V=16, c=2, E=8, H=16: 128 + 256 + 16 + 256 + 16.
        assert_eq!(run().params(), 672.0);
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = run();
        r.domain_ratio = 1.5;
        assert!(r.validate().unwrap_err().to_string().contains("workload.domain_ratio"));
        let mut r = run();
        r.setup.lr = f64::NAN;
        assert!(r.validate().unwrap_err().to_string().contains("workload.setup.lr"));
        let mut r = run();
        r.hidden = u64::MAX;
        assert!(r.validate().unwrap_err().to_string().contains("workload.hidden"));
        let mut r = run();
        r.setup.vocab = 1;
        assert!(r.validate().unwrap_err().to_string().contains("workload.setup.vocab"));
        assert!(run().validate().is_ok());
    }
}

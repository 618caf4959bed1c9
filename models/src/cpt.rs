//! The D-CPT law (Que et al. 2024, L3) as a backend of the `cpt_run` workload: the validation losses of a
//! continual-pretraining run predicted from its model size N, CPT tokens D and domain share r, by laws fitted to real
//! runs of the same setup (`trainlab calibrate --workload cpt_run` writes them into a `cpt_run` profile).
//!
//! The general loss is the law of the general share `1 − r`, the domain loss the law of `r` (the paper's convention:
//! each loss falls with the share of its own source). With bootstrap replicates in the profile, each prediction
//! carries a 90% percentile interval.
use crate::fit::{Bootstrap, Law};
use crate::laws::DcptL3;
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::cpt::{CptOutcome, CptRun, CptSetup};
use trainlab_core::{Backend, Error, Fidelity, RunCtx};

/// One fitted law: its parameters (optimiser coordinates of [`DcptL3`]) and bootstrap replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedLaw {
    /// Best parameters.
    pub params: Vec<f64>,
    /// Bootstrap replicates of the parameters (possibly none).
    #[serde(default)]
    pub bootstrap: Vec<Vec<f64>>,
}

impl FittedLaw {
    fn check(&self, what: &str, law: &DcptL3) -> Result<(), Error> {
        let k = law.params().len();
        if self.params.len() != k || self.bootstrap.iter().any(|b| b.len() != k) {
            return Err(Error::invalid(
                format!("params.{what}.params"),
                format!("{} values", self.params.len()),
                format!("the D-CPT law L3 has {k} parameters"),
                "recalibrate: trainlab calibrate --workload cpt_run",
            ));
        }
        if self.params.iter().any(|p| !p.is_finite()) {
            return Err(Error::invalid(
                format!("params.{what}.params"),
                format!("{:?}", self.params),
                "not finite",
                "recalibrate: trainlab calibrate --workload cpt_run",
            ));
        }
        Ok(())
    }

    /// The prediction at `x` with its 90% bootstrap interval (when there are replicates).
    fn predict(&self, law: &DcptL3, x: &[f64]) -> (f64, Option<(f64, f64)>) {
        let v = law.eval(&self.params, x);
        if self.bootstrap.len() < 10 {
            return (v, None);
        }
        let b = Bootstrap {
            params: self.bootstrap.clone(),
        };
        let ci = b.predict(law, &self.params, x, 0.9);
        (v, Some((ci.lo.min(v), ci.hi.max(v))))
    }
}

/// The parameters of a `cpt_run` profile: the setup the runs shared and the two fitted laws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CptLawParams {
    /// The setup of every fitted run; the law answers runs of this setup only.
    pub setup: CptSetup,
    /// Hidden widths, CPT tokens and domain shares the fit covered (for the record).
    pub fitted_hidden: Vec<u64>,
    /// CPT token counts of the fitted points (min, max).
    pub fitted_tokens: (u64, u64),
    /// The general-loss law (input r is the general share 1 − r_d).
    pub general: FittedLaw,
    /// The domain-loss law (input r is r_d).
    pub domain: FittedLaw,
}

impl CptLawParams {
    /// Checks the parameter counts and values.
    pub fn validate(&self) -> Result<(), Error> {
        let law = DcptL3::new();
        self.general.check("general", &law)?;
        self.domain.check("domain", &law)
    }
}

/// The fitted D-CPT law as a backend.
#[derive(Debug, Clone, Default)]
pub struct CptLaw {
    /// The fitted laws (from a `cpt_run` profile); without them every answer is an input error naming `--profile`.
    pub fitted: Option<CptLawParams>,
}

impl Backend<CptRun> for CptLaw {
    fn name(&self) -> &str {
        "dcpt_law"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &CptRun, _: &mut RunCtx) -> Result<CptOutcome, Error> {
        let Some(p) = &self.fitted else {
            return Err(Error::invalid(
                "--profile",
                "(none)",
                "the D-CPT law exists only as fitted to real runs of one setup",
                "run `trainlab calibrate --workload cpt_run --out DIR`, then pass `--profile DIR`",
            ));
        };
        if p.setup != w.setup {
            return Err(Error::Unsupported(format!(
                "the cpt_run profile was fitted on runs of another setup ({:?}); the law predicts runs of that setup \
                 only: recalibrate with this one",
                p.setup
            )));
        }
        p.validate()?;
        let law = DcptL3::new();
        let (n, d, r) = (w.params(), w.cpt_tokens as f64, w.domain_ratio);
        Ok(CptOutcome {
            general_loss: p.general.predict(&law, &[n, d, 1.0 - r]),
            domain_loss: p.domain.predict(&law, &[n, d, r]),
            params: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CptLawParams {
        // E = 1, A = 10, B = 5, C = 0.1, alpha = 0.5, beta = 0.3, gamma = 0.4, eta = 0.2, eps = 0.05.
        let p = DcptL3::pack(1.0, 10.0, 5.0, 0.1, 0.5, 0.3, 0.4, 0.2, 0.05);
        CptLawParams {
            setup: CptSetup::default(),
            fitted_hidden: vec![8, 16, 32],
            fitted_tokens: (6_250, 100_000),
            general: FittedLaw {
                params: p.clone(),
                bootstrap: vec![],
            },
            domain: FittedLaw {
                params: p,
                bootstrap: vec![],
            },
        }
    }

    fn run(r: f64) -> CptRun {
        CptRun {
            hidden: 16,
            domain_ratio: r,
            cpt_tokens: 50_000,
            setup: CptSetup::default(),
        }
    }

    #[test]
    fn law_answers_with_the_formula_and_flips_the_general_share() {
        let mut b = CptLaw { fitted: Some(params()) };
        let o = b.run(&run(0.25), &mut RunCtx::new(trainlab_core::Seed(1))).unwrap();
        let n = run(0.25).params();
        let l3 =
            |r: f64| 1.0 + 10.0 / n.powf(0.5) + 5.0 * r.powf(0.2) / 50_000f64.powf(0.3) + 0.1 / (r + 0.05).powf(0.4);
        assert!((o.domain_loss.0 - l3(0.25)).abs() < 1e-9, "{o:?}");
        assert!((o.general_loss.0 - l3(0.75)).abs() < 1e-9, "{o:?}");
    }

    #[test]
    fn no_profile_is_an_input_error_and_another_setup_unsupported() {
        let mut b = CptLaw::default();
        let e = b.run(&run(0.5), &mut RunCtx::new(trainlab_core::Seed(1))).unwrap_err();
        assert!(
            e.is_user_error() && e.to_string().contains("calibrate --workload cpt_run"),
            "{e}"
        );
        let mut b = CptLaw { fitted: Some(params()) };
        let mut w = run(0.5);
        w.setup.vocab = 32;
        let e = b.run(&w, &mut RunCtx::new(trainlab_core::Seed(1))).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }

    #[test]
    fn a_malformed_profile_is_an_input_error() {
        let mut p = params();
        p.domain.params.pop();
        let mut b = CptLaw { fitted: Some(p) };
        let e = b.run(&run(0.5), &mut RunCtx::new(trainlab_core::Seed(1))).unwrap_err();
        assert!(e.to_string().contains("params.domain.params"), "{e}");
    }
}

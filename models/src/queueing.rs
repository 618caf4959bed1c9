//! Closed forms of the `queue` workload (M/M/c): Kleinrock, *Queueing Systems* vol. 1, 1975, §3.2 and §3.5.
//!
//! With offered load `a = λ/μ` and utilisation `ρ = a/c < 1`, the Erlang-C probability of waiting is
//! `C(c, a) = B / (1 - ρ (1 - B))` where `B` is Erlang-B from the stable recursion `B_0 = 1,
//! B_k = a B_{k-1} / (k + a B_{k-1})`; then `Wq = C / (cμ - λ)`, `W = Wq + 1/μ`, `Lq = λ Wq` (Little). For `c = 1`
//! this is M/M/1: `C = ρ`, `Wq = ρ / (μ - λ)`.
use trainlab_core::workloads::{Queue, QueueOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};

/// Erlang-C probability of waiting for `c` servers at offered load `a = λ/μ` (requires `a < c`).
pub fn erlang_c(c: u32, a: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / c as f64;
    b / (1.0 - rho * (1.0 - b))
}

/// Closed-form M/M/c answer (Kleinrock 1975, §3.5; M/M/1 at `c = 1`).
pub fn mmc_closed_form(q: &Queue) -> QueueOutcome {
    let (lambda, mu, c) = (q.arrival_rate, q.service_rate, q.servers);
    let a = lambda / mu;
    let pw = erlang_c(c, a);
    let wq = pw / (c as f64 * mu - lambda);
    QueueOutcome {
        mean_wait_s: wq,
        mean_wait_ci_s: None,
        mean_sojourn_s: wq + 1.0 / mu,
        utilisation: q.utilisation(),
        mean_queue_len: lambda * wq,
        prob_wait: pw,
        customers: 0,
        events: 0,
    }
}

/// The closed-form backend (`analytical`).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueAnalytical;

impl Backend<Queue> for QueueAnalytical {
    fn name(&self) -> &str {
        "erlang_c"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, workload: &Queue, _ctx: &mut RunCtx) -> Result<QueueOutcome, Error> {
        workload.validate()?;
        Ok(mmc_closed_form(workload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(servers: u32, arrival_rate: f64, service_rate: f64) -> Queue {
        Queue {
            servers,
            arrival_rate,
            service_rate,
            customers: 1000,
        }
    }

    #[test]
    fn closed_forms() {
        // M/M/1: Wq = rho / (mu - lambda) = 0.8 / 0.2 = 4, Lq = rho^2 / (1 - rho) = 3.2.
        let o = mmc_closed_form(&q(1, 0.8, 1.0));
        assert!((o.mean_wait_s - 4.0).abs() < 1e-12);
        assert!((o.mean_queue_len - 3.2).abs() < 1e-12);
        assert!((o.prob_wait - 0.8).abs() < 1e-12);
        assert!((o.mean_sojourn_s - 5.0).abs() < 1e-12);
        // M/M/2 at a = 1 (rho = 0.5): C = a^2/2 / (1 - rho) / (1 + a + a^2/2/(1-rho)) = 1/3; Wq = C / (2 - 1) = 1/3.
        let o = mmc_closed_form(&q(2, 1.0, 1.0));
        assert!((o.prob_wait - 1.0 / 3.0).abs() < 1e-12);
        assert!((o.mean_wait_s - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn backend_validates() {
        let mut ctx = RunCtx::new(trainlab_core::Seed(1));
        assert!(QueueAnalytical.run(&q(1, 2.0, 1.0), &mut ctx).is_err());
        assert_eq!(QueueAnalytical.run(&q(1, 0.5, 1.0), &mut ctx).unwrap().customers, 0);
    }
}

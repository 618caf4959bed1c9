//! The `queue` workload: an M/M/c queue, the event engine's validation workload.
//!
//! `servers` identical servers, Poisson arrivals (`arrival_rate`, per second), exponential service (`service_rate`
//! per server, per second) and one FIFO line of unbounded length. The closed form (Erlang C) lives in
//! `trainlab_models::queueing`, the discrete-event simulation in `trainlab_sim::queueing`.
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{Error, Metric, Outcome, Unit, Workload};

/// An M/M/c queue: Poisson arrivals, exponential service, `servers` servers, one FIFO line, infinite capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Number of identical servers `c` (>= 1).
    pub servers: u32,
    /// Arrival rate `λ`, customers per second.
    pub arrival_rate: f64,
    /// Service rate `μ` of one server, customers per second.
    pub service_rate: f64,
    /// Customers per simulated replication (ignored by the closed form).
    pub customers: u64,
}

impl Queue {
    /// Utilisation `ρ = λ / (c μ)`.
    pub fn utilisation(&self) -> f64 {
        self.arrival_rate / (self.servers as f64 * self.service_rate)
    }
}

impl Workload for Queue {
    type Outcome = QueueOutcome;
    const KIND: &'static str = "queue";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.servers", self.servers as u64, 1)?;
        check::positive("workload.arrival_rate", self.arrival_rate)?;
        check::positive("workload.service_rate", self.service_rate)?;
        check::at_least("workload.customers", self.customers, 100)?;
        let rho = self.utilisation();
        if rho >= 1.0 {
            return Err(Error::invalid(
                "workload.arrival_rate",
                self.arrival_rate,
                format!(
                    "utilisation rho = arrival_rate / (servers * service_rate) = {rho:.4} must be < 1, \
                     otherwise the queue grows without bound"
                ),
                format!(
                    "lower workload.arrival_rate below {} or add servers / raise workload.service_rate",
                    self.servers as f64 * self.service_rate
                ),
            ));
        }
        Ok(())
    }
}

/// Steady-state answer for a [`Queue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueOutcome {
    /// Mean time in the line before service starts, seconds (`Wq`).
    pub mean_wait_s: f64,
    /// 95% interval of `mean_wait_s` across replications (simulation only).
    pub mean_wait_ci_s: Option<(f64, f64)>,
    /// Mean time in the system, seconds (`W = Wq + 1/μ`).
    pub mean_sojourn_s: f64,
    /// Fraction of server capacity in use (`ρ`).
    pub utilisation: f64,
    /// Time-average number waiting in the line (`Lq`).
    pub mean_queue_len: f64,
    /// Probability that an arriving customer waits (Erlang C).
    pub prob_wait: f64,
    /// Customers counted (after warm-up, all replications); 0 for the closed form.
    pub customers: u64,
    /// Events the simulation delivered (all replications); 0 for the closed form.
    pub events: u64,
}

impl Outcome for QueueOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let wait = match self.mean_wait_ci_s {
            Some((lo, hi)) => Metric::with_ci("mean_wait", Unit::Seconds, self.mean_wait_s, lo, hi),
            None => Metric::new("mean_wait", Unit::Seconds, self.mean_wait_s),
        };
        vec![
            wait,
            Metric::new("mean_sojourn", Unit::Seconds, self.mean_sojourn_s),
            Metric::new("utilisation", Unit::Ratio, self.utilisation),
            Metric::new("mean_queue_len", Unit::Dimensionless, self.mean_queue_len),
            Metric::new("prob_wait", Unit::Ratio, self.prob_wait),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(servers: u32, arrival_rate: f64, service_rate: f64, customers: u64) -> Queue {
        Queue {
            servers,
            arrival_rate,
            service_rate,
            customers,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let e = q(1, 1.2, 1.0, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("workload.arrival_rate") && e.contains("< 1"), "{e}");
        let e = q(4, 1.0, f64::NAN, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("workload.service_rate"), "{e}");
        let e = q(0, 1.0, 1.0, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("workload.servers"), "{e}");
        let e = q(1, 0.5, 1.0, 10).validate().unwrap_err().to_string();
        assert!(e.contains("workload.customers"), "{e}");
        let e = q(1, f64::INFINITY, 1.0, 1000).validate().unwrap_err().to_string();
        assert!(e.contains("workload.arrival_rate"), "{e}");
        assert!(q(4, 3.9, 1.0, 1000).validate().is_ok());
        assert!((q(4, 3.0, 1.0, 1000).utilisation() - 0.75).abs() < 1e-15);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<Queue>(
            r#"{"servers": 1, "arrival_rate": 0.5, "service_rate": 1.0, "customers": 1000, "capacity": 3}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
    }
}

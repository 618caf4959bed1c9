//! M/M/c queues by discrete-event simulation: the engine's validation workload ([`Queue`], defined in core), checked
//! against its closed form (`trainlab_models::queueing`, Erlang C).
//!
//! [`QueueSim`] ([`Fidelity::Simulated`]) is a DES on [`crate::engine::Engine`] with two events (arrival,
//! departure). Replications run in parallel with rayon, each from `seed.derive("queue").index(r)` with separate
//! arrival and service streams, and are collected in input order, so the answer is identical at any thread count.
//! The first 5% of customers of each replication are a warm-up and are not counted. The mean wait carries a 95%
//! confidence interval across replications ([`Summary`]).
//!
//! Time inside the simulation is integer ticks of `1e-6` mean service times (so resolution never depends on the
//! rates' units) and is converted back to seconds for the outcome.
use crate::engine::{Engine, Streams, exp_sample};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use trainlab_core::error::check;
use trainlab_core::workloads::{Queue, QueueOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, SimTime, Summary, Workload};

/// Statistics of one simulated replication (times in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replication {
    /// Mean wait in the line of counted customers.
    pub mean_wait_s: f64,
    /// Mean time in system of counted customers.
    pub mean_sojourn_s: f64,
    /// Busy-server time / (servers x observed time), over the counted window.
    pub utilisation: f64,
    /// Time-average line length over the counted window.
    pub mean_queue_len: f64,
    /// Fraction of counted customers who waited.
    pub prob_wait: f64,
    /// Customers counted (after warm-up).
    pub customers: u64,
    /// Events delivered by the engine.
    pub events: u64,
}

#[derive(Debug, Clone, Copy)]
enum QEvent {
    Arrival,
    Departure,
}

/// Simulates one replication of `q` from `seed` (streams `"arrivals"` and `"services"`). The first
/// `customers / 20` customers to start service are a warm-up and are not counted. `q` must be valid.
pub fn simulate_replication(q: &Queue, seed: Seed) -> Replication {
    let streams = Streams::new(seed);
    let mut arr_rng = streams.rng("arrivals");
    let mut svc_rng = streams.rng("services");
    // One tick = 1e-6 mean service times.
    let tick_s = 1e-6 / q.service_rate;
    let lambda_t = q.arrival_rate * tick_s; // per tick
    let mu_t = q.service_rate * tick_s;
    let c = q.servers as u64;
    let n = q.customers;
    let warmup = n / 20;
    let ticks = |x: f64| SimTime((x.round()).min(u64::MAX as f64) as u64);

    let mut eng: Engine<QEvent> = Engine::with_capacity(q.servers as usize + 2);
    let mut line: VecDeque<u64> = VecDeque::with_capacity(64);
    let mut busy = 0u64;
    let mut arrived = 0u64;
    let mut started = 0u64; // customers that began service
    // Accumulators over the counted window [t0, end].
    let mut t0 = 0u64;
    let mut last = 0u64;
    let mut area_line = 0u128; // ∫ line length dt
    let mut area_busy = 0u128; // ∫ busy servers dt
    let mut sum_wait = 0u128;
    let mut waited = 0u64;
    let mut counted = 0u64;
    let mut sum_service = 0f64;

    eng.schedule_at(ticks(exp_sample(&mut arr_rng, lambda_t)), QEvent::Arrival);
    arrived += 1;
    while let Some((t, ev)) = eng.step() {
        let now = t.0;
        if started > warmup {
            let dt = (now - last) as u128;
            area_line += dt * line.len() as u128;
            area_busy += dt * busy as u128;
        }
        last = now;
        // Starts service of a customer that arrived at `at`, recording its wait.
        let mut begin = |eng: &mut Engine<QEvent>, at: u64, started: &mut u64| {
            let s = ticks(exp_sample(&mut svc_rng, mu_t));
            eng.schedule_in(s, QEvent::Departure);
            *started += 1;
            if *started == warmup + 1 {
                t0 = now;
            }
            if *started > warmup {
                let w = now - at;
                sum_wait += w as u128;
                waited += (w > 0) as u64;
                counted += 1;
                sum_service += s.0 as f64;
            }
        };
        match ev {
            QEvent::Arrival => {
                if arrived < n {
                    eng.schedule_in(ticks(exp_sample(&mut arr_rng, lambda_t)), QEvent::Arrival);
                    arrived += 1;
                }
                if busy < c {
                    busy += 1;
                    begin(&mut eng, now, &mut started);
                } else {
                    line.push_back(now);
                }
            }
            QEvent::Departure => {
                if let Some(at) = line.pop_front() {
                    begin(&mut eng, at, &mut started);
                } else {
                    busy -= 1;
                }
            }
        }
    }
    let window = (last - t0).max(1) as f64;
    let cnt = counted.max(1) as f64;
    let mean_wait_t = sum_wait as f64 / cnt;
    Replication {
        mean_wait_s: mean_wait_t * tick_s,
        mean_sojourn_s: (mean_wait_t + sum_service / cnt) * tick_s,
        utilisation: area_busy as f64 / (c as f64 * window),
        mean_queue_len: area_line as f64 / window,
        prob_wait: waited as f64 / cnt,
        customers: counted,
        events: eng.delivered(),
    }
}

/// The discrete-event backend (`des`): `replications` independent runs of `customers` customers each, in parallel.
#[derive(Debug, Clone, Copy)]
pub struct QueueSim {
    /// Independent replications (>= 2 for a confidence interval).
    pub replications: u32,
}

impl Default for QueueSim {
    fn default() -> Self {
        QueueSim { replications: 8 }
    }
}

impl QueueSim {
    /// A backend running `replications` replications.
    pub fn new(replications: u32) -> Self {
        QueueSim { replications }
    }
}

impl Backend<Queue> for QueueSim {
    fn name(&self) -> &str {
        "des"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, workload: &Queue, ctx: &mut RunCtx) -> Result<QueueOutcome, Error> {
        workload.validate()?;
        check::at_least("backend.replications", self.replications as u64, 1)?;
        let root = ctx.seed.derive("queue");
        let total = self.replications as u64;
        let done = AtomicU64::new(0);
        let ctx_ref = &*ctx;
        let reps: Vec<Option<Replication>> = (0..total)
            .into_par_iter()
            .map(|r| {
                if ctx_ref.cancelled() {
                    return None;
                }
                let rep = simulate_replication(workload, root.index(r));
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                ctx_ref.report(d, total);
                Some(rep)
            })
            .collect();
        let reps: Vec<Replication> = reps.into_iter().collect::<Option<_>>().ok_or(Error::Interrupted)?;
        let waits: Vec<f64> = reps.iter().map(|r| r.mean_wait_s).collect();
        let s = Summary::of(&waits);
        let mean = |f: fn(&Replication) -> f64| reps.iter().map(f).sum::<f64>() / reps.len() as f64;
        Ok(QueueOutcome {
            mean_wait_s: s.mean,
            mean_wait_ci_s: (s.n >= 2).then(|| s.ci95()),
            mean_sojourn_s: mean(|r| r.mean_sojourn_s),
            utilisation: mean(|r| r.utilisation),
            mean_queue_len: mean(|r| r.mean_queue_len),
            prob_wait: mean(|r| r.prob_wait),
            customers: reps.iter().map(|r| r.customers).sum(),
            events: reps.iter().map(|r| r.events).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::Outcome;
    use trainlab_models::queueing::QueueAnalytical;

    fn q(servers: u32, arrival_rate: f64, service_rate: f64, customers: u64) -> Queue {
        Queue {
            servers,
            arrival_rate,
            service_rate,
            customers,
        }
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b) / b
    }

    fn check_agreement(w: &Queue, reps: u32, tol: f64) {
        let mut ctx = RunCtx::new(Seed(7));
        let sim = QueueSim::new(reps).run(w, &mut ctx).expect("valid");
        let cf = QueueAnalytical.run(w, &mut ctx).expect("valid");
        let e = rel(sim.mean_wait_s, cf.mean_wait_s);
        eprintln!(
            "M/M/{}: sim Wq {:.5} vs closed form {:.5} ({:+.3}%), Lq {:+.3}%, rho {:+.3}%, P(wait) {:+.3}%",
            w.servers,
            sim.mean_wait_s,
            cf.mean_wait_s,
            100.0 * e,
            100.0 * rel(sim.mean_queue_len, cf.mean_queue_len),
            100.0 * rel(sim.utilisation, cf.utilisation),
            100.0 * rel(sim.prob_wait, cf.prob_wait)
        );
        assert!(
            e.abs() < tol,
            "mean wait sim {} vs closed form {} ({:+.3}%)",
            sim.mean_wait_s,
            cf.mean_wait_s,
            100.0 * e
        );
        let (lo, hi) = sim.mean_wait_ci_s.expect("ci");
        assert!(lo < sim.mean_wait_s && sim.mean_wait_s < hi);
        assert!(rel(sim.mean_queue_len, cf.mean_queue_len).abs() < 2.0 * tol);
        assert!(rel(sim.utilisation, cf.utilisation).abs() < 0.01);
        assert!(rel(sim.prob_wait, cf.prob_wait).abs() < 0.02);
        assert!(rel(sim.mean_sojourn_s, cf.mean_sojourn_s).abs() < tol);
    }

    #[test]
    fn mm1_matches_closed_form() {
        check_agreement(&q(1, 0.8, 1.0, 250_000), 16, 0.02);
    }

    #[test]
    fn mmc_matches_erlang_c() {
        // c = 4 at rho = 0.8, rates in "per millisecond" magnitudes to exercise the tick scaling.
        check_agreement(&q(4, 3200.0, 1000.0, 250_000), 16, 0.02);
    }

    /// The shipped scenarios parse into a valid [`Queue`] and the default simulator agrees with the closed form.
    #[test]
    fn shipped_scenarios_agree() {
        for name in ["mm1", "mmc"] {
            let path = format!("{}/../scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("scenario file");
            let doc: toml::Table = toml::from_str(&text).expect("toml");
            assert_eq!(doc["kind"].as_str(), Some(Queue::KIND));
            let w: Queue = doc["workload"].clone().try_into().expect("workload fields");
            w.validate().expect("valid");
            let seed = Seed(doc["seed"].as_integer().expect("seed") as u64);
            let sim = QueueSim::default().run(&w, &mut RunCtx::new(seed)).expect("valid");
            let cf = QueueAnalytical.run(&w, &mut RunCtx::new(seed)).expect("valid");
            let e = rel(sim.mean_wait_s, cf.mean_wait_s);
            eprintln!(
                "{name}: sim Wq {:.5} vs closed form {:.5} ({:+.3}%)",
                sim.mean_wait_s,
                cf.mean_wait_s,
                100.0 * e
            );
            assert!(e.abs() < 0.03, "{name}: {:+.3}%", 100.0 * e);
            assert_eq!(sim.metrics().len(), 5);
            assert!(sim.metrics()[0].ci.is_some() && cf.metrics()[0].ci.is_none());
        }
    }

    #[test]
    fn deterministic_per_seed_and_thread_count() {
        let w = q(2, 1.5, 1.0, 20_000);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| QueueSim::new(4).run(&w, &mut RunCtx::new(Seed(3))).expect("valid"))
        };
        assert_eq!(run(1), run(3));
        let other = QueueSim::new(4).run(&w, &mut RunCtx::new(Seed(4))).expect("valid");
        assert_ne!(run(1).mean_wait_s, other.mean_wait_s);
    }
}

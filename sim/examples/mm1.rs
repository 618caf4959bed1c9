//! M/M/1 throughput probe: simulates one replication at rho = 0.9 with N customers (first argument, default 1e6)
//! and prints `{"events", "seconds", "events_per_s", "customers_per_s", "mean_wait", "closed_form_wait"}` as JSON.
//! Used by `scripts/bench-mm1.sh` against the same model in SimPy (`scripts/bench_mm1.py`).
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_sim::queueing::{Queue, mmc_closed_form, simulate_replication};

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "1000000".to_string());
    let customers = match arg.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 100.0 => n as u64,
        _ => {
            eprintln!("usage: mm1 [CUSTOMERS >= 100] (got `{arg}`)");
            std::process::exit(2);
        }
    };
    let q = Queue {
        servers: 1,
        arrival_rate: 0.9,
        service_rate: 1.0,
        customers,
    };
    let t = Instant::now();
    let r = simulate_replication(&q, Seed(7));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"events\": {}, \"customers\": {}, \"seconds\": {:.6}, \"events_per_s\": {:.1}, \"customers_per_s\": {:.1}, \
         \"mean_wait\": {:.6}, \"closed_form_wait\": {:.6}}}",
        r.events,
        customers,
        secs,
        r.events as f64 / secs,
        customers as f64 / secs,
        r.mean_wait_s,
        mmc_closed_form(&q).mean_wait_s
    );
}

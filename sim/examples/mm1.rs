//! M/M/1 throughput probe: simulates one replication at rho = 0.9 with N customers (first argument, default 1e6)
//! and prints `{"events", "customers", "seconds", "cpu_seconds", "events_per_s", "events_per_cpu_s", "customers_per_s",
//! "mean_wait", "closed_form_wait"}` as JSON. `cpu_seconds` is this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which
//! stays meaningful on a loaded machine where wall time also counts time spent descheduled.
//! Used by `scripts/bench-mm1.sh` against the same model in SimPy (`scripts/bench_mm1.py`).
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_sim::queueing::{Queue, mmc_closed_form, simulate_replication};

/// CPU time consumed by the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

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
    let c0 = thread_cpu_s();
    let r = simulate_replication(&q, Seed(7));
    let cpu = thread_cpu_s() - c0;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"events\": {}, \"customers\": {}, \"seconds\": {:.6}, \"cpu_seconds\": {:.6}, \"events_per_s\": {:.1}, \
         \"events_per_cpu_s\": {:.1}, \"customers_per_s\": {:.1}, \"mean_wait\": {:.6}, \"closed_form_wait\": {:.6}}}",
        r.events,
        customers,
        secs,
        cpu,
        r.events as f64 / secs,
        r.events as f64 / cpu,
        customers as f64 / secs,
        r.mean_wait_s,
        mmc_closed_form(&q).mean_wait_s
    );
}

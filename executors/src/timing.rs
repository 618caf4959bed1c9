//! The timing harness every executor uses: warm-up runs, then repeated samples until both a minimum count and a
//! minimum total time are reached (capped by a maximum count), summarised by [`trainlab_core::Summary`] (median,
//! spread). Very short operations are timed in batches of `inner` calls per sample so that clock resolution does not
//! dominate; a sample is always *seconds per call*.
//!
//! Rules the harness enforces or helps with:
//! - **Warm-up first** (page faults, thread-pool wake-up, lazy library init and GPU clocks are not measured).
//! - **Never time on all-zero data** (some hardware and libraries short-cut zeros): fill inputs with
//!   [`random_f32`] / [`fill_random_f32`] from a [`Seed`], and check with [`ensure_not_all_zero`].
//! - **Keep results alive** with [`black_box`] so the optimiser cannot delete the timed work.
//!
//! Other executors (`lm`, `moe`, `faultrun`) reuse [`time_fn`] for wall-clock timing and [`time_samples`] when a
//! sample comes from elsewhere (e.g. CUDA events).
use rand::RngExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use trainlab_core::{Error, Seed, Summary};

pub use std::hint::black_box;

/// How long and how often to time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingOpts {
    /// Untimed calls before sampling.
    pub warmup: usize,
    /// Minimum number of samples.
    pub min_samples: usize,
    /// Maximum number of samples (stops even if `min_time_s` is not reached).
    pub max_samples: usize,
    /// Minimum total timed seconds (sampling continues until both this and `min_samples` are met).
    pub min_time_s: f64,
    /// Target seconds per sample: calls shorter than this are batched (`inner` calls per sample).
    pub target_sample_s: f64,
}

impl Default for TimingOpts {
    /// Measurement-grade defaults: 2 warm-ups, 5..=50 samples, at least 0.2 s timed, samples of at least 1 ms.
    fn default() -> Self {
        TimingOpts {
            warmup: 2,
            min_samples: 5,
            max_samples: 50,
            min_time_s: 0.2,
            target_sample_s: 1e-3,
        }
    }
}

impl TimingOpts {
    /// Fast settings for tests and smoke runs: 1 warm-up, 3 samples, no minimum time.
    pub fn quick() -> Self {
        TimingOpts {
            warmup: 1,
            min_samples: 3,
            max_samples: 3,
            min_time_s: 0.0,
            target_sample_s: 2e-4,
        }
    }

    /// Checks the options, naming the offending field (`prefix.field`).
    pub fn validate(&self, prefix: &str) -> Result<(), Error> {
        if self.min_samples == 0 {
            return Err(Error::invalid(
                format!("{prefix}.min_samples"),
                self.min_samples,
                "must be at least 1",
                "set min_samples to 1 or more",
            ));
        }
        if self.max_samples < self.min_samples {
            return Err(Error::invalid(
                format!("{prefix}.max_samples"),
                self.max_samples,
                format!("must be >= min_samples ({})", self.min_samples),
                "raise max_samples",
            ));
        }
        trainlab_core::error::check::non_negative(&format!("{prefix}.min_time_s"), self.min_time_s)?;
        trainlab_core::error::check::non_negative(&format!("{prefix}.target_sample_s"), self.target_sample_s)?;
        Ok(())
    }
}

/// Measured samples (seconds per call) and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Seconds per call, one entry per sample, in the order taken.
    pub samples_s: Vec<f64>,
    /// Summary of `samples_s` (median, std, min, max, 95% CI of the mean).
    pub summary: Summary,
}

impl Timing {
    /// Builds a timing from samples (seconds per call).
    pub fn from_samples(samples_s: Vec<f64>) -> Timing {
        let summary = Summary::of(&samples_s);
        Timing { samples_s, summary }
    }
    /// Median seconds per call: the number executors report.
    pub fn median_s(&self) -> f64 {
        self.summary.median
    }
    /// Relative spread `std / median`, a noise indicator.
    pub fn rel_spread(&self) -> f64 {
        self.summary.rel_spread()
    }
    /// JSON for result files: `{n, median_s, mean_s, std_s, min_s, max_s, rel_spread, samples_s}`.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.summary;
        serde_json::json!({
            "n": s.n,
            "median_s": s.median,
            "mean_s": s.mean,
            "std_s": s.std,
            "min_s": s.min,
            "max_s": s.max,
            "rel_spread": self.rel_spread(),
            "samples_s": self.samples_s,
        })
    }
}

/// The process's interrupt flag, if one was registered with [`stop_when`].
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes every timing loop of this process ([`time_fn`], [`time_samples`]) stop with [`Error::Interrupted`] before
/// its next sample once `flag` is set. The command line registers its Ctrl-C flag here, so a measurement stops
/// within one sample (one call of a long operation) instead of finishing its repeats. Only the first registration
/// counts.
pub fn stop_when(flag: Arc<AtomicBool>) {
    let _ = STOP.set(flag);
}

fn stopped() -> Result<(), Error> {
    match STOP.get() {
        Some(f) if f.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// Times `f` by wall clock. `f` is called `opts.warmup` times untimed, once more to size the batch (`inner` calls per
/// sample so a sample lasts at least `opts.target_sample_s`, at most 1,000,000), then sampled until
/// `opts.min_samples` and `opts.min_time_s` are both reached or `opts.max_samples` samples are taken.
/// Each sample is (elapsed / inner) seconds. An error from `f` stops the run and is returned.
pub fn time_fn<F>(opts: &TimingOpts, f: F) -> Result<Timing, Error>
where
    F: FnMut() -> Result<(), Error>,
{
    let origin = Instant::now();
    time_fn_by(opts, f, || origin.elapsed().as_secs_f64())
}

/// [`time_fn`] on the clock `now` (seconds): warm-up, batching of short calls to `target_sample_s`, sampling.
fn time_fn_by<F, C>(opts: &TimingOpts, mut f: F, now: C) -> Result<Timing, Error>
where
    F: FnMut() -> Result<(), Error>,
    C: Fn() -> f64,
{
    opts.validate("timing")?;
    for _ in 0..opts.warmup {
        stopped()?;
        f()?;
    }
    let t0 = now();
    f()?;
    let one = (now() - t0).max(1e-9);
    let inner = if one >= opts.target_sample_s {
        1
    } else {
        ((opts.target_sample_s / one).ceil() as usize).clamp(1, 1_000_000)
    };
    time_samples(opts, || {
        let t = now();
        for _ in 0..inner {
            f()?;
        }
        Ok((now() - t) / inner as f64)
    })
}

/// Seconds the calling thread has spent on a CPU so far (`CLOCK_THREAD_CPUTIME_ID`: its run time, which excludes
/// the time it waited in the run queue while other processes ran), or `None` where the clock is unavailable.
pub fn thread_on_cpu_s() -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Like [`time_fn`], but a sample is the calling thread's **on-CPU** seconds per call ([`thread_on_cpu_s`]) instead
/// of wall-clock seconds, for single-threaded work: on a shared machine whose other processes take turns on the
/// cores, the time this thread waited in the run queue is not the work's cost. It equals the wall time on an idle
/// machine; contention for caches and memory bandwidth still shows (it is real work). Falls back to wall time
/// where the kernel does not expose the thread's run time. `f` must not hand its work to other threads.
pub fn time_fn_on_cpu<F>(opts: &TimingOpts, f: F) -> Result<Timing, Error>
where
    F: FnMut() -> Result<(), Error>,
{
    if thread_on_cpu_s().is_none() {
        return time_fn(opts, f);
    }
    time_fn_by(opts, f, || thread_on_cpu_s().unwrap_or(0.0))
}

/// Collects samples from `sample` (which returns seconds per call, measured however it likes, e.g. with CUDA
/// events) until `opts.min_samples` and `opts.min_time_s` are both reached or `opts.max_samples` are taken.
/// No warm-up is done here: the caller warms up. Non-finite or negative samples are a backend error.
pub fn time_samples<F>(opts: &TimingOpts, mut sample: F) -> Result<Timing, Error>
where
    F: FnMut() -> Result<f64, Error>,
{
    opts.validate("timing")?;
    let mut samples = Vec::with_capacity(opts.min_samples);
    let start = Instant::now();
    while samples.len() < opts.max_samples
        && (samples.len() < opts.min_samples || start.elapsed().as_secs_f64() < opts.min_time_s)
    {
        stopped()?;
        let s = sample()?;
        if !s.is_finite() || s < 0.0 {
            return Err(Error::Backend(format!("timer returned an invalid sample: {s}")));
        }
        samples.push(s);
    }
    Ok(Timing::from_samples(samples))
}

/// `n` values uniform in `[-1, 1)` from `seed` (same seed, same values).
pub fn random_f32(seed: Seed, n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    fill_random_f32(seed, &mut v);
    v
}

/// `n` values uniform in `[-1, 1)` from `seed`.
pub fn random_f64(seed: Seed, n: usize) -> Vec<f64> {
    let mut rng = seed.rng();
    (0..n).map(|_| rng.random_range(-1.0f64..1.0)).collect()
}

/// Fills `x` with values uniform in `[-1, 1)` from `seed`.
pub fn fill_random_f32(seed: Seed, x: &mut [f32]) {
    let mut rng = seed.rng();
    for v in x.iter_mut() {
        *v = rng.random_range(-1.0f32..1.0);
    }
}

/// Refuses to time on data that is entirely zero (`what` names the buffer in the error).
pub fn ensure_not_all_zero<T: Copy + PartialEq + Default>(what: &str, x: &[T]) -> Result<(), Error> {
    if !x.is_empty() && x.iter().all(|v| *v == T::default()) {
        return Err(Error::Backend(format!(
            "refusing to time on all-zero input `{what}`: fill it with seeded random values"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_are_timed_in_order_of_magnitude() {
        let opts = TimingOpts {
            warmup: 0,
            min_samples: 3,
            max_samples: 3,
            min_time_s: 0.0,
            target_sample_s: 0.0,
        };
        let t = time_fn(&opts, || {
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(())
        })
        .expect("timing");
        assert_eq!(t.samples_s.len(), 3);
        assert!(t.median_s() >= 0.002 && t.median_s() < 0.05, "{}", t.median_s());
    }

    #[test]
    fn respects_min_time_and_max_samples() {
        let opts = TimingOpts {
            warmup: 0,
            min_samples: 2,
            max_samples: 1000,
            min_time_s: 0.01,
            target_sample_s: 0.0,
        };
        let t = time_samples(&opts, || {
            std::thread::sleep(std::time::Duration::from_micros(500));
            Ok(1.0)
        })
        .expect("timing");
        assert!(t.samples_s.len() >= 2 && t.samples_s.len() < 1000);
        let capped = TimingOpts {
            max_samples: 4,
            min_time_s: 10.0,
            ..opts
        };
        assert_eq!(time_samples(&capped, || Ok(1.0)).expect("timing").samples_s.len(), 4);
    }

    #[test]
    fn short_calls_are_batched() {
        let mut calls = 0u64;
        let opts = TimingOpts {
            warmup: 1,
            min_samples: 2,
            max_samples: 2,
            min_time_s: 0.0,
            target_sample_s: 1e-3,
        };
        let t = time_fn(&opts, || {
            calls += 1;
            black_box(calls);
            Ok(())
        })
        .expect("timing");
        assert!(calls > 10, "tiny calls should be batched, got {calls} calls");
        assert!(t.median_s() < 1e-4);
    }

    #[test]
    fn errors_and_bad_options_are_reported() {
        let bad = TimingOpts {
            min_samples: 0,
            ..TimingOpts::quick()
        };
        assert!(matches!(time_fn(&bad, || Ok(())), Err(Error::Invalid { .. })));
        let r = time_fn(&TimingOpts::quick(), || Err(Error::Backend("boom".into())));
        assert!(matches!(r, Err(Error::Backend(_))));
        assert!(time_samples(&TimingOpts::quick(), || Ok(f64::NAN)).is_err());
    }

    #[test]
    fn json_has_the_summary() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0]);
        let j = t.to_json();
        assert_eq!(j["median_s"], 2.0);
        assert_eq!(j["n"], 3);
        assert_eq!(j["samples_s"][0], 3.0);
    }

    #[test]
    fn random_fill_is_seeded_and_not_zero() {
        let a = random_f32(Seed(3), 1000);
        assert_eq!(a, random_f32(Seed(3), 1000));
        assert_ne!(a, random_f32(Seed(4), 1000));
        assert!(a.iter().all(|x| (-1.0..1.0).contains(x)));
        ensure_not_all_zero("a", &a).expect("random data is not zero");
        assert!(ensure_not_all_zero("z", &[0.0f32; 8]).is_err());
        let mean = a.iter().map(|x| *x as f64).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert_eq!(random_f64(Seed(1), 5), random_f64(Seed(1), 5));
    }

    #[test]
    fn on_cpu_time_excludes_sleeping_and_counts_work() {
        let opts = TimingOpts {
            warmup: 0,
            min_samples: 3,
            max_samples: 3,
            min_time_s: 0.0,
            target_sample_s: 0.0,
        };
        if thread_on_cpu_s().is_none() {
            return; // not Linux: time_fn_on_cpu is time_fn
        }
        let slept = time_fn_on_cpu(&opts, || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        })
        .expect("timing");
        assert!(
            slept.median_s() < 0.01,
            "a sleep is not on-CPU time: {}",
            slept.median_s()
        );
        let mut x = 1.0f64;
        let busy = time_fn_on_cpu(&opts, || {
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < 0.02 {
                x = black_box(x * 1.000_000_1);
            }
            Ok(())
        })
        .expect("timing");
        // A busy loop of 20 ms wall: on-CPU time is at most that, and more than nothing even on a loaded machine.
        assert!(
            busy.median_s() > 1e-4 && busy.median_s() <= 0.021,
            "{}",
            busy.median_s()
        );
    }
}

//! Real runs on this machine's CPU: GEMM (the `gemm` crate, rayon-parallel), STREAM copy/triad memory bandwidth and
//! thread-pool dispatch latency, each timed with [`crate::timing`] on seeded random data.
//!
//! Reusable pieces for other executors:
//! - [`gemm`]: the crate's one CPU GEMM wrapper, `C [+]= A B` on strided views ([`MatRef`]) in f32 or f64, used by
//!   the LM trainer and the MoE layer as well; [`sgemm`] / [`dgemm`] / [`sgemm_batched`] are its contiguous
//!   row-major forms (A is `m x k`, B is `k x n`, C is `m x n`: element `(i, j)` of A is `a[i * k + j]`), C
//!   overwritten.
//! - [`stream_copy`] / [`stream_triad`]: the STREAM kernels (McCalpin 1995) over `f64` arrays, rayon-parallel.
//! - [`gemm_sweep`] + [`default_calibration_sizes`]: the calibration sweep `trainlab calibrate --backend cpu` fits a
//!   [`trainlab_core::DeviceProfile`] to.
//!
//! Backends (all [`Fidelity::Measured`], name `cpu`): [`CpuGemm`] (fp32 only: the CPU has no fp16/bf16 GEMM path
//! here, so other dtypes return [`Error::Unsupported`] rather than silently timing an fp32 product), [`CpuMem`] and
//! [`CpuDispatch`].
use crate::timing::{self, Timing, TimingOpts, black_box};
use rayon::prelude::*;
use std::sync::mpsc;
use std::time::Instant;
use trainlab_core::workloads::{Gemm, GemmOutcome, LaunchLatency, LaunchOutcome, MemBandwidth, MemKernel, MemOutcome};
use trainlab_core::{Backend, Dtype, Error, Fidelity, RunCtx, Seed, Workload};

/// Largest total operand size (A + B + C, all batches) the CPU GEMM executor allocates, bytes.
pub const MAX_GEMM_BYTES: u64 = 4 << 30;

/// Options shared by the CPU backends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuOpts {
    /// How long and how often to time.
    pub timing: TimingOpts,
    /// Worker threads; 0 means rayon's global pool (all cores, or `RAYON_NUM_THREADS`). For GEMM this is the `gemm`
    /// crate's degree of parallelism on the global pool (1 = serial); STREAM and dispatch build a dedicated pool of
    /// this many workers.
    pub threads: usize,
}

impl Default for CpuOpts {
    /// Measurement-grade timing on the global pool.
    fn default() -> Self {
        CpuOpts {
            timing: TimingOpts::default(),
            threads: 0,
        }
    }
}

impl CpuOpts {
    /// Fast settings for tests ([`TimingOpts::quick`]).
    pub fn quick() -> Self {
        CpuOpts {
            timing: TimingOpts::quick(),
            threads: 0,
        }
    }
    /// Threads actually used (resolves 0 to the global pool's size).
    pub fn effective_threads(&self) -> usize {
        if self.threads == 0 {
            rayon::current_num_threads()
        } else {
            self.threads
        }
    }
}

/// The `gemm` crate's parallelism for `threads` (0 = the rayon pool's size; 1 = serial).
pub(crate) fn parallelism(threads: usize) -> gemm::Parallelism {
    let t = if threads == 0 {
        rayon::current_num_threads()
    } else {
        threads
    };
    if t <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(t)
    }
}

fn check_len(field: &str, got: usize, rows: usize, cols: usize) -> Result<(), Error> {
    let want = rows.checked_mul(cols).ok_or_else(|| {
        Error::invalid(
            field,
            format!("{rows}x{cols}"),
            "dimensions overflow",
            "use smaller sizes",
        )
    })?;
    if got != want {
        return Err(Error::invalid(
            field,
            got,
            format!("slice length must be {rows} x {cols} = {want}"),
            "pass a contiguous row-major buffer of the stated shape",
        ));
    }
    Ok(())
}

/// Element types of the CPU GEMM ([`gemm`]): `f32` and `f64`.
pub trait GemmScalar: Copy + Send + Sync + 'static {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
}

impl GemmScalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl GemmScalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A read-only strided view of a matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]` (strides in
/// elements, non-negative).
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Distance between consecutive rows, elements.
    pub row_stride: isize,
    /// Distance between consecutive columns, elements.
    pub col_stride: isize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major matrix with `cols` columns: element `(i, j)` is `data[i * cols + j]`.
    pub fn row_major(data: &'a [T], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns: element `(i, j)` is `data[j * cols + i]`.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: 1,
            col_stride: cols as isize,
        }
    }
    /// Checks that a `rows x cols` matrix read through this view stays inside `data`; `field` names it in errors.
    fn check(&self, field: &str, rows: usize, cols: usize) -> Result<(), Error> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let bad = |reason: String| {
            Err(Error::invalid(
                field,
                format!("{rows}x{cols} with strides ({}, {})", self.row_stride, self.col_stride),
                reason,
                "pass a buffer that holds the whole matrix",
            ))
        };
        if self.row_stride < 0 || self.col_stride < 0 {
            return bad("strides must be non-negative".into());
        }
        let last = ((rows - 1) as u128) * self.row_stride as u128 + ((cols - 1) as u128) * self.col_stride as u128;
        if last >= self.data.len() as u128 {
            return bad(format!("reaches element {last} of a slice of {}", self.data.len()));
        }
        Ok(())
    }
}

/// The one CPU GEMM of this crate (the `gemm` crate's packed SIMD kernels): `C = A B`, or `C += A B` with
/// `accumulate`, where `A` is `m x k` and `B` is `k x n` read through strided views (so transposed operands need no
/// copy) and `C` is a contiguous row-major `m x n` slice (`c[i * n + j]`). `threads`: 0 = rayon's global pool size,
/// 1 = serial, `t` = `t`-way rayon parallelism (the `gemm` crate splits over output blocks, never over `k`, so
/// results do not depend on `threads`). A view reaching outside its slice or a wrong `c` length is
/// [`Error::Invalid`] naming `a`, `b` or `c`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: GemmScalar>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: &mut [T],
    accumulate: bool,
    threads: usize,
) -> Result<(), Error> {
    check_len("c", c.len(), m, n)?;
    a.check("a", m, k)?;
    b.check("b", k, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|x| *x = T::ZERO);
        }
        return Ok(());
    }
    // SAFETY: `check` keeps every (row, col) offset the views' strides form inside their slices, and `c` holds
    // exactly m x n elements addressed row-major (stride n, 1); `c` is uniquely borrowed and cannot alias `a` or
    // `b` (Rust borrow rules). The `gemm` crate computes dst = alpha * dst + beta * lhs * rhs and reads dst only
    // when `read_dst` is set.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
    Ok(())
}

/// Single-precision `C = A * B` on contiguous row-major slices: `a` is `m x k` (`a[i * k + p]`), `b` is `k x n`
/// (`b[p * n + j]`), `c` is `m x n` and is overwritten. Wrong slice lengths give [`Error::Invalid`]; `threads` as in
/// [`gemm`].
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) -> Result<(), Error> {
    check_len("a", a.len(), m, k)?;
    check_len("b", b.len(), k, n)?;
    gemm(
        m,
        n,
        k,
        MatRef::row_major(a, k),
        MatRef::row_major(b, n),
        c,
        false,
        threads,
    )
}

/// Double-precision [`sgemm`].
pub fn dgemm(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64], threads: usize) -> Result<(), Error> {
    check_len("a", a.len(), m, k)?;
    check_len("b", b.len(), k, n)?;
    gemm(
        m,
        n,
        k,
        MatRef::row_major(a, k),
        MatRef::row_major(b, n),
        c,
        false,
        threads,
    )
}

/// `batch` independent fp32 GEMMs over contiguous stacks: `a` holds `batch` row-major `m x k` matrices back to back,
/// `b` holds `batch` `k x n`, `c` holds `batch` `m x n`. Each product uses the `threads`-way parallel [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    threads: usize,
) -> Result<(), Error> {
    let (mk, kn, mn) = (m * k, k * n, m * n);
    check_len("a", a.len(), batch, mk)?;
    check_len("b", b.len(), batch, kn)?;
    check_len("c", c.len(), batch, mn)?;
    for i in 0..batch {
        sgemm(
            m,
            n,
            k,
            &a[i * mk..(i + 1) * mk],
            &b[i * kn..(i + 1) * kn],
            &mut c[i * mn..(i + 1) * mn],
            threads,
        )?;
    }
    Ok(())
}

/// Reference triple loop in f64 (for tests): returns `C = A * B` for row-major f32 inputs.
pub fn gemm_reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p] as f64;
            for j in 0..n {
                c[i * n + j] += aip * b[p * n + j] as f64;
            }
        }
    }
    c
}

fn chunk_len(len: usize) -> usize {
    (len / (rayon::current_num_threads() * 4)).max(1 << 14)
}

/// STREAM copy `dst[i] = src[i]`, rayon-parallel. Moves `2 * 8 * len` bytes (one read, one write per element).
pub fn stream_copy(src: &[f64], dst: &mut [f64]) -> Result<(), Error> {
    if src.len() != dst.len() {
        return Err(Error::invalid(
            "dst",
            dst.len(),
            "must have the length of src",
            "use equal lengths",
        ));
    }
    let ch = chunk_len(src.len());
    dst.par_chunks_mut(ch)
        .zip(src.par_chunks(ch))
        .for_each(|(d, s)| d.copy_from_slice(s));
    Ok(())
}

/// STREAM triad `a[i] = b[i] + s * c[i]`, rayon-parallel. Moves `3 * 8 * len` bytes (two reads, one write).
pub fn stream_triad(a: &mut [f64], b: &[f64], c: &[f64], s: f64) -> Result<(), Error> {
    if a.len() != b.len() || a.len() != c.len() {
        return Err(Error::invalid(
            "a/b/c",
            a.len(),
            "arrays must have equal lengths",
            "use equal lengths",
        ));
    }
    let ch = chunk_len(a.len());
    a.par_chunks_mut(ch)
        .zip(b.par_chunks(ch).zip(c.par_chunks(ch)))
        .for_each(|(x, (y, z))| {
            for ((xi, yi), zi) in x.iter_mut().zip(y).zip(z) {
                *xi = *yi + s * *zi;
            }
        });
    Ok(())
}

/// Runs `f` on a pool of `threads` workers (0 = the global pool, no new threads).
fn with_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
    if threads == 0 {
        return Ok(f());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Backend(format!("cannot build a {threads}-thread pool: {e}")))?;
    Ok(pool.install(f))
}

/// The data seed of one GEMM size: derived from the run seed and the size's label, so a size gets the same inputs
/// in a backend run and in a sweep.
pub fn gemm_seed(seed: Seed, g: &Gemm) -> Seed {
    seed.derive("gemm").derive(&g.label())
}

fn check_cpu_gemm(g: &Gemm) -> Result<(), Error> {
    g.validate()?;
    if g.dtype != Dtype::Fp32 {
        return Err(Error::Unsupported(format!(
            "the cpu backend times fp32 GEMMs only, not {} (no native {} GEMM on this CPU path)",
            g.dtype.as_str(),
            g.dtype.as_str()
        )));
    }
    let bytes = g.bytes();
    if bytes > MAX_GEMM_BYTES as f64 {
        return Err(Error::invalid(
            "workload.m/n/k",
            g.label(),
            format!(
                "operands need {:.2} GiB; the cpu executor allocates at most 4 GiB",
                bytes / (1u64 << 30) as f64
            ),
            "use smaller dimensions or a smaller batch",
        ));
    }
    Ok(())
}

/// Times one fp32 GEMM workload on seeded random inputs (seconds per batched product).
pub fn time_gemm(g: &Gemm, opts: &CpuOpts, seed: Seed) -> Result<Timing, Error> {
    check_cpu_gemm(g)?;
    let (b, m, n, k) = (g.batch as usize, g.m as usize, g.n as usize, g.k as usize);
    let s = gemm_seed(seed, g);
    let a = timing::random_f32(s.derive("a"), b * m * k);
    let bm = timing::random_f32(s.derive("b"), b * k * n);
    timing::ensure_not_all_zero("a", &a)?;
    timing::ensure_not_all_zero("b", &bm)?;
    let mut c = vec![0.0f32; b * m * n];
    let threads = opts.effective_threads();
    let t = timing::time_fn(&opts.timing, || {
        sgemm_batched(b, m, n, k, &a, &bm, &mut c, threads)?;
        black_box(&mut c);
        Ok(())
    })?;
    black_box(&c);
    Ok(t)
}

/// The calibration sweep: times every size (fp32) in order, reporting progress through `ctx` and stopping with
/// [`Error::Interrupted`] if `ctx` is cancelled. Input data is seeded per size by [`gemm_seed`]`(ctx.seed, g)`.
pub fn gemm_sweep(sizes: &[Gemm], opts: &CpuOpts, ctx: &RunCtx) -> Result<Vec<(Gemm, Timing)>, Error> {
    for (i, g) in sizes.iter().enumerate() {
        check_cpu_gemm(g).map_err(|e| e.map_field(|f| format!("sizes[{i}].{}", f.trim_start_matches("workload."))))?;
    }
    let mut out = Vec::with_capacity(sizes.len());
    for (i, g) in sizes.iter().enumerate() {
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let t = time_gemm(g, opts, ctx.seed)?;
        out.push((g.clone(), t));
        ctx.report(i as u64 + 1, sizes.len() as u64);
    }
    Ok(out)
}

fn gemm3(m: u64, n: u64, k: u64) -> Gemm {
    Gemm {
        m,
        n,
        k,
        batch: 1,
        dtype: Dtype::Fp32,
        device: Default::default(),
    }
}

/// Sizes for `trainlab calibrate --backend cpu`: `(fit, held_out)`, fp32. The fit set has squares 64..2048 and
/// rectangles (skinny, wide, deep-k) so both the efficiency curve and the asymptotic rate are pinned; the held-out
/// set interleaves squares between the fit sizes plus rectangles of other aspect ratios. About 10-20 s on 2 cores
/// with [`TimingOpts::default`].
pub fn default_calibration_sizes() -> (Vec<Gemm>, Vec<Gemm>) {
    let mut fit: Vec<Gemm> = [64, 128, 256, 512, 1024, 2048].into_iter().map(Gemm::square).collect();
    fit.extend([
        gemm3(1024, 256, 512),
        gemm3(256, 1024, 1024),
        gemm3(512, 512, 2048),
        gemm3(2048, 64, 256),
    ]);
    let mut held: Vec<Gemm> = [96, 192, 384, 768, 1536].into_iter().map(Gemm::square).collect();
    held.extend([gemm3(768, 256, 1024), gemm3(128, 2048, 512), gemm3(1536, 512, 256)]);
    (fit, held)
}

/// Median seconds of one empty task round trip to the rayon pool: the caller hands a task that only signals back,
/// and waits for the signal. `launches` round trips are timed one by one after `warmup` untimed ones; with
/// `idle_gap` set, the caller sleeps that long before each round trip so workers have gone to sleep (a cold wake-up).
/// `threads` = 0 uses the global pool.
pub fn dispatch_latency(
    launches: usize,
    warmup: usize,
    threads: usize,
    idle_gap: Option<std::time::Duration>,
) -> Result<Timing, Error> {
    if launches == 0 {
        return Err(Error::invalid(
            "launches",
            0,
            "must be at least 1",
            "time at least one launch",
        ));
    }
    let pool = if threads == 0 {
        None
    } else {
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::Backend(format!("cannot build a {threads}-thread pool: {e}")))?,
        )
    };
    let (tx, rx) = mpsc::sync_channel::<u64>(1);
    let round_trip = |i: u64| -> Result<f64, Error> {
        if let Some(gap) = idle_gap {
            std::thread::sleep(gap);
        }
        let tx = tx.clone();
        let t = Instant::now();
        let task = move || {
            let _ = tx.send(black_box(i));
        };
        match &pool {
            Some(p) => p.spawn(task),
            None => rayon::spawn(task),
        }
        let got = rx
            .recv()
            .map_err(|_| Error::Backend("dispatch task never signalled back".into()))?;
        let dt = t.elapsed().as_secs_f64();
        black_box(got);
        Ok(dt)
    };
    for i in 0..warmup {
        round_trip(i as u64)?;
    }
    let mut samples = Vec::with_capacity(launches);
    for i in 0..launches {
        samples.push(round_trip(i as u64)?);
    }
    Ok(Timing::from_samples(samples))
}

/// Times one STREAM kernel pass over arrays of `w.bytes` bytes each (`w.bytes / 8` f64 elements, seeded random).
pub fn time_mem(w: &MemBandwidth, opts: &CpuOpts, seed: Seed) -> Result<Timing, Error> {
    w.validate()?;
    if w.bytes > 2 << 30 {
        return Err(Error::invalid(
            "workload.bytes",
            w.bytes,
            "the cpu executor allocates at most 2 GiB per array",
            "use a smaller buffer",
        ));
    }
    let n = (w.bytes / 8) as usize;
    let s = seed.derive("stream");
    let b = timing::random_f64(s.derive("b"), n);
    timing::ensure_not_all_zero("b", &b)?;
    let threads = opts.threads;
    let topts = opts.timing;
    with_pool(threads, move || match w.kernel {
        MemKernel::Copy => {
            let mut a = vec![0.0f64; n];
            timing::time_fn(&topts, || {
                stream_copy(&b, &mut a)?;
                black_box(&mut a);
                Ok(())
            })
        }
        MemKernel::Triad => {
            let c = timing::random_f64(s.derive("c"), n);
            let mut a = vec![0.0f64; n];
            timing::time_fn(&topts, || {
                stream_triad(&mut a, &b, &c, 3.0)?;
                black_box(&mut a);
                Ok(())
            })
        }
    })?
}

/// CPU GEMM executor (fp32, `gemm` crate).
#[derive(Debug, Clone, Default)]
pub struct CpuGemm {
    /// Timing and threading options.
    pub opts: CpuOpts,
}

impl CpuGemm {
    /// With these options.
    pub fn new(opts: CpuOpts) -> Self {
        CpuGemm { opts }
    }
}

impl Backend<Gemm> for CpuGemm {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &Gemm, ctx: &mut RunCtx) -> Result<GemmOutcome, Error> {
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let t = time_gemm(w, &self.opts, ctx.seed)?;
        Ok(GemmOutcome::from_time(w, t.median_s(), t.rel_spread()))
    }
}

/// CPU STREAM executor (copy / triad over f64 arrays).
#[derive(Debug, Clone, Default)]
pub struct CpuMem {
    /// Timing and threading options.
    pub opts: CpuOpts,
}

impl CpuMem {
    /// With these options.
    pub fn new(opts: CpuOpts) -> Self {
        CpuMem { opts }
    }
}

impl Backend<MemBandwidth> for CpuMem {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &MemBandwidth, ctx: &mut RunCtx) -> Result<MemOutcome, Error> {
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let t = time_mem(w, &self.opts, ctx.seed)?;
        let time_s = t.median_s();
        Ok(MemOutcome {
            time_s,
            bytes_per_s: w.bytes_moved() / time_s,
        })
    }
}

/// CPU dispatch-latency executor: empty-task round trips to the rayon pool (the CPU analogue of a kernel launch).
#[derive(Debug, Clone, Default)]
pub struct CpuDispatch {
    /// Threading options (`timing.warmup` untimed round trips; the workload's `launches` are the samples).
    pub opts: CpuOpts,
}

impl CpuDispatch {
    /// With these options.
    pub fn new(opts: CpuOpts) -> Self {
        CpuDispatch { opts }
    }
}

impl Backend<LaunchLatency> for CpuDispatch {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &LaunchLatency, ctx: &mut RunCtx) -> Result<LaunchOutcome, Error> {
        w.validate()?;
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let launches = usize::try_from(w.launches).unwrap_or(usize::MAX).min(10_000_000);
        let t = dispatch_latency(launches, self.opts.timing.warmup.max(10), self.opts.threads, None)?;
        Ok(LaunchOutcome {
            per_launch_s: t.median_s(),
        })
    }
}

/// A one-line description of this CPU for provenance: model name from `/proc/cpuinfo` (where readable), logical
/// cores, and the rayon pool size, e.g. `AMD EPYC, 2 logical cores, rayon pool 2`.
pub fn cpu_device_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!(
        "{model}, {cores} logical cores, rayon pool {}",
        rayon::current_num_threads()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Higham's bound for a length-`k` dot product in precision `u`: `|fl(x.y) - x.y| <= gamma_k sum |x_i y_i|`,
    /// `gamma_k = k u / (1 - k u)`.
    fn assert_within_dot_bound(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &[f32]) {
        let r = gemm_reference(m, n, k, a, b);
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = (k as f64 * u) / (1.0 - k as f64 * u);
        for i in 0..m {
            for j in 0..n {
                let abs: f64 = (0..k).map(|p| (a[i * k + p] as f64 * b[p * n + j] as f64).abs()).sum();
                let err = (c[i * n + j] as f64 - r[i * n + j]).abs();
                // + output rounding of the f32 result
                assert!(
                    err <= gamma * abs + u * r[i * n + j].abs() + 1e-30,
                    "({i},{j}) err {err} bound {}",
                    gamma * abs
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
        #[test]
        fn sgemm_matches_reference(m in 1usize..40, n in 1usize..40, k in 1usize..70, threads in 1usize..3, s in 0u64..1000) {
            let a = timing::random_f32(Seed(s).derive("a"), m * k);
            let b = timing::random_f32(Seed(s).derive("b"), k * n);
            let mut c = vec![f32::NAN; m * n];
            sgemm(m, n, k, &a, &b, &mut c, threads).unwrap();
            assert_within_dot_bound(m, n, k, &a, &b, &c);
        }
    }

    #[test]
    fn dgemm_and_batched_match_reference() {
        let (m, n, k) = (17, 9, 33);
        let a = timing::random_f64(Seed(1), m * k);
        let b = timing::random_f64(Seed(2), k * n);
        let mut c = vec![0.0; m * n];
        dgemm(m, n, k, &a, &b, &mut c, 2).unwrap();
        // Compare against the f64 loop on the same (f64) inputs.
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - r).abs() < 1e-12, "{} vs {r}", c[i * n + j]);
            }
        }
        let batch = 3;
        let a3 = timing::random_f32(Seed(3), batch * m * k);
        let b3 = timing::random_f32(Seed(4), batch * k * n);
        let mut c3 = vec![0.0f32; batch * m * n];
        sgemm_batched(batch, m, n, k, &a3, &b3, &mut c3, 0).unwrap();
        for i in 0..batch {
            assert_within_dot_bound(
                m,
                n,
                k,
                &a3[i * m * k..(i + 1) * m * k],
                &b3[i * k * n..(i + 1) * k * n],
                &c3[i * m * n..(i + 1) * m * n],
            );
        }
    }

    #[test]
    fn sgemm_result_does_not_depend_on_threads() {
        let (m, n, k) = (130, 200, 150);
        let a = timing::random_f32(Seed(5), m * k);
        let b = timing::random_f32(Seed(6), k * n);
        let mut c1 = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        sgemm(m, n, k, &a, &b, &mut c1, 1).unwrap();
        sgemm(m, n, k, &a, &b, &mut c2, 2).unwrap();
        assert_eq!(c1, c2);
    }

    #[test]
    fn bad_shapes_are_invalid_and_degenerate_shapes_work() {
        let a = vec![1.0f32; 6];
        let b = vec![1.0f32; 6];
        let mut c = vec![0.0f32; 4];
        assert!(matches!(sgemm(2, 2, 4, &a, &b, &mut c, 1), Err(Error::Invalid { .. })));
        assert!(matches!(
            sgemm(2, 2, 3, &a, &b, &mut c[..3], 1),
            Err(Error::Invalid { .. })
        ));
        sgemm(2, 2, 3, &a, &b, &mut c, 1).unwrap();
        assert_eq!(c, vec![3.0; 4]);
        let mut c = vec![7.0f32; 4];
        sgemm(2, 2, 0, &[], &[], &mut c, 1).unwrap();
        assert_eq!(c, vec![0.0; 4]);
    }

    #[test]
    fn stream_kernels_compute_the_right_thing() {
        let b = timing::random_f64(Seed(7), 100_003);
        let c = timing::random_f64(Seed(8), 100_003);
        let mut a = vec![0.0; b.len()];
        stream_copy(&b, &mut a).unwrap();
        assert_eq!(a, b);
        stream_triad(&mut a, &b, &c, 3.0).unwrap();
        for i in 0..a.len() {
            assert_eq!(a[i], b[i] + 3.0 * c[i]);
        }
        assert!(stream_copy(&b, &mut a[..10]).is_err());
    }

    #[test]
    fn backends_measure_plausible_numbers() {
        let mut ctx = RunCtx::new(Seed(1));
        let g = Gemm::square(128);
        let o = CpuGemm::new(CpuOpts::quick()).run(&g, &mut ctx).unwrap();
        // Any CPU of the last 20 years does 128^3 fp32 between 0.1 and 10,000 GFLOP/s.
        assert!(o.flops_per_s > 1e8 && o.flops_per_s < 1e13, "{}", o.flops_per_s);
        assert!(o.time_s > 0.0);

        let w = MemBandwidth {
            bytes: 8 << 20,
            kernel: MemKernel::Triad,
            device: Default::default(),
        };
        let m = CpuMem::new(CpuOpts::quick()).run(&w, &mut ctx).unwrap();
        assert!(m.bytes_per_s > 1e8 && m.bytes_per_s < 1e13, "{}", m.bytes_per_s);
        assert!((m.bytes_per_s * m.time_s - 3.0 * (8 << 20) as f64).abs() < 1.0);

        let l = CpuDispatch::new(CpuOpts::quick())
            .run(
                &LaunchLatency {
                    launches: 200,
                    device: Default::default(),
                },
                &mut ctx,
            )
            .unwrap();
        assert!(l.per_launch_s > 1e-8 && l.per_launch_s < 1e-2, "{}", l.per_launch_s);
    }

    #[test]
    fn unsupported_and_invalid_workloads_are_refused() {
        let mut ctx = RunCtx::new(Seed(1));
        let mut g = Gemm::square(64);
        g.dtype = Dtype::Bf16;
        assert!(matches!(
            CpuGemm::default().run(&g, &mut ctx),
            Err(Error::Unsupported(_))
        ));
        let huge = Gemm::square(40_000);
        assert!(matches!(
            CpuGemm::default().run(&huge, &mut ctx),
            Err(Error::Invalid { .. })
        ));
        let zero = Gemm {
            m: 0,
            ..Gemm::square(8)
        };
        assert!(matches!(
            CpuGemm::default().run(&zero, &mut ctx),
            Err(Error::Invalid { .. })
        ));
        let e = gemm_sweep(&[Gemm::square(8), huge], &CpuOpts::quick(), &ctx).unwrap_err();
        assert!(e.to_string().contains("sizes[1]"), "{e}");
    }

    #[test]
    fn sweep_reports_progress_and_honours_cancel() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let done = Arc::new(AtomicU64::new(0));
        let d2 = done.clone();
        let mut ctx = RunCtx::new(Seed(2));
        ctx.progress = Some(Arc::new(move |d, _| d2.store(d, Ordering::SeqCst)));
        let sizes = [Gemm::square(16), Gemm::square(32)];
        let out = gemm_sweep(&sizes, &CpuOpts::quick(), &ctx).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].0, sizes[1]);
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert!(out.iter().all(|(_, t)| t.samples_s.len() == 3 && t.median_s() > 0.0));
        ctx.cancel.store(true, Ordering::SeqCst);
        assert!(matches!(
            gemm_sweep(&sizes, &CpuOpts::quick(), &ctx),
            Err(Error::Interrupted)
        ));
    }

    #[test]
    fn calibration_sizes_are_disjoint_and_valid() {
        let (fit, held) = default_calibration_sizes();
        assert!(fit.len() >= 8 && held.len() >= 5);
        for g in fit.iter().chain(&held) {
            check_cpu_gemm(g).unwrap();
        }
        for h in &held {
            assert!(!fit.contains(h), "{} is in both sets", h.label());
        }
    }

    #[test]
    fn device_description_names_cores() {
        let d = cpu_device_description();
        assert!(d.contains("logical cores"), "{d}");
    }

    #[test]
    fn dispatch_latency_with_idle_gap_and_own_pool() {
        let t = dispatch_latency(5, 1, 1, Some(std::time::Duration::from_micros(200))).unwrap();
        assert_eq!(t.samples_s.len(), 5);
        assert!(dispatch_latency(0, 1, 0, None).is_err());
    }

    /// Prints this machine's numbers (run: `cargo test -p trainlab-executors --lib measure_this_machine --
    /// --ignored --nocapture`); ignored by default because it takes a few seconds and loads every core.
    #[test]
    #[ignore]
    fn measure_this_machine() {
        let opts = CpuOpts::default();
        println!("{}", cpu_device_description());
        for n in [256u64, 1024, 2048] {
            let g = Gemm::square(n);
            let t = time_gemm(&g, &opts, Seed(1)).unwrap();
            println!(
                "sgemm {n}: {:.1} GFLOP/s (median {:.3} ms, spread {:.1}%, {} samples)",
                g.flops() / t.median_s() / 1e9,
                t.median_s() * 1e3,
                100.0 * t.rel_spread(),
                t.samples_s.len()
            );
        }
        for kernel in [MemKernel::Copy, MemKernel::Triad] {
            let w = MemBandwidth {
                bytes: 128 << 20,
                kernel,
                device: Default::default(),
            };
            let t = time_mem(&w, &opts, Seed(1)).unwrap();
            println!(
                "stream {kernel:?} 128 MiB/array: {:.2} GB/s",
                w.bytes_moved() / t.median_s() / 1e9
            );
        }
        let warm = dispatch_latency(2000, 100, 0, None).unwrap();
        let cold = dispatch_latency(50, 5, 0, Some(std::time::Duration::from_millis(5))).unwrap();
        println!(
            "rayon dispatch round trip: warm median {:.2} us, after 5 ms idle {:.2} us",
            warm.median_s() * 1e6,
            cold.median_s() * 1e6
        );
    }

    /// The full default calibration sweep (fit + held-out) with default timing; ignored by default (about 10-20 s).
    #[test]
    #[ignore]
    fn default_calibration_sweep_runtime() {
        let (fit, held) = default_calibration_sizes();
        let all: Vec<Gemm> = fit.into_iter().chain(held).collect();
        let t0 = Instant::now();
        let out = gemm_sweep(&all, &CpuOpts::default(), &RunCtx::new(Seed(1))).unwrap();
        for (g, t) in &out {
            println!("{:>22}: {:6.1} GFLOP/s", g.label(), g.flops() / t.median_s() / 1e9);
        }
        let secs = t0.elapsed().as_secs_f64();
        println!("sweep of {} sizes took {secs:.1} s", out.len());
        assert!(secs < 60.0);
    }
}

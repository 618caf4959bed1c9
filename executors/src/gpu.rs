//! The one GPU runtime of this crate, used by the microbenchmarks ([`crate::cuda`]), the LM trainer
//! ([`crate::lm::cuda`]) and the MoE layer ([`crate::moe::cuda`]): probing, driver and cuBLAS errors, the context
//! and its stream, NVRTC compilation and module loading, launch grids, CUDA-event timing and the row-major GEMM on
//! cuBLAS. Everything goes through cudarc with dynamic loading: this module compiles and links on machines with no
//! CUDA at all, and the driver, NVRTC and cuBLAS libraries are `dlopen`ed on first use.
//!
//! - [`gpu_available`] / [`gpu_unavailable_reason`] check `libcuda`, `libnvrtc` and `libcublas` with cudarc's
//!   `is_culib_present()` *before* touching the driver (a missing driver would otherwise panic inside cudarc),
//!   count devices, and never panic.
//! - [`GpuRuntime`] holds one context, its default stream and a cuBLAS handle bound to that stream; every buffer and
//!   launch of a runtime uses that one stream.
//! - [`sgemm_rm`] computes a row-major fp32 product on cuBLAS (column-major) as `C^T = op(B)^T op(A)^T`
//!   ([`rowmajor_sgemm_config`]); the mapping is checked on the host against a reference column-major BLAS.
use crate::timing::{self, Timing, TimingOpts};
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig, result as blas_result, sys as blas_sys};
use cudarc::driver::sys as drv_sys;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};
use std::sync::{Arc, OnceLock};
use trainlab_core::Error;

/// Threads per block of the one-thread-per-element kernels ([`grid`]).
pub const BLOCK_THREADS: u32 = 256;

fn probe() -> Option<String> {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: these only try to dlopen() the candidate library names; no symbol is called.
        if !unsafe { drv_sys::is_culib_present() } {
            return Some("no CUDA driver library (libcuda.so) found".to_string());
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Some("no NVRTC library (libnvrtc.so.13) found: add the CUDA lib folder to LD_LIBRARY_PATH".into());
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Some(
                "no cuBLAS library (libcublas.so.13) found: add the CUDA lib folder to LD_LIBRARY_PATH".into(),
            );
        }
        match CudaContext::device_count() {
            Ok(n) if n > 0 => None,
            Ok(_) => Some("the CUDA driver reports no device".to_string()),
            Err(e) => Some(format!("CUDA driver initialisation failed: {e}")),
        }
    });
    match r {
        Ok(reason) => reason,
        Err(_) => Some("the CUDA driver library could not be used (cudarc panicked while loading it)".to_string()),
    }
}

/// Why no GPU can be used here (no driver, no NVRTC/cuBLAS library, no device), or `None` when one can. Probed
/// once per process and cached; never panics.
pub fn gpu_unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

/// True when a CUDA device, its driver, NVRTC and cuBLAS are all usable.
pub fn gpu_available() -> bool {
    gpu_unavailable_reason().is_none()
}

/// Maps a driver error to [`Error::Backend`] naming what was being done.
pub(crate) fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Backend(format!("CUDA {what}: {e}"))
}

/// Maps a cuBLAS error to [`Error::Backend`] naming what was being done.
pub(crate) fn blas_err(what: &str) -> impl Fn(blas_result::CublasError) -> Error + '_ {
    move |e| Error::Backend(format!("cuBLAS {what}: {e}"))
}

/// One thread per element, [`BLOCK_THREADS`] per block (at least one block).
pub(crate) fn grid(threads: usize) -> LaunchConfig {
    let blocks = (threads.max(1) as u64).div_ceil(BLOCK_THREADS as u64).max(1);
    LaunchConfig {
        grid_dim: (blocks.min(u32::MAX as u64) as u32, 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A timing event recorded now on `s`.
pub(crate) fn event_on(s: &CudaStream) -> Result<CudaEvent, Error> {
    s.record_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(drv("event record"))
}

/// Seconds from event `a` to event `b`; call after both completed.
pub(crate) fn seconds_between(a: &CudaEvent, b: &CudaEvent) -> Result<f64, Error> {
    Ok(a.elapsed_ms(b).map_err(drv("event elapsed"))? as f64 * 1e-3)
}

/// Seconds between consecutive events (`evs.len() - 1` values); call after the stream has synchronised.
pub(crate) fn event_gaps(evs: &[CudaEvent]) -> Result<Vec<f64>, Error> {
    evs.windows(2).map(|w| seconds_between(&w[0], &w[1])).collect()
}

/// One GPU ready to run: context, its default stream and a cuBLAS handle on that stream.
pub struct GpuRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    sm_count: u32,
}

impl std::fmt::Debug for GpuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRuntime")
            .field("ordinal", &self.ctx.ordinal())
            .field("sm_count", &self.sm_count)
            .finish_non_exhaustive()
    }
}

impl GpuRuntime {
    /// Opens device `ordinal` and creates a cuBLAS handle on its default stream. Without a usable GPU this is
    /// [`Error::Unsupported`] with the reason; an ordinal past the device count is [`Error::Invalid`].
    pub fn new(ordinal: usize) -> Result<GpuRuntime, Error> {
        if let Some(why) = gpu_unavailable_reason() {
            return Err(Error::Unsupported(why));
        }
        let count = CudaContext::device_count().map_err(drv("device count"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::invalid(
                "cuda.ordinal",
                ordinal,
                format!("only {count} CUDA device(s) present"),
                "pick an ordinal below the device count",
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("context creation"))?;
        // SAFETY: every buffer of a runtime is allocated, used and freed on the one default stream below, so
        // cudarc's per-slice cross-stream events are not needed; without them no extra cuEventRecord calls are
        // enqueued around each timed kernel or GEMM (they would inflate small-kernel times).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("handle creation"))?;
        let sm_count = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("SM count"))?
            .max(1) as u32;
        Ok(GpuRuntime {
            ctx,
            stream,
            blas,
            sm_count,
        })
    }

    /// The context (for further streams and pinned host memory).
    pub(crate) fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every buffer and launch of this runtime uses.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle, bound to [`Self::stream`].
    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Device description for provenance, e.g. `NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB`.
    pub fn device_description(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        let cc = self
            .ctx
            .compute_capability()
            .map(|(a, b)| format!("sm_{a}{b}"))
            .unwrap_or_else(|_| "sm_?".into());
        let mem = self
            .ctx
            .total_mem()
            .map(|b| b as f64 / (1u64 << 30) as f64)
            .unwrap_or(0.0);
        format!("{name}, {cc}, {} SMs, {mem:.1} GiB", self.sm_count)
    }

    /// Free device memory, bytes.
    pub(crate) fn free_bytes(&self) -> Result<u64, Error> {
        Ok(self.ctx.mem_get_info().map_err(drv("memory info"))?.0 as u64)
    }

    /// [`Error::Invalid`] naming `field` when `bytes` exceed 90% of the free device memory.
    pub(crate) fn check_fits(&self, field: &str, value: String, bytes: f64) -> Result<(), Error> {
        let free = self.free_bytes()? as f64;
        if bytes > 0.9 * free {
            return Err(Error::invalid(
                field,
                value,
                format!(
                    "needs {:.2} GiB but the GPU has {:.2} GiB free",
                    bytes / 1073741824.0,
                    free / 1073741824.0
                ),
                "use smaller sizes",
            ));
        }
        Ok(())
    }

    /// Compiles CUDA C `source` with NVRTC, loads it into this context and returns the kernels `names`, in order.
    /// `what` names the source in errors ("the MoE kernels").
    pub(crate) fn load_kernels<const N: usize>(
        &self,
        source: &str,
        what: &str,
        names: [&str; N],
    ) -> Result<[CudaFunction; N], Error> {
        let ptx = cudarc::nvrtc::compile_ptx(source)
            .map_err(|e| Error::Backend(format!("NVRTC compilation of {what}: {e}")))?;
        let module = self.ctx.load_module(ptx).map_err(drv("module load"))?;
        let mut out = Vec::with_capacity(N);
        for name in names {
            out.push(
                module
                    .load_function(name)
                    .map_err(|e| Error::Backend(format!("CUDA load {name}: {e}")))?,
            );
        }
        out.try_into()
            .map_err(|_| Error::Backend(format!("loading {what}: kernel count mismatch")))
    }

    /// A grid-stride launch over `items` elements handled `per_thread` at a time by [`BLOCK_THREADS`]-thread blocks,
    /// at most 16 blocks per SM (enough to saturate memory bandwidth without launching idle blocks).
    pub(crate) fn stride_grid(&self, items: u64, per_thread: u64) -> LaunchConfig {
        let blocks = (items / per_thread.max(1))
            .div_ceil(BLOCK_THREADS as u64)
            .clamp(1, self.sm_count as u64 * 16);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Waits for everything enqueued on the stream.
    pub(crate) fn sync(&self) -> Result<(), Error> {
        self.stream.synchronize().map_err(drv("synchronize"))
    }

    /// A timing event recorded now on the stream.
    pub(crate) fn event(&self) -> Result<CudaEvent, Error> {
        event_on(&self.stream)
    }

    /// Times `enqueue` (which must only enqueue work on this runtime's stream) with CUDA events: `opts.warmup`
    /// untimed calls, one timed call to size the batch (`inner` calls per sample so a sample spans at least
    /// `opts.target_sample_s`, at most 100,000 calls), then samples as in [`timing::time_samples`]. Seconds per call.
    pub fn time_enqueued<F>(&self, opts: &TimingOpts, mut enqueue: F) -> Result<Timing, Error>
    where
        F: FnMut() -> Result<(), Error>,
    {
        opts.validate("timing")?;
        for _ in 0..opts.warmup {
            enqueue()?;
        }
        self.sync()?;
        let mut batch = |n: usize| -> Result<f64, Error> {
            let start = self.event()?;
            for _ in 0..n {
                enqueue()?;
            }
            let end = self.event()?;
            let ms = start.elapsed_ms(&end).map_err(drv("event elapsed"))?;
            Ok(ms as f64 * 1e-3 / n as f64)
        };
        let one = batch(1)?.max(1e-7);
        let inner = if one >= opts.target_sample_s {
            1
        } else {
            ((opts.target_sample_s / one).ceil() as usize).clamp(1, 100_000)
        };
        timing::time_samples(opts, || batch(inner))
    }
}

/// cuBLAS (column-major) arguments for the row-major `C[m, n] = op(A) op(B) [+ C]` of [`sgemm_rm`]: cuBLAS's first
/// operand is the `B` buffer and its second the `A` buffer, so it computes the column-major `n x m` matrix
/// `C^T = op(B)^T op(A)^T`, which is `C` in row-major order. A row-major `r x c` buffer is the column-major `c x r`
/// matrix with leading dimension `c`: `B` stored `[k, n]` needs no transpose (ld `n`), stored `[n, k]` (`b_t`) it
/// needs `OP_T` (ld `k`); likewise `A` stored `[m, k]` (ld `k`) or `[k, m]` (`a_t`, `OP_T`, ld `m`). `acc` adds to
/// `C` (beta = 1) instead of overwriting it.
pub(crate) fn rowmajor_sgemm_config(m: usize, n: usize, k: usize, a_t: bool, b_t: bool, acc: bool) -> GemmConfig<f32> {
    let op = |t: bool| {
        if t {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    GemmConfig {
        transa: op(b_t),
        transb: op(a_t),
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: if b_t { k } else { n } as i32,
        ldb: if a_t { m } else { k } as i32,
        beta: if acc { 1.0 } else { 0.0 },
        ldc: n as i32,
    }
}

/// Row-major `C[m, n] = op(A) op(B)` (`acc`: `C += ...`) with cuBLAS sgemm (fp32; cuBLAS's default math mode, no
/// TF32): `A` is stored `[m, k]`, or `[k, m]` when `a_t`; `B` is stored `[k, n]`, or `[n, k]` when `b_t`. The buffers
/// must hold at least `m k`, `k n` and `m n` floats (only that leading part is read or written); every dimension
/// must be at least 1 and fit in an `i32`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_rm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    m: usize,
    n: usize,
    k: usize,
    a: &A,
    a_t: bool,
    b: &B,
    b_t: bool,
    c: &mut C,
    acc: bool,
) -> Result<(), Error> {
    check_sgemm_rm(m, n, k, a.len(), b.len(), c.len())?;
    let cfg = rowmajor_sgemm_config(m, n, k, a_t, b_t, acc);
    // SAFETY: the buffers hold at least m*k, k*n and m*n floats and every dimension is in 1..=i32::MAX (checked
    // above); the leading dimensions describe those row-major layouts (see `rowmajor_sgemm_config`), so cuBLAS
    // reads and writes only inside them.
    unsafe { blas.gemm(cfg, b, a, c) }.map_err(blas_err("sgemm"))
}

/// The argument checks of [`sgemm_rm`], separate so they are tested without a GPU.
pub(crate) fn check_sgemm_rm(m: usize, n: usize, k: usize, a: usize, b: usize, c: usize) -> Result<(), Error> {
    if [m, n, k].iter().any(|&v| v == 0 || v > i32::MAX as usize) {
        return Err(Error::Unsupported(format!(
            "sgemm {m}x{n}x{k}: every dimension must be in 1..=2^31 - 1"
        )));
    }
    let need = |x: usize, y: usize| x.saturating_mul(y);
    if a < need(m, k) || b < need(k, n) || c < need(m, n) {
        return Err(Error::Backend(format!(
            "sgemm {m}x{n}x{k}: buffers too small ({a}, {b}, {c} floats)"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// NVRTC needs no GPU: wherever `libnvrtc` can be loaded (e.g. from the `nvidia-cuda-nvrtc` wheel on
    /// `LD_LIBRARY_PATH`), `source` must compile and define every kernel of `names` (the entry points the executor
    /// loads); elsewhere prints the skip.
    pub(crate) fn assert_kernels_compile_when_nvrtc_present(source: &str, names: &[&str]) {
        // SAFETY: only tries to dlopen() the candidate library names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!("skipped: no NVRTC library (libnvrtc.so.13) on the loader path");
            return;
        }
        let ptx = cudarc::nvrtc::compile_ptx(source).unwrap_or_else(|e| panic!("NVRTC: {e}"));
        let src = ptx.to_src();
        for name in names {
            assert!(src.contains(&format!(".entry {name}(")), "PTX lacks {name}");
        }
    }

    /// cuBLAS sgemm semantics (column-major, `C = alpha op(A) op(B) + beta C`, element `(i, j)` of a matrix with
    /// leading dimension `ld` at `i + j ld`), written from the cuBLAS documentation; panics on any read or write
    /// outside the given buffers.
    pub(crate) fn sgemm_colmajor_ref(c: &GemmConfig<f32>, a: &[f32], b: &[f32], out: &mut [f32]) {
        let n_op = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        let (m, n, k) = (c.m as usize, c.n as usize, c.k as usize);
        let (lda, ldb, ldc) = (c.lda as usize, c.ldb as usize, c.ldc as usize);
        // cuBLAS requires lda >= rows of the stored A (m for OP_N, k for OP_T), likewise for B and C.
        assert!(lda >= if c.transa == n_op { m } else { k });
        assert!(ldb >= if c.transb == n_op { k } else { n });
        assert!(ldc >= m);
        let opa = |i: usize, l: usize| {
            if c.transa == n_op {
                a[i + l * lda]
            } else {
                a[l + i * lda]
            }
        };
        let opb = |l: usize, j: usize| {
            if c.transb == n_op {
                b[l + j * ldb]
            } else {
                b[j + l * ldb]
            }
        };
        for j in 0..n {
            for i in 0..m {
                let s: f32 = (0..k).map(|l| opa(i, l) * opb(l, j)).sum();
                out[i + j * ldc] = c.alpha * s + c.beta * out[i + j * ldc];
            }
        }
    }

    /// [`sgemm_rm`] on host vectors: the same argument checks and [`rowmajor_sgemm_config`], run by the cuBLAS
    /// reference with the operands in the order `sgemm_rm` passes them (the `B` buffer first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sgemm_rm_host(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        a_t: bool,
        b: &[f32],
        b_t: bool,
        c: &mut [f32],
        acc: bool,
    ) {
        check_sgemm_rm(m, n, k, a.len(), b.len(), c.len()).expect("valid sgemm arguments");
        sgemm_colmajor_ref(&rowmajor_sgemm_config(m, n, k, a_t, b_t, acc), b, a, c);
    }

    #[test]
    fn rowmajor_config_matches_the_layouts() {
        // C[m, n] = A[m, k] B[k, n]: cuBLAS gets B first (n x k column-major, ld n), A second (ld k), C ld n.
        let c = rowmajor_sgemm_config(3, 5, 7, false, false, false);
        assert_eq!((c.m, c.n, c.k, c.lda, c.ldb, c.ldc), (5, 3, 7, 5, 7, 5));
        assert_eq!(c.beta, 0.0);
        // dW = X^T dH: A stored [k, m] (a_t, ld m) -> cuBLAS's second operand transposed.
        let c = rowmajor_sgemm_config(3, 5, 7, true, false, true);
        assert_eq!((c.lda, c.ldb, c.ldc), (5, 3, 5));
        assert_eq!(c.transb, blas_sys::cublasOperation_t::CUBLAS_OP_T);
        assert_eq!(c.transa, blas_sys::cublasOperation_t::CUBLAS_OP_N);
        assert_eq!(c.beta, 1.0);
        // dX = dH W^T: B stored [n, k] (b_t, ld k) -> cuBLAS's first operand transposed.
        let c = rowmajor_sgemm_config(3, 5, 7, false, true, false);
        assert_eq!((c.lda, c.ldb, c.ldc), (7, 7, 5));
        assert_eq!(c.transa, blas_sys::cublasOperation_t::CUBLAS_OP_T);
        assert_eq!(c.transb, blas_sys::cublasOperation_t::CUBLAS_OP_N);
    }

    /// For every transpose and accumulate combination and the shapes the LM and MoE products use, the host replay
    /// of [`sgemm_rm`] equals the row-major product computed directly.
    #[test]
    fn rowmajor_mapping_computes_row_major_products() {
        let val = |i: usize| ((i * 7 + 3) % 11) as f32 - 5.0;
        for (m, n, k) in [(3usize, 5usize, 4usize), (5, 4, 6), (4, 7, 5), (1, 1, 1), (6, 2, 9)] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 5)).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| val(i + 2)).collect();
            for a_t in [false, true] {
                for b_t in [false, true] {
                    for acc in [false, true] {
                        // op(A)[i][l] from A stored [m, k] or [k, m]; op(B)[l][j] from B stored [k, n] or [n, k].
                        let ea = |i: usize, l: usize| if a_t { a[l * m + i] } else { a[i * k + l] };
                        let eb = |l: usize, j: usize| if b_t { b[j * k + l] } else { b[l * n + j] };
                        let mut want = if acc { c0.clone() } else { vec![0.0; m * n] };
                        for i in 0..m {
                            for j in 0..n {
                                want[i * n + j] += (0..k).map(|l| ea(i, l) * eb(l, j)).sum::<f32>();
                            }
                        }
                        let mut got = c0.clone();
                        sgemm_rm_host(m, n, k, &a, a_t, &b, b_t, &mut got, acc);
                        assert_eq!(got, want, "m {m} n {n} k {k} a_t {a_t} b_t {b_t} acc {acc}");
                    }
                }
            }
        }
    }

    #[test]
    fn sgemm_checks_reject_bad_arguments() {
        assert!(check_sgemm_rm(2, 3, 4, 8, 12, 6).is_ok());
        // larger buffers are fine (work buffers sized for the largest batch)
        assert!(check_sgemm_rm(2, 3, 4, 80, 12, 60).is_ok());
        assert!(check_sgemm_rm(2, 3, 4, 7, 12, 6).is_err());
        assert!(check_sgemm_rm(2, 3, 4, 8, 12, 5).is_err());
        assert!(check_sgemm_rm(0, 3, 4, 8, 12, 6).is_err());
        assert!(check_sgemm_rm(1 << 31, 1, 1, usize::MAX, usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn grids_cover_every_element() {
        for n in [0usize, 1, 255, 256, 257, 1 << 20] {
            let g = grid(n);
            assert!(g.grid_dim.0 as usize * g.block_dim.0 as usize >= n.max(1));
            assert!((g.grid_dim.0 as usize - 1) * (g.block_dim.0 as usize) < n.max(1));
        }
    }

    #[test]
    fn probe_never_panics_and_new_reports_the_reason() {
        let reason = gpu_unavailable_reason();
        assert_eq!(reason.is_none(), gpu_available());
        if let Some(why) = reason {
            assert!(matches!(GpuRuntime::new(0), Err(Error::Unsupported(w)) if w == why));
        }
    }
}

//! Microbenchmark runs on an NVIDIA GPU (GEMM, STREAM, launch latency) on the crate's one GPU runtime,
//! [`crate::gpu`] (probing, context and stream, cuBLAS, NVRTC, event timing; dynamic loading, so this compiles and
//! links on machines with no CUDA at all).
//!
//! - Probe with [`gpu_available`] / [`gpu_unavailable_reason`] (re-exported from [`crate::gpu`]); they never panic.
//! - [`CudaRuntime`] is a [`GpuRuntime`] plus three NVRTC-compiled kernels: `tl_copy`, `tl_triad` (STREAM
//!   copy/triad on `float`, vectorised as `float4`) and `tl_empty` (launch latency).
//! - GEMMs go through `cublasGemmStridedBatchedEx` with fp32 accumulation for every storage type: fp32
//!   (`CUBLAS_COMPUTE_32F`), tf32 (`CUBLAS_COMPUTE_32F_FAST_TF32` on fp32 storage), fp16 and bf16 (16-bit A, B and
//!   C, `CUBLAS_COMPUTE_32F`). fp8 is [`Error::Unsupported`] (it needs cublasLt with scale factors).
//! - Everything is timed with CUDA events on the stream after warm-up ([`TimingOpts::warmup`] untimed calls), each
//!   sample being `inner` back-to-back calls between two events; reported numbers are medians. Inputs are seeded
//!   uniform `[-1, 1)` values generated on the host and uploaded (never zeros).
//!
//! Backends (all [`Fidelity::Measured`], name `cuda`): [`CudaGemm`], [`CudaMem`], [`CudaLaunch`]; their
//! `available()` returns the reason when no usable GPU is present. [`cuda_gemm_sweep`] mirrors
//! [`crate::cpu::gemm_sweep`] for `trainlab calibrate --backend cuda`.
use crate::gpu::{GpuRuntime, blas_err, drv};
pub use crate::gpu::{gpu_available, gpu_unavailable_reason};
use crate::timing::{self, Timing, TimingOpts};
use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use std::ffi::c_void;
use std::sync::Arc;
use trainlab_core::workloads::{Gemm, GemmOutcome, LaunchLatency, LaunchOutcome, MemBandwidth, MemKernel, MemOutcome};
use trainlab_core::{Backend, Dtype, Error, Fidelity, RunCtx, Seed, Workload};

/// CUDA C source of the microbenchmark kernels, compiled at run time by NVRTC.
pub const KERNELS_CU: &str = r#"
extern "C" __global__ void tl_copy(const float* __restrict__ src, float* __restrict__ dst, unsigned long long n) {
    unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long n4 = n / 4;
    const float4* s4 = reinterpret_cast<const float4*>(src);
    float4* d4 = reinterpret_cast<float4*>(dst);
    for (unsigned long long i = tid; i < n4; i += stride) {
        d4[i] = s4[i];
    }
    for (unsigned long long i = 4 * n4 + tid; i < n; i += stride) {
        dst[i] = src[i];
    }
}

extern "C" __global__ void tl_triad(float* __restrict__ a, const float* __restrict__ b,
                                    const float* __restrict__ c, float s, unsigned long long n) {
    unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long n4 = n / 4;
    float4* a4 = reinterpret_cast<float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    const float4* c4 = reinterpret_cast<const float4*>(c);
    for (unsigned long long i = tid; i < n4; i += stride) {
        float4 x = b4[i];
        float4 y = c4[i];
        float4 r;
        r.x = x.x + s * y.x;
        r.y = x.y + s * y.y;
        r.z = x.z + s * y.z;
        r.w = x.w + s * y.w;
        a4[i] = r;
    }
    for (unsigned long long i = 4 * n4 + tid; i < n; i += stride) {
        a[i] = b[i] + s * c[i];
    }
}

extern "C" __global__ void tl_empty() {}
"#;

/// One GPU ready to run the microbenchmarks: the runtime and the compiled microbenchmark kernels.
pub struct CudaRuntime {
    gpu: GpuRuntime,
    copy_fn: CudaFunction,
    triad_fn: CudaFunction,
    empty_fn: CudaFunction,
}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaRuntime")
            .field("gpu", &self.gpu)
            .finish_non_exhaustive()
    }
}

impl CudaRuntime {
    /// Opens device `ordinal` ([`GpuRuntime::new`]) and compiles the microbenchmark kernels with NVRTC.
    /// Without a usable GPU this is [`Error::Unsupported`] with the reason.
    pub fn new(ordinal: usize) -> Result<CudaRuntime, Error> {
        let gpu = GpuRuntime::new(ordinal)?;
        let [copy_fn, triad_fn, empty_fn] = gpu.load_kernels(
            KERNELS_CU,
            "the microbenchmark kernels",
            ["tl_copy", "tl_triad", "tl_empty"],
        )?;
        Ok(CudaRuntime {
            gpu,
            copy_fn,
            triad_fn,
            empty_fn,
        })
    }

    /// The runtime underneath (stream, cuBLAS, event timing).
    pub fn gpu(&self) -> &GpuRuntime {
        &self.gpu
    }

    /// Device description for provenance, e.g. `NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB`.
    pub fn device_description(&self) -> String {
        self.gpu.device_description()
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    /// A grid-stride launch over `n` floats handled as `float4`.
    fn stream_grid(&self, n: u64) -> LaunchConfig {
        self.gpu.stride_grid(n, 4)
    }

    fn launch_copy(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<(), Error> {
        if dst.len() != src.len() {
            return Err(Error::Backend(format!(
                "tl_copy: lengths differ ({} vs {})",
                src.len(),
                dst.len()
            )));
        }
        let n = src.len() as u64;
        let cfg = self.stream_grid(n);
        let mut b = self.stream().launch_builder(&self.copy_fn);
        b.arg(src).arg(dst).arg(&n);
        // SAFETY: tl_copy(const float*, float*, unsigned long long) matches the argument list; both buffers hold
        // `n` floats (checked above), and the grid-stride loop stays below `n`.
        unsafe { b.launch(cfg) }.map_err(drv("launch tl_copy"))?;
        Ok(())
    }

    fn launch_triad(
        &self,
        a: &mut CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &CudaSlice<f32>,
        s: f32,
    ) -> Result<(), Error> {
        if b.len() != a.len() || c.len() != a.len() {
            return Err(Error::Backend("tl_triad: arrays of different lengths".into()));
        }
        let n = a.len() as u64;
        let cfg = self.stream_grid(n);
        let mut l = self.stream().launch_builder(&self.triad_fn);
        l.arg(a).arg(b).arg(c).arg(&s).arg(&n);
        // SAFETY: tl_triad(float*, const float*, const float*, float, unsigned long long) matches; all three buffers
        // hold `n` floats (checked above).
        unsafe { l.launch(cfg) }.map_err(drv("launch tl_triad"))?;
        Ok(())
    }

    fn launch_empty(&self) -> Result<(), Error> {
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream().launch_builder(&self.empty_fn);
        // SAFETY: tl_empty takes no arguments and touches no memory.
        unsafe { l.launch(cfg) }.map_err(drv("launch tl_empty"))?;
        Ok(())
    }

    fn upload_random(&self, seed: Seed, n: usize) -> Result<CudaSlice<f32>, Error> {
        let host = timing::random_f32(seed, n);
        timing::ensure_not_all_zero("input", &host)?;
        self.stream().clone_htod(&host).map_err(drv("upload"))
    }

    /// Times one STREAM kernel pass over `w.bytes` bytes per array (`w.bytes / 4` floats).
    pub fn time_mem(&self, w: &MemBandwidth, opts: &TimingOpts, seed: Seed) -> Result<Timing, Error> {
        w.validate()?;
        let arrays = match w.kernel {
            MemKernel::Copy => 2.0,
            MemKernel::Triad => 3.0,
        };
        self.gpu
            .check_fits("workload.bytes", w.bytes.to_string(), arrays * w.bytes as f64)?;
        let n = (w.bytes / 4) as usize;
        let s = seed.derive("stream");
        let b = self.upload_random(s.derive("b"), n)?;
        let mut a = self.stream().alloc_zeros::<f32>(n).map_err(drv("alloc"))?;
        match w.kernel {
            MemKernel::Copy => self.gpu.time_enqueued(opts, || self.launch_copy(&b, &mut a)),
            MemKernel::Triad => {
                let c = self.upload_random(s.derive("c"), n)?;
                self.gpu.time_enqueued(opts, || self.launch_triad(&mut a, &b, &c, 3.0))
            }
        }
    }

    /// Times back-to-back launches of the empty kernel: `samples` samples of `per_sample` launches each, measured
    /// with events (per launch: the larger of the GPU's launch processing and the host's submission cost).
    pub fn time_launches(&self, samples: usize, per_sample: usize, warmup: usize) -> Result<Timing, Error> {
        for _ in 0..warmup {
            self.launch_empty()?;
        }
        let opts = TimingOpts {
            warmup: 0,
            min_samples: samples.max(1),
            max_samples: samples.max(1),
            min_time_s: 0.0,
            target_sample_s: 0.0,
        };
        let per = per_sample.max(1);
        // Each timed "call" is `per` back-to-back launches; report seconds per launch.
        let t = self.gpu.time_enqueued(&opts, || {
            for _ in 0..per {
                self.launch_empty()?;
            }
            Ok(())
        })?;
        Ok(Timing::from_samples(
            t.samples_s.iter().map(|s| s / per as f64).collect(),
        ))
    }

    /// Times one (batched) GEMM on seeded random inputs, seconds per batched product.
    pub fn time_gemm(&self, g: &Gemm, opts: &TimingOpts, seed: Seed) -> Result<Timing, Error> {
        let op = GemmOperands::new(self, g, crate::cpu::gemm_seed(seed, g))?;
        self.gpu.time_enqueued(opts, || op.run(self))
    }

    /// Runs one GEMM of shape `g` (batch 1 recommended) on seeded random inputs and returns the normwise relative
    /// error `max |C_gpu - C_ref| / max |C_ref|` against an f64 CPU reference computed from the same (rounded)
    /// inputs. Bounds that hold for `k <= 1024` and inputs in `[-1, 1)`: fp32 1e-5, tf32 5e-3, fp16 2e-3, bf16 1e-2.
    pub fn gemm_check(&self, g: &Gemm, seed: Seed) -> Result<f64, Error> {
        let op = GemmOperands::new(self, g, crate::cpu::gemm_seed(seed, g))?;
        op.run(self)?;
        let c = op.download_c(self)?;
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for bi in 0..g.batch as usize {
            let a = &op.a_host[bi * m * k..(bi + 1) * m * k];
            let b = &op.b_host[bi * k * n..(bi + 1) * k * n];
            let r = crate::cpu::gemm_reference(m, n, k, a, b);
            for (x, y) in c[bi * m * n..(bi + 1) * m * n].iter().zip(&r) {
                err = err.max((*x as f64 - y).abs());
                scale = scale.max(y.abs());
            }
        }
        Ok(err / scale.max(f64::MIN_POSITIVE))
    }

    /// Copies random data through `tl_copy` (which must copy exactly, else an error) and `tl_triad`, and returns the
    /// triad's largest error `|a_gpu - (b + 3c)| / (|b| + 3|c|)` against the exact f64 value: at most 2 f32 unit
    /// roundoffs (about 1.2e-7) whether or not the GPU fuses the multiply-add.
    pub fn stream_check(&self, n: usize, seed: Seed) -> Result<f64, Error> {
        let bh = timing::random_f32(seed.derive("b"), n);
        let ch = timing::random_f32(seed.derive("c"), n);
        let st = self.stream();
        let b = st.clone_htod(&bh).map_err(drv("upload"))?;
        let c = st.clone_htod(&ch).map_err(drv("upload"))?;
        let mut a = st.alloc_zeros::<f32>(n).map_err(drv("alloc"))?;
        self.launch_copy(&b, &mut a)?;
        let copied = st.clone_dtoh(&a).map_err(drv("download"))?;
        if copied != bh {
            return Err(Error::Backend("tl_copy produced a different array".into()));
        }
        self.launch_triad(&mut a, &b, &c, 3.0)?;
        let got = st.clone_dtoh(&a).map_err(drv("download"))?;
        let mut worst = 0.0f64;
        for i in 0..n {
            let want = bh[i] as f64 + 3.0 * ch[i] as f64;
            let scale = (bh[i].abs() as f64 + 3.0 * ch[i].abs() as f64).max(f64::MIN_POSITIVE);
            worst = worst.max((got[i] as f64 - want).abs() / scale);
        }
        Ok(worst)
    }
}

enum DevBuf {
    F32(CudaSlice<f32>),
    Half(CudaSlice<u16>),
}

impl DevBuf {
    fn ptr(&self, stream: &CudaStream) -> u64 {
        match self {
            DevBuf::F32(s) => s.device_ptr(stream).0,
            DevBuf::Half(s) => s.device_ptr(stream).0,
        }
    }
    fn ptr_mut(&mut self, stream: &CudaStream) -> u64 {
        match self {
            DevBuf::F32(s) => s.device_ptr_mut(stream).0,
            DevBuf::Half(s) => s.device_ptr_mut(stream).0,
        }
    }
}

/// Device operands of one GEMM, with the host copies of the (rounded) inputs for checking.
struct GemmOperands {
    g: Gemm,
    a: DevBuf,
    b: DevBuf,
    c: std::cell::RefCell<DevBuf>,
    a_host: Vec<f32>,
    b_host: Vec<f32>,
    io_type: blas_sys::cudaDataType,
    compute: blas_sys::cublasComputeType_t,
}

fn to_i32(field: &str, v: u64) -> Result<i32, Error> {
    i32::try_from(v)
        .map_err(|_| Error::invalid(field, v, "exceeds cuBLAS's 32-bit dimension limit", "use smaller sizes"))
}

impl GemmOperands {
    fn new(rt: &CudaRuntime, g: &Gemm, seed: Seed) -> Result<GemmOperands, Error> {
        g.validate()?;
        let (io_type, compute, half_kind) = match g.dtype {
            Dtype::Fp32 => (
                blas_sys::cudaDataType::CUDA_R_32F,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                None,
            ),
            Dtype::Tf32 => (
                blas_sys::cudaDataType::CUDA_R_32F,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                None,
            ),
            Dtype::Fp16 => (
                blas_sys::cudaDataType::CUDA_R_16F,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                Some(Dtype::Fp16),
            ),
            Dtype::Bf16 => (
                blas_sys::cudaDataType::CUDA_R_16BF,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                Some(Dtype::Bf16),
            ),
            Dtype::Fp8 => {
                return Err(Error::Unsupported(
                    "fp8 GEMM needs cublasLt with scaling factors; the cuda backend times fp32, tf32, fp16 and bf16"
                        .into(),
                ));
            }
        };
        for (f, v) in [
            ("workload.m", g.m),
            ("workload.n", g.n),
            ("workload.k", g.k),
            ("workload.batch", g.batch),
        ] {
            to_i32(f, v)?;
        }
        rt.gpu.check_fits("workload.m/n/k", g.label(), g.bytes())?;
        let (bt, m, n, k) = (g.batch as usize, g.m as usize, g.n as usize, g.k as usize);
        let mut a_host = timing::random_f32(seed.derive("a"), bt * m * k);
        let mut b_host = timing::random_f32(seed.derive("b"), bt * k * n);
        timing::ensure_not_all_zero("a", &a_host)?;
        timing::ensure_not_all_zero("b", &b_host)?;
        let st = rt.stream();
        let (a, b, c) = match half_kind {
            None => (
                DevBuf::F32(st.clone_htod(&a_host).map_err(drv("upload A"))?),
                DevBuf::F32(st.clone_htod(&b_host).map_err(drv("upload B"))?),
                DevBuf::F32(st.alloc_zeros::<f32>(bt * m * n).map_err(drv("alloc C"))?),
            ),
            Some(d) => {
                let a16 = to_half_bits(d, &mut a_host);
                let b16 = to_half_bits(d, &mut b_host);
                (
                    DevBuf::Half(st.clone_htod(&a16).map_err(drv("upload A"))?),
                    DevBuf::Half(st.clone_htod(&b16).map_err(drv("upload B"))?),
                    DevBuf::Half(st.alloc_zeros::<u16>(bt * m * n).map_err(drv("alloc C"))?),
                )
            }
        };
        Ok(GemmOperands {
            g: g.clone(),
            a,
            b,
            c: std::cell::RefCell::new(c),
            a_host,
            b_host,
            io_type,
            compute,
        })
    }

    /// Enqueues `C = A * B` (row-major) as the column-major product `C^T = B^T A^T`: cuBLAS sees an `n x m` result,
    /// its first operand is B (`n x k`, ld `n`), its second is A (`k x m`, ld `k`); no transposes.
    fn run(&self, rt: &CudaRuntime) -> Result<(), Error> {
        let g = &self.g;
        let (m, n, k) = (g.m as i64, g.n as i64, g.k as i64);
        let alpha = 1.0f32;
        let beta = 0.0f32;
        let st = rt.stream();
        let mut c = self.c.borrow_mut();
        let pa = self.a.ptr(st);
        let pb = self.b.ptr(st);
        let pc = c.ptr_mut(st);
        // SAFETY: A holds batch*m*k, B batch*k*n and C batch*m*n elements of `io_type` (allocated in `new`); the
        // leading dimensions and strides below describe exactly those contiguous row-major stacks; dimensions were
        // checked to fit in i32; alpha/beta are f32 as CUBLAS_COMPUTE_32F(_FAST_TF32) requires.
        unsafe {
            blas_result::gemm_strided_batched_ex(
                *rt.gpu.blas().handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha) as *const f32 as *const c_void,
                pb as *const c_void,
                self.io_type,
                n as i32,
                k * n,
                pa as *const c_void,
                self.io_type,
                k as i32,
                m * k,
                (&beta) as *const f32 as *const c_void,
                pc as *mut c_void,
                self.io_type,
                n as i32,
                m * n,
                g.batch as i32,
                self.compute,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("gemm"))
    }

    fn download_c(&self, rt: &CudaRuntime) -> Result<Vec<f32>, Error> {
        let c = self.c.borrow();
        Ok(match &*c {
            DevBuf::F32(s) => rt.stream().clone_dtoh(s).map_err(drv("download C"))?,
            DevBuf::Half(s) => {
                let bits = rt.stream().clone_dtoh(s).map_err(drv("download C"))?;
                bits.into_iter()
                    .map(|h| match self.g.dtype {
                        Dtype::Bf16 => half::bf16::from_bits(h).to_f32(),
                        _ => half::f16::from_bits(h).to_f32(),
                    })
                    .collect()
            }
        })
    }
}

/// Rounds `x` to `dtype` (fp16 or bf16, round to nearest even), replaces it with the rounded values (so checks
/// compare against what the GPU really multiplied) and returns the raw 16-bit patterns.
fn to_half_bits(dtype: Dtype, x: &mut [f32]) -> Vec<u16> {
    x.iter_mut()
        .map(|v| {
            let (bits, back) = match dtype {
                Dtype::Bf16 => {
                    let h = half::bf16::from_f32(*v);
                    (h.to_bits(), h.to_f32())
                }
                _ => {
                    let h = half::f16::from_f32(*v);
                    (h.to_bits(), h.to_f32())
                }
            };
            *v = back;
            bits
        })
        .collect()
}

/// Options for the CUDA backends.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CudaOpts {
    /// How long and how often to time.
    pub timing: TimingOpts,
    /// Device ordinal.
    pub ordinal: usize,
}

impl CudaOpts {
    /// Fast settings for tests.
    pub fn quick() -> Self {
        CudaOpts {
            timing: TimingOpts::quick(),
            ordinal: 0,
        }
    }
}

fn runtime<'a>(slot: &'a mut Option<CudaRuntime>, opts: &CudaOpts) -> Result<&'a CudaRuntime, Error> {
    if slot.is_none() {
        *slot = Some(CudaRuntime::new(opts.ordinal)?);
    }
    slot.as_ref()
        .ok_or_else(|| Error::Backend("CUDA runtime missing".into()))
}

fn available() -> Result<(), String> {
    match gpu_unavailable_reason() {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

macro_rules! cuda_backend {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Default)]
        pub struct $name {
            /// Timing options and device ordinal.
            pub opts: CudaOpts,
            rt: Option<CudaRuntime>,
        }

        impl $name {
            /// With these options (the device is opened on the first run).
            pub fn new(opts: CudaOpts) -> Self {
                $name { opts, rt: None }
            }
        }
    };
}

cuda_backend!(
    CudaGemm,
    "cuBLAS GEMM executor (fp32, tf32, fp16, bf16; fp32 accumulation)."
);
cuda_backend!(
    CudaMem,
    "GPU STREAM executor (copy / triad kernels over `float` arrays)."
);
cuda_backend!(
    CudaLaunch,
    "GPU launch-latency executor (back-to-back empty kernels timed with events)."
);

impl Backend<Gemm> for CudaGemm {
    fn name(&self) -> &str {
        "cuda"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        available()
    }
    fn run(&mut self, w: &Gemm, ctx: &mut RunCtx) -> Result<GemmOutcome, Error> {
        w.validate()?;
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let opts = self.opts;
        let t = runtime(&mut self.rt, &opts)?.time_gemm(w, &opts.timing, ctx.seed)?;
        Ok(GemmOutcome::from_time(w, t.median_s(), t.rel_spread()))
    }
}

impl Backend<MemBandwidth> for CudaMem {
    fn name(&self) -> &str {
        "cuda"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        available()
    }
    fn run(&mut self, w: &MemBandwidth, ctx: &mut RunCtx) -> Result<MemOutcome, Error> {
        w.validate()?;
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let opts = self.opts;
        let t = runtime(&mut self.rt, &opts)?.time_mem(w, &opts.timing, ctx.seed)?;
        Ok(MemOutcome {
            time_s: t.median_s(),
            bytes_per_s: w.bytes_moved() / t.median_s(),
        })
    }
}

impl Backend<LaunchLatency> for CudaLaunch {
    fn name(&self) -> &str {
        "cuda"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        available()
    }
    fn run(&mut self, w: &LaunchLatency, ctx: &mut RunCtx) -> Result<LaunchOutcome, Error> {
        w.validate()?;
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let opts = self.opts;
        let launches = usize::try_from(w.launches).unwrap_or(usize::MAX).min(10_000_000);
        let samples = opts.timing.min_samples.clamp(1, launches);
        let t = runtime(&mut self.rt, &opts)?.time_launches(samples, launches / samples, opts.timing.warmup.max(10))?;
        Ok(LaunchOutcome {
            per_launch_s: t.median_s(),
        })
    }
}

/// The GPU calibration sweep, mirroring [`crate::cpu::gemm_sweep`]: opens device `opts.ordinal` once, times every
/// size in order (seeded by [`crate::cpu::gemm_seed`]`(ctx.seed, g)`), reports progress, and stops with
/// [`Error::Interrupted`] when `ctx` is cancelled. Without a GPU: [`Error::Unsupported`] with the reason.
pub fn cuda_gemm_sweep(sizes: &[Gemm], opts: &CudaOpts, ctx: &RunCtx) -> Result<Vec<(Gemm, Timing)>, Error> {
    for (i, g) in sizes.iter().enumerate() {
        g.validate()
            .map_err(|e| e.map_field(|f| format!("sizes[{i}].{}", f.trim_start_matches("workload."))))?;
    }
    let rt = CudaRuntime::new(opts.ordinal)?;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, g) in sizes.iter().enumerate() {
        if ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        let t = rt.time_gemm(g, &opts.timing, ctx.seed)?;
        out.push((g.clone(), t));
        ctx.report(i as u64 + 1, sizes.len() as u64);
    }
    Ok(out)
}

/// Sizes for `trainlab calibrate --backend cuda`: `(fit, held_out)`. Fit: squares 256..8192 in fp32 and bf16, plus
/// fp16 and tf32 squares (one asymptotic rate per dtype) and bf16 rectangles; held out: squares between the fit
/// sizes and rectangles of other aspect ratios. A few seconds on an H100 (dominated by host-side data generation).
pub fn default_cuda_calibration_sizes() -> (Vec<Gemm>, Vec<Gemm>) {
    let sq = |n: u64, d: Dtype| Gemm {
        dtype: d,
        device: trainlab_core::Device::Cuda,
        ..Gemm::square(n)
    };
    let rect = |m: u64, n: u64, k: u64, d: Dtype| Gemm {
        m,
        n,
        k,
        batch: 1,
        dtype: d,
        device: trainlab_core::Device::Cuda,
    };
    let mut fit = Vec::new();
    for d in [Dtype::Fp32, Dtype::Bf16] {
        fit.extend([256, 512, 1024, 2048, 4096, 8192].into_iter().map(|n| sq(n, d)));
    }
    for d in [Dtype::Fp16, Dtype::Tf32] {
        fit.extend([1024, 4096, 8192].into_iter().map(|n| sq(n, d)));
    }
    fit.extend([rect(8192, 1024, 4096, Dtype::Bf16), rect(1024, 8192, 8192, Dtype::Bf16)]);
    let mut held = Vec::new();
    for d in [Dtype::Fp32, Dtype::Bf16] {
        held.extend([384, 768, 1536, 3072, 6144].into_iter().map(|n| sq(n, d)));
    }
    held.extend([
        sq(2048, Dtype::Fp16),
        sq(2048, Dtype::Tf32),
        rect(4096, 2048, 8192, Dtype::Bf16),
        rect(2048, 8192, 1024, Dtype::Bf16),
        rect(4096, 512, 4096, Dtype::Fp32),
    ]);
    (fit, held)
}

/// Device description of GPU `ordinal` for provenance, or the reason none is usable.
pub fn cuda_device_description(ordinal: usize) -> Result<String, Error> {
    Ok(CudaRuntime::new(ordinal)?.device_description())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the GPU or prints why the test is skipped.
    fn gpu_or_skip() -> Option<CudaRuntime> {
        if let Some(why) = gpu_unavailable_reason() {
            println!("skipped: {why}");
            return None;
        }
        match CudaRuntime::new(0) {
            Ok(rt) => Some(rt),
            Err(e) => panic!("a GPU was reported available but could not be opened: {e}"),
        }
    }

    #[test]
    fn probe_never_panics_and_backends_report_reason() {
        let avail = gpu_available();
        assert_eq!(avail, gpu_unavailable_reason().is_none());
        let b = CudaGemm::default();
        assert_eq!(Backend::<Gemm>::available(&b).is_ok(), avail);
        if !avail {
            let mut ctx = RunCtx::new(Seed(1));
            let e = CudaGemm::default().run(&Gemm::square(64), &mut ctx).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            let e = cuda_gemm_sweep(&[Gemm::square(64)], &CudaOpts::quick(), &ctx).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            println!("skipped: {}", gpu_unavailable_reason().unwrap_or_default());
        }
    }

    #[test]
    fn calibration_sizes_are_disjoint_and_valid() {
        let (fit, held) = default_cuda_calibration_sizes();
        for g in fit.iter().chain(&held) {
            g.validate().unwrap();
        }
        for h in &held {
            assert!(!fit.contains(h), "{}", h.label());
        }
        for d in [Dtype::Fp32, Dtype::Tf32, Dtype::Fp16, Dtype::Bf16] {
            assert!(fit.iter().filter(|g| g.dtype == d).count() >= 3, "{d:?}");
        }
    }

    #[test]
    fn half_rounding_is_round_to_nearest() {
        let mut x = vec![1.0f32, 1.0 + 1.0 / 4096.0, -2.5, 1.0 + 3.0 / 512.0];
        let bits = to_half_bits(Dtype::Bf16, &mut x);
        assert_eq!(bits[0], 0x3F80);
        assert_eq!(x[1], 1.0); // below half an ulp of bf16 at 1.0 (2^-8)
        assert_eq!(x[2], -2.5);
        let mut y = vec![1.0f32 + 1.0 / 4096.0];
        to_half_bits(Dtype::Fp16, &mut y);
        assert_eq!(y[0], 1.0); // a quarter of an fp16 ulp (2^-10) at 1.0 rounds down
    }

    #[test]
    fn gpu_stream_kernels_match_cpu() {
        let Some(rt) = gpu_or_skip() else { return };
        let worst = rt.stream_check(1_000_003, Seed(3)).unwrap();
        assert!(worst < 1e-6, "triad relative error {worst}");
        let w = MemBandwidth {
            bytes: 64 << 20,
            kernel: MemKernel::Copy,
            device: Default::default(),
        };
        let t = rt.time_mem(&w, &TimingOpts::quick(), Seed(1)).unwrap();
        let bw = w.bytes_moved() / t.median_s();
        println!("{}: copy 64 MiB: {:.0} GB/s", rt.device_description(), bw / 1e9);
        assert!(bw > 1e10 && bw < 2e13, "{bw}");
    }

    #[test]
    fn gpu_empty_kernel_launches() {
        let Some(_rt) = gpu_or_skip() else { return };
        let mut ctx = RunCtx::new(Seed(1));
        let o = CudaLaunch::new(CudaOpts::quick())
            .run(
                &LaunchLatency {
                    launches: 3000,
                    device: Default::default(),
                },
                &mut ctx,
            )
            .unwrap();
        println!("empty kernel: {:.2} us per launch", o.per_launch_s * 1e6);
        assert!(o.per_launch_s > 1e-8 && o.per_launch_s < 1e-3, "{}", o.per_launch_s);
    }

    #[test]
    fn gpu_gemm_matches_cpu_per_dtype() {
        let Some(rt) = gpu_or_skip() else { return };
        for (d, bound) in [
            (Dtype::Fp32, 1e-5),
            (Dtype::Tf32, 5e-3),
            (Dtype::Fp16, 2e-3),
            (Dtype::Bf16, 1e-2),
        ] {
            let g = Gemm {
                m: 96,
                n: 80,
                k: 256,
                batch: 2,
                dtype: d,
                device: Default::default(),
            };
            let err = rt.gemm_check(&g, Seed(9)).unwrap();
            println!("{}: normwise relative error {err:.2e} (bound {bound:.0e})", g.label());
            assert!(err < bound, "{}: {err}", g.label());
            assert!(
                err > 0.0 || d == Dtype::Fp32,
                "{}: exact agreement is suspicious",
                g.label()
            );
        }
        let fp8 = Gemm {
            dtype: Dtype::Fp8,
            ..Gemm::square(64)
        };
        assert!(matches!(rt.gemm_check(&fp8, Seed(1)), Err(Error::Unsupported(_))));
    }

    #[test]
    fn gpu_gemm_backend_and_sweep() {
        let Some(_rt) = gpu_or_skip() else { return };
        let mut ctx = RunCtx::new(Seed(1));
        let g = Gemm {
            dtype: Dtype::Bf16,
            ..Gemm::square(4096)
        };
        let o = CudaGemm::new(CudaOpts::quick()).run(&g, &mut ctx).unwrap();
        println!("{}: {:.1} TFLOP/s", g.label(), o.flops_per_s / 1e12);
        assert!(o.flops_per_s > 1e12 && o.flops_per_s < 5e15, "{}", o.flops_per_s);
        let out = cuda_gemm_sweep(&[Gemm::square(256), Gemm::square(512)], &CudaOpts::quick(), &ctx).unwrap();
        assert_eq!(out.len(), 2);
    }
}

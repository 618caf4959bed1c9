//! Hardware descriptions: GPUs, links and clusters. Presets with sources live in `trainlab-datasets`.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Numeric formats a kernel can run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// IEEE binary32.
    Fp32,
    /// TensorFloat-32 tensor-core math on fp32 storage.
    Tf32,
    /// IEEE binary16.
    Fp16,
    /// bfloat16.
    Bf16,
    /// 8-bit floating point (E4M3/E5M2).
    Fp8,
}

impl Dtype {
    /// Storage bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Fp32 | Dtype::Tf32 => 4,
            Dtype::Fp16 | Dtype::Bf16 => 2,
            Dtype::Fp8 => 1,
        }
    }
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Tf32 => "tf32",
            Dtype::Fp16 => "fp16",
            Dtype::Bf16 => "bf16",
            Dtype::Fp8 => "fp8",
        }
    }
}

/// Where a microbenchmark (a GEMM, a memory kernel, a launch) runs: a part of the workload, so that an answer on
/// the CPU is never compared with one on the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// This machine's CPU.
    #[default]
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

impl Device {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// One GPU model, from its vendor datasheet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Preset name, e.g. `h100-sxm`.
    pub name: String,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// Dense (no sparsity) peak FLOP/s per data type.
    pub peak_flops: BTreeMap<Dtype, f64>,
    /// Memory bandwidth in bytes/s.
    pub hbm_bandwidth_bytes_per_s: f64,
    /// NVLink bandwidth per GPU per direction, bytes/s (0 for PCIe-only parts).
    pub nvlink_bandwidth_bytes_per_s: f64,
    /// Board power in watts.
    pub tdp_watts: f64,
    /// Where the numbers come from.
    pub source: String,
    /// Streaming-multiprocessor limits and host link, for kernel-level models (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm: Option<SmSpec>,
}

/// Per-SM resource limits of one GPU (CUDA C Programming Guide, "Technical Specifications per Compute
/// Capability"; the allocation granularities of the CUDA Occupancy Calculator), the SM count and the host link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmSpec {
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Resident threads per SM.
    pub max_threads_per_sm: u32,
    /// Resident blocks per SM.
    pub max_blocks_per_sm: u32,
    /// Threads per block.
    pub max_threads_per_block: u32,
    /// 32-bit registers per SM.
    pub registers_per_sm: u32,
    /// Registers per thread.
    pub max_registers_per_thread: u32,
    /// Register allocation unit per warp (registers).
    pub register_alloc_unit: u32,
    /// Shared memory per SM usable by blocks, bytes (the largest carve-out).
    pub shared_mem_per_sm_bytes: u32,
    /// Shared memory per block, bytes.
    pub max_shared_mem_per_block_bytes: u32,
    /// Shared memory the runtime reserves per block, bytes (1 KiB from compute capability 8.0).
    pub reserved_shared_mem_per_block_bytes: u32,
    /// Shared memory allocation unit, bytes.
    pub shared_mem_alloc_unit_bytes: u32,
    /// Host link (PCIe) bandwidth per direction, bytes/s.
    pub pcie_bytes_per_s: f64,
}

impl GpuSpec {
    /// Peak FLOP/s for `dtype`, falling back to fp32 if the datasheet gives none.
    pub fn peak(&self, dtype: Dtype) -> f64 {
        self.peak_flops
            .get(&dtype)
            .or_else(|| self.peak_flops.get(&Dtype::Fp32))
            .copied()
            .unwrap_or(0.0)
    }
}

/// A network tier: per-GPU unidirectional bandwidth and per-message latency (the alpha-beta model's beta and alpha).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Bytes/s each GPU can send on this tier.
    pub bandwidth_bytes_per_s: f64,
    /// Per-hop latency in seconds.
    pub latency_s: f64,
}

/// A homogeneous cluster: `nodes` nodes of `gpus_per_node` GPUs, an intra-node tier and an inter-node tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The GPU model.
    pub gpu: GpuSpec,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// Number of nodes.
    pub nodes: u32,
    /// NVLink/NVSwitch tier.
    pub intra: LinkSpec,
    /// Scale-out network tier (per GPU: e.g. one 400 Gb/s NIC per GPU = 50e9 B/s).
    pub inter: LinkSpec,
}

impl ClusterSpec {
    /// Checks node counts and network tiers; `prefix` is the field path of the cluster (e.g. `workload.cluster`).
    pub fn validate(&self, prefix: &str) -> Result<(), crate::Error> {
        use crate::error::check;
        check::at_least(&format!("{prefix}.nodes"), self.nodes as u64, 1)?;
        check::at_least(&format!("{prefix}.gpus_per_node"), self.gpus_per_node as u64, 1)?;
        for (tier, link) in [("intra", &self.intra), ("inter", &self.inter)] {
            check::positive(
                &format!("{prefix}.{tier}.bandwidth_bytes_per_s"),
                link.bandwidth_bytes_per_s,
            )?;
            check::non_negative(&format!("{prefix}.{tier}.latency_s"), link.latency_s)?;
        }
        Ok(())
    }

    /// Total GPUs.
    pub fn gpus(&self) -> u64 {
        self.gpus_per_node as u64 * self.nodes as u64
    }
}

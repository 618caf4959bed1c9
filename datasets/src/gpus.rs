//! GPU presets from vendor datasheets, and DGX/HGX-style cluster defaults.
//!
//! Every number carries its source. Peak rates are **dense** (no 2:4 sparsity), per GPU. NVLink bandwidth is per
//! direction (the datasheets quote the bidirectional total, which is halved here). The network tiers (latency,
//! NIC speed) are assumptions stated in [`cluster`], not datasheet values.
use std::collections::BTreeMap;
use trainlab_core::{ClusterSpec, Dtype, Error, GpuSpec, LinkSpec, SmSpec};

const TFLOPS: f64 = 1e12;
const GB: f64 = 1e9;

struct Preset {
    name: &'static str,
    memory_gib: u64,
    rates_tflops: &'static [(Dtype, f64)],
    hbm_gb_s: f64,
    nvlink_total_gb_s: f64,
    tdp_w: f64,
    nic_gbit_s: f64,
    source: &'static str,
    sm: Option<SmPreset>,
}

/// Per-SM limits of a compute capability (CUDA C Programming Guide, "Technical Specifications per Compute
/// Capability"; allocation units from the CUDA Occupancy Calculator spreadsheet), the SM count of the part (its
/// datasheet or the architecture whitepaper) and PCIe per direction (datasheet bidirectional figure / 2).
#[derive(Clone, Copy)]
struct SmPreset {
    sms: u32,
    shared_kib_per_sm: u32,
    shared_kib_per_block: u32,
    reserved_shared: u32,
    shared_alloc_unit: u32,
    pcie_gb_s: f64,
}

/// Compute capability 7.0 (V100): 96 KiB shared per SM and per block, no reserved shared memory, 256-byte unit;
/// 80 SMs (Tesla V100 whitepaper); PCIe Gen3 x16 32 GB/s bidirectional (datasheet).
const CC70_V100: SmPreset = SmPreset {
    sms: 80,
    shared_kib_per_sm: 96,
    shared_kib_per_block: 96,
    reserved_shared: 0,
    shared_alloc_unit: 256,
    pcie_gb_s: 16.0,
};
/// Compute capability 8.0 (A100): 164 KiB shared per SM, 163 KiB per block, 1 KiB reserved per block, 128-byte
/// unit; 108 SMs (A100 whitepaper); PCIe Gen4 64 GB/s bidirectional (datasheet).
const CC80_A100: SmPreset = SmPreset {
    sms: 108,
    shared_kib_per_sm: 164,
    shared_kib_per_block: 163,
    reserved_shared: 1024,
    shared_alloc_unit: 128,
    pcie_gb_s: 32.0,
};
/// Compute capability 9.0 (H100/H800/H200 SXM): 228 KiB shared per SM, 227 KiB per block, 1 KiB reserved, 128-byte
/// unit; 132 SMs (H100 whitepaper, SXM5); PCIe Gen5 128 GB/s bidirectional (datasheet).
const CC90_HOPPER_SXM: SmPreset = SmPreset {
    sms: 132,
    shared_kib_per_sm: 228,
    shared_kib_per_block: 227,
    reserved_shared: 1024,
    shared_alloc_unit: 128,
    pcie_gb_s: 64.0,
};

impl SmPreset {
    /// The limits common to compute capabilities 7.0 to 9.0: 2,048 threads, 32 blocks and 64 K registers per SM,
    /// 1,024 threads per block, 255 registers per thread, registers allocated per warp in units of 256.
    fn spec(self) -> SmSpec {
        SmSpec {
            sms: self.sms,
            max_threads_per_sm: 2048,
            max_blocks_per_sm: 32,
            max_threads_per_block: 1024,
            registers_per_sm: 65536,
            max_registers_per_thread: 255,
            register_alloc_unit: 256,
            shared_mem_per_sm_bytes: self.shared_kib_per_sm * 1024,
            max_shared_mem_per_block_bytes: self.shared_kib_per_block * 1024,
            reserved_shared_mem_per_block_bytes: self.reserved_shared,
            shared_mem_alloc_unit_bytes: self.shared_alloc_unit,
            pcie_bytes_per_s: self.pcie_gb_s * GB,
        }
    }
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "v100-32gb",
        memory_gib: 32,
        rates_tflops: &[(Dtype::Fp32, 15.7), (Dtype::Fp16, 125.0)],
        hbm_gb_s: 900.0,
        nvlink_total_gb_s: 300.0,
        tdp_w: 300.0,
        nic_gbit_s: 100.0,
        source: "NVIDIA Tesla V100 GPU Accelerator datasheet (SXM2): 15.7 TFLOPS FP32, 125 TFLOPS tensor, 32 GB HBM2 \
                 900 GB/s, NVLink 300 GB/s, 300 W. No BF16 (falls back to FP32 rate).",
        sm: Some(CC70_V100),
    },
    Preset {
        name: "a100-80gb",
        memory_gib: 80,
        rates_tflops: &[
            (Dtype::Fp32, 19.5),
            (Dtype::Tf32, 156.0),
            (Dtype::Fp16, 312.0),
            (Dtype::Bf16, 312.0),
        ],
        hbm_gb_s: 2039.0,
        nvlink_total_gb_s: 600.0,
        tdp_w: 400.0,
        nic_gbit_s: 200.0,
        source: "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB): 19.5 TFLOPS FP32, 156 TF32, 312 BF16/FP16 dense, \
                 80 GB HBM2e 2,039 GB/s, NVLink 600 GB/s, 400 W.",
        sm: Some(CC80_A100),
    },
    Preset {
        name: "h100-sxm",
        memory_gib: 80,
        rates_tflops: &[
            (Dtype::Fp32, 67.0),
            (Dtype::Tf32, 494.7),
            (Dtype::Fp16, 989.4),
            (Dtype::Bf16, 989.4),
            (Dtype::Fp8, 1978.9),
        ],
        hbm_gb_s: 3350.0,
        nvlink_total_gb_s: 900.0,
        tdp_w: 700.0,
        nic_gbit_s: 400.0,
        source: "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 67 TFLOPS FP32, 989 TF BF16/FP16 dense (1,979 with \
                 sparsity), 1,979 FP8 dense, 80 GB HBM3 3.35 TB/s, NVLink 900 GB/s, up to 700 W.",
        sm: Some(CC90_HOPPER_SXM),
    },
    Preset {
        name: "h800",
        memory_gib: 80,
        rates_tflops: &[
            (Dtype::Fp32, 67.0),
            (Dtype::Tf32, 494.7),
            (Dtype::Fp16, 989.4),
            (Dtype::Bf16, 989.4),
            (Dtype::Fp8, 1978.9),
        ],
        hbm_gb_s: 3350.0,
        nvlink_total_gb_s: 400.0,
        tdp_w: 700.0,
        nic_gbit_s: 400.0,
        source: "NVIDIA H800 SXM5 product brief: H100 SXM compute and 80 GB HBM3 3.35 TB/s, NVLink reduced to \
                 400 GB/s, 700 W.",
        sm: Some(CC90_HOPPER_SXM),
    },
    Preset {
        name: "h200",
        memory_gib: 141,
        rates_tflops: &[
            (Dtype::Fp32, 67.0),
            (Dtype::Tf32, 494.7),
            (Dtype::Fp16, 989.4),
            (Dtype::Bf16, 989.4),
            (Dtype::Fp8, 1978.9),
        ],
        hbm_gb_s: 4800.0,
        nvlink_total_gb_s: 900.0,
        tdp_w: 700.0,
        nic_gbit_s: 400.0,
        source: "NVIDIA H200 Tensor Core GPU datasheet (SXM): H100 SXM compute (989 TF BF16 dense), 141 GB HBM3e \
                 4.8 TB/s, NVLink 900 GB/s, up to 700 W.",
        sm: Some(CC90_HOPPER_SXM),
    },
];

/// Names of all presets.
pub fn names() -> Vec<&'static str> {
    PRESETS
        .iter()
        .map(|p| p.name)
        .chain(std::iter::once(HOST_CPU.name))
        .collect()
}

/// The host CPU as a "device" preset, for workloads that a real CPU run answers (an MoE layer timed on this CPU).
/// Not a datasheet: the documented guess of `trainlab_models::roofline::default_cpu_profile` for a 2-core AVX2 VM
/// (about 130 GFLOP/s sustained fp32 for two cores, 12 GB/s DRAM); `trainlab calibrate` replaces it with
/// measurements.
const HOST_CPU: Preset = Preset {
    name: "cpu",
    memory_gib: 24,
    rates_tflops: &[
        (Dtype::Fp32, 0.13),
        (Dtype::Tf32, 0.13),
        (Dtype::Fp16, 0.13),
        (Dtype::Bf16, 0.13),
    ],
    hbm_gb_s: 12.0,
    nvlink_total_gb_s: 0.0,
    tdp_w: 65.0,
    nic_gbit_s: 10.0,
    source: "not a datasheet: a documented guess for a 2-core AVX2 machine (2 FMA x 8 fp32 lanes x 2 FLOP x 3 GHz \
             per core, ~70% sustained; ~12 GB/s DRAM); calibrate to replace it",
    sm: None,
};

/// The preset called `name` (case-insensitive; `h100` is accepted for `h100-sxm`).
pub fn preset(name: &str) -> Option<GpuSpec> {
    let key = name.to_ascii_lowercase();
    let key = match key.as_str() {
        "h100" | "h100-sxm5" => "h100-sxm",
        "a100" | "a100-sxm" => "a100-80gb",
        "v100" => "v100-32gb",
        "h200-sxm" => "h200",
        k => k,
    };
    PRESETS
        .iter()
        .chain(std::iter::once(&HOST_CPU))
        .find(|p| p.name == key)
        .map(|p| GpuSpec {
            name: p.name.to_string(),
            memory_bytes: p.memory_gib << 30,
            peak_flops: p
                .rates_tflops
                .iter()
                .map(|(d, r)| (*d, r * TFLOPS))
                .collect::<BTreeMap<_, _>>(),
            hbm_bandwidth_bytes_per_s: p.hbm_gb_s * GB,
            nvlink_bandwidth_bytes_per_s: p.nvlink_total_gb_s * GB / 2.0,
            tdp_watts: p.tdp_w,
            source: p.source.to_string(),
            sm: p.sm.map(SmPreset::spec),
        })
}

fn nic_bytes_per_s(name: &str) -> f64 {
    PRESETS
        .iter()
        .chain(std::iter::once(&HOST_CPU))
        .find(|p| p.name == name)
        .map(|p| p.nic_gbit_s)
        .unwrap_or(400.0)
        * 1e9
        / 8.0
}

/// Per-hop latency assumed for the NVLink/NVSwitch tier (seconds). An assumption of the order NCCL's tuning tables
/// use for intra-node rings, not a datasheet value.
pub const INTRA_LATENCY_S: f64 = 3e-6;
/// Per-hop latency assumed for the scale-out (InfiniBand/RoCE) tier, seconds. Assumption, as above.
pub const INTER_LATENCY_S: f64 = 8e-6;

/// A homogeneous HGX/DGX-style cluster of `nodes` x `gpus_per_node` GPUs of preset `gpu`: the intra-node tier runs at
/// the GPU's NVLink rate, the inter-node tier at one NIC per GPU (400 Gb/s for Hopper, 200 Gb/s HDR for A100,
/// 100 Gb/s EDR for V100; assumptions of the usual DGX configurations).
pub fn cluster(gpu: &str, nodes: u32, gpus_per_node: u32) -> Result<ClusterSpec, Error> {
    let spec = preset(gpu).ok_or_else(|| {
        Error::invalid(
            "cluster.gpu",
            format!("\"{gpu}\""),
            "unknown GPU preset",
            format!("use one of: {}", names().join(", ")),
        )
    })?;
    if nodes == 0 {
        return Err(Error::invalid(
            "cluster.nodes",
            nodes,
            "must be at least 1",
            "set nodes >= 1",
        ));
    }
    if gpus_per_node == 0 {
        return Err(Error::invalid(
            "cluster.gpus_per_node",
            gpus_per_node,
            "must be at least 1",
            "set it to 8",
        ));
    }
    let nvlink = if spec.nvlink_bandwidth_bytes_per_s > 0.0 {
        spec.nvlink_bandwidth_bytes_per_s
    } else {
        32e9
    };
    Ok(ClusterSpec {
        intra: LinkSpec {
            bandwidth_bytes_per_s: nvlink,
            latency_s: INTRA_LATENCY_S,
        },
        inter: LinkSpec {
            bandwidth_bytes_per_s: nic_bytes_per_s(&spec.name),
            latency_s: INTER_LATENCY_S,
        },
        gpu: spec,
        gpus_per_node,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_sources_and_sane_numbers() {
        for n in names().into_iter().filter(|n| *n != "cpu") {
            let g = preset(n).unwrap();
            assert!(!g.source.is_empty());
            assert!(g.memory_bytes >= 32 << 30);
            assert!(g.peak(Dtype::Fp32) > 1e13);
            assert!(g.peak(Dtype::Fp16) > g.peak(Dtype::Fp32));
        }
        let h = preset("H100").unwrap();
        assert_eq!(h.peak(Dtype::Bf16), 989.4e12);
        assert_eq!(h.nvlink_bandwidth_bytes_per_s, 450e9);
        assert_eq!(preset("h200").unwrap().memory_bytes, 141 << 30);
    }

    #[test]
    fn cluster_defaults_and_errors() {
        let c = cluster("h100-sxm", 128, 8).unwrap();
        assert_eq!(c.gpus(), 1024);
        assert_eq!(c.inter.bandwidth_bytes_per_s, 50e9);
        let e = cluster("tpu-v5", 1, 8).unwrap_err().to_string();
        assert!(e.contains("cluster.gpu") && e.contains("h100-sxm"), "{e}");
        assert!(cluster("h100", 0, 8).is_err());
    }
}

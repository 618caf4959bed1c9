#!/usr/bin/env bash
# GPU check for trainlab: one prepared run on a GPU machine (CUDA 13, driver 580, PyTorch; no Rust, no network).
# Nothing is built on the GPU machine. See /work/shared/design/GPU.md.
#
# 1. On the build machine (x86-64, with Rust), stage the binaries into ./gpu-bin/ (at most 64 MiB travels):
#        scripts/gpu-check.sh --stage
#    which runs
#        cargo build --profile gpu --bin trainlab          # -> target/gpu/trainlab
#        cargo test  --profile gpu -p trainlab-executors --no-run                 # -> target/gpu/deps/trainlab_executors-*
#    and copies the `trainlab` binary and the executors' test executable (as gpu-bin/trainlab_executors-tests).
# 2. On the GPU machine, from the repository root:
#        scripts/gpu-check.sh OUTDIR
#    It prints the CUDA libraries found, exports LD_LIBRARY_PATH, runs nvidia-smi, the executors' tests (the CUDA
#    tests check copy/triad/GEMM results against the CPU and print measured rates; among them
#    moe::cuda::tests::gpu_forward_backward_matches_cpu_or_skips checks the MoE layer's GPU output and every
#    gradient against the CPU layer and prints per-phase and per-expert times, copied to moe-cuda.txt;
#    moe::cuda::tests::moe_kernels_compile_with_nvrtc_when_present compiles the MoE kernels;
#    recsys::cuda::tests::gpu_step_matches_cpu_or_skips checks the recommender step against the CPU executor),
#    the recsys_step section (`trainlab run` of picasso-wdl on the cuda backend with PICASSO's switches -> recsys-cuda.csv),
#    `trainlab calibrate --backend cuda`, and PyTorch matmul/copy ceilings on the same card. Results (txt/CSV/JSON)
#    land in OUTDIR; commit them under datasets/calibration/<date>-<device>/ with the SETUP.txt written here.
set -uo pipefail

BIN_DIR="${GPU_BIN:-./gpu-bin}"

if [[ "${1:-}" == "--stage" ]]; then
    set -e
    mkdir -p "$BIN_DIR"
    cargo build --profile gpu --bin trainlab
    cp target/gpu/trainlab "$BIN_DIR/trainlab"
    exe=$(cargo test --profile gpu -p trainlab-executors --no-run --message-format=json 2>/dev/null |
        grep -o '"executable":"[^"]*trainlab_executors-[^"]*"' | head -n 1 | sed 's/"executable":"\(.*\)"/\1/')
    if [[ -z "$exe" ]]; then
        echo "could not find the trainlab-executors test executable" >&2
        exit 1
    fi
    cp "$exe" "$BIN_DIR/trainlab_executors-tests"
    git rev-parse HEAD >"$BIN_DIR/REVISION" 2>/dev/null || echo unknown >"$BIN_DIR/REVISION"
    du -sh "$BIN_DIR"
    exit 0
fi

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR   (on the GPU machine)   |   $0 --stage   (on the build machine)" >&2
    exit 2
fi
OUT="$1"
mkdir -p "$OUT"
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
step() { echo; echo "=== $* ==="; }

step "CUDA libraries known to the loader"
ldconfig -p | grep -E 'libcuda|nvrtc|cublas' | tee "$OUT/ldconfig.txt"

step "library folders"
candidates=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
if command -v python3 >/dev/null; then
    while IFS= read -r d; do candidates+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        print(d)
PY
)
fi
libpath=""
for d in "${candidates[@]}"; do
    if [[ -d "$d" ]] && ls "$d" | grep -qE 'nvrtc|cublas|cudart'; then
        echo "using $d"
        libpath="${libpath:+$libpath:}$d"
    fi
done
export LD_LIBRARY_PATH="${libpath}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$OUT/ld_library_path.txt"

step "nvidia-smi"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.csv"
DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)

step "executors tests (CUDA tests compare against the CPU and print rates)"
if [[ -x "$BIN_DIR/trainlab_executors-tests" ]]; then
    timeout 300 "$BIN_DIR/trainlab_executors-tests" --test-threads 1 --nocapture 2>&1 | tee "$OUT/executors-tests.txt"
    echo "exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/executors-tests.txt"
    grep -E '^moe cuda|gpu_forward_backward_matches_cpu_or_skips|moe_kernels_compile' "$OUT/executors-tests.txt" \
        >"$OUT/moe-cuda.txt" || echo "no MoE CUDA lines in the test output" >"$OUT/moe-cuda.txt"
else
    echo "missing $BIN_DIR/trainlab_executors-tests (run '$0 --stage' on the build machine)" | tee "$OUT/executors-tests.txt"
fi

step "recsys_step on the GPU (issue 11): CUDA step vs the CPU executor, then PICASSO's switches one at a time"
# recsys::cuda::tests::gpu_step_matches_cpu_or_skips (in executors-tests.txt above) checks the pooled MLP inputs
# against the CPU executor bit for bit and the updated tables within fp32 rounding; its "recsys cuda" lines are
# copied to recsys-cuda.txt. Then `trainlab run picasso-wdl --backend cuda` on the baseline and with packing,
# interleaving (4 micro-batches, 2 streams) and a 5% static top-k cache turned on one at a time and all together
# (the step the cuda backend answers is scaled to its budgets: 2 GiB of host tables, 1 GiB of gathered rows);
# one CSV row each in recsys-cuda.csv.
grep -E '^recsys cuda|gpu_step_matches_cpu_or_skips|recsys_kernels_compile' "$OUT/executors-tests.txt" \
    >"$OUT/recsys-cuda.txt" 2>/dev/null || echo "no recsys CUDA lines in the test output" >"$OUT/recsys-cuda.txt"
if [[ -x "$BIN_DIR/trainlab" ]]; then
    base=scenarios/picasso-wdl.toml
    echo "variant,exit,step_time_s,samples_per_s,kernels,sm_busy,hbm_util,pcie_util,cache_hit_rate,stage_embedding_s,stage_mlp_s,stage_copy_s,stage_launch_s" \
        >"$OUT/recsys-cuda.csv"
    for v in baseline packing interleaving cache all; do
        f="$OUT/recsys-$v.toml"
        case $v in
            baseline) sed 's/^name = .*/name = "picasso-wdl-cuda-baseline"/' "$base" >"$f" ;;
            packing) sed -e 's/^packing = false/packing = true/' -e 's/^name = .*/name = "picasso-wdl-cuda-packing"/' "$base" >"$f" ;;
            interleaving) sed -e 's/^micro_batches = 1/micro_batches = 4/' -e 's/^streams = 1/streams = 2/' \
                -e 's/^name = .*/name = "picasso-wdl-cuda-interleaving"/' "$base" >"$f" ;;
            cache) sed -e 's/fraction = 0.0/fraction = 0.05/' -e 's/^name = .*/name = "picasso-wdl-cuda-cache"/' "$base" >"$f" ;;
            all) sed -e 's/^packing = false/packing = true/' -e 's/^micro_batches = 1/micro_batches = 4/' \
                -e 's/^streams = 1/streams = 2/' -e 's/fraction = 0.0/fraction = 0.05/' \
                -e 's/^name = .*/name = "picasso-wdl-cuda-all"/' "$base" >"$f" ;;
        esac
        timeout 300 "$BIN_DIR/trainlab" run "$f" --backend cuda --json >"$OUT/recsys-$v.json" 2>"$OUT/recsys-$v.err"
        rc=$?
        python3 - "$OUT/recsys-$v.json" "$v" "$rc" >>"$OUT/recsys-cuda.csv" <<'PY' || echo "$v,$rc" >>"$OUT/recsys-cuda.csv"
import json, sys
path, variant, rc = sys.argv[1:4]
names = ["step_time", "samples_per_s", "kernels", "sm_busy", "hbm_util", "pcie_util", "cache_hit_rate",
         "stage.embedding", "stage.mlp", "stage.copy", "stage.launch"]
try:
    m = {x["name"]: x["value"] for x in json.load(open(path))["metrics"]}
except Exception:
    m = {}
print(",".join([variant, rc] + [str(m.get(n, "")) for n in names]))
PY
    done
    cat "$OUT/recsys-cuda.csv"
else
    echo "missing $BIN_DIR/trainlab" | tee "$OUT/recsys-cuda.csv"
fi

step "trainlab calibrate --backend cuda"
if [[ -x "$BIN_DIR/trainlab" ]]; then
    timeout 300 "$BIN_DIR/trainlab" calibrate --backend cuda --out "$OUT" 2>&1 | tee "$OUT/calibrate.txt"
    echo "exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/calibrate.txt"
else
    echo "missing $BIN_DIR/trainlab" | tee "$OUT/calibrate.txt"
fi

step "PyTorch ceilings (matmul per dtype, device-to-device copy), CUDA events, medians"
timeout 300 python3 - "$OUT" <<'PY' 2>&1 | tee "$OUT/torch.txt"
import csv, json, statistics, sys
import torch

out = sys.argv[1]
dev = torch.device("cuda")
torch.manual_seed(0)

def median_seconds(fn, warmup=5, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return statistics.median(ts)

rows = []
for name, dtype, tf32 in [("fp32", torch.float32, False), ("tf32", torch.float32, True),
                          ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)]:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    for n in (2048, 4096, 8192):
        a = (torch.rand(n, n, device=dev) * 2 - 1).to(dtype)  # uniform [-1, 1): never zeros
        b = (torch.rand(n, n, device=dev) * 2 - 1).to(dtype)
        t = median_seconds(lambda: torch.matmul(a, b))
        rows.append({"kind": "matmul", "dtype": name, "size": n, "time_s": t,
                     "rate": 2 * n ** 3 / t, "unit": "flop_per_s"})
        print(f"matmul {name} {n}: {2 * n ** 3 / t / 1e12:.1f} TFLOP/s")
        del a, b
torch.backends.cuda.matmul.allow_tf32 = False
for nbytes in (256 << 20, 1 << 30):
    x = torch.rand(nbytes // 4, device=dev)
    y = torch.empty_like(x)
    t = median_seconds(lambda: y.copy_(x))
    rows.append({"kind": "copy", "dtype": "fp32", "size": nbytes, "time_s": t,
                 "rate": 2 * nbytes / t, "unit": "bytes_per_s"})  # read + write, STREAM convention
    print(f"copy {nbytes >> 20} MiB: {2 * nbytes / t / 1e12:.2f} TB/s")
    del x, y

with open(f"{out}/torch_ceilings.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["kind", "dtype", "size", "time_s", "rate", "unit"])
    w.writeheader()
    w.writerows(rows)
with open(f"{out}/torch_ceilings.json", "w") as f:
    json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "rows": rows}, f, indent=2)
PY

cat >"$OUT/SETUP.txt" <<EOF
trainlab GPU check
started:   $START
finished:  $(date -u +%Y-%m-%dT%H:%M:%SZ)
device:    $DEVICE
host:      $(hostname)
command:   $0 $OUT
revision:  $(cat "$BIN_DIR/REVISION" 2>/dev/null || echo unknown)
libraries: LD_LIBRARY_PATH=$LD_LIBRARY_PATH
files:     ldconfig.txt nvidia-smi.txt gpu.csv executors-tests.txt moe-cuda.txt recsys-cuda.txt recsys-cuda.csv
           recsys-*.json calibrate.txt (+ calibrate outputs)
           torch.txt torch_ceilings.csv torch_ceilings.json
EOF
echo
echo "results in $OUT"

//! The `rlhf_iteration` closed form against published RLHF iteration times (`datasets/data/published/rlhf_iteration.csv`:
//! OpenRLHF's benchmark table and DeepSpeed-Chat's Table 1, transcribed in notes rlhf-victor.md §3.2).
//!
//! Every row the tool can express becomes a workload (assumptions in [`workload`]). The systems differ in ways the
//! hardware model does not see, so each gets a per-phase efficiency (`PhaseEfficiency`): a generation efficiency per
//! generation engine (HF `generate`, vLLM, DeepSpeed's Hybrid Engine) and a training efficiency per training stack
//! (DeepSpeed-Chat, OpenRLHF). They are **calibrated** on a named subset and every other row is a prediction:
//! - HF generation and DeepSpeed-Chat training: the OpenRLHF table's DeepSpeed-Chat Llama2-7B row (gen and train),
//!   HF generation at efficiency 1 with a fitted host time per layer of every eager forward
//!   (`RlhfAnalytical::host_s_per_layer`: HF `generate`'s Python loop and ZeRO-3 hooks), no longer an efficiency;
//! - vLLM generation and OpenRLHF training: its OpenRLHF Ray+vLLM Llama2-13B row (gen and train; disaggregated
//!   1:1:2:2:2 on 8 GPUs). Its generation efficiency comes out at 1.55 (1.06 before the engines' calls were
//!   serialised): the model prices that row 55% slower than published at the datasheet HBM roofline, so it
//!   over-prices something there; not an efficiency to read physically. The likeliest part: every sequence is priced
//!   at the published maxima (1,024-token prompt, 1,024-token response), and Llama2-13B (no GQA) reads a KV cache of
//!   0.8 MB per token; the dataset's real lengths are not published (shorter lognormal lengths on every OpenRLHF row
//!   were tried: they bring it to 1.0-1.1 but push the two training efficiencies to 0.07-0.29 and the DeepSpeed-Chat
//!   13B row to -23%; not kept);
//! - Hybrid Engine generation and Table 1's training: its two OPT-13B rows (8 and 64 A100-80GB, e2e only: two
//!   equations, two unknowns).
//!
//! Besides the efficiencies, each system's colocated generation reads the actor's weights its own way
//! (`WeightSource`): HF `generate` on the ZeRO-3 training module gathers every layer at every decode step (and frees
//! its KV cache on return); the Hybrid Engine gathers the whole actor once per generation call and scores with the
//! ZeRO-3 actor and reference (one gather each per call), trained under ZeRO-3 where the layout search has a ZeRO-3
//! row; vLLM holds its own copy. The two eager engines (HF, Hybrid Engine) also pay a kernel-launch floor per decode
//! step (12 launches per layer at the profile's 5 us); vLLM replays CUDA graphs. Table 1's rows follow DeepSpeed-Chat's shipped OPT scripts (per-device generation
//! batch 16 at inference TP 2 on one node, 4 at TP 8 on 64 GPUs).
//!
//! DeepSpeed-Chat's own run in OpenRLHF's table follows the script OpenRLHF ran it with
//! (`benchmark/deepspeed-chat/llama_7b.sh`, `llama_13b.sh`): generation batch 8 (7B) and 2 (13B) per GPU, actor
//! ZeRO-2 and critic ZeRO-3, optimizer offloaded (`--offload`). Every system steps its optimizer once per train batch
//! (`train_batch`). OpenRLHF's rows are read with the table's generation micro-batch (its HF rows' per-GPU batch; for
//! its vLLM rows the prompts each actor rank sends an engine per call) and its Ray rows on the ratio's sum of GPUs
//! (the CSV's header: an earlier transcription had misread both).
//!
//! Published phases are matched as OpenRLHF reports them: its "generation" time is `make_experience` (generation and
//! the scoring forward passes), its "training" time the PPO updates and the weight broadcast. Run with
//! `--nocapture` for the per-row table that README quotes.
use trainlab_core::workloads::dense::TransformerSpec;
use trainlab_core::workloads::rlhf::{Algorithm, Placement, ResponseLength, RlhfIteration, RlhfOutcome};
use trainlab_core::{Backend, Dtype, Error, RunCtx, Seed};
use trainlab_models::rlhf::{PhaseEfficiency, RlhfAnalytical, WeightSource};

const CSV: &str = include_str!("../datasets/data/published/rlhf_iteration.csv");
/// DeepSpeed-Chat Table 1: one epoch of 135,317,504 tokens in iterations of 1,024 pairs of 256 + 256 tokens.
const DSCHAT_ITERATIONS: f64 = 135_317_504.0 / (1024.0 * 512.0);

#[derive(Debug, Clone)]
struct Row {
    line: usize,
    system: String,
    model: String,
    gpus: u64,
    roles: String,
    prompt_len: u64,
    response_len: u64,
    batch: u64,
    /// OpenRLHF's generation `micro_batch_size` (the per-GPU generation batch of its HF `generate` rows).
    gen_micro_batch: Option<u64>,
    gen_s: Option<f64>,
    train_s: Option<f64>,
    e2e_s: f64,
}

fn rows() -> Vec<Row> {
    let mut out = Vec::new();
    let mut header = true;
    for (i, l) in CSV.lines().enumerate() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        if header {
            header = false;
            continue;
        }
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 16, "line {}: {l}", i + 1);
        let num = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
        out.push(Row {
            line: i + 1,
            system: f[2].into(),
            model: f[3].into(),
            gpus: f[5].parse().unwrap(),
            roles: f[6].into(),
            prompt_len: f[7].parse().unwrap(),
            response_len: f[8].parse().unwrap(),
            batch: f[9].parse().unwrap(),
            gen_micro_batch: num(f[10]).map(|b| b as u64),
            gen_s: num(f[11]),
            train_s: num(f[12]),
            e2e_s: f[13].parse().unwrap(),
        });
    }
    out
}

/// Shapes: Llama 2 (Touvron et al. 2023, Table 1 and the released configs), OPT (Zhang et al. 2022, Table 1; FFN 4h,
/// vocabulary 50,272; OPT-350M as DeepSpeed-Chat's critic and reward model).
fn shape(name: &str) -> TransformerSpec {
    let (layers, hidden, heads, kv, ffn, gated, vocab) = match name {
        "llama2-7b" => (32, 4096, 32, None, 11008, true, 32000),
        "llama2-13b" => (40, 5120, 40, None, 13824, true, 32000),
        "llama2-70b" => (80, 8192, 64, Some(8), 28672, true, 32000),
        "opt-350m" => (24, 1024, 16, None, 4096, false, 50272),
        "opt-1.3b" => (24, 2048, 32, None, 8192, false, 50272),
        "opt-6.7b" => (32, 4096, 32, None, 16384, false, 50272),
        "opt-13b" => (40, 5120, 40, None, 20480, false, 50272),
        "opt-30b" => (48, 7168, 56, None, 28672, false, 50272),
        "opt-66b" => (64, 9216, 72, None, 36864, false, 50272),
        "opt-175b" => (96, 12288, 96, None, 49152, false, 50272),
        _ => panic!("no shape for {name}"),
    };
    TransformerSpec {
        name: name.into(),
        layers,
        hidden,
        heads,
        kv_heads: kv,
        ffn_hidden: ffn,
        gated_ffn: gated,
        vocab,
        seq_len: 2048,
    }
}

/// The row as a workload, or why the tool cannot express it. Assumptions: prompts and responses at the published
/// lengths (OpenRLHF's are maxima; the dataset's real lengths are not given); the A100-80GB preset for the A800 (same
/// HBM and peak); one optimizer step per train batch (`train_batch`); colocated when the table gives no role split;
/// OpenRLHF's ratio string in the order ref:reward:critic:actor:vllm (the early 70B script's 2:2:4:4:4 names its roles
/// in that order), its sum the GPUs, vLLM engines at the smallest TP that fits, each decoding one actor rank's
/// generation micro-batch per call; HF `generate` (TP 1) at the table's generation micro-batch
/// per GPU, which must fit beside the training states resident during generation (on the actor's 2 GPUs for the Ray
/// rows without vLLM, 1:1:4:2 read as ref 1, reward 1, critic 4, actor 2, `rollout_gpus = 0`); the Hybrid Engine at its OPT scripts' settings, else the fastest fitting (TP, batch) of 256, 128, ...
fn workload(r: &Row) -> Result<RlhfIteration, String> {
    let actor = shape(&r.model);
    let small = if r.model.starts_with("opt") {
        shape("opt-350m")
    } else {
        actor.clone()
    };
    let placement = match r.roles.as_str() {
        "-" => Placement::Colocated,
        "1:1:2:2:2" | "2:2:4:4:4" => {
            let u = r.gpus / 8;
            Placement::Disaggregated {
                actor_gpus: 2 * u,
                rollout_gpus: 2 * u,
                reference_gpus: u,
                critic_gpus: 2 * u,
                reward_gpus: u,
            }
        }
        // OpenRLHF's Ray placement without vLLM: ref:reward:critic:actor 1:1:4:2 on 8 GPUs, HF `generate` on the
        // actor's 2 training GPUs (`rollout_gpus = 0`), the other roles on their own.
        "1:1:4:2" => Placement::Disaggregated {
            actor_gpus: 2,
            rollout_gpus: 0,
            reference_gpus: 1,
            critic_gpus: 4,
            reward_gpus: 1,
        },
        other => return Err(format!("ratio {other}: not a placement of the table")),
    };
    let hf = matches!(r.system.as_str(), "openrlhf" | "dschat_no_he");
    let cluster = trainlab_datasets::gpus::cluster("a100-80gb", r.gpus.div_ceil(8) as u32, r.gpus.min(8) as u32)
        .map_err(|e| e.to_string())?;
    let base = RlhfIteration {
        algorithm: Algorithm::Ppo,
        actor: actor.clone(),
        reference: Some(actor.clone()),
        critic: Some(small.clone()),
        reward: Some(small),
        prompts: r.batch,
        prompt_len: r.prompt_len,
        response: ResponseLength::Fixed(r.response_len),
        samples_per_prompt: 1,
        ppo_epochs: 1,
        placement,
        generation_batch: 16,
        rollout_tp: 1,
        off_policy: false,
        colocated_engine: Default::default(),
        dtype: Dtype::Bf16,
        cluster,
    };
    // HF `generate` has no tensor parallelism: TP 1. The Hybrid Engine tunes its inference TP and batch ("the
    // largest batch size possible", TP when the model does not fit one GPU: the DeepSpeed-Chat blog): the fastest
    // fitting (TP, batch) at efficiency 1. vLLM: the smallest TP that fits, the largest batch at it.
    if hf {
        // HF `generate` on each GPU at the table's generation micro-batch (the same as `--per_device_generation_batch_size`
        // in the script OpenRLHF's benchmark ran DeepSpeed-Chat with, `benchmark/deepspeed-chat/llama_7b.sh` 8,
        // `llama_13b.sh` 2); an input error if its KV cache does not fit beside the resident training states.
        let mut w = base.clone();
        w.generation_batch = r.gen_micro_batch.expect("OpenRLHF rows give it");
        return model_for(&r.system, &w, PhaseEfficiency::default(), 0.0)
            .run(&w, &mut RunCtx::new(Seed(1)))
            .map(|_| w)
            .map_err(|e| e.to_string());
    }
    if r.system == "openrlhf_vllm" {
        // OpenRLHF's Ray+vLLM experience maker of the benchmark's time (`RemoteExperienceMaker._generate_vllm`): each
        // actor rank sends its micro-batch of prompts to the vLLM engine `rank % engines` and waits. An engine is a
        // plain (synchronous) Ray actor (`@ray.remote class LLMRayActor`, `openrlhf/trainer/ray/vllm_engine.py` of
        // the vLLM 0.2.7-0.3 era), whose `generate` runs vLLM's offline `LLM.generate` to completion; Ray runs a
        // synchronous actor's calls one at a time (its default concurrency group has concurrency 1 for non-async
        // actors: Ray docs, "Limiting Concurrency Per-Method with Concurrency Groups"). So an engine decodes one
        // rank's micro-batch per call and the ranks' calls queue: the engine batch is the micro-batch, not
        // micro-batch x ranks per engine (`vllm_engine_calls_are_serialised` asserts it). Rollout TP: the smallest
        // that fits (the early `examples/scripts/train_ppo_llama_ray_70b.sh`, ratio 2:2:4:4:4 with `--adam_offload`,
        // runs 2 engines at TP 2: the smallest that holds Llama2-70B's 138 GB on 80 GB GPUs).
        let mb = r.gen_micro_batch.expect("OpenRLHF rows give it");
        let Placement::Disaggregated { rollout_gpus, .. } = base.placement else {
            return Err("vLLM rows are disaggregated".into());
        };
        let mut last = String::new();
        for tp in [1u64, 2, 4, 8].into_iter().filter(|t| *t <= rollout_gpus) {
            let mut w = base.clone();
            w.rollout_tp = tp;
            w.generation_batch = mb;
            match model(&r.system, r.gpus, PhaseEfficiency::default()).run(&w, &mut RunCtx::new(Seed(1))) {
                Ok(_) => return Ok(w),
                Err(e) => last = e.to_string(),
            }
        }
        return Err(format!("no layout fits: {last}"));
    }
    let he = r.system == "dschat_he";
    if he {
        // DeepSpeed-Chat's shipped OPT scripts (DeepSpeedExamples, step3 `training_scripts/opt/single_node/run_13b.sh`
        // and `multi_node/run_66b.sh`): one node per-device generation batch 16 at inference TP 2, multi-node 4 at
        // TP 8; the Hybrid Engine gathers the inputs of a TP group, so an engine decodes per-device batch x TP.
        let (tp, per_device) = if r.gpus <= 8 { (2, 16) } else { (8, 4) };
        let mut w = base.clone();
        w.rollout_tp = tp;
        w.generation_batch = per_device * tp;
        // Where that does not fit (OPT-30B on one node: its script is a LoRA variant), the fastest fitting (TP,
        // batch) below ("the largest batch size possible", TP when the model does not fit: the DeepSpeed-Chat blog).
        if model(&r.system, r.gpus, PhaseEfficiency::default())
            .run(&w, &mut RunCtx::new(Seed(1)))
            .is_ok()
        {
            return Ok(w);
        }
    }
    let tps: &[u64] = if hf { &[1] } else { &[1, 2, 4, 8] };
    let mut best: Option<(f64, RlhfIteration)> = None;
    let mut first: Option<String> = None;
    let mut last = String::new();
    for &tp in tps {
        let batches: &[u64] = if hf {
            &[16, 8, 4, 2, 1]
        } else {
            &[256, 128, 64, 32, 16, 8]
        };
        for &b in batches {
            let mut w = base.clone();
            w.rollout_tp = tp;
            w.generation_batch = b;
            match model(&r.system, r.gpus, PhaseEfficiency::default()).run(&w, &mut RunCtx::new(Seed(1))) {
                Ok(o) if he => {
                    let t = o.iteration_time_s();
                    if best.as_ref().is_none_or(|(bt, _)| t < *bt) {
                        best = Some((t, w));
                    }
                }
                Ok(_) => return Ok(w),
                Err(e @ Error::Invalid { .. }) => {
                    // Remember the first failure that is not the search over batch and TP itself, else the last.
                    let t = e.to_string();
                    if !t.contains("generation_batch") && !t.contains("rollout_tp") {
                        first.get_or_insert(t);
                    } else {
                        last = t;
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    if let Some((_, w)) = best {
        return Ok(w);
    }
    Err(format!("no layout fits: {}", first.unwrap_or(last)))
}

/// Where each system's colocated generation reads the actor's weights ([`WeightSource`]): HF `generate` on the
/// ZeRO-3 training module gathers every layer at every step; the Hybrid Engine (pinned parameters, the default)
/// gathers the whole actor once per generation call; vLLM engines hold their own copy, resharded once.
fn model(system: &str, gpus: u64, eff: PhaseEfficiency) -> RlhfAnalytical {
    model_host(system, gpus, eff, 0.0)
}

/// Sequences per optimizer step (`RlhfAnalytical::train_batch`): OpenRLHF's benchmark "train_batch_size: 128" (its
/// DeepSpeed-Chat run too: `llama_7b.sh` 8 per device x 8 GPUs x 2 accumulation steps, `llama_13b.sh` 2 x 8 x 8);
/// DeepSpeed-Chat's OPT scripts step once per `per_device_training_batch_size` x GPUs with no accumulation: 16 x 8
/// on one node (`single_node/run_13b.sh`), 4 x 64 on 64 GPUs (`multi_node/run_66b.sh`).
fn train_batch(system: &str, gpus: u64) -> u64 {
    match system {
        "dschat_he" if gpus > 8 => 4 * gpus,
        "dschat_he" => 16 * gpus,
        _ => 128,
    }
}

/// [`model`] with the eager engines' host seconds per layer per forward (`RlhfAnalytical::host_s_per_layer`).
fn model_host(system: &str, gpus: u64, eff: PhaseEfficiency, host: f64) -> RlhfAnalytical {
    RlhfAnalytical {
        host_s_per_layer: host,
        profile: None,
        efficiency: eff,
        engine: match system {
            "openrlhf" | "dschat_no_he" => WeightSource::GatherPerStep,
            "dschat_he" => WeightSource::GatherPerCall,
            _ => WeightSource::Resharded,
        },
        actor_zero_stage: match system {
            "dschat_he" => Some(3),
            "dschat_no_he" => Some(2),
            _ => None,
        },
        critic_zero_stage: match system {
            "dschat_he" => Some(3),
            "dschat_no_he" => Some(3),
            _ => None,
        },
        // DeepSpeed-Chat's run: `--offload`. OpenRLHF's vLLM rows: `--adam_offload` assumed (the table does not say;
        // without it the 13B actor's training states do not fit its 2 GPUs).
        offload_optimizer: matches!(system, "dschat_no_he" | "openrlhf_vllm"),
        train_batch: Some(train_batch(system, gpus)),
    }
}

fn run(system: &str, w: &RlhfIteration, eff: PhaseEfficiency) -> RlhfOutcome {
    run_host(system, w, eff, 0.0)
}

fn run_host(system: &str, w: &RlhfIteration, eff: PhaseEfficiency, host: f64) -> RlhfOutcome {
    model_for(system, w, eff, host)
        .run(w, &mut RunCtx::new(Seed(1)))
        .unwrap()
}

/// [`model_host`] for the workload `w`: OpenRLHF's Ray rows (disaggregated) offload the optimizer (`--adam_offload`,
/// assumed as for its vLLM rows: in OpenRLHF's early Ray scripts, e.g. `train_ppo_llama_ray_70b.sh`; without it the
/// 13B actor's training states do not fit the 2 GPUs of the 1:1:4:2 ratio).
fn model_for(system: &str, w: &RlhfIteration, eff: PhaseEfficiency, host: f64) -> RlhfAnalytical {
    let mut m = model_host(system, w.cluster.gpus(), eff, host);
    m.offload_optimizer |= system.starts_with("openrlhf") && !matches!(w.placement, Placement::Colocated);
    m
}

/// `(published gen, train)` phases as OpenRLHF splits them, from an outcome.
fn split(o: &RlhfOutcome) -> (f64, f64) {
    (o.prefill_s + o.decode_s + o.experience_s, o.training_s + o.sync_s)
}

fn gen_class(system: &str) -> &'static str {
    match system {
        "openrlhf_vllm" => "vllm",
        "dschat_he" => "hybrid_engine",
        _ => "hf",
    }
}

fn train_class(system: &str) -> &'static str {
    match system {
        "dschat_he" => "deepspeed_chat_table1",
        "dschat_no_he" => "deepspeed_chat_openrlhf_run",
        _ => "openrlhf",
    }
}

struct Fit {
    generation: Vec<(&'static str, f64)>,
    training: Vec<(&'static str, f64)>,
    /// Host seconds per layer per eager forward, per generation engine.
    host: Vec<(&'static str, f64)>,
}

impl Fit {
    fn host(&self, system: &str) -> f64 {
        let g = gen_class(system);
        self.host.iter().find(|x| x.0 == g).unwrap().1
    }

    fn of(&self, system: &str) -> PhaseEfficiency {
        let g = gen_class(system);
        let t = train_class(system);
        PhaseEfficiency {
            generation: self.generation.iter().find(|x| x.0 == g).unwrap().1,
            training: self.training.iter().find(|x| x.0 == t).unwrap().1,
        }
    }
}

/// Solves `gen = G + F·L·h + E/et`, `train = T/et + S` for one OpenRLHF-table row at generation efficiency 1: the
/// training efficiency `et` and the host seconds `h` per layer of each of the `F` eager forwards (prefills and decode
/// steps) of the `L`-layer actor. `F·L` is read off the model as the change of the generation time per unit of `h`.
fn fit_host(system: &str, w: &RlhfIteration, gen_s: f64, train_s: f64) -> (f64, f64) {
    let o = run(system, w, PhaseEfficiency::default());
    let et = o.training_s / (train_s - o.sync_s);
    let g0 = o.prefill_s + o.decode_s;
    let o1 = run_host(system, w, PhaseEfficiency::default(), 1e-3);
    let per_unit = (o1.prefill_s + o1.decode_s - g0) / 1e-3;
    let h = (gen_s - o.experience_s / et - g0) / per_unit;
    (h, et)
}

/// Solves `gen = G/eg + E/et`, `train = T/et + S` for one OpenRLHF-table row.
fn fit_two(system: &str, w: &RlhfIteration, gen_s: f64, train_s: f64) -> (f64, f64) {
    let o = run(system, w, PhaseEfficiency::default());
    let et = o.training_s / (train_s - o.sync_s);
    let eg = (o.prefill_s + o.decode_s) / (gen_s - o.experience_s / et);
    (eg, et)
}

const CALIBRATION: [(&str, &str, u64); 4] = [
    ("dschat_no_he", "llama2-7b", 8),
    ("openrlhf_vllm", "llama2-13b", 8),
    ("dschat_he", "opt-13b", 8),
    ("dschat_he", "opt-13b", 64),
];

fn is_calibration(r: &Row) -> bool {
    CALIBRATION
        .iter()
        .any(|c| c.0 == r.system && c.1 == r.model && c.2 == r.gpus)
}

fn calibrate(rows: &[Row]) -> Fit {
    let find = |i: usize| {
        let c = CALIBRATION[i];
        rows.iter()
            .find(|r| r.system == c.0 && r.model == c.1 && r.gpus == c.2)
            .unwrap()
    };
    let r = find(0);
    let (hf_host, ds) = fit_host(&r.system, &workload(r).unwrap(), r.gen_s.unwrap(), r.train_s.unwrap());
    // The Hybrid Engine's generation runs DeepSpeed-Inference's fused kernels on gathered parameters, without the
    // ZeRO-3 hooks: HF's per-layer host time is not its own. (Charging it the HF constant was tried: its two 13B rows
    // then solve to a negative generation efficiency, -0.26.) Its host time stays in its generation efficiency.
    let he_host = 0.0;
    let r = find(1);
    let (vllm, orl) = fit_two(&r.system, &workload(r).unwrap(), r.gen_s.unwrap(), r.train_s.unwrap());
    // Table 1 gives e2e only: per iteration `p = G·x + (E + T)·y + S` with `x = 1/eg`, `y = 1/et`, solved from
    // its two 13B rows (8 and 64 GPUs: different generation/training mixes).
    let eq = |i: usize| {
        let r = find(i);
        let w = workload(r).unwrap();
        let o = run(&r.system, &w, PhaseEfficiency::default());
        let oh = run_host(&r.system, &w, PhaseEfficiency::default(), he_host);
        let host = oh.prefill_s + oh.decode_s - o.prefill_s - o.decode_s;
        (
            o.prefill_s + o.decode_s,
            o.experience_s + o.training_s,
            r.e2e_s / DSCHAT_ITERATIONS - o.sync_s - host,
        )
    };
    let ((a1, b1, c1), (a2, b2, c2)) = (eq(2), eq(3));
    let det = a1 * b2 - a2 * b1;
    let (x, y) = ((c1 * b2 - c2 * b1) / det, (a1 * c2 - a2 * c1) / det);
    Fit {
        generation: vec![("hf", 1.0), ("vllm", vllm), ("hybrid_engine", 1.0 / x)],
        host: vec![("hf", hf_host), ("vllm", 0.0), ("hybrid_engine", he_host)],
        training: vec![
            ("deepspeed_chat_openrlhf_run", ds),
            ("openrlhf", orl),
            ("deepspeed_chat_table1", 1.0 / y),
        ],
    }
}

/// Relative errors `(e2e, gen, train, generation share)` of a row, or why the tool cannot express it. The generation
/// share is the generation phase's (with experience making, as OpenRLHF splits it) share of generation + training.
type RowError = Result<(f64, f64, f64, f64), String>;

/// Per-row relative errors.
fn errors(rows: &[Row], fit: &Fit) -> Vec<(Row, RowError)> {
    rows.iter()
        .map(|r| {
            let res = workload(r).map(|w| {
                let o = run_host(&r.system, &w, fit.of(&r.system), fit.host(&r.system));
                eprintln!(
                    "line {}: rollout TP {}, generation batch {}; prefill {:.0} s, decode {:.0} s, experience {:.0} s, \
                     training {:.0} s, sync {:.1} s",
                    r.line,
                    w.rollout_tp,
                    w.generation_batch,
                    o.prefill_s,
                    o.decode_s,
                    o.experience_s,
                    o.training_s,
                    o.sync_s
                );
                let scale = if r.system == "dschat_he" {
                    DSCHAT_ITERATIONS
                } else {
                    1.0
                };
                let e2e = o.iteration_time_s() * scale;
                let (g, t) = split(&o);
                let share = match (r.gen_s, r.train_s) {
                    (Some(pg), Some(pt)) => (g / (g + t)) / (pg / (pg + pt)) - 1.0,
                    _ => f64::NAN,
                };
                (
                    e2e / r.e2e_s - 1.0,
                    r.gen_s.map_or(f64::NAN, |p| g / p - 1.0),
                    r.train_s.map_or(f64::NAN, |p| t / p - 1.0),
                    share,
                )
            });
            (r.clone(), res)
        })
        .collect()
}

#[test]
fn rlhf_published_rows_calibrated_on_a_subset_predict_the_rest() {
    let rows = rows();
    assert_eq!(rows.len(), 19);
    let fit = calibrate(&rows);
    eprintln!(
        "fitted efficiencies: generation {:?}, training {:?}; host s per layer per forward {:?}",
        fit.generation, fit.training, fit.host
    );
    // The product's default host time for `colocated_engine = "hf_generate"` is this fit (calibration).
    let hf = fit.host("dschat_no_he");
    assert!(
        (hf / trainlab_models::rlhf::HF_GENERATE_HOST_S_PER_LAYER - 1.0).abs() < 0.05,
        "refit host time {hf} s per layer: update HF_GENERATE_HOST_S_PER_LAYER"
    );
    for (_, e) in fit.generation.iter().chain(&fit.training) {
        // Positive and finite. vLLM's comes out above 1 (1.55 on 2026-12-02: the model prices its 13B calibration row
        // slower than published at the datasheet bandwidth, every sequence at the published maximum lengths; stated in
        // the README); the Hybrid Engine's (0.83) is poorly identified, Table 1's two 13B rows being both
        // training-dominated.
        assert!(e.is_finite() && *e > 0.0, "a non-positive efficiency: {e}");
    }
    let errs = errors(&rows, &fit);
    eprintln!(
        "| line | system | model | GPUs | published e2e s | role | e2e error | gen error | train error | published gen share | gen share error |"
    );
    let (mut open, mut ds, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for (r, res) in &errs {
        let role = if is_calibration(r) { "calibration" } else { "held out" };
        match res {
            Ok((e, g, t, sh)) => {
                // Table 1 publishes end-to-end times only: no phase errors there
                let pct = |x: f64| {
                    if x.is_finite() {
                        format!("{:+.1}%", 100.0 * x)
                    } else {
                        "—".to_string()
                    }
                };
                let published_share = match (r.gen_s, r.train_s) {
                    (Some(pg), Some(pt)) => format!("{:.3}", pg / (pg + pt)),
                    _ => "—".to_string(),
                };
                eprintln!(
                    "| {} | {} | {} | {} | {} | {role} | {:+.1}% | {} | {} | {published_share} | {} |",
                    r.line,
                    r.system,
                    r.model,
                    r.gpus,
                    r.e2e_s,
                    100.0 * e,
                    pct(*g),
                    pct(*t),
                    pct(*sh)
                );
                if !is_calibration(r) {
                    if r.system == "dschat_he" {
                        ds.push(e.abs())
                    } else {
                        open.push(e.abs());
                        shares.push(sh.abs());
                    }
                } else {
                    // The calibration rows are reproduced by construction (the fit solves them exactly).
                    assert!(e.abs() < 1e-4, "calibration row {} off by {e}", r.line);
                }
            }
            Err(why) => eprintln!(
                "| {} | {} | {} | {} | {} | not expressed | {why} | | |",
                r.line, r.system, r.model, r.gpus, r.e2e_s
            ),
        }
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "held out: OpenRLHF table {} rows, max |e2e error| {:.1}%, max |generation share error| {:.1}%; \
         DeepSpeed-Chat Table 1 {} rows, max {:.1}%",
        open.len(),
        100.0 * max(&open),
        100.0 * max(&shares),
        ds.len(),
        100.0 * max(&ds)
    );
    // The other OpenRLHF quantity, the generation share (published 0.54-0.79): five of the six held-out rows
    // within 15% (2026-12-03: +2.9, -9.7, +0.9, +9.0, +2.6%), the 70B vLLM row outside (-16.9%: its generation is
    // under-predicted by 31%, its training over-predicted by 21%).
    assert!(shares.len() == open.len() && shares.iter().all(|x| x.is_finite()));
    assert!(shares.iter().filter(|e| **e < 0.15).count() >= 5, "{shares:?}");
    assert!(max(&shares) < 0.20, "generation share max {}", max(&shares));
    // Every OpenRLHF row but the calibration one is expressed since generation on the actor's GPUs (its two Ray rows
    // without vLLM, 1:1:4:2).
    assert!(open.len() >= 6 && ds.len() >= 6, "{} {}", open.len(), ds.len());
    // The bounds that hold (README's table; the goals, 15% and 25%, are not met everywhere): OpenRLHF's
    // held-out rows miss by up to 26% (the 7B vLLM row, over-predicted; tightened from 37% when the vLLM engines'
    // calls were serialised, which moved 7B +31.9% -> +26.0% and 70B -35.6% -> -16.6%);
    // DeepSpeed-Chat Table 1's by up to 34% (OPT-1.3B on 64 GPUs), 7 of its 8 held-out rows within 25%, median 14%.
    assert!(max(&open) < 0.27, "OpenRLHF held-out max {}", max(&open));
    // Four of its six held-out rows within the 15% (the HF rows: OpenRLHF 7B +10.2%, DeepSpeed-Chat 13B -3.2%,
    // OpenRLHF Ray 7B -7.1% and 13B +9.9%); its vLLM rows miss (7B +26.1%, 70B -16.6%).
    assert!(open.iter().filter(|e| **e < 0.15).count() >= 4, "{open:?}");
    assert!(max(&ds) < 0.35, "DeepSpeed-Chat held-out max {}", max(&ds));
    let within = ds.iter().filter(|e| **e < 0.25).count();
    assert!(
        within >= 7,
        "DeepSpeed-Chat held-out rows within 25%: {within} of {}",
        ds.len()
    );
    let mut sorted = ds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0;
    assert!(median < 0.20, "DeepSpeed-Chat held-out median {median}");
}

#[test]
fn rlhf_dschat_generation_flop_share() {
    // DeepSpeed-Chat's "generation ~20% of the total computation" (release blog) against the FLOP count of the
    // model's phases: generation 2·N_a per prompt and response token; experience actor, reference, critic and reward
    // forwards 2·N each; training actor and critic 6·N each; with the reference as the actor and critic = reward =
    // OPT-350M: 2N_a / (12 N_a + 10 N_c).
    let nc = shape("opt-350m").params();
    for (m, lo, hi) in [("opt-1.3b", 0.12, 0.16), ("opt-175b", 0.16, 0.17)] {
        let na = shape(m).params();
        let share = 2.0 * na / (12.0 * na + 10.0 * nc);
        eprintln!(
            "{m}: generation FLOP share {share:.3} vs published ~0.20: {:+.0}%",
            100.0 * (share / 0.2 - 1.0)
        );
        assert!(share > lo && share < hi, "{m}: {share}");
    }
}

#[test]
fn eager_engines_pay_the_launch_floor_and_the_per_call_gather() {
    let rows = rows();
    let find = |m: &str| {
        rows.iter()
            .find(|r| r.system == "dschat_he" && r.model == m && r.gpus == 64)
            .unwrap()
    };
    let plain = |w: &RlhfIteration| RlhfAnalytical::default().run(w, &mut RunCtx::new(Seed(1))).unwrap();
    // OPT-1.3B on 64 GPUs: 8 engines of TP 8, 1,024 sequences in waves of 32 -> 4 waves of 256 steps, each at least
    // 24 layers x 12 launches x 5 us; a CUDA-graph engine (the default) decodes faster than that floor.
    let w = workload(find("opt-1.3b")).unwrap();
    let floor = 4.0 * 256.0 * 24.0 * 12.0 * 5e-6;
    let he = run("dschat_he", &w, PhaseEfficiency::default());
    let cg = plain(&w);
    eprintln!(
        "OPT-1.3B on 64: decode {:.3} s (eager) vs {:.3} s (CUDA graphs), floor {floor:.3} s",
        he.decode_s, cg.decode_s
    );
    assert!(he.decode_s >= floor * (1.0 - 1e-9) && cg.decode_s < floor);
    // OPT-66B on 64 GPUs trains under ZeRO-3: the Hybrid Engine gathers the whole actor once per generation call,
    // more than resharding it once.
    let w = workload(find("opt-66b")).unwrap();
    let (he, rs) = (run("dschat_he", &w, PhaseEfficiency::default()), plain(&w));
    eprintln!(
        "OPT-66B on 64: sync {:.2} s (gather per call) vs {:.2} s (resharded once)",
        he.sync_s, rs.sync_s
    );
    assert!(he.sync_s > 2.0 * rs.sync_s, "{} vs {}", he.sync_s, rs.sync_s);
    // HF `generate` keeps the training states resident: DeepSpeed-Chat's Llama2-13B run (ZeRO-2 actor, ZeRO-3 critic,
    // optimizer offloaded: about 42 GiB per GPU) leaves room for its published 2 sequences of 2,048 tokens (KV 1.6 GiB
    // each), not for 32.
    let r = rows
        .iter()
        .find(|r| r.system == "dschat_no_he" && r.model == "llama2-13b")
        .unwrap();
    let mut w = workload(r).unwrap();
    w.generation_batch = 32;
    let e = model(&r.system, r.gpus, PhaseEfficiency::default())
        .run(&w, &mut RunCtx::new(Seed(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("generation_batch") && e.contains("resident"), "{e}");

    // DeepSpeed-Chat's own run (OpenRLHF's script): Llama2-13B at generation batch 2 on 8 GPUs, 128 sequences per GPU
    // in 64 waves of 1,024 decode steps and a prefill each; host time per layer adds 40 x h to each forward.
    let r = rows
        .iter()
        .find(|r| r.system == "dschat_no_he" && r.model == "llama2-13b")
        .unwrap();
    let w = workload(r).unwrap();
    assert_eq!(w.generation_batch, 2);
    let g = |o: &RlhfOutcome| o.prefill_s + o.decode_s;
    let (o0, o1) = (
        run_host(&r.system, &w, PhaseEfficiency::default(), 0.0),
        run_host(&r.system, &w, PhaseEfficiency::default(), 1e-4),
    );
    let want = 64.0 * 1025.0 * 40.0 * 1e-4;
    assert!(
        ((g(&o1) - g(&o0)) / want - 1.0).abs() < 1e-9,
        "{} vs {want}",
        g(&o1) - g(&o0)
    );
    // Its actor is pinned at ZeRO-2 with the optimizer offloaded (`--offload`): the actor's reported memory excludes
    // the 12 bytes per parameter of optimizer state, so without the offload it is larger (where a layout still fits).
    let mut m = model(&r.system, r.gpus, PhaseEfficiency::default());
    m.offload_optimizer = false;
    let no_offload = m.run(&w, &mut RunCtx::new(Seed(1)));
    eprintln!(
        "13B DeepSpeed-Chat without offload: {:?}",
        no_offload.as_ref().map(|o| o.iteration_time_s())
    );
    let mem = |o: &RlhfOutcome| o.memory_per_gpu.iter().find(|m| m.0 == "actor").unwrap().1;
    let no_offload = no_offload.unwrap();
    assert!(mem(&no_offload) > mem(&o0), "{} vs {}", mem(&no_offload), mem(&o0));
    // The pinned ZeRO-2 actor, its optimizer offloaded, holds its parameters: no per-step gathers. Left to the layout
    // search without the offload (Llama2-7B: ZeRO-3, where memory needs it), HF `generate` gathers every layer at
    // every step, a floor above the step's HBM time.
    let r7 = rows
        .iter()
        .find(|r| r.system == "dschat_no_he" && r.model == "llama2-7b")
        .unwrap();
    let w7 = workload(r7).unwrap();
    let pinned2 = run(&r7.system, &w7, PhaseEfficiency::default());
    let mut m = model(&r7.system, r7.gpus, PhaseEfficiency::default());
    m.actor_zero_stage = None;
    m.critic_zero_stage = None;
    m.offload_optimizer = false;
    let searched = m.run(&w7, &mut RunCtx::new(Seed(1))).unwrap();
    eprintln!(
        "7B DeepSpeed-Chat decode: {:.0} s with the actor at ZeRO-2 (offloaded), {:.0} s as searched",
        pinned2.decode_s, searched.decode_s
    );
    assert!(searched.decode_s > 1.5 * pinned2.decode_s);
    // One optimizer step per train batch: 8 steps of 128 on 64 GPUs cost more than one step over all 1,024.
    let r = find("opt-1.3b");
    let w = workload(r).unwrap();
    let mut one = model(&r.system, r.gpus, PhaseEfficiency::default());
    one.train_batch = None;
    let one = one.run(&w, &mut RunCtx::new(Seed(1))).unwrap();
    let many = run(&r.system, &w, PhaseEfficiency::default());
    eprintln!(
        "OPT-1.3B on 64: training {:.3} s in 4 steps vs {:.3} s in one",
        many.training_s, one.training_s
    );
    assert!(many.training_s > one.training_s);
}

#[test]
fn vllm_engine_calls_are_serialised() {
    // OpenRLHF's vLLM engines of the benchmark's time are synchronous Ray actors: one `generate` call (one actor
    // rank's micro-batch) at a time. Every vLLM row decodes at the table's micro-batch, not micro-batch x ranks.
    let rows = rows();
    for r in rows.iter().filter(|r| r.system == "openrlhf_vllm") {
        let w = workload(r).unwrap();
        assert_eq!(Some(w.generation_batch), r.gen_micro_batch, "line {}", r.line);
    }
    // Llama2-70B (2:2:4:4:4 on 16 GPUs): 2 engines at TP 2 (the smallest that holds its weights), micro-batch 4. Had
    // the engine merged the 2 actor ranks it serves into one batch of 8, it would read its weights half as often:
    // memory-bound, the decode time nearly halves (KV is small beside 69 GB of weights per GPU under GQA).
    let r = rows
        .iter()
        .find(|r| r.system == "openrlhf_vllm" && r.model == "llama2-70b")
        .unwrap();
    let w = workload(r).unwrap();
    assert_eq!((w.rollout_tp, w.generation_batch), (2, 4));
    let serial = run(&r.system, &w, PhaseEfficiency::default());
    let mut merged = w.clone();
    merged.generation_batch = 8;
    let merged = run(&r.system, &merged, PhaseEfficiency::default());
    eprintln!(
        "70B vLLM decode: {:.0} s serialised (batch 4) vs {:.0} s merged (batch 8)",
        serial.decode_s, merged.decode_s
    );
    assert!(serial.decode_s > 1.8 * merged.decode_s);
}

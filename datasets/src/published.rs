//! Published measured throughput of large dense training runs (Megatron-LM SC'21 Table 1, Llama 3 Table 4,
//! MegaScale NSDI'24 Table 2), embedded from `data/published/dense_throughput.csv` with the source in every row.
//! See `data/published/README.md` for the FLOP conventions and how far each row was verified.
use trainlab_core::Error;
use trainlab_core::workloads::{Recompute, TransformerSpec};

const DENSE_CSV: &str = include_str!("../data/published/dense_throughput.csv");

/// What a row reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedMetric {
    /// Achieved teraFLOP/s per GPU, under the row's [`FlopsConvention`].
    TflopsPerGpu,
    /// Model FLOPs utilisation (fraction of the dense 16-bit peak).
    Mfu,
}

/// How the paper counted FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlopsConvention {
    /// Narayanan et al. 2021 eq. 3: `96 B s l h^2 (1 + s/(6h) + V/(16 l h))` per iteration, which includes the
    /// extra forward pass of full recomputation.
    MegatronFullRecompute,
    /// Model FLOPs without recomputation.
    Model,
}

/// One published run.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseRun {
    /// Paper.
    pub source: String,
    /// Table in the paper.
    pub table: String,
    /// Model label.
    pub model: String,
    /// Transformer layers.
    pub layers: u64,
    /// Hidden width.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// KV heads (`None` = multi-head attention).
    pub kv_heads: Option<u64>,
    /// FFN inner width.
    pub ffn_hidden: u64,
    /// SwiGLU-style gated FFN.
    pub gated_ffn: bool,
    /// Vocabulary.
    pub vocab: u64,
    /// Sequence length.
    pub seq_len: u64,
    /// GPU preset name (see [`crate::gpus::preset`]).
    pub gpu: String,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// GPUs used.
    pub gpus: u64,
    /// Tensor-parallel degree.
    pub tp: u64,
    /// Context-parallel degree (1 = none).
    pub cp: u64,
    /// Pipeline stages.
    pub pp: u64,
    /// Data-parallel replicas.
    pub dp: u64,
    /// Global batch in sequences.
    pub global_batch_seqs: u64,
    /// Recomputation policy reported (`None`: not reported, let the model choose).
    pub recompute: Option<Recompute>,
    /// What `value` is.
    pub metric: PublishedMetric,
    /// The published number.
    pub value: f64,
    /// FLOP convention of `value`.
    pub flops_convention: FlopsConvention,
    /// Checked against the paper text (`true`, mark `V`) or not (`false`: `S` when an independent secondary source
    /// found with the search tool agrees, `R` when recalled only).
    pub verified: bool,
    /// The `verified` column as written: `V`, `S` or `R`.
    pub mark: String,
    /// Remarks.
    pub note: String,
}

impl DenseRun {
    /// The model as a [`TransformerSpec`].
    pub fn transformer(&self) -> TransformerSpec {
        TransformerSpec {
            name: self.model.clone(),
            layers: self.layers,
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.kv_heads,
            ffn_hidden: self.ffn_hidden,
            gated_ffn: self.gated_ffn,
            vocab: self.vocab,
            seq_len: self.seq_len,
        }
    }

    /// FLOPs per token under the row's convention.
    pub fn flops_per_token(&self) -> f64 {
        let (l, h, s, v) = (
            self.layers as f64,
            self.hidden as f64,
            self.seq_len as f64,
            self.vocab as f64,
        );
        match self.flops_convention {
            FlopsConvention::MegatronFullRecompute => 96.0 * l * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * l * h)),
            FlopsConvention::Model => self.transformer().train_flops_per_token(),
        }
    }

    /// Published throughput in tokens/s per GPU (for MFU rows: `mfu * peak / flops_per_token`, with `peak` the
    /// dense 16-bit peak of the GPU in FLOP/s).
    pub fn tokens_per_s_per_gpu(&self, peak: f64) -> f64 {
        match self.metric {
            PublishedMetric::TflopsPerGpu => self.value * 1e12 / self.flops_per_token(),
            PublishedMetric::Mfu => self.value * peak / self.flops_per_token(),
        }
    }
}

fn field<T: std::str::FromStr>(cols: &[&str], i: usize, name: &str, line: usize) -> Result<T, Error> {
    let raw = cols.get(i).copied().unwrap_or("");
    raw.trim().parse::<T>().map_err(|_| {
        Error::invalid(
            format!("published/dense_throughput.csv:{line}.{name}"),
            format!("\"{raw}\""),
            "cannot be parsed",
            "fix the embedded CSV",
        )
    })
}

/// Parses rows in the format of `dense_throughput.csv` (comment lines start with `#`; 25 columns; no quoting).
pub fn parse_dense_runs(text: &str) -> Result<Vec<DenseRun>, Error> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let ln = idx + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let c: Vec<&str> = t.split(',').collect();
        if c.len() != 25 {
            return Err(Error::invalid(
                format!("published/dense_throughput.csv:{ln}"),
                c.len(),
                "expected 25 comma-separated columns",
                "fix the embedded CSV",
            ));
        }
        let kv: u64 = field(&c, 6, "kv_heads", ln)?;
        let recompute = match c[19].trim() {
            "full" => Some(Recompute::Full),
            "selective" => Some(Recompute::Selective),
            "none" => Some(Recompute::None),
            "any" => None,
            other => {
                return Err(Error::invalid(
                    format!("published/dense_throughput.csv:{ln}.recompute"),
                    other,
                    "unknown policy",
                    "use full, selective, none or any",
                ));
            }
        };
        let metric = match c[20].trim() {
            "tflops_per_gpu" => PublishedMetric::TflopsPerGpu,
            "mfu" => PublishedMetric::Mfu,
            other => {
                return Err(Error::invalid(
                    format!("published/dense_throughput.csv:{ln}.metric"),
                    other,
                    "unknown metric",
                    "use tflops_per_gpu or mfu",
                ));
            }
        };
        let flops_convention = match c[22].trim() {
            "megatron_full_recompute" => FlopsConvention::MegatronFullRecompute,
            "model" => FlopsConvention::Model,
            other => {
                return Err(Error::invalid(
                    format!("published/dense_throughput.csv:{ln}.flops_convention"),
                    other,
                    "unknown convention",
                    "use megatron_full_recompute or model",
                ));
            }
        };
        out.push(DenseRun {
            source: c[0].trim().to_string(),
            table: c[1].trim().to_string(),
            model: c[2].trim().to_string(),
            layers: field(&c, 3, "layers", ln)?,
            hidden: field(&c, 4, "hidden", ln)?,
            heads: field(&c, 5, "heads", ln)?,
            kv_heads: if kv == 0 { None } else { Some(kv) },
            ffn_hidden: field(&c, 7, "ffn_hidden", ln)?,
            gated_ffn: field(&c, 8, "gated_ffn", ln)?,
            vocab: field(&c, 9, "vocab", ln)?,
            seq_len: field(&c, 10, "seq_len", ln)?,
            gpu: c[11].trim().to_string(),
            gpus_per_node: field(&c, 12, "gpus_per_node", ln)?,
            gpus: field(&c, 13, "gpus", ln)?,
            tp: field(&c, 14, "tp", ln)?,
            cp: field(&c, 15, "cp", ln)?,
            pp: field(&c, 16, "pp", ln)?,
            dp: field(&c, 17, "dp", ln)?,
            global_batch_seqs: field(&c, 18, "global_batch_seqs", ln)?,
            recompute,
            metric,
            value: field(&c, 21, "value", ln)?,
            flops_convention,
            verified: c[23].trim() == "V",
            mark: c[23].trim().to_string(),
            note: c[24].trim().to_string(),
        });
    }
    Ok(out)
}

/// All published dense runs shipped with trainlab.
pub fn dense_runs() -> Result<Vec<DenseRun>, Error> {
    parse_dense_runs(DENSE_CSV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_rows_are_consistent() {
        let rows = dense_runs().unwrap();
        assert_eq!(rows.len(), 33);
        for r in &rows {
            assert_eq!(r.tp * r.cp * r.pp * r.dp, r.gpus, "{}", r.model);
            assert_eq!(r.gpus % r.gpus_per_node as u64, 0);
            assert_eq!(r.global_batch_seqs % r.dp, 0, "{}", r.model);
            assert!(crate::gpus::preset(&r.gpu).is_some(), "{}", r.gpu);
            assert!(r.value > 0.0 && !r.source.is_empty());
            assert_eq!(r.hidden % r.heads, 0);
        }
        // Megatron's 1T row: 163 TFLOP/s x 3072 GPUs = 501 PFLOP/s (abstract: 502), 52% of 312 TFLOP/s
        let t = rows.iter().find(|r| r.model == "gpt-1008b").unwrap();
        assert!((t.value * 3072.0 / 1000.0 - 502.0).abs() < 2.0);
        assert!((t.value / 312.0 - 0.52).abs() < 0.01);
        // MT-NLG: 126 TFLOP/s per GPU under the Megatron convention is the quoted 60.1 s per iteration of 1,920
        // sequences of 2,048 tokens on 2,240 GPUs
        let mt = rows
            .iter()
            .find(|r| r.model == "mt-nlg-530b" && r.gpus == 2240)
            .unwrap();
        let from_iteration = 1920.0 * 2048.0 / (60.1 * 2240.0);
        assert!((mt.tokens_per_s_per_gpu(312e12) / from_iteration - 1.0).abs() < 0.01);
        // MegaScale Table 2 also prints throughput: its MFU rows convert to the printed tokens/s within 2% (256 GPUs:
        // 49.0k and 39.3k tokens/s at batch 768; 12,288 GPUs: 1,984.0k and 1,466.8k at batch 6,144)
        for (gpus, mfu, tokens_per_s) in [
            (256, 0.653, 49.0e3),
            (256, 0.530, 39.3e3),
            (12288, 0.552, 1984.0e3),
            (12288, 0.412, 1466.8e3),
        ] {
            let r = rows
                .iter()
                .find(|r| r.model == "gpt3-175b" && r.gpus == gpus && r.value == mfu)
                .unwrap();
            let per_gpu = r.tokens_per_s_per_gpu(312e12);
            assert!(
                (per_gpu * gpus as f64 / tokens_per_s - 1.0).abs() < 0.02,
                "{gpus} {mfu}: {per_gpu}"
            );
        }
        // Megatron's FLOP formula: the 1.7B model at 137 TFLOP/s is 12.4k tokens/s per GPU... check magnitude
        let small = &rows[0];
        let tps = small.tokens_per_s_per_gpu(312e12);
        assert!(tps > 5_000.0 && tps < 20_000.0, "{tps}");
    }

    #[test]
    fn bad_rows_are_rejected() {
        assert!(parse_dense_runs("a,b,c").is_err());
        let good = DENSE_CSV.lines().find(|l| l.starts_with("Narayanan")).unwrap();
        let bad = good.replace(",full,", ",sometimes,");
        assert!(parse_dense_runs(&bad).is_err());
        assert_eq!(parse_dense_runs(good).unwrap().len(), 1);
    }
}

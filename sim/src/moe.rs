//! Monte Carlo simulator of one MoE layer step under expert parallelism (GShard / Switch routing with capacity,
//! M6-T k-top-1 prototypes).
//!
//! Each replication draws the step's routing (per-expert loads), applies the capacity `C = ceil(gamma k N / E)`
//! (Switch Eq. 3), drops the overflow, and times the step with [`MoeCostModel::step`]: router, dispatch all-to-all,
//! expert GEMMs whose efficiency depends on the rows each expert gets, combine all-to-all, and the backward pass;
//! every rank waits for the slowest. Replications run in parallel (rayon) and are collected in input order, each from
//! its own seed `seed.derive("moe").index(i)`, so results do not depend on the thread count.
//!
//! Sampling: a token chooses its `k` experts of a group by successive sampling without replacement from the group's
//! popularity vector (equivalent to Gumbel top-k, i.e. Plackett-Luce). With one choice per group (top-1 and
//! prototypes) the group's loads are exactly Multinomial(N, p), drawn by conditional binomial splitting in O(E)
//! per replication instead of O(N); with `k > 1` in a group tokens are sampled one by one.
use rand::RngExt;
use rand_distr::{Binomial, Distribution, Gamma};
use rayon::prelude::*;
use trainlab_core::seed::Rng;
use trainlab_core::workloads::moe::{Estimate, LoadSummary, MoeLayer, MoeOutcome, RouterModel};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, Summary, Workload};
use trainlab_models::hardware::Network;
use trainlab_models::moe::{MoeCostModel, StepBreakdown};

/// A parsed routing trace: for each token, its `k` expert choices (flattened, `k` per token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTrace {
    /// Choices per token.
    pub k: usize,
    /// Flattened choices, `k` per token.
    pub choices: Vec<u32>,
}

impl RoutingTrace {
    /// Tokens in the trace.
    pub fn tokens(&self) -> usize {
        self.choices.len() / self.k.max(1)
    }
}

/// Parses a routing trace (CSV `token,expert[,expert...]`; a first line starting with a letter is a header; blank
/// lines and `#` comments are skipped) for `layer`. Errors name `origin:line`.
pub fn parse_trace(text: &str, origin: &str, layer: &MoeLayer) -> Result<RoutingTrace, Error> {
    let k = layer.k() as usize;
    let e = layer.experts;
    let group = layer.experts_per_group();
    let prototypes = layer.routing.groups() > 1;
    let mut choices = Vec::new();
    let field = "workload.router.trace";
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = format!("{origin}:{}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if i == 0 && line.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != k + 1 {
            return Err(Error::invalid(
                field,
                &at,
                format!("line has {} expert choices, the routing needs k = {k}", cells.len() - 1),
                "write `token,expert1,...,expertk` on every line",
            ));
        }
        if cells[0].parse::<u64>().is_err() {
            return Err(Error::invalid(
                field,
                &at,
                format!("token id `{}` is not a non-negative integer", cells[0]),
                "start each line with the token index",
            ));
        }
        let start = choices.len();
        for c in &cells[1..] {
            let x: u64 = c.parse().map_err(|_| {
                Error::invalid(
                    field,
                    &at,
                    format!("expert `{c}` is not a non-negative integer"),
                    "use expert indices 0..experts-1",
                )
            })?;
            if x >= e {
                return Err(Error::invalid(
                    field,
                    &at,
                    format!("expert {x} does not exist (the layer has {e} experts)"),
                    format!("use expert indices 0..{}", e - 1),
                ));
            }
            choices.push(x as u32);
        }
        let tok = &mut choices[start..];
        if prototypes {
            tok.sort_unstable();
            for (g, &x) in tok.iter().enumerate() {
                if x as u64 / group != g as u64 {
                    return Err(Error::invalid(
                        field,
                        &at,
                        format!("prototype routing needs one expert in each of the {k} groups of {group}"),
                        "pick exactly one expert per group",
                    ));
                }
            }
        } else {
            tok.sort_unstable();
            if tok.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::invalid(
                    field,
                    &at,
                    "the same expert is chosen twice",
                    "list k distinct experts",
                ));
            }
        }
    }
    if choices.is_empty() {
        return Err(Error::invalid(
            field,
            origin,
            "the trace has no tokens",
            "add lines `token,expert...`",
        ));
    }
    Ok(RoutingTrace { k, choices })
}

/// Reads and parses the trace file named by the layer's router.
pub fn load_trace(path: &str, layer: &MoeLayer) -> Result<RoutingTrace, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading routing trace {path}"), e))?;
    parse_trace(&text, path, layer)
}

/// Per-expert loads of a trace replayed for `tokens` tokens (cycled).
pub fn trace_loads(trace: &RoutingTrace, experts: u64, tokens: u64) -> Vec<u64> {
    let mut loads = vec![0u64; experts as usize];
    let t = trace.tokens() as u64;
    let full = tokens / t;
    let rest = (tokens % t) as usize;
    for (i, tok) in trace.choices.chunks(trace.k).enumerate() {
        let times = full + u64::from(i < rest);
        for &x in tok {
            loads[x as usize] += times;
        }
    }
    loads
}

/// Popularity of each of `g` experts for one step (`None`: uniform).
fn popularity(router: &RouterModel, g: usize, rng: &mut Rng) -> Option<Vec<f64>> {
    match router {
        RouterModel::Uniform | RouterModel::Trace { .. } => None,
        RouterModel::Zipf { s } => {
            if *s == 0.0 {
                return None;
            }
            let mut perm: Vec<usize> = (0..g).collect();
            for i in (1..g).rev() {
                let j = rng.random_range(0..=i);
                perm.swap(i, j);
            }
            let mut p = vec![0.0; g];
            for (rank, &idx) in perm.iter().enumerate() {
                p[idx] = 1.0 / ((rank + 1) as f64).powf(*s);
            }
            normalise(&mut p);
            Some(p)
        }
        RouterModel::Dirichlet { alpha } => {
            let gamma = Gamma::new(*alpha, 1.0).ok()?;
            let mut p: Vec<f64> = (0..g).map(|_| gamma.sample(rng).max(1e-300)).collect();
            normalise(&mut p);
            Some(p)
        }
    }
}

fn normalise(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    for x in p.iter_mut() {
        *x /= s;
    }
}

/// Multinomial(n, p) by conditional binomial splitting (`p = None`: uniform). O(len) binomial draws.
pub fn multinomial(n: u64, p: Option<&[f64]>, len: usize, rng: &mut Rng, out: &mut [u64]) {
    let mut left = n;
    let mut mass = 1.0;
    for i in 0..len {
        if left == 0 {
            out[i] = 0;
            continue;
        }
        if i + 1 == len {
            out[i] = left;
            break;
        }
        let pi = p.map_or(1.0 / len as f64, |p| p[i]);
        let q = (pi / mass).clamp(0.0, 1.0);
        let x = match Binomial::new(left, q) {
            Ok(b) => b.sample(rng),
            Err(_) => 0,
        };
        out[i] = x;
        left -= x;
        mass -= pi;
        if mass <= 0.0 {
            mass = f64::MIN_POSITIVE;
        }
    }
}

/// Draws one step's per-expert loads (routed slots before capacity).
pub fn draw_loads(layer: &MoeLayer, trace: Option<&RoutingTrace>, rng: &mut Rng) -> Vec<u64> {
    if let Some(t) = trace {
        return trace_loads(t, layer.experts, layer.tokens);
    }
    let groups = layer.routing.groups() as usize;
    let g = layer.experts_per_group() as usize;
    let per = layer.routing.per_group() as usize;
    let mut loads = vec![0u64; layer.experts as usize];
    // One popularity vector over all experts per step; each group renormalises its slice.
    let pop = popularity(&layer.router, layer.experts as usize, rng);
    for grp in 0..groups {
        let p = pop.as_ref().map(|p| {
            let mut q = p[grp * g..(grp + 1) * g].to_vec();
            normalise(&mut q);
            q
        });
        let out = &mut loads[grp * g..(grp + 1) * g];
        if per == 1 {
            multinomial(layer.tokens, p.as_deref(), g, rng, out);
        } else {
            per_token(layer.tokens, per, p.as_deref(), g, rng, out);
        }
    }
    loads
}

/// Per-token successive sampling without replacement of `per` experts from `p` (uniform if `None`).
fn per_token(tokens: u64, per: usize, p: Option<&[f64]>, g: usize, rng: &mut Rng, out: &mut [u64]) {
    let cdf: Option<Vec<f64>> = p.map(|p| {
        let mut acc = 0.0;
        p.iter()
            .map(|x| {
                acc += x;
                acc
            })
            .collect()
    });
    let pmax = p.map_or(0.0, |p| p.iter().copied().fold(0.0, f64::max));
    let mut chosen = [0usize; 64];
    for _ in 0..tokens {
        let mut m = 0;
        let mut tries = 0u32;
        while m < per {
            let x = match &cdf {
                None => rng.random_range(0..g),
                Some(c) => {
                    let u: f64 = rng.random::<f64>() * c[g - 1];
                    c.partition_point(|&v| v <= u).min(g - 1)
                }
            };
            tries += 1;
            if chosen[..m].contains(&x) {
                if tries > 1000 && pmax > 0.999 {
                    // Degenerate popularity: take the next free expert in index order.
                    let free = (0..g).find(|y| !chosen[..m].contains(y)).unwrap_or(0);
                    chosen[m] = free;
                    m += 1;
                }
                continue;
            }
            chosen[m] = x;
            m += 1;
        }
        for &x in &chosen[..per] {
            out[x] += 1;
        }
    }
}

/// One replication's result.
#[derive(Debug, Clone, PartialEq)]
pub struct RepResult {
    /// Per-expert routed loads.
    pub loads: Vec<u64>,
    /// Per-expert processed slots (`min(load, C)`).
    pub processed: Vec<u64>,
    /// Dropped slots.
    pub dropped: u64,
    /// Time breakdown.
    pub step: StepBreakdown,
}

/// Evaluates one step from its loads.
pub fn evaluate(layer: &MoeLayer, cost: &MoeCostModel, loads: Vec<u64>) -> RepResult {
    evaluate_on(layer, cost, loads, &cost.network)
}

/// [`evaluate`] with the all-to-alls timed by `net` (e.g. the flow-level fabric simulator).
pub fn evaluate_on(layer: &MoeLayer, cost: &MoeCostModel, loads: Vec<u64>, net: &dyn Network) -> RepResult {
    let c = layer.capacity();
    let processed: Vec<u64> = loads.iter().map(|&x| x.min(c)).collect();
    let dropped = loads.iter().map(|&x| x.saturating_sub(c)).sum();
    let rows: Vec<f64> = processed.iter().map(|&x| x as f64).collect();
    let step = cost.step_on(layer, &rows, net);
    RepResult {
        loads,
        processed,
        dropped,
        step,
    }
}

/// The Monte Carlo backend (`monte_carlo`).
#[derive(Debug, Clone)]
pub struct MoeSim {
    /// Replications (independent routing draws).
    pub replications: u64,
    /// Cost model override (a calibrated one); `None` uses the cluster datasheet.
    pub cost: Option<MoeCostModel>,
}

impl Default for MoeSim {
    fn default() -> Self {
        MoeSim {
            replications: 200,
            cost: None,
        }
    }
}

impl MoeSim {
    /// Runs all replications (parallel, in input order).
    pub fn replicate(&self, layer: &MoeLayer, seed: Seed) -> Result<Vec<RepResult>, Error> {
        self.replicate_on(layer, seed, None)
    }

    /// [`Self::replicate`] with the all-to-alls timed by `net` (`None`: the cost model's alpha-beta network).
    pub fn replicate_on(
        &self,
        layer: &MoeLayer,
        seed: Seed,
        net: Option<&dyn Network>,
    ) -> Result<Vec<RepResult>, Error> {
        layer.validate()?;
        let trace = match &layer.router {
            RouterModel::Trace { path } => Some(load_trace(path, layer)?),
            _ => None,
        };
        let cost = self
            .cost
            .clone()
            .unwrap_or_else(|| MoeCostModel::from_cluster(&layer.cluster, layer.dtype));
        let base = seed.derive("moe");
        let reps = self.replications.max(1);
        Ok((0..reps)
            .into_par_iter()
            .map(|i| {
                let mut rng = base.index(i).rng();
                let loads = draw_loads(layer, trace.as_ref(), &mut rng);
                evaluate_on(layer, &cost, loads, net.unwrap_or(&cost.network as &dyn Network))
            })
            .collect())
    }
}

fn est(xs: &[f64]) -> Estimate {
    let s = Summary::of(xs);
    if s.n > 1 {
        let (lo, hi) = s.ci95();
        Estimate::with_ci(s.mean, lo, hi)
    } else {
        Estimate::exact(s.mean)
    }
}

/// Aggregates replications into an outcome (means with 95% intervals).
pub fn aggregate(layer: &MoeLayer, reps: &[RepResult]) -> MoeOutcome {
    let n = reps.len().max(1) as f64;
    let per_rank = layer.experts_per_rank().max(1) as usize;
    let slots = layer.slots() as f64;
    let mut el = LoadSummary::default();
    let mut rl = LoadSummary::default();
    let mut cols: [Vec<f64>; 10] = Default::default();
    for r in reps {
        let loads: Vec<f64> = r.loads.iter().map(|&x| x as f64).collect();
        let ranks: Vec<f64> = r
            .processed
            .chunks(per_rank)
            .map(|c| c.iter().sum::<u64>() as f64)
            .collect();
        let e = LoadSummary::of(&loads);
        let q = LoadSummary::of(&ranks);
        for (acc, x) in [(&mut el, e), (&mut rl, q)] {
            acc.mean += x.mean / n;
            acc.min += x.min / n;
            acc.max += x.max / n;
            acc.cv += x.cv / n;
        }
        let vals = [
            e.imbalance(),
            q.imbalance(),
            r.dropped as f64 / slots,
            r.step.router_s,
            r.step.dispatch_s,
            r.step.compute_s,
            r.step.combine_s,
            r.step.forward_s,
            r.step.backward_s,
            r.step.step_s,
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
    }
    let drop = est(&cols[2]);
    let step = est(&cols[9]);
    let processed = slots * (1.0 - drop.value);
    MoeOutcome {
        capacity: layer.capacity(),
        expert_load: el,
        rank_load: rl,
        expert_imbalance: est(&cols[0]),
        rank_imbalance: est(&cols[1]),
        drop_fraction: drop,
        slots,
        processed,
        dropped: slots - processed,
        router_s: est(&cols[3]),
        dispatch_s: est(&cols[4]),
        compute_s: est(&cols[5]),
        combine_s: est(&cols[6]),
        forward_s: est(&cols[7]),
        backward_s: est(&cols[8]),
        step_s: step,
        flops_per_s: 3.0 * layer.expert_fwd_flops(processed) / layer.ep_ranks as f64 / step.value,
    }
}

impl Backend<MoeLayer> for MoeSim {
    fn name(&self) -> &str {
        "monte_carlo"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, layer: &MoeLayer, ctx: &mut RunCtx) -> Result<MoeOutcome, Error> {
        let reps = self.replicate(layer, ctx.seed)?;
        ctx.report(reps.len() as u64, reps.len() as u64);
        Ok(aggregate(layer, &reps))
    }
}

/// One measured single-device step (from a real run), as the calibration consumes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredStep {
    /// Per-expert routed loads of the step.
    pub loads: Vec<u64>,
    /// Router time, seconds.
    pub router_s: f64,
    /// Dispatch time, seconds.
    pub dispatch_s: f64,
    /// Combine time, seconds.
    pub combine_s: f64,
    /// Expert forward time, seconds.
    pub experts_s: f64,
    /// Backward time, seconds.
    pub backward_s: f64,
    /// Forward + backward, seconds.
    pub step_s: f64,
}

/// One row of the calibration table.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    /// The configuration.
    pub label: String,
    /// Measured drop fraction (mean over draws).
    pub measured_drop: f64,
    /// Simulated drop fraction.
    pub simulated_drop: f64,
    /// Measured step time, seconds (mean over draws of the median).
    pub measured_step_s: f64,
    /// Simulated step time, seconds.
    pub simulated_step_s: f64,
    /// (simulated - measured) / measured.
    pub rel_error: f64,
    /// The cost model applied to the measured draws' own loads (isolates the time model from routing sampling).
    pub replayed_step_s: f64,
    /// (replayed - measured) / measured.
    pub replay_rel_error: f64,
}

/// The result of [`calibrate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The fitted cost model.
    pub cost: MoeCostModel,
    /// Rows of the configurations it was fitted on.
    pub fitted: Vec<CalibrationRow>,
    /// Rows of held-out configurations.
    pub held_out: Vec<CalibrationRow>,
}

impl Calibration {
    /// Median |relative error| on the held-out rows.
    pub fn held_out_median_abs_error(&self) -> f64 {
        let v: Vec<f64> = self.held_out.iter().map(|r| r.rel_error.abs()).collect();
        trainlab_core::stats::median(&v)
    }
    /// Max |relative error| on the held-out rows.
    pub fn held_out_max_abs_error(&self) -> f64 {
        self.held_out.iter().map(|r| r.rel_error.abs()).fold(0.0, f64::max)
    }
    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| set | configuration | drop measured | drop simulated | step measured (ms) | step simulated (ms) | error | \
             replayed loads (ms) | error |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for (set, rows) in [("fit", &self.fitted), ("held-out", &self.held_out)] {
            for r in rows {
                s.push_str(&format!(
                    "| {set} | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:+.1}% | {:.2} | {:+.1}% |\n",
                    r.label,
                    r.measured_drop,
                    r.simulated_drop,
                    r.measured_step_s * 1e3,
                    r.simulated_step_s * 1e3,
                    r.rel_error * 100.0,
                    r.replayed_step_s * 1e3,
                    r.replay_rel_error * 100.0
                ));
            }
        }
        s
    }
}

fn cost_sample(layer: &MoeLayer, m: &MeasuredStep) -> trainlab_models::moe::CostSample {
    let c = layer.capacity();
    trainlab_models::moe::CostSample {
        d_model: layer.d_model as f64,
        d_ff: layer.d_ff as f64,
        tokens: layer.tokens as f64,
        experts: layer.experts as f64,
        per_group: layer.routing.per_group() as f64,
        nonempty: m.loads.iter().filter(|&&x| x > 0).count() as f64,
        processed: m.loads.iter().map(|&x| x.min(c)).sum::<u64>() as f64,
        router_s: m.router_s,
        dispatch_s: m.dispatch_s,
        combine_s: m.combine_s,
        experts_s: m.experts_s,
        backward_s: m.backward_s,
    }
}

/// Fits the single-device cost model to measured runs of `fit` (uniform routers, say) and checks the simulator
/// against measured runs of `held_out` (other skew, k, prototypes, capacity). `measure(layer, index)` performs the
/// real runs (e.g. `trainlab_executors::moe::measure`, deterministic routing per index); every layer must have
/// `ep_ranks = 1`.
///
/// Every layer is measured in `rounds` interleaved passes over all layers (fit and held-out alike; the held-out
/// runs never enter the fit) and each time keeps its minimum over the passes: interference from other processes on
/// a shared machine comes in bursts, and interleaving spreads a burst over many layers instead of all repeats of
/// one.
pub fn calibrate<F>(
    fit: &[MoeLayer],
    held_out: &[MoeLayer],
    replications: u64,
    seed: Seed,
    rounds: usize,
    mut measure: F,
) -> Result<Calibration, Error>
where
    F: FnMut(&MoeLayer, usize) -> Result<Vec<MeasuredStep>, Error>,
{
    for (i, l) in fit.iter().chain(held_out).enumerate() {
        l.validate()?;
        if l.ep_ranks != 1 {
            return Err(Error::invalid(
                format!("calibration.layers[{i}].ep_ranks"),
                l.ep_ranks,
                "single-device calibration needs ep_ranks = 1",
                "set ep_ranks = 1",
            ));
        }
    }
    // One untimed pass first: the first real run pays for page faults and lazy initialisation.
    if let Some(l) = fit.first().or(held_out.first()) {
        measure(l, 0)?;
    }
    let all: Vec<&MoeLayer> = fit.iter().chain(held_out).collect();
    let mut best: Vec<Vec<MeasuredStep>> = vec![vec![]; all.len()];
    for _ in 0..rounds.max(1) {
        for (i, l) in all.iter().enumerate() {
            let m = measure(l, i)?;
            if best[i].is_empty() {
                best[i] = m;
                continue;
            }
            for (b, s) in best[i].iter_mut().zip(&m) {
                debug_assert_eq!(b.loads, s.loads, "measure must route the same way for the same index");
                b.router_s = b.router_s.min(s.router_s);
                b.dispatch_s = b.dispatch_s.min(s.dispatch_s);
                b.combine_s = b.combine_s.min(s.combine_s);
                b.experts_s = b.experts_s.min(s.experts_s);
                b.backward_s = b.backward_s.min(s.backward_s);
                b.step_s = b.step_s.min(s.step_s);
            }
        }
    }
    let held_runs = best.split_off(fit.len());
    let runs = best;
    let mut samples = vec![];
    for (l, m) in fit.iter().zip(&runs) {
        samples.extend(m.iter().map(|s| cost_sample(l, s)));
    }
    let base = MoeCostModel::from_cluster(
        &fit.first()
            .map_or_else(|| held_out[0].cluster.clone(), |l| l.cluster.clone()),
        trainlab_core::Dtype::Fp32,
    );
    let cost = trainlab_models::moe::fit_single_device(&samples, &base);
    let sim = MoeSim {
        replications,
        cost: Some(cost.clone()),
    };
    let row = |l: &MoeLayer, m: &[MeasuredStep]| -> Result<CalibrationRow, Error> {
        let o = aggregate(l, &sim.replicate(l, seed)?);
        let n = m.len().max(1) as f64;
        let measured = m.iter().map(|s| s.step_s).sum::<f64>() / n;
        let c = l.capacity();
        let drop = m
            .iter()
            .map(|s| s.loads.iter().map(|&x| x.saturating_sub(c)).sum::<u64>() as f64 / l.slots() as f64)
            .sum::<f64>()
            / n;
        let replayed = m
            .iter()
            .map(|s| {
                let rows: Vec<f64> = s.loads.iter().map(|&x| x.min(c) as f64).collect();
                cost.step(l, &rows).step_s
            })
            .sum::<f64>()
            / n;
        Ok(CalibrationRow {
            replayed_step_s: replayed,
            replay_rel_error: (replayed - measured) / measured,
            label: format!("{} d{} f{}", l.label(), l.d_model, l.d_ff),
            measured_drop: drop,
            simulated_drop: o.drop_fraction.value,
            measured_step_s: measured,
            simulated_step_s: o.step_s.value,
            rel_error: (o.step_s.value - measured) / measured,
        })
    };
    let mut fitted = vec![];
    for (l, m) in fit.iter().zip(&runs) {
        fitted.push(row(l, m)?);
    }
    let mut held = vec![];
    for (l, m) in held_out.iter().zip(&held_runs) {
        held.push(row(l, m)?);
    }
    Ok(Calibration {
        cost,
        fitted,
        held_out: held,
    })
}

#[cfg(test)]
mod tests;

use super::*;

fn cfg(n: usize) -> DetectorConfig {
    DetectorConfig {
        ranks: n,
        hang_timeout_s: 3.0,
        window: 5,
        slow_threshold: 0.2,
    }
}

#[test]
fn finds_straggler_not_healthy() {
    let mut d = Detector::new(cfg(8), 0.0);
    for k in 0..20u64 {
        for r in 0..8 {
            let slow = k >= 10 && r == 5;
            let t = k as f64 + if slow { 0.5 } else { 0.01 * r as f64 };
            d.enter(r, k, t);
            d.exit(r, k, k as f64 + 0.6);
        }
        let v = d.check(k as f64 + 0.7);
        if k < 10 {
            assert_eq!(v, None, "false alarm at {k}");
        }
    }
    assert!(matches!(d.check(20.0), Some(Verdict::Slow { rank: 5, .. })));
}

#[test]
fn classifies_hangs() {
    let mut d = Detector::new(cfg(4), 0.0);
    for r in 0..4 {
        d.enter(r, 0, 0.1);
        d.exit(r, 0, 0.2);
    }
    for r in [0, 1, 3] {
        d.enter(r, 1, 1.1);
    }
    assert_eq!(d.check(2.0), None);
    assert_eq!(
        d.check(4.0),
        Some(Verdict::Hang {
            kind: HangKind::NonCommunication,
            ranks: vec![2]
        })
    );
    d.enter(2, 1, 1.2);
    // Link 1 -> 2 stalled: received counts grow downstream of rank 2; each rank's acknowledged sends equal its
    // right neighbour's receives.
    for (r, sent, recv) in [(0, 6, 5), (1, 3, 6), (2, 4, 3), (3, 5, 4)] {
        d.progress(r, 1, sent, recv);
    }
    assert_eq!(
        d.check(4.0),
        Some(Verdict::Hang {
            kind: HangKind::Communication,
            ranks: vec![1, 2]
        })
    );
    // Rank 3 stopped draining: its left neighbour delivered 6, it consumed 4.
    d.progress(2, 1, 6, 3);
    assert_eq!(
        d.check(4.0),
        Some(Verdict::Hang {
            kind: HangKind::NonCommunication,
            ranks: vec![3]
        })
    );
    d.crash(3);
    assert_eq!(d.check(4.0), Some(Verdict::Crash { rank: 3 }));
}

/// The detector as it was before its open-step map, median and period became allocation-free (BTreeMap, sorted
/// copies, the median from a full sort): the reference the current one must match call for call.
#[allow(dead_code)]
mod reference {
    use crate::detector::{DetectorConfig, HangKind, Verdict};
    use std::collections::{BTreeMap, VecDeque};

    /// The middle value of a sorted slice, or the mean of the two middle values for an even length.
    fn sorted_median(s: &[f64]) -> f64 {
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    #[derive(Debug, Clone)]
    struct StepRec {
        enter: Vec<f64>,
        entered: usize,
    }

    #[derive(Debug, Clone)]
    pub struct RefDetector {
        cfg: DetectorConfig,
        open: BTreeMap<u64, StepRec>,
        last_enter: Vec<Option<u64>>,
        chunks: Vec<(u64, u64, u64)>,
        last_progress_s: f64,
        lags: Vec<VecDeque<f64>>,
        last_flags: VecDeque<usize>,
        periods: VecDeque<f64>,
        prev_median: Option<(u64, f64)>,
        crashed: Option<usize>,
    }

    impl RefDetector {
        pub fn new(cfg: DetectorConfig, start_s: f64) -> Self {
            RefDetector {
                cfg,
                open: BTreeMap::new(),
                last_enter: vec![None; cfg.ranks],
                chunks: vec![(0, 0, 0); cfg.ranks],
                last_progress_s: start_s,
                lags: vec![VecDeque::with_capacity(cfg.window + 1); cfg.ranks],
                last_flags: VecDeque::with_capacity(cfg.window + 1),
                periods: VecDeque::with_capacity(33),
                prev_median: None,
                crashed: None,
            }
        }

        pub fn reset(&mut self, start_s: f64) {
            self.open.clear();
            self.last_enter.iter_mut().for_each(|x| *x = None);
            self.chunks.iter_mut().for_each(|x| *x = (0, 0, 0));
            self.last_progress_s = start_s;
            self.lags.iter_mut().for_each(|q| q.clear());
            self.last_flags.clear();
            self.periods.clear();
            self.prev_median = None;
            self.crashed = None;
        }

        pub fn config(&self) -> &DetectorConfig {
            &self.cfg
        }

        pub fn enter(&mut self, rank: usize, step: u64, t: f64) {
            if rank >= self.cfg.ranks {
                return;
            }
            self.last_enter[rank] = Some(self.last_enter[rank].map_or(step, |s| s.max(step)));
            let n = self.cfg.ranks;
            let rec = self.open.entry(step).or_insert_with(|| StepRec {
                enter: vec![f64::NAN; n],
                entered: 0,
            });
            if rec.enter[rank].is_nan() {
                rec.enter[rank] = t;
                rec.entered += 1;
            }
            if rec.entered == n {
                if let Some(rec) = self.open.remove(&step) {
                    self.complete_step(step, &rec.enter);
                }
                // Older incomplete steps can no longer complete in order; drop them.
                let old: Vec<u64> = self.open.range(..step).map(|(k, _)| *k).collect();
                for k in old {
                    self.open.remove(&k);
                }
            }
        }

        pub fn exit(&mut self, rank: usize, step: u64, t: f64) {
            if rank < self.cfg.ranks {
                self.last_progress_s = self.last_progress_s.max(t);
                self.chunks[rank] = (step, u64::MAX, u64::MAX);
            }
        }

        pub fn progress(&mut self, rank: usize, step: u64, sent: u64, received: u64) {
            if rank < self.cfg.ranks {
                self.chunks[rank] = (step, sent, received);
            }
        }

        pub fn set_hang_timeout(&mut self, hang_timeout_s: f64, now_s: f64) {
            self.cfg.hang_timeout_s = hang_timeout_s;
            self.last_progress_s = self.last_progress_s.max(now_s);
        }

        pub fn crash(&mut self, rank: usize) {
            if rank < self.cfg.ranks && self.crashed.is_none() {
                self.crashed = Some(rank);
            }
        }

        fn complete_step(&mut self, step: u64, enter: &[f64]) {
            let mut sorted = enter.to_vec();
            sorted.sort_by(f64::total_cmp);
            let med = sorted_median(&sorted);
            if let Some((pk, pm)) = self.prev_median
                && step > pk
            {
                let p = (med - pm) / (step - pk) as f64;
                if p > 0.0 {
                    if self.periods.len() == 32 {
                        self.periods.pop_front();
                    }
                    self.periods.push_back(p);
                }
            }
            self.prev_median = Some((step, med));
            let last = enter
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            if self.last_flags.len() == self.cfg.window {
                self.last_flags.pop_front();
            }
            self.last_flags.push_back(last);
            for (r, &t) in enter.iter().enumerate() {
                let q = &mut self.lags[r];
                if q.len() == self.cfg.window {
                    q.pop_front();
                }
                q.push_back(t - med);
            }
        }

        pub fn period(&self) -> Option<f64> {
            if self.periods.is_empty() {
                return None;
            }
            let mut p: Vec<f64> = self.periods.iter().copied().collect();
            p.sort_by(f64::total_cmp);
            Some(sorted_median(&p))
        }

        pub fn check(&self, now_s: f64) -> Option<Verdict> {
            if let Some(rank) = self.crashed {
                return Some(Verdict::Crash { rank });
            }
            if now_s - self.last_progress_s > self.cfg.hang_timeout_s {
                return Some(self.classify_hang());
            }
            self.straggler()
        }

        fn classify_hang(&self) -> Verdict {
            let max_step = self.last_enter.iter().flatten().max().copied();
            let behind: Vec<usize> = match max_step {
                Some(m) => (0..self.cfg.ranks)
                    .filter(|&r| self.last_enter[r].is_none_or(|s| s < m))
                    .collect(),
                None => (0..self.cfg.ranks).collect(),
            };
            if !behind.is_empty() && behind.len() < self.cfg.ranks {
                return Verdict::Hang {
                    kind: HangKind::NonCommunication,
                    ranks: behind,
                };
            }
            let n = self.cfg.ranks;
            let live = |r: usize| Some(self.chunks[r].0) == max_step && self.chunks[r].2 != u64::MAX;
            // A rank not draining what its left neighbour delivered is stuck inside the collective.
            let stuck: Vec<usize> = (0..n)
                .filter(|&r| {
                    let l = (r + n - 1) % n;
                    live(r) && live(l) && self.chunks[l].1 > self.chunks[r].2
                })
                .collect();
            if !stuck.is_empty() && stuck.len() < n {
                return Verdict::Hang {
                    kind: HangKind::NonCommunication,
                    ranks: stuck,
                };
            }
            // A stalled link ends at the rank with the fewest chunks received.
            let r = (0..n)
                .filter(|&r| live(r))
                .min_by_key(|&r| self.chunks[r].2)
                .unwrap_or(0);
            Verdict::Hang {
                kind: HangKind::Communication,
                ranks: vec![(r + n - 1) % n, r],
            }
        }

        fn straggler(&self) -> Option<Verdict> {
            let w = self.cfg.window;
            if self.last_flags.len() < w {
                return None;
            }
            let period = self.period()?;
            let (rank, lag) = self
                .lags
                .iter()
                .enumerate()
                .map(|(r, q)| (r, q.iter().sum::<f64>() / q.len().max(1) as f64 / period))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            let last_count = self.last_flags.iter().filter(|&&r| r == rank).count();
            (lag > self.cfg.slow_threshold && 2 * last_count > w).then_some(Verdict::Slow { rank, lag })
        }
    }
}

#[derive(Debug, Clone)]
enum DetOp {
    Enter(usize, u64, f64),
    Exit(usize, u64, f64),
    Progress(usize, u64, u64, u64),
    Crash(usize),
    SetHang(f64, f64),
    Reset(f64),
}

fn det_op() -> impl proptest::strategy::Strategy<Value = DetOp> {
    use proptest::prelude::*;
    // Times mostly increasing-ish small floats, with a NaN now and then; steps from a small range so they repeat,
    // arrive out of order and leave incomplete steps behind; ranks up to 20 (past the configured count too).
    let t = prop_oneof![20 => 0.0f64..40.0, 1 => Just(f64::NAN), 1 => Just(-0.0f64), 1 => Just(0.0f64)];
    prop_oneof![
        40 => (0usize..21, 0u64..8, t.clone()).prop_map(|(r, k, t)| DetOp::Enter(r % 6, k / 2, t)),
        20 => (0usize..21, 0u64..8, t.clone()).prop_map(|(r, k, t)| DetOp::Enter(r, k, t)),
        10 => (0usize..21, 0u64..8, t.clone()).prop_map(|(r, k, t)| DetOp::Exit(r, k, t)),
        5 => (0usize..21, 0u64..8, 0u64..6, 0u64..6).prop_map(|(r, k, a, b)| DetOp::Progress(r, k, a, b)),
        1 => (0usize..21).prop_map(DetOp::Crash),
        1 => (0.5f64..10.0, t.clone()).prop_map(|(h, t)| DetOp::SetHang(h, t)),
        1 => t.prop_map(DetOp::Reset),
    ]
}

proptest::proptest! {
    /// The detector (sorted-`Vec` open steps with recycled buffers, selection medians in reused buffers)
    /// gives the same verdicts and periods as the reference after every call, whatever the call sequence.
    #[test]
    fn detector_matches_reference(
        ranks in proptest::prop_oneof![3 => 1usize..5, 1 => 1usize..20],
        window in 1usize..4,
        ops in proptest::collection::vec(det_op(), 0..400),
        checks in proptest::collection::vec(0.0f64..60.0, 1..4),
    ) {
        let cfg = DetectorConfig { ranks, hang_timeout_s: 3.0, window, slow_threshold: 0.2 };
        let mut det = Detector::new(cfg, 0.0);
        let mut rf = reference::RefDetector::new(cfg, 0.0);
        for op in &ops {
            match *op {
                DetOp::Enter(r, k, t) => { det.enter(r, k, t); rf.enter(r, k, t); }
                DetOp::Exit(r, k, t) => { det.exit(r, k, t); rf.exit(r, k, t); }
                DetOp::Progress(r, k, a, b) => { det.progress(r, k, a, b); rf.progress(r, k, a, b); }
                DetOp::Crash(r) => { det.crash(r); rf.crash(r); }
                DetOp::SetHang(h, t) => { det.set_hang_timeout(h, t); rf.set_hang_timeout(h, t); }
                DetOp::Reset(t) => { det.reset(t); rf.reset(t); }
            }
            proptest::prop_assert_eq!(format!("{:?}", det.period()), format!("{:?}", rf.period()));
            for &t in &checks {
                proptest::prop_assert_eq!(format!("{:?}", det.check(t)), format!("{:?}", rf.check(t)), "{:?}", op);
            }
        }
    }
}

/// Straggler-heavy streams (every step completes, one rank lags): the verdicts agree step by step, slow ones
/// included (random call sequences rarely reach a full straggler window).
#[test]
fn detector_matches_reference_on_stragglers() {
    use rand::RngExt;
    let mut rng = crate::Seed(17).rng();
    for ranks in [3usize, 5, 16, 17, 24] {
        let cfg = DetectorConfig {
            ranks,
            hang_timeout_s: 30.0,
            window: 5,
            slow_threshold: 0.2,
        };
        let mut det = Detector::new(cfg, 0.0);
        let mut rf = reference::RefDetector::new(cfg, 0.0);
        let mut slow_seen = 0;
        for k in 0..400u64 {
            let slow = (k / 40) % 2 == 1;
            for r in 0..ranks {
                let mut t = k as f64 + 0.05 * rng.random::<f64>();
                if slow && r == ranks / 2 {
                    t += 0.5;
                }
                det.enter(r, k, t);
                rf.enter(r, k, t);
            }
            for r in 0..ranks {
                det.exit(r, k, k as f64 + 0.8);
                rf.exit(r, k, k as f64 + 0.8);
            }
            let (a, b) = (det.check(k as f64 + 0.9), rf.check(k as f64 + 0.9));
            slow_seen += matches!(a, Some(Verdict::Slow { .. })) as u32;
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "ranks {ranks} step {k}");
            assert_eq!(det.period(), rf.period());
        }
        assert!(slow_seen > 50, "ranks {ranks}: {slow_seen} slow verdicts");
    }
}

//! Operation graphs of the step simulators (`dense::op_sim`, `recsys`): a DAG given as an edge list, turned into
//! in-degrees and successor lists in compressed sparse row form, the shape both replays walk.

/// A DAG of `n` operations: `pending[i]` predecessors of `i`, successors of `i` in `succ[start[i]..start[i + 1]]`
/// (in edge-list order).
#[derive(Debug, Clone)]
pub struct Dag {
    /// In-degree of each operation (decremented by a replay as predecessors finish).
    pub pending: Vec<u32>,
    /// Offsets into `succ`, `n + 1` of them.
    pub start: Vec<usize>,
    /// Successors, grouped by operation.
    pub succ: Vec<u32>,
}

impl Dag {
    /// The DAG of `n` operations with edges `(from, to)`; every index must be below `n`.
    pub fn new(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut pending = vec![0u32; n];
        let mut start = vec![0usize; n + 1];
        for &(a, b) in edges {
            pending[b as usize] += 1;
            start[a as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut succ = vec![0u32; edges.len()];
        for &(a, b) in edges {
            succ[fill[a as usize]] = b;
            fill[a as usize] += 1;
        }
        Dag { pending, start, succ }
    }

    /// The successors of operation `i`.
    pub fn successors(&self, i: usize) -> &[u32] {
        &self.succ[self.start[i]..self.start[i + 1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_and_in_degrees() {
        let d = Dag::new(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(d.pending, vec![0, 1, 1, 2]);
        assert_eq!(d.successors(0), &[1, 2]);
        assert_eq!(d.successors(3), &[] as &[u32]);
        assert_eq!(d.successors(1), &[3]);
    }
}

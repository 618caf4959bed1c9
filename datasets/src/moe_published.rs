//! MoE anchors: Switch Transformer's dropped-token statement (Fedus et al., JMLR 2022, §2.2, Eq. 3) and the design
//! notes' derived drop-rate table (c4-picasso-moe.md §3.4, a Monte Carlo target, not a paper's data). Files and
//! sources in `data/moe/`.

/// Switch Transformer: dropped tokens are "typically < 1%" with the auxiliary balance loss.
pub const SWITCH_TYPICAL_DROP_BOUND: f64 = 0.01;
/// Switch Transformer: auxiliary loss coefficient alpha (Eq. 4).
pub const SWITCH_AUX_ALPHA: f64 = 1e-2;

/// The derived table as shipped.
pub const DERIVED_DROP_CSV: &str = include_str!("../data/moe/derived_drop.csv");

/// One row of the derived table: N = 4096, E = 32, Zipf(s) router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DerivedDrop {
    /// Zipf exponent.
    pub skew_s: f64,
    /// Capacity factor.
    pub capacity_factor: f64,
    /// Drop fractions: top-1, top-2, 2xtop1, top-4, 4xtop1.
    pub drops: [f64; 5],
}

/// Tokens of the derived table.
pub const DERIVED_TOKENS: u64 = 4096;
/// Experts of the derived table.
pub const DERIVED_EXPERTS: u64 = 32;

/// The parsed derived table (the embedded CSV is fixed; a malformed row is a packaging bug caught by the tests).
pub fn derived_drop() -> Vec<DerivedDrop> {
    DERIVED_DROP_CSV
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: Vec<f64> = l.split(',').filter_map(|c| c.trim().parse().ok()).collect();
            (v.len() == 7).then(|| DerivedDrop {
                skew_s: v[0],
                capacity_factor: v[1],
                drops: [v[2], v[3], v[4], v[5], v[6]],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_table_parses() {
        let t = super::derived_drop();
        assert_eq!(t.len(), 6);
        assert_eq!(t[4].drops[0], 0.421);
    }
}

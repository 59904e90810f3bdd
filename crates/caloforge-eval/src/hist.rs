//! Histograms with NumPy semantics and the separation power (SPEC §5).

use caloforge_core::numeric::pairwise_sum;

/// A histogram with explicit edges, filled like `numpy.histogram(x, bins=edges)`: bins are
/// `[e_k, e_{k+1})` except the last, which is closed; values outside `[e_0, e_K]` and NaN are
/// dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Hist {
    /// Bin edges, increasing.
    pub edges: Vec<f64>,
    /// Counts per bin.
    pub counts: Vec<u64>,
}

impl Hist {
    /// Empty histogram on `edges` (at least two, increasing).
    pub fn new(edges: Vec<f64>) -> Self {
        let n = edges.len().saturating_sub(1);
        Hist {
            edges,
            counts: vec![0; n],
        }
    }

    /// Whether the edges form a usable binning (≥ 2 finite, strictly increasing values).
    pub fn valid(&self) -> bool {
        self.edges.len() >= 2
            && self.edges.iter().all(|e| e.is_finite())
            && self.edges.windows(2).all(|w| w[1] > w[0])
    }

    /// Bin index of `x`, or `None` when it falls outside the edges.
    pub fn bin(&self, x: f64) -> Option<usize> {
        let k = self.counts.len();
        if k == 0 || !(x >= self.edges[0] && x <= self.edges[k]) {
            return None;
        }
        let i = self.edges.partition_point(|&e| e <= x);
        Some((i - 1).min(k - 1))
    }

    /// Adds one value.
    pub fn fill(&mut self, x: f64) {
        if let Some(b) = self.bin(x) {
            self.counts[b] += 1;
        }
    }

    /// Adds many values.
    pub fn fill_all(&mut self, xs: impl IntoIterator<Item = f64>) {
        for x in xs {
            self.fill(x);
        }
    }

    /// Adds the counts of another histogram on the same edges.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Number of in-range entries.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `density=True` values, computed as NumPy does: counts / bin width / total.
    pub fn density(&self) -> Vec<f64> {
        let total: f64 = self.total() as f64;
        self.counts
            .iter()
            .zip(self.edges.windows(2))
            .map(|(&c, w)| c as f64 / (w[1] - w[0]) / total)
            .collect()
    }

    /// Probability per bin as the reference computes it: density × bin width.
    pub fn probabilities(&self) -> Vec<f64> {
        self.density()
            .iter()
            .zip(self.edges.windows(2))
            .map(|(d, w)| d * (w[1] - w[0]))
            .collect()
    }
}

/// Separation power (triangular discrimination) of two histograms on the same edges:
/// ½ Σ (p_k − q_k)² / (p_k + q_k + 1e−16). NaN if either histogram is empty.
pub fn separation_power(a: &Hist, b: &Hist) -> f64 {
    let p = a.probabilities();
    let q = b.probabilities();
    let terms: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(x, y)| {
            let d = x - y;
            (d * d) / (x + y + 1e-16)
        })
        .collect();
    0.5 * pairwise_sum(&terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_bin_semantics() {
        let mut h = Hist::new(vec![0.0, 1.0, 2.0, 3.0]);
        h.fill_all([-0.1, 0.0, 0.5, 1.0, 2.999, 3.0, 3.0001, f64::NAN]);
        // 0.0, 0.5 -> bin 0; 1.0 -> bin 1; 2.999, 3.0 (last edge closed) -> bin 2.
        assert_eq!(h.counts, vec![2, 1, 2]);
        assert_eq!(h.total(), 5);
    }

    #[test]
    fn separation_power_hand_computed() {
        // p = (0.5, 0.5, 0), q = (0.25, 0.25, 0.5)
        let mut a = Hist::new(vec![0.0, 1.0, 3.0, 4.0]);
        a.fill_all([0.5, 2.0]);
        let mut b = Hist::new(vec![0.0, 1.0, 3.0, 4.0]);
        b.fill_all([0.5, 2.0, 3.5, 3.6]);
        let want = 0.5 * (2.0 * 0.25f64.powi(2) / 0.75 + 0.25 / 0.5);
        assert!((separation_power(&a, &b) - want).abs() < 1e-15);
        assert_eq!(separation_power(&a, &a), 0.0);
        // Disjoint histograms give 1.
        let mut c = Hist::new(vec![0.0, 1.0, 2.0]);
        c.fill(0.5);
        let mut d = Hist::new(vec![0.0, 1.0, 2.0]);
        d.fill(1.5);
        assert!((separation_power(&c, &d) - 1.0).abs() < 1e-12);
        // Empty histogram: NaN, as in the reference.
        let e = Hist::new(vec![0.0, 1.0, 2.0]);
        assert!(separation_power(&c, &e).is_nan());
    }
}

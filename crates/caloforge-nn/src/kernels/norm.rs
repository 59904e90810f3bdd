//! Normalisations on channels-last rows: GroupNorm (over a grid's voxels and each group's
//! channels) and LayerNorm (over each row).

use super::simd::{silu, simd_method, sum_of};

/// GroupNorm: biased variance, ε inside the square root, per-channel affine (burn's and
/// PyTorch's `GroupNorm`).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub groups: usize,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f64,
}

impl GroupNorm {
    simd_method!(
        /// Normalises channels-last `x` (rows of `gamma.len()` channels) in place, then SiLU
        /// if `act`.
        pub apply, apply_avx2, apply_impl, (x: &mut [f32], act: bool));

    #[inline(always)]
    fn apply_impl(&self, x: &mut [f32], act: bool) {
        let c = self.gamma.len();
        let n = x.len() / c;
        let cg = c / self.groups;
        // Per-channel sums in f32 (vectorised), group totals in f64; two passes as burn.
        let mut sum = vec![0.0f32; c];
        for row in x.chunks_exact(c) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        let cnt = (n * cg) as f64;
        let mean: Vec<f64> = (0..self.groups)
            .map(|g| {
                sum[g * cg..(g + 1) * cg]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / cnt
            })
            .collect();
        let mc: Vec<f32> = (0..c).map(|ch| mean[ch / cg] as f32).collect();
        let mut sq = vec![0.0f32; c];
        for row in x.chunks_exact(c) {
            for ((s, &v), &m) in sq.iter_mut().zip(row).zip(&mc) {
                let dv = v - m;
                *s += dv * dv;
            }
        }
        let inv: Vec<f64> = (0..self.groups)
            .map(|g| {
                let var = sq[g * cg..(g + 1) * cg]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / cnt;
                1.0 / (var + self.eps).sqrt()
            })
            .collect();
        let scale: Vec<f32> = (0..c)
            .map(|ch| (inv[ch / cg] * self.gamma[ch] as f64) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| {
                (self.beta[ch] as f64 - mean[ch / cg] * inv[ch / cg] * self.gamma[ch] as f64) as f32
            })
            .collect();
        for row in x.chunks_exact_mut(c) {
            for ((v, &a), &b) in row.iter_mut().zip(&scale).zip(&shift) {
                *v = *v * a + b;
            }
        }
        if act {
            silu(x);
        }
    }
}

/// LayerNorm over the last axis: biased variance, ε inside the square root, per-feature affine
/// (burn's and PyTorch's `LayerNorm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f64,
}

impl LayerNorm {
    simd_method!(
        /// Normalises each row of `x` (rows of `gamma.len()` features) in place, in f32 as
        /// burn: the mean, then the mean square of the deviations.
        pub apply, apply_avx2, apply_impl, (x: &mut [f32]));

    #[inline(always)]
    fn apply_impl(&self, x: &mut [f32]) {
        let d = self.gamma.len();
        let eps = self.eps as f32;
        for row in x.chunks_exact_mut(d) {
            let mean = sum_of(row, |v| v) / d as f32;
            let var = sum_of(row, |v| (v - mean) * (v - mean)) / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, &g), &b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

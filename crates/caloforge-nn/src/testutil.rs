//! Helpers shared by the samplers' tests.

use rand_chacha::ChaCha8Rng;

/// `n` per-shower RNG streams of `seed`.
pub fn rngs(n: usize, seed: u64) -> Vec<ChaCha8Rng> {
    (0..n)
        .map(|k| caloforge_core::rng::shower_rng(seed, k as u64))
        .collect()
}

/// (mean, population standard deviation) of `x`.
pub fn moments(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

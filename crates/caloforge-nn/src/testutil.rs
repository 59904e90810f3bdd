//! Helpers shared by the samplers' and operations' tests.

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

/// Checks the gradient `grad` of `f` at `x0` against central finite differences of step `h`
/// (f evaluated in f64 sums) at every `every`-th coordinate: |fd − g| < tol (1 + |fd|).
pub fn check_finite_differences(
    x0: &[f32],
    grad: &[f32],
    f: impl Fn(&[f32]) -> f64,
    h: f32,
    tol: f64,
    every: usize,
) {
    for i in (0..x0.len()).step_by(every.max(1)) {
        let (mut p, mut m) = (x0.to_vec(), x0.to_vec());
        p[i] += h;
        m[i] -= h;
        let fd = (f(&p) - f(&m)) / (2.0 * h as f64);
        assert!(
            (fd - grad[i] as f64).abs() < tol * (1.0 + fd.abs()),
            "x[{i}]: finite difference {fd} vs gradient {}",
            grad[i]
        );
    }
}

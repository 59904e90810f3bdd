//! Fréchet and kernel physics distances (FPD, KPD) on the high-level features (SPEC §5), as
//! JetNet computes them: features divided by max |reference|, bootstrap batches drawn with
//! replacement, FPD extrapolated to infinite sample size by a non-negative linear fit in 1/N,
//! KPD the median of unbiased polynomial-kernel MMD² estimates.
//!
//! The bootstrap indices come from caloforge's seeded RNG, not NumPy's, so values agree with
//! JetNet statistically (within the quoted errors), not bit for bit.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::{Rng, SeedableRng};

/// A value with its error.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ValueError {
    /// Central value.
    pub value: f64,
    /// Error.
    pub error: f64,
}

/// FPD settings (JetNet names).
#[derive(Debug, Clone)]
pub struct FpdConfig {
    /// Smallest batch size.
    pub min_samples: usize,
    /// Largest batch size.
    pub max_samples: usize,
    /// Batches per batch size.
    pub num_batches: usize,
    /// Number of batch sizes, equally spaced in 1/N.
    pub num_points: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for FpdConfig {
    fn default() -> Self {
        FpdConfig {
            min_samples: 10_000,
            max_samples: 50_000,
            num_batches: 20,
            num_points: 10,
            seed: 42,
        }
    }
}

/// KPD settings (JetNet names).
#[derive(Debug, Clone)]
pub struct KpdConfig {
    /// Number of batches.
    pub num_batches: usize,
    /// Batch size.
    pub batch_size: usize,
    /// RNG seed (batch i uses seed + 1000·i).
    pub seed: u64,
}

impl Default for KpdConfig {
    fn default() -> Self {
        KpdConfig {
            num_batches: 10,
            batch_size: 10_000,
            seed: 42,
        }
    }
}

/// Divides both samples feature-wise by max |real| (a zero maximum is replaced by 1).
pub fn normalise(real: &DMatrix<f64>, gen: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    let d = real.ncols();
    let mut maxes = vec![0.0f64; d];
    for j in 0..d {
        let m = real.column(j).iter().fold(0.0f64, |a, &v| a.max(v.abs()));
        maxes[j] = if m == 0.0 { 1.0 } else { m };
    }
    let scale = |m: &DMatrix<f64>| {
        let mut out = m.clone();
        for j in 0..d {
            out.column_mut(j).iter_mut().for_each(|v| *v /= maxes[j]);
        }
        out
    };
    (scale(real), scale(gen))
}

fn mean_cov(x: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.nrows() as f64;
    let mu = x.row_mean().transpose();
    let mut c = x.clone();
    for mut row in c.row_iter_mut() {
        row -= mu.transpose();
    }
    let cov = c.transpose() * &c / (n - 1.0);
    (mu, cov)
}

fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(m.clone());
    let vals = e.eigenvalues.map(|v| v.max(0.0).sqrt());
    &e.eigenvectors * DMatrix::from_diagonal(&vals) * e.eigenvectors.transpose()
}

/// Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2):
/// ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}). The trace of the matrix square root is computed
/// from the eigenvalues of the symmetric Σ1^{1/2} Σ2 Σ1^{1/2}, which equal those of Σ1 Σ2.
pub fn frechet_distance(
    mu1: &DVector<f64>,
    s1: &DMatrix<f64>,
    mu2: &DVector<f64>,
    s2: &DMatrix<f64>,
) -> f64 {
    let diff = mu1 - mu2;
    let r1 = sqrt_psd(s1);
    let mut m = &r1 * s2 * &r1;
    m = (&m + m.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(m)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    diff.dot(&diff) + s1.trace() + s2.trace() - 2.0 * tr_sqrt
}

fn sample_rows(x: &DMatrix<f64>, n: usize, rng: &mut impl Rng) -> DMatrix<f64> {
    let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..x.nrows())).collect();
    x.select_rows(&rows)
}

/// Non-negative least-squares fit y = a + b·x (a, b ≥ 0); returns (a, b, σ_a) with σ_a from the
/// residual variance, as `scipy.optimize.curve_fit` reports it.
pub fn nonneg_linear_fit(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let (mut a, mut b) = if sxx > 0.0 {
        let b = sxy / sxx;
        (my - b * mx, b)
    } else {
        (my, 0.0)
    };
    if b < 0.0 {
        b = 0.0;
        a = my.max(0.0);
    } else if a < 0.0 {
        a = 0.0;
        let sx2: f64 = x.iter().map(|v| v * v).sum();
        b = (x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>() / sx2).max(0.0);
    }
    let rss: f64 = x.iter().zip(y).map(|(p, q)| (q - a - b * p).powi(2)).sum();
    let dof = (x.len() as f64 - 2.0).max(1.0);
    let s2 = rss / dof;
    // (JᵀJ)⁻¹ for J = [1, x]: [[Σx², −Σx], [−Σx, n]] / det
    let sx: f64 = x.iter().sum();
    let sx2: f64 = x.iter().map(|v| v * v).sum();
    let det = n * sx2 - sx * sx;
    let var_a = if det > 0.0 { sx2 / det * s2 } else { f64::NAN };
    (a, b, var_a.sqrt())
}

/// FPD of generated vs real features (rows = samples); `progress(done, total)`.
pub fn fpd(
    real: &DMatrix<f64>,
    gen: &DMatrix<f64>,
    cfg: &FpdConfig,
    mut progress: impl FnMut(usize, usize),
) -> ValueError {
    let (x, y) = normalise(real, gen);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let inv = caloforge_core::geometry::linspace(
        1.0 / cfg.min_samples as f64,
        1.0 / cfg.max_samples as f64,
        cfg.num_points,
    );
    let batches: Vec<usize> = inv.iter().map(|v| (1.0 / v) as i32 as usize).collect();
    let mut vals = Vec::new();
    let total = batches.len() * cfg.num_batches;
    for (bi, &bs) in batches.iter().enumerate() {
        let mut acc = 0.0;
        for k in 0..cfg.num_batches {
            let a = sample_rows(&x, bs, &mut rng);
            let b = sample_rows(&y, bs, &mut rng);
            let (m1, s1) = mean_cov(&a);
            let (m2, s2) = mean_cov(&b);
            acc += frechet_distance(&m1, &s1, &m2, &s2);
            progress(bi * cfg.num_batches + k + 1, total);
        }
        vals.push(acc / cfg.num_batches as f64);
    }
    let xs: Vec<f64> = batches.iter().map(|&b| 1.0 / b as f64).collect();
    let (a, _, err) = nonneg_linear_fit(&xs, &vals);
    ValueError {
        value: a,
        error: err,
    }
}

/// Unbiased MMD² with the polynomial kernel k(x, y) = (x·y/d + 1)^4.
pub fn mmd_poly_unbiased(x: &DMatrix<f64>, y: &DMatrix<f64>) -> f64 {
    let d = x.ncols() as f64;
    let k = |g: DMatrix<f64>| g.map(|v| (v / d + 1.0).powi(4));
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    let kxx = k(x * x.transpose());
    let kyy = k(y * y.transpose());
    let kxy = k(x * y.transpose());
    (kxx.sum() - kxx.trace()) / (m * (m - 1.0)) + (kyy.sum() - kyy.trace()) / (n * (n - 1.0))
        - 2.0 * kxy.mean()
}

/// Percentile with linear interpolation (NumPy's default method).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// KPD of generated vs real features: median and half the 16.275–83.725 percentile range.
pub fn kpd(
    real: &DMatrix<f64>,
    gen: &DMatrix<f64>,
    cfg: &KpdConfig,
    mut progress: impl FnMut(usize, usize),
) -> ValueError {
    let (x, y) = normalise(real, gen);
    let mut vals = Vec::new();
    for i in 0..cfg.num_batches {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed + 1000 * i as u64);
        let a = sample_rows(&x, cfg.batch_size, &mut rng);
        let b = sample_rows(&y, cfg.batch_size, &mut rng);
        vals.push(mmd_poly_unbiased(&a, &b));
        progress(i + 1, cfg.num_batches);
    }
    ValueError {
        value: percentile(&vals, 50.0),
        error: (percentile(&vals, 83.725) - percentile(&vals, 16.275)) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_closed_form_diagonal() {
        // Diagonal covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
        let mu1 = DVector::from_vec(vec![0.0, 1.0]);
        let mu2 = DVector::from_vec(vec![1.0, 1.0]);
        let s1 = DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0]));
        let s2 = DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 9.0]));
        let want = 1.0 + (2.0f64 - 1.0).powi(2) + (1.0f64 - 3.0).powi(2);
        assert!((frechet_distance(&mu1, &s1, &mu2, &s2) - want).abs() < 1e-10);
        // Identical Gaussians (full covariance): 0.
        let s = DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 1.0]);
        assert!(frechet_distance(&mu1, &s, &mu1, &s).abs() < 1e-10);
    }

    #[test]
    fn linear_fit_and_percentile() {
        let x = [0.1, 0.2, 0.3, 0.4];
        let y: Vec<f64> = x.iter().map(|v| 2.0 + 3.0 * v).collect();
        let (a, b, e) = nonneg_linear_fit(&x, &y);
        assert!((a - 2.0).abs() < 1e-12 && (b - 3.0).abs() < 1e-12 && e.abs() < 1e-6);
        // Negative intercept is clipped to 0.
        let y: Vec<f64> = x.iter().map(|v| -1.0 + 10.0 * v).collect();
        assert_eq!(nonneg_linear_fit(&x, &y).0, 0.0);
        // np.percentile([1,2,3,4], 25) = 1.75
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 25.0) - 1.75).abs() < 1e-15);
    }

    #[test]
    fn mmd_vanishes_for_same_sample_distribution() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let a = DMatrix::from_fn(400, 3, |_, _| rng.random_range(-1.0..1.0));
        let b = DMatrix::from_fn(400, 3, |_, _| rng.random_range(-1.0..1.0));
        let c = DMatrix::from_fn(400, 3, |_, _| rng.random_range(0.0..2.0));
        let same = mmd_poly_unbiased(&a, &b).abs();
        let diff = mmd_poly_unbiased(&a, &c);
        assert!(same < 0.01, "{same}");
        assert!(diff > 10.0 * same, "{diff} vs {same}");
    }
}

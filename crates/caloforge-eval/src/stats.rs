//! Statistics of the classifier test: isotonic calibration, ROC AUC, BCE/JSD, calibration curve.

/// Isotonic (non-decreasing) regression with scikit-learn's `IsotonicRegression(y_min, y_max,
/// out_of_bounds='clip')` semantics: duplicate x averaged, pool-adjacent-violators with weights,
/// fitted values clipped to [y_min, y_max], prediction by linear interpolation with inputs
/// clipped to the fitted range.
#[derive(Debug, Clone)]
pub struct Isotonic {
    xs: Vec<f64>,
    ys: Vec<f64>,
}

impl Isotonic {
    /// Fits on (x, y) pairs.
    pub fn fit(x: &[f64], y: &[f64], y_min: f64, y_max: f64) -> Self {
        assert_eq!(x.len(), y.len());
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]).then(y[a].total_cmp(&y[b])));
        // Unique x with averaged y (weights = multiplicities).
        let mut ux: Vec<f64> = Vec::new();
        let mut uy: Vec<f64> = Vec::new();
        let mut uw: Vec<f64> = Vec::new();
        for &i in &idx {
            if ux.last() == Some(&x[i]) {
                *uy.last_mut().unwrap() += y[i];
                *uw.last_mut().unwrap() += 1.0;
            } else {
                ux.push(x[i]);
                uy.push(y[i]);
                uw.push(1.0);
            }
        }
        for (s, w) in uy.iter_mut().zip(&uw) {
            *s /= w;
        }
        let fitted = pav(&uy, &uw);
        let ys = fitted.into_iter().map(|v| v.clamp(y_min, y_max)).collect();
        Isotonic { xs: ux, ys }
    }

    /// Calibrated value of `t`.
    pub fn predict(&self, t: f64) -> f64 {
        let n = self.xs.len();
        if n == 0 {
            return f64::NAN;
        }
        if n == 1 || t <= self.xs[0] {
            return self.ys[0];
        }
        if t >= self.xs[n - 1] {
            return self.ys[n - 1];
        }
        let j = self.xs.partition_point(|&v| v <= t); // xs[j-1] <= t < xs[j]
        let (x0, x1, y0, y1) = (self.xs[j - 1], self.xs[j], self.ys[j - 1], self.ys[j]);
        let slope = (y1 - y0) / (x1 - x0);
        slope * (t - x0) + y0
    }
}

/// Weighted pool-adjacent-violators: the non-decreasing sequence closest to `y` in weighted
/// least squares.
pub fn pav(y: &[f64], w: &[f64]) -> Vec<f64> {
    // Blocks of (mean, weight, length).
    let mut means: Vec<f64> = Vec::with_capacity(y.len());
    let mut weights: Vec<f64> = Vec::with_capacity(y.len());
    let mut lens: Vec<usize> = Vec::with_capacity(y.len());
    for (&yi, &wi) in y.iter().zip(w) {
        means.push(yi);
        weights.push(wi);
        lens.push(1);
        while means.len() > 1 && means[means.len() - 2] > means[means.len() - 1] {
            let (m2, w2, l2) = (
                means.pop().unwrap(),
                weights.pop().unwrap(),
                lens.pop().unwrap(),
            );
            let k = means.len() - 1;
            let wt = weights[k] + w2;
            means[k] = (means[k] * weights[k] + m2 * w2) / wt;
            weights[k] = wt;
            lens[k] += l2;
        }
    }
    let mut out = Vec::with_capacity(y.len());
    for (m, l) in means.iter().zip(&lens) {
        out.extend(std::iter::repeat_n(*m, *l));
    }
    out
}

/// Area under the ROC curve of scores for binary labels (1 = positive); ties count ½.
/// NaN when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos: f64 = labels.iter().filter(|&&l| l > 0.5).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let (mut tp, mut fp, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        let (tp0, fp0) = (tp, fp);
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] > 0.5 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        area += (fp - fp0) * (tp + tp0) / 2.0;
    }
    area / (pos * neg)
}

/// Binary cross-entropy of probabilities (natural log, each log clamped at −100 as PyTorch does).
pub fn bce(probs: &[f64], labels: &[f64]) -> f64 {
    let s: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| -(y * p.ln().max(-100.0) + (1.0 - y) * (1.0 - p).ln().max(-100.0)))
        .sum();
    s / probs.len() as f64
}

/// JSD estimate of the classifier test: (ln 2 − BCE) / ln 2.
pub fn jsd_from_bce(bce: f64) -> f64 {
    (std::f64::consts::LN_2 - bce) / std::f64::consts::LN_2
}

/// Accuracy of probabilities rounded at 0.5 (0.5 → 0, as `np.round` rounds half to even).
pub fn accuracy(probs: &[f64], labels: &[f64]) -> f64 {
    let ok = probs
        .iter()
        .zip(labels)
        .filter(|(&p, &y)| (if p > 0.5 { 1.0 } else { 0.0 }) == y.round())
        .count();
    ok as f64 / probs.len() as f64
}

/// Reliability curve with `n_bins` uniform bins on [0, 1] (scikit-learn `calibration_curve`):
/// (fraction of positives, mean predicted probability) for each non-empty bin.
pub fn calibration_curve(probs: &[f64], labels: &[f64], n_bins: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sum_p = vec![0.0; n_bins];
    let mut sum_y = vec![0.0; n_bins];
    let mut count = vec![0.0; n_bins];
    for (&p, &y) in probs.iter().zip(labels) {
        // searchsorted(interior edges, p, side='left')
        let mut b = 0;
        while b < n_bins - 1 && p > (b + 1) as f64 / n_bins as f64 {
            b += 1;
        }
        sum_p[b] += p;
        sum_y[b] += y;
        count[b] += 1.0;
    }
    let mut pt = Vec::new();
    let mut pp = Vec::new();
    for b in 0..n_bins {
        if count[b] > 0.0 {
            pt.push(sum_y[b] / count[b]);
            pp.push(sum_p[b] / count[b]);
        }
    }
    (pt, pp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pav_textbook() {
        // Classic example: [1, 3, 2, 4, 3, 5] -> [1, 2.5, 2.5, 3.5, 3.5, 5]
        let y = [1.0, 3.0, 2.0, 4.0, 3.0, 5.0];
        let out = pav(&y, &[1.0; 6]);
        assert_eq!(out, vec![1.0, 2.5, 2.5, 3.5, 3.5, 5.0]);
        // Weighted: [3 (w=1), 1 (w=3)] -> 1.5 both.
        assert_eq!(pav(&[3.0, 1.0], &[1.0, 3.0]), vec![1.5, 1.5]);
        // A decreasing run pools completely.
        assert_eq!(pav(&[3.0, 2.0, 1.0], &[1.0; 3]), vec![2.0; 3]);
    }

    #[test]
    fn isotonic_matches_sklearn_semantics() {
        // Values cross-checked with sklearn 1.9 IsotonicRegression(out_of_bounds='clip',
        // y_min=1e-6, y_max=1-1e-6):
        // fit([0.1,0.2,0.2,0.4,0.6,0.8], [0,1,0,0,1,1]).predict([0,0.1,0.3,0.5,0.7,1])
        // -> [1e-06, 1e-06, 0.3333333333333333, 0.6666661666666667, 0.999999, 0.999999]
        let iso = Isotonic::fit(
            &[0.1, 0.2, 0.2, 0.4, 0.6, 0.8],
            &[0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
            1e-6,
            1.0 - 1e-6,
        );
        let got: Vec<f64> = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
            .iter()
            .map(|&t| iso.predict(t))
            .collect();
        let want = [
            1e-6,
            1e-6,
            1.0 / 3.0,
            0.6666661666666667,
            1.0 - 1e-6,
            1.0 - 1e-6,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn auc_textbook() {
        // Perfect ranking, inverse ranking, and the Mann-Whitney example with one tie.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]), 0.0);
        // scores: pos {0.8, 0.4}, neg {0.4, 0.1}: pairs (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) 0.5,
        // (0.4>0.1) 1 -> 3.5/4.
        assert_eq!(roc_auc(&[0.8, 0.4, 0.4, 0.1], &[1.0, 1.0, 0.0, 0.0]), 0.875);
        // sklearn.metrics.roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
    }

    #[test]
    fn bce_and_jsd() {
        // Uninformative classifier: BCE = ln 2, JSD = 0.
        let b = bce(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]);
        assert!((b - std::f64::consts::LN_2).abs() < 1e-15);
        assert!(jsd_from_bce(b).abs() < 1e-15);
        // Perfect classifier: BCE -> 0, JSD -> 1; clamped logs keep p = 0 finite.
        let b = bce(&[0.0, 1.0], &[0.0, 1.0]);
        assert_eq!(b, 0.0);
        assert_eq!(bce(&[1.0], &[0.0]), 100.0);
        assert!((jsd_from_bce(0.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn calibration_curve_bins() {
        let (pt, pp) = calibration_curve(&[0.05, 0.15, 0.1, 0.95], &[0.0, 1.0, 0.0, 1.0], 10);
        // 0.05 and 0.1 fall in bin 0 (0.1 is on the interior edge: side='left'), 0.15 in bin 1.
        assert_eq!(pt, vec![0.0, 1.0, 1.0]);
        assert!((pp[0] - 0.075).abs() < 1e-15);
    }
}

//! The monotonic rational-quadratic spline of one feature on scalars (f64), parametrised as
//! nflows' `unconstrained_rational_quadratic_spline` (see [`crate::flow::spline`], whose
//! differentiable tensor version is tested against this one).

/// Spline settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplineConfig {
    /// Number of bins K.
    pub bins: usize,
    /// Tail bound B: the spline acts on [−B, B], identity outside.
    pub tail_bound: f64,
    /// Minimum bin width (fraction of 2B).
    pub min_width: f64,
    /// Minimum bin height.
    pub min_height: f64,
    /// Minimum derivative.
    pub min_derivative: f64,
    /// Divisor of the unnormalised widths and heights before the softmax. nflows divides by
    /// √hidden only when the autoregressive net has a `hidden_features` attribute
    /// (`nflows.nn.nde.made.MADE`); the MADE that `MaskedPiecewiseRationalQuadratic…Transform`
    /// builds (`nflows.transforms.made.MADE`, in 0.14 and on GitHub) has none, so the reference
    /// flows divide by 1.
    pub scale: f64,
}

impl SplineConfig {
    /// K bins on [−B, B] with nflows' minimum sizes (1e-6) and unscaled widths and heights, as
    /// `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` (see [`Self::scale`]).
    pub fn new(bins: usize, tail_bound: f64) -> Self {
        SplineConfig {
            bins,
            tail_bound,
            min_width: 1e-6,
            min_height: 1e-6,
            min_derivative: 1e-6,
            scale: 1.0,
        }
    }
    /// Parameters per feature, 3K − 1.
    pub fn n_params(&self) -> usize {
        3 * self.bins - 1
    }
    pub(crate) fn boundary_derivative(&self) -> f64 {
        // softplus(c) + min_d = 1
        ((1.0 - self.min_derivative).exp() - 1.0).ln()
    }
}

/// One feature's spline on scalars (f64), built from its 3K−1 raw parameters.
#[derive(Debug, Clone)]
pub struct Rqs {
    cw: Vec<f64>,
    ch: Vec<f64>,
    d: Vec<f64>,
    bound: f64,
}

/// Largest supported number of bins.
pub const MAX_BINS: usize = 64;

fn knots_scalar(u: &[f64], min: f64, bound: f64, scale: f64, out: &mut Vec<f64>) {
    let k = u.len();
    let m = u.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v / scale));
    let mut e = [0.0f64; MAX_BINS];
    for (ei, &v) in e.iter_mut().zip(u) {
        *ei = (v / scale - m).exp();
    }
    let e = &e[..k];
    let s: f64 = e.iter().sum();
    out.clear();
    out.push(-bound);
    let mut acc = 0.0;
    for &ei in e.iter().take(k - 1) {
        acc += min + (1.0 - min * k as f64) * ei / s;
        out.push(acc * 2.0 * bound - bound);
    }
    out.push(bound);
}

fn softplus_scalar(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

impl Rqs {
    /// The spline of raw parameters `p` (length 3K−1).
    pub fn new(p: &[f64], cfg: &SplineConfig) -> Self {
        let mut s = Rqs {
            cw: Vec::new(),
            ch: Vec::new(),
            d: Vec::new(),
            bound: cfg.tail_bound,
        };
        s.set(p.iter().copied(), cfg);
        s
    }

    /// Rebuilds the spline in place from raw parameters (no allocation once warm).
    pub fn set(&mut self, p: impl Iterator<Item = f64>, cfg: &SplineConfig) {
        let k = cfg.bins;
        let mut raw = [0.0f64; 3 * MAX_BINS];
        let mut n = 0;
        for v in p {
            raw[n] = v;
            n += 1;
        }
        debug_assert_eq!(n, 3 * k - 1);
        knots_scalar(
            &raw[..k],
            cfg.min_width,
            cfg.tail_bound,
            cfg.scale,
            &mut self.cw,
        );
        knots_scalar(
            &raw[k..2 * k],
            cfg.min_height,
            cfg.tail_bound,
            cfg.scale,
            &mut self.ch,
        );
        let c = softplus_scalar(cfg.boundary_derivative()) + cfg.min_derivative;
        self.d.clear();
        self.d.push(c);
        self.d.extend(
            raw[2 * k..3 * k - 1]
                .iter()
                .map(|&v| softplus_scalar(v) + cfg.min_derivative),
        );
        self.d.push(c);
        self.bound = cfg.tail_bound;
    }

    fn bin(knots: &[f64], v: f64) -> usize {
        knots[1..knots.len() - 1]
            .iter()
            .filter(|&&k| v >= k)
            .count()
    }

    /// Bin i's width, height, slope and knot derivatives.
    fn bin_shape(&self, i: usize) -> (f64, f64, f64, f64, f64) {
        let (w, h) = (self.cw[i + 1] - self.cw[i], self.ch[i + 1] - self.ch[i]);
        (w, h, h / w, self.d[i], self.d[i + 1])
    }

    /// log|dy/dx| at relative position θ of a bin with slope δ and knot derivatives d0, d1.
    fn log_derivative(delta: f64, d0: f64, d1: f64, theta: f64) -> f64 {
        let tom = theta * (1.0 - theta);
        let den = delta + (d0 + d1 - 2.0 * delta) * tom;
        let dnum = delta
            * delta
            * (d1 * theta * theta + 2.0 * delta * tom + d0 * (1.0 - theta) * (1.0 - theta));
        dnum.ln() - 2.0 * den.ln()
    }

    /// y = s(x) and log|dy/dx|.
    pub fn forward(&self, x: f64) -> (f64, f64) {
        if !(x >= -self.bound && x <= self.bound) {
            return (x, 0.0);
        }
        let i = Self::bin(&self.cw, x);
        let (w, h, delta, d0, d1) = self.bin_shape(i);
        let theta = (x - self.cw[i]) / w;
        let tom = theta * (1.0 - theta);
        let den = delta + (d0 + d1 - 2.0 * delta) * tom;
        let y = self.ch[i] + h * (delta * theta * theta + d0 * tom) / den;
        (y, Self::log_derivative(delta, d0, d1, theta))
    }

    /// x = s⁻¹(y) and log|dy/dx| at x.
    pub fn inverse(&self, y: f64) -> (f64, f64) {
        if !(y >= -self.bound && y <= self.bound) {
            return (y, 0.0);
        }
        let i = Self::bin(&self.ch, y);
        let (w, h, delta, d0, d1) = self.bin_shape(i);
        let sum_d = d0 + d1 - 2.0 * delta;
        let dy = y - self.ch[i];
        let a = h * (delta - d0) + dy * sum_d;
        let b = h * d0 - dy * sum_d;
        let c = -delta * dy;
        let disc = (b * b - 4.0 * a * c).max(0.0);
        let root = 2.0 * c / (-b - disc.sqrt());
        (
            root * w + self.cw[i],
            Self::log_derivative(delta, d0, d1, root),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` splines' raw parameters (`p` each), uniform in [−3, 3).
    pub(crate) fn random_params(n: usize, p: usize, seed: u64) -> Vec<f64> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * p).map(|_| r.random_range(-3.0..3.0)).collect()
    }

    #[test]
    fn scalar_spline_inverts_and_logdet_matches_finite_difference() {
        let cfg = SplineConfig {
            scale: 2.0,
            ..SplineConfig::new(8, 3.0)
        };
        let p = random_params(1, cfg.n_params(), 1);
        let s = Rqs::new(&p, &cfg);
        for i in 0..400 {
            let x = -4.0 + 8.0 * i as f64 / 399.0;
            let (y, ld) = s.forward(x);
            let (x2, ld2) = s.inverse(y);
            assert!((x - x2).abs() < 1e-9, "{x} -> {y} -> {x2}");
            assert!((ld - ld2).abs() < 1e-7);
            let h = 1e-6;
            if (x.abs() - 3.0).abs() > 2e-6 {
                let num = ((s.forward(x + h).0 - s.forward(x - h).0) / (2.0 * h)).ln();
                assert!((num - ld).abs() < 1e-4, "x {x}: {num} vs {ld}");
            }
        }
        // Identity tails and continuity at the bounds.
        assert_eq!(s.forward(5.0), (5.0, 0.0));
        assert!((s.forward(3.0).0 - 3.0).abs() < 1e-12 && (s.forward(-3.0).0 + 3.0).abs() < 1e-12);
    }
}

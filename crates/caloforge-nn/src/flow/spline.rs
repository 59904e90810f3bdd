//! Monotonic rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows") on [−B, B]
//! with linear (identity) tails, parametrised exactly as nflows'
//! `unconstrained_rational_quadratic_spline`: per feature 3K−1 numbers, K unnormalised widths,
//! K unnormalised heights (both divided by √hidden before the softmax) and K−1 interior
//! derivatives (the two boundary derivatives are fixed to 1 so the tails join smoothly).
//!
//! Two implementations of the same maths: [`rqs_tensor`] on burn tensors (differentiable, used
//! for training) and [`Rqs`] on scalars (f64, used by the fast sampler). Tests check they agree.

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Int, Tensor};

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
    /// Divisor of the unnormalised widths and heights (nflows: √hidden features).
    pub scale: f64,
}

impl SplineConfig {
    /// K bins on [−B, B] with nflows' minimum sizes (1e-6) and the widths/heights divided by
    /// √`hidden`.
    pub fn new(bins: usize, tail_bound: f64, hidden: usize) -> Self {
        SplineConfig {
            bins,
            tail_bound,
            min_width: 1e-6,
            min_height: 1e-6,
            min_derivative: 1e-6,
            scale: (hidden as f64).sqrt(),
        }
    }
    /// Parameters per feature, 3K − 1.
    pub fn n_params(&self) -> usize {
        3 * self.bins - 1
    }
    fn boundary_derivative(&self) -> f64 {
        // softplus(c) + min_d = 1
        ((1.0 - self.min_derivative).exp() - 1.0).ln()
    }
}

/// Direction of a spline evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// y = s(x).
    Forward,
    /// x = s⁻¹(y).
    Inverse,
}

fn knots(u: Tensor<3>, min: f64, bound: f64, k: usize) -> (Tensor<3>, Tensor<3>) {
    // u: [B, D, K] unnormalised -> (knots [B, D, K+1], sizes [B, D, K]).
    let [b, d, _] = u.dims();
    let dev = u.device();
    let w = softmax(u, 2) * (1.0 - min * k as f64) + min;
    let cum = w.cumsum(2).narrow(2, 0, k - 1) * (2.0 * bound) - bound;
    let lo = Tensor::<3>::full([b, d, 1], -bound, &dev);
    let hi = Tensor::<3>::full([b, d, 1], bound, &dev);
    let kn = Tensor::cat(vec![lo, cum, hi], 2);
    let sizes = kn.clone().narrow(2, 1, k) - kn.clone().narrow(2, 0, k);
    (kn, sizes)
}

/// Applies the spline to `x` [B, D] with parameters `p` [B, D, 3K−1]. Returns the output and
/// log|dy/dx| per element (of the forward map, also for `Direction::Inverse`, where it is
/// log|dx/dy| = −log|dy/dx| at the solution), both [B, D].
pub fn rqs_tensor(
    x: Tensor<2>,
    p: Tensor<3>,
    cfg: &SplineConfig,
    dir: Direction,
) -> (Tensor<2>, Tensor<2>) {
    let k = cfg.bins;
    let bound = cfg.tail_bound;
    let [b, d, _] = p.dims();
    let dev = p.device();
    let inside = x
        .clone()
        .greater_equal_elem(-bound)
        .bool_and(x.clone().lower_equal_elem(bound));
    let xc = x.clone().clamp(-bound, bound);
    let uw = p.clone().narrow(2, 0, k) / cfg.scale;
    let uh = p.clone().narrow(2, k, k) / cfg.scale;
    let ud = p.narrow(2, 2 * k, k - 1);
    let c = cfg.boundary_derivative();
    let ud = Tensor::cat(
        vec![
            Tensor::<3>::full([b, d, 1], c, &dev),
            ud,
            Tensor::<3>::full([b, d, 1], c, &dev),
        ],
        2,
    );
    let deriv = softplus(ud, 1.0) + cfg.min_derivative;
    let (cw, w) = knots(uw, cfg.min_width, bound, k);
    let (ch, h) = knots(uh, cfg.min_height, bound, k);
    // Bin index: number of interior knots <= value.
    let x3: Tensor<3> = xc.clone().unsqueeze_dim(2);
    let search = match dir {
        Direction::Forward => cw.clone(),
        Direction::Inverse => ch.clone(),
    };
    let interior = search.narrow(2, 1, k - 1);
    let idx: Tensor<3, Int> = x3
        .clone()
        .expand([b, d, k - 1])
        .greater_equal(interior)
        .int()
        .sum_dim(2);
    let g = |t: &Tensor<3>, i: &Tensor<3, Int>| -> Tensor<2> {
        t.clone().gather(2, i.clone()).squeeze_dim(2)
    };
    let in_cw = g(&cw, &idx);
    let in_w = g(&w, &idx);
    let in_ch = g(&ch, &idx);
    let in_h = g(&h, &idx);
    let in_delta = in_h.clone() / in_w.clone();
    let d0 = g(&deriv, &idx);
    let d1 = g(&deriv, &(idx + 1));
    let sum_d = d0.clone() + d1.clone() - in_delta.clone() * 2.0;
    let (out, logdet) = match dir {
        Direction::Forward => {
            let theta = (xc - in_cw) / in_w;
            let tom = theta.clone() * (theta.clone().neg() + 1.0);
            let num = in_h
                * (in_delta.clone() * theta.clone().powf_scalar(2.0) + d0.clone() * tom.clone());
            let den = in_delta.clone() + sum_d * tom.clone();
            let y = in_ch + num / den.clone();
            let dnum = in_delta.clone().powf_scalar(2.0)
                * (d1 * theta.clone().powf_scalar(2.0)
                    + in_delta * tom * 2.0
                    + d0 * (theta.neg() + 1.0).powf_scalar(2.0));
            (y, dnum.log() - den.log() * 2.0)
        }
        Direction::Inverse => {
            let dy = xc - in_ch;
            let a = in_h.clone() * (in_delta.clone() - d0.clone()) + dy.clone() * sum_d.clone();
            let bq = in_h * d0.clone() - dy.clone() * sum_d.clone();
            let cq = in_delta.clone().neg() * dy;
            let disc = (bq.clone().powf_scalar(2.0) - a * cq.clone() * 4.0).clamp_min(0.0);
            let root = (cq * 2.0) / (bq.neg() - disc.sqrt());
            let x_out = root.clone() * in_w + in_cw;
            let tom = root.clone() * (root.clone().neg() + 1.0);
            let den = in_delta.clone() + sum_d * tom.clone();
            let dnum = in_delta.clone().powf_scalar(2.0)
                * (d1 * root.clone().powf_scalar(2.0)
                    + in_delta * tom * 2.0
                    + d0 * (root.neg() + 1.0).powf_scalar(2.0));
            (x_out, dnum.log() - den.log() * 2.0)
        }
    };
    let zero = Tensor::<2>::zeros([b, d], &dev);
    let out = x.mask_where(inside.clone(), out);
    let logdet = zero.mask_where(inside, logdet);
    (out, logdet)
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
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};
    use rand::{Rng, SeedableRng};

    fn random_params(n: usize, p: usize, seed: u64) -> Vec<f64> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * p).map(|_| r.random_range(-3.0..3.0)).collect()
    }

    #[test]
    fn scalar_spline_inverts_and_logdet_matches_finite_difference() {
        let cfg = SplineConfig::new(8, 3.0, 4);
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

    #[test]
    fn tensor_spline_matches_scalar_spline() {
        let dev = Device::flex();
        let cfg = SplineConfig::new(5, 2.0, 9);
        let (n, d) = (7, 3);
        let p = random_params(n * d, cfg.n_params(), 2);
        let xs: Vec<f64> = (0..n * d)
            .map(|i| -2.5 + 5.0 * i as f64 / (n * d - 1) as f64)
            .collect();
        let pt = Tensor::<3>::from_data(
            TensorData::new(
                p.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [n, d, cfg.n_params()],
            ),
            &dev,
        );
        let xt = Tensor::<2>::from_data(
            TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [n, d]),
            &dev,
        );
        for dir in [Direction::Forward, Direction::Inverse] {
            let (y, ld) = rqs_tensor(xt.clone(), pt.clone(), &cfg, dir);
            let y: Vec<f64> = y.into_data().iter::<f64>().collect();
            let ld: Vec<f64> = ld.into_data().iter::<f64>().collect();
            for i in 0..n * d {
                let s = Rqs::new(&p[i * cfg.n_params()..(i + 1) * cfg.n_params()], &cfg);
                let (ys, lds) = match dir {
                    Direction::Forward => s.forward(xs[i]),
                    Direction::Inverse => s.inverse(xs[i]),
                };
                assert!((y[i] - ys).abs() < 1e-4, "{dir:?} {i}: {} vs {ys}", y[i]);
                assert!(
                    (ld[i] - lds).abs() < 1e-3,
                    "{dir:?} {i}: {} vs {lds}",
                    ld[i]
                );
            }
        }
    }
}

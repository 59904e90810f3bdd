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

pub use crate::kernels::spline::{Rqs, SplineConfig, MAX_BINS};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::spline::tests::random_params;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn tensor_spline_matches_scalar_spline() {
        let dev = Device::flex();
        let cfg = SplineConfig {
            scale: 3.0,
            ..SplineConfig::new(5, 2.0)
        };
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

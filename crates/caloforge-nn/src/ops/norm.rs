//! GroupNorm, optionally followed by SiLU, as one operation with a hand-written backward pass
//! (the U-Net's `conv → GroupNorm → SiLU` blocks and its attention's GroupNorm(1)). burn builds
//! GroupNorm from about ten tensor operations (reshape, two means, subtraction, square, square
//! root, division, affine) and SiLU from three more, each a pass over the activation on the way
//! forward and again on the way back; here the forward pass reads the input twice and writes the
//! output once, the backward pass reads it twice more.
//!
//! Numerics as burn's `GroupNorm`: biased variance (two passes), ε inside the square root,
//! per-channel affine. Every (sample, group) slab is reduced by one task in a fixed order and the
//! per-channel parameter gradients are summed over the batch in order, so results do not depend
//! on the thread count. On other backends, and for non-f32 tensors, [`group_norm`] runs burn's
//! own operations.

use super::on_flex;
use crate::kernels::simd::{exp_inplace, silu};
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// GroupNorm (+ SiLU) as one operation: x `[B, C, …]`, γ and β `[C]` → y of x's shape.
#[backend_extension(Flex, Autodiff)]
pub trait NormTrainOps: Backend {
    /// See the trait.
    fn cf_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: bool,
    ) -> FloatTensor<Self>;
}

/// The values of a contiguous f32 tensor, borrowed (callers pass `t.to_contiguous()`, which
/// copies only strided tensors).
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused GroupNorm runs on contiguous f32 tensors")
}

/// Sum of a slice in f64 (four independent accumulators: vectorises, fixed order).
fn sum64(v: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0.0f64; 4];
    for (i, x) in v.enumerate() {
        acc[i & 3] += x;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The layout of one GroupNorm call.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Samples.
    b: usize,
    /// Channels.
    c: usize,
    /// Elements per channel (the product of the spatial dimensions).
    s: usize,
    groups: usize,
}

impl Layout {
    fn of(shape: &[usize], groups: usize) -> Self {
        assert!(shape.len() >= 2, "GroupNorm needs [batch, channels, ...]");
        let (b, c) = (shape[0], shape[1]);
        assert!(
            groups > 0 && c % groups == 0,
            "{c} channels in {groups} groups"
        );
        Layout {
            b,
            c,
            s: shape[2..].iter().product(),
            groups,
        }
    }
    /// Channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Elements per (sample, group) slab.
    fn slab(&self) -> usize {
        self.cg() * self.s
    }
}

/// Mean and 1/√(var + ε) of every (sample, group) slab.
fn stats(x: &[f32], l: Layout, eps: f64) -> Vec<(f64, f64)> {
    x.par_chunks(l.slab().max(1))
        .map(|slab| {
            let n = slab.len() as f64;
            let mean = sum64(slab.iter().map(|&v| v as f64)) / n;
            let var = sum64(slab.iter().map(|&v| (v as f64 - mean).powi(2))) / n;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect()
}

/// The affine map x·a + b of channel `ch` in slab `k` (sample k / groups).
fn affine(gamma: &[f32], beta: &[f32], (mean, rstd): (f64, f64), ch: usize) -> (f32, f32) {
    let a = rstd * gamma[ch] as f64;
    (a as f32, (beta[ch] as f64 - mean * a) as f32)
}

fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    l: Layout,
    st: &[(f64, f64)],
    act: bool,
) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(l.slab().max(1))
        .zip(x.par_chunks(l.slab().max(1)))
        .enumerate()
        .for_each(|(k, (ys, xs))| {
            let g = k % l.groups;
            for (j, (yr, xr)) in ys.chunks_mut(l.s).zip(xs.chunks(l.s)).enumerate() {
                let (a, b) = affine(gamma, beta, st[k], g * l.cg() + j);
                for (o, &v) in yr.iter_mut().zip(xr) {
                    *o = v * a + b;
                }
            }
            if act {
                silu(ys);
            }
        });
    y
}

/// Gradients (x, γ, β) from the output gradient `gy`.
fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    gy: &[f32],
    l: Layout,
    st: &[(f64, f64)],
    act: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let slab = l.slab().max(1);
    let cg = l.cg();
    let mut gx = vec![0.0f32; x.len()];
    // Per (slab, channel of the group): (Σ dy·x̂, Σ dy) with dy the gradient at the norm output.
    let mut part = vec![(0.0f64, 0.0f64); l.b * l.c];
    gx.par_chunks_mut(slab)
        .zip(part.par_chunks_mut(cg.max(1)))
        .enumerate()
        .for_each(|(k, (gxs, parts))| {
            let g = k % l.groups;
            let (mean, rstd) = st[k];
            let (xs, gys) = (&x[k * slab..(k + 1) * slab], &gy[k * slab..(k + 1) * slab]);
            let mut t = vec![0.0f32; l.s];
            let (mut m1, mut m2) = (0.0f64, 0.0f64);
            for j in 0..cg {
                let ch = g * cg + j;
                let r = j * l.s..(j + 1) * l.s;
                let (xr, gr) = (&xs[r.clone()], &gys[r.clone()]);
                let dst = &mut gxs[r];
                // dy: the gradient at the norm output, through SiLU if fused.
                if act {
                    let (a, b) = affine(gamma, beta, (mean, rstd), ch);
                    for (tv, &v) in t.iter_mut().zip(xr) {
                        *tv = -(v * a + b);
                    }
                    exp_inplace(&mut t);
                    for ((d, &e), (&v, &gv)) in dst.iter_mut().zip(&t).zip(xr.iter().zip(gr)) {
                        let yh = v * a + b;
                        let sg = 1.0 / (1.0 + e);
                        *d = gv * sg * (1.0 + yh * (1.0 - sg));
                    }
                } else {
                    dst.copy_from_slice(gr);
                }
                let (mf, rf) = (mean as f32, rstd as f32);
                let sdy = sum64(dst.iter().map(|&d| d as f64));
                let sdyx = sum64(
                    dst.iter()
                        .zip(xr)
                        .map(|(&d, &v)| (d * ((v - mf) * rf)) as f64),
                );
                parts[j] = (sdyx, sdy);
                let gm = gamma[ch] as f64;
                m1 += sdy * gm;
                m2 += sdyx * gm;
                for d in dst.iter_mut() {
                    *d *= gamma[ch];
                }
            }
            // dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = γ·dy.
            let n = slab as f64;
            let (m1, m2, rf, mf) = ((m1 / n) as f32, (m2 / n) as f32, rstd as f32, mean as f32);
            for (d, &v) in gxs.iter_mut().zip(xs) {
                *d = rf * (*d - m1 - (v - mf) * rf * m2);
            }
        });
    let (mut gg, mut gb) = (vec![0.0f64; l.c], vec![0.0f64; l.c]);
    for (i, &(dg, db)) in part.iter().enumerate() {
        gg[i % l.c] += dg;
        gb[i % l.c] += db;
    }
    (
        gx,
        gg.into_iter().map(|v| v as f32).collect(),
        gb.into_iter().map(|v| v as f32).collect(),
    )
}

impl NormTrainOps for Flex {
    fn cf_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f64,
        act: bool,
    ) -> FlexTensor {
        let shape = x.shape().to_vec();
        let l = Layout::of(&shape, groups);
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let xv = f32s(&x);
        let st = stats(xv, l, eps);
        let y = forward(xv, f32s(&gamma), f32s(&beta), l, &st, act);
        FlexTensor::from_data(TensorData::new(y, shape))
    }
}

#[derive(Debug)]
struct GroupNormBackward;

impl Backward<Flex, 3> for GroupNormBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, usize, f64, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, beta, groups, eps, act) = ops.state;
        let shape = x.shape().to_vec();
        let l = Layout::of(&shape, groups);
        let (x, gamma, beta, gy) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
            gy.to_contiguous(),
        );
        let xv = f32s(&x);
        let st = stats(xv, l, eps);
        let (gx, gg, gb) = backward(xv, f32s(&gamma), f32s(&beta), f32s(&gy), l, &st, act);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(gx, shape)));
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(gg, [l.c])));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(gb, [l.c])));
        }
    }
}

impl<C: CheckpointStrategy> NormTrainOps for Autodiff<Flex, C> {
    fn cf_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: bool,
    ) -> FloatTensor<Self> {
        match GroupNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, gp, bp) = (
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let out = Flex::cf_group_norm(xp.clone(), gp.clone(), bp.clone(), groups, eps, act);
                prep.finish((xp, gp, bp, groups, eps, act), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::cf_group_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                eps,
                act,
            )),
        }
    }
}

/// `norm(x)`, then SiLU if `act`: burn's `GroupNorm::forward` (and `silu`), differentiable, as
/// one fused operation on the flex backend for f32 tensors with an affine norm.
pub fn group_norm<const D: usize>(
    x: Tensor<D>,
    norm: &burn::nn::GroupNorm,
    act: bool,
) -> Tensor<D> {
    let fused =
        on_flex(&x) && x.dtype() == DType::F32 && D >= 2 && x.dims()[1] == norm.num_channels;
    match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if fused && g.val().dtype() == DType::F32 => {
            Tensor::from_dispatch(<Dispatch as NormTrainOps>::cf_group_norm(
                x.into_dispatch(),
                g.val().into_dispatch(),
                b.val().into_dispatch(),
                norm.num_groups,
                norm.epsilon,
                act,
            ))
        }
        _ => {
            let y = norm.forward(x);
            if act {
                burn::tensor::activation::silu(y)
            } else {
                y
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Device;

    fn norm(groups: usize, c: usize, dev: &Device) -> burn::nn::GroupNorm {
        let mut n = GroupNormConfig::new(groups, c).init(dev);
        let g: Vec<f32> = (0..c).map(|i| 0.7 + 0.13 * i as f32).collect();
        let b: Vec<f32> = (0..c).map(|i| -0.2 + 0.09 * i as f32).collect();
        n.gamma = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(g, [c]),
            dev,
        )));
        n.beta = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [c]),
            dev,
        )));
        n
    }

    fn input(shape: [usize; 5], dev: &Device) -> Tensor<5> {
        let n: usize = shape.iter().product();
        // Channels with different offsets and scales; one constant channel.
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let ch = (i / (shape[2] * shape[3] * shape[4])) % shape[1];
                if ch == 1 {
                    0.25
                } else {
                    ((i * 37 % 101) as f32 / 50.0 - 1.0) * (1.0 + ch as f32) + ch as f32
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), dev)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// Output and the gradients of a weighted sum (x, γ, β) against burn's GroupNorm + SiLU.
    #[test]
    fn fused_group_norm_matches_burn() {
        let dev = Device::flex().autodiff();
        let shape = [3, 6, 4, 3, 2];
        for (groups, act) in [(3, true), (2, false), (1, false), (6, true)] {
            let run = |fused: bool| {
                let n = norm(groups, 6, &dev);
                let x = input(shape, &dev).require_grad();
                let y = if fused {
                    group_norm(x.clone(), &n, act)
                } else {
                    let y = n.forward(x.clone());
                    if act {
                        burn::tensor::activation::silu(y)
                    } else {
                        y
                    }
                };
                let w = input(shape, &dev).detach().sin();
                let grads = (y.clone() * w).sum().backward();
                let gx = values(x.grad(&grads).unwrap());
                let gg = values(n.gamma.as_ref().unwrap().val().grad(&grads).unwrap());
                let gb = values(n.beta.as_ref().unwrap().val().grad(&grads).unwrap());
                (values(y), gx, gg, gb)
            };
            let (a, b) = (run(true), run(false));
            for (name, u, v) in [
                ("y", &a.0, &b.0),
                ("dx", &a.1, &b.1),
                ("dgamma", &a.2, &b.2),
                ("dbeta", &a.3, &b.3),
            ] {
                assert_eq!(u.len(), v.len());
                let scale = v.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                for (i, (p, q)) in u.iter().zip(v).enumerate() {
                    assert!(
                        (p - q).abs() <= 2e-4 * scale,
                        "groups {groups} act {act} {name}[{i}]: fused {p} vs burn {q}"
                    );
                }
            }
        }
    }

    /// The input gradient against central finite differences of the fused forward pass (f64
    /// sums of a weighted output).
    #[test]
    fn fused_group_norm_gradient_matches_finite_differences() {
        let dev = Device::flex();
        let shape = [2, 4, 3, 2, 2];
        let n = norm(2, 4, &dev);
        let x0 = values(input(shape, &dev));
        let wv: Vec<f32> = (0..x0.len())
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let f = |x: &[f32]| -> f64 {
            let t = Tensor::<5>::from_data(TensorData::new(x.to_vec(), shape), &dev);
            values(group_norm(t, &n, true))
                .iter()
                .zip(&wv)
                .map(|(&y, &w)| y as f64 * w as f64)
                .sum()
        };
        let ad = Device::flex().autodiff();
        let na = norm(2, 4, &ad);
        let x = Tensor::<5>::from_data(TensorData::new(x0.clone(), shape), &ad).require_grad();
        let w = Tensor::<5>::from_data(TensorData::new(wv.clone(), shape), &ad);
        let grads = (group_norm(x.clone(), &na, true) * w).sum().backward();
        let g = values(x.grad(&grads).unwrap());
        crate::testutil::check_finite_differences(&x0, &g, f, 1e-2, 2e-3, 5);
    }

    /// The same numbers whatever the number of threads.
    #[test]
    fn fused_group_norm_is_thread_independent() {
        let dev = Device::flex().autodiff();
        let shape = [4, 6, 5, 4, 3];
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let n = norm(3, 6, &dev);
                    let x = input(shape, &dev).require_grad();
                    let y = group_norm(x.clone(), &n, true);
                    let grads = (y.clone() * y.clone()).sum().backward();
                    (values(y), values(x.grad(&grads).unwrap()))
                })
        };
        assert_eq!(run(1), run(3));
    }
}

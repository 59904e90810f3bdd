//! The flows' rational-quadratic spline as one operation with a hand-written backward pass
//! ([`crate::kernels::spline_grad`], per element in f64): on the `flex` backend it replaces the
//! ~60 tensor operations of [`rqs_tensor`] (softmaxes, cumulative sums, gathers, masks) and their
//! backward steps. Elsewhere [`rqs`] runs [`rqs_tensor`].

use super::on_flex;
use crate::flow::spline::{rqs_tensor, Direction, SplineConfig};
use crate::kernels::{spline, spline_grad};
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// The spline as one operation: x `[N, D]`, raw parameters p `[N, D, 3K − 1]` →
/// `[N, D, 2]` (output, log-derivative of the forward map).
#[backend_extension(Flex, Autodiff)]
pub trait SplineTrainOps: Backend {
    /// See the trait.
    fn cf_rqs(
        x: FloatTensor<Self>,
        p: FloatTensor<Self>,
        cfg: SplineConfig,
        inverse: bool,
    ) -> FloatTensor<Self>;
}

/// A flex tensor's values as f64 (f32 and f64 tensors; `None` otherwise).
fn values64(t: &FlexTensor) -> Option<Vec<f64>> {
    let t = t.to_contiguous();
    match t.dtype() {
        DType::F32 => Some(t.as_slice::<f32>()?.iter().map(|&v| v as f64).collect()),
        DType::F64 => Some(t.as_slice::<f64>()?.to_vec()),
        _ => None,
    }
}

fn tensor_like(v: Vec<f64>, shape: Vec<usize>, dtype: DType) -> FlexTensor {
    let data = match dtype {
        DType::F64 => TensorData::new(v, Shape::from(shape)),
        _ => TensorData::new(
            v.into_iter().map(|x| x as f32).collect(),
            Shape::from(shape),
        ),
    };
    FlexTensor::from_data(data)
}

/// Rows of elements per parallel task (results do not depend on it).
const ROWS: usize = 256;

impl SplineTrainOps for Flex {
    fn cf_rqs(x: FlexTensor, p: FlexTensor, cfg: SplineConfig, inverse: bool) -> FlexTensor {
        let [n, d]: [usize; 2] = x.shape().dims();
        let np = cfg.n_params();
        if x.dtype() == DType::F32 && p.dtype() == DType::F32 {
            // Single precision: the vectorised spline of the generation path.
            let (x, p) = (x.to_contiguous(), p.to_contiguous());
            let (xv, pv) = (
                x.as_slice::<f32>().unwrap_or(&[]),
                p.as_slice::<f32>().unwrap_or(&[]),
            );
            let mut out = vec![0.0f32; n * d * 2];
            out.par_chunks_mut(ROWS * 2).enumerate().for_each(|(c, o)| {
                let m = o.len() / 2;
                let e0 = c * ROWS;
                let (mut y, mut ld) = (vec![0.0f32; m], vec![0.0f32; m]);
                spline::eval_many(
                    &cfg,
                    &pv[e0 * np..(e0 + m) * np],
                    &xv[e0..e0 + m],
                    &mut y,
                    &mut ld,
                    inverse,
                );
                for (j, pair) in o.chunks_mut(2).enumerate() {
                    pair[0] = y[j];
                    pair[1] = ld[j];
                }
            });
            return FlexTensor::from_data(TensorData::new(out, [n, d, 2]));
        }
        let (Some(xv), Some(pv)) = (values64(&x), values64(&p)) else {
            panic!("the spline operation needs f32 or f64 tensors");
        };
        let mut out = vec![0.0f64; n * d * 2];
        out.par_chunks_mut(ROWS * 2).enumerate().for_each(|(c, o)| {
            for (j, pair) in o.chunks_mut(2).enumerate() {
                let e = c * ROWS + j;
                let (y, ld) =
                    spline_grad::eval::<true>(&pv[e * np..(e + 1) * np], xv[e], &cfg, inverse);
                pair[0] = y;
                pair[1] = ld;
            }
        });
        tensor_like(out, vec![n, d, 2], x.dtype())
    }
}

/// The gradients for x `[N, D]` and p `[N, D, 3K − 1]` from the gradient `g` of the `[N, D, 2]`
/// output `out`.
fn rqs_backward(
    x: &FlexTensor,
    p: &FlexTensor,
    out: &FlexTensor,
    g: &FlexTensor,
    cfg: &SplineConfig,
    inverse: bool,
) -> (FlexTensor, FlexTensor) {
    let np = cfg.n_params();
    let (xv, pv, ov, gv) = match (values64(x), values64(p), values64(out), values64(g)) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => panic!("the spline operation needs f32 or f64 tensors"),
    };
    let ne = xv.len();
    let mut gx = vec![0.0f64; ne];
    let mut gp = vec![0.0f64; ne * np];
    gx.par_chunks_mut(ROWS)
        .zip(gp.par_chunks_mut(ROWS * np))
        .enumerate()
        .for_each(|(c, (gxc, gpc))| {
            for (j, (gxe, gpe)) in gxc.iter_mut().zip(gpc.chunks_mut(np)).enumerate() {
                let e = c * ROWS + j;
                *gxe = spline_grad::grad::<false>(
                    &pv[e * np..(e + 1) * np],
                    xv[e],
                    ov[2 * e],
                    cfg,
                    inverse,
                    gv[2 * e],
                    gv[2 * e + 1],
                    gpe,
                );
            }
        });
    (
        tensor_like(gx, x.shape().to_vec(), x.dtype()),
        tensor_like(gp, p.shape().to_vec(), p.dtype()),
    )
}

#[derive(Debug)]
struct RqsBackward;

impl Backward<Flex, 2> for RqsBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, SplineConfig, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_p] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let (x, p, out, cfg, inverse) = ops.state;
        let (gx, gp) = rqs_backward(&x, &p, &out, &g, &cfg, inverse);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, gx);
        }
        if let Some(node) = node_p {
            grads.register::<Flex>(node.id, gp);
        }
    }
}

impl<C: CheckpointStrategy> SplineTrainOps for Autodiff<Flex, C> {
    fn cf_rqs(
        x: FloatTensor<Self>,
        p: FloatTensor<Self>,
        cfg: SplineConfig,
        inverse: bool,
    ) -> FloatTensor<Self> {
        match RqsBackward
            .prepare::<C>([x.node(), p.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, pp) = (x.into_primitive(), p.into_primitive());
                let out = Flex::cf_rqs(xp.clone(), pp.clone(), cfg, inverse);
                prep.finish((xp, pp, out.clone(), cfg, inverse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::cf_rqs(
                x.into_primitive(),
                p.into_primitive(),
                cfg,
                inverse,
            )),
        }
    }
}

/// Applies the spline to `x` [B, D] with parameters `p` [B, D, 3K − 1]: the output and the
/// log-derivative of the forward map per element, as [`rqs_tensor`], differentiable.
pub fn rqs(
    x: Tensor<2>,
    p: Tensor<3>,
    cfg: &SplineConfig,
    dir: Direction,
) -> (Tensor<2>, Tensor<2>) {
    let dtype_ok = matches!(x.dtype(), DType::F32 | DType::F64) && x.dtype() == p.dtype();
    if !(on_flex(&x) && dtype_ok && cfg.bins >= 2 && cfg.bins <= crate::flow::spline::MAX_BINS) {
        return rqs_tensor(x, p, cfg, dir);
    }
    let [b, d] = x.dims();
    let both: Tensor<3> = Tensor::from_dispatch(<Dispatch as SplineTrainOps>::cf_rqs(
        x.into_dispatch(),
        p.into_dispatch(),
        *cfg,
        dir == Direction::Inverse,
    ));
    (
        both.clone().narrow(2, 0, 1).reshape([b, d]),
        both.narrow(2, 1, 1).reshape([b, d]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::spline::tests::random_params;
    use burn::tensor::Device;

    /// Output, log-derivative and the gradients of a weighted sum of both against the
    /// differentiable tensor spline, both directions, with points outside the bound.
    #[test]
    fn fused_spline_matches_the_tensor_spline() {
        let dev = Device::flex().autodiff();
        let cfg = SplineConfig {
            scale: 2.0,
            ..SplineConfig::new(5, 2.5)
        };
        let (n, d, np) = (9, 4, cfg.n_params());
        let pv: Vec<f32> = random_params(n * d, np, 3)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let xv: Vec<f32> = (0..n * d)
            .map(|i| -3.0 + 6.0 * (i as f32 + 0.3) / (n * d) as f32)
            .collect();
        let wy: Vec<f32> = (0..n * d)
            .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3)
            .collect();
        let wl: Vec<f32> = (0..n * d)
            .map(|i| ((i * 3 % 4) as f32 - 1.5) * 0.4)
            .collect();
        for dir in [Direction::Forward, Direction::Inverse] {
            let run = |fused: bool| {
                let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), [n, d]), &dev)
                    .require_grad();
                let p = Tensor::<3>::from_data(TensorData::new(pv.clone(), [n, d, np]), &dev)
                    .require_grad();
                let (y, ld) = if fused {
                    rqs(x.clone(), p.clone(), &cfg, dir)
                } else {
                    rqs_tensor(x.clone(), p.clone(), &cfg, dir)
                };
                let my = Tensor::<2>::from_data(TensorData::new(wy.clone(), [n, d]), &dev);
                let ml = Tensor::<2>::from_data(TensorData::new(wl.clone(), [n, d]), &dev);
                let grads = ((y.clone() * my).sum() + (ld.clone() * ml).sum()).backward();
                let v = |t: Tensor<2>| t.into_data().iter::<f32>().collect::<Vec<_>>();
                let gx = x
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .iter::<f32>()
                    .collect::<Vec<_>>();
                let gp = p
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .iter::<f32>()
                    .collect::<Vec<_>>();
                (v(y), v(ld), gx, gp)
            };
            let (a, b) = (run(true), run(false));
            for (what, u, w, tol) in [
                ("y", &a.0, &b.0, 1e-5),
                ("ld", &a.1, &b.1, 1e-4),
                ("dx", &a.2, &b.2, 1e-3),
                ("dp", &a.3, &b.3, 1e-3),
            ] {
                assert_eq!(u.len(), w.len());
                for (i, (p, q)) in u.iter().zip(w.iter()).enumerate() {
                    assert!(
                        (p - q).abs() <= tol * (1.0 + q.abs()),
                        "{dir:?} {what}[{i}]: fused {p} vs tensor {q}"
                    );
                }
            }
        }
    }
}

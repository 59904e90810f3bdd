//! GELU as one operation with a hand-written backward pass, vectorised in f32 with the erf fit
//! of [`gelu_fast`] (|error| ≈ 1e-6). burn's GELU evaluates erf one scalar at a time on the way
//! forward and again on the way back: in AllShowers' training it was the third largest cost
//! after the matrix products and the attention.

use super::on_flex;
use crate::kernels::simd::{gelu_fast, gelu_grad_fast};
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

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// GELU (exact form, x Φ(x)).
#[backend_extension(Flex, Autodiff)]
pub trait GeluOps: Backend {
    /// See the trait.
    fn cf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused GELU runs on contiguous f32 tensors")
}

impl GeluOps for Flex {
    fn cf_gelu(x: FlexTensor) -> FlexTensor {
        let shape = x.shape().to_vec();
        let x = x.to_contiguous();
        let mut y = f32s(&x).to_vec();
        y.par_chunks_mut(CHUNK).for_each(gelu_fast);
        FlexTensor::from_data(TensorData::new(y, shape))
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let x = ops.state;
        let shape = x.shape().to_vec();
        let (x, gy) = (x.to_contiguous(), gy.to_contiguous());
        let (xv, gv) = (f32s(&x), f32s(&gy));
        let mut gx = vec![0.0f32; xv.len()];
        gx.par_chunks_mut(CHUNK)
            .zip(xv.par_chunks(CHUNK).zip(gv.par_chunks(CHUNK)))
            .for_each(|(o, (a, g))| gelu_grad_fast(a, g, o));
        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(gx, shape)));
    }
}

impl<C: CheckpointStrategy> GeluOps for Autodiff<Flex, C> {
    fn cf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.into_primitive();
                let out = Flex::cf_gelu(xp.clone());
                prep.finish(xp, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::cf_gelu(x.into_primitive())),
        }
    }
}

/// GELU, differentiable: one fused operation on the flex backend for f32 tensors, burn's
/// `gelu` elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex(&x) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as GeluOps>::cf_gelu(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// Output and input gradient of a weighted sum against burn's GELU.
    #[test]
    fn fused_gelu_matches_burn() {
        let dev = Device::flex().autodiff();
        let n = 40_000;
        let xv: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 14.0).collect();
        let wv: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
        let run = |fused: bool| {
            let x = Tensor::<2>::from_data(TensorData::new(xv.clone(), [200, 200]), &dev)
                .require_grad();
            let y = if fused {
                gelu(x.clone())
            } else {
                burn::tensor::activation::gelu(x.clone())
            };
            let w = Tensor::<2>::from_data(TensorData::new(wv.clone(), [200, 200]), &dev);
            let grads = (y.clone() * w).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let (a, b) = (run(true), run(false));
        for (name, u, v) in [("y", &a.0, &b.0), ("dx", &a.1, &b.1)] {
            for (i, (p, q)) in u.iter().zip(v).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                    "{name}[{i}]: fused {p} vs burn {q}"
                );
            }
        }
    }
}

//! 3-D convolutions (forward, input and weight gradients) for training on the `flex` backend,
//! computed by [`crate::kernels::conv_grad`] (im2col/shifted-grid GEMM per shower,
//! thread-count independent).
//!
//! [`conv3d`] and [`conv_transpose3d`] are drop-in replacements for `burn::tensor::module`'s
//! bias-free convolutions with zero padding, unit dilation and one group: on a `flex` device
//! (plain or autodiff) with f32 tensors they run these kernels, elsewhere (the GPU backends,
//! other dtypes) burn's own.

use super::on_flex;
use crate::kernels::conv_grad::{self, Geom};
use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ConvTransposeOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};

fn conv_options(stride: [usize; 3], pad: [usize; 3]) -> ConvOptions<3> {
    ConvOptions::new(stride, pad, [1, 1, 1], 1)
}

fn transpose_options(
    stride: [usize; 3],
    pad: [usize; 3],
    out_pad: [usize; 3],
) -> ConvTransposeOptions<3> {
    ConvTransposeOptions::new(stride, pad, out_pad, [1, 1, 1], 1)
}

/// Convolutions with separately callable gradients. The default bodies are burn's operations;
/// `Flex` overrides them with [`conv_grad`]; `Autodiff<B>` records a backward step that calls
/// the gradient methods of `B`.
#[backend_extension(Flex, Autodiff)]
pub trait ConvTrainOps: Backend {
    /// Zero-padded 3-D convolution without bias: x `[B, C, z, α, r]`, w `[C', C, k]`.
    fn cf_conv3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv3d(x, w, None, conv_options(stride, pad))
    }
    /// The input gradient of [`Self::cf_conv3d`].
    fn cf_conv3d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv3d_x_backward(x, w, dy, conv_options(stride, pad))
    }
    /// The weight gradient of [`Self::cf_conv3d`].
    fn cf_conv3d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv3d_weight_backward(x, w, dy, conv_options(stride, pad))
    }
    /// Transposed 3-D convolution without bias: x `[B, C, z, α, r]`, w `[C, C', k]`.
    fn cf_conv_transpose3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv_transpose3d(
            x,
            w,
            None,
            transpose_options(stride, pad, out_pad),
        )
    }
    /// The input gradient of [`Self::cf_conv_transpose3d`].
    fn cf_conv_transpose3d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        drop(x);
        <Self as ModuleOps<Self>>::conv_transpose3d_x_backward(
            w,
            dy,
            transpose_options(stride, pad, out_pad),
        )
    }
    /// The weight gradient of [`Self::cf_conv_transpose3d`].
    fn cf_conv_transpose3d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv_transpose3d_weight_backward(
            x,
            w,
            dy,
            transpose_options(stride, pad, out_pad),
        )
    }
}

fn dims5(t: &impl TensorMetadata) -> [usize; 5] {
    t.shape().dims()
}

/// The f32 values of a flex tensor in row-major order (copied only when not contiguous).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => {
            std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap_or(&[]).to_vec())
        }
    }
}

fn flex_tensor(v: Vec<f32>, shape: [usize; 5]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, Shape::new(shape)))
}

fn is_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

/// The geometry of `cf_conv3d(x, w, stride, pad)`.
fn conv_geom(x: [usize; 5], w: [usize; 5], stride: [usize; 3], pad: [usize; 3]) -> Option<Geom> {
    (x[1] == w[1]).then_some(())?;
    Geom::conv(
        x[1],
        w[0],
        [x[2], x[3], x[4]],
        [w[2], w[3], w[4]],
        stride,
        pad,
    )
}

/// The geometry whose adjoint is `cf_conv_transpose3d(x, w, stride, pad, out_pad)`.
fn transpose_geom(
    x: [usize; 5],
    w: [usize; 5],
    stride: [usize; 3],
    pad: [usize; 3],
    out_pad: [usize; 3],
) -> Option<Geom> {
    (x[1] == w[0]).then_some(())?;
    Geom::transposed(
        x[1],
        w[1],
        [x[2], x[3], x[4]],
        [w[2], w[3], w[4]],
        stride,
        pad,
        out_pad,
    )
}

fn shape_of(batch: usize, c: usize, grid: [usize; 3]) -> [usize; 5] {
    [batch, c, grid[0], grid[1], grid[2]]
}

/// One of the three products of [`conv_grad`].
#[derive(Clone, Copy)]
enum Product {
    Forward,
    InputGrad,
    WeightGrad,
}

/// `product` of geometry `g` on the f32 values of `a` and `b` (in the kernel's argument order),
/// as a new tensor of `shape`.
fn run(
    g: &Geom,
    product: Product,
    a: &FlexTensor,
    b: &FlexTensor,
    shape: [usize; 5],
) -> FlexTensor {
    let batch = dims5(a)[0];
    let mut out = vec![0.0; shape.iter().product()];
    let (a, b) = (values(a), values(b));
    match product {
        Product::Forward => conv_grad::forward(g, batch, &a, &b, &mut out),
        Product::InputGrad => conv_grad::input_grad(g, batch, &a, &b, &mut out),
        Product::WeightGrad => conv_grad::weight_grad(g, batch, &a, &b, &mut out),
    }
    flex_tensor(out, shape)
}

impl ConvTrainOps for Flex {
    fn cf_conv3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match conv_geom(xd, wd, stride, pad).filter(|_| is_f32(&[&x, &w])) {
            Some(g) => run(
                &g,
                Product::Forward,
                &x,
                &w,
                shape_of(xd[0], g.c_out, g.output),
            ),
            None => <Self as ModuleOps<Self>>::conv3d(x, w, None, conv_options(stride, pad)),
        }
    }
    fn cf_conv3d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match conv_geom(xd, wd, stride, pad).filter(|_| is_f32(&[&x, &w, &dy])) {
            Some(g) => run(&g, Product::InputGrad, &dy, &w, xd),
            None => {
                <Self as ModuleOps<Self>>::conv3d_x_backward(x, w, dy, conv_options(stride, pad))
            }
        }
    }
    fn cf_conv3d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match conv_geom(xd, wd, stride, pad).filter(|_| is_f32(&[&x, &w, &dy])) {
            Some(g) => run(&g, Product::WeightGrad, &x, &dy, wd),
            None => <Self as ModuleOps<Self>>::conv3d_weight_backward(
                x,
                w,
                dy,
                conv_options(stride, pad),
            ),
        }
    }
    fn cf_conv_transpose3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match transpose_geom(xd, wd, stride, pad, out_pad).filter(|_| is_f32(&[&x, &w])) {
            Some(g) => run(
                &g,
                Product::InputGrad,
                &x,
                &w,
                shape_of(xd[0], g.c_in, g.input),
            ),
            None => <Self as ModuleOps<Self>>::conv_transpose3d(
                x,
                w,
                None,
                transpose_options(stride, pad, out_pad),
            ),
        }
    }
    fn cf_conv_transpose3d_dx(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match transpose_geom(xd, wd, stride, pad, out_pad).filter(|_| is_f32(&[&x, &w, &dy])) {
            Some(g) => run(&g, Product::Forward, &dy, &w, xd),
            None => <Self as ModuleOps<Self>>::conv_transpose3d_x_backward(
                w,
                dy,
                transpose_options(stride, pad, out_pad),
            ),
        }
    }
    fn cf_conv_transpose3d_dw(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        let (xd, wd) = (dims5(&x), dims5(&w));
        match transpose_geom(xd, wd, stride, pad, out_pad).filter(|_| is_f32(&[&x, &w, &dy])) {
            Some(g) => run(&g, Product::WeightGrad, &dy, &x, wd),
            None => <Self as ModuleOps<Self>>::conv_transpose3d_weight_backward(
                x,
                w,
                dy,
                transpose_options(stride, pad, out_pad),
            ),
        }
    }
}

/// Which convolution a backward step differentiates.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Conv,
    Transposed([usize; 3]),
}

#[derive(Debug)]
struct ConvBackward;

impl<B: Backend + ConvTrainOps> Backward<B, 2> for ConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, [usize; 3], [usize; 3], Kind);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, stride, pad, kind) = ops.state;
        if let Some(node) = node_x {
            let dx = match kind {
                Kind::Conv => B::cf_conv3d_dx(x.clone(), w.clone(), dy.clone(), stride, pad),
                Kind::Transposed(op) => {
                    B::cf_conv_transpose3d_dx(x.clone(), w.clone(), dy.clone(), stride, pad, op)
                }
            };
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = match kind {
                Kind::Conv => B::cf_conv3d_dw(x, w, dy, stride, pad),
                Kind::Transposed(op) => B::cf_conv_transpose3d_dw(x, w, dy, stride, pad, op),
            };
            grads.register::<B>(node.id, dw);
        }
    }
}

fn tracked<B: Backend + ConvTrainOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
    stride: [usize; 3],
    pad: [usize; 3],
    kind: Kind,
) -> FloatTensor<Autodiff<B, C>> {
    let run = |x: FloatTensor<B>, w: FloatTensor<B>| match kind {
        Kind::Conv => B::cf_conv3d(x, w, stride, pad),
        Kind::Transposed(op) => B::cf_conv_transpose3d(x, w, stride, pad, op),
    };
    match ConvBackward
        .prepare::<C>([x.node(), w.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (xp, wp) = (x.into_primitive(), w.into_primitive());
            let y = run(xp.clone(), wp.clone());
            prep.finish((xp, wp, stride, pad, kind), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(x.into_primitive(), w.into_primitive())),
    }
}

impl<B: Backend + ConvTrainOps, C: CheckpointStrategy> ConvTrainOps for Autodiff<B, C> {
    fn cf_conv3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> FloatTensor<Self> {
        tracked::<B, C>(x, w, stride, pad, Kind::Conv)
    }
    fn cf_conv_transpose3d(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: [usize; 3],
        pad: [usize; 3],
        out_pad: [usize; 3],
    ) -> FloatTensor<Self> {
        tracked::<B, C>(x, w, stride, pad, Kind::Transposed(out_pad))
    }
}

/// A bias-free, zero-padded 3-D convolution (unit dilation, one group), differentiable.
pub fn conv3d(x: Tensor<5>, w: Tensor<5>, stride: [usize; 3], pad: [usize; 3]) -> Tensor<5> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as ConvTrainOps>::cf_conv3d(
            x.into_dispatch(),
            w.into_dispatch(),
            stride,
            pad,
        ))
    } else {
        burn::tensor::module::conv3d(x, w, None, conv_options(stride, pad))
    }
}

/// A bias-free transposed 3-D convolution (unit dilation, one group), differentiable.
pub fn conv_transpose3d(
    x: Tensor<5>,
    w: Tensor<5>,
    stride: [usize; 3],
    pad: [usize; 3],
    out_pad: [usize; 3],
) -> Tensor<5> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as ConvTrainOps>::cf_conv_transpose3d(
            x.into_dispatch(),
            w.into_dispatch(),
            stride,
            pad,
            out_pad,
        ))
    } else {
        burn::tensor::module::conv_transpose3d(x, w, None, transpose_options(stride, pad, out_pad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};

    fn rand_tensor(shape: [usize; 5], seed: u64, dev: &Device) -> Tensor<5> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
        Tensor::from_data(TensorData::new(v, shape), dev)
    }

    fn close(a: Tensor<5>, b: Tensor<5>, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.into_data().iter::<f32>().collect(),
            b.into_data().iter::<f32>().collect(),
        );
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * scale,
                "{what}[{i}]: {x} vs burn {y}"
            );
        }
    }

    /// Output, input gradient and weight gradient of the extension against burn's own
    /// differentiable convolutions, for a plain and a strided convolution and for transposed
    /// convolutions with output padding (the U-Net's up-sampling).
    #[test]
    fn extension_matches_burn_forward_and_gradients() {
        let dev = Device::flex().autodiff();
        let convs: [([usize; 5], [usize; 5], [usize; 3], [usize; 3]); 3] = [
            ([2, 3, 5, 6, 4], [4, 3, 3, 3, 3], [1, 1, 1], [1, 0, 1]),
            ([3, 2, 7, 8, 9], [3, 2, 3, 4, 4], [2, 2, 2], [1, 1, 1]),
            ([2, 4, 3, 2, 5], [5, 4, 1, 1, 1], [1, 1, 1], [0, 0, 0]),
        ];
        for (i, (xs, ws, stride, pad)) in convs.into_iter().enumerate() {
            let x = rand_tensor(xs, 1 + i as u64, &dev).require_grad();
            let w = rand_tensor(ws, 11 + i as u64, &dev).require_grad();
            let ours = conv3d(x.clone(), w.clone(), stride, pad);
            let theirs =
                burn::tensor::module::conv3d(x.clone(), w.clone(), None, conv_options(stride, pad));
            let m = rand_tensor(theirs.dims(), 21 + i as u64, &dev);
            let g1 = (ours.clone() * m.clone()).sum().backward();
            let g2 = (theirs.clone() * m).sum().backward();
            close(ours, theirs, &format!("conv {i} y"));
            close(
                x.grad(&g1).unwrap(),
                x.grad(&g2).unwrap(),
                &format!("conv {i} dx"),
            );
            close(
                w.grad(&g1).unwrap(),
                w.grad(&g2).unwrap(),
                &format!("conv {i} dw"),
            );
        }
        let transposed: [([usize; 5], [usize; 5], [usize; 3], [usize; 3], [usize; 3]); 2] = [
            (
                [2, 3, 3, 5, 2],
                [3, 2, 3, 4, 4],
                [2, 2, 2],
                [1, 3, 1],
                [1, 0, 1],
            ),
            (
                [3, 2, 4, 3, 3],
                [2, 4, 3, 3, 3],
                [1, 1, 1],
                [1, 1, 1],
                [0, 0, 0],
            ),
        ];
        for (i, (xs, ws, stride, pad, op)) in transposed.into_iter().enumerate() {
            let x = rand_tensor(xs, 31 + i as u64, &dev).require_grad();
            let w = rand_tensor(ws, 41 + i as u64, &dev).require_grad();
            let ours = conv_transpose3d(x.clone(), w.clone(), stride, pad, op);
            let theirs = burn::tensor::module::conv_transpose3d(
                x.clone(),
                w.clone(),
                None,
                transpose_options(stride, pad, op),
            );
            let m = rand_tensor(theirs.dims(), 51 + i as u64, &dev);
            let g1 = (ours.clone() * m.clone()).sum().backward();
            let g2 = (theirs.clone() * m).sum().backward();
            close(ours, theirs, &format!("transposed {i} y"));
            close(
                x.grad(&g1).unwrap(),
                x.grad(&g2).unwrap(),
                &format!("transposed {i} dx"),
            );
            close(
                w.grad(&g1).unwrap(),
                w.grad(&g2).unwrap(),
                &format!("transposed {i} dw"),
            );
        }
    }

    /// Without autodiff the extension runs the forward kernels alone.
    #[test]
    fn plain_flex_tensors_take_the_forward_kernel() {
        let dev = Device::flex();
        let x = rand_tensor([1, 2, 4, 4, 4], 61, &dev);
        let w = rand_tensor([3, 2, 3, 3, 3], 62, &dev);
        let ours = conv3d(x.clone(), w.clone(), [1, 1, 1], [1, 1, 1]);
        let theirs = burn::tensor::module::conv3d(x, w, None, conv_options([1, 1, 1], [1, 1, 1]));
        close(ours, theirs, "plain y");
    }
}

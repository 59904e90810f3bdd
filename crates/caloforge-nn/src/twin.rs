//! Fast twins: for each burn block, its CPU inference counterpart built from the shared kernels
//! ([`crate::kernels`]), holding a copy of the block's weights in the kernels' layout.
//!
//! A network is defined once, in burn; its CPU sampling path is the twin of its top module,
//! which is the assembly of its fields' twins under the same field names (see
//! [`crate::unet::fast`]). A twin is built once, when a model is loaded, and every twin is
//! checked against its burn block by one generic test helper (`check_twin` in this module's
//! tests).

use crate::conv::CylindricalConv3d;
use crate::kernels::{self, conv::tap_major};
use crate::unet::CylindricalConvTranspose3d;
use burn::nn::conv::{Conv3d, ConvTranspose3d};
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig3d};
use burn::tensor::Tensor;

/// A burn block that has a fast CPU twin.
pub trait Twin {
    /// The twin's type.
    type Fast;
    /// The twin, with a copy of the block's current weights.
    fn twin(&self) -> Self::Fast;
}

/// A tensor's values, row-major.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn param_or<const D: usize>(
    p: Option<&burn::module::Param<Tensor<D>>>,
    n: usize,
    v: f32,
) -> Vec<f32> {
    p.map(|p| values(p.val())).unwrap_or_else(|| vec![v; n])
}

impl Twin for Linear {
    type Fast = kernels::Linear;
    fn twin(&self) -> kernels::Linear {
        let dout = self.weight.val().dims()[1];
        kernels::Linear {
            w: values(self.weight.val()),
            b: param_or(self.bias.as_ref(), dout, 0.0),
        }
    }
}

impl Twin for GroupNorm {
    type Fast = kernels::GroupNorm;
    fn twin(&self) -> kernels::GroupNorm {
        let c = self.num_channels;
        kernels::GroupNorm {
            groups: self.num_groups,
            gamma: param_or(self.gamma.as_ref(), c, 1.0),
            beta: param_or(self.beta.as_ref(), c, 0.0),
            eps: self.epsilon,
        }
    }
}

impl Twin for LayerNorm {
    type Fast = kernels::LayerNorm;
    fn twin(&self) -> kernels::LayerNorm {
        let gamma = values(self.gamma.val());
        let d = gamma.len();
        kernels::LayerNorm {
            gamma,
            beta: param_or(self.beta.as_ref(), d, 0.0),
            eps: layer_norm_epsilon(self),
        }
    }
}

/// burn 0.22 keeps LayerNorm's ε private; its display (`LayerNorm {d_model: 4, epsilon: 1e-5,
/// …}`) shows it. A test checks this against the configured value, so that a burn upgrade that
/// changes the display fails loudly rather than silently using the default.
fn layer_norm_epsilon(ln: &LayerNorm) -> f64 {
    let text = format!("{ln}");
    text.split("epsilon: ")
        .nth(1)
        .and_then(|t| t.split([',', '}', ' ']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1e-5)
}

/// What a (transposed) convolution's twin takes from burn: (c_in, c_out, kernel, tap-major
/// weights, bias). Dilation and groups are not supported by the kernels.
struct ConvParts {
    cin: usize,
    cout: usize,
    k: [usize; 3],
    w: Vec<f32>,
    b: Vec<f32>,
}

fn conv_parts(
    weight: &burn::module::Param<Tensor<5>>,
    bias: Option<&burn::module::Param<Tensor<1>>>,
    dilation: [usize; 3],
    groups: usize,
    transposed: bool,
) -> ConvParts {
    assert!(
        dilation == [1, 1, 1] && groups == 1,
        "the fast convolutions have no dilation or groups"
    );
    let dims = weight.val().dims();
    let (cin, cout) = if transposed {
        (dims[0], dims[1])
    } else {
        (dims[1], dims[0])
    };
    ConvParts {
        cin,
        cout,
        k: [dims[2], dims[3], dims[4]],
        w: tap_major(&values(weight.val()), dims, transposed),
        b: param_or(bias, cout, 0.0),
    }
}

/// burn's Conv3d (zero padding).
impl Twin for Conv3d {
    type Fast = kernels::Conv3d;
    fn twin(&self) -> kernels::Conv3d {
        let pad = match self.padding {
            PaddingConfig3d::Explicit(z, a, r) => [z, a, r],
            PaddingConfig3d::Valid => [0, 0, 0],
            ref p => panic!("the fast Conv3d takes explicit padding, not {p:?}"),
        };
        let p = conv_parts(
            &self.weight,
            self.bias.as_ref(),
            self.dilation,
            self.groups,
            false,
        );
        kernels::Conv3d {
            cin: p.cin,
            cout: p.cout,
            k: p.k,
            stride: self.stride,
            pad,
            circular: [false; 3],
            w: p.w,
            b: p.b,
        }
    }
}

/// The cylindrical convolution: α padded circularly, z and r with zeros.
impl Twin for CylindricalConv3d {
    type Fast = kernels::Conv3d;
    fn twin(&self) -> kernels::Conv3d {
        let mut c = self.conv.twin();
        c.pad[1] = self.pad_alpha;
        c.circular = [false, true, false];
        c
    }
}

/// burn's ConvTranspose3d.
impl Twin for ConvTranspose3d {
    type Fast = kernels::ConvTranspose3d;
    fn twin(&self) -> kernels::ConvTranspose3d {
        let p = conv_parts(
            &self.weight,
            self.bias.as_ref(),
            self.dilation,
            self.groups,
            true,
        );
        kernels::ConvTranspose3d {
            cin: p.cin,
            cout: p.cout,
            k: p.k,
            stride: self.stride,
            pad: self.padding,
            out_pad: self.padding_out,
            wrap: [0; 3],
            w: p.w,
            b: p.b,
        }
    }
}

/// The cylindrical transposed convolution: the input wrapped by one along α first.
impl Twin for CylindricalConvTranspose3d {
    type Fast = kernels::ConvTranspose3d;
    fn twin(&self) -> kernels::ConvTranspose3d {
        let mut c = self.conv.twin();
        c.wrap = [0, 1, 0];
        c
    }
}

#[cfg(test)]
pub(crate) mod check {
    use burn::tensor::{Device, Distribution, Tensor};

    /// How a twin lays out a tensor that burn holds as `[batch, …]`.
    #[derive(Clone, Copy, Debug)]
    pub enum Layout {
        /// Row-major as burn (dense layers, norms over the last axis, whole networks).
        Rows,
        /// `[batch, c, z, α, r]` as channels-last `[z][α][r][c]`, one batch element per call.
        ChannelsLast,
    }

    fn channels_last(x: &[f32], c: usize) -> Vec<f32> {
        let v = x.len() / c;
        let mut o = vec![0.0; x.len()];
        for ch in 0..c {
            for i in 0..v {
                o[i * c + ch] = x[ch * v + i];
            }
        }
        o
    }

    /// A standard-normal input of `shape` on the CPU.
    pub fn normal<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex())
    }

    /// The one test of a twin: `burn` and `fast` compute the same function of `input`, within
    /// `tol` of the output's largest magnitude. With [`Layout::ChannelsLast`], `fast` is called
    /// per batch element on its channels-last values.
    pub fn check_twin<const D: usize, const E: usize>(
        what: &str,
        input: Tensor<D>,
        burn: impl Fn(Tensor<D>) -> Tensor<E>,
        fast: impl Fn(&[f32]) -> Vec<f32>,
        layout: Layout,
        tol: f32,
    ) {
        let want_t = burn(input.clone());
        let (in_dims, out_dims) = (input.dims(), want_t.dims());
        let x = super::values(input);
        let want = super::values(want_t);
        let got = match layout {
            Layout::Rows => fast(&x),
            Layout::ChannelsLast => {
                let (b, ci, co) = (in_dims[0], in_dims[1], out_dims[1]);
                let per = x.len() / b;
                let mut out = Vec::new();
                for k in 0..b {
                    let y = fast(&channels_last(&x[k * per..(k + 1) * per], ci));
                    // Back to channel-major.
                    let v = y.len() / co;
                    let mut cm = vec![0.0; y.len()];
                    for ch in 0..co {
                        for i in 0..v {
                            cm[ch * v + i] = y[i * co + ch];
                        }
                    }
                    out.extend(cm);
                }
                out
            }
        };
        assert_eq!(got.len(), want.len(), "{what}: output size");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= tol * scale,
            "{what}: max |fast − burn| {worst} vs scale {scale}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::check::{check_twin, normal, Layout};
    use super::*;
    use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};
    use burn::nn::{GroupNormConfig, LayerNormConfig, LinearConfig};
    use burn::tensor::activation::softmax;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn dense_and_norm_twins_match_burn() {
        let dev = Device::flex();
        let l = LinearConfig::new(7, 5).init(&dev);
        let f = l.twin();
        check_twin(
            "Linear",
            normal([4, 7]),
            |x| l.forward(x),
            |x| f.forward_rows(x),
            Layout::Rows,
            1e-5,
        );
        let g = GroupNormConfig::new(3, 6).init(&dev);
        let f = g.twin();
        check_twin(
            "GroupNorm",
            normal([2, 6, 3, 4, 5]),
            |x| g.forward(x),
            |x| {
                let mut y = x.to_vec();
                f.apply(&mut y, false);
                y
            },
            Layout::ChannelsLast,
            1e-5,
        );
        for eps in [1e-5, 1e-3] {
            let ln = LayerNormConfig::new(9).with_epsilon(eps).init(&dev);
            let f = ln.twin();
            assert_eq!(f.eps, eps, "LayerNorm ε read from burn");
            // Small-variance rows make ε matter.
            let x = normal([5, 9]).mul_scalar(0.05);
            check_twin(
                "LayerNorm",
                x,
                |x| ln.forward(x),
                |x| {
                    let mut y = x.to_vec();
                    f.apply(&mut y);
                    y
                },
                Layout::Rows,
                1e-5,
            );
        }
    }

    #[test]
    fn convolution_twins_match_burn() {
        let dev = Device::flex();
        // (cin, cout, kernel, stride, padding, grid): stride-1 3×3×3 through every code path
        // (cout 16 = AVX tiles; cout < 8 = dot products over the inputs, cin 4 = the scalar
        // tail only, cin 19 = eight lanes and a tail), the (3,4,4) stride-2 down-sampling, and
        // a 1×1×1.
        for (cin, cout, k, s, p, d) in [
            (5, 16, [3, 3, 3], [1, 1, 1], [1, 1, 1], [7, 6, 9]),
            (4, 3, [3, 3, 3], [1, 1, 1], [1, 1, 1], [5, 4, 3]),
            (19, 1, [3, 3, 3], [1, 1, 1], [1, 1, 1], [5, 4, 6]),
            (8, 8, [3, 4, 4], [2, 2, 2], [1, 1, 1], [45, 16, 9]),
            (6, 24, [1, 1, 1], [1, 1, 1], [0, 0, 0], [3, 4, 5]),
        ] {
            let c = CylindricalConv3d::new(cin, cout, k, s, p, &dev);
            let f = c.twin();
            check_twin(
                "CylindricalConv3d",
                normal([2, cin, d[0], d[1], d[2]]),
                |x| c.forward(x),
                |x| f.forward(x, d).0.to_vec(),
                Layout::ChannelsLast,
                1e-5,
            );
        }
        // Zero padding on every axis (burn's own Conv3d), and circular padding on r as well.
        let c = Conv3dConfig::new([3, 8], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 2, 1))
            .init(&dev);
        let f = c.twin();
        check_twin(
            "Conv3d",
            normal([1, 3, 4, 5, 6]),
            |x| c.forward(x),
            |x| f.forward(x, [4, 5, 6]).0.to_vec(),
            Layout::ChannelsLast,
            1e-5,
        );
        let mut wrap_r = f.clone();
        wrap_r.pad = [1, 0, 2];
        wrap_r.circular = [false, false, true];
        let plain = Conv3dConfig::new([3, 8], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 0, 0))
            .init(&dev);
        let plain = burn::nn::conv::Conv3d {
            weight: c.weight.clone(),
            bias: c.bias.clone(),
            ..plain
        };
        check_twin(
            "Conv3d, circular r",
            normal([1, 3, 4, 5, 6]),
            |x| plain.forward(crate::conv::circular_pad(x, 4, 2)),
            |x| wrap_r.forward(x, [4, 5, 6]).0.to_vec(),
            Layout::ChannelsLast,
            1e-5,
        );
        // Transposed: burn's, and the cylindrical one (α wrapped, odd α output padding).
        let t = ConvTranspose3dConfig::new([4, 6], [3, 3, 2])
            .with_stride([2, 1, 2])
            .with_padding([1, 0, 0])
            .with_padding_out([1, 0, 0])
            .init(&dev);
        let f = t.twin();
        check_twin(
            "ConvTranspose3d",
            normal([1, 4, 3, 5, 4]),
            |x| t.forward(x),
            |x| f.forward(x, [3, 5, 4]).0.to_vec(),
            Layout::ChannelsLast,
            1e-5,
        );
        let t =
            CylindricalConvTranspose3d::new(6, 5, [3, 4, 4], [2, 2, 2], [1, 1, 1], [0, 0, 1], &dev);
        let f = t.twin();
        check_twin(
            "CylindricalConvTranspose3d",
            normal([1, 6, 23, 8, 4]),
            |x| t.forward(x),
            |x| {
                let (y, od) = f.forward(x, [23, 8, 4]);
                assert_eq!(od, [45, 16, 9]);
                y.to_vec()
            },
            Layout::ChannelsLast,
            1e-5,
        );
    }

    #[test]
    fn softmax_attention_matches_burn() {
        let dev = Device::flex();
        let (nq, nk, heads, dh) = (5, 7, 2, 4);
        let k = normal([nk, heads * dh]);
        let v = normal([nk, heads * dh]);
        // A banded mask: query i sees keys i−1 … i+2 (the AllShowers window is of this kind).
        let mask: Vec<bool> = (0..nq * nk)
            .map(|ij| {
                let (i, j) = (ij / nk, ij % nk);
                j + 1 >= i && j <= i + 2
            })
            .collect();
        let scale = (dh as f32).powf(-0.5);
        let (kv, vv) = (values(k.clone()), values(v.clone()));
        let bias: Vec<f32> = mask.iter().map(|&m| if m { 0.0 } else { -1e30 }).collect();
        let bias = Tensor::<2>::from_data(TensorData::new(bias, [nq, nk]), &dev);
        for masked in [false, true] {
            check_twin(
                "softmax attention",
                normal([nq, heads * dh]),
                |q| {
                    let heads_out: Vec<Tensor<2>> = (0..heads)
                        .map(|h| {
                            let qh = q.clone().narrow(1, h * dh, dh);
                            let kh = k.clone().narrow(1, h * dh, dh);
                            let vh = v.clone().narrow(1, h * dh, dh);
                            let mut s = qh.matmul(kh.transpose()).mul_scalar(scale);
                            if masked {
                                s = s + bias.clone();
                            }
                            softmax(s, 1).matmul(vh)
                        })
                        .collect();
                    Tensor::cat(heads_out, 1)
                },
                |q| {
                    kernels::softmax_attention(
                        q,
                        &kv,
                        &vv,
                        nk,
                        heads,
                        dh,
                        scale,
                        masked.then_some(mask.as_slice()),
                    )
                },
                Layout::Rows,
                1e-5,
            );
        }
        // A query with every key masked gets zeros, not NaN.
        let none = vec![false; nk];
        let out = kernels::softmax_attention(
            &values(normal([1, heads * dh])),
            &kv,
            &vv,
            nk,
            heads,
            dh,
            scale,
            Some(&none),
        );
        assert!(out.iter().all(|&x| x == 0.0));
    }
}

//! The score network of CaloScore v1 (Mikuni & Nachman; `ViniciusMikuni/CaloScore`,
//! `scripts/CaloScore.py` `ConvModel` and `time_conv`), on caloforge's native cylindrical grid
//! [batch, channels, z, α, r] instead of the reference's lossy cartesian 12×12 image: α wraps
//! around (circular padding), z and r are zero-padded, and r (and α where needed) is padded up
//! to a multiple of the pooling factors before the network and cropped after it.
//!
//! - Embedding: one fixed Gaussian Fourier projection W ~ N(0, 1)·16 of EMBED/2 frequencies,
//!   shared by t and E (`[sin 2πtW, cos 2πtW]`), each through Dense(EMBED, swish),
//!   concatenated, then two Dense(EMBED, swish).
//! - `time_conv(x, emb, C)`: swish(conv3(x), no bias) + swish(Dense(C, no bias)(emb)), a 1×1×1
//!   conv with bias, the reference's BatchNormalization (which its training loop runs in
//!   inference mode, so a learnable per-channel affine), swish. Dropout(0.1) is likewise off.
//! - Encoder: e0 = tc(x, s0); e1 = pool(tc(e0, s1)); e2 = pool(tc(e1, s2)), average pooling by
//!   `pool` (dataset 2: (3, 2, 2)). Decoder: d = tc(e2, s2); for (C, skip) = (s1, e1), (s0, e0):
//!   d = tc(d, C), nearest up-sampling, swish(conv3(d)), (d + skip)/√2, swish(conv1(d));
//!   then tc(d, s0) and a 3×3×3 conv to one channel.
//!
//! The network output n(x, t, E) is the reference's; the score is n/σ(t) (see `caloforge_nn::sde`).
//! Weights start as Keras' defaults (Glorot uniform, zero biases), as the reference's.

use crate::conv::CylindricalConv3d;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Settings of [`ScoreNet`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreNetConfig {
    /// Shower grid (z, α, r).
    pub shape: [usize; 3],
    /// Channels of the three levels (reference dataset 2: [32, 64, 128]).
    pub channels: [usize; 3],
    /// Average-pooling factors (z, α, r) between levels (reference: (3, 2, 2)).
    pub pool: [usize; 3],
    /// Embedding width (reference dataset 2: 128).
    pub embed: usize,
    /// Kernel of the convolutions (reference datasets 2 and 3: 3 × 3 × 3; dataset 1, a 1-D
    /// vector on the z axis: 5 × 1 × 1), zero-padded to keep the grid.
    pub kernel: [usize; 3],
    /// Kernel of each time_conv's second convolution (1 × 1 × 1 in 3-D; the reference's 1-D
    /// branch uses the main kernel there).
    pub mix_kernel: [usize; 3],
}

impl ScoreNetConfig {
    /// The padded grid: each axis rounded up to a multiple of pool².
    pub fn padded(&self) -> [usize; 3] {
        let mut p = self.shape;
        for (v, f) in p.iter_mut().zip(self.pool) {
            let m = f * f;
            *v = v.div_ceil(m) * m;
        }
        p
    }
}

/// conv3(x) → + Dense(emb) → conv1 → affine → swish.
#[derive(Module, Debug)]
pub struct TimeConv {
    pub(crate) conv: CylindricalConv3d,
    pub(crate) dense: Linear,
    pub(crate) conv1: CylindricalConv3d,
    pub(crate) gamma: Param<Tensor<1>>,
    pub(crate) beta: Param<Tensor<1>>,
}

/// Keras' default initialisation (the reference is TensorFlow): Glorot-uniform weights
/// (limit √(6/(fan_in + fan_out)), fans counting the kernel's taps), zero biases.
pub(crate) fn glorot<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    fan_out: usize,
    device: &Device,
) -> Param<Tensor<D>> {
    let l = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Param::from_tensor(Tensor::random(
        shape,
        burn::tensor::Distribution::Uniform(-l, l),
        device,
    ))
}

pub(crate) fn conv(
    ci: usize,
    co: usize,
    k: usize,
    bias: bool,
    device: &Device,
) -> CylindricalConv3d {
    conv_k(ci, co, [k; 3], bias, device)
}

/// A "same" convolution with kernel `k` (odd sides), Keras-initialised.
pub(crate) fn conv_k(
    ci: usize,
    co: usize,
    k: [usize; 3],
    bias: bool,
    device: &Device,
) -> CylindricalConv3d {
    let mut c = CylindricalConv3d::new(ci, co, k, [1; 3], k.map(|v| v / 2), device);
    let taps: usize = k.iter().product();
    c.conv.weight = glorot([co, ci, k[0], k[1], k[2]], ci * taps, co * taps, device);
    c.conv.bias = bias.then(|| Param::from_tensor(Tensor::zeros([co], device)));
    c
}

pub(crate) fn dense(i: usize, o: usize, bias: bool, device: &Device) -> Linear {
    let mut l = LinearConfig::new(i, o).with_bias(bias).init(device);
    l.weight = glorot([i, o], i, o, device);
    if bias {
        l.bias = Some(Param::from_tensor(Tensor::zeros([o], device)));
    }
    l
}

impl TimeConv {
    fn new(ci: usize, co: usize, cfg: &ScoreNetConfig, device: &Device) -> Self {
        TimeConv {
            conv: conv_k(ci, co, cfg.kernel, false, device),
            dense: dense(cfg.embed, co, false, device),
            conv1: conv_k(co, co, cfg.mix_kernel, true, device),
            // Keras BatchNormalization in inference mode at initialisation: γ/√(1 + 1e-3), β = 0.
            gamma: Param::from_tensor(Tensor::ones([co], device).div_scalar(1.001f64.sqrt())),
            beta: Param::from_tensor(Tensor::zeros([co], device)),
        }
    }
    fn forward(&self, x: Tensor<5>, emb: Tensor<2>) -> Tensor<5> {
        let h = silu(self.conv.forward(x));
        let [b, c, ..] = h.dims();
        let h = h + silu(self.dense.forward(emb)).reshape([b, c, 1, 1, 1]);
        let h = self.conv1.forward(h);
        let h = h * self.gamma.val().reshape([1, c, 1, 1, 1])
            + self.beta.val().reshape([1, c, 1, 1, 1]);
        silu(h)
    }
}

/// One decoder level: tc, up-sampling, conv3 + swish, skip average, conv1 + swish.
#[derive(Module, Debug)]
pub struct UpLevel {
    pub(crate) tc: TimeConv,
    pub(crate) conv: CylindricalConv3d,
    pub(crate) conv1: CylindricalConv3d,
}

/// The CaloScore v1 score network.
#[derive(Module, Debug)]
pub struct ScoreNet {
    /// The fixed Fourier frequencies W (not trained).
    pub fourier: Param<Tensor<1>>,
    pub(crate) dense_t: Linear,
    pub(crate) dense_e: Linear,
    pub(crate) dense1: Linear,
    pub(crate) dense2: Linear,
    pub(crate) down: Vec<TimeConv>,
    pub(crate) mid: TimeConv,
    pub(crate) up: Vec<UpLevel>,
    pub(crate) last: TimeConv,
    pub(crate) out: CylindricalConv3d,
    shape: [usize; 3],
    padded: [usize; 3],
    pool: [usize; 3],
}

/// Average pooling by `f` on (z, α, r) via a reshape (burn has no 3-D pooling).
pub(crate) fn pool(x: Tensor<5>, f: [usize; 3]) -> Tensor<5> {
    let [b, c, z, a, r] = x.dims();
    let (z2, a2, r2) = (z / f[0], a / f[1], r / f[2]);
    let y: Tensor<8> = x.reshape([b, c, z2, f[0], a2, f[1], r2, f[2]]);
    y.mean_dim(7)
        .mean_dim(5)
        .mean_dim(3)
        .reshape([b, c, z2, a2, r2])
}

/// Zero-pads `[b, c, z, α, r]` at the end of each grid axis up to `to`.
pub(crate) fn pad_end(h: Tensor<5>, to: [usize; 3]) -> Tensor<5> {
    let [_, _, z, a, r] = h.dims();
    if [z, a, r] == to {
        return h;
    }
    h.pad(
        [
            (0, 0),
            (0, 0),
            (0, to[0] - z),
            (0, to[1] - a),
            (0, to[2] - r),
        ],
        0.0,
    )
}

/// The first `shape` of each grid axis of `[b, c, z, α, r]` (undoes [`pad_end`]).
pub(crate) fn crop(h: Tensor<5>, shape: [usize; 3]) -> Tensor<5> {
    let [b, c, z, a, r] = h.dims();
    if [z, a, r] == shape {
        return h;
    }
    h.slice([0..b, 0..c, 0..shape[0], 0..shape[1], 0..shape[2]])
}

/// Nearest up-sampling by `f`.
pub(crate) fn upsample(x: Tensor<5>, f: [usize; 3]) -> Tensor<5> {
    let [b, c, z, a, r] = x.dims();
    let y: Tensor<8> = x.reshape([b, c, z, 1, a, 1, r, 1]);
    y.expand([b, c, z, f[0], a, f[1], r, f[2]])
        .reshape([b, c, z * f[0], a * f[1], r * f[2]])
}

impl ScoreNet {
    /// A network for `cfg`; the Fourier frequencies are drawn from `seed`.
    pub fn new(cfg: &ScoreNetConfig, seed: u64, device: &Device) -> Self {
        let [s0, s1, s2] = cfg.channels;
        let e = cfg.embed;
        let half = e / 2;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5c0e);
        let w: Vec<f32> = (0..half)
            .map(|_| 16.0 * Distribution::<f32>::sample(&StandardNormal, &mut rng))
            .collect();
        let fourier = Param::from_tensor(Tensor::from_data(TensorData::new(w, [half]), device))
            .set_require_grad(false);
        let lin = |i: usize, o: usize| dense(i, o, true, device);
        ScoreNet {
            fourier,
            dense_t: lin(2 * half, e),
            dense_e: lin(2 * half, e),
            dense1: lin(2 * e, e),
            dense2: lin(e, e),
            down: vec![
                TimeConv::new(1, s0, cfg, device),
                TimeConv::new(s0, s1, cfg, device),
                TimeConv::new(s1, s2, cfg, device),
            ],
            mid: TimeConv::new(s2, s2, cfg, device),
            up: [(s2, s1), (s1, s0)]
                .iter()
                .map(|&(ci, co)| UpLevel {
                    tc: TimeConv::new(ci, co, cfg, device),
                    conv: conv_k(co, co, cfg.kernel, true, device),
                    conv1: conv(co, co, 1, true, device),
                })
                .collect(),
            last: TimeConv::new(s0, s0, cfg, device),
            out: conv_k(s0, 1, cfg.kernel, true, device),
            shape: cfg.shape,
            padded: cfg.padded(),
            pool: cfg.pool,
        }
    }

    /// (grid, padded grid, pooling factors).
    pub fn grid(&self) -> ([usize; 3], [usize; 3], [usize; 3]) {
        (self.shape, self.padded, self.pool)
    }

    fn fourier_features(&self, v: Tensor<2>) -> Tensor<2> {
        let w = self.fourier.val();
        let h = w.dims()[0];
        let p = v
            .mul(w.reshape([1, h]))
            .mul_scalar(2.0 * std::f64::consts::PI);
        Tensor::cat(vec![p.clone().sin(), p.cos()], 1)
    }

    /// The conditioning vector of times `t` [B, 1] and energies `e` [B, 1].
    fn embedding(&self, t: Tensor<2>, e: Tensor<2>) -> Tensor<2> {
        let ht = silu(self.dense_t.forward(self.fourier_features(t)));
        let he = silu(self.dense_e.forward(self.fourier_features(e)));
        let h = silu(self.dense1.forward(Tensor::cat(vec![ht, he], 1)));
        silu(self.dense2.forward(h))
    }

    /// n(x, t, E) `[B, V]` for showers `x` `[B, V]` (V = z·α·r), times `t` [B, 1] and energy
    /// conditions `e` [B, 1].
    pub fn forward(&self, x: Tensor<2>, t: Tensor<2>, e: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [z, a, r] = self.shape;
        let emb = self.embedding(t, e);
        let h = pad_end(x.reshape([b, 1, z, a, r]), self.padded);
        let e0 = self.down[0].forward(h, emb.clone());
        let e1 = pool(self.down[1].forward(e0.clone(), emb.clone()), self.pool);
        let e2 = pool(self.down[2].forward(e1.clone(), emb.clone()), self.pool);
        let mut d = self.mid.forward(e2, emb.clone());
        for (lev, skip) in self.up.iter().zip([e1, e0]) {
            d = upsample(lev.tc.forward(d, emb.clone()), self.pool);
            d = silu(lev.conv.forward(d));
            d = (d + skip).div_scalar(std::f64::consts::SQRT_2);
            d = silu(lev.conv1.forward(d));
        }
        let d = self.out.forward(self.last.forward(d, emb));
        crop(d, self.shape).reshape([b, z * a * r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution as D;

    #[test]
    fn keeps_the_shapes_and_trains_on_datasets_1_2_and_3() {
        let dev = Device::flex().autodiff();
        // Datasets 2 and 3 (3 × 3 × 3 kernels, pooling (3, 2, 2)), and dataset 1's normalised
        // vector of 368 + 1 values on the z axis (kernel 5, pooling 4, padded to 384).
        for (shape, kernel, mix, pool) in [
            ([45usize, 16, 9], [3; 3], [1; 3], [3, 2, 2]),
            ([45, 50, 18], [3; 3], [1; 3], [3, 2, 2]),
            ([369, 1, 1], [5, 1, 1], [5, 1, 1], [4, 1, 1]),
        ] {
            let cfg = ScoreNetConfig {
                shape,
                channels: [2, 4, 4],
                pool,
                embed: 8,
                kernel,
                mix_kernel: mix,
            };
            let v: usize = shape.iter().product();
            let net = ScoreNet::new(&cfg, 1, &dev);
            let x = Tensor::<2>::random([2, v], D::Normal(0.0, 1.0), &dev);
            let t = Tensor::<2>::random([2, 1], D::Uniform(0.0, 1.0), &dev);
            let y = net.forward(x, t.clone(), t);
            assert_eq!(y.dims(), [2, v]);
            let grads = y.powf_scalar(2.0).mean().backward();
            let g = burn::optim::GradientsParams::from_grads(grads, &net);
            assert!(!g.is_empty());
        }
        assert_eq!(
            ScoreNetConfig {
                shape: [45, 50, 18],
                channels: [1, 1, 1],
                pool: [3, 2, 2],
                embed: 2,
                kernel: [3; 3],
                mix_kernel: [1; 3],
            }
            .padded(),
            [45, 52, 20]
        );
        assert_eq!(
            ScoreNetConfig {
                shape: [369, 1, 1],
                channels: [1, 1, 1],
                pool: [4, 1, 1],
                embed: 2,
                kernel: [5, 1, 1],
                mix_kernel: [5, 1, 1],
            }
            .padded(),
            [384, 1, 1]
        );
    }

    #[test]
    fn pooling_and_upsampling_by_hand() {
        let dev = Device::flex();
        let x = Tensor::<5>::from_data(
            TensorData::new(
                (0..8).map(|v| v as f32).collect::<Vec<_>>(),
                [1, 1, 2, 2, 2],
            ),
            &dev,
        );
        let p: Vec<f32> = pool(x.clone(), [2, 2, 2])
            .into_data()
            .iter::<f32>()
            .collect();
        assert_eq!(p, vec![3.5]);
        let p: Vec<f32> = pool(x, [1, 1, 2]).into_data().iter::<f32>().collect();
        assert_eq!(p, vec![0.5, 2.5, 4.5, 6.5]);
        let y = Tensor::<5>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 1, 1, 2, 1]), &dev);
        let u: Vec<f32> = upsample(y, [2, 1, 2]).into_data().iter::<f32>().collect();
        assert_eq!(u, vec![1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    }
}

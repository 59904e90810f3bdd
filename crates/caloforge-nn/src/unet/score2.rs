//! The networks of CaloScore v2 (Mikuni & Nachman; `ViniciusMikuni/CaloScoreV2`,
//! `scripts/CaloScore.py` and `architectures.py`; `docs/design/caloscore.md` §2.4), on
//! caloforge's native cylindrical grid [batch, channels, z, α, r] (α wraps around; z and r are
//! zero-padded at the end up to a multiple of 2^levels and cropped after the network).
//!
//! - [`TimeEmbedding`]: sinusoidal features of 1000·t at frequencies exp(−ln(10⁴)·i/(H−1)),
//!   Dense(2·EMBED), swish, Dense(EMBED).
//! - [`VoxelNet`]: the voxel U-Net conditioned on the (normalised) layer energies: c =
//!   Dense(EMBED)([t_emb, swish(Dense(EMBED)(layers)), swish(Dense(EMBED)(E))]) (linear); a
//!   1×1×1 input conv to `in_emb` channels; per level `depth` residual blocks (swish → conv3,
//!   plus Dense(c) → swish → conv3, 1×1×1 conv on the skip path where the width changes, no
//!   normalisation; with attention, x += MHA(GroupNorm₄(x)) over the level's voxels, one head,
//!   q/k/v/o projections) and 2× average pooling; `depth` blocks at the bottleneck; per level
//!   nearest 2× up-sampling and `depth` blocks each on concat(x, skip); a zero-initialised
//!   1×1×1 output conv.
//! - [`LayerNet`]: the layer-energy ResNet with FiLM conditioning (LeakyReLU 0.01): c =
//!   Dense(EMBED)([t_emb, swish(Dense(EMBED)(E))]); emb = act(Dense(mlp)(c)); h = Dense(mlp)(x);
//!   per block r = Dense(h), (scale, shift) = Dense(2·mlp)(emb), y = act(Dense(act(h))),
//!   y = act((1 + scale)·y + shift), h = Dense(y) + r; out = Dense(L)(h).
//!
//! Both predict v (v-parameterisation). Weights start as Keras' defaults (Glorot uniform, zero
//! biases). Differences from the reference: α is circular instead of zero-padded, padding sits
//! at the end of each axis, and the energy Dense is not shared between the two networks
//! (the reference shares it while training the base model; its EMA copies do not).

use super::score::{conv, conv_k, crop, dense, pad_end, pool, upsample};
use crate::conv::CylindricalConv3d;
use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, Linear};
use burn::tensor::activation::{leaky_relu, silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

/// Settings of the voxel U-Net.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoxelUNetConfig {
    /// Channels after the input 1×1×1 conv (reference: 32).
    pub in_emb: usize,
    /// Widths of the levels, the last the bottleneck (reference: [32, 64, 96]).
    pub widths: Vec<usize>,
    /// Residual blocks per level (reference: 3).
    pub depth: usize,
    /// Self-attention per level (reference: [false, false, true]: the bottleneck only).
    pub attention: Vec<bool>,
}

/// Settings of both CaloScore v2 networks.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreV2Config {
    /// Shower grid (z, α, r).
    pub shape: [usize; 3],
    /// Number of layer energies (the layer model's dimension).
    pub layers: usize,
    /// Embedding width (reference: 64).
    pub embed: usize,
    /// The voxel U-Net.
    pub unet: VoxelUNetConfig,
    /// Width of the layer model (reference: 1024).
    pub mlp: usize,
    /// FiLM blocks of the layer model (reference: 2).
    pub blocks: usize,
    /// Kernel of the 3×3×3 convolutions (dataset 1, a vector along z: [3, 1, 1]).
    pub kernel: [usize; 3],
    /// Pooling and up-sampling factors between levels (dataset 1: [2, 1, 1]).
    pub pool: [usize; 3],
    /// Attention normalises each token over its channels (the reference's 1-D LayerNorm,
    /// ε = 1e-6, not affine) instead of GroupNorm(4) over the grid.
    pub layer_norm: bool,
}

impl ScoreV2Config {
    /// Checks the settings (a message naming the bad key).
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.unet;
        if u.widths.is_empty() || u.attention.len() != u.widths.len() {
            return Err("unet.widths must be non-empty and unet.attention as long".into());
        }
        if u.in_emb == 0 || u.depth == 0 || u.widths.contains(&0) {
            return Err("unet.in_emb, unet.depth and unet.widths must be > 0".into());
        }
        for (w, a) in u.widths.iter().zip(&u.attention) {
            if *a && !self.layer_norm && w % 4 != 0 {
                return Err(format!(
                    "unet.widths: a level with attention needs a multiple of 4 channels (GroupNorm of 4 groups), got {w}"
                ));
            }
        }
        if self.embed < 2 || self.mlp == 0 || self.blocks == 0 {
            return Err("embed >= 2, mlp > 0 and blocks > 0 required".into());
        }
        Ok(())
    }

    /// The padded grid: each axis rounded up to a multiple of pool^(levels − 1).
    pub fn padded(&self) -> [usize; 3] {
        let l = self.unet.widths.len() as u32 - 1;
        std::array::from_fn(|i| {
            let m = self.pool[i].pow(l);
            self.shape[i].div_ceil(m) * m
        })
    }
}

/// The sinusoidal embedding of t followed by two Dense layers.
#[derive(Module, Debug)]
pub struct TimeEmbedding {
    pub(crate) d1: Linear,
    pub(crate) d2: Linear,
    pub(crate) half: usize,
}

impl TimeEmbedding {
    fn new(embed: usize, device: &Device) -> Self {
        let half = embed / 2;
        TimeEmbedding {
            d1: dense(2 * half, 2 * embed, true, device),
            d2: dense(2 * embed, embed, true, device),
            half,
        }
    }

    /// The frequencies exp(−ln(10⁴)·i/(H−1)), i < H.
    pub fn frequencies(half: usize) -> Vec<f32> {
        let d = (half.max(2) - 1) as f64;
        (0..half)
            .map(|i| (-(1e4f64).ln() * i as f64 / d).exp() as f32)
            .collect()
    }

    /// [B, 1] times → [B, EMBED].
    pub fn forward(&self, t: Tensor<2>) -> Tensor<2> {
        let f = Tensor::<2>::from_data(
            TensorData::new(Self::frequencies(self.half), [1, self.half]),
            &t.device(),
        );
        let p = t.mul_scalar(1000.0).mul(f);
        let h = silu(
            self.d1
                .forward(Tensor::cat(vec![p.clone().sin(), p.cos()], 1)),
        );
        self.d2.forward(h)
    }
}

/// Single-head softmax self-attention over the voxels of a level, after a non-affine
/// GroupNorm of 4 groups (Keras ε = 1e-3), added to its input.
#[derive(Module, Debug)]
pub struct Attention {
    /// GroupNorm(4); `None`: LayerNorm over each token's channels.
    pub(crate) norm: Option<GroupNorm>,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
}

impl Attention {
    fn new(c: usize, layer_norm: bool, device: &Device) -> Self {
        Attention {
            norm: (!layer_norm).then(|| {
                GroupNormConfig::new(4, c)
                    .with_affine(false)
                    .with_epsilon(1e-3)
                    .init(device)
            }),
            q: dense(c, c, true, device),
            k: dense(c, c, true, device),
            v: dense(c, c, true, device),
            o: dense(c, c, true, device),
        }
    }

    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, c, z, a, r] = x.dims();
        let n = z * a * r;
        let g: Tensor<3> = match &self.norm {
            Some(norm) => norm.forward(x.clone()).reshape([b, c, n]).swap_dims(1, 2),
            None => {
                let t: Tensor<3> = x.clone().reshape([b, c, n]).swap_dims(1, 2);
                let (var, mean) = t.clone().var_mean_bias(2);
                (t - mean).div(var.add_scalar(LAYER_NORM_EPS).sqrt())
            }
        };
        let q = self.q.forward(g.clone());
        let k = self.k.forward(g.clone());
        let v = self.v.forward(g);
        let w = softmax(q.matmul(k.swap_dims(1, 2)).div_scalar((c as f64).sqrt()), 2);
        let o = self.o.forward(w.matmul(v));
        x + o.swap_dims(1, 2).reshape([b, c, z, a, r])
    }
}

/// ε of the 1-D attention's LayerNorm (the reference's `LayerNormalization(epsilon=1e-6)`).
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// The residual block of the v2 U-Net.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub(crate) skip: Option<CylindricalConv3d>,
    pub(crate) conv1: CylindricalConv3d,
    pub(crate) cond: Linear,
    pub(crate) conv2: CylindricalConv3d,
    pub(crate) attn: Option<Attention>,
}

impl ResBlock {
    fn new(ci: usize, co: usize, cfg: &ScoreV2Config, attention: bool, device: &Device) -> Self {
        ResBlock {
            skip: (ci != co).then(|| conv(ci, co, 1, true, device)),
            conv1: conv_k(ci, co, cfg.kernel, true, device),
            cond: dense(cfg.embed, co, true, device),
            conv2: conv_k(co, co, cfg.kernel, true, device),
            attn: attention.then(|| Attention::new(co, cfg.layer_norm, device)),
        }
    }

    fn forward(&self, x: Tensor<5>, c: Tensor<2>) -> Tensor<5> {
        let res = match &self.skip {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let h = self.conv1.forward(silu(x));
        let [b, ch, ..] = h.dims();
        let h = h + self.cond.forward(c).reshape([b, ch, 1, 1, 1]);
        let x = res + self.conv2.forward(silu(h));
        match &self.attn {
            Some(a) => a.forward(x),
            None => x,
        }
    }
}

/// The voxel network: conditioning and U-Net.
#[derive(Module, Debug)]
pub struct VoxelNet {
    pub(crate) temb: TimeEmbedding,
    pub(crate) dense_layer: Linear,
    pub(crate) dense_e: Linear,
    pub(crate) cond: Linear,
    pub(crate) input: CylindricalConv3d,
    pub(crate) down: Vec<ResBlock>,
    pub(crate) mid: Vec<ResBlock>,
    pub(crate) up: Vec<ResBlock>,
    pub(crate) out: CylindricalConv3d,
    pub(crate) shape: [usize; 3],
    pub(crate) padded: [usize; 3],
    pub(crate) depth: usize,
    pub(crate) pool: [usize; 3],
}

impl VoxelNet {
    /// A network for `cfg` (Keras initialisation from the device's seed).
    pub fn new(cfg: &ScoreV2Config, device: &Device) -> Self {
        let e = cfg.embed;
        let u = &cfg.unet;
        let nl = u.widths.len();
        let mut down = Vec::new();
        let mut skips = Vec::new();
        let mut ch = u.in_emb;
        for (&w, &a) in u.widths[..nl - 1].iter().zip(&u.attention) {
            for _ in 0..u.depth {
                down.push(ResBlock::new(ch, w, cfg, a, device));
                ch = w;
                skips.push(ch);
            }
        }
        let wl = u.widths[nl - 1];
        let mut mid = Vec::new();
        for _ in 0..u.depth {
            mid.push(ResBlock::new(ch, wl, cfg, u.attention[nl - 1], device));
            ch = wl;
        }
        let mut up = Vec::new();
        for (&w, &a) in u.widths[..nl - 1].iter().zip(&u.attention).rev() {
            for _ in 0..u.depth {
                let s = skips.pop().unwrap_or(0);
                up.push(ResBlock::new(ch + s, w, cfg, a, device));
                ch = w;
            }
        }
        let mut out = conv(ch, 1, 1, true, device);
        out.conv.weight = burn::module::Param::from_tensor(Tensor::zeros([1, ch, 1, 1, 1], device));
        VoxelNet {
            temb: TimeEmbedding::new(e, device),
            dense_layer: dense(cfg.layers, e, true, device),
            dense_e: dense(1, e, true, device),
            cond: dense(3 * e, e, true, device),
            input: conv(1, u.in_emb, 1, true, device),
            down,
            mid,
            up,
            out,
            shape: cfg.shape,
            padded: cfg.padded(),
            depth: u.depth,
            pool: cfg.pool,
        }
    }

    /// v(x, t, E, layers) `[B, V]` for noisy showers `x` `[B, V]` (V = z·α·r), times `t` and
    /// energy conditions `e` `[B, 1]`, normalised layer energies `layers` `[B, L]`.
    pub fn forward(
        &self,
        x: Tensor<2>,
        t: Tensor<2>,
        e: Tensor<2>,
        layers: Tensor<2>,
    ) -> Tensor<2> {
        let b = x.dims()[0];
        let [z, a, r] = self.shape;
        let c = self.cond.forward(Tensor::cat(
            vec![
                self.temb.forward(t),
                silu(self.dense_layer.forward(layers)),
                silu(self.dense_e.forward(e)),
            ],
            1,
        ));
        let mut h = self
            .input
            .forward(pad_end(x.reshape([b, 1, z, a, r]), self.padded));
        let mut skips = Vec::with_capacity(self.down.len());
        for (i, blk) in self.down.iter().enumerate() {
            h = blk.forward(h, c.clone());
            skips.push(h.clone());
            if (i + 1) % self.depth == 0 {
                h = pool(h, self.pool);
            }
        }
        for blk in &self.mid {
            h = blk.forward(h, c.clone());
        }
        for (i, blk) in self.up.iter().enumerate() {
            if i % self.depth == 0 {
                h = upsample(h, self.pool);
            }
            let s = skips.pop().expect("one skip per up block");
            h = blk.forward(Tensor::cat(vec![h, s], 1), c.clone());
        }
        crop(self.out.forward(h), self.shape).reshape([b, z * a * r])
    }
}

/// One FiLM block of the layer model.
#[derive(Module, Debug)]
pub struct FilmBlock {
    pub(crate) res: Linear,
    pub(crate) film: Linear,
    pub(crate) d1: Linear,
    pub(crate) d2: Linear,
}

/// The layer-energy network: conditioning and FiLM ResNet.
#[derive(Module, Debug)]
pub struct LayerNet {
    pub(crate) temb: TimeEmbedding,
    pub(crate) dense_e: Linear,
    pub(crate) cond: Linear,
    pub(crate) emb: Linear,
    pub(crate) input: Linear,
    pub(crate) blocks: Vec<FilmBlock>,
    pub(crate) out: Linear,
    pub(crate) mlp: usize,
}

fn act<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    leaky_relu(x, 0.01)
}

impl LayerNet {
    /// A network for `cfg` (Keras initialisation from the device's seed).
    pub fn new(cfg: &ScoreV2Config, device: &Device) -> Self {
        let (e, m, l) = (cfg.embed, cfg.mlp, cfg.layers);
        LayerNet {
            temb: TimeEmbedding::new(e, device),
            dense_e: dense(1, e, true, device),
            cond: dense(2 * e, e, true, device),
            emb: dense(e, m, true, device),
            input: dense(l, m, true, device),
            blocks: (0..cfg.blocks)
                .map(|_| FilmBlock {
                    res: dense(m, m, true, device),
                    film: dense(m, 2 * m, true, device),
                    d1: dense(m, m, true, device),
                    d2: dense(m, m, true, device),
                })
                .collect(),
            out: dense(m, l, true, device),
            mlp: m,
        }
    }

    /// v(x, t, E) `[B, L]` for noisy normalised layer energies `x` `[B, L]`, times `t` and
    /// energy conditions `e` `[B, 1]`.
    pub fn forward(&self, x: Tensor<2>, t: Tensor<2>, e: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let m = self.mlp;
        let c = self.cond.forward(Tensor::cat(
            vec![self.temb.forward(t), silu(self.dense_e.forward(e))],
            1,
        ));
        let emb = act(self.emb.forward(c));
        let mut h = self.input.forward(x);
        for blk in &self.blocks {
            let r = blk.res.forward(h.clone());
            let ss = blk.film.forward(emb.clone());
            let scale = ss.clone().slice([0..b, 0..m]);
            let shift = ss.slice([0..b, m..2 * m]);
            let y = act(blk.d1.forward(act(h)));
            let y = act(y * (scale.add_scalar(1.0)) + shift);
            h = blk.d2.forward(y) + r;
        }
        self.out.forward(h)
    }
}

/// The two networks of CaloScore v2, trained together (one optimizer step updates both).
#[derive(Module, Debug)]
pub struct ScoreV2Nets {
    /// The layer-energy network.
    pub layer: LayerNet,
    /// The voxel network.
    pub voxel: VoxelNet,
}

impl ScoreV2Nets {
    /// Both networks for `cfg` (Keras initialisation from the device's seed).
    pub fn new(cfg: &ScoreV2Config, device: &Device) -> Self {
        ScoreV2Nets {
            layer: LayerNet::new(cfg, device),
            voxel: VoxelNet::new(cfg, device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution as D;

    fn cfg(shape: [usize; 3]) -> ScoreV2Config {
        ScoreV2Config {
            shape,
            layers: shape[0],
            embed: 8,
            unet: VoxelUNetConfig {
                in_emb: 4,
                widths: vec![4, 8, 8],
                depth: 2,
                attention: vec![false, false, true],
            },
            mlp: 16,
            blocks: 2,
            kernel: [3; 3],
            pool: [2; 3],
            layer_norm: false,
        }
    }

    /// Dataset 1: a vector of 368 along z in 5 layers, kernels and pooling along z only,
    /// LayerNorm attention.
    fn cfg_1d() -> ScoreV2Config {
        ScoreV2Config {
            layers: 5,
            kernel: [3, 1, 1],
            pool: [2, 1, 1],
            layer_norm: true,
            ..cfg([368, 1, 1])
        }
    }

    #[test]
    fn keeps_shapes_starts_at_zero_and_trains_on_datasets_1_2_and_3() {
        let dev = Device::flex().autodiff();
        for c in [cfg([45, 16, 9]), cfg([45, 50, 18]), cfg_1d()] {
            let shape = c.shape;
            c.validate().unwrap();
            let v: usize = shape.iter().product();
            let nl = c.layers;
            let net = VoxelNet::new(&c, &dev);
            let lnet = LayerNet::new(&c, &dev);
            let x = Tensor::<2>::random([2, v], D::Normal(0.0, 1.0), &dev);
            let t = Tensor::<2>::random([2, 1], D::Uniform(0.0, 1.0), &dev);
            let l = Tensor::<2>::random([2, nl], D::Normal(0.0, 1.0), &dev);
            let y = net.forward(x, t.clone(), t.clone(), l.clone());
            assert_eq!(y.dims(), [2, v]);
            // The zero-initialised output conv: v = its bias = 0 at the start.
            assert!(y.clone().abs().max().into_scalar::<f32>() < 1e-6);
            let yl = lnet.forward(l, t.clone(), t);
            assert_eq!(yl.dims(), [2, nl]);
            let loss = (y + Tensor::<2>::ones([2, v], &dev))
                .powf_scalar(2.0)
                .mean()
                + yl.powf_scalar(2.0).mean();
            let g = burn::optim::GradientsParams::from_grads(loss.backward(), &net);
            assert!(!g.is_empty());
        }
        assert_eq!(cfg([45, 50, 18]).padded(), [48, 52, 20]);
        assert_eq!(cfg_1d().padded(), [368, 1, 1]);
    }

    #[test]
    fn time_frequencies_and_attention_softmax_rows() {
        let f = TimeEmbedding::frequencies(4);
        assert!(
            (f[0] - 1.0).abs() < 1e-7 && (f[3] - 1e-4).abs() < 1e-9,
            "{f:?}"
        );
        assert!((f[1] as f64 - (1e4f64).powf(-1.0 / 3.0)).abs() < 1e-7);
        // Attention with v = o = identity and q = k = 0: each voxel gets the mean of the
        // normalised input added.
        let dev = Device::flex();
        let mut a = Attention::new(4, false, &dev);
        let eye = Tensor::<2>::eye(4, &dev);
        for l in [&mut a.q, &mut a.k] {
            l.weight = burn::module::Param::from_tensor(Tensor::zeros([4, 4], &dev));
        }
        for l in [&mut a.v, &mut a.o] {
            l.weight = burn::module::Param::from_tensor(eye.clone());
        }
        let x = Tensor::<5>::random([1, 4, 2, 2, 1], D::Normal(0.0, 1.0), &dev);
        let y = a.forward(x.clone());
        let g = a.norm.as_ref().unwrap().forward(x.clone());
        let want = x + g.mean_dim(4).mean_dim(3).mean_dim(2);
        let d = (y - want).abs().max().into_scalar::<f32>();
        assert!(d < 1e-5, "{d}");
    }
}

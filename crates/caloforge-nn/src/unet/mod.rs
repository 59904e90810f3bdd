//! The conditional U-Net of CaloDiffusion (Amram & Pedro) on cylindrical voxel grids
//! [batch, channels, z, α, r]: cylindrical convolutions, GroupNorm, SiLU, ResNet blocks with an
//! additive conditional bias, linear attention after every block, stride-2 down-sampling of all
//! three axes (the layer axis included) and transposed up-sampling back to the input shape.
//!
//! Layout as the reference `CondUnet(cond_dim=128, layer_sizes, cylindrical=True,
//! compress_Z=True, block_attn=True, mid_attn=True, resnet_block_groups=8)`: time (σ) and energy
//! embeddings `Linear(1,32)–GELU–Linear(32,64)–GELU–Linear(64,64)` concatenated to 128;
//! `init_conv` 3×3×3; per level two ResNet blocks, attention and a down-sampling conv
//! (k = (3,4,4), stride 2, padding 1; none after the last level); middle ResNet–attention–ResNet;
//! up path with skip concatenation and transposed convs whose output padding restores each
//! level's shape; a final ResNet block and a 1×1×1 conv.

pub mod fast;
pub mod score;
pub mod score2;
pub mod score2_fast;
pub mod score_fast;

use crate::conv::{circular_pad, CylindricalConv3d};
use burn::module::Module;
use burn::nn::conv::{ConvTranspose3d, ConvTranspose3dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::{Device, Tensor};

/// Cylindrical transposed 3-D convolution: α padded circularly by 1, then a transposed conv with
/// α padding k_α − 1 (so α doubles at stride 2), zero padding on z and r.
#[derive(Module, Debug)]
pub struct CylindricalConvTranspose3d {
    /// The transposed convolution.
    pub conv: ConvTranspose3d,
}

impl CylindricalConvTranspose3d {
    /// Kernel, stride, padding (z and r; α is handled as described) and output padding.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
        out_pad: [usize; 3],
        device: &Device,
    ) -> Self {
        let conv = ConvTranspose3dConfig::new([c_in, c_out], kernel)
            .with_stride(stride)
            .with_padding([padding[0], kernel[1] - 1, padding[2]])
            .with_padding_out(out_pad)
            .init(device);
        CylindricalConvTranspose3d { conv }
    }
    /// Forward.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let c = &self.conv;
        let y = crate::ops::conv_transpose3d(
            circular_pad(x, 3, 1),
            c.weight.val(),
            c.stride,
            c.padding,
            c.padding_out,
        );
        crate::conv::add_bias(y, c.bias.as_ref().map(|b| b.val()))
    }
}

/// conv 3×3×3 → GroupNorm → SiLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub(crate) conv: CylindricalConv3d,
    pub(crate) norm: GroupNorm,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, groups: usize, device: &Device) -> Self {
        ConvBlock {
            conv: CylindricalConv3d::new(c_in, c_out, [3, 3, 3], [1, 1, 1], [1, 1, 1], device),
            norm: GroupNormConfig::new(groups.min(c_out), c_out).init(device),
        }
    }
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        crate::ops::group_norm(self.conv.forward(x), &self.norm, true)
    }
}

/// ResNet block: block1(x) + Linear(SiLU(cond)) → block2 → + (1×1 conv of) x.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub(crate) block1: ConvBlock,
    pub(crate) block2: ConvBlock,
    pub(crate) cond: Option<Linear>,
    pub(crate) res_conv: Option<CylindricalConv3d>,
}

impl ResnetBlock {
    /// A block from c_in to c_out channels with a `cond_dim` conditioning vector (0: none).
    pub fn new(c_in: usize, c_out: usize, cond_dim: usize, groups: usize, device: &Device) -> Self {
        ResnetBlock {
            block1: ConvBlock::new(c_in, c_out, groups, device),
            block2: ConvBlock::new(c_out, c_out, groups, device),
            cond: (cond_dim > 0).then(|| LinearConfig::new(cond_dim, c_out).init(device)),
            res_conv: (c_in != c_out).then(|| {
                CylindricalConv3d::new(c_in, c_out, [1, 1, 1], [1, 1, 1], [0, 0, 0], device)
            }),
        }
    }
    /// Forward with conditioning `c` [B, cond_dim].
    pub fn forward(&self, x: Tensor<5>, c: Option<Tensor<2>>) -> Tensor<5> {
        let mut h = self.block1.forward(x.clone());
        if let (Some(l), Some(c)) = (&self.cond, c) {
            let [b, ch] = [h.dims()[0], h.dims()[1]];
            h = h + l.forward(silu(c)).reshape([b, ch, 1, 1, 1]);
        }
        let h = self.block2.forward(h);
        h + match &self.res_conv {
            Some(r) => r.forward(x),
            None => x,
        }
    }
}

/// x + LinearAttention(GroupNorm₁(x)); the attention has one head of width 32 by default:
/// q softmax over features, k softmax over positions, context = k vᵀ, out = contextᵀ q, then a
/// 1×1×1 conv and GroupNorm(1).
#[derive(Module, Debug)]
pub struct LinearAttention {
    pub(crate) prenorm: GroupNorm,
    pub(crate) to_qkv: CylindricalConv3d,
    pub(crate) to_out: CylindricalConv3d,
    pub(crate) out_norm: GroupNorm,
    pub(crate) heads: usize,
    pub(crate) dim_head: usize,
}

impl LinearAttention {
    /// Attention over `c` channels.
    pub fn new(c: usize, heads: usize, dim_head: usize, device: &Device) -> Self {
        let hidden = heads * dim_head;
        let mut to_qkv =
            CylindricalConv3d::new(c, 3 * hidden, [1, 1, 1], [1, 1, 1], [0, 0, 0], device);
        to_qkv.conv.bias = None;
        LinearAttention {
            prenorm: GroupNormConfig::new(1, c).init(device),
            to_qkv,
            to_out: CylindricalConv3d::new(hidden, c, [1, 1, 1], [1, 1, 1], [0, 0, 0], device),
            out_norm: GroupNormConfig::new(1, c).init(device),
            heads,
            dim_head,
        }
    }
    /// Residual forward.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, _, z, a, r] = x.dims();
        let n = z * a * r;
        let (h, d) = (self.heads, self.dim_head);
        let qkv = self
            .to_qkv
            .forward(crate::ops::group_norm(x.clone(), &self.prenorm, false))
            .reshape([b, 3, h, d, n]);
        let q: Tensor<4> = qkv.clone().narrow(1, 0, 1).reshape([b, h, d, n]);
        let k: Tensor<4> = qkv.clone().narrow(1, 1, 1).reshape([b, h, d, n]);
        let v: Tensor<4> = qkv.narrow(1, 2, 1).reshape([b, h, d, n]);
        let q = softmax(q, 2) * (d as f64).powf(-0.5);
        let k = softmax(k, 3);
        let context = k.matmul(v.swap_dims(2, 3)); // [b, h, d, e]
        let out = context.swap_dims(2, 3).matmul(q); // [b, h, e, n]
        let out = crate::ops::group_norm(
            self.to_out.forward(out.reshape([b, h * d, z, a, r])),
            &self.out_norm,
            false,
        );
        x + out
    }
}

/// Small MLP embedding of a scalar: Linear(1,32)–GELU–Linear(32,64)–GELU–Linear(64,64).
#[derive(Module, Debug)]
pub struct ScalarEmbedding {
    pub(crate) l1: Linear,
    pub(crate) l2: Linear,
    pub(crate) l3: Linear,
}

impl ScalarEmbedding {
    fn new(device: &Device) -> Self {
        ScalarEmbedding {
            l1: LinearConfig::new(1, 32).init(device),
            l2: LinearConfig::new(32, 64).init(device),
            l3: LinearConfig::new(64, 64).init(device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l3
            .forward(gelu(self.l2.forward(gelu(self.l1.forward(x)))))
    }
}

/// U-Net settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UNetConfig {
    /// Input channels (the voxel channel plus location channels).
    pub in_channels: usize,
    /// Channels per level (CaloDiffusion ds1/2: [16, 16, 16, 32]: init 16, levels 16, 16, 32).
    pub layer_sizes: Vec<usize>,
    /// GroupNorm groups in the ResNet blocks.
    pub groups: usize,
    /// Attention after every block of every level.
    pub block_attention: bool,
    /// Attention in the middle.
    pub mid_attention: bool,
    /// Input shape (z, α, r).
    pub shape: [usize; 3],
}

#[derive(Module, Debug)]
pub(crate) struct Level {
    pub(crate) res1: ResnetBlock,
    pub(crate) res2: ResnetBlock,
    pub(crate) attn: Option<LinearAttention>,
}

/// The conditional U-Net.
#[derive(Module, Debug)]
pub struct UNet {
    pub(crate) time_emb: ScalarEmbedding,
    pub(crate) energy_emb: ScalarEmbedding,
    pub(crate) init_conv: CylindricalConv3d,
    pub(crate) downs: Vec<Level>,
    pub(crate) down_convs: Vec<CylindricalConv3d>,
    pub(crate) mid1: ResnetBlock,
    pub(crate) mid_attn: Option<LinearAttention>,
    pub(crate) mid2: ResnetBlock,
    pub(crate) ups: Vec<Level>,
    pub(crate) up_convs: Vec<CylindricalConvTranspose3d>,
    pub(crate) final_res: ResnetBlock,
    pub(crate) final_conv: CylindricalConv3d,
}

const COND: usize = 128;

fn down_size(n: usize, k: usize) -> usize {
    (n + 2 - k) / 2 + 1
}

impl UNet {
    /// Builds the network for `cfg`.
    pub fn new(cfg: &UNetConfig, device: &Device) -> crate::train::Result<Self> {
        Self::build(cfg, device).map_err(crate::train::NnError::Config)
    }
    fn build(cfg: &UNetConfig, device: &Device) -> Result<Self, String> {
        let sizes = &cfg.layer_sizes;
        if sizes.len() < 2 {
            return Err("layer_sizes needs the initial width and at least one level".into());
        }
        let levels = sizes.len() - 1;
        // Shapes at every level (stride-2 conv, kernel (3,4,4), padding 1).
        let mut shapes = vec![cfg.shape];
        for _ in 1..levels {
            let s = shapes.last().copied().unwrap_or(cfg.shape);
            if s[1] < 2 {
                return Err(format!(
                    "input shape {:?} is too small for {levels} levels",
                    cfg.shape
                ));
            }
            shapes.push([down_size(s[0], 3), down_size(s[1], 4), down_size(s[2], 4)]);
        }
        let g = cfg.groups;
        let init = sizes[0];
        let mut downs = Vec::new();
        let mut down_convs = Vec::new();
        for l in 0..levels {
            let (ci, co) = (sizes[l], sizes[l + 1]);
            downs.push(Level {
                res1: ResnetBlock::new(ci, co, COND, g, device),
                res2: ResnetBlock::new(co, co, COND, g, device),
                attn: cfg
                    .block_attention
                    .then(|| LinearAttention::new(co, 1, 32, device)),
            });
            if l + 1 < levels {
                down_convs.push(CylindricalConv3d::new(
                    co,
                    co,
                    [3, 4, 4],
                    [2, 2, 2],
                    [1, 1, 1],
                    device,
                ));
            }
        }
        let mid = sizes[levels];
        let mut ups = Vec::new();
        let mut up_convs = Vec::new();
        for l in (0..levels).rev() {
            let (ci, co) = (sizes[l], sizes[l + 1]);
            ups.push(Level {
                res1: ResnetBlock::new(2 * co, ci, COND, g, device),
                res2: ResnetBlock::new(ci, ci, COND, g, device),
                attn: cfg
                    .block_attention
                    .then(|| LinearAttention::new(ci, 1, 32, device)),
            });
            if l > 0 {
                // Up-sample from level l's shape to level l−1's: kernel (3,4,4), stride 2,
                // padding 1, output padding to restore odd sizes.
                let (from, to) = (shapes[l], shapes[l - 1]);
                let base = |n: usize, k: usize| (n - 1) * 2 + k - 2;
                let pz = to[0] as isize - base(from[0], 3) as isize;
                let pr = to[2] as isize - base(from[2], 4) as isize;
                // The circular transposed conv gives 2·α; odd α sizes (dataset 3: 25) take an
                // output padding of 1.
                let pa = to[1] as isize - 2 * from[1] as isize;
                if ![pz, pa, pr].iter().all(|p| (0..2).contains(p)) {
                    return Err(format!("cannot up-sample {from:?} to {to:?}"));
                }
                up_convs.push(CylindricalConvTranspose3d::new(
                    ci,
                    ci,
                    [3, 4, 4],
                    [2, 2, 2],
                    [1, 1, 1],
                    [pz as usize, pa as usize, pr as usize],
                    device,
                ));
            }
        }
        Ok(UNet {
            time_emb: ScalarEmbedding::new(device),
            energy_emb: ScalarEmbedding::new(device),
            init_conv: CylindricalConv3d::new(
                cfg.in_channels,
                init,
                [3, 3, 3],
                [1, 1, 1],
                [1, 1, 1],
                device,
            ),
            downs,
            down_convs,
            mid1: ResnetBlock::new(mid, mid, COND, g, device),
            mid_attn: cfg
                .mid_attention
                .then(|| LinearAttention::new(mid, 1, 32, device)),
            mid2: ResnetBlock::new(mid, mid, COND, g, device),
            ups,
            up_convs,
            final_res: ResnetBlock::new(init, init, 0, g, device),
            final_conv: CylindricalConv3d::new(init, 1, [1, 1, 1], [1, 1, 1], [0, 0, 0], device),
        })
    }

    /// ε̂ [B, 1, z, α, r] for input [B, in_channels, z, α, r], time input `t` [B, 1] (σ_t) and
    /// energy input `e` [B, 1].
    pub fn forward(&self, x: Tensor<5>, t: Tensor<2>, e: Tensor<2>) -> Tensor<5> {
        let c = Tensor::cat(
            vec![self.time_emb.forward(t), self.energy_emb.forward(e)],
            1,
        );
        let mut h = self.init_conv.forward(x);
        let mut skips = Vec::new();
        for (l, lev) in self.downs.iter().enumerate() {
            h = lev.res1.forward(h, Some(c.clone()));
            h = lev.res2.forward(h, Some(c.clone()));
            if let Some(a) = &lev.attn {
                h = a.forward(h);
            }
            skips.push(h.clone());
            if let Some(d) = self.down_convs.get(l) {
                h = d.forward(h);
            }
        }
        h = self.mid1.forward(h, Some(c.clone()));
        if let Some(a) = &self.mid_attn {
            h = a.forward(h);
        }
        h = self.mid2.forward(h, Some(c.clone()));
        for (j, lev) in self.ups.iter().enumerate() {
            let skip = skips.pop().expect("one skip per level");
            h = lev
                .res1
                .forward(Tensor::cat(vec![h, skip], 1), Some(c.clone()));
            h = lev.res2.forward(h, Some(c.clone()));
            if let Some(a) = &lev.attn {
                h = a.forward(h);
            }
            if let Some(u) = self.up_convs.get(j) {
                h = u.forward(h);
            }
        }
        self.final_conv.forward(self.final_res.forward(h, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn unet_keeps_the_dataset_2_shape_and_trains() {
        let dev = Device::flex().autodiff();
        let cfg = UNetConfig {
            in_channels: 3,
            layer_sizes: vec![8, 8, 8, 16],
            groups: 4,
            block_attention: true,
            mid_attention: true,
            shape: [45, 16, 9],
        };
        let net = UNet::new(&cfg, &dev).unwrap();
        let x = Tensor::<5>::random([2, 3, 45, 16, 9], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<2>::random([2, 1], Distribution::Uniform(0.0, 1.0), &dev);
        let e = Tensor::<2>::random([2, 1], Distribution::Uniform(0.0, 1.0), &dev);
        let y = net.forward(x, t, e);
        assert_eq!(y.dims(), [2, 1, 45, 16, 9]);
        let grads = y.powf_scalar(2.0).mean().backward();
        let g = burn::optim::GradientsParams::from_grads(grads, &net);
        assert!(!g.is_empty());
    }

    #[test]
    fn unet_keeps_the_dataset_3_shape() {
        // α = 50 → 25 → 12 and back: the odd level needs an α output padding.
        let dev = Device::flex();
        let cfg = UNetConfig {
            in_channels: 3,
            layer_sizes: vec![2, 2, 2, 4],
            groups: 2,
            block_attention: false,
            mid_attention: true,
            shape: [45, 50, 18],
        };
        let net = UNet::new(&cfg, &dev).unwrap();
        let x = Tensor::<5>::random([1, 3, 45, 50, 18], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<2>::ones([1, 1], &dev);
        let y = net.forward(x, t.clone(), t);
        assert_eq!(y.dims(), [1, 1, 45, 50, 18]);
    }

    #[test]
    fn transposed_cylindrical_conv_doubles_alpha_and_wraps() {
        let dev = Device::flex();
        let c =
            CylindricalConvTranspose3d::new(1, 1, [3, 4, 4], [2, 2, 2], [1, 1, 1], [0, 0, 0], &dev);
        let x = Tensor::<5>::ones([1, 1, 12, 4, 2], &dev);
        assert_eq!(c.forward(x).dims(), [1, 1, 23, 8, 4]);
        // A U-Net needs at least one level.
        let bad = UNetConfig {
            in_channels: 1,
            layer_sizes: vec![4],
            groups: 1,
            block_attention: false,
            mid_attention: false,
            shape: [45, 16, 9],
        };
        assert!(UNet::new(&bad, &dev).is_err());
    }
}

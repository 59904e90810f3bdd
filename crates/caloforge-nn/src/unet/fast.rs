//! The U-Net's fast twin: what generation on the CPU runs (398 network calls per shower for the
//! paper's sampler, where burn's per-op overhead and its conv3d dominate).
//!
//! Each block of [`super`] has a twin here of the same name and with the same field names,
//! assembled from the twins of its fields ([`crate::twin::Twin`]) and running on the shared
//! kernels ([`crate::kernels`]): activations are channels-last per shower, and every shower of
//! a batch is computed on its own (in parallel with rayon), so results do not depend on batch
//! split or thread count. The twins are checked against burn by the generic helper of
//! [`crate::twin`]; `tests/fast_unet_golden.rs` pins the outputs bit for bit.

use crate::kernels::simd::{gelu, silu};
use crate::kernels::{linear_attention, Buf, Conv3d, ConvTranspose3d, GroupNorm, Linear};
use crate::twin::Twin;
use rayon::prelude::*;

/// conv 3×3×3 → GroupNorm → SiLU.
#[derive(Debug, Clone)]
pub struct ConvBlock {
    pub conv: Conv3d,
    pub norm: GroupNorm,
}

impl Twin for super::ConvBlock {
    type Fast = ConvBlock;
    fn twin(&self) -> ConvBlock {
        ConvBlock {
            conv: self.conv.twin(),
            norm: self.norm.twin(),
        }
    }
}

impl ConvBlock {
    /// Channels-last `x` of grid `d`.
    pub fn forward(&self, x: &[f32], d: [usize; 3]) -> Buf {
        let (mut y, _) = self.conv.forward(x, d);
        self.norm.apply(&mut y, true);
        y
    }
}

/// block1(x) + Linear(SiLU(cond)) → block2 → + (1×1 conv of) x.
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    pub block1: ConvBlock,
    pub block2: ConvBlock,
    pub cond: Option<Linear>,
    pub res_conv: Option<Conv3d>,
}

impl Twin for super::ResnetBlock {
    type Fast = ResnetBlock;
    fn twin(&self) -> ResnetBlock {
        ResnetBlock {
            block1: self.block1.twin(),
            block2: self.block2.twin(),
            cond: self.cond.as_ref().map(Twin::twin),
            res_conv: self.res_conv.as_ref().map(Twin::twin),
        }
    }
}

impl ResnetBlock {
    /// `c_act` is SiLU of the conditioning vector (unused without `cond`).
    pub fn forward(&self, x: &[f32], d: [usize; 3], c_act: &[f32]) -> Buf {
        let mut h = self.block1.forward(x, d);
        if let Some(l) = &self.cond {
            let bias = l.forward(c_act);
            for row in h.chunks_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(&bias) {
                    *v += b;
                }
            }
        }
        let mut h = self.block2.forward(&h, d);
        match &self.res_conv {
            Some(r) => {
                let (rx, _) = r.forward(x, d);
                for (v, s) in h.iter_mut().zip(rx.iter()) {
                    *v += s;
                }
            }
            None => {
                for (v, s) in h.iter_mut().zip(x) {
                    *v += s;
                }
            }
        }
        h
    }
}

/// x + GroupNorm(to_out(LinearAttention(to_qkv(GroupNorm(x))))).
#[derive(Debug, Clone)]
pub struct LinearAttention {
    pub prenorm: GroupNorm,
    pub to_qkv: Conv3d,
    pub to_out: Conv3d,
    pub out_norm: GroupNorm,
    pub heads: usize,
    pub dim_head: usize,
}

impl Twin for super::LinearAttention {
    type Fast = LinearAttention;
    fn twin(&self) -> LinearAttention {
        LinearAttention {
            prenorm: self.prenorm.twin(),
            to_qkv: self.to_qkv.twin(),
            to_out: self.to_out.twin(),
            out_norm: self.out_norm.twin(),
            heads: self.heads,
            dim_head: self.dim_head,
        }
    }
}

impl LinearAttention {
    /// Residual forward on channels-last `x` of grid `d`.
    pub fn forward(&self, x: &[f32], d: [usize; 3]) -> Buf {
        let mut xn = Buf::copy(x);
        self.prenorm.apply(&mut xn, false);
        let (mut qkv, _) = self.to_qkv.forward(&xn, d);
        let att = linear_attention(&mut qkv, self.heads, self.dim_head);
        let (mut y, _) = self.to_out.forward(&att, d);
        self.out_norm.apply(&mut y, false);
        for (v, s) in y.iter_mut().zip(x) {
            *v += s;
        }
        y
    }
}

/// Linear(1,32)–GELU–Linear(32,64)–GELU–Linear(64,64) of a scalar.
#[derive(Debug, Clone)]
pub struct ScalarEmbedding {
    pub l1: Linear,
    pub l2: Linear,
    pub l3: Linear,
}

impl Twin for super::ScalarEmbedding {
    type Fast = ScalarEmbedding;
    fn twin(&self) -> ScalarEmbedding {
        ScalarEmbedding {
            l1: self.l1.twin(),
            l2: self.l2.twin(),
            l3: self.l3.twin(),
        }
    }
}

impl ScalarEmbedding {
    /// The embedding of `x`.
    pub fn forward(&self, x: f32) -> Vec<f32> {
        let mut h = self.l1.forward(&[x]);
        gelu(&mut h);
        let mut h = self.l2.forward(&h);
        gelu(&mut h);
        self.l3.forward(&h)
    }
}

/// Two ResNet blocks and optional attention.
#[derive(Debug, Clone)]
pub struct Level {
    pub res1: ResnetBlock,
    pub res2: ResnetBlock,
    pub attn: Option<LinearAttention>,
}

impl Twin for super::Level {
    type Fast = Level;
    fn twin(&self) -> Level {
        Level {
            res1: self.res1.twin(),
            res2: self.res2.twin(),
            attn: self.attn.as_ref().map(Twin::twin),
        }
    }
}

impl Level {
    fn forward(&self, x: &[f32], d: [usize; 3], c: &[f32]) -> Buf {
        let h = self.res2.forward(&self.res1.forward(x, d, c), d, c);
        match &self.attn {
            Some(a) => a.forward(&h, d),
            None => h,
        }
    }
}

/// The conditional U-Net's twin; [`UNet::forward`] is [`super::UNet::forward`].
#[derive(Debug, Clone)]
pub struct UNet {
    pub time_emb: ScalarEmbedding,
    pub energy_emb: ScalarEmbedding,
    pub init_conv: Conv3d,
    pub downs: Vec<Level>,
    pub down_convs: Vec<Conv3d>,
    pub mid1: ResnetBlock,
    pub mid_attn: Option<LinearAttention>,
    pub mid2: ResnetBlock,
    pub ups: Vec<Level>,
    pub up_convs: Vec<ConvTranspose3d>,
    pub final_res: ResnetBlock,
    pub final_conv: Conv3d,
}

impl Twin for super::UNet {
    type Fast = UNet;
    fn twin(&self) -> UNet {
        UNet {
            time_emb: self.time_emb.twin(),
            energy_emb: self.energy_emb.twin(),
            init_conv: self.init_conv.twin(),
            downs: self.downs.iter().map(Twin::twin).collect(),
            down_convs: self.down_convs.iter().map(Twin::twin).collect(),
            mid1: self.mid1.twin(),
            mid_attn: self.mid_attn.as_ref().map(Twin::twin),
            mid2: self.mid2.twin(),
            ups: self.ups.iter().map(Twin::twin).collect(),
            up_convs: self.up_convs.iter().map(Twin::twin).collect(),
            final_res: self.final_res.twin(),
            final_conv: self.final_conv.twin(),
        }
    }
}

/// Concatenates channels-last `a` (ca channels) and `b` (cb channels) voxel by voxel.
fn concat(a: &[f32], ca: usize, b: &[f32], cb: usize) -> Buf {
    let mut out = Buf::overwritten(a.len() + b.len());
    for ((o, ra), rb) in out
        .chunks_exact_mut(ca + cb)
        .zip(a.chunks(ca))
        .zip(b.chunks(cb))
    {
        o[..ca].copy_from_slice(ra);
        o[ca..].copy_from_slice(rb);
    }
    out
}

impl UNet {
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.init_conv.cin
    }

    /// One shower: `x` channel-major `[in_channels][z][α][r]` (as burn's input), σ_t and the
    /// energy input → ε̂ `[z][α][r]`.
    pub fn forward_one(&self, x: &[f32], shape: [usize; 3], t: f32, e: f32) -> Vec<f32> {
        let v: usize = shape.iter().product();
        let ci = self.in_channels();
        let mut xl = Buf::overwritten(v * ci);
        for c in 0..ci {
            for i in 0..v {
                xl[i * ci + c] = x[c * v + i];
            }
        }
        let mut c = self.time_emb.forward(t);
        c.extend(self.energy_emb.forward(e));
        silu(&mut c);
        let (mut h, mut d) = self.init_conv.forward(&xl, shape);
        let mut skips = Vec::new();
        for (l, lev) in self.downs.iter().enumerate() {
            h = lev.forward(&h, d, &c);
            match self.down_convs.get(l) {
                Some(dc) => {
                    let (hd, dd) = dc.forward(&h, d);
                    skips.push((std::mem::replace(&mut h, hd), d));
                    d = dd;
                }
                None => skips.push((Buf::copy(&h), d)),
            }
        }
        h = self.mid1.forward(&h, d, &c);
        if let Some(a) = &self.mid_attn {
            h = a.forward(&h, d);
        }
        h = self.mid2.forward(&h, d, &c);
        for (j, lev) in self.ups.iter().enumerate() {
            let (skip, sd) = skips.pop().expect("one skip per level");
            debug_assert_eq!(sd, d);
            let ch = h.len() / d.iter().product::<usize>();
            let cs = skip.len() / d.iter().product::<usize>();
            h = lev.forward(&concat(&h, ch, &skip, cs), d, &c);
            if let Some(u) = self.up_convs.get(j) {
                (h, d) = u.forward(&h, d);
            }
        }
        let h = self.final_res.forward(&h, d, &[]);
        self.final_conv.forward(&h, d).0.to_vec()
    }

    /// A batch: `x` `[n][in_channels][z][α][r]`, per-shower σ and energy inputs → `[n][z][α][r]`.
    pub fn forward(&self, x: &[f32], shape: [usize; 3], t: &[f32], e: &[f32]) -> Vec<f32> {
        let n = t.len();
        let per = x.len() / n.max(1);
        let outs: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|b| self.forward_one(&x[b * per..(b + 1) * per], shape, t[b], e[b]))
            .collect();
        outs.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::check::{check_twin, normal, Layout};
    use crate::unet::UNetConfig;
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn block_twins_match_burn() {
        let dev = Device::flex();
        let d = [7, 6, 5];
        let b = super::super::ConvBlock::new(5, 8, 4, &dev);
        let f = b.twin();
        check_twin(
            "ConvBlock",
            normal([2, 5, 7, 6, 5]),
            |x| b.forward(x),
            |x| f.forward(x, d).to_vec(),
            Layout::ChannelsLast,
            1e-5,
        );
        // With a conditioning vector and a 1×1 residual conv (c_in ≠ c_out).
        let r = super::super::ResnetBlock::new(5, 8, 16, 4, &dev);
        let f = r.twin();
        let cvec: Vec<f32> = (0..16).map(|i| (i as f32 * 0.3).sin()).collect();
        let ct = Tensor::<2>::from_data(TensorData::new(cvec.clone(), [1, 16]), &dev);
        let mut c_act = cvec.clone();
        silu(&mut c_act);
        check_twin(
            "ResnetBlock",
            normal([1, 5, 7, 6, 5]),
            |x| r.forward(x, Some(ct.clone())),
            |x| f.forward(x, d, &c_act).to_vec(),
            Layout::ChannelsLast,
            1e-5,
        );
        let a = super::super::LinearAttention::new(8, 2, 4, &dev);
        let f = a.twin();
        check_twin(
            "LinearAttention",
            normal([2, 8, 7, 6, 5]),
            |x| a.forward(x),
            |x| f.forward(x, d).to_vec(),
            Layout::ChannelsLast,
            1e-4,
        );
        let e = super::super::ScalarEmbedding::new(&dev);
        let f = e.twin();
        check_twin(
            "ScalarEmbedding",
            normal([3, 1]),
            |x| e.forward(x),
            |x| x.iter().flat_map(|&v| f.forward(v)).collect(),
            Layout::Rows,
            1e-5,
        );
    }

    #[test]
    fn whole_network_matches_burn() {
        let dev = Device::flex();
        for (sizes, shape) in [(vec![8, 8, 8, 16], [45, 16, 9]), (vec![4, 4, 8], [9, 6, 5])] {
            let cfg = UNetConfig {
                in_channels: 3,
                layer_sizes: sizes,
                groups: 4,
                block_attention: true,
                mid_attention: true,
                shape,
            };
            let net = crate::unet::UNet::new(&cfg, &dev).unwrap();
            let fast = net.twin();
            let (t, e) = (vec![0.3f32, 0.9], vec![0.1f32, 0.7]);
            let col = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 1]), &dev);
            check_twin(
                "UNet",
                normal([2, 3, shape[0], shape[1], shape[2]]),
                |x| net.forward(x, col(&t), col(&e)),
                |x| fast.forward(x, shape, &t, &e),
                Layout::Rows,
                2e-4,
            );
        }
    }
}

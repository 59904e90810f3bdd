//! The fast CPU twins of CaloScore v2's networks ([`super::score2`]): what generation runs on
//! the CPU (one layer-network and one voxel-network call per DDIM step). Same field names as
//! the burn blocks, assembled from the shared kernels; channels-last per shower, showers in
//! parallel with rayon (results independent of batch split and thread count).

use super::score_fast::{add_rows, crop_grid, pad_grid, pool, upsample};
use crate::kernels::simd::silu;
use crate::kernels::{softmax_attention, Buf, Conv3d, GroupNorm, LayerNorm, Linear};
use crate::twin::Twin;
use rayon::prelude::*;

/// The sinusoidal time embedding and its two Dense layers.
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    pub d1: Linear,
    pub d2: Linear,
    pub freq: Vec<f32>,
}

impl Twin for super::score2::TimeEmbedding {
    type Fast = TimeEmbedding;
    fn twin(&self) -> TimeEmbedding {
        TimeEmbedding {
            d1: self.d1.twin(),
            d2: self.d2.twin(),
            freq: super::score2::TimeEmbedding::frequencies(self.half),
        }
    }
}

impl TimeEmbedding {
    fn forward(&self, t: f32) -> Vec<f32> {
        let p: Vec<f32> = self.freq.iter().map(|&f| 1000.0 * t * f).collect();
        let feats: Vec<f32> = p
            .iter()
            .map(|x| x.sin())
            .chain(p.iter().map(|x| x.cos()))
            .collect();
        let mut h = self.d1.forward(&feats);
        silu(&mut h);
        self.d2.forward(&h)
    }
}

/// The attention's non-affine normalisation.
#[derive(Debug, Clone)]
pub enum AttentionNorm {
    /// GroupNorm(4) over the grid (datasets 2 and 3).
    Group(GroupNorm),
    /// LayerNorm over each position's channels (dataset 1; γ = 1, β = 0).
    Layer(LayerNorm),
}

/// Single-head attention after a non-affine GroupNorm or LayerNorm, added to its input.
#[derive(Debug, Clone)]
pub struct Attention {
    pub norm: AttentionNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

impl Twin for super::score2::Attention {
    type Fast = Attention;
    fn twin(&self) -> Attention {
        let q = self.q.twin();
        let c = q.d_out();
        Attention {
            norm: match &self.norm {
                Some(g) => AttentionNorm::Group(g.twin()),
                None => AttentionNorm::Layer(LayerNorm {
                    gamma: vec![1.0; c],
                    beta: vec![0.0; c],
                    eps: super::score2::LAYER_NORM_EPS,
                }),
            },
            q,
            k: self.k.twin(),
            v: self.v.twin(),
            o: self.o.twin(),
        }
    }
}

impl Attention {
    fn forward(&self, x: &mut [f32]) {
        let c = self.q.d_out();
        let mut g = x.to_vec();
        match &self.norm {
            AttentionNorm::Group(norm) => norm.apply(&mut g, false),
            AttentionNorm::Layer(norm) => norm.apply(&mut g),
        }
        let (q, k, v) = (
            self.q.forward_rows(&g),
            self.k.forward_rows(&g),
            self.v.forward_rows(&g),
        );
        let n = x.len() / c;
        let a = softmax_attention(&q, &k, &v, n, 1, c, 1.0 / (c as f32).sqrt(), None);
        for (xv, o) in x.iter_mut().zip(self.o.forward_rows(&a)) {
            *xv += o;
        }
    }
}

/// The residual block.
#[derive(Debug, Clone)]
pub struct ResBlock {
    pub skip: Option<Conv3d>,
    pub conv1: Conv3d,
    pub cond: Linear,
    pub conv2: Conv3d,
    pub attn: Option<Attention>,
}

impl Twin for super::score2::ResBlock {
    type Fast = ResBlock;
    fn twin(&self) -> ResBlock {
        ResBlock {
            skip: self.skip.as_ref().map(Twin::twin),
            conv1: self.conv1.twin(),
            cond: self.cond.twin(),
            conv2: self.conv2.twin(),
            attn: self.attn.as_ref().map(Twin::twin),
        }
    }
}

impl ResBlock {
    /// Channels-last `x` of grid `d`, conditioning vector `c`.
    fn forward(&self, x: &[f32], d: [usize; 3], c: &[f32]) -> Buf {
        let res = match &self.skip {
            Some(s) => s.forward(x, d).0,
            None => Buf::copy(x),
        };
        let mut a = x.to_vec();
        silu(&mut a);
        let (mut h, _) = self.conv1.forward(&a, d);
        add_rows(&mut h, &self.cond.forward(c));
        silu(&mut h);
        let (mut h, _) = self.conv2.forward(&h, d);
        for (v, r) in h.iter_mut().zip(res.iter()) {
            *v += r;
        }
        if let Some(at) = &self.attn {
            at.forward(&mut h);
        }
        h
    }
}

/// The voxel network's twin; [`VoxelNet::forward`] is [`super::score2::VoxelNet::forward`].
#[derive(Debug, Clone)]
pub struct VoxelNet {
    pub temb: TimeEmbedding,
    pub dense_layer: Linear,
    pub dense_e: Linear,
    pub cond: Linear,
    pub input: Conv3d,
    pub down: Vec<ResBlock>,
    pub mid: Vec<ResBlock>,
    pub up: Vec<ResBlock>,
    pub out: Conv3d,
    pub shape: [usize; 3],
    pub padded: [usize; 3],
    pub depth: usize,
    pub pool: [usize; 3],
}

impl Twin for super::score2::VoxelNet {
    type Fast = VoxelNet;
    fn twin(&self) -> VoxelNet {
        VoxelNet {
            temb: self.temb.twin(),
            dense_layer: self.dense_layer.twin(),
            dense_e: self.dense_e.twin(),
            cond: self.cond.twin(),
            input: self.input.twin(),
            down: self.down.iter().map(Twin::twin).collect(),
            mid: self.mid.iter().map(Twin::twin).collect(),
            up: self.up.iter().map(Twin::twin).collect(),
            out: self.out.twin(),
            shape: self.shape,
            padded: self.padded,
            depth: self.depth,
            pool: self.pool,
        }
    }
}

impl VoxelNet {
    /// One shower `x` `[z][α][r]` at time `t`, energy condition `e`, layer codes `l` → v.
    pub fn forward_one(&self, x: &[f32], t: f32, e: f32, l: &[f32]) -> Vec<f32> {
        let p = self.padded;
        let mut c = self.temb.forward(t);
        let mut hl = self.dense_layer.forward(l);
        silu(&mut hl);
        let mut he = self.dense_e.forward(&[e]);
        silu(&mut he);
        c.extend(hl);
        c.extend(he);
        let c = self.cond.forward(&c);
        let xp = pad_grid(x, self.shape, p);
        let ch = |b: &[f32], d: [usize; 3]| b.len() / d.iter().product::<usize>();
        let mut d = p;
        let (mut h, _) = self.input.forward(&xp, d);
        let mut skips: Vec<(Buf, usize)> = Vec::with_capacity(self.down.len());
        for (i, blk) in self.down.iter().enumerate() {
            h = blk.forward(&h, d, &c);
            skips.push((Buf::copy(&h), ch(&h, d)));
            if (i + 1) % self.depth == 0 {
                (h, d) = pool(&h, ch(&h, d), d, self.pool);
            }
        }
        for blk in &self.mid {
            h = blk.forward(&h, d, &c);
        }
        for (i, blk) in self.up.iter().enumerate() {
            if i % self.depth == 0 {
                (h, d) = upsample(&h, ch(&h, d), d, self.pool);
            }
            let (s, cs) = skips.pop().expect("one skip per up block");
            let ch_h = ch(&h, d);
            let mut cat = Buf::overwritten(h.len() + s.len());
            for ((dst, hr), sr) in cat
                .chunks_mut(ch_h + cs)
                .zip(h.chunks(ch_h))
                .zip(s.chunks(cs))
            {
                dst[..ch_h].copy_from_slice(hr);
                dst[ch_h..].copy_from_slice(sr);
            }
            h = blk.forward(&cat, d, &c);
        }
        let (o, _) = self.out.forward(&h, d);
        crop_grid(&o, self.shape, p)
    }

    /// A batch `x` `[n][z][α][r]` with per-shower times, conditions and layer codes `l`
    /// `[n][L]`.
    pub fn forward(&self, x: &[f32], t: &[f32], e: &[f32], l: &[f32]) -> Vec<f32> {
        let n = t.len();
        let per = x.len() / n.max(1);
        let nl = l.len() / n.max(1);
        let outs: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|b| {
                self.forward_one(
                    &x[b * per..(b + 1) * per],
                    t[b],
                    e[b],
                    &l[b * nl..(b + 1) * nl],
                )
            })
            .collect();
        outs.concat()
    }
}

/// One FiLM block.
#[derive(Debug, Clone)]
pub struct FilmBlock {
    pub res: Linear,
    pub film: Linear,
    pub d1: Linear,
    pub d2: Linear,
}

/// The layer network's twin; [`LayerNet::forward`] is [`super::score2::LayerNet::forward`].
#[derive(Debug, Clone)]
pub struct LayerNet {
    pub temb: TimeEmbedding,
    pub dense_e: Linear,
    pub cond: Linear,
    pub emb: Linear,
    pub input: Linear,
    pub blocks: Vec<FilmBlock>,
    pub out: Linear,
}

impl Twin for super::score2::LayerNet {
    type Fast = LayerNet;
    fn twin(&self) -> LayerNet {
        LayerNet {
            temb: self.temb.twin(),
            dense_e: self.dense_e.twin(),
            cond: self.cond.twin(),
            emb: self.emb.twin(),
            input: self.input.twin(),
            blocks: self
                .blocks
                .iter()
                .map(|b| FilmBlock {
                    res: b.res.twin(),
                    film: b.film.twin(),
                    d1: b.d1.twin(),
                    d2: b.d2.twin(),
                })
                .collect(),
            out: self.out.twin(),
        }
    }
}

fn leaky(x: &mut [f32]) {
    for v in x {
        if *v < 0.0 {
            *v *= 0.01;
        }
    }
}

impl LayerNet {
    /// One row of layer codes `x` at time `t` with energy condition `e` → v.
    pub fn forward_one(&self, x: &[f32], t: f32, e: f32) -> Vec<f32> {
        let mut c = self.temb.forward(t);
        let mut he = self.dense_e.forward(&[e]);
        silu(&mut he);
        c.extend(he);
        let c = self.cond.forward(&c);
        let mut emb = self.emb.forward(&c);
        leaky(&mut emb);
        let mut h = self.input.forward(x);
        for b in &self.blocks {
            let r = b.res.forward(&h);
            let ss = b.film.forward(&emb);
            let m = h.len();
            let mut a = h.clone();
            leaky(&mut a);
            let mut y = b.d1.forward(&a);
            leaky(&mut y);
            for (k, v) in y.iter_mut().enumerate() {
                *v = *v * (1.0 + ss[k]) + ss[m + k];
            }
            leaky(&mut y);
            h = b.d2.forward(&y);
            for (v, rv) in h.iter_mut().zip(&r) {
                *v += rv;
            }
        }
        self.out.forward(&h)
    }

    /// Rows `x` `[n][L]` with per-row times and conditions.
    pub fn forward(&self, x: &[f32], t: &[f32], e: &[f32]) -> Vec<f32> {
        let n = t.len();
        let per = x.len() / n.max(1);
        (0..n)
            .into_par_iter()
            .map(|b| self.forward_one(&x[b * per..(b + 1) * per], t[b], e[b]))
            .collect::<Vec<_>>()
            .concat()
    }
}

/// Both twins.
#[derive(Debug, Clone)]
pub struct ScoreV2Nets {
    pub layer: LayerNet,
    pub voxel: VoxelNet,
}

impl Twin for super::score2::ScoreV2Nets {
    type Fast = ScoreV2Nets;
    fn twin(&self) -> ScoreV2Nets {
        ScoreV2Nets {
            layer: self.layer.twin(),
            voxel: self.voxel.twin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::check::{check_twin, normal, Layout};
    use crate::unet::score2::{ScoreV2Config, ScoreV2Nets as BurnNets, VoxelUNetConfig};
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Device, Tensor, TensorData};

    /// Gives every weight a non-zero value (the output conv starts at zero).
    struct Jiggle(u64);
    impl ModuleMapper for Jiggle {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let t = p.val();
            let dims = t.dims();
            let n: usize = dims.iter().product();
            self.0 += 1;
            let k = self.0 as f64;
            let v: Vec<f32> = (0..n)
                .map(|i| (((i as f64 + 1.0) * 0.618 + k).sin() * 0.3) as f32)
                .collect();
            Param::from_tensor(Tensor::from_data(TensorData::new(v, dims), &t.device()))
        }
    }

    #[test]
    fn v2_networks_twins_match_burn() {
        let dev = Device::flex();
        // Datasets 2 and 3 (GroupNorm attention), and dataset 1's vector (5 layers, kernels and
        // pooling along z, LayerNorm attention).
        for (shape, depth, layers, one_d) in [
            ([45usize, 16, 9], 2, 45, false),
            ([9, 6, 5], 1, 9, false),
            ([368, 1, 1], 1, 5, true),
        ] {
            let cfg = ScoreV2Config {
                shape,
                layers,
                embed: 8,
                unet: VoxelUNetConfig {
                    in_emb: 4,
                    widths: vec![4, 8, 8],
                    depth,
                    attention: vec![false, true, true],
                },
                mlp: 12,
                blocks: 2,
                kernel: if one_d { [3, 1, 1] } else { [3; 3] },
                pool: if one_d { [2, 1, 1] } else { [2; 3] },
                layer_norm: one_d,
            };
            let nets = BurnNets::new(&cfg, &dev).map(&mut Jiggle(0));
            let fast = nets.twin();
            let v: usize = shape.iter().product();
            let l = layers;
            let (t, e) = (vec![0.3f32, 0.9], vec![0.1f32, 1.2]);
            let col = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 1]), &dev);
            let lay: Vec<f32> = (0..2 * l).map(|i| (i as f32 * 0.37).cos()).collect();
            let lt = Tensor::<2>::from_data(TensorData::new(lay.clone(), [2, l]), &dev);
            check_twin(
                "VoxelNet",
                normal([2, v]),
                |x| nets.voxel.forward(x, col(&t), col(&e), lt.clone()),
                |x| fast.voxel.forward(x, &t, &e, &lay),
                Layout::Rows,
                2e-4,
            );
            check_twin(
                "LayerNet",
                normal([2, l]),
                |x| nets.layer.forward(x, col(&t), col(&e)),
                |x| fast.layer.forward(x, &t, &e),
                Layout::Rows,
                2e-4,
            );
        }
    }
}

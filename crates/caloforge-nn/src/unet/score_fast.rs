//! The CaloScore score network's fast twin ([`super::score`]): what sampling and validation-free
//! generation run on the CPU (200 network calls per shower for the paper's PC sampler). Same
//! field names as the burn blocks, assembled from the shared kernels; channels-last per shower,
//! showers in parallel with rayon (results independent of batch split and thread count).

use crate::kernels::simd::silu;
use crate::kernels::{Buf, Conv3d, Linear};
use crate::twin::{values, Twin};
use rayon::prelude::*;

/// swish(conv3(x)) + swish(Dense(emb)) → conv1 → affine → swish.
#[derive(Debug, Clone)]
pub struct TimeConv {
    pub conv: Conv3d,
    pub dense: Linear,
    pub conv1: Conv3d,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl Twin for super::score::TimeConv {
    type Fast = TimeConv;
    fn twin(&self) -> TimeConv {
        TimeConv {
            conv: self.conv.twin(),
            dense: self.dense.twin(),
            conv1: self.conv1.twin(),
            gamma: values(self.gamma.val()),
            beta: values(self.beta.val()),
        }
    }
}

/// Adds `bias` to every channels-last row of `h`.
pub(crate) fn add_rows(h: &mut [f32], bias: &[f32]) {
    for row in h.chunks_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// One-channel shower `x` on grid `shape`, zero-padded at the end of each axis to `padded`.
pub(crate) fn pad_grid(x: &[f32], shape: [usize; 3], padded: [usize; 3]) -> Buf {
    let [z, a, r] = shape;
    let p = padded;
    let mut xp = Buf::zeroed(p.iter().product());
    for iz in 0..z {
        for ia in 0..a {
            let src = (iz * a + ia) * r;
            let dst = (iz * p[1] + ia) * p[2];
            xp[dst..dst + r].copy_from_slice(&x[src..src + r]);
        }
    }
    xp
}

/// The `shape` corner of a one-channel grid `padded` (undoes [`pad_grid`]).
pub(crate) fn crop_grid(o: &[f32], shape: [usize; 3], padded: [usize; 3]) -> Vec<f32> {
    let [z, a, r] = shape;
    let p = padded;
    let mut out = Vec::with_capacity(z * a * r);
    for iz in 0..z {
        for ia in 0..a {
            let src = (iz * p[1] + ia) * p[2];
            out.extend_from_slice(&o[src..src + r]);
        }
    }
    out
}

impl TimeConv {
    /// Channels-last `x` of grid `d`, embedding `emb`.
    pub fn forward(&self, x: &[f32], d: [usize; 3], emb: &[f32]) -> Buf {
        let (mut h, _) = self.conv.forward(x, d);
        silu(&mut h);
        let mut bias = self.dense.forward(emb);
        silu(&mut bias);
        add_rows(&mut h, &bias);
        let (mut h, _) = self.conv1.forward(&h, d);
        for row in h.chunks_mut(self.gamma.len()) {
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = *v * g + b;
            }
        }
        silu(&mut h);
        h
    }
}

/// One decoder level.
#[derive(Debug, Clone)]
pub struct UpLevel {
    pub tc: TimeConv,
    pub conv: Conv3d,
    pub conv1: Conv3d,
}

impl Twin for super::score::UpLevel {
    type Fast = UpLevel;
    fn twin(&self) -> UpLevel {
        UpLevel {
            tc: self.tc.twin(),
            conv: self.conv.twin(),
            conv1: self.conv1.twin(),
        }
    }
}

/// The score network's twin; [`ScoreNet::forward`] is [`super::score::ScoreNet::forward`].
#[derive(Debug, Clone)]
pub struct ScoreNet {
    pub fourier: Vec<f32>,
    pub dense_t: Linear,
    pub dense_e: Linear,
    pub dense1: Linear,
    pub dense2: Linear,
    pub down: Vec<TimeConv>,
    pub mid: TimeConv,
    pub up: Vec<UpLevel>,
    pub last: TimeConv,
    pub out: Conv3d,
    pub shape: [usize; 3],
    pub padded: [usize; 3],
    pub pool: [usize; 3],
}

impl Twin for super::score::ScoreNet {
    type Fast = ScoreNet;
    fn twin(&self) -> ScoreNet {
        let (shape, padded, pool) = self.grid();
        ScoreNet {
            fourier: values(self.fourier.val()),
            dense_t: self.dense_t.twin(),
            dense_e: self.dense_e.twin(),
            dense1: self.dense1.twin(),
            dense2: self.dense2.twin(),
            down: self.down.iter().map(Twin::twin).collect(),
            mid: self.mid.twin(),
            up: self.up.iter().map(Twin::twin).collect(),
            last: self.last.twin(),
            out: self.out.twin(),
            shape,
            padded,
            pool,
        }
    }
}

/// Average pooling by `f` of channels-last `x` (c channels) on grid `d`.
pub(crate) fn pool(x: &[f32], c: usize, d: [usize; 3], f: [usize; 3]) -> (Buf, [usize; 3]) {
    let o = [d[0] / f[0], d[1] / f[1], d[2] / f[2]];
    let mut y = Buf::zeroed(o.iter().product::<usize>() * c);
    let w = 1.0 / (f[0] * f[1] * f[2]) as f32;
    for z in 0..d[0] {
        for a in 0..d[1] {
            for r in 0..d[2] {
                let src = ((z * d[1] + a) * d[2] + r) * c;
                let dst = (((z / f[0]) * o[1] + a / f[1]) * o[2] + r / f[2]) * c;
                for ch in 0..c {
                    y[dst + ch] += w * x[src + ch];
                }
            }
        }
    }
    (y, o)
}

/// Nearest up-sampling by `f`.
pub(crate) fn upsample(x: &[f32], c: usize, d: [usize; 3], f: [usize; 3]) -> (Buf, [usize; 3]) {
    let o = [d[0] * f[0], d[1] * f[1], d[2] * f[2]];
    let mut y = Buf::overwritten(o.iter().product::<usize>() * c);
    for z in 0..o[0] {
        for a in 0..o[1] {
            for r in 0..o[2] {
                let src = (((z / f[0]) * d[1] + a / f[1]) * d[2] + r / f[2]) * c;
                let dst = ((z * o[1] + a) * o[2] + r) * c;
                y[dst..dst + c].copy_from_slice(&x[src..src + c]);
            }
        }
    }
    (y, o)
}

impl ScoreNet {
    fn fourier_features(&self, v: f32) -> Vec<f32> {
        let p: Vec<f32> = self
            .fourier
            .iter()
            .map(|&w| v * w * 2.0 * std::f32::consts::PI)
            .collect();
        p.iter()
            .map(|x| x.sin())
            .chain(p.iter().map(|x| x.cos()))
            .collect()
    }

    fn embedding(&self, t: f32, e: f32) -> Vec<f32> {
        let mut ht = self.dense_t.forward(&self.fourier_features(t));
        silu(&mut ht);
        let mut he = self.dense_e.forward(&self.fourier_features(e));
        silu(&mut he);
        ht.extend(he);
        let mut h = self.dense1.forward(&ht);
        silu(&mut h);
        let mut h = self.dense2.forward(&h);
        silu(&mut h);
        h
    }

    /// One shower `x` `[z][α][r]` at time `t` with energy condition `e` → n(x, t, E).
    pub fn forward_one(&self, x: &[f32], t: f32, e: f32) -> Vec<f32> {
        let p = self.padded;
        let emb = self.embedding(t, e);
        let xp = pad_grid(x, self.shape, p);
        let ch = |b: &[f32], d: [usize; 3]| b.len() / d.iter().product::<usize>();
        let d0 = p;
        let e0 = self.down[0].forward(&xp, d0, &emb);
        let h = self.down[1].forward(&e0, d0, &emb);
        let (e1, d1) = pool(&h, ch(&h, d0), d0, self.pool);
        let h = self.down[2].forward(&e1, d1, &emb);
        let (e2, d2) = pool(&h, ch(&h, d1), d1, self.pool);
        let mut h = self.mid.forward(&e2, d2, &emb);
        let mut d = d2;
        for (lev, skip) in self.up.iter().zip([e1, e0]) {
            let t = lev.tc.forward(&h, d, &emb);
            let (u, du) = upsample(&t, ch(&t, d), d, self.pool);
            d = du;
            let (mut c, _) = lev.conv.forward(&u, d);
            silu(&mut c);
            for (v, s) in c.iter_mut().zip(skip.iter()) {
                *v = (*v + s) / std::f32::consts::SQRT_2;
            }
            let (mut c1, _) = lev.conv1.forward(&c, d);
            silu(&mut c1);
            h = c1;
        }
        let h = self.last.forward(&h, d, &emb);
        let (o, _) = self.out.forward(&h, d);
        crop_grid(&o, self.shape, p)
    }

    /// A batch `x` `[n][z][α][r]` with per-shower times and conditions.
    pub fn forward(&self, x: &[f32], t: &[f32], e: &[f32]) -> Vec<f32> {
        let n = t.len();
        let per = x.len() / n.max(1);
        let outs: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|b| self.forward_one(&x[b * per..(b + 1) * per], t[b], e[b]))
            .collect();
        outs.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::check::{check_twin, normal, Layout};
    use crate::unet::score::{ScoreNet as BurnNet, ScoreNetConfig};
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn score_network_twin_matches_burn() {
        let dev = Device::flex();
        for (shape, kernel, mix, pool) in [
            ([45usize, 16, 9], [3; 3], [1; 3], [3, 2, 2]),
            ([9, 6, 5], [3; 3], [1; 3], [3, 2, 2]),
            ([369, 1, 1], [5, 1, 1], [5, 1, 1], [4, 1, 1]),
        ] {
            let cfg = ScoreNetConfig {
                shape,
                channels: [4, 6, 8],
                pool,
                embed: 16,
                kernel,
                mix_kernel: mix,
            };
            let net = BurnNet::new(&cfg, 2, &dev);
            let fast = net.twin();
            let v: usize = shape.iter().product();
            let (t, e) = (vec![0.3f32, 0.9], vec![0.1f32, 1.2]);
            let col = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 1]), &dev);
            check_twin(
                "ScoreNet",
                normal([2, v]),
                |x| net.forward(x, col(&t), col(&e)),
                |x| fast.forward(x, &t, &e),
                Layout::Rows,
                2e-4,
            );
        }
    }
}

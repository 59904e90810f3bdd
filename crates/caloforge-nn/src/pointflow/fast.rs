//! The fast CPU twins of [`super::PointTransformer`] and [`super::CountNet`].
//!
//! The transformer's twin takes showers of any sizes at once without padding: the points of
//! all showers are the rows of one matrix for every dense layer (packed GEMMs), and attention
//! runs per shower and layer on the contiguous block of keys its window allows
//! ([`layer_window_attention`]), never over padding or masked keys.

use super::{CountNet, PointTransformer};
use crate::kernels::gemm::Packed;
use crate::kernels::simd::gelu_fast as gelu;
use crate::kernels::{layer_window_attention, LayerNorm, LayerWindow};
use crate::twin::{values, Twin};
use burn::nn::Linear;

fn packed(l: &Linear) -> Packed {
    let w = values(l.weight.val());
    let dout = l.weight.val().dims()[1];
    let b = l
        .bias
        .as_ref()
        .map(|b| values(b.val()))
        .unwrap_or_else(|| vec![0.0; dout]);
    Packed::from_input_major(&w, &b, w.len() / dout, None)
}

/// One encoder block.
#[derive(Debug, Clone)]
pub struct FastBlock {
    /// The fused projection with its outputs reordered to [queries | keys | values], each
    /// head-major.
    qkv: Packed,
    ff1: Packed,
    ff2: Packed,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

/// The twin of [`PointTransformer`].
#[derive(Debug, Clone)]
pub struct FastPointTransformer {
    embedding: Packed,
    /// [layer][dim].
    layer_embedding: Vec<f32>,
    cond: Packed,
    count1: Packed,
    count2: Packed,
    /// [particle][dim].
    particle: Option<Vec<f32>>,
    blocks: Vec<FastBlock>,
    head: Packed,
    dim: usize,
    heads: usize,
    layers: usize,
    window: LayerWindow,
}

/// One shower for [`FastPointTransformer::forward`].
#[derive(Debug, Clone, Copy)]
pub struct ShowerInput<'a> {
    /// Point features, `n × F`, sorted by layer.
    pub x: &'a [f32],
    /// `starts[l]..starts[l + 1]` are the points of layer l (layers + 1 entries).
    pub starts: &'a [usize],
    /// [time features, condition].
    pub time_cond: &'a [f32],
    /// Particle label.
    pub label: usize,
    /// Raw point counts per layer.
    pub counts: &'a [f32],
}

impl Twin for PointTransformer {
    type Fast = FastPointTransformer;
    fn twin(&self) -> FastPointTransformer {
        let [layers, dim] = self.layer_embedding.weight.val().dims();
        let heads = self.heads;
        let dh = dim / heads;
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                // Reorder the fused outputs: channel o = head·3dh + role·dh + j goes to
                // [q | k | v][head·dh + j], roles in the reference's order (key, query, value).
                let w = values(b.key_query_value.weight.val());
                let bias = values(b.key_query_value.bias.as_ref().expect("bias").val());
                let m = 3 * dim;
                let (mut w2, mut b2) = (vec![0.0; w.len()], vec![0.0; m]);
                for o in 0..m {
                    let (h, role, j) = (o / (3 * dh), (o % (3 * dh)) / dh, o % dh);
                    let block = match role {
                        0 => 1, // key
                        1 => 0, // query
                        _ => 2, // value
                    };
                    let to = block * dim + h * dh + j;
                    b2[to] = bias[o];
                    for i in 0..dim {
                        w2[i * m + to] = w[i * m + o];
                    }
                }
                FastBlock {
                    qkv: Packed::from_input_major(&w2, &b2, dim, None),
                    ff1: packed(&b.ff1),
                    ff2: packed(&b.ff2),
                    norm1: b.norm1.twin(),
                    norm2: b.norm2.twin(),
                }
            })
            .collect();
        FastPointTransformer {
            embedding: packed(&self.embedding),
            layer_embedding: values(self.layer_embedding.weight.val()),
            cond: packed(&self.cond_embedding),
            count1: packed(&self.count1),
            count2: packed(&self.count2),
            particle: self
                .particle_embedding
                .as_ref()
                .map(|p| values(p.weight.val())),
            blocks,
            head: packed(&self.head),
            dim,
            heads,
            layers,
            window: LayerWindow::reference(self.layer_window as i64),
        }
    }
}

impl FastPointTransformer {
    /// Detector layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Velocities of every point of `showers`, concatenated in order (`n × F`).
    pub fn forward(&self, showers: &[ShowerInput]) -> Vec<f32> {
        let (d, nb) = (self.dim, showers.len());
        let f = self.embedding.d_in();
        let n: usize = showers.iter().map(|s| s.x.len() / f).sum();
        let mut x = Vec::with_capacity(n * f);
        for s in showers {
            x.extend_from_slice(s.x);
        }
        // Per-shower token offset: condition, point counts, particle.
        let tc: Vec<f32> = showers
            .iter()
            .flat_map(|s| s.time_cond.iter().copied())
            .collect();
        let counts: Vec<f32> = showers
            .iter()
            .flat_map(|s| s.counts.iter().copied())
            .collect();
        let mut shower = vec![0.0; nb * d];
        self.cond.forward(&tc, &mut shower, None, false);
        let mut hid = vec![0.0; nb * self.count1.d_out()];
        self.count1.forward(&counts, &mut hid, None, false);
        gelu(&mut hid);
        let base = shower.clone();
        self.count2.forward(&hid, &mut shower, Some(&base), false);
        if let Some(p) = &self.particle {
            for (row, s) in shower.chunks_mut(d).zip(showers) {
                for (a, &b) in row.iter_mut().zip(&p[s.label * d..(s.label + 1) * d]) {
                    *a += b;
                }
            }
        }
        let mut h = vec![0.0; n * d];
        self.embedding.forward(&x, &mut h, None, false);
        let mut row = 0;
        for (k, s) in showers.iter().enumerate() {
            for l in 0..self.layers {
                for _ in s.starts[l]..s.starts[l + 1] {
                    let e = &self.layer_embedding[l * d..(l + 1) * d];
                    let sh = &shower[k * d..(k + 1) * d];
                    for ((a, &b), &c) in h[row * d..(row + 1) * d].iter_mut().zip(e).zip(sh) {
                        *a += b + c;
                    }
                    row += 1;
                }
            }
        }
        let dh = d / self.heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let (mut qkv, mut att) = (vec![0.0; n * 3 * d], vec![0.0; n * d]);
        let widest = self.blocks.iter().map(|b| b.ff1.d_out()).max().unwrap_or(0);
        let (mut ff, mut res) = (vec![0.0; n * widest], vec![0.0; n * d]);
        for b in &self.blocks {
            b.qkv.forward(&h, &mut qkv, None, false);
            let mut at = 0;
            for s in showers {
                let m = s.x.len() / f;
                layer_window_attention(
                    &qkv[at * 3 * d..(at + m) * 3 * d],
                    s.starts,
                    self.window,
                    self.heads,
                    dh,
                    scale,
                    &mut att[at * d..(at + m) * d],
                );
                at += m;
            }
            for (a, &b) in h.iter_mut().zip(&att) {
                *a += b;
            }
            b.norm1.apply(&mut h);
            let ff = &mut ff[..n * b.ff1.d_out()];
            b.ff1.forward(&h, ff, None, false);
            gelu(ff);
            res.copy_from_slice(&h);
            b.ff2.forward(ff, &mut h, Some(&res), false);
            b.norm2.apply(&mut h);
        }
        let mut out = vec![0.0; n * f];
        self.head.forward(&h, &mut out, None, false);
        out
    }
}

/// The twin of [`CountNet`].
#[derive(Debug, Clone)]
pub struct FastCountNet {
    layers: Vec<Packed>,
}

impl Twin for CountNet {
    type Fast = FastCountNet;
    fn twin(&self) -> FastCountNet {
        FastCountNet {
            layers: self.layers.iter().map(packed).collect(),
        }
    }
}

impl FastCountNet {
    /// Rows of [time features, counts, condition] → rows of velocities.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.layers[0].d_in();
        let mut cur = x.to_vec();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            let mut y = vec![0.0; n * l.d_out()];
            l.forward(&cur, &mut y, None, i < last);
            cur = y;
        }
        cur
    }
}

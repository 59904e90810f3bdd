//! AllShowers' networks (Buss et al., FLC-QU-hep/AllShowers and PointCountFM), in burn:
//!
//! - [`PointTransformer`]: the CNF transformer over a shower's points. A point's token is the
//!   sum of a linear embedding of its (x, y, log E) features, an embedding of its layer, a linear
//!   embedding of [time features, condition], an embedding of the particle type and an MLP of
//!   the shower's raw per-layer point counts; then post-LN encoder blocks whose attention has
//!   no output projection (one fused linear gives each head's key, query and value, in that
//!   order) and sees only the points of a window of layers ([`LayerWindow`]); a linear head
//!   gives the velocity of the point's three features.
//! - [`CountNet`]: PointCountFM's fully connected velocity network over the per-layer counts.
//!
//! Both use PyTorch's default initialisation (burn's defaults: uniform ±1/√fan_in for linear
//! layers, N(0, 1) embeddings). The fast CPU twins are in [`fast`].

pub mod fast;

use crate::kernels::LayerWindow;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Sizes of a [`PointTransformer`] (the reference's `conf/transformer.yaml` by default).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointTransformerDims {
    /// Detector layers.
    pub layers: usize,
    /// Features per point (x, y, log E).
    pub point_features: usize,
    /// Time frequencies (2 × this many time features).
    pub frequencies: usize,
    /// Condition values (standardised log E_inc and the 3 direction components).
    pub condition: usize,
    /// Token width.
    pub dim: usize,
    pub heads: usize,
    pub blocks: usize,
    pub feedforward: usize,
    /// Hidden width of the point-count MLP.
    pub count_hidden: usize,
    /// Particle types (no particle embedding when 1).
    pub particles: usize,
    /// The reference's `num_layer_cond` (the layer window; 4: layers l − 2 … l + 3).
    pub layer_window: i64,
}

impl Default for PointTransformerDims {
    fn default() -> Self {
        PointTransformerDims {
            layers: 78,
            point_features: 3,
            frequencies: 3,
            condition: 4,
            dim: 64,
            heads: 4,
            blocks: 4,
            feedforward: 256,
            count_hidden: 512,
            particles: 12,
            layer_window: 4,
        }
    }
}

impl PointTransformerDims {
    /// Checks the sizes (names the bad key).
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("layers", self.layers),
            ("point_features", self.point_features),
            ("frequencies", self.frequencies),
            ("dim", self.dim),
            ("heads", self.heads),
            ("blocks", self.blocks),
            ("feedforward", self.feedforward),
            ("count_hidden", self.count_hidden),
            ("particles", self.particles),
        ] {
            if v == 0 {
                return Err(format!("{k} must be > 0"));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "dim {} is not a multiple of heads {}",
                self.dim, self.heads
            ));
        }
        if self.layer_window < 0 {
            return Err("layer_window must be ≥ 0".into());
        }
        Ok(())
    }

    /// The attention's layer window.
    pub fn window(&self) -> LayerWindow {
        LayerWindow::reference(self.layer_window)
    }

    /// Builds the network with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> PointTransformer {
        let d = self.dim;
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        PointTransformer {
            embedding: lin(self.point_features, d),
            layer_embedding: EmbeddingConfig::new(self.layers, d).init(device),
            cond_embedding: lin(2 * self.frequencies + self.condition, d),
            count1: lin(self.layers, self.count_hidden),
            count2: lin(self.count_hidden, d),
            particle_embedding: (self.particles > 1)
                .then(|| EmbeddingConfig::new(self.particles, d).init(device)),
            blocks: (0..self.blocks)
                .map(|_| EncoderBlock {
                    key_query_value: lin(d, 3 * d),
                    ff1: lin(d, self.feedforward),
                    ff2: lin(self.feedforward, d),
                    norm1: LayerNormConfig::new(d).init(device),
                    norm2: LayerNormConfig::new(d).init(device),
                    heads: self.heads,
                })
                .collect(),
            head: lin(d, self.point_features),
            heads: self.heads,
            layer_window: self.layer_window as usize,
        }
    }
}

/// A tensor of the reference's PyTorch state dict: shape and row-major values.
pub type StateTensor = (Vec<usize>, Vec<f32>);

impl PointTransformer {
    /// The network with the weights of a reference (PyTorch) state dict of the same sizes
    /// (`transformer_blocks.0.key_query_value.weight`, …; linear weights [out, in] as PyTorch
    /// stores them). Errors name the missing or misshapen tensor.
    pub fn from_reference(
        dims: &PointTransformerDims,
        state: &std::collections::HashMap<String, StateTensor>,
        device: &Device,
    ) -> Result<PointTransformer, String> {
        use burn::module::Param;
        let get = |k: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let (s, v) = state
                .get(k)
                .or_else(|| state.get(&format!("network.{k}")))
                .ok_or_else(|| format!("no tensor '{k}'"))?;
            if s != shape {
                return Err(format!("'{k}' has shape {s:?}, expected {shape:?}"));
            }
            Ok(v.clone())
        };
        let linear = |k: &str, i: usize, o: usize| -> Result<Linear, String> {
            let w = get(&format!("{k}.weight"), &[o, i])?;
            let mut wt = vec![0.0; i * o];
            for r in 0..o {
                for c in 0..i {
                    wt[c * o + r] = w[r * i + c];
                }
            }
            let b = get(&format!("{k}.bias"), &[o])?;
            Ok(Linear {
                weight: Param::from_tensor(Tensor::from_data(TensorData::new(wt, [i, o]), device)),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(b, [o]),
                    device,
                ))),
            })
        };
        let embedding = |k: &str, n: usize, d: usize| -> Result<Embedding, String> {
            let mut e = EmbeddingConfig::new(n, d).init(device);
            let w = get(&format!("{k}.weight"), &[n, d])?;
            e.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [n, d]), device));
            Ok(e)
        };
        let norm = |k: &str, d: usize| -> Result<LayerNorm, String> {
            let mut n = LayerNormConfig::new(d).init(device);
            let g = get(&format!("{k}.weight"), &[d])?;
            let b = get(&format!("{k}.bias"), &[d])?;
            n.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(g, [d]), device));
            n.beta = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d]),
                device,
            )));
            Ok(n)
        };
        let (d, f, l) = (dims.dim, dims.point_features, dims.layers);
        let blocks = (0..dims.blocks)
            .map(|i| {
                let p = format!("transformer_blocks.{i}");
                Ok(EncoderBlock {
                    key_query_value: linear(&format!("{p}.key_query_value"), d, 3 * d)?,
                    ff1: linear(&format!("{p}.feedforward.0"), d, dims.feedforward)?,
                    ff2: linear(&format!("{p}.feedforward.2"), dims.feedforward, d)?,
                    norm1: norm(&format!("{p}.layer_norm1"), d)?,
                    norm2: norm(&format!("{p}.layer_norm2"), d)?,
                    heads: dims.heads,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PointTransformer {
            embedding: linear("embedding", f, d)?,
            layer_embedding: embedding("layer_embedding", l, d)?,
            cond_embedding: linear("cond_embedding", 2 * dims.frequencies + dims.condition, d)?,
            count1: linear("num_points_embedding.0", l, dims.count_hidden)?,
            count2: linear("num_points_embedding.2", dims.count_hidden, d)?,
            particle_embedding: if dims.particles > 1 {
                Some(embedding("particle_embedding", dims.particles, d)?)
            } else {
                None
            },
            blocks,
            head: linear("head", d, f)?,
            heads: dims.heads,
            layer_window: dims.layer_window as usize,
        })
    }
}

/// One post-LN encoder block: x ← LN(x + MHA(x)); x ← LN(x + FF(x)).
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// Output channel o: head o / (3 dh), role (o mod 3 dh) / dh (key, query, value).
    pub key_query_value: Linear,
    pub ff1: Linear,
    pub ff2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub heads: usize,
}

impl EncoderBlock {
    /// `x` [B, P, D]; `bias` [B, 1, P, P] added to the attention scores (0 where a query may
    /// see a key, a large negative number elsewhere).
    pub fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, p, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let kqv = self
            .key_query_value
            .forward(x.clone())
            .reshape([b, p, h, 3, dh]);
        let part = |i: usize| {
            kqv.clone()
                .slice([0..b, 0..p, 0..h, i..i + 1, 0..dh])
                .reshape([b, p, h, dh])
                .swap_dims(1, 2)
        };
        let (k, q, v) = (part(0), part(1), part(2));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (dh as f64).sqrt())
            + bias;
        let att = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, p, d]);
        let x = self.norm1.forward(x + att);
        let ff = self.ff2.forward(gelu(self.ff1.forward(x.clone())));
        self.norm2.forward(x + ff)
    }
}

/// The CNF transformer (see the module documentation).
#[derive(Module, Debug)]
pub struct PointTransformer {
    pub embedding: Linear,
    pub layer_embedding: Embedding,
    pub cond_embedding: Linear,
    pub count1: Linear,
    pub count2: Linear,
    pub particle_embedding: Option<Embedding>,
    pub blocks: Vec<EncoderBlock>,
    pub head: Linear,
    pub heads: usize,
    /// The reference's `num_layer_cond` ([`LayerWindow::reference`]).
    pub layer_window: usize,
}

/// One padded batch of showers for [`PointTransformer::forward`].
#[derive(Debug, Clone)]
pub struct PointBatch {
    /// Point features [B, P, F] (zero at padding).
    pub x: Tensor<3>,
    /// Layer of each point [B, P] (0 at padding).
    pub layer: Tensor<2, Int>,
    /// [time features, condition] of each shower [B, 2·freq + cond].
    pub time_cond: Tensor<2>,
    /// Particle label of each shower [B].
    pub label: Tensor<1, Int>,
    /// Raw point counts per layer [B, L].
    pub counts: Tensor<2>,
    /// Attention bias [B, 1, P, P].
    pub bias: Tensor<4>,
}

/// Score added where attention is not allowed: finite, so that a padding query (which sees
/// nothing) gets a harmless average instead of NaN; real queries never see padding keys.
pub const MASKED: f32 = -1e9;

impl PointBatch {
    /// The attention bias of showers padded to `p` points: `layers[b][i]` is the layer of point
    /// i of shower b (its length the shower's points).
    pub fn bias(
        layers: &[Vec<usize>],
        p: usize,
        window: LayerWindow,
        device: &Device,
    ) -> Tensor<4> {
        let b = layers.len();
        let mut v = vec![MASKED; b * p * p];
        for (s, l) in layers.iter().enumerate() {
            for (i, &lq) in l.iter().enumerate() {
                let row = &mut v[(s * p + i) * p..(s * p + i + 1) * p];
                for (j, &lk) in l.iter().enumerate() {
                    if window.allows(lq as i64, lk as i64) {
                        row[j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [b, 1, p, p]), device)
    }
}

impl PointTransformer {
    /// Velocities [B, P, F] of the batch's points.
    pub fn forward(&self, batch: &PointBatch) -> Tensor<3> {
        let [b, _, _] = batch.x.dims();
        let d = self.head.weight.val().dims()[0];
        let mut shower = self.cond_embedding.forward(batch.time_cond.clone())
            + self
                .count2
                .forward(gelu(self.count1.forward(batch.counts.clone())));
        if let Some(pe) = &self.particle_embedding {
            shower = shower
                + pe.forward(batch.label.clone().reshape([b, 1]))
                    .reshape([b, d]);
        }
        let mut h = self.embedding.forward(batch.x.clone())
            + self.layer_embedding.forward(batch.layer.clone())
            + shower.unsqueeze_dim::<3>(1);
        for blk in &self.blocks {
            h = blk.forward(h, batch.bias.clone());
        }
        self.head.forward(h)
    }
}

/// Sizes of a [`CountNet`] (PointCountFM's `config.yaml` by default).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountNetDims {
    /// Layers (the counts' dimension).
    pub layers: usize,
    /// Condition values (standardised E_inc, one-hot particle, direction: 1 + 12 + 3).
    pub condition: usize,
    pub frequencies: usize,
    pub hidden: Vec<usize>,
}

impl Default for CountNetDims {
    fn default() -> Self {
        CountNetDims {
            layers: 78,
            condition: 16,
            frequencies: 3,
            hidden: vec![128, 256, 512, 256, 128],
        }
    }
}

impl CountNetDims {
    /// Builds the network with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> CountNet {
        let mut dims = vec![2 * self.frequencies + self.layers + self.condition];
        dims.extend(&self.hidden);
        dims.push(self.layers);
        CountNet {
            layers: dims
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
        }
    }
}

/// PointCountFM's `FullyConnected`: [time features, counts, condition] → ReLU MLP → velocity.
#[derive(Module, Debug)]
pub struct CountNet {
    pub layers: Vec<Linear>,
}

impl CountNet {
    /// `input` [B, 2·freq + L + cond] (in that order) → [B, L].
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i + 1 < n {
                x = relu(x);
            }
        }
        x
    }
}

#[cfg(test)]
mod tests;

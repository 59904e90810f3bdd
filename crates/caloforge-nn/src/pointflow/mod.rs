//! AllShowers' networks (Buss et al., FLC-QU-hep/AllShowers and PointCountFM), in burn:
//!
//! - [`PointTransformer`]: the CNF transformer over a shower's points. A point's token is the
//!   sum of a linear embedding of its (x, y, log E) features, an embedding of its layer, a linear
//!   embedding of [time features, condition], an embedding of the particle type and an MLP of
//!   the shower's raw per-layer point counts; then post-LN encoder blocks whose attention has
//!   no output projection (one fused linear gives each head's key, query and value, in that
//!   order) and sees only the points of a window of layers ([`LayerWindow`]); a linear head
//!   gives the velocity of the point's three features. A batch packs its showers' points row
//!   after row, without padding, and attention runs per shower and layer on the keys of the
//!   window ([`window_attention`]).
//! - [`CountNet`]: PointCountFM's fully connected velocity network over the per-layer counts.
//!
//! Both use PyTorch's default initialisation (burn's defaults: uniform ±1/√fan_in for linear
//! layers, N(0, 1) embeddings). The fast CPU twins are in [`fast`].

pub mod fast;

use crate::kernels::LayerWindow;
use crate::ops::attention::{window_attention, WindowPlan};
use crate::ops::gelu;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::sync::Arc;

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
    /// `x` [N, D]: the points of the showers of `plan`, packed row after row; attention within
    /// each shower's layer window ([`window_attention`]).
    pub fn forward(&self, x: Tensor<2>, plan: &Arc<WindowPlan>) -> Tensor<2> {
        let att = window_attention(self.key_query_value.forward(x.clone()), plan, self.heads);
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

/// One batch of showers for [`PointTransformer::forward`]: their points packed row after row
/// (no padding), each shower's sorted by layer.
#[derive(Debug, Clone)]
pub struct PointBatch {
    /// Point features [N, F].
    pub x: Tensor<2>,
    /// Layer of each point [N].
    pub layer: Tensor<1, Int>,
    /// [time features, condition] of each shower [B, 2·freq + cond].
    pub time_cond: Tensor<2>,
    /// Particle label of each shower [B].
    pub label: Tensor<1, Int>,
    /// Raw point counts per layer [B, L].
    pub counts: Tensor<2>,
    /// The showers' rows and attention windows ([`WindowPlan::new`] of their layers).
    pub plan: Arc<WindowPlan>,
}

impl PointTransformer {
    /// Velocities [N, F] of the batch's points.
    pub fn forward(&self, batch: &PointBatch) -> Tensor<2> {
        let [b, _] = batch.time_cond.dims();
        let n = batch.plan.rows();
        let d = self.head.weight.val().dims()[0];
        let dev = batch.x.device();
        let mut shower = self.cond_embedding.forward(batch.time_cond.clone())
            + self
                .count2
                .forward(gelu(self.count1.forward(batch.counts.clone())));
        if let Some(pe) = &self.particle_embedding {
            shower = shower
                + pe.forward(batch.label.clone().reshape([b, 1]))
                    .reshape([b, d]);
        }
        let of_row =
            Tensor::<1, Int>::from_data(TensorData::new(batch.plan.shower_of_rows(), [n]), &dev);
        let mut h = self.embedding.forward(batch.x.clone())
            + self
                .layer_embedding
                .forward(batch.layer.clone().reshape([1, n]))
                .reshape([n, d])
            + shower.select(0, of_row);
        for blk in &self.blocks {
            h = blk.forward(h, &batch.plan);
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

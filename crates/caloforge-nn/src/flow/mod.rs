//! Autoregressive normalizing flows: MADE-conditioned rational-quadratic splines stacked with
//! permutations, as masked autoregressive flows (MAF, fast density) or inverse autoregressive
//! flows (IAF, fast sampling).
//!
//! Both kinds share one elementwise relation per block, `z_i = s(x_i; θ_i)` with `s` the spline
//! of [`spline`]: a MAF computes `θ = MADE(x)` (the x side), an IAF `θ = MADE(z)` (the z side).
//! Blocks alternate with permutations (reverse after even blocks, seeded random after odd ones,
//! none after the last: nflows' layout in iCaloFlow). The base density is a standard normal.
//!
//! Training uses burn tensors ([`FlowNet`]); sampling and density evaluation at generation time
//! use [`fast::FastFlow`], plain Rust on the same weights, which samples a MAF in the cost of one
//! MADE pass per block instead of D.

pub mod fast;
pub mod made;
pub mod spline;
pub mod train;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use made::{Made, MadeShape};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spline::{Direction, SplineConfig};

/// MAF or IAF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    /// Masked autoregressive flow: θ from the x side (one-pass density, D-pass sampling).
    Maf,
    /// Inverse autoregressive flow: θ from the z side (one-pass sampling).
    Iaf,
}

/// Architecture of a flow.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowConfig {
    /// Dimension D.
    pub features: usize,
    /// Context inputs.
    pub context: usize,
    /// MADE hidden width.
    pub hidden: usize,
    /// MADE hidden-to-hidden layers (nflows `num_blocks`).
    pub n_hidden: usize,
    /// Flow blocks (MADE + spline).
    pub blocks: usize,
    /// Spline bins K.
    pub bins: usize,
    /// Spline tail bound B.
    pub tail_bound: f64,
    /// MAF or IAF.
    pub kind: FlowKind,
    /// Seed of the random permutations.
    pub permutation_seed: u64,
    /// Where the permutations between blocks go.
    #[serde(default)]
    pub permutation: PermutationLayout,
    /// Dropout probability after each MADE hidden-to-hidden layer while training by maximum
    /// likelihood (nflows' `MaskedFeedforwardBlock`: linear, ReLU, dropout); 0: none.
    #[serde(default)]
    pub dropout: f64,
}

/// Where the permutations between a flow's blocks go (`y_j = x_{perm[j]}`, nflows'
/// `Permutation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermutationLayout {
    /// All features reversed after even blocks, seeded at random after odd ones, none after
    /// the last (iCaloFlow, SuperCalo).
    #[default]
    Alternating,
    /// A seeded random permutation of all features after every block, the last one included
    /// (nflows' `RandomPermutation` after each block: CaloFlow's energy flow).
    RandomAfterEach,
    /// Features come in groups of these sizes (calorimeter layers): after even blocks each
    /// group is reversed in place, after odd ones permuted at random within itself, none after
    /// the last (CaloFlow's `InversionLayer` / `RandomPermutationLayer`): layers never mix.
    WithinGroups(Vec<usize>),
}

impl FlowConfig {
    /// Spline settings of every block.
    pub fn spline(&self) -> SplineConfig {
        SplineConfig::new(self.bins, self.tail_bound)
    }
    /// Shape of every MADE.
    pub fn made(&self) -> MadeShape {
        MadeShape {
            features: self.features,
            context: self.context,
            hidden: self.hidden,
            n_hidden: self.n_hidden,
            params_per_feature: 3 * self.bins - 1,
        }
    }
    /// The permutation after block k (`y_j = x_{perm[j]}`): one per block but the last, or
    /// one per block with [`PermutationLayout::RandomAfterEach`].
    pub fn permutations(&self) -> Vec<Vec<usize>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.permutation_seed);
        let n = match self.permutation {
            PermutationLayout::RandomAfterEach => self.blocks,
            _ => self.blocks.saturating_sub(1),
        };
        (0..n)
            .map(|k| {
                let mut p: Vec<usize> = (0..self.features).collect();
                match &self.permutation {
                    PermutationLayout::Alternating => {
                        if k % 2 == 0 {
                            p.reverse();
                        } else {
                            p.shuffle(&mut rng);
                        }
                    }
                    PermutationLayout::RandomAfterEach => p.shuffle(&mut rng),
                    PermutationLayout::WithinGroups(sizes) => {
                        let mut off = 0;
                        for &g in sizes {
                            let seg = &mut p[off..(off + g).min(self.features)];
                            if k % 2 == 0 {
                                seg.reverse();
                            } else {
                                seg.shuffle(&mut rng);
                            }
                            off += g;
                        }
                    }
                }
                p
            })
            .collect()
    }
    /// Checks the settings.
    pub fn validate(&self) -> crate::train::Result<()> {
        self.problems().map_err(crate::train::NnError::Config)
    }
    fn problems(&self) -> Result<(), String> {
        if self.features == 0 || self.hidden == 0 || self.blocks == 0 {
            return Err("features, hidden and blocks must be positive".into());
        }
        if self.bins < 2 || self.bins > spline::MAX_BINS {
            return Err(format!(
                "bins must be in 2..={}, got {}",
                spline::MAX_BINS,
                self.bins
            ));
        }
        if !(self.tail_bound > 0.0 && self.tail_bound.is_finite()) {
            return Err(format!(
                "tail_bound must be positive, got {}",
                self.tail_bound
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if let PermutationLayout::WithinGroups(g) = &self.permutation {
            if g.contains(&0) || g.iter().sum::<usize>() != self.features {
                return Err(format!(
                    "permutation groups {g:?} must be positive and sum to the {} features",
                    self.features
                ));
            }
        }
        Ok(())
    }
}

/// The trainable network of a flow: one MADE per block.
#[derive(Module, Debug)]
pub struct FlowNet {
    /// MADEs, block order.
    pub made: Vec<Made>,
}

/// A flow: network, configuration and permutations.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Network.
    pub net: FlowNet,
    /// Configuration.
    pub cfg: FlowConfig,
    perms: Vec<Tensor<1, Int>>,
    inv_perms: Vec<Tensor<1, Int>>,
}

/// Intermediate values of a pass through the blocks (for distillation).
#[derive(Debug, Clone)]
pub struct Trace {
    /// x-side input of each block (block order; `states[0]` is x).
    pub x_side: Vec<Tensor<2>>,
    /// MADE outputs of each block [B, D, 3K−1].
    pub params: Vec<Tensor<3>>,
    /// z (the base-space point).
    pub z: Tensor<2>,
    /// Σ log|dz/dx| per sample [B].
    pub logdet: Tensor<1>,
}

fn int_tensor(v: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::from_data(
        TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [v.len()]),
        device,
    )
}

impl Flow {
    /// A freshly initialised flow on `device`.
    pub fn new(cfg: FlowConfig, device: &Device) -> Self {
        let shape = cfg.made();
        let net = FlowNet {
            made: (0..cfg.blocks).map(|_| Made::new(&shape, device)).collect(),
        };
        Self::with_net(net, cfg, device)
    }

    /// A flow around an existing network.
    pub fn with_net(net: FlowNet, cfg: FlowConfig, device: &Device) -> Self {
        let perms = cfg.permutations();
        let inv: Vec<Vec<usize>> = perms
            .iter()
            .map(|p| {
                let mut q = vec![0; p.len()];
                for (j, &i) in p.iter().enumerate() {
                    q[i] = j;
                }
                q
            })
            .collect();
        Flow {
            net,
            cfg,
            perms: perms.iter().map(|p| int_tensor(p, device)).collect(),
            inv_perms: inv.iter().map(|p| int_tensor(p, device)).collect(),
        }
    }

    fn params(&self, k: usize, side: Tensor<2>, ctx: &Option<Tensor<2>>) -> Tensor<3> {
        self.params_dropout(k, side, ctx, &[])
    }

    fn params_dropout(
        &self,
        k: usize,
        side: Tensor<2>,
        ctx: &Option<Tensor<2>>,
        keep: &[Tensor<2>],
    ) -> Tensor<3> {
        let [b, d] = side.dims();
        self.net.made[k]
            .forward_dropout(side, ctx.clone(), keep)
            .reshape([b, d, 3 * self.cfg.bins - 1])
    }

    /// Dropout keep-masks (0 or 1/(1 − p)) for `b` samples: one [b, H] tensor per hidden-to-
    /// hidden layer of each block, drawn from `rng` (block by block, row-major), so that they
    /// depend on the seed only.
    pub fn dropout_masks(&self, b: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<Tensor<2>>> {
        let p = self.cfg.dropout;
        let h = self.cfg.hidden;
        let device = self.device();
        let scale = (1.0 / (1.0 - p)) as f32;
        (0..self.cfg.blocks)
            .map(|_| {
                (0..self.cfg.n_hidden)
                    .map(|_| {
                        let v: Vec<f32> = (0..b * h)
                            .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
                            .collect();
                        Tensor::<2>::from_data(TensorData::new(v, [b, h]), &device)
                    })
                    .collect()
            })
            .collect()
    }

    /// x → z in one pass (a MAF's density direction). Panics for an IAF (whose x → z needs D
    /// passes: use the fast engine).
    pub fn forward_trace(&self, x: Tensor<2>, ctx: Option<Tensor<2>>) -> Trace {
        self.forward_trace_dropout(x, ctx, &[])
    }

    /// [`Flow::forward_trace`] with dropout masks `keep[k]` in block k (from
    /// [`Flow::dropout_masks`]; empty: none).
    pub fn forward_trace_dropout(
        &self,
        x: Tensor<2>,
        ctx: Option<Tensor<2>>,
        keep: &[Vec<Tensor<2>>],
    ) -> Trace {
        assert_eq!(self.cfg.kind, FlowKind::Maf, "one-pass x -> z needs a MAF");
        let spl = self.cfg.spline();
        let [b, _] = x.dims();
        let mut logdet = Tensor::<1>::zeros([b], &x.device());
        let mut s = x;
        let mut x_side = Vec::with_capacity(self.cfg.blocks);
        let mut params = Vec::with_capacity(self.cfg.blocks);
        for k in 0..self.cfg.blocks {
            let p = self.params_dropout(k, s.clone(), &ctx, keep.get(k).map_or(&[], |v| v));
            let (u, ld) = crate::ops::rqs(s.clone(), p.clone(), &spl, Direction::Forward);
            logdet = logdet + ld.sum_dim(1).squeeze_dim(1);
            x_side.push(s);
            params.push(p);
            s = match self.perms.get(k) {
                Some(perm) => u.select(1, perm.clone()),
                None => u,
            };
        }
        Trace {
            x_side,
            params,
            z: s,
            logdet,
        }
    }

    /// z → x in one pass (an IAF's sampling direction). Returns the trace with the x-side
    /// states and MADE outputs in block order, and Σ log|dz/dx|.
    pub fn inverse_trace(&self, z: Tensor<2>, ctx: Option<Tensor<2>>) -> Trace {
        assert_eq!(self.cfg.kind, FlowKind::Iaf, "one-pass z -> x needs an IAF");
        let spl = self.cfg.spline();
        let [b, _] = z.dims();
        let mut logdet = Tensor::<1>::zeros([b], &z.device());
        let mut s = z.clone();
        let mut x_side = vec![None; self.cfg.blocks];
        let mut params = vec![None; self.cfg.blocks];
        for k in (0..self.cfg.blocks).rev() {
            let u = match self.inv_perms.get(k) {
                Some(q) => s.select(1, q.clone()),
                None => s,
            };
            let p = self.params(k, u.clone(), &ctx);
            let (xk, ld) = crate::ops::rqs(u, p.clone(), &spl, Direction::Inverse);
            logdet = logdet + ld.sum_dim(1).squeeze_dim(1);
            x_side[k] = Some(xk.clone());
            params[k] = Some(p);
            s = xk;
        }
        Trace {
            x_side: x_side.into_iter().flatten().collect(),
            params: params.into_iter().flatten().collect(),
            z,
            logdet,
        }
    }

    /// log p(x | ctx) per sample (MAF only), [B].
    pub fn log_prob(&self, x: Tensor<2>, ctx: Option<Tensor<2>>) -> Tensor<1> {
        let t = self.forward_trace(x, ctx);
        log_normal(t.z) + t.logdet
    }

    /// Replaces the network (e.g. after an optimizer step).
    pub fn map_net(self, f: impl FnOnce(FlowNet) -> FlowNet) -> Self {
        let Flow {
            net,
            cfg,
            perms,
            inv_perms,
        } = self;
        Flow {
            net: f(net),
            cfg,
            perms,
            inv_perms,
        }
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.net.made[0].output.mask.device()
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }
}

/// Σ_i log N(z_i; 0, 1) per row.
pub fn log_normal(z: Tensor<2>) -> Tensor<1> {
    let [_, d] = z.dims();
    let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    (z.powf_scalar(2.0).sum_dim(1).squeeze_dim(1) * -0.5) - half_log_2pi * d as f64
}

#[cfg(test)]
mod tests;

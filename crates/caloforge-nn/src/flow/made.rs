//! MADE (masked autoencoder for distribution estimation) with a context input, as nflows'
//! `MADE` with `use_residual_blocks=False`, no batch norm (dropout optional, training only):
//! `h = relu(MaskedLinear_in(x) + relu(Linear_ctx(c)))`, then `n_hidden` × `h = relu(MaskedLinear(h))`,
//! then `MaskedLinear_out(h)` giving `params_per_feature` outputs per feature (feature-major:
//! output index = i·P + k). Degrees are deterministic: inputs 1..D, hidden
//! `k mod max(1, D−1) + min(1, D−1)`; hidden masks allow out ≥ in, the output mask out > in, so
//! output i depends only on inputs < i.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

/// Shape of a MADE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MadeShape {
    /// Features D.
    pub features: usize,
    /// Context inputs (0: none).
    pub context: usize,
    /// Hidden width H.
    pub hidden: usize,
    /// Hidden-to-hidden layers after the first.
    pub n_hidden: usize,
    /// Outputs per feature P.
    pub params_per_feature: usize,
}

impl MadeShape {
    /// Degrees of the input units (1..D).
    pub fn input_degrees(&self) -> Vec<usize> {
        (1..=self.features).collect()
    }
    /// Degrees of the hidden units.
    pub fn hidden_degrees(&self) -> Vec<usize> {
        let d = self.features;
        let m = (d.max(2) - 1).max(1);
        let off = (d.saturating_sub(1)).min(1);
        (0..self.hidden).map(|k| k % m + off).collect()
    }
    /// Degrees of the outputs (each feature's degree repeated P times).
    pub fn output_degrees(&self) -> Vec<usize> {
        (1..=self.features)
            .flat_map(|i| std::iter::repeat_n(i, self.params_per_feature))
            .collect()
    }
}

/// mask[i][o] = 1 where output o may see input i ([in, out] layout, as burn's Linear weight).
pub fn mask(in_deg: &[usize], out_deg: &[usize], strict: bool) -> Vec<f32> {
    let mut m = Vec::with_capacity(in_deg.len() * out_deg.len());
    for &di in in_deg {
        for &d_o in out_deg {
            m.push(if (strict && d_o > di) || (!strict && d_o >= di) {
                1.0
            } else {
                0.0
            });
        }
    }
    m
}

/// A masked linear layer: burn `Linear` and a constant mask of the same [in, out] shape.
#[derive(Module, Debug)]
pub struct MaskedLinear {
    /// The unmasked layer (weights stay unmasked; the mask is applied in `forward`).
    pub linear: Linear,
    /// The mask.
    pub mask: Tensor<2>,
}

impl MaskedLinear {
    fn new(in_deg: &[usize], out_deg: &[usize], strict: bool, device: &Device) -> Self {
        let linear = LinearConfig::new(in_deg.len(), out_deg.len()).init(device);
        let mask = Tensor::<2>::from_data(
            TensorData::new(mask(in_deg, out_deg, strict), [in_deg.len(), out_deg.len()]),
            device,
        );
        MaskedLinear { linear, mask }
    }
    /// x·(W∘M) + b.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let w = self.linear.weight.val() * self.mask.clone();
        let y = x.matmul(w);
        match &self.linear.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        }
    }
}

/// The MADE network.
#[derive(Module, Debug)]
pub struct Made {
    /// Input layer.
    pub input: MaskedLinear,
    /// Context layer (absent without context).
    pub context: Option<Linear>,
    /// Hidden-to-hidden layers.
    pub hidden: Vec<MaskedLinear>,
    /// Output layer.
    pub output: MaskedLinear,
}

impl Made {
    /// A freshly initialised MADE (PyTorch-style uniform ±1/√fan_in).
    pub fn new(shape: &MadeShape, device: &Device) -> Self {
        let din = shape.input_degrees();
        let dh = shape.hidden_degrees();
        let dout = shape.output_degrees();
        Made {
            input: MaskedLinear::new(&din, &dh, false, device),
            context: (shape.context > 0)
                .then(|| LinearConfig::new(shape.context, shape.hidden).init(device)),
            hidden: (0..shape.n_hidden)
                .map(|_| MaskedLinear::new(&dh, &dh, false, device))
                .collect(),
            output: MaskedLinear::new(&dh, &dout, true, device),
        }
    }

    /// Outputs [B, D·P] for inputs [B, D] and context [B, C].
    pub fn forward(&self, x: Tensor<2>, ctx: Option<Tensor<2>>) -> Tensor<2> {
        self.forward_dropout(x, ctx, &[])
    }

    /// The forward pass with dropout: hidden-to-hidden layer j's output (after its ReLU) is
    /// multiplied by `keep[j]` ([B, H]: 0 or 1/(1−p)), as nflows' `MaskedFeedforwardBlock`
    /// (linear, ReLU, dropout). Layers without a mask are left as they are.
    pub fn forward_dropout(
        &self,
        x: Tensor<2>,
        ctx: Option<Tensor<2>>,
        keep: &[Tensor<2>],
    ) -> Tensor<2> {
        let mut h = self.input.forward(x);
        if let (Some(l), Some(c)) = (&self.context, ctx) {
            h = h + relu(l.forward(c));
        }
        h = relu(h);
        for (j, l) in self.hidden.iter().enumerate() {
            h = relu(l.forward(h));
            if let Some(m) = keep.get(j) {
                h = h * m.clone();
            }
        }
        self.output.forward(h)
    }
}

/// Replaces the value of a parameter (shape must match).
#[cfg(test)]
pub(crate) fn set_param<const D: usize>(
    p: &mut burn::module::Param<Tensor<D>>,
    data: Vec<f32>,
    device: &Device,
) {
    let shape = p.val().dims();
    *p = burn::module::Param::from_tensor(Tensor::<D>::from_data(
        TensorData::new(data, shape),
        device,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn degrees_follow_nflows() {
        let s = MadeShape {
            features: 4,
            context: 0,
            hidden: 7,
            n_hidden: 1,
            params_per_feature: 2,
        };
        assert_eq!(s.hidden_degrees(), vec![1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(s.output_degrees(), vec![1, 1, 2, 2, 3, 3, 4, 4]);
        let one = MadeShape {
            features: 1,
            context: 0,
            hidden: 3,
            n_hidden: 1,
            params_per_feature: 2,
        };
        assert_eq!(one.hidden_degrees(), vec![0, 0, 0]);
    }

    #[test]
    fn output_i_depends_only_on_inputs_before_i() {
        let dev = Device::flex();
        let s = MadeShape {
            features: 5,
            context: 2,
            hidden: 16,
            n_hidden: 2,
            params_per_feature: 3,
        };
        let made = Made::new(&s, &dev);
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let base: Vec<f32> = (0..5).map(|_| r.random_range(-1.0..1.0)).collect();
        let ctx = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -0.7], [1, 2]), &dev);
        let run = |x: &[f32]| -> Vec<f32> {
            let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [1, 5]), &dev);
            made.forward(t, Some(ctx.clone()))
                .into_data()
                .iter::<f32>()
                .collect()
        };
        let y0 = run(&base);
        for j in 0..5 {
            let mut x = base.clone();
            x[j] += 1.0;
            let y = run(&x);
            for i in 0..5 {
                let changed = (0..3).any(|k| (y[i * 3 + k] - y0[i * 3 + k]).abs() > 1e-7);
                // Output of feature i (0-based) may change only when an input j < i changed.
                if j >= i {
                    assert!(!changed, "output {i} changed with input {j}");
                }
            }
        }
        // The last feature's outputs do depend on the earlier inputs (the mask is not all zero).
        let mut x = base.clone();
        x[0] += 1.0;
        let y = run(&x);
        assert!((0..3).any(|k| (y[12 + k] - y0[12 + k]).abs() > 1e-6));
    }
}

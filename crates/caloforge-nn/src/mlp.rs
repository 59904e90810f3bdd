//! Fully connected networks.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::leaky_relu;
use burn::tensor::{Device, Tensor};

/// A multilayer perceptron: Linear → LeakyReLU(slope) → Dropout for every hidden layer, then a
/// final Linear. PyTorch-style initialisation (uniform ±1/√fan_in for weights and biases).
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    dropout: Dropout,
    slope: f64,
}

impl Mlp {
    /// `dims` = [input, hidden..., output].
    pub fn new(dims: &[usize], dropout: f64, slope: f64, device: &Device) -> Self {
        assert!(dims.len() >= 2, "an MLP needs an input and an output size");
        let layers = dims
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Mlp {
            layers,
            dropout: DropoutConfig::new(dropout).init(),
            slope,
        }
    }

    /// Forward pass on a (batch, input) tensor.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i + 1 < n {
                x = self.dropout.forward(leaky_relu(x, self.slope));
            }
        }
        x
    }
}

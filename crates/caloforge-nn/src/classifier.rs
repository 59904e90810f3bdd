//! Binary classifier training as in the CaloChallenge evaluation (SPEC §5): BCE on logits, Adam,
//! shuffled mini-batches, test accuracy after every epoch, the best epoch's weights kept, early
//! stop at test accuracy 1.

use crate::device::{cpu_autodiff, Precision};
use crate::mlp::Mlp;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Row-major samples with binary labels.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Features, `n × dim`.
    pub x: Vec<f32>,
    /// Labels (0 or 1), `n`.
    pub y: Vec<f32>,
    /// Feature dimension.
    pub dim: usize,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// Settings of the classifier test.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// Hidden layer width (2048 in the CaloChallenge).
    pub hidden: usize,
    /// Number of hidden-to-hidden layers after the first (2 in the CaloChallenge).
    pub n_layer: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Training precision.
    pub precision: Precision,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            hidden: 2048,
            n_layer: 2,
            dropout: 0.0,
            lr: 2e-4,
            batch_size: 1000,
            epochs: 50,
            seed: 42,
            precision: Precision::F32,
        }
    }
}

/// Per-epoch progress report.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
}

/// A trained classifier (the best epoch's weights).
pub struct TrainedClassifier {
    model: Mlp,
    device: Device,
    dim: usize,
    /// Epoch (1-based) whose weights were kept.
    pub best_epoch: usize,
    /// Test accuracy of that epoch.
    pub best_test_accuracy: f64,
    /// Reports of all epochs run.
    pub history: Vec<EpochReport>,
}

fn batch_tensor(s: &Samples, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut xb = Vec::with_capacity(idx.len() * s.dim);
    let mut yb = Vec::with_capacity(idx.len());
    for &i in idx {
        xb.extend_from_slice(&s.x[i * s.dim..(i + 1) * s.dim]);
        yb.push(s.y[i]);
    }
    let x = Tensor::<2>::from_data(TensorData::new(xb, [idx.len(), s.dim]), device);
    let y = Tensor::<2>::from_data(TensorData::new(yb, [idx.len(), 1]), device);
    (x, y)
}

/// Mean binary cross-entropy of logits `z` against labels `y`, in the numerically stable form
/// max(z, 0) − z·y + log(1 + exp(−|z|)) (what `BCEWithLogitsLoss` computes).
pub fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let relu = z.clone().clamp_min(0.0);
    let soft = z.clone().abs().neg().exp().log1p();
    (relu - z * y + soft).mean()
}

fn predict_logits(model: &Mlp, s: &Samples, device: &Device, batch: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(s.len());
    let idx: Vec<usize> = (0..s.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, _) = batch_tensor(s, chunk, device);
        let z = model.forward(x).into_data();
        out.extend(z.iter::<f64>());
    }
    out
}

fn accuracy_of_logits(logits: &[f64], y: &[f32]) -> f64 {
    // round(sigmoid(z)) with 0.5 -> 0  <=>  z > 0
    let ok = logits
        .iter()
        .zip(y)
        .filter(|(&z, &t)| ((z > 0.0) as u8 as f32) == t)
        .count();
    ok as f64 / y.len().max(1) as f64
}

/// Trains the classifier on `train`, selecting the epoch with the best accuracy on `test`.
/// `on_epoch` is called after every epoch, `on_batch` after every mini-batch (for progress).
pub fn train_classifier(
    cfg: &ClassifierConfig,
    train: &Samples,
    test: &Samples,
    mut on_batch: impl FnMut(usize, usize),
    mut on_epoch: impl FnMut(&EpochReport),
) -> TrainedClassifier {
    let device = cpu_autodiff(cfg.precision, cfg.seed);
    let mut dims = vec![train.dim, cfg.hidden];
    dims.extend(std::iter::repeat_n(cfg.hidden, cfg.n_layer));
    dims.push(1);
    let mut model = Mlp::new(&dims, cfg.dropout, 0.01, &device);
    let mut optim = AdamConfig::new().init();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut best: Option<(Mlp, usize, f64)> = None;
    let mut history = Vec::new();
    let n_batches = train.len().div_ceil(cfg.batch_size.max(1));
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (b, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let (x, y) = batch_tensor(train, chunk, &device);
            let loss = bce_with_logits(model.forward(x), y);
            loss_sum += loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            on_batch(b + 1, n_batches);
        }
        let valid = model.valid();
        let logits = predict_logits(&valid, test, &valid_device(&device), cfg.batch_size);
        let acc = accuracy_of_logits(&logits, &test.y);
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / n_batches.max(1) as f64,
            test_accuracy: acc,
        };
        on_epoch(&report);
        history.push(report);
        if best.as_ref().is_none_or(|b| acc > b.2) {
            best = Some((model.clone(), epoch, acc));
        }
        if acc == 1.0 {
            break;
        }
    }
    let (model, best_epoch, best_test_accuracy) = best.unwrap_or((model, 0, f64::NAN));
    let valid = model.valid();
    TrainedClassifier {
        model: valid,
        device: valid_device(&device),
        dim: train.dim,
        best_epoch,
        best_test_accuracy,
        history,
    }
}

fn valid_device(device: &Device) -> Device {
    device.clone().inner()
}

impl TrainedClassifier {
    /// Sigmoid outputs (probability of label 1) for `s`.
    pub fn predict_proba(&self, s: &Samples) -> Vec<f64> {
        assert_eq!(s.dim, self.dim, "feature dimension differs from training");
        predict_logits(&self.model, s, &self.device, 1000)
            .into_iter()
            .map(|z| 1.0 / (1.0 + (-z).exp()))
            .collect()
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn gaussians(n: usize, shift: f32, seed: u64) -> Samples {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut s = Samples {
            dim: 2,
            ..Default::default()
        };
        for i in 0..n {
            let label = (i % 2) as f32;
            let c = if label > 0.5 { shift } else { -shift };
            s.x.push(c + rng.random_range(-1.0..1.0));
            s.x.push(rng.random_range(-1.0..1.0));
            s.y.push(label);
        }
        s
    }

    #[test]
    fn bce_with_logits_matches_closed_form() {
        let device = Device::flex();
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0, -3.0], [3, 1]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0], [3, 1]), &device);
        let got: f64 = bce_with_logits(z, y)
            .into_data()
            .iter::<f64>()
            .next()
            .unwrap();
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let want = (sp(-0.0) + sp(2.0) + sp(-3.0)) / 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn separable_data_is_learned_and_noise_is_not() {
        let cfg = ClassifierConfig {
            hidden: 16,
            n_layer: 1,
            epochs: 20,
            batch_size: 50,
            lr: 1e-2,
            ..Default::default()
        };
        let train = gaussians(400, 2.0, 1);
        let test = gaussians(200, 2.0, 2);
        let c = train_classifier(&cfg, &train, &test, |_, _| {}, |_| {});
        assert!(c.best_test_accuracy > 0.95, "{}", c.best_test_accuracy);
        let p = c.predict_proba(&gaussians(200, 2.0, 3));
        assert_eq!(p.len(), 200);
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        // Identical classes: the test accuracy stays near chance.
        let train = gaussians(400, 0.0, 4);
        let test = gaussians(400, 0.0, 5);
        let c = train_classifier(&cfg, &train, &test, |_, _| {}, |_| {});
        assert!(c.best_test_accuracy < 0.62, "{}", c.best_test_accuracy);
    }
}

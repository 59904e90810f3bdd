//! Adam whose β1 the learning-rate schedule may change between steps.
//!
//! PyTorch's `OneCycleLR` (the schedule of the iCaloFlow reference code) cycles Adam's β1
//! between 0.95 and 0.85 inversely to the learning rate, and `torch.optim.Adam` uses the current
//! β1 both in the first-moment update and in its bias correction `1 − β1ᵗ`. burn's `Adam` fixes
//! β1 at construction, so caloforge's training loop uses [`CycledAdam`]: the same update (ε added
//! to `sqrt(v̂)` as in PyTorch), reading β1 from a shared [`Beta1`] cell that the loop sets
//! before every step. Its per-parameter state is burn's [`AdamState`], so checkpoints written
//! with burn's Adam load unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{
    join_path, AdamState, AdaptiveMomentumState, GradientsParams, LearningRate, ModuleOptimizer,
    Optimizer, RecordState, StateSink, StateSource,
};
use burn::tensor::{Device, Tensor};

/// The β1 that the next optimizer step uses, shared between the loop and the optimizer.
#[derive(Clone, Debug)]
pub struct Beta1(Arc<AtomicU64>);

impl Beta1 {
    /// A cell holding `beta1`.
    pub fn new(beta1: f64) -> Self {
        Beta1(Arc::new(AtomicU64::new(beta1.to_bits())))
    }
    /// Sets β1 for the following steps.
    pub fn set(&self, beta1: f64) {
        self.0.store(beta1.to_bits(), Ordering::Relaxed);
    }
    /// The current β1.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Adam's moments after one more gradient: m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g²
/// (from zero at the first step), and the step count.
fn adam_moments<const D: usize>(
    state: Option<AdaptiveMomentumState<D>>,
    grad: Tensor<D>,
    b1: f64,
    b2: f64,
) -> AdaptiveMomentumState<D> {
    match state {
        Some(mut momentum) => {
            momentum.moment_1 = momentum
                .moment_1
                .mul_scalar(b1)
                .add(grad.clone().mul_scalar(1.0 - b1));
            momentum.moment_2 = momentum
                .moment_2
                .mul_scalar(b2)
                .add(grad.square().mul_scalar(1.0 - b2));
            momentum.time += 1;
            momentum
        }
        None => AdaptiveMomentumState::new(
            1,
            grad.clone().mul_scalar(1.0 - b1),
            grad.square().mul_scalar(1.0 - b2),
        ),
    }
}

/// Adam (PyTorch's update, no weight decay) with β1 read from a [`Beta1`] cell at every step.
#[derive(Clone, Debug)]
pub struct CycledAdam {
    beta1: Beta1,
    beta2: f64,
    epsilon: f64,
}

impl CycledAdam {
    /// Adam with β2 = 0.999 and ε = `epsilon`, β1 from `beta1`.
    pub fn new(beta1: Beta1, epsilon: f64) -> Self {
        CycledAdam {
            beta1,
            beta2: 0.999,
            epsilon,
        }
    }

    /// The whole-module optimizer, clipping each gradient tensor's norm to `grad_clip` if set
    /// (burn's clipping is per parameter tensor, as Keras' `clip_by_norm`).
    pub fn into_module_optimizer(self, grad_clip: Option<f64>) -> ModuleOptimizer {
        with_clip(ModuleOptimizer::from(self), grad_clip)
    }
}

impl Optimizer for CycledAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta1.get(), self.beta2);
        let m = adam_moments(state.map(|s| s.momentum), grad, b1, b2);
        // PyTorch: p -= lr / (1 − β1ᵗ) · m / (sqrt(v) / sqrt(1 − β2ᵗ) + ε), the corrections in
        // double precision.
        let t = m.time as i32;
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let factor = lr * bc2_sqrt / (1.0 - b1.powi(t));
        let update = m.moment_1.clone().mul_scalar(factor).div(
            m.moment_2
                .clone()
                .sqrt()
                .add_scalar(self.epsilon * bc2_sqrt),
        );
        (tensor - update, Some(AdamState::new(m)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// Keras' Adamax (CaloScore v2's optimizer): m = β1 m + (1 − β1) g, u = max(β2 u, |g|),
/// p −= lr/(1 − β1ᵗ) · m/(u + ε), with β1 = 0.9, β2 = 0.999 and Keras' ε = 1e-7. Its state is
/// burn's [`AdamState`] (u in the second moment).
#[derive(Clone, Debug)]
pub struct Adamax {
    beta1: f64,
    beta2: f64,
    epsilon: f64,
}

impl Default for Adamax {
    fn default() -> Self {
        Adamax {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl Adamax {
    /// The whole-module optimizer, clipping each gradient tensor's norm to `grad_clip` if set.
    pub fn into_module_optimizer(self, grad_clip: Option<f64>) -> ModuleOptimizer {
        with_clip(ModuleOptimizer::from(self), grad_clip)
    }
}

fn with_clip(optim: ModuleOptimizer, grad_clip: Option<f64>) -> ModuleOptimizer {
    match grad_clip {
        Some(c) => optim.with_grad_clipping(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(c as f32).init(),
        ),
        None => optim,
    }
}

impl Optimizer for Adamax {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta1, self.beta2);
        let m = match state {
            Some(AdamState { mut momentum }) => {
                momentum.moment_1 = momentum
                    .moment_1
                    .mul_scalar(b1)
                    .add(grad.clone().mul_scalar(1.0 - b1));
                momentum.moment_2 = momentum.moment_2.mul_scalar(b2).max_pair(grad.abs());
                momentum.time += 1;
                momentum
            }
            None => AdaptiveMomentumState::new(1, grad.clone().mul_scalar(1.0 - b1), grad.abs()),
        };
        let factor = lr / (1.0 - b1.powi(m.time as i32));
        let update = m
            .moment_1
            .clone()
            .mul_scalar(factor)
            .div(m.moment_2.clone().add_scalar(self.epsilon));
        (tensor - update, Some(AdamState::new(m)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// RangerLite (AllShowers' optimizer, the `rangerlite` package): PyTorch's RAdam with decoupled
/// weight decay, then Lookahead. Per step t of a parameter p with gradient g:
///
/// - p ← p (1 − lr·wd); m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²;
/// - ρ∞ = 2/(1 − β2) − 1, ρt = ρ∞ − 2t β2ᵗ/(1 − β2ᵗ); if ρt > 5, with the rectification
///   r = √((ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt)),
///   p ← p − lr · m/(1 − β1ᵗ) · r √(1 − β2ᵗ)/(√v + ε); else p ← p − lr · m/(1 − β1ᵗ);
/// - every `k` steps: p ← α p + (1 − α) p_slow, then p_slow ← p (p_slow starts at the
///   initial weights).
///
/// Defaults as the package: β = (0.95, 0.999), ε = 1e-5, k = 6, α = 0.5.
#[derive(Clone, Debug)]
pub struct Ranger {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub lookahead_steps: usize,
    pub lookahead_alpha: f64,
}

impl Ranger {
    /// RangerLite's defaults with weight decay `weight_decay`.
    pub fn new(weight_decay: f64) -> Self {
        Ranger {
            beta1: 0.95,
            beta2: 0.999,
            epsilon: 1e-5,
            weight_decay,
            lookahead_steps: 6,
            lookahead_alpha: 0.5,
        }
    }

    /// The whole-module optimizer, clipping each gradient tensor's norm to `grad_clip` if set
    /// (AllShowers clips the global norm instead: [`clip_global_norm`]).
    pub fn into_module_optimizer_clipped(self, grad_clip: Option<f64>) -> ModuleOptimizer {
        with_clip(ModuleOptimizer::from(self), grad_clip)
    }
}

/// [`Ranger`]'s per-parameter state: the moments and step count, and the slow weights.
#[derive(Clone)]
pub struct RangerState<const D: usize> {
    pub momentum: AdaptiveMomentumState<D>,
    pub slow: Tensor<D>,
}

impl<const D: usize> RecordState for RangerState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.momentum
            .state_flatten(&join_path(prefix, "momentum"), out);
        out.push_tensor(prefix, "slow", self.slow.to_data());
    }
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let momentum =
            AdaptiveMomentumState::state_unflatten(&join_path(prefix, "momentum"), src, device)?;
        let slow = Tensor::from_data(src.take_tensor(prefix, "slow")?, device);
        Some(RangerState { momentum, slow })
    }
}

impl Optimizer for Ranger {
    type State<const D: usize> = RangerState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta1, self.beta2);
        let (momentum, slow) = match state {
            Some(RangerState { momentum, slow }) => (Some(momentum), slow),
            None => (None, tensor.clone()),
        };
        let m = adam_moments(momentum, grad, b1, b2);
        let t = m.time as i32;
        let tensor = if self.weight_decay != 0.0 {
            tensor.mul_scalar(1.0 - lr * self.weight_decay)
        } else {
            tensor
        };
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / bc2;
        let update = if rho_t > 5.0 {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            m.moment_1
                .clone()
                .mul_scalar(lr * rect * bc2.sqrt() / bc1)
                .div(m.moment_2.clone().sqrt().add_scalar(self.epsilon))
        } else {
            m.moment_1.clone().mul_scalar(lr / bc1)
        };
        let mut tensor = tensor - update;
        let mut slow = slow;
        if self.lookahead_steps > 0 && m.time.is_multiple_of(self.lookahead_steps) {
            let a = self.lookahead_alpha;
            tensor = tensor.mul_scalar(a).add(slow.mul_scalar(1.0 - a));
            slow = tensor.clone();
        }
        (tensor, Some(RangerState { momentum: m, slow }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state.slow = state.slow.to_device(device);
        state
    }
}

/// Scales the gradients of `model`'s parameters so that their global L2 norm is at most
/// `max_norm`, as PyTorch's `clip_grad_norm_` (factor max_norm/(norm + 1e-6), at most 1);
/// returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    struct Norm<'a>(&'a GradientsParams, f64);
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s: f64 = g
                    .into_data()
                    .iter::<f32>()
                    .map(|x| (x as f64) * (x as f64))
                    .sum();
                self.1 += s;
            }
        }
    }
    struct Scale<'a>(&'a mut GradientsParams, f64);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut n = Norm(grads, 0.0);
    model.visit(&mut n);
    let norm = n.1.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        model.visit(&mut Scale(grads, coef));
    }
    norm
}

/// One step of an exponential moving average of weights: every float parameter of `ema`
/// becomes `decay·ema + (1 − decay)·model` (detached from any autodiff graph). `ema` and
/// `model` must be the same network (parameters are matched in visiting order).
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().detach().flatten::<1>(0, D - 1));
        }
    }
    struct Blend {
        w: std::vec::IntoIter<Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let w = self.w.next().expect("EMA of a different network");
            let d = self.decay;
            let trainable = param.is_require_grad();
            param.map(|e| {
                let dims = e.dims();
                let avg = e
                    .detach()
                    .mul_scalar(d)
                    .add(w.reshape(dims).mul_scalar(1.0 - d))
                    .detach();
                // A leaf that can be trained further (e.g. a distilled student's start).
                if trainable {
                    avg.require_grad()
                } else {
                    avg
                }
            })
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    ema.map(&mut Blend {
        w: c.0.into_iter(),
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Three steps of PyTorch's Adam with β1 changing between steps, written out in f64:
    /// m = β1ₜ m + (1 − β1ₜ) g, v = β2 v + (1 − β2) g², p −= lr/(1 − β1ₜᵗ) · m/(√v/√(1 − β2ᵗ) + ε).
    #[test]
    fn matches_pytorch_adam_with_changing_beta1() {
        let device = Device::default();
        let beta1 = Beta1::new(0.95);
        let opt = CycledAdam::new(beta1.clone(), 1e-8);
        let p0 = [0.5f64, -1.25, 2.0];
        let grads = [[0.3f64, -0.2, 1e-3], [-0.1, 0.4, 2e-3], [0.25, 0.05, -5e-4]];
        let betas = [0.95, 0.9, 0.87];
        let lrs = [1e-2, 3e-2, 2e-2];
        let mut p =
            Tensor::<1>::from_data(TensorData::new(p0.map(|v| v as f32).to_vec(), [3]), &device);
        let mut state = None;
        let (mut pe, mut m, mut v) = (p0, [0.0f64; 3], [0.0f64; 3]);
        for k in 0..3 {
            beta1.set(betas[k]);
            let g = Tensor::<1>::from_data(
                TensorData::new(grads[k].map(|v| v as f32).to_vec(), [3]),
                &device,
            );
            let (np, ns) = opt.step(lrs[k], p, g, state);
            (p, state) = (np, ns);
            let t = (k + 1) as i32;
            for i in 0..3 {
                let g = grads[k][i] as f32 as f64;
                m[i] = betas[k] * m[i] + (1.0 - betas[k]) * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                pe[i] -= lrs[k] / (1.0 - betas[k].powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f32> = p.into_data().try_to_vec().unwrap();
        for i in 0..3 {
            assert!(
                (got[i] as f64 - pe[i]).abs() < 1e-6,
                "parameter {i}: {} vs {}",
                got[i],
                pe[i]
            );
        }
    }

    /// 14 steps (the rectification starts at step 6, Lookahead syncs at 6 and 12) against
    /// PyTorch: torch 2.15's `RAdam(lr=1e-2, betas=(0.95, 0.999), eps=1e-5, weight_decay=1e-2,
    /// decoupled_weight_decay=True)` followed by rangerlite's Lookahead (k = 6, α = 0.5), on
    /// gradients [0.3 sin(0.7k + 0.3), 0.2 cos(1.3k), 1e-3 ((k mod 3) − 1)].
    #[test]
    fn ranger_matches_pytorch_radam_with_lookahead() {
        let device = Device::default();
        let opt = Ranger::new(1e-2);
        let mut p = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, -1.25, 2.0], [3]), &device);
        let mut state = None;
        for k in 0..14 {
            let kf = k as f64;
            let g = [
                ((0.7 * kf + 0.3).sin() * 0.3) as f32,
                ((1.3 * kf).cos() * 0.2) as f32,
                (1e-3 * ((k % 3) as f64 - 1.0)) as f32,
            ];
            let g = Tensor::<1>::from_data(TensorData::new(g.to_vec(), [3]), &device);
            let (np, ns) = opt.step(1e-2, p, g, state);
            (p, state) = (np, ns);
        }
        let got: Vec<f32> = p.into_data().try_to_vec().unwrap();
        let want = [0.494_769_5_f32, -1.250_688_4, 1.998_580_8];
        for i in 0..3 {
            assert!(
                (got[i] - want[i]).abs() < 2e-6,
                "parameter {i}: {} vs PyTorch {}",
                got[i],
                want[i]
            );
        }
    }

    /// The global norm clip scales every gradient by max/(norm + 1e-6) when the norm is larger.
    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        use burn::module::Param;
        #[derive(Module, Debug)]
        struct Two {
            a: Param<Tensor<1>>,
            b: Param<Tensor<2>>,
        }
        let dev = Device::default().autodiff();
        let net = Two {
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 2.0], [2]),
                &dev,
            )),
            b: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![3.0f32; 4], [2, 2]),
                &dev,
            )),
        };
        // Gradients: a → (2, 4) (of a²), b → 1 each: norm √(4 + 16 + 4) = √24.
        let loss = net.a.val().powi_scalar(2).sum() + net.b.val().sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let norm = clip_global_norm(&net, &mut grads, 1.0);
        assert!((norm - 24f64.sqrt()).abs() < 1e-5, "{norm}");
        let c = 1.0 / (24f64.sqrt() + 1e-6);
        let ga: Vec<f32> = grads
            .get::<1>(net.a.id)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        let gb: Vec<f32> = grads
            .get::<2>(net.b.id)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!((ga[0] as f64 - 2.0 * c).abs() < 1e-6 && (ga[1] as f64 - 4.0 * c).abs() < 1e-6);
        assert!(gb.iter().all(|&g| (g as f64 - c).abs() < 1e-6));
        // Below the bound nothing changes.
        let loss = net.a.val().powi_scalar(2).sum() + net.b.val().sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        clip_global_norm(&net, &mut grads, 10.0);
        let ga: Vec<f32> = grads
            .get::<1>(net.a.id)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(ga, vec![2.0, 4.0]);
    }

    /// Three Keras Adamax steps written out in f64.
    #[test]
    fn adamax_matches_keras() {
        let device = Device::default();
        let opt = Adamax::default();
        let p0 = [0.5f64, -1.25, 2.0];
        let grads = [[0.3f64, -0.2, 1e-3], [-0.1, 0.4, 2e-3], [0.25, 0.05, -5e-4]];
        let lr = 2e-2;
        let mut p =
            Tensor::<1>::from_data(TensorData::new(p0.map(|v| v as f32).to_vec(), [3]), &device);
        let mut state = None;
        let (mut pe, mut m, mut u) = (p0, [0.0f64; 3], [0.0f64; 3]);
        for (k, g) in grads.iter().enumerate() {
            let gt =
                Tensor::<1>::from_data(TensorData::new(g.map(|v| v as f32).to_vec(), [3]), &device);
            let (np, ns) = opt.step(lr, p, gt, state);
            (p, state) = (np, ns);
            for i in 0..3 {
                let gi = g[i] as f32 as f64;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                u[i] = (0.999 * u[i]).max(gi.abs());
                pe[i] -= lr / (1.0 - 0.9f64.powi(k as i32 + 1)) * m[i] / (u[i] + 1e-7);
            }
        }
        let got: Vec<f32> = p.into_data().try_to_vec().unwrap();
        for i in 0..3 {
            assert!(
                (got[i] as f64 - pe[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                got[i],
                pe[i]
            );
        }
    }

    #[derive(burn::module::Module, Debug)]
    struct Pair {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    #[test]
    fn ema_blends_every_parameter() {
        let device = Device::default();
        let pair = |a: [f32; 4], b: [f32; 2]| Pair {
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(a.to_vec(), [2, 2]),
                &device,
            )),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(b.to_vec(), [2]), &device)),
        };
        let ema = pair([1.0, 2.0, 3.0, 4.0], [0.0, 10.0]);
        let model = pair([3.0, 2.0, 1.0, 0.0], [10.0, 0.0]);
        let out = ema_update(ema, &model, 0.75);
        let a: Vec<f32> = out.a.val().into_data().try_to_vec().unwrap();
        let b: Vec<f32> = out.b.val().into_data().try_to_vec().unwrap();
        assert_eq!(a, vec![1.5, 2.0, 2.5, 3.0]);
        assert_eq!(b, vec![2.5, 7.5]);
    }
}

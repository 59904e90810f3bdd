//! Training of flows: maximum likelihood for MAF teachers, probability density distillation for
//! IAF students; Adam, a learning-rate schedule, validation every N steps with the best weights
//! kept, a wall-clock budget, and safetensors checkpoints.

use super::fast::FastFlow;
use super::{Flow, FlowConfig, FlowKind};
use crate::schedule::LrSchedule;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::path::Path;
use std::time::Instant;

/// Row-major training samples and their context.
#[derive(Debug, Clone, Default)]
pub struct FlowData {
    /// Samples, n × d.
    pub x: Vec<f32>,
    /// Context, n × c.
    pub ctx: Vec<f32>,
    /// Features.
    pub d: usize,
    /// Context width.
    pub c: usize,
}

/// A source of training mini-batches (allows fresh noise per batch).
pub trait BatchSource: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Features and context width.
    fn dims(&self) -> (usize, usize);
    /// Row-major x (|idx| × d) and context (|idx| × c) of samples `idx`.
    fn batch(&self, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> (Vec<f32>, Vec<f32>);
}

impl BatchSource for FlowData {
    fn len(&self) -> usize {
        FlowData::len(self)
    }
    fn dims(&self) -> (usize, usize) {
        (self.d, self.c)
    }
    fn batch(&self, idx: &[usize], _: &mut rand_chacha::ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
        let mut xb = Vec::with_capacity(idx.len() * self.d);
        let mut cb = Vec::with_capacity(idx.len() * self.c);
        for &i in idx {
            xb.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
            cb.extend_from_slice(&self.ctx[i * self.c..(i + 1) * self.c]);
        }
        (xb, cb)
    }
}

fn batch_tensors(
    src: &dyn BatchSource,
    idx: &[usize],
    rng: &mut rand_chacha::ChaCha8Rng,
    device: &Device,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let (d, c) = src.dims();
    let (xb, cb) = src.batch(idx, rng);
    let x = Tensor::<2>::from_data(TensorData::new(xb, [idx.len(), d]), device);
    let ctx = (c > 0).then(|| Tensor::<2>::from_data(TensorData::new(cb, [idx.len(), c]), device));
    (x, ctx)
}

impl FlowData {
    /// Number of samples.
    pub fn len(&self) -> usize {
        if self.d == 0 {
            0
        } else {
            self.x.len() / self.d
        }
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainSettings {
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs (passes over the training set).
    pub epochs: usize,
    /// Learning-rate schedule (indexed by optimizer step).
    pub schedule: LrSchedule,
    /// Validate every this many steps (0: after every epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Global gradient-norm clip (none if absent).
    #[serde(default)]
    pub grad_clip: Option<f64>,
}

/// Reads a JSON null (how serde_json writes NaN) back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One validation point.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ValPoint {
    /// Optimizer steps done.
    pub step: usize,
    /// Mean training loss since the previous point (NaN/null before the first step).
    #[serde(deserialize_with = "nan_from_null")]
    pub train_loss: f64,
    /// Validation loss.
    #[serde(deserialize_with = "nan_from_null")]
    pub val_loss: f64,
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// Optimizer steps done (including those of a resumed run).
    pub steps: usize,
    /// Epochs completed in this run.
    pub epochs: usize,
    /// Best validation loss.
    #[serde(deserialize_with = "nan_from_null")]
    pub best_val_loss: f64,
    /// Step of the best validation loss.
    pub best_step: usize,
    /// Validation history.
    pub history: Vec<ValPoint>,
    /// Whether the wall-clock budget ended the run.
    pub stopped_at_budget: bool,
    /// Wall time (s).
    pub seconds: f64,
}

/// Progress callback payload.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps planned.
    pub total: usize,
    /// Latest validation loss, if any.
    pub val_loss: Option<f64>,
}

/// Loss of a mini-batch for a model being trained.
type BatchLoss<'a> = dyn FnMut(&Flow, &[usize], &mut rand_chacha::ChaCha8Rng) -> Tensor<1> + 'a;

fn fit(
    mut flow: Flow,
    run: Run,
    loss_fn: &mut BatchLoss,
    val_fn: &mut dyn FnMut(&Flow) -> f64,
    progress: &mut dyn FnMut(Progress),
) -> (Flow, TrainReport) {
    let Run {
        settings: s,
        start_step,
        seed,
        budget,
        ..
    } = run;
    let n_train = run.train.len();
    let t0 = Instant::now();
    let bs = s.batch_size.clamp(1, n_train.max(1));
    let steps_per_epoch = n_train.div_ceil(bs);
    let total = start_step + steps_per_epoch * s.epochs;
    let eval_every = if s.eval_every == 0 {
        steps_per_epoch
    } else {
        s.eval_every
    };
    let mut optim = AdamConfig::new().with_epsilon(1e-8);
    if let Some(c) = s.grad_clip {
        optim = optim.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(c as f32),
        ));
    }
    let mut optim = optim.init();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(start_step as u64);
    let mut order: Vec<usize> = (0..n_train).collect();
    let mut step = start_step;
    let mut best = (val_fn(&flow), step, flow.net.clone());
    let mut history = vec![ValPoint {
        step,
        train_loss: f64::NAN,
        val_loss: best.0,
    }];
    progress(Progress {
        step,
        total,
        val_loss: Some(best.0),
    });
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let mut stopped = false;
    let mut epochs = 0;
    'outer: for _ in 0..s.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(bs) {
            let loss = loss_fn(&flow, chunk, &mut rng);
            let v: f64 = loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            loss_sum += v;
            loss_n += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &flow.net);
            let lr = s.schedule.lr(step);
            flow = flow.map_net(|net| optim.step(lr, net, grads));
            step += 1;
            let out_of_time = budget.is_some_and(|b| t0.elapsed() >= b);
            if step % eval_every == 0 || out_of_time {
                let val = val_fn(&flow);
                history.push(ValPoint {
                    step,
                    train_loss: loss_sum / loss_n.max(1) as f64,
                    val_loss: val,
                });
                (loss_sum, loss_n) = (0.0, 0);
                if val < best.0 || !best.0.is_finite() {
                    best = (val, step, flow.net.clone());
                }
                progress(Progress {
                    step,
                    total,
                    val_loss: Some(val),
                });
            } else {
                progress(Progress {
                    step,
                    total,
                    val_loss: None,
                });
            }
            if out_of_time {
                stopped = true;
                break 'outer;
            }
        }
        epochs += 1;
    }
    if loss_n > 0 {
        let val = val_fn(&flow);
        history.push(ValPoint {
            step,
            train_loss: loss_sum / loss_n as f64,
            val_loss: val,
        });
        if val < best.0 {
            best = (val, step, flow.net.clone());
        }
    }
    let report = TrainReport {
        steps: step,
        epochs,
        best_val_loss: best.0,
        best_step: best.1,
        history,
        stopped_at_budget: stopped,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let flow = flow.map_net(|_| best.2);
    (flow, report)
}

/// Mean −log p over `data` (fast engine; NaN-free data gives a finite value unless the flow
/// diverged).
pub fn mean_nll(flow: &FastFlow, data: &FlowData) -> f64 {
    if data.is_empty() {
        return f64::NAN;
    }
    let (_, lp) = flow.log_prob(&data.x, &data.ctx);
    -lp.iter().sum::<f64>() / lp.len() as f64
}

/// What to train on and how: data, validation set, settings, the step to start from (a
/// resumed run continues its schedule), the seed and an optional wall-clock budget.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Training mini-batches.
    pub train: &'a dyn BatchSource,
    /// Validation samples (fixed).
    pub val: &'a FlowData,
    /// Optimisation settings.
    pub settings: &'a TrainSettings,
    /// Optimizer steps already done.
    pub start_step: usize,
    /// Seed of shuffling and noise.
    pub seed: u64,
    /// Wall-clock budget.
    pub budget: Option<std::time::Duration>,
}

/// Maximum-likelihood training of a MAF. Returns the flow with the best validation NLL.
pub fn train_maf(flow: Flow, run: Run, progress: &mut dyn FnMut(Progress)) -> (Flow, TrainReport) {
    let (train, val) = (run.train, run.val);
    assert_eq!(flow.cfg.kind, FlowKind::Maf);
    let device = flow.device();
    let mut loss = |f: &Flow, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| {
        let (x, c) = batch_tensors(train, idx, rng, &device);
        f.log_prob(x, c).mean().neg()
    };
    let mut val_fn = |f: &Flow| mean_nll(&FastFlow::from_flow(f), val);
    fit(flow, run, &mut loss, &mut val_fn, progress)
}

/// Which terms the distillation loss uses (iCaloFlow, after Ian Pang's "fully guided" student).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillLoss {
    /// x-pass: data x → teacher z → student x'; MSE(x', x) and the states between blocks.
    pub x_pass: bool,
    /// z-pass: z ~ N(0, 1) → student x' → teacher z'; MSE(z', z).
    pub z_pass: bool,
    /// Also match every block's MADE outputs in the x-pass.
    pub per_made: bool,
    /// Weight of the x terms: loss = β·x terms + (1 − β)·z term.
    pub beta: f64,
}

fn mse(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a - b).powf_scalar(2.0).mean()
}

fn mse3(a: Tensor<3>, b: Tensor<3>) -> Tensor<1> {
    (a - b).powf_scalar(2.0).mean()
}

/// Trains the IAF `student` to reproduce the frozen MAF `teacher` (same features, context,
/// blocks and permutations). Validation loss: mean squared error of the student's x for the
/// teacher's z of the validation data (the x-pass, fast engines).
pub fn distill(
    student: Flow,
    teacher: &Flow,
    terms: DistillLoss,
    run: Run,
    progress: &mut dyn FnMut(Progress),
) -> (Flow, TrainReport) {
    let (train, val) = (run.train, run.val);
    assert_eq!(student.cfg.kind, FlowKind::Iaf);
    assert_eq!(teacher.cfg.kind, FlowKind::Maf);
    assert_eq!(
        (
            student.cfg.features,
            student.cfg.context,
            student.cfg.blocks
        ),
        (
            teacher.cfg.features,
            teacher.cfg.context,
            teacher.cfg.blocks
        )
    );
    let device = student.device();
    let frozen = teacher.clone().map_net(|n| n.no_grad());
    let fast_teacher = FastFlow::from_flow(teacher);
    let (val_z, _) = fast_teacher.log_prob(&val.x, &val.ctx);
    let d = train.dims().0;
    let mut loss = |f: &Flow, idx: &[usize], rng: &mut rand_chacha::ChaCha8Rng| {
        let (x, c) = batch_tensors(train, idx, rng, &device);
        let mut total: Option<Tensor<1>> = None;
        let mut add = |t: Tensor<1>, w: f64| {
            let t = t * w;
            total = Some(match total.take() {
                Some(a) => a + t,
                None => t,
            });
        };
        if terms.x_pass {
            let tt = frozen.forward_trace(x.clone(), c.clone());
            let st = f.inverse_trace(tt.z.clone().detach(), c.clone());
            let mut xl = mse(st.x_side[0].clone(), x.clone());
            for k in 1..st.x_side.len() {
                xl = xl + mse(st.x_side[k].clone(), tt.x_side[k].clone().detach());
            }
            if terms.per_made {
                for k in 0..st.params.len() {
                    xl = xl + mse3(st.params[k].clone(), tt.params[k].clone().detach());
                }
            }
            add(xl, if terms.z_pass { terms.beta } else { 1.0 });
        }
        if terms.z_pass {
            let n = idx.len();
            let zs: Vec<f32> = (0..n * d)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect();
            let z = Tensor::<2>::from_data(TensorData::new(zs, [n, d]), &device);
            let st = f.inverse_trace(z.clone(), c.clone());
            let tz = frozen.forward_trace(st.x_side[0].clone(), c);
            add(
                mse(tz.z, z),
                if terms.x_pass { 1.0 - terms.beta } else { 1.0 },
            );
        }
        total.expect("distillation needs the x-pass or the z-pass")
    };
    let mut val_fn = |f: &Flow| {
        let (xs, _) = FastFlow::from_flow(f).sample_from_base(&val_z, &val.ctx);
        xs.iter()
            .zip(&val.x)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / xs.len().max(1) as f64
    };
    fit(student, run, &mut loss, &mut val_fn, progress)
}

/// Saves the flow's weights as safetensors (its configuration in the metadata), atomically.
pub fn save_flow(flow: &Flow, path: &Path) -> Result<(), String> {
    let cfg = serde_json::to_string(&flow.cfg).map_err(|e| e.to_string())?;
    let mut store = SafetensorsStore::from_bytes(None).metadata("caloforge_flow_config", cfg);
    flow.net
        .valid()
        .save_into(&mut store)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a flow saved by [`save_flow`] with configuration `cfg` onto `device`.
pub fn load_flow(path: &Path, cfg: &FlowConfig, device: &Device) -> Result<Flow, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut flow = Flow::new(cfg.clone(), device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let mut net = flow.net.clone();
    let res = net
        .load_from(&mut store)
        .map_err(|e| format!("{}: not a checkpoint of this flow: {e}", path.display()))?;
    if !res.errors.is_empty() || !res.missing.is_empty() {
        return Err(format!(
            "{}: not a checkpoint of this flow ({} missing, {} errors)",
            path.display(),
            res.missing.len(),
            res.errors.len()
        ));
    }
    flow = flow.map_net(|_| net);
    Ok(flow)
}

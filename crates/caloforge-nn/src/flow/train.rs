//! Training of flows: maximum likelihood for MAF teachers, probability density distillation for
//! IAF students; Adam, a learning-rate schedule, validation every N steps with the best weights
//! kept, a wall-clock budget, and safetensors checkpoints.

use super::fast::FastFlow;
use super::{log_normal, Flow, FlowConfig, FlowKind, FlowNet, Trace};
use crate::train::{fit, Control, NnError, Result, Task};
pub use crate::train::{Progress, TrainReport, TrainSettings, ValPoint};
use burn::module::Module;
use burn::store::SafetensorsStore;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;

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

/// Mean −log p over `data` (fast engine; NaN-free data gives a finite value unless the flow
/// diverged).
pub fn mean_nll(flow: &FastFlow, data: &FlowData) -> f64 {
    if data.is_empty() {
        return f64::NAN;
    }
    let (_, lp) = flow.log_prob(&data.x, &data.ctx);
    -lp.iter().sum::<f64>() / lp.len() as f64
}

/// What to train on and how: data, validation set, settings and the run control (seed,
/// deadline, checkpoints).
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Training mini-batches.
    pub train: &'a dyn BatchSource,
    /// Validation samples (fixed).
    pub val: &'a FlowData,
    /// Optimisation settings.
    pub settings: &'a TrainSettings,
    /// Seed, deadline, checkpoints.
    pub control: &'a Control,
}

/// A flow's loss and validation as a [`Task`] of the one training loop (the loop optimises the
/// network; the permutations stay with the template flow).
struct FlowTask<L, V> {
    template: Flow,
    n_train: usize,
    loss: L,
    val: V,
}

impl<L, V> Task<FlowNet> for FlowTask<L, V>
where
    L: FnMut(&Flow, &[usize], &mut ChaCha8Rng) -> Tensor<1>,
    V: FnMut(&Flow) -> f64,
{
    fn n_train(&self) -> usize {
        self.n_train
    }
    fn loss(&mut self, net: &FlowNet, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let f = self.template.clone().map_net(|_| net.clone());
        (self.loss)(&f, batch, rng)
    }
    fn validate(&mut self, net: &FlowNet) -> f64 {
        let f = self.template.clone().map_net(|_| net.clone());
        (self.val)(&f)
    }
}

fn fit_flow(
    flow: Flow,
    run: Run,
    loss: impl FnMut(&Flow, &[usize], &mut ChaCha8Rng) -> Tensor<1>,
    val: impl FnMut(&Flow) -> f64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Flow, TrainReport)> {
    let net = flow.net.clone();
    let mut task = FlowTask {
        template: flow,
        n_train: run.train.len(),
        loss,
        val,
    };
    let fitted = fit(net, &mut task, run.settings, run.control, progress)?;
    let best = task.template.map_net(|_| fitted.best);
    Ok((best, fitted.report))
}

/// Maximum-likelihood training of a MAF. Returns the flow with the best validation NLL.
pub fn train_maf(
    flow: Flow,
    run: Run,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Flow, TrainReport)> {
    let (train, val) = (run.train, run.val);
    if flow.cfg.kind != FlowKind::Maf {
        return Err(NnError::Config("train_maf needs a MAF".into()));
    }
    let device = flow.device();
    let loss = |f: &Flow, idx: &[usize], rng: &mut ChaCha8Rng| {
        let (x, c) = batch_tensors(train, idx, rng, &device);
        if f.cfg.dropout > 0.0 {
            let keep = f.dropout_masks(idx.len(), rng);
            let t = f.forward_trace_dropout(x, c, &keep);
            return (log_normal(t.z) + t.logdet).mean().neg();
        }
        f.log_prob(x, c).mean().neg()
    };
    let val_fn = |f: &Flow| mean_nll(&FastFlow::from_flow(f), val);
    fit_flow(flow, run, loss, val_fn, progress)
}

/// Which terms the distillation loss uses (iCaloFlow's "fully guided" student, run.py
/// `train_flow_{2,3}_student`).
///
/// Every term is the reference's `chi2_loss`: squared differences summed over the features
/// (and over a MADE output's spline parameters), averaged over the batch. The reference
/// compares the states after every transform of its `GuidedCompositeTransform`, permutations
/// included, and also adds the end-to-end term once more; caloforge writes the same sum out:
///
/// * x-pass (data x → teacher z → student x′):
///   `2·chi2(x′, x) + 2·Σₖ chi2(state_k) [+ Σ_blocks chi2(MADE outputs)]`, the states being
///   the 7 (blocks − 1) states between blocks, each counted before and after its permutation;
/// * z-pass (z ~ N(0, 1) → student x′ → teacher z′, gradients through the frozen teacher):
///   `2·chi2(z′, z) + 2·Σₖ chi2(state_k) [+ Σ_blocks chi2(MADE outputs)]`;
/// * loss = β·x-pass + (1 − β)·z-pass (only one pass: that pass alone).
///
/// The MADE outputs compared are the student's (an IAF's, computed from the z-side input of
/// the block) and the teacher's (a MAF's, from the x-side input), as in the reference.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillLoss {
    /// x-pass: data x → teacher z → student x′.
    pub x_pass: bool,
    /// z-pass: z ~ N(0, 1) → student x′ → teacher z′.
    pub z_pass: bool,
    /// Also match every block's MADE outputs (the reference always does).
    pub per_made: bool,
    /// Weight of the x-pass: loss = β·x-pass + (1 − β)·z-pass (the reference's `--beta`, 0.5).
    pub beta: f64,
}

/// The reference's `chi2_loss`: Σ over everything but the batch of (a − b)², batch mean.
fn chi2<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<1> {
    let n = a.dims()[0].max(1) as f64;
    (a - b).powf_scalar(2.0).sum() / n
}

/// The guided terms of one pass: the student's trace against the teacher's, end to end
/// (`student_end` against `teacher_end`) counted twice, every state between blocks twice, and
/// the MADE outputs once.
pub(super) fn guided_terms(
    student: &Trace,
    teacher: &Trace,
    student_end: Tensor<2>,
    teacher_end: Tensor<2>,
    per_made: bool,
) -> Tensor<1> {
    let mut t = chi2(student_end, teacher_end) * 2.0;
    for k in 1..student.x_side.len() {
        t = t + chi2(student.x_side[k].clone(), teacher.x_side[k].clone()) * 2.0;
    }
    if per_made {
        for k in 0..student.params.len() {
            t = t + chi2(student.params[k].clone(), teacher.params[k].clone());
        }
    }
    t
}

/// The two passes of the distillation loss for one batch, unweighted: the x-pass on data `x`
/// (when `terms.x_pass`) and the z-pass on base samples `z` (when `terms.z_pass` and `z` is
/// given), each [`guided_terms`] of the student's trace against the teacher's. `teacher` should
/// be frozen (`map_net(|n| n.no_grad())`): the z-pass's gradient still flows through it into
/// the student. Training ([`distill`]) and the PyTorch gradient check
/// (`examples/distill_grad.rs`) both call this.
pub fn distill_terms(
    student: &Flow,
    teacher: &Flow,
    terms: DistillLoss,
    x: Tensor<2>,
    c: Option<Tensor<2>>,
    z: Option<Tensor<2>>,
) -> (Option<Tensor<1>>, Option<Tensor<1>>) {
    let lx = terms.x_pass.then(|| {
        // The teacher is frozen and x is data: nothing here reaches the student's gradient.
        let tt = teacher.forward_trace(x.clone(), c.clone());
        let st = student.inverse_trace(tt.z.clone(), c.clone());
        let xs = st.x_side[0].clone();
        guided_terms(&st, &tt, xs, x, terms.per_made)
    });
    let lz = z.filter(|_| terms.z_pass).map(|z| {
        let st = student.inverse_trace(z.clone(), c.clone());
        let tt = teacher.forward_trace(st.x_side[0].clone(), c);
        let tz = tt.z.clone();
        guided_terms(&st, &tt, z, tz, terms.per_made)
    });
    (lx, lz)
}

/// Trains the IAF `student` to reproduce the frozen MAF `teacher` (same features, context,
/// blocks and permutations) with the loss of [`DistillLoss`]. Validation loss: chi2 (Σ over
/// the features of the squared difference, mean over samples) between the validation data and
/// the student's x for the teacher's z of it (the x-pass, fast engines).
pub fn distill(
    student: Flow,
    teacher: &Flow,
    terms: DistillLoss,
    run: Run,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Flow, TrainReport)> {
    let (train, val) = (run.train, run.val);
    let (s, t) = (&student.cfg, &teacher.cfg);
    if s.kind != FlowKind::Iaf
        || t.kind != FlowKind::Maf
        || (s.features, s.context, s.blocks) != (t.features, t.context, t.blocks)
    {
        return Err(NnError::Config(
            "distillation needs an IAF student with the MAF teacher's features, context and blocks"
                .into(),
        ));
    }
    if !(terms.x_pass || terms.z_pass) {
        return Err(NnError::Config(
            "distillation needs the x-pass or the z-pass".into(),
        ));
    }
    if !(terms.beta.is_finite() && (0.0..=1.0).contains(&terms.beta)) {
        return Err(NnError::Config(format!(
            "distillation beta must be in [0, 1], got {}",
            terms.beta
        )));
    }
    let device = student.device();
    let frozen = teacher.clone().map_net(|n| n.no_grad());
    let fast_teacher = FastFlow::from_flow(teacher);
    let (val_z, _) = fast_teacher.log_prob(&val.x, &val.ctx);
    let d = train.dims().0;
    let (wx, wz) = match (terms.x_pass, terms.z_pass) {
        (true, true) => (terms.beta, 1.0 - terms.beta),
        (x, _) => (x as u8 as f64, !x as u8 as f64),
    };
    let loss = move |f: &Flow, idx: &[usize], rng: &mut ChaCha8Rng| {
        let (x, c) = batch_tensors(train, idx, rng, &device);
        // The z-pass's base samples are drawn after the batch (fixed order of the stream).
        let z = terms.z_pass.then(|| {
            let n = idx.len();
            let zs: Vec<f32> = (0..n * d)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect();
            Tensor::<2>::from_data(TensorData::new(zs, [n, d]), &device)
        });
        let (lx, lz) = distill_terms(f, &frozen, terms, x, c, z);
        match (lx, lz) {
            (Some(a), Some(b)) => a * wx + b * wz,
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => unreachable!("distillation needs the x-pass or the z-pass"),
        }
    };
    let val_fn = move |f: &Flow| {
        let (xs, _) = FastFlow::from_flow(f).sample_from_base(&val_z, &val.ctx);
        let n = val.x.len() / d.max(1);
        xs.iter()
            .zip(&val.x)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / n.max(1) as f64
    };
    fit_flow(student, run, loss, val_fn, progress)
}

/// Saves the flow's weights as safetensors (its configuration and its permutations in the
/// metadata), atomically.
pub fn save_flow(flow: &Flow, path: &Path) -> Result<()> {
    let cfg = serde_json::to_string(&flow.cfg).map_err(|e| NnError::format(path, e))?;
    // The permutations between blocks, written out (caloforge derives them from the config's
    // seed) so that other tools (the PyTorch parity scripts) can rebuild the flow.
    let perms =
        serde_json::to_string(&flow.cfg.permutations()).map_err(|e| NnError::format(path, e))?;
    let store = SafetensorsStore::from_bytes(None)
        .metadata("caloforge_flow_config", cfg)
        .metadata("caloforge_flow_permutations", perms);
    crate::weights::save(&flow.net.valid(), store, path)
}

/// Loads a flow saved by [`save_flow`] with configuration `cfg` onto `device` (weights that
/// do not fit the flow, or are not finite, are refused with the file named).
pub fn load_flow(path: &Path, cfg: &FlowConfig, device: &Device) -> Result<Flow> {
    let flow = Flow::new(cfg.clone(), device);
    let net = crate::weights::load(flow.net.clone(), path, "this flow")?;
    Ok(flow.map_net(|_| net))
}

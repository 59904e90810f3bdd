//! The one training loop of caloforge: every model (flows, students, diffusion) trains through
//! [`fit`].
//!
//! It gives every model the same guarantees: mini-batches from a per-epoch shuffle, Adam with a
//! learning-rate schedule indexed by optimizer step (OneCycle also cycles β1, as PyTorch's
//! OneCycleLR does; see [`crate::optim`]) and optional global gradient-norm clipping,
//! validation every N steps (or every epoch) with the best weights kept, a wall-clock deadline,
//! progress callbacks, and **periodic checkpoints** written atomically to one file: the current
//! weights, the optimizer state (Adam moments and step counter, as burn records that keep the
//! parameter ids), the best weights, the step, epoch and position in the epoch, the validation
//! history and the running training-loss sums. Randomness is a function of the step: the
//! shuffle of epoch e uses stream `u64::MAX − e` of the seed and the mini-batch at step s
//! (noise, diffusion times) stream s, so a run resumed from any checkpoint continues
//! bit-identically to an uninterrupted one at the same thread count.
//!
//! [`request_stop`] (the CLI's Ctrl-C/SIGTERM handler calls it) makes every running loop write a
//! checkpoint and return after the current step.
//!
//! Why not burn-train's `Learner`: it drives epochs over a `DataLoader` with a `TrainStep` that
//! gets no RNG (our losses draw noise per batch), checkpoints per epoch only, and has no
//! wall-clock budget or step-level validation; distillation against a frozen teacher does not fit
//! its step either. Its checkpointer stores exactly what ours does (module and optimizer
//! records), so this loop reuses burn's records and none of the framework.

use crate::optim::{Adamax, Beta1, CycledAdam};
use crate::schedule::LrSchedule;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Tensor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Errors of training and of checkpoint and weight files.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be (corrupt, another model's, wrong shape).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

impl NnError {
    /// A format error of `path`.
    pub fn format(path: &Path, msg: impl std::fmt::Display) -> Self {
        NnError::Format {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
    /// An IO error of `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NnError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<caloforge_core::CoreError> for NnError {
    fn from(e: caloforge_core::CoreError) -> Self {
        NnError::Config(e.to_string())
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, NnError>;

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every running training loop to write a checkpoint and stop after its current step.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Withdraws a stop request (before starting new training in the same process).
pub fn clear_stop() {
    STOP.store(false, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Gradient-norm clip (none if absent): of each parameter tensor (burn's clipping, as
    /// Keras' per-tensor `clip_by_norm`) or of all gradients together (PyTorch's
    /// `clip_grad_norm_`), as `clip` says.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// What `grad_clip` bounds: `tensor` (default) or `global`.
    #[serde(default, skip_serializing_if = "ClipMode::is_default")]
    pub clip: ClipMode,
    /// Decoupled weight decay of the `ranger` optimizer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// Decay of an exponential moving average of the weights, updated after every step: with
    /// it, the best and last weights that [`fit`] returns are the average's (validation still
    /// runs on the trained weights, as CaloScore v2's reference).
    #[serde(default)]
    pub ema: Option<f64>,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerKind,
}

/// Which optimizer [`fit`] steps with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// PyTorch's Adam (ε = 1e-8), β1 cycled by a OneCycle schedule.
    #[default]
    Adam,
    /// Keras' Adamax (ε = 1e-7).
    Adamax,
    /// RangerLite (RAdam with decoupled weight decay, then Lookahead; AllShowers).
    Ranger,
}

/// What [`TrainSettings::grad_clip`] bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipMode {
    /// The norm of each parameter tensor's gradient.
    #[default]
    Tensor,
    /// The norm of all gradients together.
    Global,
}

impl ClipMode {
    fn is_default(&self) -> bool {
        *self == ClipMode::Tensor
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            batch_size: 32,
            epochs: 1,
            schedule: LrSchedule::Constant { lr: 1e-3 },
            eval_every: 0,
            grad_clip: None,
            clip: ClipMode::Tensor,
            weight_decay: 0.0,
            ema: None,
            optimizer: OptimizerKind::Adam,
        }
    }
}

impl TrainSettings {
    /// Checks the settings (names the bad key).
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: &str| Err(NnError::Config(format!("{what}: {m}")));
        if self.batch_size == 0 {
            return bad("batch_size must be > 0");
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("grad_clip must be a positive number");
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be ≥ 0");
        }
        if self.weight_decay > 0.0 && self.optimizer != OptimizerKind::Ranger {
            return bad("weight_decay applies to the ranger optimizer only");
        }
        if let Some(d) = self.ema {
            if !(d > 0.0 && d < 1.0) {
                return bad("ema must be a decay in (0, 1)");
            }
        }
        self.schedule
            .validate()
            .map_err(|m| NnError::Config(format!("{what}: schedule: {m}")))
    }
}

/// Reads a JSON null (how serde_json writes NaN) back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One validation point.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Optimizer steps done (including those before a resume).
    pub steps: usize,
    /// Epochs completed (including those before a resume).
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
    /// Whether a stop request (Ctrl-C/SIGTERM) ended the run.
    #[serde(default)]
    pub interrupted: bool,
    /// Training wall time (s), summed over resumed runs.
    pub seconds: f64,
}

impl TrainReport {
    /// Whether the planned epochs were all done.
    pub fn finished(&self) -> bool {
        !self.stopped_at_budget && !self.interrupted
    }
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

/// Wall time per optimizer step of a run, from its progress reports: pass every [`Progress`]
/// to [`StepClock::tick`]. The first step (allocations, first-touch) is not counted.
#[derive(Debug, Default)]
pub struct StepClock {
    times: Vec<Instant>,
}

impl StepClock {
    /// Records the end of a step.
    pub fn tick(&mut self, p: &Progress) {
        if p.step > 0 {
            self.times.push(Instant::now());
        }
    }
    /// Mean seconds per step after the first, and the number of steps timed.
    pub fn seconds_per_step(&self) -> Option<(f64, usize)> {
        let n = self.times.len().checked_sub(1).filter(|&n| n > 0)?;
        let dt = self.times[n].duration_since(self.times[0]).as_secs_f64();
        Some((dt / n as f64, n))
    }
}

impl TrainSettings {
    /// Settings that time `steps` optimizer steps of batch `batch_size` on `steps` batches of
    /// data (one epoch, constant learning rate, no validation until the end).
    pub fn timing(batch_size: usize, lr: f64) -> Self {
        TrainSettings {
            batch_size,
            epochs: 1,
            schedule: crate::schedule::LrSchedule::Constant { lr },
            eval_every: usize::MAX,
            grad_clip: None,
            ..Default::default()
        }
    }
}

/// What is trained: the loss of a mini-batch and the validation loss.
pub trait Task<M> {
    /// Training samples.
    fn n_train(&self) -> usize;
    /// Loss of the mini-batch of samples `batch` (draws its noise from `rng`).
    fn loss(&mut self, model: &M, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1>;
    /// Validation loss (deterministic).
    fn validate(&mut self, model: &M) -> f64;
}

/// Where and how often checkpoints are written.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Interval between periodic checkpoints (zero: after every step). A checkpoint is also
    /// written when the run ends, whatever the reason.
    pub every: Duration,
    /// Continue from the checkpoint at `path` when it exists.
    pub resume: bool,
}

/// How a run is controlled: seed, deadline, checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Seed of shuffling and per-step randomness.
    pub seed: u64,
    /// Wall-clock deadline.
    pub deadline: Option<Instant>,
    /// Checkpoints (none: nothing is written).
    pub checkpoint: Option<Checkpointing>,
    /// A stop flag of its own (none: the process-wide one of [`request_stop`]).
    pub stop: Option<std::sync::Arc<AtomicBool>>,
}

impl Control {
    fn stop_requested(&self) -> bool {
        match &self.stop {
            Some(f) => f.load(Ordering::SeqCst),
            None => stop_requested(),
        }
    }
}

/// Loop position and history saved in a checkpoint (floats as their bit patterns, so that a
/// resumed run continues bit-identically).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LoopState {
    step: usize,
    epoch: usize,
    batch_in_epoch: usize,
    #[serde(with = "f64_bits")]
    loss_sum: f64,
    loss_n: usize,
    #[serde(with = "f64_bits")]
    best_val: f64,
    best_step: usize,
    #[serde(with = "history_bits")]
    history: Vec<ValPoint>,
    seconds: f64,
    batch_size: usize,
    n_train: usize,
    seed: u64,
    /// Whether the checkpoint holds EMA weights (a fifth part).
    #[serde(default)]
    has_ema: bool,
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

mod history_bits {
    use super::ValPoint;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(h: &[ValPoint], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(usize, u64, u64)> = h
            .iter()
            .map(|p| (p.step, p.train_loss.to_bits(), p.val_loss.to_bits()))
            .collect();
        v.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ValPoint>, D::Error> {
        let v = Vec::<(usize, u64, u64)>::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(step, t, l)| ValPoint {
                step,
                train_loss: f64::from_bits(t),
                val_loss: f64::from_bits(l),
            })
            .collect())
    }
}

const MAGIC: &[u8; 8] = b"CFCKPT1\n";

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
}

fn take<'a>(buf: &mut &'a [u8], path: &Path) -> Result<&'a [u8]> {
    let bad = || NnError::format(path, "truncated or corrupt checkpoint");
    if buf.len() < 8 {
        return Err(bad());
    }
    let n = u64::from_le_bytes(buf[..8].try_into().map_err(|_| bad())?) as usize;
    if buf.len() - 8 < n {
        return Err(bad());
    }
    let part = &buf[8..8 + n];
    *buf = &buf[8 + n..];
    Ok(part)
}

fn record_bytes<M: Module>(m: &M, path: &Path) -> Result<Bytes> {
    m.clone()
        .into_record()
        .into_bytes()
        .map_err(|e| NnError::format(path, format!("cannot encode weights: {e}")))
}

fn from_record<M: Module>(m: M, bytes: &[u8], path: &Path) -> Result<M> {
    let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| NnError::format(path, format!("corrupt weights in checkpoint: {e}")))?;
    m.try_load_record(rec)
        .map_err(|e| NnError::format(path, format!("checkpoint of another network: {e}")))
}

fn write_checkpoint<M: Module>(
    path: &Path,
    state: &LoopState,
    model: &M,
    best: &M,
    optim: &ModuleOptimizer,
    ema: Option<&M>,
) -> Result<()> {
    let json = serde_json::to_vec(state).map_err(|e| NnError::format(path, e))?;
    let m = record_bytes(model, path)?;
    let b = record_bytes(best, path)?;
    let o = optim
        .into_bytes()
        .map_err(|e| NnError::format(path, format!("cannot encode optimizer state: {e}")))?;
    let mut out = Vec::with_capacity(64 + json.len() + m.len() + b.len() + o.len());
    out.extend_from_slice(MAGIC);
    put(&mut out, &json);
    put(&mut out, &m);
    put(&mut out, &b);
    put(&mut out, &o);
    if let Some(e) = ema {
        put(&mut out, &record_bytes(e, path)?);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    }
    caloforge_core::io::write_bytes_atomic(path, &out)?;
    Ok(())
}

fn read_checkpoint<M: Module>(
    path: &Path,
    model: M,
    optim: ModuleOptimizer,
) -> Result<(LoopState, M, M, ModuleOptimizer, Option<M>)> {
    let all = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    if all.len() < 8 || &all[..8] != MAGIC {
        return Err(NnError::format(path, "not a caloforge checkpoint"));
    }
    let mut buf = &all[8..];
    let json = take(&mut buf, path)?;
    let state: LoopState = serde_json::from_slice(json)
        .map_err(|e| NnError::format(path, format!("corrupt checkpoint state: {e}")))?;
    let m = take(&mut buf, path)?;
    let b = take(&mut buf, path)?;
    let o = take(&mut buf, path)?;
    let ema = if state.has_ema {
        Some(from_record(model.clone(), take(&mut buf, path)?, path)?)
    } else {
        None
    };
    let cur = from_record(model.clone(), m, path)?;
    let best = from_record(model, b, path)?;
    let optim = optim
        .from_bytes(Bytes::from_bytes_vec(o.to_vec()))
        .map_err(|e| NnError::format(path, format!("corrupt optimizer state: {e}")))?;
    Ok((state, cur, best, optim, ema))
}

/// The shuffle of epoch `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut caloforge_core::rng::shower_rng(
        seed,
        u64::MAX - epoch as u64,
    ));
    order
}

/// The outcome of [`fit`]: the best weights, the weights at the end, and the report.
pub struct Fitted<M> {
    /// Weights with the best validation loss.
    pub best: M,
    /// Weights after the last step (with an EMA: the average's, as `best`).
    pub last: M,
    /// What the run did.
    pub report: TrainReport,
}

/// Trains `model` on `task` with `settings` (Adam, ε = 1e-8). See the module documentation.
pub fn fit<M: Module, T: Task<M>>(
    model: M,
    task: &mut T,
    settings: &TrainSettings,
    control: &Control,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted<M>> {
    let t0 = Instant::now();
    let n_train = task.n_train();
    if n_train == 0 {
        return Err(NnError::Config("no training samples".into()));
    }
    let bs = settings.batch_size.clamp(1, n_train);
    let steps_per_epoch = n_train.div_ceil(bs);
    let total = steps_per_epoch * settings.epochs;
    let eval_every = if settings.eval_every == 0 {
        steps_per_epoch
    } else {
        settings.eval_every
    };
    // Adam (ε = 1e-8) whose β1 the schedule may cycle (OneCycle, as PyTorch's OneCycleLR).
    let beta1 = Beta1::new(crate::schedule::DEFAULT_BETA1);
    let tensor_clip = settings
        .grad_clip
        .filter(|_| settings.clip == ClipMode::Tensor);
    let global_clip = settings
        .grad_clip
        .filter(|_| settings.clip == ClipMode::Global);
    let adam = || match settings.optimizer {
        OptimizerKind::Adam => {
            CycledAdam::new(beta1.clone(), 1e-8).into_module_optimizer(tensor_clip)
        }
        OptimizerKind::Adamax => Adamax::default().into_module_optimizer(tensor_clip),
        OptimizerKind::Ranger => crate::optim::Ranger::new(settings.weight_decay)
            .into_module_optimizer_clipped(tensor_clip),
    };
    let ckpt = control.checkpoint.as_ref();
    let resume_from = ckpt.filter(|c| c.resume && c.path.exists());
    let (mut st, mut model, mut best, mut optim, mut ema) = match resume_from {
        Some(c) => {
            let (st, m, b, o, e) = read_checkpoint(&c.path, model, adam())?;
            if e.is_some() != settings.ema.is_some() {
                return Err(NnError::format(
                    &c.path,
                    "checkpoint of a run with a different EMA setting (ema)",
                ));
            }
            if st.seed != control.seed {
                return Err(NnError::format(
                    &c.path,
                    format!(
                        "checkpoint of a run with seed {}, not {} (resume with the same --seed)",
                        st.seed, control.seed
                    ),
                ));
            }
            if st.n_train != n_train || st.batch_size != bs {
                return Err(NnError::format(
                    &c.path,
                    format!(
                        "checkpoint of a run with {} training samples in batches of {}, not {n_train} in {bs}",
                        st.n_train, st.batch_size
                    ),
                ));
            }
            (st, m, b, o, e)
        }
        None => {
            let v = task.validate(&model);
            let st = LoopState {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                loss_sum: 0.0,
                loss_n: 0,
                best_val: v,
                best_step: 0,
                history: vec![ValPoint {
                    step: 0,
                    train_loss: f64::NAN,
                    val_loss: v,
                }],
                seconds: 0.0,
                batch_size: bs,
                n_train,
                seed: control.seed,
                has_ema: settings.ema.is_some(),
            };
            let best = model.clone();
            let ema = settings.ema.map(|_| model.clone());
            (st, model, best, adam(), ema)
        }
    };
    let seconds_before = st.seconds;
    progress(Progress {
        step: st.step,
        total,
        val_loss: st.history.last().map(|p| p.val_loss),
    });
    let mut last_ckpt = Instant::now();
    let (mut stopped_at_budget, mut interrupted) = (false, false);
    let save = |st: &mut LoopState,
                model: &M,
                best: &M,
                optim: &ModuleOptimizer,
                ema: Option<&M>|
     -> Result<()> {
        if let Some(c) = ckpt {
            st.seconds = seconds_before + t0.elapsed().as_secs_f64();
            write_checkpoint(&c.path, st, model, best, optim, ema)?;
        }
        Ok(())
    };
    // The weights kept as "best": the EMA's where there is one.
    let keep = |model: &M, ema: &Option<M>| ema.clone().unwrap_or_else(|| model.clone());
    'epochs: while st.epoch < settings.epochs {
        let order = epoch_order(n_train, control.seed, st.epoch);
        let chunks: Vec<&[usize]> = order.chunks(bs).collect();
        while st.batch_in_epoch < chunks.len() {
            let mut rng = caloforge_core::rng::shower_rng(control.seed, st.step as u64);
            let loss = task.loss(&model, chunks[st.batch_in_epoch], &mut rng);
            let v: f64 = loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            st.loss_sum += v;
            st.loss_n += 1;
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if let Some(c) = global_clip {
                crate::optim::clip_global_norm(&model, &mut grads, c);
            }
            if let Some(b) = settings.schedule.beta1(st.step) {
                beta1.set(b);
            }
            model = optim.step(settings.schedule.lr(st.step), model, grads);
            if let (Some(d), Some(e)) = (settings.ema, ema.take()) {
                ema = Some(crate::optim::ema_update(e, &model, d));
            }
            st.step += 1;
            st.batch_in_epoch += 1;
            if st.batch_in_epoch == chunks.len() {
                st.batch_in_epoch = 0;
                st.epoch += 1;
            }
            let out_of_time = control.deadline.is_some_and(|d| Instant::now() >= d);
            let mut val = None;
            if st.step % eval_every == 0 || out_of_time {
                let v = task.validate(&model);
                st.history.push(ValPoint {
                    step: st.step,
                    train_loss: st.loss_sum / st.loss_n.max(1) as f64,
                    val_loss: v,
                });
                (st.loss_sum, st.loss_n) = (0.0, 0);
                if v < st.best_val || !st.best_val.is_finite() {
                    st.best_val = v;
                    st.best_step = st.step;
                    best = keep(&model, &ema);
                }
                val = Some(v);
            }
            progress(Progress {
                step: st.step,
                total,
                val_loss: val,
            });
            if out_of_time {
                stopped_at_budget = true;
                break 'epochs;
            }
            if control.stop_requested() {
                interrupted = true;
                break 'epochs;
            }
            if ckpt.is_some_and(|c| last_ckpt.elapsed() >= c.every) {
                save(&mut st, &model, &best, &optim, ema.as_ref())?;
                last_ckpt = Instant::now();
            }
            if st.batch_in_epoch == 0 {
                continue 'epochs;
            }
        }
    }
    if !interrupted && st.loss_n > 0 {
        // The end of a run that does not validate at its last step.
        let v = task.validate(&model);
        st.history.push(ValPoint {
            step: st.step,
            train_loss: st.loss_sum / st.loss_n as f64,
            val_loss: v,
        });
        (st.loss_sum, st.loss_n) = (0.0, 0);
        if v < st.best_val {
            st.best_val = v;
            st.best_step = st.step;
            best = keep(&model, &ema);
        }
    }
    save(&mut st, &model, &best, &optim, ema.as_ref())?;
    let report = TrainReport {
        steps: st.step,
        epochs: st.epoch,
        best_val_loss: st.best_val,
        best_step: st.best_step,
        history: st.history.clone(),
        stopped_at_budget,
        interrupted,
        seconds: seconds_before + t0.elapsed().as_secs_f64(),
    };
    Ok(Fitted {
        best,
        last: ema.unwrap_or(model),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{cpu_autodiff, Precision};
    use burn::module::{Module, Param};
    use burn::tensor::{Device, TensorData};
    use rand::Rng;

    #[test]
    fn bad_settings_are_named() {
        let msg = |s: TrainSettings| s.validate("train_x").unwrap_err().to_string();
        let ranger = || TrainSettings {
            optimizer: OptimizerKind::Ranger,
            ..Default::default()
        };
        for wd in [-1.0, f64::NAN, f64::INFINITY] {
            let m = msg(TrainSettings {
                weight_decay: wd,
                ..ranger()
            });
            assert!(m.contains("train_x: weight_decay must be ≥ 0"), "{m}");
        }
        let m = msg(TrainSettings {
            weight_decay: 1e-2,
            ..Default::default()
        });
        assert!(
            m.contains("weight_decay applies to the ranger optimizer only"),
            "{m}"
        );
        for c in [0.0, -0.2, f64::NAN] {
            let m = msg(TrainSettings {
                grad_clip: Some(c),
                clip: ClipMode::Global,
                ..ranger()
            });
            assert!(m.contains("grad_clip must be a positive number"), "{m}");
        }
        assert!(TrainSettings {
            weight_decay: 1e-2,
            grad_clip: Some(0.2),
            clip: ClipMode::Global,
            ..ranger()
        }
        .validate("train_x")
        .is_ok());
        // An unknown clip mode is a parse error naming the accepted ones.
        let e = serde_json::from_str::<ClipMode>("\"sideways\"").unwrap_err();
        assert!(
            e.to_string().contains("expected `tensor` or `global`"),
            "{e}"
        );
        assert_eq!(
            serde_json::from_str::<ClipMode>("\"global\"").unwrap(),
            ClipMode::Global
        );
    }

    /// y = w·x + b fitted to noisy targets: a tiny task with per-step randomness.
    #[derive(Module, Debug)]
    struct Line {
        w: Param<Tensor<1>>,
        b: Param<Tensor<1>>,
    }

    impl Line {
        fn new(device: &Device) -> Self {
            Line {
                w: Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![0.1f32], [1]),
                    device,
                )),
                b: Param::from_tensor(Tensor::from_data(
                    TensorData::new(vec![0.0f32], [1]),
                    device,
                )),
            }
        }
    }

    struct Fit {
        x: Vec<f32>,
        device: Device,
    }

    impl Task<Line> for Fit {
        fn n_train(&self) -> usize {
            self.x.len()
        }
        fn loss(&mut self, m: &Line, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
            let xs: Vec<f32> = batch.iter().map(|&i| self.x[i]).collect();
            let ys: Vec<f32> = xs
                .iter()
                .map(|x| 3.0 * x - 1.0 + 0.1 * rng.random::<f32>())
                .collect();
            let n = xs.len();
            let x = Tensor::<1>::from_data(TensorData::new(xs, [n]), &self.device);
            let y = Tensor::<1>::from_data(TensorData::new(ys, [n]), &self.device);
            let p = x * m.w.val().expand([n]) + m.b.val().expand([n]);
            (p - y).powf_scalar(2.0).mean()
        }
        fn validate(&mut self, m: &Line) -> f64 {
            let w = m.w.val().into_data().iter::<f64>().next().unwrap();
            let b = m.b.val().into_data().iter::<f64>().next().unwrap();
            (w - 3.0).powi(2) + (b + 0.95).powi(2)
        }
    }

    fn weights(m: &Line) -> Vec<f32> {
        let mut v: Vec<f32> = m.w.val().into_data().iter::<f32>().collect();
        v.extend(m.b.val().into_data().iter::<f32>());
        v
    }

    fn settings(epochs: usize) -> TrainSettings {
        TrainSettings {
            batch_size: 8,
            epochs,
            schedule: LrSchedule::Constant { lr: 0.2 },
            eval_every: 5,
            grad_clip: Some(10.0),
            ..Default::default()
        }
    }

    #[test]
    fn learns_and_resumes_bit_identically_from_any_checkpoint() {
        let device = cpu_autodiff(Precision::F32, 3);
        let x: Vec<f32> = (0..40).map(|i| i as f32 / 40.0).collect();
        let dir = tempfile::tempdir().unwrap();
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let ck = |name: &str, resume: bool| Control {
            seed: 9,
            deadline: None,
            checkpoint: Some(Checkpointing {
                path: dir.path().join(name),
                every: Duration::ZERO,
                resume,
            }),
            stop: Some(flag.clone()),
        };
        let mut task = Fit {
            x: x.clone(),
            device: device.clone(),
        };
        // Uninterrupted: 12 epochs.
        let full = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("a", false),
            &mut |_| {},
        )
        .unwrap();
        assert!(full.report.best_val_loss < 0.05, "{:?}", full.report);
        assert_eq!(full.report.steps, 60);
        // 2 epochs, then resumed to 12 (continues schedule, optimizer, randomness).
        fit(
            Line::new(&device),
            &mut task,
            &settings(2),
            &ck("b", false),
            &mut |_| {},
        )
        .unwrap();
        let resumed = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("b", true),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(weights(&resumed.last), weights(&full.last));
        assert_eq!(weights(&resumed.best), weights(&full.best));
        // (Debug text: the first point's training loss is NaN.)
        assert_eq!(
            format!("{:?}", resumed.report.history),
            format!("{:?}", full.report.history)
        );
        // A stop request mid-epoch: checkpoint written, resumed to the same end.
        flag.store(true, Ordering::SeqCst);
        let stopped = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("c", false),
            &mut |_| {},
        )
        .unwrap();
        flag.store(false, Ordering::SeqCst);
        assert!(stopped.report.interrupted);
        assert_eq!(stopped.report.steps, 1);
        let resumed = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("c", true),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(weights(&resumed.last), weights(&full.last));
        // (Debug text: the first point's training loss is NaN.)
        assert_eq!(
            format!("{:?}", resumed.report.history),
            format!("{:?}", full.report.history)
        );
        // A corrupt checkpoint is one clear error naming the file.
        std::fs::write(dir.path().join("d"), b"CFCKPT1\n\x05").unwrap();
        let e = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("d", true),
            &mut |_| {},
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("corrupt") && e.contains('d'), "{e}");
    }

    /// With an EMA and Adamax: the returned weights are the average's (they lag the trained
    /// weights), a run resumed from a checkpoint ends bit-identically, and a checkpoint without
    /// EMA weights is refused by a run that wants them.
    #[test]
    fn ema_with_adamax_resumes_bit_identically() {
        let device = cpu_autodiff(Precision::F32, 3);
        let x: Vec<f32> = (0..40).map(|i| i as f32 / 40.0).collect();
        let dir = tempfile::tempdir().unwrap();
        let ck = |name: &str, resume: bool| Control {
            seed: 4,
            checkpoint: Some(Checkpointing {
                path: dir.path().join(name),
                every: Duration::ZERO,
                resume,
            }),
            ..Default::default()
        };
        let ema = |epochs| TrainSettings {
            ema: Some(0.8),
            optimizer: OptimizerKind::Adamax,
            schedule: LrSchedule::Cosine {
                lr: 0.3,
                decay_steps: 60,
            },
            ..settings(epochs)
        };
        let mut task = Fit {
            x,
            device: device.clone(),
        };
        let full = fit(
            Line::new(&device),
            &mut task,
            &ema(12),
            &ck("a", false),
            &mut |_| {},
        )
        .unwrap();
        assert!(
            full.report.best_val_loss < 0.1 * full.report.history[0].val_loss,
            "{:?}",
            full.report
        );
        let plain = fit(
            Line::new(&device),
            &mut task,
            &settings(12),
            &ck("p", false),
            &mut |_| {},
        )
        .unwrap();
        assert_ne!(weights(&full.last), weights(&plain.last));
        fit(
            Line::new(&device),
            &mut task,
            &ema(3),
            &ck("b", false),
            &mut |_| {},
        )
        .unwrap();
        let resumed = fit(
            Line::new(&device),
            &mut task,
            &ema(12),
            &ck("b", true),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(weights(&resumed.last), weights(&full.last));
        assert_eq!(weights(&resumed.best), weights(&full.best));
        let e = fit(
            Line::new(&device),
            &mut task,
            &ema(12),
            &ck("p", true),
            &mut |_| {},
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("EMA"), "{e}");
    }
}

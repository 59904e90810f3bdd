//! CaloScore v2 (Mikuni & Nachman, "CaloScore v2: single-shot calorimeter shower simulation
//! with diffusion models", arXiv:2308.03847; reference `ViniciusMikuni/CaloScoreV2`;
//! `docs/design/caloscore.md` §2): two v-prediction diffusion models on the cosine log-SNR
//! schedule λ ∈ [−20, 20] (`caloforge_nn::vdiffusion`): one for the 45 layer energies
//! (stick-breaking code, FiLM ResNet) and one for the voxels given the layer energies (U-Net,
//! `caloforge_nn::unet::score2`), trained together (one t per shower for both) with an EMA of
//! the weights; generation by deterministic DDIM (512 steps in the paper), layers first; and
//! progressive distillation (each round halves the DDIM steps) from a trained teacher.
//!
//! Preprocessing as the reference (`caloscore::prep`): voxel energies divided by their layer's
//! energy; layer energies stick-break coded (u₀ = ΣE/(MAXDEP·E_inc)); both through a
//! per-dimension min-max → logit(α = 1e-6) → standardisation fitted on the training showers;
//! the condition log10(E/EMIN)/log10(EMAX/EMIN). Generated voxel fractions are renormalised per
//! layer, multiplied by the layer energies, and cut below `cut_mev`.

use crate::calodiffusion::{column, rows, DiffusionCard};
use crate::caloscore::prep::{stick_decode, stick_encode, Normaliser};
use crate::diffusionparts;
use crate::registry::{ModelInfo, StepTiming};
use crate::{
    write_text, DensitySpace, Generator, LikelihoodOptions, ModelError, ModelKind, ModelOption,
    Preset, Progress, Result, SampleOptions, TrainOptions, TrainOutcome,
};
use burn::module::Module;
use burn::store::SafetensorsStore;
use burn::tensor::{Device, Tensor};
use caloforge_core::DatasetKind;
use caloforge_nn::burn;
use caloforge_nn::device::{backend, compute_device, Backend, Precision};
use caloforge_nn::schedule::LrSchedule;
use caloforge_nn::sde::VelocityVjp;
use caloforge_nn::train::{OptimizerKind, Task, TrainSettings};
use caloforge_nn::twin::Twin;
use caloforge_nn::unet::score2::{LayerNet, ScoreV2Config, ScoreV2Nets, VoxelNet, VoxelUNetConfig};
use caloforge_nn::unet::score2_fast::ScoreV2Nets as FastNets;
use caloforge_nn::vdiffusion::{
    ddim_step, ddim_v_sample, distill_target, v_likelihood, v_target, LogSnrCosine,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a distilled student starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudentInit {
    /// From the teacher's (EMA) weights (Salimans & Ho).
    Teacher,
    /// Freshly initialised (the reference's `clone_model`).
    Random,
}

/// Progressive-distillation settings (a distillation preset's `[distill]` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Epochs per round.
    pub epochs: usize,
    /// Initial learning rate of each round (the cosine restarts every round).
    pub lr: f64,
    /// How each round's student starts.
    pub student_init: StudentInit,
}

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaloScore2Config {
    /// Always "caloscore2".
    pub model: String,
    /// Dataset: 2 or 3.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// Embedding width of t, E and the layer energies.
    pub embed: usize,
    /// The voxel U-Net.
    pub unet: VoxelUNetConfig,
    /// Width of the layer model.
    pub mlp: usize,
    /// FiLM blocks of the layer model.
    pub blocks: usize,
    /// Initial learning rate (cosine decay to 0).
    pub lr: f64,
    /// Fraction of the run's steps over which the cosine decays to 0 (the reference: 0.5, as
    /// its two optimizer updates per batch advance Keras' step counter twice).
    pub decay_fraction: f64,
    /// Optimizer (the reference: Adamax).
    pub optimizer: OptimizerKind,
    /// Per-tensor gradient-norm clip (the reference: 1).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// EMA decay of the weights that sample (the reference: 0.999).
    pub ema: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Fraction of showers held out for validation.
    pub validation_fraction: f64,
    /// DDIM steps of generation.
    pub steps: usize,
    /// The log-SNR range.
    pub schedule: LogSnrCosine,
    /// MAXDEP: the largest deposited fraction ΣE/E_inc the code represents.
    pub max_dep: f64,
    /// Energy range (MeV) of the condition log10(E/e_min)/log10(e_max/e_min).
    pub e_min: f64,
    /// See `e_min`.
    pub e_max: f64,
    /// Generated voxels below this energy (MeV) are set to 0.
    pub cut_mev: f64,
    /// Progressive distillation (distillation presets only; needs `--teacher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

impl CaloScore2Config {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let err = |m: &str| ModelError::Config(format!("CaloScore v2 configuration: {m}"));
        let c: CaloScore2Config = toml::from_str(text).map_err(|e| err(&e.to_string()))?;
        if c.model != "caloscore2" {
            return Err(err("model must be \"caloscore2\""));
        }
        c.nets().validate().map_err(|m| err(&m))?;
        LrSchedule::Constant { lr: c.lr }
            .validate()
            .map_err(|m| err(&m))?;
        if let Some(g) = c.grad_clip {
            if !(g.is_finite() && g > 0.0) {
                return Err(err("grad_clip must be a positive number"));
            }
        }
        if c.batch_size == 0
            || c.steps == 0
            || !(c.ema > 0.0 && c.ema < 1.0)
            || !(c.decay_fraction > 0.0 && c.decay_fraction <= 1.0)
            || !(c.validation_fraction > 0.0 && c.validation_fraction < 1.0)
            || !(c.max_dep > 0.0 && c.e_min > 0.0 && c.e_max > c.e_min && c.cut_mev >= 0.0)
            || c.schedule.logsnr_min.partial_cmp(&c.schedule.logsnr_max)
                != Some(std::cmp::Ordering::Less)
        {
            return Err(err("need batch_size, steps > 0, 0 < ema < 1, 0 < decay_fraction <= 1, 0 < validation_fraction < 1, max_dep > 0, 0 < e_min < e_max, cut_mev >= 0, schedule.logsnr_min < logsnr_max"));
        }
        if let Some(d) = &c.distill {
            LrSchedule::Constant { lr: d.lr }
                .validate()
                .map_err(|m| err(&format!("distill: {m}")))?;
        }
        Ok(c)
    }

    /// Dataset 1 (a vector of voxels, layers of different sizes) rather than 2 or 3 (a grid).
    fn one_d(&self) -> bool {
        self.dataset.regular_grid().is_none()
    }

    /// The grid: (z, α, r), or dataset 1's voxels along z.
    fn shape(&self) -> [usize; 3] {
        self.dataset
            .regular_grid()
            .unwrap_or([self.dataset.n_voxels(), 1, 1])
    }

    /// Voxels of each calorimeter layer, in order.
    pub fn layer_sizes(&self) -> Vec<usize> {
        match self.dataset.regular_grid() {
            Some([z, a, r]) => vec![a * r; z],
            None => self
                .dataset
                .geometry(None)
                .expect("embedded binning parses")
                .layer_sizes(),
        }
    }

    /// The number of layer energies.
    fn layers(&self) -> usize {
        self.layer_sizes().len()
    }

    fn nets(&self) -> ScoreV2Config {
        let one_d = self.one_d();
        ScoreV2Config {
            shape: self.shape(),
            layers: self.layers(),
            embed: self.embed,
            unet: self.unet.clone(),
            mlp: self.mlp,
            blocks: self.blocks,
            kernel: if one_d { [3, 1, 1] } else { [3; 3] },
            pool: if one_d { [2, 1, 1] } else { [2; 3] },
            layer_norm: one_d,
        }
    }

    /// The energy condition of incident energy `e` (MeV).
    fn condition(&self, e: f64) -> f32 {
        ((e / self.e_min).log10() / (self.e_max / self.e_min).log10()) as f32
    }

    /// Everything that fixes the networks and their data (a student must share it with its
    /// teacher).
    fn architecture(&self) -> CaloScore2Config {
        CaloScore2Config {
            lr: 0.0,
            decay_fraction: 0.0,
            optimizer: OptimizerKind::Adam,
            grad_clip: None,
            ema: 0.0,
            batch_size: 0,
            epochs: 0,
            validation_fraction: 0.0,
            steps: 0,
            cut_mev: 0.0,
            distill: None,
            ..self.clone()
        }
    }

    fn settings(&self, n_train: usize, lr: f64, epochs: usize) -> TrainSettings {
        let total = n_train.div_ceil(self.batch_size.clamp(1, n_train.max(1))) * epochs;
        TrainSettings {
            batch_size: self.batch_size,
            epochs,
            schedule: LrSchedule::Cosine {
                lr,
                decay_steps: ((total as f64 * self.decay_fraction).round() as usize).max(1),
            },
            eval_every: 0,
            grad_clip: self.grad_clip,
            ema: Some(self.ema),
            optimizer: self.optimizer,
            ..TrainSettings::default()
        }
    }
}

/// The fitted preprocessing (`preprocessing.json` of a model directory).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessing {
    /// Normaliser of the stick-breaking layer codes.
    pub layer: Normaliser,
    /// Normaliser of the voxel fractions of their layer's energy.
    pub voxel: Normaliser,
}

/// What a distilled student records (`distilled.json` of its directory; its config.toml is the
/// distillation configuration it was trained with).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distilled {
    /// The student's DDIM steps.
    pub steps: usize,
    /// Its teacher's DDIM steps.
    pub teacher_steps: usize,
    /// The teacher directory of the distillation run.
    pub teacher: String,
}

/// A trained CaloScore v2.
pub struct CaloScore2 {
    /// Configuration.
    pub cfg: CaloScore2Config,
    /// Set for a distilled student.
    pub distilled: Option<Distilled>,
    /// Model card.
    pub card: DiffusionCard,
    /// The fitted preprocessing.
    pub prep: Preprocessing,
    nets: ScoreV2Nets,
    device: Device,
    /// The CPU sampling engine, built once on first use.
    fast: std::sync::OnceLock<FastNets>,
    /// Voxels of each layer.
    sizes: Vec<usize>,
}

/// A training file, preprocessed.
struct Prepared {
    e_inc: Vec<f64>,
    /// Conditions.
    c: Vec<f32>,
    /// Normalised layer codes (L per shower).
    xl: Vec<f32>,
    /// Normalised voxel fractions (V per shower).
    xv: Vec<f32>,
    n_train: usize,
    prep: Preprocessing,
}

/// One shower's voxels → its layer energies (`sums`) and, in place, each voxel's fraction of
/// its layer's energy (0 in an empty layer), for layers of `sizes` voxels.
fn to_fractions(row: &mut [f32], sizes: &[usize], sums: &mut [f64]) {
    let mut rest = row;
    for (&n, s) in sizes.iter().zip(sums.iter_mut()) {
        let (lay, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        *s = lay.iter().map(|&x| x as f64).sum();
        for x in lay {
            *x = if *s > 0.0 {
                (*x as f64 / *s) as f32
            } else {
                0.0
            };
        }
    }
}

/// Reads and preprocesses `opts.data` (creating `opts.out`); fits the normalisers on the
/// training showers unless `prep` is given (a student uses its teacher's).
fn prepare(
    cfg: &CaloScore2Config,
    opts: &TrainOptions,
    prep: Option<Preprocessing>,
) -> Result<Prepared> {
    let (e_inc, mut vox, n_train) =
        diffusionparts::read_split(opts, cfg.dataset, cfg.validation_fraction)?;
    let n = e_inc.len();
    let v = cfg.dataset.n_voxels();
    let sizes = cfg.layer_sizes();
    let l = sizes.len();
    let mut u = Vec::with_capacity(n * l);
    let mut sums = vec![0.0; l];
    for (row, &e) in vox.chunks_mut(v).zip(&e_inc) {
        to_fractions(row, &sizes, &mut sums);
        u.extend(stick_encode(&sums, e, cfg.max_dep));
    }
    let prep = prep.unwrap_or_else(|| Preprocessing {
        layer: Normaliser::fit(&u[..n_train * l], l),
        voxel: Normaliser::fit(&vox[..n_train * v], v),
    });
    let xl = u.chunks(l).flat_map(|r| prep.layer.forward(r)).collect();
    let mut buf = vec![0.0f64; v];
    for row in vox.chunks_mut(v) {
        for (b, &x) in buf.iter_mut().zip(row.iter()) {
            *b = x as f64;
        }
        row.copy_from_slice(&prep.voxel.forward(&buf));
    }
    Ok(Prepared {
        c: e_inc.iter().map(|&e| cfg.condition(e)).collect(),
        e_inc,
        xl,
        xv: vox,
        n_train,
        prep,
    })
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// v of the layer network for rows `x` at per-row times `t` and conditions `c`.
fn eval_layer(net: &LayerNet, x: &[f32], t: &[f64], c: &[f32], dev: &Device) -> Vec<f32> {
    let n = t.len();
    let tv = t.iter().map(|&v| v as f32).collect();
    to_vec(net.forward(
        rows(x.to_vec(), n, dev),
        column(tv, dev),
        column(c.to_vec(), dev),
    ))
}

/// v of the voxel network for rows `x` at times `t`, conditions `c`, layer codes `l`.
fn eval_voxel(
    net: &VoxelNet,
    x: &[f32],
    t: &[f64],
    c: &[f32],
    l: &[f32],
    dev: &Device,
) -> Vec<f32> {
    let n = t.len();
    let tv = t.iter().map(|&v| v as f32).collect();
    to_vec(net.forward(
        rows(x.to_vec(), n, dev),
        column(tv, dev),
        column(c.to_vec(), dev),
        rows(l.to_vec(), n, dev),
    ))
}

/// Networks that only evaluate (a teacher, or the generating model): the CPU twins, or burn's
/// networks on the inference device of another backend.
enum EvalNets<'a> {
    Fast(&'a FastNets),
    Burn(Box<ScoreV2Nets>, Device),
}

impl EvalNets<'_> {
    fn layer(&self, x: &[f32], t: &[f64], c: &[f32]) -> Vec<f32> {
        match self {
            EvalNets::Fast(f) => f.layer.forward(x, &f32s(t), c),
            EvalNets::Burn(n, dev) => eval_layer(&n.layer, x, t, c, dev),
        }
    }
    fn voxel(&self, x: &[f32], t: &[f64], c: &[f32], l: &[f32]) -> Vec<f32> {
        match self {
            EvalNets::Fast(f) => f.voxel.forward(x, &f32s(t), c, l),
            EvalNets::Burn(n, dev) => eval_voxel(&n.voxel, x, t, c, l, dev),
        }
    }
}

/// One of the two networks as the probability flow of the likelihood: v̂ and vᵀ ∂v̂/∂x by
/// burn's autodiff.
struct VFlow<'a> {
    nets: &'a ScoreV2Nets,
    dev: &'a Device,
    /// Conditions of the batch's showers.
    c: &'a [f32],
    /// The voxel network's normalised layer codes (L per shower); `None`: the layer network.
    codes: Option<(&'a [f32], usize)>,
}

impl VelocityVjp for VFlow<'_> {
    fn velocity_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        r: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let n = t.len();
        let dev = self.dev;
        let xt = rows(x.to_vec(), n, dev).require_grad();
        let tt = column(f32s(t), dev);
        let ct = column(diffusionparts::gather(self.c, 1, r), dev);
        let out = match self.codes {
            None => self.nets.layer.forward(xt.clone(), tt, ct),
            Some((codes, l)) => {
                let lt = rows(diffusionparts::gather(codes, l, r), n, dev);
                self.nets.voxel.forward(xt.clone(), tt, ct, lt)
            }
        };
        let grads = (out.clone() * rows(v.to_vec(), n, dev)).sum().backward();
        let g: Vec<f32> = xt
            .grad(&grads)
            .map(|g| g.into_data().iter::<f32>().collect())
            .unwrap_or_else(|| vec![0.0; x.len()]);
        (to_vec(out.inner()), g)
    }
}

fn f32s(t: &[f64]) -> Vec<f32> {
    t.iter().map(|&v| v as f32).collect()
}

/// Per row: x_t = α x + σ z and the target v = α z − σ x at the row's (α, σ).
fn noised(x: &[f32], z: &[f32], ab: &[(f64, f64)]) -> (Vec<f32>, Vec<f32>) {
    let d = x.len() / ab.len().max(1);
    let mut xt = Vec::with_capacity(x.len());
    let mut tg = Vec::with_capacity(x.len());
    for (k, &(a, s)) in ab.iter().enumerate() {
        let (xr, zr) = (&x[k * d..(k + 1) * d], &z[k * d..(k + 1) * d]);
        xt.extend(
            xr.iter()
                .zip(zr)
                .map(|(&xv, &zv)| (a * xv as f64 + s * zv as f64) as f32),
        );
        tg.extend(v_target(xr, zr, a, s));
    }
    (xt, tg)
}

fn mse(out: Tensor<2>, target: Vec<f32>, n: usize, dev: &Device) -> Tensor<1> {
    (out - rows(target, n, dev)).powf_scalar(2.0).mean()
}

/// One batch of the joint loss: inputs x_t of both models at times `t`, their targets.
struct Batch {
    t: Vec<f64>,
    c: Vec<f32>,
    /// Clean layer codes (the voxel model's condition).
    l: Vec<f32>,
    xl: Vec<f32>,
    tl: Vec<f32>,
    xv: Vec<f32>,
    tv: Vec<f32>,
}

impl Batch {
    /// mean((v_layer − target)²) + mean((v_voxel − target)²).
    fn loss(&self, nets: &ScoreV2Nets, dev: &Device) -> Tensor<1> {
        let n = self.t.len();
        let tt = column(self.t.iter().map(|&v| v as f32).collect(), dev);
        let cc = column(self.c.clone(), dev);
        let ol = nets
            .layer
            .forward(rows(self.xl.clone(), n, dev), tt.clone(), cc.clone());
        let ov = nets.voxel.forward(
            rows(self.xv.clone(), n, dev),
            tt,
            cc,
            rows(self.l.clone(), n, dev),
        );
        mse(ol, self.tl.clone(), n, dev) + mse(ov, self.tv.clone(), n, dev)
    }
}

/// Fixed or per-step random draws of a batch: times (or distillation step indices) and noise.
struct Draws {
    /// U[0, 1) (base training) or the step index i (distillation), per shower.
    t: Vec<f64>,
    zl: Vec<f32>,
    zv: Vec<f32>,
}

fn draw(n: usize, l: usize, v: usize, students: Option<usize>, rng: &mut ChaCha8Rng) -> Draws {
    let t = (0..n)
        .map(|_| match students {
            Some(ns) => rng.random_range(0..ns) as f64,
            None => rng.random::<f64>(),
        })
        .collect();
    let zl = (0..n * l).map(|_| rng.sample(StandardNormal)).collect();
    let zv = (0..n * v).map(|_| rng.sample(StandardNormal)).collect();
    Draws { t, zl, zv }
}

/// The training task: the v-loss of both models (base training), or the progressive
/// distillation loss against a teacher with `student_steps` steps.
struct V2Task<'a> {
    cfg: &'a CaloScore2Config,
    p: &'a Prepared,
    device: Device,
    /// (teacher networks, student DDIM steps).
    teacher: Option<(EvalNets<'a>, usize)>,
    /// The validation batches, built once (fixed draws; distillation: fixed teacher targets).
    val: Vec<Batch>,
    /// Layer codes and voxels per shower.
    dims: [usize; 2],
}

impl<'a> V2Task<'a> {
    fn new(
        cfg: &'a CaloScore2Config,
        p: &'a Prepared,
        seed: u64,
        teacher: Option<(EvalNets<'a>, usize)>,
        device: &Device,
    ) -> Self {
        let mut me = V2Task {
            cfg,
            p,
            device: device.clone(),
            teacher,
            val: Vec::new(),
            dims: [cfg.layers(), cfg.dataset.n_voxels()],
        };
        let n = p.e_inc.len();
        let idx: Vec<usize> = (p.n_train..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let [l, v] = me.dims;
        let d = draw(idx.len(), l, v, me.teacher.as_ref().map(|t| t.1), &mut rng);
        let bs = cfg.batch_size.max(1);
        me.val = idx
            .chunks(bs)
            .enumerate()
            .map(|(k, rows_)| {
                let o = k * bs;
                let m = rows_.len();
                let dk = Draws {
                    t: d.t[o..o + m].to_vec(),
                    zl: d.zl[o * l..(o + m) * l].to_vec(),
                    zv: d.zv[o * v..(o + m) * v].to_vec(),
                };
                me.batch(rows_, &dk)
            })
            .collect();
        me
    }

    fn batch(&self, idx: &[usize], d: &Draws) -> Batch {
        let [l, v] = self.dims;
        let c = diffusionparts::gather(&self.p.c, 1, idx);
        let xl0 = diffusionparts::gather(&self.p.xl, l, idx);
        let xv0 = diffusionparts::gather(&self.p.xv, v, idx);
        let sched = self.cfg.schedule;
        match &self.teacher {
            None => {
                let ab: Vec<(f64, f64)> = d.t.iter().map(|&t| sched.alpha_sigma(t)).collect();
                let (xl, tl) = noised(&xl0, &d.zl, &ab);
                let (xv, tv) = noised(&xv0, &d.zv, &ab);
                Batch {
                    t: d.t.clone(),
                    c,
                    l: xl0,
                    xl,
                    tl,
                    xv,
                    tv,
                }
            }
            Some((teacher, ns)) => {
                let ns = *ns as f64;
                let u: Vec<f64> = d.t.iter().map(|&i| (i + 1.0) / ns).collect();
                let mid: Vec<f64> = u.iter().map(|&x| x - 0.5 / ns).collect();
                let s: Vec<f64> = u.iter().map(|&x| x - 1.0 / ns).collect();
                let ab_u: Vec<(f64, f64)> = u.iter().map(|&x| sched.alpha_sigma(x)).collect();
                let (zl, _) = noised(&xl0, &d.zl, &ab_u);
                let (zv, _) = noised(&xv0, &d.zv, &ab_u);
                let target = |z: &[f32], f: &VFn| -> Vec<f32> {
                    let dd = z.len() / u.len();
                    let v1 = f(z, &u);
                    let (zm, _) = per_row_step(z, &v1, &u, &mid, &sched, dd);
                    let v2 = f(&zm, &mid);
                    let (zs, xs) = per_row_step(&zm, &v2, &mid, &s, &sched, dd);
                    let mut out = Vec::with_capacity(z.len());
                    for k in 0..u.len() {
                        let r = k * dd..(k + 1) * dd;
                        let last = (d.t[k] == 0.0).then(|| &xs[r.clone()]);
                        out.extend(distill_target(
                            &z[r.clone()],
                            &zs[r],
                            sched.alpha_sigma(u[k]),
                            sched.alpha_sigma(s[k]),
                            last,
                        ));
                    }
                    out
                };
                let tl = target(&zl, &|x, t| teacher.layer(x, t, &c));
                let tv = target(&zv, &|x, t| teacher.voxel(x, t, &c, &xl0));
                Batch {
                    t: u,
                    c,
                    l: xl0,
                    xl: zl,
                    tl,
                    xv: zv,
                    tv,
                }
            }
        }
    }
}

/// A network's v of rows at per-row times.
type VFn<'a> = dyn Fn(&[f32], &[f64]) -> Vec<f32> + 'a;

/// One DDIM move per row from its time `from[k]` to `to[k]` (rows of `d` values).
fn per_row_step(
    z: &[f32],
    v: &[f32],
    from: &[f64],
    to: &[f64],
    sched: &LogSnrCosine,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut zn = Vec::with_capacity(z.len());
    let mut xh = Vec::with_capacity(z.len());
    for k in 0..from.len() {
        let r = k * d..(k + 1) * d;
        let (a, b) = ddim_step(
            &z[r.clone()],
            &v[r],
            sched.alpha_sigma(from[k]),
            sched.alpha_sigma(to[k]),
        );
        zn.extend(a);
        xh.extend(b);
    }
    (zn, xh)
}

impl Task<ScoreV2Nets> for V2Task<'_> {
    fn n_train(&self) -> usize {
        self.p.n_train
    }
    fn loss(&mut self, nets: &ScoreV2Nets, idx: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let [l, v] = self.dims;
        let d = draw(idx.len(), l, v, self.teacher.as_ref().map(|t| t.1), rng);
        self.batch(idx, &d).loss(nets, &self.device)
    }
    fn validate(&mut self, nets: &ScoreV2Nets) -> f64 {
        let valid = nets.valid();
        let dev = self.device.clone().inner();
        let bs = self.cfg.batch_size.max(1);
        // The validation batches were built in the chunks validation_loss walks.
        diffusionparts::validation_loss(self.p.n_train, self.p.e_inc.len(), bs, |_, off| {
            self.val[off / bs]
                .loss(&valid, &dev)
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN)
        })
    }
}

impl CaloScore2 {
    /// A model with freshly initialised weights and an identity-like preprocessing (for
    /// timing).
    pub fn untrained(cfg: &CaloScore2Config, seed: u64) -> Result<Self> {
        let device = compute_device(Precision::F32, seed);
        let nets = ScoreV2Nets::new(&cfg.nets(), &device);
        let [l, v] = [cfg.layers(), cfg.dataset.n_voxels()];
        let unit = |d: usize| Normaliser {
            min: vec![0.0; d],
            max: vec![1.0; d],
            mean: vec![0.0; d],
            std: vec![1.0; d],
        };
        Ok(CaloScore2 {
            card: DiffusionCard::of("caloscore2", nets.num_params()),
            cfg: cfg.clone(),
            distilled: None,
            prep: Preprocessing {
                layer: unit(l),
                voxel: unit(v),
            },
            nets,
            device,
            fast: std::sync::OnceLock::new(),
            sizes: cfg.layer_sizes(),
        })
    }

    /// Generates one shower per energy with `steps` DDIM steps (default: the configuration's).
    pub fn sample_with(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        steps: Option<usize>,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        let steps = steps.unwrap_or(self.steps());
        if steps == 0 {
            return Err(ModelError::Config("--steps must be > 0".into()));
        }
        let [l, v] = [self.sizes.len(), self.cfg.dataset.n_voxels()];
        let nets = self.eval_nets();
        let sched = self.cfg.schedule;
        let mut out = Vec::with_capacity(energies.len() * v);
        progress.start("generate", "generate", energies.len() as u64);
        let batch = batch.max(1);
        for (ci, chunk) in energies.chunks(batch).enumerate() {
            let mut rngs: Vec<ChaCha8Rng> = (0..chunk.len())
                .map(|j| crate::shower_rng(seed, first + (ci * batch + j) as u64))
                .collect();
            let c: Vec<f32> = chunk.iter().map(|&e| self.cfg.condition(e)).collect();
            let xl = ddim_v_sample(&sched, l, steps, &mut rngs, &mut |x, t, r| {
                nets.layer(x, t, &diffusionparts::gather(&c, 1, r))
            });
            let xv = ddim_v_sample(&sched, v, steps, &mut rngs, &mut |x, t, r| {
                nets.voxel(
                    x,
                    t,
                    &diffusionparts::gather(&c, 1, r),
                    &diffusionparts::gather(&xl, l, r),
                )
            });
            for (k, &e) in chunk.iter().enumerate() {
                out.extend(self.decode(&xl[k * l..(k + 1) * l], &xv[k * v..(k + 1) * v], e));
            }
            progress.set("generate", (ci * batch + chunk.len()) as u64, None);
        }
        progress.finish("generate");
        Ok(out)
    }

    /// Its networks for evaluation (generating, or teaching a student): on the CPU the
    /// plain-Rust twins on the same weights (tested equal to burn's forward), built once.
    fn eval_nets(&self) -> EvalNets<'_> {
        if backend() == Backend::Cpu {
            EvalNets::Fast(self.fast.get_or_init(|| self.nets.valid().twin()))
        } else {
            EvalNets::Burn(Box::new(self.nets.valid()), self.device.clone().inner())
        }
    }

    /// The DDIM steps it generates with by default (a distilled student's own).
    pub fn steps(&self) -> usize {
        self.distilled.as_ref().map_or(self.cfg.steps, |d| d.steps)
    }

    /// A shower (MeV) from normalised layer codes `xl` and voxel fractions `xv` at incident
    /// energy `e`.
    fn decode(&self, xl: &[f32], xv: &[f32], e: f64) -> Vec<f32> {
        let layers = stick_decode(&self.prep.layer.inverse(xl), e, self.cfg.max_dep);
        let f = self.prep.voxel.inverse(xv);
        let mut out = Vec::with_capacity(f.len());
        let mut off = 0;
        for (&n, &el) in self.sizes.iter().zip(&layers) {
            let fl = &f[off..off + n];
            off += n;
            let s: f64 = fl.iter().sum();
            out.extend(fl.iter().map(|&x| {
                let y = if s > 0.0 { x / s * el } else { 0.0 };
                if y < self.cfg.cut_mev {
                    0.0
                } else {
                    y as f32
                }
            }));
        }
        out
    }

    /// Normalised layer codes and voxel fractions of `showers` (MeV, `energies.len()` rows),
    /// with the log-Jacobian of each shower's normalisation (see [`Normaliser::log_jacobian`]).
    fn encode(&self, energies: &[f64], showers: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let v = self.cfg.dataset.n_voxels();
        let (mut xl, mut xv) = (Vec::new(), Vec::new());
        let mut jac = Vec::with_capacity(energies.len());
        let mut sums = vec![0.0; self.sizes.len()];
        let mut buf = vec![0.0f32; v];
        for (row, &e) in showers.chunks(v).zip(energies) {
            // The fractions as training makes them (f32).
            buf.copy_from_slice(row);
            to_fractions(&mut buf, &self.sizes, &mut sums);
            let u = stick_encode(&sums, e, self.cfg.max_dep);
            let f: Vec<f64> = buf.iter().map(|&x| x as f64).collect();
            xl.extend(self.prep.layer.forward(&u));
            xv.extend(self.prep.voxel.forward(&f));
            jac.push(self.prep.layer.log_jacobian(&u) + self.prep.voxel.log_jacobian(&f));
        }
        (xl, xv, jac)
    }

    /// Times `steps` optimizer steps of both networks on synthetic inputs.
    pub fn bench_train(
        cfg: &CaloScore2Config,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let bs = batch.unwrap_or(cfg.batch_size).max(1);
        let n = bs * (steps + 1) + 1;
        let [l, v] = [cfg.layers(), cfg.dataset.n_voxels()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normals = |k: usize, rng: &mut ChaCha8Rng| -> Vec<f32> {
            (0..k).map(|_| rng.sample(StandardNormal)).collect()
        };
        let model = CaloScore2::untrained(cfg, seed)?;
        let p = Prepared {
            e_inc: vec![1e4; n],
            c: (0..n).map(|_| rng.random::<f32>() * 1.5).collect(),
            xl: normals(n * l, &mut rng),
            xv: normals(n * v, &mut rng),
            n_train: n - 1,
            prep: model.prep.clone(),
        };
        let mut task = V2Task::new(cfg, &p, seed, None, &model.device);
        diffusionparts::time_steps(
            model.nets,
            &mut task,
            bs,
            cfg.lr,
            steps,
            seed,
            "layer + voxel networks",
            "v-prediction",
            progress,
        )
    }

    /// Trains from a configuration into `opts.out`: the base models, or (a configuration with
    /// `[distill]` and `opts.teacher`) progressive distillation.
    pub fn train(
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let cfg = CaloScore2Config::from_toml(config)?;
        if cfg.distill.is_some() {
            return Self::distill(&cfg, opts, progress);
        }
        Self::check(&cfg, opts)?;
        let t0 = Instant::now();
        let p = prepare(&cfg, opts, None)?;
        let mut model = CaloScore2::untrained(&cfg, opts.seed)?;
        model.prep = p.prep.clone();
        let mut card = diffusionparts::card_of(
            "caloscore2",
            model.card.parameters,
            opts,
            &p.e_inc,
            p.n_train,
        )?;
        let mut task = V2Task::new(&cfg, &p, opts.seed, None, &model.device);
        let settings = cfg.settings(p.n_train, cfg.lr, cfg.epochs);
        model.nets = diffusionparts::run(
            model.nets,
            &mut task,
            &settings,
            opts,
            t0,
            "nets.ckpt",
            &mut card,
            progress,
        )?;
        model.card = card;
        model.save(&opts.out)?;
        Ok(diffusionparts::outcome(&model.card))
    }

    /// Checks `opts` against `cfg`: `--teacher` and `--factor` only with a `[distill]` table,
    /// which needs a teacher of the same networks whose steps `--factor` (a power of two)
    /// divides. Returns the teacher of a distillation.
    fn check(cfg: &CaloScore2Config, opts: &TrainOptions) -> Result<Option<CaloScore2>> {
        if cfg.distill.is_none() {
            for (given, flag) in [
                (opts.teacher.is_some(), "--teacher"),
                (opts.factor.is_some(), "--factor"),
            ] {
                if given {
                    return Err(ModelError::Config(format!(
                        "{flag} is for distillation presets (caloscore2-*-distill)"
                    )));
                }
            }
            return Ok(None);
        }
        let tdir = opts.teacher.as_ref().ok_or_else(|| {
            ModelError::Config(
                "a distillation preset needs --teacher RUN (a trained CaloScore v2)".into(),
            )
        })?;
        let teacher = CaloScore2::load(tdir)?;
        if teacher.cfg.architecture() != cfg.architecture() {
            return Err(ModelError::file(
                &tdir.join("config.toml"),
                "the teacher's networks or preprocessing differ from this distillation preset's (embed, unet, mlp, blocks, schedule, max_dep, e_min, e_max must match)",
            ));
        }
        let factor = opts.factor.unwrap_or(2);
        if factor < 2 || !factor.is_power_of_two() || teacher.steps() % factor != 0 {
            return Err(ModelError::Config(format!(
                "--factor must be a power of two >= 2 that divides the teacher's {} DDIM steps, got {factor}",
                teacher.steps()
            )));
        }
        Ok(Some(teacher))
    }

    /// Refuses to resume a distillation in `out` whose finished rounds (`distilled.json` of
    /// `out/rounds/*` and of `out`) were distilled from another teacher than `tdir`.
    fn check_resumed_teacher(out: &Path, tdir: &Path) -> Result<()> {
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        };
        let mut dirs = vec![out.to_path_buf()];
        if let Ok(rd) = std::fs::read_dir(out.join("rounds")) {
            dirs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        dirs.sort();
        for d in dirs {
            let f = d.join("distilled.json");
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let done: Distilled =
                serde_json::from_str(&text).map_err(|e| ModelError::file(&f, e.to_string()))?;
            if !same(Path::new(&done.teacher), tdir) {
                return Err(ModelError::file(
                    &f,
                    format!(
                        "this run was distilled from the teacher {}, not --teacher {}: resume \
                         with its teacher, or distil into a new --out",
                        done.teacher,
                        tdir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Progressive distillation of `opts.teacher` by `opts.factor` (default 2): log2(factor)
    /// rounds, each training a student with half its teacher's DDIM steps to match two teacher
    /// steps in one; intermediate students go to `out/rounds/steps_N`, the last to `out`.
    fn distill(
        cfg: &CaloScore2Config,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let (Some(dist), Some(teacher)) = (cfg.distill.clone(), Self::check(cfg, opts)?) else {
            return Err(ModelError::Config("no [distill] table".into()));
        };
        let tdir = opts.teacher.clone().unwrap_or_default();
        if opts.resume {
            Self::check_resumed_teacher(&opts.out, &tdir)?;
        }
        let factor = opts.factor.unwrap_or(2);
        let t0 = Instant::now();
        let p = prepare(cfg, opts, Some(teacher.prep.clone()))?;
        let rounds = factor.trailing_zeros() as usize;
        let mut cur = teacher;
        let mut lines = Vec::new();
        for r in 0..rounds {
            let ns = cur.steps() / 2;
            let last = r + 1 == rounds;
            let dir: PathBuf = if last {
                opts.out.clone()
            } else {
                opts.out.join("rounds").join(format!("steps_{ns}"))
            };
            if !last && dir.join("model_card.json").exists() && opts.resume {
                let done = CaloScore2::load(&dir)?;
                if done.steps() == ns && !done.card.interrupted && !done.card.stopped_at_budget {
                    cur = done;
                    continue;
                }
            }
            let device = compute_device(Precision::F32, opts.seed);
            let student = match dist.student_init {
                StudentInit::Teacher => caloforge_nn::weights::trainable_copy(&cur.nets, &device),
                StudentInit::Random => ScoreV2Nets::new(&cfg.nets(), &device),
            };
            let mut card = diffusionparts::card_of(
                "caloscore2",
                cur.card.parameters,
                opts,
                &p.e_inc,
                p.n_train,
            )?;
            let mut task = V2Task::new(cfg, &p, opts.seed, Some((cur.eval_nets(), ns)), &device);
            let settings = cfg.settings(p.n_train, dist.lr, dist.epochs);
            let nets = diffusionparts::run(
                student,
                &mut task,
                &settings,
                opts,
                t0,
                &format!("distill_{ns}.ckpt"),
                &mut card,
                progress,
            )?;
            drop(task);
            let model = CaloScore2 {
                cfg: cfg.clone(),
                distilled: Some(Distilled {
                    steps: ns,
                    teacher_steps: cur.steps(),
                    teacher: tdir.display().to_string(),
                }),
                card,
                prep: cur.prep.clone(),
                nets,
                device,
                fast: std::sync::OnceLock::new(),
                sizes: cur.sizes.clone(),
            };
            let oc = diffusionparts::outcome(&model.card);
            lines.push(format!(
                "round {} ({} steps): {}",
                r + 1,
                ns,
                oc.lines.join(" ")
            ));
            let stopped = model.card.interrupted || model.card.stopped_at_budget;
            if last || !stopped {
                model.save(&dir)?;
            }
            if stopped && !last {
                lines.push(format!(
                    "stopped in round {} of {rounds}: --resume continues",
                    r + 1
                ));
                return Ok(TrainOutcome {
                    lines,
                    complete: false,
                    interrupted: model.card.interrupted,
                });
            }
            cur = model;
        }
        Ok(TrainOutcome {
            lines,
            complete: true,
            interrupted: cur.card.interrupted,
        })
    }

    /// Reads a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let cp = dir.join("config.toml");
        let cfg = CaloScore2Config::from_toml(
            &std::fs::read_to_string(&cp).map_err(|e| ModelError::file(&cp, e))?,
        )
        .map_err(|e| ModelError::file(&cp, e))?;
        let card: DiffusionCard = crate::read_card(&dir.join("model_card.json"))?;
        let pp = dir.join("preprocessing.json");
        let prep: Preprocessing = crate::read_card(&pp)?;
        let [l, v] = [cfg.layers(), cfg.dataset.n_voxels()];
        if [&prep.layer, &prep.voxel].iter().zip([l, v]).any(|(n, d)| {
            [&n.min, &n.max, &n.mean, &n.std]
                .iter()
                .any(|x| x.len() != d)
        }) {
            return Err(ModelError::file(
                &pp,
                format!("needs {l} layer and {v} voxel values per key"),
            ));
        }
        let device = compute_device(Precision::F32, 0);
        let nets = caloforge_nn::weights::load(
            ScoreV2Nets::new(&cfg.nets(), &device),
            &dir.join("nets.safetensors"),
            "these CaloScore v2 networks (config.toml)",
        )?;
        let dp = dir.join("distilled.json");
        let distilled = if cfg.distill.is_some() {
            let d: Distilled = crate::read_card(&dp)?;
            if d.steps == 0 {
                return Err(ModelError::file(&dp, "steps must be > 0"));
            }
            Some(d)
        } else {
            None
        };
        Ok(CaloScore2 {
            sizes: cfg.layer_sizes(),
            cfg,
            distilled,
            card,
            prep,
            nets,
            device,
            fast: std::sync::OnceLock::new(),
        })
    }
}

/// The family in the registry.
pub struct CaloScore2Kind;

/// CaloScore v2's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "caloscore2-ds1-photons",
    "caloscore2-ds2",
    "caloscore2-ds2-distill",
    "caloscore2-ds3",
    "caloscore2-small",
    "caloscore2-small-distill",
    "caloscore2-tiny",
    "caloscore2-tiny-distill",
    "caloscore2-tiny-ds1-photons",
);

impl ModelKind for CaloScore2Kind {
    crate::forward_kind!(CaloScore2, CaloScore2Config, |c| c.dataset);
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "caloscore2",
            paper: "Mikuni & Nachman, arXiv 2308.03847 (v-prediction diffusion, DDIM, progressive distillation)",
            presets: PRESETS,
            options: &[ModelOption::Teacher, ModelOption::Factor, ModelOption::Steps],
        }
    }
    fn check_train(&self, config: &str, opts: &TrainOptions) -> Result<()> {
        CaloScore2::check(&CaloScore2Config::from_toml(config)?, opts).map(|_| ())
    }
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        CaloScore2::train(config, opts, progress)
    }
}

impl Generator for CaloScore2 {
    fn kind(&self) -> &'static dyn ModelKind {
        &CaloScore2Kind
    }
    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.dataset)
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }
    fn macs_per_shower(&self, opts: &SampleOptions) -> Option<f64> {
        // One layer-network and one voxel-network call per DDIM step, counted by the CPU twins'
        // kernels.
        let EvalNets::Fast(fast) = self.eval_nets() else {
            return None;
        };
        let [l, v] = [self.sizes.len(), self.cfg.dataset.n_voxels()];
        let per = caloforge_nn::kernels::macs::count(|| {
            fast.layer.forward_one(&vec![0.0; l], 0.5, 0.5);
            fast.voxel
                .forward_one(&vec![0.0; v], 0.5, 0.5, &vec![0.0; l])
        })
        .1;
        Some(per as f64 * opts.steps.unwrap_or(self.steps()) as f64)
    }
    fn sample(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        opts: &SampleOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        if let Some(s) = &opts.sampler {
            if s != "ddim" {
                return Err(ModelError::Config(format!(
                    "--sampler: CaloScore v2 samples with ddim, not {s:?}"
                )));
            }
        }
        self.sample_with(energies, seed, first, batch, opts.steps, progress)
    }
    fn density_space(&self) -> Option<DensitySpace> {
        let [l, v] = [self.sizes.len(), self.cfg.dataset.n_voxels()];
        Some(DensitySpace {
            dims: l + v,
            over: format!(
                "the {l} stick-breaking codes of the layer energies (u0 = sum E / ({} E_inc), \
                 u_i = E_(i-1) / sum_(j >= i-1) E_j) and the {v} voxel fractions of their layer",
                self.cfg.max_dep
            ),
            method: "probability-flow ODE",
        })
    }
    /// log p (nats) of each shower over its layer codes and voxel fractions: the layer
    /// network's probability-flow ODE log-density of the normalised codes, plus the voxel
    /// network's of the normalised fractions given those codes (each dx/dt = a·v̂ from t = 0
    /// to 1, N(0, 1) at t = 1), plus the normalisations' log-Jacobians. Shower j draws its
    /// Hutchinson probes from `shower_rng(seed, first + j)` (layers, then voxels).
    fn log_likelihood(
        &self,
        energies: &[f64],
        showers: &[f32],
        seed: u64,
        first: u64,
        batch: usize,
        opts: &LikelihoodOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        let [l, v] = [self.sizes.len(), self.cfg.dataset.n_voxels()];
        let (solver, trace) = opts.ode();
        let sched = self.cfg.schedule;
        crate::flowparts::likelihood_batches(
            energies,
            showers,
            v,
            seed,
            first,
            batch,
            progress,
            |chunk, raw, rngs| {
                let (xl, xv, jac) = self.encode(chunk, raw);
                let c: Vec<f32> = chunk.iter().map(|&e| self.cfg.condition(e)).collect();
                let mut flow = VFlow {
                    nets: &self.nets,
                    dev: &self.device,
                    c: &c,
                    codes: None,
                };
                let ll = v_likelihood(&sched, &xl, l, &solver, trace, rngs, &mut flow);
                flow.codes = Some((&xl, l));
                let lv = v_likelihood(&sched, &xv, v, &solver, trace, rngs, &mut flow);
                Ok((0..chunk.len())
                    .map(|j| ll.log_likelihood[j] + lv.log_likelihood[j] + jac[j])
                    .collect())
            },
        )
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        caloforge_nn::weights::save(
            &self.nets.valid(),
            SafetensorsStore::from_bytes(None),
            &dir.join("nets.safetensors"),
        )?;
        crate::write_json(&dir.join("preprocessing.json"), &self.prep)?;
        if let Some(d) = &self.distilled {
            crate::write_json(&dir.join("distilled.json"), d)?;
        }
        write_text(&dir.join("config.toml"), &crate::to_toml(&self.cfg)?)?;
        crate::write_json(&dir.join("model_card.json"), &self.card)
    }
}

#[cfg(test)]
mod tests;

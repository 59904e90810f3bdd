//! CaloScore v1 (Mikuni & Nachman, "Score-based generative models for calorimeter shower
//! simulation", arXiv:2206.11898; reference `ViniciusMikuni/CaloScore`): a continuous-time
//! score model with the VP, sub-VP or VE SDE (`caloforge_nn::sde`), the reference's score
//! network (`caloforge_nn::unet::score`) on the native cylindrical grid, the denoising
//! score-matching loss `mean((n(x_t, t, E) + z)²)` with t ~ U(1e-5, 1) (the score is n/σ(t)),
//! and three samplers: the reference's predictor-corrector loop (`pc`, 200 steps, snr 0.2), the
//! probability-flow ODE with adaptive RK45 (`ode`) and with N Heun steps (`heun`, the few-step
//! sampler). It also gives the exact log-likelihood of given showers through the ODE
//! ([`CaloScore::log_likelihood`]).
//!
//! Preprocessing as the reference: voxel / (2·E_inc), logit with α = 1e-6 (no
//! standardisation), E → log10(E / 1 GeV)/log10(100) (the reference's EMAX = 100 GeV, so the
//! condition reaches 1.5 at 1 TeV). Differences from the reference are listed in
//! `docs/design/caloscore.md` §5.

use crate::calodiffusion::{column, rows, DiffusionCard, Transform};
use crate::diffusionparts;
use crate::registry::{LikelihoodOptions, ModelInfo, StepTiming};
use crate::{
    write_text, Generator, ModelError, ModelKind, ModelOption, Preset, Progress, Result,
    SampleOptions, TrainOptions, TrainOutcome,
};
use burn::module::Module;
use burn::store::SafetensorsStore;
use burn::tensor::{Device, Tensor};
use caloforge_core::DatasetKind;
use caloforge_nn::burn;
use caloforge_nn::device::{backend, compute_device, Backend, Precision};
use caloforge_nn::schedule::LrSchedule;
use caloforge_nn::sde::{
    log_likelihood, ode_sample, pc_sample, OdeSolver, PcConfig, Score, ScoreVjp, Sde,
};
use caloforge_nn::train::{Task, TrainSettings};
use caloforge_nn::twin::Twin;
use caloforge_nn::unet::score::{ScoreNet, ScoreNetConfig};
use caloforge_nn::unet::score_fast::ScoreNet as FastScoreNet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;
use std::time::Instant;

/// Smallest training time (the reference's 1e-5).
const T_EPS: f64 = 1e-5;
/// Start time of the likelihood ODE and end time of the ODE samplers.
const ODE_EPS: f64 = 1e-5;

/// Which sampler generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreSampler {
    /// The reference's predictor-corrector loop.
    Pc,
    /// Probability-flow ODE, adaptive RK45 (rtol = atol = 1e-5).
    Ode,
    /// Probability-flow ODE, fixed Heun steps (2 network calls each).
    Heun,
}

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaloScoreConfig {
    /// Always "caloscore".
    pub model: String,
    /// Dataset: 2 or 3.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// The SDE.
    pub sde: Sde,
    /// Channels of the three levels of the score network.
    pub channels: [usize; 3],
    /// Average-pooling factors (z, α, r).
    pub pool: [usize; 3],
    /// Embedding width.
    pub embed: usize,
    /// Adam learning rate (constant, as the reference).
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Fraction of showers held out for validation.
    pub validation_fraction: f64,
    /// Default sampler.
    pub sampler: ScoreSampler,
    /// Predictor-corrector settings.
    pub pc: PcConfig,
    /// Default number of Heun steps.
    pub heun_steps: usize,
    /// Data transform (logit_mean 0, logit_std 1: the reference does not standardise).
    pub transform: Transform,
    /// Kernel of the score network's convolutions (3 × 3 × 3; dataset 1: 5 × 1 × 1).
    #[serde(default = "kernel3")]
    pub kernel: [usize; 3],
    /// Kernel of each time_conv's second convolution (1 × 1 × 1; dataset 1: 5 × 1 × 1).
    #[serde(default = "kernel1")]
    pub mix_kernel: [usize; 3],
    /// Dataset 1 (the reference's `NORMED`): the network models a vector of each voxel's
    /// fraction of the shower's energy followed by the shower's total E/(max_dep·E_inc), each
    /// through the logit, on a 1-D grid; generation rescales the fractions to the total.
    /// Required for dataset 1, refused for datasets 2 and 3.
    #[serde(default)]
    pub normed: bool,
}

fn kernel3() -> [usize; 3] {
    [3; 3]
}

fn kernel1() -> [usize; 3] {
    [1; 3]
}

impl CaloScoreConfig {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let err = |m: &str| ModelError::Config(format!("CaloScore configuration: {m}"));
        let c: CaloScoreConfig = toml::from_str(text).map_err(|e| err(&e.to_string()))?;
        if c.model != "caloscore" {
            return Err(err("model must be \"caloscore\""));
        }
        let one_d = matches!(c.dataset, DatasetKind::Photons1 | DatasetKind::Pions1);
        if one_d != c.normed {
            return Err(err(
                "normed = true is dataset 1's preprocessing (and only dataset 1's)",
            ));
        }
        if c.kernel
            .iter()
            .chain(&c.mix_kernel)
            .any(|&k| k.is_multiple_of(2))
            || (one_d
                && (c.kernel[1..] != [1, 1]
                    || c.mix_kernel[1..] != [1, 1]
                    || c.pool[1..] != [1, 1]))
        {
            return Err(err("kernel and mix_kernel sides must be odd; on dataset 1 (a vector along z) kernels and pool are [k, 1, 1]"));
        }
        LrSchedule::Constant { lr: c.lr }
            .validate()
            .map_err(|m| err(&m))?;
        if c.channels.contains(&0)
            || c.pool.contains(&0)
            || c.embed < 2
            || c.batch_size == 0
            || c.pc.steps < 2
            || c.heun_steps == 0
            || !(c.pc.eps > 0.0 && c.pc.eps < 1.0 && c.pc.snr > 0.0)
            || !(c.validation_fraction > 0.0 && c.validation_fraction < 1.0)
        {
            return Err(err("need channels, pool, batch_size, heun_steps > 0, embed >= 2, pc.steps >= 2, 0 < pc.eps < 1, pc.snr > 0, 0 < validation_fraction < 1"));
        }
        Ok(c)
    }
    /// Values the network models per shower: the voxels, or (`normed`) the voxel fractions and
    /// the total.
    fn dims(&self) -> usize {
        self.dataset.n_voxels() + self.normed as usize
    }
    fn shape(&self) -> [usize; 3] {
        if self.normed {
            return [self.dims(), 1, 1];
        }
        // from_toml admits datasets 2 and 3 otherwise.
        self.dataset.regular_grid().unwrap_or([45, 16, 9])
    }
    fn net(&self) -> ScoreNetConfig {
        ScoreNetConfig {
            shape: self.shape(),
            channels: self.channels,
            pool: self.pool,
            embed: self.embed,
            kernel: self.kernel,
            mix_kernel: self.mix_kernel,
        }
    }

    /// The network's values of one shower (`dims` of them) of incident energy `e` (MeV).
    fn encode(&self, row: &[f32], e: f64, out: &mut Vec<f32>) {
        let tr = &self.transform;
        if !self.normed {
            tr.forward_row(row, e, out);
            return;
        }
        // Fractions v/Σv, then the total Σv/(max_dep·E), as voxels of the transform at unit
        // scale.
        let unit = Transform {
            max_dep: 1.0,
            ..*tr
        };
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        out.extend(row.iter().map(|&v| {
            let f = if sum > 0.0 { v as f64 / sum } else { 0.0 };
            unit.forward(f, 1.0)
        }));
        out.push(unit.forward(sum / (tr.max_dep * e), 1.0));
    }

    /// A shower (MeV, with the cut) from the network's values `x` at incident energy `e`.
    fn decode(&self, x: &[f32], e: f64, out: &mut Vec<f32>) {
        let tr = &self.transform;
        if !self.normed {
            out.extend(x.iter().map(|&u| tr.inverse(u, e)));
            return;
        }
        // Fractions renormalised to sum 1 and scaled to the generated total.
        let unit = Transform {
            max_dep: 1.0,
            cut_mev: 0.0,
            ..*tr
        };
        let n = x.len() - 1;
        let f: Vec<f64> = x[..n]
            .iter()
            .map(|&u| unit.inverse(u, 1.0) as f64)
            .collect();
        let sum: f64 = f.iter().sum();
        let total = unit.inverse(x[n], 1.0) as f64 * tr.max_dep * e;
        out.extend(f.iter().map(|&fi| {
            let v = if sum > 0.0 { fi / sum * total } else { 0.0 };
            if v < tr.cut_mev {
                0.0
            } else {
                v as f32
            }
        }));
    }
}

/// A trained CaloScore.
pub struct CaloScore {
    /// Configuration.
    pub cfg: CaloScoreConfig,
    /// Model card.
    pub card: DiffusionCard,
    net: ScoreNet,
    device: Device,
    /// The CPU sampling engine, built once on first use.
    fast: std::sync::OnceLock<FastScoreNet>,
}

/// The score s = n(x, t, E)/σ(t) of a network on the inference device, for the rows of one
/// batch with conditions `e`.
struct NetScore<'a> {
    net: &'a ScoreNet,
    /// The fast twin of `net` (CPU sampling), used for [`Score::score`] when present.
    fast: Option<&'a FastScoreNet>,
    dev: Device,
    sde: Sde,
    e: &'a [f32],
}

impl NetScore<'_> {
    /// The network's time and energy inputs of the rows `rows_`.
    fn inputs(&self, t: &[f64], rows_: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let tv = t.iter().map(|&v| v as f32).collect();
        let ev = rows_.iter().map(|&r| self.e[r]).collect();
        (tv, ev)
    }
    /// [`NetScore::inputs`] as burn columns.
    fn columns(&self, t: &[f64], rows_: &[usize]) -> (Tensor<2>, Tensor<2>) {
        let (tv, ev) = self.inputs(t, rows_);
        (column(tv, &self.dev), column(ev, &self.dev))
    }
    fn divide(&self, out: Vec<f32>, t: &[f64]) -> Vec<f32> {
        let d = out.len() / t.len().max(1);
        out.chunks(d)
            .zip(t)
            .flat_map(|(r, &tj)| {
                let s = self.sde.marginal(tj).1;
                r.iter().map(move |&v| (v as f64 / s) as f32)
            })
            .collect()
    }
}

impl Score for NetScore<'_> {
    fn score(&mut self, x: &[f32], t: &[f64], rows_: &[usize]) -> Vec<f32> {
        if let Some(f) = self.fast {
            let (tv, ev) = self.inputs(t, rows_);
            return self.divide(f.forward(x, &tv, &ev), t);
        }
        let (tt, et) = self.columns(t, rows_);
        let out: Vec<f32> = self
            .net
            .forward(rows(x.to_vec(), t.len(), &self.dev), tt, et)
            .into_data()
            .iter::<f32>()
            .collect();
        self.divide(out, t)
    }
}

impl ScoreVjp for NetScore<'_> {
    fn score_vjp(
        &mut self,
        x: &[f32],
        t: &[f64],
        rows_: &[usize],
        v: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let n = t.len();
        let (tt, et) = self.columns(t, rows_);
        let xt = rows(x.to_vec(), n, &self.dev).require_grad();
        let out = self.net.forward(xt.clone(), tt, et);
        let obj = (out.clone() * rows(v.to_vec(), n, &self.dev)).sum();
        let grads = obj.backward();
        let g: Vec<f32> = xt
            .grad(&grads)
            .map(|g| g.into_data().iter::<f32>().collect())
            .unwrap_or_else(|| vec![0.0; x.len()]);
        let s: Vec<f32> = out.inner().into_data().iter::<f32>().collect();
        (self.divide(s, t), self.divide(g, t))
    }
}

impl CaloScore {
    fn loss(
        net: &ScoreNet,
        sde: &Sde,
        x0: &[f32],
        e: &[f32],
        t: &[f64],
        z: &[f32],
        device: &Device,
    ) -> Tensor<1> {
        let n = e.len();
        let v = x0.len() / n;
        let mut xt = Vec::with_capacity(x0.len());
        for b in 0..n {
            let (m, s) = sde.marginal(t[b]);
            xt.extend(
                x0[b * v..(b + 1) * v]
                    .iter()
                    .zip(&z[b * v..(b + 1) * v])
                    .map(|(&a, &zz)| (m * a as f64 + s * zz as f64) as f32),
            );
        }
        let tv: Vec<f32> = t.iter().map(|&x| x as f32).collect();
        let out = net.forward(
            rows(xt, n, device),
            column(tv, device),
            column(e.to_vec(), device),
        );
        // (score·σ + z)² = (n + z)², averaged over voxels and showers.
        (out + rows(z.to_vec(), n, device)).powf_scalar(2.0).mean()
    }

    fn sampler(&self, opts: &SampleOptions) -> Result<ScoreSampler> {
        match opts.sampler.as_deref() {
            None => Ok(self.cfg.sampler),
            Some("pc") => Ok(ScoreSampler::Pc),
            Some("ode") => Ok(ScoreSampler::Ode),
            Some("heun") => Ok(ScoreSampler::Heun),
            Some(o) => Err(ModelError::Config(format!(
                "--sampler: unknown sampler {o:?}: expected pc, ode or heun"
            ))),
        }
    }

    /// Generates one shower per energy with `sampler` (`steps`: predictor steps of `pc`, Heun
    /// steps of `heun`; ignored by the adaptive `ode`).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_with(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        sampler: ScoreSampler,
        steps: Option<usize>,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        if steps == Some(0) || (sampler == ScoreSampler::Pc && steps == Some(1)) {
            return Err(ModelError::Config(
                "--steps: need at least 2 predictor-corrector steps or 1 Heun step".into(),
            ));
        }
        let v = self.cfg.dims();
        let tr = self.cfg.transform;
        let dev = self.device.clone().inner();
        let net = self.net.valid();
        // On the CPU, the plain-Rust twin on the same weights (tested equal to burn's forward).
        let fast = (backend() == Backend::Cpu).then(|| self.fast.get_or_init(|| net.twin()));
        let mut out = Vec::with_capacity(energies.len() * self.cfg.dataset.n_voxels());
        progress.start("generate", "generate", energies.len() as u64);
        let batch = batch.max(1);
        for (ci, chunk) in energies.chunks(batch).enumerate() {
            let mut rngs: Vec<ChaCha8Rng> = (0..chunk.len())
                .map(|j| crate::shower_rng(seed, first + (ci * batch + j) as u64))
                .collect();
            let e: Vec<f32> = chunk.iter().map(|&x| tr.energy(x)).collect();
            let mut score = NetScore {
                net: &net,
                fast,
                dev: dev.clone(),
                sde: self.cfg.sde,
                e: &e,
            };
            let x = match sampler {
                ScoreSampler::Pc => {
                    let pc = PcConfig {
                        steps: steps.unwrap_or(self.cfg.pc.steps),
                        ..self.cfg.pc
                    };
                    pc_sample(&self.cfg.sde, v, &pc, &mut rngs, &mut score)
                }
                ScoreSampler::Ode | ScoreSampler::Heun => {
                    let solver = if sampler == ScoreSampler::Ode {
                        OdeSolver::default()
                    } else {
                        OdeSolver::Heun {
                            steps: steps.unwrap_or(self.cfg.heun_steps),
                        }
                    };
                    ode_sample(&self.cfg.sde, v, &solver, ODE_EPS, &mut rngs, &mut score).0
                }
            };
            for (b, &ei) in chunk.iter().enumerate() {
                self.cfg.decode(&x[b * v..(b + 1) * v], ei, &mut out);
            }
            progress.set("generate", (ci * batch + chunk.len()) as u64, None);
        }
        progress.finish("generate");
        Ok(out)
    }
}

/// The family in the registry.
pub struct CaloScoreKind;

/// CaloScore's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "caloscore-ds1-photons",
    "caloscore-ds2",
    "caloscore-ds2-subvp",
    "caloscore-ds2-ve",
    "caloscore-ds3",
    "caloscore-small",
    "caloscore-tiny",
    "caloscore-tiny-ds1-photons",
);

impl ModelKind for CaloScoreKind {
    crate::forward_kind!(CaloScore, CaloScoreConfig, |c| c.dataset);
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "caloscore",
            paper: "Mikuni & Nachman, arXiv 2206.11898 (score-based SDEs, predictor-corrector, likelihood)",
            presets: PRESETS,
            options: &[ModelOption::Sampler, ModelOption::Steps],
        }
    }
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        Ok(diffusionparts::outcome(
            &CaloScore::train(config, opts, progress)?.card,
        ))
    }
}

/// Denoising score matching on the training file, as a task of the one training loop.
struct ScoreTask<'a> {
    cfg: &'a CaloScoreConfig,
    x: &'a [f32],
    e: &'a [f32],
    n_train: usize,
    device: Device,
    val_t: Vec<f64>,
    val_z: Vec<f32>,
}

impl<'a> ScoreTask<'a> {
    fn new(
        cfg: &'a CaloScoreConfig,
        x: &'a [f32],
        e: &'a [f32],
        n_train: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let v = cfg.dims();
        let n_val = e.len() - n_train;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let val_t = (0..n_val).map(|_| draw_t(&mut rng)).collect();
        let val_z = (0..n_val * v).map(|_| rng.sample(StandardNormal)).collect();
        ScoreTask {
            cfg,
            x,
            e,
            n_train,
            device: device.clone(),
            val_t,
            val_z,
        }
    }
}

/// t ~ U(1e-5, 1), as the reference.
fn draw_t(rng: &mut ChaCha8Rng) -> f64 {
    rng.random::<f64>() * (1.0 - T_EPS) + T_EPS
}

impl Task<ScoreNet> for ScoreTask<'_> {
    fn n_train(&self) -> usize {
        self.n_train
    }
    fn loss(&mut self, net: &ScoreNet, idx: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let v = self.cfg.dims();
        let xb = diffusionparts::gather(self.x, v, idx);
        let eb: Vec<f32> = idx.iter().map(|&i| self.e[i]).collect();
        let t: Vec<f64> = idx.iter().map(|_| draw_t(rng)).collect();
        let z: Vec<f32> = (0..idx.len() * v)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        CaloScore::loss(net, &self.cfg.sde, &xb, &eb, &t, &z, &self.device)
    }
    fn validate(&mut self, net: &ScoreNet) -> f64 {
        let v = self.cfg.dims();
        let valid = net.valid();
        let vdev = self.device.clone().inner();
        diffusionparts::validation_loss(
            self.n_train,
            self.e.len(),
            self.cfg.batch_size,
            |rows, off| {
                let xs = diffusionparts::gather(self.x, v, rows);
                let es: Vec<f32> = rows.iter().map(|&i| self.e[i]).collect();
                CaloScore::loss(
                    &valid,
                    &self.cfg.sde,
                    &xs,
                    &es,
                    &self.val_t[off..off + rows.len()],
                    &self.val_z[off * v..(off + rows.len()) * v],
                    &vdev,
                )
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN)
            },
        )
    }
}

impl CaloScore {
    /// A model with freshly initialised weights.
    pub fn untrained(cfg: &CaloScoreConfig, seed: u64) -> Result<Self> {
        let device = compute_device(Precision::F32, seed);
        let net = ScoreNet::new(&cfg.net(), seed, &device);
        Ok(CaloScore {
            card: DiffusionCard::of("caloscore", net.num_params()),
            cfg: cfg.clone(),
            net,
            device,
            fast: std::sync::OnceLock::new(),
        })
    }

    /// Times `steps` optimizer steps of `cfg`'s network on synthetic inputs.
    pub fn bench_train(
        cfg: &CaloScoreConfig,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let bs = batch.unwrap_or(cfg.batch_size).max(1);
        let n_train = bs * (steps + 1);
        let (x, e) = diffusionparts::synthetic(n_train + 1, cfg.dims(), &cfg.transform, seed);
        let device = compute_device(Precision::F32, seed);
        let net = ScoreNet::new(&cfg.net(), seed, &device);
        let mut task = ScoreTask::new(cfg, &x, &e, n_train, seed, &device);
        diffusionparts::time_steps(
            net,
            &mut task,
            bs,
            cfg.lr,
            steps,
            seed,
            "score network",
            "score matching",
            progress,
        )
    }

    /// Trains from a configuration into `opts.out` (checkpoint `checkpoints/score.ckpt`).
    pub fn train(config: &str, opts: &TrainOptions, progress: &dyn Progress) -> Result<Self> {
        let cfg = CaloScoreConfig::from_toml(config)?;
        let t0 = Instant::now();
        let p = diffusionparts::prepare(
            opts,
            cfg.dataset,
            &cfg.transform,
            cfg.validation_fraction,
            cfg.dims(),
            |row, e, out| cfg.encode(row, e, out),
        )?;
        let mut model = CaloScore::untrained(&cfg, opts.seed)?;
        let mut card = diffusionparts::card("caloscore", model.card.parameters, opts, &p)?;
        let mut task = ScoreTask::new(&cfg, &p.x, &p.e, p.n_train, opts.seed, &model.device);
        let settings = TrainSettings {
            batch_size: cfg.batch_size,
            epochs: cfg.epochs,
            schedule: LrSchedule::Constant { lr: cfg.lr },
            eval_every: 0,
            grad_clip: None,
            ..Default::default()
        };
        model.net = diffusionparts::run(
            model.net,
            &mut task,
            &settings,
            opts,
            t0,
            "score.ckpt",
            &mut card,
            progress,
        )?;
        model.card = card;
        model.save(&opts.out)?;
        Ok(model)
    }

    /// Reads a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let cp = dir.join("config.toml");
        let cfg = CaloScoreConfig::from_toml(
            &std::fs::read_to_string(&cp).map_err(|e| ModelError::file(&cp, e))?,
        )
        .map_err(|e| ModelError::file(&cp, e))?;
        let card: DiffusionCard = crate::read_card(&dir.join("model_card.json"))?;
        // The autodiff device: the likelihood needs vector-Jacobian products.
        let device = compute_device(Precision::F32, 0);
        let net = caloforge_nn::weights::load(
            ScoreNet::new(&cfg.net(), 0, &device),
            &dir.join("score.safetensors"),
            "this score network (config.toml)",
        )?;
        Ok(CaloScore {
            cfg,
            card,
            net,
            device,
            fast: std::sync::OnceLock::new(),
        })
    }
}

impl Generator for CaloScore {
    fn kind(&self) -> &'static dyn ModelKind {
        &CaloScoreKind
    }
    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.dataset)
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }
    fn macs_per_shower(&self, opts: &SampleOptions) -> Option<f64> {
        // One network evaluation counted by the kernels, times the sampler's evaluations (the
        // adaptive ODE's count depends on the shower: not counted).
        if backend() != Backend::Cpu {
            return None;
        }
        let calls = match self.sampler(opts).ok()? {
            ScoreSampler::Pc => PcConfig {
                steps: opts.steps.unwrap_or(self.cfg.pc.steps),
                ..self.cfg.pc
            }
            .calls(),
            ScoreSampler::Heun => 2 * opts.steps.unwrap_or(self.cfg.heun_steps),
            ScoreSampler::Ode => return None,
        };
        let fast = self.fast.get_or_init(|| self.net.valid().twin());
        let x = vec![0.0f32; self.cfg.dims()];
        let per = caloforge_nn::kernels::macs::count(|| fast.forward_one(&x, 0.5, 0.5)).1;
        Some(per as f64 * calls as f64)
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
        let sampler = self.sampler(opts)?;
        self.sample_with(energies, seed, first, batch, sampler, opts.steps, progress)
    }
    fn density_space(&self) -> Option<crate::DensitySpace> {
        // Dataset 1's fractions live on a simplex: no density over the voxel energies.
        if self.cfg.normed {
            return None;
        }
        Some(crate::DensitySpace {
            dims: self.cfg.dataset.n_voxels(),
            over: "the voxel energies (MeV)".into(),
            method: "probability-flow ODE",
        })
    }
    /// log p of each shower (nats), over the voxel energies in MeV: the probability-flow ODE's
    /// log-density of the preprocessed shower plus the log-Jacobian of the preprocessing.
    /// Shower j draws its Hutchinson probe from `shower_rng(seed, first + j)`.
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
        if self.cfg.normed {
            return Err(ModelError::Config(
                "CaloScore on dataset 1 models each shower's voxel fractions (a simplex) and its total: it has no density over the voxel energies".into(),
            ));
        }
        let v = self.cfg.dataset.n_voxels();
        let tr = self.cfg.transform;
        let dev = self.device.clone();
        let (solver, trace) = opts.ode();
        crate::flowparts::likelihood_batches(
            energies,
            showers,
            v,
            seed,
            first,
            batch,
            progress,
            |chunk, raw, rngs| {
                let e: Vec<f32> = chunk.iter().map(|&x| tr.energy(x)).collect();
                let mut x = Vec::with_capacity(raw.len());
                for (r, &ei) in raw.chunks(v).zip(chunk) {
                    tr.forward_row(r, ei, &mut x);
                }
                let mut score = NetScore {
                    net: &self.net,
                    fast: None,
                    dev: dev.clone(),
                    sde: self.cfg.sde,
                    e: &e,
                };
                let l = log_likelihood(
                    &self.cfg.sde,
                    &x,
                    v,
                    &solver,
                    ODE_EPS,
                    trace,
                    rngs,
                    &mut score,
                );
                Ok(l.log_likelihood
                    .iter()
                    .zip(raw.chunks(v))
                    .zip(chunk)
                    .map(|((lp, r), &ei)| {
                        lp + r
                            .iter()
                            .map(|&u| tr.log_jacobian(u as f64, ei))
                            .sum::<f64>()
                    })
                    .collect())
            },
        )
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        caloforge_nn::weights::save(
            &self.net.valid(),
            SafetensorsStore::from_bytes(None),
            &dir.join("score.safetensors"),
        )?;
        write_text(&dir.join("config.toml"), &crate::to_toml(&self.cfg)?)?;
        crate::write_json(&dir.join("model_card.json"), &self.card)
    }
}

pub mod prep;

#[cfg(test)]
mod tests;

//! CaloDiffusion (Amram & Pedro, "Denoising diffusion models with geometry adaptation for high
//! fidelity calorimeter simulation"; reference code `OzAmram/CaloDiffusionPaper`): a DDPM whose
//! denoiser is a conditional U-Net with cylindrical convolutions (`caloforge_nn::unet`),
//! sampled with `caloforge_nn::diffusion`.
//!
//! The data transforms of the reference code:
//! - voxels (MeV) → `x / (max_dep·E_inc)` → logit with α = 1e-6 (an empty voxel maps to
//!   logit(α)) → standardised with per-dataset constants (dataset 2: mean −12.8564, std 1.9123;
//!   dataset 3: −13.4753, 1.1070; dataset 1 on its original voxels: see [`Transform::ds1`]);
//! - E_inc → `log10(E_inc / E_min) / log10(E_max / E_min)`;
//! - location channels as the reference's `create_R_Z_image` / `create_phi_image`: the radial
//!   bin centre over the last centre, the layer index over the number of layers (and for
//!   dataset 1 the angular index scaled to [0, 1]), concatenated to the noisy shower in the
//!   reference's order (x, R, Z, φ);
//! - the inverse, with the energy cut, and the reference code's optional data-dependent
//!   "always-empty voxel" mask (voxels empty in every shower of a reference file stay zero).
//!
//! [`CaloDiffusion`] trains the denoiser (ε-prediction with MSE, or the EDM-style weighted
//! x₀ objective, [`Objective`]; t uniform, Adam, validation with fixed draws, best epoch kept)
//! and samples with the ancestral DDPM sampler (N steps, skipping the noisiest) or DDIM.
//! Dataset 1 runs through GLaM ([`Denoiser`]): learnable per-layer maps onto a regular grid
//! around the U-Net. On the CPU, sampling uses the plain-Rust engine `unet::fast`.

use crate::diffusionparts;
use crate::registry::{ModelInfo, StepTiming};
use crate::{
    unix_time, write_text, Generator, ModelError, ModelKind, ModelOption, Preset, Progress, Result,
    SampleOptions, TrainOptions, TrainOutcome,
};
use burn::module::Module;
use burn::store::SafetensorsStore;
use burn::tensor::{Device, Tensor, TensorData};
use caloforge_core::glam::Glam;
use caloforge_core::DatasetKind;
use caloforge_nn::burn;
use caloforge_nn::device::{backend, compute_device, inference_device, Backend, Precision};
use caloforge_nn::diffusion::{ddim_sample, ddpm_sample, NoiseSchedule, ScheduleKind};
use caloforge_nn::glam::GlamNet;
use caloforge_nn::schedule::LrSchedule;
use caloforge_nn::train::{Task, TrainSettings};
use caloforge_nn::twin::Twin;
use caloforge_nn::unet::fast::UNet as FastUNet;
use caloforge_nn::unet::{UNet, UNetConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;
use std::time::Instant;

/// Which sampler generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// Ancestral DDPM (the paper's).
    Ddpm,
    /// Deterministic DDIM.
    Ddim,
}

/// What the network is trained to predict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// ε-prediction with plain MSE (the paper for datasets 1 and 2).
    #[default]
    NoisePred,
    /// The EDM-style preconditioned x₀-prediction of the reference code's `hybrid_weight`
    /// (the paper for dataset 3): with σ² = 1 − ᾱ_t, x̂₀ = c_skip x_t + c_out F(x_t),
    /// c_skip = 1/(σ² + 1), c_out = σ/√(σ² + 1), loss Σ_b w_b |x̂₀ − x₀|² / (Σ_b w_b · voxels),
    /// w = 1 + 1/σ². (The reference divides by the mean weight instead of the sum, i.e. its
    /// loss is this one times the batch size, which Adam does not see.)
    HybridWeight,
}

impl Objective {
    /// The ε estimate of a network output `out` at noisy `x` with ᾱ_t = `alpha_bar`: the
    /// output itself, or for the x₀ objective ε̂ = (x_t − √ᾱ x̂₀)/σ with
    /// x̂₀ = c_skip x_t + c_out F (the reference p_sample).
    pub fn to_eps(self, x: &[f32], out: Vec<f32>, alpha_bar: f64) -> Vec<f32> {
        match self {
            Objective::NoisePred => out,
            Objective::HybridWeight => {
                let (c_skip, c_out, _) = Self::coefficients(1.0 - alpha_bar);
                let (a, sd) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
                x.iter()
                    .zip(&out)
                    .map(|(&xi, &fi)| {
                        let x0 = c_skip * xi as f64 + c_out * fi as f64;
                        ((xi as f64 - a * x0) / sd) as f32
                    })
                    .collect()
            }
        }
    }

    /// (c_skip, c_out, w) at σ² = 1 − ᾱ.
    fn coefficients(sigma2: f64) -> (f64, f64, f64) {
        (
            1.0 / (sigma2 + 1.0),
            (sigma2 / (sigma2 + 1.0)).sqrt(),
            1.0 + 1.0 / sigma2,
        )
    }
}

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaloDiffusionConfig {
    /// Always "calodiffusion".
    pub model: String,
    /// Dataset: "1-photons", "1-pions", 2 or 3.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// Diffusion steps of training (the schedule).
    pub steps: usize,
    /// Noise schedule.
    pub schedule: ScheduleKind,
    /// Training objective (default: ε-prediction).
    #[serde(default)]
    pub objective: Objective,
    /// U-Net channels: initial width, then one per level.
    pub layer_sizes: Vec<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// Attention after every block.
    pub block_attention: bool,
    /// Adam learning rate.
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Fraction of showers held out for validation.
    pub validation_fraction: f64,
    /// Default sampler.
    pub sampler: Sampler,
    /// Default number of sampling steps (DDIM; DDPM uses `steps`).
    pub sample_steps: usize,
    /// Noisiest DDPM steps skipped when sampling (the paper: 2).
    pub skip: usize,
    /// Data transform.
    pub transform: Transform,
}

impl CaloDiffusionConfig {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: CaloDiffusionConfig = toml::from_str(text)
            .map_err(|e| ModelError::Config(format!("CaloDiffusion configuration: {e}")))?;
        if c.model != "calodiffusion" {
            return Err(ModelError::Config(
                "CaloDiffusion configuration: model must be \"calodiffusion\"".into(),
            ));
        }
        LrSchedule::Constant { lr: c.lr }
            .validate()
            .map_err(|m| ModelError::Config(format!("CaloDiffusion configuration: {m}")))?;
        if c.sample_steps == 0
            || c.groups == 0
            || c.layer_sizes.iter().any(|&l| l == 0 || l % c.groups != 0)
        {
            return Err(ModelError::Config(
                "CaloDiffusion configuration: need sample_steps > 0, groups > 0 and layer_sizes divisible by groups".into(),
            ));
        }
        if c.steps < 2
            || c.steps > 100_000
            || c.batch_size == 0
            || c.layer_sizes.len() < 2
            || !(c.validation_fraction > 0.0 && c.validation_fraction < 1.0)
        {
            return Err(ModelError::Config("CaloDiffusion configuration: need steps >= 2, batch_size > 0, two layer sizes, 0 < validation_fraction < 1".into()));
        }
        Ok(c)
    }
    fn kind(&self) -> DatasetKind {
        self.dataset
    }
    /// The GLaM maps of dataset 1 (None for the regular datasets 2 and 3).
    fn glam(&self) -> Option<Glam> {
        let kind = self.kind();
        kind.is_ds1().then(|| {
            // The embedded binning files are regular enough for GLaM (tested).
            let g = kind.geometry(None).expect("embedded binning parses");
            Glam::new(&g).expect("embedded dataset-1 binning maps onto a grid")
        })
    }
    /// The grid the U-Net sees: the detector's for datasets 2/3, GLaM's for dataset 1.
    fn shape(&self) -> [usize; 3] {
        self.kind()
            .regular_grid()
            .or_else(|| self.glam().map(|g| g.shape()))
            .unwrap_or([1, 1, 1])
    }
    /// Location channels: layer and radius, plus the angle for dataset 1 (the reference's
    /// PHI_INPUT).
    fn phi_channel(&self) -> bool {
        self.kind().is_ds1()
    }
    /// The location channels of the grid the U-Net sees (radial edges of GLaM's grid for
    /// dataset 1; uniform rings otherwise).
    fn locations(&self) -> Vec<f32> {
        let edges = self.glam().map(|g| g.r_edges);
        location_channels(self.shape(), self.phi_channel(), edges.as_deref())
    }
    fn unet(&self) -> UNetConfig {
        UNetConfig {
            in_channels: 3 + self.phi_channel() as usize,
            layer_sizes: self.layer_sizes.clone(),
            groups: self.groups,
            block_attention: self.block_attention,
            mid_attention: true,
            shape: self.shape(),
        }
    }
}

/// Training record in the model card.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DiffusionCard {
    /// "calodiffusion".
    pub model: String,
    /// Training file and its SHA-256.
    pub data_file: String,
    /// SHA-256 of the training file.
    pub data_sha256: String,
    /// Training / validation showers.
    pub n_train: usize,
    /// Validation showers.
    pub n_validation: usize,
    /// Parameters.
    pub parameters: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Optimizer steps.
    #[serde(default)]
    pub steps: u64,
    /// Validation loss per epoch (fixed t and noise; the last one after a partial epoch when
    /// the time budget stopped training).
    pub val_loss: Vec<f64>,
    /// Whether the time budget stopped training.
    pub stopped_at_budget: bool,
    /// Whether a stop request (Ctrl-C/SIGTERM) ended training.
    #[serde(default)]
    pub interrupted: bool,
    /// Incident-energy range of the training showers (MeV).
    #[serde(default)]
    pub energy_range: Option<(f64, f64)>,
    /// Seconds.
    pub seconds: f64,
    /// Unix time.
    pub updated_unix: u64,
}

impl DiffusionCard {
    /// An empty card for a network of `parameters` parameters.
    fn new(parameters: usize) -> Self {
        Self::of("calodiffusion", parameters)
    }
    /// An empty card of model family `model` (the diffusion models share it).
    pub(crate) fn of(model: &str, parameters: usize) -> Self {
        DiffusionCard {
            model: model.into(),
            data_file: String::new(),
            data_sha256: String::new(),
            n_train: 0,
            n_validation: 0,
            parameters,
            epochs: 0,
            steps: 0,
            train_loss: vec![],
            val_loss: vec![],
            stopped_at_budget: false,
            interrupted: false,
            energy_range: None,
            seconds: 0.0,
            updated_unix: unix_time(),
        }
    }
}

/// The network: the U-Net, wrapped for dataset 1 in the learnable GLaM maps (the reference's
/// `orig-NN` shower embedding: diffusion runs on the original voxels, the network encodes the
/// noisy shower onto the regular grid, adds the location channels, and decodes its output).
#[derive(Module, Debug)]
pub struct Denoiser {
    unet: UNet,
    glam: Option<GlamNet>,
}

impl Denoiser {
    fn new(cfg: &CaloDiffusionConfig, device: &Device) -> Result<Self> {
        Ok(Denoiser {
            unet: UNet::new(&cfg.unet(), device)?,
            glam: cfg.glam().map(|g| GlamNet::new(&g, device)),
        })
    }

    /// ε̂ (or F) `[B, V]` of noisy showers `x` `[B, V]`; `loc` `[1, channels, z, α, r]`.
    fn forward(&self, x: Tensor<2>, loc: Tensor<5>, t: Tensor<2>, e: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [_, nl, z, a, r] = loc.dims();
        let h = match &self.glam {
            Some(g) => g.encode(x),
            None => x.reshape([b, 1, z, a, r]),
        };
        let h = Tensor::cat(vec![h, loc.expand([b, nl, z, a, r])], 1);
        let out = self.unet.forward(h, t, e);
        match &self.glam {
            Some(g) => g.decode(out),
            None => out.reshape([b, z * a * r]),
        }
    }
}

/// A trained CaloDiffusion.
pub struct CaloDiffusion {
    /// Configuration.
    pub cfg: CaloDiffusionConfig,
    /// Model card.
    pub card: DiffusionCard,
    net: Denoiser,
    device: Device,
    /// The CPU sampling engine, built once on first use.
    fast: std::sync::OnceLock<FastNet>,
    /// Multiply-adds of one U-Net evaluation (counted once, for `bench`).
    macs_per_eval: std::sync::OnceLock<u64>,
}

/// The plain-Rust U-Net and, for dataset 1, the learned GLaM maps.
type FastNet = (FastUNet, Option<Glam>);

fn loc_tensor(loc: &[f32], shape: [usize; 3], device: &Device) -> Tensor<5> {
    let c = loc.len() / shape.iter().product::<usize>();
    Tensor::<5>::from_data(
        TensorData::new(loc.to_vec(), [1, c, shape[0], shape[1], shape[2]]),
        device,
    )
}

pub(crate) fn rows(x: Vec<f32>, n: usize, device: &Device) -> Tensor<2> {
    let v = x.len() / n.max(1);
    Tensor::<2>::from_data(TensorData::new(x, [n, v]), device)
}

pub(crate) fn column(v: Vec<f32>, device: &Device) -> Tensor<2> {
    let n = v.len();
    Tensor::<2>::from_data(TensorData::new(v, [n, 1]), device)
}

impl CaloDiffusion {
    #[allow(clippy::too_many_arguments)]
    fn loss(
        cfg: &CaloDiffusionConfig,
        net: &Denoiser,
        sched: &NoiseSchedule,
        x0: &[f32],
        e: &[f32],
        t: &[usize],
        eps: &[f32],
        loc: &Tensor<5>,
        device: &Device,
    ) -> Tensor<1> {
        let v = x0.len() / e.len();
        let n = e.len();
        let mut xt = Vec::with_capacity(x0.len());
        for b in 0..n {
            xt.extend(sched.q_sample(&x0[b * v..(b + 1) * v], &eps[b * v..(b + 1) * v], t[b]));
        }
        let sig: Vec<f32> = t.iter().map(|&ti| sched.sigma(ti) as f32).collect();
        let x_t = rows(xt, n, device);
        let pred = net.forward(
            x_t.clone(),
            loc.clone(),
            column(sig, device),
            column(e.to_vec(), device),
        );
        match cfg.objective {
            Objective::NoisePred => (pred - rows(eps.to_vec(), n, device))
                .powf_scalar(2.0)
                .mean(),
            Objective::HybridWeight => {
                let per = |f: &dyn Fn((f64, f64, f64)) -> f64| -> Tensor<2> {
                    let v: Vec<f32> = t
                        .iter()
                        .map(|&ti| f(Objective::coefficients(1.0 - sched.alpha_bar[ti])) as f32)
                        .collect();
                    column(v, device)
                };
                let (c_skip, c_out, w) = (per(&|c| c.0), per(&|c| c.1), per(&|c| c.2));
                let x0_hat = c_skip * x_t + c_out * pred;
                let w_sum = w.clone().sum();
                ((x0_hat - rows(x0.to_vec(), n, device)).powf_scalar(2.0) * w).sum()
                    / w_sum.mul_scalar(v as f64)
            }
        }
    }

    /// Samples with `sampler` and `steps`. DDPM with N steps runs the cosine schedule rebuilt
    /// with N steps (as the reference code, whose network sees σ_t rather than t, so a model
    /// trained with 400 steps samples with 50-400); DDIM takes N evenly spaced steps of the
    /// training schedule. Both skip the `skip` noisiest steps.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_with(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        sampler: Sampler,
        steps: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        if steps == 0 || (sampler == Sampler::Ddpm && steps <= self.cfg.skip) {
            return Err(ModelError::Config(format!(
                "{steps} sampling steps: need at least one, and for DDPM more than the {} skipped",
                self.cfg.skip
            )));
        }
        let net = self.net.valid();
        let dev = self.device.clone().inner();
        // On the CPU, the plain-Rust engine on the same weights (tested equal to burn's forward).
        let fast = (backend() == Backend::Cpu).then(|| {
            self.fast.get_or_init(|| {
                (
                    net.unet.twin(),
                    net.glam
                        .as_ref()
                        .zip(self.cfg.glam())
                        .map(|(g, t)| g.learned(&t)),
                )
            })
        });
        let sched = NoiseSchedule::new(
            self.cfg.schedule,
            if sampler == Sampler::Ddpm {
                steps
            } else {
                self.cfg.steps
            },
        );
        let shape = self.cfg.shape();
        let vg: usize = shape.iter().product();
        let v = self.cfg.kind().n_voxels();
        let loc = self.cfg.locations();
        let loc_t = loc_tensor(&loc, shape, &dev);
        let tr = self.cfg.transform;
        let mut out = Vec::with_capacity(energies.len() * v);
        progress.start("generate", "generate", energies.len() as u64);
        for (ci, chunk) in energies.chunks(batch.max(1)).enumerate() {
            let n = chunk.len();
            let mut rngs: Vec<ChaCha8Rng> = (0..n)
                .map(|j| crate::shower_rng(seed, first + (ci * batch.max(1) + j) as u64))
                .collect();
            let e: Vec<f32> = chunk.iter().map(|&x| tr.energy(x)).collect();
            let objective = self.cfg.objective;
            let mut eps = |x: &[f32], t: usize| -> Vec<f32> {
                let sig = vec![sched.sigma(t) as f32; n];
                let out: Vec<f32> = match &fast {
                    Some((f, g)) => {
                        let mut buf = Vec::with_capacity(n * (vg + loc.len()));
                        // Per shower: the (grid) shower, then the location images.
                        for xs in x.chunks(v) {
                            match g {
                                Some(g) => buf.extend(g.encode(xs)),
                                None => buf.extend_from_slice(xs),
                            }
                            buf.extend_from_slice(&loc);
                        }
                        let o = f.forward(&buf, shape, &sig, &e);
                        match g {
                            Some(g) => o.chunks(vg).flat_map(|c| g.decode(c)).collect(),
                            None => o,
                        }
                    }
                    None => net
                        .forward(
                            rows(x.to_vec(), n, &dev),
                            loc_t.clone(),
                            column(sig, &dev),
                            column(e.clone(), &dev),
                        )
                        .into_data()
                        .iter::<f32>()
                        .collect(),
                };
                objective.to_eps(x, out, sched.alpha_bar[t])
            };
            let x = match sampler {
                Sampler::Ddpm => ddpm_sample(&sched, v, self.cfg.skip, &mut rngs, &mut eps),
                Sampler::Ddim => ddim_sample(&sched, v, steps, self.cfg.skip, &mut rngs, &mut eps),
            };
            for (b, &ei) in chunk.iter().enumerate() {
                out.extend(x[b * v..(b + 1) * v].iter().map(|&u| tr.inverse(u, ei)));
            }
            progress.set("generate", (ci * batch.max(1) + n) as u64, None);
        }
        progress.finish("generate");
        Ok(out)
    }
}

impl CaloDiffusion {
    /// A model with freshly initialised weights (for timing a preset's architecture).
    pub fn untrained(cfg: &CaloDiffusionConfig, seed: u64) -> Result<Self> {
        let device = compute_device(Precision::F32, seed);
        let net = Denoiser::new(cfg, &device)?;
        let card = DiffusionCard::new(net.num_params());
        Ok(CaloDiffusion {
            cfg: cfg.clone(),
            card,
            net,
            device,
            fast: std::sync::OnceLock::new(),
            macs_per_eval: std::sync::OnceLock::new(),
        })
    }
}

/// The CaloDiffusion family in the registry.
pub struct CaloDiffusionKind;

/// CaloDiffusion's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "calodiffusion-ds1-photons",
    "calodiffusion-ds1-pions",
    "calodiffusion-ds2",
    "calodiffusion-ds3",
    "calodiffusion-small",
    "calodiffusion-tiny",
    "calodiffusion-tiny-ds3",
    "calodiffusion-tiny-ds1-photons",
);

impl ModelKind for CaloDiffusionKind {
    crate::forward_kind!(CaloDiffusion, CaloDiffusionConfig, |c| c.kind());
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "calodiffusion",
            paper: "Amram & Pedro, arXiv 2308.03876 (DDPM, cylindrical U-Net, GLaM)",
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
            &CaloDiffusion::train(config, opts, progress)?.card,
        ))
    }
}

/// The denoising objective on the training file, as a task of the one training loop.
struct DiffusionTask<'a> {
    cfg: &'a CaloDiffusionConfig,
    sched: NoiseSchedule,
    x: &'a [f32],
    e: &'a [f32],
    n_train: usize,
    loc: Vec<f32>,
    loc_t: Tensor<5>,
    device: Device,
    val_t: Vec<usize>,
    val_eps: Vec<f32>,
}

impl<'a> DiffusionTask<'a> {
    /// The task on preprocessed voxels `x` and energies `e`: the first `n_train` showers train,
    /// the rest validate with fixed draws of t and noise (from `seed`).
    fn new(
        cfg: &'a CaloDiffusionConfig,
        x: &'a [f32],
        e: &'a [f32],
        n_train: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let (shape, v) = (cfg.shape(), cfg.kind().n_voxels());
        let n_val = e.len() - n_train;
        let loc = cfg.locations();
        let loc_t = loc_tensor(&loc, shape, device);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let val_t: Vec<usize> = (0..n_val).map(|_| rng.random_range(0..cfg.steps)).collect();
        let val_eps: Vec<f32> = (0..n_val * v).map(|_| rng.sample(StandardNormal)).collect();
        DiffusionTask {
            cfg,
            sched: NoiseSchedule::new(cfg.schedule, cfg.steps),
            x,
            e,
            n_train,
            loc,
            loc_t,
            device: device.clone(),
            val_t,
            val_eps,
        }
    }
}

impl Task<Denoiser> for DiffusionTask<'_> {
    fn n_train(&self) -> usize {
        self.n_train
    }
    fn loss(&mut self, net: &Denoiser, idx: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
        let v = self.cfg.kind().n_voxels();
        let mut xb = Vec::with_capacity(idx.len() * v);
        let mut eb = Vec::with_capacity(idx.len());
        for &i in idx {
            xb.extend_from_slice(&self.x[i * v..(i + 1) * v]);
            eb.push(self.e[i]);
        }
        let t: Vec<usize> = idx
            .iter()
            .map(|_| rng.random_range(0..self.cfg.steps))
            .collect();
        let eps: Vec<f32> = (0..idx.len() * v)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        CaloDiffusion::loss(
            self.cfg,
            net,
            &self.sched,
            &xb,
            &eb,
            &t,
            &eps,
            &self.loc_t,
            &self.device,
        )
    }
    /// Validation loss with fixed t and noise.
    fn validate(&mut self, net: &Denoiser) -> f64 {
        let (cfg, v) = (self.cfg, self.cfg.kind().n_voxels());
        let valid = net.valid();
        let vdev = self.device.clone().inner();
        let vloc = loc_tensor(&self.loc, cfg.shape(), &vdev);
        diffusionparts::validation_loss(self.n_train, self.e.len(), cfg.batch_size, |rows, off| {
            let xs = diffusionparts::gather(self.x, v, rows);
            let es: Vec<f32> = rows.iter().map(|&i| self.e[i]).collect();
            CaloDiffusion::loss(
                cfg,
                &valid,
                &self.sched,
                &xs,
                &es,
                &self.val_t[off..off + rows.len()],
                &self.val_eps[off * v..(off + rows.len()) * v],
                &vloc,
                &vdev,
            )
            .into_data()
            .iter::<f64>()
            .next()
            .unwrap_or(f64::NAN)
        })
    }
}

impl CaloDiffusion {
    /// The sampler `opts` asks for (`--sampler`), else the model's.
    fn sampler(&self, opts: &SampleOptions) -> Result<Sampler> {
        match opts.sampler.as_deref() {
            None => Ok(self.cfg.sampler),
            Some("ddpm") => Ok(Sampler::Ddpm),
            Some("ddim") => Ok(Sampler::Ddim),
            Some(o) => Err(ModelError::Config(format!(
                "--sampler: unknown sampler {o:?}: expected ddpm or ddim"
            ))),
        }
    }

    /// Times `steps` optimizer steps of the denoiser of `cfg` (untrained, on standard-normal
    /// synthetic voxels and log-uniform 1 GeV – 1 TeV energies; a step costs the same whatever
    /// the values) through the one training loop.
    pub fn bench_train(
        cfg: &CaloDiffusionConfig,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let bs = batch.unwrap_or(cfg.batch_size).max(1);
        let n_train = bs * (steps + 1);
        let (x, e) =
            diffusionparts::synthetic(n_train + 1, cfg.kind().n_voxels(), &cfg.transform, seed);
        let device = compute_device(Precision::F32, seed);
        let net = Denoiser::new(cfg, &device)?;
        let mut task = DiffusionTask::new(cfg, &x, &e, n_train, seed, &device);
        diffusionparts::time_steps(
            net,
            &mut task,
            bs,
            cfg.lr,
            steps,
            seed,
            "denoiser",
            "denoising loss",
            progress,
        )
    }

    /// Trains a denoiser from a configuration into `opts.out` through the one training loop
    /// (checkpoint `checkpoints/denoiser.ckpt`).
    pub fn train(config: &str, opts: &TrainOptions, progress: &dyn Progress) -> Result<Self> {
        let cfg = CaloDiffusionConfig::from_toml(config)?;
        let t0 = Instant::now();
        let tr = cfg.transform;
        let p = diffusionparts::prepare(
            opts,
            cfg.kind(),
            &tr,
            cfg.validation_fraction,
            cfg.kind().n_voxels(),
            |row, e, out| tr.forward_row(row, e, out),
        )?;
        let device = compute_device(Precision::F32, opts.seed);
        let net = Denoiser::new(&cfg, &device)?;
        let mut card = diffusionparts::card("calodiffusion", net.num_params(), opts, &p)?;
        let mut task = DiffusionTask::new(&cfg, &p.x, &p.e, p.n_train, opts.seed, &device);
        let settings = TrainSettings {
            batch_size: cfg.batch_size,
            epochs: cfg.epochs,
            schedule: LrSchedule::Constant { lr: cfg.lr },
            eval_every: 0,
            grad_clip: None,
            ..Default::default()
        };
        let net = diffusionparts::run(
            net,
            &mut task,
            &settings,
            opts,
            t0,
            "denoiser.ckpt",
            &mut card,
            progress,
        )?;
        let model = CaloDiffusion {
            card,
            cfg,
            net,
            device,
            fast: std::sync::OnceLock::new(),
            macs_per_eval: std::sync::OnceLock::new(),
        };
        model.save(&opts.out)?;
        Ok(model)
    }
}

impl Generator for CaloDiffusion {
    fn kind(&self) -> &'static dyn ModelKind {
        &CaloDiffusionKind
    }
    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.kind())
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }

    fn macs_per_shower(&self, opts: &SampleOptions) -> Option<f64> {
        // One U-Net evaluation counted by the kernels, times the sampler's evaluations.
        if backend() != Backend::Cpu {
            return None;
        }
        let per_eval = *self.macs_per_eval.get_or_init(|| {
            let unet = self.net.valid().unet.twin();
            let shape = self.cfg.shape();
            let v: usize = shape.iter().product();
            let x = vec![0.0f32; unet.in_channels() * v];
            caloforge_nn::kernels::macs::count(|| unet.forward_one(&x, shape, 0.5, 0.5)).1
        });
        let steps = opts.steps.unwrap_or(self.cfg.sample_steps);
        // The schedules `sample_with` builds: `steps` long for DDPM, the training one for DDIM.
        let evals = match self.sampler(opts).ok()? {
            Sampler::Ddpm => caloforge_nn::diffusion::ddpm_calls(steps, self.cfg.skip),
            Sampler::Ddim => {
                caloforge_nn::diffusion::ddim_timesteps(self.cfg.steps, steps, self.cfg.skip).len()
            }
        };
        Some(per_eval as f64 * evals as f64)
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
        self.sample_with(
            energies,
            seed,
            first,
            batch,
            sampler,
            opts.steps.unwrap_or(self.cfg.sample_steps),
            progress,
        )
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        caloforge_nn::weights::save(
            &self.net.valid(),
            SafetensorsStore::from_bytes(None),
            &dir.join("unet.safetensors"),
        )?;
        write_text(&dir.join("config.toml"), &crate::to_toml(&self.cfg)?)?;
        crate::write_json(&dir.join("model_card.json"), &self.card)
    }
}

impl CaloDiffusion {
    /// Reads a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let cp = dir.join("config.toml");
        let cfg = CaloDiffusionConfig::from_toml(
            &std::fs::read_to_string(&cp).map_err(|e| ModelError::file(&cp, e))?,
        )
        .map_err(|e| ModelError::file(&cp, e))?;
        let card: DiffusionCard = crate::read_card(&dir.join("model_card.json"))?;
        let device = inference_device();
        let net = caloforge_nn::weights::load(
            Denoiser::new(&cfg, &device)?,
            &dir.join("unet.safetensors"),
            "this U-Net (config.toml)",
        )?;
        Ok(CaloDiffusion {
            cfg,
            card,
            net,
            device,
            fast: std::sync::OnceLock::new(),
            macs_per_eval: std::sync::OnceLock::new(),
        })
    }
}

/// Per-dataset transform constants.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Logit offset α.
    pub alpha: f64,
    /// Scale: voxel / (max_dep · E_inc).
    pub max_dep: f64,
    /// Mean of the logit values.
    pub logit_mean: f64,
    /// Standard deviation of the logit values.
    pub logit_std: f64,
    /// Lowest incident energy (MeV) of the conditioning scale.
    pub e_min: f64,
    /// Highest incident energy (MeV).
    pub e_max: f64,
    /// Voxels below this (MeV) are zeroed after generation.
    pub cut_mev: f64,
}

impl Transform {
    /// The reference code's dataset-2 constants.
    pub fn ds2() -> Self {
        Transform {
            alpha: 1e-6,
            max_dep: 2.0,
            logit_mean: -12.8564,
            logit_std: 1.9123,
            e_min: 1e3,
            e_max: 1e6,
            cut_mev: 0.0151,
        }
    }

    /// The reference code's dataset-3 constants (consts.py: logit mean −13.4753, std 1.1070).
    pub fn ds3() -> Self {
        Transform {
            logit_mean: -13.4753,
            logit_std: 1.1070,
            ..Self::ds2()
        }
    }

    /// The reference code's dataset-1 constants for its `orig-NN` embedding (the logit is taken
    /// on the original voxels; consts.py "no geom reshaping"): photons mean −9.9807, std 3.14168;
    /// pions −11.7610, 2.84317; max deposit 3.1·E_inc; E from 256 MeV to 4.194 TeV; cut 1e-4 MeV.
    pub fn ds1(pions: bool) -> Self {
        let (logit_mean, logit_std) = if pions {
            (-11.7610, 2.84317)
        } else {
            (-9.9807, 3.14168)
        };
        Transform {
            alpha: 1e-6,
            max_dep: 3.1,
            logit_mean,
            logit_std,
            e_min: 256.0,
            e_max: 4_194_304.0,
            cut_mev: 1e-4,
        }
    }

    /// Standardised logit of one voxel.
    pub fn forward(&self, v_mev: f64, e_inc_mev: f64) -> f32 {
        let x = (v_mev / (self.max_dep * e_inc_mev)).clamp(0.0, 1.0);
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * x;
        (((y / (1.0 - y)).ln() - self.logit_mean) / self.logit_std) as f32
    }

    /// The standardised logits of one shower's voxels (MeV), appended to `out`.
    pub fn forward_row(&self, row: &[f32], e_inc_mev: f64, out: &mut Vec<f32>) {
        out.extend(row.iter().map(|&u| self.forward(u as f64, e_inc_mev)));
    }

    /// Voxel energy (MeV) of a network value, with the cut.
    pub fn inverse(&self, u: f32, e_inc_mev: f64) -> f32 {
        let l = u as f64 * self.logit_std + self.logit_mean;
        let s = 1.0 / (1.0 + (-l).exp());
        let x = ((s - self.alpha) / (1.0 - 2.0 * self.alpha)).clamp(0.0, 1.0);
        let v = x * self.max_dep * e_inc_mev;
        if v < self.cut_mev {
            0.0
        } else {
            v as f32
        }
    }

    /// log |du/dv| of [`Transform::forward`] at voxel energy `v_mev` (MeV): what a density
    /// over the transformed value u gains as a density over the voxel energy.
    pub fn log_jacobian(&self, v_mev: f64, e_inc_mev: f64) -> f64 {
        let scale = self.max_dep * e_inc_mev;
        let x = (v_mev / scale).clamp(0.0, 1.0);
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * x;
        ((1.0 - 2.0 * self.alpha) / (scale * y * (1.0 - y) * self.logit_std)).ln()
    }

    /// Conditioning value of an incident energy.
    pub fn energy(&self, e_inc_mev: f64) -> f32 {
        ((e_inc_mev / self.e_min).log10() / (self.e_max / self.e_min).log10()) as f32
    }
}

/// The location channels of a (z, α, r) grid, channel-major, as the reference's
/// `utils.create_R_Z_image(scaled=True)` and `create_phi_image` in its order (R, Z, φ): R the
/// centre of the radial bin over the centre of the last one (`r_edges`, nr + 1 edges; uniform
/// bins when `None`, as datasets 2 and 3: (r + ½)/(nr − ½)), Z the layer index over the number
/// of layers (z / nz), and with `phi` the angular index scaled to [0, 1] (dataset 1).
pub fn location_channels(shape: [usize; 3], phi: bool, r_edges: Option<&[f64]>) -> Vec<f32> {
    let [nz, na, nr] = shape;
    let n = nz * na * nr;
    let centres: Vec<f64> = match r_edges {
        Some(e) if e.len() == nr + 1 => e.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect(),
        _ => (0..nr).map(|r| r as f64 + 0.5).collect(),
    };
    let last = centres.last().copied().filter(|&c| c > 0.0).unwrap_or(1.0);
    let mut out = vec![0.0f32; (2 + phi as usize) * n];
    for z in 0..nz {
        for a in 0..na {
            for r in 0..nr {
                let i = (z * na + a) * nr + r;
                out[i] = (centres[r] / last) as f32;
                out[n + i] = z as f32 / nz as f32;
                if phi {
                    out[2 * n + i] = a as f32 / (na.max(2) - 1) as f32;
                }
            }
        }
    }
    out
}

/// The reference code's "always-empty voxel" mask: true where every shower of `showers`
/// (row-major, `n_voxels` per shower) is zero. Optional (it is data-dependent).
pub fn empty_voxel_mask(showers: &[f32], n_voxels: usize) -> Vec<bool> {
    let mut m = vec![true; n_voxels];
    for row in showers.chunks(n_voxels) {
        for (mi, &v) in m.iter_mut().zip(row) {
            if v != 0.0 {
                *mi = false;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_round_trips_and_cuts() {
        let t = Transform::ds2();
        for (v, e) in [(1.0, 1e4), (250.0, 1e5), (0.5, 1e3)] {
            let back = t.inverse(t.forward(v, e), e) as f64;
            assert!((back / v - 1.0).abs() < 1e-4, "{v} -> {back}");
        }
        // An empty voxel maps to logit(α) and comes back as 0.
        let u0 = t.forward(0.0, 1e4);
        assert!(
            (u0 as f64 - ((1e-6f64 / (1.0 - 1e-6)).ln() - t.logit_mean) / t.logit_std).abs() < 1e-5
        );
        assert_eq!(t.inverse(u0, 1e4), 0.0);
        // Below 15.1 keV: cut.
        assert_eq!(t.inverse(t.forward(0.01, 1e4), 1e4), 0.0);
        assert_eq!(t.energy(1e3), 0.0);
        assert!((t.energy(1e6) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn hybrid_objective_recovers_eps_from_an_exact_x0_predictor() {
        // If F makes x̂₀ = c_skip x_t + c_out F exactly x₀, the sampler's ε̂ is the true ε.
        let sched = NoiseSchedule::new(ScheduleKind::cosine(), 400);
        for t in [0usize, 10, 200, 399] {
            let ab = sched.alpha_bar[t];
            let (x0, eps) = ([0.3f32, -1.2, 2.0], [1.1f32, -0.4, 0.05]);
            let xt = sched.q_sample(&x0, &eps, t);
            let (c_skip, c_out, w) = Objective::coefficients(1.0 - ab);
            assert!((w - (1.0 + 1.0 / (1.0 - ab))).abs() < 1e-9 * w);
            let f: Vec<f32> = (0..3)
                .map(|i| ((x0[i] as f64 - c_skip * xt[i] as f64) / c_out) as f32)
                .collect();
            let got = Objective::HybridWeight.to_eps(&xt, f, ab);
            for i in 0..3 {
                assert!((got[i] - eps[i]).abs() < 2e-3, "t {t}: {got:?} vs {eps:?}");
            }
            assert_eq!(Objective::NoisePred.to_eps(&xt, eps.to_vec(), ab), eps);
        }
    }

    #[test]
    fn location_channels_and_mask() {
        // Uniform rings: R = (r + 1/2) / 4.5; Z = z / 3 (the reference's create_R_Z_image).
        let c = location_channels([3, 2, 5], true, None);
        let n = 30;
        assert_eq!(c[4], 1.0, "last ring");
        assert_eq!(c[0], 0.5 / 4.5, "first ring");
        assert_eq!(c[n + (2 * 2 + 1) * 5 + 4], 2.0 / 3.0, "last layer");
        assert_eq!((c[2 * n + 5], c.len()), (1.0, 3 * n), "second angle");
        // Dataset 2's radial edges (uniform, 4.65 mm): the same channel.
        let e: Vec<f64> = (0..=5).map(|i| 4.65 * i as f64).collect();
        let d = location_channels([3, 2, 5], true, Some(&e));
        assert!(c.iter().zip(&d).all(|(a, b)| (a - b).abs() < 1e-6));
        // Non-uniform edges: centres 1, 3, 7 over 7.
        let d = location_channels([1, 1, 3], false, Some(&[0.0, 2.0, 4.0, 10.0]));
        assert_eq!(&d[..3], &[1.0 / 7.0, 3.0 / 7.0, 1.0]);
        let m = empty_voxel_mask(&[0.0, 1.0, 0.0, 0.0, 0.0, 2.0], 3);
        assert_eq!(m, vec![true, false, false]);
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::{preset_text, NoProgress};
    use caloforge_sim::{log_uniform_energies, Mesh, SimParams, Simulator, Tune};

    #[test]
    fn presets_parse() {
        let c = CaloDiffusionConfig::from_toml(&preset_text("calodiffusion-ds2").unwrap()).unwrap();
        assert_eq!(
            (c.steps, c.skip, c.layer_sizes.clone()),
            (400, 2, vec![16, 16, 16, 32])
        );
        assert!(
            CaloDiffusionConfig::from_toml(&preset_text("calodiffusion-small").unwrap()).is_ok()
        );
        let c3 =
            CaloDiffusionConfig::from_toml(&preset_text("calodiffusion-ds3").unwrap()).unwrap();
        assert_eq!(
            (c3.objective, c3.skip, c3.shape(), c3.transform),
            (Objective::HybridWeight, 0, [45, 50, 18], Transform::ds3())
        );
        UNet::new(&c3.unet(), &Device::flex()).unwrap();
        for (name, pions, shape) in [
            ("calodiffusion-ds1-photons", false, [5, 10, 30]),
            ("calodiffusion-ds1-pions", true, [7, 10, 23]),
        ] {
            let c = CaloDiffusionConfig::from_toml(&preset_text(name).unwrap()).unwrap();
            assert_eq!((c.transform, c.shape()), (Transform::ds1(pions), shape));
            assert_eq!(c.unet().in_channels, 4, "angle channel");
            UNet::new(&c.unet(), &Device::flex()).unwrap();
        }
        let bad = preset_text("calodiffusion-small")
            .unwrap()
            .replace("dataset = 2", "dataset = 1");
        let e = CaloDiffusionConfig::from_toml(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1-photons"), "{e}");
    }

    #[test]
    fn trains_samples_deterministically_and_round_trips() {
        train_and_sample(&small_ds2(""), DatasetKind::Ds2);
    }

    #[test]
    fn trains_with_the_weighted_x0_objective() {
        train_and_sample(
            &small_ds2("objective = \"hybrid_weight\"\n"),
            DatasetKind::Ds2,
        );
    }

    /// GLaM's regular radial edges are the ones the reference's `create_R_Z_image` hard-codes
    /// for dataset 1 (photons: 30 bins, pions: 23).
    #[test]
    fn dataset_1_location_channels_use_the_reference_radial_bins() {
        let photons = [
            0., 2., 4., 5., 6., 8., 10., 12., 15., 20., 25., 30., 40., 50., 60., 70., 80., 90.,
            100., 120., 130., 150., 160., 200., 250., 300., 350., 400., 600., 1000., 2000.,
        ];
        let pions = [
            0., 1., 4., 5., 7., 10., 15., 20., 30., 50., 80., 90., 100., 130., 150., 160., 200.,
            250., 300., 350., 400., 600., 1000., 2000.,
        ];
        for (kind, want) in [
            (DatasetKind::Photons1, &photons[..]),
            (DatasetKind::Pions1, &pions[..]),
        ] {
            let g = Glam::new(&kind.geometry(None).unwrap()).unwrap();
            assert_eq!(g.r_edges.len(), g.shape()[2] + 1);
            assert!(
                g.r_edges
                    .iter()
                    .zip(want)
                    .all(|(a, b)| (a - b).abs() < 1e-9),
                "{kind:?}: {:?}",
                g.r_edges
            );
        }
    }

    #[test]
    fn trains_on_dataset_1_through_glam() {
        let mut text = String::new();
        for line in preset_text("calodiffusion-ds1-pions").unwrap().lines() {
            text.push_str(match line.split(" = ").next() {
                Some("layer_sizes") => "layer_sizes = [4, 4, 8]",
                Some("groups") => "groups = 2",
                Some("epochs") => "epochs = 1",
                Some("batch_size") => "batch_size = 4",
                Some("steps") => "steps = 20",
                _ => line,
            });
            text.push('\n');
        }
        let m = train_and_sample(&text, DatasetKind::Pions1);
        assert!(m.net.glam.is_some());
        // The learnable maps trained with the rest: no longer the geometric initialisation.
        let geo = m.cfg.glam().unwrap();
        let init = GlamNet::new(&geo, &Device::flex()).learned(&geo);
        let moved = m
            .net
            .glam
            .as_ref()
            .unwrap()
            .learned(&geo)
            .encode(&vec![1.0; 533])
            != init.encode(&vec![1.0; 533]);
        assert!(moved);
    }

    fn small_ds2(extra: &str) -> String {
        preset_text("calodiffusion-small")
            .unwrap()
            .replace("layer_sizes = [8, 8, 16]", "layer_sizes = [4, 4, 8]")
            .replace("groups = 4", "groups = 2")
            .replace("epochs = 5", "epochs = 2")
            .replace("batch_size = 32", "batch_size = 4")
            .replace("steps = 400", &format!("{extra}steps = 20"))
    }

    /// Trains `text` on 12 showers of `kind` (simulated for dataset 2, synthetic for dataset 1),
    /// then checks sampling: cut respected, independent of batch split, equal after reload.
    fn train_and_sample(text: &str, kind: DatasetKind) -> CaloDiffusion {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("train.h5");
        let nv = kind.n_voxels();
        let e = log_uniform_energies(12, 1e3, 1e5, 1);
        let vox = if kind == DatasetKind::Ds2 {
            let sim = Simulator::new(
                SimParams::new(Tune::Geant4),
                vec![Mesh::of(DatasetKind::Ds2).unwrap()],
            );
            sim.simulate(&e, 2, 0, &|_| {}).swap_remove(0)
        } else {
            (0..12 * nv)
                .map(|i| {
                    if i % 3 == 0 {
                        0.0
                    } else {
                        ((i * 7919) % 1000) as f32 * 0.01
                    }
                })
                .collect()
        };
        caloforge_core::io::write_showers(&data, &e, &vox, nv).unwrap();
        let opts = TrainOptions {
            data,
            out: dir.path().join("run"),
            seed: 3,
            ..Default::default()
        };
        let m = CaloDiffusion::train(text, &opts, &NoProgress).unwrap();
        assert!(m.card.epochs >= 1);
        // Shower k depends on (seed, k) only: the second of a pair equals the first of a run
        // that starts at index 1.
        let pair = m
            .sample_with(&[2e3, 4e4], 5, 0, 2, Sampler::Ddim, 4, &NoProgress)
            .unwrap();
        let second = m
            .sample_with(&[4e4], 5, 1, 1, Sampler::Ddim, 4, &NoProgress)
            .unwrap();
        assert_eq!(&pair[nv..], &second[..]);
        assert!(m.card.val_loss.iter().all(|v| v.is_finite()));
        let energies = [2e3, 4e4];
        let a = m
            .sample_with(&energies, 5, 0, 2, Sampler::Ddim, 4, &NoProgress)
            .unwrap();
        assert_eq!(a.len(), 2 * nv);
        let cut = m.cfg.transform.cut_mev as f32;
        assert!(a.iter().all(|&v| v == 0.0 || v >= cut));
        assert_eq!(
            m.sample_with(&energies, 5, 0, 1, Sampler::Ddim, 4, &NoProgress)
                .unwrap(),
            a
        );
        let loaded = CaloDiffusion::load(&opts.out).unwrap();
        assert_eq!(
            loaded
                .sample_with(&energies, 5, 0, 2, Sampler::Ddim, 4, &NoProgress)
                .unwrap(),
            a
        );
        let d = m
            .sample_with(&energies[..1], 6, 0, 1, Sampler::Ddpm, 20, &NoProgress)
            .unwrap();
        assert_eq!(d.len(), nv);
        m
    }
}

//! iCaloFlow: inductive normalizing flows for CaloChallenge datasets 2 and 3 (Buckley, Krause,
//! Pang, Shih, "Inductive simulation of calorimeter showers with normalizing flows",
//! Phys. Rev. D 109, 033006; reference code `claudius-krause/inductive-caloflow`).
//!
//! Three conditional flows generate a shower layer by layer:
//! - Flow-1 p(E_0..E_44 | E_inc): 45 layer energies, x = logit(E_i / 65 GeV), context
//!   log10(E_inc / MeV) − 4.5.
//! - Flow-2 p(I_0 | E_0, E_inc): the normalised voxels of layer 0, x = logit(I_0 / ΣI_0),
//!   context (log10 E_inc − 4.5, logit(E_0 / 65 GeV) / 4).
//! - Flow-3 p(I_i | I_{i−1}, E_i, E_{i−1}, E_inc), i = 1..44: context (log10 E_inc − 4.5,
//!   logit(E_i/65 GeV), logit(E_{i−1}/65 GeV), logit(normalised I_{i−1}), one-hot(i − 1) of 44):
//!   1 + 2 + L + 44 inputs (191 for dataset 2, 947 for dataset 3).
//!
//! Preprocessing as the reference code: U(0, 5 keV) noise on every voxel and layer energy
//! (fresh for every mini-batch), normalisation of each layer to sum 1, logit with α = 1e-6
//! (logit(α + (1 − 2α)x)). Generation inverts it: voxels = clamp((σ(x) − α)/(1 − 2α), 0, 1) ×
//! E_i (the layer energy from Flow-1, not renormalised), then the 15 keV cut; Flow-3 sees the
//! generated previous layer with fresh noise, as in training. One deviation: a layer energy
//! above 65 GeV (possible above ~700 GeV) is clamped to 65 GeV before the logit, where the
//! reference code would produce NaN.
//!
//! Teachers are MAFs (8 MADE-RQS blocks); students are IAFs with the same blocks and
//! permutations, distilled from the frozen teacher with the reference's "fully guided" loss
//! (x-pass, z-pass, intermediate states and MADE outputs; the small CPU presets' Flow-3 uses
//! the x-pass only). Flow-1 is never distilled: students reuse the teacher's.

use crate::flowparts::{
    batched, check_energies, check_previous, flow_path, likelihood_batches, load_flows, log_dlogit,
    materialise, run_jobs, settings_with_steps, time_flow, write_model_dir, Job,
};
use crate::registry::{DensitySpace, ModelInfo, StepTiming};
use crate::{
    file_sha256, read_showers, unix_time, Generator, LikelihoodOptions, ModelError, ModelKind,
    ModelOption, Preset, Progress, Result, SampleOptions, TrainOptions, TrainOutcome,
};
use caloforge_core::DatasetKind;
use caloforge_nn::device::{cpu_autodiff, Precision};
use caloforge_nn::flow::fast::FastFlow;
use caloforge_nn::flow::train::{
    load_flow, save_flow, BatchSource, DistillLoss, TrainReport, TrainSettings,
};
use caloforge_nn::flow::{Flow, FlowConfig, FlowKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;

const LAYERS: usize = 45;

/// Teacher (MAF) or student (IAF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// MAF teachers trained by maximum likelihood.
    Teacher,
    /// IAF students distilled from a teacher.
    Student,
}

/// One flow's architecture and training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// MADE hidden width.
    pub hidden: usize,
    /// MADE hidden-to-hidden layers (nflows `num_blocks`).
    pub n_hidden: usize,
    /// MADE-RQS blocks.
    pub blocks: usize,
    /// Spline bins.
    pub bins: usize,
    /// Spline tail bound.
    pub tail_bound: f64,
    /// Optimisation (a OneCycle `total_steps` of 0 means epochs × steps per epoch).
    pub train: TrainSettings,
    /// Distillation terms (students).
    #[serde(default)]
    pub distill: Option<DistillLoss>,
    /// Dropout after each MADE hidden-to-hidden layer in maximum-likelihood training.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Stage {
    /// The flow architecture of this stage for `d` features and `c` context inputs.
    pub fn flow_config(
        &self,
        d: usize,
        c: usize,
        kind: FlowKind,
        permutation_seed: u64,
    ) -> FlowConfig {
        FlowConfig {
            features: d,
            context: c,
            hidden: self.hidden,
            n_hidden: self.n_hidden,
            blocks: self.blocks,
            bins: self.bins,
            tail_bound: self.tail_bound,
            kind,
            permutation_seed,
            permutation: Default::default(),
            dropout: self.dropout,
        }
    }
}

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ICaloFlowConfig {
    /// Always "icaloflow".
    pub model: String,
    /// Dataset (2 or 3).
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// Teacher or student.
    pub role: Role,
    /// Upper end of the uniform noise added to voxels and layer energies (MeV).
    pub noise_level: f64,
    /// Voxels and layer energies below this are set to 0 after generation (MeV).
    pub threshold: f64,
    /// Layer-energy normalisation (MeV).
    pub normalization: f64,
    /// Logit offset α.
    pub alpha: f64,
    /// Fraction of the file's showers (the last ones) used for validation.
    pub validation_fraction: f64,
    /// At most this many validation samples per flow (a random subset, fixed noise).
    pub max_validation_samples: usize,
    /// Flow-1 (teachers only; students reuse the teacher's).
    #[serde(default)]
    pub flow1: Option<Stage>,
    /// Flow-2.
    pub flow2: Stage,
    /// Flow-3.
    pub flow3: Stage,
}

impl ICaloFlowConfig {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: ICaloFlowConfig = toml::from_str(text)
            .map_err(|e| ModelError::Config(format!("iCaloFlow configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("iCaloFlow configuration: {m}")));
        if self.model != "icaloflow" {
            return bad(format!("model is {:?}, expected \"icaloflow\"", self.model));
        }
        if !matches!(self.dataset, DatasetKind::Ds2 | DatasetKind::Ds3) {
            return bad(format!(
                "dataset: iCaloFlow models datasets 2 and 3, not {}",
                self.dataset
            ));
        }
        if self.role == Role::Teacher && self.flow1.is_none() {
            return bad("a teacher needs [flow1]".into());
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!(
                "validation_fraction must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        if !(self.normalization > 0.0
            && self.alpha > 0.0
            && self.alpha < 0.5
            && self.noise_level >= 0.0)
        {
            return bad("need normalization > 0, 0 < alpha < 0.5, noise_level >= 0".into());
        }
        for (i, s) in [self.flow1.as_ref(), Some(&self.flow2), Some(&self.flow3)]
            .into_iter()
            .enumerate()
        {
            if let Some(s) = s {
                s.train
                    .validate(&format!("iCaloFlow configuration: flow{}.train", i + 1))?;
                if !(s.tail_bound.is_finite() && s.tail_bound > 0.0) {
                    return bad(format!("flow{}: tail_bound must be > 0", i + 1));
                }
                if s.train.batch_size == 0 || s.hidden == 0 || s.blocks == 0 || s.bins < 2 {
                    return bad(format!(
                        "flow{}: batch_size, hidden, blocks must be > 0 and bins >= 2",
                        i + 1
                    ));
                }
                if self.role == Role::Student && i > 0 && s.distill.is_none() {
                    return bad(format!(
                        "flow{}: a student needs [flow{}.distill]",
                        i + 1,
                        i + 1
                    ));
                }
            }
        }
        Ok(())
    }
    /// The dataset kind.
    pub fn kind(&self) -> DatasetKind {
        self.dataset
    }
    /// Voxels per layer.
    pub fn layer_size(&self) -> usize {
        self.kind().n_voxels() / LAYERS
    }
    /// Features and context width of flow `k` (1, 2, 3).
    pub fn dims(&self, k: usize) -> (usize, usize) {
        let l = self.layer_size();
        match k {
            1 => (LAYERS, 1),
            2 => (l, 2),
            _ => (l, 3 + l + (LAYERS - 1)),
        }
    }
    fn logit(&self, x: f64) -> f32 {
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * x;
        (y / (1.0 - y)).ln() as f32
    }
    fn inverse_logit(&self, v: f32) -> f64 {
        let s = 1.0 / (1.0 + (-(v as f64)).exp());
        ((s - self.alpha) / (1.0 - 2.0 * self.alpha)).clamp(0.0, 1.0)
    }
    fn energy_feature(&self, e: f64) -> f32 {
        self.logit((e / self.normalization).clamp(0.0, 1.0))
    }
    fn inc_feature(e_inc: f64) -> f32 {
        (e_inc.log10() - 4.5) as f32
    }
}

/// Per-flow record in the model card.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowCard {
    /// Exact architecture (with permutation seed).
    pub config: FlowConfig,
    /// Trainable parameters.
    pub parameters: usize,
    /// Training report.
    pub report: TrainReport,
}

/// The model card written next to the weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    /// "icaloflow".
    pub model: String,
    /// Teacher or student.
    pub role: Role,
    /// Dataset.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// caloforge version.
    pub caloforge_version: String,
    /// Training file.
    pub data_file: String,
    /// Its SHA-256.
    pub data_sha256: String,
    /// Training and validation showers.
    pub n_train: usize,
    /// Validation showers.
    pub n_validation: usize,
    /// Seed.
    pub seed: u64,
    /// Teacher directory (students).
    pub teacher: Option<String>,
    /// Incident-energy range of the training showers (MeV).
    #[serde(default)]
    pub energy_range: Option<(f64, f64)>,
    /// Flows, by name ("flow1", "flow2", "flow3").
    pub flows: std::collections::BTreeMap<String, FlowCard>,
    /// Unix time of the last update.
    pub updated_unix: u64,
}

/// A trained iCaloFlow.
pub struct ICaloFlow {
    /// Configuration.
    pub cfg: ICaloFlowConfig,
    /// Model card.
    pub card: ModelCard,
    flows: Vec<Flow>,
    fast: Vec<FastFlow>,
}

/// A model directory's configuration and model card (and the card's path).
fn read_model_dir(dir: &Path) -> Result<(ICaloFlowConfig, ModelCard, std::path::PathBuf)> {
    let cp = dir.join("config.toml");
    let text = std::fs::read_to_string(&cp)
        .map_err(|e| ModelError::file(&cp, format!("not a model directory ({e})")))?;
    let cfg = ICaloFlowConfig::from_toml(&text).map_err(|e| ModelError::file(&cp, e))?;
    let mp = dir.join("model_card.json");
    let card: ModelCard = crate::read_card(&mp)?;
    Ok((cfg, card, mp))
}

/// The flows of a trained teacher that a student's training needs: Flow-1 (copied into the
/// student) where the teacher has it, and the teacher of every flow being distilled.
struct TeacherFlows {
    cfg: ICaloFlowConfig,
    flow1: Option<(Flow, FlowCard)>,
    distilled: Vec<(usize, Flow)>,
}

impl TeacherFlows {
    fn load(dir: &Path, parts: &[usize]) -> Result<Self> {
        let (cfg, card, mp) = read_model_dir(dir)?;
        let device = caloforge_nn::burn::tensor::Device::flex();
        let load = |k: usize| -> Result<Option<(Flow, FlowCard)>> {
            match card.flows.get(&format!("flow{k}")) {
                Some(fc) => Ok(Some((
                    load_flow(&flow_path(dir, k), &fc.config, &device)?,
                    fc.clone(),
                ))),
                None => Ok(None),
            }
        };
        let mut distilled = Vec::new();
        for &k in parts.iter().filter(|&&k| k != 1) {
            let (f, _) = load(k)?.ok_or_else(|| {
                ModelError::file(
                    &mp,
                    format!("the teacher's flow{k} was not trained (train it with --flows {k})"),
                )
            })?;
            distilled.push((k, f));
        }
        Ok(TeacherFlows {
            flow1: load(1)?,
            cfg,
            distilled,
        })
    }

    /// The teacher of flow `k` (one of the loaded parts).
    fn flow(&self, k: usize) -> &Flow {
        &self
            .distilled
            .iter()
            .find(|(j, _)| *j == k)
            .expect("loaded part")
            .1
    }
}

/// Showers with their layer energies, and the indices used for one split.
struct Showers {
    e_inc: Vec<f64>,
    vox: Vec<f32>,
    layer_e: Vec<f64>,
    l: usize,
}

impl Showers {
    fn new(e_inc: Vec<f64>, vox: Vec<f32>, l: usize) -> Self {
        let n = e_inc.len();
        let mut layer_e = vec![0.0; n * LAYERS];
        for (s, le) in layer_e.chunks_mut(LAYERS).enumerate() {
            for (i, e) in le.iter_mut().enumerate() {
                *e = vox[(s * LAYERS + i) * l..(s * LAYERS + i + 1) * l]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
            }
        }
        Showers {
            e_inc,
            vox,
            layer_e,
            l,
        }
    }
    fn layer(&self, s: usize, i: usize) -> &[f32] {
        &self.vox[(s * LAYERS + i) * self.l..(s * LAYERS + i + 1) * self.l]
    }
}

/// logit of a layer with fresh noise, normalised to sum 1.
fn push_layer(cfg: &ICaloFlowConfig, layer: &[f32], rng: &mut ChaCha8Rng, out: &mut Vec<f32>) {
    let start = out.len();
    let mut sum = 0.0f64;
    for &v in layer {
        let n = v as f64 + cfg.noise_level * rng.random::<f64>();
        sum += n;
        out.push(n as f32);
    }
    let sum = if sum > 0.0 { sum } else { 1.0 };
    for v in &mut out[start..] {
        *v = cfg.logit(*v as f64 / sum);
    }
}

/// Flow-3's context for layer `i`: log10 E_inc − 4.5, the layer energies of layer i and i − 1
/// (MeV), the previous layer's voxels `prev` normalised with fresh noise, and one-hot(i − 1).
#[allow(clippy::too_many_arguments)]
fn push_flow3_context(
    cfg: &ICaloFlowConfig,
    e_inc: f64,
    e: f64,
    e_prev: f64,
    prev: &[f32],
    i: usize,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<f32>,
) {
    out.extend([
        ICaloFlowConfig::inc_feature(e_inc),
        cfg.energy_feature(e),
        cfg.energy_feature(e_prev),
    ]);
    push_layer(cfg, prev, rng, out);
    out.extend((1..LAYERS).map(|k| if k == i { 1.0 } else { 0.0 }));
}

/// Training samples of flow `stage` from showers `idx`.
struct StageSource<'a> {
    cfg: &'a ICaloFlowConfig,
    s: &'a Showers,
    idx: &'a [usize],
    stage: usize,
}

impl StageSource<'_> {
    fn row(&self, j: usize, rng: &mut ChaCha8Rng, x: &mut Vec<f32>, c: &mut Vec<f32>) {
        let cfg = self.cfg;
        let noisy = |e: f64, rng: &mut ChaCha8Rng| e + cfg.noise_level * rng.random::<f64>();
        match self.stage {
            1 => {
                let s = self.idx[j];
                for i in 0..LAYERS {
                    let e = noisy(self.s.layer_e[s * LAYERS + i], rng);
                    x.push(cfg.energy_feature(e));
                }
                c.push(ICaloFlowConfig::inc_feature(self.s.e_inc[s]));
            }
            2 => {
                let s = self.idx[j];
                push_layer(cfg, self.s.layer(s, 0), rng, x);
                let e0 = noisy(self.s.layer_e[s * LAYERS], rng);
                c.push(ICaloFlowConfig::inc_feature(self.s.e_inc[s]));
                c.push(cfg.energy_feature(e0) / 4.0);
            }
            _ => {
                let (s, i) = (self.idx[j / (LAYERS - 1)], j % (LAYERS - 1) + 1);
                push_layer(cfg, self.s.layer(s, i), rng, x);
                let e = noisy(self.s.layer_e[s * LAYERS + i], rng);
                let ep = noisy(self.s.layer_e[s * LAYERS + i - 1], rng);
                let prev = self.s.layer(s, i - 1);
                push_flow3_context(cfg, self.s.e_inc[s], e, ep, prev, i, rng, c);
            }
        }
    }
}

impl BatchSource for StageSource<'_> {
    fn len(&self) -> usize {
        if self.stage == 3 {
            self.idx.len() * (LAYERS - 1)
        } else {
            self.idx.len()
        }
    }
    fn dims(&self) -> (usize, usize) {
        self.cfg.dims(self.stage)
    }
    fn batch(&self, idx: &[usize], rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
        let (d, c) = self.dims();
        let (mut x, mut ctx) = (
            Vec::with_capacity(idx.len() * d),
            Vec::with_capacity(idx.len() * c),
        );
        for &j in idx {
            self.row(j, rng, &mut x, &mut ctx);
        }
        (x, ctx)
    }
}

impl ICaloFlow {
    fn write_meta(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &[])
    }

    /// Generates layer energies and voxels for showers `energies`, using per-shower RNG
    /// streams `rngs` (advanced in a fixed order: Flow-1 z, Flow-2 z, then per layer noise and z).
    fn sample_batch(&self, energies: &[f64], rngs: &mut [ChaCha8Rng]) -> Vec<f32> {
        let cfg = &self.cfg;
        let l = cfg.layer_size();
        let n = energies.len();
        let normals = |rng: &mut ChaCha8Rng, k: usize, out: &mut Vec<f32>| {
            out.extend((0..k).map(|_| rng.sample::<f32, _>(StandardNormal)))
        };
        // Flow-1.
        let mut z = Vec::with_capacity(n * LAYERS);
        for r in rngs.iter_mut() {
            normals(r, LAYERS, &mut z);
        }
        let ctx: Vec<f32> = energies
            .iter()
            .map(|&e| ICaloFlowConfig::inc_feature(e))
            .collect();
        let (x1, _) = self.fast[0].sample_from_base(&z, &ctx);
        let le: Vec<f64> = x1
            .iter()
            .map(|&v| {
                let e = cfg.inverse_logit(v) * cfg.normalization;
                if e < cfg.threshold {
                    0.0
                } else {
                    e
                }
            })
            .collect();
        let mut out = vec![0.0f32; n * LAYERS * l];
        let place = |out: &mut [f32], x: &[f32], i: usize| {
            for s in 0..n {
                let e = le[s * LAYERS + i];
                for (v, &xv) in out[(s * LAYERS + i) * l..(s * LAYERS + i + 1) * l]
                    .iter_mut()
                    .zip(&x[s * l..(s + 1) * l])
                {
                    let e_v = cfg.inverse_logit(xv) * e;
                    *v = if e_v < cfg.threshold { 0.0 } else { e_v as f32 };
                }
            }
        };
        // Flow-2.
        let mut z = Vec::with_capacity(n * l);
        for r in rngs.iter_mut() {
            normals(r, l, &mut z);
        }
        let ctx: Vec<f32> = (0..n)
            .flat_map(|s| {
                [
                    ICaloFlowConfig::inc_feature(energies[s]),
                    cfg.energy_feature(le[s * LAYERS]) / 4.0,
                ]
            })
            .collect();
        let (x2, _) = self.fast[1].sample_from_base(&z, &ctx);
        place(&mut out, &x2, 0);
        // Flow-3, layer by layer.
        let (_, c3) = cfg.dims(3);
        for i in 1..LAYERS {
            let mut ctx = Vec::with_capacity(n * c3);
            let mut z = Vec::with_capacity(n * l);
            for (s, r) in rngs.iter_mut().enumerate() {
                push_flow3_context(
                    cfg,
                    energies[s],
                    le[s * LAYERS + i],
                    le[s * LAYERS + i - 1],
                    &out[(s * LAYERS + i - 1) * l..(s * LAYERS + i) * l],
                    i,
                    r,
                    &mut ctx,
                );
                normals(r, l, &mut z);
            }
            let (x3, _) = self.fast[2].sample_from_base(&z, &ctx);
            place(&mut out, &x3, i);
        }
        out
    }
}

impl ICaloFlow {
    /// A model with freshly initialised (untrained) weights: for timing the architecture of a
    /// preset without training it. A student preset gets the dataset's teacher Flow-1.
    pub fn untrained(cfg: &ICaloFlowConfig, seed: u64) -> Result<Self> {
        let device = cpu_autodiff(Precision::F32, seed);
        let teacher_flow1 = Stage {
            hidden: 256,
            n_hidden: 1,
            blocks: 8,
            bins: 8,
            tail_bound: 14.0,
            train: cfg.flow2.train.clone(),
            distill: None,
            dropout: 0.0,
        };
        let mut flows = Vec::new();
        for k in 1..=3 {
            let st = match k {
                1 => cfg.flow1.clone().unwrap_or(teacher_flow1.clone()),
                2 => cfg.flow2.clone(),
                _ => cfg.flow3.clone(),
            };
            let (d, c) = cfg.dims(k);
            let kind = if k > 1 && cfg.role == Role::Student {
                FlowKind::Iaf
            } else {
                FlowKind::Maf
            };
            let fc = st.flow_config(d, c, kind, seed + k as u64);
            fc.validate()?;
            flows.push(Flow::new(fc, &device));
        }
        let card = ModelCard {
            model: "icaloflow".into(),
            role: cfg.role,
            dataset: cfg.dataset,
            caloforge_version: env!("CARGO_PKG_VERSION").into(),
            data_file: String::new(),
            data_sha256: String::new(),
            n_train: 0,
            n_validation: 0,
            seed,
            teacher: None,
            energy_range: None,
            flows: Default::default(),
            updated_unix: unix_time(),
        };
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(ICaloFlow {
            cfg: cfg.clone(),
            card,
            flows,
            fast,
        })
    }
}

/// The iCaloFlow family in the registry.
pub struct ICaloFlowKind;

/// iCaloFlow's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "icaloflow-ds2",
    "icaloflow-ds3",
    "icaloflow-ds2-student",
    "icaloflow-ds3-student",
    "icaloflow-small",
    "icaloflow-small-student",
    "icaloflow-tiny",
    "icaloflow-tiny-student",
);

impl ModelKind for ICaloFlowKind {
    crate::forward_kind!(ICaloFlow, ICaloFlowConfig, |c| c.kind());
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "icaloflow",
            paper: "Buckley, Krause, Pang, Shih, Phys. Rev. D 109, 033006 (inductive flows)",
            presets: PRESETS,
            options: &[ModelOption::Parts, ModelOption::Teacher],
        }
    }
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        ICaloFlow::train(config, opts, progress)
    }
}

impl ICaloFlow {
    /// Times `steps` optimizer steps of each flow of `cfg` (untrained weights, standard-normal
    /// synthetic data of the flow's shapes; an optimizer step costs the same whatever the
    /// values). A teacher's flows train by maximum likelihood; a student's Flow-2 and Flow-3 are
    /// distilled from an untrained teacher with the architecture of the dataset's teacher
    /// preset (`icaloflow-ds2` or `-ds3`).
    pub fn bench_train(
        cfg: &ICaloFlowConfig,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let teacher_cfg = match cfg.role {
            Role::Teacher => None,
            Role::Student => Some(ICaloFlowConfig::from_toml(&crate::preset_text(&format!(
                "icaloflow-ds{}",
                cfg.dataset.name()
            ))?)?),
        };
        let mut rows = Vec::new();
        for k in 1..=3 {
            let st = match k {
                1 => match (&cfg.flow1, &teacher_cfg) {
                    (Some(s), None) => s.clone(),
                    _ => continue, // a student keeps its teacher's Flow-1
                },
                2 => cfg.flow2.clone(),
                _ => cfg.flow3.clone(),
            };
            let (d, c) = cfg.dims(k);
            let bs = batch.unwrap_or(st.train.batch_size).max(1);
            let timing = match &teacher_cfg {
                None => {
                    let fc = st.flow_config(d, c, FlowKind::Maf, seed);
                    time_flow(k, fc, None, bs, steps, seed, progress)?
                }
                Some(t) => {
                    let ts = if k == 2 { &t.flow2 } else { &t.flow3 };
                    let tc = ts.flow_config(d, c, FlowKind::Maf, seed);
                    let fc = FlowConfig {
                        hidden: st.hidden,
                        n_hidden: st.n_hidden,
                        ..tc.clone()
                    };
                    let terms = st.distill.ok_or_else(|| {
                        ModelError::Config(format!("flow{k}: a student needs [flow{k}.distill]"))
                    })?;
                    time_flow(k, fc, Some((tc, terms)), bs, steps, seed, progress)?
                }
            };
            rows.push(timing);
        }
        Ok(rows)
    }
}

impl ICaloFlow {
    /// Trains the flows of `opts.parts` (all by default) into `opts.out`; the other flows of the
    /// directory are kept. Each flow trains through the one training loop with its own
    /// checkpoint (`checkpoints/flowK.ckpt`).
    pub fn train(
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let cfg = ICaloFlowConfig::from_toml(config)?;
        let kind = cfg.kind();
        let t0 = std::time::Instant::now();
        let parts: Vec<usize> = if opts.parts.is_empty() {
            vec![1, 2, 3]
        } else {
            opts.parts.clone()
        };
        if let Some(p) = parts.iter().find(|&&p| !(1..=3).contains(&p)) {
            return Err(ModelError::Config(format!(
                "--flows: iCaloFlow has flows 1, 2, 3; got {p}"
            )));
        }
        let teacher = match (cfg.role, &opts.teacher) {
            (Role::Student, Some(t)) => {
                let t = TeacherFlows::load(t, &parts)?;
                if t.cfg.role != Role::Teacher || t.cfg.dataset != cfg.dataset {
                    return Err(ModelError::Config(format!(
                        "--teacher: the teacher must be a dataset-{} iCaloFlow teacher",
                        cfg.dataset
                    )));
                }
                Some(t)
            }
            (Role::Student, None) => {
                return Err(ModelError::Config(
                    "a student needs --teacher RUN (a trained teacher)".into(),
                ))
            }
            (Role::Teacher, Some(_)) => {
                return Err(ModelError::Config(
                    "--teacher is only for student presets".into(),
                ))
            }
            (Role::Teacher, None) => None,
        };
        std::fs::create_dir_all(&opts.out).map_err(|e| ModelError::file(&opts.out, e))?;
        let (e_inc, vox) = read_showers(&opts.data, kind, opts.max_showers)?;
        let n = e_inc.len();
        if n < 2 {
            return Err(ModelError::file(
                &opts.data,
                "need at least 2 showers (training and validation)",
            ));
        }
        let n_val = ((n as f64 * cfg.validation_fraction).round() as usize).clamp(1, n - 1);
        let energy_range = crate::energy_range(&e_inc);
        let showers = Showers::new(e_inc, vox, cfg.layer_size());
        let train_idx: Vec<usize> = (0..n - n_val).collect();
        let val_idx: Vec<usize> = (n - n_val..n).collect();
        let device = cpu_autodiff(Precision::F32, opts.seed);
        // Flows already in the output directory (training a subset keeps the others).
        let mp = opts.out.join("model_card.json");
        let old_card: Option<ModelCard> = match std::fs::read_to_string(&mp) {
            Ok(t) => Some(serde_json::from_str(&t).map_err(|e| ModelError::file(&mp, e))?),
            Err(_) => None,
        };
        let data_sha256 = file_sha256(&opts.data)?;
        if let Some(c) = &old_card {
            check_previous(&mp, &c.data_sha256, &c.flows, &data_sha256, &parts, opts)?;
        }
        let mut card = ModelCard {
            model: "icaloflow".into(),
            role: cfg.role,
            dataset: cfg.dataset,
            caloforge_version: env!("CARGO_PKG_VERSION").into(),
            data_file: opts.data.display().to_string(),
            data_sha256,
            n_train: train_idx.len(),
            n_validation: n_val,
            seed: opts.seed,
            teacher: opts.teacher.as_ref().map(|t| t.display().to_string()),
            energy_range: Some(energy_range),
            flows: old_card.map(|c| c.flows).unwrap_or_default(),
            updated_unix: unix_time(),
        };
        if let Some((f1, c1)) = teacher.as_ref().and_then(|t| t.flow1.as_ref()) {
            // Students reuse the teacher's Flow-1.
            save_flow(f1, &flow_path(&opts.out, 1))?;
            card.flows.insert("flow1".into(), c1.clone());
        }
        let to_train: Vec<usize> = parts
            .iter()
            .copied()
            .filter(|&k| !(k == 1 && teacher.is_some()))
            .collect();
        let stage_of = |k: usize| match k {
            1 => cfg.flow1.clone(),
            2 => Some(cfg.flow2.clone()),
            _ => Some(cfg.flow3.clone()),
        };
        let sources: Vec<(StageSource, StageSource)> = to_train
            .iter()
            .map(|&k| {
                let src = |idx| StageSource {
                    cfg: &cfg,
                    s: &showers,
                    idx,
                    stage: k,
                };
                (src(&train_idx), src(&val_idx))
            })
            .collect();
        // Initial weights are drawn here, one flow after the other, from the device's seeded
        // RNG: drawn inside the concurrent threads they would depend on thread timing.
        let mut jobs = Vec::with_capacity(to_train.len());
        for (&k, (train, val)) in to_train.iter().zip(&sources) {
            let st = stage_of(k).ok_or_else(|| {
                ModelError::Config(format!("flow{k}: this preset has no [flow{k}]"))
            })?;
            let (d, c) = cfg.dims(k);
            let fc = match &teacher {
                None => st.flow_config(d, c, FlowKind::Maf, opts.seed.wrapping_add(k as u64)),
                Some(t) => FlowConfig {
                    hidden: st.hidden,
                    n_hidden: st.n_hidden,
                    kind: FlowKind::Iaf,
                    ..t.flow(k).cfg.clone()
                },
            };
            fc.validate()?;
            let flow0 = Flow::new(fc, &device);
            caloforge_nn::weights::initialize(&flow0.net);
            let teacher = match &teacher {
                None => None,
                Some(t) => Some((
                    t.flow(k),
                    st.distill.ok_or_else(|| {
                        ModelError::Config(format!("flow{k}: a student needs [flow{k}.distill]"))
                    })?,
                )),
            };
            jobs.push(Job {
                k,
                flow0,
                settings: settings_with_steps(&st.train, train.len()),
                train,
                val: materialise(val, cfg.max_validation_samples, opts.seed ^ 0x5eed),
                teacher,
            });
        }
        let outcome = run_jobs(jobs, opts, t0, progress, &mut card.flows, 3)?;
        card.updated_unix = unix_time();
        let model = ICaloFlow {
            cfg,
            card,
            flows: vec![],
            fast: vec![],
        };
        model.write_meta(&opts.out)?;
        Ok(outcome)
    }
}

impl Generator for ICaloFlow {
    fn kind(&self) -> &'static dyn ModelKind {
        &ICaloFlowKind
    }

    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.kind())
    }

    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }

    fn macs_per_shower(&self, _opts: &SampleOptions) -> Option<f64> {
        // Flow-1 and Flow-2 once, Flow-3 for every layer after the first.
        let m: Vec<f64> = self
            .fast
            .iter()
            .map(|f| f.macs_per_sample() as f64)
            .collect();
        (m.len() == 3).then(|| m[0] + m[1] + (LAYERS - 1) as f64 * m[2])
    }

    fn sample(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        _opts: &SampleOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        self.sample_showers(energies, seed, first, batch, progress)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &self.flows)
    }

    fn density_space(&self) -> Option<DensitySpace> {
        Some(DensitySpace {
            dims: LAYERS * (self.cfg.layer_size() + 1),
            over: format!(
                "the 45 layer energies (MeV) and the 45 × {} voxel fractions of their layer, \
                 dequantised with U(0, {} MeV) noise as in training",
                self.cfg.layer_size(),
                self.cfg.noise_level
            ),
            method: "exact (normalizing flows)",
        })
    }

    /// log p (nats) of each shower as a density over its 45 layer energies (MeV) and the
    /// voxel fractions of each layer: Flow-1 + Flow-2 + Flow-3 of every later layer, on the
    /// shower dequantised as in training (fresh U(0, noise) on the layer energies, on the voxels
    /// before they are normalised, and on the previous layer of Flow-3's context), plus the
    /// log-Jacobians of the logits. Shower j draws its noise from `shower_rng(seed, first + j)`.
    fn log_likelihood(
        &self,
        energies: &[f64],
        showers: &[f32],
        seed: u64,
        first: u64,
        batch: usize,
        _opts: &LikelihoodOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        let v = self.cfg.kind().n_voxels();
        likelihood_batches(
            energies,
            showers,
            v,
            seed,
            first,
            batch,
            progress,
            |e, rows, rngs| Ok(self.log_prob_batch(e, rows, rngs)),
        )
    }
}

impl ICaloFlow {
    /// [`Generator::log_likelihood`] of one batch.
    fn log_prob_batch(&self, energies: &[f64], rows: &[f32], rngs: &mut [ChaCha8Rng]) -> Vec<f64> {
        let cfg = &self.cfg;
        let (l, n) = (cfg.layer_size(), energies.len());
        let (_, c3) = cfg.dims(3);
        let s = Showers::new(energies.to_vec(), rows.to_vec(), l);
        let (mut x1, mut c1) = (Vec::with_capacity(n * LAYERS), Vec::with_capacity(n));
        let (mut x2, mut c2) = (Vec::with_capacity(n * l), Vec::with_capacity(2 * n));
        let mut x3 = Vec::with_capacity(n * (LAYERS - 1) * l);
        let mut c3v = Vec::with_capacity(n * (LAYERS - 1) * c3);
        let mut jac = vec![0.0f64; n];
        let ln_norm = cfg.normalization.ln();
        for (j, r) in rngs.iter_mut().enumerate() {
            let inc = ICaloFlowConfig::inc_feature(energies[j]);
            let le: Vec<f64> = (0..LAYERS)
                .map(|i| s.layer_e[j * LAYERS + i] + cfg.noise_level * r.random::<f64>())
                .collect();
            let start = x1.len();
            x1.extend(le.iter().map(|&e| cfg.energy_feature(e)));
            jac[j] += x1[start..]
                .iter()
                .map(|&x| log_dlogit(cfg.alpha, x) - ln_norm)
                .sum::<f64>();
            c1.push(inc);
            push_layer(cfg, s.layer(j, 0), r, &mut x2);
            c2.extend([inc, cfg.energy_feature(le[0]) / 4.0]);
            for i in 1..LAYERS {
                push_layer(cfg, s.layer(j, i), r, &mut x3);
                let prev = s.layer(j, i - 1);
                push_flow3_context(cfg, energies[j], le[i], le[i - 1], prev, i, r, &mut c3v);
            }
        }
        let frac = |x: &[f32]| x.iter().map(|&x| log_dlogit(cfg.alpha, x)).sum::<f64>();
        let (_, lp1) = self.fast[0].log_prob(&x1, &c1);
        let (_, lp2) = self.fast[1].log_prob(&x2, &c2);
        let (_, lp3) = self.fast[2].log_prob(&x3, &c3v);
        (0..n)
            .map(|j| {
                let rows3 = j * (LAYERS - 1)..(j + 1) * (LAYERS - 1);
                jac[j]
                    + lp1[j]
                    + lp2[j]
                    + frac(&x2[j * l..(j + 1) * l])
                    + lp3[rows3.clone()].iter().sum::<f64>()
                    + frac(&x3[rows3.start * l..rows3.end * l])
            })
            .collect()
    }

    /// Generates showers `first..first + energies.len()` of seed `seed` (see
    /// [`Generator::sample`]).
    pub fn sample_showers(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        check_energies(energies)?;
        batched(
            "generate",
            energies.len(),
            self.cfg.kind().n_voxels(),
            seed,
            first,
            batch,
            progress,
            |range, rngs| Ok(self.sample_batch(&energies[range], rngs)),
        )
    }

    /// Reads a model directory (all three flows must be trained).
    pub fn load(dir: &Path) -> Result<Self> {
        let (cfg, card, mp) = read_model_dir(dir)?;
        let flows: Vec<Flow> = load_flows(dir, &card.flows, &mp, 3, "")?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(ICaloFlow {
            cfg,
            card,
            flows,
            fast,
        })
    }
}

#[cfg(test)]
mod tests;

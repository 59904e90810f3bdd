//! CaloFlow for CaloChallenge dataset 1 (Krause, Pang, Shih, arXiv:2210.14245; reference code
//! `Ian-Pang/caloflow-for-calochallenge`, ported as specified in
//! `docs/design/caloflow-ds1.md`).
//!
//! Two conditional flows (MADE-RQS blocks, as iCaloFlow's):
//! - Flow-1, the energy flow p(u | E_inc) over the N "unit-space" numbers of the N calorimeter
//!   layers: u_0 = ΣE_k / (c·E_inc) (c = 2.42 photons, 6.93 pions), u_{k+1} = E_k / Σ_{j≥k} E_j
//!   for k < N − 1, x = logit(α + (1 − 2α)u); context log10(3·E_inc / 100 GeV). Six blocks of
//!   hidden 64 × 2, a random permutation of all features after every block.
//! - Flow-2, the shower flow p(voxels | E_inc, E_0..E_{N−1}) over all voxels (368 photons, 533
//!   pions), each layer normalised to sum 1 and logit'ed; context log10(3·E_inc / 100 GeV) and
//!   log10(E_k / 100 GeV + 1e-8) − 1. Eight blocks, dropout 0.05, the reference's permutations:
//!   every calorimeter layer reversed in place after even blocks and permuted at random within
//!   itself after odd ones (layers never mix).
//!
//! Preprocessing as the reference: energies in units of 100 GeV; U(0, noise) added to every
//! voxel, fresh for every mini-batch (1 keV; 0.1 keV for the pion energy flow), layer energies
//! summed after the noise. Generation: Flow-1 energies back from unit space, Flow-2 voxels
//! (σ(x) − α)/(1 − 2α) renormalised per layer by Σ|s| to the Flow-1 layer energy, clamped to
//! [0, 1 TeV], then the 10 keV cut.
//!
//! Teachers are MAFs; a student (`role = "student"`) is an IAF with the teacher's Flow-2 blocks
//! and permutations, distilled from the frozen teacher with the guided loss of iCaloFlow
//! (x-pass, z-pass, intermediate states and MADE outputs; the reference's photon student is
//! "fully guided" in the same way), and reuses the teacher's Flow-1. Differences from the
//! reference (documented in the design note): the student's z-pass is conditioned on the
//! mini-batch's own contexts (the reference draws them from the energy flow); the pion student
//! is guided with the teacher's permutations (the reference's is unguided with its own); the
//! student trains without dropout.

use crate::flowparts::{
    batched, check_energies, check_previous, flow_path, likelihood_batches, load_flows, log_dlogit,
    materialise, run_jobs, settings_with_steps, time_flow, write_model_dir, Job,
};
use crate::icaloflow::{ModelCard, Role, Stage};
use crate::registry::{DensitySpace, ModelInfo, StepTiming};
use crate::{
    file_sha256, read_showers, unix_time, Generator, LikelihoodOptions, ModelError, ModelKind,
    ModelOption, Preset, Progress, Result, SampleOptions, TrainOptions, TrainOutcome,
};
use caloforge_core::DatasetKind;
use caloforge_nn::device::{cpu_autodiff, Precision};
use caloforge_nn::flow::fast::FastFlow;
use caloforge_nn::flow::train::{save_flow, BatchSource};
use caloforge_nn::flow::{Flow, FlowConfig, FlowKind, PermutationLayout};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaloFlowConfig {
    /// Always "caloflow".
    pub model: String,
    /// Dataset: 1-photons or 1-pions.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// Teacher or student.
    pub role: Role,
    /// The internal energy unit (MeV): 1e5 in the reference.
    pub unit: f64,
    /// Upper end of the uniform noise on every voxel for the shower flow (MeV).
    pub noise_level: f64,
    /// Upper end of the uniform noise on every voxel for the energy flow (MeV).
    pub energy_flow_noise: f64,
    /// c of u_0 = ΣE_k / (c·E_inc).
    pub energy_scale: f64,
    /// Offset (in `unit`) added to a layer energy inside the log of the shower flow's context
    /// in training.
    pub context_offset: f64,
    /// The same offset at generation (the reference's pion code uses 1e-9 there, 1e-8 in
    /// training).
    pub generation_context_offset: f64,
    /// Generated voxels below this are set to 0 (MeV).
    pub threshold: f64,
    /// Generated voxels are capped at this (MeV).
    pub max_voxel: f64,
    /// Logit offset α.
    pub alpha: f64,
    /// Fraction of the file's showers (the last ones) used for validation.
    pub validation_fraction: f64,
    /// At most this many validation samples per flow (a random subset, fixed noise).
    pub max_validation_samples: usize,
    /// Flow-1, the energy flow (teachers; students reuse the teacher's).
    #[serde(default)]
    pub flow1: Option<Stage>,
    /// Flow-2, the shower flow.
    pub flow2: Stage,
}

/// The energy flow of a student's untrained stand-in (timing only): the reference's shape.
fn default_flow1(train: &caloforge_nn::flow::train::TrainSettings) -> Stage {
    Stage {
        hidden: 64,
        n_hidden: 2,
        blocks: 6,
        bins: 8,
        tail_bound: 14.0,
        train: train.clone(),
        distill: None,
        dropout: 0.0,
    }
}

impl CaloFlowConfig {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: CaloFlowConfig = toml::from_str(text)
            .map_err(|e| ModelError::Config(format!("CaloFlow configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("CaloFlow configuration: {m}")));
        if self.model != "caloflow" {
            return bad(format!("model is {:?}, expected \"caloflow\"", self.model));
        }
        if !self.dataset.is_ds1() {
            return bad(format!(
                "dataset: CaloFlow models dataset 1 (1-photons, 1-pions), not {}",
                self.dataset
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!(
                "validation_fraction must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        let nonneg = [
            self.noise_level,
            self.energy_flow_noise,
            self.context_offset,
            self.generation_context_offset,
            self.threshold,
        ];
        if !(self.unit > 0.0
            && self.energy_scale > 0.0
            && self.max_voxel > 0.0
            && self.alpha > 0.0
            && self.alpha < 0.5
            && nonneg.iter().all(|v| v.is_finite() && *v >= 0.0))
        {
            return bad("need unit, energy_scale, max_voxel > 0, 0 < alpha < 0.5, noise levels, offsets and threshold >= 0".into());
        }
        match (self.role, &self.flow1) {
            (Role::Teacher, None) => return bad("a teacher needs [flow1] (the energy flow)".into()),
            (Role::Student, Some(_)) => {
                return bad("a student reuses its teacher's energy flow: remove [flow1]".into())
            }
            _ => {}
        }
        if self.role == Role::Student && self.flow2.distill.is_none() {
            return bad("a student needs [flow2.distill]".into());
        }
        for (k, s) in [self.flow1.as_ref(), Some(&self.flow2)]
            .into_iter()
            .enumerate()
        {
            let Some(s) = s else { continue };
            s.train
                .validate(&format!("CaloFlow configuration: flow{}.train", k + 1))?;
            if !(s.tail_bound.is_finite() && s.tail_bound > 0.0) {
                return bad(format!("flow{}: tail_bound must be > 0", k + 1));
            }
            if s.train.batch_size == 0 || s.hidden == 0 || s.blocks == 0 || s.bins < 2 {
                return bad(format!(
                    "flow{}: batch_size, hidden, blocks must be > 0 and bins >= 2",
                    k + 1
                ));
            }
            if !(0.0..1.0).contains(&s.dropout) {
                return bad(format!("flow{}: dropout must be in [0, 1)", k + 1));
            }
        }
        Ok(())
    }

    /// Voxels of each calorimeter layer, in file order.
    pub fn layer_sizes(&self) -> Vec<usize> {
        self.dataset
            .geometry(None)
            .expect("embedded binning parses")
            .layer_sizes()
    }

    /// Features and context width of flow `k` (1 or 2).
    pub fn dims(&self, k: usize) -> (usize, usize) {
        let n = self.layer_sizes().len();
        match k {
            1 => (n, 1),
            _ => (self.dataset.n_voxels(), n + 1),
        }
    }

    /// The flow architecture of flow `k` for `stage`.
    fn flow_config(&self, k: usize, stage: &Stage, kind: FlowKind, seed: u64) -> FlowConfig {
        let (d, c) = self.dims(k);
        FlowConfig {
            permutation: if k == 1 {
                PermutationLayout::RandomAfterEach
            } else {
                PermutationLayout::WithinGroups(self.layer_sizes())
            },
            ..stage.flow_config(d, c, kind, seed)
        }
    }

    fn logit(&self, u: f64) -> f32 {
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * u.clamp(0.0, 1.0);
        (y / (1.0 - y)).ln() as f32
    }
    /// (σ(v) − α)/(1 − 2α), not clamped.
    fn unlogit(&self, v: f32) -> f64 {
        let s = 1.0 / (1.0 + (-(v as f64)).exp());
        (s - self.alpha) / (1.0 - 2.0 * self.alpha)
    }

    /// The context of the energy flow: log10(3·E_inc / unit).
    fn inc_feature(&self, e_inc: f64) -> f32 {
        (3.0 * e_inc / self.unit).log10() as f32
    }

    /// The energy flow's variables of layer energies `le` (MeV) of a shower of `e_inc`.
    pub fn unit_space(&self, le: &[f64], e_inc: f64, out: &mut Vec<f32>) {
        let total: f64 = le.iter().sum();
        out.push(self.logit(total / (self.energy_scale * e_inc)));
        let mut tail = total;
        for &e in &le[..le.len() - 1] {
            out.push(self.logit(if tail > 0.0 { e / tail } else { 0.0 }));
            tail -= e;
        }
    }

    /// Layer energies (MeV) back from the energy flow's variables (the reference's
    /// `trafo_to_energy_space`; each u clamped to [0, 1]).
    pub fn from_unit_space(&self, x: &[f32], e_inc: f64, le: &mut Vec<f64>) {
        let u = |v: f32| self.unlogit(v).clamp(0.0, 1.0);
        let mut rest = u(x[0]) * self.energy_scale * e_inc;
        for &v in &x[1..] {
            let e = u(v) * rest;
            le.push(e);
            rest -= e;
        }
        le.push(rest.max(0.0));
    }

    /// log |∂x/∂E| of the energy flow's variables x (`unit_space` of `le`) with respect to the
    /// layer energies `le` (MeV): the stick-breaking map E → (ΣE/(c·E_inc), E_k / Σ_{j≥k} E_j)
    /// has log-determinant −ln(c·E_inc) − (N − 1) ln ΣE − Σ_k (N − 2 − k) ln(1 − r_k), then
    /// each logit's.
    pub fn unit_space_log_jacobian(&self, le: &[f64], e_inc: f64, x: &[f32]) -> f64 {
        let n = le.len();
        let total: f64 = le.iter().sum();
        let mut j = -(self.energy_scale * e_inc).ln() - (n as f64 - 1.0) * total.ln();
        let mut tail = total;
        for (k, &e) in le[..n - 1].iter().enumerate() {
            let next = tail - e;
            if n - 2 > k {
                j -= (n - 2 - k) as f64 * (next / tail).ln();
            }
            tail = next;
        }
        j + x.iter().map(|&v| log_dlogit(self.alpha, v)).sum::<f64>()
    }

    /// The shower flow's context: log10(3·E_inc / unit), log10(E_k / unit + offset) − 1.
    fn push_shower_context(&self, e_inc: f64, le: &[f64], offset: f64, out: &mut Vec<f32>) {
        out.push(self.inc_feature(e_inc));
        out.extend(
            le.iter()
                .map(|&e| ((e / self.unit + offset).log10() - 1.0) as f32),
        );
    }
}

/// Training samples of flow `part` from showers `idx`.
struct Source<'a> {
    cfg: &'a CaloFlowConfig,
    sizes: &'a [usize],
    e_inc: &'a [f64],
    vox: &'a [f32],
    idx: &'a [usize],
    part: usize,
}

impl Source<'_> {
    /// Appends row `j`'s variables to `x` and its context to `c`; returns the noisy layer
    /// energies it used.
    fn row(&self, j: usize, rng: &mut ChaCha8Rng, x: &mut Vec<f32>, c: &mut Vec<f32>) -> Vec<f64> {
        let cfg = self.cfg;
        let nv = cfg.dataset.n_voxels();
        let sh = self.idx[j];
        let row = &self.vox[sh * nv..(sh + 1) * nv];
        let noise = if self.part == 1 {
            cfg.energy_flow_noise
        } else {
            cfg.noise_level
        };
        let noisy: Vec<f64> = row
            .iter()
            .map(|&v| v as f64 + noise * rng.random::<f64>())
            .collect();
        let mut le = Vec::with_capacity(self.sizes.len());
        let mut off = 0;
        for &n in self.sizes {
            le.push(noisy[off..off + n].iter().sum::<f64>());
            off += n;
        }
        let e_inc = self.e_inc[sh];
        if self.part == 1 {
            cfg.unit_space(&le, e_inc, x);
            c.push(cfg.inc_feature(e_inc));
            return le;
        }
        let mut off = 0;
        for (&n, &e) in self.sizes.iter().zip(&le) {
            let norm = e + 1e-16 * cfg.unit;
            x.extend(noisy[off..off + n].iter().map(|&v| cfg.logit(v / norm)));
            off += n;
        }
        cfg.push_shower_context(e_inc, &le, cfg.context_offset, c);
        le
    }
}

impl BatchSource for Source<'_> {
    fn len(&self) -> usize {
        self.idx.len()
    }
    fn dims(&self) -> (usize, usize) {
        self.cfg.dims(self.part)
    }
    fn batch(&self, idx: &[usize], rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
        let (d, c) = self.dims();
        let mut x = Vec::with_capacity(idx.len() * d);
        let mut ctx = Vec::with_capacity(idx.len() * c);
        for &j in idx {
            self.row(j, rng, &mut x, &mut ctx);
        }
        (x, ctx)
    }
}

/// A trained CaloFlow.
pub struct CaloFlow {
    /// Configuration.
    pub cfg: CaloFlowConfig,
    /// Model card.
    pub card: ModelCard,
    sizes: Vec<usize>,
    flows: Vec<Flow>,
    fast: Vec<FastFlow>,
}

fn normals(rng: &mut ChaCha8Rng, k: usize, out: &mut Vec<f32>) {
    out.extend((0..k).map(|_| rng.sample::<f32, _>(StandardNormal)))
}

fn read_model_dir(dir: &Path) -> Result<(CaloFlowConfig, ModelCard, std::path::PathBuf)> {
    let cp = dir.join("config.toml");
    let text = std::fs::read_to_string(&cp)
        .map_err(|e| ModelError::file(&cp, format!("not a model directory ({e})")))?;
    let cfg = CaloFlowConfig::from_toml(&text).map_err(|e| ModelError::file(&cp, e))?;
    let mp = dir.join("model_card.json");
    let card: ModelCard = crate::read_card(&mp)?;
    if card.model != "caloflow" {
        return Err(ModelError::file(
            &mp,
            format!("a {} model, not a CaloFlow", card.model),
        ));
    }
    Ok((cfg, card, mp))
}

impl CaloFlow {
    fn empty_card(cfg: &CaloFlowConfig, seed: u64) -> ModelCard {
        ModelCard {
            model: "caloflow".into(),
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
        }
    }

    fn write_meta(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &[])
    }

    /// A model with freshly initialised (untrained) weights, for timing. A student gets an
    /// energy flow of the reference's shape.
    pub fn untrained(cfg: &CaloFlowConfig, seed: u64) -> Result<Self> {
        let device = cpu_autodiff(Precision::F32, seed);
        let st1 = cfg
            .flow1
            .clone()
            .unwrap_or_else(|| default_flow1(&cfg.flow2.train));
        let kind2 = match cfg.role {
            Role::Teacher => FlowKind::Maf,
            Role::Student => FlowKind::Iaf,
        };
        let mut flows = Vec::new();
        for (k, st, kind) in [(1, &st1, FlowKind::Maf), (2, &cfg.flow2, kind2)] {
            let fc = cfg.flow_config(k, st, kind, seed + k as u64);
            fc.validate()?;
            flows.push(Flow::new(fc, &device));
        }
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(CaloFlow {
            card: Self::empty_card(cfg, seed),
            sizes: cfg.layer_sizes(),
            cfg: cfg.clone(),
            flows,
            fast,
        })
    }

    /// Reads a model directory (both flows must be trained).
    pub fn load(dir: &Path) -> Result<Self> {
        let (cfg, card, mp) = read_model_dir(dir)?;
        let flows: Vec<Flow> = load_flows(dir, &card.flows, &mp, 2, "")?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(CaloFlow {
            sizes: cfg.layer_sizes(),
            cfg,
            card,
            flows,
            fast,
        })
    }

    /// Generates showers for `energies` with per-shower RNG streams `rngs` (advanced in a fixed
    /// order: Flow-1 z, then Flow-2 z).
    fn sample_batch(&self, energies: &[f64], rngs: &mut [ChaCha8Rng]) -> Vec<f32> {
        let cfg = &self.cfg;
        let n = energies.len();
        let nl = self.sizes.len();
        let nv = cfg.dataset.n_voxels();
        let mut z = Vec::with_capacity(n * nl);
        for r in rngs.iter_mut() {
            normals(r, nl, &mut z);
        }
        let ctx: Vec<f32> = energies.iter().map(|&e| cfg.inc_feature(e)).collect();
        let (x1, _) = self.fast[0].sample_from_base(&z, &ctx);
        let mut le = Vec::with_capacity(n * nl);
        for (s, &e) in energies.iter().enumerate() {
            cfg.from_unit_space(&x1[s * nl..(s + 1) * nl], e, &mut le);
        }
        let mut ctx = Vec::with_capacity(n * (nl + 1));
        let mut z = Vec::with_capacity(n * nv);
        for (s, r) in rngs.iter_mut().enumerate() {
            cfg.push_shower_context(
                energies[s],
                &le[s * nl..(s + 1) * nl],
                cfg.generation_context_offset,
                &mut ctx,
            );
            normals(r, nv, &mut z);
        }
        let (x2, _) = self.fast[1].sample_from_base(&z, &ctx);
        let mut out = vec![0.0f32; n * nv];
        for s in 0..n {
            let mut off = 0;
            for (k, &size) in self.sizes.iter().enumerate() {
                let range = s * nv + off..s * nv + off + size;
                let v: Vec<f64> = x2[range.clone()].iter().map(|&x| cfg.unlogit(x)).collect();
                let norm: f64 = v.iter().map(|a| a.abs()).sum();
                let e = le[s * nl + k];
                for (o, &a) in out[range].iter_mut().zip(&v) {
                    let val = if norm > 0.0 { a / norm * e } else { 0.0 };
                    let val = val.clamp(0.0, cfg.max_voxel);
                    *o = if val < cfg.threshold { 0.0 } else { val as f32 };
                }
                off += size;
            }
        }
        out
    }

    /// Trains the flows of `opts.parts` (both by default; a student distils Flow-2 and copies
    /// the teacher's Flow-1) into `opts.out`, concurrently, each with its own checkpoint.
    pub fn train(
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let cfg = CaloFlowConfig::from_toml(config)?;
        let t0 = std::time::Instant::now();
        let parts: Vec<usize> = if opts.parts.is_empty() {
            vec![1, 2]
        } else {
            opts.parts.clone()
        };
        if let Some(p) = parts.iter().find(|&&p| !(1..=2).contains(&p)) {
            return Err(ModelError::Config(format!(
                "--flows: CaloFlow has flows 1 (energies) and 2 (shower); got {p}"
            )));
        }
        let teacher = match (cfg.role, &opts.teacher) {
            (Role::Student, Some(t)) => {
                let (tcfg, tcard, tmp) = read_model_dir(t)?;
                if tcfg.role != Role::Teacher || tcfg.dataset != cfg.dataset {
                    return Err(ModelError::Config(format!(
                        "--teacher: the teacher must be a dataset-{} CaloFlow teacher",
                        cfg.dataset
                    )));
                }
                let loaded = load_flows(t, &tcard.flows, &tmp, 2, "the teacher's ")?;
                Some(loaded)
            }
            (Role::Student, None) => {
                return Err(ModelError::Config(
                    "a student needs --teacher RUN (a trained CaloFlow teacher)".into(),
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
        let (e_inc, vox) = read_showers(&opts.data, cfg.dataset, opts.max_showers)?;
        let n = e_inc.len();
        if n < 2 {
            return Err(ModelError::file(
                &opts.data,
                "need at least 2 showers (training and validation)",
            ));
        }
        let n_val = ((n as f64 * cfg.validation_fraction).round() as usize).clamp(1, n - 1);
        let train_idx: Vec<usize> = (0..n - n_val).collect();
        let val_idx: Vec<usize> = (n - n_val..n).collect();
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
            data_file: opts.data.display().to_string(),
            data_sha256,
            n_train: train_idx.len(),
            n_validation: n_val,
            teacher: opts.teacher.as_ref().map(|t| t.display().to_string()),
            energy_range: Some(crate::energy_range(&e_inc)),
            flows: old_card.map(|c| c.flows).unwrap_or_default(),
            ..Self::empty_card(&cfg, opts.seed)
        };
        if let Some(t) = &teacher {
            // Students reuse the teacher's energy flow.
            save_flow(&t[0].0, &flow_path(&opts.out, 1))?;
            card.flows.insert("flow1".into(), t[0].1.clone());
        }
        let to_train: Vec<usize> = parts
            .iter()
            .copied()
            .filter(|&k| !(k == 1 && teacher.is_some()))
            .collect();
        let sizes = cfg.layer_sizes();
        let sources: Vec<(Source, Source)> = to_train
            .iter()
            .map(|&k| {
                let src = |idx| Source {
                    cfg: &cfg,
                    sizes: &sizes,
                    e_inc: &e_inc,
                    vox: &vox,
                    idx,
                    part: k,
                };
                (src(&train_idx), src(&val_idx))
            })
            .collect();
        // Initial weights drawn one flow after the other from the device's seeded RNG.
        let device = cpu_autodiff(Precision::F32, opts.seed);
        let mut jobs = Vec::with_capacity(to_train.len());
        for (&k, (train, val)) in to_train.iter().zip(&sources) {
            let st = if k == 1 {
                cfg.flow1.as_ref().expect("validated: teachers have flow1")
            } else {
                &cfg.flow2
            };
            let fc = match &teacher {
                None => cfg.flow_config(k, st, FlowKind::Maf, opts.seed.wrapping_add(k as u64)),
                Some(t) => FlowConfig {
                    hidden: st.hidden,
                    n_hidden: st.n_hidden,
                    kind: FlowKind::Iaf,
                    ..t[1].0.cfg.clone()
                },
            };
            fc.validate()?;
            let flow0 = Flow::new(fc, &device);
            caloforge_nn::weights::initialize(&flow0.net);
            jobs.push(Job {
                k,
                flow0,
                settings: settings_with_steps(&st.train, train.len()),
                train,
                val: materialise(val, cfg.max_validation_samples, opts.seed ^ 0x5eed),
                teacher: teacher
                    .as_ref()
                    .map(|t| (&t[1].0, st.distill.expect("validated: students distil"))),
            });
        }
        let outcome = run_jobs(jobs, opts, t0, progress, &mut card.flows, 2)?;
        card.updated_unix = unix_time();
        let model = CaloFlow {
            sizes,
            cfg,
            card,
            flows: vec![],
            fast: vec![],
        };
        model.write_meta(&opts.out)?;
        Ok(outcome)
    }

    /// Times `steps` optimizer steps of each flow of `cfg` (untrained weights, synthetic data):
    /// a teacher's flows by maximum likelihood, a student's Flow-2 by distillation from an
    /// untrained teacher of the dataset's teacher preset.
    pub fn bench_train(
        cfg: &CaloFlowConfig,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let mut rows = Vec::new();
        match cfg.role {
            Role::Teacher => {
                let st1 = cfg.flow1.as_ref().expect("validated: teachers have flow1");
                for (k, st) in [(1, st1), (2, &cfg.flow2)] {
                    let fc = cfg.flow_config(k, st, FlowKind::Maf, seed);
                    let bs = batch.unwrap_or(st.train.batch_size).max(1);
                    rows.push(time_flow(k, fc, None, bs, steps, seed, progress)?);
                }
            }
            Role::Student => {
                let t = CaloFlowConfig::from_toml(&crate::preset_text(&format!(
                    "caloflow-ds{}",
                    cfg.dataset.name()
                ))?)?;
                let tc = t.flow_config(2, &t.flow2, FlowKind::Maf, seed);
                let fc = FlowConfig {
                    hidden: cfg.flow2.hidden,
                    n_hidden: cfg.flow2.n_hidden,
                    ..tc.clone()
                };
                let terms = cfg.flow2.distill.expect("validated: students distil");
                let bs = batch.unwrap_or(cfg.flow2.train.batch_size).max(1);
                rows.push(time_flow(
                    2,
                    fc,
                    Some((tc, terms)),
                    bs,
                    steps,
                    seed,
                    progress,
                )?);
            }
        }
        Ok(rows)
    }
}

/// The CaloFlow family in the registry.
pub struct CaloFlowKind;

/// CaloFlow's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "caloflow-ds1-photons",
    "caloflow-ds1-photons-student",
    "caloflow-ds1-pions",
    "caloflow-ds1-pions-student",
    "caloflow-small",
    "caloflow-small-student",
    "caloflow-tiny",
    "caloflow-tiny-student",
);

impl ModelKind for CaloFlowKind {
    crate::forward_kind!(CaloFlow, CaloFlowConfig, |c| c.dataset);
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "caloflow",
            paper: "Krause, Pang, Shih, arXiv:2210.14245 (CaloFlow for CaloChallenge dataset 1)",
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
        CaloFlow::train(config, opts, progress)
    }
}

impl Generator for CaloFlow {
    fn kind(&self) -> &'static dyn ModelKind {
        &CaloFlowKind
    }
    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.dataset)
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }
    fn macs_per_shower(&self, _opts: &SampleOptions) -> Option<f64> {
        Some(self.fast.iter().map(|f| f.macs_per_sample() as f64).sum())
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
        check_energies(energies)?;
        batched(
            "generate",
            energies.len(),
            self.cfg.dataset.n_voxels(),
            seed,
            first,
            batch,
            progress,
            |range, rngs| Ok(self.sample_batch(&energies[range], rngs)),
        )
    }
    fn save(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &self.flows)
    }
    fn density_space(&self) -> Option<DensitySpace> {
        Some(DensitySpace {
            dims: self.sizes.len() + self.cfg.dataset.n_voxels(),
            over: format!(
                "the {} layer energies (MeV, voxels dequantised with U(0, {} MeV)) and the voxel \
                 fractions of their layer (voxels dequantised with U(0, {} MeV)), as in training",
                self.sizes.len(),
                self.cfg.energy_flow_noise,
                self.cfg.noise_level
            ),
            method: "exact (normalizing flows)",
        })
    }
    /// log p (nats) of each shower as a density over its layer energies (MeV) and the voxel
    /// fractions of each layer: Flow-1 and Flow-2 on the shower dequantised as each was trained,
    /// plus the log-Jacobians of the energy flow's unit space and of the logits. Shower j draws
    /// its noise from `shower_rng(seed, first + j)`.
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
        let v = self.cfg.dataset.n_voxels();
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

impl CaloFlow {
    /// [`Generator::log_likelihood`] of one batch.
    fn log_prob_batch(&self, energies: &[f64], rows: &[f32], rngs: &mut [ChaCha8Rng]) -> Vec<f64> {
        let cfg = &self.cfg;
        let (n, nl, nv) = (energies.len(), self.sizes.len(), cfg.dataset.n_voxels());
        let idx: Vec<usize> = (0..n).collect();
        let source = |part| Source {
            cfg,
            sizes: &self.sizes,
            e_inc: energies,
            vox: rows,
            idx: &idx,
            part,
        };
        let (mut x1, mut c1) = (Vec::with_capacity(n * nl), Vec::with_capacity(n));
        let (mut x2, mut c2) = (Vec::with_capacity(n * nv), Vec::with_capacity(n * (nl + 1)));
        let mut jac = vec![0.0f64; n];
        for (j, r) in rngs.iter_mut().enumerate() {
            // Each flow's variables as its training rows make them.
            let start = x1.len();
            let le = source(1).row(j, r, &mut x1, &mut c1);
            jac[j] = cfg.unit_space_log_jacobian(&le, energies[j], &x1[start..]);
            let start = x2.len();
            source(2).row(j, r, &mut x2, &mut c2);
            jac[j] += x2[start..]
                .iter()
                .map(|&x| log_dlogit(cfg.alpha, x))
                .sum::<f64>();
        }
        let (_, lp1) = self.fast[0].log_prob(&x1, &c1);
        let (_, lp2) = self.fast[1].log_prob(&x2, &c2);
        (0..n).map(|j| jac[j] + lp1[j] + lp2[j]).collect()
    }
}

#[cfg(test)]
mod tests;

//! The model registry: every model family is one [`ModelKind`] (trains, loads, lists its
//! presets, declares its options), and a trained model is a [`Generator`] trait object (samples,
//! saves, describes itself). The CLI dispatches through [`REGISTRY`] only.
//!
//! Adding a model: write its module (config, network, a `ModelKind` and a `Generator`), put its
//! presets in `presets/`, and add one line to [`REGISTRY`].

use crate::{ModelError, Progress, Result, TrainOptions};
use caloforge_core::DatasetKind;
use std::path::Path;

/// An option of `train`, `generate` or `bench` that only some models take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOption {
    /// `--flows`: train a subset of the sub-networks.
    Parts,
    /// `--teacher`: a trained teacher (distilled students).
    Teacher,
    /// `--sampler`: the sampling algorithm.
    Sampler,
    /// `--steps`: the number of sampling steps.
    Steps,
    /// `--coarse-from`: upsample given (coarse or coarse-grained) showers.
    CoarseFrom,
    /// `--factor`: the step reduction of a progressive distillation.
    Factor,
}

impl ModelOption {
    /// The command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            ModelOption::Parts => "--flows",
            ModelOption::Teacher => "--teacher",
            ModelOption::Sampler => "--sampler",
            ModelOption::Steps => "--steps",
            ModelOption::CoarseFrom => "--coarse-from",
            ModelOption::Factor => "--factor",
        }
    }
}

/// Sampling options of `generate` and `bench` (None: the model's default).
#[derive(Debug, Clone, Default)]
pub struct SampleOptions {
    /// Sampler name.
    pub sampler: Option<String>,
    /// Sampling steps.
    pub steps: Option<usize>,
    /// Point-cloud models, for timing: this many points per shower, spread over the layers by a
    /// fixed Gaussian profile ([`timing_counts`]), instead of the model's sampled counts.
    pub points: Option<usize>,
}

/// Points per layer of a timing shower of `n` points over `layers` layers: a Gaussian
/// longitudinal profile centred on layer 0.3·layers with σ = 0.15·layers, rounded down, the
/// remaining points given to the layers with the largest remainders (ties: the first).
/// (`benchmarks/allshowers/speed.py` computes the same.)
pub fn timing_counts(n: usize, layers: usize) -> Vec<usize> {
    let (mu, sigma) = (0.3 * layers as f64, 0.15 * layers as f64);
    let w: Vec<f64> = (0..layers)
        .map(|l| (-(l as f64 - mu).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / total * n as f64).collect();
    let mut c: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..layers).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - c[a] as f64, exact[b] - c[b] as f64);
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let missing = n - c.iter().sum::<usize>();
    for &l in order.iter().take(missing) {
        c[l] += 1;
    }
    c
}

/// Settings of [`Generator::log_likelihood`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LikelihoodOptions {
    /// The exact trace of the Jacobian (one vector-Jacobian product per voxel) instead of
    /// Hutchinson's estimator.
    pub exact_trace: bool,
    /// Relative tolerance of the ODE solver.
    pub rtol: f64,
    /// Absolute tolerance of the ODE solver.
    pub atol: f64,
}

impl LikelihoodOptions {
    /// The adaptive Dormand–Prince solver at these tolerances, and the divergence estimator.
    pub fn ode(&self) -> (caloforge_nn::sde::OdeSolver, caloforge_nn::sde::Trace) {
        use caloforge_nn::sde::{OdeSolver, Trace};
        (
            OdeSolver::Rk45 {
                rtol: self.rtol,
                atol: self.atol,
            },
            if self.exact_trace {
                Trace::Exact
            } else {
                Trace::Hutchinson
            },
        )
    }
}

impl Default for LikelihoodOptions {
    /// Hutchinson, rtol = atol = 1e-5 (Song et al.).
    fn default() -> Self {
        LikelihoodOptions {
            exact_trace: false,
            rtol: 1e-5,
            atol: 1e-5,
        }
    }
}

/// What [`Generator::log_likelihood`] is a density over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DensitySpace {
    /// Its dimension (bits per dimension divide −log p by dims · ln 2).
    pub dims: usize,
    /// The variables, in words.
    pub over: String,
    /// How log p is computed.
    pub method: &'static str,
}

/// What a model generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Showers of a CaloChallenge dataset's voxels.
    Voxels(DatasetKind),
    /// Point clouds (x, y, layer, E) of a detector with this many layers (ShowerData files).
    Points {
        /// Detector layers.
        layers: usize,
    },
}

impl Output {
    /// The dataset of a voxel model.
    pub fn dataset(self) -> Option<DatasetKind> {
        match self {
            Output::Voxels(d) => Some(d),
            Output::Points { .. } => None,
        }
    }

    /// In words, for listings ("dataset 2", "points, 78 layers").
    pub fn describe(self) -> String {
        match self {
            Output::Voxels(d) => d.name().to_string(),
            Output::Points { layers } => format!("points ({layers} layers)"),
        }
    }
}

/// An incident particle of a point-cloud model: energy (GeV, as ShowerData files), unit
/// direction (z into the detector), PDG code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Incident {
    pub energy_gev: f64,
    pub direction: [f64; 3],
    pub pdg: i64,
}

/// An embedded preset: a TOML file named after the paper.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name (`--preset NAME`).
    pub name: &'static str,
    /// The TOML text.
    pub text: &'static str,
}

/// How a training run ended.
#[derive(Debug, Clone, Default)]
pub struct TrainOutcome {
    /// One line per trained part (parameters, steps, best validation loss).
    pub lines: Vec<String>,
    /// Every part the model needs is trained: the directory can generate.
    pub complete: bool,
    /// Stopped by Ctrl-C/SIGTERM (a checkpoint was written; `--resume` continues).
    pub interrupted: bool,
}

/// What a model family declares about itself.
#[derive(Debug)]
pub struct ModelInfo {
    /// The name stored as `model = "..."` in presets and config.toml.
    pub name: &'static str,
    /// The paper (authors, reference).
    pub paper: &'static str,
    /// The embedded presets.
    pub presets: &'static [Preset],
    /// The options beyond the common ones that this model takes.
    pub options: &'static [ModelOption],
}

/// A model family (one paper): trains, loads and lists its presets.
pub trait ModelKind: Sync {
    /// Name, paper, presets and options.
    fn info(&self) -> &'static ModelInfo;
    /// The name stored as `model = "..."` in presets and config.toml.
    fn name(&self) -> &'static str {
        self.info().name
    }
    /// The paper (authors, reference).
    fn paper(&self) -> &'static str {
        self.info().paper
    }
    /// The embedded presets.
    fn presets(&self) -> &'static [Preset] {
        self.info().presets
    }
    /// The options beyond the common ones that this model takes.
    fn options(&self) -> &'static [ModelOption] {
        self.info().options
    }
    /// Parses and validates a configuration: its dataset and its canonical TOML (what
    /// config.toml holds).
    fn canonical(&self, config: &str) -> Result<(Output, String)>;
    /// Checks a training run's options against a configuration before anything is written
    /// (e.g. a teacher a distillation needs); the default accepts everything.
    fn check_train(&self, _config: &str, _opts: &TrainOptions) -> Result<()> {
        Ok(())
    }
    /// Trains from a configuration (TOML) into `opts.out`.
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome>;
    /// Reads a trained model directory.
    fn load(&self, dir: &Path) -> Result<Box<dyn Generator>>;
    /// A model of a configuration's architecture with untrained weights (for timing).
    fn untrained(&self, config: &str, seed: u64) -> Result<Box<dyn Generator>>;
    /// Times optimizer steps of every trainable part of a configuration (`caloforge bench
    /// --train`): `steps` steps through the one training loop, on synthetic batches of the
    /// part's shapes, with `batch` (default: the configuration's batch size).
    fn bench_train(
        &self,
        _config: &str,
        _steps: usize,
        _batch: Option<usize>,
        _seed: u64,
        _progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        Err(ModelError::Config(format!(
            "{}: training is not timed by bench --train",
            self.name()
        )))
    }
}

/// Optimizer-step time of one trainable part (`caloforge bench --train`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepTiming {
    /// The part ("flow3", "denoiser", …).
    pub part: String,
    /// What one step does (e.g. "maximum likelihood", "distillation").
    pub what: String,
    /// Mini-batch size.
    pub batch: usize,
    /// Steps timed (after one untimed step).
    pub steps: usize,
    /// Mean wall seconds per step.
    pub seconds_per_step: f64,
}

/// Times the steps of one part for [`ModelKind::bench_train`]: a progress bar over its steps
/// and the step clock. Pass every training-loop progress report to [`PartTimer::tick`].
pub struct PartTimer<'a> {
    part: String,
    progress: &'a dyn Progress,
    clock: caloforge_nn::train::StepClock,
}

impl<'a> PartTimer<'a> {
    /// Starts timing `part`, whose run makes `steps` optimizer steps.
    pub fn new(part: &str, steps: usize, progress: &'a dyn Progress) -> Self {
        progress.start(part, &format!("time {part}"), steps as u64);
        PartTimer {
            part: part.into(),
            progress,
            clock: Default::default(),
        }
    }
    /// Records a step.
    pub fn tick(&mut self, p: &caloforge_nn::train::Progress) {
        self.clock.tick(p);
        self.progress.set(&self.part, p.step as u64, None);
    }
    /// The timing of the part's run (`what` one step does, with mini-batch `batch`).
    pub fn finish(self, what: &str, batch: usize) -> Result<StepTiming> {
        self.progress.finish(&self.part);
        let (seconds_per_step, steps) = self
            .clock
            .seconds_per_step()
            .ok_or_else(|| ModelError::Config("bench --train needs at least 2 steps".into()))?;
        Ok(StepTiming {
            part: self.part,
            what: what.into(),
            batch,
            steps,
            seconds_per_step,
        })
    }
}

/// A loaded model that generates showers.
pub trait Generator: Send + Sync {
    /// The model family.
    fn kind(&self) -> &'static dyn ModelKind;
    /// What it generates.
    fn output(&self) -> Output;
    /// Generates one shower per incident energy (MeV), row-major, `batch` at a time. Shower j of
    /// this call is shower `first + j` of the run: it draws from [`crate::shower_rng`]`(seed,
    /// first + j)`, so output depends only on (seed, shower index).
    fn sample(
        &self,
        energies: &[f64],
        seed: u64,
        first: u64,
        batch: usize,
        opts: &SampleOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>>;
    /// Point-cloud models: the points (x, y, layer, E; 4 values each, x and y in mm, E in GeV)
    /// of one shower per incident particle, `batch` at a time; shower j of the call draws from
    /// [`crate::shower_rng`]`(seed, first + j)` as [`Generator::sample`].
    fn sample_points(
        &self,
        _incidents: &[Incident],
        _seed: u64,
        _first: u64,
        _batch: usize,
        _opts: &SampleOptions,
        _progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        Err(ModelError::Config(format!(
            "{} generates voxels, not point clouds",
            self.kind().name()
        )))
    }
    /// Writes the model directory.
    fn save(&self, dir: &Path) -> Result<()>;
    /// The incident-energy range (MeV) of the training data, when known.
    fn trained_energy_range(&self) -> Option<(f64, f64)>;
    /// Multiply-adds of the network evaluations that generate one shower with `opts` (masked
    /// weights excluded), for `caloforge bench`'s GFLOP/s; `None` when not counted.
    fn macs_per_shower(&self, _opts: &SampleOptions) -> Option<f64> {
        None
    }
    /// The space of [`Generator::log_likelihood`]'s density; `None` for models that do not
    /// compute likelihoods.
    fn density_space(&self) -> Option<DensitySpace> {
        None
    }
    /// log p (nats) of each given shower (`energies.len()` rows of the dataset's voxels, MeV)
    /// under the model, as a density over the voxel energies; shower j of the call draws any
    /// randomness from [`crate::shower_rng`]`(seed, first + j)`.
    #[allow(clippy::too_many_arguments)]
    fn log_likelihood(
        &self,
        _energies: &[f64],
        _showers: &[f32],
        _seed: u64,
        _first: u64,
        _batch: usize,
        _opts: &LikelihoodOptions,
        _progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        Err(ModelError::Config(format!(
            "{} does not compute likelihoods",
            self.kind().name()
        )))
    }
    /// Superresolution models: the shower widths (voxels per shower) that
    /// [`Generator::upsample`] takes; `None` for models that do not upsample.
    fn upsample_widths(&self) -> Option<Vec<usize>> {
        None
    }
    /// Superresolution models: fine showers from the given showers (`energies.len()` rows of
    /// `width` values), keeping each coarse voxel's energy; shower j of the call draws from
    /// [`crate::shower_rng`]`(seed, first + j)` like [`Generator::sample`].
    #[allow(clippy::too_many_arguments)]
    fn upsample(
        &self,
        _energies: &[f64],
        _showers: &[f32],
        _width: usize,
        _seed: u64,
        _first: u64,
        _batch: usize,
        _progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        Err(ModelError::Config(format!(
            "{} does not upsample showers (--coarse-from is for superresolution models)",
            self.kind().name()
        )))
    }
}

/// Every model family. Adding a model adds one line here.
pub static REGISTRY: &[&dyn ModelKind] = &[
    &crate::icaloflow::ICaloFlowKind,
    &crate::calodiffusion::CaloDiffusionKind,
    &crate::supercalo::SuperCaloKind,
    &crate::caloflow::CaloFlowKind,
    &crate::caloscore::CaloScoreKind,
    &crate::caloscore2::CaloScore2Kind,
    &crate::allshowers::AllShowersKind,
];

/// The model family named `name`.
pub fn kind(name: &str) -> Result<&'static dyn ModelKind> {
    REGISTRY
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = REGISTRY.iter().map(|k| k.name()).collect();
            ModelError::Config(format!(
                "unknown model {name:?}: expected one of {}",
                names.join(", ")
            ))
        })
}

/// The `model` key of a configuration text.
pub fn model_name(config: &str, origin: &str) -> Result<String> {
    let t: toml::Table =
        toml::from_str(config).map_err(|e| ModelError::Config(format!("{origin}: {e}")))?;
    t.get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| ModelError::Config(format!("{origin}: no 'model' key")))
}

/// Every embedded preset with its model family.
pub fn presets() -> impl Iterator<Item = (&'static dyn ModelKind, Preset)> {
    REGISTRY
        .iter()
        .flat_map(|k| k.presets().iter().map(move |p| (*k, *p)))
}

/// A preset by name, or a TOML file when `name` is a path to one: its model family and text.
pub fn preset(name: &str) -> Result<(&'static dyn ModelKind, String)> {
    if let Some((k, p)) = presets().find(|(_, p)| p.name == name) {
        return Ok((k, p.text.to_string()));
    }
    let path = Path::new(name);
    if path.extension().is_some_and(|e| e == "toml") {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
        let k = kind(&model_name(&text, name)?).map_err(|e| ModelError::file(path, e))?;
        return Ok((k, text));
    }
    let names: Vec<&str> = presets().map(|(_, p)| p.name).collect();
    Err(ModelError::Config(format!(
        "unknown preset {name:?}: expected one of {} or a .toml file",
        names.join(", ")
    )))
}

/// A configuration text with `KEY=VALUE` overrides applied (`train --set`), in order. KEY is
/// a configuration key, dotted for nested tables (`transform.alpha`); VALUE is a TOML value
/// (`0.02`, `true`, `[16, 32]`, `"cosine"`), or a string when it does not parse as one. The
/// model's own configuration check then rejects unknown keys and bad values. The family
/// (`model`) cannot be changed: that is another preset.
pub fn with_overrides(config: &str, sets: &[String]) -> Result<String> {
    if sets.is_empty() {
        return Ok(config.to_string());
    }
    let bad = |s: &str, why: &str| ModelError::Config(format!("--set {s:?}: {why}"));
    let mut doc: toml::Table =
        toml::from_str(config).map_err(|e| ModelError::Config(format!("configuration: {e}")))?;
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| bad(s, "expected KEY=VALUE"))?;
        let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(bad(s, "empty key"));
        }
        if path == ["model"] {
            return Err(bad(
                s,
                "the model family is the preset's; choose another preset",
            ));
        }
        let value = value.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let (last, parents) = path.split_last().expect("non-empty path");
        let mut table = &mut doc;
        for p in parents {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| bad(s, &format!("{p} is not a table")))?;
        }
        table.insert(last.to_string(), value);
    }
    toml::to_string(&doc).map_err(|e| ModelError::Config(format!("configuration: {e}")))
}

/// The model family of a trained model directory.
pub fn kind_of_dir(dir: &Path) -> Result<&'static dyn ModelKind> {
    let p = dir.join("config.toml");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| ModelError::file(&p, format!("not a caloforge model directory ({e})")))?;
    let name = model_name(&text, &p.display().to_string())?;
    kind(&name).map_err(|e| ModelError::file(&p, e))
}

/// Loads any trained model directory.
pub fn load(dir: &Path) -> Result<Box<dyn Generator>> {
    kind_of_dir(dir)?.load(dir)
}

/// Refuses options the model does not take: one error naming the option and the model.
pub fn check_options(kind: &dyn ModelKind, used: &[ModelOption]) -> Result<()> {
    for o in used {
        if !kind.options().contains(o) {
            let takes: Vec<&str> = kind.options().iter().map(|o| o.flag()).collect();
            return Err(ModelError::Config(format!(
                "{} is not an option of {} (it takes: {})",
                o.flag(),
                kind.name(),
                if takes.is_empty() {
                    "none of --flows, --teacher, --sampler, --steps, --coarse-from".to_string()
                } else {
                    takes.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Prepares the output directory of a training run before any work: refuses to replace a
/// trained model unless `--force`, checks that `--resume` (or training more parts of the model)
/// uses the configuration the directory was trained with (only `epochs` may change), and writes
/// the canonical `config.toml` so that the directory names its model from the first checkpoint
/// on. Returns the canonical configuration.
pub fn prepare_out(kind: &dyn ModelKind, config: &str, opts: &TrainOptions) -> Result<String> {
    let (_, canonical) = kind.canonical(config)?;
    let out = &opts.out;
    if out.exists() && !out.is_dir() {
        return Err(ModelError::file(out, "exists and is not a directory"));
    }
    let cp = out.join("config.toml");
    match std::fs::read_to_string(&cp) {
        Ok(saved) => {
            if model_name(&saved, &cp.display().to_string())
                .ok()
                .as_deref()
                != Some(kind.name())
                && !opts.force
            {
                return Err(ModelError::file(
                    &cp,
                    format!(
                        "holds another model than {}; pass --force to replace it",
                        kind.name()
                    ),
                ));
            }
            if !opts.force {
                if opts.resume || !opts.parts.is_empty() {
                    check_same_config(&saved, &canonical, &cp)?;
                } else {
                    return Err(ModelError::file(
                        out,
                        "holds a model already: --resume continues its training, --force replaces it",
                    ));
                }
            }
        }
        Err(_) if opts.resume => {
            return Err(ModelError::file(out, "--resume: no model to continue here"));
        }
        Err(_) => {}
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::file(out, e))?;
    caloforge_core::io::check_writable(&out.join("model_card.json"))?;
    // Temporary files of a run killed while it wrote (SIGKILL leaves no chance to clean up).
    for d in [out.clone(), out.join("checkpoints")] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp") && e.path().is_file() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    crate::write_text(&cp, &canonical)?;
    Ok(canonical)
}

/// The first sentence of a preset's leading comment (its description), at most 110 characters.
pub fn preset_description(text: &str) -> String {
    let comment: Vec<&str> = text
        .lines()
        .map_while(|l| l.strip_prefix('#'))
        .map(str::trim)
        .collect();
    let joined = comment.join(" ");
    let first = match joined.find(". ") {
        Some(i) => &joined[..=i],
        None => joined.as_str(),
    };
    if first.chars().count() > 110 {
        let cut: String = first.chars().take(109).collect();
        format!("{}…", cut.trim_end())
    } else {
        first.to_string()
    }
}

/// Removes every `epochs` key (training length) from a TOML table, recursively.
fn without_training_length(v: &mut toml::Value) {
    if let toml::Value::Table(t) = v {
        t.remove("epochs");
        for (_, x) in t.iter_mut() {
            without_training_length(x);
        }
    }
}

/// `--resume` continues the run of the same configuration: the configurations may differ in
/// training length (`epochs`) only.
pub fn check_same_config(saved: &str, new: &str, saved_path: &Path) -> Result<()> {
    let parse = |s: &str| -> Result<toml::Value> {
        toml::from_str::<toml::Table>(s)
            .map(toml::Value::Table)
            .map_err(|e| ModelError::file(saved_path, e))
    };
    let (mut a, mut b) = (parse(saved)?, parse(new)?);
    without_training_length(&mut a);
    without_training_length(&mut b);
    if a != b {
        return Err(ModelError::file(
            saved_path,
            "--resume with another configuration than the one this run was trained with (only `epochs` may change); train into a new directory",
        ));
    }
    Ok(())
}

/// Generated showers that cannot be physical.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Sanity {
    /// Showers checked.
    pub showers: u64,
    /// Showers with a NaN or infinite voxel.
    pub non_finite: u64,
    /// Showers whose total energy exceeds twice the incident energy.
    pub energy_above_2x_incident: u64,
    /// Showers with a voxel above the incident energy.
    pub voxel_above_incident: u64,
    /// Showers with a negative voxel.
    pub negative_voxel: u64,
}

impl Sanity {
    /// Counts the unphysical showers of a chunk (row-major, `n_voxels` per shower).
    pub fn add(&mut self, energies: &[f64], showers: &[f32], n_voxels: usize) {
        for (row, &e) in showers.chunks(n_voxels.max(1)).zip(energies) {
            self.showers += 1;
            let mut sum = 0.0f64;
            let (mut nf, mut big, mut neg) = (false, false, false);
            for &v in row {
                let v = v as f64;
                nf |= !v.is_finite();
                big |= v > e;
                neg |= v < 0.0;
                sum += v;
            }
            self.non_finite += nf as u64;
            self.voxel_above_incident += big as u64;
            self.negative_voxel += neg as u64;
            self.energy_above_2x_incident += (sum > 2.0 * e) as u64;
        }
    }
    /// Showers with any of the problems.
    pub fn bad_fraction_text(&self) -> Option<String> {
        let worst = self
            .non_finite
            .max(self.energy_above_2x_incident)
            .max(self.voxel_above_incident)
            .max(self.negative_voxel);
        (worst > 0).then(|| {
            let pct = |k: u64| 100.0 * k as f64 / self.showers.max(1) as f64;
            format!(
                "unphysical showers: {:.2} % with NaN/inf voxels, {:.2} % with E_tot > 2 E_inc, {:.2} % with a voxel above E_inc, {:.2} % with a negative voxel (of {})",
                pct(self.non_finite),
                pct(self.energy_above_2x_incident),
                pct(self.voxel_above_incident),
                pct(self.negative_voxel),
                self.showers
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_nested_and_typed_values_and_unknown_keys_fail() {
        let (kind, text) = preset("calodiffusion-ds2").unwrap();
        let sets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = with_overrides(
            &text,
            &sets(&[
                "validation_fraction=0.02",
                " transform.alpha = 1e-5",
                "layer_sizes=[8, 8]",
                "sampler=ddim",
                "validation_fraction=0.03",
            ]),
        )
        .unwrap();
        let c = crate::calodiffusion::CaloDiffusionConfig::from_toml(&t).unwrap();
        assert_eq!(c.validation_fraction, 0.03, "later overrides win");
        assert_eq!(c.transform.alpha, 1e-5);
        assert_eq!(c.layer_sizes, vec![8, 8]);
        assert_eq!(c.transform.max_dep, 2.0, "untouched keys stay");
        assert!(t.contains("sampler = \"ddim\""), "{t}");
        kind.canonical(&t).unwrap();
        assert_eq!(with_overrides(&text, &[]).unwrap(), text);
        let e = kind
            .canonical(&with_overrides(&text, &sets(&["validaton_fraction=0.1"])).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("validaton_fraction"), "{e}");
        for (s, why) in [
            ("model=icaloflow", "model family"),
            ("alpha", "KEY=VALUE"),
            ("transform..alpha=1", "empty key"),
            ("lr.x=1", "lr is not a table"),
        ] {
            let e = with_overrides(&text, &sets(&[s])).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
    }

    #[test]
    fn every_preset_parses_and_belongs_to_its_model() {
        for (k, p) in presets() {
            assert_eq!(model_name(p.text, p.name).unwrap(), k.name(), "{}", p.name);
            k.canonical(p.text)
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(!preset_description(p.text).is_empty(), "{}", p.name);
        }
        let names: Vec<&str> = presets().map(|(_, p)| p.name).collect();
        let mut u = names.clone();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), names.len(), "preset names are unique");
    }

    #[test]
    fn options_a_model_does_not_take_are_refused_by_name() {
        let cd = kind("calodiffusion").unwrap();
        let e = check_options(cd, &[ModelOption::Parts])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--flows") && e.contains("calodiffusion"), "{e}");
        check_options(cd, &[ModelOption::Sampler, ModelOption::Steps]).unwrap();
        let ic = kind("icaloflow").unwrap();
        let e = check_options(ic, &[ModelOption::Steps])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--steps") && e.contains("icaloflow"), "{e}");
        let e = check_options(ic, &[ModelOption::CoarseFrom])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--coarse-from"), "{e}");
        check_options(kind("supercalo").unwrap(), &[ModelOption::CoarseFrom]).unwrap();
        assert!(kind("nope").is_err());
    }

    #[test]
    fn resume_config_check_allows_epochs_only() {
        let p = Path::new("config.toml");
        let a = "model = \"x\"\nlr = 1.0\n[s]\nepochs = 2\nb = 3\n";
        check_same_config(a, &a.replace("epochs = 2", "epochs = 9"), p).unwrap();
        assert!(check_same_config(a, &a.replace("b = 3", "b = 4"), p).is_err());
    }

    #[test]
    fn sanity_counts_hand_made_showers() {
        let mut s = Sanity::default();
        // 3 showers of 2 voxels at E_inc = 10: fine; sum 25 > 20 and a voxel 15 > 10; NaN.
        s.add(
            &[10.0, 10.0, 10.0],
            &[1.0, 2.0, 15.0, 10.0, f32::NAN, 0.0],
            2,
        );
        assert_eq!(
            s,
            Sanity {
                showers: 3,
                non_finite: 1,
                energy_above_2x_incident: 1,
                voxel_above_incident: 1,
                negative_voxel: 0
            }
        );
        assert!(s.bad_fraction_text().unwrap().contains("33.33 %"));
        let mut ok = Sanity::default();
        ok.add(&[10.0], &[1.0, 2.0], 2);
        assert!(ok.bad_fraction_text().is_none());
    }
}

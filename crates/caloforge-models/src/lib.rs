//! caloforge-models: the generative shower models, one module per paper.
//!
//! - [`icaloflow`]: iCaloFlow (Buckley, Krause, Pang, Shih, Phys. Rev. D 109, 033006): inductive
//!   normalizing flows for datasets 2 and 3, MAF teachers and IAF students.
//! - [`calodiffusion`]: CaloDiffusion (Amram & Pedro): DDPM with a cylindrical U-Net (engine
//!   and network in `caloforge_nn::{diffusion, unet}`).
//!
//! Every model implements [`ShowerModel`]; a trained model is a directory with safetensors
//! weights, the TOML configuration (`config.toml`) and a model card (`model_card.json`). Presets
//! (the papers' settings and small ones for tests and the demo) are TOML files embedded from
//! `presets/`, named after the paper.

pub mod calodiffusion;
/// Device (backend) selection, re-exported for the CLI.
pub use caloforge_nn::device;
pub mod icaloflow;

use caloforge_core::DatasetKind;
use std::path::{Path, PathBuf};

/// Errors of model training, loading and generation.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A problem with a file (named).
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// Error from the data layer.
    #[error(transparent)]
    Core(#[from] caloforge_core::CoreError),
}

impl ModelError {
    /// A file error.
    pub fn file(path: &Path, msg: impl std::fmt::Display) -> Self {
        ModelError::File {
            path: path.display().to_string(),
            msg: msg.to_string(),
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Options of a training run that are not part of the model configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Training file (CaloChallenge format).
    pub data: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Seed of initialisation, shuffling and noise.
    pub seed: u64,
    /// Wall-clock budget for the whole run (minutes); training stops cleanly with the best
    /// weights so far.
    pub max_minutes: Option<f64>,
    /// Which sub-networks to train (model-specific numbering; empty: all).
    pub parts: Vec<usize>,
    /// A trained teacher (for distilled students).
    pub teacher: Option<PathBuf>,
    /// Use at most this many showers of the file.
    pub max_showers: Option<usize>,
    /// Hide progress bars.
    pub quiet: bool,
    /// Continue the flows already in `out` (same data file) from their saved weights and step.
    pub resume: bool,
}

/// Progress reporting hooks (the CLI draws bars with them).
pub trait Progress: Sync {
    /// A new task `key` (several may run at once) with `total` units of work.
    fn start(&self, key: &str, label: &str, total: u64);
    /// Sets the position of task `key`; `msg` is printed above the bars.
    fn set(&self, key: &str, pos: u64, msg: Option<String>);
    /// Ends task `key`.
    fn finish(&self, key: &str);
}

/// No progress output.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn set(&self, _: &str, _: u64, _: Option<String>) {}
    fn finish(&self, _: &str) {}
}

/// The interface every model implements.
pub trait ShowerModel: Sized {
    /// Model name (the module's).
    fn name(&self) -> &'static str;
    /// Dataset the model generates.
    fn dataset(&self) -> DatasetKind;
    /// Trains from the preset/configuration text `config` (TOML) and saves into `opts.out`.
    fn train(config: &str, opts: &TrainOptions, progress: &dyn Progress) -> Result<Self>;
    /// Generates one shower per incident energy (MeV), row-major, `batch` showers at a time.
    /// Shower k depends only on (seed, k).
    fn sample(
        &self,
        energies: &[f64],
        seed: u64,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>>;
    /// Writes the model directory.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Reads a model directory.
    fn load(dir: &Path) -> Result<Self>;
}

/// The embedded presets: (name, TOML text).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "icaloflow-ds2",
        include_str!("../presets/icaloflow-ds2.toml"),
    ),
    (
        "icaloflow-ds3",
        include_str!("../presets/icaloflow-ds3.toml"),
    ),
    (
        "icaloflow-ds2-student",
        include_str!("../presets/icaloflow-ds2-student.toml"),
    ),
    (
        "icaloflow-ds3-student",
        include_str!("../presets/icaloflow-ds3-student.toml"),
    ),
    (
        "icaloflow-small",
        include_str!("../presets/icaloflow-small.toml"),
    ),
    (
        "icaloflow-small-student",
        include_str!("../presets/icaloflow-small-student.toml"),
    ),
    (
        "calodiffusion-ds1-photons",
        include_str!("../presets/calodiffusion-ds1-photons.toml"),
    ),
    (
        "calodiffusion-ds1-pions",
        include_str!("../presets/calodiffusion-ds1-pions.toml"),
    ),
    (
        "calodiffusion-ds2",
        include_str!("../presets/calodiffusion-ds2.toml"),
    ),
    (
        "calodiffusion-ds3",
        include_str!("../presets/calodiffusion-ds3.toml"),
    ),
    (
        "calodiffusion-small",
        include_str!("../presets/calodiffusion-small.toml"),
    ),
];

/// The text of a preset, or of a TOML file when `name` is a path to one.
pub fn preset_text(name: &str) -> Result<String> {
    if let Some((_, t)) = PRESETS.iter().find(|(n, _)| *n == name) {
        return Ok(t.to_string());
    }
    let p = Path::new(name);
    if p.extension().is_some_and(|e| e == "toml") {
        return std::fs::read_to_string(p).map_err(|e| ModelError::file(p, e));
    }
    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    Err(ModelError::Config(format!(
        "unknown preset {name:?}: expected one of {} or a .toml file",
        names.join(", ")
    )))
}

/// The model name stored in a model directory's config.toml.
pub fn model_kind(dir: &Path) -> Result<String> {
    let p = dir.join("config.toml");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| ModelError::file(&p, format!("not a caloforge model directory ({e})")))?;
    let v: toml::Table = toml::from_str(&text).map_err(|e| ModelError::file(&p, e))?;
    v.get("model")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .ok_or_else(|| ModelError::file(&p, "no 'model' key"))
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::file(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let tmp = caloforge_core::io::temp_path(path);
    std::fs::write(&tmp, text).map_err(|e| ModelError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::file(path, e))
}

/// Showers of a file as f32 (row-major) with their incident energies; at most `max` showers.
pub fn read_showers(
    path: &Path,
    kind: DatasetKind,
    max: Option<usize>,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let f = caloforge_core::io::ShowerFile::open(path, Some(kind.n_voxels()))?;
    let n = max.map_or(f.len(), |m| m.min(f.len()));
    let mut out = Vec::with_capacity(n * f.n_voxels);
    let step = f.rows_per_window(256 << 20).max(1);
    let mut start = 0;
    while start < n {
        let cnt = step.min(n - start);
        out.extend(f.read_rows(start, cnt)?.into_iter().map(|v| v as f32));
        start += cnt;
    }
    Ok((f.energies[..n].to_vec(), out))
}

/// The RNG stream of generated shower `k` under `seed`: every model draws shower k's noise from
/// it, so output does not depend on batch size or threads.
pub fn shower_rng(seed: u64, k: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(k);
    r
}

/// Seconds since the Unix epoch (for model cards).
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

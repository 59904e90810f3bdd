//! caloforge-models: the generative shower models, one module per paper.
//!
//! - [`icaloflow`]: iCaloFlow (Buckley, Krause, Pang, Shih, Phys. Rev. D 109, 033006): inductive
//!   normalizing flows for datasets 2 and 3, MAF teachers and IAF students.
//! - [`calodiffusion`]: CaloDiffusion (Amram & Pedro): DDPM with a cylindrical U-Net (engine
//!   and network in `caloforge_nn::{diffusion, unet}`).
//! - [`supercalo`]: SuperCalo (Pang, Raine, Shih): coarse showers from a flow, upsampled by a
//!   superresolution flow; datasets 2 and 3.
//! - [`caloflow`]: CaloFlow (Krause, Pang, Shih) for dataset 1 (photons, pions): an energy flow
//!   and a MAF over the whole shower, IAF students.
//!
//! - [`allshowers`]: AllShowers (Buss, Day-Hall, Gaede, Kasieczka, Krüger): point clouds of
//!   every particle type and direction from one CNF transformer, with PointCountFM.
//!
//! Every model family is a [`ModelKind`] in the [`registry`]; a trained model is a
//! [`Generator`] and, on disk, a directory with safetensors weights, the TOML configuration
//! (`config.toml`) and a model card (`model_card.json`). Presets (the papers' settings and small
//! ones for tests and the demo) are TOML files embedded from `presets/`, named after the paper.

pub mod allshowers;
pub mod calodiffusion;
pub mod caloflow;
pub mod caloscore;
pub mod caloscore2;
mod diffusionparts;
pub(crate) mod flowparts;
/// Device (backend) selection, re-exported for the CLI.
pub use caloforge_nn::device;
pub mod icaloflow;
pub mod registry;
pub mod supercalo;

pub use registry::{
    DensitySpace, Generator, Incident, LikelihoodOptions, ModelKind, ModelOption, Output, Preset,
    SampleOptions, TrainOutcome,
};

/// The embedded presets `presets/<name>.toml` of the given names, as a `&[Preset]`.
#[macro_export]
macro_rules! presets {
    ($($name:literal),* $(,)?) => {
        &[$($crate::Preset {
            name: $name,
            text: include_str!(concat!("../presets/", $name, ".toml")),
        }),*]
    };
}

/// The [`ModelKind`] methods that only forward to a model type and its configuration type:
/// `canonical` (`Config::from_toml`, then the dataset expression over the parsed `c`), `load`
/// (`Model::load`), `untrained` (`Model::untrained(&config, seed)`) and, unless the arm is
/// `@base`, `bench_train` (`Model::bench_train(&config, steps, batch, seed, progress)`).
#[macro_export]
macro_rules! forward_kind {
    ($model:ident, $config:ident, |$c:ident| $ds:expr) => {
        $crate::forward_kind!(@base $model, $config, |$c| $ds);
        fn bench_train(
            &self,
            config: &str,
            steps: usize,
            batch: Option<usize>,
            seed: u64,
            progress: &dyn $crate::Progress,
        ) -> $crate::Result<Vec<$crate::registry::StepTiming>> {
            $model::bench_train(&$config::from_toml(config)?, steps, batch, seed, progress)
        }
    };
    (@base $model:ident, $config:ident, |$c:ident| $ds:expr) => {
        fn canonical(&self, config: &str) -> $crate::Result<($crate::Output, String)> {
            let $c = $config::from_toml(config)?;
            Ok(($crate::Output::Voxels($ds), $crate::to_toml(&$c)?))
        }
        fn load(&self, dir: &std::path::Path) -> $crate::Result<Box<dyn $crate::Generator>> {
            Ok(Box::new($model::load(dir)?))
        }
        fn untrained(
            &self,
            config: &str,
            seed: u64,
        ) -> $crate::Result<Box<dyn $crate::Generator>> {
            Ok(Box::new($model::untrained(&$config::from_toml(config)?, seed)?))
        }
    };
}

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
    /// Error from the network layer (weights, checkpoints, training).
    #[error(transparent)]
    Nn(#[from] caloforge_nn::train::NnError),
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
    /// Step reduction of a progressive distillation (a power of two; default 2).
    pub factor: Option<usize>,
    /// Use at most this many showers of the file.
    pub max_showers: Option<usize>,
    /// Hide progress bars.
    pub quiet: bool,
    /// Continue the interrupted run in `out` from its last checkpoint (same data and
    /// configuration; only `epochs` may grow).
    pub resume: bool,
    /// Replace a trained model already in `out`.
    pub force: bool,
    /// Seconds between periodic checkpoints (default 60; 0: after every optimizer step).
    pub checkpoint_seconds: Option<f64>,
}

impl TrainOptions {
    /// The training-loop control of one part: `seed`, the deadline, and its checkpoint
    /// `out/checkpoints/<file>` (every `checkpoint_seconds`, default 60 s; resumed with
    /// `--resume`).
    pub fn control(
        &self,
        seed: u64,
        deadline: Option<std::time::Instant>,
        file: &str,
    ) -> caloforge_nn::train::Control {
        caloforge_nn::train::Control {
            seed,
            deadline,
            checkpoint: Some(caloforge_nn::train::Checkpointing {
                path: self.out.join("checkpoints").join(file),
                every: std::time::Duration::from_secs_f64(
                    self.checkpoint_seconds.unwrap_or(60.0).max(0.0),
                ),
                resume: self.resume,
            }),
            stop: None,
        }
    }
}

/// " (stopped at the time budget)" / " (interrupted: ...)" for a report line.
pub fn stop_note(interrupted: bool, stopped_at_budget: bool) -> &'static str {
    if interrupted {
        " (interrupted: checkpoint written, continue with --resume)"
    } else if stopped_at_budget {
        " (stopped at the time budget)"
    } else {
        ""
    }
}

/// The smallest and largest incident energy (MeV).
pub fn energy_range(e: &[f64]) -> (f64, f64) {
    e.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    })
}

/// A configuration as TOML text.
pub fn to_toml<T: serde::Serialize>(cfg: &T) -> Result<String> {
    toml::to_string(cfg).map_err(|e| ModelError::Config(e.to_string()))
}

/// Reads a model card; a directory with a configuration but no card is a run that has not saved
/// a model yet.
pub fn read_card<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ModelError::file(
            path,
            format!("no trained model here yet ({e}): was training interrupted? continue it with `caloforge train --resume`"),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, e))
}

/// Progress reporting hooks (the CLI draws bars with them).
pub trait Progress: Sync {
    /// A new task `key` (several may run at once) with `total` units of work.
    fn start(&self, key: &str, label: &str, total: u64);
    /// Sets the position of task `key`; `msg` is printed above the bars (`--quiet` hides it).
    fn set(&self, key: &str, pos: u64, msg: Option<String>);
    /// Ends task `key`.
    fn finish(&self, key: &str);
    /// A warning about the user's input or settings: printed even where progress is hidden.
    fn warn(&self, msg: String) {
        eprintln!("warning: {msg}");
    }
}

/// No progress output.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn set(&self, _: &str, _: u64, _: Option<String>) {}
    fn finish(&self, _: &str) {}
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

/// Writes `value` as pretty JSON to `path` atomically (model cards, preprocessing).
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ModelError::Config(e.to_string()))?;
    write_text(path, &text)
}

/// The energy of each layer of a shower (`out.len()` equal layers).
pub(crate) fn layer_sums(row: &[f32], out: &mut [f64]) {
    let per_layer = row.len() / out.len().max(1);
    for (e, layer) in out.iter_mut().zip(row.chunks(per_layer.max(1))) {
        *e = layer.iter().map(|&v| v as f64).sum();
    }
}

/// Writes `text` to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    Ok(caloforge_core::io::write_bytes_atomic(
        path,
        text.as_bytes(),
    )?)
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

/// The RNG stream of generated shower `k` under `seed` (the workspace's one per-shower stream):
/// every model draws shower k's noise from it, so output does not depend on batch size or
/// threads.
pub use caloforge_core::rng::shower_rng;

/// Seconds since the Unix epoch (for model cards).
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serde form of the `dataset` key of configurations: `2`, `3` or `"2"`, `"3"`, `"1-photons"`,
/// `"1-pions"` (written as the string).
pub mod dataset_key {
    use caloforge_core::DatasetKind;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the dataset name.
    pub fn serialize<S: Serializer>(k: &DatasetKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.name())
    }

    /// Reads a dataset number or name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DatasetKind, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::N(1) => {
                return Err(serde::de::Error::custom(
                    "dataset 1 needs its particle: \"1-photons\" or \"1-pions\"",
                ))
            }
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        text.parse::<DatasetKind>()
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Asks running training loops to checkpoint and stop (the CLI's signal handler).
pub use caloforge_nn::train::{clear_stop, request_stop};

/// The text of a preset, or of a TOML file when `name` is a path to one.
pub fn preset_text(name: &str) -> Result<String> {
    registry::preset(name).map(|(_, t)| t)
}

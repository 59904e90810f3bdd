//! `caloforge train`, `generate` and `bench`: the model commands.

use anyhow::{bail, Context, Result};
use caloforge_core::io::{check_writable, ShowerFile};
use caloforge_models::calodiffusion::{CaloDiffusion, CaloDiffusionConfig, Sampler};
use caloforge_models::icaloflow::ICaloFlow;
use caloforge_models::{model_kind, preset_text, Progress, ShowerModel, TrainOptions};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Progress bars for the model library (one per concurrent task).
pub struct Bars {
    quiet: bool,
    multi: indicatif::MultiProgress,
    bars: Mutex<std::collections::HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            quiet,
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::new(Default::default()),
        }
    }
}

impl Progress for Bars {
    fn start(&self, key: &str, label: &str, total: u64) {
        let pb = self
            .multi
            .add(caloforge_eval::progress::bar(!self.quiet, total, label));
        if let Ok(mut g) = self.bars.lock() {
            g.insert(key.to_string(), pb);
        }
    }
    fn set(&self, key: &str, pos: u64, msg: Option<String>) {
        if let Ok(g) = self.bars.lock() {
            if let Some(pb) = g.get(key) {
                pb.set_position(pos);
            }
        }
        if let (Some(m), false) = (msg, self.quiet) {
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                let _ = self.multi.println(m);
            } else {
                eprintln!("{m}");
            }
        }
    }
    fn finish(&self, key: &str) {
        if let Ok(mut g) = self.bars.lock() {
            if let Some(pb) = g.remove(key) {
                pb.finish_and_clear();
            }
        }
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Preset name (e.g. icaloflow-ds2, icaloflow-ds2-student, icaloflow-small) or a TOML file.
    #[arg(long)]
    preset: String,
    /// Training showers (CaloChallenge HDF5).
    #[arg(long)]
    data: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Sub-networks to train, comma-separated (iCaloFlow: flows 1,2,3; default all).
    #[arg(long, value_delimiter = ',')]
    flows: Vec<usize>,
    /// Trained teacher directory (student presets).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Wall-clock budget in minutes; training stops cleanly with the best weights.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Use at most this many showers of the file.
    #[arg(long)]
    max_showers: Option<usize>,
    /// Seed of initialisation, shuffling and noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Continue training the flows saved in --out (same data) from their weights and step.
    #[arg(long)]
    resume: bool,
}

pub fn train(a: TrainArgs, quiet: bool) -> Result<()> {
    let text = preset_text(&a.preset)?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("preset {}", a.preset))?;
    let kind = table.get("model").and_then(|m| m.as_str()).unwrap_or("");
    if let Some(m) = a.max_minutes {
        if !(m > 0.0) {
            bail!("--max-minutes must be > 0");
        }
    }
    let opts = TrainOptions {
        data: a.data.clone(),
        out: a.out.clone(),
        seed: a.seed,
        max_minutes: a.max_minutes,
        parts: a.flows.clone(),
        teacher: a.teacher.clone(),
        max_showers: a.max_showers,
        quiet,
        resume: a.resume,
    };
    // Fail before training when the output cannot be written.
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    check_writable(&a.out.join("model_card.json"))?;
    let t0 = Instant::now();
    let bars = Bars::new(quiet);
    match kind {
        "icaloflow" => {
            let m = ICaloFlow::train(&text, &opts, &bars)?;
            for (name, f) in &m.card.flows {
                eprintln!(
                    "{name}: {} parameters, {} steps, best validation loss {:.4} at step {}{}",
                    f.parameters,
                    f.report.steps,
                    f.report.best_val_loss,
                    f.report.best_step,
                    if f.report.stopped_at_budget {
                        " (stopped at the time budget)"
                    } else {
                        ""
                    }
                );
            }
        }
        "calodiffusion" => {
            let m = CaloDiffusion::train(&text, &opts, &bars)?;
            eprintln!(
                "calodiffusion: {} parameters, {} steps ({} full epochs, {:.2} s per step overall), validation loss {:?}{}",
                m.card.parameters,
                m.card.steps,
                m.card.epochs,
                m.card.seconds / m.card.steps.max(1) as f64,
                m.card.val_loss,
                if m.card.stopped_at_budget {
                    " (stopped at the time budget)"
                } else {
                    ""
                }
            );
        }
        other => bail!("preset {}: unknown model {other:?}", a.preset),
    }
    let summary = serde_json::json!({
        "caloforge_version": env!("CARGO_PKG_VERSION"),
        "preset": a.preset,
        "data": a.data.display().to_string(),
        "out": a.out.display().to_string(),
        "seed": a.seed,
        "wall_seconds": t0.elapsed().as_secs_f64(),
    });
    caloforge_models::write_text(
        &a.out.join("train_summary.json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    eprintln!(
        "model written to {} ({:.1} s)",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A loaded model of any kind.
pub enum AnyModel {
    ICaloFlow(Box<ICaloFlow>),
    CaloDiffusion(Box<CaloDiffusion>),
}

impl AnyModel {
    pub fn load(dir: &Path) -> Result<Self> {
        match model_kind(dir)?.as_str() {
            "icaloflow" => Ok(AnyModel::ICaloFlow(Box::new(ICaloFlow::load(dir)?))),
            "calodiffusion" => Ok(AnyModel::CaloDiffusion(Box::new(CaloDiffusion::load(dir)?))),
            other => bail!("{}: unknown model {other:?}", dir.display()),
        }
    }
    pub fn n_voxels(&self) -> usize {
        match self {
            AnyModel::ICaloFlow(m) => m.dataset().n_voxels(),
            AnyModel::CaloDiffusion(m) => m.dataset().n_voxels(),
        }
    }
    /// Generates; `sampler`/`steps` override a diffusion model's defaults.
    pub fn sample(
        &self,
        e: &[f64],
        seed: u64,
        batch: usize,
        sampler: Option<&str>,
        steps: Option<usize>,
        p: &dyn Progress,
    ) -> Result<Vec<f32>> {
        Ok(match self {
            AnyModel::ICaloFlow(m) => {
                if sampler.is_some() || steps.is_some() {
                    bail!("--sampler and --steps are for diffusion models");
                }
                m.sample(e, seed, batch, p)?
            }
            AnyModel::CaloDiffusion(m) => {
                let s = match sampler {
                    None => m.cfg.sampler,
                    Some("ddpm") => Sampler::Ddpm,
                    Some("ddim") => Sampler::Ddim,
                    Some(o) => bail!("unknown sampler {o:?}: expected ddpm or ddim"),
                };
                m.sample_with(e, seed, batch, s, steps.unwrap_or(m.cfg.sample_steps), p)?
            }
        })
    }
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Reuse the incident energies of this file, in order.
    #[arg(long)]
    energies_from: Option<PathBuf>,
    /// Number of showers (incident energies log-uniform in [--energy-min, --energy-max]).
    #[arg(long, short = 'n')]
    n: Option<usize>,
    /// Lowest incident energy (MeV).
    #[arg(long, default_value_t = 1e3)]
    energy_min: f64,
    /// Highest incident energy (MeV).
    #[arg(long, default_value_t = 1e6)]
    energy_max: f64,
    /// Output HDF5 file.
    #[arg(long)]
    out: PathBuf,
    /// Showers per generation batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seed: shower k uses RNG stream k.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Diffusion models: ddpm or ddim (default: the model's).
    #[arg(long)]
    sampler: Option<String>,
    /// Diffusion models: sampling steps (DDPM: the schedule rebuilt with N steps, as the paper's
    /// 50-400 step study; DDIM: N evenly spaced steps of the training schedule).
    #[arg(long)]
    steps: Option<usize>,
}

pub fn energies(
    from: &Option<PathBuf>,
    n: Option<usize>,
    lo: f64,
    hi: f64,
    seed: u64,
) -> Result<Vec<f64>> {
    match (from, n) {
        (Some(_), Some(_)) => bail!("give either --energies-from or --n, not both"),
        (Some(p), None) => Ok(ShowerFile::open(p, None)?.energies),
        (None, Some(0)) => bail!("--n must be > 0"),
        (None, Some(n)) => {
            if !(lo.is_finite() && lo > 0.0 && hi.is_finite() && hi >= lo) {
                bail!("need 0 < --energy-min <= --energy-max (MeV), got {lo} and {hi}");
            }
            Ok(caloforge_sim::log_uniform_energies(n, lo, hi, seed))
        }
        (None, None) => bail!("give --energies-from REF.h5 or --n N"),
    }
}

pub fn generate(a: GenerateArgs, quiet: bool) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be > 0");
    }
    let model = AnyModel::load(&a.model)?;
    let e = energies(&a.energies_from, a.n, a.energy_min, a.energy_max, a.seed)?;
    check_writable(&a.out)?;
    let t0 = Instant::now();
    let showers = model.sample(
        &e,
        a.seed,
        a.batch,
        a.sampler.as_deref(),
        a.steps,
        &Bars::new(quiet),
    )?;
    let gen_s = t0.elapsed().as_secs_f64();
    caloforge_core::io::write_showers(&a.out, &e, &showers, model.n_voxels())?;
    let summary = serde_json::json!({
        "caloforge_version": env!("CARGO_PKG_VERSION"),
        "model": a.model.display().to_string(),
        "out": a.out.display().to_string(),
        "n": e.len(),
        "seed": a.seed,
        "batch": a.batch,
        "threads": rayon::current_num_threads(),
        "generation_seconds": gen_s,
        "ms_per_shower": gen_s * 1e3 / e.len() as f64,
        "wall_seconds": t0.elapsed().as_secs_f64(),
    });
    caloforge_models::write_text(
        &a.out.with_extension("json"),
        &serde_json::to_string_pretty(&summary)?,
    )?;
    eprintln!(
        "wrote {} ({} showers, {:.3} ms per shower)",
        a.out.display(),
        e.len(),
        gen_s * 1e3 / e.len() as f64
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Trained model directory.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    model: Option<PathBuf>,
    /// Time a preset's architecture with untrained (random) weights instead of a trained model.
    #[arg(long)]
    preset: Option<String>,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    batch: Vec<usize>,
    /// Minimum seconds of generation per batch size (at least one batch is always run).
    #[arg(long, default_value_t = 3.0)]
    min_seconds: f64,
    /// Write the table as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Diffusion models: sampler (ddpm or ddim; default: the model's).
    #[arg(long)]
    sampler: Option<String>,
    /// Diffusion models: sampling step counts to time (default: the model's).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
    /// Skip the untimed warm-up batch (for slow CPU cases; keep it on a GPU, where the first
    /// batch of a shape compiles and tunes kernels).
    #[arg(long)]
    no_warmup: bool,
}

pub fn bench(a: BenchArgs, _quiet: bool) -> Result<()> {
    let (model, what) = match (&a.model, &a.preset) {
        (Some(m), _) => (AnyModel::load(m)?, m.display().to_string()),
        (None, Some(p)) => {
            let text = preset_text(p)?;
            let kind = toml::from_str::<toml::Table>(&text)?
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string();
            let m = match kind.as_str() {
                "icaloflow" => AnyModel::ICaloFlow(Box::new(ICaloFlow::untrained(
                    &caloforge_models::icaloflow::ICaloFlowConfig::from_toml(&text)?,
                    a.seed,
                )?)),
                "calodiffusion" => AnyModel::CaloDiffusion(Box::new(CaloDiffusion::untrained(
                    &CaloDiffusionConfig::from_toml(&text)?,
                    a.seed,
                )?)),
                o => bail!("preset {p}: unknown model {o:?}"),
            };
            (m, format!("preset {p} (untrained weights)"))
        }
        (None, None) => bail!("give --model RUN or --preset NAME"),
    };
    if a.batch.iter().any(|&b| b == 0) {
        bail!("batch sizes must be > 0");
    }
    let threads = rayon::current_num_threads();
    let device = format!("{:?}", caloforge_models::device::backend()).to_lowercase();
    println!("{what} ({threads} threads, device {device})");
    println!(
        "{:>8} {:>8} {:>10} {:>14}",
        "steps", "batch", "showers", "ms / shower"
    );
    let step_list: Vec<Option<usize>> = if a.steps.is_empty() {
        vec![None]
    } else {
        a.steps.iter().map(|&s| Some(s)).collect()
    };
    let mut rows = Vec::new();
    for steps in step_list {
        for &b in &a.batch {
            let run = |k: u64| -> Result<()> {
                let e = caloforge_sim::log_uniform_energies(
                    b,
                    1e3,
                    1e6,
                    a.seed.wrapping_add(1).wrapping_add(k),
                );
                model.sample(
                    &e,
                    a.seed.wrapping_add(k),
                    b,
                    a.sampler.as_deref(),
                    steps,
                    &caloforge_models::NoProgress,
                )?;
                Ok(())
            };
            // Warm-up batch (allocations, caches, GPU kernel compilation), then timed batches.
            if !a.no_warmup {
                run(u64::MAX / 2)?;
            }
            let (mut n, t0) = (0usize, Instant::now());
            let mut k = 0u64;
            while n == 0 || t0.elapsed().as_secs_f64() < a.min_seconds {
                run(k)?;
                n += b;
                k += 1;
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
            let st = steps.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            println!("{st:>8} {b:>8} {n:>10} {ms:>14.3}");
            rows.push(
                serde_json::json!({"steps": steps, "batch": b, "showers": n, "ms_per_shower": ms}),
            );
        }
    }
    if let Some(out) = &a.out {
        let j = serde_json::json!({"model": what, "threads": threads, "device": device, "sampler": a.sampler, "rows": rows});
        caloforge_models::write_text(out, &serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

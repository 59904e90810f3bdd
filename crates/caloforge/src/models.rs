//! `caloforge train`, `generate` and `bench`: the model commands.

use anyhow::{bail, Context, Result};
use caloforge_core::io::{check_output, summary_path, ShowerFile, ShowerWriter};
use caloforge_models::registry::{self, Sanity};
use caloforge_models::{Generator, ModelOption, Progress, SampleOptions, TrainOptions};
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

    /// A line above the bars (plain stderr when it is not a terminal).
    fn print(&self, m: String) {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            let _ = self.multi.println(m);
        } else {
            eprintln!("{m}");
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
            self.print(m);
        }
    }
    /// `--quiet` hides progress messages, not warnings.
    fn warn(&self, msg: String) {
        self.print(format!("warning: {msg}"));
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
    /// Preset name (see `caloforge models`) or a TOML file.
    #[arg(long)]
    preset: String,
    /// Override a configuration key of the preset, KEY=VALUE with a TOML value (repeatable;
    /// dotted keys for nested tables): `--set validation_fraction=0.02 --set
    /// transform.alpha=1e-5`. Give the same overrides again with --resume.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Training showers (CaloChallenge HDF5).
    #[arg(long)]
    data: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Sub-networks to train, comma-separated (iCaloFlow: flows 1,2,3; default all).
    #[arg(long, value_delimiter = ',')]
    flows: Vec<usize>,
    /// Trained teacher directory (student and distillation presets).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Progressive distillation (caloscore2-*-distill): divide the teacher's sampling steps by
    /// this power of two, one halving round after another (default 2).
    #[arg(long)]
    factor: Option<usize>,
    /// Wall-clock budget in minutes; training stops cleanly with the best weights.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Use at most this many showers of the file.
    #[arg(long)]
    max_showers: Option<usize>,
    /// Seed of initialisation, shuffling and noise (default 1; with --resume, the run's own).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out from its last checkpoint (same data and preset; only the
    /// number of epochs may grow).
    #[arg(long)]
    resume: bool,
    /// Replace a model already trained in --out.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Seconds between checkpoints (0: after every optimizer step).
    #[arg(long, default_value_t = 60.0)]
    checkpoint_every: f64,
}

/// The options a model takes that were given on the command line.
fn used_options(pairs: &[(bool, ModelOption)]) -> Vec<ModelOption> {
    pairs.iter().filter(|(u, _)| *u).map(|(_, o)| *o).collect()
}

pub fn train(a: TrainArgs, quiet: bool) -> Result<()> {
    let (kind, text) = registry::preset(&a.preset)?;
    let text = registry::with_overrides(&text, &a.set)?;
    registry::check_options(
        kind,
        &used_options(&[
            (!a.flows.is_empty(), ModelOption::Parts),
            (a.teacher.is_some(), ModelOption::Teacher),
            (a.factor.is_some(), ModelOption::Factor),
        ]),
    )?;
    if let Some(m) = a.max_minutes {
        if !(m.is_finite() && m > 0.0) {
            bail!("--max-minutes must be a positive number of minutes, got {m}");
        }
    }
    if !(a.checkpoint_every.is_finite() && a.checkpoint_every >= 0.0) {
        bail!("--checkpoint-every must be a number of seconds >= 0");
    }
    if a.max_showers == Some(0) {
        bail!("--max-showers must be > 0");
    }
    // --resume continues with the seed the run started with (recorded in train_summary.json).
    let summary_file = a.out.join("train_summary.json");
    let recorded_seed = || -> Option<u64> {
        let t = std::fs::read_to_string(&summary_file).ok()?;
        serde_json::from_str::<serde_json::Value>(&t).ok()?["seed"].as_u64()
    };
    let seed = match (a.seed, a.resume) {
        (Some(s), _) => s,
        (None, true) => recorded_seed().unwrap_or(1),
        (None, false) => 1,
    };
    let opts = TrainOptions {
        data: a.data.clone(),
        out: a.out.clone(),
        seed,
        max_minutes: a.max_minutes,
        parts: a.flows.clone(),
        teacher: a.teacher.clone(),
        factor: a.factor,
        max_showers: a.max_showers,
        quiet,
        resume: a.resume,
        force: a.force,
        checkpoint_seconds: Some(a.checkpoint_every),
    };
    // Fail before training when the options do not fit, the data cannot be read or the output
    // cannot be written.
    kind.check_train(&text, &opts)?;
    match kind.canonical(&text)?.0 {
        caloforge_models::Output::Voxels(ds) => {
            ShowerFile::open(&a.data, Some(ds.n_voxels()))?;
        }
        caloforge_models::Output::Points { .. } => {
            caloforge_core::showerdata::PointFile::open(&a.data)?;
        }
    }
    registry::prepare_out(kind, &text, &opts)?;
    let t0 = Instant::now();
    let summary = |status: &str, complete: bool, interrupted: bool| {
        serde_json::json!({
            "caloforge_version": env!("CARGO_PKG_VERSION"),
            "model": kind.name(),
            "preset": a.preset,
            "set": a.set,
            "data": a.data.display().to_string(),
            "out": a.out.display().to_string(),
            "seed": seed,
            "parts": a.flows,
            "resumed": a.resume,
            "status": status,
            "complete": complete,
            "interrupted": interrupted,
            "wall_seconds": t0.elapsed().as_secs_f64(),
        })
    };
    caloforge_models::write_text(
        &summary_file,
        &serde_json::to_string_pretty(&summary("running", false, false))?,
    )?;
    let bars = Bars::new(quiet);
    crate::signals::training(true);
    let outcome = kind.train(&text, &opts, &bars);
    crate::signals::training(false);
    let outcome = outcome?;
    for l in &outcome.lines {
        eprintln!("{l}");
    }
    let status = if outcome.interrupted {
        "interrupted"
    } else {
        "done"
    };
    caloforge_models::write_text(
        &summary_file,
        &serde_json::to_string_pretty(&summary(status, outcome.complete, outcome.interrupted))?,
    )?;
    if outcome.interrupted {
        eprintln!(
            "interrupted: checkpoint and best weights so far written to {}; continue with the same command and --resume",
            a.out.display()
        );
        std::process::exit(130);
    }
    eprintln!(
        "model written to {} ({:.1} s)",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Trained model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Reuse the incident energies of this file, in order.
    #[arg(long)]
    pub energies_from: Option<PathBuf>,
    /// Number of showers (incident energies log-uniform in [--energy-min, --energy-max]; for a
    /// dataset-1 model without a range, dataset 1's 15 discrete energies).
    #[arg(long, short = 'n')]
    pub n: Option<usize>,
    /// Lowest incident energy (MeV) [default: 1000; dataset 1: 256].
    #[arg(long)]
    pub energy_min: Option<f64>,
    /// Highest incident energy (MeV) [default: 1000000; dataset 1: 4194304].
    #[arg(long)]
    pub energy_max: Option<f64>,
    /// Output HDF5 file (a JSON summary is written to OUT.json, e.g. gen.h5.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Showers per generation batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seed: shower k uses RNG stream k.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Diffusion models: ddpm or ddim (default: the model's).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Diffusion models: sampling steps (DDPM: the schedule rebuilt with N steps, as the paper's
    /// 50-400 step study; DDIM: N evenly spaced steps of the training schedule).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Superresolution models (SuperCalo): upsample the showers of this file instead of
    /// generating from scratch, keeping each coarse voxel's energy and reusing the incident
    /// energies; a file on the fine mesh is coarse-grained on reading, a file on the model's
    /// coarse mesh is read as is.
    #[arg(long, conflicts_with_all = ["energies_from", "n"])]
    pub coarse_from: Option<PathBuf>,
    /// With --coarse-from: fine showers drawn per input shower, written consecutively (the
    /// SuperCalo paper's resampling study uses 5).
    #[arg(long)]
    pub resample: Option<usize>,
    /// Point-cloud models: incident particles, comma-separated (e-, e+, gamma, pi+, pi- or PDG
    /// codes), each shower's drawn uniformly [default: e-]; with --energies-from a point file,
    /// that file's particles.
    #[arg(long)]
    pub particle: Option<String>,
    /// Point-cloud models: polar angle (degrees), one value or MIN,MAX [default: 0].
    #[arg(long)]
    pub theta: Option<String>,
    /// Point-cloud models: azimuth (degrees), one value or MIN,MAX [default: 0,360].
    #[arg(long)]
    pub phi: Option<String>,
    /// Point-cloud models: write the showers binned into this dataset's CaloChallenge voxels
    /// (2 or 3) instead of points.
    #[arg(long, value_parser = crate::parse_dataset)]
    pub voxelize: Option<caloforge_core::DatasetKind>,
}

/// Largest number of showers one command generates or simulates.
pub const MAX_SHOWERS: usize = 100_000_000;

/// `n` incident energies of dataset `ds` from the energy stream of `seed`: log-uniform in
/// [lo, hi] (defaults 1 GeV – 1 TeV, dataset 1: 256 MeV – 4.2 TeV), or, for dataset 1 without
/// a range, dataset 1's 15 discrete energies in its files' proportions.
pub fn spectrum(
    ds: caloforge_core::DatasetKind,
    n: usize,
    lo: Option<f64>,
    hi: Option<f64>,
    seed: u64,
) -> Result<Vec<f64>> {
    if ds.is_ds1() && lo.is_none() && hi.is_none() {
        return Ok(caloforge_sim::ds1_energies(n, seed));
    }
    let (dlo, dhi) = if ds.is_ds1() {
        (256.0, 4_194_304.0)
    } else {
        (1e3, 1e6)
    };
    let (lo, hi) = (lo.unwrap_or(dlo), hi.unwrap_or(dhi));
    caloforge_core::io::check_energy_range(lo, hi)?;
    Ok(caloforge_sim::log_uniform_energies(n, lo, hi, seed))
}

pub fn energies(
    ds: caloforge_core::DatasetKind,
    from: &Option<PathBuf>,
    n: Option<usize>,
    lo: Option<f64>,
    hi: Option<f64>,
    seed: u64,
) -> Result<Vec<f64>> {
    match (from, n) {
        (Some(_), Some(_)) => bail!("give either --energies-from or --n, not both"),
        (Some(p), None) => Ok(ShowerFile::open(p, None)?.energies),
        (None, Some(0)) => bail!("--n must be > 0"),
        (None, Some(n)) if n > MAX_SHOWERS => {
            bail!("--n {n} is more than the {MAX_SHOWERS} showers one run makes; split the work into several files")
        }
        (None, Some(n)) => spectrum(ds, n, lo, hi, seed),
        (None, None) => bail!("give --energies-from REF.h5 or --n N"),
    }
}

/// Positions of a chunked run mapped onto one bar.
pub(crate) struct Offset<'a> {
    pub(crate) inner: &'a dyn Progress,
    pub(crate) offset: u64,
    pub(crate) bar: &'static str,
}

impl Progress for Offset<'_> {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn set(&self, _: &str, pos: u64, msg: Option<String>) {
        self.inner.set(self.bar, self.offset + pos, msg);
    }
    fn finish(&self, _: &str) {}
    fn warn(&self, msg: String) {
        self.inner.warn(msg);
    }
}

pub fn generate(a: GenerateArgs, quiet: bool) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be > 0");
    }
    let model = registry::load(&a.model)?;
    registry::check_options(
        model.kind(),
        &used_options(&[
            (a.sampler.is_some(), ModelOption::Sampler),
            (a.steps.is_some(), ModelOption::Steps),
            (a.coarse_from.is_some(), ModelOption::CoarseFrom),
        ]),
    )?;
    let ds = match model.output() {
        caloforge_models::Output::Points { .. } => {
            return crate::pointgen::generate_points(a, model, quiet)
        }
        caloforge_models::Output::Voxels(ds) => ds,
    };
    if a.particle.is_some() || a.theta.is_some() || a.phi.is_some() || a.voxelize.is_some() {
        bail!("--particle, --theta, --phi and --voxelize are for point-cloud models; {} generates dataset-{} voxels", model.kind().name(), ds.name());
    }
    let sopts = SampleOptions {
        sampler: a.sampler.clone(),
        steps: a.steps,
        points: None,
    };
    let inputs: Vec<&Path> = a
        .energies_from
        .iter()
        .chain(&a.coarse_from)
        .map(|p| p.as_path())
        .collect();
    check_output(&a.out, &inputs)?;
    let summary_path = summary_path(&a.out, &inputs)?;
    // --coarse-from: the showers to upsample (checked before anything is written).
    if a.resample.is_some() && a.coarse_from.is_none() {
        bail!("--resample draws several fine showers per shower of --coarse-from FILE: give --coarse-from");
    }
    let resample = a.resample.unwrap_or(1);
    let coarse = match &a.coarse_from {
        Some(p) => {
            let f = ShowerFile::open(p, None)?;
            let widths = model.upsample_widths().unwrap_or_default();
            if !widths.contains(&f.n_voxels) {
                bail!(
                    "{}: showers of {} voxels; this model upsamples showers of {} voxels",
                    p.display(),
                    f.n_voxels,
                    widths
                        .iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                );
            }
            if resample == 0 || f.len().saturating_mul(resample) > MAX_SHOWERS {
                bail!(
                    "--resample must be between 1 and {} for {} input showers",
                    MAX_SHOWERS / f.len().max(1),
                    f.len()
                );
            }
            Some(f)
        }
        None => None,
    };
    let e = match &coarse {
        Some(f) => f
            .energies
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, resample))
            .collect(),
        None => energies(
            ds,
            &a.energies_from,
            a.n,
            a.energy_min,
            a.energy_max,
            a.seed,
        )?,
    };
    let v = ds.n_voxels();
    let mut warnings = Vec::new();
    if let Some((lo, hi)) = model.trained_energy_range() {
        let outside = e
            .iter()
            .filter(|&&x| x < lo * (1.0 - 1e-9) || x > hi * (1.0 + 1e-9))
            .count();
        if outside > 0 {
            warnings.push(format!(
                "{outside} of {} incident energies lie outside the range the model was trained on ({lo:.4e} to {hi:.4e} MeV): those showers are extrapolations",
                e.len()
            ));
        }
    }
    let mut writer = ShowerWriter::create(&a.out, v, e.len())?;
    let bars = Bars::new(quiet);
    bars.start("generate", "generate", e.len() as u64);
    let t0 = Instant::now();
    let mut sanity = Sanity::default();
    // Chunks of whole batches; shower k draws from stream k whatever the chunking.
    let chunk = (1024usize.div_ceil(a.batch) * a.batch).min(e.len().max(1));
    for start in (0..e.len()).step_by(chunk) {
        let es = &e[start..(start + chunk).min(e.len())];
        let p = Offset {
            inner: &bars,
            offset: start as u64,
            bar: "generate",
        };
        let showers = match &coarse {
            None => model.sample(es, a.seed, start as u64, a.batch, &sopts, &p)?,
            Some(f) => {
                // Output showers start..start+len are input rows start/r.. (each r times).
                let r = resample;
                let (first_in, last_in) = (start / r, (start + es.len() - 1) / r);
                let rows = f.read_rows(first_in, last_in - first_in + 1)?;
                let w = f.n_voxels;
                let mut expanded = Vec::with_capacity(es.len() * w);
                for k in start..start + es.len() {
                    let j = k / r - first_in;
                    expanded.extend(rows[j * w..(j + 1) * w].iter().map(|&x| x as f32));
                }
                model.upsample(es, &expanded, w, a.seed, start as u64, a.batch, &p)?
            }
        };
        sanity.add(es, &showers, v);
        writer.append(es, &showers)?;
        bars.set("generate", (start + es.len()) as u64, None);
    }
    bars.finish("generate");
    let gen_s = t0.elapsed().as_secs_f64();
    if let Some(w) = sanity.bad_fraction_text() {
        warnings.push(w);
    }
    writer.finish()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let summary = serde_json::json!({
        "caloforge_version": env!("CARGO_PKG_VERSION"),
        "model": a.model.display().to_string(),
        "model_kind": model.kind().name(),
        "out": a.out.display().to_string(),
        "n": e.len(),
        "seed": a.seed,
        "batch": a.batch,
        "sampler": a.sampler,
        "steps": a.steps,
        "coarse_from": a.coarse_from.as_ref().map(|p| p.display().to_string()),
        "resample": a.coarse_from.as_ref().map(|_| resample),
        "threads": rayon::current_num_threads(),
        "generation_seconds": gen_s,
        "ms_per_shower": gen_s * 1e3 / e.len() as f64,
        "wall_seconds": t0.elapsed().as_secs_f64(),
        "sanity": sanity,
        "warnings": warnings,
    });
    caloforge_models::write_text(&summary_path, &serde_json::to_string_pretty(&summary)?)?;
    eprintln!(
        "wrote {} ({} showers, {:.3} ms per shower)",
        a.out.display(),
        e.len(),
        gen_s * 1e3 / e.len() as f64
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct LikelihoodArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Showers to evaluate (CaloChallenge HDF5 of the model's dataset).
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output HDF5 file: `log_likelihood` (nats per shower, in input order; CaloScore: a density
    /// over the voxel energies in MeV, flows: over the layer energies in MeV and the voxel
    /// fractions of each layer, as the summary's `density_over` says), `bits_per_dim` (over the
    /// density's dimensions) and `incident_energies`; a JSON summary is written to OUT.json.
    #[arg(long)]
    out: PathBuf,
    /// Showers per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seed: shower k draws its trace-estimator probe from stream k.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exact trace of the Jacobian (one backward pass per voxel and evaluation: small
    /// dimensions only) instead of Hutchinson's estimator.
    #[arg(long)]
    exact_trace: bool,
    /// Relative tolerance of the adaptive ODE solver [default: 1e-5].
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance of the adaptive ODE solver [default: 1e-5].
    #[arg(long)]
    atol: Option<f64>,
    /// Evaluate at most this many showers (the first ones).
    #[arg(long)]
    max_showers: Option<usize>,
}

/// `caloforge likelihood`: the log-likelihood of given showers under a model.
pub fn likelihood(a: LikelihoodArgs, quiet: bool) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be > 0");
    }
    let (rtol, atol) = (a.rtol.unwrap_or(1e-5), a.atol.unwrap_or(1e-5));
    if !(rtol > 0.0 && atol > 0.0 && rtol < 1.0 && atol < 1.0) {
        bail!("--rtol and --atol must lie in (0, 1)");
    }
    let model = registry::load(&a.model)?;
    let Some(space) = model.density_space() else {
        bail!(
            "{}: {} does not compute likelihoods",
            a.model.display(),
            model.kind().name()
        );
    };
    let ode = space.method.contains("ODE");
    if !ode && (a.exact_trace || a.rtol.is_some() || a.atol.is_some()) {
        bail!(
            "--exact-trace, --rtol and --atol set the ODE of diffusion models; {} computes \
             its likelihood exactly",
            model.kind().name()
        );
    }
    check_output(&a.out, &[&a.input])?;
    let summary_path = summary_path(&a.out, &[&a.input])?;
    let v = model
        .output()
        .dataset()
        .context("likelihoods of point-cloud models are not computed")?
        .n_voxels();
    let f = ShowerFile::open(&a.input, Some(v))?;
    let n = a.max_showers.map_or(f.len(), |m| m.min(f.len()));
    if n == 0 {
        bail!("{}: no showers to evaluate", a.input.display());
    }
    let opts = caloforge_models::LikelihoodOptions {
        exact_trace: a.exact_trace,
        rtol,
        atol,
    };
    let bars = Bars::new(quiet);
    bars.start("likelihood", "likelihood", n as u64);
    let t0 = Instant::now();
    let mut ll = Vec::with_capacity(n);
    let chunk = (1024usize.div_ceil(a.batch) * a.batch).min(n);
    for start in (0..n).step_by(chunk) {
        let cnt = chunk.min(n - start);
        let showers: Vec<f32> = f
            .read_rows(start, cnt)?
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let p = Offset {
            inner: &bars,
            offset: start as u64,
            bar: "likelihood",
        };
        let es = &f.energies[start..start + cnt];
        let part = model
            .log_likelihood(es, &showers, a.seed, start as u64, a.batch, &opts, &p)
            .with_context(|| format!("likelihood of {}", a.input.display()))?;
        ll.extend(part);
        bars.set("likelihood", (start + cnt) as u64, None);
    }
    bars.finish("likelihood");
    let secs = t0.elapsed().as_secs_f64();
    let bpd: Vec<f64> = ll
        .iter()
        .map(|&l| -l / (space.dims as f64 * std::f64::consts::LN_2))
        .collect();
    let energies = f.energies[..n].to_vec();
    let rows = (n as u64).clamp(1, caloforge_core::io::MAX_CHUNK_ROWS);
    caloforge_core::io::write_atomic(&a.out, |b| {
        for (name, data) in [
            ("log_likelihood", &ll),
            ("bits_per_dim", &bpd),
            ("incident_energies", &energies),
        ] {
            b.create_dataset(name)
                .with_f64_data(data)
                .with_shape(&[n as u64])
                .with_chunks(&[rows])
                .with_deflate(4);
        }
    })?;
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (m, b) = (mean(&ll), mean(&bpd));
    let sd = (ll.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64).sqrt();
    let mut summary = serde_json::json!({
        "caloforge_version": env!("CARGO_PKG_VERSION"),
        "model": a.model.display().to_string(),
        "model_kind": model.kind().name(),
        "input": a.input.display().to_string(),
        "out": a.out.display().to_string(),
        "n": n,
        "dimensions": space.dims,
        "density_over": space.over,
        "method": space.method,
        "seed": a.seed,
        "batch": a.batch,
        "mean_log_likelihood": m,
        "std_log_likelihood": sd,
        "mean_bits_per_dim": b,
        "threads": rayon::current_num_threads(),
        "seconds": secs,
        "ms_per_shower": secs * 1e3 / n as f64,
    });
    if ode {
        summary["trace"] = (if a.exact_trace { "exact" } else { "hutchinson" }).into();
        summary["rtol"] = rtol.into();
        summary["atol"] = atol.into();
    }
    caloforge_models::write_text(&summary_path, &serde_json::to_string_pretty(&summary)?)?;
    eprintln!(
        "wrote {} ({n} showers: mean log-likelihood {m:.2} nats, {b:.4} bits per dimension; {:.1} ms per shower)",
        a.out.display(),
        secs * 1e3 / n as f64
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
    /// Batch sizes to time (default: 1,10,100,1000 for generation; with --train, the preset's
    /// batch size).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Time training instead: optimizer steps per second of every trainable part of the preset
    /// (synthetic batches of the right shapes, through the training loop).
    #[arg(long, requires = "preset")]
    train: bool,
    /// With --train: optimizer steps to time per part (after one untimed step).
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
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
    /// Point-cloud models: time showers of this many points each (a fixed Gaussian profile over
    /// the layers, `registry::timing_counts`) instead of the model's sampled counts.
    #[arg(long)]
    points: Option<usize>,
    /// Skip the untimed warm-up batch (for slow CPU cases; keep it on a GPU, where the first
    /// batch of a shape compiles and tunes kernels).
    #[arg(long)]
    no_warmup: bool,
}

pub fn bench(a: BenchArgs, quiet: bool) -> Result<()> {
    if a.train {
        return bench_train(a, quiet);
    }
    let batches = if a.batch.is_empty() {
        vec![1, 10, 100, 1000]
    } else {
        a.batch.clone()
    };
    let (model, what): (Box<dyn Generator>, String) = match (&a.model, &a.preset) {
        (Some(m), _) => (registry::load(m)?, m.display().to_string()),
        (None, Some(p)) => {
            let (kind, text) = registry::preset(p)?;
            (
                kind.untrained(&text, a.seed)?,
                format!("preset {p} (untrained weights)"),
            )
        }
        (None, None) => bail!("give --model RUN or --preset NAME"),
    };
    registry::check_options(
        model.kind(),
        &used_options(&[
            (a.sampler.is_some(), ModelOption::Sampler),
            (!a.steps.is_empty(), ModelOption::Steps),
        ]),
    )?;
    if batches.iter().any(|&b| b == 0 || b > 1_000_000) {
        bail!("batch sizes must be in 1..=1000000");
    }
    if !(a.min_seconds.is_finite() && a.min_seconds >= 0.0) {
        bail!("--min-seconds must be a number >= 0");
    }
    if let Some(out) = &a.out {
        check_output(out, &[])?;
    }
    let threads = rayon::current_num_threads();
    let device = format!("{:?}", caloforge_models::device::backend()).to_lowercase();
    println!("{what} ({threads} threads, device {device})");
    println!(
        "{:>8} {:>8} {:>10} {:>14} {:>9}",
        "steps", "batch", "showers", "ms / shower", "GFLOP/s"
    );
    let step_list: Vec<Option<usize>> = if a.steps.is_empty() {
        vec![None]
    } else {
        a.steps.iter().map(|&s| Some(s)).collect()
    };
    let mut rows = Vec::new();
    for steps in step_list {
        let sopts = SampleOptions {
            sampler: a.sampler.clone(),
            steps,
            points: a.points,
        };
        for &b in &batches {
            let points = matches!(model.output(), caloforge_models::Output::Points { .. });
            let run = |k: u64| -> Result<()> {
                let s = a.seed.wrapping_add(1).wrapping_add(k);
                if points {
                    // Electrons of 10–100 GeV at normal incidence.
                    let inc: Vec<caloforge_models::Incident> =
                        caloforge_sim::log_uniform_energies(b, 10.0, 100.0, s)
                            .into_iter()
                            .map(|e| caloforge_models::Incident {
                                energy_gev: e,
                                direction: [0.0, 0.0, 1.0],
                                pdg: 11,
                            })
                            .collect();
                    model.sample_points(
                        &inc,
                        a.seed.wrapping_add(k),
                        0,
                        b,
                        &sopts,
                        &caloforge_models::NoProgress,
                    )?;
                    return Ok(());
                }
                let e = caloforge_sim::log_uniform_energies(b, 1e3, 1e6, s);
                model.sample(
                    &e,
                    a.seed.wrapping_add(k),
                    0,
                    b,
                    &sopts,
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
            // Network multiply-adds (×2 flops) per shower over the time per shower.
            let gflop = model.macs_per_shower(&sopts).map(|m| 2.0 * m / 1e9);
            let gflops = gflop.map(|g| g / (ms * 1e-3));
            let gf = gflops.map_or("-".to_string(), |g| format!("{g:.1}"));
            println!("{st:>8} {b:>8} {n:>10} {ms:>14.3} {gf:>9}");
            rows.push(serde_json::json!({"steps": steps, "batch": b, "showers": n, "ms_per_shower": ms, "gflop_per_shower": gflop, "gflops": gflops}));
        }
    }
    if let Some(out) = &a.out {
        let j = serde_json::json!({"caloforge_version": env!("CARGO_PKG_VERSION"), "model": what, "threads": threads, "device": device, "sampler": a.sampler, "rows": rows});
        caloforge_models::write_text(out, &serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

/// `caloforge bench --train`: seconds per optimizer step of each part of a preset.
fn bench_train(a: BenchArgs, quiet: bool) -> Result<()> {
    let p = a.preset.as_deref().context("--train needs --preset")?;
    if a.batch.len() > 1 || a.batch.iter().any(|&b| b == 0 || b > 100_000) {
        bail!("--train takes one batch size in 1..=100000");
    }
    if !(2..=10_000).contains(&a.train_steps) {
        bail!("--train-steps must be in 2..=10000");
    }
    if let Some(out) = &a.out {
        check_output(out, &[])?;
    }
    let (kind, text) = registry::preset(p)?;
    let threads = rayon::current_num_threads();
    let device = format!("{:?}", caloforge_models::device::backend()).to_lowercase();
    println!("preset {p}: training steps ({threads} threads, device {device})");
    let rows = kind.bench_train(
        &text,
        a.train_steps,
        a.batch.first().copied(),
        a.seed,
        &Bars::new(quiet),
    )?;
    println!(
        "{:>10} {:>8} {:>7} {:>12} {:>9}  step",
        "part", "batch", "steps", "s / step", "steps/s"
    );
    for r in &rows {
        println!(
            "{:>10} {:>8} {:>7} {:>12.4} {:>9.3}  {}",
            r.part,
            r.batch,
            r.steps,
            r.seconds_per_step,
            1.0 / r.seconds_per_step,
            r.what
        );
    }
    if let Some(out) = &a.out {
        let j = serde_json::json!({"caloforge_version": env!("CARGO_PKG_VERSION"), "preset": p, "threads": threads, "device": device, "train": rows});
        caloforge_models::write_text(out, &serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

/// `caloforge models`: every model family and preset, one line each.
pub fn list_models() -> Result<()> {
    for k in registry::REGISTRY {
        let opts: Vec<&str> = k.options().iter().map(|o| o.flag()).collect();
        println!(
            "{:<24} {}  [options: {}]",
            k.name(),
            k.paper(),
            if opts.is_empty() {
                "-".to_string()
            } else {
                opts.join(" ")
            }
        );
        for p in k.presets() {
            let ds = k.canonical(p.text)?.0;
            println!(
                "  {:<31} dataset {:<10} {}",
                p.name,
                ds.describe(),
                registry::preset_description(p.text)
            );
        }
    }
    Ok(())
}

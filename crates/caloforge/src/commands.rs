//! Subcommands other than `evaluate` and `features`: simulate, demo, and shared helpers.

use anyhow::{bail, Context, Result};
use caloforge_core::io::MAX_CHUNK_ROWS;
use caloforge_core::{DatasetKind, Features, ShowerFile, ShowerWriter};
use caloforge_eval::{EvalConfig, EvalSummary, Mode};
use caloforge_sim::{Mesh, SimParams, Simulator, Tune};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::{Path, PathBuf};

fn bar(quiet: bool, len: u64, msg: &str) -> ProgressBar {
    caloforge_eval::progress::bar(!quiet, len, msg)
}

#[derive(clap::Args, Clone)]
pub struct SimulateArgs {
    /// Dataset: 2 or 3 (electrons in the dataset-2/3 detector), or 1-photons (photons in an
    /// ATLAS-like barrel, with dataset 1's 15 discrete energies unless a range is given).
    #[arg(long, short = 'd', default_value = "2", value_parser = crate::parse_dataset)]
    dataset: DatasetKind,
    /// Number of showers (default 1000; with --energies-from, all of that file's showers).
    #[arg(long, short = 'n')]
    n: Option<usize>,
    /// Seed (shower k uses RNG stream k of this seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (with --both: F_ds2.h5 and F_ds3.h5 next to it).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Smallest incident energy (MeV), log-uniform spectrum [default: 1000; dataset 1: 256].
    #[arg(long)]
    energy_min: Option<f64>,
    /// Largest incident energy (MeV) [default: 1000000; dataset 1: 4194304].
    #[arg(long)]
    energy_max: Option<f64>,
    /// Fixed incident energy (MeV) instead of a spectrum.
    #[arg(long)]
    energy: Option<f64>,
    /// Reuse the incident energies of this file, in order (N = its number of showers unless --n is given explicitly smaller).
    #[arg(long)]
    energies_from: Option<PathBuf>,
    /// Write the same showers on both meshes (F_ds2.h5, F_ds3.h5).
    #[arg(long)]
    both: bool,
    /// Parameter set: geant4 (tuned to the Geant4 samples) or stock (GFlash values).
    #[arg(long, default_value = "geant4")]
    tune: String,
    /// JSON file with every simulator parameter (the "params" object of a summary JSON),
    /// overriding --tune.
    #[arg(long)]
    params: Option<PathBuf>,
    /// Write point clouds (a ShowerData file: points x, y [mm], layer, E [GeV]; incident
    /// energies in GeV) from the point-cloud simulator instead of voxels.
    #[arg(long)]
    points: bool,
    /// With --points: the detector, `ild` (30 Si-W ECAL + 48 scintillator-steel HCAL layers),
    /// `calochallenge` (the dataset-2/3 stack) or a TOML file of the same form.
    #[arg(long, default_value = "ild")]
    detector: String,
    /// With --points: incident particles, comma-separated (e-, e+, gamma, pi+, pi- or PDG
    /// codes); each shower's is drawn uniformly from the list.
    #[arg(long, default_value = "e-")]
    particle: String,
    /// With --points: polar angle (degrees from the detector's normal), one value or a range
    /// MIN,MAX drawn uniformly.
    #[arg(long, default_value = "0")]
    theta: String,
    /// With --points: azimuth (degrees), one value or a range MIN,MAX drawn uniformly.
    #[arg(long, default_value = "0,360")]
    phi: String,
}

/// "A" or "A,B" as a range of numbers.
pub fn parse_range(s: &str, what: &str) -> Result<[f64; 2]> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--{what} '{s}': expected a number or MIN,MAX"))?;
    match v[..] {
        [a] if a.is_finite() => Ok([a, a]),
        [a, b] if a.is_finite() && b.is_finite() && a <= b => Ok([a, b]),
        _ => bail!("--{what} '{s}': expected a number or MIN,MAX with MIN <= MAX"),
    }
}

#[derive(Serialize)]
struct SimSummary {
    caloforge_version: String,
    outputs: Vec<String>,
    n: usize,
    seed: u64,
    tune: Tune,
    energy_min_mev: f64,
    energy_max_mev: f64,
    energies_from: Option<String>,
    wall_seconds: f64,
    showers_per_second: f64,
    params: SimParams,
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "showers".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "h5".into());
    out.with_file_name(format!("{stem}{suffix}.{ext}"))
}

/// `caloforge simulate`.
pub fn simulate(a: SimulateArgs, quiet: bool) -> Result<()> {
    if a.points {
        return simulate_points(a, quiet);
    }
    let t0 = std::time::Instant::now();
    let ds = a.dataset;
    let tune: Tune = a.tune.parse().map_err(anyhow::Error::msg)?;
    if a.n == Some(0) {
        bail!("--n must be > 0");
    }
    let n = a.n.unwrap_or(1000);
    if n > crate::models::MAX_SHOWERS {
        bail!(
            "--n {n} is more than the {} showers one run makes; split the work into several files",
            crate::models::MAX_SHOWERS
        );
    }
    let energies = if let Some(f) = &a.energies_from {
        let file = ShowerFile::open(f, None)?;
        let mut e = file.energies.clone();
        if let Some(n) = a.n {
            e.truncate(n);
        }
        let (lo, hi) = e
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        caloforge_core::io::check_energy_range(lo, hi)
            .with_context(|| format!("incident energies of {}", f.display()))?;
        e
    } else if let Some(e) = a.energy {
        if !(e.is_finite() && e > 0.0) {
            bail!("--energy must be a positive number of MeV, got {e}");
        }
        caloforge_core::io::check_energy_range(e, e).context("--energy")?;
        vec![e; n]
    } else {
        crate::models::spectrum(ds, n, a.energy_min, a.energy_max, a.seed)?
    };
    if a.both && ds.is_ds1() {
        bail!("--both writes the dataset-2 and dataset-3 meshes of one detector; it does not apply to -d {ds}");
    }
    let kinds: Vec<DatasetKind> = if a.both {
        vec![DatasetKind::Ds2, DatasetKind::Ds3]
    } else {
        vec![ds]
    };
    let meshes = kinds
        .iter()
        .map(|&k| Mesh::of(k))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let outs: Vec<PathBuf> = if a.both {
        vec![sibling(&a.out, "_ds2"), sibling(&a.out, "_ds3")]
    } else {
        vec![a.out.clone()]
    };
    let inputs: Vec<&Path> = a
        .energies_from
        .iter()
        .chain(a.params.iter())
        .map(|p| p.as_path())
        .collect();
    let json_path = caloforge_core::io::summary_path(&a.out, &inputs)?;
    let params = match &a.params {
        None => SimParams::for_dataset(ds, tune).map_err(anyhow::Error::msg)?,
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<SimParams>(&text)
                .with_context(|| format!("{}: not a valid parameter set", p.display()))?
        }
    };
    let spans = params.layer_spans_x0.len();
    if spans != 0 && spans != meshes[0].n_layers() {
        bail!(
            "{}: layer_spans_x0 has {spans} layers, the dataset-{ds} mesh {}",
            a.params
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "simulator parameters".into()),
            meshes[0].n_layers()
        );
    }
    let mut writers = Vec::new();
    for (p, m) in outs.iter().zip(&meshes) {
        caloforge_core::io::check_output(p, &inputs)?;
        writers.push(ShowerWriter::create(p, m.n_voxels(), energies.len())?);
    }
    let sim = Simulator::new(params.clone(), meshes.clone());
    let pb = bar(quiet, energies.len() as u64, "simulate");
    // Batches bound memory: about 256 MB of float32 per batch.
    let per_shower: usize = meshes.iter().map(|m| m.n_voxels() * 4).sum();
    let batch = ((256usize << 20) / per_shower).clamp(64, 100_000);
    let mut start = 0;
    while start < energies.len() {
        let end = (start + batch).min(energies.len());
        let e = &energies[start..end];
        let bufs = sim.simulate(e, a.seed, start as u64, &|k| pb.inc(k as u64));
        for (w, b) in writers.iter_mut().zip(&bufs) {
            w.append(e, b)?;
        }
        start = end;
    }
    pb.finish_and_clear();
    for w in writers {
        w.finish()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (lo, hi) = energies
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &e| (l.min(e), h.max(e)));
    let summary = SimSummary {
        caloforge_version: env!("CARGO_PKG_VERSION").into(),
        outputs: outs.iter().map(|p| p.display().to_string()).collect(),
        n: energies.len(),
        seed: a.seed,
        tune,
        energy_min_mev: lo,
        energy_max_mev: hi,
        energies_from: a.energies_from.as_ref().map(|p| p.display().to_string()),
        wall_seconds: wall,
        showers_per_second: energies.len() as f64 / wall,
        params,
    };
    caloforge_models::write_text(&json_path, &serde_json::to_string_pretty(&summary)?)?;
    for p in &outs {
        eprintln!(
            "wrote {} ({} showers, {:.1} showers/s)",
            p.display(),
            energies.len(),
            energies.len() as f64 / wall
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct PointSimSummary {
    caloforge_version: String,
    output: String,
    n: usize,
    seed: u64,
    detector: caloforge_sim::points::Detector,
    particles: Vec<&'static str>,
    energy_min_gev: f64,
    energy_max_gev: f64,
    theta_deg: [f64; 2],
    phi_deg: [f64; 2],
    energies_from: Option<String>,
    points: usize,
    max_points: usize,
    wall_seconds: f64,
    showers_per_second: f64,
}

/// A file of incident particles: ShowerData point clouds or CaloChallenge voxels.
pub enum IncidentFile {
    Points(caloforge_core::showerdata::PointFile),
    Voxels(ShowerFile),
}

impl IncidentFile {
    /// Opens `path` as a point file, or as a voxel file when it is not one; a damaged point
    /// file is its own error.
    pub fn open(path: &Path) -> Result<Self> {
        match caloforge_core::showerdata::PointFile::open(path) {
            Ok(f) => Ok(IncidentFile::Points(f)),
            Err(e) if !e.to_string().contains("not a ShowerData point-cloud file") => Err(e.into()),
            Err(_) => Ok(IncidentFile::Voxels(ShowerFile::open(path, None)?)),
        }
    }

    /// Incident energies in MeV (point files hold GeV).
    pub fn energies_mev(&self) -> Vec<f64> {
        match self {
            IncidentFile::Points(f) => f.energies.iter().map(|e| e * 1000.0).collect(),
            IncidentFile::Voxels(f) => f.energies.clone(),
        }
    }
}

/// `--theta` and `--phi` (degrees, one value or MIN,MAX), the polar angles within what the
/// point simulator takes.
pub fn angle_ranges(theta: &str, phi: &str) -> Result<([f64; 2], [f64; 2])> {
    use caloforge_sim::points::MAX_THETA_DEG;
    let t = parse_range(theta, "theta")?;
    if t[0] < 0.0 || t[1] > MAX_THETA_DEG {
        bail!("--theta {theta}: polar angles must lie in [0, {MAX_THETA_DEG}] degrees");
    }
    Ok((t, parse_range(phi, "phi")?))
}

/// `caloforge simulate --points`: showers of the point-cloud simulator, written as ShowerData.
fn simulate_points(a: SimulateArgs, quiet: bool) -> Result<()> {
    use caloforge_core::showerdata::{PointShower, PointWriter};
    use caloforge_sim::points::{self, Detector, Particle, PointSimulator};
    let t0 = std::time::Instant::now();
    if a.both || a.params.is_some() || a.tune != "geant4" {
        bail!("--both, --params and --tune apply to voxel showers, not to --points (the detector file holds the point simulator's constants)");
    }
    if a.n == Some(0) {
        bail!("--n must be > 0");
    }
    let detector = Detector::load(&a.detector).map_err(anyhow::Error::msg)?;
    let particles: Vec<Particle> = a
        .particle
        .split(',')
        .map(|p| p.parse::<Particle>())
        .collect::<std::result::Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let (theta, phi) = angle_ranges(&a.theta, &a.phi)?;
    let mut n = a.n.unwrap_or(1000);
    let fixed_mev: Option<Vec<f64>> = match (&a.energies_from, a.energy) {
        (Some(f), _) => {
            let mut e = IncidentFile::open(f)?.energies_mev();
            if let Some(k) = a.n {
                e.truncate(k);
            }
            n = e.len();
            Some(e)
        }
        (None, Some(e)) => Some(vec![e; n]),
        (None, None) => None,
    };
    if n > crate::models::MAX_SHOWERS {
        bail!(
            "--n {n} is more than the {} showers one run makes; split the work into several files",
            crate::models::MAX_SHOWERS
        );
    }
    let (lo, hi) = match &fixed_mev {
        Some(e) => e
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x))),
        None => (
            a.energy_min.unwrap_or(1000.0),
            a.energy_max.unwrap_or(100_000.0),
        ),
    };
    if !(lo.is_finite() && lo > 0.0 && hi >= lo && hi.is_finite()) {
        bail!("incident energies must be positive MeV with min <= max, got {lo} .. {hi}");
    }
    let mut incs = points::incidents(
        n,
        &particles,
        [lo / 1000.0, hi / 1000.0],
        theta,
        phi,
        a.seed,
    );
    if let Some(e) = &fixed_mev {
        for (i, &e) in incs.iter_mut().zip(e) {
            i.energy_gev = e / 1000.0;
        }
    }
    let inputs: Vec<&Path> = a.energies_from.iter().map(|p| p.as_path()).collect();
    let det_path = Path::new(&a.detector);
    let mut all_inputs = inputs.clone();
    if det_path.exists() {
        all_inputs.push(det_path);
    }
    caloforge_core::io::check_output(&a.out, &all_inputs)?;
    let json_path = caloforge_core::io::summary_path(&a.out, &all_inputs)?;
    let sim = PointSimulator::new(detector.clone());
    let mut w = PointWriter::create(&a.out, 4, n)?;
    let pb = bar(quiet, n as u64, "simulate");
    let (mut total, mut most) = (0usize, 0usize);
    for (b, chunk) in incs.chunks(4096).enumerate() {
        let pts = sim.simulate(chunk, a.seed, (b * 4096) as u64, &|k| pb.inc(k as u64));
        let rows: Vec<PointShower> = chunk
            .iter()
            .zip(&pts)
            .enumerate()
            .map(|(j, (i, p))| PointShower {
                energy: i.energy_gev,
                direction: i.direction,
                pdg: i.particle.pdg(),
                id: (b * 4096 + j) as i64,
                points: p,
            })
            .collect();
        for p in &pts {
            total += p.len() / 4;
            most = most.max(p.len() / 4);
        }
        w.append(&rows)?;
    }
    pb.finish_and_clear();
    w.finish()?;
    let wall = t0.elapsed().as_secs_f64();
    let summary = PointSimSummary {
        caloforge_version: env!("CARGO_PKG_VERSION").into(),
        output: a.out.display().to_string(),
        n,
        seed: a.seed,
        detector,
        particles: particles.iter().map(|p| p.name()).collect(),
        energy_min_gev: lo / 1000.0,
        energy_max_gev: hi / 1000.0,
        theta_deg: theta,
        phi_deg: phi,
        energies_from: a.energies_from.as_ref().map(|p| p.display().to_string()),
        points: total,
        max_points: most,
        wall_seconds: wall,
        showers_per_second: n as f64 / wall,
    };
    caloforge_models::write_text(&json_path, &serde_json::to_string_pretty(&summary)?)?;
    eprintln!(
        "wrote {} ({n} showers, {total} points, {:.1} showers/s)",
        a.out.display(),
        n as f64 / wall
    );
    Ok(())
}

/// Writes the high-level features to an HDF5 file, one dataset per feature.
pub fn write_features(path: &Path, f: &Features) -> Result<()> {
    let n = f.len() as u64;
    let cols = |c: &Vec<Vec<f64>>| -> (Vec<f64>, u64) {
        let k = c.len();
        let mut v = Vec::with_capacity(f.len() * k);
        for i in 0..f.len() {
            for col in c {
                v.push(col[i]);
            }
        }
        (v, k as u64)
    };
    let named = [
        ("E_layer", cols(&f.e_layer)),
        ("EC_x", cols(&f.ec_x)),
        ("EC_y", cols(&f.ec_y)),
        ("W_x", cols(&f.w_x)),
        ("W_y", cols(&f.w_y)),
        ("EC_r", cols(&f.ec_r)),
        ("W_r", cols(&f.w_r)),
        ("sparsity", cols(&f.sparsity)),
    ];
    caloforge_core::io::write_atomic(path, |b| {
        b.create_dataset("E_tot")
            .with_f64_data(&f.e_tot)
            .with_shape(&[n])
            .with_chunks(&[n.clamp(1, MAX_CHUNK_ROWS)])
            .with_deflate(4);
        for (name, (data, k)) in &named {
            b.create_dataset(name)
                .with_f64_data(data)
                .with_shape(&[n, *k])
                .with_chunks(&[n.clamp(1, 4096), (*k).max(1)])
                .with_deflate(4);
        }
    })?;
    Ok(())
}

/// Prints the headline numbers of an evaluation.
pub fn print_summary(s: &EvalSummary) {
    println!(
        "dataset {}: {} generated vs {} reference showers",
        s.dataset, s.generated.showers, s.reference.showers
    );
    println!(
        "  mean Etot/Einc: generated {:.4}, reference {:.4}",
        s.generated.mean_etot_einc, s.reference.mean_etot_einc
    );
    if let Some(h) = s.histograms.iter().find(|h| h.name == "Etot / Einc") {
        println!("  separation power Etot/Einc: {:.5}", h.separation_power);
    }
    for (n, v) in &s.separation_means {
        if n != "Etot / Einc" {
            println!("  mean separation power {n}: {v:.5}");
        }
    }
    for c in &s.classifiers {
        println!(
            "  {} AUC {:.4} ± {:.4}, JSD {:.4} ± {:.4} ({} run(s))",
            c.mode.name(),
            c.auc_mean,
            c.auc_std,
            c.jsd_mean,
            c.jsd_std,
            c.runs.len()
        );
    }
    if let (Some(f), Some(k)) = (s.fpd_x1e3, s.kpd_x1e3) {
        println!(
            "  FPD x1e3 {:.3} ± {:.3}, KPD x1e3 {:.4} ± {:.4}",
            f.value, f.error, k.value, k.error
        );
    }
}

/// What the demo compares with its reference showers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoModel {
    /// The iCaloFlow model shipped inside caloforge (`icaloflow-small`, trained on 100k
    /// simulator showers; `crates/caloforge/pretrained/README.md` gives the command).
    Pretrained,
    /// An `icaloflow-small` trained from scratch for --train-minutes on simulated showers.
    Scratch,
    /// No model: the simulator with its stock GFlash parameters against the Geant4 tune.
    Simulator,
}

#[derive(clap::Args, Clone)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Showers in the reference and generated samples.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Where the "generated" showers come from.
    #[arg(long, value_enum, default_value_t = DemoModel::Pretrained)]
    model: DemoModel,
    /// Training showers (--model scratch).
    #[arg(long, default_value_t = 10000)]
    n_train: usize,
    /// Training budget in minutes (--model scratch).
    #[arg(long, default_value_t = 4.0)]
    train_minutes: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Classifier epochs (the demo uses a small, fast classifier: width 256, batch 100, lr 1e-3).
    #[arg(long, default_value_t = 20)]
    cls_epochs: usize,
}

/// The pretrained demo model, compiled into the binary: (file name, bytes).
const PRETRAINED: [(&str, &[u8]); 5] = [
    (
        "config.toml",
        include_bytes!("../pretrained/icaloflow-small-100k/config.toml"),
    ),
    (
        "model_card.json",
        include_bytes!("../pretrained/icaloflow-small-100k/model_card.json"),
    ),
    (
        "flow1.safetensors",
        include_bytes!("../pretrained/icaloflow-small-100k/flow1.safetensors"),
    ),
    (
        "flow2.safetensors",
        include_bytes!("../pretrained/icaloflow-small-100k/flow2.safetensors"),
    ),
    (
        "flow3.safetensors",
        include_bytes!("../pretrained/icaloflow-small-100k/flow3.safetensors"),
    ),
];

/// Writes the pretrained model into `dir` (the demo's own directory) and returns its path.
pub fn write_pretrained(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in PRETRAINED {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// `caloforge demo`: simulate reference showers (dataset 2, Geant4-tuned simulator), generate
/// as many with a model (the shipped pretrained iCaloFlow, one trained from scratch, or the
/// simulator's stock tune) for the reference's incident energies, and run the whole evaluation
/// of generated against reference.
pub fn demo(a: DemoArgs, quiet: bool) -> Result<()> {
    use caloforge_models::registry;
    if a.n < 10 || (a.model == DemoModel::Scratch && a.n_train < 10) {
        bail!("--n and --n-train must be >= 10 for the demo");
    }
    if a.model == DemoModel::Scratch && !(a.train_minutes > 0.0 && a.train_minutes.is_finite()) {
        bail!("--train-minutes must be > 0 with --model scratch");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let train = a.out.join("train_ds2.h5");
    let reference = a.out.join("reference_ds2.h5");
    let generated = a.out.join("generated_ds2.h5");
    let base = SimulateArgs {
        dataset: DatasetKind::Ds2,
        n: Some(a.n),
        seed: a.seed,
        out: reference.clone(),
        energy_min: None,
        energy_max: None,
        energy: None,
        energies_from: None,
        both: false,
        tune: "geant4".into(),
        params: None,
        points: false,
        detector: "ild".into(),
        particle: "e-".into(),
        theta: "0".into(),
        phi: "0,360".into(),
    };
    eprintln!(
        "[1/4] simulating {} reference showers (dataset 2, Geant4-tuned simulator)",
        a.n
    );
    simulate(base.clone(), quiet)?;
    let model_dir = match a.model {
        DemoModel::Pretrained => {
            eprintln!("[2-3/4] the pretrained iCaloFlow (icaloflow-small, 100k simulator showers of another seed)");
            Some(write_pretrained(&a.out.join("icaloflow-pretrained"))?)
        }
        DemoModel::Scratch => {
            eprintln!("[2/4] simulating {} training showers", a.n_train);
            simulate(
                SimulateArgs {
                    n: Some(a.n_train),
                    seed: a.seed + 1,
                    out: train.clone(),
                    ..base.clone()
                },
                quiet,
            )?;
            eprintln!(
                "[3/4] training iCaloFlow (preset icaloflow-small) for at most {} minutes",
                a.train_minutes
            );
            let model_dir = a.out.join("icaloflow");
            let opts = caloforge_models::TrainOptions {
                data: train,
                out: model_dir.clone(),
                seed: a.seed,
                max_minutes: Some(a.train_minutes),
                quiet,
                // The demo owns its output directory: a previous demo's model is replaced.
                force: true,
                ..Default::default()
            };
            let bars = crate::models::Bars::new(quiet);
            let (kind, text) = registry::preset("icaloflow-small")?;
            registry::prepare_out(kind, &text, &opts)?;
            crate::signals::training(true);
            let outcome = kind.train(&text, &opts, &bars);
            crate::signals::training(false);
            if outcome?.interrupted {
                bail!("interrupted during training");
            }
            Some(model_dir)
        }
        DemoModel::Simulator => {
            eprintln!("[2-3/4] no model (--model simulator): 'generated' = the simulator with stock GFlash parameters");
            simulate(
                SimulateArgs {
                    n: None,
                    seed: a.seed + 1,
                    out: generated.clone(),
                    energies_from: Some(reference.clone()),
                    tune: "stock".into(),
                    ..base
                },
                quiet,
            )?;
            None
        }
    };
    if let Some(model_dir) = model_dir {
        let bars = crate::models::Bars::new(quiet);
        let (kind, _) = registry::preset("icaloflow-small")?;
        let model = kind.load(&model_dir)?;
        let energies = caloforge_core::ShowerFile::open(&reference, Some(6480))?.energies;
        let t0 = std::time::Instant::now();
        let showers = model.sample(
            &energies,
            a.seed + 2,
            0,
            1000,
            &caloforge_models::SampleOptions::default(),
            &bars,
        )?;
        eprintln!(
            "      generated {} showers in {:.2} s",
            energies.len(),
            t0.elapsed().as_secs_f64()
        );
        let mut sanity = registry::Sanity::default();
        sanity.add(&energies, &showers, 6480);
        if let Some(w) = sanity.bad_fraction_text() {
            eprintln!("      warning: {w}");
        }
        caloforge_core::io::write_showers(&generated, &energies, &showers, 6480)?;
    }
    eprintln!("[4/4] evaluating generated vs reference (histograms, average showers, classifier, FPD/KPD)");
    let eval_dir = a.out.join("evaluation");
    let mut cfg = EvalConfig::new(
        DatasetKind::Ds2,
        generated,
        reference,
        Mode::All,
        eval_dir.clone(),
    );
    cfg.progress = !quiet;
    cfg.seed = a.seed;
    cfg.classifier.seed = a.seed;
    cfg.classifier.epochs = a.cls_epochs;
    cfg.classifier.hidden = 256;
    cfg.classifier.batch_size = 100;
    cfg.classifier.lr = 1e-3;
    cfg.fpd.min_samples = 1000;
    cfg.fpd.max_samples = 5000;
    cfg.fpd.num_batches = 5;
    cfg.kpd.batch_size = 1000;
    let s = caloforge_eval::evaluate(&cfg)?;
    print_summary(&s);
    println!(
        "open {} for every plot and table",
        eval_dir.join("report.html").display()
    );
    Ok(())
}

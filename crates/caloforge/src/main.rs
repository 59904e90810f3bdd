//! The caloforge command-line tool.

use anyhow::{bail, Context, Result};
use caloforge_core::DatasetKind;
use caloforge_eval::{EvalConfig, Mode};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod commands;
mod convert;
mod models;
mod pointgen;
mod signals;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's C API (linked by the mimalloc crate; libmimalloc-sys declares these only behind its
// `extended` feature).
extern "C" {
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
    #[cfg(test)]
    fn mi_option_get(option: libc::c_int) -> libc::c_long;
}
/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the version the mimalloc crate builds).
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

/// Keeps freed memory mapped instead of returning it to the OS a second later (mimalloc's
/// default).
/// Training frees and reallocates the same large activations every step: with purging, each step
/// page-faulted them back in and the kernel zeroed them again (measured on a CaloDiffusion
/// dataset-2 training step: 423k page faults and 20 % of the CPU time in `clear_page`; 648 faults
/// without). The memory stays available to later allocations of this process, so peak use does
/// not grow. MIMALLOC_PURGE_DELAY in the environment still takes precedence.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain option setters of the allocator, called before any other thread starts.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "caloforge",
    version,
    about = "Fast calorimeter shower generation and CaloChallenge evaluation, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Where CaloDiffusion trains and generates: cpu, or gpu (Vulkan; needs a build with
    /// `--features gpu`). The flows and the evaluation classifier always run on the CPU.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Gpu,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate generated showers against reference showers (CaloChallenge 2022 metrics).
    Evaluate(EvaluateArgs),
    /// Write the high-level features of a shower file to an HDF5 file.
    Features(FeaturesArgs),
    /// Simulate showers of the dataset-2/3 detector with the built-in parametric simulator.
    Simulate(commands::SimulateArgs),
    /// Convert point clouds (ShowerData) into CaloChallenge voxels or a regular grid, or
    /// voxels into point clouds.
    Convert(convert::ConvertArgs),
    /// Train a model from a preset (e.g. icaloflow-ds2) on a shower file.
    Train(models::TrainArgs),
    /// Generate showers with a trained model.
    Generate(models::GenerateArgs),
    /// Log-likelihood of given showers under a trained model (CaloScore: the probability-flow
    /// ODE; iCaloFlow and CaloFlow: exactly, from their flows).
    Likelihood(models::LikelihoodArgs),
    /// Time generation of a trained model at several batch sizes (ms per shower).
    Bench(models::BenchArgs),
    /// List the models and their presets (paper, dataset).
    Models,
    /// Run the demo: simulate a reference and a "generated" sample, then evaluate.
    Demo(commands::DemoArgs),
}

#[derive(clap::Args, Clone)]
struct EvaluateArgs {
    /// Dataset: 1-photons, 1-pions, 2 or 3.
    #[arg(long, short = 'd', value_parser = parse_dataset, required_unless_present = "points")]
    dataset: Option<DatasetKind>,
    /// Point clouds (ShowerData files): compare the point-cloud observables (points and energy
    /// per layer, point-energy spectrum, longitudinal and radial profiles, centre of energy),
    /// overall and per incident particle, with the cls-points classifier (modes all, hist,
    /// cls-points).
    #[arg(long, conflicts_with = "dataset")]
    points: bool,
    /// With --points: the detector (ild, calochallenge or a TOML file) whose layers and cell
    /// thresholds apply; without it every point with E > 0 counts.
    #[arg(long, requires = "points")]
    detector: Option<String>,
    /// With --points: also bin both files into this dataset's CaloChallenge mesh (2 or 3 for
    /// the `calochallenge` detector), writing OUT/voxels_generated.h5 and
    /// OUT/voxels_reference.h5, and run the CaloChallenge evaluation on them into
    /// OUT/calochallenge (mode all with --mode all, hist with hist, cls-low with cls-points).
    #[arg(long, requires = "points", value_parser = parse_dataset)]
    voxelize: Option<DatasetKind>,
    /// Generated showers (HDF5).
    #[arg(long, short = 'i', alias = "input")]
    generated: PathBuf,
    /// Reference (Geant4) showers (HDF5).
    #[arg(long, short = 'r')]
    reference: PathBuf,
    /// all, avg, hist, hist-chi, hist-p, cls-low, cls-low-normed, cls-high, fpd-kpd.
    #[arg(long, short = 'm', default_value = "all")]
    mode: String,
    /// Output directory.
    #[arg(long, default_value = "evaluation_results")]
    out: PathBuf,
    /// Binning XML overriding the embedded one.
    #[arg(long)]
    binning: Option<PathBuf>,
    /// Seed of every random draw (splits, classifier init, FPD/KPD bootstrap).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Classifier epochs.
    #[arg(long, default_value_t = 50)]
    cls_epochs: usize,
    /// Independent classifier trainings (mean ± std).
    #[arg(long, default_value_t = 1)]
    cls_repeats: usize,
    /// Classifier hidden width.
    #[arg(long, default_value_t = 2048)]
    cls_n_hidden: usize,
    /// Classifier hidden-to-hidden layers.
    #[arg(long, default_value_t = 2)]
    cls_n_layer: usize,
    /// Classifier batch size.
    #[arg(long, default_value_t = 1000)]
    cls_batch_size: usize,
    /// Classifier learning rate.
    #[arg(long, default_value_t = 2e-4)]
    cls_lr: f64,
    /// Classifier dropout probability.
    #[arg(long, default_value_t = 0.0)]
    cls_dropout: f64,
    /// Train the classifier in float64 (as evaluate.py) instead of float32.
    #[arg(long)]
    cls_f64: bool,
    /// FPD smallest bootstrap batch.
    #[arg(long, default_value_t = 10_000)]
    fpd_min_samples: usize,
    /// FPD largest bootstrap batch.
    #[arg(long, default_value_t = 50_000)]
    fpd_max_samples: usize,
    /// KPD batch size.
    #[arg(long, default_value_t = 10_000)]
    kpd_batch_size: usize,
}

#[derive(clap::Args)]
struct FeaturesArgs {
    /// Dataset: 1-photons, 1-pions, 2 or 3.
    #[arg(long, short = 'd', value_parser = parse_dataset)]
    dataset: DatasetKind,
    /// Shower file.
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output HDF5 file.
    #[arg(long, default_value = "features.h5")]
    out: PathBuf,
    /// Binning XML overriding the embedded one.
    #[arg(long)]
    binning: Option<PathBuf>,
}

/// The `--dataset` value parser (clap reports the error with the flag).
pub fn parse_dataset(s: &str) -> std::result::Result<DatasetKind, String> {
    s.parse::<DatasetKind>().map_err(|e| e.to_string())
}

fn evaluate(a: EvaluateArgs, quiet: bool) -> Result<()> {
    if a.cls_epochs == 0 || a.cls_repeats == 0 || a.cls_batch_size == 0 || a.cls_n_hidden == 0 {
        bail!("--cls-epochs, --cls-repeats, --cls-batch-size and --cls-n-hidden must be > 0");
    }
    if !(0.0..1.0).contains(&a.cls_dropout) {
        bail!("--cls-dropout must be in [0, 1)");
    }
    if a.fpd_min_samples < 2 || a.fpd_max_samples < 2 || a.kpd_batch_size < 2 {
        bail!("--fpd-min-samples, --fpd-max-samples and --kpd-batch-size must be >= 2");
    }
    if a.points {
        return evaluate_points(a, quiet);
    }
    let ds = a
        .dataset
        .context("--dataset is required without --points")?;
    let mode: Mode = a.mode.parse()?;
    let mut cfg = EvalConfig::new(ds, a.generated, a.reference, mode, a.out.clone());
    cfg.binning = a.binning;
    cfg.seed = a.seed;
    cfg.progress = !quiet;
    cfg.cls_repeats = a.cls_repeats;
    cfg.classifier.epochs = a.cls_epochs;
    cfg.classifier.hidden = a.cls_n_hidden;
    cfg.classifier.n_layer = a.cls_n_layer;
    cfg.classifier.batch_size = a.cls_batch_size;
    cfg.classifier.lr = a.cls_lr;
    cfg.classifier.dropout = a.cls_dropout;
    cfg.classifier.seed = a.seed;
    if a.cls_f64 {
        cfg.classifier.precision = caloforge_nn_precision_f64();
    }
    cfg.fpd.seed = a.seed;
    cfg.fpd.min_samples = a.fpd_min_samples;
    cfg.fpd.max_samples = a.fpd_max_samples;
    cfg.kpd.seed = a.seed;
    cfg.kpd.batch_size = a.kpd_batch_size;
    let s = caloforge_eval::evaluate(&cfg)?;
    commands::print_summary(&s);
    eprintln!("results written to {}", a.out.display());
    Ok(())
}

/// `caloforge evaluate --points`.
fn evaluate_points(a: EvaluateArgs, quiet: bool) -> Result<()> {
    use caloforge_eval::points::{evaluate_points, summary_text, PointEvalConfig};
    let classifier = match a.mode.as_str() {
        "all" | "cls-points" => true,
        "hist" => false,
        m => bail!("--mode {m} does not apply to --points: use all, hist or cls-points"),
    };
    let (layers, thresholds) = match &a.detector {
        Some(d) => {
            let det = caloforge_sim::points::Detector::load(d).map_err(anyhow::Error::msg)?;
            let thr = (0..det.n_layers())
                .map(|l| det.section(l).threshold_mev)
                .collect();
            (det.n_layers(), thr)
        }
        None => {
            let mut most = 0usize;
            for p in [&a.generated, &a.reference] {
                let f = caloforge_core::showerdata::PointFile::open(p)?;
                for start in (0..f.len()).step_by(1000) {
                    for s in f.read_points(start, 1000.min(f.len() - start))? {
                        for q in s.chunks(f.features) {
                            if q[2] >= 0.0 && q[2] < 1e4 {
                                most = most.max((q[2] + 0.1) as usize + 1);
                            }
                        }
                    }
                }
            }
            (most, Vec::new())
        }
    };
    let mut cc = caloforge_eval::points::ClassifierConfig::default();
    cc.epochs = a.cls_epochs;
    cc.hidden = a.cls_n_hidden;
    cc.n_layer = a.cls_n_layer;
    cc.batch_size = a.cls_batch_size;
    cc.lr = a.cls_lr;
    cc.dropout = a.cls_dropout;
    cc.seed = a.seed;
    if a.cls_f64 {
        cc.precision = caloforge_nn_precision_f64();
    }
    let cfg = PointEvalConfig {
        generated: a.generated.clone(),
        reference: a.reference.clone(),
        out_dir: a.out.clone(),
        layers,
        thresholds_mev: thresholds,
        classifier: classifier.then_some(cc),
        cls_repeats: a.cls_repeats,
        plots: a.mode != "cls-points",
        progress: !quiet,
    };
    let s = evaluate_points(&cfg)?;
    eprint!("{}", summary_text(&s));
    eprintln!("results written to {}", a.out.display());
    if let Some(ds) = a.voxelize {
        // The same showers binned into the dataset's mesh (with --binning, that binning), then
        // the voxel evaluation.
        let bin = |input: &std::path::Path, name: &str| -> Result<PathBuf> {
            let out = a.out.join(format!("voxels_{name}.h5"));
            let args = convert::ConvertArgs::voxelize(input, &out, ds, a.binning.clone());
            convert::convert(args, quiet)?;
            Ok(out)
        };
        let mut v = a.clone();
        v.generated = bin(&a.generated, "generated")?;
        v.reference = bin(&a.reference, "reference")?;
        v.points = false;
        v.dataset = Some(ds);
        v.out = a.out.join("calochallenge");
        v.mode = match a.mode.as_str() {
            "hist" => "hist",
            "cls-points" => "cls-low",
            _ => "all",
        }
        .into();
        evaluate(v, quiet)?;
    }
    Ok(())
}

fn caloforge_nn_precision_f64() -> caloforge_eval::classifier_precision::Precision {
    caloforge_eval::classifier_precision::Precision::F64
}

fn features(a: FeaturesArgs, quiet: bool) -> Result<()> {
    let ds = a.dataset;
    let g = ds.geometry(a.binning.as_deref())?;
    let file = caloforge_core::ShowerFile::open(&a.input, Some(ds.n_voxels()))?;
    caloforge_core::io::check_output(&a.out, &[&a.input])?;
    let scan = caloforge_eval::evaluate::scan(&file, &g, ds, 256 << 20, "features", !quiet, None)?;
    commands::write_features(&a.out, &scan.features)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "{} showers: features written to {}",
        file.len(),
        a.out.display()
    );
    Ok(())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if t == 0 {
            bail!("--threads must be > 0");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting up threads")?;
    }
    signals::install();
    let backend = caloforge_models::device::parse_backend(match cli.device {
        DeviceArg::Cpu => "cpu",
        DeviceArg::Gpu => "gpu",
    })?;
    caloforge_models::device::set_backend(backend)?;
    match cli.command {
        Command::Evaluate(a) => evaluate(a, cli.quiet),
        Command::Features(a) => features(a, cli.quiet),
        Command::Simulate(a) => commands::simulate(a, cli.quiet),
        Command::Demo(a) => commands::demo(a, cli.quiet),
        Command::Convert(a) => convert::convert(a, cli.quiet),
        Command::Train(a) => models::train(a, cli.quiet),
        Command::Generate(a) => models::generate(a, cli.quiet),
        Command::Likelihood(a) => models::likelihood(a, cli.quiet),
        Command::Bench(a) => models::bench(a, cli.quiet),
        Command::Models => models::list_models(),
    }
}

fn main() {
    // Output piped into `head` and closed: end quietly as other command-line tools do, instead
    // of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod allocator_tests {
    use super::*;

    #[test]
    fn purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: plain option getters of the allocator.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default purge delay (1000 ms): the index names that option.
        assert_eq!(before, 1000);
        keep_freed_memory();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
    }
}

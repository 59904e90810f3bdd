//! What the flow models (iCaloFlow, SuperCalo) share: training several independent flows of a
//! model concurrently through the one training loop, each with its own checkpoint, and timing
//! their optimizer steps for `caloforge bench --train`.

use crate::registry::{PartTimer, StepTiming};
use crate::{ModelError, Progress, Result, TrainOptions};
use caloforge_nn::flow::train::{
    distill, train_maf, BatchSource, DistillLoss, FlowData, Run, TrainReport, TrainSettings,
};
use caloforge_nn::flow::{Flow, FlowConfig, FlowKind};
use caloforge_nn::schedule::LrSchedule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

/// One flow to train: its number k (checkpoint `flowK.ckpt`, progress key `flowK`), initial
/// weights, settings, data and, for a distilled student, its frozen teacher.
pub(crate) struct Job<'a> {
    /// Flow number.
    pub k: usize,
    /// Initial flow (weights drawn before the threads start, so they do not depend on timing).
    pub flow0: Flow,
    /// Optimisation settings (OneCycle `total_steps` resolved).
    pub settings: TrainSettings,
    /// Training mini-batches.
    pub train: &'a dyn BatchSource,
    /// Validation samples.
    pub val: FlowData,
    /// Teacher and loss terms (students).
    pub teacher: Option<(&'a Flow, DistillLoss)>,
}

/// A fixed-noise copy of (a random subset of at most `max` of) the samples of `src`: the
/// validation set of a flow.
pub(crate) fn materialise(src: &dyn BatchSource, max: usize, seed: u64) -> FlowData {
    let (d, c) = src.dims();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..src.len()).collect();
    if order.len() > max {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rng);
        order.truncate(max);
        order.sort_unstable();
    }
    let (x, ctx) = src.batch(&order, &mut rng);
    FlowData { x, ctx, d, c }
}

/// Checks training `parts` into a directory whose model card (at `card_path`) records flows
/// `trained` from a file of SHA-256 `card_sha`: the data must be the same file (unless
/// `--force` without `--resume`), and a trained flow is only continued with `--resume` or
/// replaced with `--force`.
pub(crate) fn check_previous(
    card_path: &std::path::Path,
    card_sha: &str,
    trained: &std::collections::BTreeMap<String, crate::icaloflow::FlowCard>,
    data_sha: &str,
    parts: &[usize],
    opts: &TrainOptions,
) -> Result<()> {
    if (opts.resume || !opts.force) && card_sha != data_sha {
        return Err(ModelError::file(
            &opts.data,
            format!(
                "not the file the flows in {} were trained on (SHA-256 differs); train into a new directory or pass --force",
                opts.out.display()
            ),
        ));
    }
    if !opts.resume && !opts.force {
        if let Some(k) = parts
            .iter()
            .find(|k| trained.contains_key(&format!("flow{k}")))
        {
            return Err(ModelError::file(
                card_path,
                format!("flow{k} is already trained: --resume continues it, --force replaces it"),
            ));
        }
    }
    Ok(())
}

/// `s` with a OneCycle `total_steps` of 0 replaced by epochs × steps per epoch over `n` samples.
pub(crate) fn settings_with_steps(s: &TrainSettings, n: usize) -> TrainSettings {
    let mut s = s.clone();
    if let LrSchedule::OneCycle { total_steps, .. } = &mut s.schedule {
        if *total_steps == 0 {
            *total_steps = (n.div_ceil(s.batch_size.max(1)) * s.epochs).max(1);
        }
    }
    s
}

/// Trains the jobs concurrently (burn's CPU kernels use about one core at these sizes), each
/// with the whole time budget of `opts` counted from `t0`. Returns each job's best flow and
/// report, in job order.
pub(crate) fn train_concurrently(
    jobs: Vec<Job>,
    opts: &TrainOptions,
    t0: Instant,
    progress: &dyn Progress,
) -> Vec<(usize, Result<(Flow, TrainReport)>)> {
    let deadline = opts
        .max_minutes
        .map(|m| t0 + std::time::Duration::from_secs_f64(m * 60.0));
    let train_one = |job: Job| -> Result<(Flow, TrainReport)> {
        let name = format!("flow{}", job.k);
        let seed = opts.seed.wrapping_add(job.k as u64);
        let control = opts.control(seed, deadline, &format!("{name}.ckpt"));
        let run = Run {
            train: job.train,
            val: &job.val,
            settings: &job.settings,
            control: &control,
        };
        let steps =
            (job.train.len().div_ceil(job.settings.batch_size.max(1)) * job.settings.epochs) as u64;
        let mut bar = |p: caloforge_nn::flow::train::Progress| {
            if p.step == 0 || p.val_loss.is_some() || p.step % 5 == 0 {
                progress.set(
                    &name,
                    p.step as u64,
                    p.val_loss
                        .map(|v| format!("{name} step {}: validation loss {v:.4}", p.step)),
                );
            }
        };
        let out = match job.teacher {
            None => {
                progress.start(&name, &format!("train {name}"), steps);
                train_maf(job.flow0, run, &mut bar)?
            }
            Some((teacher, terms)) => {
                progress.start(&name, &format!("distill {name}"), steps);
                distill(job.flow0, teacher, terms, run, &mut bar)?
            }
        };
        progress.finish(&name);
        Ok(out)
    };
    std::thread::scope(|sc| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| (job.k, sc.spawn(move || train_one(job))))
            .collect();
        handles
            .into_iter()
            .map(|(k, h)| {
                (
                    k,
                    h.join().unwrap_or_else(|_| {
                        Err(ModelError::Config(format!("training flow{k} panicked")))
                    }),
                )
            })
            .collect()
    })
}

/// Refuses incident energies that are not finite and positive.
pub(crate) fn check_energies(energies: &[f64]) -> Result<()> {
    match energies.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
        Some(e) => Err(ModelError::Config(format!(
            "incident energies must be positive, got {e}"
        ))),
        None => Ok(()),
    }
}

/// Runs `n` showers through `f`, `batch` at a time, with the progress bar `bar`: `f(range,
/// rngs)` returns `width` values per shower of `range`, shower j drawing from
/// [`crate::shower_rng`]`(seed, first + j)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batched<T>(
    bar: &str,
    n: usize,
    width: usize,
    seed: u64,
    first: u64,
    batch: usize,
    progress: &dyn Progress,
    mut f: impl FnMut(std::ops::Range<usize>, &mut [ChaCha8Rng]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(n * width);
    progress.start(bar, bar, n as u64);
    let b = batch.max(1);
    for start in (0..n).step_by(b) {
        let end = (start + b).min(n);
        let mut rngs: Vec<ChaCha8Rng> = (start..end)
            .map(|j| crate::shower_rng(seed, first + j as u64))
            .collect();
        out.extend(f(start..end, &mut rngs)?);
        progress.set(bar, end as u64, None);
    }
    progress.finish(bar);
    Ok(out)
}

/// Writes a flow model's directory: the configuration (`config.toml`), the model card
/// (`model_card.json`) and the weights of `flows` as flow1, flow2, … (none: metadata only).
pub(crate) fn write_model_dir<C: serde::Serialize, M: serde::Serialize>(
    dir: &std::path::Path,
    cfg: &C,
    card: &M,
    flows: &[Flow],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
    for (k, f) in flows.iter().enumerate() {
        caloforge_nn::flow::train::save_flow(f, &flow_path(dir, k + 1))?;
    }
    crate::write_text(&dir.join("config.toml"), &crate::to_toml(cfg)?)?;
    crate::write_json(&dir.join("model_card.json"), card)
}

/// Loads flows 1..=`n` of the model directory `dir` (for inference, on the CPU) with the
/// configurations its model card (`card_path`, flows `cards`) records; a flow the card lacks is
/// one error naming the card ("`whose`flowK was not trained").
pub(crate) fn load_flows(
    dir: &std::path::Path,
    cards: &std::collections::BTreeMap<String, crate::icaloflow::FlowCard>,
    card_path: &std::path::Path,
    n: usize,
    whose: &str,
) -> Result<Vec<(Flow, crate::icaloflow::FlowCard)>> {
    let device = caloforge_nn::burn::tensor::Device::flex();
    (1..=n)
        .map(|k| {
            let fc = cards.get(&format!("flow{k}")).ok_or_else(|| {
                ModelError::file(
                    card_path,
                    format!("{whose}flow{k} was not trained (train it with --flows {k})"),
                )
            })?;
            let flow =
                caloforge_nn::flow::train::load_flow(&flow_path(dir, k), &fc.config, &device)?;
            Ok((flow, fc.clone()))
        })
        .collect()
}

/// The weights file of flow `k` in a model directory.
pub(crate) fn flow_path(dir: &std::path::Path, k: usize) -> std::path::PathBuf {
    dir.join(format!("flow{k}.safetensors"))
}

/// Trains `jobs` concurrently ([`train_concurrently`]), saves each best flow into `opts.out`
/// and records it in `flows` (the model card's). The outcome is complete when flows 1..=`n`
/// are all trained; otherwise its last line names the missing ones.
pub(crate) fn run_jobs(
    jobs: Vec<Job>,
    opts: &TrainOptions,
    t0: Instant,
    progress: &dyn Progress,
    flows: &mut std::collections::BTreeMap<String, crate::icaloflow::FlowCard>,
    n: usize,
) -> Result<crate::TrainOutcome> {
    let mut outcome = crate::TrainOutcome::default();
    for (k, r) in train_concurrently(jobs, opts, t0, progress) {
        let (flow, report) = r?;
        caloforge_nn::flow::train::save_flow(&flow, &flow_path(&opts.out, k))?;
        outcome.interrupted |= report.interrupted;
        outcome.lines.push(report_line(k, &flow, &report));
        flows.insert(
            format!("flow{k}"),
            crate::icaloflow::FlowCard {
                config: flow.cfg.clone(),
                parameters: flow.num_params(),
                report,
            },
        );
    }
    let missing: Vec<String> = (1..=n)
        .filter(|k| !flows.contains_key(&format!("flow{k}")))
        .map(|k| k.to_string())
        .collect();
    outcome.complete = missing.is_empty();
    if !outcome.complete {
        let all = match n {
            2 => "both",
            3 => "all three",
            _ => "all of them",
        };
        outcome.lines.push(format!(
            "flows {} are not trained yet (--flows {}); generation needs {all}",
            missing.join(", "),
            missing.join(",")
        ));
    }
    Ok(outcome)
}

/// The report line of a trained flow.
pub(crate) fn report_line(k: usize, flow: &Flow, report: &TrainReport) -> String {
    format!(
        "flow{k}: {} parameters, {} steps, best validation loss {:.4} at step {}{}",
        flow.num_params(),
        report.steps,
        report.best_val_loss,
        report.best_step,
        crate::stop_note(report.interrupted, report.stopped_at_budget)
    )
}

/// Times `steps` optimizer steps (after one untimed step) of flow `k` of architecture `fc` at
/// mini-batch `batch` on standard-normal synthetic data (a step costs the same whatever the
/// values): maximum likelihood, or distillation from `teacher` with `terms`.
pub(crate) fn time_flow(
    k: usize,
    fc: FlowConfig,
    teacher: Option<(FlowConfig, DistillLoss)>,
    batch: usize,
    steps: usize,
    seed: u64,
    progress: &dyn Progress,
) -> Result<StepTiming> {
    let device = caloforge_nn::device::cpu_autodiff(caloforge_nn::device::Precision::F32, seed);
    let (d, c) = (fc.features, fc.context);
    let mut r = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
    let mut data = |n: usize| FlowData {
        x: (0..n * d).map(|_| r.sample(StandardNormal)).collect(),
        ctx: (0..n * c).map(|_| r.sample(StandardNormal)).collect(),
        d,
        c,
    };
    let train = data(batch * (steps + 1));
    let val = data(batch.min(64));
    let settings = TrainSettings::timing(batch, 1e-4);
    let control = caloforge_nn::train::Control {
        seed,
        ..Default::default()
    };
    let run = Run {
        train: &train,
        val: &val,
        settings: &settings,
        control: &control,
    };
    let mut timer = PartTimer::new(&format!("flow{k}"), steps + 1, progress);
    let mut tick = |p: caloforge_nn::flow::train::Progress| timer.tick(&p);
    let what = match teacher {
        None => {
            train_maf(Flow::new(fc, &device), run, &mut tick)?;
            "maximum likelihood"
        }
        Some((tc, terms)) => {
            let teacher = Flow::new(tc, &device);
            let student = Flow::new(
                FlowConfig {
                    kind: FlowKind::Iaf,
                    ..fc
                },
                &device,
            );
            distill(student, &teacher, terms, run, &mut tick)?;
            "distillation"
        }
    };
    timer.finish(what, batch)
}

/// log |dx/du| of x = logit(α + (1 − 2α)u), from x: ln(1 − 2α) − ln σ(x) − ln σ(−x).
pub(crate) fn log_dlogit(alpha: f64, x: f32) -> f64 {
    let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let x = x as f64;
    (1.0 - 2.0 * alpha).ln() + softplus(x) + softplus(-x)
}

/// [`crate::Generator::log_likelihood`] in batches: checks that `showers` are
/// `energies.len()` rows of `width` voxels with positive energies, then calls `f(energies,
/// showers, rngs)` on `batch` showers at a time (shower j with the stream
/// [`crate::shower_rng`]`(seed, first + j)`), with a "likelihood" progress bar.
#[allow(clippy::too_many_arguments)]
pub(crate) fn likelihood_batches(
    energies: &[f64],
    showers: &[f32],
    width: usize,
    seed: u64,
    first: u64,
    batch: usize,
    progress: &dyn Progress,
    mut f: impl FnMut(&[f64], &[f32], &mut [ChaCha8Rng]) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    check_energies(energies)?;
    if showers.len() != energies.len() * width {
        return Err(ModelError::Config(format!(
            "{} showers of {width} voxels expected, got {} values",
            energies.len(),
            showers.len()
        )));
    }
    batched(
        "likelihood",
        energies.len(),
        1,
        seed,
        first,
        batch,
        progress,
        |range, rngs| {
            let rows = &showers[range.start * width..range.end * width];
            f(&energies[range], rows, rngs)
        },
    )
}

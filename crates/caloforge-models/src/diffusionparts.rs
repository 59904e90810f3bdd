//! What the diffusion models (CaloDiffusion, CaloScore) share around their networks: reading
//! and transforming the training file, the train/validation split, the model card, the run of
//! the one training loop with its progress bar, checkpoint and time budget, the report line,
//! and the chunked validation loss with fixed draws.

use crate::calodiffusion::{DiffusionCard, Transform};
use crate::{read_showers, unix_time, ModelError, Progress, Result, TrainOptions, TrainOutcome};
use caloforge_core::DatasetKind;
use caloforge_nn::burn::module::Module;
use caloforge_nn::train::{fit, Task, TrainSettings};
use std::time::Instant;

/// A training file, transformed: voxels (row-major), energy conditions, incident energies.
pub(crate) struct Prepared {
    /// Incident energies (MeV).
    pub e_inc: Vec<f64>,
    /// Transformed voxels.
    pub x: Vec<f32>,
    /// Energy conditions.
    pub e: Vec<f32>,
    /// The first `n_train` showers train, the rest validate.
    pub n_train: usize,
}

/// Reads `opts.data` (creating `opts.out`), encodes each shower with `encode(voxels,
/// incident energy, out)` (appending `width` values), conditions its energy with `tr`, and
/// splits off the last `validation_fraction` (at least one shower each side).
pub(crate) fn prepare(
    opts: &TrainOptions,
    kind: DatasetKind,
    tr: &Transform,
    validation_fraction: f64,
    width: usize,
    encode: impl Fn(&[f32], f64, &mut Vec<f32>),
) -> Result<Prepared> {
    let (e_inc, vox, n_train) = read_split(opts, kind, validation_fraction)?;
    let mut x = Vec::with_capacity(e_inc.len() * width);
    for (row, &e) in vox.chunks(kind.n_voxels()).zip(&e_inc) {
        encode(row, e, &mut x);
    }
    drop(vox);
    let e = e_inc.iter().map(|&x| tr.energy(x)).collect();
    Ok(Prepared {
        e_inc,
        x,
        e,
        n_train,
    })
}

/// Reads `opts.data` (creating `opts.out`): incident energies, voxels, and how many showers
/// train (the last `validation_fraction` validate, at least one shower each side).
pub(crate) fn read_split(
    opts: &TrainOptions,
    kind: DatasetKind,
    validation_fraction: f64,
) -> Result<(Vec<f64>, Vec<f32>, usize)> {
    std::fs::create_dir_all(&opts.out).map_err(|e| ModelError::file(&opts.out, e))?;
    let (e_inc, vox) = read_showers(&opts.data, kind, opts.max_showers)?;
    let n = e_inc.len();
    if n < 2 {
        return Err(ModelError::file(&opts.data, "need at least 2 showers"));
    }
    let n_val = ((n as f64 * validation_fraction).round() as usize).clamp(1, n - 1);
    Ok((e_inc, vox, n - n_val))
}

/// Rows `idx` of `x` (rows of `d` values), concatenated.
pub(crate) fn gather(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// The card of a run of `model` (a network of `parameters`) on `p`.
pub(crate) fn card(
    model: &str,
    parameters: usize,
    opts: &TrainOptions,
    p: &Prepared,
) -> Result<DiffusionCard> {
    card_of(model, parameters, opts, &p.e_inc, p.n_train)
}

/// The card of a run of `model` on the showers of incident energies `e_inc`, the first
/// `n_train` of which train.
pub(crate) fn card_of(
    model: &str,
    parameters: usize,
    opts: &TrainOptions,
    e_inc: &[f64],
    n_train: usize,
) -> Result<DiffusionCard> {
    Ok(DiffusionCard {
        data_file: opts.data.display().to_string(),
        data_sha256: crate::file_sha256(&opts.data)?,
        n_train,
        n_validation: e_inc.len() - n_train,
        energy_range: Some(crate::energy_range(e_inc)),
        ..DiffusionCard::of(model, parameters)
    })
}

/// Runs the one training loop on `task` with `settings` under `opts` (time budget from `t0`,
/// checkpoint `checkpoints/<ckpt>`), with a progress bar, and records the run in `card`;
/// returns the best weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<M: Module, T: Task<M>>(
    net: M,
    task: &mut T,
    settings: &TrainSettings,
    opts: &TrainOptions,
    t0: Instant,
    ckpt: &str,
    card: &mut DiffusionCard,
    progress: &dyn Progress,
) -> Result<M> {
    let deadline = opts
        .max_minutes
        .map(|m| t0 + std::time::Duration::from_secs_f64(m * 60.0));
    let control = opts.control(opts.seed, deadline, ckpt);
    progress.start(
        "train",
        &format!("train {}", card.model),
        (task.n_train().div_ceil(settings.batch_size.max(1)) * settings.epochs) as u64,
    );
    let fitted = fit(net, task, settings, &control, &mut |p| {
        progress.set(
            "train",
            p.step as u64,
            p.val_loss
                .map(|v| format!("step {}: validation loss {v:.4}", p.step)),
        )
    })?;
    progress.finish("train");
    let r = &fitted.report;
    card.epochs = r.epochs;
    card.steps = r.steps as u64;
    card.train_loss = r.history.iter().skip(1).map(|p| p.train_loss).collect();
    card.val_loss = r.history.iter().skip(1).map(|p| p.val_loss).collect();
    card.stopped_at_budget = r.stopped_at_budget;
    card.interrupted = r.interrupted;
    card.seconds = r.seconds;
    card.updated_unix = unix_time();
    Ok(fitted.best)
}

/// The report of a finished run.
pub(crate) fn outcome(c: &DiffusionCard) -> TrainOutcome {
    TrainOutcome {
        lines: vec![format!(
            "{}: {} parameters, {} steps ({} full epochs, {:.2} s per step overall), best validation loss {:.4}{}",
            c.model,
            c.parameters,
            c.steps,
            c.epochs,
            c.seconds / c.steps.max(1) as f64,
            c.val_loss.iter().copied().fold(f64::INFINITY, f64::min),
            crate::stop_note(c.interrupted, c.stopped_at_budget)
        )],
        complete: true,
        interrupted: c.interrupted,
    }
}

/// The validation loss over showers `n_train..n` in chunks of `batch`: `loss(rows, offset)` is
/// the mean loss of the rows (offset: the first row's index among the validation showers),
/// weighted by the chunk's size.
pub(crate) fn validation_loss(
    n_train: usize,
    n: usize,
    batch: usize,
    mut loss: impl FnMut(&[usize], usize) -> f64,
) -> f64 {
    let rows: Vec<usize> = (n_train..n).collect();
    let mut sum = 0.0;
    for (j, chunk) in rows.chunks(batch.max(1)).enumerate() {
        sum += loss(chunk, j * batch.max(1)) * chunk.len() as f64;
    }
    sum / (n - n_train).max(1) as f64
}

/// Synthetic training data for timing a step: `n` standard-normal showers of `v` voxels and
/// the conditions of log-uniform 1 GeV – 1 TeV energies (a step costs the same whatever the
/// values).
pub(crate) fn synthetic(n: usize, v: usize, tr: &Transform, seed: u64) -> (Vec<f32>, Vec<f32>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = (0..n * v)
        .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
        .collect();
    let e = (0..n)
        .map(|_| tr.energy(1e3 * 1e3f64.powf(rng.random::<f64>())))
        .collect();
    (x, e)
}

/// Times `steps` optimizer steps (after one untimed) of `net` on `task` at batch `bs` through
/// the one training loop; `part` names the network, `what` the loss.
#[allow(clippy::too_many_arguments)]
pub(crate) fn time_steps<M: Module, T: Task<M>>(
    net: M,
    task: &mut T,
    bs: usize,
    lr: f64,
    steps: usize,
    seed: u64,
    part: &str,
    what: &str,
    progress: &dyn Progress,
) -> Result<Vec<crate::registry::StepTiming>> {
    let control = caloforge_nn::train::Control {
        seed,
        ..Default::default()
    };
    let mut timer = crate::registry::PartTimer::new(part, steps + 1, progress);
    fit(
        net,
        task,
        &TrainSettings::timing(bs, lr),
        &control,
        &mut |p| timer.tick(&p),
    )?;
    let backend = format!("{:?}", caloforge_nn::device::backend()).to_lowercase();
    Ok(vec![
        timer.finish(&format!("{what} ({backend} backend)"), bs)?
    ])
}

//! SuperCalo: coarse showers upsampled by a superresolution flow (Pang, Raine, Shih,
//! arXiv:2308.11700; reference code `Ian-Pang/supercalo`).
//!
//! Three conditional MAFs (MADE-RQS blocks, as iCaloFlow's teachers):
//! - Flow-1 p(E_0..E_{L−1} | E_inc): the layer energies, x = logit(E_l / 65 GeV) (iCaloFlow's
//!   Flow-1).
//! - Flow-2 p(coarse | E_inc, z-group energies): the coarse voxels of a
//!   [`caloforge_core::CoarseGrid`] (dataset 2, voxelization A: 648 voxels of 5 layers × 2
//!   angular × 1 radial bins), x = log10(c / 28048 MeV) + 6, context (log10 E_inc − 4.5,
//!   log10(E_group) / 4 per z-group).
//! - Flow-3, the upsampler p(fine | ...) over the g fine voxels of one coarse voxel (10 for A),
//!   x = logit(fine / coarse), context: log10 E_inc − 4.5, the logit(E_l / 65 GeV) of the
//!   group's layers, logit(coarse / 28048), the six neighbouring coarse energies
//!   logit(c / 28048) (inner/outer radial and previous/next z-group zero-padded, previous/next
//!   angular cyclic), one-hot radial group and one-hot z-group: 31 inputs for A.
//!
//! Preprocessing as the reference (data_supercalo.py, run_supercalo.py):
//! - Flow-1: U(0, noise_level) on the layer energies, fresh every mini-batch.
//! - Flow-2: U(0, noise_level) on the coarse voxels **drawn once per shower** (the reference
//!   adds it when the dataset is built), the z-group energies summed after the noise.
//! - Flow-3: U(0, upsampler_noise) on the fine voxels, fresh every mini-batch, the coarse
//!   energy summed after the noise; the layer and neighbour energies without noise.
//!
//! Generation (the reference's full chain): Flow-1 layer energies (15 keV cut); z-group sums
//! plus U(0, condition_noise) (0.36 MeV in the reference, the largest noise of its 72 coarse
//! voxels) condition Flow-2; coarse voxels 28048·10^(x−6) (15 keV cut); each coarse voxel plus
//! U(0, noise_level) is upsampled, its neighbours read from the same noisy coarse shower, and
//! the fine voxels σ-inverted, renormalised to the coarse energy and cut at 15 keV.
//!
//! `caloforge generate --coarse-from FILE` upsamples given showers instead: a fine-mesh file
//! is coarse-grained (its layer energies condition the upsampler), a coarse-mesh file (coarse
//! voxels in this module's order) takes its layer energies from Flow-1, rescaled within each
//! z-group to the group's coarse energy.

use crate::flowparts::{
    batched, check_energies, check_previous, load_flows, materialise, run_jobs,
    settings_with_steps, time_flow, write_model_dir, Job,
};
use crate::icaloflow::{FlowCard, Stage};
use crate::registry::{ModelInfo, StepTiming};
use crate::{
    file_sha256, read_showers, shower_rng, unix_time, Generator, ModelError, ModelKind,
    ModelOption, Preset, Progress, Result, SampleOptions, TrainOptions, TrainOutcome,
};
use caloforge_core::{CoarseGrid, DatasetKind, Grouping};
use caloforge_nn::device::{cpu_autodiff, Precision};
use caloforge_nn::flow::fast::FastFlow;
use caloforge_nn::flow::train::BatchSource;
use caloforge_nn::flow::{Flow, FlowKind};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;

/// The model configuration (what a preset holds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperCaloConfig {
    /// Always "supercalo".
    pub model: String,
    /// Dataset (2 or 3).
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// Fine bins per coarse voxel (voxelization A: 5 layers × 2 α × 1 r).
    pub group: Grouping,
    /// Upper end of the uniform noise on layer energies and coarse voxels (MeV).
    pub noise_level: f64,
    /// Upper end of the uniform noise on fine voxels when training the upsampler (MeV).
    pub upsampler_noise: f64,
    /// Upper end of the uniform noise on the z-group energies that condition Flow-2 at
    /// generation (MeV).
    pub condition_noise: f64,
    /// Voxels and energies below this are set to 0 after each stage (MeV).
    pub threshold: f64,
    /// Layer-energy normalisation (MeV).
    pub normalization: f64,
    /// Coarse-voxel normalisation (MeV).
    pub coarse_normalization: f64,
    /// Logit offset α.
    pub alpha: f64,
    /// Fraction of the file's showers (the last ones) used for validation.
    pub validation_fraction: f64,
    /// At most this many validation samples per flow (a random subset, fixed noise).
    pub max_validation_samples: usize,
    /// Flow-1, layer energies.
    pub flow1: Stage,
    /// Flow-2, coarse voxels.
    pub flow2: Stage,
    /// Flow-3, the upsampler.
    pub flow3: Stage,
}

impl SuperCaloConfig {
    /// Parses and checks a preset.
    pub fn from_toml(text: &str) -> Result<Self> {
        let c: SuperCaloConfig = toml::from_str(text)
            .map_err(|e| ModelError::Config(format!("SuperCalo configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("SuperCalo configuration: {m}")));
        if self.model != "supercalo" {
            return bad(format!("model is {:?}, expected \"supercalo\"", self.model));
        }
        if !matches!(self.dataset, DatasetKind::Ds2 | DatasetKind::Ds3) {
            return bad(format!(
                "dataset: SuperCalo models datasets 2 and 3, not {}",
                self.dataset
            ));
        }
        self.grid()?;
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad(format!(
                "validation_fraction must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        let nonneg = [self.noise_level, self.upsampler_noise, self.condition_noise];
        if !(self.normalization > 0.0
            && self.coarse_normalization > 0.0
            && self.alpha > 0.0
            && self.alpha < 0.5
            && nonneg.iter().all(|v| v.is_finite() && *v >= 0.0)
            && self.threshold.is_finite()
            && self.threshold >= 0.0)
        {
            return bad(
                "need normalizations > 0, 0 < alpha < 0.5, noise levels and threshold >= 0".into(),
            );
        }
        for (k, s) in [&self.flow1, &self.flow2, &self.flow3]
            .into_iter()
            .enumerate()
        {
            s.train
                .validate(&format!("SuperCalo configuration: flow{}.train", k + 1))?;
            if !(s.tail_bound.is_finite() && s.tail_bound > 0.0) {
                return bad(format!("flow{}: tail_bound must be > 0", k + 1));
            }
            if s.train.batch_size == 0 || s.hidden == 0 || s.blocks == 0 || s.bins < 2 {
                return bad(format!(
                    "flow{}: batch_size, hidden, blocks must be > 0 and bins >= 2",
                    k + 1
                ));
            }
            if s.distill.is_some() {
                return bad(format!(
                    "flow{}: SuperCalo has no distilled students",
                    k + 1
                ));
            }
        }
        Ok(())
    }

    /// The coarse grid of the dataset's geometry.
    pub fn grid(&self) -> Result<CoarseGrid> {
        let g = self.dataset.geometry(None)?;
        CoarseGrid::new(&g, self.group)
            .map_err(|e| ModelError::Config(format!("SuperCalo configuration: group: {e}")))
    }

    /// Features and context width of flow `k` (1, 2, 3).
    pub fn dims(grid: &CoarseGrid, k: usize) -> (usize, usize) {
        let (nl, _, _) = grid.fine;
        let (nz, _, nr) = grid.coarse;
        match k {
            1 => (nl, 1),
            2 => (grid.n_coarse(), 1 + nz),
            _ => (grid.group_size(), 1 + grid.group.layers + 1 + 6 + nr + nz),
        }
    }

    fn stage(&self, k: usize) -> &Stage {
        match k {
            1 => &self.flow1,
            2 => &self.flow2,
            _ => &self.flow3,
        }
    }

    fn logit(&self, x: f64) -> f32 {
        let y = self.alpha + (1.0 - 2.0 * self.alpha) * x.clamp(0.0, 1.0);
        (y / (1.0 - y)).ln() as f32
    }
    fn inverse_logit(&self, v: f32) -> f64 {
        let s = 1.0 / (1.0 + (-(v as f64)).exp());
        ((s - self.alpha) / (1.0 - 2.0 * self.alpha)).clamp(0.0, 1.0)
    }
    fn inc_feature(e_inc: f64) -> f32 {
        (e_inc.log10() - 4.5) as f32
    }
    fn cut(&self, e: f64) -> f64 {
        if e < self.threshold {
            0.0
        } else {
            e
        }
    }
    /// Flow-2's variable of a (noisy) coarse energy.
    fn coarse_feature(&self, c: f64) -> f32 {
        ((c / self.coarse_normalization).max(1e-30).log10() + 6.0) as f32
    }
    /// Flow-2's context entry of a z-group energy.
    fn group_feature(e: f64) -> f32 {
        (e.max(1e-30).log10() / 4.0) as f32
    }

    /// The upsampler's context of coarse voxel `cv` of one shower: E_inc, the layer energies
    /// `layer_e` of the shower (all layers), the voxel's own (noisy) energy `own`, and the
    /// neighbour energies read from `coarse`.
    #[allow(clippy::too_many_arguments)]
    fn push_upsampler_context(
        &self,
        grid: &CoarseGrid,
        e_inc: f64,
        layer_e: &[f64],
        own: f64,
        coarse: &[f32],
        cv: usize,
        out: &mut Vec<f32>,
    ) {
        let cell = grid.cell(cv);
        let gl = grid.group.layers;
        let (nz, _, nr) = grid.coarse;
        out.push(Self::inc_feature(e_inc));
        for &e in &layer_e[cell.z * gl..(cell.z + 1) * gl] {
            out.push(self.logit(e / self.normalization));
        }
        out.push(self.logit(own / self.coarse_normalization));
        for nb in grid.neighbours(cv) {
            let e = nb.map_or(0.0, |j| coarse[j] as f64);
            out.push(self.logit(e / self.coarse_normalization));
        }
        out.extend((0..nr).map(|r| (r == cell.r) as u8 as f32));
        out.extend((0..nz).map(|z| (z == cell.z) as u8 as f32));
    }
}

/// Training showers: incident energies, fine voxels, layer energies and coarse voxels.
struct Showers {
    e_inc: Vec<f64>,
    vox: Vec<f32>,
    layer_e: Vec<f64>,
    coarse: Vec<f32>,
    nv: usize,
    nl: usize,
    nc: usize,
}

impl Showers {
    fn new(e_inc: Vec<f64>, vox: Vec<f32>, grid: &CoarseGrid) -> Self {
        let (nv, nc) = (grid.n_fine(), grid.n_coarse());
        let nl = grid.fine.0;
        let n = e_inc.len();
        let mut layer_e = vec![0.0; n * nl];
        let mut coarse = vec![0.0f32; n * nc];
        for s in 0..n {
            let row = &vox[s * nv..(s + 1) * nv];
            crate::layer_sums(row, &mut layer_e[s * nl..(s + 1) * nl]);
            grid.coarse_grain(row, &mut coarse[s * nc..(s + 1) * nc]);
        }
        Showers {
            e_inc,
            vox,
            layer_e,
            coarse,
            nv,
            nl,
            nc,
        }
    }
}

/// Training samples of flow `part` from showers `idx`.
struct Source<'a> {
    cfg: &'a SuperCaloConfig,
    grid: &'a CoarseGrid,
    s: &'a Showers,
    idx: &'a [usize],
    part: usize,
    /// Seed of Flow-2's per-shower fixed noise.
    noise_seed: u64,
}

impl Source<'_> {
    fn row(&self, j: usize, rng: &mut ChaCha8Rng, x: &mut Vec<f32>, c: &mut Vec<f32>) {
        let (cfg, s) = (self.cfg, self.s);
        match self.part {
            1 => {
                let sh = self.idx[j];
                for l in 0..s.nl {
                    let e = s.layer_e[sh * s.nl + l] + cfg.noise_level * rng.random::<f64>();
                    x.push(cfg.logit(e / cfg.normalization));
                }
                c.push(SuperCaloConfig::inc_feature(s.e_inc[sh]));
            }
            2 => {
                let sh = self.idx[j];
                // The reference draws this noise once, when it builds the dataset.
                let mut fixed = shower_rng(self.noise_seed, sh as u64);
                let per_z = self.grid.per_z_group();
                c.push(SuperCaloConfig::inc_feature(s.e_inc[sh]));
                let mut group = 0.0f64;
                for (i, &v) in s.coarse[sh * s.nc..(sh + 1) * s.nc].iter().enumerate() {
                    let e = v as f64 + cfg.noise_level * fixed.random::<f64>();
                    x.push(cfg.coarse_feature(e));
                    group += e;
                    if (i + 1) % per_z == 0 {
                        c.push(SuperCaloConfig::group_feature(group));
                        group = 0.0;
                    }
                }
            }
            _ => {
                let (sh, cv) = (self.idx[j / s.nc], j % s.nc);
                let row = &s.vox[sh * s.nv..(sh + 1) * s.nv];
                let start = x.len();
                let mut sum = 0.0f64;
                for &i in self.grid.fine_indices(cv) {
                    let e = row[i as usize] as f64 + cfg.upsampler_noise * rng.random::<f64>();
                    sum += e;
                    x.push(e as f32);
                }
                let norm = if sum > 0.0 { sum } else { 1.0 };
                for v in &mut x[start..] {
                    *v = cfg.logit(*v as f64 / norm);
                }
                cfg.push_upsampler_context(
                    self.grid,
                    s.e_inc[sh],
                    &s.layer_e[sh * s.nl..(sh + 1) * s.nl],
                    sum,
                    &s.coarse[sh * s.nc..(sh + 1) * s.nc],
                    cv,
                    c,
                );
            }
        }
    }
}

impl BatchSource for Source<'_> {
    fn len(&self) -> usize {
        if self.part == 3 {
            self.idx.len() * self.s.nc
        } else {
            self.idx.len()
        }
    }
    fn dims(&self) -> (usize, usize) {
        SuperCaloConfig::dims(self.grid, self.part)
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

/// The model card written next to the weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    /// "supercalo".
    pub model: String,
    /// Dataset.
    #[serde(with = "crate::dataset_key")]
    pub dataset: DatasetKind,
    /// caloforge version.
    pub caloforge_version: String,
    /// Training file.
    pub data_file: String,
    /// Its SHA-256.
    pub data_sha256: String,
    /// Training showers.
    pub n_train: usize,
    /// Validation showers.
    pub n_validation: usize,
    /// Seed.
    pub seed: u64,
    /// Incident-energy range of the training showers (MeV).
    pub energy_range: Option<(f64, f64)>,
    /// Flows, by name ("flow1", "flow2", "flow3").
    pub flows: std::collections::BTreeMap<String, FlowCard>,
    /// Unix time of the last update.
    pub updated_unix: u64,
}

/// A trained SuperCalo.
pub struct SuperCalo {
    /// Configuration.
    pub cfg: SuperCaloConfig,
    /// Model card.
    pub card: ModelCard,
    grid: CoarseGrid,
    flows: Vec<Flow>,
    fast: Vec<FastFlow>,
}

fn normals(rng: &mut ChaCha8Rng, k: usize, out: &mut Vec<f32>) {
    out.extend((0..k).map(|_| rng.sample::<f32, _>(StandardNormal)))
}

impl SuperCalo {
    fn write_meta(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &[])
    }

    /// Flow-1 layer energies (15 keV cut) of showers `energies`, n × L.
    fn layer_energies(&self, energies: &[f64], rngs: &mut [ChaCha8Rng]) -> Vec<f64> {
        let nl = self.grid.fine.0;
        let mut z = Vec::with_capacity(energies.len() * nl);
        for r in rngs.iter_mut() {
            normals(r, nl, &mut z);
        }
        let ctx: Vec<f32> = energies
            .iter()
            .map(|&e| SuperCaloConfig::inc_feature(e))
            .collect();
        let (x, _) = self.fast[0].sample_from_base(&z, &ctx);
        x.iter()
            .map(|&v| {
                self.cfg
                    .cut(self.cfg.inverse_logit(v) * self.cfg.normalization)
            })
            .collect()
    }

    /// The full chain: Flow-1, Flow-2, upsampler.
    fn sample_batch(&self, energies: &[f64], rngs: &mut [ChaCha8Rng]) -> Vec<f32> {
        let cfg = &self.cfg;
        let grid = &self.grid;
        let (nl, nc) = (grid.fine.0, grid.n_coarse());
        let (nz, gl) = (grid.coarse.0, grid.group.layers);
        let le = self.layer_energies(energies, rngs);
        // Flow-2 on the z-group energies (plus the reference's conditioning noise).
        let mut ctx = Vec::with_capacity(energies.len() * (1 + nz));
        let mut z = Vec::with_capacity(energies.len() * nc);
        for (s, r) in rngs.iter_mut().enumerate() {
            ctx.push(SuperCaloConfig::inc_feature(energies[s]));
            for g in 0..nz {
                let e: f64 = le[s * nl + g * gl..s * nl + (g + 1) * gl].iter().sum();
                ctx.push(SuperCaloConfig::group_feature(
                    e + cfg.condition_noise * r.random::<f64>(),
                ));
            }
            normals(r, nc, &mut z);
        }
        let (x2, _) = self.fast[1].sample_from_base(&z, &ctx);
        let coarse: Vec<f32> = x2
            .iter()
            .map(|&v| {
                let e = cfg.coarse_normalization * 10f64.powf(v as f64 - 6.0);
                cfg.cut(e) as f32
            })
            .collect();
        self.upsample_batch(energies, &le, &coarse, rngs)
    }

    /// Fine showers (n × voxels) from coarse ones (n × coarse voxels) and layer energies.
    fn upsample_batch(
        &self,
        energies: &[f64],
        le: &[f64],
        coarse: &[f32],
        rngs: &mut [ChaCha8Rng],
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let grid = &self.grid;
        let (nl, nc, g, nv) = (
            grid.fine.0,
            grid.n_coarse(),
            grid.group_size(),
            grid.n_fine(),
        );
        let (_, cw) = SuperCaloConfig::dims(grid, 3);
        let n = energies.len();
        let mut ctx = Vec::with_capacity(n * nc * cw);
        let mut z = Vec::with_capacity(n * nc * g);
        let mut noisy = vec![0.0f32; n * nc];
        for (s, r) in rngs.iter_mut().enumerate() {
            let cn = &mut noisy[s * nc..(s + 1) * nc];
            for (o, &c) in cn.iter_mut().zip(&coarse[s * nc..(s + 1) * nc]) {
                *o = (c as f64 + cfg.noise_level * r.random::<f64>()) as f32;
            }
            let cn = &noisy[s * nc..(s + 1) * nc];
            for cv in 0..nc {
                cfg.push_upsampler_context(
                    grid,
                    energies[s],
                    &le[s * nl..(s + 1) * nl],
                    cn[cv] as f64,
                    cn,
                    cv,
                    &mut ctx,
                );
            }
            normals(r, nc * g, &mut z);
        }
        let (x3, _) = self.fast[2].sample_from_base(&z, &ctx);
        let mut out = vec![0.0f32; n * nv];
        let mut grouped = vec![0.0f32; nv];
        let mut frac = vec![0.0f64; g];
        for s in 0..n {
            for cv in 0..nc {
                let row = &x3[(s * nc + cv) * g..(s * nc + cv + 1) * g];
                for (f, &v) in frac.iter_mut().zip(row) {
                    *f = cfg.inverse_logit(v);
                }
                let sum: f64 = frac.iter().sum();
                let e = noisy[s * nc + cv] as f64;
                for (o, f) in grouped[cv * g..(cv + 1) * g].iter_mut().zip(&frac) {
                    let v = if sum > 0.0 { f / sum * e } else { 0.0 };
                    *o = cfg.cut(v) as f32;
                }
            }
            grid.scatter(&grouped, &mut out[s * nv..(s + 1) * nv]);
        }
        out
    }

    /// Upsamples showers `first..` of a file: `showers` holds `energies.len()` rows of `width`
    /// values, either the fine mesh (coarse-grained here; its layer energies condition the
    /// upsampler) or the coarse mesh in this model's order (layer energies from Flow-1, rescaled
    /// within each z-group to the group's coarse energy).
    #[allow(clippy::too_many_arguments)]
    pub fn upsample_showers(
        &self,
        energies: &[f64],
        showers: &[f32],
        width: usize,
        seed: u64,
        first: u64,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        check_energies(energies)?;
        let grid = &self.grid;
        let (nv, nc, nl) = (grid.n_fine(), grid.n_coarse(), grid.fine.0);
        if width != nv && width != nc {
            return Err(ModelError::Config(format!(
                "showers of {width} voxels: this SuperCalo upsamples dataset-{} showers of {nv} voxels or coarse showers of {nc}",
                self.cfg.dataset
            )));
        }
        if showers.len() != energies.len() * width {
            return Err(ModelError::Config(format!(
                "{} values for {} showers of {width} voxels",
                showers.len(),
                energies.len()
            )));
        }
        // Checked before any network runs: one clear error, no partial work.
        if let Some(v) = showers.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            return Err(ModelError::Config(format!(
                "a voxel of {v} MeV: energies must be finite and >= 0"
            )));
        }
        batched(
            "generate",
            energies.len(),
            self.grid.n_fine(),
            seed,
            first,
            batch,
            progress,
            |range, rngs| {
                let es = &energies[range.clone()];
                let n = es.len();
                let rows = &showers[range.start * width..range.end * width];
                let mut coarse = vec![0.0f32; n * nc];
                let mut le = vec![0.0f64; n * nl];
                if width == nv {
                    for s in 0..n {
                        let row = &rows[s * nv..(s + 1) * nv];
                        grid.coarse_grain(row, &mut coarse[s * nc..(s + 1) * nc]);
                        crate::layer_sums(row, &mut le[s * nl..(s + 1) * nl]);
                    }
                } else {
                    coarse.copy_from_slice(rows);
                    le = self.layer_energies(es, rngs);
                    let (nz, gl, per_z) = (grid.coarse.0, grid.group.layers, grid.per_z_group());
                    for s in 0..n {
                        for zg in 0..nz {
                            let target: f64 = coarse
                                [s * nc + zg * per_z..s * nc + (zg + 1) * per_z]
                                .iter()
                                .map(|&v| v as f64)
                                .sum();
                            let layers = &mut le[s * nl + zg * gl..s * nl + (zg + 1) * gl];
                            let have: f64 = layers.iter().sum();
                            for e in layers.iter_mut() {
                                *e = if have > 0.0 {
                                    *e / have * target
                                } else {
                                    target / gl as f64
                                };
                            }
                        }
                    }
                }
                for c in coarse.iter_mut() {
                    *c = self.cfg.cut(*c as f64) as f32;
                }
                Ok(self.upsample_batch(es, &le, &coarse, rngs))
            },
        )
    }
}

/// The SuperCalo family in the registry.
pub struct SuperCaloKind;

/// SuperCalo's embedded presets.
pub const PRESETS: &[Preset] = crate::presets!(
    "supercalo-ds2",
    "supercalo-ds2-b",
    "supercalo-ds3",
    "supercalo-ds3-small",
    "supercalo-small",
    "supercalo-tiny",
);

impl ModelKind for SuperCaloKind {
    crate::forward_kind!(@base SuperCalo, SuperCaloConfig, |c| c.dataset);
    fn info(&self) -> &'static ModelInfo {
        &ModelInfo {
            name: "supercalo",
            paper: "Pang, Raine, Shih, arXiv:2308.11700 (SuperCalo superresolution flows)",
            presets: PRESETS,
            options: &[ModelOption::Parts, ModelOption::CoarseFrom],
        }
    }
    fn train(
        &self,
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        SuperCalo::train(config, opts, progress)
    }
    fn bench_train(
        &self,
        config: &str,
        steps: usize,
        batch: Option<usize>,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<StepTiming>> {
        let cfg = SuperCaloConfig::from_toml(config)?;
        let grid = cfg.grid()?;
        (1..=3)
            .map(|k| {
                let st = cfg.stage(k);
                let (d, c) = SuperCaloConfig::dims(&grid, k);
                let fc = st.flow_config(d, c, FlowKind::Maf, seed);
                let bs = batch.unwrap_or(st.train.batch_size).max(1);
                time_flow(k, fc, None, bs, steps, seed, progress)
            })
            .collect()
    }
}

impl SuperCalo {
    fn empty_card(cfg: &SuperCaloConfig, seed: u64) -> ModelCard {
        ModelCard {
            model: "supercalo".into(),
            dataset: cfg.dataset,
            caloforge_version: env!("CARGO_PKG_VERSION").into(),
            data_file: String::new(),
            data_sha256: String::new(),
            n_train: 0,
            n_validation: 0,
            seed,
            energy_range: None,
            flows: Default::default(),
            updated_unix: unix_time(),
        }
    }

    /// A model with freshly initialised (untrained) weights, for timing.
    pub fn untrained(cfg: &SuperCaloConfig, seed: u64) -> Result<Self> {
        let device = cpu_autodiff(Precision::F32, seed);
        let grid = cfg.grid()?;
        let mut flows = Vec::new();
        for k in 1..=3 {
            let (d, c) = SuperCaloConfig::dims(&grid, k);
            let fc = cfg
                .stage(k)
                .flow_config(d, c, FlowKind::Maf, seed + k as u64);
            fc.validate()?;
            flows.push(Flow::new(fc, &device));
        }
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(SuperCalo {
            card: Self::empty_card(cfg, seed),
            cfg: cfg.clone(),
            grid,
            flows,
            fast,
        })
    }

    /// Reads a model directory (all three flows must be trained).
    pub fn load(dir: &Path) -> Result<Self> {
        let cp = dir.join("config.toml");
        let text = std::fs::read_to_string(&cp)
            .map_err(|e| ModelError::file(&cp, format!("not a model directory ({e})")))?;
        let cfg = SuperCaloConfig::from_toml(&text).map_err(|e| ModelError::file(&cp, e))?;
        let mp = dir.join("model_card.json");
        let card: ModelCard = crate::read_card(&mp)?;
        let flows: Vec<Flow> = load_flows(dir, &card.flows, &mp, 3, "")?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let fast = flows.iter().map(FastFlow::from_flow).collect();
        Ok(SuperCalo {
            grid: cfg.grid()?,
            cfg,
            card,
            flows,
            fast,
        })
    }

    /// Trains the flows of `opts.parts` (all by default) into `opts.out`, concurrently, each
    /// with its own checkpoint; the other flows of the directory are kept.
    pub fn train(
        config: &str,
        opts: &TrainOptions,
        progress: &dyn Progress,
    ) -> Result<TrainOutcome> {
        let cfg = SuperCaloConfig::from_toml(config)?;
        let grid = cfg.grid()?;
        let t0 = std::time::Instant::now();
        let parts: Vec<usize> = if opts.parts.is_empty() {
            vec![1, 2, 3]
        } else {
            opts.parts.clone()
        };
        if let Some(p) = parts.iter().find(|&&p| !(1..=3).contains(&p)) {
            return Err(ModelError::Config(format!(
                "--flows: SuperCalo has flows 1 (layer energies), 2 (coarse voxels), 3 (upsampler); got {p}"
            )));
        }
        if opts.teacher.is_some() {
            return Err(ModelError::Config(
                "--teacher: SuperCalo has no distilled students".into(),
            ));
        }
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
        let energy_range = crate::energy_range(&e_inc);
        let showers = Showers::new(e_inc, vox, &grid);
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
            energy_range: Some(energy_range),
            flows: old_card.map(|c| c.flows).unwrap_or_default(),
            ..Self::empty_card(&cfg, opts.seed)
        };
        let noise_seed = opts.seed ^ 0x7e57_c0a5;
        let sources: Vec<(Source, Source)> = parts
            .iter()
            .map(|&k| {
                let src = |idx| Source {
                    cfg: &cfg,
                    grid: &grid,
                    s: &showers,
                    idx,
                    part: k,
                    noise_seed,
                };
                (src(&train_idx), src(&val_idx))
            })
            .collect();
        // Initial weights drawn one flow after the other from the device's seeded RNG.
        let device = cpu_autodiff(Precision::F32, opts.seed);
        let mut jobs = Vec::with_capacity(parts.len());
        for (&k, (train, val)) in parts.iter().zip(&sources) {
            let (d, c) = SuperCaloConfig::dims(&grid, k);
            let st = cfg.stage(k);
            let fc = st.flow_config(d, c, FlowKind::Maf, opts.seed.wrapping_add(k as u64));
            fc.validate()?;
            let flow0 = Flow::new(fc, &device);
            caloforge_nn::weights::initialize(&flow0.net);
            jobs.push(Job {
                k,
                flow0,
                settings: settings_with_steps(&st.train, train.len()),
                train,
                val: materialise(val, cfg.max_validation_samples, opts.seed ^ 0x5eed),
                teacher: None,
            });
        }
        let outcome = run_jobs(jobs, opts, t0, progress, &mut card.flows, 3)?;
        card.updated_unix = unix_time();
        let model = SuperCalo {
            cfg,
            card,
            grid,
            flows: vec![],
            fast: vec![],
        };
        model.write_meta(&opts.out)?;
        Ok(outcome)
    }
}

impl Generator for SuperCalo {
    fn kind(&self) -> &'static dyn ModelKind {
        &SuperCaloKind
    }
    fn output(&self) -> crate::Output {
        crate::Output::Voxels(self.cfg.dataset)
    }
    fn trained_energy_range(&self) -> Option<(f64, f64)> {
        self.card.energy_range
    }
    fn macs_per_shower(&self, _opts: &SampleOptions) -> Option<f64> {
        let m: Vec<f64> = self
            .fast
            .iter()
            .map(|f| f.macs_per_sample() as f64)
            .collect();
        (m.len() == 3).then(|| m[0] + m[1] + self.grid.n_coarse() as f64 * m[2])
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
            self.grid.n_fine(),
            seed,
            first,
            batch,
            progress,
            |range, rngs| Ok(self.sample_batch(&energies[range], rngs)),
        )
    }
    fn upsample_widths(&self) -> Option<Vec<usize>> {
        Some(vec![self.grid.n_fine(), self.grid.n_coarse()])
    }
    fn upsample(
        &self,
        energies: &[f64],
        showers: &[f32],
        width: usize,
        seed: u64,
        first: u64,
        batch: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f32>> {
        self.upsample_showers(energies, showers, width, seed, first, batch, progress)
    }
    fn save(&self, dir: &Path) -> Result<()> {
        write_model_dir(dir, &self.cfg, &self.card, &self.flows)
    }
}

#[cfg(test)]
mod tests;

//! `caloforge convert`: point clouds (ShowerData) into CaloChallenge voxels or a regular grid,
//! and voxels into point clouds.

use anyhow::{bail, Context, Result};
use caloforge_core::showerdata::{PointFile, PointShower, PointWriter};
use caloforge_core::voxelize::{mesh_to_points, points_to_mesh, Grid, Outside};
use caloforge_core::{DatasetKind, ShowerFile, ShowerWriter};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Input file: ShowerData point clouds (with --voxelize or --grid), or CaloChallenge voxels
    /// (with --points).
    input: PathBuf,
    /// Output file.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Bin the points into this dataset's CaloChallenge mesh (1-photons, 1-pions, 2, 3);
    /// point energies in GeV become voxel energies in MeV.
    #[arg(long, value_parser = crate::parse_dataset, conflicts_with_all = ["grid", "points"])]
    voxelize: Option<DatasetKind>,
    /// Binning XML overriding the embedded one (with --voxelize or --points).
    #[arg(long)]
    binning: Option<PathBuf>,
    /// Bin the points into a regular grid centred on x = y = 0: NX,NY,CELL_MM,LAYERS (voxel
    /// (layer, iy, ix) at (layer·NY + iy)·NX + ix).
    #[arg(long, conflicts_with = "points")]
    grid: Option<String>,
    /// Turn the voxels of this dataset's file into points at the voxel centres.
    #[arg(long, value_parser = crate::parse_dataset)]
    points: Option<DatasetKind>,
    /// Binned voxels at or below this energy (MeV) are set to zero (e.g. 0.01515, the
    /// dataset-2/3 readout threshold).
    #[arg(long, default_value_t = 0.0)]
    threshold: f64,
    /// Convert only the first N showers.
    #[arg(long, short = 'n')]
    n: Option<usize>,
}

#[derive(Serialize)]
struct ConvertSummary {
    caloforge_version: String,
    input: String,
    output: String,
    to: String,
    n: usize,
    /// Energy of the points outside the binning, as a fraction of all points' energy.
    outside_energy_fraction: f64,
    outside_points: usize,
    wall_seconds: f64,
}

impl ConvertArgs {
    /// `convert INPUT --voxelize DATASET [--binning XML] -o OUT`.
    pub fn voxelize(
        input: &std::path::Path,
        out: &std::path::Path,
        ds: DatasetKind,
        binning: Option<PathBuf>,
    ) -> Self {
        ConvertArgs {
            input: input.to_path_buf(),
            out: out.to_path_buf(),
            voxelize: Some(ds),
            binning,
            grid: None,
            points: None,
            threshold: 0.0,
            n: None,
        }
    }
}

/// Showers converted per batch.
const BATCH: usize = 1000;

/// `caloforge convert`.
pub fn convert(a: ConvertArgs, quiet: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    if !(a.threshold.is_finite() && a.threshold >= 0.0) {
        bail!("--threshold must be ≥ 0 MeV, got {}", a.threshold);
    }
    let inputs = [a.input.as_path()];
    caloforge_core::io::check_output(&a.out, &inputs)?;
    let json = caloforge_core::io::summary_path(&a.out, &inputs)?;
    let (to, n, outside, total) = match (&a.voxelize, &a.grid, &a.points) {
        (Some(ds), None, None) => {
            let g = ds.geometry(a.binning.as_deref())?;
            let (n, o, t) = bin_points(&a, g.n_voxels(), quiet, |p, f, v| {
                points_to_mesh(p, f, &g, v)
            })?;
            (format!("dataset {ds}"), n, o, t)
        }
        (None, Some(spec), None) => {
            let grid = parse_grid(spec)?;
            let (n, o, t) = bin_points(&a, grid.n_voxels(), quiet, |p, f, v| grid.bin(p, f, v))?;
            (format!("grid {spec}"), n, o, t)
        }
        (None, None, Some(ds)) => {
            let n = voxels_to_points(&a, *ds, quiet)?;
            (String::from("points"), n, Outside::default(), 0.0)
        }
        _ => bail!("say what to convert to: --voxelize DATASET, --grid NX,NY,CELL_MM,LAYERS or --points DATASET"),
    };
    let wall = t0.elapsed().as_secs_f64();
    let summary = ConvertSummary {
        caloforge_version: env!("CARGO_PKG_VERSION").into(),
        input: a.input.display().to_string(),
        output: a.out.display().to_string(),
        to,
        n,
        outside_energy_fraction: if total > 0.0 {
            outside.energy_gev / total
        } else {
            0.0
        },
        outside_points: outside.points,
        wall_seconds: wall,
    };
    caloforge_models::write_text(&json, &serde_json::to_string_pretty(&summary)?)?;
    eprintln!(
        "wrote {} ({n} showers; {:.3} % of the points' energy outside the binning)",
        a.out.display(),
        100.0 * summary.outside_energy_fraction
    );
    Ok(())
}

fn parse_grid(spec: &str) -> Result<Grid> {
    let v: Vec<&str> = spec.split(',').map(str::trim).collect();
    let bad = || anyhow::anyhow!("--grid '{spec}': expected NX,NY,CELL_MM,LAYERS (positive)");
    if v.len() != 4 {
        return Err(bad());
    }
    let int = |s: &str| s.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(bad);
    let cell = v[2]
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c > 0.0)
        .ok_or_else(bad)?;
    let g = Grid {
        nx: int(v[0])?,
        ny: int(v[1])?,
        cell_mm: cell,
        layers: int(v[3])?,
    };
    if g.n_voxels() > 10_000_000 {
        bail!(
            "--grid '{spec}': {} voxels per shower; at most 10 million",
            g.n_voxels()
        );
    }
    Ok(g)
}

/// Bins the showers of a point file with `bin` into `n_voxels` per shower; returns the showers,
/// what fell outside and the points' total energy (GeV).
fn bin_points(
    a: &ConvertArgs,
    n_voxels: usize,
    quiet: bool,
    bin: impl Fn(&[f32], usize, &mut [f32]) -> Outside + Sync,
) -> Result<(usize, Outside, f64)> {
    use rayon::prelude::*;
    let f = PointFile::open(&a.input)?;
    let n = a.n.unwrap_or(f.len()).min(f.len());
    if n == 0 {
        bail!("{}: no showers to convert", a.input.display());
    }
    let mut w = ShowerWriter::create(&a.out, n_voxels, n)?;
    let pb = caloforge_eval::progress::bar(!quiet, n as u64, "convert");
    let (mut outside, mut total) = (Outside::default(), 0.0f64);
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        let pts = f.read_points(start, k)?;
        let mut vox = vec![0.0f32; k * n_voxels];
        let parts: Vec<(Outside, f64)> = vox
            .par_chunks_mut(n_voxels)
            .zip(&pts)
            .map(|(v, p)| {
                let o = bin(p, f.features, v);
                for x in v.iter_mut() {
                    if *x <= a.threshold as f32 {
                        *x = 0.0;
                    }
                }
                let e: f64 = p.chunks(f.features).map(|q| q[3] as f64).sum();
                (o, e)
            })
            .collect();
        for (o, e) in parts {
            outside += o;
            total += e;
        }
        let e: Vec<f64> = f.energies[start..start + k]
            .iter()
            .map(|e| e * 1000.0)
            .collect();
        w.append(&e, &vox)?;
        pb.inc(k as u64);
    }
    pb.finish_and_clear();
    w.finish()?;
    Ok((n, outside, total))
}

/// Writes the voxels of a CaloChallenge file as points at the voxel centres (incident energies
/// in GeV, direction (0, 0, 1), the dataset's particle).
fn voxels_to_points(a: &ConvertArgs, ds: DatasetKind, quiet: bool) -> Result<usize> {
    if a.threshold != 0.0 {
        bail!("--threshold applies to binned voxels (--voxelize, --grid), not to --points");
    }
    let g = ds.geometry(a.binning.as_deref())?;
    let file = ShowerFile::open(&a.input, Some(g.n_voxels()))?;
    let n = a.n.unwrap_or(file.len()).min(file.len());
    if n == 0 {
        bail!("{}: no showers to convert", a.input.display());
    }
    let pdg = match ds {
        DatasetKind::Photons1 => 22,
        DatasetKind::Pions1 => 211,
        DatasetKind::Ds2 | DatasetKind::Ds3 => 11,
    };
    let mut w = PointWriter::create(&a.out, 4, n)?;
    let pb = caloforge_eval::progress::bar(!quiet, n as u64, "convert");
    for start in (0..n).step_by(BATCH) {
        let k = BATCH.min(n - start);
        let rows = file
            .read_rows(start, k)
            .with_context(|| format!("reading {}", a.input.display()))?;
        let pts: Vec<Vec<f32>> = rows
            .chunks(g.n_voxels())
            .map(|r| {
                let v: Vec<f32> = r.iter().map(|&x| x as f32).collect();
                mesh_to_points(&v, &g)
            })
            .collect();
        let showers: Vec<PointShower> = pts
            .iter()
            .enumerate()
            .map(|(j, p)| PointShower {
                energy: file.energies[start + j] / 1000.0,
                direction: [0.0, 0.0, 1.0],
                pdg,
                id: (start + j) as i64,
                points: p,
            })
            .collect();
        w.append(&showers)?;
        pb.inc(k as u64);
    }
    pb.finish_and_clear();
    w.finish()?;
    Ok(n)
}

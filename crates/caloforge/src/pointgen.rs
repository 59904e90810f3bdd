//! `caloforge generate` for point-cloud models: incident particles from options or a file,
//! ShowerData output (or voxels with --voxelize).

use crate::commands::{angle_ranges, IncidentFile};
use crate::models::{Bars, GenerateArgs, Offset, MAX_SHOWERS};
use anyhow::{bail, Result};
use caloforge_core::io::{check_output, summary_path, ShowerWriter};
use caloforge_core::showerdata::{PointShower, PointWriter};
use caloforge_core::voxelize::{points_to_mesh, Outside};
use caloforge_models::{Generator, Incident, Progress, SampleOptions};
use std::time::Instant;

/// A PDG code from a particle name (e-, e+, gamma, pi+, pi-) or a number.
pub fn parse_pdg(s: &str) -> Result<i64> {
    if let Ok(p) = s.parse::<caloforge_sim::points::Particle>() {
        return Ok(p.pdg());
    }
    s.trim().parse::<i64>().map_err(|_| {
        anyhow::anyhow!("unknown particle '{s}': use e-, e+, gamma, pi+, pi- or a PDG code")
    })
}

/// The incident particles of a run.
fn incidents(a: &GenerateArgs) -> Result<Vec<Incident>> {
    let (theta, phi) = angle_ranges(
        a.theta.as_deref().unwrap_or("0"),
        a.phi.as_deref().unwrap_or("0,360"),
    )?;
    let pdgs: Vec<i64> = a
        .particle
        .as_deref()
        .unwrap_or("e-")
        .split(',')
        .map(parse_pdg)
        .collect::<Result<_>>()?;
    match (&a.energies_from, a.n) {
        (Some(_), Some(_)) => bail!("give either --energies-from or --n, not both"),
        (None, None) => bail!("give --energies-from FILE or --n N"),
        (None, Some(0)) => bail!("--n must be > 0"),
        (None, Some(n)) if n > MAX_SHOWERS => {
            bail!("--n {n} is more than the {MAX_SHOWERS} showers one run makes")
        }
        (None, Some(n)) => {
            let (lo, hi) = (a.energy_min.unwrap_or(1e3), a.energy_max.unwrap_or(1e5));
            caloforge_core::io::check_energy_range(lo, hi)?;
            Ok(caloforge_sim::points::draw_incidents(
                n,
                &pdgs,
                [lo / 1e3, hi / 1e3],
                theta,
                phi,
                a.seed,
            )
            .into_iter()
            .map(|(e, d, pdg)| Incident {
                energy_gev: e,
                direction: d,
                pdg,
            })
            .collect())
        }
        (Some(p), None) => {
            let file = IncidentFile::open(p)?;
            if let IncidentFile::Points(f) = &file {
                if a.particle.is_some() || a.theta.is_some() || a.phi.is_some() {
                    bail!("--energies-from a point file takes its particles and directions too: drop --particle, --theta and --phi");
                }
                return Ok((0..f.len())
                    .map(|i| Incident {
                        energy_gev: f.energies[i],
                        direction: f.directions[i],
                        pdg: f.pdg[i],
                    })
                    .collect());
            }
            // A voxel file: its energies (MeV), the particles and angles drawn as without it.
            let e = file.energies_mev();
            let draws = caloforge_sim::points::draw_incidents(
                e.len(),
                &pdgs,
                [1.0, 1.0],
                theta,
                phi,
                a.seed,
            );
            Ok(draws
                .into_iter()
                .zip(e)
                .map(|((_, d, pdg), e)| Incident {
                    energy_gev: e / 1e3,
                    direction: d,
                    pdg,
                })
                .collect())
        }
    }
}

enum Sink {
    Points(PointWriter),
    Voxels(ShowerWriter, Box<caloforge_core::Geometry>),
}

/// `caloforge generate` with a point-cloud model.
pub fn generate_points(a: GenerateArgs, model: Box<dyn Generator>, quiet: bool) -> Result<()> {
    if a.coarse_from.is_some() || a.resample.is_some() {
        bail!("--coarse-from and --resample are for superresolution models");
    }
    let inputs: Vec<&std::path::Path> = a.energies_from.iter().map(|p| p.as_path()).collect();
    check_output(&a.out, &inputs)?;
    let summary = summary_path(&a.out, &inputs)?;
    let inc = incidents(&a)?;
    if inc.is_empty() {
        bail!("no incident particles to generate showers for");
    }
    let sopts = SampleOptions {
        sampler: a.sampler.clone(),
        steps: a.steps,
        points: None,
    };
    // A first shower checks the options and particles before any output is written.
    model.sample_points(
        &inc[..1],
        a.seed,
        0,
        1,
        &sopts,
        &caloforge_models::NoProgress,
    )?;
    let mut sink = match a.voxelize {
        Some(ds) => {
            let g = ds.geometry(None)?;
            Sink::Voxels(
                ShowerWriter::create(&a.out, g.n_voxels(), inc.len())?,
                Box::new(g),
            )
        }
        None => Sink::Points(PointWriter::create(&a.out, 4, inc.len())?),
    };
    let bars = Bars::new(quiet);
    bars.start("generate", "generate", inc.len() as u64);
    let t0 = Instant::now();
    let (mut points, mut outside) = (0usize, Outside::default());
    let chunk = (1024usize.div_ceil(a.batch) * a.batch).min(inc.len());
    for start in (0..inc.len()).step_by(chunk) {
        let part = &inc[start..(start + chunk).min(inc.len())];
        let p = Offset {
            inner: &bars,
            offset: start as u64,
            bar: "generate",
        };
        let showers = model.sample_points(part, a.seed, start as u64, a.batch, &sopts, &p)?;
        points += showers.iter().map(|s| s.len() / 4).sum::<usize>();
        match &mut sink {
            Sink::Points(w) => {
                let rows: Vec<PointShower> = part
                    .iter()
                    .zip(&showers)
                    .enumerate()
                    .map(|(j, (i, s))| PointShower {
                        energy: i.energy_gev,
                        direction: i.direction,
                        pdg: i.pdg,
                        id: (start + j) as i64,
                        points: s,
                    })
                    .collect();
                w.append(&rows)?;
            }
            Sink::Voxels(w, g) => {
                let v = g.n_voxels();
                let mut vox = vec![0.0f32; part.len() * v];
                for (row, s) in vox.chunks_mut(v).zip(&showers) {
                    outside += points_to_mesh(s, 4, g, row);
                }
                let e: Vec<f64> = part.iter().map(|i| i.energy_gev * 1e3).collect();
                w.append(&e, &vox)?;
            }
        }
    }
    bars.finish("generate");
    let secs = t0.elapsed().as_secs_f64();
    match sink {
        Sink::Points(w) => {
            w.finish()?;
        }
        Sink::Voxels(w, _) => {
            w.finish()?;
        }
    }
    let j = serde_json::json!({
        "caloforge_version": env!("CARGO_PKG_VERSION"),
        "model": a.model.display().to_string(),
        "model_kind": model.kind().name(),
        "out": a.out.display().to_string(),
        "format": if a.voxelize.is_some() { "calochallenge voxels" } else { "showerdata points" },
        "n": inc.len(),
        "points": points,
        "outside_points": outside.points,
        "outside_energy_gev": outside.energy_gev,
        "seed": a.seed,
        "batch": a.batch,
        "sampler": a.sampler,
        "steps": a.steps,
        "threads": rayon::current_num_threads(),
        "generation_seconds": secs,
        "ms_per_shower": secs * 1e3 / inc.len() as f64,
    });
    caloforge_models::write_text(&summary, &serde_json::to_string_pretty(&j)?)?;
    eprintln!(
        "wrote {} ({} showers, {points} points, {:.3} ms per shower)",
        a.out.display(),
        inc.len(),
        secs * 1e3 / inc.len() as f64
    );
    Ok(())
}

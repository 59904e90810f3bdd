//! Conformance: every registered model, through each of its tiny presets (names containing
//! "-tiny"; a "-student" or "-distill" preset is trained with the model's tiny teacher), must
//! - train into a directory that can generate;
//! - generate showers that depend only on (seed, shower index): not on batch size, thread count
//!   or where a chunk starts;
//! - generate the same showers after save → load;
//! - resume an interrupted training (a stop request after its first step) to exactly the model
//!   of an uninterrupted run;
//! - refuse to train over a model without --resume/--force, a resume with another
//!   configuration, and a configuration with an unknown key (one error naming the key).
//!
//! One test function: the stop request is process-wide, so the models run one after another.

use caloforge_core::DatasetKind;
use caloforge_models::registry::{self, REGISTRY};
use caloforge_models::{
    Incident, ModelKind, NoProgress, Output, Progress, SampleOptions, TrainOptions,
};
use caloforge_sim::{log_uniform_energies, Mesh, SimParams, Simulator, Tune};
use std::path::{Path, PathBuf};

/// Training showers of a model's output: voxels ([`voxel_data`]), or point clouds of the
/// ILD-like detector (electrons, photons, pions at several angles).
fn data(out: Output, dir: &Path) -> PathBuf {
    match out {
        Output::Voxels(ds) => voxel_data(ds, dir),
        Output::Points { .. } => {
            use caloforge_core::showerdata::{PointShower, PointWriter};
            use caloforge_sim::points::{incidents, Detector, Particle, PointSimulator};
            let p = dir.join("train_points.h5");
            if p.exists() {
                return p;
            }
            let sim = PointSimulator::new(Detector::load("ild").unwrap());
            let parts = [Particle::Electron, Particle::Photon, Particle::PionPlus];
            let inc = incidents(40, &parts, [5.0, 50.0], [0.0, 20.0], [0.0, 360.0], 1);
            let pts = sim.simulate(&inc, 2, 0, &|_| {});
            let mut w = PointWriter::create(&p, 4, inc.len()).unwrap();
            let rows: Vec<PointShower> = inc
                .iter()
                .zip(&pts)
                .enumerate()
                .map(|(i, (c, q))| PointShower {
                    energy: c.energy_gev,
                    direction: c.direction,
                    pdg: c.particle.pdg(),
                    id: i as i64,
                    points: q,
                })
                .collect();
            w.append(&rows).unwrap();
            w.finish().unwrap();
            p
        }
    }
}

/// Training showers of `kind`: simulated for datasets 2/3 and 1-photons, synthetic for pions.
fn voxel_data(kind: DatasetKind, dir: &Path) -> PathBuf {
    let p = dir.join(format!("train_{}.h5", kind.name()));
    if p.exists() {
        return p;
    }
    let n = if kind == DatasetKind::Ds3 { 16 } else { 40 };
    let nv = kind.n_voxels();
    let e = log_uniform_energies(n, 1e3, 1e5, 1);
    let vox = match kind {
        DatasetKind::Ds2 | DatasetKind::Ds3 | DatasetKind::Photons1 => {
            let p = SimParams::for_dataset(kind, Tune::Geant4).unwrap();
            let sim = Simulator::new(p, vec![Mesh::of(kind).unwrap()]);
            sim.simulate(&e, 2, 0, &|_| {}).swap_remove(0)
        }
        _ => (0..n * nv)
            .map(|i| {
                if i % 3 == 0 {
                    0.0
                } else {
                    ((i * 7919) % 1000) as f32 * 0.01
                }
            })
            .collect(),
    };
    caloforge_core::io::write_showers(&p, &e, &vox, nv).unwrap();
    p
}

/// Asks the training loops to stop once any part has done `after` steps.
struct StopAfter(u64);

impl Progress for StopAfter {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn set(&self, _: &str, pos: u64, _: Option<String>) {
        if pos >= self.0 {
            caloforge_models::request_stop();
        }
    }
    fn finish(&self, _: &str) {}
}

/// One shower per energy (MeV), as a vector of values per shower (voxels, or points of
/// particles 11, 22, 211 in turn at angles that vary with the shower).
fn sample(kind: &dyn ModelKind, dir: &Path, e: &[f64], first: u64, batch: usize) -> Vec<Vec<f32>> {
    let m = kind.load(dir).unwrap();
    let o = SampleOptions::default();
    match m.output() {
        Output::Voxels(ds) => m
            .sample(e, 7, first, batch, &o, &NoProgress)
            .unwrap()
            .chunks(ds.n_voxels())
            .map(<[f32]>::to_vec)
            .collect(),
        Output::Points { .. } => {
            let inc: Vec<Incident> = e
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    let j = k + first as usize;
                    let th = 0.05 * j as f64;
                    Incident {
                        energy_gev: x / 1e3,
                        direction: [th.sin(), 0.0, th.cos()],
                        pdg: [11, 22, 211][j % 3],
                    }
                })
                .collect();
            m.sample_points(&inc, 7, first, batch, &o, &NoProgress)
                .unwrap()
        }
    }
}

fn train(kind: &dyn ModelKind, text: &str, opts: &TrainOptions, p: &dyn Progress) -> bool {
    registry::prepare_out(kind, text, opts).unwrap();
    let out = kind.train(text, opts, p).unwrap();
    assert!(out.interrupted || out.complete, "{:?}", out.lines);
    out.interrupted
}

fn conform(kind: &dyn ModelKind, name: &str, text: &str, teacher: Option<PathBuf>, dir: &Path) {
    eprintln!("conformance: {} / {name}", kind.name());
    let (ds, _) = kind.canonical(text).unwrap();
    let opts = |sub: &str| TrainOptions {
        data: data(ds, dir),
        out: dir.join(format!("{name}-{sub}")),
        seed: 3,
        teacher: teacher.clone(),
        checkpoint_seconds: Some(0.0),
        quiet: true,
        ..Default::default()
    };
    // Trains; samples depend on (seed, k) only.
    let a = opts("a");
    assert!(!train(kind, text, &a, &NoProgress));
    let e = [2e3, 3e4, 4e5, 7e3, 1e5];
    let s5 = sample(kind, &a.out, &e, 0, 5);
    assert_eq!(s5.len(), 5);
    if let Output::Voxels(d) = ds {
        assert!(s5.iter().all(|s| s.len() == d.n_voxels()));
    }
    assert!(
        s5.iter().flatten().all(|x| x.is_finite()),
        "{name}: non-finite values"
    );
    if ds.dataset().is_some() {
        assert!(s5.iter().flatten().all(|x| *x >= 0.0), "{name}");
    }
    // (assert! rather than assert_eq!: the vectors are too long to print.)
    assert!(sample(kind, &a.out, &e, 0, 2) == s5, "{name}: batch size");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert!(
        one.install(|| sample(kind, &a.out, &e, 0, 5)) == s5,
        "{name}: thread count"
    );
    assert!(
        sample(kind, &a.out, &e[3..], 3, 1) == s5[3..],
        "{name}: chunk start"
    );
    // Save → load.
    let b = dir.join(format!("{name}-saved"));
    kind.load(&a.out).unwrap().save(&b).unwrap();
    assert!(sample(kind, &b, &e, 0, 5) == s5, "{name}: save/load");
    // Interrupted after one step, resumed: the uninterrupted model.
    let c = opts("c");
    assert!(
        train(kind, text, &c, &StopAfter(1)),
        "{name}: not interrupted"
    );
    caloforge_models::clear_stop();
    let resumed = TrainOptions {
        resume: true,
        ..c.clone()
    };
    assert!(!train(kind, text, &resumed, &NoProgress));
    assert!(sample(kind, &c.out, &e, 0, 5) == s5, "{name}: resume");
    // Refusals.
    let e1 = registry::prepare_out(kind, text, &a)
        .unwrap_err()
        .to_string();
    assert!(e1.contains("--resume") && e1.contains("--force"), "{e1}");
    let other = if text.contains("validation_fraction = ") {
        text.replacen("validation_fraction = ", "validation_fraction = 0.3\n# ", 1)
    } else {
        text.replacen("validation = ", "validation = 3\n# ", 1)
    };
    assert_ne!(other, text, "{name}: no key to change");
    let e2 = registry::prepare_out(kind, &other, &resumed)
        .unwrap_err()
        .to_string();
    assert!(e2.contains("another configuration"), "{e2}");
    let e3 = kind
        .canonical(&format!("bogus_key = 1\n{text}"))
        .unwrap_err()
        .to_string();
    assert!(e3.contains("bogus_key"), "{e3}");
}

#[test]
fn every_registered_model_conforms() {
    let dir = tempfile::tempdir().unwrap();
    for kind in REGISTRY {
        let tiny: Vec<_> = kind
            .presets()
            .iter()
            .filter(|p| p.name.contains("-tiny"))
            .collect();
        assert!(!tiny.is_empty(), "{} has no tiny preset", kind.name());
        let (teachers, students): (Vec<&caloforge_models::Preset>, Vec<_>) = tiny
            .into_iter()
            .partition(|p| !p.name.ends_with("-student") && !p.name.ends_with("-distill"));
        for p in &teachers {
            conform(*kind, p.name, p.text, None, dir.path());
        }
        for p in students {
            let base = p
                .name
                .trim_end_matches("-student")
                .trim_end_matches("-distill");
            let t = dir.path().join(format!("{base}-a"));
            assert!(t.exists(), "{}: no teacher {base}", p.name);
            conform(*kind, p.name, p.text, Some(t), dir.path());
        }
    }
}

use super::*;
use crate::{preset_text, LikelihoodOptions, NoProgress};
use caloforge_sim::{log_uniform_energies, Mesh, SimParams, Simulator, Tune};

fn cfg(name: &str) -> CaloScore2Config {
    CaloScore2Config::from_toml(&preset_text(name).unwrap()).unwrap()
}

#[test]
fn presets_parse_with_the_papers_settings() {
    for p in PRESETS {
        let c = cfg(p.name);
        assert_eq!(
            c.distill.is_some(),
            p.name.ends_with("-distill"),
            "{}",
            p.name
        );
    }
    let c = cfg("caloscore2-ds2");
    assert_eq!(
        (c.unet.in_emb, c.unet.widths.clone(), c.unet.depth),
        (32, vec![32, 64, 96], 3)
    );
    assert_eq!(c.unet.attention, vec![false, false, true]);
    assert_eq!((c.embed, c.mlp, c.blocks, c.steps), (64, 1024, 2, 512));
    assert_eq!(
        (c.optimizer, c.grad_clip, c.ema),
        (OptimizerKind::Adamax, Some(1.0), 0.999)
    );
    assert_eq!((c.lr, c.batch_size, c.decay_fraction), (3e-4, 128, 0.5));
    assert_eq!(c.schedule, LogSnrCosine::default());
    assert_eq!(c.nets().padded(), [48, 16, 12]);
    // The distillation preset shares the teacher preset's networks and data handling.
    assert_eq!(
        cfg("caloscore2-ds2-distill").architecture(),
        c.architecture()
    );
    assert_eq!(
        cfg("caloscore2-small-distill").architecture(),
        cfg("caloscore2-small").architecture()
    );
    let d3 = cfg("caloscore2-ds3");
    assert_eq!((d3.nets().padded(), d3.batch_size), ([48, 52, 20], 80));
    // The condition: log10(E / 1 GeV) / 2.
    assert!((c.condition(1e5) - 1.0).abs() < 1e-6 && (c.condition(1e6) - 1.5).abs() < 1e-6);
    let bad = preset_text("caloscore2-tiny")
        .unwrap()
        .replace("attention = [false, true]", "attention = [true]");
    let e = CaloScore2Config::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("attention"), "{e}");
}

/// Writes `n` simulated dataset-2 showers.
/// Dataset 1 (photons): the reference's 1-D configuration, five layers of 8, 160, 190, 5 and 5
/// voxels, and a training shower decodes to itself through codes, fractions and normalisers.
#[test]
fn dataset_1_runs_on_its_five_layers() {
    let c = cfg("caloscore2-ds1-photons");
    assert_eq!(c.layer_sizes(), vec![8, 160, 190, 5, 5]);
    let n = c.nets();
    assert_eq!(
        (n.shape, n.layers, n.padded()),
        ([368, 1, 1], 5, [368, 1, 1])
    );
    assert_eq!(
        (n.kernel, n.pool, n.layer_norm),
        ([3, 1, 1], [2, 1, 1], true)
    );
    assert_eq!(
        (c.unet.in_emb, c.unet.widths.clone(), c.unet.depth, c.mlp),
        (16, vec![32, 64, 96, 128], 4, 128)
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.h5");
    let e = log_uniform_energies(12, 1e3, 1e5, 1);
    let kind = DatasetKind::Photons1;
    let sim = Simulator::new(
        SimParams::for_dataset(kind, Tune::Geant4).unwrap(),
        vec![Mesh::of(kind).unwrap()],
    );
    let vox = sim.simulate(&e, 2, 0, &|_| {}).swap_remove(0);
    caloforge_core::io::write_showers(&p, &e, &vox, 368).unwrap();
    let tiny = cfg("caloscore2-tiny-ds1-photons");
    let opts = TrainOptions {
        data: p,
        out: dir.path().join("run"),
        ..Default::default()
    };
    let prep = prepare(&tiny, &opts, None).unwrap();
    let mut m = CaloScore2::untrained(&tiny, 1).unwrap();
    m.prep = prep.prep.clone();
    for k in [0usize, 4] {
        let got = m.decode(
            &prep.xl[k * 5..(k + 1) * 5],
            &prep.xv[k * 368..(k + 1) * 368],
            e[k],
        );
        let (sg, sw): (f64, f64) = (
            got.iter().map(|&v| v as f64).sum(),
            vox[k * 368..(k + 1) * 368].iter().map(|&v| v as f64).sum(),
        );
        assert!((sg - sw).abs() < 1e-3 * sw, "shower {k}: {sg} vs {sw}");
    }
}

fn data(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("train.h5");
    let e = log_uniform_energies(n, 1e3, 1e5, 1);
    let sim = Simulator::new(
        SimParams::new(Tune::Geant4),
        vec![Mesh::of(DatasetKind::Ds2).unwrap()],
    );
    let vox = sim.simulate(&e, 2, 0, &|_| {}).swap_remove(0);
    caloforge_core::io::write_showers(&p, &e, &vox, 6480).unwrap();
    p
}

/// The preprocessing inverts: a training shower through the stick-breaking code, the layer
/// fractions and both normalisers decodes to itself (voxels under the cut aside). (A held-out
/// shower may hit voxels outside the training showers' range, which the min-max clamps, as the
/// reference's.)
#[test]
fn preprocessing_decodes_to_the_shower_and_the_likelihood_encodes_as_training() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        data: data(dir.path(), 24),
        out: dir.path().join("run"),
        ..Default::default()
    };
    let c = cfg("caloscore2-tiny");
    let p = prepare(&c, &opts, None).unwrap();
    let (e_inc, vox) = crate::read_showers(&opts.data, DatasetKind::Ds2, None).unwrap();
    let mut m = CaloScore2::untrained(&c, 1).unwrap();
    m.prep = p.prep.clone();
    // The normalised training data is standardised per dimension.
    let col: Vec<f64> = (0..p.n_train).map(|i| p.xl[i * 45] as f64).collect();
    let mean = col.iter().sum::<f64>() / col.len() as f64;
    assert!(mean.abs() < 1e-4, "{mean}");
    for k in [0usize, 5, p.n_train - 1] {
        let got = m.decode(
            &p.xl[k * 45..(k + 1) * 45],
            &p.xv[k * 6480..(k + 1) * 6480],
            e_inc[k],
        );
        let want = &vox[k * 6480..(k + 1) * 6480];
        let (mut sg, mut sw) = (0.0f64, 0.0f64);
        for (g, w) in got.iter().zip(want) {
            sg += *g as f64;
            sw += *w as f64;
            if *w as f64 > 10.0 * c.cut_mev {
                assert!(((g - w) / w).abs() < 2e-3, "shower {k}: {g} vs {w}");
            }
        }
        assert!((sg - sw).abs() < 1e-3 * sw, "shower {k}: {sg} vs {sw}");
    }
    // The likelihood encodes showers as training does.
    let (xl, xv, jac) = m.encode(&e_inc[..3], &vox[..3 * 6480]);
    let maxdiff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let (dl, dv) = (
        maxdiff(&xl, &p.xl[..3 * 45]),
        maxdiff(&xv, &p.xv[..3 * 6480]),
    );
    assert!(dl == 0.0 && dv == 0.0, "codes differ by {dl}, {dv}");
    assert!(jac.iter().all(|j| j.is_finite()), "{jac:?}");

    // Likelihood: finite, the same for a shower whatever its batch, one error for bad rows.
    let lo = LikelihoodOptions {
        rtol: 1e-3,
        atol: 1e-3,
        ..Default::default()
    };
    assert_eq!(m.density_space().unwrap().dims, 45 + 6480);
    let all = m
        .log_likelihood(&e_inc[..3], &vox[..3 * 6480], 4, 0, 3, &lo, &NoProgress)
        .unwrap();
    assert!(all.iter().all(|v| v.is_finite()), "{all:?}");
    let last = m
        .log_likelihood(
            &e_inc[2..3],
            &vox[2 * 6480..3 * 6480],
            4,
            2,
            1,
            &lo,
            &NoProgress,
        )
        .unwrap();
    assert!(
        (last[0] - all[2]).abs() < 1e-6 * all[2].abs().max(1.0),
        "{last:?} {all:?}"
    );
    assert!(m
        .log_likelihood(&e_inc[..3], &vox[..100], 4, 0, 3, &lo, &NoProgress)
        .is_err());
}

#[test]
fn distillation_checks_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path(), 16);
    let opts = |out: &str| TrainOptions {
        data: d.clone(),
        out: dir.path().join(out),
        seed: 2,
        ..Default::default()
    };
    let tiny = preset_text("caloscore2-tiny").unwrap();
    let distill = preset_text("caloscore2-tiny-distill").unwrap();
    let out = CaloScore2::train(&tiny, &opts("t"), &NoProgress).unwrap();
    assert!(out.complete);
    let err = |text: &str, o: TrainOptions| {
        CaloScore2::train(text, &o, &NoProgress)
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(&distill, opts("s"));
    assert!(e.contains("--teacher"), "{e}");
    let with = |factor| TrainOptions {
        teacher: Some(dir.path().join("t")),
        factor,
        ..opts("s")
    };
    let e = err(&tiny, with(None));
    assert!(e.contains("--teacher is for distillation"), "{e}");
    for f in [1, 3, 16] {
        let e = err(&distill, with(Some(f)));
        assert!(e.contains("--factor"), "{f}: {e}");
    }
    let other = distill.replace("mlp = 16", "mlp = 24");
    let e = err(&other, with(None));
    assert!(e.contains("config.toml") && e.contains("differ"), "{e}");
    // Two rounds: 8 → 4 → 2 steps, the intermediate student kept.
    let out = CaloScore2::train(&distill, &with(Some(4)), &NoProgress).unwrap();
    assert!(out.complete && out.lines.len() == 2, "{:?}", out.lines);
    let s = CaloScore2::load(&dir.path().join("s")).unwrap();
    let r1 = CaloScore2::load(&dir.path().join("s/rounds/steps_4")).unwrap();
    assert_eq!((s.steps(), r1.steps()), (2, 4));
    assert_eq!(s.distilled.as_ref().unwrap().teacher_steps, 4);
    let t = CaloScore2::load(&dir.path().join("t")).unwrap();
    assert_eq!(
        s.prep, t.prep,
        "a student keeps its teacher's preprocessing"
    );
    let g = s
        .sample(&[2e4, 5e4], 3, 0, 2, &SampleOptions::default(), &NoProgress)
        .unwrap();
    assert!(g.len() == 2 * 6480 && g.iter().all(|v| v.is_finite() && *v >= 0.0));
    // Resuming it with another teacher (a copy of the first) is refused.
    let t2 = dir.path().join("t2");
    std::fs::create_dir(&t2).unwrap();
    for f in std::fs::read_dir(dir.path().join("t")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, t2.join(f.file_name().unwrap())).unwrap();
        }
    }
    let e = err(
        &distill,
        TrainOptions {
            teacher: Some(t2),
            resume: true,
            ..with(Some(4))
        },
    );
    assert!(e.contains("distilled from the teacher"), "{e}");
}

use super::*;
use crate::{preset_text, NoProgress};
use caloforge_sim::{log_uniform_energies, Mesh, SimParams, Simulator, Tune};
use rand::SeedableRng;

#[test]
fn every_preset_parses_and_dims_match_the_paper() {
    for p in PRESETS {
        let c = ICaloFlowConfig::from_toml(p.text).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(c.model, "icaloflow");
    }
    let ds2 = ICaloFlowConfig::from_toml(&preset_text("icaloflow-ds2").unwrap()).unwrap();
    assert_eq!(ds2.dims(3), (144, 191));
    let ds3 = ICaloFlowConfig::from_toml(&preset_text("icaloflow-ds3").unwrap()).unwrap();
    assert_eq!(ds3.dims(3), (900, 947));
    let s = ICaloFlowConfig::from_toml(&preset_text("icaloflow-ds2-student").unwrap()).unwrap();
    assert_eq!(s.flow3.hidden, 384);
    assert!(preset_text("icaloflow-ds9")
        .unwrap_err()
        .to_string()
        .contains("unknown preset"));
}

#[test]
fn bad_configurations_are_refused() {
    let good = preset_text("icaloflow-small").unwrap();
    for (from, to, what) in [
        ("dataset = 2", "dataset = \"1-pions\"", "datasets 2 and 3"),
        ("dataset = 2", "dataset = 7", "unknown dataset"),
        ("alpha = 1e-6", "alpha = 1e-6\nbogus_key = 1", "bogus_key"),
        ("max_lr = 2e-3", "max_lr = nan", "max_lr"),
        (
            "validation_fraction = 0.2",
            "validation_fraction = 1.5",
            "validation_fraction",
        ),
        ("model = \"icaloflow\"", "model = \"other\"", "model"),
    ] {
        let err = ICaloFlowConfig::from_toml(&good.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{err}");
    }
}

#[test]
fn preprocessing_inverts() {
    let c = ICaloFlowConfig::from_toml(&preset_text("icaloflow-small").unwrap()).unwrap();
    for x in [0.0, 1e-6, 0.3, 0.999, 1.0] {
        assert!((c.inverse_logit(c.logit(x)) - x).abs() < 1e-6, "{x}");
    }
    // Layer energies above the normalisation are clamped, not NaN.
    assert!(c.energy_feature(1e5).is_finite());
    // A noisy layer is normalised before the logit: the inverse sums to one.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut out = vec![];
    push_layer(&c, &[1.0, 0.0, 3.0, 0.0], &mut rng, &mut out);
    let s: f64 = out.iter().map(|&v| c.inverse_logit(v)).sum();
    assert!((s - 1.0).abs() < 1e-5);
    assert!(out[2] > out[0] && out[1] < -5.0);
}

fn tiny(role: &str) -> String {
    let base = preset_text(if role == "teacher" {
        "icaloflow-small"
    } else {
        "icaloflow-small-student"
    })
    .unwrap();
    base.replace("hidden = 64", "hidden = 16")
        .replace("blocks = 4", "blocks = 2")
        .replace("epochs = 40", "epochs = 2")
        .replace("epochs = 20", "epochs = 2")
        .replace("epochs = 2\n", "epochs = 1\n")
        .replace("batch_size = 512", "batch_size = 256")
}

#[test]
fn trains_generates_deterministically_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.h5");
    let sim = Simulator::new(
        SimParams::new(Tune::Geant4),
        vec![Mesh::of(DatasetKind::Ds2).unwrap()],
    );
    let e = log_uniform_energies(150, 1e3, 1e5, 1);
    let vox = sim.simulate(&e, 2, 0, &|_| {});
    caloforge_core::io::write_showers(&data, &e, &vox[0], 6480).unwrap();
    let opts = TrainOptions {
        data: data.clone(),
        out: dir.path().join("run"),
        seed: 3,
        ..Default::default()
    };
    let out = ICaloFlow::train(&tiny("teacher"), &opts, &NoProgress).unwrap();
    assert!(out.complete && !out.interrupted);
    let m = ICaloFlow::load(&opts.out).unwrap();
    assert_eq!(m.card.flows.len(), 3);
    assert_eq!(m.card.n_train + m.card.n_validation, 150);
    for f in m.card.flows.values() {
        assert!(f.report.best_val_loss.is_finite());
    }
    let energies = [2e3, 5e4, 3e5];
    let a = m.sample_showers(&energies, 9, 0, 2, &NoProgress).unwrap();
    assert_eq!(a.len(), 3 * 6480);
    assert!(a.iter().all(|&v| v == 0.0 || v >= 1.5e-2));
    // Same seed: same showers, whatever the batch size; reloaded model: same showers.
    let b = m.sample_showers(&energies, 9, 0, 3, &NoProgress).unwrap();
    assert_eq!(a, b);
    let loaded = ICaloFlow::load(&opts.out).unwrap();
    assert_eq!(
        loaded
            .sample_showers(&energies, 9, 0, 1, &NoProgress)
            .unwrap(),
        a
    );
    assert_ne!(
        m.sample_showers(&energies, 10, 0, 2, &NoProgress).unwrap(),
        a
    );
    assert!(m.sample_showers(&[-1.0], 1, 0, 1, &NoProgress).is_err());

    // Likelihood: one number per shower, the same whatever the batch, over 45 × (144 + 1)
    // dimensions.
    assert_eq!(m.density_space().unwrap().dims, 45 * 145);
    let lo = crate::LikelihoodOptions::default();
    let real = &vox[0][..6 * 6480];
    let la = m
        .log_likelihood(&e[..6], real, 4, 0, 2, &lo, &NoProgress)
        .unwrap();
    let lb = m
        .log_likelihood(&e[..6], real, 4, 0, 6, &lo, &NoProgress)
        .unwrap();
    assert_eq!(la, lb);
    assert!(la.iter().all(|v| v.is_finite()), "{la:?}");
    assert!(m
        .log_likelihood(&e[..6], &real[1..], 4, 0, 6, &lo, &NoProgress)
        .is_err());

    // A student distilled from it.
    let sopts = TrainOptions {
        out: dir.path().join("student"),
        teacher: Some(opts.out.clone()),
        ..opts.clone()
    };
    ICaloFlow::train(&tiny("student"), &sopts, &NoProgress).unwrap();
    let s = ICaloFlow::load(&sopts.out).unwrap();
    assert_eq!(s.cfg.role, Role::Student);
    let g = s.sample_showers(&energies, 9, 0, 3, &NoProgress).unwrap();
    assert_eq!(g.len(), 3 * 6480);
    // The student's density (its IAFs inverted one feature at a time) is finite.
    let ls = s
        .log_likelihood(&e[..2], &vox[0][..2 * 6480], 4, 0, 2, &lo, &NoProgress)
        .unwrap();
    assert!(ls.iter().all(|v| v.is_finite()), "{ls:?}");
    // A student without a teacher is refused.
    let err = ICaloFlow::train(
        &tiny("student"),
        &TrainOptions {
            teacher: None,
            ..sopts
        },
        &NoProgress,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("--teacher"), "{err}");
    // A teacher with only Flow-2 trained teaches a Flow-2 student; a Flow-3 student is refused.
    let t2 = TrainOptions {
        out: dir.path().join("teacher2"),
        parts: vec![2],
        ..opts.clone()
    };
    ICaloFlow::train(&tiny("teacher"), &t2, &NoProgress).unwrap();
    let s2 = TrainOptions {
        out: dir.path().join("student2"),
        teacher: Some(t2.out.clone()),
        parts: vec![2],
        ..opts.clone()
    };
    let o = ICaloFlow::train(&tiny("student"), &s2, &NoProgress).unwrap();
    assert!(!o.complete);
    let err = ICaloFlow::train(
        &tiny("student"),
        &TrainOptions {
            out: dir.path().join("student3"),
            parts: vec![3],
            ..s2
        },
        &NoProgress,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("flow3 was not trained"), "{err}");
}

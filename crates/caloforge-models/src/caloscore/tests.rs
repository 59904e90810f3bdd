use super::*;
use crate::{preset_text, read_showers, NoProgress};
use caloforge_sim::{log_uniform_energies, Mesh, SimParams, Simulator, Tune};
use rand::{Rng, SeedableRng};

#[test]
fn presets_parse() {
    for p in PRESETS {
        CaloScoreConfig::from_toml(&preset_text(p.name).unwrap()).unwrap();
    }
    let c = CaloScoreConfig::from_toml(&preset_text("caloscore-ds2").unwrap()).unwrap();
    assert_eq!(c.sde, Sde::vp());
    assert_eq!(
        (c.channels, c.pool, c.embed),
        ([32, 64, 128], [3, 2, 2], 128)
    );
    assert_eq!((c.pc.steps, c.pc.snr, c.batch_size), (200, 0.2, 256));
    assert_eq!(c.net().padded(), [45, 16, 12]);
    let ve = CaloScoreConfig::from_toml(&preset_text("caloscore-ds2-ve").unwrap()).unwrap();
    assert_eq!(ve.sde, Sde::ve());
    let sub = CaloScoreConfig::from_toml(&preset_text("caloscore-ds2-subvp").unwrap()).unwrap();
    assert_eq!(sub.sde, Sde::sub_vp());
    let d3 = CaloScoreConfig::from_toml(&preset_text("caloscore-ds3").unwrap()).unwrap();
    assert_eq!(
        (d3.shape(), d3.net().padded()),
        ([45, 50, 18], [45, 52, 20])
    );
    let bad = preset_text("caloscore-tiny")
        .unwrap()
        .replace("dataset = 2", "dataset = \"1-photons\"");
    let e = CaloScoreConfig::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("datasets 2 and 3"), "{e}");
}

#[test]
fn log_jacobian_matches_finite_differences() {
    let tr = CaloScoreConfig::from_toml(&preset_text("caloscore-tiny").unwrap())
        .unwrap()
        .transform;
    for (v, e) in [(3.0, 1e4), (250.0, 5e4), (0.02, 2e3)] {
        let h = v * 1e-4;
        let d = (tr.forward(v + h, e) as f64 - tr.forward(v - h, e) as f64) / (2.0 * h);
        assert!(
            (d.ln() - tr.log_jacobian(v, e)).abs() < 2e-2,
            "v {v}: {} vs {}",
            d.ln(),
            tr.log_jacobian(v, e)
        );
    }
}

/// Trains the tiny preset on 12 simulated dataset-2 showers.
fn trained() -> (tempfile::TempDir, CaloScore) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.h5");
    let e = log_uniform_energies(12, 1e3, 1e5, 1);
    let sim = Simulator::new(
        SimParams::new(Tune::Geant4),
        vec![Mesh::of(DatasetKind::Ds2).unwrap()],
    );
    let vox = sim.simulate(&e, 2, 0, &|_| {}).swap_remove(0);
    caloforge_core::io::write_showers(&data, &e, &vox, 6480).unwrap();
    let opts = TrainOptions {
        data,
        out: dir.path().join("run"),
        seed: 3,
        ..Default::default()
    };
    let m = CaloScore::train(&preset_text("caloscore-tiny").unwrap(), &opts, &NoProgress).unwrap();
    (dir, m)
}

#[test]
fn trains_samples_deterministically_and_round_trips() {
    let (dir, m) = trained();
    assert!(m.card.epochs >= 1 && m.card.val_loss.iter().all(|v| v.is_finite()));
    assert_eq!(m.card.model, "caloscore");
    // The Fourier frequencies are fixed: training left them as initialised from the seed.
    let init = CaloScore::untrained(&m.cfg, 3).unwrap();
    let w = |m: &CaloScore| -> Vec<f32> { m.net.fourier.val().into_data().iter::<f32>().collect() };
    assert_eq!(w(&m), w(&init));
    let nv = 6480;
    let energies = [2e3, 4e4];
    let cut = m.cfg.transform.cut_mev as f32;
    for sampler in [ScoreSampler::Pc, ScoreSampler::Heun] {
        let pair = m
            .sample_with(&energies, 5, 0, 2, sampler, None, &NoProgress)
            .unwrap();
        assert_eq!(pair.len(), 2 * nv);
        let bad: Vec<&f32> = pair
            .iter()
            .filter(|&&v| !(v.is_finite() && (v == 0.0 || v >= cut)))
            .take(5)
            .collect();
        assert!(bad.is_empty(), "{sampler:?}: {bad:?}");
        // Shower k depends on (seed, k) only.
        let second = m
            .sample_with(&energies[1..], 5, 1, 1, sampler, None, &NoProgress)
            .unwrap();
        assert_eq!(&pair[nv..], &second[..], "{sampler:?}");
        let loaded = CaloScore::load(&dir.path().join("run")).unwrap();
        assert_eq!(
            loaded
                .sample_with(&energies, 5, 0, 2, sampler, None, &NoProgress)
                .unwrap(),
            pair
        );
    }
    assert!(m
        .sample_with(&energies, 5, 0, 2, ScoreSampler::Pc, Some(1), &NoProgress)
        .is_err());
}

#[test]
fn likelihood_is_finite_and_independent_of_the_batch() {
    let (_dir, m) = trained();
    let e = log_uniform_energies(3, 1e3, 1e5, 9);
    let sim = Simulator::new(
        SimParams::new(Tune::Geant4),
        vec![Mesh::of(DatasetKind::Ds2).unwrap()],
    );
    let vox = sim.simulate(&e, 7, 0, &|_| {}).swap_remove(0);
    let opts = LikelihoodOptions {
        rtol: 1e-3,
        atol: 1e-3,
        ..Default::default()
    };
    let all = m
        .log_likelihood(&e, &vox, 4, 0, 3, &opts, &NoProgress)
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|v| v.is_finite()), "{all:?}");
    let last = m
        .log_likelihood(&e[2..], &vox[2 * 6480..], 4, 2, 1, &opts, &NoProgress)
        .unwrap();
    assert!(
        (last[0] - all[2]).abs() < 1e-9 * all[2].abs().max(1.0),
        "{last:?} {all:?}"
    );
    // The wrong number of voxels is an error, not a panic.
    assert!(m
        .log_likelihood(&e, &vox[..100], 4, 0, 3, &opts, &NoProgress)
        .is_err());
}

#[test]
fn models_without_a_density_refuse_likelihoods() {
    let kind = crate::registry::kind("calodiffusion").unwrap();
    let m = kind
        .untrained(&preset_text("calodiffusion-tiny").unwrap(), 1)
        .unwrap();
    let e = m
        .log_likelihood(
            &[1e4],
            &vec![0.0; 6480],
            1,
            0,
            1,
            &LikelihoodOptions::default(),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not compute likelihoods"), "{e}");
}

/// Diagnostic (run by hand): CALOSCORE_DIAG=RUN,SHOWERS.h5 prints the denoising loss of the
/// burn network and of its fast twin at several t on the first showers of the file.
#[test]
#[ignore]
fn diagnose_denoising_by_t() {
    let Ok(spec) = std::env::var("CALOSCORE_DIAG") else {
        return;
    };
    let (run, file) = spec.split_once(',').unwrap();
    let m = CaloScore::load(std::path::Path::new(run)).unwrap();
    let (e_inc, vox) = read_showers(std::path::Path::new(file), DatasetKind::Ds2, Some(8)).unwrap();
    let tr = m.cfg.transform;
    let x: Vec<f32> = vox
        .chunks(6480)
        .zip(&e_inc)
        .flat_map(|(r, &e)| r.iter().map(move |&u| tr.forward(u as f64, e)))
        .collect();
    let e: Vec<f32> = e_inc.iter().map(|&v| tr.energy(v)).collect();
    let dev = m.device.clone().inner();
    let net = m.net.valid();
    let fast = net.twin();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for t in [1e-4, 1e-3, 1e-2, 0.1, 0.3, 0.6, 0.9] {
        let tt = vec![t; 8];
        let z: Vec<f32> = (0..x.len()).map(|_| rng.sample(StandardNormal)).collect();
        let lb = CaloScore::loss(&net, &m.cfg.sde, &x, &e, &tt, &z, &dev)
            .into_data()
            .iter::<f64>()
            .next()
            .unwrap();
        let (mm, s) = m.cfg.sde.marginal(t);
        let xt: Vec<f32> = x
            .iter()
            .zip(&z)
            .map(|(&a, &b)| (mm * a as f64 + s * b as f64) as f32)
            .collect();
        let o = fast.forward(&xt, &vec![t as f32; 8], &e);
        let lf = o
            .iter()
            .zip(&z)
            .map(|(a, b)| ((a + b) as f64).powi(2))
            .sum::<f64>()
            / o.len() as f64;
        eprintln!("t {t:e}: burn loss {lb:.4}, fast loss {lf:.4}");
    }
}

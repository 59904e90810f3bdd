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
    // Dataset 1: the reference's config_dataset1.json on the normalised 369-vector.
    let d1 = CaloScoreConfig::from_toml(&preset_text("caloscore-ds1-photons").unwrap()).unwrap();
    assert_eq!(
        (d1.channels, d1.pool, d1.kernel, d1.mix_kernel, d1.embed),
        ([80, 320, 1280], [4, 1, 1], [5, 1, 1], [5, 1, 1], 256)
    );
    assert_eq!(
        (d1.pc.steps, d1.batch_size, d1.lr, d1.epochs),
        (100, 1024, 1e-4, 10500)
    );
    assert_eq!((d1.transform.max_dep, d1.transform.cut_mev), (3.1, 1e-4));
    assert_eq!((d1.dims(), d1.net().padded()), (369, [384, 1, 1]));
    // normed only with dataset 1, dataset 1 only normed; even kernels refused.
    let bad = preset_text("caloscore-tiny")
        .unwrap()
        .replace("dataset = 2", "dataset = \"1-photons\"");
    let e = CaloScoreConfig::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("normed"), "{e}");
    let bad = "normed = true\n".to_string() + &preset_text("caloscore-tiny").unwrap();
    assert!(CaloScoreConfig::from_toml(&bad).is_err());
    let bad = preset_text("caloscore-tiny-ds1-photons")
        .unwrap()
        .replace("kernel = [5, 1, 1]", "kernel = [4, 1, 1]");
    assert!(CaloScoreConfig::from_toml(&bad).is_err());
    // A misspelt key in a sub-table is an error too.
    let bad = preset_text("caloscore-tiny")
        .unwrap()
        .replace("cut_mev", "cut_mevv");
    let e = CaloScoreConfig::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("cut_mevv"), "{e}");
}

/// Dataset 1's normalised vector: fractions of the shower and its total, through the logit;
/// decoding gives the shower back (above the cut), and its total even when the generated
/// fractions do not sum to 1.
#[test]
fn dataset_1_vector_encodes_and_decodes() {
    let cfg =
        CaloScoreConfig::from_toml(&preset_text("caloscore-tiny-ds1-photons").unwrap()).unwrap();
    let e = 65536.0;
    let row: Vec<f32> = (0..368)
        .map(|i| {
            if i % 3 == 0 {
                0.0
            } else {
                (i % 17) as f32 * 40.0 + 0.5
            }
        })
        .collect();
    let sum: f64 = row.iter().map(|&v| v as f64).sum();
    let mut x = Vec::new();
    cfg.encode(&row, e, &mut x);
    assert_eq!(x.len(), 369);
    let sig = |u: f32| 1.0 / (1.0 + (-(u as f64)).exp());
    assert!((sig(x[368]) - sum / (3.1 * e)).abs() < 1e-6);
    assert!((sig(x[1]) - row[1] as f64 / sum).abs() < 1e-6);
    let mut back = Vec::new();
    cfg.decode(&x, e, &mut back);
    for (a, b) in back.iter().zip(&row) {
        assert!((a - b).abs() <= 1e-3 * b.max(1.0), "{a} vs {b}");
    }
    // Fractions scaled by 2 (not summing to 1): renormalised, the total kept.
    let mut x2 = x.clone();
    for u in &mut x2[..368] {
        *u += std::f32::consts::LN_2;
    }
    let mut back2 = Vec::new();
    cfg.decode(&x2, e, &mut back2);
    let s2: f64 = back2.iter().map(|&v| v as f64).sum();
    assert!((s2 - sum).abs() < 1e-3 * sum, "{s2} vs {sum}");
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

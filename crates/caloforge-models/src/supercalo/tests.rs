use super::*;
use crate::NoProgress;
use rand::SeedableRng;

fn tiny() -> SuperCaloConfig {
    SuperCaloConfig::from_toml(&crate::preset_text("supercalo-tiny").unwrap()).unwrap()
}

/// A dataset-2 shower with a distinct energy in every voxel: voxel i holds (i % 97 + 1) · 0.1
/// MeV, layer 7 is empty.
fn shower() -> Vec<f32> {
    (0..6480)
        .map(|i| {
            if i / 144 == 7 {
                0.0
            } else {
                ((i % 97) + 1) as f32 * 0.1
            }
        })
        .collect()
}

#[test]
fn flow_dimensions_are_the_papers() {
    let cfg = tiny();
    let a = cfg.grid().unwrap();
    assert_eq!(SuperCaloConfig::dims(&a, 1), (45, 1));
    assert_eq!(SuperCaloConfig::dims(&a, 2), (648, 10));
    assert_eq!(SuperCaloConfig::dims(&a, 3), (10, 31));
    let b = CoarseGrid::regular(45, 16, 9, Grouping::B).unwrap();
    assert_eq!(SuperCaloConfig::dims(&b, 2), (540, 46));
    assert_eq!(SuperCaloConfig::dims(&b, 3), (12, 57));
    for p in PRESETS {
        let c = SuperCaloConfig::from_toml(p.text).unwrap();
        c.grid().unwrap();
    }
}

#[test]
fn upsampler_context_matches_a_hand_computed_shower() {
    let cfg = tiny();
    let grid = cfg.grid().unwrap();
    let fine = shower();
    let s = Showers::new(vec![2e4], fine.clone(), &grid);
    // Coarse voxel at z-group 1 (layers 5..10, layer 7 empty), radial bin 0, angular group 7.
    let cv = grid.index(1, 0, 7);
    let mut ctx = Vec::new();
    cfg.push_upsampler_context(&grid, 2e4, &s.layer_e, 12.5, &s.coarse, cv, &mut ctx);
    assert_eq!(ctx.len(), 31);
    let logit = |x: f64| {
        let y = 1e-6 + (1.0 - 2e-6) * x;
        (y / (1.0 - y)).ln() as f32
    };
    let close = |a: f32, b: f32, what: &str| {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        )
    };
    close(ctx[0], (2e4f64.log10() - 4.5) as f32, "E_inc");
    for (j, l) in (5..10).enumerate() {
        let e: f64 = fine[l * 144..(l + 1) * 144].iter().map(|&v| v as f64).sum();
        close(ctx[1 + j], logit(e / 6.5e4), &format!("layer {l}"));
    }
    assert_eq!(ctx[3], logit(0.0), "the empty layer 7");
    close(ctx[6], logit(12.5 / 28048.0), "own energy");
    // Neighbour energies by hand: sum of layers 5z..5z+5, angular bins 2a, 2a+1, radial bin r.
    let coarse_at = |z: usize, r: usize, a: usize| -> f64 {
        let mut e = 0.0;
        for l in 5 * z..5 * z + 5 {
            for al in 2 * a..2 * a + 2 {
                e += fine[(l * 16 + al) * 9 + r] as f64;
            }
        }
        e
    };
    let expect = [
        0.0,                // r − 1: beyond the mesh
        coarse_at(1, 1, 7), // r + 1
        coarse_at(0, 0, 7), // z − 1
        coarse_at(2, 0, 7), // z + 1
        coarse_at(1, 0, 6), // α − 1
        coarse_at(1, 0, 0), // α + 1 (cyclic)
    ];
    for (j, e) in expect.iter().enumerate() {
        close(ctx[7 + j], logit(e / 28048.0), &format!("neighbour {j}"));
    }
    let onehot_r: Vec<f32> = (0..9).map(|r| (r == 0) as u8 as f32).collect();
    let onehot_z: Vec<f32> = (0..9).map(|z| (z == 1) as u8 as f32).collect();
    assert_eq!(&ctx[13..22], &onehot_r[..]);
    assert_eq!(&ctx[22..31], &onehot_z[..]);
}

#[test]
fn training_targets_follow_the_reference_preprocessing() {
    let cfg = tiny();
    let grid = cfg.grid().unwrap();
    let fine = shower();
    let s = Showers::new(vec![2e4, 5e4], [fine.clone(), fine.clone()].concat(), &grid);
    let idx = [0usize, 1];
    let src = |part| Source {
        cfg: &cfg,
        grid: &grid,
        s: &s,
        idx: &idx,
        part,
        noise_seed: 9,
    };
    // Flow-2: log10(c / 28048) + 6 with noise below 5 keV, the same in every epoch.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (x, c) = src(2).batch(&[1], &mut rng);
    let (x2, _) = src(2).batch(&[1], &mut ChaCha8Rng::seed_from_u64(2));
    assert_eq!(x, x2, "Flow-2 noise is drawn once per shower");
    assert_eq!((x.len(), c.len()), (648, 10));
    for (cv, &v) in x.iter().enumerate() {
        let e = 28048.0 * 10f64.powf(v as f64 - 6.0) - s.coarse[648 + cv] as f64;
        assert!((-1e-3..5e-3 + 1e-3).contains(&e), "coarse {cv}: noise {e}");
    }
    let group0: f64 = s.coarse[648..648 + 72].iter().map(|&v| v as f64).sum();
    assert!((c[1] as f64 - group0.log10() / 4.0).abs() < 1e-3);
    // Upsampler: logit of fractions of the noisy coarse energy, fresh noise per call.
    let cv = grid.index(0, 2, 3);
    let (x, c) = src(3).batch(&[648 + cv], &mut rng);
    assert_eq!((x.len(), c.len()), (10, 31));
    let frac: f64 = x.iter().map(|&v| cfg.inverse_logit(v)).sum();
    assert!((frac - 1.0).abs() < 1e-4, "fractions sum to {frac}");
    for (k, &i) in grid.fine_indices(cv).iter().enumerate() {
        let share = fine[i as usize] as f64 / s.coarse[648 + cv] as f64;
        assert!((cfg.inverse_logit(x[k]) - share).abs() < 1e-4);
    }
}

#[test]
fn upsampling_keeps_every_coarse_energy() {
    let cfg = tiny();
    let model = SuperCalo::untrained(&cfg, 3).unwrap();
    let grid = &model.grid;
    let fine = shower();
    let out = model
        .upsample_showers(&[2e4], &fine, 6480, 1, 0, 1, &NoProgress)
        .unwrap();
    let (mut cin, mut cout) = (vec![0.0; 648], vec![0.0; 648]);
    grid.coarse_grain(&fine, &mut cin);
    grid.coarse_grain(&out, &mut cout);
    for cv in 0..648 {
        // The coarse energy plus its noise (< 5 keV), less fine voxels cut at 15 keV.
        let d = cout[cv] as f64 - cin[cv] as f64;
        assert!(
            d < 5e-3 + 1e-4 && d > -10.0 * 1.5e-2 - 1e-4,
            "coarse voxel {cv}: {} -> {}",
            cin[cv],
            cout[cv]
        );
    }
    // From the coarse mesh: the same coarse energies, layer energies from Flow-1.
    let out2 = model
        .upsample_showers(&[2e4], &cin, 648, 1, 0, 1, &NoProgress)
        .unwrap();
    grid.coarse_grain(&out2, &mut cout);
    for cv in 0..648 {
        let d = cout[cv] as f64 - cin[cv] as f64;
        assert!(d < 5e-3 + 1e-4 && d > -0.15 - 1e-4, "coarse voxel {cv}");
    }
    let e = model
        .upsample_showers(&[2e4], &cin[..100], 100, 1, 0, 1, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("100 voxels") && e.contains("648"), "{e}");
    let mut bad = cin.clone();
    bad[300] = f32::NAN;
    let e = model
        .upsample_showers(&[2e4], &bad, 648, 1, 0, 1, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite and >= 0"), "{e}");
}

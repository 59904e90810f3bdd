use super::*;
use caloforge_nn::schedule::LrSchedule;

#[test]
fn presets_parse() {
    for p in PRESETS {
        let c = AllShowersConfig::from_toml(p.text).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(c.layers(), 78);
    }
    let bad = PRESETS[2].text.replace("particles = 5", "particles = 4");
    let e = AllShowersConfig::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("particles"), "{e}");
}

/// Flow matching with the reference's path, loss and Heun sampling learns a 2-D target: two
/// Gaussian blobs at (±2, 0) with σ = 0.3, through PointCountFM's network.
#[test]
fn flow_matching_recovers_a_toy_2d_target() {
    struct Toy<'a> {
        x: Vec<f32>,
        n_train: usize,
        dev: &'a Device,
    }
    impl Toy<'_> {
        fn loss_at(
            &self,
            net: &CountNet,
            idx: &[usize],
            t: &[f32],
            z: &[f32],
            dev: &Device,
        ) -> Tensor<1> {
            let mut input = Vec::new();
            let mut u = Vec::new();
            for (k, &i) in idx.iter().enumerate() {
                time_features(t[k], 3, &mut input);
                for j in 0..2 {
                    let (x, zz) = (self.x[2 * i + j], z[2 * k + j]);
                    input.push(interpolate(x, zz, t[k]));
                    u.push(target(x, zz));
                }
                input.push(0.0);
            }
            let b = idx.len();
            let v = net.forward(Tensor::from_data(TensorData::new(input, [b, 9]), dev));
            (v - Tensor::<2>::from_data(TensorData::new(u, [b, 2]), dev))
                .powi_scalar(2)
                .mean()
        }
    }
    impl Task<CountNet> for Toy<'_> {
        fn n_train(&self) -> usize {
            self.n_train
        }
        fn loss(&mut self, net: &CountNet, batch: &[usize], rng: &mut ChaCha8Rng) -> Tensor<1> {
            let t: Vec<f32> = batch.iter().map(|_| rng.random::<f32>()).collect();
            let z: Vec<f32> = (0..2 * batch.len())
                .map(|_| rng.sample(StandardNormal))
                .collect();
            self.loss_at(net, batch, &t, &z, self.dev)
        }
        fn validate(&mut self, _: &CountNet) -> f64 {
            0.0
        }
    }
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let n = 4096;
    let x: Vec<f32> = (0..n)
        .flat_map(|_| {
            let side = if r.random::<bool>() { 2.0 } else { -2.0 };
            let a: f32 = r.sample(StandardNormal);
            let b: f32 = r.sample(StandardNormal);
            [side + 0.3 * a, 0.3 * b]
        })
        .collect();
    let dev = compute_device(Precision::F32, 3);
    let dims = CountNetDims {
        layers: 2,
        condition: 1,
        frequencies: 3,
        hidden: vec![64, 64],
    };
    let net = dims.init(&dev);
    let mut task = Toy {
        x,
        n_train: n,
        dev: &dev,
    };
    let settings = TrainSettings {
        batch_size: 256,
        epochs: 40,
        schedule: LrSchedule::OneCycle {
            max_lr: 3e-3,
            total_steps: 16 * 40,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        },
        ..Default::default()
    };
    let fitted =
        caloforge_nn::train::fit(net, &mut task, &settings, &Default::default(), &mut |_| {})
            .unwrap();
    let fast = fitted.last.twin();
    let m = 2000;
    let mut z: Vec<f32> = (0..2 * m).map(|_| r.sample(StandardNormal)).collect();
    let mut input = Vec::new();
    Solver::Heun.integrate(&mut z, 1.0, 0.0, 50, |t, s, out| {
        input.clear();
        for j in 0..m {
            time_features(t, 3, &mut input);
            input.extend_from_slice(&s[2 * j..2 * j + 2]);
            input.push(0.0);
        }
        out.copy_from_slice(&fast.forward(&input));
    });
    let right = z.chunks(2).filter(|p| p[0] > 0.0).count() as f64 / m as f64;
    let mean_abs = z.chunks(2).map(|p| p[0].abs() as f64).sum::<f64>() / m as f64;
    let sd_y = (z.chunks(2).map(|p| (p[1] as f64).powi(2)).sum::<f64>() / m as f64).sqrt();
    assert!((right - 0.5).abs() < 0.06, "fraction at +2: {right}");
    assert!((mean_abs - 2.0).abs() < 0.2, "mean |x|: {mean_abs}");
    assert!((sd_y - 0.3).abs() < 0.12, "σ_y: {sd_y}");
    // Most samples lie near a blob.
    let near = z
        .chunks(2)
        .filter(|p| (p[0].abs() - 2.0).abs() < 0.9)
        .count() as f64
        / m as f64;
    assert!(near > 0.9, "near a blob: {near}");
}

#[test]
fn ot_noise_is_matched_within_layers_and_deterministic() {
    let s = Shower {
        x: (0..30).map(|i| (i as f32 * 0.37).sin()).collect(),
        layer: vec![0, 0, 0, 1, 2, 2, 2, 2, 5, 5],
        counts: vec![],
        label: 0,
        e_inc: 1.0,
        direction: [0.0, 0.0, 1.0],
    };
    let a = ot_noise(std::slice::from_ref(&s), 4, &crate::NoProgress);
    let b = ot_noise(std::slice::from_ref(&s), 4, &crate::NoProgress);
    assert_eq!(a, b);
    // Within each layer the matched noise is a permutation of the drawn noise with a total
    // Euclidean cost no larger than the unmatched order's.
    let mut rng = caloforge_core::rng::shower_rng(4 ^ 0x07_0a11, 0);
    let z: Vec<f32> = (0..30).map(|_| rng.sample(StandardNormal)).collect();
    let cost = |n: &[f32], r: std::ops::Range<usize>| -> f64 {
        r.map(|i| {
            (0..3)
                .map(|c| ((s.x[3 * i + c] - n[3 * i + c]) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum()
    };
    for r in [0..3, 3..4, 4..8, 8..10] {
        let mut got: Vec<f32> = a[0][3 * r.start..3 * r.end].to_vec();
        let mut want: Vec<f32> = z[3 * r.start..3 * r.end].to_vec();
        got.sort_by(f32::total_cmp);
        want.sort_by(f32::total_cmp);
        assert_eq!(got, want);
        assert!(cost(&a[0], r.clone()) <= cost(&z, r.clone()) + 1e-9);
    }
}

/// Collects the warnings.
#[derive(Default)]
struct Messages(std::sync::Mutex<Vec<String>>);

impl Progress for Messages {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn set(&self, _: &str, _: u64, _: Option<String>) {}
    fn finish(&self, _: &str) {}
    fn warn(&self, msg: String) {
        self.0.lock().unwrap().push(msg);
    }
}

/// A tail of points many decades below the median energy (cells without a readout threshold)
/// is reported when the file is prepared, and `min_point_energy` drops it.
#[test]
fn sub_threshold_points_are_reported_and_can_be_dropped() {
    use caloforge_core::showerdata::{PointShower, PointWriter};
    // 8 showers of 100 points in 2 layers, energies log-normal around 10 MeV; with `tail`,
    // every 50th point carries 1e-12 GeV.
    let write = |path: &Path, tail: bool| {
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|s| {
                (0..100)
                    .flat_map(|i| {
                        let e = if tail && i % 50 == 7 {
                            1e-12
                        } else {
                            0.01 * ((i * 7 + s) as f32 * 0.61).sin().exp()
                        };
                        [i as f32 * 0.1, -(i as f32) * 0.2, (i % 2) as f32, e]
                    })
                    .collect()
            })
            .collect();
        let mut w = PointWriter::create(path, 4, rows.len()).unwrap();
        let showers: Vec<PointShower> = rows
            .iter()
            .enumerate()
            .map(|(i, p)| PointShower {
                energy: 10.0 + i as f64,
                direction: [0.0, 0.0, 1.0],
                pdg: 22,
                id: i as i64,
                points: p,
            })
            .collect();
        w.append(&showers).unwrap();
        w.finish().unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AllShowersConfig::from_toml(PRESETS[2].text).unwrap();
    cfg.validation = 2;
    cfg.transformer.layers = 2;
    cfg.particles = vec![22];
    cfg.transformer.particles = 1;
    let run = |tail: bool, cfg: &AllShowersConfig| {
        let data = dir.path().join(format!("p{tail}.h5"));
        write(&data, tail);
        let opts = TrainOptions {
            data,
            seed: 3,
            ..Default::default()
        };
        let m = Messages::default();
        let p = prepare(cfg, &opts, &m).unwrap();
        let points: usize = p.showers.iter().map(|s| s.layer.len()).sum();
        (points, p.prep.log_e, m.0.into_inner().unwrap())
    };
    let (n_clean, log_e_clean, msgs) = run(false, &cfg);
    assert_eq!(n_clean, 800);
    assert!(msgs.is_empty(), "{msgs:?}");
    let (n_tail, log_e_tail, msgs) = run(true, &cfg);
    assert_eq!(n_tail, 800);
    assert!(
        log_e_tail.1 > 2.0 * log_e_clean.1,
        "{log_e_tail:?} {log_e_clean:?}"
    );
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].contains("2.00 % of the points") && msgs[0].contains("min_point_energy"),
        "{}",
        msgs[0]
    );
    cfg.min_point_energy = 1e-6;
    let (n_cut, log_e_cut, msgs) = run(true, &cfg);
    assert_eq!(n_cut, 784);
    assert!(msgs.is_empty(), "{msgs:?}");
    assert!((log_e_cut.1 - log_e_clean.1).abs() < 0.05 * log_e_clean.1);
    cfg.min_point_energy = -1.0;
    let text = toml::to_string(&cfg).unwrap();
    let e = AllShowersConfig::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("min_point_energy"), "{e}");
}

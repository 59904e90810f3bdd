use super::fast::FastFlow;
use super::*;
use burn::tensor::TensorData;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

fn cfg(kind: FlowKind, d: usize, c: usize) -> FlowConfig {
    FlowConfig {
        features: d,
        context: c,
        hidden: 24,
        n_hidden: 1,
        blocks: 4,
        bins: 6,
        tail_bound: 3.0,
        kind,
        permutation_seed: 5,
    }
}

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| scale * r.sample::<f32, _>(StandardNormal))
        .collect()
}

fn t2(v: &[f32], rows: usize, cols: usize, dev: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), dev)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Draws the MADEs' output biases so the random flow is far from the identity (±0.4: the
/// widths and heights enter the softmax unscaled, as in nflows' transforms.made MADE; larger
/// values make bins of ~1e-6 that float32 cannot invert to 1e-4).
fn perturbed(mut flow: Flow, dev: &Device) -> Flow {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for m in flow.net.made.iter_mut() {
        let b = m.output.linear.bias.as_mut().unwrap();
        let n = b.val().dims()[0];
        made::set_param(
            b,
            (0..n).map(|_| r.random_range(-0.4f32..0.4)).collect(),
            dev,
        );
    }
    flow
}

#[test]
fn maf_density_pass_and_fast_sampler_invert_each_other() {
    let dev = Device::flex();
    let (n, d, c) = (16, 5, 2);
    let flow = perturbed(Flow::new(cfg(FlowKind::Maf, d, c), &dev), &dev);
    let x = randn(n * d, 1, 1.5);
    let ctx = randn(n * c, 2, 1.0);
    let tr = flow.forward_trace(t2(&x, n, d, &dev), Some(t2(&ctx, n, c, &dev)));
    let z: Vec<f32> = tr.z.clone().into_data().iter::<f32>().collect();
    let fast = FastFlow::from_flow(&flow);
    // The fast density pass agrees with burn.
    let (zf, _) = fast.log_prob(&x, &ctx);
    let lp_burn = vals(flow.log_prob(t2(&x, n, d, &dev), Some(t2(&ctx, n, c, &dev))));
    let (_, lp_fast) = fast.log_prob(&x, &ctx);
    for i in 0..n * d {
        assert!((z[i] - zf[i]).abs() < 1e-4, "{i}: {} vs {}", z[i], zf[i]);
    }
    for i in 0..n {
        assert!(
            (lp_burn[i] - lp_fast[i]).abs() < 1e-3,
            "{} vs {}",
            lp_burn[i],
            lp_fast[i]
        );
    }
    // Sampling (D sequential steps per block) inverts it.
    let (xb, ld) = fast.sample_from_base(&z, &ctx);
    let worst = x
        .iter()
        .zip(&xb)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max |x - f^-1(f(x))| = {worst}");
    let ld_burn = vals(tr.logdet);
    for i in 0..n {
        assert!((ld[i] - ld_burn[i]).abs() < 1e-3);
    }
    // Identical for any batch split.
    let (x1, _) = fast.sample_from_base(&z[..d], &ctx[..c]);
    assert_eq!(&x1[..], &xb[..d]);
}

#[test]
fn iaf_sampling_pass_and_fast_density_invert_each_other() {
    let dev = Device::flex();
    let (n, d, c) = (12, 4, 3);
    let flow = perturbed(Flow::new(cfg(FlowKind::Iaf, d, c), &dev), &dev);
    let z = randn(n * d, 3, 1.0);
    let ctx = randn(n * c, 4, 1.0);
    let tr = flow.inverse_trace(t2(&z, n, d, &dev), Some(t2(&ctx, n, c, &dev)));
    let x: Vec<f32> = tr.x_side[0].clone().into_data().iter::<f32>().collect();
    let fast = FastFlow::from_flow(&flow);
    let (xf, ldf) = fast.sample_from_base(&z, &ctx);
    let ld = vals(tr.logdet);
    for i in 0..n * d {
        assert!((x[i] - xf[i]).abs() < 1e-4);
    }
    for i in 0..n {
        assert!((ld[i] - ldf[i]).abs() < 1e-3);
    }
    let (zb, _) = fast.log_prob(&x, &ctx);
    let worst = z
        .iter()
        .zip(&zb)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max |z - f(f^-1(z))| = {worst}");
}

#[test]
fn log_det_matches_numerical_jacobian() {
    let dev = Device::flex();
    let d = 3;
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        let flow = perturbed(Flow::new(cfg(kind, d, 1), &dev), &dev);
        let fast = FastFlow::from_flow(&flow);
        let ctx = [0.4f32];
        for s in 0..5 {
            let x = randn(d, 10 + s, 1.0);
            let (_, lp) = fast.log_prob(&x, &ctx);
            let (z, _) = fast.log_prob(&x, &ctx);
            let h = 1e-3f32;
            let mut j = nalgebra::DMatrix::<f64>::zeros(d, d);
            for col in 0..d {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[col] += h;
                xm[col] -= h;
                let (zp, _) = fast.log_prob(&xp, &ctx);
                let (zm, _) = fast.log_prob(&xm, &ctx);
                for row in 0..d {
                    j[(row, col)] = (zp[row] as f64 - zm[row] as f64) / (2.0 * h as f64);
                }
            }
            let num = j.determinant().abs().ln();
            let base: f64 = z
                .iter()
                .map(|&v| -0.5 * (v as f64).powi(2) - 0.5 * (2.0 * std::f64::consts::PI).ln())
                .sum();
            let logdet = lp[0] - base;
            assert!(
                (num - logdet).abs() < 2e-2,
                "{kind:?}: numerical {num} vs {logdet}"
            );
        }
    }
}

#[test]
fn permutations_alternate_reverse_and_random() {
    let c = cfg(FlowKind::Maf, 6, 0);
    let p = c.permutations();
    assert_eq!(p.len(), 3);
    assert_eq!(p[0], vec![5, 4, 3, 2, 1, 0]);
    assert_eq!(p[2], p[0]);
    let mut s = p[1].clone();
    s.sort();
    assert_eq!(s, (0..6).collect::<Vec<_>>());
    assert_eq!(c.permutations(), p, "seeded");
}

mod training {
    use super::super::train::*;
    use super::*;
    use crate::device::{cpu_autodiff, Precision};
    use crate::schedule::LrSchedule;

    /// x1 ~ N(0, 1), x2 | x1 ~ N(x1²/2 − 0.5, 0.5²): entropy 0.5 ln(2πe) + 0.5 ln(2πe·0.25).
    fn banana(n: usize, seed: u64) -> FlowData {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let a: f32 = r.sample(StandardNormal);
            let b: f32 = r.sample(StandardNormal);
            x.push(a);
            x.push(a * a / 2.0 - 0.5 + 0.5 * b);
        }
        FlowData {
            x,
            ctx: vec![],
            d: 2,
            c: 0,
        }
    }

    fn small(kind: FlowKind) -> FlowConfig {
        FlowConfig {
            features: 2,
            context: 0,
            hidden: 32,
            n_hidden: 1,
            blocks: 4,
            bins: 8,
            tail_bound: 5.0,
            kind,
            permutation_seed: 1,
        }
    }

    fn settings(epochs: usize, steps_per_epoch: usize, lr: f64) -> TrainSettings {
        TrainSettings {
            batch_size: 256,
            epochs,
            schedule: LrSchedule::OneCycle {
                max_lr: lr,
                total_steps: epochs * steps_per_epoch,
                pct_start: 0.2,
                div_factor: 10.0,
                final_div_factor: 100.0,
                three_phase: false,
                cycle_momentum: true,
                base_momentum: 0.85,
                max_momentum: 0.95,
            },
            eval_every: 0,
            grad_clip: None,
        }
    }

    fn trained_teacher() -> (Flow, FlowData) {
        let dev = cpu_autodiff(Precision::F32, 1);
        let (train, val) = (banana(8192, 1), banana(4096, 2));
        let (flow, report) = train_maf(
            Flow::new(small(FlowKind::Maf), &dev),
            Run {
                train: &train,
                val: &val,
                settings: &settings(40, 32, 1e-2),
                control: &crate::train::Control {
                    seed: 3,
                    ..Default::default()
                },
            },
            &mut |_| {},
        )
        .unwrap();
        assert!(report.best_val_loss.is_finite());
        (flow, val)
    }

    #[test]
    fn maf_learns_a_known_density_and_checkpoints_round_trip() {
        let (flow, _) = trained_teacher();
        let test = banana(20000, 7);
        let nll = mean_nll(&FastFlow::from_flow(&flow), &test);
        let e = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
        let truth = e + 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * 0.25).ln();
        // Sampling error of the true entropy over 20000 points is about 0.006 nats.
        eprintln!("banana NLL {nll:.4}, true {truth:.4}");
        assert!((nll - truth).abs() < 0.05, "NLL {nll} vs true {truth}");

        // Save, load: identical samples.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flow.safetensors");
        save_flow(&flow, &path).unwrap();
        let loaded = load_flow(&path, &flow.cfg, &flow.device()).unwrap();
        let z = randn(2 * 50, 11, 1.0);
        let a = FastFlow::from_flow(&flow).sample_from_base(&z, &[]).0;
        let b = FastFlow::from_flow(&loaded).sample_from_base(&z, &[]).0;
        assert_eq!(a, b);
        // A checkpoint of another shape is refused with a message naming the file.
        let mut other = flow.cfg.clone();
        other.hidden = 16;
        let err = load_flow(&path, &other, &flow.device())
            .unwrap_err()
            .to_string();
        assert!(err.contains("flow.safetensors"), "{err}");
        // Training continues from the given weights: the first validation equals the saved one.
        let val = banana(2048, 3);
        let (_, rep) = train_maf(
            loaded,
            Run {
                train: &banana(1024, 4),
                val: &val,
                settings: &settings(1, 4, 1e-4),
                control: &crate::train::Control {
                    seed: 3,
                    ..Default::default()
                },
            },
            &mut |_| {},
        )
        .unwrap();
        assert!(
            (rep.history[0].val_loss - mean_nll(&FastFlow::from_flow(&flow), &val)).abs() < 1e-9
        );
        assert_eq!(rep.steps, 4);
    }

    #[test]
    fn distilled_student_reproduces_teacher_samples() {
        let (teacher, val) = trained_teacher();
        let dev = teacher.device();
        let mut scfg = teacher.cfg.clone();
        scfg.kind = FlowKind::Iaf;
        let terms = DistillLoss {
            x_pass: true,
            z_pass: true,
            per_made: true,
            beta: 0.5,
        };
        let train = banana(8192, 5);
        let (student, rep) = distill(
            Flow::new(scfg, &dev),
            &teacher,
            terms,
            Run {
                train: &train,
                val: &val,
                settings: &settings(30, 32, 5e-3),
                control: &crate::train::Control {
                    seed: 4,
                    ..Default::default()
                },
            },
            &mut |_| {},
        )
        .unwrap();
        assert!(
            rep.best_val_loss < rep.history[0].val_loss / 20.0,
            "{:?}",
            rep.history
        );
        // Same base points: the student's samples are close to the teacher's.
        let z = randn(2 * 4000, 21, 1.0);
        let xt = FastFlow::from_flow(&teacher).sample_from_base(&z, &[]).0;
        let xs = FastFlow::from_flow(&student).sample_from_base(&z, &[]).0;
        let rms = (xt
            .iter()
            .zip(&xs)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / xt.len() as f64)
            .sqrt();
        eprintln!(
            "student vs teacher rms {rms:.4}, val {:.2e} -> {:.2e}",
            rep.history[0].val_loss, rep.best_val_loss
        );
        assert!(rms < 0.1, "rms difference {rms}");
        // And its samples have the right moments: E[x2] = 0, E[x1²] = 1.
        let m2: f64 = xs.chunks(2).map(|p| p[1] as f64).sum::<f64>() / 4000.0;
        let v1: f64 = xs.chunks(2).map(|p| (p[0] as f64).powi(2)).sum::<f64>() / 4000.0;
        assert!(m2.abs() < 0.06 && (v1 - 1.0).abs() < 0.1, "{m2} {v1}");
    }
}

/// The guided distillation terms against the reference's sum written out by hand: batch 2,
/// 3 features, 3 blocks (2 states between blocks), MADE outputs of 1 × 2 per feature.
#[test]
fn guided_terms_are_the_reference_chi2_sum() {
    let dev = Device::default();
    let t2 = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 3]), &dev);
    let t3 = |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [2, 3, 1]), &dev);
    let zeros2 = || t2(&[0.0; 6]);
    let trace = |s1: &[f32], s2: &[f32], p: [&[f32]; 3]| Trace {
        x_side: vec![zeros2(), t2(s1), t2(s2)],
        params: p.iter().map(|v| t3(v)).collect(),
        z: zeros2(),
        logdet: Tensor::<1>::zeros([2], &dev),
    };
    let a = trace(
        &[1.0, 0.0, 0.0, 0.0, 0.0, 2.0],
        &[0.0; 6],
        [
            &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            &[0.0; 6],
            &[0.0, 0.0, 0.0, 0.0, 0.0, 3.0],
        ],
    );
    let b = trace(&[0.0; 6], &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [&[0.0; 6]; 3]);
    let end_s = t2(&[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let scalar = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
    // chi2 = Σ over features / batch 2: end (0.25)/2, states (1 + 4)/2 and 1/2, MADE (2)/2 and 9/2.
    let end = 0.25 / 2.0;
    let states = 5.0 / 2.0 + 1.0 / 2.0;
    let made = 2.0 / 2.0 + 9.0 / 2.0;
    let with = scalar(train::guided_terms(&a, &b, end_s.clone(), zeros2(), true));
    let without = scalar(train::guided_terms(&a, &b, end_s, zeros2(), false));
    assert!(
        (with - (2.0 * end + 2.0 * states + made)).abs() < 1e-6,
        "{with}"
    );
    assert!(
        (without - (2.0 * end + 2.0 * states)).abs() < 1e-6,
        "{without}"
    );
}

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
        permutation: Default::default(),
        dropout: 0.0,
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

#[test]
fn caloflow_permutation_layouts() {
    // Within groups: even blocks reverse each group, odd ones shuffle inside it, none after the
    // last; groups never mix.
    let c = FlowConfig {
        permutation: PermutationLayout::WithinGroups(vec![3, 1, 4]),
        ..cfg(FlowKind::Maf, 8, 0)
    };
    c.validate().unwrap();
    let p = c.permutations();
    assert_eq!(p.len(), 3);
    assert_eq!(p[0], vec![2, 1, 0, 3, 7, 6, 5, 4]);
    for q in &p {
        let mut g: Vec<usize> = q[..3].to_vec();
        g.sort();
        assert_eq!(g, [0, 1, 2]);
        assert_eq!(q[3], 3);
        let mut g: Vec<usize> = q[4..].to_vec();
        g.sort();
        assert_eq!(g, [4, 5, 6, 7]);
    }
    assert!(FlowConfig {
        permutation: PermutationLayout::WithinGroups(vec![3, 4]),
        ..c.clone()
    }
    .validate()
    .is_err());
    // Random after each block, the last included.
    let r = FlowConfig {
        permutation: PermutationLayout::RandomAfterEach,
        ..cfg(FlowKind::Maf, 6, 0)
    };
    assert_eq!(r.permutations().len(), 4);
    assert_ne!(r.permutations()[3], (0..6).collect::<Vec<_>>());
}

#[test]
fn new_layouts_keep_burn_and_fast_flows_inverse_to_each_other() {
    let dev = Device::flex();
    let (n, d, c) = (10, 5, 2);
    for layout in [
        PermutationLayout::RandomAfterEach,
        PermutationLayout::WithinGroups(vec![2, 3]),
    ] {
        for kind in [FlowKind::Maf, FlowKind::Iaf] {
            let fc = FlowConfig {
                permutation: layout.clone(),
                ..cfg(kind, d, c)
            };
            let flow = perturbed(Flow::new(fc, &dev), &dev);
            let fast = FastFlow::from_flow(&flow);
            let ctx = randn(n * c, 2, 1.0);
            let (x, z) = match kind {
                FlowKind::Maf => {
                    let x = randn(n * d, 1, 1.5);
                    let tr = flow.forward_trace(t2(&x, n, d, &dev), Some(t2(&ctx, n, c, &dev)));
                    (x, tr.z.into_data().iter::<f32>().collect::<Vec<f32>>())
                }
                FlowKind::Iaf => {
                    let z = randn(n * d, 3, 1.0);
                    let tr = flow.inverse_trace(t2(&z, n, d, &dev), Some(t2(&ctx, n, c, &dev)));
                    (tr.x_side[0].clone().into_data().iter::<f32>().collect(), z)
                }
            };
            let (zf, _) = fast.log_prob(&x, &ctx);
            let (xf, _) = fast.sample_from_base(&z, &ctx);
            for i in 0..n * d {
                assert!((z[i] - zf[i]).abs() < 1e-4, "{layout:?} {kind:?} z {i}");
                assert!((x[i] - xf[i]).abs() < 1e-4, "{layout:?} {kind:?} x {i}");
            }
        }
    }
}

#[test]
fn dropout_masks_scale_kept_units_and_depend_on_the_seed_only() {
    let dev = Device::flex();
    let fc = FlowConfig {
        dropout: 0.25,
        n_hidden: 2,
        ..cfg(FlowKind::Maf, 4, 1)
    };
    let flow = perturbed(Flow::new(fc, &dev), &dev);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let m = flow.dropout_masks(500, &mut r);
    assert_eq!((m.len(), m[0].len()), (4, 2));
    let v: Vec<f64> = m.iter().flatten().flat_map(|t| vals(t.clone())).collect();
    assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
    let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
    assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
    let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let m2 = flow.dropout_masks(500, &mut r2);
    assert_eq!(vals(m[3][1].clone()), vals(m2[3][1].clone()));
    // Masks of ones leave the pass unchanged; real masks change it.
    let (n, d) = (6, 4);
    let x = t2(&randn(n * d, 1, 1.0), n, d, &dev);
    let ctx = Some(t2(&randn(n, 2, 1.0), n, 1, &dev));
    let ones: Vec<Vec<Tensor<2>>> = (0..4)
        .map(|_| (0..2).map(|_| Tensor::<2>::ones([n, 24], &dev)).collect())
        .collect();
    let plain = vals(flow.forward_trace(x.clone(), ctx.clone()).z);
    let same = vals(flow.forward_trace_dropout(x.clone(), ctx.clone(), &ones).z);
    assert_eq!(plain, same);
    let keep = flow.dropout_masks(n, &mut r);
    let dropped = vals(flow.forward_trace_dropout(x, ctx, &keep).z);
    assert!(plain
        .iter()
        .zip(&dropped)
        .any(|(a, b)| (a - b).abs() > 1e-4));
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
            permutation: Default::default(),
            dropout: 0.0,
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
            ..Default::default()
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

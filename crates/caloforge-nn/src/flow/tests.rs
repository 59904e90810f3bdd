use super::fast::FastFlow;
use super::*;
use burn::tensor::TensorData;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

fn cfg(kind: FlowKind, d: usize, c: usize) -> FlowConfig {
    FlowConfig { features: d, context: c, hidden: 24, n_hidden: 1, blocks: 4, bins: 6, tail_bound: 3.0, kind, permutation_seed: 5 }
}

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| scale * r.sample::<f32, _>(StandardNormal)).collect()
}

fn t2(v: &[f32], rows: usize, cols: usize, dev: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), dev)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Scales every weight so the random flow is far from the identity.
fn perturbed(mut flow: Flow, dev: &Device) -> Flow {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for m in flow.net.made.iter_mut() {
        let b = m.output.linear.bias.as_mut().unwrap();
        let n = b.val().dims()[0];
        made::set_param(b, (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect(), dev);
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
        assert!((lp_burn[i] - lp_fast[i]).abs() < 1e-3, "{} vs {}", lp_burn[i], lp_fast[i]);
    }
    // Sampling (D sequential steps per block) inverts it.
    let (xb, ld) = fast.sample_from_base(&z, &ctx);
    let worst = x.iter().zip(&xb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
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
    let worst = z.iter().zip(&zb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
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
            let base: f64 = z.iter().map(|&v| -0.5 * (v as f64).powi(2) - 0.5 * (2.0 * std::f64::consts::PI).ln()).sum();
            let logdet = lp[0] - base;
            assert!((num - logdet).abs() < 2e-2, "{kind:?}: numerical {num} vs {logdet}");
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

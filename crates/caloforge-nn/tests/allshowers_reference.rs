//! caloforge's AllShowers transformer against the reference's PyTorch code: the fixture holds
//! the weights of a small reference network, a padded batch of three showers (caloforge packs
//! their real points), its outputs, its flow-matching loss with the loss's gradient with
//! respect to every parameter, and a 2-step midpoint decode (`benchmarks/allshowers/reference.py
//! fixture`, torch 2.15).

use caloforge_nn::burn::tensor::{Device, Int, Tensor, TensorData};
use caloforge_nn::flowmatch::{time_features, Solver};
use caloforge_nn::ops::WindowPlan;
use caloforge_nn::pointflow::fast::ShowerInput;
use caloforge_nn::pointflow::{PointBatch, PointTransformer, PointTransformerDims, StateTensor};
use caloforge_nn::twin::{values, Twin};
use std::collections::HashMap;

struct Fixture {
    v: serde_json::Value,
}

impl Fixture {
    fn load() -> Fixture {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/allshowers_reference.json"
        );
        Fixture {
            v: serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap(),
        }
    }
    fn f32s(&self, k: &str) -> Vec<f32> {
        self.v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }
    /// The numbers at a nested key (`["grads", "head.weight"]`).
    fn f32s_at(&self, path: &[&str]) -> Vec<f32> {
        let mut v = &self.v;
        for k in path {
            v = &v[*k];
        }
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }
    fn ints(&self, k: &str) -> Vec<usize> {
        self.v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }
}

const P: usize = 12;

fn dims() -> PointTransformerDims {
    PointTransformerDims {
        layers: 9,
        dim: 16,
        heads: 4,
        blocks: 2,
        feedforward: 24,
        count_hidden: 20,
        particles: 3,
        ..Default::default()
    }
}

/// The reference's state dict.
fn state(fx: &Fixture) -> HashMap<String, StateTensor> {
    fx.v["state"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let vals = t["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (k.clone(), (shape, vals))
        })
        .collect()
}

/// The fixture's batch as burn takes it: the real points of `xs` (padded to P per shower, as
/// the reference) packed row after row, at times `ts` (one per shower).
fn packed_batch(fx: &Fixture, xs: &[f32], ts: &[f32], dev: &Device) -> PointBatch {
    let sizes = fx.ints("sizes");
    let (layer, cond, label) = (fx.ints("layer"), fx.f32s("cond"), fx.ints("label"));
    let b = sizes.len();
    let n: usize = sizes.iter().sum();
    let layers: Vec<Vec<usize>> = (0..b)
        .map(|k| layer[k * P..k * P + sizes[k]].to_vec())
        .collect();
    let x: Vec<f32> = (0..b)
        .flat_map(|k| xs[k * P * 3..k * P * 3 + sizes[k] * 3].to_vec())
        .collect();
    let mut tc = Vec::new();
    for k in 0..b {
        time_features(ts[k], 3, &mut tc);
        tc.extend_from_slice(&cond[4 * k..4 * k + 4]);
    }
    PointBatch {
        x: Tensor::from_data(TensorData::new(x, [n, 3]), dev),
        layer: Tensor::<1, Int>::from_data(
            TensorData::new(
                layers
                    .iter()
                    .flatten()
                    .map(|&l| l as i64)
                    .collect::<Vec<_>>(),
                [n],
            ),
            dev,
        ),
        time_cond: Tensor::from_data(TensorData::new(tc, [b, 10]), dev),
        label: Tensor::from_data(
            TensorData::new(label.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]),
            dev,
        ),
        counts: Tensor::from_data(TensorData::new(fx.f32s("num_points"), [b, 9]), dev),
        plan: std::sync::Arc::new(WindowPlan::new(&layers, dims().window()).unwrap()),
    }
}

/// The flow-matching loss of the fixture's batch at times `t`, reduced as the reference (per
/// shower over its P × 3 padded values, then over the batch).
fn fm_loss(fx: &Fixture, net: &PointTransformer, t: &[f32], dev: &Device) -> Tensor<1> {
    let sizes = fx.ints("sizes");
    let (x, noise) = (fx.f32s("x"), fx.f32s("noise"));
    let (b, n) = (sizes.len(), sizes.iter().sum::<usize>());
    let y: Vec<f32> = x
        .iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (&xv, &z))| caloforge_nn::flowmatch::interpolate(xv, z, t[i / (P * 3)]))
        .collect();
    let u: Vec<f32> = (0..b)
        .flat_map(|k| {
            (k * P * 3..k * P * 3 + sizes[k] * 3)
                .map(|j| caloforge_nn::flowmatch::target(x[j], noise[j]))
                .collect::<Vec<_>>()
        })
        .collect();
    let u = Tensor::<2>::from_data(TensorData::new(u, [n, 3]), dev);
    (net.forward(&packed_batch(fx, &y, t, dev)) - u)
        .powi_scalar(2)
        .sum()
        .div_scalar((P * 3 * b) as f64)
}

#[test]
fn the_transformer_computes_what_the_reference_computes() {
    let fx = Fixture::load();
    let dev = Device::flex();
    let dims = dims();
    let state = state(&fx);
    let net = PointTransformer::from_reference(&dims, &state, &dev).unwrap();
    let sizes = fx.ints("sizes");
    let (x, noise, layer) = (fx.f32s("x"), fx.f32s("noise"), fx.ints("layer"));
    let (counts, cond, label, t) = (
        fx.f32s("num_points"),
        fx.f32s("cond"),
        fx.ints("label"),
        fx.f32s("t"),
    );
    let b = sizes.len();
    let tc = |k: usize, tt: f32| {
        let mut v = Vec::new();
        time_features(tt, 3, &mut v);
        v.extend_from_slice(&cond[4 * k..4 * k + 4]);
        v
    };
    let layers: Vec<Vec<usize>> = (0..b)
        .map(|k| layer[k * P..k * P + sizes[k]].to_vec())
        .collect();
    let real = |v: &[f32]| -> Vec<f32> {
        (0..b)
            .flat_map(|k| v[k * P * 3..k * P * 3 + sizes[k] * 3].to_vec())
            .collect()
    };
    // burn takes the real points packed (the reference pads them to P).
    let make = |xs: &[f32], ts: &[f32]| packed_batch(&fx, xs, ts, &dev);
    let close = |what: &str, a: &[f32], b: &[f32], tol: f32| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    };
    // burn.
    let want = real(&fx.f32s("out"));
    close("burn", &values(net.forward(&make(&x, &t))), &want, 1e-5);
    // The twin, unpadded.
    let fast = net.twin();
    let starts: Vec<Vec<usize>> = layers
        .iter()
        .map(|l| {
            let mut s = vec![0usize; 10];
            for &k in l {
                s[k + 1] += 1;
            }
            for k in 0..9 {
                s[k + 1] += s[k];
            }
            s
        })
        .collect();
    let xr = real(&x);
    let offs: Vec<usize> = (0..b)
        .map(|k| sizes[..k].iter().sum::<usize>() * 3)
        .collect();
    let run = |xs: &[f32], ts: &[f32]| -> Vec<f32> {
        let tcs: Vec<Vec<f32>> = (0..b).map(|k| tc(k, ts[k])).collect();
        let inputs: Vec<ShowerInput> = (0..b)
            .map(|k| ShowerInput {
                x: &xs[offs[k]..offs[k] + sizes[k] * 3],
                starts: &starts[k],
                time_cond: &tcs[k],
                label: label[k],
                counts: &counts[k * 9..(k + 1) * 9],
            })
            .collect();
        fast.forward(&inputs)
    };
    close("twin", &run(&xr, &t), &want, 1e-5);
    // The flow-matching loss, reduced as the reference (per shower over P·3 values, padding
    // included, then over the batch).
    let loss: f64 = fm_loss(&fx, &net, &t, &dev)
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap();
    let want_loss = fx.v["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss,
        "loss {loss} vs {want_loss}"
    );
    // Decoding from the noise with 2 midpoint steps (t: 1 → 0).
    let mut z = real(&noise);
    Solver::Midpoint.integrate(&mut z, 1.0, 0.0, 2, |tt, s, out| {
        out.copy_from_slice(&run(s, &[tt; 3]));
    });
    close("decode", &z, &real(&fx.f32s("decoded_midpoint_2")), 2e-5);
}

/// The gradient of the flow-matching loss (reduced as the reference: per shower over its P × 3
/// padded values, then over the batch) with respect to every parameter, against PyTorch's.
#[test]
fn the_loss_gradient_is_the_references() {
    let fx = Fixture::load();
    let dev = Device::flex().autodiff();
    let dims = dims();
    let net = PointTransformer::from_reference(&dims, &state(&fx), &dev).unwrap();
    let loss = fm_loss(&fx, &net, &fx.f32s("t"), &dev);
    let got_loss: f64 = loss.clone().into_data().iter::<f64>().next().unwrap();
    let want_loss = fx.v["loss"].as_f64().unwrap();
    assert!(
        (got_loss - want_loss).abs() < 1e-5 * want_loss,
        "{got_loss} vs {want_loss}"
    );
    let grads = loss.backward();
    let g = |t: Tensor<2>| values(t.grad(&grads).unwrap());
    let g1 = |t: Tensor<1>| values(t.grad(&grads).unwrap());
    // PyTorch stores linear weights [out, in]; burn [in, out].
    let transpose = |v: Vec<f32>, rows: usize| -> Vec<f32> {
        let cols = v.len() / rows;
        (0..cols * rows)
            .map(|k| v[(k % rows) * cols + k / rows])
            .collect()
    };
    let mut checked = 0;
    let mut check = |name: &str, got: Vec<f32>| {
        let want = fx.f32s_at(&["grads", name]);
        assert_eq!(got.len(), want.len(), "{name}");
        let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - w).abs() <= 1e-4 * scale,
                "{name}[{i}]: {a} vs PyTorch {w}"
            );
        }
        checked += 1;
    };
    let linear =
        |check: &mut dyn FnMut(&str, Vec<f32>), name: &str, l: &caloforge_nn::burn::nn::Linear| {
            let w = l.weight.val();
            let rows = w.dims()[0];
            check(&format!("{name}.weight"), transpose(g(w), rows));
            check(&format!("{name}.bias"), g1(l.bias.as_ref().unwrap().val()));
        };
    linear(&mut check, "embedding", &net.embedding);
    linear(&mut check, "cond_embedding", &net.cond_embedding);
    linear(&mut check, "num_points_embedding.0", &net.count1);
    linear(&mut check, "num_points_embedding.2", &net.count2);
    linear(&mut check, "head", &net.head);
    check(
        "layer_embedding.weight",
        g(net.layer_embedding.weight.val()),
    );
    check(
        "particle_embedding.weight",
        g(net.particle_embedding.as_ref().unwrap().weight.val()),
    );
    for (i, blk) in net.blocks.iter().enumerate() {
        let p = format!("transformer_blocks.{i}");
        linear(
            &mut check,
            &format!("{p}.key_query_value"),
            &blk.key_query_value,
        );
        linear(&mut check, &format!("{p}.feedforward.0"), &blk.ff1);
        linear(&mut check, &format!("{p}.feedforward.2"), &blk.ff2);
        for (k, norm) in [("layer_norm1", &blk.norm1), ("layer_norm2", &blk.norm2)] {
            check(&format!("{p}.{k}.weight"), g1(norm.gamma.val()));
            check(
                &format!("{p}.{k}.bias"),
                g1(norm.beta.as_ref().unwrap().val()),
            );
        }
    }
    assert_eq!(checked, fx.v["grads"].as_object().unwrap().len());
}

/// 20 training steps from the reference's weights on the fixture's batch, with the times the
/// reference drew (`reference.py train-fixture`): RangerLite (weight decay 1e-2) at lr 1e-3 and
/// the global-norm clip 0.2, as the reference's training. The loss before every step and the
/// final weights against PyTorch's: the whole optimizer step (gradient, clipping, RAdam's
/// warm-up and rectification, Lookahead at steps 6, 12 and 18) is the reference's.
#[test]
fn twenty_training_steps_are_the_references() {
    use caloforge_nn::burn::optim::GradientsParams;
    use caloforge_nn::optim::{clip_global_norm, Ranger};
    let fx = Fixture::load();
    let tr = Fixture {
        v: serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/allshowers_training.json"
            ))
            .unwrap(),
        )
        .unwrap(),
    };
    let dev = Device::flex().autodiff();
    let dims = dims();
    let mut net = PointTransformer::from_reference(&dims, &state(&fx), &dev).unwrap();
    let mut optim = Ranger::new(1e-2).into_module_optimizer_clipped(None);
    let want = tr.f32s("losses");
    for (step, w) in want.iter().enumerate() {
        let t: Vec<f32> = tr.v["t"][step]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let loss = fm_loss(&fx, &net, &t, &dev);
        let got: f64 = loss.clone().into_data().iter::<f64>().next().unwrap();
        assert!(
            (got - *w as f64).abs() < 2e-5 * (*w as f64),
            "step {step}: loss {got} vs PyTorch {w}"
        );
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        clip_global_norm(&net, &mut grads, 0.2);
        net = optim.step(1e-3, net, grads);
    }
    // The final weights (two of them suffice to see any drift: every weight moved 20 times).
    let head = values(net.head.weight.val());
    let want_head = tr.f32s_at(&["final", "head.weight", "values"]);
    let rows = net.head.weight.val().dims()[0];
    let cols = head.len() / rows;
    for r in 0..rows {
        for c in 0..cols {
            let (g, w) = (head[r * cols + c], want_head[c * rows + r]);
            assert!(
                (g - w).abs() < 1e-5,
                "head.weight[{c}][{r}]: {g} vs PyTorch {w}"
            );
        }
    }
    let le = values(net.layer_embedding.weight.val());
    let want_le = tr.f32s_at(&["final", "layer_embedding.weight", "values"]);
    for (i, (g, w)) in le.iter().zip(&want_le).enumerate() {
        assert!(
            (g - w).abs() < 1e-5,
            "layer_embedding[{i}]: {g} vs PyTorch {w}"
        );
    }
}

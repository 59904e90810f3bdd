//! caloforge's AllShowers transformer against the reference's PyTorch code: the fixture holds
//! the weights of a small reference network, a padded batch of three showers (caloforge packs
//! their real points), its outputs, its
//! flow-matching loss and a 2-step midpoint decode (`benchmarks/allshowers/reference.py
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

#[test]
fn the_transformer_computes_what_the_reference_computes() {
    let fx = Fixture::load();
    let dev = Device::flex();
    let dims = PointTransformerDims {
        layers: 9,
        dim: 16,
        heads: 4,
        blocks: 2,
        feedforward: 24,
        count_hidden: 20,
        particles: 3,
        ..Default::default()
    };
    let state: HashMap<String, StateTensor> = fx.v["state"]
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
        .collect();
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
    let n: usize = sizes.iter().sum();
    let plan = std::sync::Arc::new(WindowPlan::new(&layers, dims.window()).unwrap());
    // burn takes the real points packed (the reference pads them to P).
    let make = |xs: &[f32], ts: &[f32]| PointBatch {
        x: Tensor::from_data(TensorData::new(real(xs), [n, 3]), &dev),
        layer: Tensor::<1, Int>::from_data(
            TensorData::new(
                layers
                    .iter()
                    .flatten()
                    .map(|&l| l as i64)
                    .collect::<Vec<_>>(),
                [n],
            ),
            &dev,
        ),
        time_cond: Tensor::from_data(
            TensorData::new(
                (0..b).flat_map(|k| tc(k, ts[k])).collect::<Vec<_>>(),
                [b, 10],
            ),
            &dev,
        ),
        label: Tensor::from_data(
            TensorData::new(label.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]),
            &dev,
        ),
        counts: Tensor::from_data(TensorData::new(counts.clone(), [b, 9]), &dev),
        plan: plan.clone(),
    };
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
    let y: Vec<f32> = x
        .iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (&xv, &z))| caloforge_nn::flowmatch::interpolate(xv, z, t[i / (P * 3)]))
        .collect();
    let v = values(net.forward(&make(&y, &t)));
    let mut loss = 0.0f64;
    for k in 0..b {
        let mut s = 0.0f64;
        let at = offs[k];
        for i in 0..sizes[k] * 3 {
            let j = k * P * 3 + i;
            let u = caloforge_nn::flowmatch::target(x[j], noise[j]);
            s += ((v[at + i] - u) as f64).powi(2);
        }
        loss += s / (P * 3) as f64;
    }
    loss /= b as f64;
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

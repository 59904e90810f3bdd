//! Replays a PyTorch reference training of the AllShowers transformer in caloforge, draw for
//! draw: the same initial weights, showers, matched noise, batches, times and learning rates
//! (`benchmarks/allshowers/train_reference.py --dump DIR`), through caloforge's packed burn
//! network, global-norm clipping and RangerLite. It prints both training losses per step and
//! both validation losses per epoch, so any difference between the two training loops shows
//! where it starts; the random streams of the two implementations are taken out of the
//! comparison. Writes DIR/caloforge_replay.json.
//!
//!     cargo run --release -p caloforge-nn --example allshowers_replay -- DIR
use caloforge_nn::burn::module::Module;
use caloforge_nn::burn::optim::GradientsParams;
use caloforge_nn::burn::tensor::{Device, Int, Tensor, TensorData};
use caloforge_nn::flowmatch::{interpolate, target, time_features};
use caloforge_nn::ops::WindowPlan;
use caloforge_nn::optim::{clip_global_norm, Ranger};
use caloforge_nn::pointflow::{PointBatch, PointTransformer, PointTransformerDims, StateTensor};
use serde_json::Value;
use std::collections::HashMap;

struct Shower {
    x: Vec<f32>,
    z: Vec<f32>,
    layer: Vec<usize>,
    counts: Vec<f32>,
    cond: Vec<f32>,
    label: usize,
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_u64().expect("an integer") as usize)
        .collect()
}

/// The reference's loss of showers `idx` at times `t`: squared error per shower over its
/// max_points × 3 padded values, then the batch mean.
fn loss(
    net: &PointTransformer,
    showers: &[Shower],
    idx: &[usize],
    t: &[f32],
    dims: &PointTransformerDims,
    max_points: usize,
    dev: &Device,
) -> Tensor<1> {
    let (b, l) = (idx.len(), dims.layers);
    let n: usize = idx.iter().map(|&i| showers[i].layer.len()).sum();
    let (mut y, mut u, mut layer) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tc, mut counts, mut label, mut layers) = (Vec::new(), Vec::new(), Vec::new(), vec![]);
    for (k, &i) in idx.iter().enumerate() {
        let s = &showers[i];
        for (&xv, &zv) in s.x.iter().zip(&s.z) {
            y.push(interpolate(xv, zv, t[k]));
            u.push(target(xv, zv));
        }
        layer.extend(s.layer.iter().map(|&v| v as i64));
        time_features(t[k], dims.frequencies, &mut tc);
        tc.extend_from_slice(&s.cond);
        counts.extend_from_slice(&s.counts);
        label.push(s.label as i64);
        layers.push(s.layer.as_slice());
    }
    let width = tc.len() / b;
    let batch = PointBatch {
        x: Tensor::from_data(TensorData::new(y, [n, 3]), dev),
        layer: Tensor::<1, Int>::from_data(TensorData::new(layer, [n]), dev),
        time_cond: Tensor::from_data(TensorData::new(tc, [b, width]), dev),
        label: Tensor::<1, Int>::from_data(TensorData::new(label, [b]), dev),
        counts: Tensor::from_data(TensorData::new(counts, [b, l]), dev),
        plan: std::sync::Arc::new(WindowPlan::new(&layers, dims.window()).expect("sorted")),
    };
    let u = Tensor::<2>::from_data(TensorData::new(u, [n, 3]), dev);
    (net.forward(&batch) - u)
        .powi_scalar(2)
        .sum()
        .div_scalar((max_points * 3 * b) as f64)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().iter::<f64>().next().expect("one value")
}

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: allshowers_replay DIR (train_reference.py --dump DIR)"),
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("replay.json")).expect("replay"))
            .expect("replay.json");
    let bytes = std::fs::read(dir.join("points.f32")).expect("points.f32");
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut at = 0;
    let showers: Vec<Shower> = doc["showers"]
        .as_array()
        .expect("showers")
        .iter()
        .map(|s| {
            let n = s["n"].as_u64().expect("n") as usize;
            let x = floats[at..at + 3 * n].to_vec();
            let z = floats[at + 3 * n..at + 6 * n].to_vec();
            at += 6 * n;
            Shower {
                x,
                z,
                layer: usizes(&s["layer"]),
                counts: f32s(&s["counts"]),
                cond: f32s(&s["cond"]),
                label: s["label"].as_u64().expect("label") as usize,
            }
        })
        .collect();
    assert_eq!(at, floats.len(), "points.f32 does not match replay.json");
    let dims = PointTransformerDims {
        layers: doc["layers"].as_u64().expect("layers") as usize,
        particles: doc["particles"].as_u64().expect("particles") as usize,
        ..Default::default()
    };
    let max_points = doc["max_points"].as_u64().expect("max_points") as usize;
    let n_train = doc["n_train"].as_u64().expect("n_train") as usize;
    let batch = doc["batch"].as_u64().expect("batch") as usize;
    let per_epoch = doc["steps_per_epoch"].as_u64().expect("steps_per_epoch") as usize;
    let state: HashMap<String, StateTensor> = doc["init"]
        .as_object()
        .expect("init")
        .iter()
        .map(|(k, t)| (k.clone(), (usizes(&t["shape"]), f32s(&t["values"]))))
        .collect();
    let dev = Device::flex().autodiff();
    let mut net = PointTransformer::from_reference(&dims, &state, &dev).expect("weights");
    let mut optim =
        Ranger::new(doc["weight_decay"].as_f64().expect("wd")).into_module_optimizer_clipped(None);
    let val_t = f32s(&doc["val_t"]);
    let torch_val = f32s(&doc["val_losses"]);
    let validate = |net: &PointTransformer| -> f64 {
        let valid = net.valid();
        let d = dev.clone().inner();
        let idx: Vec<usize> = (n_train..showers.len()).collect();
        let mut total = 0.0;
        for (c, chunk) in idx.chunks(batch).enumerate() {
            let t = &val_t[c * batch..c * batch + chunk.len()];
            total += scalar(loss(&valid, &showers, chunk, t, &dims, max_points, &d))
                * chunk.len() as f64;
        }
        total / idx.len() as f64
    };
    let mut vals = vec![validate(&net)];
    println!(
        "validation before training: caloforge {:.5}, PyTorch {:.5}",
        vals[0], torch_val[0]
    );
    let steps = doc["steps"].as_array().expect("steps");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for (k, s) in steps.iter().enumerate() {
        let idx = usizes(&s["idx"]);
        let t = f32s(&s["t"]);
        let l = loss(&net, &showers, &idx, &t, &dims, max_points, &dev);
        ours.push(scalar(l.clone()));
        theirs.push(s["loss"].as_f64().expect("loss"));
        let mut grads = GradientsParams::from_grads(l.backward(), &net);
        clip_global_norm(&net, &mut grads, doc["clip"].as_f64().expect("clip"));
        net = optim.step(s["lr"].as_f64().expect("lr"), net, grads);
        if k < 20 || (k + 1) % 10 == 0 {
            println!(
                "step {:4}: loss caloforge {:.6}, PyTorch {:.6} ({:+.2e} relative)",
                k + 1,
                ours[k],
                theirs[k],
                ours[k] / theirs[k] - 1.0
            );
        }
        if (k + 1) % per_epoch == 0 {
            let e = (k + 1) / per_epoch;
            vals.push(validate(&net));
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let r = k + 1 - per_epoch..k + 1;
            println!(
                "epoch {e}: training loss caloforge {:.5}, PyTorch {:.5}; validation caloforge \
                 {:.5}, PyTorch {:.5}",
                mean(&ours[r.clone()]),
                mean(&theirs[r]),
                vals[e],
                torch_val.get(e).copied().unwrap_or(f32::NAN)
            );
        }
    }
    let out = serde_json::json!({
        "losses": ours, "torch_losses": theirs,
        "val_losses": vals, "torch_val_losses": torch_val,
    });
    std::fs::write(dir.join("caloforge_replay.json"), out.to_string()).expect("writing");
}

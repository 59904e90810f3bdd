//! The distillation loss and its gradient for one fixed batch, for the same-weights comparison
//! with the PyTorch reference (`benchmarks/parity/distill_grad.py`).
//!
//! usage: distill_grad TEACHER.safetensors STUDENT.safetensors INPUTS.safetensors OUT.safetensors
//!
//! TEACHER and STUDENT are caloforge flow files (`save_flow`: the configuration in the
//! metadata); INPUTS holds float32 tensors `x` [B, D], `c` [B, C] and `z` [B, D]. OUT receives
//! the loss terms (`loss_x`, `loss_z`, the x-pass's and z-pass's guided sums, unweighted) and the
//! gradient of `beta·loss_x + (1 − beta)·loss_z` (beta 0.5) with respect to every parameter of
//! the student, under the parameter's name.
//! `distill_grad init CONFIG_FROM.safetensors SEED OUT.safetensors [HIDDEN]` writes a freshly
//! initialised IAF student for the teacher CONFIG_FROM instead.
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use caloforge_nn::flow::train::{distill_terms, load_flow, save_flow, DistillLoss};
use caloforge_nn::flow::{Flow, FlowConfig, FlowKind};
use std::collections::BTreeMap;
use std::path::Path;

type Named = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn read_st(path: &str) -> (Named, BTreeMap<String, String>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    let (mut out, mut meta) = (Named::new(), BTreeMap::new());
    for (k, v) in h.as_object().unwrap() {
        if k == "__metadata__" {
            for (mk, mv) in v.as_object().unwrap() {
                meta.insert(mk.clone(), mv.as_str().unwrap().to_string());
            }
            continue;
        }
        assert_eq!(v["dtype"], "F32", "{path}: {k} is not F32");
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let o = v["data_offsets"].as_array().unwrap();
        let (a, e) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        let vals = data[a..e]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(k.clone(), (shape, vals));
    }
    (out, meta)
}

fn write_st(path: &str, t: &Named) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, (shape, v)) in t {
        let a = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [a, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn config(path: &str) -> FlowConfig {
    let (_, meta) = read_st(path);
    serde_json::from_str(&meta["caloforge_flow_config"]).expect("no caloforge_flow_config")
}

fn tensor(t: &(Vec<usize>, Vec<f32>), dev: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(t.1.clone(), [t.0[0], t.0[1]]), dev)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.first().map(String::as_str) == Some("init") {
        let mut cfg = config(&a[1]);
        cfg.kind = FlowKind::Iaf;
        if let Some(h) = a.get(4) {
            cfg.hidden = h.parse().unwrap();
        }
        let dev = Device::flex();
        dev.seed(a[2].parse().unwrap());
        save_flow(&Flow::new(cfg, &dev), Path::new(&a[3])).unwrap();
        return;
    }
    let dev = Device::flex().autodiff();
    let teacher = load_flow(Path::new(&a[0]), &config(&a[0]), &dev).unwrap();
    let teacher = teacher.map_net(|n| n.no_grad());
    let student = load_flow(Path::new(&a[1]), &config(&a[1]), &dev).unwrap();
    let (inp, _) = read_st(&a[2]);
    let (x, c, z) = (
        tensor(&inp["x"], &dev),
        tensor(&inp["c"], &dev),
        tensor(&inp["z"], &dev),
    );
    let terms = DistillLoss {
        x_pass: true,
        z_pass: true,
        per_made: true,
        beta: 0.5,
    };
    let (lx, lz) = distill_terms(&student, &teacher, terms, x, Some(c), Some(z));
    let (lx, lz) = (lx.unwrap(), lz.unwrap());
    let scalar = |t: &Tensor<1>| t.clone().into_data().iter::<f32>().next().unwrap();
    let mut out = Named::new();
    out.insert("loss_x".into(), (vec![1], vec![scalar(&lx)]));
    out.insert("loss_z".into(), (vec![1], vec![scalar(&lz)]));
    let grads = (lx * 0.5 + lz * 0.5).backward();
    let g2 = |p: &Param<Tensor<2>>| {
        let g = p.grad(&grads).expect("no gradient");
        (g.dims().to_vec(), g.into_data().iter::<f32>().collect())
    };
    let g1 = |p: &Param<Tensor<1>>| {
        let g = p.grad(&grads).expect("no gradient");
        (g.dims().to_vec(), g.into_data().iter::<f32>().collect())
    };
    for (k, m) in student.net.made.iter().enumerate() {
        let mut layers = vec![(format!("made.{k}.input.linear"), &m.input.linear)];
        for (j, h) in m.hidden.iter().enumerate() {
            layers.push((format!("made.{k}.hidden.{j}.linear"), &h.linear));
        }
        layers.push((format!("made.{k}.output.linear"), &m.output.linear));
        if let Some(cl) = &m.context {
            layers.push((format!("made.{k}.context"), cl));
        }
        for (name, l) in layers {
            out.insert(format!("{name}.weight"), g2(&l.weight));
            if let Some(b) = &l.bias {
                out.insert(format!("{name}.bias"), g1(b));
            }
        }
    }
    write_st(&a[3], &out);
}

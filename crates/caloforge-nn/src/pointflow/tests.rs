use super::fast::ShowerInput;
use super::*;
use crate::twin::check::{check_twin, normal, Layout};
use crate::twin::{values, Twin};
use rand::{Rng, SeedableRng};

fn small() -> PointTransformerDims {
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

/// Random showers: per shower its layers (sorted), features, time/condition, label, counts.
struct Showers {
    layers: Vec<Vec<usize>>,
    x: Vec<Vec<f32>>,
    tc: Vec<Vec<f32>>,
    label: Vec<usize>,
    counts: Vec<Vec<f32>>,
}

fn showers(sizes: &[usize], dims: &PointTransformerDims, seed: u64) -> Showers {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut s = Showers {
        layers: vec![],
        x: vec![],
        tc: vec![],
        label: vec![],
        counts: vec![],
    };
    for &n in sizes {
        let mut l: Vec<usize> = (0..n).map(|_| r.random_range(0..dims.layers)).collect();
        l.sort();
        let mut c = vec![0.0f32; dims.layers];
        for &k in &l {
            c[k] += 1.0;
        }
        s.x.push((0..n * 3).map(|_| r.random::<f32>() * 2.0 - 1.0).collect());
        s.tc.push((0..10).map(|_| r.random::<f32>()).collect());
        s.label.push(r.random_range(0..dims.particles));
        s.counts.push(c);
        s.layers.push(l);
    }
    s
}

fn batch(s: &Showers, dims: &PointTransformerDims) -> PointBatch {
    let dev = burn::tensor::Device::flex();
    let b = s.x.len();
    let n: usize = s.layers.iter().map(Vec::len).sum();
    let layer: Vec<i64> = s.layers.iter().flatten().map(|&l| l as i64).collect();
    PointBatch {
        x: Tensor::from_data(TensorData::new(s.x.concat(), [n, 3]), &dev),
        layer: Tensor::from_data(TensorData::new(layer, [n]), &dev),
        time_cond: Tensor::from_data(TensorData::new(s.tc.concat(), [b, 10]), &dev),
        label: Tensor::from_data(
            TensorData::new(s.label.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]),
            &dev,
        ),
        counts: Tensor::from_data(TensorData::new(s.counts.concat(), [b, dims.layers]), &dev),
        plan: std::sync::Arc::new(WindowPlan::new(&s.layers, dims.window()).unwrap()),
    }
}

fn starts(layers: &[usize], n_layers: usize) -> Vec<usize> {
    let mut st = vec![0usize; n_layers + 1];
    for &l in layers {
        st[l + 1] += 1;
    }
    for l in 0..n_layers {
        st[l + 1] += st[l];
    }
    st
}

#[test]
fn the_transformer_has_the_references_parameter_count() {
    let net = PointTransformerDims::default().init(&burn::tensor::Device::flex());
    assert_eq!(net.num_params(), 263_491);
    let count = CountNetDims::default().init(&burn::tensor::Device::flex());
    assert_eq!(count.num_params(), 351_822);
}

#[test]
fn showers_batched_together_give_what_they_give_alone() {
    let dims = small();
    let net = dims.init(&burn::tensor::Device::flex());
    let s = showers(&[7, 3, 12], &dims, 1);
    let together = values(net.forward(&batch(&s, &dims)));
    let mut at = 0;
    for k in 0..3 {
        let one = Showers {
            layers: vec![s.layers[k].clone()],
            x: vec![s.x[k].clone()],
            tc: vec![s.tc[k].clone()],
            label: vec![s.label[k]],
            counts: vec![s.counts[k].clone()],
        };
        let alone = values(net.forward(&batch(&one, &dims)));
        for (a, b) in alone.iter().zip(&together[at..at + alone.len()]) {
            assert!((a - b).abs() < 1e-5, "shower {k}: {a} vs {b}");
        }
        at += alone.len();
    }
    assert_eq!(at, together.len());
}

#[test]
fn the_fast_transformer_matches_burn() {
    let dims = small();
    let net = dims.init(&burn::tensor::Device::flex());
    let fast = net.twin();
    // Different sizes and layer distributions.
    let s = showers(&[10, 4, 13], &dims, 2);
    check_transformer_twin("point transformer", &net, &dims, &s, 2e-5);
    // Showers of different sizes at once give what each gives alone.
    let s = showers(&[4, 17, 1], &dims, 3);
    let st: Vec<Vec<usize>> = s.layers.iter().map(|l| starts(l, dims.layers)).collect();
    let input = |k: usize| ShowerInput {
        x: &s.x[k],
        starts: &st[k],
        time_cond: &s.tc[k],
        label: s.label[k],
        counts: &s.counts[k],
    };
    let all = fast.forward(&[input(0), input(1), input(2)]);
    let apart: Vec<f32> = (0..3).flat_map(|k| fast.forward(&[input(k)])).collect();
    assert_eq!(all.len(), apart.len());
    for (a, b) in all.iter().zip(&apart) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn the_fast_transformer_matches_burn_at_full_size() {
    // The paper's widths on 45 layers, with showers of hundreds of points in few layers: layers
    // of more than one block of queries, windows of several panels of keys, GEMMs of several
    // row blocks.
    let dims = PointTransformerDims {
        layers: 45,
        particles: 3,
        ..Default::default()
    };
    let net = dims.init(&burn::tensor::Device::flex());
    crate::weights::initialize(&net);
    let mut s = showers(&[700, 90], &dims, 4);
    for l in &mut s.layers {
        // Crowd the points into layers 10-21.
        l.iter_mut().for_each(|v| *v = 10 + *v % 12);
        l.sort();
    }
    for (c, l) in s.counts.iter_mut().zip(&s.layers) {
        c.iter_mut().for_each(|v| *v = 0.0);
        l.iter().for_each(|&v| c[v] += 1.0);
    }
    check_transformer_twin("point transformer, full size", &net, &dims, &s, 1e-4);
}

/// The twin of `net` against burn on showers `s` (all at once), inputs and gradients through
/// [`check_twin`].
fn check_transformer_twin(
    name: &str,
    net: &PointTransformer,
    dims: &PointTransformerDims,
    s: &Showers,
    tol: f32,
) {
    let fast = net.twin();
    let st: Vec<Vec<usize>> = s.layers.iter().map(|l| starts(l, dims.layers)).collect();
    let mut offs = vec![0];
    for x in &s.x {
        offs.push(offs.last().unwrap() + x.len());
    }
    let b = batch(s, dims);
    check_twin(
        name,
        b.x.clone(),
        |x| {
            let mut bb = b.clone();
            bb.x = x;
            net.forward(&bb)
        },
        |x| {
            let inputs: Vec<ShowerInput> = (0..s.x.len())
                .map(|k| ShowerInput {
                    x: &x[offs[k]..offs[k + 1]],
                    starts: &st[k],
                    time_cond: &s.tc[k],
                    label: s.label[k],
                    counts: &s.counts[k],
                })
                .collect();
            fast.forward(&inputs)
        },
        Layout::Rows,
        tol,
    );
}

#[test]
fn the_fast_count_net_matches_burn() {
    let dims = CountNetDims {
        layers: 7,
        condition: 5,
        frequencies: 3,
        hidden: vec![11, 13],
    };
    let net = dims.init(&burn::tensor::Device::flex());
    let fast = net.twin();
    check_twin(
        "count net",
        normal([5, 6 + 7 + 5]),
        |x| net.forward(x),
        |x| fast.forward(x),
        Layout::Rows,
        1e-5,
    );
}

/// The initial weights are PyTorch's defaults, as the reference's: every Linear weight and bias
/// uniform in ±1/√fan_in (variance 1/(3 fan_in)), the embeddings N(0, 1), LayerNorm 1 and 0;
/// and no two tensors are copies of one another (a seeded generator restarted per tensor would
/// make the layers of a block start alike).
#[test]
fn initial_weights_are_pytorchs_defaults() {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    #[derive(Default)]
    struct Collect(Vec<(Vec<usize>, Vec<f64>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            self.0.push((shape, t.into_data().iter::<f64>().collect()));
        }
    }
    let dev = crate::device::cpu_autodiff(crate::device::Precision::F32, 11);
    let net = PointTransformerDims::default().init(&dev);
    let mut c = Collect::default();
    net.visit(&mut c);
    let moments = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (m, v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    };
    let (mut linear, mut embedding, mut norm) = (0, 0, 0);
    for (i, (shape, v)) in c.0.iter().enumerate() {
        let big = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let (m, var) = moments(v);
        if shape.len() == 2 {
            let fan_in = shape[0] as f64;
            if big <= 1.0 / fan_in.sqrt() + 1e-7 {
                linear += 1;
                // The bias after it: the same bound.
                let (bs, b) = &c.0[i + 1];
                assert_eq!(bs, &vec![shape[1]]);
                assert!(b.iter().all(|x| x.abs() <= 1.0 / fan_in.sqrt() + 1e-7));
                if v.len() >= 1000 {
                    let want = 1.0 / (3.0 * fan_in);
                    assert!(
                        (var / want - 1.0).abs() < 0.12,
                        "{shape:?}: {var} vs {want}"
                    );
                    assert!(m.abs() < 0.1 * want.sqrt(), "{shape:?}: mean {m}");
                }
            } else {
                embedding += 1;
                assert!(
                    (var - 1.0).abs() < 0.12 && m.abs() < 0.1,
                    "{shape:?}: {m} {var}"
                );
            }
        } else if v.iter().all(|&x| x == 1.0) {
            norm += 1;
            assert!(c.0[i + 1].1.iter().all(|&x| x == 0.0), "LayerNorm bias");
        }
    }
    // Point embedding, condition, 2 count-MLP layers, head; per block qkv and 2 feed-forward;
    // the layer and particle embeddings; 2 LayerNorms per block.
    assert_eq!((linear, embedding, norm), (5 + 3 * 4, 2, 2 * 4));
    // No tensor repeats another's draws. (A generator restarted per tensor would make every
    // tensor of one fan-in equal, ~35 tensors collapsing to ~7; a few may coincide by chance
    // when a concurrent test reseeds burn's process-wide generator with the same seed at the
    // wrong moments, so up to two fewer distinct tensors are tolerated.)
    let mut heads: Vec<Vec<u32>> =
        c.0.iter()
            .filter(|(_, v)| v.len() >= 64 && v.iter().any(|&x| x != 0.0 && x != 1.0))
            .map(|(_, v)| v[..8].iter().map(|&x| (x as f32).to_bits()).collect())
            .collect();
    let n = heads.len();
    heads.sort();
    heads.dedup();
    assert!(heads.len() + 2 >= n, "{} distinct of {n}", heads.len());
}

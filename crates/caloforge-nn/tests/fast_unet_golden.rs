//! The CPU U-Net gives bit-for-bit the outputs it gave before it was assembled from the shared
//! kernels (`caloforge_nn::kernels`): the constants below were printed by the engine of commit
//! 2c19ce4 (hand-written `unet/fast.rs`) on the same deterministic weights and inputs, and
//! reprinted once when the one-channel output convolution became dot products over its inputs
//! (a different summation order: outputs moved by a few ULP, e.g. 3202941278 → 3202941276).

use caloforge_nn::burn::module::{Module, ModuleMapper, Param};
use caloforge_nn::burn::tensor::{Device, Tensor, TensorData};
use caloforge_nn::twin::Twin;
use caloforge_nn::unet::{UNet, UNetConfig};

/// Replaces every parameter by a fixed function of its position in visiting order.
struct Fill(usize);

impl ModuleMapper for Fill {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let t = param.val();
        let shape = t.dims();
        let n: usize = shape.iter().product();
        let k0 = self.0;
        self.0 += n;
        let data: Vec<f32> = (0..n)
            .map(|i| (((k0 + i) as f64 * 0.731 + 0.1).sin() * 0.3) as f32)
            .collect();
        Param::from_tensor(Tensor::<D>::from_data(
            TensorData::new(data, shape),
            &t.device(),
        ))
    }
}

fn outputs(sizes: Vec<usize>, shape: [usize; 3], attention: bool) -> Vec<f32> {
    let dev = Device::flex();
    let cfg = UNetConfig {
        in_channels: 3,
        layer_sizes: sizes,
        groups: 4,
        block_attention: attention,
        mid_attention: true,
        shape,
    };
    let net = UNet::new(&cfg, &dev).unwrap().map(&mut Fill(0));
    let v: usize = shape.iter().product();
    let n = 2;
    let x: Vec<f32> = (0..n * 3 * v)
        .map(|i| ((i as f64) * 0.013).cos() as f32)
        .collect();
    net.twin().forward(&x, shape, &[0.3, 0.9], &[0.1, 0.7])
}

fn digest(y: &[f32]) -> (u64, Vec<u32>) {
    let h = y.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let picks = (0..6).map(|k| y[k * (y.len() - 1) / 5].to_bits()).collect();
    (h, picks)
}

/// Layer sizes, grid, block attention, and the expected (hash, picked values).
type Case = (Vec<usize>, [usize; 3], bool, (u64, [u32; 6]));

#[test]
fn fast_unet_outputs_are_unchanged() {
    let cases: [Case; 3] = [
        (
            vec![8, 8, 8, 16],
            [45, 16, 9],
            true,
            (
                15093300345094197928,
                [
                    3204751904, 3202941276, 3205556336, 3189552507, 3206222260, 3202548404,
                ],
            ),
        ),
        (
            vec![4, 4, 8],
            [9, 6, 5],
            true,
            (
                9693801201977907573,
                [
                    1043046724, 1050087833, 1049099472, 1044382293, 1044784980, 1044005027,
                ],
            ),
        ),
        (
            vec![8, 8, 16],
            [9, 25, 5],
            false,
            (
                12769251647360645471,
                [
                    3209839908, 3193993226, 3195538896, 3212913530, 3213698514, 3196344242,
                ],
            ),
        ),
    ];
    for (sizes, shape, attention, (hash, picks)) in cases {
        let y = outputs(sizes.clone(), shape, attention);
        assert!(y.iter().all(|v| v.is_finite()));
        let (h, p) = digest(&y);
        assert_eq!(
            (h, p.as_slice()),
            (hash, picks.as_slice()),
            "{sizes:?} {shape:?}"
        );
    }
}

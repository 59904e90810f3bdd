//! Safetensors weight files of trained networks: one writer and one reader for every model.
//!
//! Writing is atomic (a reader never sees a half-written file); reading refuses a file that does
//! not fit the network (missing or mis-shaped tensors) or holds non-finite weights, with the file
//! named.

use crate::train::{NnError, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Tensor;
use std::path::Path;

/// Writes the weights of `module` through `store` (which may carry metadata) to `path`.
pub fn save<M: Module>(module: &M, mut store: SafetensorsStore, path: &Path) -> Result<()> {
    module
        .save_into(&mut store)
        .map_err(|e| NnError::format(path, format!("cannot encode weights: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| NnError::format(path, format!("cannot encode weights: {e}")))?;
    caloforge_core::io::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

/// Loads weights from `path` into `module` (`what` names the network in errors).
pub fn load<M: Module>(mut module: M, path: &Path, what: &str) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
    let res = module
        .load_from(&mut SafetensorsStore::from_bytes(Some(bytes)))
        .map_err(|e| NnError::format(path, format!("not a checkpoint of {what}: {e}")))?;
    if !res.errors.is_empty() || !res.missing.is_empty() {
        return Err(NnError::format(
            path,
            format!(
                "not a checkpoint of {what} ({} tensors missing, {} that do not fit; was the configuration changed?)",
                res.missing.len(),
                res.errors.len()
            ),
        ));
    }
    let bad = non_finite(&module);
    if bad > 0 {
        return Err(NnError::format(
            path,
            format!(
                "{bad} weights are NaN or infinite (a diverged training?); refusing to use them"
            ),
        ));
    }
    Ok(module)
}

/// Number of non-finite float parameters of `module`.
pub fn non_finite<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 += param
                .val()
                .into_data()
                .iter::<f64>()
                .filter(|v| !v.is_finite())
                .count();
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// Draws every lazily initialised parameter of `module` now. burn initialises a parameter on
/// first use; networks built on one thread and trained concurrently on others would otherwise
/// draw their initial weights in an order that depends on thread timing.
pub fn initialize<M: Module>(module: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// A copy of `module` on `device` whose parameters are fresh autodiff leaves (the same values,
/// no history): a network to train further from weights that come out of other computations
/// (an EMA, another device), as a distilled student starts from its teacher.
pub fn trainable_copy<M: Module>(module: &M, device: &burn::tensor::Device) -> M {
    struct Leaves<'a>(&'a burn::tensor::Device);
    impl burn::module::ModuleMapper for Leaves<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dev = self.0;
            let trainable = param.is_require_grad();
            param.map(|t| {
                let t = t.detach().to_device(dev).detach();
                if trainable {
                    t.require_grad()
                } else {
                    t
                }
            })
        }
    }
    module.clone().map(&mut Leaves(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[derive(burn::module::Module, Debug)]
    struct Two {
        w: Param<Tensor<1>>,
    }

    fn two(v: Vec<f32>) -> Two {
        let n = v.len();
        Two {
            w: Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), &Device::flex())),
        }
    }

    #[test]
    fn round_trips_and_refuses_wrong_shapes_and_non_finite_weights() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        save(
            &two(vec![1.5, -2.0]),
            SafetensorsStore::from_bytes(None),
            &p,
        )
        .unwrap();
        let back = load(two(vec![0.0, 0.0]), &p, "this net").unwrap();
        let v: Vec<f32> = back.w.val().into_data().iter::<f32>().collect();
        assert_eq!(v, vec![1.5, -2.0]);
        let e = load(two(vec![0.0; 3]), &p, "this net")
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.safetensors") && e.contains("this net"), "{e}");
        save(
            &two(vec![1.0, f32::NAN]),
            SafetensorsStore::from_bytes(None),
            &p,
        )
        .unwrap();
        let e = load(two(vec![0.0, 0.0]), &p, "this net")
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.safetensors") && e.contains("NaN"), "{e}");
        assert_eq!(non_finite(&two(vec![f32::INFINITY, 0.0, f32::NAN])), 2);
    }
}

//! Counting of multiply-adds: every kernel adds the multiply-adds it computes to a per-thread
//! counter, so that `caloforge bench` can report the FLOP rate of any network assembled from
//! the kernels without a hand-written formula per model.

use std::cell::Cell;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Adds `n` multiply-adds to this thread's counter.
#[inline]
pub fn add(n: usize) {
    COUNT.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

/// Runs `f` on this thread and returns its result and the multiply-adds the kernels computed
/// in it (work that `f` hands to other threads is not seen).
pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = COUNT.with(Cell::get);
    let r = f();
    (r, COUNT.with(Cell::get).wrapping_sub(before))
}

#[cfg(test)]
mod tests {
    use super::super::{Conv3d, Linear};

    #[test]
    fn kernels_count_their_multiply_adds() {
        let lin = Linear {
            w: vec![0.5; 3 * 4],
            b: vec![0.0; 4],
        };
        let (_, n) = super::count(|| lin.forward(&[1.0, 2.0, 3.0]));
        assert_eq!(n, 12);
        let conv = Conv3d {
            cin: 2,
            cout: 8,
            k: [3, 3, 3],
            stride: [1, 1, 1],
            pad: [1, 1, 1],
            circular: [false, true, false],
            w: vec![0.1; 27 * 2 * 8],
            b: vec![0.0; 8],
        };
        let (_, n) = super::count(|| conv.forward(&vec![1.0; 4 * 5 * 3 * 2], [4, 5, 3]));
        assert_eq!(n, 4 * 5 * 3 * 27 * 2 * 8);
    }
}

//! Dense layers on rows.

/// y = x W + b, weights `[in][out]` (burn's layout). Each output is accumulated in f64 over the
/// inputs in order, so a row's result does not depend on how many rows are computed together.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Linear {
    /// Output width.
    pub fn d_out(&self) -> usize {
        self.b.len()
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w.len() / self.b.len().max(1)
    }

    /// One row.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let dout = self.b.len();
        super::macs::add(x.len() * dout);
        let mut y: Vec<f64> = self.b.iter().map(|&v| v as f64).collect();
        for (i, &xv) in x.iter().enumerate() {
            for (yv, &wv) in y.iter_mut().zip(&self.w[i * dout..(i + 1) * dout]) {
                *yv += xv as f64 * wv as f64;
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    /// Rows of `d_in` values → rows of `d_out`.
    pub fn forward_rows(&self, x: &[f32]) -> Vec<f32> {
        x.chunks(self.d_in().max(1))
            .flat_map(|r| self.forward(r))
            .collect()
    }
}

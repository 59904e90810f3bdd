//! High-level shower features (SPEC §3), computed on thresholded showers (SPEC §4).

use crate::geometry::Geometry;
use crate::numeric::{dot_pairwise, pairwise_sum};
use rayon::prelude::*;

const EPS: f64 = 1e-16;

/// Sets every voxel below `min_energy` (strictly) to zero, as the reference evaluation does.
pub fn apply_threshold(showers: &mut [f64], min_energy: f64) {
    for v in showers.iter_mut() {
        if *v < min_energy {
            *v = 0.0;
        }
    }
}

/// High-level features of a set of showers, stored per observable and layer (column-wise).
///
/// `e_layer`, `ec_r`, `w_r`, `sparsity` have one column per relevant layer
/// ([`Geometry::relevant_layers`]); `ec_x`, `ec_y`, `w_x`, `w_y` one per alpha-binned layer
/// ([`Geometry::alpha_layers`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// Total deposited energy (MeV).
    pub e_tot: Vec<f64>,
    /// Energy per relevant layer (MeV).
    pub e_layer: Vec<Vec<f64>>,
    /// Centre of energy in x ("eta"), mm, per alpha-binned layer.
    pub ec_x: Vec<Vec<f64>>,
    /// Centre of energy in y ("phi"), mm, per alpha-binned layer.
    pub ec_y: Vec<Vec<f64>>,
    /// Width in x, mm, per alpha-binned layer.
    pub w_x: Vec<Vec<f64>>,
    /// Width in y, mm, per alpha-binned layer.
    pub w_y: Vec<Vec<f64>>,
    /// Radial centre of energy, mm, per relevant layer.
    pub ec_r: Vec<Vec<f64>>,
    /// Radial width, mm, per relevant layer.
    pub w_r: Vec<Vec<f64>>,
    /// Fraction of voxels with zero energy, per relevant layer.
    pub sparsity: Vec<Vec<f64>>,
}

/// Features of one shower, in the layout of [`Features`] but one value per column.
#[derive(Debug, Clone, Default)]
struct Row {
    e_tot: f64,
    e_layer: Vec<f64>,
    ec_x: Vec<f64>,
    ec_y: Vec<f64>,
    w_x: Vec<f64>,
    w_y: Vec<f64>,
    ec_r: Vec<f64>,
    w_r: Vec<f64>,
    sparsity: Vec<f64>,
}

/// Centre and width of `e` along `coord`, evaluated in the reference code's order:
/// sum(c·e)/(sum(e)+ε) and sqrt(max(0, sum(c·c·e)/(sum(e)+ε) − centre²)), NumPy pairwise sums.
fn centre_width(coord: &[f64], e: &[f64], se: f64, scratch: &mut Vec<f64>) -> (f64, f64) {
    let ec = dot_pairwise(coord, e, scratch) / (se + EPS);
    scratch.clear();
    scratch.extend(coord.iter().zip(e).map(|(c, w)| c * c * w));
    let m2 = pairwise_sum(scratch) / (se + EPS);
    (ec, (m2 - ec * ec).max(0.0).sqrt())
}

fn shower_row(g: &Geometry, shower: &[f64]) -> Row {
    let mut row = Row {
        e_tot: pairwise_sum(shower),
        ..Default::default()
    };
    let mut scratch = Vec::new();
    for &l in &g.relevant_layers {
        let range = g.layer_range(l);
        let e = &shower[range.clone()];
        let se = pairwise_sum(e);
        row.e_layer.push(se);
        let nonzero = e.iter().filter(|&&v| v > 0.0).count();
        row.sparsity.push(1.0 - nonzero as f64 / e.len() as f64);
        let (ec, w) = centre_width(&g.r_center[range.clone()], e, se, &mut scratch);
        row.ec_r.push(ec);
        row.w_r.push(w);
        if g.layers[l].n_alpha > 1 {
            let (ecx, wx) = centre_width(&g.x[range.clone()], e, se, &mut scratch);
            let (ecy, wy) = centre_width(&g.y[range], e, se, &mut scratch);
            row.ec_x.push(ecx);
            row.ec_y.push(ecy);
            row.w_x.push(wx);
            row.w_y.push(wy);
        }
    }
    row
}

impl Features {
    /// Empty feature set with the columns of geometry `g`.
    pub fn empty(g: &Geometry) -> Self {
        let nr = g.relevant_layers.len();
        let na = g.alpha_layers.len();
        Features {
            e_tot: Vec::new(),
            e_layer: vec![Vec::new(); nr],
            ec_x: vec![Vec::new(); na],
            ec_y: vec![Vec::new(); na],
            w_x: vec![Vec::new(); na],
            w_y: vec![Vec::new(); na],
            ec_r: vec![Vec::new(); nr],
            w_r: vec![Vec::new(); nr],
            sparsity: vec![Vec::new(); nr],
        }
    }

    /// Computes the features of thresholded `showers` (row-major, `g.n_voxels()` per row).
    pub fn compute(g: &Geometry, showers: &[f64]) -> Self {
        let mut f = Features::empty(g);
        f.extend_from(g, showers);
        f
    }

    /// Appends the features of more thresholded showers.
    pub fn extend_from(&mut self, g: &Geometry, showers: &[f64]) {
        let v = g.n_voxels();
        let rows: Vec<Row> = showers.par_chunks(v).map(|s| shower_row(g, s)).collect();
        for r in rows {
            self.e_tot.push(r.e_tot);
            push_cols(&mut self.e_layer, &r.e_layer);
            push_cols(&mut self.ec_x, &r.ec_x);
            push_cols(&mut self.ec_y, &r.ec_y);
            push_cols(&mut self.w_x, &r.w_x);
            push_cols(&mut self.w_y, &r.w_y);
            push_cols(&mut self.ec_r, &r.ec_r);
            push_cols(&mut self.w_r, &r.w_r);
            push_cols(&mut self.sparsity, &r.sparsity);
        }
    }

    /// Appends the showers of `other` (same geometry) after the ones held.
    pub fn append(&mut self, other: Features) {
        self.e_tot.extend(other.e_tot);
        for (a, b) in [
            (&mut self.e_layer, other.e_layer),
            (&mut self.ec_x, other.ec_x),
            (&mut self.ec_y, other.ec_y),
            (&mut self.w_x, other.w_x),
            (&mut self.w_y, other.w_y),
            (&mut self.ec_r, other.ec_r),
            (&mut self.w_r, other.w_r),
            (&mut self.sparsity, other.sparsity),
        ] {
            for (ca, cb) in a.iter_mut().zip(b) {
                ca.extend(cb);
            }
        }
    }

    /// Number of showers.
    pub fn len(&self) -> usize {
        self.e_tot.len()
    }

    /// Whether no shower is held.
    pub fn is_empty(&self) -> bool {
        self.e_tot.is_empty()
    }

    /// The high-level classifier / FPD feature vector of shower `i` (SPEC §5, cls-high), given
    /// its incident energy: log10 E_inc, log10(E_l + 1e-8), EC_x/100, EC_y/100, W_x/100, W_y/100,
    /// log10(E_tot + 1e-8), sparsity, EC_r/100, W_r/100.
    pub fn high_level_vector(&self, i: usize, e_inc: f64, out: &mut Vec<f64>) {
        out.push(e_inc.log10());
        out.extend(self.e_layer.iter().map(|c| (c[i] + 1e-8).log10()));
        for group in [&self.ec_x, &self.ec_y, &self.w_x, &self.w_y] {
            out.extend(group.iter().map(|c| c[i] / 1e2));
        }
        out.push((self.e_tot[i] + 1e-8).log10());
        out.extend(self.sparsity.iter().map(|c| c[i]));
        out.extend(self.ec_r.iter().map(|c| c[i] / 1e2));
        out.extend(self.w_r.iter().map(|c| c[i] / 1e2));
    }

    /// Dimension of [`high_level_vector`](Self::high_level_vector).
    pub fn high_level_dim(g: &Geometry) -> usize {
        2 + 4 * g.relevant_layers.len() + 4 * g.alpha_layers.len()
    }
}

fn push_cols(cols: &mut [Vec<f64>], vals: &[f64]) {
    for (c, &v) in cols.iter_mut().zip(vals) {
        c.push(v);
    }
}

//! CaloScore v2's preprocessing (`CaloScoreV2/scripts/utils.py`; `docs/design/caloscore.md`
//! §2.2): the stick-breaking encoding of the layer energies and the per-dimension normaliser
//! (min-max → logit(α = 1e-6) → standardisation) fitted on the training showers.

/// Stick-breaking code of layer energies `layers` (L values, MeV) of a shower of incident energy
/// `e_inc`: u_0 = ΣE/(max_dep·E_inc), u_i = E_{i−1}/Σ_{j≥i−1} E_j (0 where the rest is empty);
/// the last layer is implied.
pub fn stick_encode(layers: &[f64], e_inc: f64, max_dep: f64) -> Vec<f64> {
    let total: f64 = layers.iter().sum();
    let mut u = Vec::with_capacity(layers.len());
    u.push(total / (max_dep * e_inc));
    let mut rest = total;
    for &e in &layers[..layers.len().saturating_sub(1)] {
        u.push(if rest > 0.0 {
            (e / rest).clamp(0.0, 1.0)
        } else {
            0.0
        });
        rest -= e;
    }
    u
}

/// The inverse of [`stick_encode`]: T = max_dep·E_inc·u_0, E_0 = T·u_1, E_i = u_{i+1}(T − ΣE_{<i}),
/// the last layer the remainder (u_i clamped to [0, 1], so energies stay non-negative).
pub fn stick_decode(u: &[f64], e_inc: f64, max_dep: f64) -> Vec<f64> {
    let l = u.len();
    let total = max_dep * e_inc * u[0].max(0.0);
    let mut out = Vec::with_capacity(l);
    let mut rest = total;
    for &ui in &u[1..] {
        let e = ui.clamp(0.0, 1.0) * rest;
        out.push(e);
        rest -= e;
    }
    out.push(rest.max(0.0));
    out
}

/// Per-dimension normaliser: y = (x − min)/(max − min) (0 where max = min), logit(α + (1 − 2α)y),
/// then (· − mean)/std (0 where std = 0); fitted in f64 with the population std.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normaliser {
    /// Per-dimension minimum.
    pub min: Vec<f64>,
    /// Per-dimension maximum.
    pub max: Vec<f64>,
    /// Per-dimension mean of the logits.
    pub mean: Vec<f64>,
    /// Per-dimension standard deviation of the logits.
    pub std: Vec<f64>,
}

const ALPHA: f64 = 1e-6;

fn logit(y: f64) -> f64 {
    let v = ALPHA + (1.0 - 2.0 * ALPHA) * y;
    (v / (1.0 - v)).ln()
}

impl Normaliser {
    fn scaled(&self, k: usize, x: f64) -> f64 {
        let w = self.max[k] - self.min[k];
        if w > 0.0 {
            ((x - self.min[k]) / w).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Fits on `rows` (row-major, `d` per row; f32 or f64): two passes, no copy of the data.
    pub fn fit<T: Copy + Into<f64>>(rows: &[T], d: usize) -> Self {
        let n = (rows.len() / d).max(1) as f64;
        let mut min = vec![f64::INFINITY; d];
        let mut max = vec![f64::NEG_INFINITY; d];
        for r in rows.chunks(d) {
            for ((lo, hi), &v) in min.iter_mut().zip(max.iter_mut()).zip(r) {
                let v: f64 = v.into();
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
        let mut me = Normaliser {
            min,
            max,
            mean: vec![0.0; d],
            std: vec![1.0; d],
        };
        // Two passes over the logits (mean, then squared deviations): a constant dimension
        // gets std 0 exactly.
        let mut sum = vec![0.0; d];
        for r in rows.chunks(d) {
            for (k, (m, &v)) in sum.iter_mut().zip(r).enumerate() {
                *m += logit(me.scaled(k, v.into()));
            }
        }
        me.mean = sum.into_iter().map(|s| s / n).collect();
        let mut var = vec![0.0; d];
        for r in rows.chunks(d) {
            for (k, (q, &v)) in var.iter_mut().zip(r).enumerate() {
                *q += (logit(me.scaled(k, v.into())) - me.mean[k]).powi(2);
            }
        }
        me.std = var.into_iter().map(|q| (q / n).sqrt()).collect();
        for k in 0..d {
            if me.max[k] <= me.min[k] {
                // A constant dimension (all y = 0): no spread.
                me.std[k] = 0.0;
            }
        }
        me
    }

    /// Normalised values of one row.
    pub fn forward(&self, x: &[f64]) -> Vec<f32> {
        x.iter()
            .enumerate()
            .map(|(k, &v)| {
                if self.std[k] > 0.0 {
                    ((logit(self.scaled(k, v)) - self.mean[k]) / self.std[k]) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// log |det ∂forward/∂x| of one row: Σ over the dimensions with spread of
    /// −ln(max − min) + ln(1 − 2α) − ln(v(1 − v)) − ln std, v = α + (1 − 2α)y (constant
    /// dimensions are left out; values outside [min, max] count as the clamped value).
    pub fn log_jacobian(&self, x: &[f64]) -> f64 {
        x.iter()
            .enumerate()
            .filter(|&(k, _)| self.std[k] > 0.0)
            .map(|(k, &v)| {
                let y = ALPHA + (1.0 - 2.0 * ALPHA) * self.scaled(k, v);
                -(self.max[k] - self.min[k]).ln() + (1.0 - 2.0 * ALPHA).ln()
                    - (y * (1.0 - y)).ln()
                    - self.std[k].ln()
            })
            .sum()
    }

    /// The inverse of [`Normaliser::forward`] for one row.
    pub fn inverse(&self, u: &[f32]) -> Vec<f64> {
        u.iter()
            .enumerate()
            .map(|(k, &v)| {
                let l = v as f64 * self.std[k] + self.mean[k];
                let s = 1.0 / (1.0 + (-l).exp());
                let y = ((s - ALPHA) / (1.0 - 2.0 * ALPHA)).clamp(0.0, 1.0);
                y * (self.max[k] - self.min[k]) + self.min[k]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stick_breaking_round_trips_and_matches_hand_values() {
        let layers = [3.0, 0.0, 5.0, 2.0];
        let u = stick_encode(&layers, 10.0, 2.0);
        assert_eq!(u, vec![0.5, 0.3, 0.0, 5.0 / 7.0]);
        let back = stick_decode(&u, 10.0, 2.0);
        for (a, b) in back.iter().zip(&layers) {
            assert!((a - b).abs() < 1e-12, "{back:?}");
        }
        // Empty tail: 0/0 codes as 0 and decodes to zeros.
        let u = stick_encode(&[4.0, 0.0, 0.0], 4.0, 2.0);
        assert_eq!(u, vec![0.5, 1.0, 0.0]);
        assert_eq!(stick_decode(&u, 4.0, 2.0), vec![4.0, 0.0, 0.0]);
        // Out-of-range codes (a network's output) still give non-negative energies summing to T.
        let e = stick_decode(&[0.5, 1.3, -0.2], 4.0, 2.0);
        assert!(e.iter().all(|&v| v >= 0.0) && (e.iter().sum::<f64>() - 4.0).abs() < 1e-12);
    }

    #[test]
    fn normaliser_round_trips_and_standardises() {
        let rows: Vec<f64> = (0..300)
            .flat_map(|i| {
                let f = i as f64 / 300.0;
                [f * 0.8 + 0.1, (f * 7.0).sin().abs(), 5.0]
            })
            .collect();
        let n = Normaliser::fit(&rows, 3);
        assert_eq!(n.std[2], 0.0, "a constant dimension");
        let fwd: Vec<f32> = rows.chunks(3).flat_map(|r| n.forward(r)).collect();
        for k in 0..2 {
            let col: Vec<f64> = fwd.iter().skip(k).step_by(3).map(|&v| v as f64).collect();
            let m = col.iter().sum::<f64>() / col.len() as f64;
            let s = (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / col.len() as f64).sqrt();
            assert!(m.abs() < 1e-4 && (s - 1.0).abs() < 1e-4, "dim {k}: {m} {s}");
        }
        for r in rows.chunks(3).take(50) {
            let back = n.inverse(&n.forward(r));
            assert!(
                (back[0] - r[0]).abs() < 1e-4 && (back[1] - r[1]).abs() < 1e-4,
                "{r:?} {back:?}"
            );
            assert_eq!(back[2], 5.0);
        }
        // The log-Jacobian against central differences of forward (dimension 2 is constant
        // and left out).
        for r in rows.chunks(3).skip(20).step_by(40) {
            let mut fd = 0.0;
            for k in 0..2 {
                let h = 1e-4;
                let (mut up, mut dn) = (r.to_vec(), r.to_vec());
                up[k] += h;
                dn[k] -= h;
                let d = (n.forward(&up)[k] as f64 - n.forward(&dn)[k] as f64) / (2.0 * h);
                fd += d.abs().ln();
            }
            let got = n.log_jacobian(r);
            assert!((got - fd).abs() < 1e-2, "{r:?}: {got} vs {fd}");
        }
    }
}

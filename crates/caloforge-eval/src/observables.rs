//! The histogrammed observables of the CaloChallenge evaluation (SPEC §5), with their names in
//! `histogram_chi2_<ds>.txt`, PNG file names and exact bin edges.

use caloforge_core::geometry::{linspace, logspace};
use caloforge_core::numeric::log10_cr;
use caloforge_core::{DatasetKind, Features, Geometry};

/// Which quantity an observable histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantity {
    /// E_tot / E_inc over all showers.
    EtotEinc,
    /// E_tot / E_inc for E_inc in [lo, hi) (dataset 1).
    EtotEincAt { lo: f64, hi: f64 },
    /// Energy of the relevant layer with this column index.
    ELayer(usize),
    /// EC_x of alpha-layer column.
    EcX(usize),
    /// EC_y of alpha-layer column.
    EcY(usize),
    /// W_x of alpha-layer column.
    WX(usize),
    /// W_y of alpha-layer column.
    WY(usize),
    /// Every voxel energy.
    Voxel,
    /// Sparsity of relevant-layer column.
    Sparsity(usize),
    /// EC_r of relevant-layer column.
    EcR(usize),
    /// W_r of relevant-layer column.
    WR(usize),
}

/// One histogrammed observable.
#[derive(Debug, Clone)]
pub struct Observable {
    /// Name in the separation-power text file (e.g. `E layer 12`).
    pub name: String,
    /// PNG file name.
    pub file: String,
    /// Plot title.
    pub title: String,
    /// x-axis label.
    pub xlabel: String,
    /// What is histogrammed.
    pub quantity: Quantity,
    /// Bin edges.
    pub edges: Vec<f64>,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Not part of the official evaluate.py default set (sparsity, EC_r, W_r).
    pub extra: bool,
}

impl Observable {
    /// Values of this observable for one sample (the voxel distribution is filled while
    /// streaming and returns nothing here).
    pub fn values(&self, f: &Features, e_inc: &[f64]) -> Vec<f64> {
        match self.quantity {
            Quantity::EtotEinc => f.e_tot.iter().zip(e_inc).map(|(a, b)| a / b).collect(),
            Quantity::EtotEincAt { lo, hi } => f
                .e_tot
                .iter()
                .zip(e_inc)
                .filter(|(_, &e)| e >= lo && e < hi)
                .map(|(a, b)| a / b)
                .collect(),
            Quantity::ELayer(c) => f.e_layer[c].clone(),
            Quantity::EcX(c) => f.ec_x[c].clone(),
            Quantity::EcY(c) => f.ec_y[c].clone(),
            Quantity::WX(c) => f.w_x[c].clone(),
            Quantity::WY(c) => f.w_y[c].clone(),
            Quantity::Sparsity(c) => f.sparsity[c].clone(),
            Quantity::EcR(c) => f.ec_r[c].clone(),
            Quantity::WR(c) => f.w_r[c].clone(),
            Quantity::Voxel => Vec::new(),
        }
    }
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The observables of `ds`, in the order of the official text file, followed by the three
/// extra ones. Log-binned edges use the reference features (`reference`) and the maximum voxel
/// energy of the reference (`ref_max_voxel`).
pub fn observables(
    ds: DatasetKind,
    g: &Geometry,
    reference: &Features,
    ref_max_voxel: f64,
) -> Vec<Observable> {
    let ds12 = !ds.is_ds1();
    let dsn = ds.name();
    let min_e = ds.min_energy();
    let mut out = Vec::new();
    let mut push = |name: String,
                    file: String,
                    title: String,
                    xlabel: &str,
                    quantity,
                    edges,
                    log_x,
                    log_y,
                    extra| {
        out.push(Observable {
            name,
            file,
            title,
            xlabel: xlabel.into(),
            quantity,
            edges,
            log_x,
            log_y,
            extra,
        });
    };
    push(
        "Etot / Einc".into(),
        format!("Etot_Einc_dataset_{dsn}.png"),
        "E_tot / E_inc".into(),
        "E_tot / E_inc",
        Quantity::EtotEinc,
        linspace(0.5, 1.5, 101),
        false,
        false,
        false,
    );
    for (c, &l) in g.relevant_layers.iter().enumerate() {
        let hi = max_of(&reference.e_layer[c]);
        push(
            format!("E layer {l}"),
            format!("E_layer_{l}_dataset_{dsn}.png"),
            format!("Energy deposited in layer {l}"),
            "E [MeV]",
            Quantity::ELayer(c),
            logspace(log10_cr(min_e), log10_cr(hi), 40),
            true,
            true,
            false,
        );
    }
    let ec_lim = |l: usize| {
        if ds12 {
            30.0
        } else if l == 12 || l == 13 {
            500.0
        } else {
            100.0
        }
    };
    let w_lim = |l: usize| {
        if ds12 {
            30.0
        } else if l == 12 || l == 13 {
            400.0
        } else {
            100.0
        }
    };
    type Ctor = fn(usize) -> Quantity;
    let groups: [(&str, &str, &str, Ctor, bool); 4] = [
        (
            "EC Eta layer",
            "ECEta_layer",
            "Center of energy in x (eta) in layer",
            Quantity::EcX,
            true,
        ),
        (
            "EC Phi layer",
            "ECPhi_layer",
            "Center of energy in y (phi) in layer",
            Quantity::EcY,
            true,
        ),
        (
            "Width Eta layer",
            "WidthEta_layer",
            "Width in x (eta) in layer",
            Quantity::WX,
            false,
        ),
        (
            "Width Phi layer",
            "WidthPhi_layer",
            "Width in y (phi) in layer",
            Quantity::WY,
            false,
        ),
    ];
    for (name, file, title, ctor, centred) in groups {
        for (c, &l) in g.alpha_layers.iter().enumerate() {
            let edges = if centred {
                linspace(-ec_lim(l), ec_lim(l), 101)
            } else {
                linspace(0.0, w_lim(l), 101)
            };
            push(
                format!("{name} {l}"),
                format!("{file}_{l}_dataset_{dsn}.png"),
                format!("{title} {l}"),
                "[mm]",
                ctor(c),
                edges,
                false,
                true,
                false,
            );
        }
    }
    if ds.is_ds1() {
        let targets: Vec<f64> = linspace(8.0, 23.0, 16)
            .iter()
            .map(|e| 2f64.powf(*e))
            .collect();
        for i in 0..15 {
            let edges = if i > 3 && ds == DatasetKind::Photons1 {
                linspace(0.9, 1.1, 21)
            } else {
                linspace(0.4, 1.4, 21)
            };
            let e = targets[i];
            let name = caloforge_core::numeric::py_float_repr(e);
            push(
                format!("Etot / Einc at E = {name}"),
                format!("Etot_Einc_dataset_{dsn}_E_{i}.png"),
                format!("E_tot / E_inc at E_inc = {e} MeV"),
                "E_tot / E_inc",
                Quantity::EtotEincAt {
                    lo: targets[i],
                    hi: targets[i + 1],
                },
                edges,
                false,
                false,
                false,
            );
        }
    }
    push(
        "Voxel distribution".into(),
        format!("voxel_energy_dataset_{dsn}.png"),
        "Voxel energy distribution".into(),
        "E [MeV]",
        Quantity::Voxel,
        logspace(log10_cr(min_e), log10_cr(ref_max_voxel), 50),
        true,
        true,
        false,
    );
    for (c, &l) in g.relevant_layers.iter().enumerate() {
        push(
            format!("Sparsity layer {l}"),
            format!("Sparsity_layer_{l}_dataset_{dsn}.png"),
            format!("Sparsity in layer {l}"),
            "fraction of empty voxels",
            Quantity::Sparsity(c),
            linspace(0.0, 1.0, 21),
            false,
            true,
            true,
        );
    }
    let big = |l: usize| l == 12 || l == 13 || l == 14;
    for (c, &l) in g.relevant_layers.iter().enumerate() {
        let hi = if ds12 {
            42.0
        } else if big(l) {
            1500.0
        } else {
            500.0
        };
        push(
            format!("EC r layer {l}"),
            format!("ECr_layer_{l}_dataset_{dsn}.png"),
            format!("Radial center of energy in layer {l}"),
            "[mm]",
            Quantity::EcR(c),
            linspace(0.0, hi, 101),
            false,
            true,
            true,
        );
    }
    for (c, &l) in g.relevant_layers.iter().enumerate() {
        let hi = if ds12 {
            20.0
        } else if big(l) {
            1500.0
        } else {
            500.0
        };
        push(
            format!("Width r layer {l}"),
            format!("Widthr_layer_{l}_dataset_{dsn}.png"),
            format!("Radial width in layer {l}"),
            "[mm]",
            Quantity::WR(c),
            linspace(0.0, hi, 101),
            false,
            true,
            true,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_histogram_counts() {
        // 30 (1-photons), 40 (1-pions), 227 (ds2/3) in the default set (SPEC §5).
        for (ds, want) in [
            (DatasetKind::Photons1, 30),
            (DatasetKind::Pions1, 40),
            (DatasetKind::Ds2, 227),
            (DatasetKind::Ds3, 227),
        ] {
            let g = ds.geometry(None).unwrap();
            let mut f = Features::empty(&g);
            for c in f.e_layer.iter_mut() {
                c.push(100.0);
            }
            let obs = observables(ds, &g, &f, 1000.0);
            assert_eq!(obs.iter().filter(|o| !o.extra).count(), want, "{ds}");
            assert_eq!(
                obs.iter().filter(|o| o.extra).count(),
                3 * g.relevant_layers.len()
            );
        }
    }

    #[test]
    fn per_energy_names_and_ranges() {
        let g = DatasetKind::Photons1.geometry(None).unwrap();
        let mut f = Features::empty(&g);
        for c in f.e_layer.iter_mut() {
            c.push(100.0);
        }
        let obs = observables(DatasetKind::Photons1, &g, &f, 10.0);
        let at: Vec<_> = obs
            .iter()
            .filter(|o| matches!(o.quantity, Quantity::EtotEincAt { .. }))
            .collect();
        assert_eq!(at.len(), 15);
        assert_eq!(at[0].name, "Etot / Einc at E = 256.0");
        assert_eq!(at[14].name, "Etot / Einc at E = 4194304.0");
        assert_eq!(at[3].edges[0], 0.4);
        assert_eq!(at[4].edges[0], 0.9);
        // E layer edges: 40 log-spaced edges from the threshold to the reference maximum.
        let el = obs.iter().find(|o| o.name == "E layer 0").unwrap();
        assert_eq!(el.edges.len(), 40);
        assert!((el.edges[0] - 1.0).abs() < 1e-15 && (el.edges[39] - 100.0).abs() < 1e-12);
    }
}

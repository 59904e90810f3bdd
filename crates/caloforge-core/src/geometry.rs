//! Detector geometry from the CaloChallenge binning XML files (SPEC §2).
//!
//! A binning file lists, for one particle, every calorimeter layer with its radial bin edges
//! (`r_edges`, mm) and its number of angular bins (`n_bin_alpha`). Voxels are ordered by
//! (layer, angular bin, radial bin) with the radial index fastest.

use crate::error::{CoreError, Result};
use std::path::Path;

/// One calorimeter layer as written in the binning file.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Layer id (position in the file, 0-based).
    pub id: usize,
    /// Radial bin edges in mm; a single edge means the layer has no voxels.
    pub r_edges: Vec<f64>,
    /// Number of angular bins.
    pub n_alpha: usize,
}

impl Layer {
    /// Number of radial bins.
    pub fn n_r(&self) -> usize {
        self.r_edges.len().saturating_sub(1)
    }
    /// Number of voxels of this layer.
    pub fn n_voxels(&self) -> usize {
        self.n_r() * self.n_alpha
    }
}

/// Geometry of one dataset: layers, voxel offsets and per-voxel coordinates.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Particle name of the `<Bin>` element used ("photon", "pion", "electron").
    pub particle: String,
    /// All layers of the file, empty ones included, in id order.
    pub layers: Vec<Layer>,
    /// Cumulative voxel offsets, `bin_edges[l]..bin_edges[l+1]` are the voxels of layer l.
    pub bin_edges: Vec<usize>,
    /// Ids of layers with at least one radial bin, increasing.
    pub relevant_layers: Vec<usize>,
    /// Ids of layers with more than one angular bin, increasing.
    pub alpha_layers: Vec<usize>,
    /// Radial centre of each voxel (mm).
    pub r_center: Vec<f64>,
    /// Angular centre of each voxel (rad).
    pub alpha_center: Vec<f64>,
    /// x = r cos α of each voxel (mm), "eta" in the reference code.
    pub x: Vec<f64>,
    /// y = r sin α of each voxel (mm), "phi" in the reference code.
    pub y: Vec<f64>,
    /// Layer id of each voxel.
    pub voxel_layer: Vec<usize>,
}

impl Geometry {
    /// Voxels of each relevant layer, in file order.
    pub fn layer_sizes(&self) -> Vec<usize> {
        self.relevant_layers
            .iter()
            .map(|&l| self.bin_edges[l + 1] - self.bin_edges[l])
            .collect()
    }

    /// Parses a binning XML document and selects the `<Bin>` whose `name` is `particle`.
    pub fn from_xml_str(xml: &str, particle: &str, source: &str) -> Result<Self> {
        let bad = |msg: String| CoreError::Binning {
            file: source.to_string(),
            msg,
        };
        let doc =
            roxmltree::Document::parse(xml).map_err(|e| bad(format!("not valid XML: {e}")))?;
        let bins: Vec<_> = doc
            .root_element()
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "Bin")
            .collect();
        let bin = bins
            .iter()
            .find(|n| n.attribute("name") == Some(particle))
            .ok_or_else(|| {
                let names: Vec<_> = bins.iter().filter_map(|n| n.attribute("name")).collect();
                bad(format!("no <Bin name=\"{particle}\"> (found {names:?})"))
            })?;
        let mut layers = Vec::new();
        for (idx, node) in bin
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "Layer")
            .enumerate()
        {
            let r_str = node
                .attribute("r_edges")
                .ok_or_else(|| bad(format!("layer {idx} has no r_edges")))?;
            let r_edges = r_str
                .split(',')
                .map(|s| s.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("layer {idx}: bad r_edges {r_str:?}: {e}")))?;
            if r_edges.windows(2).any(|w| !(w[1] > w[0])) {
                return Err(bad(format!("layer {idx}: r_edges not increasing")));
            }
            let a_str = node
                .attribute("n_bin_alpha")
                .ok_or_else(|| bad(format!("layer {idx} has no n_bin_alpha")))?;
            let n_alpha: usize = a_str
                .trim()
                .parse()
                .map_err(|e| bad(format!("layer {idx}: bad n_bin_alpha {a_str:?}: {e}")))?;
            if let Some(id) = node.attribute("id") {
                if id.trim().parse::<usize>().ok() != Some(idx) {
                    return Err(bad(format!(
                        "layer ids must be consecutive from 0, got {id} at {idx}"
                    )));
                }
            }
            layers.push(Layer {
                id: idx,
                r_edges,
                n_alpha,
            });
        }
        if layers.is_empty() {
            return Err(bad("no <Layer> elements".into()));
        }
        Ok(Self::from_layers(particle, layers))
    }

    /// Builds the derived tables from a list of layers.
    pub fn from_layers(particle: &str, layers: Vec<Layer>) -> Self {
        let mut bin_edges = vec![0usize];
        let mut relevant_layers = Vec::new();
        let mut alpha_layers = Vec::new();
        let (mut r_center, mut alpha_center, mut x, mut y, mut voxel_layer) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for layer in &layers {
            let n = layer.n_voxels();
            bin_edges.push(bin_edges.last().unwrap() + n);
            if layer.n_r() > 0 {
                relevant_layers.push(layer.id);
            }
            if layer.n_alpha > 1 {
                alpha_layers.push(layer.id);
            }
            if n == 0 {
                continue;
            }
            // Midpoints of n_alpha equal bins spanning [-pi, pi], computed like numpy's
            // linspace followed by the midpoint a + (b - a)/2.
            let alpha_edges = linspace(
                -std::f64::consts::PI,
                std::f64::consts::PI,
                layer.n_alpha + 1,
            );
            let alphas: Vec<f64> = if layer.n_alpha == 1 {
                vec![0.0]
            } else {
                alpha_edges
                    .windows(2)
                    .map(|w| w[0] + (w[1] - w[0]) / 2.0)
                    .collect()
            };
            let rs: Vec<f64> = layer
                .r_edges
                .windows(2)
                .map(|w| w[0] + (w[1] - w[0]) / 2.0)
                .collect();
            for &a in &alphas {
                for &r in &rs {
                    r_center.push(r);
                    alpha_center.push(a);
                    x.push(r * a.cos());
                    y.push(r * a.sin());
                    voxel_layer.push(layer.id);
                }
            }
        }
        Geometry {
            particle: particle.to_string(),
            layers,
            bin_edges,
            relevant_layers,
            alpha_layers,
            r_center,
            alpha_center,
            x,
            y,
            voxel_layer,
        }
    }

    /// Reads a binning file from disk.
    pub fn from_file(path: &Path, particle: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::Binning {
            file: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::from_xml_str(&text, particle, &path.display().to_string())
    }

    /// Total number of voxels.
    pub fn n_voxels(&self) -> usize {
        *self.bin_edges.last().unwrap()
    }

    /// Voxel index range of layer `l`.
    pub fn layer_range(&self, l: usize) -> std::ops::Range<usize> {
        self.bin_edges[l]..self.bin_edges[l + 1]
    }

    /// Flat voxel index of (layer, angular bin, radial bin).
    pub fn voxel_index(&self, layer: usize, alpha: usize, r: usize) -> usize {
        self.bin_edges[layer] + alpha * self.layers[layer].n_r() + r
    }

    /// Largest outer radial edge over all layers (mm).
    pub fn max_radius(&self) -> f64 {
        self.layers
            .iter()
            .filter_map(|l| l.r_edges.last().copied())
            .fold(0.0, f64::max)
    }
}

/// NumPy-compatible `linspace(start, stop, num)` (endpoint included, last value exact).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// NumPy-compatible `logspace(a, b, num)` = 10 ** linspace(a, b, num), with correctly rounded
/// powers (see [`crate::numeric::exp10_cr`]).
pub fn logspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    linspace(start, stop, num)
        .into_iter()
        .map(crate::numeric::exp10_cr)
        .collect()
}

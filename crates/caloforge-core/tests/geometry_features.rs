//! Geometry of the four binning files (SPEC §2) and the features (SPEC §3) on hand-computed cases.

use caloforge_core::geometry::Layer;
use caloforge_core::{apply_threshold, DatasetKind, Features, Geometry};
use std::f64::consts::PI;

#[test]
fn offsets_and_layers_of_all_datasets() {
    let g = DatasetKind::Photons1.geometry(None).unwrap();
    assert_eq!(g.relevant_layers, vec![0, 1, 2, 3, 12]);
    assert_eq!(g.alpha_layers, vec![1, 2]);
    let starts: Vec<usize> = g.relevant_layers.iter().map(|&l| g.bin_edges[l]).collect();
    assert_eq!(starts, vec![0, 8, 168, 358, 363]);
    assert_eq!(g.n_voxels(), 368);
    assert_eq!(g.bin_edges.len(), 25);

    let g = DatasetKind::Pions1.geometry(None).unwrap();
    assert_eq!(g.relevant_layers, vec![0, 1, 2, 3, 12, 13, 14]);
    assert_eq!(g.alpha_layers, vec![1, 2, 12, 13]);
    let starts: Vec<usize> = g.relevant_layers.iter().map(|&l| g.bin_edges[l]).collect();
    assert_eq!(starts, vec![0, 8, 108, 208, 213, 363, 523]);
    assert_eq!(g.n_voxels(), 533);

    for (ds, na, nr, per) in [
        (DatasetKind::Ds2, 16, 9, 144),
        (DatasetKind::Ds3, 50, 18, 900),
    ] {
        let g = ds.geometry(None).unwrap();
        assert_eq!(g.relevant_layers.len(), 45);
        assert_eq!(g.alpha_layers.len(), 45);
        for l in 0..45 {
            assert_eq!(g.bin_edges[l], per * l);
            assert_eq!(g.layers[l].n_alpha, na);
            assert_eq!(g.layers[l].n_r(), nr);
            assert!((g.layers[l].r_edges[nr] - 41.85).abs() < 1e-9);
        }
    }
}

#[test]
fn voxel_coordinates_follow_spec() {
    let g = DatasetKind::Ds2.geometry(None).unwrap();
    // Voxel (layer 3, alpha 2, r 4): index 3*144 + 2*9 + 4, r centre 4.5*4.65, alpha -pi + 2.5*2pi/16.
    let i = g.voxel_index(3, 2, 4);
    assert_eq!(i, 3 * 144 + 2 * 9 + 4);
    let r = 4.5 * 4.65;
    let a = -PI + 2.5 * 2.0 * PI / 16.0;
    assert!((g.r_center[i] - r).abs() < 1e-12);
    assert!((g.alpha_center[i] - a).abs() < 1e-12);
    assert!((g.x[i] - r * a.cos()).abs() < 1e-12);
    assert!((g.y[i] - r * a.sin()).abs() < 1e-12);
    assert_eq!(g.voxel_layer[i], 3);
    // Single-bin layers of dataset 1 have alpha = 0: x = r, y = 0.
    let g = DatasetKind::Photons1.geometry(None).unwrap();
    assert_eq!(g.alpha_center[0], 0.0);
    assert_eq!(g.x[0], 2.5);
    assert_eq!(g.y[0], 0.0);
}

#[test]
fn binning_errors_are_clear() {
    let e = Geometry::from_xml_str("<Bins><Bin name=\"photon\"></Bin></Bins>", "pion", "f.xml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f.xml") && e.contains("no <Bin name=\"pion\">"),
        "{e}"
    );
    let e = Geometry::from_xml_str("<Bins", "pion", "f.xml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid XML"));
    let xml = "<Bins><Bin name=\"electron\"><Layer id=\"0\" r_edges=\"0,2,1\" n_bin_alpha=\"1\"/></Bin></Bins>";
    assert!(Geometry::from_xml_str(xml, "electron", "f.xml")
        .unwrap_err()
        .to_string()
        .contains("not increasing"));
    // A binning file for another dataset is refused by voxel count.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.xml");
    std::fs::write(&p, DatasetKind::Ds2.binning_xml()).unwrap();
    let e = DatasetKind::Ds3.geometry(Some(&p)).unwrap_err().to_string();
    assert!(e.contains("6480 voxels but dataset 3 has 40500"), "{e}");
}

/// A tiny geometry: layer 0 with 2 radial bins (edges 0,1,3) × 2 alpha bins; layer 1 empty;
/// layer 2 with 1 radial bin (0,2) × 1 alpha bin.
fn tiny() -> Geometry {
    Geometry::from_layers(
        "test",
        vec![
            Layer {
                id: 0,
                r_edges: vec![0.0, 1.0, 3.0],
                n_alpha: 2,
            },
            Layer {
                id: 1,
                r_edges: vec![0.0],
                n_alpha: 1,
            },
            Layer {
                id: 2,
                r_edges: vec![0.0, 2.0],
                n_alpha: 1,
            },
        ],
    )
}

#[test]
fn features_hand_computed() {
    let g = tiny();
    assert_eq!(g.relevant_layers, vec![0, 2]);
    assert_eq!(g.alpha_layers, vec![0]);
    // Alpha centres -pi/2 and +pi/2: x = 0 (to rounding), y = -r and +r.
    // Voxels: (a0,r0) r=0.5 y=-0.5; (a0,r1) r=2 y=-2; (a1,r0) y=+0.5; (a1,r1) y=+2; layer 2: r=1.
    let shower = [1.0, 3.0, 0.0, 4.0, 2.0];
    let f = Features::compute(&g, &shower);
    assert_eq!(f.e_tot, vec![10.0]);
    assert_eq!(f.e_layer, vec![vec![8.0], vec![2.0]]);
    // EC_y = (1*-0.5 + 3*-2 + 4*2)/8 = 1.5/8
    let ecy = 1.5 / 8.0;
    assert!((f.ec_y[0][0] - ecy).abs() < 1e-12);
    // <y^2> = (0.25 + 12 + 16)/8
    let wy = ((0.25 + 12.0 + 16.0) / 8.0 - ecy * ecy).sqrt();
    assert!((f.w_y[0][0] - wy).abs() < 1e-12);
    assert!(f.ec_x[0][0].abs() < 1e-12);
    // EC_r = (0.5 + 6 + 8)/8, W_r from <r^2> = (0.25 + 12 + 16)/8
    let ecr = 14.5 / 8.0;
    assert!((f.ec_r[0][0] - ecr).abs() < 1e-12);
    assert!((f.w_r[0][0] - ((28.25 / 8.0) - ecr * ecr).sqrt()).abs() < 1e-12);
    assert_eq!(f.ec_r[1][0], 1.0);
    assert_eq!(f.w_r[1][0], 0.0);
    // Sparsity: 1 of 4 voxels empty in layer 0.
    assert_eq!(f.sparsity, vec![vec![0.25], vec![0.0]]);
    // High-level vector: log10 Einc, log10(E_l+1e-8) x2, ECx, ECy, Wx, Wy /100, log10 Etot, sparsity x2, ECr x2 /100, Wr x2 /100.
    let mut v = Vec::new();
    f.high_level_vector(0, 100.0, &mut v);
    assert_eq!(v.len(), Features::high_level_dim(&g));
    assert_eq!(v[0], 2.0);
    assert!((v[1] - (8.0f64 + 1e-8).log10()).abs() < 1e-15);
    assert!((v[4] - ecy / 100.0).abs() < 1e-15);
    assert!((v[7] - (10.0f64 + 1e-8).log10()).abs() < 1e-15);
    assert_eq!(v[8], 0.25);
}

#[test]
fn empty_layers_give_zero_centre_and_width() {
    let g = tiny();
    let f = Features::compute(&g, &[0.0; 5]);
    assert_eq!(f.e_tot, vec![0.0]);
    assert_eq!(f.ec_y[0][0], 0.0);
    assert_eq!(f.w_r[0][0], 0.0);
    assert_eq!(f.sparsity[0][0], 1.0);
}

#[test]
fn threshold_is_strict() {
    let mut s = vec![0.5, 1.0, 0.999_999, 2.0];
    apply_threshold(&mut s, 1.0);
    assert_eq!(s, vec![0.0, 1.0, 0.0, 2.0]);
}

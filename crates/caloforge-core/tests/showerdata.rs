//! ShowerData point-cloud files written by the `showerdata` Python package 0.7 (fixtures made
//! with `showerdata.save`; point j of shower i holds (i + j/2, −j, 10i + j, (j + 1)/4[, 1.5j + i])).

use caloforge_core::showerdata::PointFile;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(i: usize, k: usize, features: usize) -> Vec<f32> {
    (0..k)
        .flat_map(|j| {
            let (i, jf) = (i as f32, j as f32);
            let mut v = vec![i + 0.5 * jf, -jf, 10.0 * i + jf, 0.25 * (jf + 1.0)];
            if features == 5 {
                v.push(1.5 * jf + i);
            }
            v
        })
        .collect()
}

#[test]
fn reads_the_python_packages_files() {
    let f = PointFile::open(&fixture("showerdata_0.7_4features.h5")).unwrap();
    assert_eq!((f.len(), f.features), (3, 4));
    assert_eq!(f.num_points, vec![2, 4, 1]);
    assert_eq!(f.energies, vec![10.0, 20.0, 30.0]);
    assert_eq!(f.pdg, vec![22, 11, 211]);
    assert_eq!(f.shower_ids, vec![0, 1, 2]);
    assert!((f.directions[1][1] - 0.6).abs() < 1e-6 && (f.directions[2][0] - 0.6).abs() < 1e-6);
    let all = f.read_points(0, 3).unwrap();
    for (i, p) in all.iter().enumerate() {
        assert_eq!(p, &expected(i, f.num_points[i], 4), "shower {i}");
    }
    // A range in the middle reads the same showers.
    assert_eq!(f.read_points(1, 2).unwrap(), all[1..].to_vec());
    assert!(f.read_points(2, 2).is_err());

    // Five values per point (with time), a shower without points, default directions.
    let g = PointFile::open(&fixture("showerdata_0.7_5features_empty_shower.h5")).unwrap();
    assert_eq!((g.features, g.num_points.clone()), (5, vec![3, 0, 2]));
    assert_eq!(g.pdg, vec![22, 22, -11]);
    assert_eq!(g.directions[0], [0.0, 0.0, 1.0]);
    let pts = g.read_points(0, 3).unwrap();
    assert!(pts[1].is_empty());
    assert_eq!(pts[2], expected(2, 2, 5));

    // The same showers with a model's `target` group (all −1), an `observables` group and file
    // attributes beside them read exactly as without.
    let h = PointFile::open(&fixture("showerdata_0.7_4features_target_observables.h5")).unwrap();
    assert_eq!((h.len(), h.features), (3, 4));
    assert_eq!(h.num_points, f.num_points);
    assert_eq!(h.energies, f.energies);
    assert_eq!(h.pdg, f.pdg);
    assert_eq!(h.directions, f.directions);
    assert_eq!(h.read_points(0, 3).unwrap(), all);
}

#[test]
fn bad_files_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = PointFile::open(&dir.path().join("missing.h5"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing.h5") && e.contains("no such file"),
        "{e}"
    );
    // A CaloChallenge voxel file is not a point-cloud file.
    let vox = fixture("h5py_pions_f32_energies_f32.h5");
    let e = PointFile::open(&vox).err().unwrap().to_string();
    assert!(e.contains("h5py_pions") && e.contains("ShowerData"), "{e}");
    // Truncated: the heap collections cut off.
    let bytes = std::fs::read(fixture("showerdata_0.7_4features.h5")).unwrap();
    let cut = dir.path().join("cut.h5");
    std::fs::write(&cut, &bytes[..bytes.len() - 200]).unwrap();
    let e = match PointFile::open(&cut) {
        Err(e) => e.to_string(),
        Ok(f) => f.read_points(0, 3).expect_err("a cut heap").to_string(),
    };
    assert!(e.contains("cut.h5"), "{e}");
}

/// Writes, with caloforge, the showers of the Python fixtures (`features` values per point).
fn write_like_fixture(path: &Path, n: &[usize], features: usize, batch: usize) {
    use caloforge_core::showerdata::{PointShower, PointWriter};
    let pts: Vec<Vec<f32>> = n
        .iter()
        .enumerate()
        .map(|(i, &k)| expected(i, k, features))
        .collect();
    let mut w = PointWriter::create(path, features, n.len()).unwrap();
    let showers: Vec<PointShower> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| PointShower {
            energy: 10.0 * (i + 1) as f64,
            direction: [
                0.0,
                0.6 * (i % 2) as f64,
                if i % 2 == 1 { 0.8 } else { 1.0 },
            ],
            pdg: [22, 11, 211, -211][i % 4],
            id: i as i64,
            points: p,
        })
        .collect();
    for b in showers.chunks(batch) {
        w.append(b).unwrap();
    }
    assert_eq!(w.finish().unwrap(), n.len());
}

#[test]
fn written_files_read_back() {
    let dir = tempfile::tempdir().unwrap();
    // Small showers, an empty one, and enough points that the heap spans several collections.
    let n = [2, 0, 4, 1, 70_000, 3];
    for (features, batch) in [(4, 1), (5, 4)] {
        let p = dir.path().join(format!("w{features}.h5"));
        write_like_fixture(&p, &n, features, batch);
        let f = PointFile::open(&p).unwrap();
        assert_eq!((f.len(), f.features), (n.len(), features));
        assert_eq!(f.num_points, n.to_vec());
        assert_eq!(f.pdg, vec![22, 11, 211, -211, 22, 11]);
        assert_eq!(f.shower_ids, (0..6).collect::<Vec<i64>>());
        assert_eq!(f.energies[4], 50.0);
        assert!((f.directions[3][2] - 0.8).abs() < 1e-7);
        let all = f.read_points(0, n.len()).unwrap();
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p, &expected(i, n[i], features), "shower {i}");
        }
        // hdf5-pure reads the plain datasets and the shape.
        let h = hdf5_pure::File::open(&p).unwrap();
        let shape = h.dataset("shape").unwrap().read_i64().unwrap();
        assert_eq!(shape, vec![6, 70_000, features as i64]);
    }
}

/// `caloforge_points_4features.h5` was written by [`write_like_fixture`] and is read by the
/// `showerdata` package (`check_caloforge_fixture.py`); the writer must still make it byte
/// for byte, so that the check stays valid. `CALOFORGE_WRITE_FIXTURES=1` rewrites it (then run
/// the Python check again).
#[test]
fn writer_output_is_the_fixture_python_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.h5");
    write_like_fixture(&p, &[2, 0, 4, 1], 4, 3);
    if std::env::var_os("CALOFORGE_WRITE_FIXTURES").is_some() {
        std::fs::copy(&p, fixture("caloforge_points_4features.h5")).unwrap();
    }
    let want = std::fs::read(fixture("caloforge_points_4features.h5")).unwrap();
    assert!(
        std::fs::read(&p).unwrap() == want,
        "the writer's bytes changed"
    );
}
